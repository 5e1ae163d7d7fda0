"""Pydantic models for the gpujob job spec (``apiVersion: gpujob/v1``).

Field descriptions here are the single source of the reference docs and the JSON Schema.
Shared field types and validators live in :mod:`gpujob.spec.fields`; checks that involve
several sections live in :mod:`gpujob.spec.cross_field`; the runtime section, one model per backend, in
:mod:`gpujob.spec.runtime`.
"""

from __future__ import annotations

import difflib
import re
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, WithJsonSchema, field_validator, model_validator

from gpujob.defaults import SHM
from gpujob.storage.uri import looks_like_uri, uri_problem

from .augment import AugmentSection
from .cross_field import CrossFieldError, cross_field_problems
from .fields import (
    CPU_SCHEMA, DURATION_SCHEMA, HUB_REPO_PATTERN, MAX_BATCH, MAX_CHECKPOINTS, MAX_COST, MAX_ENCODER_LAYERS,
    MAX_EPOCHS, MAX_GPUS, MAX_IDLE_MINUTES, MAX_LEARNING_RATE, MAX_PRICE, MAX_PRIORITY, MAX_SEED, MAX_STEPS, MAX_WEIGHT, NAME_PATTERN,
    QUANTITY_SCHEMA, Duration, NonEmptyStr, Quantity, SecretName, Section, check_cpu, describe_value, fail,
    no_duplicates, none_to_empty, whole_or_auto,
)
from .serving import ExportTarget, LoraSection, export_target
from .runtime import LocalRuntime, Runtime, RuntimeBase
from .source_types import SOURCE_TYPES
from .tracking import SOURCE_NAME_PATTERN, TrackingSection
from .units import MAX_CPU, parse_duration, parse_quantity, shown

API_VERSION = "gpujob/v1"
# Pre-training peak learning rates from the Whisper paper (Radford et al. 2022, table 1).
PRETRAIN_LR = {"tiny": 1.5e-3, "base": 1e-3, "small": 5e-4, "medium": 2.5e-4, "large": 1.75e-4}
D_MODEL_SIZE = {384: "tiny", 512: "base", 768: "small", 1024: "medium", 1280: "large"}
FINETUNE_LR_DIVISOR = 40


def _storage_uri(value: str) -> str:
    """A value written as a URI (``scheme:/...``) must be a storage URI gpujob reads, spelled right."""
    problem = uri_problem(value) if looks_like_uri(value) and not value.startswith("hf://") else None
    if problem:
        raise fail(problem)
    return value.strip() if looks_like_uri(value) else value


PathOrURI = Annotated[NonEmptyStr, AfterValidator(_storage_uri)]


def default_learning_rate(checkpoint: str, d_model: int | None = None) -> float | None:
    """Fine-tuning LR for a Whisper checkpoint: its pre-training LR / 40, or None if unknown.

    The size is read from the name (``openai/whisper-small.en`` -> small), else from
    ``d_model`` (384/512/768/1024/1280).
    """
    name = checkpoint.lower()
    words = "|".join(PRETRAIN_LR)
    match = re.search(rf"whisper[-_]({words})(?![a-z])", name) or re.search(
        rf"(?<![a-z0-9])({words})(?![a-z])", name)
    size = match.group(1) if match else D_MODEL_SIZE.get(d_model) if d_model else None
    return PRETRAIN_LR[size] / FINETUNE_LR_DIVISOR if size else None


class ModelSection(Section):
    """Which Whisper checkpoint to start from and what it should produce."""

    checkpoint: PathOrURI = Field("openai/whisper-small", description=(
        "Hugging Face Hub id, local directory or object-store URI of the Whisper checkpoint, e.g. "
        "`openai/whisper-small`, `./outputs/my-run/checkpoint-4000`, `s3://team-bucket/runs/el/model`."))
    language: NonEmptyStr | None = Field(None, description=(
        "Spoken language, as a code or English name (`el`, `greek`). Unset: the model detects it. "
        "YAML 1.2 is used, so `no` (Norwegian) stays a string."))
    task: Literal["transcribe", "translate"] = Field("transcribe", description=(
        "`transcribe` writes the speech in its own language; `translate` writes English."))
    window_seconds: int | None = Field(None, ge=1, le=30, description=(
        "Seconds of audio the encoder reads per clip; unset: the checkpoint's own (30 for Whisper). Whisper pads every "
        "clip to 30 s, so on short clips most of the encoder's and the cross-attention's work is on silence: "
        "`8` cuts the encoder's time about 4-fold (whisper.cpp's `audio_ctx`). Clips longer than the window are "
        "left out and counted. The model saved keeps the window (its feature extractor's `chunk_length`), so "
        "transformers' pipeline and CTranslate2 read it the same way. Fine-tune before relying on it: "
        "zero-shot, a shorter window costs WER (docs/recipe.md)."))
    engine: Literal["auto", "transformers", "ctranslate2"] = Field("auto", description=(
        "`kind: evaluate`: what runs the checkpoint. `auto`: CTranslate2 for a folder holding `model.bin` (an "
        "`output.export` or ct2-transformers-converter output, as faster-whisper loads it), else transformers."))


