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
eval       step, wer, cer, eval_loss (wer/cer are fractions: 0.231 = 23.1 %),
           and any other name: value (per-dataset scores, e.g. ``wer_fleurs``)
checkpoint step, path
artifact   path, name
end        status ("succeeded" | "failed"), metrics {name: value}, message
heartbeat  phase, done, total (alive during long work between steps, e.g. evaluation)
========== ===============================================================

Any event counts as a sign of life for hung-job detection (``limits.idle_minutes``).

Whatever a job prints, reading it never fails and never takes long: the reader checks every
field, and a field of the wrong type or out of range is dropped as if it were absent (the rest of
the event still counts). What a reader keeps:

=============================== =========================================================
event                           1-40 characters of ``A-Z a-z 0-9 _ . -`` (else not an event)
t                               a number 0 .. 1e11 (unix seconds)
step, done                      an integer 0 .. 10**12 (a float is truncated)
total_steps, total              an integer 1 .. 10**12 (0 means unknown: dropped)
epoch, epochs                   a number 0 .. 1e9
loss, learning_rate, eval_loss  a number -1e30 .. 1e30
samples_per_s                   a number 0 .. 1e30
wer, cer                        a number 0 .. 1000 (a fraction; above 1 is possible)
status                          "succeeded", or "failed" for any other string
message, path                   a string, cut to 500 characters
name, kind, phase               a string, cut to 200 characters
metrics, eval's other names     at most 50 names of 1-100 characters, each to null, a boolean,
                                a number -1e30 .. 1e30 or a string cut to 200 characters;
                                anything else (a list, an object) is dropped
=============================== =========================================================

Booleans are not numbers; ``NaN``, ``Infinity`` and numbers too big for a float are dropped.
Control characters, terminal escape sequences (ESC, CSI), bidirectional overrides and lone
surrogates in any kept string are replaced (by a space for tab and newline, else U+FFFD), so
nothing a job prints can restyle the terminal of someone running ``status`` or ``logs``.

A line longer than 64 Ki characters (:data:`MAX_EVENT_CHARS`) holds no event: it is text. So is an
object nested more than 16 deep (:data:`MAX_DEPTH`). A stream cut into lines passes on a line
longer than 1 MiB (:data:`MAX_LINE_BYTES`) in pieces of at most that size. The state a
reader folds keeps the latest 50 artifact paths (:data:`MAX_ARTIFACTS`).

This module is stdlib-only: jobs import the writer, the CLI imports the parser, and neither
pulls in anything heavy.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from typing import IO, Any, Callable, Iterable, Iterator

PREFIX = "@gpujob/v1 "
VERSION = 1
EVENTS = ("start", "progress", "eval", "checkpoint", "artifact", "end", "heartbeat")

MAX_EVENT_CHARS = 64 * 1024     # a longer line holds no event (it is still text)
MAX_DEPTH = 16                  # an object nested deeper is not an event
MAX_LINE_BYTES = 1 << 20        # LineSplitter passes a longer line on in pieces of this size
MAX_STEP = 10**12
MAX_ABS = 1e30
MAX_RATE = 1000.0               # wer/cer: fractions; a WER above 100 % is possible, 100000 % is not
MAX_EPOCH = 1e9
MAX_T = 1e11                    # unix seconds (the year 5138)
MAX_TEXT = 500                  # message, path
MAX_NAME = 200                  # name, kind, phase, a metric's string value
MAX_KEY = 100                   # a metric's name
MAX_METRICS = 50                # names kept in metrics, and in eval besides its own fields
MAX_ARTIFACTS = 50              # paths kept (the latest)

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


# --------------------------------------------------------------------------- values

# C0 and C1 controls (ESC starts a terminal escape sequence; CSI is U+009B), DEL, the marks and
# overrides that reorder text on screen, and lone surrogates (which cannot be written as UTF-8).
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069\ud800-\udfff]")
_EVENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,40}")


def _swap(m: re.Match) -> str:
    return " " if m.group() in "\t\n\r\v\f\u2028\u2029" else "\ufffd"


