"""Folding progress events into the state that ``status``, ``list`` and the live bar show.

:class:`ProgressState` takes events one by one (or the lines of a log), keeps every field in type
and range whatever it is fed, and goes to and from a snapshot (the registry's ``progress``).
Stdlib-only.
"""

from __future__ import annotations

import math
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import Any, Iterable

from gpujob.events import (
    _Check,
    _epoch,
    _num,
    _rate,
    _real,
    _speed,
    _step,
    _text,
    _time,
    _total,
    clean_metrics,
    normalize_event,
    parse_line,
)

MAX_ARTIFACTS = 50              # paths kept (the latest)


def _phase_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    event = normalize_event({"event": "heartbeat", **value}) or {}
    return {k: event[k] for k in ("phase", "done", "total", "unit") if k in event}


def _checkpoint_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    event = normalize_event({**{k: value[k] for k in ("step", "path") if k in value}, "event": "checkpoint"})
    return {k: event[k] for k in ("step", "path") if event and k in event}


def _eval_fields(value: Any) -> dict[str, Any]:
    if not isinstance(value, dict):
        return {}
    event = normalize_event({**value, "event": "eval"}) or {}
    return {k: v for k, v in event.items() if k not in ("event", "t")}


def _artifact_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        return []
    paths: list[str] = []
    for item in value[-MAX_ARTIFACTS:]:
        path = _text(item)
        if path is not None and path not in paths:
            paths.append(path)
    return paths


# How a snapshot's fields are checked when it is read back (from_dict).
_STATE_FIELDS: dict[str, _Check] = {
    "step": _step, "total_steps": _total, "epoch": _epoch, "loss": _num, "learning_rate": _num,
    "samples_per_s": _speed, "steps_per_s": _speed, "eta_s": _speed, "eval": _eval_fields,
    "checkpoint": _checkpoint_fields, "artifacts": _artifact_list, "metrics": clean_metrics,
    "end_status": lambda v: v if v in ("succeeded", "failed") else None, "message": _text,
    "started_at": _time, "updated_at": _time, "phase": lambda v: _phase_fields(v),
}
WINDOW = 20