class Source(Section):
    """One dataset (or a mix of splits of it) to read audio and transcripts from."""

    dataset: PathOrURI = Field(description=(
        "Hugging Face Hub dataset id (`google/fleurs`), local directory (`data/cv-corpus-el/`) or object-store "
        "prefix (`s3://team-bucket/cv-el`, `gs://...`, `az://container/...`), staged to the job's disk first."))
    type: str | None = Field(None, description=(
        "What the dataset is: " + "; ".join(f"`{name}`: {text}" for name, text in SOURCE_TYPES.items()) +
        ". Unset: detected from `dataset` (tried in that order)."))
    config: NonEmptyStr | None = Field(None, description="Dataset configuration/subset, e.g. `el_gr` for FLEURS Greek.")
    split: str = Field("train", description="Split to read; join several with `+`, e.g. `train+validation`.")
    revision: NonEmptyStr | None = Field(None, description="Git revision (branch, tag or commit) of a Hub dataset, e.g. `refs/convert/parquet`.")
    text_column: NonEmptyStr | None = Field(None, description=(
        "Column holding the transcript (`sentence`, `transcription`, ...). Unset: detected automatically."))
    audio_column: NonEmptyStr = Field("audio", description="Column holding the audio.")
    weight: float = Field(1.0, gt=0, le=MAX_WEIGHT, description=(
        "Relative sampling weight when several sources are mixed (2 = sampled twice as often as 1)."))
    name: str | None = Field(None, pattern=SOURCE_NAME_PATTERN, description=(
        "Short name of the source in per-source scores (`wer/<name>` in events, metrics.json, trackers). "
        "Default: the last part of `dataset` (`common_voice_17_0`), with `-<config>`, then `-<split>`, "
        "then `-<i>` added where two sources would read the same."))

    @field_validator("type")
    @classmethod
    def _known_type(cls, value: str | None) -> str | None:
        if value is not None and value not in SOURCE_TYPES:
            close = difflib.get_close_matches(value, list(SOURCE_TYPES), n=1, cutoff=0.5)
            hint = f"did you mean {close[0]}? " if close else ""
            raise fail(f'unknown source type "{value[:40]}"; {hint}use one of {", ".join(SOURCE_TYPES)}, '
                       "or leave type out to have it detected")
        return value

    @field_validator("split")
    @classmethod
    def _split_parts(cls, value: str) -> str:
        if not value.strip() or any(not part.strip() for part in value.split("+")):
            raise fail(f'"{value[:40]}" has an empty split name; join split names with +, e.g. train+validation')
        return value


class DataSection(Section):
    """Datasets for training and evaluation; several sources are mixed by weight."""

    train: Annotated[list[Source], none_to_empty(list)] = Field(
        default_factory=list, description="Sources to fine-tune on. Required for `kind: train`.")
    eval: Annotated[list[Source], none_to_empty(list)] = Field(
        default_factory=list, description="Sources to evaluate on (during training, and for `kind: evaluate`).")
    streaming: bool = Field(False, description=(
        "Stream datasets instead of downloading them first. Sizes are unknown when streaming, "
        "so use `training.max_steps` rather than `training.epochs`."))
    loader_workers: Annotated[int, Field(ge=0, le=64)] | Literal["auto"] = Field("auto", description=(
        "Threads that decode audio ahead of the GPU. `auto`: one per CPU core of the job, less one "
        "for the training loop, at most 8. 0 decodes each clip in the training loop."))

    _workers = field_validator("loader_workers", mode="before")(
        classmethod(lambda cls, value: whole_or_auto(value, 0, 64)))

    @field_validator("train", "eval")
    @classmethod
    def _unique_names(cls, value: list[Source]) -> list[Source]:
        names = [s.name for s in value if s.name]
        if len(set(names)) != len(names):
            raise fail(f"two sources are named {next(n for n in names if names.count(n) > 1)}; "
                       "give each source its own name")
        return value


