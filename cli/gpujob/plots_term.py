"""Jobs' curves drawn in the terminal with plotext (imported only here): `gpujob plot` without -o.

The same lines as the picture (:func:`gpujob.plots.panels`), of the loss and WER panels (or the
first two that have data when a job has neither), one panel under the other, the width of the
terminal. Each run keeps one colour; a series other than the run's main one (eval loss, a
per-source WER) is drawn with dots.
"""

from __future__ import annotations

from typing import Sequence

from gpujob.plots import Run, missing, panels

COLOURS = ("blue", "orange", "green", "red", "magenta", "cyan", "gray", "yellow")
TERMINAL_PANELS = ("loss", "wer")


def render(runs: Sequence[Run], *, title: str, size: tuple[int, int] | None = None, colour: bool = True) -> str:
    """The plot as text: ``title``, then each panel. ``size``: (columns, lines) of the terminal
    (default 100×40); ``colour=False``: plain text, no escape sequences."""
    try:
        import plotext as plt
    except ImportError as exc:
        raise missing("plotext", exc) from None

    drawn = panels(runs, only=TERMINAL_PANELS) or panels(runs)[:2]
    if not drawn:
        raise ValueError("no run has a metric history to draw")
    columns, lines = size or (100, 40)
    height = max(12, (lines - 2) // len(drawn) - 1)
    out = [title]
    for panel in drawn:
        plt.clear_figure()
        for line in panel.lines:
            plt.plot(list(line.steps), list(line.values), label=line.label,
                     color=COLOURS[line.run % len(COLOURS)], marker="hd" if line.style == "-" else "dot")
        plt.title(panel.title)
        plt.xlabel(panel.xlabel)
        plt.ylabel(panel.ylabel)
        plt.plotsize(max(40, columns - 1), height)
        if not colour:
            plt.theme("clear")
        text = plt.build()
        out.append(text if colour else plt.uncolorize(text))
    plt.clear_figure()
    return "\n".join(out)
