"""The debugging views' pieces without a browser: the word diff, the per-utterance CER, the worst utterances
of a job's predictions (split and source apart, the kept clip found), and which output paths may be served."""

from __future__ import annotations

import json
import os
from types import SimpleNamespace as NS

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob.ui import downloads, worst


def test_the_word_diff_marks_substitutions_insertions_and_deletions():
    assert worst.word_diff("the cat sat on the mat", "the bat sat on mat today") == [
        ("eq", "the", "the"), ("sub", "cat", "bat"), ("eq", "sat", "sat"), ("eq", "on", "on"),
        ("del", "the", ""), ("eq", "mat", "mat"), ("ins", "", "today")]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.sampled_from("a b c d e".split()), max_size=8), st.lists(st.sampled_from("a b c x".split()), max_size=8))
def test_the_word_diff_rebuilds_both_sides_and_counts_at_least_the_edit_distance(ref, hyp):
    ops = worst.word_diff(" ".join(ref), " ".join(hyp))
    assert [a for op, a, _ in ops if op != "ins"] == ref
    assert [b for op, _, b in ops if op != "del"] == hyp
    edits = sum(op != "eq" for op, _, _ in ops)
    assert edits >= worst.edit_distance(ref, hyp)  # (word lists: the same dynamic programme)


def test_edit_distance():
    assert worst.edit_distance("kitten", "sitting") == 3 and worst.edit_distance("", "ab") == 2


def job_with(tmp_path, predictions, index=None):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in predictions))
    if index is not None:
        (out / "worst_audio").mkdir()
        (out / "worst_audio" / "index.json").write_text(json.dumps(index))
        for e in index:
            if "/" not in e["file"]:
                (out / "worst_audio" / e["file"]).write_bytes(b"RIFF")
    return NS(id="j1", name="n", backend="local", output_dir=str(out))


def test_worst_rows_split_the_id_name_the_source_and_find_the_clip(tmp_path):
    preds = [{"id": "heldout/heldout_0016.wav", "source": "cv", "reference": "Ένα δύο", "prediction": "ένα τρία",
              "reference_normalized": "ένα δύο", "prediction_normalized": "ένα τρία", "wer": 0.5},
             {"id": "heldout/heldout_0001.wav", "source": "fleurs", "reference": "x", "prediction": "x",
              "reference_normalized": "x", "prediction_normalized": "x", "wer": 0.0}]
    job = job_with(tmp_path, preds, [{"id": "heldout/heldout_0016.wav", "source": "cv", "file": "001.wav",
                                      "duration_s": 2.5}, {"id": "z", "source": "", "file": "../../etc/passwd"}])
    rows, note = worst.rows(job)
    assert note is None and [r["id"] for r in rows] == ["heldout_0016.wav", "heldout_0001.wav"]
    first = rows[0]
    assert (first["split"], first["source"], first["audio"], first["duration_s"]) == ("heldout", "cv", "001.wav", 2.5)
    assert first["cer"] == pytest.approx(4 / 7) and ("sub", "δύο", "τρία") in first["diff"]
    assert rows[1]["audio"] is None  # no clip kept, and the index's path outside the folder is ignored


def test_only_regular_files_inside_the_output_folder_are_served(tmp_path):
    out = tmp_path / "out"
    (out / "model").mkdir(parents=True)
    (out / "model" / "config.json").write_text("{}")
    (out / "metrics.json").write_text("{}")
    (tmp_path / "secret.txt").write_text("no")
    os.symlink(tmp_path / "secret.txt", out / "link.txt")
    os.symlink(tmp_path, out / "up")
    job = NS(output_dir=str(out))
    assert downloads.output_file(job, "metrics.json") == out / "metrics.json"
    assert downloads.output_file(job, "model/config.json") == out / "model" / "config.json"
    for bad in ("../secret.txt", "/etc/passwd", "link.txt", "up/secret.txt", "model", "model/../metrics.json",
                "", "./metrics.json", "missing", "model\\config.json", "a\x00b"):
        assert downloads.output_file(job, bad) is None, bad
    assert downloads.output_file(NS(output_dir="s3://bucket/out"), "metrics.json") is None
    assert downloads.output_file(NS(output_dir=None), "metrics.json") is None


def test_the_git_commit_of_the_submitting_folder_and_its_dirty_flag(tmp_path):
    import subprocess

    from gpujob import gitsource
    from gpujob.spec.models import JobSpec
    from gpujob.ui.overview import overview

    assert gitsource.source(str(tmp_path)) is None  # not a repository
    run = lambda *a: subprocess.run(["git", "-C", str(tmp_path), *a], check=True, capture_output=True, text=True)
    run("init", "-q")
    (tmp_path / "a.txt").write_text("1")
    run("add", "a.txt")
    run("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    head = run("rev-parse", "HEAD").stdout.strip()
    assert gitsource.source(str(tmp_path)) == {"dir": str(tmp_path), "commit": head, "dirty": False}
    (tmp_path / "a.txt").write_text("2")
    src = gitsource.source(str(tmp_path))
    assert src["dirty"] is True
    spec = JobSpec.model_validate({"apiVersion": "gpujob/v1", "kind": "train", "data": {"train": [{"dataset": "d/"}]},
                                   "training": {"max_steps": 10}, "model": {"checkpoint": "openai/whisper-small"},
                                   "resources": {"gpus": 1}, "runtime": {"backend": "docker", "image": "gpujob:1"}})
    job = NS(spec=spec, kind="train", handle={"host": "gpu-1", "source": src}, spec_path="/x/spec.yaml", created_at=0.0)
    rows = dict(overview(job))
    assert rows["git commit"] == f"{head[:12]} (uncommitted changes) in {tmp_path}"
    assert rows["image"] == "gpujob:1" and rows["resources"].startswith("gpus 1, nodes 1") and rows["host"] == "gpu-1"
    assert rows["command"].startswith("python -m gpujob.runner")