class FreezeLayers(Section):
    """Freeze part of the encoder."""

    encoder_layers: int = Field(ge=1, le=MAX_ENCODER_LAYERS, description=(
        "Freeze the convolutional stem, positional embeddings and the first N encoder layers."))


def _check_freeze(value: Any) -> Any:
    if value is None or value in ("none", "encoder"):
        return "none" if value is None else value
    if isinstance(value, dict) and set(value) == {"encoder_layers"}:
        n = value["encoder_layers"]
        if isinstance(n, int) and not isinstance(n, bool) and 1 <= n <= MAX_ENCODER_LAYERS:
            return FreezeLayers(encoder_layers=n)
        if isinstance(n, int) and not isinstance(n, bool) and n > MAX_ENCODER_LAYERS:
            raise fail(f"encoder_layers must be at most {MAX_ENCODER_LAYERS} (got {describe_value(n)})")
        raise fail(f"encoder_layers must be a whole number of at least 1 (got {describe_value(n)})")
    raise fail(f"use none, encoder, or {{encoder_layers: N}} (got {describe_value(value)})")


class TrainingSection(Section):
    """Optimisation settings. Defaults follow common Whisper fine-tuning practice."""

    learning_rate: Annotated[float, Field(gt=0, le=MAX_LEARNING_RATE)] | Literal["auto"] = Field("auto", description=(
        "Peak learning rate, or `auto`: the checkpoint's pre-training LR / 40 (tiny 3.75e-5, "
        "base 2.5e-5, small 1.25e-5, medium 6.25e-6, large 4.375e-6)."))
    lr_schedule: Literal["linear", "constant", "cosine"] = Field("linear", description=(
        "Learning-rate schedule after warm-up; `linear` decays to 0 at the last step."))
    warmup_steps: int = Field(500, ge=0, le=MAX_STEPS, description="Steps of linear warm-up from 0 to the peak learning rate.")
    max_steps: int | None = Field(None, gt=0, le=MAX_STEPS, description="Optimizer steps to train for. For `kind: train` set exactly one of `max_steps` and `epochs`.")
    epochs: float | None = Field(None, gt=0, le=MAX_EPOCHS, description="Passes over the training data (may be fractional). Needs a known dataset size (no streaming).")
    per_device_batch_size: int = Field(16, gt=0, le=MAX_BATCH, description="Examples per GPU per forward pass.")
    gradient_accumulation_steps: int = Field(1, gt=0, le=MAX_BATCH, description=(
        "Forward passes per optimizer step; effective batch = per_device_batch_size x this x GPUs."))
    precision: Literal["auto", "bf16", "fp16", "fp32"] = Field("auto", description=(
        "Numeric precision; `auto` picks bf16 where the GPU supports it, else fp16; on a CPU, bf16 where a "
        "start-up probe measures it at least 2.5x as fast as fp32 there (AMX), else fp32 (the job prints the ratio)."))
    gradient_checkpointing: Literal["auto", "on", "off"] = Field("auto", description=(
        "Trade compute for memory; `auto` turns it on when the batch would not fit otherwise."))
    dropout: float = Field(0.0, ge=0, lt=1, description=(
        "Dropout probability. Above 0.1 gives a warning: Whisper was pre-trained without dropout."))
    weight_decay: float = Field(0.0, ge=0, le=1, description=(
        "AdamW weight decay (decoupled), e.g. 0.01; 0 turns it off."))
    early_stopping_patience: int | None = Field(None, ge=1, le=MAX_STEPS, description=(
        "Stop training after this many evaluations in a row without a lower eval WER than the best so far; "
        "the best model (`model/`) is kept. Unset: train to the end."))
    augment: AugmentSection = Field(default_factory=AugmentSection, description=(
        "Augmentation of the training clips (SpecAugment, speed, noise, gain); all off by default."))
    freeze: Annotated[Literal["none", "encoder"] | FreezeLayers, BeforeValidator(_check_freeze)] = Field(
        "none", description="What to keep frozen: `none`, `encoder` (the whole encoder), or `{encoder_layers: N}`.")
    freeze_token_embeddings: bool = Field(False, description=(
        "Keep the decoder's token embeddings as they are. Whisper's output layer is the same matrix (tied): "
        "51,865 x d weights, half of whisper-base's decoder, whose gradient and AdamW update a step then "
        "skips (a step about a quarter cheaper on a CPU). The decoder's layers still train."))
    lora: LoraSection | None = Field(None, description=(
        "Train LoRA adapters (peft) instead of every weight, e.g. `{r: 32, alpha: 64}`: a fraction of the memory, "
        "so large checkpoints fit 24–48 GB GPUs. Unset: full fine-tuning."))
    eval_steps: int = Field(1000, gt=0, le=MAX_STEPS, description="Evaluate on `data.eval` every this many steps.")
    save_steps: int = Field(1000, gt=0, le=MAX_STEPS, description="Save a checkpoint every this many steps.")
    save_total_limit: int = Field(2, ge=1, le=MAX_CHECKPOINTS, description="Keep at most this many checkpoints (oldest are deleted).")
    generation_max_length: int = Field(225, ge=1, le=448, description=(
        "Maximum tokens generated per utterance during evaluation (Whisper's decoder limit is 448)."))
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Random seed for shuffling and initialisation.")
    group_by_length: bool = Field(True, description="Batch utterances of similar length together (less padding, faster).")

    @field_validator("learning_rate", mode="before")
    @classmethod
    def _lr(cls, value: Any) -> Any:
        if value == "auto" and isinstance(value, str):
            return value
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise fail(f'expected a number like 1e-5 or "auto", got {describe_value(value)}')
        if value <= 0:
            raise fail(f"must be greater than 0 (got {shown(value)})")
        if value > MAX_LEARNING_RATE:
            raise fail(f"must be at most {MAX_LEARNING_RATE:g} (got {shown(value)}); typical values are 1e-5 to 1e-4")
        return value

    @model_validator(mode="after")
    def _spec_augment_reaches_encoder(self) -> "TrainingSection":
        if self.augment.spec_augment is not None and self.freeze == "encoder":
            raise fail("training.augment.spec_augment masks the encoder's input, which training.freeze: encoder "
                       "never trains (its outputs are cached); remove spec_augment, or freeze only "
                       "{encoder_layers: N} (the masks then reach the layers that train)")
        return self


