"""A transfer's progress for people: a rich bar (bytes, rate, time left) when stderr is a terminal,
else a plain line every few seconds and one at the end (logs, CI)."""

from __future__ import annotations

import math
import sys
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from gpujob.fleet.access import notice

PLAIN_EVERY_S = 5.0


def fmt_bytes(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"


@contextmanager
def transfer_progress(label: str) -> Iterator[Callable[[int, int], None]]:
    """A callback ``(bytes done, bytes in all)`` that shows ``label``'s progress on stderr."""
    if sys.stderr.isatty():
        with _rich(label) as update:
            yield update
        return
    started, shown = time.monotonic(), [-math.inf, -1]  # the first call shows a line, however long the machine has been up

    def update(done: int, total: int) -> None:
        now = time.monotonic()
        if done == shown[1] or (now - shown[0] < PLAIN_EVERY_S and done < total):
            return
        shown[0], shown[1] = now, done
        rate = done / max(now - started, 1e-6)
        pct = f"{100 * done / total:.0f}% " if total else ""
        notice(f"{label}: {pct}({fmt_bytes(done)} of {fmt_bytes(total)}, {fmt_bytes(rate)}/s)")

    yield update


@contextmanager
def _rich(label: str) -> Iterator[Callable[[int, int], None]]:
    from rich.console import Console
    from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                               TransferSpeedColumn)

    with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), TransferSpeedColumn(),
                  TimeRemainingColumn(), console=Console(stderr=True), transient=False) as bar:
        task = bar.add_task(label, total=None)

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        yield update
