"""The ``tracking:`` section: experiment trackers the runner logs to (one key per tracker in the table
:data:`gpujob.spec.trackers.TRACKERS`: TensorBoard, trackio, Weights & Biases, MLflow, CSV), and the
stable short names of data sources that their per-source scores are logged under.

Credentials never go here: a key that looks like one (``api_key``, ``token``, ``password``...) is
refused with the secret to list under ``runtime.secrets`` instead.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, create_model, model_validator

from .fields import Section, fail, looks_like_credential
from .trackers import TRACKERS

SOURCE_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$"
MAX_SOURCE_NAME = 40
CREDENTIAL_KEY = re.compile(r"key|token|secret|password|passwd|credential|auth", re.IGNORECASE)


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
                    raise fail(f"{key}: credentials never go in the spec; list {TRACKERS[tracker].secret} under "
                               f"runtime.secrets and export it in your shell")
                if isinstance(item, str) and (looks_like_credential(item) or re.search(r"://[^/@\s]+:[^/@\s]+@", item)):
                    raise fail(f"{key}: holds a credential; keep it out of the spec: list "
                               f"{TRACKERS[tracker].secret} under runtime.secrets")
        return value
    return BeforeValidator(check)


class _TrackingBase(Section):
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
        """The trackers that are on, in the table's order."""
        return [name for name in TRACKERS if getattr(self, name) is not None]


TrackingSection = create_model(
    "TrackingSection", __base__=_TrackingBase, __module__=__name__,
    __doc__="""Experiment trackers: each gets the same scalars as the progress events (loss, learning rate,
    samples/s, WER/CER overall and per eval source), the spec as config, and at the end the worst
    utterances as a table. Rank 0 only; a tracker that fails warns once and never fails the job.""",
    **{name: (Annotated[kind.settings | None, _no_credentials(name)], Field(None, description=kind.doc))
       for name, kind in TRACKERS.items()})
"""The ``tracking:`` section: one optional key per tracker in :data:`~gpujob.spec.trackers.TRACKERS`."""

TRACKER_MODELS: dict[str, type[Section]] = {name: kind.settings for name, kind in TRACKERS.items()}
