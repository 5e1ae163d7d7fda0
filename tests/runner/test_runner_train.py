"""The Whisper runner on a tiny random model with the real tokenizer and real (libespeak-ng) Greek speech:
model set-up, loss falling, checkpoints, resume without redoing or skipping steps, SIGTERM, evaluate jobs."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

from gpujob_dev.espeak import write_wav  # noqa: E402
from tiny_runs import SENTENCES, run_runner, steps_and_losses, write_greek_folder, write_spec  # noqa: E402, F401 (re-exported)

from gpujob.runner.train_plan import lr_lambda  # noqa: E402

@pytest.fixture(scope="session")
def greek_folder(tmp_path_factory) -> Path:
    return write_greek_folder(tmp_path_factory.mktemp("greek"))


# ----------------------------------------------------------------------------- model set-up


def test_language_task_freeze_and_checkpointing_are_set_as_the_spec_says(tiny_model):
    from types import SimpleNamespace as NS

    from gpujob.runner.model import encoder_frozen, freeze, load, set_gradient_checkpointing

    spec = NS(model=NS(checkpoint=str(tiny_model), language="el", task="transcribe", window_seconds=None), training=NS(dropout=0.05))
    model, processor = load(spec, torch.device("cpu"), for_training=True)
    assert model.generation_config.language == "greek" and model.generation_config.task == "transcribe"
    assert model.generation_config.forced_decoder_ids is None and model.config.forced_decoder_ids is None
    assert model.config.dropout == 0.05
    prefix = processor.tokenizer.convert_ids_to_tokens(processor.tokenizer("γεια").input_ids[:4])
    assert prefix == ["<|startoftranscript|>", "<|el|>", "<|transcribe|>", "<|notimestamps|>"]

    counts = freeze(model, NS(encoder_layers=1))
    enc = model.model.encoder
    assert not any(p.requires_grad for p in enc.conv1.parameters())
    assert not any(p.requires_grad for p in enc.layers[0].parameters())
    assert all(p.requires_grad for p in enc.layers[1].parameters())
    assert counts["frozen"] > 0 and not encoder_frozen(model)
    assert set_gradient_checkpointing(model, "on", device=torch.device("cpu"))
    assert not enc.layers[0].gradient_checkpointing and enc.layers[1].gradient_checkpointing
    assert all(layer.gradient_checkpointing for layer in model.model.decoder.layers)
    assert model.config.use_cache is False

    freeze(model, "encoder")
    assert encoder_frozen(model)
    set_gradient_checkpointing(model, "on", device=torch.device("cpu"))
    assert not any(layer.gradient_checkpointing for layer in enc.layers)


def test_linear_schedule_warms_up_then_decays_to_zero():
    f = lr_lambda(warmup=10, total=110, schedule="linear")
    assert f(0) == pytest.approx(0.1) and f(9) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5) and f(110) == 0.0


# ----------------------------------------------------------------------------- training runs


def test_tiny_run_loss_falls_and_writes_checkpoints_metrics_and_card(tmp_path, tiny_model, greek_folder):
    spec = write_spec(tmp_path, tiny_model, greek_folder, max_steps=16, learning_rate=5e-3)
    code, events, output = run_runner(spec)
    assert code == 0, output[-3000:]
    losses = [loss for _, loss in steps_and_losses(events)]
    assert len(losses) == 16
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
    kinds = [e["event"] for e in events]
    assert kinds[0] == "start" and kinds[-1] == "end" and "eval" in kinds and "checkpoint" in kinds
    assert events[-1]["status"] == "succeeded" and "wer" in events[-1]["metrics"]
    out = tmp_path / "out"
    assert (out / "checkpoints" / "checkpoint-15" / "complete").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 16 and 0 <= metrics["wer"]
    card = (out / "model" / "README.md").read_text()
    assert "model-index:" in card and "language:\n- el" in card and "type: wer" in card
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 2
    assert "Caching is incompatible" not in output and "forced_decoder_ids" not in output


def test_frozen_token_embeddings_stay_as_they_were_while_the_decoder_trains(tmp_path, tiny_model, greek_folder):
    from safetensors.torch import load_file

    spec = write_spec(tmp_path, tiny_model, greek_folder, max_steps=6, learning_rate=5e-3, freeze="encoder",
                      freeze_token_embeddings=True)
    code, events, output = run_runner(spec)
    assert code == 0, output[-3000:]
    assert events[-1]["status"] == "succeeded"
    before, after = load_file(tiny_model / "model.safetensors"), load_file(tmp_path / "out" / "model" / "model.safetensors")
    embed = "model.decoder.embed_tokens.weight"
    assert torch.equal(after[embed], before[embed])  # the output layer too: the same (tied) tensor
    assert "proj_out.weight" not in after or torch.equal(after["proj_out.weight"], before[embed])
    assert torch.equal(after["model.encoder.layers.0.fc1.weight"], before["model.encoder.layers.0.fc1.weight"])
    changed = [k for k in before if k.startswith("model.decoder.layers.") and not torch.equal(after[k], before[k])]
    assert any(".self_attn." in k for k in changed) and any(".fc1." in k for k in changed)
    n_embed = before[embed].numel()
    trainable = next(line for line in output.splitlines() if "M trainable" in line)
    whole = sum(v.numel() for k, v in before.items() if k.startswith("model.decoder.")) - n_embed
    assert f"{whole / 1e6:.1f}M trainable" in trainable, trainable


def test_a_killed_run_resumes_from_its_last_checkpoint_with_the_same_steps(tmp_path, tiny_model, greek_folder):
    (tmp_path / "a").mkdir()
    code, events, output = run_runner(write_spec(tmp_path / "a", tiny_model, greek_folder))
    assert code == 0, output[-3000:]
    expected = steps_and_losses(events)

    (tmp_path / "b").mkdir()
    spec = write_spec(tmp_path / "b", tiny_model, greek_folder)
    code, first, _ = run_runner(spec, stop_at_step=7, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL
    code, second, output = run_runner(spec)
    assert code == 0, output[-3000:]
    resumed = steps_and_losses(second)
    assert resumed[0][0] == 7  # checkpoint-6 was the last complete one: nothing skipped
    assert [s for s, _ in resumed] == list(range(7, 13))  # and nothing done twice in this run
    for (step, loss), (ref_step, ref_loss) in zip(resumed, expected[6:]):
        assert step == ref_step and loss == pytest.approx(ref_loss, rel=1e-4, abs=1e-5)


def test_another_run_in_the_same_output_dir_is_refused_and_a_longer_one_resumes(tmp_path, tiny_model, greek_folder):
    """A spec whose model, training data or freezing changed must not silently continue the old run's
    checkpoints (the quickstart's new recipe resumed the old one's); one that only trains longer must."""
    code, _, output = run_runner(write_spec(tmp_path, tiny_model, greek_folder, max_steps=3))
    assert code == 0, output[-3000:]
    spec = json.loads((tmp_path / "spec.yaml").read_text())
    other = {**spec, "data": {**spec["data"], "train": [{"dataset": str(greek_folder), "split": "heldout"}]},
             "training": {**spec["training"], "freeze": "encoder"}}
    (tmp_path / "spec.yaml").write_text(json.dumps(other))
    code, events, output = run_runner(tmp_path / "spec.yaml")
    assert code == 2, output[-3000:]
    end = events[-1]
    assert end["event"] == "end" and end["status"] == "failed"
    assert "output.dir" in output and "data.train, training.freeze differ" in output and "Traceback" not in output
    assert sorted(p.name for p in (tmp_path / "out" / "checkpoints").iterdir()) == ["checkpoint-3"]  # untouched

    code, events, output = run_runner(write_spec(tmp_path, tiny_model, greek_folder, max_steps=5))
    assert code == 0, output[-3000:]
    assert [s for s, _ in steps_and_losses(events)] == [4, 5]


def test_sigterm_saves_a_checkpoint_and_exits_143(tmp_path, tiny_model, greek_folder):
    spec = write_spec(tmp_path, tiny_model, greek_folder, save_steps=1000)
    code, events, output = run_runner(spec, stop_at_step=4, sig=signal.SIGTERM)
    assert code == 143, output[-3000:]
    saved = [e for e in events if e["event"] == "checkpoint"]
    assert saved and events[-1]["event"] == "end" and events[-1]["status"] == "failed"
    step = saved[-1]["step"]
    code, again, output = run_runner(spec)
    assert code == 0, output[-3000:]
    assert steps_and_losses(again)[0][0] == step + 1


def test_evaluate_job_writes_predictions_and_metrics(tmp_path, tiny_model, greek_folder, monkeypatch):
    monkeypatch.setenv("GPUJOB_CPU_PRECISION", "bf16")  # what auto runs, and says, on a CPU
    spec = write_spec(tmp_path, tiny_model, greek_folder, kind="evaluate", precision="auto")
    code, events, output = run_runner(spec)
    assert code == 0, output[-3000:]
    assert "precision bf16 (auto: bf16: set by GPUJOB_CPU_PRECISION)" in output
    out = tmp_path / "out"
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 2 and {"reference", "prediction", "wer"} <= set(predictions[0])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["utterances"] == 2 and "wer" in metrics and "cer" in metrics
    assert events[-1]["event"] == "end" and events[-1]["metrics"]["wer"] == metrics["wer"]
    # the worst utterances' clips, read again from data.eval: each one its utterance's audio at 16 kHz
    import soundfile as sf

    from gpujob.runner.data import load_audio

    index = json.loads((out / "worst_audio" / "index.json").read_text())
    assert sorted(e["id"] for e in index) == sorted(p["id"] for p in predictions)
    for e in index:
        kept, rate = sf.read(out / "worst_audio" / e["file"], dtype="float32")
        original = load_audio(str(greek_folder / e["id"]), name=e["id"])
        assert rate == 16000 and len(kept) == len(original) and abs(kept - original).max() < 1e-3
        assert e["duration_s"] == round(len(original) / 16000, 3)


def test_a_spec_file_from_before_the_runtime_split_still_runs(tmp_path, tiny_model, greek_folder):
    """The spec file an older gpujob wrote for a job held every backend's runtime settings; a job image
    with this runner still runs it."""
    spec = json.loads(write_spec(tmp_path, tiny_model, greek_folder, kind="evaluate").read_text())
    spec["runtime"] = {"backend": "kubernetes", "image": None, "namespace": "ml", "context": None, "queue": None,
                       "cache_pvc": "gpujob-hf-cache", "secret_store": "gpujob-secrets",
                       "gpu_node_label": "nvidia.com/gpu.product", "host": None, "host_type": None, "region": None,
                       "filesystem": None, "host_idle": "15m", "host_max_lifetime": "12h", "env": {}, "secrets": []}
    old = tmp_path / "old-spec.json"
    old.write_text(json.dumps(spec))
    code, events, output = run_runner(old)
    assert code == 0, output[-3000:]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "succeeded"


def test_bad_data_fails_with_exit_2_and_a_message(tmp_path, tiny_model, greek_folder):
    path = write_spec(tmp_path, tiny_model, greek_folder)
    spec = json.loads(path.read_text())
    spec["data"]["train"][0]["text_column"] = "sentense"
    path.write_text(json.dumps(spec))
    code, events, output = run_runner(path)
    assert code == 2
    assert "sentense" in output and "transcription" in output  # did you mean: the columns that exist
    assert "Traceback" not in output


def test_epochs_set_the_number_of_steps_from_the_data(tmp_path, tiny_model, greek_folder):
    path = write_spec(tmp_path, tiny_model, greek_folder)
    spec = json.loads(path.read_text())
    del spec["training"]["max_steps"]
    spec["training"]["epochs"] = 2  # 8 clips, batch 4: 2 steps an epoch
    path.write_text(json.dumps(spec))
    code, events, output = run_runner(path)
    assert code == 0, output[-3000:]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == [1, 2, 3, 4] and progress[-1]["total_steps"] == 4
    assert progress[-1]["epoch"] == pytest.approx(2.0)


def test_a_max_steps_run_reports_a_fractional_epoch_like_the_trainer(tmp_path, tiny_model, greek_folder):
    """8 clips, batch 4, 3 steps by max_steps: epochs 0.5, 1.0, 1.5 (it read 0, 0, 1: the epoch's index)."""
    path = write_spec(tmp_path, tiny_model, greek_folder)
    spec = json.loads(path.read_text())
    spec["training"]["max_steps"] = 3
    path.write_text(json.dumps(spec))
    code, events, output = run_runner(path)
    assert code == 0, output[-3000:]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["epoch"] for e in progress] == pytest.approx([0.5, 1.0, 1.5])


