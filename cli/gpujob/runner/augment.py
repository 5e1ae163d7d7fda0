"""Waveform augmentation of training clips (``training.augment``): speed, noise, gain.

Applied on the loader threads right after a clip is decoded (:mod:`.steps`), so it costs no GPU
time; the transcript and its label ids are never touched. Each clip's draws come from a generator
seeded by (``training.seed`` + epoch, the clip's key): the same clip gets the same augmentation in
the same epoch whatever the number of threads or processes, and different ones across epochs.

Order: speed (resampling with soxr, so pitch moves with it), gain, then noise at the drawn SNR
relative to the clip after gain. A speed factor that would take a clip past 30 s is not applied.
SpecAugment is not here: it is Whisper's own masking of the features (:func:`configure_spec_augment`).
"""

from __future__ import annotations

import zlib
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import soxr

from .audio import TARGET_SR, AudioError, decode

if TYPE_CHECKING:
    from gpujob.spec.augment import AugmentSection, SpecAugmentSection

MAX_SAMPLES = 30 * TARGET_SR
NOISE_SUFFIXES = {".wav", ".flac", ".ogg", ".mp3", ".opus", ".m4a", ".webm"}

__all__ = ["Augmenter", "add_noise", "augment_summary", "apply_gain", "change_speed", "configure_spec_augment", "noise", "rms", "snr_db"]


def rms(audio: np.ndarray) -> float:
    """Root mean square of a clip (float64)."""
    return float(np.sqrt(np.mean(np.square(audio, dtype=np.float64)))) if audio.size else 0.0


def snr_db(signal: np.ndarray, added: np.ndarray) -> float:
    """Signal-to-noise ratio in dB of ``signal`` over ``added`` (same length)."""
    return 20.0 * np.log10(rms(signal) / rms(added))


def change_speed(audio: np.ndarray, factor: float) -> np.ndarray:
    """The clip played ``factor`` times as fast: resampled to ``len / factor`` samples."""
    if factor == 1.0 or not audio.size:
        return audio
    return np.ascontiguousarray(soxr.resample(audio, TARGET_SR * factor, TARGET_SR, quality="HQ"), dtype=np.float32)


def apply_gain(audio: np.ndarray, gain_db: float) -> np.ndarray:
    """The clip scaled by ``gain_db`` decibels (amplitude x 10^(dB/20))."""
    return (audio * np.float32(10.0 ** (gain_db / 20.0))).astype(np.float32, copy=False)


def noise(n: int, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``n`` samples of generated ``white`` or ``pink`` (1/f power) noise, float64."""
    white = rng.standard_normal(n)
    if kind == "white" or n < 2:
        return white
    spectrum = np.fft.rfft(white)
    freqs = np.arange(spectrum.size, dtype=np.float64)
    freqs[0] = 1.0
    return np.fft.irfft(spectrum / np.sqrt(freqs), n)


def add_noise(audio: np.ndarray, added: np.ndarray, snr: float) -> np.ndarray:
    """``audio`` plus ``added`` (tiled or cut to its length) scaled to ``snr`` dB below it.

    A silent clip, or silent noise, is returned unchanged (no SNR is defined)."""
    if not audio.size:
        return audio
    reps = -(-audio.size // max(1, added.size))
    added = np.tile(np.asarray(added, dtype=np.float64), reps)[: audio.size]
    power, noise_rms = rms(audio), rms(added)
    if power == 0.0 or noise_rms == 0.0:
        return audio
    scale = power / (noise_rms * 10.0 ** (snr / 20.0))
    return (audio.astype(np.float64) + added * scale).astype(np.float32)


def configure_spec_augment(config, section: SpecAugmentSection | None) -> None:
    """Set Whisper's SpecAugment on a model config (the model masks features only in training mode)."""
    config.apply_spec_augment = section is not None
    if section is not None:
        config.mask_time_prob = section.mask_time_prob
        config.mask_time_length = section.mask_time_length
        config.mask_time_min_masks = 0  # no forced masks beyond the probability asked for
        config.mask_feature_prob = section.mask_feature_prob
        config.mask_feature_length = section.mask_feature_length
        config.mask_feature_min_masks = 0


def augment_summary(section: AugmentSection) -> str:
    """One line naming the augmentations that are on, for the job's log."""
    parts = []
    if section.spec_augment is not None:
        sa = section.spec_augment
        parts.append(f"SpecAugment (time {sa.mask_time_prob:g} x {sa.mask_time_length}, "
                     f"features {sa.mask_feature_prob:g} x {sa.mask_feature_length})")
    if section.speed:
        parts.append("speed " + "/".join(f"{f:g}" for f in section.speed))
    if section.gain_db:
        parts.append(f"gain {section.gain_db[0]:g}..{section.gain_db[1]:g} dB")
    if section.noise is not None:
        n = section.noise
        parts.append(f"{'noise from ' + n.folder if n.folder else n.kind + ' noise'} at "
                     f"{n.snr_db[0]:g}..{n.snr_db[1]:g} dB SNR" + (f" on {n.probability:.0%} of clips"
                                                                   if n.probability < 1 else ""))
    return ", ".join(parts) or "none"


class Augmenter:
    """The waveform augmentations of a spec, as a function of (clip, key, seed); thread-safe."""

    def __init__(self, section: AugmentSection) -> None:
        self.speed = [float(f) for f in section.speed] if section.speed else None
        self.gain = tuple(section.gain_db) if section.gain_db else None
        self.noise = section.noise
        self._noise_clips: list[np.ndarray] | None = None
        if self.noise is not None and self.noise.folder:
            self._noise_clips = load_noise_folder(self.noise.folder)

    @property
    def active(self) -> bool:
        return bool(self.speed and self.speed != [1.0] or self.gain or self.noise)

    def __call__(self, audio: np.ndarray, key: str, seed: int) -> np.ndarray:
        rng = np.random.default_rng([seed % 2**32, zlib.crc32(key.encode("utf-8"))])
        if self.speed:
            factor = self.speed[int(rng.integers(len(self.speed)))]
            if audio.size / factor <= MAX_SAMPLES:
                audio = change_speed(audio, factor)
        if self.gain:
            audio = apply_gain(audio, float(rng.uniform(*self.gain)))
        if self.noise is not None and rng.random() < self.noise.probability:
            snr = float(rng.uniform(*self.noise.snr_db))
            if self._noise_clips:
                clip = self._noise_clips[int(rng.integers(len(self._noise_clips)))]
                start = int(rng.integers(max(1, clip.size - audio.size + 1)))
                added = clip[start:]
            else:
                added = noise(audio.size, self.noise.kind, rng)
            audio = add_noise(audio, added, snr)
        return audio


def load_noise_folder(folder: str) -> list[np.ndarray]:
    """Every decodable, non-silent clip under ``folder`` (recursively), decoded to 16 kHz mono."""
    root = Path(folder)
    if not root.is_dir():
        raise ValueError(f"training.augment.noise.folder: {folder} is not a directory where the job runs")
    clips = []
    for path in sorted(p for p in root.rglob("*") if p.suffix.lower() in NOISE_SUFFIXES and p.is_file()):
        try:
            clip = decode(path)
        except AudioError:
            continue
        if rms(clip) > 0:
            clips.append(clip)
    if not clips:
        raise ValueError(f"training.augment.noise.folder: no decodable, non-silent audio clips in {folder} "
                         f"(looked for {', '.join(sorted(NOISE_SUFFIXES))})")
    return clips
