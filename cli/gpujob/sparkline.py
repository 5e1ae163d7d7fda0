"""Sparklines: a series as one line of block characters (``▇▅▃▂▁``), for `gpujob status`.

Pure text, stdlib only, so `status` never pays for a plotting library. A series longer than the
line is thinned to evenly spaced points (the first and last always among them); each point's
block is its place between the lowest and highest point shown, so a higher value never gets a
lower block.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

from gpujob import history as hist

BLOCKS = "▁▂▃▄▅▆▇█"
WIDTH = 30


def thin(values: Sequence[float], width: int = WIDTH) -> list[float]:
    """At most ``width`` of ``values``, evenly spaced, first and last kept."""
    n = len(values)
    if n <= width:
        return list(values)
    if width <= 1:
        return [values[-1]][:width]
    return [values[round(i * (n - 1) / (width - 1))] for i in range(width)]


def sparkline(values: Sequence[float], width: int = WIDTH) -> str:
    """One block per point of ``values`` (non-finite ones left out), thinned to ``width`` characters."""
    shown = thin([float(v) for v in values if math.isfinite(v)], width)
    if not shown:
        return ""
    lo, hi = min(shown), max(shown)
    if hi - lo <= 0 or not math.isfinite(hi - lo):
        return BLOCKS[len(BLOCKS) // 2] * len(shown)
    top = len(BLOCKS) - 1
    return "".join(BLOCKS[min(top, int((v - lo) / (hi - lo) * top + 0.5))] for v in shown)


def _pct(value: float) -> str:
    return f"{value * 100:.2f}%"


def _num(value: float) -> str:
    return f"{value:.4g}"


# status's rows: (row name, kind of event, field, how a value is written, what one point is)
ROWS = (("WER curve", "eval", "wer", _pct, "evals"), ("loss curve", "progress", "loss", _num, "points"))


def status_rows(history: Sequence[dict[str, Any]]) -> list[tuple[str, str]]:
    """status's sparkline rows: WER (the overall score of each eval) and training loss, each
    ``▇▅▃▂▁  41.20% → 3.10%  (12 evals, steps 40–480)``; a series of fewer than 2 points has none."""
    rows = []
    for name, kind, field, fmt, unit in ROWS:
        steps, values = hist.series(history, kind, field)
        if len(values) < 2:
            continue
        rows.append((name, f"{sparkline(values)}  {fmt(values[0])} → {fmt(values[-1])}  "
                           f"({len(values)} {unit}, steps {steps[0]}–{steps[-1]})"))
    return rows
