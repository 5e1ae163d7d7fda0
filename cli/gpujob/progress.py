"""The progress protocol: how any job tells gpujob how far it has got.

A job writes one JSON object per line to stdout, behind a fixed prefix::

    @gpujob/v1 {"event": "progress", "t": 1732490000.1, "step": 120, "total_steps": 5000, "loss": 0.41}

Rules (version 1):

* The prefix ``@gpujob/v1`` followed by one space, then a JSON object with an
  ``event`` key. ``t`` (unix seconds) is added by the writer; readers that see
  no ``t`` use the time they read the line.
* The prefix may appear anywhere in a line (a tqdm bar drawn with ``\\r`` may
  precede it). A line may hold several events when two writers interleave;
  readers take every object that parses and skip the rest. A torn line (no
  newline yet) is not an event until its newline arrives.
* Unknown keys and unknown events are ignored, so newer jobs work with older
  readers. A later protocol version gets a new prefix.

Events and their fields (all optional but ``event``):

========== ===============================================================
start      total_steps, epochs, name, kind
progress   step, total_steps, epoch, loss, learning_rate, samples_per_s
eval       step, wer, cer, eval_loss (wer/cer are fractions: 0.231 = 23.1 %)
checkpoint step, path
artifact   path, name
end        status ("succeeded" | "failed"), metrics {name: value}, message
heartbeat  phase, done, total (alive during long work between steps, e.g. evaluation)
========== ===============================================================

Any event counts as a sign of life for hung-job detection (``limits.idle_minutes``).

This module is stdlib-only: jobs import the writer, the CLI imports the
parser, and neither pulls in anything heavy.
"""

from __future__ import annotations

import json
import math
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Iterable, Iterator

PREFIX = "@gpujob/v1 "
VERSION = 1
EVENTS = ("start", "progress", "eval", "checkpoint", "artifact", "end", "heartbeat")

_decoder = json.JSONDecoder()


# --------------------------------------------------------------------------- writer


class ProgressWriter:
    """Writes event lines for a job. ``ProgressWriter().progress(step=3, total_steps=10, loss=0.5)``."""

    def __init__(self, stream: IO[str] | None = None, clock=time.time) -> None:
        self._stream = stream
        self._clock = clock

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown progress event {event!r}; one of {', '.join(EVENTS)}")
        payload = {"event": event, "t": round(self._clock(), 3)}
        payload.update({k: v for k, v in fields.items() if v is not None})
        line = PREFIX + json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str) + "\n"
        stream = self._stream or sys.stdout
        stream.write(line)  # one write call: a whole line, so lines from threads do not tear
        stream.flush()

    def start(self, **fields: Any) -> None:
        self.emit("start", **fields)

    def progress(self, **fields: Any) -> None:
        self.emit("progress", **fields)

    def eval(self, **fields: Any) -> None:
        self.emit("eval", **fields)

    def checkpoint(self, **fields: Any) -> None:
        self.emit("checkpoint", **fields)

    def artifact(self, **fields: Any) -> None:
        self.emit("artifact", **fields)

    def end(self, **fields: Any) -> None:
        self.emit("end", **fields)

    def heartbeat(self, **fields: Any) -> None:
        self.emit("heartbeat", **fields)


# --------------------------------------------------------------------------- parser


def parse_line(line: str) -> list[dict[str, Any]]:
    """Every well-formed event in one line of output (usually zero or one)."""
    events: list[dict[str, Any]] = []
    start = line.find(PREFIX)
    while start != -1:
        body = start + len(PREFIX)
        try:
            obj, end = _decoder.raw_decode(line, body)
        except ValueError:
            end = body
        else:
            if isinstance(obj, dict) and isinstance(obj.get("event"), str):
                events.append(obj)
        start = line.find(PREFIX, max(end, body))
    return events


def is_event_line(line: str) -> bool:
    """True when the line is nothing but one event (what `logs` may hide or restyle)."""
    stripped = line.strip()
    return stripped.startswith(PREFIX.strip()) and len(parse_line(stripped)) == 1


class LineSplitter:
    """Turns arbitrary chunks of bytes into complete lines; keeps a torn tail for later."""

    def __init__(self) -> None:
        self._buf = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buf += chunk
        *lines, self._buf = self._buf.split(b"\n")
        return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines]

    def flush(self) -> list[str]:
        """The torn tail at end of stream, as a last line (never parsed as an event)."""
        tail, self._buf = self._buf, b""
        return [tail.decode("utf-8", "replace")] if tail else []


# --------------------------------------------------------------------------- state