def test_gpujob_check_reports_counts_and_refuses_a_missing_column(tmp_path, tiny_model, greek_folder):
    from typer.testing import CliRunner

    from gpujob.cli.app import app

    path = write_spec(tmp_path, tiny_model, greek_folder)
    result = CliRunner().invoke(app, ["check", str(path)])
    assert result.exit_code == 0, result.output
    assert "8 kept" in result.output and "2 kept" in result.output and "next: gpujob submit" in result.output
    bad = CliRunner().invoke(app, ["check", str(path), "--set", "data.eval[0].text_column=sentence"])
    assert bad.exit_code == 2
    assert "data.eval[0].text_column" in bad.output and "transcription" in bad.output


def test_log_mel_features_stay_float32_inside_a_bf16_autocast(tiny_model):
    """The runner computes features inside its autocast block; under bf16 the extractor's matmul
    came out in bf16 and crashed converting to numpy on the first batch of every bf16 GPU run."""
    import numpy as np
    from transformers import WhisperFeatureExtractor

    from gpujob.runner.batches import features

    extractor = WhisperFeatureExtractor.from_pretrained(tiny_model)
    audio = [np.sin(np.linspace(0, 440 * 2 * np.pi, 16000)).astype(np.float32)]
    plain = features(extractor, audio, torch.device("cpu"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = features(extractor, audio, torch.device("cpu"))
    assert mixed.dtype == torch.float32 and mixed.shape == plain.shape == (1, 80, 3000)
    assert torch.equal(mixed, plain)


def test_batched_sorted_evaluation_gives_the_plain_greedy_transcripts(tmp_path, base_model):
    """The runner's evaluation (length-sorted batches of 3, its own log-mel, its language/task
    set-up) against the plain path: the library's feature extractor and ``generate`` one clip
    at a time, greedy. Real Whisper base, real Greek speech of different lengths."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from gpujob.runner import data as data_mod
    from gpujob.runner.evaluate import evaluate
    from gpujob.runner.model import load, pick_precision
    from gpujob.spec import JobSpec

    folder = tmp_path / "mixed" / "train"
    folder.mkdir(parents=True)
    rows = ["file_name,transcription"]
    for i, text in enumerate(SENTENCES[:7]):
        words = " ".join([text] * (1 + i % 3))  # 1-3 repetitions: clips of 1 to about 8 s
        write_wav(folder / f"{i}.wav", words, speed=170)
        rows.append(f'{i}.wav,"{words}"')
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    spec = JobSpec.model_validate({
        "apiVersion": "gpujob/v1", "kind": "evaluate", "model": {"checkpoint": str(base_model), "language": "el"},
        "data": {"eval": [{"dataset": str(folder.parent)}]}, "evaluation": {"batch_size": 3},
        "training": {"generation_max_length": 60, "precision": "fp32"}, "resources": {"gpus": 0}})
    examples = list(data_mod.iter_examples(spec.data.eval, streaming=False, seed=0, workers=2))
    assert len({len(e["audio"]) for e in examples}) == 7
    cpu = torch.device("cpu")
    model, processor = load(spec, cpu, for_training=False)
    scores = evaluate(model, processor, examples, spec=spec, device=cpu, precision=pick_precision("fp32", cpu))
    ours = [u["prediction"] for u in scores.per_utterance]

    plain = WhisperForConditionalGeneration.from_pretrained(base_model).eval()
    proc = WhisperProcessor.from_pretrained(base_model)
    expected = []
    with torch.no_grad():
        for e in examples:
            feats = proc.feature_extractor(e["audio"], sampling_rate=16000, return_tensors="pt").input_features
            ids = plain.generate(feats, language="greek", task="transcribe", num_beams=1, do_sample=False,
                                 max_length=60)
            expected.append(proc.batch_decode(ids, skip_special_tokens=True)[0].strip())
    assert ours == expected
    assert [u["id"] for u in scores.per_utterance] == [e["id"] for e in examples]
    assert any(expected) and len(set(expected)) > 3


def test_precision_auto_on_a_cpu_is_measured_said_and_kept_on_resume(tmp_path, tiny_model, greek_folder, monkeypatch):
    """`precision: auto` on a CPU: the job says what the start-up probe measured and chose; a run resumed later
    keeps that precision even where the choice would now be another (here forced with GPUJOB_CPU_PRECISION)."""
    monkeypatch.delenv("GPUJOB_CPU_PRECISION")
    code, _, output = run_runner(write_spec(tmp_path, tiny_model, greek_folder, max_steps=3, precision="auto"))
    assert code == 0, output[-3000:]
    line = next(x for x in output.splitlines() if "trainable" in x)
    chosen = "bf16" if "; precision bf16;" in line else "fp32"
    assert f"(auto: {chosen}: " in line and ("x as fast as fp32" in line or "x the speed of fp32" in line)
    state = json.loads(next((tmp_path / "out" / "checkpoints").glob("checkpoint-3")).joinpath("state.json").read_text())
    assert state["precision"] == chosen
    monkeypatch.setenv("GPUJOB_CPU_PRECISION", "fp32" if chosen == "bf16" else "bf16")
    code, events, output = run_runner(write_spec(tmp_path, tiny_model, greek_folder, max_steps=5, precision="auto"))
    assert code == 0, output[-3000:]
    assert f"precision {chosen};" in output and f"(auto: {chosen}, as the checkpoint resumed was trained)" in output
    assert [s for s, _ in steps_and_losses(events)] == [4, 5]