def clean_text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """``value`` as a string that is safe to print on a terminal, cut to ``limit`` characters
    (the last one an ellipsis when cut); None when it is not a string."""
    if not isinstance(value, str):
        return None
    if len(value) > limit:
        value = value[: limit - 1] + "…"
    return _UNSAFE.sub(_swap, value) if _UNSAFE.search(value) else value


def _real(value: Any, lo: float, hi: float) -> float | None:
    """A number within [lo, hi] as a float; None for anything else (bools, NaN, 10**400, "1")."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, int):
        return float(value) if lo <= value <= hi else None  # compare as int: 10**400 cannot overflow
    return value + 0.0 if lo <= value <= hi else None  # NaN compares false; -0.0 + 0.0 is 0.0


def _int(value: Any, lo: int, hi: int) -> int | None:
    """A number within [lo, hi] as an int (a float is truncated); None for anything else."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if isinstance(value, float) and not lo <= value <= hi:
        return None  # (before int(): inf and NaN have none)
    value = int(value)
    return value if lo <= value <= hi else None


def _num(value: Any) -> float | None:
    """A number in -1e30 .. 1e30 as a float, else None."""
    return _real(value, -MAX_ABS, MAX_ABS)


def _status(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    return "succeeded" if value == "succeeded" else "failed"


def _plain(value: Any) -> tuple[bool, Any]:
    """(True, the value as kept) for a metric's value: null, a boolean, a finite number, a short
    string; (False, None) for anything else."""
    if value is None or isinstance(value, bool):
        return True, value
    if isinstance(value, int):
        return (True, int(value)) if -MAX_ABS <= value <= MAX_ABS else (False, None)
    if isinstance(value, float):
        return (True, value + 0.0) if -MAX_ABS <= value <= MAX_ABS else (False, None)
    if isinstance(value, str):
        return True, clean_text(value, MAX_NAME)
    return False, None


def _metric_items(items: Iterable[tuple[Any, Any]], skip: tuple[str, ...] = ()) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in items:
        if len(out) >= MAX_METRICS:
            break
        if not isinstance(key, str) or not 0 < len(key) <= MAX_KEY or key in skip:
            continue
        ok, value = _plain(value)
        if ok:
            out[clean_text(key, MAX_KEY)] = value
    return out


def clean_metrics(value: Any) -> dict[str, Any]:
    """``{name: value}`` as gpujob keeps metrics (see the module's table); {} for a non-dict."""
    return _metric_items(value.items()) if isinstance(value, dict) else {}


def _step(v: Any) -> int | None:
    return _int(v, 0, MAX_STEP)


def _total(v: Any) -> int | None:
    return _int(v, 1, MAX_STEP)


def _epoch(v: Any) -> float | None:
    return _real(v, 0.0, MAX_EPOCH)


def _rate(v: Any) -> float | None:
    return _real(v, 0.0, MAX_RATE)


def _speed(v: Any) -> float | None:
    return _real(v, 0.0, MAX_ABS)


def _time(v: Any) -> float | None:
    return _real(v, 0.0, MAX_T)


def _text(v: Any) -> str | None:
    return clean_text(v, MAX_TEXT)


def _name(v: Any) -> str | None:
    return clean_text(v, MAX_NAME)


_Check = Callable[[Any], Any]
_FIELDS: dict[str, dict[str, _Check]] = {
    "start": {"total_steps": _total, "epochs": _epoch, "name": _name, "kind": _name},
    "progress": {"step": _step, "total_steps": _total, "epoch": _epoch, "loss": _num,
                 "learning_rate": _num, "samples_per_s": _speed},
    "eval": {"step": _step, "wer": _rate, "cer": _rate, "eval_loss": _num},
    "checkpoint": {"step": _step, "path": _text},
    "artifact": {"path": _text, "name": _name},
    "end": {"status": _status, "metrics": lambda v: clean_metrics(v) if isinstance(v, dict) else None,
            "message": _text},
    "heartbeat": {"phase": _name, "done": _step, "total": _total},
}


def _depth_ok(obj: Any, limit: int = MAX_DEPTH) -> bool:
    """True when ``obj`` nests lists and dicts at most ``limit`` deep (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > limit:
            return False
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return True


def normalize_event(obj: Any) -> dict[str, Any] | None:
    """An event as readers use it: ``event``, then only the fields of its kind (and ``t``) that
    have the right type and range (see the module's table); None when ``obj`` is not an event.
    Idempotent, and never raises."""
    if not isinstance(obj, dict):
        return None
    kind = obj.get("event")
    if not isinstance(kind, str) or not _EVENT_NAME.fullmatch(kind):
        return None
    event: dict[str, Any] = {"event": kind}
    t = _time(obj.get("t"))
    if t is not None:
        event["t"] = t
    for key, check in _FIELDS.get(kind, {}).items():
        if key in obj:
            value = check(obj[key])
            if value is not None:
                event[key] = value
    if kind == "eval":
        event.update(_metric_items(((k, v) for k, v in obj.items()), skip=("event", "t", *_FIELDS["eval"])))
    return event


# --------------------------------------------------------------------------- parser


def decode_line(line: str) -> list[dict[str, Any]]:
    """Every JSON object behind the prefix in one line that has a string ``event``, as decoded and
    not yet checked (for a reader that needs every key, e.g. to find a secret in it). Never raises:
    a line over :data:`MAX_EVENT_CHARS` holds none, an object that does not decode (too deep, a
    number with thousands of digits) or nests deeper than :data:`MAX_DEPTH` is skipped."""
    objects: list[dict[str, Any]] = []
    if not isinstance(line, str) or len(line) > MAX_EVENT_CHARS:
        return objects
    start = line.find(PREFIX)
    while start != -1:
        body = start + len(PREFIX)
        try:
            obj, end = _decoder.raw_decode(line, body)
        except (ValueError, RecursionError, OverflowError):
            end = body
        else:
            if isinstance(obj, dict) and isinstance(obj.get("event"), str) and _depth_ok(obj):
                objects.append(obj)
        start = line.find(PREFIX, max(end, body))
    return objects


def parse_line(line: str) -> list[dict[str, Any]]:
    """Every well-formed event in one line of output (usually zero or one), each checked and cut
    down by :func:`normalize_event`. Never raises, whatever the line."""
    return [event for obj in decode_line(line) if (event := normalize_event(obj)) is not None]


def is_event_line(line: str) -> bool:
    """True when the line is nothing but one event (what `logs` may hide or restyle)."""
    stripped = line.strip()
    return stripped.startswith(PREFIX.strip()) and len(parse_line(stripped)) == 1


def _cut_at_char(data: bytes, at: int, lo: int) -> int:
    """``at`` moved back (at most 3 bytes, never to ``lo``) so it does not split a UTF-8 character."""
    back = at
    while back > lo + 1 and at - back < 3 and (data[back] & 0xC0) == 0x80:
        back -= 1
    return back if (data[back] & 0xC0) != 0x80 else at


class LineSplitter:
    """Turns arbitrary chunks of bytes into complete lines; keeps a torn tail for later.

    Linear in what it is fed, however long a line is; and a line longer than ``max_line`` bytes
    is passed on in pieces of at most that size (cut between UTF-8 characters), so output that
    never has a newline cannot fill the memory."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max(int(max_line), 4)
        self._parts: list[bytes] = []
        self._size = 0
        self._continued = False  # the pending bytes continue a line already passed on in part

    def feed_pieces(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        """The complete lines and pieces in ``chunk`` as ``(bytes, continues)``: ``continues`` is
        True for a piece of an overlong line after its first."""
        out: list[tuple[bytes, bool]] = []
        start, size = 0, len(chunk)
        while True:
            nl = chunk.find(b"\n", start)
            stop = size if nl == -1 else nl
            if stop > start:
                self._parts.append(chunk[start:stop])
                self._size += stop - start
                if self._size > self.max_line:
                    self._overflow(out)
            if nl == -1:
                return out
            if self._parts or not self._continued:  # (an overlong line that ended on a cut: done)
                out.append((b"".join(self._parts), self._continued))
            self._parts, self._size, self._continued = [], 0, False
            start = nl + 1

    def _overflow(self, out: list[tuple[bytes, bool]]) -> None:
        data, pos = b"".join(self._parts), 0
        while len(data) - pos > self.max_line:
            cut = _cut_at_char(data, pos + self.max_line, pos)
            out.append((data[pos:cut], self._continued))
            self._continued = True
            pos = cut
        rest = data[pos:]
        self._parts, self._size = ([rest] if rest else []), len(rest)

    @property
    def continued(self) -> bool:
        """True when part of the line now read has been passed on (it was too long to hold)."""
        return self._continued

    def flush_pieces(self) -> list[tuple[bytes, bool]]:
        tail, continued = b"".join(self._parts), self._continued
        self._parts, self._size, self._continued = [], 0, False
        return [(tail, continued)] if tail else []

    def feed(self, chunk: bytes) -> list[str]:
        return [p.decode("utf-8", "replace").rstrip("\r") for p, _ in self.feed_pieces(chunk)]

    def flush(self) -> list[str]:
        """The torn tail at end of stream, as a last line (never parsed as an event)."""
        return [p.decode("utf-8", "replace") for p, _ in self.flush_pieces()]


# --------------------------------------------------------------------------- state


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
    "started_at": _time, "updated_at": _time,
}
WINDOW = 20


@dataclass
class ProgressState:
    """What `status`, `list` and the live bar show; folded from events by :meth:`apply`.

    Whatever it is fed (events from any line, snapshots of any shape), every field keeps its type
    and range: step an int 0..10**12 or None, total_steps an int 1..10**12 or None, the other
    numbers finite floats or None, eval/checkpoint/metrics small dicts of plain values (see the
    module's table), artifacts at most :data:`MAX_ARTIFACTS` strings, end_status "succeeded",
    "failed" or None, message a short string or None."""

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
        elif kind == "progress":
            for key in ("total_steps", "epoch", "loss", "learning_rate", "samples_per_s"):
                self._take(event, key)
            step = event.get("step")
            if step is not None:
                if self.step is not None and step < self.step:
                    self._window.clear()  # resumed from an earlier checkpoint
                self.step = step
                self._window.append((t, step))
                self._rate()
        elif kind == "eval":
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

    def feed_lines(self, lines: Iterable[str], *, newer_than: float | None = None) -> int:
        """Fold the events in ``lines``; with ``newer_than``, skip events stamped at or before it
        (lines read again). Returns how many events were folded."""
        folded = 0
        newer_than = _real(newer_than, -math.inf, math.inf) if newer_than is not None else None
        for line in lines:
            for event in parse_line(line):
                t = event.get("t")
                if newer_than is not None and t is not None and t <= newer_than:
                    continue
                self.apply(event)
                folded += 1
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
    def advance(cls, snapshot: dict[str, Any] | None, lines: Iterable[str]) -> dict[str, Any] | None:
        """``snapshot`` advanced by the events in ``lines`` newer than it, or None when no event is
        newer: for backends that read progress back from the end of a job's log."""
        state = cls.from_dict(snapshot)
        return state.to_dict() if state.feed_lines(lines, newer_than=state.updated_at) else None


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
    """One event as a plain-text line for people (what non-raw `logs` prints). Takes any dict:
    it is checked by :func:`normalize_event` first, so nothing in it can break the line or the
    terminal; a dict that is not an event reads ``[?]``."""
    checked = normalize_event(event)
    if checked is None:
        return "[?]"
    event = checked
    kind = event["event"]
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
            if key in event:
                parts.append(f"{label} {fmt.format(event[key])}")
    elif kind == "eval":
        if "step" in event:
            parts.append(f"step {event['step']}")
        for key in ("wer", "cer"):
            if key in event:
                parts.append(f"{key.upper()} {event[key] * 100:.2f}%")
        if "eval_loss" in event:
            parts.append(f"eval_loss {event['eval_loss']:.4f}")
    elif kind == "heartbeat":
        done = f" {event['done']}/{event.get('total') or '?'}" if "done" in event else ""
        parts.append(f"{event.get('phase', '')}{done}".strip())
    elif kind in ("checkpoint", "artifact"):
        if "step" in event:
            parts.append(f"step {event['step']}")
        parts.append(event.get("path", ""))
    elif kind == "end":
        parts.append(event.get("status", ""))
        for key, value in event.get("metrics", {}).items():
            parts.append(f"{key} {value}")
        if event.get("message"):
            parts.append(event["message"])
    return (f"[{kind}] " + "  ".join(p for p in parts if p)).rstrip()


def iter_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        yield from parse_line(line)
