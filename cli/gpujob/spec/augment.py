"""The ``training.augment`` section: data augmentation for training, all of it off by default.

Waveform augmentations (speed, noise, gain) are applied by the runner on its loader threads, to
training clips only, seeded per (seed + epoch, clip) so a run is reproducible; labels never change.
SpecAugment is Whisper's own (``apply_spec_augment``, ``mask_time_prob``, ``mask_feature_prob`` on
the model config): the model masks its input features in training mode, never in evaluation.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from .fields import NonEmptyStr, Section, fail
from .units import shown

MIN_SPEED, MAX_SPEED = 0.5, 2.0
MIN_SNR_DB, MAX_SNR_DB = -20.0, 100.0
MAX_GAIN_DB = 40.0
MAX_MASK_TIME_LENGTH = 3000  # Whisper's 30 s of log-mel frames
MAX_MASK_FEATURE_LENGTH = 128  # Whisper large-v3 has 128 mel bins


def _ordered(value: list[float] | None) -> list[float] | None:
    if value is not None and value[0] > value[1]:
        raise fail(f"give [low, high] with low <= high (got [{shown(value[0])}, {shown(value[1])}])")
    return value


SnrRange = Annotated[list[Annotated[float, Field(ge=MIN_SNR_DB, le=MAX_SNR_DB)]], Field(min_length=2, max_length=2)]
GainRange = Annotated[list[Annotated[float, Field(ge=-MAX_GAIN_DB, le=MAX_GAIN_DB)]], Field(min_length=2, max_length=2)]


class SpecAugmentSection(Section):
    """Whisper's own SpecAugment: masks spans of time frames and of mel bins of the log-mel input."""

    mask_time_prob: float = Field(0.05, ge=0, le=1, description=(
        "Share of time frames that start a masked span (Whisper's `mask_time_prob`); about this times "
        "`mask_time_length` of the frames end up masked."))
    mask_time_length: int = Field(10, ge=1, le=MAX_MASK_TIME_LENGTH, description=(
        "Frames per masked time span (10 ms each)."))
    mask_feature_prob: float = Field(0.0, ge=0, le=1, description=(
        "Share of mel bins that start a masked span of bins (Whisper's `mask_feature_prob`); 0: none."))
    mask_feature_length: int = Field(10, ge=1, le=MAX_MASK_FEATURE_LENGTH, description="Mel bins per masked span.")


class NoiseSection(Section):
    """Additive noise at a random signal-to-noise ratio."""

    snr_db: SnrRange = Field(description=(
        "[low, high]: each clip gets noise at an SNR drawn uniformly from this range, in dB, e.g. [5, 30]."))
    kind: Literal["white", "pink"] = Field("white", description=(
        "Generated noise: `white` (flat spectrum) or `pink` (1/f, more like room and street noise). "
        "Unused when `folder` is set."))
    folder: NonEmptyStr | None = Field(None, description=(
        "A directory of noise clips (any format the runner decodes, searched recursively) to draw from instead "
        "of generated noise; a clip shorter than the speech is repeated. It must be readable where the job runs."))
    probability: float = Field(1.0, ge=0, le=1, description="Share of training clips that get noise.")

    _snr = field_validator("snr_db")(classmethod(lambda cls, v: _ordered(v)))


class AugmentSection(Section):
    """Training-time augmentation: every option is off until set."""

    spec_augment: SpecAugmentSection | None = Field(None, description=(
        "Mask spans of the log-mel features while training (`{}` for the defaults). Not with "
        "`training.freeze: encoder`: a frozen encoder's input is never masked."))
    speed: list[Annotated[float, Field(ge=MIN_SPEED, le=MAX_SPEED)]] | None = Field(None, min_length=1, description=(
        "Speed factors to draw from uniformly, e.g. [0.9, 1.0, 1.1]: a clip at 1.1 is resampled to 1/1.1 of its "
        "length (pitch shifts with it). A factor that would take a clip past 30 s is not applied to it."))
    noise: NoiseSection | None = Field(None, description="Add noise at a random SNR.")
    gain_db: GainRange | None = Field(None, description=(
        "[low, high]: scale each clip by a gain drawn uniformly from this range, in dB, e.g. [-6, 6]."))

    _gain = field_validator("gain_db")(classmethod(lambda cls, v: _ordered(v)))

    @property
    def waveform(self) -> bool:
        """True when any waveform augmentation (speed, noise, gain) is on."""
        return bool(self.speed and self.speed != [1.0] or self.noise or self.gain_db)
