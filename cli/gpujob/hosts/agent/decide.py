"""The rules of one check, as pure functions of what the probes saw, and the Decision a check
records. :class:`gpujob.hosts.agent.check.Agent` applies them in the order the package docstring
gives; nothing here looks at the host or changes it."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from gpujob.hosts.agent.probes import ContainerInfo


@dataclass
class Decision:
    """What one check saw and did."""

    at: float
    activity: list[str]                    # what kept the host up this check (empty: idle)
    idle_since: float                      # the idle timer counts from here
    idle_for_s: float
    action: str = "none"                   # none | terminate | terminate-failed | terminating
    reason: str | None = None              # why the host is being terminated
    retry: bool = False                    # this check repeated a terminate that had failed
    terminate_error: str | None = None
    ignored: list[str] = field(default_factory=list)   # seen, but not activity (and why)
    hung: list[str] = field(default_factory=list)      # job ids stopped as hung this check
    stopped: list[str] = field(default_factory=list)   # job ids stopped for the hard deadline
    errors: list[str] = field(default_factory=list)    # "step: error" for each failure this check

    @property
    def terminating(self) -> bool:
        return self.action != "none"

    def summary(self) -> str:
        if self.action == "terminate":
            return f"terminating the instance: {self.reason}"
        if self.action == "terminate-failed":
            return f"terminate failed ({self.terminate_error}); retrying at the next check: {self.reason}"
        if self.action == "terminating":
            return "the API reports the instance terminating"
        if self.activity:
            return "active: " + "; ".join(self.activity)
        return f"idle for {minutes(self.idle_for_s)}"


def minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


def iso(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def hung_limit(c: ContainerInfo, default: float | None) -> float | None:
    """Minutes without an event after which a running job is hung: its ``gpujob.dev/idle-minutes``
    label, else ``hung_minutes_default``; None: never."""
    return c.idle_minutes if c.idle_minutes is not None else default


def is_hung(last_event_at: float | None, limit: float | None, now: float) -> bool:
    """A job that has reported an event and none for ``limit`` minutes since."""
    return last_event_at is not None and limit is not None and now - last_event_at >= limit * 60


def leftover(c: ContainerInfo, stopped_as_hung: bool) -> tuple[bool, str]:
    """(is it activity, in words) for a gpujob container that exists but does not run."""
    if stopped_as_hung:
        return False, f"job {c.job_id} stopped as hung; not waiting for its log and outputs"
    if c.state == "created" and c.gpus:
        return True, f"job {c.job_id} queued for {c.gpus} GPU{'s' if c.gpus != 1 else ''}"
    if c.state == "created":
        return True, f"job {c.job_id} created; not started yet"
    if c.state == "paused":
        return True, f"job {c.job_id} paused"
    return True, f"job {c.job_id} ended; its log and outputs not collected yet"


def gpu_readings(gpus: list[float | None] | None, busy_percent: float) -> list[tuple[bool, str]]:
    """(is it activity, in words) for each GPU that reports its utilisation."""
    return [(value >= busy_percent, f"GPU {index} at {value:g}%")
            for index, value in enumerate(gpus or []) if value is not None]


def ssh_reading(sessions: int, keeps_alive: bool) -> tuple[bool, str] | None:
    """(is it activity, in words) for the interactive SSH sessions; None when there are none."""
    if not sessions:
        return None
    text = f"{sessions} SSH session{'s' if sessions != 1 else ''}"
    return (True, text) if keeps_alive else (False, f"{text} (ssh_keeps_alive is off)")


def idle_reason(idle_for_s: float, idle_minutes: float) -> str | None:
    """Why to terminate for idleness, once the host has been idle ``idle_minutes``; else None."""
    if idle_for_s < idle_minutes * 60:
        return None
    return f"idle for {minutes(idle_for_s)} (idle_minutes: {idle_minutes:g})"


def newest_event(c: ContainerInfo, known: float | None) -> float | None:
    """The newest event of this run of the container: the one in its log tail now, or ``known``
    (remembered from earlier checks) when that is newer; events from before the container's
    latest start do not count."""
    last = c.last_event_at
    if last is not None and c.started_at is not None and last < c.started_at:
        last = None  # from before the container's latest start
    if known is not None and (last is None or known > last):
        last = known
    return last
