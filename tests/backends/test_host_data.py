"""Which folders of a host job's spec are this machine's (and so uploaded), and the spec the job
reads once they are on the host (gpujob.backends.host_data)."""

from __future__ import annotations

import pytest

from gpujob.backends.host_data import in_container, local_folders, rewritten
from gpujob.errors import UserError
from gpujob.spec.models import JobSpec


def train_spec(**model) -> JobSpec:
    return JobSpec.model_validate({
        "apiVersion": "gpujob/v1", "kind": "train", "model": {"checkpoint": "openai/whisper-small", **model},
        "data": {"train": [{"dataset": "data/cv-el/"}, {"dataset": "google/fleurs", "config": "el_gr"}],
                 "eval": [{"dataset": "./data/cv-el", "split": "test"}]},
        "training": {"max_steps": 10}, "resources": {"gpu_type": "H100"},
        "runtime": {"backend": "host"}})


def test_local_folders_are_found_once_each_and_hub_ids_are_left_alone(tmp_path):
    (tmp_path / "data" / "cv-el" / "clips").mkdir(parents=True)
    (tmp_path / "data" / "cv-el" / "train.tsv").write_text("path\tsentence\n")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    spec = train_spec(checkpoint="ckpt")
    found = local_folders(spec, str(tmp_path))
    assert [(f.path, f.keys) for f in found] == [
        (tmp_path / "data" / "cv-el", ["data.train[0].dataset", "data.eval[0].dataset"]),
        (tmp_path / "ckpt", ["model.checkpoint"])]

    again = rewritten(spec, {"data.train[0].dataset": in_container("a" * 64), "data.eval[0].dataset":
                             in_container("a" * 64), "model.checkpoint": in_container("b" * 64)})
    assert [s.dataset for s in again.data.train] == ["/gpujob/data/" + "a" * 16, "google/fleurs"]
    assert again.data.eval[0].dataset == "/gpujob/data/" + "a" * 16
    assert again.model.checkpoint == "/gpujob/data/" + "b" * 16
    assert spec.data.train[0].dataset == "data/cv-el/" and spec.model.checkpoint == "ckpt"  # the original is kept


def test_an_empty_folder_is_refused_naming_its_key(tmp_path):
    (tmp_path / "data" / "cv-el").mkdir(parents=True)
    with pytest.raises(UserError) as err:
        local_folders(train_spec(), str(tmp_path))
    assert err.value.message.startswith("data.train[0].dataset: ") and "empty folder" in err.value.message


def test_nothing_local_means_nothing_to_upload(tmp_path):
    assert local_folders(train_spec(), str(tmp_path)) == []
