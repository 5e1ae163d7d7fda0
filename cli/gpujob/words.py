"""Progress in words for people: durations, rates, percentages, money and one event as a line.

Stdlib-only; an event is checked by :func:`gpujob.events.normalize_event` before it is described.
"""

from __future__ import annotations

import math
from typing import Any

from gpujob.events import clean_text, normalize_event


def printable(value: Any, limit: int = 4000) -> str:
    """Text from a job's record (its name, a reason quoting the job's output) that is safe to show:
    no terminal escape sequences or other control characters, at most ``limit`` characters."""
    return clean_text(value if isinstance(value, str) else str(value), limit) or ""


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


def money(usd: float | None) -> str:
    """$1.23; a cost that is not zero but under a cent shows as <$0.01, not as nothing."""
    usd = usd or 0.0
    return "<$0.01" if 0 < usd < 0.005 else f"${usd:.2f}"


def fmt_bytes(n: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 kB``, ``5 B`` (powers of 1000, as stores and disks count)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.1f} {unit}" if n < 100 * size else f"{n / size:.0f} {unit}"
    return f"{int(n)} B"


def phase_words(event: dict[str, Any]) -> str:
    """A heartbeat's phase with how far it got: ``evaluating 3/10``, ``staging data 1.2 of 3.4 GB``."""
    phase = event.get("phase", "")
    if "done" not in event:
        return str(phase).strip()
    if event.get("unit") == "bytes":
        total = event.get("total")
        done = fmt_bytes(event["done"])
        if total:
            value, unit = fmt_bytes(total).split()
            done = done.removesuffix(" " + unit)
            return f"{phase} {done} of {value} {unit}".strip()
        return f"{phase} {done}".strip()
    return f"{phase} {event['done']}/{event.get('total') or '?'}".strip()


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
        for key, value in event.items():  # per eval source: "fleurs: WER 12.30% CER 4.10%"
            if key.startswith("wer/") and isinstance(value, (int, float)) and not isinstance(value, bool):
                cer = event.get("cer/" + key[4:])
                parts.append(f"{key[4:]}: WER {value * 100:.2f}%" + (
                    f" CER {cer * 100:.2f}%" if isinstance(cer, (int, float)) and not isinstance(cer, bool) else ""))
    elif kind == "heartbeat":
        parts.append(phase_words(event))
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
