"""Training-time augmentation (``training.augment``) and early stopping, as a user would check them:
the audio's length, SNR and loudness change as asked, SpecAugment masks spans only while training,
labels never change, and early stopping stops after `patience` evaluations and keeps the best model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from gpujob_dev.espeak import write_wav  # noqa: E402
from tiny_runs import write_greek_folder, write_spec  # noqa: E402

from gpujob.runner.audio import decode  # noqa: E402
from gpujob.runner.augment import (  # noqa: E402
    Augmenter, add_noise, apply_gain, change_speed, configure_spec_augment, noise, rms, snr_db,
)
from gpujob.runner.data import iter_clips, source_labels  # noqa: E402
from gpujob.runner.steps import steps  # noqa: E402
from gpujob.spec.augment import AugmentSection  # noqa: E402


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    wav = tmp_path_factory.mktemp("speech") / "s.wav"
    write_wav(wav, "Η θάλασσα είναι ήσυχη σήμερα.", speed=170)
    return decode(wav)


# ----------------------------------------------------------------------------- waveform augmentations


@pytest.mark.parametrize("factor", [0.9, 1.1, 0.8, 1.25])
def test_speed_perturbation_changes_the_length_by_the_factor(speech, factor):
    out = change_speed(speech, factor)
    assert abs(len(out) / (len(speech) / factor) - 1) < 0.01
    assert out.dtype == np.float32 and np.isfinite(out).all()


signals = st.builds(
    lambda seed, n, kind, amp: (np.random.default_rng(seed).standard_normal(n) * amp
                                if kind == "noise" else amp * np.sin(np.arange(n) * 0.05 * (1 + seed % 7))
                                ).astype(np.float32),
    st.integers(0, 2**16), st.integers(800, 48000), st.sampled_from(["noise", "tone"]), st.floats(1e-3, 1.0))


@settings(max_examples=60, deadline=None)
@given(signal=signals, snr=st.floats(-5, 40), kind=st.sampled_from(["white", "pink"]), seed=st.integers(0, 2**16))
def test_noise_reaches_the_requested_snr_within_1_db(signal, snr, kind, seed):
    added = noise(signal.size, kind, np.random.default_rng(seed))
    out = add_noise(signal, added, snr)
    assert out.shape == signal.shape
    assert abs(snr_db(signal, out.astype(np.float64) - signal) - snr) < 1.0


def test_pink_noise_has_more_power_low_than_high(speech):
    spectrum = np.abs(np.fft.rfft(noise(32000, "pink", np.random.default_rng(0)))) ** 2
    assert spectrum[10:1000].mean() > 10 * spectrum[-1000:].mean()


@pytest.mark.parametrize("gain", [-12.0, -3.0, 0.0, 6.0])
def test_gain_changes_the_rms_by_the_decibels_asked(speech, gain):
    assert abs(20 * np.log10(rms(apply_gain(speech, gain)) / rms(speech)) - gain) < 1e-3


def test_the_augmenter_is_reproducible_per_clip_and_epoch_and_varies_across_them(speech):
    aug = Augmenter(AugmentSection(speed=[0.9, 1.0, 1.1], gain_db=[-6, 6], noise={"snr_db": [10, 20]}))
    a = aug(speech, "train::0", 42)
    assert np.array_equal(a, aug(speech, "train::0", 42))
    others = [aug(speech, "train::0", 42 + epoch) for epoch in range(1, 6)] + [aug(speech, "train::1", 42)]
    assert any(len(o) != len(a) or not np.allclose(o, a) for o in others)


def test_noise_from_a_folder_reaches_the_snr(tmp_path, speech):
    import soundfile as sf

    (tmp_path / "noise").mkdir()
    hum = 0.3 * np.sin(np.arange(8000) * 2 * np.pi * 50 / 16000).astype(np.float32)
    sf.write(tmp_path / "noise" / "hum.wav", hum, 16000)
    aug = Augmenter(AugmentSection(noise={"snr_db": [12, 12], "folder": str(tmp_path / "noise")}))
    out = aug(speech, "train::0", 1)
    assert abs(snr_db(speech, out.astype(np.float64) - speech) - 12) < 1.0


def test_an_empty_noise_folder_is_refused_naming_the_key(tmp_path):
    with pytest.raises(ValueError, match="training.augment.noise.folder: no decodable"):
        Augmenter(AugmentSection(noise={"snr_db": [5, 10], "folder": str(tmp_path)}))


def test_labels_are_identical_with_and_without_augmentation(tmp_path, tiny_model):
    from transformers import WhisperProcessor

    from gpujob.spec.models import Source

    data = write_greek_folder(tmp_path)
    tok = WhisperProcessor.from_pretrained(tiny_model).tokenizer
    tok.set_prefix_tokens(language="greek", task="transcribe", predict_timestamps=False)
    source = [Source(dataset=str(data), split="train")]
    aug = Augmenter(AugmentSection(speed=[0.8, 1.25], gain_db=[-6, -6], noise={"snr_db": [5, 5]}))

    def run(augment):
        clips = iter_clips(source, streaming=False, seed=3)
        made = list(steps(clips, tok, global_batch=4, micro_steps=1, rank=0, world=1, seed=3, group_by_length=True,
                          labels=source_labels(source), augment=augment))
        return [b for s in made for b in s.micro]

    plain, augmented = run(None), run(aug)
    assert [b.ids for b in plain] == [b.ids for b in augmented]
    assert [b.texts for b in plain] == [b.texts for b in augmented]
    assert all(torch.equal(p.labels, a.labels) for p, a in zip(plain, augmented))
    ratios = [len(a) / len(p) for pb, ab in zip(plain, augmented) for p, a in zip(pb.audio, ab.audio)]
    assert all(abs(r - 1 / 0.8) < 0.01 or abs(r - 1 / 1.25) < 0.01 for r in ratios), ratios


# ----------------------------------------------------------------------------- SpecAugment


def _zero_runs(mask: np.ndarray) -> list[int]:
    runs, n = [], 0
    for m in list(mask) + [False]:
        if m:
            n += 1
        elif n:
            runs.append(n)
            n = 0
    return runs


def test_spec_augment_masks_spans_in_training_and_never_in_evaluation(tiny_model, speech):
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    from gpujob.runner.batches import features
    from gpujob.spec.augment import SpecAugmentSection

    model = WhisperForConditionalGeneration.from_pretrained(tiny_model)
    fe = WhisperProcessor.from_pretrained(tiny_model).feature_extractor
    configure_spec_augment(model.config, SpecAugmentSection(mask_time_prob=0.2, mask_time_length=10,
                                                            mask_feature_prob=0.1, mask_feature_length=5))
    seen = []
    model.model.encoder.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    feats = features(fe, [speech, speech[::-1].copy()], torch.device("cpu"))
    assert not (feats == 0).all(dim=1).any()  # no silent frames of its own to be mistaken for masks
    decoder_input_ids = torch.full((2, 1), model.config.decoder_start_token_id)

    model.eval()
    with torch.no_grad():
        model(input_features=feats.clone(), decoder_input_ids=decoder_input_ids)
    assert torch.equal(seen[-1], feats)

    model.train()
    model(input_features=feats.clone(), decoder_input_ids=decoder_input_ids)
    masked = seen[-1]
    for row in range(2):
        time_runs = _zero_runs((masked[row] == 0).all(dim=0).numpy())
        bin_runs = _zero_runs((masked[row] == 0).all(dim=1).numpy())
        assert time_runs and min(time_runs) >= 10, time_runs
        assert bin_runs and min(bin_runs) >= 5, bin_runs
        kept = (masked[row] != 0)
        assert torch.equal(masked[row][kept], feats[row][kept])  # what is not masked is unchanged

    configure_spec_augment(model.config, None)
    model(input_features=feats.clone(), decoder_input_ids=decoder_input_ids)
    assert torch.equal(seen[-1], feats)


# ----------------------------------------------------------------------------- early stopping (tiny model)


def test_early_stopping_stops_after_patience_evals_without_improvement_and_keeps_the_best(tmp_path, tiny_model):
    from test_runner_train import run_runner

    (tmp_path / "data").mkdir()
    data = write_greek_folder(tmp_path / "data")
    spec = write_spec(tmp_path, tiny_model, data, max_steps=30, eval_steps=1, save_steps=100, learning_rate=1e-9,
                      early_stopping_patience=2, augment={"speed": [0.9, 1.1], "gain_db": [-3, 3]})
    code, events, output = run_runner(spec)
    assert code == 0, output[-3000:]
    evals = [(e["step"], e["wer"]) for e in events if e["event"] == "eval"]
    best, since, expected_stop = None, 0, None
    for step, wer in evals:
        if best is None or wer < best:
            best, since = wer, 0
        else:
            since += 1
        if since >= 2:
            expected_stop = step
            break
    assert expected_stop is not None and expected_stop < 30, evals
    progress = [e["step"] for e in events if e["event"] == "progress"]
    assert max(progress) == expected_stop
    assert f"early stopping at step {expected_stop}" in output
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["stopped_early_at"] == expected_stop and metrics["steps"] == expected_stop
    assert metrics["best_wer"] == pytest.approx(min(w for _, w in evals), abs=1e-4)
    assert (tmp_path / "out" / "model" / "config.json").exists()
    assert "augmentation: speed 0.9/1.1, gain -3..3 dB" in output


def test_a_frozen_encoder_runs_on_augmented_clips_instead_of_caching_them(tmp_path, tiny_model, monkeypatch):
    """The cache assumes the same input every epoch: with waveform augmentation, training clips bypass it
    (evaluation clips, never augmented, still fill it)."""
    from types import SimpleNamespace as NS

    from gpujob.runner import update
    from gpujob.runner.batches import collate
    from gpujob.runner.evaluate import EncoderCache
    from gpujob.runner.model import freeze, load, pick_precision
    from gpujob.runner.train_setup import train_cache_for

    spec = NS(model=NS(checkpoint=str(tiny_model), language="el", task="transcribe", window_seconds=None),
              training=NS(dropout=0.0, augment=AugmentSection(speed=[0.9, 1.1])))
    model, processor = load(spec, torch.device("cpu"), for_training=True)
    freeze(model, "encoder")
    cache = EncoderCache()
    batch = collate([("train::0", "", np.zeros(16000, np.float32) + 0.01, [processor.tokenizer.eos_token_id])])
    precision = pick_precision("fp32", torch.device("cpu"))
    for augmenting, expected in ((True, 0), (False, 1)):
        used = train_cache_for(cache, Augmenter(spec.training.augment) if augmenting else None)
        update.mean_loss(model, processor, batch, torch.device("cpu"), precision, used)
        assert len(cache.states) == expected
