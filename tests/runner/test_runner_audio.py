"""gpujob.runner.audio: real speech in every common format/rate/channel layout -> mono float32 16 kHz."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess

import pytest

np = pytest.importorskip("numpy")
sf = pytest.importorskip("soundfile")
soxr = pytest.importorskip("soxr")

from gpujob.runner.audio import AudioError, decode, to_mono_16k  # noqa: E402

RATES = (8000, 22050, 44100, 48000)
FORMATS = {"wav": ("WAV", "PCM_16"), "flac": ("FLAC", "PCM_16"), "ogg": ("OGG", "VORBIS"),
           "mp3": ("MP3", "MPEG_LAYER_III")}
MAX_LAG = 4000  # samples at 16 kHz; MP3 encoder/decoder delay is far smaller


def _speech() -> tuple[np.ndarray, int]:
    """About 2.5 s of real speech from libespeak-ng, else a chirp with an envelope."""
    if importlib.util.find_spec("espeakng_loader") is not None:
        from gpujob_dev.espeak import speak

        samples, sr = speak("Καλημέρα σας, ο καιρός σήμερα είναι πολύ ωραίος.", speed=160)
        data = samples.astype(np.float64) / 32768.0  # as soundfile reads PCM-16
        if data.size > sr:
            return data, sr
    sr = 22050
    t = np.arange(int(2.5 * sr)) / sr
    return 0.5 * np.sin(2 * np.pi * (200 * t + 600 * t**2)) * np.sin(np.pi * t / 2.5), sr


@pytest.fixture(scope="module")
def reference():
    data, sr = _speech()
    return data, sr, soxr.resample(data.astype(np.float32), sr, 16000, quality="VHQ")


def _best_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Highest normalised correlation of a and b over lags up to MAX_LAG samples."""
    n = min(len(a), len(b)) + MAX_LAG
    size = 1 << (2 * n).bit_length()
    xc = np.fft.irfft(np.fft.rfft(a, size) * np.conj(np.fft.rfft(b, size)), size)
    lags = np.concatenate([xc[:MAX_LAG + 1], xc[-MAX_LAG:]])
    return float(lags.max() / (np.linalg.norm(a) * np.linalg.norm(b)))


@pytest.fixture(scope="module")
def encoded_files(tmp_path_factory, reference):
    data, sr, _ = reference
    root = tmp_path_factory.mktemp("audio")
    files = {}
    for rate in RATES:
        at_rate = soxr.resample(data.astype(np.float32), sr, rate, quality="VHQ") if rate != sr else data
        stereo = np.stack([at_rate, 0.6 * at_rate], axis=1)
        for ext, (fmt, subtype) in FORMATS.items():
            for layout, signal in (("mono", at_rate), ("stereo", stereo)):
                path = root / f"clip_{rate}_{layout}.{ext}"
                if ext == "mp3" and "MP3" not in sf.available_formats():
                    if not shutil.which("ffmpeg"):
                        continue
                    wav = path.with_suffix(".src.wav")
                    sf.write(wav, signal, rate)
                    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(path)], check=True)
                else:
                    sf.write(path, signal, rate, format=fmt, subtype=subtype)
                files[(ext, rate, layout)] = path
    return files


@pytest.mark.parametrize("ext", sorted(FORMATS))
@pytest.mark.parametrize("rate", RATES)
@pytest.mark.parametrize("layout", ["mono", "stereo"])
def test_decode_formats_rates_layouts(encoded_files, reference, ext, rate, layout):
    path = encoded_files.get((ext, rate, layout))
    if path is None:
        pytest.skip(f"cannot write {ext} here")
    _, _, ref16 = reference
    out = decode(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(ref16)) <= 0.01 * len(ref16), (len(out), len(ref16))
    assert np.isfinite(out).all() and np.abs(out).max() <= 1.5
    assert _best_correlation(out.astype(np.float64), ref16.astype(np.float64)) > 0.9


def test_decode_bytes_matches_path(encoded_files):
    path = encoded_files[("flac", 44100, "stereo")]
    from_path, from_bytes = decode(path), decode(path.read_bytes())
    assert np.array_equal(from_path, from_bytes)