@dataclass
class ProgressState:
    """What `status`, `list` and the live bar show; folded from events by :meth:`apply`.

    Whatever it is fed (events from any line, snapshots of any shape), every field keeps its type
    and range: step an int 0..10**12 or None, total_steps an int 1..10**12 or None, the other
    numbers finite floats or None, eval/checkpoint/metrics small dicts of plain values (see the
    table in :mod:`gpujob.progress`), artifacts at most :data:`MAX_ARTIFACTS` strings, end_status
    "succeeded", "failed" or None, message a short string or None."""

    step: int | None = None
    total_steps: int | None = None
    epoch: float | None = None
    loss: float | None = None
    learning_rate: float | None = None
    samples_per_s: float | None = None
    steps_per_s: float | None = None
    eta_s: float | None = None
    eval: dict[str, Any] = field(default_factory=dict)
    checkpoint: dict[str, Any] = field(default_factory=dict)
    artifacts: list[str] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    phase: dict[str, Any] = field(default_factory=dict)  # the last heartbeat's phase, done, total, unit,
    # until the next step, eval or end (staging data before the first step, say)
    end_status: str | None = None
    message: str | None = None
    started_at: float | None = None
    updated_at: float | None = None
    _window: deque = field(default_factory=lambda: deque(maxlen=WINDOW), repr=False)

    # ---- folding
    def apply(self, event: dict[str, Any], now: float | None = None) -> None:
        """Fold one event (checked by :func:`normalize_event` first; a non-event is ignored)."""
        event = normalize_event(event)
        if event is None:
            return
        t = event.get("t")
        if t is None:
            t = _time(now)
        if t is None:
            t = time.time()
        kind = event["event"]
        self.updated_at = t
        if kind == "start":
            self.started_at = t
            self._take(event, "total_steps")
        if kind == "progress":
            for key in ("total_steps", "epoch", "loss", "learning_rate", "samples_per_s"):
                self._take(event, key)
            step = event.get("step")
            if step is not None:
                if self.step is not None and step < self.step:
                    self._window.clear()  # resumed from an earlier checkpoint
                self.step = step
                self._window.append((t, step))
                self._rate()
        elif kind == "heartbeat":
            self.phase = {k: event[k] for k in ("phase", "done", "total", "unit") if k in event}
        if kind in ("start", "progress", "eval", "end"):
            self.phase = {}
        if kind == "eval":
            self.eval = {k: v for k, v in event.items() if k not in ("event", "t")}
        elif kind == "checkpoint":
            self.checkpoint = {k: event[k] for k in ("step", "path") if k in event}
        elif kind == "artifact":
            path = event.get("path")
            if path is not None and path not in self.artifacts:
                self.artifacts.append(path)
                del self.artifacts[:-MAX_ARTIFACTS]
        elif kind == "end":
            self.end_status = event.get("status")
            if "metrics" in event:
                self.metrics = event["metrics"]
            if "message" in event:
                self.message = event["message"]
            self.eta_s = 0.0 if self.end_status == "succeeded" else None

    def _take(self, event: dict[str, Any], key: str) -> None:
        value = event.get(key)
        if value is not None:
            setattr(self, key, value if key == "total_steps" else float(value))

    def _rate(self) -> None:
        if len(self._window) < 2:
            return
        (t0, s0), (t1, s1) = self._window[0], self._window[-1]
        if t1 > t0 and s1 > s0:
            rate = _speed((s1 - s0) / (t1 - t0))
            if rate:
                self.steps_per_s = rate
                if self.total_steps:
                    self.eta_s = _speed(max(self.total_steps - s1, 0) / rate)

    def feed_lines(self, lines: Iterable[str], *, newer_than: float | None = None,
                   folded_events: list | None = None) -> int:
        """Fold the events in ``lines``; with ``newer_than``, skip events stamped at or before it
        (lines read again); ``folded_events``: a list the folded events are appended to. Returns how
        many events were folded."""
        folded = 0
        newer_than = _real(newer_than, -math.inf, math.inf) if newer_than is not None else None
        for line in lines:
            for event in parse_line(line):
                t = event.get("t")
                if newer_than is not None and t is not None and t <= newer_than:
                    continue
                self.apply(event)
                folded += 1
                if folded_events is not None:
                    folded_events.append(event)
        return folded

    # ---- views
    @property
    def fraction(self) -> float | None:
        if self.end_status == "succeeded":
            return 1.0
        step, total = _step(self.step), _total(self.total_steps)
        if step is None or not total:
            return None
        return min(step / total, 1.0)

    @property
    def last_wer(self) -> float | None:
        metrics = self.metrics if isinstance(self.metrics, dict) else {}
        evals = self.eval if isinstance(self.eval, dict) else {}
        return _rate(metrics.get("wer", evals.get("wer")))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_window", None)
        data["window"] = list(self._window)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ProgressState":
        """A state from a snapshot (:meth:`to_dict`, read back from the registry). A field of the
        wrong type or out of range, from a corrupted or older snapshot, is left at its default."""
        state = cls()
        if not isinstance(data, dict):
            return state
        for key, check in _STATE_FIELDS.items():
            if key in data:
                value = check(data[key])
                if value is not None:
                    setattr(state, key, value)
        window = data.get("window")
        if isinstance(window, list):
            for point in window[-WINDOW:]:
                if isinstance(point, (list, tuple)) and len(point) == 2:
                    t, step = _time(point[0]), _step(point[1])
                    if t is not None and step is not None:
                        state._window.append((t, step))
        return state

    @classmethod
    def advance(cls, snapshot: dict[str, Any] | None, lines: Iterable[str], *,
                folded_events: list | None = None) -> dict[str, Any] | None:
        """``snapshot`` advanced by the events in ``lines`` newer than it, or None when no event is
        newer: for backends that read progress back from the end of a job's log (``folded_events``:
        as :meth:`feed_lines`)."""
        state = cls.from_dict(snapshot)
        folded = state.feed_lines(lines, newer_than=state.updated_at, folded_events=folded_events)
        return state.to_dict() if folded else None
