"""plot: jobs' curves (loss, learning rate, WER/CER, samples/s by step) as a picture or in the terminal."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path
from typing import Annotated, List, Optional

import typer

from gpujob.compare import comparable_spec, show, spec_differences
from gpujob.cli.common import err, find_job, friendly, open_registry
from gpujob.errors import UserError
from gpujob.plots import SUFFIXES, Run, figure, save


def register(app: typer.Typer) -> None:
    app.command("plot")(friendly(plot))


def plot(
    refs: Annotated[Optional[List[str]], typer.Argument(
        metavar="JOB...", help="Job ids, unique id prefixes or job names (default: the newest job).")] = None,
    sweep: Annotated[Optional[str], typer.Option("--sweep", metavar="ID",
                                                 help="Every job of this sweep, labelled by its swept values.")] = None,
    output: Annotated[Optional[Path], typer.Option(
        "--output", "-o", metavar="FILE", help="Write the picture here: .png, .svg or .pdf.")] = None,
) -> None:
    """Loss, learning rate, WER/CER (%) and samples/s against step; several jobs overlaid.

    Without -o, on a terminal: loss and WER drawn in the terminal.
    """
    from gpujob import service

    if output is not None and output.suffix.lower() not in SUFFIXES:
        raise UserError(f"-o {output}: unknown picture format {output.suffix or '(no suffix)'!r}",
                        hint=f"name the file with one of {', '.join(SUFFIXES)}, e.g. -o curves.png")
    if output is None and not sys.stdout.isatty():
        raise UserError("not a terminal: there is nowhere to draw the plot",
                        hint="write it to a file: gpujob plot JOB -o curves.png (or .svg, .pdf); "
                             "gpujob metrics JOB --csv gives the numbers")
    registry = open_registry(create=False)
    jobs = _jobs(registry, refs or [], sweep)
    jobs = [service.refresh(registry, job) for job in jobs]
    labels = swept_labels(jobs) if sweep else {job.id: f"{job.id} {job.name}" for job in jobs}
    runs, empty = [], []
    for job in jobs:
        points = registry.history(job.id)
        if points:
            runs.append(Run(labels[job.id], points))
        else:
            empty.append(job)
    for job in empty:
        err(f"note: job {job.id} ({job.name}) has no metric history: it has reported no progress or eval "
            "event with a step" + ("; it is left out" if runs else ""))
    if not runs:
        raise UserError("nothing to plot: " + ("that job has" if len(jobs) == 1 else "none of those jobs has")
                        + " reported a progress or eval event with a step",
                        hint="a job reports them with gpujob's progress protocol (see gpujob.progress); "
                             "gpujob logs JOB shows what it printed")
    title = f"sweep {sweep}" if sweep else ", ".join(r.label for r in runs)
    if output is None:
        from gpujob.plots_term import render

        typer.echo(render(runs, title=title, size=tuple(shutil.get_terminal_size((100, 40)))))
        return
    save(figure(runs, title=f"gpujob: {title}"), output)
    typer.echo(f"wrote {output} ({len(runs)} job{'s' * (len(runs) != 1)}: {title})")


def _jobs(registry, refs: list[str], sweep: str | None) -> list:
    if sweep and refs:
        raise UserError("give jobs or --sweep ID, not both")
    if sweep:
        jobs = registry.list(sweep=sweep)
        if not jobs:
            raise UserError(f"no sweep {sweep!r}: no job was submitted in it", hint="gpujob list shows the jobs")
        return sorted(jobs, key=lambda j: j.created_at)
    seen: dict[str, object] = {}
    for ref in refs or [None]:
        job = find_job(registry, ref)
        seen.setdefault(job.id, job)
    return list(seen.values())


def swept_labels(jobs: list) -> dict[str, str]:
    """``<id> learning_rate=1e-05 freeze=encoder``: each job of a sweep by the spec keys whose values
    differ between the jobs, as `compare` finds them (its name and output folder left out: each job of
    a sweep has its own); a list item is named with its list (``command.4=40``)."""
    differ = spec_differences([comparable_spec(job) for job in jobs])
    labels = {}
    for i, job in enumerate(jobs):
        words = " ".join(f"{_short_key(key)}={show(values[i])}" for key, values in differ.items())
        labels[job.id] = f"{job.id} {words or job.name}"
    return labels


def _short_key(key: str) -> str:
    parts = key.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() and len(parts) > 1 else parts[-1]