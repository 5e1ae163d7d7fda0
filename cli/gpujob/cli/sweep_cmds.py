"""sweep, compare: one job per combination of --grid values, and runs side by side."""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Annotated, List, Optional

import typer

from gpujob import compare as cmp, sweeps
from gpujob.backends import capabilities
from gpujob.cli import compare_view, completion, sweep_plan
from gpujob.cli.common import BackendOpt, SetOpt, err, friendly, load, open_registry, reap_due_hosts
from gpujob.cli.job_cmds import confirm_cost
from gpujob.errors import GpujobError, UserError

POLL_S = 1.0  # how often --max-parallel looks for a job of the sweep that ended


def register(app: typer.Typer) -> None:
    app.command("sweep")(friendly(sweep))
    app.command("compare")(friendly(compare))


GridOpt = Annotated[Optional[List[str]], typer.Option(
    "--grid", "-g", metavar="KEY.PATH=V1,V2",
    help="A spec key and the values to try, typed as --set types them (repeatable: one job per combination).")]


def sweep(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Job spec the sweep varies.")],
    grid: GridOpt = None,
    overrides: SetOpt = None,
    backend: BackendOpt = None,
    max_parallel: Annotated[Optional[int], typer.Option(
        "--max-parallel", "-p", min=1, metavar="N",
        help="At most N of the sweep's jobs at once: stays in the foreground and submits the next when one ends.")] = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", metavar="SWEEP", help="Submit the combinations of this sweep that were not submitted yet.",
        autocompletion=completion.sweep_ids)] = None,
    yes: Annotated[bool, typer.Option("--yes", "-y", help=(
        "Do not ask before a sweep that can cost more than $GPUJOB_CONFIRM_ABOVE (USD) in all.")) ] = False,
    as_json: Annotated[bool, typer.Option("--json", help=(
        "Print the sweep as JSON on stdout (its id, and each job's id, name and combination); the plan on stderr."))] = False,
) -> None:
    """One job per combination of the --grid values, all checked before any starts, under one sweep id."""
    say = err if as_json else typer.echo  # with --json, stdout is the JSON alone
    axes = sweeps.parse_grid(grid or [], overrides or [])
    base = load(file, overrides, backend)  # the spec as --set leaves it: its problems and warnings, once
    registry = open_registry()
    reap_due_hosts(registry)
    registry.check_writable("submit a sweep")
    done = {}
    if resume:
        done = {j.name: j.id for j in registry.list(sweep=resume)}
        if not done:
            raise UserError(f"there is no sweep {resume!r}", hint="gpujob list --all shows jobs; "
                            "gpujob list --sweep ID those of one sweep")
        sweep_id = resume
    else:
        sweep_id = sweeps.new_sweep_id()
        while registry.list(sweep=sweep_id, limit=1):
            sweep_id = sweeps.new_sweep_id()
    combos = sweeps.combinations(axes)
    members, invalid, warnings = sweep_plan.check_all(
        file, overrides or [], backend, combos, axes, name=base.spec.name, sweep_id=sweep_id,
        output_dir=base.spec.resolved_output_dir(), registry=registry)
    for line in dict.fromkeys(warnings):
        err(f"warning: {line}")
    if invalid:
        for line in sweep_plan.invalid_lines(invalid, len(combos)):
            err(line)
        raise typer.Exit(2)
    skipped = {m.combo.n: done[m.loaded.spec.name] for m in members if m.loaded.spec.name in done}
    for m in members:
        if m.combo.n in skipped:
            _same_as_submitted(m, registry.get(skipped[m.combo.n]))
    todo = [m for m in members if m.combo.n not in skipped]
    say(f"sweep {sweep_id}: {len(combos)} job{'s' if len(combos) != 1 else ''} of {file} on "
        f"{base.spec.runtime.backend}, each in {base.spec.resolved_output_dir()}/{sweep_id}-<#>")
    say(sweep_plan.plan_table(members, axes, skipped))
    total, lines = sweep_plan.total_cost(todo)
    for line in lines:
        err(line)
    confirm_cost(total, yes, what=f"this sweep's {len(todo)} jobs")
    if max_parallel and len(todo) > max_parallel:
        err(f"--max-parallel {max_parallel}: this command stays in the foreground and submits the next combination "
            "when one of the sweep's jobs ends; Ctrl-C stops submitting (running jobs keep running)")
    resume_cmd = sweep_plan.resume_command(file, grid or [], overrides or [], backend, max_parallel, sweep_id)
    submitted = _submit(registry, todo, sweep_id, max_parallel, resume_cmd, say)
    if as_json:
        typer.echo(json.dumps({"sweep_id": sweep_id, "jobs": [
            {"id": job.id, "name": job.name, "combination": m.combo.words, "status": job.status}
            for m, job in submitted], "already_submitted": sorted(skipped.values())}, indent=2))
        return
    typer.echo(f"next: gpujob list --sweep {sweep_id}   |   gpujob compare --sweep {sweep_id}")