class EvaluationSection(Section):
    """How transcripts are scored."""

    metrics: list[Literal["wer", "cer"]] = Field(
        default_factory=lambda: ["wer", "cer"], min_length=1,
        description="Metrics to report: `wer` (word error rate) and/or `cer` (character error rate).")
    normalizer: Literal["basic", "none"] = Field("basic", description=(
        "Text normalisation before scoring: `basic` lower-cases and strips punctuation; `none` compares verbatim."))
    batch_size: Annotated[int, Field(gt=0, le=MAX_BATCH)] | Literal["auto"] = Field("auto", description=(
        "Examples per GPU during evaluation. `auto`: on a GPU the largest of 256, 128, ... whose "
        "generation memory (cross- and self-attention caches, encoder) fits in half the free GPU memory, "
        "halved again if a batch still runs out of memory; 16 on a CPU."))

    _batch = field_validator("batch_size", mode="before")(classmethod(lambda cls, value: whole_or_auto(value, 1, MAX_BATCH)))
    before_training: bool = Field(False, description=(
        "`kind: train`: also score the starting checkpoint before the first step, so the final metrics "
        "show the zero-shot WER (`baseline_wer`) next to the fine-tuned one."))

    _unique = field_validator("metrics")(classmethod(lambda cls, value: no_duplicates(value)))


