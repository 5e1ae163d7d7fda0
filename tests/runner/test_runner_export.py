"""``output.export: [ctranslate2]``: the CTranslate2 export of a model scores like the model (the same
transcripts, WER within the gap), a broken export (a wrong tokenizer) fails with both numbers, and a train
job reports both engines in its events, metrics.json, end metrics and card."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ctranslate2")
torch = pytest.importorskip("torch")

from tiny_runs import run_runner, write_greek_folder, write_spec  # noqa: E402

from gpujob.runner import data as data_mod  # noqa: E402
from gpujob.runner import export  # noqa: E402
from gpujob.spec.models import JobSpec  # noqa: E402


@pytest.fixture(scope="module")
def greek(tmp_path_factory) -> Path:
    return write_greek_folder(tmp_path_factory.mktemp("greek"))


def spec_for(model: Path, data: Path, **export_options) -> JobSpec:
    return JobSpec.model_validate({
        "apiVersion": "gpujob/v1", "kind": "train", "name": "el-base", "model": {"checkpoint": str(model), "language": "el"},
        "data": {"train": [{"dataset": str(data), "split": "train"}], "eval": [{"dataset": str(data), "split": "heldout"}]},
        "training": {"max_steps": 1, "precision": "fp32", "generation_max_length": 60},
        "output": {"export": [{"ctranslate2": export_options}]}, "resources": {"gpus": 0}})


def clips(spec: JobSpec) -> list[dict]:
    return list(data_mod.iter_examples(spec.data.eval, streaming=False, seed=1, key="data.eval", workers=0))


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict]] = []

    def emit(self, event, **fields):
        self.seen.append((event, fields))

    def artifact(self, **fields):
        self.seen.append(("artifact", fields))


def test_the_ctranslate2_export_of_whisper_base_transcribes_like_transformers(tmp_path, base_model, greek):
    spec = spec_for(base_model, greek)
    examples = clips(spec)
    metrics: dict = {}
    (tmp_path / "model").symlink_to(base_model)
    events = Events()
    export.run_exports(spec, tmp_path, events, metrics, examples=examples, batch_size=4)
    result = metrics["export"]["ctranslate2"]
    assert result["transformers_wer"] is not None and result["transformers_wer"] < 1.0  # the model says something
    assert abs(result["wer"] - result["transformers_wer"]) * 100 <= 0.5
    assert result["same_transcripts"] == result["utterances"] == len(examples) == 2
    assert result["utterances_per_s"] > 0 and result["transformers_utterances_per_s"] > 0
    assert export.is_ct2_dir(tmp_path / "model-ct2")
    assert {"tokenizer.json", "preprocessor_config.json"} <= set(os.listdir(tmp_path / "model-ct2"))
    [(name, fields)] = [e for e in events.seen if e[0] == "export"]
    assert fields["wer"] == result["wer"] and fields["transformers_wer"] == result["transformers_wer"]


def wrong_tokenizer(path: Path) -> None:
    """The tokenizer with its text tokens' ids reversed: special tokens stay, every word decodes wrong."""
    data = json.loads(path.read_text())
    vocab = data["model"]["vocab"]
    top = 50256
    data["model"]["vocab"] = {tok: (top - 1 - i if i < top else i) for tok, i in vocab.items()}
    path.write_text(json.dumps(data))


def test_an_export_with_a_wrong_tokenizer_fails_with_both_wers(tmp_path, base_model, greek, monkeypatch):
    real = export.convert

    def broken(model_dir, dest, quantization):
        real(model_dir, dest, quantization)
        wrong_tokenizer(dest / "tokenizer.json")
        return dest

    monkeypatch.setattr(export, "convert", broken)
    spec = spec_for(base_model, greek)
    (tmp_path / "model").symlink_to(base_model)
    metrics: dict = {}
    with pytest.raises(export.ExportError) as failed:
        export.run_exports(spec, tmp_path, Events(), metrics, examples=clips(spec), batch_size=4)
    result = metrics["export"]["ctranslate2"]
    message = str(failed.value)
    assert f"{result['wer'] * 100:.2f}%" in message and f"{result['transformers_wer'] * 100:.2f}%" in message
    assert "max_wer_gap (0.5)" in message and (result["wer"] - result["transformers_wer"]) * 100 > 0.5


def test_a_train_job_with_export_reports_both_engines_everywhere(tmp_path, tiny_model, greek):
    path = write_spec(tmp_path, tiny_model, greek, max_steps=8, learning_rate=5e-3, save_steps=100)
    raw = json.loads(path.read_text())
    raw["output"]["export"] = ["ctranslate2"]
    path.write_text(json.dumps(raw))
    code, events, output = run_runner(path)
    assert code == 0, output[-6000:]
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    result = metrics["export"]["ctranslate2"]
    assert result["transformers_wer"] == pytest.approx(metrics["wer"])  # the final model is the one exported
    assert abs(result["wer"] - result["transformers_wer"]) * 100 <= 0.5
    [exported] = [e for e in events if e["event"] == "export"]
    assert exported["wer"] == pytest.approx(result["wer"])
    end = events[-1]
    assert end["status"] == "succeeded" and end["metrics"]["ct2_wer"] == pytest.approx(result["wer"])
    assert end["metrics"]["ct2_utterances_per_s"] > 0
    card = (tmp_path / "out" / "model" / "README.md").read_text()
    assert "### CTranslate2 (faster-whisper)" in card and "WhisperModel(path" in card
    assert export.is_ct2_dir(tmp_path / "out" / "model-ct2")


def test_an_evaluate_job_on_the_ctranslate2_folder_scores_like_one_on_the_model(tmp_path, base_model, greek):
    """kind: evaluate detects a CTranslate2 folder: the same clips give the same transcripts as transformers.
    (Whisper base, whose transcripts end before the length cap: on a random model that never stops, CTranslate2
    stopped at half of max_length where transformers stops at max_length less the prompt.)"""
    export.convert(Path(base_model), tmp_path / "ct2", None)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    outputs = {}
    for name, model in (("hf", Path(base_model)), ("ct2", tmp_path / "ct2")):
        (tmp_path / f"{name}-job").mkdir()
        path = write_spec(tmp_path / f"{name}-job", model, greek, kind="evaluate")
        raw = json.loads(path.read_text())
        path.write_text(json.dumps({**raw, "training": {"generation_max_length": 60, "precision": "fp32"}}))
        proc = subprocess.run([sys.executable, "-m", "gpujob.runner", str(path)], capture_output=True, text=True,
                              env=env, timeout=600)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        outputs[name] = (proc.stdout, tmp_path / f"{name}-job" / "out")
    assert "CTranslate2 (float32)" in outputs["ct2"][0]
    metrics = {k: json.loads((out / "metrics.json").read_text()) for k, (_, out) in outputs.items()}
    assert metrics["ct2"]["engine"] == "ctranslate2" and metrics["ct2"]["wer"] == metrics["hf"]["wer"]
    predictions = {k: [json.loads(line)["prediction"] for line in (out / "predictions.jsonl").read_text().splitlines()]
                   for k, (_, out) in outputs.items()}
    assert predictions["ct2"] == predictions["hf"]
