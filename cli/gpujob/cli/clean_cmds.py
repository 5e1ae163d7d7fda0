"""rm, prune: forget ended jobs (never an active one); their outputs only when asked."""

from __future__ import annotations

import json
from typing import Annotated, List, Optional

import typer

from gpujob.cli.common import complete_job, friendly, open_registry

OutputsOpt = Annotated[bool, typer.Option("--outputs", help="Also remove each job's output.dir (a folder on this machine that no other job names).")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output: the ids removed.")]


def register(app: typer.Typer) -> None:
    app.command("rm")(friendly(rm))
    app.command("prune")(friendly(prune))


def rm(
    refs: Annotated[List[str], typer.Argument(metavar="JOB...", help="Job ids, unique id prefixes or job names.",
                                              autocompletion=complete_job)],
    outputs: OutputsOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Forget ended jobs: their records and logs. An active job is refused (cancel it first)."""
    from gpujob import cleanup

    registry = open_registry(create=False)
    jobs = cleanup.check_ended(registry, [registry.resolve(r) for r in dict.fromkeys(refs)])
    _report(cleanup.remove(registry, jobs, outputs=outputs), as_json)


def prune(
    older_than: Annotated[Optional[str], typer.Option("--older-than", metavar="AGE",
                                                      help="Only jobs that ended longer ago than AGE: 90m, 12h, 7d, 2w.")] = None,
    status: Annotated[Optional[str], typer.Option("--status", metavar="STATUS",
                                                  help="Only jobs that ended so: succeeded | failed | cancelled.")] = None,
    outputs: OutputsOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", "-n", help="Say what would be removed; remove nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Forget every ended job (of --status, older than --older-than). Active jobs are never touched."""
    from gpujob import cleanup

    age = cleanup.parse_age(older_than) if older_than is not None else None
    registry = open_registry(create=False)
    jobs = cleanup.prune_candidates(registry, older_than_s=age, status=status)
    if dry_run:
        if as_json:
            typer.echo(json.dumps({"would_remove": [j.id for j in jobs]}))
        else:
            for j in jobs:
                typer.echo(f"would remove {j.id} ({j.name}, {j.status})")
            typer.echo(f"{len(jobs)} job(s) would be removed; run again without --dry-run to remove them")
        return
    _report(cleanup.remove(registry, jobs, outputs=outputs), as_json)


def _report(done, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps({"removed": [j.id for j in done.jobs], "outputs_removed": done.outputs,
                               "outputs_kept": done.kept_outputs}))
        return
    for j in done.jobs:
        typer.echo(f"removed {j.id} ({j.name}, {j.status})")
    for out in done.outputs:
        typer.echo(f"removed outputs {out}")
    for why in done.kept_outputs:
        typer.echo(f"kept outputs {why}")
    if not done.jobs:
        typer.echo("nothing to remove")