class OutputSection(Section):
    """Where results go."""

    dir: PathOrURI | None = Field(None, description=(
        "Output directory, or an object-store prefix (`s3://team-bucket/runs/el`) that each checkpoint, the "
        "final model and the metrics are uploaded to as the job goes. Default: `outputs/<name>`, relative to "
        "the directory you run gpujob from."))
    hub_repo: str | None = Field(None, pattern=HUB_REPO_PATTERN, description=(
        "Push the final model to this Hugging Face Hub repository (`owner/name`)."))
    private: bool = Field(True, description="Create the Hub repository as private.")
    export: Annotated[list[Annotated[ExportTarget, BeforeValidator(export_target)]], none_to_empty(list)] = Field(
        default_factory=list, description=(
            "`kind: train`: engines to export the model to after training, each checked by WER on the eval "
            "sources: `[ctranslate2]` or `[{ctranslate2: {quantization: int8, max_wer_gap: 0.5}}]`."))


class ResourcesSection(Section):
    """Hardware to request from the backend."""

    gpus: int | None = Field(None, ge=0, le=MAX_GPUS, description=(
        "GPUs per node. Default: 1 for train/evaluate, 0 for command. With more than one, train/evaluate jobs "
        "run one process per GPU under torchrun (data-parallel: the global batch is split across them)."))
    gpu_type: NonEmptyStr | None = Field(None, description="GPU model to ask for, e.g. `A100-80GB`, `H100` (backend-specific).")
    nodes: int = Field(1, ge=1, le=64, description=(
        "Machines for one job (kubernetes only): each runs `gpus` GPUs; more than one uses an Indexed Job, a "
        "headless Service and torchrun's rendezvous on worker 0."))
    cpu: Annotated[float | None, BeforeValidator(check_cpu), WithJsonSchema(CPU_SCHEMA)] = Field(
        None, gt=0, le=MAX_CPU, description="CPU cores: a number (`4`, `0.5`) or Kubernetes millicores (`500m`).")
    memory: Annotated[Quantity | None, WithJsonSchema({"anyOf": [QUANTITY_SCHEMA, {"type": "null"}]})] = Field(
        None, description="Memory as a Kubernetes quantity: `32Gi`, `16G`, `512Mi`.")
    shm: Annotated[Quantity, WithJsonSchema(QUANTITY_SCHEMA)] = Field(
        SHM, description="Shared memory (/dev/shm) for data-loader workers, as a Kubernetes quantity.")
    disk: Annotated[Quantity | None, WithJsonSchema({"anyOf": [QUANTITY_SCHEMA, {"type": "null"}]})] = Field(
        None, description="Scratch disk as a Kubernetes quantity, e.g. `100Gi`.")
    price_per_hour: float | None = Field(None, ge=0, le=MAX_PRICE, description=(
        "What the job costs per hour of running, in USD, for all its GPUs and nodes together: the basis of its "
        "cost in `status` and `list`, the most it can cost (`render`, `submit`) and `limits.max_cost`. Unset: "
        "the price table (`$GPUJOB_HOME/prices.yaml`), else a rented host's price from its provider, else unknown."))
    share_gpus: bool = Field(False, description=(
        "local and host: start at once on GPUs that other jobs may be using, instead of waiting in the queue "
        "until enough GPUs are free for this job alone."))

    @property
    def memory_bytes(self) -> int | None:
        """``memory`` in bytes, or None."""
        return parse_quantity(self.memory) if self.memory else None

    @property
    def shm_bytes(self) -> int:
        """``shm`` in bytes."""
        return parse_quantity(self.shm)

    @property
    def disk_bytes(self) -> int | None:
        """``disk`` in bytes, or None."""
        return parse_quantity(self.disk) if self.disk else None


class LimitsSection(Section):
    """Guards against runaway jobs."""

    max_runtime: Annotated[Duration | None, WithJsonSchema({"anyOf": [
        DURATION_SCHEMA, {"type": "null"}]})] = Field(
        None, description="Stop the job after this long: `45s`, `90m`, `12h`, `1h30m`, `2d`.")
    max_cost: float | None = Field(None, gt=0, le=MAX_COST, description=(
        "Stop the job once its cost reaches this many USD, as SIGTERM stops it (the runner saves a checkpoint "
        "first; resubmit with a higher limit to resume). Cost is the job's price per hour "
        "(`resources.price_per_hour`, the price table, or a rented host's price) times its running time; "
        "a job with no known price is refused."))
    idle_minutes: float = Field(15, gt=0, le=MAX_IDLE_MINUTES, description=(
        "A job that has reported progress and then reports nothing for this many minutes is stopped as hung, "
        "so a frozen run does not hold a GPU all night. Jobs that never report progress are not affected."))

    @property
    def max_runtime_seconds(self) -> int | None:
        """``max_runtime`` in seconds, or None."""
        return parse_duration(self.max_runtime) if self.max_runtime else None


