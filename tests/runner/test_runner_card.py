"""The model card as the Hub reads it: huggingface_hub's own parser (``ModelCard.load``, ``metadata_load``)
finds the base model's Hub id (never a local path), the licence of the base model's card, and one eval
result per source and metric equal to metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("huggingface_hub")
from huggingface_hub import ModelCard, metadata_load  # noqa: E402

from gpujob.runner.card import base_model_id, write_model_card  # noqa: E402
from gpujob.spec.models import JobSpec  # noqa: E402

METRICS = {"wer": 0.2345678, "cer": 0.0812, "steps": 130, "best_step": 120, "baseline_wer": 1.014, "sources": {
    "fleurs": {"wer": 0.25, "cer": 0.1234567, "utterances": 10},
    "speech": {"wer": 0.1, "cer": None, "utterances": 5}}}


def local_checkpoint(root: Path, *, recorded: str | None, license: str | None) -> Path:
    folder = root / "whisper-base"
    folder.mkdir(parents=True)
    config = {"model_type": "whisper", **({"gpujob_base_model": recorded} if recorded else {})}
    (folder / "config.json").write_text(json.dumps(config))
    if license:
        (folder / "README.md").write_text(f"---\nlicense: {license}\ntags:\n- audio\n---\n# Whisper base\n")
    return folder


def spec_for(checkpoint: str, data: Path) -> JobSpec:
    return JobSpec.model_validate({
        "apiVersion": "gpujob/v1", "kind": "train", "name": "el-base",
        "model": {"checkpoint": checkpoint, "language": "greek"},
        "data": {"train": [{"dataset": "google/fleurs", "config": "el_gr", "split": "train"}],
                 "eval": [{"dataset": "google/fleurs", "config": "el_gr", "split": "test"},
                          {"dataset": str(data), "split": "heldout", "name": "speech"}]},
        "training": {"max_steps": 130, "learning_rate": 2e-4}, "resources": {"gpus": 0}})


def test_the_card_names_the_recorded_hub_id_the_base_cards_licence_and_eval_results_equal_to_metrics(tmp_path):
    checkpoint = local_checkpoint(tmp_path, recorded="openai/whisper-base", license="mit")
    data = tmp_path / "speech"
    data.mkdir()
    spec = spec_for(str(checkpoint), data)
    readme = write_model_card(tmp_path / "model", spec, METRICS,
                              worst_rows=[{"id": "a|1", "wer": 1.0, "reference_normalized": "καλημέρα",
                                           "prediction_normalized": "καλη μέρα"}],
                              history=[{"kind": "progress", "step": s, "loss": 3.0 / s} for s in range(1, 6)]
                              + [{"kind": "eval", "step": 5, "wer": 0.3}])
    card = ModelCard.load(readme)
    meta = metadata_load(readme)
    assert card.data.base_model == meta["base_model"] == "openai/whisper-base"
    assert card.data.license == "mit"
    assert meta["language"] == ["el"] and meta["datasets"] == ["google/fleurs"]
    assert {"whisper", "automatic-speech-recognition", "gpujob"} <= set(meta["tags"])
    got = {(r.dataset_name, r.dataset_config, r.dataset_split, r.metric_type): r.metric_value
           for r in card.data.eval_results}
    assert all(r.task_type == "automatic-speech-recognition" for r in card.data.eval_results)
    assert got == {(dataset, config, split, key): pytest.approx(METRICS["sources"][name][key] * 100, abs=1e-4)
                   for name, dataset, config, split in (("fleurs", "google/fleurs", "el_gr", "test"),
                                                        ("speech", "speech", None, "heldout"))
                   for key in ("wer", "cer") if METRICS["sources"][name][key] is not None}
    text = readme.read_text()
    assert str(tmp_path) not in text.split("---")[1]  # no local path in the metadata
    assert "![training curves](curves.png)" in text and (tmp_path / "model" / "curves.png").stat().st_size > 1000
    assert "a\\|1" in text and "faster-whisper" in text and "| 23.46 |" in text


def test_without_a_recorded_id_or_a_base_card_base_model_and_licence_are_left_out_with_a_note(tmp_path):
    checkpoint = local_checkpoint(tmp_path, recorded=None, license=None)
    data = tmp_path / "speech"
    data.mkdir()
    readme = write_model_card(tmp_path / "model", spec_for(str(checkpoint), data), METRICS)
    meta = metadata_load(readme)
    assert "base_model" not in meta and "license" not in meta
    text = readme.read_text()
    assert "check the base model's licence" in text and str(checkpoint) not in text.split("---")[1]


@pytest.mark.parametrize(("checkpoint", "expected"), [
    ("openai/whisper-small", "openai/whisper-small"), ("./outputs/run/checkpoint-40", None),
    ("/abs/whisper-base", None), ("whisper-base", None)])
def test_base_model_is_a_hub_id_or_nothing(checkpoint, expected):
    assert base_model_id(checkpoint) == expected


def test_a_hub_checkpoint_is_its_own_base_model_and_its_cached_card_gives_the_licence(tmp_path, monkeypatch):
    import huggingface_hub

    readme = tmp_path / "README.md"
    readme.write_text("---\nlicense: apache-2.0\n---\n")
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(readme))
    data = tmp_path / "speech"
    data.mkdir()
    meta = metadata_load(write_model_card(tmp_path / "model", spec_for("openai/whisper-small", data), METRICS))
    assert meta["base_model"] == "openai/whisper-small" and meta["license"] == "apache-2.0"


@pytest.mark.parametrize("endpoint", ["closed-port", "https://hub.nonexistent.invalid"])
def test_offline_the_hub_cards_licence_is_left_out_at_once_without_retry_lines(endpoint, tmp_path, monkeypatch, capfd):
    """A Hub checkpoint whose card is not cached, the network denied: the card is written within seconds,
    its licence left out with the note; none of huggingface_hub's retry lines in the job's log."""
    import contextlib
    import time

    from ports import refusing_port

    for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub-cache"))
    data = tmp_path / "speech"
    data.mkdir()
    with refusing_port() if endpoint == "closed-port" else contextlib.nullcontext() as port:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{port}" if port else endpoint)
        started = time.monotonic()
        readme = write_model_card(tmp_path / "model", spec_for("openai/whisper-small", data), METRICS)
        took = time.monotonic() - started
    meta = metadata_load(readme)
    assert took < 10, f"took {took:.1f}s"
    assert meta["base_model"] == "openai/whisper-small" and "license" not in meta
    assert "check the base model's licence" in Path(readme).read_text()
    printed = capfd.readouterr()
    assert "Retrying" not in printed.out + printed.err
