"""A job's system metrics (the ``system`` points of its history, runner/sysmetrics.py) in words: the
current and peak values ``status`` shows, the table ``gpujob metrics --system`` prints, and the
"GPU starved" hint. Stdlib-only.
"""

from __future__ import annotations

from typing import Any, Sequence

# (field, label, how a value is written); the GPU ones only where a point has them
COLUMNS = (
    ("cpu_percent", "CPU %", "pct"), ("rss_bytes", "RSS", "bytes"), ("mem_used_bytes", "host mem", "bytes"),
    ("loader_wait_percent", "loader wait %", "pct"), ("gpu_util_percent", "GPU %", "pct"),
    ("gpu_mem_used_bytes", "GPU mem", "bytes"), ("gpu_power_w", "GPU W", "watts"),
)
STARVED_UTIL = 50.0       # mean GPU utilisation (%) under which a GPU counts as starved ...
STARVED_WAIT = 20.0       # ... while the training loop waits for data at least this share of the time
STARVED_SAMPLES = 6       # over the latest this many samples (30 s at the default interval)


def human_bytes(n: float | None) -> str:
    """``277 MB``, ``1.4 GB``, ``512 B`` (decimal units, as disks and ``ls -h --si`` count); ``-`` for None."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(value) < 1000 or unit == "TB":
            if unit == "B":
                return f"{int(value)} B"
            return f"{value:.0f} {unit}" if abs(value) >= 10 else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"  # pragma: no cover


def samples(history: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    return [p for p in history if p.get("event") == "system"]


def _fmt(kind: str, value: float | None) -> str:
    if value is None:
        return "-"
    if kind == "bytes":
        return human_bytes(value)
    if kind == "watts":
        return f"{value:.0f} W"
    return f"{value:.0f}%"


def _values(points: Sequence[dict[str, Any]], key: str) -> list[float]:
    return [float(p[key]) for p in points if isinstance(p.get(key), (int, float)) and not isinstance(p[key], bool)]


def current_and_peak(points: Sequence[dict[str, Any]], key: str) -> tuple[float, float] | None:
    values = _values(points, key)
    return (values[-1], max(values)) if values else None


def starved(points: Sequence[dict[str, Any]]) -> str | None:
    """The "GPU starved" hint, when the latest samples have a GPU mostly idle while the training loop
    waits for data; else None."""
    recent = [p for p in points if "gpu_util_percent" in p and "loader_wait_percent" in p][-STARVED_SAMPLES:]
    if len(recent) < min(3, STARVED_SAMPLES):
        return None
    util = sum(_values(recent, "gpu_util_percent")) / len(recent)
    wait = sum(_values(recent, "loader_wait_percent")) / len(recent)
    if util >= STARVED_UTIL or wait < STARVED_WAIT:
        return None
    return (f"GPU starved: {util:.0f}% utilisation while the training loop waited for data {wait:.0f}% of the "
            "time (latest samples); raise data.loader_workers, or move the data nearer (a local copy, "
            "a cache) or decode less (shorter clips)")


def status_rows(history: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """status's rows: ``system`` (CPU, RSS, host memory, loader wait), ``GPU`` (where there is one):
    each ``now (peak)``; and the starved hint."""
    points = samples(history)
    if not points:
        return []
    rows = []
    parts = []
    for key, label, kind in (("cpu_percent", "CPU", "pct"), ("rss_bytes", "RSS", "bytes"),
                             ("loader_wait_percent", "loader wait", "pct")):
        if (cp := current_and_peak(points, key)) is not None:
            parts.append(f"{label} {_fmt(kind, cp[0])} (peak {_fmt(kind, cp[1])})")
    mem = current_and_peak(points, "mem_used_bytes")
    total = _values(points, "mem_total_bytes")
    if mem is not None:
        parts.append(f"host memory {human_bytes(mem[0])}" + (f"/{human_bytes(total[-1])}" if total else "")
                     + f" (peak {human_bytes(mem[1])})")
    if parts:
        rows.append(("system", "  ".join(parts)))
    gpu = []
    if (cp := current_and_peak(points, "gpu_util_percent")) is not None:
        gpus = _values(points, "gpus")
        gpu.append(f"{int(gpus[-1]) if gpus else 1} GPU{'s' if gpus and gpus[-1] > 1 else ''}: "
                   f"utilisation {cp[0]:.0f}% (peak {cp[1]:.0f}%)")
    if (cp := current_and_peak(points, "gpu_mem_used_bytes")) is not None:
        total = _values(points, "gpu_mem_total_bytes")
        gpu.append(f"memory {human_bytes(cp[0])}" + (f"/{human_bytes(total[-1])}" if total else "")
                   + f" (peak {human_bytes(cp[1])})")
    if (cp := current_and_peak(points, "gpu_power_w")) is not None:
        gpu.append(f"power {cp[0]:.0f} W (peak {cp[1]:.0f} W)")
    if gpu:
        rows.append(("GPU", "  ".join(gpu)))
    if (hint := starved(points)) is not None:
        rows.append(("hint", hint))
    return rows


def table(history: Sequence[dict[str, Any]]) -> str | None:
    """``gpujob metrics --system``: one row per sample (seconds since the first, training step, then
    each measured column); None without samples."""
    points = samples(history)
    if not points:
        return None
    t0 = next((p["t"] for p in points if isinstance(p.get("t"), (int, float))), None)
    columns = [c for c in COLUMNS if any(c[0] in p for p in points)]
    head = ["time", "step", *(label for _, label, _ in columns)]
    rows = []
    for p in points:
        t = p.get("t")
        rows.append([f"{t - t0:.0f}s" if t0 is not None and isinstance(t, (int, float)) else "-",
                     str(p.get("train_step", "-")), *(_fmt(kind, p.get(key)) for key, _, kind in columns)])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(head)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(head, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip() for r in rows]
    return "\n".join(lines)
