"""The training curves for the model card: the runner keeps the points it reported (:class:`Recorder`, a
progress writer that remembers ``progress`` and ``eval`` events) and :func:`draw` plots loss and WER
against step as ``curves.png`` with matplotlib, where installed (the ``plot`` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Recorder:
    """Wraps a progress writer: every call goes through; progress and eval points are also kept."""

    def __init__(self, writer) -> None:
        self._writer = writer
        self.history: list[dict[str, Any]] = []

    def progress(self, **fields):
        self.history.append({"kind": "progress", **fields})
        return self._writer.progress(**fields)

    def eval(self, **fields):
        self.history.append({"kind": "eval", **fields})
        return self._writer.eval(**fields)

    def __getattr__(self, name: str):
        return getattr(self._writer, name)


def draw(history: list[dict[str, Any]], path: Path) -> str | None:
    """``path``'s name where the curves were drawn; None without matplotlib or without points."""
    loss = [(h["step"], h["loss"]) for h in history if h["kind"] == "progress" and h.get("loss") is not None]
    wer = [(h["step"], h["wer"] * 100) for h in history if h["kind"] == "eval" and h.get("wer") is not None]
    if not loss and not wer:
        return None
    try:
        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure
    except ImportError:
        return None
    fig = Figure(figsize=(9, 3.2))
    panels = [(label, points) for label, points in (("training loss", loss), ("eval WER (%)", wer)) if points]
    for i, (label, points) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o" if "WER" in label else None)
        ax.set_xlabel("step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=80)
    return path.name
