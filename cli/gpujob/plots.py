"""Jobs' curves as a picture: loss, learning rate, WER/CER and samples/s against step.

:func:`panels` turns runs (a label and a metric history, :mod:`gpujob.history`) into what to draw:
one panel per quantity that has data, each with its lines in the units shown (WER and CER in %:
100 × the events' fractions; every other value as recorded). Stdlib only, so the terminal plot
(:mod:`gpujob.plots_term`) draws the same lines. :func:`figure` draws them with matplotlib (imported
only there, drawn with Agg: no window, no display needed), the runs overlaid, each run one colour in
every panel; :func:`save` writes it as PNG, SVG or PDF.

What a panel holds:

============ ============== ===============================================================
panel        y axis         lines (per run)
============ ============== ===============================================================
loss         loss           training loss (progress), eval loss (eval, dashed)
lr           learning rate  learning rate (progress)
wer          WER (%)        overall WER (eval, solid); per eval source ``wer/<name>`` (dashed)
cer          CER (%)        the same for CER
speed        samples/s      samples/s (progress)
util         %              GPU utilisation (system, solid; absent without a GPU), loader wait (dashed)
memory       GB             the job's RSS (solid), GPU memory used (dashed; absent without a GPU)
cpu          % of a core    the job's processes' CPU (system)
============ ============== ===============================================================

The system panels (runner/sysmetrics.py's samples) are drawn against minutes since the first sample.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from gpujob import history as hist
from gpujob.errors import UserError

SUFFIXES = (".png", ".svg", ".pdf")
X_LABEL = "step"
TIME_LABEL = "minutes"
# Line styles of the per-source lines, in the order the sources are first seen.
SOURCE_STYLES = ("--", ":", "-.")


@dataclass(frozen=True)
class Run:
    """One job's curves to draw: its legend label and its history points."""

    label: str
    history: Sequence[dict[str, Any]]


@dataclass(frozen=True)
class Line:
    run: int  # which run (its colour)
    label: str  # the legend's words: the run's label, and which series when it is not the main one
    steps: tuple[int, ...]
    values: tuple[float, ...]  # in the panel's unit
    style: str = "-"
    marker: str | None = None  # eval lines mark their (few) points


@dataclass(frozen=True)
class Panel:
    key: str
    title: str
    ylabel: str  # with the unit
    lines: tuple[Line, ...]
    xlabel: str = X_LABEL


# (panel key, title, y label, [(kind, field, series name or None for the main one, scale, style)])
_MAIN = None
_LAYOUT = (
    ("loss", "loss", hist.UNITS["loss"], [("progress", "loss", "train loss", 1.0, "-"),
                                          ("eval", "eval_loss", "eval loss", 1.0, "--")]),
    ("lr", "learning rate", hist.UNITS["learning_rate"], [("progress", "learning_rate", _MAIN, 1.0, "-")]),
    ("wer", "word error rate", hist.UNITS["wer"], [("eval", "wer", _MAIN, 100.0, "-")]),
    ("cer", "character error rate", hist.UNITS["cer"], [("eval", "cer", _MAIN, 100.0, "-")]),
    ("speed", "throughput", hist.UNITS["samples_per_s"], [("progress", "samples_per_s", _MAIN, 1.0, "-")]),
    ("util", "GPU utilisation, loader wait", "%", [("system", "gpu_util_percent", "GPU", 1.0, "-"),
                                                   ("system", "loader_wait_percent", "loader wait", 1.0, "--")]),
    ("memory", "memory", "GB", [("system", "rss_bytes", "RSS", 1e-9, "-"),
                                ("system", "gpu_mem_used_bytes", "GPU memory", 1e-9, "--")]),
    ("cpu", "CPU", hist.UNITS["cpu_percent"], [("system", "cpu_percent", _MAIN, 1.0, "-")]),
)

# A panel's title when none of its lines is a GPU's (a job on the CPU); job.js names them the same.
WITHOUT_GPU = {"util": "loader wait"}


def _by_time(history: Sequence[dict[str, Any]], field: str) -> tuple[list[float], list[float]]:
    """(minutes since the run's first system sample, values) of one system field."""
    t0 = next((p["t"] for p in history if p.get("event") == "system" and isinstance(p.get("t"), (int, float))), None)
    xs, values = [], []
    if t0 is None:
        return xs, values
    for p in history:
        v, t = p.get(field), p.get("t")
        if p.get("event") == "system" and isinstance(t, (int, float)) and isinstance(v, (int, float)) \
                and not isinstance(v, bool) and math.isfinite(v):
            xs.append(round((t - t0) / 60, 4))
            values.append(float(v))
    return xs, values


def _series(key: str, base: list, history: Sequence[dict[str, Any]]) -> list[tuple]:
    """The panel's series for one run: its fixed ones, and for WER/CER one per eval source."""
    if key not in ("wer", "cer"):
        return base
    extra = [("eval", f"{key}/{name}", name, 100.0, SOURCE_STYLES[i % len(SOURCE_STYLES)])
             for i, name in enumerate(hist.sources(history))]
    return base + extra