class DistributedSection(Section):
    """Several GPUs or nodes: one process per GPU under torchrun, and how they wait for each other."""

    timeout: Annotated[Duration, WithJsonSchema(DURATION_SCHEMA)] = Field(
        "10m", description=(
            "How long a process waits for the others in a collective (a step's all-reduce, a checkpoint being "
            "written, an evaluation) before the job fails. It bounds how long a hung or lost process can hold "
            "the others; a process that crashes ends the job at once."))
    port: int = Field(29500, ge=1024, le=65535, description=(
        "kubernetes, `resources.nodes` > 1: the rendezvous port on worker 0."))
    restarts: int = Field(3, ge=0, le=100, description=(
        "kubernetes, `resources.nodes` > 1: how many times the group of workers may start again, from the last "
        "checkpoint, after a worker is lost (preempted, its node drained). 0: the first loss fails the job."))
    network_interface: NonEmptyStr | None = Field(None, description=(
        "Network interface the processes talk over between nodes, e.g. `eth0` (sets NCCL_SOCKET_IFNAME and "
        "GLOO_SOCKET_IFNAME). Unset: NCCL and gloo choose one."))
    infiniband: bool | None = Field(None, description=(
        "`false` sets NCCL_IB_DISABLE=1, for clusters without InfiniBand/RoCE where NCCL picks a device that "
        "does not work. Unset: NCCL decides. Other NCCL variables go in `runtime.env`."))

    @property
    def timeout_seconds(self) -> int:
        """``timeout`` in seconds."""
        return parse_duration(self.timeout)

    def network_env(self) -> dict[str, str]:
        """The environment variables these settings stand for (empty by default)."""
        env: dict[str, str] = {}
        if self.network_interface:
            env["NCCL_SOCKET_IFNAME"] = env["GLOO_SOCKET_IFNAME"] = self.network_interface
        if self.infiniband is False:
            env["NCCL_IB_DISABLE"] = "1"
        return env


DEFAULT_NOTIFY_ON = ["succeeded", "failed", "hung", "budget"]


class NotifySection(Section):
    """Tell someone when the job ends: a webhook and/or a command, once per job, retried if it fails."""

    on: list[Literal["succeeded", "failed", "hung", "budget", "cancelled"]] = Field(
        default_factory=lambda: list(DEFAULT_NOTIFY_ON), description=(
            "When to notify: `succeeded`, `failed`, `hung` (stopped after `limits.idle_minutes` without "
            "progress), `budget` (stopped at `limits.max_cost`), `cancelled`."))
    webhook: Annotated[str, Field(pattern=r"^https?://\S+$", max_length=2000)] | None = Field(None, description=(
        "POST a JSON summary of the job (id, name, status, reason, step, metrics, cost; never a secret) to this URL."))
    webhook_env: SecretName | None = Field(None, description=(
        "The name of an environment variable whose value is the webhook URL, for URLs that are secrets "
        "themselves (Slack's): read where the notification is sent, never stored."))
    command: list[NonEmptyStr] | None = Field(None, min_length=1, description=(
        "Run this program on the machine that sees the job end, with the same JSON on its standard input, "
        "e.g. `[notify-send, gpujob]` or `[sh, -c, 'mail -s gpujob me@example.com']`."))

    _unique = field_validator("on")(classmethod(lambda cls, value: no_duplicates(value)))

    @model_validator(mode="after")
    def _somewhere(self) -> "NotifySection":
        if self.webhook and self.webhook_env:
            raise fail("set notify.webhook or notify.webhook_env, not both (webhook_env: for a URL that is "
                       "itself a secret, read from your environment)")
        # (a dump of a spec without notify: holds the default `on`, and must load again)
        if self.on != DEFAULT_NOTIFY_ON and not (self.webhook or self.webhook_env or self.command):
            raise fail("says when to notify but not where: set notify.webhook (a URL), notify.webhook_env "
                       "(the name of a variable holding the URL) or notify.command")
        return self


