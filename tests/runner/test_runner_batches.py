"""The runner's batch path: its own log-mel (the feature extractor's numbers, computed where the
model is) and the background thread that makes batches ahead of the training step."""

from __future__ import annotations

import threading

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gpujob.runner.audio import decode  # noqa: E402
from gpujob.runner.batches import features, pad_audio, prefetched  # noqa: E402


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    pytest.importorskip("espeakng_loader", reason="needs espeakng-loader (make install)")
    from gpujob_dev.espeak import write_wav

    wav = tmp_path_factory.mktemp("speech") / "el.wav"
    write_wav(wav, "Ο καιρός είναι ωραίος σήμερα στην Αθήνα.")
    return decode(wav)


@pytest.mark.parametrize("mels", [80, 128])  # 128: large-v3's extractor
def test_runner_log_mel_is_the_feature_extractors(speech, mels):
    """Clips of every length the runner meets: none, short, real speech, just under 30 s, over
    30 s (cut, as the extractor does). Same numbers from clips or from a pad_audio batch, inside
    a bf16 autocast or not."""
    fe = transformers.WhisperFeatureExtractor(feature_size=mels)
    rng = np.random.default_rng(0)
    clips = [np.zeros(0, np.float32), speech[:1600], speech,
             np.tile(speech, 30)[: int(29.9 * 16000)],
             (0.3 * rng.standard_normal(31 * 16000)).astype(np.float32)]
    expected = fe(clips, sampling_rate=16000, return_tensors="pt").input_features
    cpu = torch.device("cpu")
    mine = features(fe, clips, cpu)
    assert mine.shape == expected.shape == (5, mels, 3000) and mine.dtype == torch.float32
    assert torch.allclose(mine, expected, atol=1e-5, rtol=0)
    padded = pad_audio(clips, fe.n_samples)
    assert padded.shape == (5, 480000) and torch.equal(padded[2, len(speech):], torch.zeros(480000 - len(speech)))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(features(fe, padded, cpu), mine)


def test_an_extractor_with_dither_goes_through_the_library(speech):
    fe = transformers.WhisperFeatureExtractor(dither=1.0)
    torch.manual_seed(0)
    ours = features(fe, [speech], torch.device("cpu"))
    torch.manual_seed(0)
    theirs = fe([speech], sampling_rate=16000, return_tensors="pt").input_features
    assert torch.equal(ours, theirs)


def test_prefetched_keeps_the_order_and_prepares_on_its_own_thread():
    seen_on = []
    items = [{"n": i} for i in range(50)]

    def prepare(item):
        item["ready"] = True
        seen_on.append(threading.current_thread().name)

    out = list(prefetched(iter(items), depth=3, prepare=prepare))
    assert [item["n"] for item in out] == list(range(50)) and all(item["ready"] for item in out)
    assert set(seen_on) == {"gpujob-batches"}


def test_prefetched_raises_a_source_error_where_it_happened():
    def source():
        yield from range(5)
        raise ValueError("data.train[0]: reading failed after 5 rows")

    got = []
    with pytest.raises(ValueError, match="after 5 rows"):
        for item in prefetched(source(), depth=2):
            got.append(item)
    assert got == [0, 1, 2, 3, 4]


def test_a_consumer_that_stops_early_stops_the_thread_and_closes_the_source():
    closed = threading.Event()

    def source():
        try:
            n = 0
            while True:
                yield n
                n += 1
        finally:
            closed.set()

    stream = prefetched(source(), depth=2)
    assert [next(stream) for _ in range(3)] == [0, 1, 2]
    stream.close()
    assert closed.wait(10), "the source was not closed"
    assert not any(t.name == "gpujob-batches" and t.is_alive() for t in threading.enumerate())


def _config(size: str):
    sizes = {"small": (768, 12, 3072), "medium": (1024, 24, 4096)}
    d, layers, ffn = sizes[size]
    return transformers.WhisperConfig(d_model=d, encoder_layers=layers, decoder_layers=layers, encoder_ffn_dim=ffn,
                                      decoder_ffn_dim=ffn, encoder_attention_heads=d // 64,
                                      decoder_attention_heads=d // 64)


@pytest.mark.parametrize("size", ["small", "medium"])
def test_auto_evaluation_batch_is_the_largest_that_fits_half_the_free_memory(size):
    from types import SimpleNamespace

    from gpujob.runner.evaluate import eval_batch_size, generation_bytes_per_utterance
    from gpujob.runner.model import Precision

    model = SimpleNamespace(config=_config(size))
    bf16, fp32 = Precision("bf16", torch.bfloat16, False), Precision("fp32", None, False)
    cuda = torch.device("cuda")
    per = generation_bytes_per_utterance(model.config, max_length=225, width=2)
    cross = model.config.decoder_layers * 2 * 1500 * model.config.d_model * 2
    assert per > cross  # at least the cross-attention cache, which alone is tens of MB per utterance
    for gib in (80, 40, 24, 8, 0.01):
        free = int(gib * 2**30)
        batch = eval_batch_size("auto", model, cuda, bf16, max_length=225, free_bytes=free)
        assert batch == 1 or batch * per <= free // 2
        if batch < 256:
            assert 2 * batch * per > free // 2  # the next size up would not fit
    assert eval_batch_size("auto", model, cuda, fp32, max_length=225, free_bytes=40 * 2**30) < \
        eval_batch_size("auto", model, cuda, bf16, max_length=225, free_bytes=40 * 2**30)
    assert eval_batch_size("auto", model, torch.device("cpu"), fp32, max_length=225) == 16
    assert eval_batch_size(12, model, cuda, bf16, max_length=225) == 12


def test_an_evaluation_batch_that_runs_out_of_memory_is_halved_and_keeps_every_transcript(monkeypatch, capsys):
    from types import SimpleNamespace

    from gpujob.runner import evaluate as ev
    from gpujob.runner.model import Precision

    calls = []

    def transcribe(model, processor, audio, keys, **_kw):
        calls.append(len(audio))
        if len(audio) > 3:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return [f"clip of {len(a)} samples" for a in audio]

    monkeypatch.setattr(ev, "transcribe", transcribe)
    examples = [{"audio": np.zeros(1000 + i * 37, np.float32), "text": f"clip of {1000 + i * 37} samples",
                 "id": f"u{i}", "source": "s"} for i in range(11)]
    spec = SimpleNamespace(data=SimpleNamespace(eval=[]), evaluation=SimpleNamespace(batch_size=8, normalizer="none"),
                           training=SimpleNamespace(generation_max_length=40))
    scores = ev.evaluate(None, None, examples, spec=spec, device=torch.device("cpu"),
                         precision=Precision("fp32", None, False), batch_size=8)
    assert scores.wer == 0.0 and [u["id"] for u in scores.per_utterance] == [f"u{i}" for i in range(11)]
    assert max(c for c in calls if c <= 3) == 2 and calls[0] == 8  # 8 -> 4 -> 2, then 2 for the rest
    assert "batch size now 2" in capsys.readouterr().out

    def broken(*_a, **_kw):
        raise RuntimeError("CUDA error: an illegal memory access was encountered")

    monkeypatch.setattr(ev, "transcribe", broken)
    with pytest.raises(RuntimeError, match="illegal memory access"):  # only out-of-memory is retried
        ev.evaluate(None, None, examples, spec=spec, device=torch.device("cpu"),
                    precision=Precision("fp32", None, False), batch_size=8)
