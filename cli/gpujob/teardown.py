"""Stopping rented hosts: `gpujob host down`, and the reaper that terminates a host that must not go
on billing (past its hard deadline, or its idle agent silent with no job there). Before a host is
terminated, the jobs recorded on it are refreshed, which saves their logs and copies their outputs
back (or they are on the host's persistent file system already).

The reaper is an explicit step: `gpujob host reap` runs it for every host, and the CLI's commands
run :func:`reap_due` (one query; work only when a host is past a deadline) before their own work.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Callable

from gpujob import service
from gpujob.errors import GpujobError, UserError
from gpujob.fleet.access import Say, api, check_interval_s, notice
from gpujob.fleet.watch import agent_silent_for, read_heartbeat, sync
from gpujob.words import fmt_duration

if TYPE_CHECKING:
    from gpujob.records import Host
    from gpujob.registry import Registry


def _collect(registry: "Registry", host: "Host") -> list:
    """Refresh the jobs recorded on the host: ended ones get their log saved and outputs copied back.
    Returns those still running."""
    still = []
    for job in registry.jobs_on_host(host.name):
        try:
            job = service.refresh(registry, job)
        except GpujobError:
            pass
        if job.active:
            still.append(job)
    return still


def terminate(registry: "Registry", host: "Host", reason: str, client=None,
              now: Callable[[], float] = time.time) -> "Host":
    """Terminate the instance. A failed call (the API down, a 5xx after retries) leaves the host
    active with its check time now, so the next gpujob command tries again."""
    client = client or api()
    if host.instance_id:
        try:
            client.terminate([host.instance_id])
        except GpujobError as exc:
            registry.update_host(host.name, reason=f"terminate failed, will retry: {exc.message}", check_after=now())
            raise
    return registry.update_host(host.name, state="terminated", reason=reason,
                                terminated_at=host.terminated_at or now(), check_after=None)


def down(registry: "Registry", name: str, *, force: bool = False, say: Say = notice) -> "Host":
    host = registry.get_host(name)
    if not host.active:
        raise UserError(f"host {name} is already {host.state}" + (f" ({host.reason})" if host.reason else ""),
                        hint="`gpujob host list --all` shows every host")
    running = _collect(registry, host)
    if running and not force:
        ids = ", ".join(f"{j.id} ({j.name})" for j in running)
        raise UserError(f"host {name} is running {ids}",
                        hint=f"wait for it, cancel it (`gpujob cancel {running[0].id}`), or `gpujob host down {name} "
                             "--force` to cancel and terminate")
    for job in running:
        say(f"cancelling job {job.id} ({job.name})")
        try:
            service.cancel(registry, job, grace_s=30)
        except GpujobError as exc:
            say(f"could not cancel {job.id}: {exc.message}")
        _collect(registry, host)
    return terminate(registry, host, reason="terminated with `gpujob host down`")


def reap(registry: "Registry", *, hosts: list["Host"] | None = None, now: Callable[[], float] = time.time,
         client=None, say: Say = notice) -> list[str]:
    """Check each host and terminate the ones that must not go on billing. Returns what was done."""
    client = client or api()
    done: list[str] = []
    sync(registry, client)
    names = [h.name for h in (hosts if hosts is not None else registry.list_hosts(active_only=True))]
    for name in names:
        try:
            line = _reap_one(registry, registry.get_host(name), now, client, say)
        except GpujobError as exc:  # one host's trouble (its terminate failed) must not spare the others
            line = f"host {name}: could not terminate it ({exc.message}); the next gpujob command tries again"
        if line:
            done.append(line)
    return done


def _reap_one(registry: "Registry", host: "Host", now: Callable[[], float], client, say: Say) -> str | None:
    name = host.name
    if not host.active or host.state == "terminating":
        return None
    t = now()
    if host.hard_deadline and t >= host.hard_deadline:
        _collect(registry, host)
        lifetime = fmt_duration(host.max_lifetime_s) if host.max_lifetime_s else "its max lifetime"
        terminate(registry, host, f"max lifetime ({lifetime}) reached; terminated by gpujob's reaper", client, now)
        return f"host {name}: terminated: max lifetime ({lifetime}) reached"
    if host.check_after and t < host.check_after:
        return None
    beat = read_heartbeat(registry, host, now=now) if host.ip else None
    host = registry.get_host(name)
    interval = check_interval_s()
    silent = agent_silent_for(host, t)
    if beat is not None and silent <= 3 * interval + 30:
        # The agent is alive and will stop the host itself; look again when it should have.
        idle_for = float(beat.get("idle_for_s") or 0)
        left = max(host.idle_minutes * 60 - idle_for, 0) if not beat.get("activity") else host.idle_minutes * 60
        registry.update_host(name, check_after=t + left + 2 * interval)
        return None
    running = _collect(registry, host)
    if running:
        ids = ", ".join(j.id for j in running)
        say(f"host {name}: its idle agent is not reporting, but job {ids} still runs there; "
            "gpujob checks again later")
        registry.update_host(name, check_after=t + host.idle_minutes * 60)
        return None
    last = f"last heartbeat {fmt_duration(silent)} ago" if host.heartbeat else "no heartbeat ever"
    terminate(registry, host, f"its idle agent stopped reporting ({last}) and no job runs there; "
                              "terminated by gpujob's reaper", client, now)
    return f"host {name}: terminated: idle agent not reporting ({last})"


def reap_due(registry: "Registry") -> None:
    """What every gpujob command does first: one query; work only when a host is past a deadline.
    Never fails the user's command: problems are reported on stderr."""
    try:
        due = registry.hosts_due(time.time())
    except Exception:
        return
    if not due:
        return
    try:
        for line in reap(registry, hosts=due):
            notice(line)
    except GpujobError as exc:
        names = ", ".join(h.name for h in due)
        notice(f"could not check host {names} (past its deadline): {exc.message}")
        if exc.hint:
            notice(f"hint: {exc.hint}")
    except Exception as exc:  # the reaper must never break `gpujob list`
        notice(f"could not check hosts past their deadline: {type(exc).__name__}: {exc}")
