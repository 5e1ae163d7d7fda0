"""submit, list, status, logs, cancel, pull: commands that act on jobs."""

from __future__ import annotations

import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Optional

import typer

from gpujob.cli.common import (FIRST_JOB_HINT, BackendOpt, complete_sweep, JobRef, JsonOpt, OptionalJobRef, SetOpt, err, find_job, friendly, load, open_registry,
                               reap_due_hosts)
from gpujob.errors import JobStateError, UserError
from gpujob.words import fmt_bytes


def register(app: typer.Typer) -> None:
    app.command("submit")(friendly(submit))
    app.command("list")(friendly(list_jobs))
    app.command("status")(friendly(status))
    app.command("logs")(friendly(logs))
    app.command("cancel")(friendly(cancel))
    app.command("pull")(friendly(pull))


def submit(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Job spec to run.")],
    backend: BackendOpt = None,
    overrides: SetOpt = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Follow the job's logs until it ends.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help=(
        "Do not ask before a job that can cost more than $GPUJOB_CONFIRM_ABOVE (USD).")) ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the job as JSON (id, name, backend, status...).")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="Print only the job id.")] = False,
) -> None:
    """Validate a spec and start the job. Returns at once unless --follow."""
    from gpujob import service
    from gpujob.cli import display

    if follow and (as_json or quiet):
        raise UserError("--follow prints the job's log; it does not go with --json or -q",
                        hint=f"follow it afterwards: gpujob logs -f $(gpujob submit {file} -q)")
    loaded = load(file, overrides, backend)
    registry = open_registry()
    reap_due_hosts(registry)
    est = service.estimate(loaded, registry)
    if est.problem:
        raise UserError(f"{file}: {est.problem}", hint="or remove limits.max_cost")
    confirm_cost(est.to_confirm, yes)
    job = service.submit(loaded, registry, price=est.price)
    if as_json or quiet:  # for scripts: the id (or the job) on stdout, the rest on stderr
        typer.echo(job.id if quiet else json.dumps(display.job_summary(job), indent=2))
    else:
        typer.echo(f"submitted job {job.id} ({job.name}) on {job.backend}: {display.status_words(job)}")
    if est.price is not None or est.warnings:  # an unknown price is said by status and list
        for line in display.estimate_lines(est):
            err(line)
    from gpujob.backends.handle import Handle

    withheld = Handle.of(job).withheld  # local: variables named like secrets that the job does not get
    if withheld:
        from gpujob.backends.local import withheld_words

        err(f"withheld: {withheld_words(withheld)}")
    if job.status == "failed":
        typer.echo(f"reason: {job.reason}", err=as_json or quiet)
        raise typer.Exit(1)
    if not follow:
        if not (as_json or quiet):
            typer.echo(f"next: gpujob logs -f {job.id}   |   gpujob status {job.id}   |   gpujob cancel {job.id}")
        return
    _follow(registry, job.id, tail=None, raw=False)


CONFIRM_ENV = "GPUJOB_CONFIRM_ABOVE"


def confirm_cost(amount: float | None, yes: bool, what: str = "this job") -> None:
    """Ask before a job (``what``: or a sweep's jobs) that can cost more than $GPUJOB_CONFIRM_ABOVE; refuse
    without a terminal to ask on."""
    raw = os.environ.get(CONFIRM_ENV, "").strip()
    if yes or not raw or amount is None:
        return
    try:
        threshold = float(raw)
    except ValueError:
        raise UserError(f"{CONFIRM_ENV}={raw[:40]!r} is not an amount in USD", hint=f"e.g. export {CONFIRM_ENV}=20") from None
    if amount <= threshold:
        return
    what += " has no upper bound" if math.isinf(amount) else f" can cost up to ${amount:,.2f}"
    if not sys.stdin.isatty():
        raise UserError(f"{what}, above {CONFIRM_ENV}=${threshold:g}, and there is no terminal to ask on",
                        hint="pass --yes to submit it anyway, or lower limits.max_runtime / limits.max_cost")
    if not typer.confirm(f"{what} (above {CONFIRM_ENV}=${threshold:g}); submit it?", default=False):
        err("not submitted")
        raise typer.Exit(1)


