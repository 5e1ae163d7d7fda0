"""``model.window_seconds``: the encoder reads a shorter window than Whisper's 30 s. The window's positions are
the first ones of the checkpoint's, the encoder runs on it through transformers' own forward, clips longer than
the window are left out and counted, and the model a job saves loads and reads the same way in transformers
(its processor pads to the window) and in CTranslate2 (the export scores like it)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from tiny_runs import run_runner, write_greek_folder, write_spec  # noqa: E402

from gpujob.runner import data as data_mod  # noqa: E402
from gpujob.runner import model as model_mod  # noqa: E402


@pytest.fixture(scope="module")
def greek(tmp_path_factory) -> Path:
    return write_greek_folder(tmp_path_factory.mktemp("greek"))


@pytest.fixture(scope="module")
def tiny(tiny_model):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    return (lambda: (WhisperForConditionalGeneration.from_pretrained(tiny_model).eval(),
                     WhisperProcessor.from_pretrained(tiny_model)))


@settings(max_examples=12, deadline=None)
@given(seconds=st.integers(1, 29))
def test_a_window_keeps_the_first_positions_and_transformers_encodes_it(tiny, seconds):
    model, processor = tiny()
    full = model.model.encoder.embed_positions.weight.detach().clone()
    assert model_mod.set_window(model, processor, seconds) == seconds == data_mod.window_seconds()
    n = seconds * 50
    assert model.config.max_source_positions == n
    assert torch.equal(model.model.encoder.embed_positions.weight, full[:n])
    fe = processor.feature_extractor
    assert (fe.chunk_length, fe.n_samples, fe.nb_max_frames) == (seconds, seconds * 16000, seconds * 100)
    audio = torch.randn(int(seconds * 16000 * 0.7)).numpy() * 0.1
    feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape[-1] == seconds * 100
    with torch.no_grad():
        states = model.model.encoder(feats).last_hidden_state  # transformers checks the length itself
        assert states.shape[1] == n
        assert torch.allclose(model_mod.encode(model, feats), states)


def test_a_window_longer_than_the_checkpoints_is_refused_by_name(tiny):
    model, processor = tiny()
    model_mod.set_window(model, processor, 10)
    with pytest.raises(ValueError, match=r"model.window_seconds: 20 s is longer than this checkpoint's window \(10 s\)"):
        model_mod.set_window(model, processor, 20)
    assert model_mod.set_window(model, processor, None) == 10  # unset: the checkpoint's own


@settings(max_examples=20, deadline=None)
@given(window=st.floats(0.5, 30), seconds=st.floats(0.1, 40))
def test_a_clip_is_kept_exactly_when_it_fits_the_window(window, seconds):
    data_mod.set_window_seconds(window)
    try:
        clip = torch.zeros(int(seconds * 16000)).numpy()
        assert (data_mod.judge(clip) == "kept") == (len(clip) / 16000 <= window)
    finally:
        data_mod.set_window_seconds(data_mod.MAX_SECONDS)


def test_clips_longer_than_the_window_are_left_out_and_counted(greek):
    import soundfile as sf

    durations = [sf.info(str(p)).duration for p in sorted((greek / "train").glob("*.wav"))]
    ranked = sorted(durations)
    window = (ranked[len(ranked) // 2 - 1] + ranked[len(ranked) // 2]) / 2  # half the clips are longer
    from gpujob.spec.models import Source

    data_mod.set_window_seconds(window)
    stats = data_mod.Stats()
    kept = list(data_mod.iter_examples([Source(dataset=str(greek), split="train")], streaming=False, seed=1,
                                       stats=stats))
    longer = sum(d > window + 1e-9 for d in durations)
    assert longer and stats.too_long == longer and len(kept) == stats.kept == len(durations) - longer
    assert longer == len(durations) // 2 and f"{longer} over {window:g} s" in stats.summary()


def test_a_job_with_a_window_saves_a_model_transformers_and_ctranslate2_read_the_same_way(tmp_path, tiny_model, greek):
    pytest.importorskip("ctranslate2")
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    path = write_spec(tmp_path, tiny_model, greek, max_steps=6, learning_rate=5e-3, save_steps=100)
    raw = json.loads(path.read_text())
    raw["model"]["window_seconds"] = 5
    raw["output"]["export"] = ["ctranslate2"]  # fails the job where CTranslate2 scores the model differently
    path.write_text(json.dumps(raw))
    code, events, output = run_runner(path)
    assert code == 0, output[-6000:]
    assert events[-1]["status"] == "succeeded"
    saved = tmp_path / "out" / "model"
    assert json.loads((saved / "config.json").read_text())["max_source_positions"] == 250
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    result = metrics["export"]["ctranslate2"]
    assert abs(result["wer"] - result["transformers_wer"]) * 100 <= 0.5 and result["utterances"] == 2
    # transformers alone, as anyone would load the model: its processor pads to 5 s, and the model generates
    model = WhisperForConditionalGeneration.from_pretrained(saved).eval()
    processor = WhisperProcessor.from_pretrained(saved)
    import soundfile as sf

    audio = [sf.read(str(p))[0] for p in sorted((greek / "heldout").glob("*.wav"))]
    feats = processor(audio, sampling_rate=16000, return_tensors="pt").input_features
    assert feats.shape[-1] == 500
    with torch.no_grad():
        ids = model.generate(feats, language="el", task="transcribe", max_new_tokens=40)
    texts = processor.batch_decode(ids, skip_special_tokens=True)
    assert len(texts) == 2 and all(t.strip() for t in texts)
