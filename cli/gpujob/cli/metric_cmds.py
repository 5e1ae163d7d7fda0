"""metrics: a job's metric history (every progress and eval point the registry keeps)."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Annotated

import typer

from gpujob import history, sysview
from gpujob.cli.common import OptionalJobRef, find_job, friendly, open_registry
from gpujob.errors import UserError


def register(app: typer.Typer) -> None:
    app.command("metrics")(friendly(metrics))


def metrics(
    ref: OptionalJobRef = None,
    as_json: Annotated[bool, typer.Option("--json", help="Every point as a JSON object (one list).")] = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="CSV: event, step, t, then one column per metric.")] = False,
    system: Annotated[bool, typer.Option("--system", help="The system samples (CPU, memory, GPU utilisation and "
                                                          "memory, loader wait) instead of the training metrics.")] = False,
) -> None:
    """A job's metric history: loss, learning rate, samples/s and WER/CER (per eval source) by step; --system:
    CPU, memory, GPU and data-loader samples over time."""
    from gpujob import service

    if as_json and as_csv:
        raise UserError("--json and --csv are two formats; give one of them")
    registry = open_registry(create=False)
    job = service.refresh(registry, find_job(registry, ref))
    points = registry.history(job.id)
    if system:
        points = sysview.samples(points)
        if not as_json and not as_csv:
            text = sysview.table(points)
            typer.echo(text if text is not None else f"job {job.id} ({job.name}) has no system samples: its runner "
                       "reports them every few seconds while it runs (gpujob's runner only)")
            return
    elif not as_json:
        points = [p for p in points if p["event"] != "system"]
    if as_json:
        typer.echo(json.dumps(points, indent=1))
        return
    rows = list(history.rows(points))
    if as_csv:
        buf = io.StringIO()
        columns = list(rows[0]) if rows else ["event", "step", "t"]
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow([csv_cell(c) for c in columns])
        # a float is written as repr writes it: read back, it is the same number
        writer.writerows([csv_cell(row.get(c)) for c in columns] for row in rows)
        typer.echo(buf.getvalue(), nl=False)
        return
    if not rows:
        typer.echo(f"job {job.id} ({job.name}) has no metric history yet: it has reported no progress or eval "
                   "event with a step")
        return
    typer.echo(_table(rows))
    typer.echo(f"next: gpujob plot {job.id} -o curves.png   |   gpujob metrics {job.id} --csv > {job.name}.csv")


# What a spreadsheet reads as the start of a formula (OWASP, "CSV injection"): a text cell starting
# with one of these gets a leading ' (shown as text, not run); numbers are written as numbers.
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def csv_cell(value):
    """``value`` for a CSV cell: a string that starts like a formula behind a ``'``; None as empty."""
    if value is None:
        return ""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.4g}" if abs(value) >= 1e-3 or value == 0 else f"{value:.2e}"
    return str(value)


def _table(rows: list[dict]) -> str:
    columns = [c for c in rows[0] if c != "t" and any(r.get(c) is not None for r in rows)]
    cells = [[_cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip()]
    lines += ["  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in cells]
    return "\n".join(lines)
