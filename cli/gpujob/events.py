"""Reading event lines: every ``@gpujob/v1`` object in a line of output, decoded and checked.

:func:`parse_line` finds the events in one line of a job's output and keeps only the fields of
the right type and range (the table in :mod:`gpujob.progress`); :func:`decode_line` gives the
objects as decoded, before checking. Neither ever raises or takes long, whatever the line.
The checks (:func:`normalize_event`, :func:`clean_text`, :func:`clean_metrics`) and their bounds
are here too. Stdlib-only.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable, Iterable, Iterator

from gpujob.wire import EVENT_PREFIX as PREFIX

MAX_EVENT_CHARS = 64 * 1024     # a longer line holds no event (it is still text)
MAX_DEPTH = 16                  # an object nested deeper is not an event
MAX_STEP = 10**12
MAX_ABS = 1e30
MAX_RATE = 1000.0               # wer/cer: fractions; a WER above 100 % is possible, 100000 % is not
MAX_EPOCH = 1e9
MAX_BYTES = 10**18               # a system event's memory sizes
MAX_T = 1e11                    # unix seconds (the year 5138)
MAX_TEXT = 500                  # message, path
MAX_NAME = 200                  # name, kind, phase, a metric's string value
MAX_KEY = 100                   # a metric's name
MAX_METRICS = 50                # names kept in metrics, and in eval besides its own fields

_decoder = json.JSONDecoder()


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
    """``{name: value}`` as gpujob keeps metrics (see the table in :mod:`gpujob.progress`); {} for
    a non-dict."""
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


def _bytes(v: Any) -> int | None:
    return _int(v, 0, MAX_BYTES)


def _percent(v: Any) -> float | None:
    return _real(v, 0.0, 100.0)


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
    "heartbeat": {"phase": _name, "done": _step, "total": _total, "unit": lambda v: v if v == "bytes" else None},
    "system": {"n": _step, "step": _step, "cpu_percent": lambda v: _real(v, 0.0, 1e6),
               "rss_bytes": _bytes, "mem_used_bytes": _bytes, "mem_total_bytes": _bytes,
               "loader_wait_percent": _percent, "gpus": lambda v: _int(v, 1, 100_000),
               "gpu_util_percent": _percent, "gpu_mem_used_bytes": _bytes, "gpu_mem_total_bytes": _bytes,
               "gpu_power_w": lambda v: _real(v, 0.0, 1e7)},
    "export": {"engine": _name, "wer": _rate, "cer": _rate, "transformers_wer": _rate, "transformers_cer": _rate,
               "wer_gap": _num, "max_wer_gap": _num, "utterances": _step, "same_transcripts": _step,
               "utterances_per_s": _speed, "transformers_utterances_per_s": _speed, "quantization": _name,
               "compute_type": _name, "device": _name},
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
    have the right type and range (see the table in :mod:`gpujob.progress`); None when ``obj`` is
    not an event. Idempotent, and never raises."""
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


def iter_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        yield from parse_line(line)