# Each section's model; for runtime, the part every backend shares (runtime.RUNTIMES has each backend's).
SECTIONS: dict[str, type[Section]] = {
    "model": ModelSection, "data": DataSection, "training": TrainingSection,
    "evaluation": EvaluationSection, "output": OutputSection, "resources": ResourcesSection,
    "runtime": RuntimeBase, "limits": LimitsSection, "distributed": DistributedSection,
    "notify": NotifySection, "tracking": TrackingSection,
}


class JobSpec(BaseModel):
    """A gpujob job: what to run (`kind`), on what data, with which resources, where."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False, title="gpujob job spec",
                              json_schema_extra={"patternProperties": {"^x-": {}}})

    api_version: Literal["gpujob/v1"] = Field(alias="apiVersion", description="Spec format version. Always `gpujob/v1`.")
    kind: Literal["train", "evaluate", "command"] = Field(description=(
        "`train`: fine-tune Whisper; `evaluate`: score a checkpoint; `command`: run your own `command`."))
    name: str | None = Field(None, max_length=53, pattern=NAME_PATTERN, description=(
        "Job name: lowercase letters, digits and `-` (max 53). Default: the file name, slugified."))
    description: str | None = Field(None, description="Free text shown in listings.")
    model: ModelSection = Field(default_factory=ModelSection, description="Checkpoint and language.")
    data: DataSection = Field(default_factory=DataSection, description="Datasets.")
    training: TrainingSection = Field(default_factory=TrainingSection, description="Optimisation settings.")
    evaluation: EvaluationSection = Field(default_factory=EvaluationSection, description="Scoring.")
    output: OutputSection = Field(default_factory=OutputSection, description="Where results go.")
    resources: ResourcesSection = Field(default_factory=ResourcesSection, description="Hardware to request.")
    runtime: Runtime = Field(default_factory=LocalRuntime, description="Backend, its settings, environment.")
    limits: LimitsSection = Field(default_factory=LimitsSection, description="Runtime and cost limits.")
    distributed: DistributedSection = Field(default_factory=DistributedSection, description=(
        "Several GPUs or nodes: collective timeout, rendezvous, network."))
    priority: int = Field(0, ge=-MAX_PRIORITY, le=MAX_PRIORITY, description=(
        "Place in the GPU queue of a local machine or rented host: higher first, first come first served "
        "among equals."))
    notify: NotifySection = Field(default_factory=NotifySection, description=(
        "Notifications when the job ends, fails, hangs or reaches its budget."))
    tracking: TrackingSection = Field(default_factory=TrackingSection, description=(
        "Experiment trackers the runner logs to (train/evaluate jobs): TensorBoard, trackio, W&B, MLflow."))
    command: list[NonEmptyStr] | None = Field(None, description=(
        "The program and its arguments, for `kind: command` only (required there), e.g. `[python, train.py]`."))

    @model_validator(mode="before")
    @classmethod
    def _empty_sections(cls, data: Any) -> Any:
        if isinstance(data, dict):  # x-* keys only hold YAML anchors; empty sections mean defaults
            return {k: v for k, v in data.items()
                    if not (k in SECTIONS and v is None or isinstance(k, str) and k.startswith("x-"))}
        return data

    @model_validator(mode="after")
    def _cross_checks(self) -> JobSpec:
        problems = cross_field_problems(self.model_dump(by_alias=True))
        if problems:
            raise CrossFieldError(problems)
        if self.resources.gpus is None:
            self.resources.gpus = 0 if self.kind == "command" else 1
        return self

    @property
    def gpus(self) -> int:
        """GPUs per machine, resolved once: ``resources.gpus``, or its default by kind (a command 0, else 1)."""
        return self.resources.gpus if self.resources.gpus is not None else (0 if self.kind == "command" else 1)

    @property
    def max_runtime_s(self) -> int | None:
        """``limits.max_runtime`` in seconds; None when unset."""
        return self.limits.max_runtime_seconds

    def resolved_learning_rate(self, d_model: int | None = None) -> float | None:
        """The learning rate to use: the given number, or the ``auto`` default (None if unknown);
        ``d_model`` (from the checkpoint's config) sizes checkpoints whose name says nothing."""
        lr = self.training.learning_rate
        return default_learning_rate(self.model.checkpoint, d_model) if lr == "auto" else float(lr)

    def resolved_output_dir(self) -> str:
        """``output.dir``, or ``outputs/<name>`` (``outputs/job`` when unnamed)."""
        return self.output.dir or f"outputs/{self.name or 'job'}"
