"""A job's metric history: its progress and eval events as points, and how they are kept small.

Every ``progress`` and ``eval`` event with a step, and every ``system`` sample, becomes a point (:func:`point`): the event's
kind, time, step and its numeric fields (loss, learning rate, samples/s, epoch; WER, CER, eval
loss and the per-source ``wer/<name>``/``cer/<name>`` of an eval). The registry keeps them per job
(:meth:`gpujob.registry.Registry.add_history`), whatever the backend, so the curves outlive the
job's pods, containers and hosts.

The bound: at most :data:`CAPS` points of each kind per job (2,000 progress, 1,000 eval, 1,000
system: about 600 KB of registry in all). A series that passes its cap is thinned by :func:`thin`: one point per
step bucket of a power-of-two width, chosen so that about half the cap stays; later points come in
at full rate until the cap is reached again. So the older part of a long run is evenly spaced in
steps and the recent part is dense, and the first and last points always stay. Stdlib-only.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Iterator, Sequence

from gpujob.events import normalize_event, parse_line

KINDS = ("progress", "eval", "system")
CAPS = {"progress": 2000, "eval": 1000, "system": 1000}
# The fields a point keeps of each kind (an eval's per-source scores and other numbers besides).
PROGRESS_FIELDS = ("loss", "learning_rate", "samples_per_s", "epoch")
# A system point's (runner/sysmetrics.py): its ``step`` is the sample's number ``n``, ``train_step`` the
# training step when it was taken; GPU fields only where there is a GPU.
SYSTEM_FIELDS = ("train_step", "cpu_percent", "rss_bytes", "mem_used_bytes", "mem_total_bytes", "loader_wait_percent",
                 "gpus", "gpu_util_percent", "gpu_mem_used_bytes", "gpu_mem_total_bytes", "gpu_power_w")
# What a series is called on axes and in tables: its unit in brackets.
UNITS = {"loss": "loss", "eval_loss": "loss", "learning_rate": "learning rate", "samples_per_s": "samples/s",
         "epoch": "epoch", "wer": "WER (%)", "cer": "CER (%)", "cpu_percent": "CPU (% of a core)",
         "rss_bytes": "RSS (bytes)", "mem_used_bytes": "host memory (bytes)", "loader_wait_percent": "loader wait (%)",
         "gpu_util_percent": "GPU utilisation (%)", "gpu_mem_used_bytes": "GPU memory (bytes)",
         "gpu_power_w": "GPU power (W)"}

Point = dict[str, Any]


def point(event: dict[str, Any] | None) -> Point | None:
    """The history point of one event (normalized here), or None: only progress and eval events
    with a step make one. Its keys: ``event``, ``step``, ``t`` (when the event has one), and the
    event's numbers (never a boolean, string or null)."""
    event = normalize_event(event)
    if event is None or event["event"] not in KINDS:
        return None
    if event["event"] == "system":
        if event.get("n") is None:
            return None
        event = {**{k: v for k, v in event.items() if k not in ("n", "step")}, "step": event["n"],
                 **({"train_step": event["step"]} if "step" in event else {})}
    if event.get("step") is None:
        return None
    p: Point = {"event": event["event"], "step": event["step"]}
    if "t" in event:
        p["t"] = event["t"]
    for key, value in event.items():
        if key in ("event", "step", "t") or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if event["event"] == "progress" and key not in PROGRESS_FIELDS:
            continue  # total_steps: not a curve
        p[key] = value
    return p


def points(events: Iterable[dict[str, Any]]) -> list[Point]:
    return [p for e in events if (p := point(e)) is not None]


def points_from_lines(lines: Iterable[str], *, newer_than: float | None = None) -> list[Point]:
    """The points of the events in ``lines`` (a log, or its tail); with ``newer_than``, only those
    stamped after it (events without a time are always taken: the registry keeps one per step)."""
    out = []
    for line in lines:
        if "@gpujob/" not in line:
            continue
        for event in parse_line(line):
            p = point(event)
            if p is not None and (newer_than is None or p.get("t") is None or p["t"] > newer_than):
                out.append(p)
    return out


def from_log(lines: Iterable[str]) -> list[Point]:
    """The whole history in a log, thinned as it is read (a long log never needs more than a few caps
    of points in memory)."""
    out: list[Point] = []
    for line in lines:
        if "@gpujob/" in line:
            out.extend(points_from_lines((line,)))
            if len(out) > 4 * sum(CAPS.values()):
                out = thinned(out)
    return thinned(out)


def bucket_width(max_step: int, cap: int) -> int:
    """The smallest power of two ``w`` with at most ``cap // 2`` buckets ``step // w`` in 0..max_step."""
    keep = max(cap // 2, 1)
    width = 1
    while max_step // width + 1 > keep:
        width *= 2
    return width


def thin(rows: Sequence[tuple[Any, int, float | None]], cap: int) -> set[Any]:
    """Which rows of one series to drop so that it is back under ``cap``: ``rows`` are (key, step,
    time) in the order they were recorded. Nothing when there are at most ``cap``. Otherwise one
    row per bucket of :func:`bucket_width` steps stays, the latest recorded (a resumed run's
    repeat of a step replaces the first try's), plus the very first and last rows."""
    if len(rows) <= cap:
        return set()
    width = bucket_width(max(step for _, step, _ in rows), cap)
    latest: dict[int, Any] = {}
    for key, step, _ in rows:
        latest[step // width] = key
    keep = set(latest.values()) | {rows[0][0], rows[-1][0]}
    return {key for key, _, _ in rows if key not in keep}


def thinned(history: Sequence[Point]) -> list[Point]:
    """``history`` with each kind's series thinned to its cap (:func:`thin`), in the same order."""
    drop: set[int] = set()
    for kind, cap in CAPS.items():
        drop |= thin([(i, p["step"], p.get("t")) for i, p in enumerate(history) if p["event"] == kind], cap)
    return [p for i, p in enumerate(history) if i not in drop]


def series(history: Sequence[Point], kind: str, field: str) -> tuple[list[int], list[float]]:
    """(steps, values) of one field of one kind, in recorded order (what a curve draws)."""
    steps, values = [], []
    for p in history:
        if p.get("event") == kind and isinstance(p.get(field), (int, float)) and math.isfinite(p[field]):
            steps.append(p["step"])
            values.append(float(p[field]))
    return steps, values


def fields(history: Sequence[Point], kind: str) -> list[str]:
    """The numeric fields that some point of ``kind`` has, in a stable order (known ones first)."""
    seen: dict[str, None] = {}
    for p in history:
        if p.get("event") == kind:
            for key in p:
                if key not in ("event", "step", "t"):
                    seen.setdefault(key, None)
    known = [k for k in (*PROGRESS_FIELDS, "wer", "cer", "eval_loss", *SYSTEM_FIELDS) if k in seen]
    return known + sorted(k for k in seen if k not in known)


def sources(history: Sequence[Point]) -> list[str]:
    """The eval sources named in ``wer/<name>`` keys, in the order first seen."""
    names: dict[str, None] = {}
    for p in history:
        if p.get("event") == "eval":
            for key in p:
                if key.startswith("wer/"):
                    names.setdefault(key[4:], None)
    return list(names)


def rows(history: Sequence[Point]) -> Iterator[dict[str, Any]]:
    """The history as flat rows with the same columns each (for CSV): kind, step, t, then every field."""
    columns = list(dict.fromkeys(k for kind in KINDS for k in fields(history, kind)))
    for p in history:
        yield {"event": p["event"], "step": p["step"], "t": p.get("t"), **{c: p.get(c) for c in columns}}
