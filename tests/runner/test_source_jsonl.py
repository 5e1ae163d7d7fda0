"""The `jsonl` source type, added the README's way (one module in gpujob/runner/source_types/, its line in
gpujob/spec/source_types.py): a folder of `<split>.jsonl` manifests, one clip a line with `audio` (a path
relative to the manifest) and `text`. The same clips read as a manifest and as an audio folder give a tiny
train job the same losses and the same WER, and an evaluate job the same predictions."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

pytest.importorskip("torch")

from test_runner_train import run_runner  # noqa: E402
from tiny_runs import write_greek_folder, write_spec  # noqa: E402


@pytest.fixture(scope="module")
def same_clips(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny runs' Greek clips as an audio folder, and the same clips (hard links) as jsonl manifests."""
    folder = write_greek_folder(tmp_path_factory.mktemp("folder"))
    manifests = tmp_path_factory.mktemp("manifests")
    (manifests / "clips").mkdir()
    for split in ("train", "heldout"):
        with open(folder / split / "metadata.csv", newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
        lines = []
        for row in rows:
            os.link(folder / split / row["file_name"], manifests / "clips" / row["file_name"])
            lines.append(json.dumps({"audio": f"clips/{row['file_name']}", "text": row["transcription"],
                                     "speaker": "espeak"}, ensure_ascii=False))
        (manifests / f"{split}.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return folder, manifests


def run(tmp_path: Path, tiny_model: Path, data: Path, kind: str, *, typed: bool = False) -> tuple[list, dict, list]:
    tmp_path.mkdir()
    path = write_spec(tmp_path, tiny_model, data, kind=kind, max_steps=4, eval_steps=4, save_steps=1000, seed=3)
    if typed:  # the manifest folder with its type given, as well as detected (the eval source)
        spec = json.loads(path.read_text())
        spec["data"].get("train", [{}])[0]["type"] = "jsonl"
        path.write_text(json.dumps(spec))
    code, events, output = run_runner(path)
    assert code == 0, output[-3000:]
    out = tmp_path / "out"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    return events, json.loads((out / "metrics.json").read_text()), predictions


def losses(events: list[dict]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in events if e["event"] == "progress"]


def test_a_jsonl_manifest_trains_and_scores_as_the_same_clips_in_an_audio_folder(tmp_path, tiny_model, same_clips):
    folder, manifests = same_clips
    folder_events, folder_metrics, folder_predictions = run(tmp_path / "folder", tiny_model, folder, "train")
    jsonl_events, jsonl_metrics, jsonl_predictions = run(tmp_path / "jsonl", tiny_model, manifests, "train", typed=True)
    assert len(losses(jsonl_events)) == 4 and losses(jsonl_events) == losses(folder_events)
    assert len(jsonl_predictions) == len(folder_predictions) == 2
    assert jsonl_metrics["wer"] == folder_metrics["wer"] and jsonl_metrics["cer"] == folder_metrics["cer"]
    evals = [[(e["step"], e["wer"]) for e in events if e["event"] == "eval"] for events in (folder_events, jsonl_events)]
    assert evals[0] == evals[1] and [step for step, _ in evals[0]] == [4]


def test_an_evaluate_job_over_a_jsonl_manifest_predicts_what_it_does_over_the_audio_folder(tmp_path, tiny_model,
                                                                                           same_clips):
    folder, manifests = same_clips
    _, folder_metrics, folder_predictions = run(tmp_path / "folder", tiny_model, folder, "evaluate")
    _, jsonl_metrics, jsonl_predictions = run(tmp_path / "jsonl", tiny_model, manifests, "evaluate")
    assert jsonl_metrics["wer"] == folder_metrics["wer"] and jsonl_metrics["utterances"] == 2
    assert [(p["reference"], p["prediction"]) for p in jsonl_predictions] == \
        [(p["reference"], p["prediction"]) for p in folder_predictions]
    assert [p["id"] for p in jsonl_predictions] == ["heldout/clips/heldout-0.wav", "heldout/clips/heldout-1.wav"]
