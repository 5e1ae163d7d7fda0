"""What a train job hands over besides the model: ``output.export`` (a CTranslate2 copy for faster-whisper,
checked by WER against the transformers model) and ``training.lora`` (parameter-efficient fine-tuning
with peft; the output is the merged model unless ``merge: false``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator

from .fields import NonEmptyStr, Section, describe_value, fail, no_duplicates

MAX_LORA_RANK = 1024
MAX_WER_GAP_POINTS = 100.0
LORA_MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")


class ExportTarget(Section):
    """One export of the fine-tuned model, converted after training and scored on the same eval clips."""

    engine: Literal["ctranslate2"] = Field(description=(
        "`ctranslate2`: the format faster-whisper and CTranslate2 serve (2–4× faster than transformers on a "
        "GPU, int8 on CPUs), written to `output.dir/model-ct2`."))
    quantization: Literal["float32", "float16", "int8", "int8_float16"] | None = Field(None, description=(
        "Weights' type in the export: `int8`, `int8_float16`, `float16` or `float32`. Unset: as trained "
        "(float32). The evaluation runs with CTranslate2's closest compute type on the job's device."))
    max_wer_gap: float = Field(0.5, ge=0, le=MAX_WER_GAP_POINTS, description=(
        "Largest WER increase, in points, allowed from the transformers model to the export on the same "
        "clips; a larger one fails the export step (and the job) with both numbers."))


def export_target(value: Any) -> Any:
    """``ctranslate2`` or ``{ctranslate2: {quantization: int8}}`` or ``{engine: ctranslate2, ...}``."""
    if isinstance(value, str):
        return {"engine": value}
    if isinstance(value, dict) and len(value) == 1 and "engine" not in value:
        (engine, options), = value.items()
        if options is None:
            return {"engine": engine}
        if not isinstance(options, dict):
            raise fail(f"give {engine}'s options as a mapping, e.g. {{{engine}: {{quantization: int8}}}} "
                       f"(got {describe_value(options)})")
        return {"engine": engine, **options}
    return value


class LoraSection(Section):
    """LoRA adapters (peft) instead of full fine-tuning: only the adapters train; the rest is frozen."""

    r: int = Field(32, ge=1, le=MAX_LORA_RANK, description="Rank of the adapter matrices (8–64 is usual).")
    alpha: float = Field(64, gt=0, le=4 * MAX_LORA_RANK, description=(
        "Scale of the adapters' output (`alpha / r`); twice `r` is a common choice."))
    dropout: float = Field(0.05, ge=0, lt=1, description="Dropout on the adapters' input while training.")
    target_modules: list[NonEmptyStr] = Field(default_factory=lambda: ["q_proj", "v_proj"], min_length=1, description=(
        "Linear layers that get adapters, by name: any of `q_proj`, `k_proj`, `v_proj`, `out_proj` "
        "(attention), `fc1`, `fc2` (feed-forward)."))
    merge: bool = Field(True, description=(
        "Write `model/` with the adapters merged into the weights (loads like any Whisper). `false` writes "
        "the adapter alone (`adapter_config.json` naming the base model, `adapter_model.safetensors`)."))

    @field_validator("target_modules")
    @classmethod
    def _known(cls, value: list[str]) -> list[str]:
        unknown = [m for m in value if m not in LORA_MODULES]
        if unknown:
            raise fail(f"{', '.join(unknown)}: not a Whisper linear layer; use some of {', '.join(LORA_MODULES)}")
        return no_duplicates(value)
