"""`gpujob rm` and `gpujob prune`: forget ended jobs, never an active one.

A removed job loses its registry record and its folder under ``$GPUJOB_HOME/jobs`` (its log and the
files gpujob wrote for it). Its outputs (``output.dir``) stay unless asked for, and then only where
they are a folder on this machine that no remaining job also names.
"""

from __future__ import annotations

import re
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from gpujob.backends import capabilities
from gpujob.errors import UserError
from gpujob.registry import TERMINAL, Job, Registry

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_age(text: str) -> float:
    """``7d``, ``12h``, ``30m``, ``90s``, ``2w`` as seconds; a UserError naming the flag otherwise."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text or "")
    if not match:
        raise UserError(f"--older-than {text!r} is not an age", hint="e.g. --older-than 7d (s, m, h, d or w)")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass
class Removed:
    jobs: list[Job] = field(default_factory=list)
    outputs: list[str] = field(default_factory=list)      # output folders removed (--outputs)
    kept_outputs: list[str] = field(default_factory=list)  # asked for, not removed: why, in words


def _refreshed(registry: Registry, jobs: list[Job]) -> list[Job]:
    from gpujob import service  # the backends only when a job still looks active

    return [service.refresh(registry, j) if j.active else j for j in jobs]


def check_ended(registry: Registry, jobs: list[Job]) -> list[Job]:
    """The jobs, as their backends see them now; a UserError naming every one still active."""
    jobs = _refreshed(registry, jobs)
    active = [j for j in jobs if j.active]
    if active:
        names = ", ".join(f"{j.id} ({j.name}, {j.status})" for j in active)
        raise UserError(f"not removed: {names} {'is' if len(active) == 1 else 'are'} not over; nothing was removed",
                        hint=f"cancel it first: gpujob cancel {active[0].id}")
    return jobs


def prune_candidates(registry: Registry, *, older_than_s: float | None, status: str | None,
                     now: float | None = None) -> list[Job]:
    """Ended jobs (of ``status``, if given) that ended more than ``older_than_s`` ago."""
    if status is not None and status not in TERMINAL:
        raise UserError(f"--status {status!r}: prune removes ended jobs only", hint=f"one of: {', '.join(TERMINAL)}")
    now = time.time() if now is None else now
    jobs = _refreshed(registry, registry.list())
    out = []
    for job in jobs:
        if job.active or (status and job.status != status):
            continue
        ended = job.finished_at or job.updated_at
        if older_than_s is not None and now - ended < older_than_s:
            continue
        out.append(job)
    return out


def _outputs_here(job: Job) -> bool:
    return capabilities(job.backend).outputs_on_this_machine  # a backend this version does not know: False


def remove(registry: Registry, jobs: list[Job], *, outputs: bool = False) -> Removed:
    """Forget ``jobs`` (ended ones only: the registry checks again as it deletes). ``outputs``: also
    remove each one's output folder, where it is on this machine and no other job names it."""
    registry.check_writable("remove jobs")
    done = Removed()
    gone = {j.id for j in jobs}
    for job in jobs:
        if not registry.delete(job.id, only_from=TERMINAL):
            continue  # it was gone already, or (a race) became active again: kept
        shutil.rmtree(job.job_dir, ignore_errors=True)
        done.jobs.append(job)
    if outputs:
        still_named = {j.output_dir for j in registry.list() if j.id not in gone}
        for out in sorted({j.output_dir for j in done.jobs if j.output_dir}):
            job = next(j for j in done.jobs if j.output_dir == out)
            if "://" in out or not _outputs_here(job):
                done.kept_outputs.append(f"{out}: not on this machine")
            elif out in still_named:
                done.kept_outputs.append(f"{out}: another job writes there too")
            elif Path(out).is_dir():
                shutil.rmtree(out, ignore_errors=True)
                done.outputs.append(out)
    return done
