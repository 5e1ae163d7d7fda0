"""The curves as a PNG for the pages (the picture that needs no JavaScript): :func:`gpujob.plots.figure`,
drawn once per change of the histories (a small cache), one at a time (matplotlib in threads)."""

from __future__ import annotations

import hashlib
import io
import json
import threading
from collections import OrderedDict
from typing import Any, Sequence

from gpujob.plots import Run, figure, plain_text

CACHE_SIZE = 32
DPI = 90
_lock = threading.Lock()
_cache: "OrderedDict[str, bytes]" = OrderedDict()

Runs = Sequence[tuple[str, Sequence[dict[str, Any]]]]


def _key(runs: Runs, title: str) -> str:
    digest = hashlib.sha256(title.encode())
    for label, history in runs:
        digest.update(label.encode())
        digest.update(json.dumps([len(history), history[-1] if history else None], sort_keys=True).encode())
    return digest.hexdigest()


def png(runs: Runs, title: str) -> bytes:
    """The picture of ``runs`` ((label, history) pairs); a picture saying so when none has a point yet."""
    key = _key(runs, title)
    with _lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
        drawn = [Run(label, history) for label, history in runs if history]
        if drawn:
            fig = figure(drawn, title=title)
        else:
            fig = _empty(title)
        buf = io.BytesIO()
        with plain_text():
            fig.savefig(buf, format="png", dpi=DPI)
        _cache[key] = buf.getvalue()
        while len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
        return _cache[key]


def _empty(title: str):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6.4, 1.6))
    FigureCanvasAgg(fig)
    fig.text(0.5, 0.6, title, ha="center", parse_math=False)
    fig.text(0.5, 0.3, "no metric history yet: no progress or eval event with a step", ha="center", color="0.4")
    return fig
