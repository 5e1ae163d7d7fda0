"""Eval loss: the teacher-forced cross-entropy of the evaluation clips, computed in the pass that
transcribes them, is the training loss's definition on the same clips; a train job reports it in its
eval events (a tiny random Whisper, real Greek speech)."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from gpujob_dev.espeak import write_wav  # noqa: E402
from tiny_runs import SENTENCES, write_greek_folder, write_spec  # noqa: E402

from test_runner_train import run_runner  # noqa: E402


def test_eval_loss_is_the_training_loss_of_the_same_clips(tmp_path, tiny_model):
    import soundfile as sf
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from gpujob.runner.batches import collate, label_ids
    from gpujob.runner.evaluate import LossTally, transcribe
    from gpujob.runner.model import Precision
    from gpujob.runner.update import mean_loss

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model).eval()
    processor = WhisperProcessor.from_pretrained(tiny_model)
    processor.tokenizer.set_prefix_tokens(language="greek", task="transcribe", predict_timestamps=False)
    audio, texts = [], SENTENCES[:3]
    for i, text in enumerate(texts):
        write_wav(tmp_path / f"{i}.wav", text, speed=170)
        wave, _rate = sf.read(tmp_path / f"{i}.wav", dtype="float32")  # (the rate does not matter here)
        audio.append(wave)
    fp32 = Precision("fp32", None, False)
    spec = NS(model=NS(language="el", task="transcribe"), training=NS(generation_max_length=10))
    tally = LossTally()
    cpu = torch.device("cpu")
    transcribe(model, processor, audio, [str(i) for i in range(3)], spec=spec, device=cpu, precision=fp32,
               texts=texts, tally=tally)
    batch = collate([(str(i), t, a, label_ids(processor.tokenizer, t)) for i, (t, a) in enumerate(zip(texts, audio))])
    with torch.no_grad():
        expected = mean_loss(model, processor, batch, cpu, fp32, None).item()
    assert tally.tokens == batch.tokens
    assert math.isclose(tally.mean(), expected, rel_tol=1e-4), (tally.mean(), expected)


def test_a_tiny_train_job_reports_eval_loss_in_its_eval_events(tmp_path, tiny_model):
    (tmp_path / "greek").mkdir()
    data = write_greek_folder(tmp_path / "greek")
    code, events, output = run_runner(write_spec(tmp_path, tiny_model, data, max_steps=4, eval_steps=2,
                                                 learning_rate=5e-3, save_steps=1000))
    assert code == 0, output[-3000:]
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [2, 4]
    assert all(math.isfinite(e["eval_loss"]) and e["eval_loss"] > 0 for e in evals), evals
    assert events[-1]["metrics"]["eval_loss"] == evals[-1]["eval_loss"]
