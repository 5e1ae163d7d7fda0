"""Audio decoding for the runner: every clip becomes a mono float32 array at 16 kHz.

:func:`decode` reads a file path or encoded bytes with soundfile (its bundled libsndfile
reads WAV, FLAC, OGG/Vorbis, Opus and MP3), falls back to an ``ffmpeg`` subprocess for
anything soundfile refuses (M4A/AAC, WebM, ...), and raises :class:`AudioError` naming the
file for corrupt or empty clips. :func:`to_mono_16k` converts arrays that are already
decoded (any dtype, either channel order). Resampling uses soxr at HQ quality.
"""

from __future__ import annotations

import io
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

TARGET_SR = 16000
FFMPEG_TIMEOUT_S = 120
_MAX_CHANNELS = 32  # a 2-D array with a dimension this small or smaller is treated as channels

__all__ = ["TARGET_SR", "AudioError", "decode", "duration_seconds", "to_mono_16k"]


class AudioError(Exception):
    """A clip that cannot be decoded (corrupt, empty, unsupported); ``path`` names it."""

    def __init__(self, path: str | os.PathLike[str] | None, reason: str):
        self.path = str(path) if path is not None else "<bytes>"
        self.reason = reason
        super().__init__(f"cannot decode audio {self.path}: {reason}")


def to_mono_16k(array: np.ndarray, sampling_rate: int, *, target_sr: int = TARGET_SR) -> np.ndarray:
    """``array`` (any dtype, 1-D or 2-D in either channel order) as mono float32 at ``target_sr``.

    Integer samples are scaled to [-1, 1] (int16 / 32768, int32 / 2**31, uint8 centred on 128);
    float samples are kept as they are. Channels are averaged; a 2-D array's channel axis is
    the smaller one (``(frames, channels)`` as soundfile returns, or ``(channels, frames)`` as
    torchaudio does).
    """
    a = np.asarray(array)
    if a.dtype.kind == "b" or a.dtype.kind not in "iuf":
        raise ValueError(f"expected numeric audio samples, got dtype {a.dtype}")
    if a.dtype.kind == "u":
        half = float(2 ** (8 * a.dtype.itemsize - 1))
        a = (a.astype(np.float64) - half) / half
    elif a.dtype.kind == "i":
        a = a.astype(np.float64) / float(2 ** (8 * a.dtype.itemsize - 1))
    if a.ndim == 2:
        if a.shape[0] == 0 or a.shape[1] == 0:
            a = np.zeros(0, dtype=np.float32)
        else:
            axis = 0 if a.shape[0] < a.shape[1] and a.shape[0] <= _MAX_CHANNELS else 1
            a = a.mean(axis=axis) if a.shape[axis] > 1 else a.reshape(-1)
    elif a.ndim != 1:
        raise ValueError(f"expected a 1-D or 2-D audio array, got shape {a.shape}")
    a = np.ascontiguousarray(a, dtype=np.float32)
    sampling_rate = int(sampling_rate)
    if sampling_rate <= 0:
        raise ValueError(f"sampling rate must be positive, got {sampling_rate}")
    if sampling_rate != target_sr and a.size:
        a = soxr.resample(a, sampling_rate, target_sr, quality="HQ")
    return np.ascontiguousarray(a, dtype=np.float32)


def duration_seconds(array: np.ndarray, sampling_rate: int = TARGET_SR) -> float:
    """Length of a decoded mono clip in seconds."""
    return len(array) / float(sampling_rate)


def decode(source: str | os.PathLike[str] | bytes | bytearray, *, target_sr: int = TARGET_SR,
           name: str | None = None) -> np.ndarray:
    """Decode a file path or encoded bytes to mono float32 at ``target_sr`` (default 16 kHz).

    ``name`` is used in error messages for bytes (e.g. the dataset row's path). Raises
    :class:`AudioError` for missing, corrupt or empty audio.
    """
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    label = name if name is not None else ("<bytes>" if is_bytes else str(source))
    if not is_bytes:
        path = Path(source)
        if not path.is_file():
            raise AudioError(label, "file not found" if not path.exists() else "not a regular file")
        if path.stat().st_size == 0:
            raise AudioError(label, "the file is empty (0 bytes)")
    elif len(source) == 0:
        raise AudioError(label, "no audio bytes (empty)")

    first_error: str | None = None
    try:
        data, sr = sf.read(io.BytesIO(bytes(source)) if is_bytes else str(source),
                           dtype="float32", always_2d=True)
    except Exception as exc:  # noqa: BLE001 - libsndfile raises several types for bad input
        first_error = _soundfile_reason(exc)
        data, sr = None, 0
    if data is not None and data.shape[0] == 0:
        first_error, data = "no audio frames", None
    if data is None:
        data = _ffmpeg_decode(source, target_sr, label, first_error)
        sr = target_sr
    out = to_mono_16k(data, sr, target_sr=target_sr)
    if out.size == 0:
        raise AudioError(label, "the clip contains no audio samples")
    if not np.isfinite(out).all():
        raise AudioError(label, "the clip contains NaN or infinite samples")
    return out


def _soundfile_reason(exc: Exception) -> str:
    text = str(exc).strip() or type(exc).__name__
    if "File does not exist or is not a regular file" in text or "Format not recognised" in text:
        return "unrecognised format or corrupt data"  # libsndfile's generic message misleads
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text


def _ffmpeg_decode(source: str | os.PathLike[str] | bytes | bytearray, target_sr: int, label: str,
                   first_error: str | None) -> np.ndarray:
    why = f"soundfile could not read it ({first_error})" if first_error else "soundfile could not read it"
    ffmpeg = shutil.which("ffmpeg")
    if ffmpeg is None:
        raise AudioError(label, f"{why}, and ffmpeg is not installed to try other formats")
    is_bytes = isinstance(source, (bytes, bytearray, memoryview))
    cmd = [ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0" if is_bytes else str(source),
           "-map", "0:a:0", "-vn", "-ac", "1", "-ar", str(target_sr), "-f", "f32le", "-acodec", "pcm_f32le",
           "pipe:1"]
    try:
        proc = subprocess.run(cmd, input=bytes(source) if is_bytes else None, capture_output=True,
                              timeout=FFMPEG_TIMEOUT_S, check=False)
    except subprocess.TimeoutExpired:
        raise AudioError(label, f"{why}, and ffmpeg took longer than {FFMPEG_TIMEOUT_S}s") from None
    except OSError as exc:
        raise AudioError(label, f"{why}, and ffmpeg could not be run ({exc})") from None
    if proc.returncode != 0 or not proc.stdout:
        lines = proc.stderr.decode("utf-8", "replace").strip().splitlines()
        detail = lines[-1] if lines else f"exit status {proc.returncode}, no audio"
        raise AudioError(label, f"{why}; ffmpeg: {detail}")
    n = len(proc.stdout) // 4
    return np.frombuffer(proc.stdout[: n * 4], dtype="<f4").copy()