def panels(runs: Sequence[Run], only: Sequence[str] | None = None) -> list[Panel]:
    """The panels that have data (``only``: these panel keys), in the table's order."""
    out = []
    for key, title, ylabel, base in _LAYOUT:
        if only is not None and key not in only:
            continue
        lines = []
        for i, run in enumerate(runs):
            for kind, field, name, scale, style in _series(key, base, run.history):
                steps, values = (_by_time(run.history, field) if kind == "system"
                                 else hist.series(run.history, kind, field))
                if not steps:
                    continue
                marker = "o" if kind == "eval" or len(steps) == 1 else None
                lines.append(Line(run=i, label=run.label if name is None else f"{run.label} · {name}",
                                  steps=tuple(steps), values=tuple(v * scale for v in values),
                                  style=style, marker=marker))
        if lines:
            if key in WITHOUT_GPU and not any(line.label.endswith(("GPU", "GPU memory")) for line in lines):
                title = WITHOUT_GPU[key]  # a CPU job's panel is not named after a GPU it never had
            out.append(Panel(key=key, title=title, ylabel=ylabel, lines=tuple(lines),
                             xlabel=TIME_LABEL if base[0][0] == "system" else X_LABEL))
    return out


def missing(library: str, exc: ImportError) -> UserError:
    """The error for a plotting library that is not installed (both come with ``gpujob[plot]``)."""
    return UserError(f"gpujob plot needs {library}, which is not installed here ({exc})",
                     hint="pip install 'gpujob[plot]' (matplotlib for -o, plotext for the terminal)")


def colour(run: int) -> str:
    """A run's colour in every panel: matplotlib's default cycle (10 colours, then again)."""
    return f"C{run % 10}"


# Labels, titles and legends are the job's words (its name, a sweep's values, eval source names): drawn
# as they are, never read as mathtext (a name like wer/$\undefinedmacro{$ stopped the drawing) or TeX.
PLAIN_TEXT = {"text.parse_math": False, "text.usetex": False}


def plain_text():
    """A context in which every text matplotlib creates is drawn as written (:data:`PLAIN_TEXT`)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise missing("matplotlib", exc) from None
    return matplotlib.rc_context(PLAIN_TEXT)


def figure(runs: Sequence[Run], title: str):
    """The matplotlib Figure of ``runs`` (a :class:`matplotlib.figure.Figure` on an Agg canvas), its
    text plain (:data:`PLAIN_TEXT`). Raises ValueError when no run has anything to draw: never an
    empty picture."""
    with plain_text():
        return _figure(runs, title)


def _figure(runs: Sequence[Run], title: str):
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        from matplotlib.lines import Line2D
        from matplotlib.ticker import MaxNLocator
    except ImportError as exc:
        raise missing("matplotlib", exc) from None

    drawn = panels(runs)
    if not drawn:
        raise ValueError("no run has a metric history to draw")
    cols = 1 if len(drawn) == 1 else 2
    rows = math.ceil(len(drawn) / cols)
    fig = Figure(figsize=(6.4 * cols, 3.4 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    fig.suptitle(title)
    for i, panel in enumerate(drawn):
        ax = fig.add_subplot(rows, cols, i + 1)
        for line in panel.lines:
            ax.plot(line.steps, line.values, linestyle=line.style, marker=line.marker, markersize=3,
                    linewidth=1.4, color=colour(line.run), label=line.label, gid=f"{panel.key}/{line.label}")
        if panel.key == "lr" and _spans_decades(panel):
            ax.set_yscale("log")  # runs whose learning rates differ 100-fold: both readable
        ax.set_title(panel.title)
        ax.set_xlabel(panel.xlabel)
        if panel.xlabel == X_LABEL:
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # steps are whole
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        kinds = _kinds(panel)
        if len(kinds) > 1:  # which line is which series (train/eval loss, each eval source), in grey
            ax.legend(handles=[Line2D([], [], color="0.35", linestyle=style, marker=marker, markersize=3)
                               for style, marker in kinds.values()], labels=list(kinds), fontsize="small")
    # which colour is which run: once, below the panels
    ax = fig.axes[0]
    fig.legend(handles=[Line2D([], [], color=colour(i), linewidth=2) for i in range(len(runs))],
               labels=[_short(run.label) for run in runs], loc="outside lower center",
               ncols=1 if len(runs) < 3 else 2, fontsize="small", frameon=False)
    return fig


def _kinds(panel: Panel) -> dict[str, tuple[str, str | None]]:
    """{series name: (line style, marker)} of a panel's lines ("train loss", "eval loss", "fleurs";
    "overall" for the main line when there are others)."""
    out: dict[str, tuple[str, str | None]] = {}
    for line in panel.lines:
        name = line.label.rsplit(" · ", 1)[1] if " · " in line.label else "overall"
        out.setdefault(name, (line.style, line.marker))
    return out


def _short(label: str, limit: int = 90) -> str:
    return label if len(label) <= limit else label[: limit - 1] + "…"


def _spans_decades(panel: Panel) -> bool:
    values = [v for line in panel.lines for v in line.values]
    return min(values) > 0 and max(values) >= 100 * min(values)


def save(fig, path: Path) -> None:
    """Write ``fig`` to ``path``; its suffix (one of :data:`SUFFIXES`) chooses the format."""
    fmt = path.suffix.lower().lstrip(".")
    with plain_text():  # the texts made while drawing (ticks) too
        fig.savefig(path, format=fmt, dpi=120)
