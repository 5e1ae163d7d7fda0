"""`gpujob pull`'s choice of what is complete, and its resumable copy from a local job's folder."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpujob.backends.outputs import choose, pull_dir
from gpujob.storage import NothingThere


def _outputs(root, files):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


FOLDER = {
    "metrics.json": b"{}", "predictions.jsonl": b"x\n",
    "model/model.safetensors": b"m" * 50, "model/README.md": b"card",
    "checkpoints/checkpoint-3/model.safetensors": b"3" * 40, "checkpoints/checkpoint-3/complete": b"ok\n",
    "checkpoints/checkpoint-6/model.safetensors": b"6" * 40, "checkpoints/checkpoint-6/complete": b"ok\n",
    "checkpoints/.tmp-checkpoint-9/model.safetensors": b"9" * 7,  # being written
    ".tmp-model/model.safetensors": b"t",
}


def test_all_takes_what_is_complete_and_a_second_pull_fetches_nothing(tmp_path):
    src = _outputs(tmp_path / "out", FOLDER)
    got = pull_dir(src, tmp_path / "here", "all", active=False)
    names = sorted(p.relative_to(tmp_path / "here").as_posix() for p in (tmp_path / "here").rglob("*") if p.is_file())
    assert names == sorted(k for k in FOLDER if ".tmp" not in k)
    assert got.fetched == got.files == 8 and got.bytes_fetched == got.bytes_total
    assert got.parts == ["model", "metrics.json and 1 more file", "checkpoint-3", "checkpoint-6"]
    again = pull_dir(src, tmp_path / "here", "all", active=False)
    assert again.fetched == 0 and again.files == 8
    (src / "metrics.json").write_bytes(b'{"wer": 0.5}')  # changed since: fetched again
    assert pull_dir(src, tmp_path / "here", "all", active=False).fetched == 1
    assert (tmp_path / "here" / "metrics.json").read_bytes() == b'{"wer": 0.5}'


def test_a_running_job_without_a_model_gives_its_newest_complete_checkpoint(tmp_path):
    files = {k: v for k, v in FOLDER.items() if not k.startswith("model/")}
    files.pop("checkpoints/checkpoint-6/complete")  # still being saved
    src = _outputs(tmp_path / "out", files)
    got = pull_dir(src, tmp_path / "here", "model", active=True)
    assert got.parts == ["checkpoint-3"] and "no final model yet" in got.notes[0]
    assert (tmp_path / "here/checkpoints/checkpoint-3/model.safetensors").read_bytes() == b"3" * 40
    assert not (tmp_path / "here/checkpoints/checkpoint-6").exists()


def test_nothing_complete_is_said(tmp_path):
    src = _outputs(tmp_path / "out", {"checkpoints/checkpoint-3/model.safetensors": b"x"})
    with pytest.raises(NothingThere) as err:
        pull_dir(src, tmp_path / "here", "model", active=True)
    assert "no final model and no complete checkpoint yet" in err.value.message


STEP = st.integers(1, 40)


@given(st.dictionaries(STEP, st.booleans(), max_size=6), st.booleans(), st.booleans(),
       st.sampled_from(["all", "model", "checkpoints"]))
def test_an_incomplete_checkpoint_is_never_pulled(ckpts, has_model, active, only):
    files = {"metrics.json": 2, **({"model/model.safetensors": 5} if has_model else {})}
    for step in ckpts:
        files[f"checkpoints/checkpoint-{step}/model.safetensors"] = 9
    complete = {f"checkpoint-{s}" for s, ok in ckpts.items() if ok}
    try:
        picked, parts, _ = choose(files, only, complete, has_model, active)
    except NothingThere:
        return
    taken = {p.split("/")[1] for p in picked if p.startswith("checkpoints/")}
    assert taken <= complete
    if only != "model" and complete and not (only == "all" and active):
        assert taken == complete
    if active and only == "all":
        assert len(taken) <= 1