def list_jobs(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Show every job, not only the last 20.")] = False,
    active: Annotated[bool, typer.Option("--active", help="Only queued or running jobs.")] = False,
    sweep: Annotated[Optional[str], typer.Option("--sweep", metavar="SWEEP", help="Only the jobs of this sweep (all of them).",
                                                 autocompletion=complete_sweep)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Jobs, newest first: id, name, backend, status, progress, last WER, runtime, cost."""
    from gpujob import service
    from gpujob.cli import display

    registry = open_registry(create=False)
    reap_due_hosts(registry)
    if sweep and not registry.list(sweep=sweep, limit=1):
        raise UserError(f"there is no sweep {sweep!r}", hint="gpujob sweep printed its id (sweep <id>: ...)")
    limit = None if all_ or sweep else 20
    jobs = service.refresh_all(registry, registry.list(limit=limit, active_only=active, sweep=sweep))
    if as_json:
        typer.echo(json.dumps([display.job_summary(j) for j in jobs], indent=2))
        return
    if not jobs:
        if active and registry.list(limit=1):
            typer.echo("no active jobs; `gpujob list` shows the ended ones")
        else:
            typer.echo(f"no jobs yet; try: {FIRST_JOB_HINT}")
        return
    typer.echo(display.job_table(jobs))


def status(
    ref: OptionalJobRef = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """One job in detail: step/total, it/s, ETA, loss, last eval, outputs, and why it failed."""
    from gpujob import service
    from gpujob.cli import display

    registry = open_registry(create=False)
    reap_due_hosts(registry)
    if ref is None and not registry.list(limit=1):  # nothing to show is an answer, as for `list`
        typer.echo("null" if as_json else f"no jobs yet; try: {FIRST_JOB_HINT}")
        return
    job = service.refresh(registry, find_job(registry, ref))
    if as_json:
        typer.echo(json.dumps(display.job_summary(job), indent=2))
        return
    typer.echo(display.job_details(job, registry.history(job.id)))
    if job.output_dir and job.kind != "command":
        typer.echo(f"next: gpujob pull {job.id} --to {default_pull_dir(job)}"
                   + ("   (its newest complete checkpoint so far)" if job.active else ""))


def logs(
    ref: OptionalJobRef = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep printing until the job ends.")] = False,
    tail: Annotated[Optional[int], typer.Option("--tail", "-n", min=0, metavar="N", help="Only the last N lines.")] = None,
    raw: Annotated[bool, typer.Option("--raw", help="Exactly what the job wrote, event lines included.")] = False,
    all_workers: Annotated[bool, typer.Option(
        "--all-workers", "-w",
        help="Multi-node jobs: every worker's lines, prefixed by its index (default: worker 0).")] = False,
) -> None:
    """A job's output. On a terminal, -f adds a live bar: step/total, it/s, ETA, loss, WER."""
    registry = open_registry(create=False)
    reap_due_hosts(registry)
    job = find_job(registry, ref)
    if follow:
        _follow(registry, job.id, tail=tail, raw=raw, all_workers=all_workers)
        return
    from gpujob import service
    from gpujob.cli import display

    printer = display.LogPrinter(raw=raw, live=False)
    for line in service.logs(registry, job, follow=False, tail=tail, all_workers=all_workers):
        printer.line(line)


def _follow(registry, job_id: str, *, tail: int | None, raw: bool, all_workers: bool = False) -> None:
    """Print a job's log as it grows, until the job ends; exit 1 unless it succeeded."""
    from gpujob import service
    from gpujob.cli import display

    job = service.refresh(registry, registry.get(job_id))
    printer = display.LogPrinter(raw=raw, live=None, state=None, job=job, quiet=True)
    try:
        with printer:
            for line in service.logs(registry, job, follow=True, tail=tail, all_workers=all_workers):
                printer.line(line)
    except KeyboardInterrupt:
        typer.echo(f"\ndetached; the job keeps running: gpujob logs -f {job_id}  |  gpujob cancel {job_id}", err=True)
        raise typer.Exit(130) from None
    job = _settled(registry, job_id)
    typer.echo(display.final_line(job), err=True)
    if job.status != "succeeded":
        raise typer.Exit(1)


def _settled(registry, job_id: str, timeout: float = 5.0):
    """The job's record once the backend has written its end (logs can end a moment earlier)."""
    from gpujob import service

    deadline = time.monotonic() + timeout
    job = service.refresh(registry, registry.get(job_id))
    while job.active and time.monotonic() < deadline:
        time.sleep(0.1)
        job = service.refresh(registry, registry.get(job_id))
    return job


def cancel(
    ref: JobRef,
    grace: Annotated[float, typer.Option("--grace", min=0, metavar="SECONDS", help="Seconds between SIGTERM and SIGKILL.")] = 10.0,
    as_json: JsonOpt = False,
) -> None:
    """Stop a job: SIGTERM (so it can save a checkpoint), then SIGKILL after --grace seconds.
    A job that has already ended is left as it is (exit 0, saying so)."""
    from gpujob import service

    registry = open_registry(create=False)
    reap_due_hosts(registry)
    job = registry.resolve(ref)
    registry.check_writable(f"cancel job {job.id}")
    job = service.refresh(registry, job)
    was_over = not job.active
    if not was_over:
        try:
            job = service.cancel(registry, job, grace_s=grace)
        except JobStateError:  # it ended between the look and the cancel
            job, was_over = registry.get(job.id), True
    if as_json:
        typer.echo(json.dumps({"id": job.id, "name": job.name, "status": job.status, "already_ended": was_over}))
        return
    if was_over:
        typer.echo(f"job {job.id} ({job.name}) already {job.status}; nothing to cancel")
        typer.echo(f"next: gpujob status {job.id}")
        return
    typer.echo(f"job {job.id} ({job.name}): {job.status}")
    typer.echo(f"next: gpujob logs {job.id} --tail 20")


PULL_ONLY = ("all", "model", "checkpoints")  # gpujob.backends.outputs.ONLY, without importing the backends


def default_pull_dir(job) -> str:
    return f"pulled/{job.name or 'job'}-{job.id}"


def pull(
    ref: JobRef,
    to: Annotated[Optional[str], typer.Option("--to", metavar="DIR", help=(
        "Where to put the outputs. Default: pulled/NAME-ID.")) ] = None,
    only: Annotated[str, typer.Option("--only", metavar="WHAT", help=(
        "all (default): metrics, predictions, model and checkpoints; model: the final model (of a running job, "
        "its newest complete checkpoint); checkpoints: every complete checkpoint.")) ] = "all",
) -> None:
    """Bring a job's outputs to this machine from wherever they are (a bucket, the job's folder). Resumable:
    files already here at the right size are not fetched again."""
    from gpujob import service
    from gpujob.cli import display

    if only not in PULL_ONLY:
        raise UserError(f"--only {only!r}: choose one of {', '.join(PULL_ONLY)}")
    registry = open_registry()
    job = service.refresh(registry, find_job(registry, ref))
    dest = Path(to or default_pull_dir(job)).expanduser()
    with display.ByteBar(f"pulling {job.id}") as bar:
        pulled = service.pull(registry, job, dest, only, bar.update)
    for note in pulled.notes:
        err(f"note: {note}")
    already = pulled.files - pulled.fetched
    typer.echo(f"pulled {', '.join(pulled.parts)} of job {job.id} ({job.name}) from {pulled.source} to {dest}: "
               f"{pulled.fetched} file{'s' if pulled.fetched != 1 else ''} ({fmt_bytes(pulled.bytes_fetched)}) fetched"
               + (f", {already} already here" if already else ""))
    model = dest / "model" if "model" in pulled.parts else None
    if model is not None:
        typer.echo(f"next: evaluate it with model.checkpoint: {model} in an evaluate spec (--set model.checkpoint={model})")
