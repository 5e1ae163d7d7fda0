"""The runner's batch path: its own log-mel (the feature extractor's numbers, computed where the
model is) and the background thread that makes batches ahead of the training step."""

from __future__ import annotations

import shutil
import subprocess
import threading

import pytest

np = pytest.importorskip("numpy")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from gpujob.runner.audio import decode  # noqa: E402
from gpujob.runner.batches import features, pad_audio, prefetched  # noqa: E402


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> np.ndarray:
    if not shutil.which("espeak-ng"):
        pytest.skip("needs espeak-ng")
    wav = tmp_path_factory.mktemp("speech") / "el.wav"
    subprocess.run(["espeak-ng", "-v", "el", "-w", str(wav), "Ο καιρός είναι ωραίος σήμερα στην Αθήνα."],
                   check=True)
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