def test_decode_other_target_rate(encoded_files, reference):
    out = decode(encoded_files[("wav", 48000, "mono")], target_sr=8000)
    assert abs(len(out) - len(reference[2]) / 2) <= 0.01 * len(out)


@pytest.mark.skipif(not shutil.which("ffmpeg"), reason="needs ffmpeg")
def test_ffmpeg_fallback_for_formats_soundfile_refuses(tmp_path, reference):
    data, sr, ref16 = reference
    wav, m4a = tmp_path / "src.wav", tmp_path / "clip.m4a"
    sf.write(wav, data, sr)
    subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), "-c:a", "aac", str(m4a)], check=True)
    with pytest.raises(Exception):
        sf.read(m4a)  # the point of the fallback
    out = decode(m4a)
    assert out.dtype == np.float32 and out.ndim == 1
    assert abs(len(out) - len(ref16)) <= 0.02 * len(ref16)  # AAC priming samples are not trimmed
    assert _best_correlation(out.astype(np.float64), ref16.astype(np.float64)) > 0.9
    assert np.array_equal(decode(m4a.read_bytes()), out)


def test_corrupt_file_raises_audio_error_naming_path(tmp_path):
    bad = tmp_path / "broken clip.mp3"
    bad.write_bytes(b"this is not audio at all, just text pretending to be an mp3\n" * 50)
    with pytest.raises(AudioError) as info:
        decode(bad)
    assert info.value.path == str(bad) and str(bad) in str(info.value)
    assert "Traceback" not in str(info.value)


def test_empty_and_missing_files(tmp_path):
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    with pytest.raises(AudioError, match="empty"):
        decode(empty)
    with pytest.raises(AudioError, match="not found"):
        decode(tmp_path / "nope.flac")
    with pytest.raises(AudioError, match="empty"):
        decode(b"")
    silent = tmp_path / "zero_frames.wav"
    sf.write(silent, np.zeros(0), 16000)
    with pytest.raises(AudioError, match=str(silent).replace("\\", "\\\\")):
        decode(silent)
    with pytest.raises(AudioError, match="row-7"):
        decode(b"garbage bytes" * 20, name="row-7")


def test_int16_and_float64_arrays(reference):
    data, sr, ref16 = reference
    as_int16 = np.round(data * 32767).astype(np.int16)
    out = to_mono_16k(as_int16, sr)
    assert out.dtype == np.float32 and np.abs(out).max() <= 1.01
    assert _best_correlation(out.astype(np.float64), ref16.astype(np.float64)) > 0.99
    out64 = to_mono_16k(data.astype(np.float64), sr)
    assert out64.dtype == np.float32 and abs(len(out64) - len(ref16)) <= 1
    same = to_mono_16k(np.array([0.25, -0.5], dtype=np.float64), 16000)
    assert same.dtype == np.float32 and same.tolist() == [0.25, -0.5]
    assert to_mono_16k(np.array([16384, -32768], dtype=np.int16), 16000).tolist() == [0.5, -1.0]
    assert to_mono_16k(np.array([128, 0], dtype=np.uint8), 16000).tolist() == [0.0, -1.0]
    assert to_mono_16k(np.array([2**30], dtype=np.int32), 16000).tolist() == [0.5]


def test_two_dimensional_arrays_either_channel_order():
    left = np.linspace(-1, 1, 1000)
    frames_first = np.stack([left, np.zeros_like(left)], axis=1)  # (frames, channels)
    channels_first = frames_first.T                                # (channels, frames)
    a, b = to_mono_16k(frames_first, 16000), to_mono_16k(channels_first, 16000)
    assert a.shape == b.shape == (1000,) and np.allclose(a, left / 2) and np.allclose(b, a)
    assert to_mono_16k(left[:, None], 16000).shape == (1000,)
    resampled = to_mono_16k(channels_first.astype(np.float32), 48000)
    assert resampled.dtype == np.float32 and abs(len(resampled) - 333) <= 1
    with pytest.raises(ValueError):
        to_mono_16k(np.zeros((2, 2, 2)), 16000)