@dataclass
class ProgressState:
    """What `status`, `list` and the live bar show; folded from events by :meth:`apply`."""

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
    end_status: str | None = None
    message: str | None = None
    started_at: float | None = None
    updated_at: float | None = None
    _window: deque = field(default_factory=lambda: deque(maxlen=20), repr=False)

    # ---- folding
    def apply(self, event: dict[str, Any], now: float | None = None) -> None:
        t = _num(event.get("t"))
        t = t if t is not None else (now if now is not None else time.time())
        kind = event.get("event")
        self.updated_at = t
        if kind == "start":
            self.started_at = t
            self._take(event, "total_steps", int)
        elif kind == "progress":
            self._take(event, "total_steps", int)
            self._take(event, "epoch", float)
            self._take(event, "loss", float)
            self._take(event, "learning_rate", float)
            self._take(event, "samples_per_s", float)
            step = _int(event.get("step"))
            if step is not None:
                if self.step is not None and step < self.step:
                    self._window.clear()  # resumed from an earlier checkpoint
                self.step = step
                self._window.append((t, step))
                self._rate()
        elif kind == "eval":
            self.eval = {k: v for k, v in event.items() if k not in ("event", "t") and _plain(v)}
        elif kind == "checkpoint":
            self.checkpoint = {k: event[k] for k in ("step", "path") if k in event}
        elif kind == "artifact":
            path = event.get("path")
            if isinstance(path, str) and path not in self.artifacts:
                self.artifacts.append(path)
        elif kind == "end":
            status = event.get("status")
            self.end_status = status if isinstance(status, str) else None
            if isinstance(event.get("metrics"), dict):
                self.metrics = {k: v for k, v in event["metrics"].items() if _plain(v)}
            if isinstance(event.get("message"), str):
                self.message = event["message"][:500]
            self.eta_s = 0.0 if self.end_status == "succeeded" else None

    def _take(self, event: dict[str, Any], key: str, cast) -> None:
        value = _num(event.get(key))
        if value is not None:
            setattr(self, key, cast(value))

    def _rate(self) -> None:
        if len(self._window) < 2:
            return
        (t0, s0), (t1, s1) = self._window[0], self._window[-1]
        if t1 > t0 and s1 > s0:
            self.steps_per_s = (s1 - s0) / (t1 - t0)
            if self.total_steps:
                self.eta_s = max(self.total_steps - s1, 0) / self.steps_per_s

    def feed_lines(self, lines: Iterable[str], *, newer_than: float | None = None) -> int:
        """Fold the events in ``lines``; with ``newer_than``, skip events stamped at or before it
        (lines read again). Returns how many events were folded."""
        folded = 0
        for line in lines:
            for event in parse_line(line):
                t = event.get("t")
                if newer_than is not None and isinstance(t, (int, float)) and t <= newer_than:
                    continue
                self.apply(event)
                folded += 1
        return folded

    # ---- views
    @property
    def fraction(self) -> float | None:
        if self.end_status == "succeeded":
            return 1.0
        if self.step is None or not self.total_steps:
            return None
        return min(self.step / self.total_steps, 1.0)

    @property
    def last_wer(self) -> float | None:
        return _num(self.metrics.get("wer", self.eval.get("wer")))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.pop("_window", None)
        data["window"] = list(self._window)
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> "ProgressState":
        state = cls()
        for key, value in (data or {}).items():
            if key == "window":
                state._window.extend(tuple(p) for p in value)
            elif key in cls.__dataclass_fields__ and not key.startswith("_"):
                setattr(state, key, value)
        return state

    @classmethod
    def advance(cls, snapshot: dict[str, Any] | None, lines: Iterable[str]) -> dict[str, Any] | None:
        """``snapshot`` advanced by the events in ``lines`` newer than it, or None when no event is
        newer: for backends that read progress back from the end of a job's log."""
        state = cls.from_dict(snapshot)
        return state.to_dict() if state.feed_lines(lines, newer_than=state.updated_at) else None


def _num(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return value if math.isfinite(value) else None


def _int(value: Any) -> int | None:
    num = _num(value)
    return int(num) if num is not None else None


def _plain(value: Any) -> bool:
    return value is None or isinstance(value, (str, int, float, bool))


# --------------------------------------------------------------------------- words


def fmt_duration(seconds: float | None) -> str:
    """3725 -> '1h02m', 95 -> '1m35s', None -> '-'."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    seconds = int(round(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def fmt_rate(steps_per_s: float | None) -> str:
    if not steps_per_s:
        return "-"
    return f"{steps_per_s:.2f} it/s" if steps_per_s >= 1 else f"{1 / steps_per_s:.1f} s/it"


def fmt_pct(fraction: float | None) -> str:
    return "-" if fraction is None else f"{fraction * 100:.0f}%"


def describe_event(event: dict[str, Any]) -> str:
    """One event as a plain-text line for people (what non-raw `logs` prints)."""
    kind = event.get("event")
    parts: list[str] = []
    if kind in ("start", "progress"):
        step, total = event.get("step"), event.get("total_steps")
        if step is not None:
            parts.append(f"step {step}/{total}" if total else f"step {step}")
        elif total:
            parts.append(f"{total} steps")
        for key, label, fmt in (
            ("epoch", "epoch", "{:.2f}"),
            ("loss", "loss", "{:.4f}"),
            ("learning_rate", "lr", "{:.2e}"),
            ("samples_per_s", "samples/s", "{:.1f}"),
        ):
            if _num(event.get(key)) is not None:
                parts.append(f"{label} {fmt.format(event[key])}")
    elif kind == "eval":
        if event.get("step") is not None:
            parts.append(f"step {event['step']}")
        for key in ("wer", "cer"):
            if _num(event.get(key)) is not None:
                parts.append(f"{key.upper()} {event[key] * 100:.2f}%")
        if _num(event.get("eval_loss")) is not None:
            parts.append(f"eval_loss {event['eval_loss']:.4f}")
    elif kind == "heartbeat":
        done = f" {event['done']}/{event.get('total') or '?'}" if event.get("done") is not None else ""
        parts.append(f"{event.get('phase', '')}{done}".strip())
    elif kind in ("checkpoint", "artifact"):
        if event.get("step") is not None:
            parts.append(f"step {event['step']}")
        parts.append(str(event.get("path", "")))
    elif kind == "end":
        parts.append(str(event.get("status", "")))
        for key, value in (event.get("metrics") or {}).items():
            parts.append(f"{key} {value}")
        if event.get("message"):
            parts.append(str(event["message"]))
    return f"[{kind}] " + "  ".join(p for p in parts if p)


def iter_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        yield from parse_line(line)