def _same_as_submitted(member, job) -> None:
    """--resume: the combination's spec must be the one its job was submitted with (the same spec, --set
    and --grid as the sweep), else its number names another job."""
    diffs = cmp.spec_differences([cmp.flatten(job.spec_data), cmp.flatten(member.loaded.data)])
    if diffs:
        shown = "; ".join(f"{k}: {cmp.show(a)} then, {cmp.show(b)} now" for k, (a, b) in list(diffs.items())[:3])
        raise UserError(f"--resume: combination {member.combo.n} ({member.combo.words}) is not what job {job.id} "
                        f"({job.name}) of the sweep was submitted with: {shown}",
                        hint="resume with the same spec, --set and --grid options as the sweep")


def _submit(registry, todo, sweep_id: str, max_parallel: int | None, resume_cmd: str, say=typer.echo) -> list:
    """Submit each member in order; with ``max_parallel``, wait while that many of them are active.
    Returns (member, job) for each job submitted."""
    from gpujob import service
    from gpujob.cli import display

    pending, active, submitted = deque(todo), [], []
    try:
        while pending:
            while max_parallel and len(active) >= max_parallel:
                time.sleep(POLL_S)
                for job_id in list(active):
                    job = service.refresh(registry, registry.get(job_id))
                    if not job.active:
                        active.remove(job_id)
                        say(f"job {job.id} ({job.name}) {job.status}")
            member = pending[0]
            job = service.submit(member.loaded, registry, price=member.est.price, sweep_id=sweep_id)
            pending.popleft()
            submitted.append((member, job))
            say(f"submitted job {job.id} ({job.name}) [{member.combo.words}] on {job.backend}: "
                f"{display.status_words(job)}")
            if job.active:
                active.append(job.id)
            elif job.status == "failed":
                err(f"  reason: {job.reason}")
    except (KeyboardInterrupt, GpujobError) as exc:
        err("\ninterrupted" if isinstance(exc, KeyboardInterrupt) else f"error: {exc.message}")
        if pending:
            err(f"not submitted: {', '.join(f'#{m.combo.n} ({m.combo.words})' for m in pending)}")
            err(f"the submitted jobs keep running; to submit the rest: {resume_cmd}")
        raise typer.Exit(130 if isinstance(exc, KeyboardInterrupt) else exc.exit_code) from None
    return submitted


def compare(
    refs: Annotated[Optional[List[str]], typer.Argument(metavar="JOB...", help="Two or more jobs (ids, prefixes, names).",
                                                        autocompletion=completion.job_ids)] = None,
    sweep_id: Annotated[Optional[str], typer.Option("--sweep", metavar="SWEEP", help="Every job of a sweep, best WER first.",
                                                    autocompletion=completion.sweep_ids)] = None,
    utterances: Annotated[bool, typer.Option("--utterances", "-u", help=(
        "Two jobs: the held-out utterances whose transcripts differ most (from their predictions.jsonl).")) ] = False,
    n: Annotated[int, typer.Option("-n", min=1, metavar="N", help="How many utterances --utterances shows.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Runs side by side: the spec keys that differ, final and best WER/CER, steps, runtime, cost."""
    from gpujob import service

    registry = open_registry(create=False)
    if bool(refs) == bool(sweep_id):
        raise UserError("name the jobs to compare, or give --sweep ID (not both)",
                        hint="gpujob compare JOB JOB   |   gpujob compare --sweep ID")
    if sweep_id:
        jobs = registry.list(sweep=sweep_id)
        if not jobs:
            raise UserError(f"there is no sweep {sweep_id!r}", hint="the sweep command printed its id: sweep <id>: ...")
    else:
        jobs = [registry.resolve(ref) for ref in refs or []]
        if len({j.id for j in jobs}) < 2:
            raise UserError("compare needs two or more different jobs", hint="gpujob list shows job ids")
    jobs = service.refresh_all(registry, jobs)
    if utterances:
        if len(jobs) != 2:
            raise UserError(f"--utterances compares two jobs; {len(jobs)} were named", hint="gpujob compare A B --utterances")
        a, b = (cmp.read_predictions(cmp.predictions_path(j, capabilities(j.backend).outputs_volume)) for j in jobs)
        diffs = cmp.utterance_differences(a, b)
        typer.echo(compare_view.utterances_json(jobs, a, b, diffs, n) if as_json
                   else compare_view.utterances_text(jobs, a, b, diffs, n))
        return
    results = [cmp.result(j, registry.history(j.id)) for j in jobs]
    if sweep_id:
        order = sorted(range(len(jobs)), key=lambda i: (results[i].sort_key, jobs[i].created_at))
        jobs, results = [jobs[i] for i in order], [results[i] for i in order]
    diffs = cmp.spec_differences([cmp.comparable_spec(j) for j in jobs])
    if as_json:
        typer.echo(json.dumps(compare_view.as_json(jobs, results, diffs), indent=2))
        return
    typer.echo(compare_view.table(jobs, results, diffs))
    if len(jobs) == 2:
        typer.echo(f"next: gpujob compare {jobs[0].id} {jobs[1].id} --utterances   |   "
                   f"gpujob plot {jobs[0].id} {jobs[1].id} -o curves.png")
