"""The ``tracking:`` section: experiment trackers the runner logs to (TensorBoard, trackio,
Weights & Biases, MLflow), and the stable short names of data sources that their per-source
scores are logged under.

Credentials never go here: a key that looks like one (``api_key``, ``token``, ``password``...) is
refused with the secret to list under ``runtime.secrets`` instead.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, model_validator

from .fields import NonEmptyStr, Section, fail, looks_like_credential

SOURCE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"
MAX_SOURCE_NAME = 40
CREDENTIAL_KEY = re.compile(r"key|token|secret|password|passwd|credential|auth", re.IGNORECASE)
# each tracker's credentials, as the tracker's own library reads them from the environment
TRACKER_SECRETS = {"wandb": "WANDB_API_KEY", "mlflow": "MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME and "
                   "MLFLOW_TRACKING_PASSWORD)", "trackio": "HF_TOKEN", "tensorboard": "none"}


# --------------------------------------------------------------------------------- source names


def _slug(text: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_.-") or "data"
    return slug[:MAX_SOURCE_NAME]


def source_names(sources: list[Any]) -> list[str]:
    """One short, unique name per source (``data.eval[i].name``, else derived): the last part of
    the dataset id or directory (``mozilla-foundation/common_voice_17_0`` -> ``common_voice_17_0``);
    where two would read the same, ``-<config>``, then ``-<split>``, then ``-<i>`` is added."""
    explicit = [getattr(s, "name", None) for s in sources]
    steps = []
    for s in sources:
        base = _slug(s.dataset.rstrip("/").rsplit("/", 1)[-1])
        with_config = f"{base}-{_slug(s.config)}" if s.config else base
        steps.append([base, with_config, f"{with_config}-{_slug(s.split)}"])
    level = [0] * len(sources)

    def names() -> list[str]:
        return [e or steps[i][level[i]][:MAX_SOURCE_NAME] for i, e in enumerate(explicit)]

    for _ in range(3):
        current = names()
        clash = [i for i, n in enumerate(current) if current.count(n) > 1 and not explicit[i] and level[i] < 2]
        if not clash:
            break
        for i in clash:
            level[i] += 1
    current = names()
    return [n if current.count(n) == 1 or explicit[i] else f"{n[:MAX_SOURCE_NAME - 4]}-{i}"
            for i, n in enumerate(current)]


# ------------------------------------------------------------------------------------- trackers


def _no_credentials(tracker: str):
    def check(value: Any) -> Any:
        if value is True:
            return {}
        if value is False:
            return None
        if isinstance(value, dict):
            for key, item in value.items():
                if isinstance(key, str) and CREDENTIAL_KEY.search(key):
                    raise fail(f"{key}: credentials never go in the spec; list {TRACKER_SECRETS[tracker]} under "
                               f"runtime.secrets and export it in your shell")
                if isinstance(item, str) and (looks_like_credential(item) or re.search(r"://[^/@\s]+:[^/@\s]+@", item)):
                    raise fail(f"{key}: holds a credential; keep it out of the spec: list "
                               f"{TRACKER_SECRETS[tracker]} under runtime.secrets")
        return value
    return BeforeValidator(check)


class TensorBoardTracking(Section):
    """TensorBoard event files."""

    dir: NonEmptyStr | None = Field(None, description=(
        "Where the event files go. Default: `tensorboard/` in the job's output directory."))


class TrackioTracking(Section):
    """trackio, stored locally (or on a Space with `space_id` and the `HF_TOKEN` secret)."""

    project: NonEmptyStr | None = Field(None, description="trackio project. Default: the job's name.")
    space_id: NonEmptyStr | None = Field(None, description=(
        "A Hugging Face Space to sync to (`owner/name`; needs `HF_TOKEN` in `runtime.secrets`). Unset: local only."))


class WandbTracking(Section):
    """Weights & Biases; the key comes from the `WANDB_API_KEY` secret."""

    project: NonEmptyStr | None = Field(None, description="W&B project. Default: the job's name.")
    entity: NonEmptyStr | None = Field(None, description="W&B team or user. Default: the key's default entity.")
    mode: Literal["online", "offline"] = Field("online", description=(
        "`online` sends as it goes (needs `WANDB_API_KEY` in `runtime.secrets`); `offline` writes the run "
        "under `dir` for a later `wandb sync`."))
    dir: NonEmptyStr | None = Field(None, description="Where W&B keeps its files. Default: the job's output directory.")
    tags: list[NonEmptyStr] = Field(default_factory=list, max_length=20, description="Tags of the run.")


class MlflowTracking(Section):
    """MLflow; a server's token comes from the `MLFLOW_TRACKING_TOKEN` secret."""

    tracking_uri: NonEmptyStr | None = Field(None, description=(
        "MLflow tracking URI (`http://mlflow:5000`, `file:///data/mlruns`). Default: a file store in "
        "`mlruns/` of the job's output directory."))
    experiment: NonEmptyStr | None = Field(None, description="Experiment name. Default: the job's name.")


class TrackingSection(Section):
    """Experiment trackers: each gets the same scalars as the progress events (loss, learning rate,
    samples/s, WER/CER overall and per eval source), the spec as config, and at the end the worst
    utterances as a table. Rank 0 only; a tracker that fails warns once and never fails the job."""

    tensorboard: Annotated[TensorBoardTracking | None, _no_credentials("tensorboard")] = Field(None, description=(
        "`true`, or `{dir: ...}`: TensorBoard event files (`tensorboard --logdir <output>/tensorboard`)."))
    trackio: Annotated[TrackioTracking | None, _no_credentials("trackio")] = Field(None, description=(
        "`true`, or `{project: ..., space_id: ...}`: trackio (`trackio show`)."))
    wandb: Annotated[WandbTracking | None, _no_credentials("wandb")] = Field(None, description=(
        "`true`, or `{project: ..., entity: ..., mode: online|offline}`: Weights & Biases."))
    mlflow: Annotated[MlflowTracking | None, _no_credentials("mlflow")] = Field(None, description=(
        "`true`, or `{tracking_uri: ..., experiment: ...}`: MLflow."))

    @model_validator(mode="before")
    @classmethod
    def _credential_keys(cls, data: Any) -> Any:
        if isinstance(data, dict):
            for key in data:
                if isinstance(key, str) and CREDENTIAL_KEY.search(key):
                    raise fail(f"{key}: credentials never go in the spec; list the tracker's secret (e.g. "
                               "WANDB_API_KEY) under runtime.secrets and export it in your shell")
        return data

    def enabled(self) -> list[str]:
        """The trackers that are on, in a fixed order."""
        return [name for name in ("tensorboard", "trackio", "wandb", "mlflow") if getattr(self, name) is not None]


TRACKER_MODELS: dict[str, type[Section]] = {"tensorboard": TensorBoardTracking, "trackio": TrackioTracking,
                                            "wandb": WandbTracking, "mlflow": MlflowTracking}
