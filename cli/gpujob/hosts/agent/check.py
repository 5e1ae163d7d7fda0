"""Agent: the idle check the service runs every ``check_interval_s``. It asks the probes, applies
the rules of :mod:`gpujob.hosts.agent.decide`, stops hung jobs (and, at the hard deadline, all
of them), terminates the instance, and writes the heartbeat. It keeps the idle timer and the
terminate's state between checks, and across restarts through the heartbeat."""

from __future__ import annotations

import http.client
import json
import logging
import os
import re
import subprocess
import time
from typing import Any, Callable

from gpujob.hosts.agent import decide
from gpujob.hosts.agent.config import AgentConfig, is_number
from gpujob.hosts.agent.decide import Decision, iso, minutes
from gpujob.hosts.agent.dockerapi import DockerError
from gpujob.hosts.agent.probes import ContainerInfo, Probes

HEARTBEAT_VERSION = 1
TERMINATE_REISSUE_S = 600        # still alive this long after the API said "terminating": ask again

logger = logging.getLogger("gpujob.agent")

_EXPECTED = (DockerError, OSError, subprocess.SubprocessError, http.client.HTTPException)


class Agent:
    """The idle check. ``tick()`` runs one; ``run_forever()`` runs one every check_interval_s.
    ``terminate()`` asks the cloud to terminate this instance and returns once the API reports it
    terminating or terminated; anything it raises is a failure to retry."""

    def __init__(self, config: AgentConfig, probes: Probes, terminate: Callable[[], None], *,
                 clock: Callable[[], float] = time.time, log: logging.Logger | None = None,
                 queue: Any = None) -> None:
        """``queue``: the host's GPU queue (:class:`gpujob.hosts.agent.gpuqueue.HostGpuQueue`), stepped
        between checks by :meth:`run_forever`."""
        self.config = config
        self.queue = queue
        self.layout = config.layout
        self.probes = probes
        self.terminate = terminate
        self.clock = clock
        self.log = log or logger
        self.started_at = clock()
        self.idle_since = self.started_at
        self.error_counts: dict[str, int] = {}
        self._reason: str | None = None        # a terminate is wanted, for this reason
        self._deadline = False                 # ...because of the hard deadline (never called off)
        self._confirmed_at: float | None = None  # the API said terminating at this time
        self._terminate_error: str | None = None
        self._attempts = 0
        self._last_event: dict[tuple[str, float | None], float] = {}  # (container, started_at) -> newest event
        self._hung: dict[str, str] = {}        # container id -> job id, stopped (or being stopped) as hung
        self._errors: list[str] = []
        self._jobs: list[dict[str, Any]] = []   # what the last check saw of each job, for the heartbeat
        self._restore()

    # -- restart

    def _restore(self) -> None:
        """Resume the idle timer from the last heartbeat (see the module docstring)."""
        try:
            with open(self.layout.heartbeat_path, encoding="utf-8") as fh:
                beat = json.load(fh)
        except FileNotFoundError:
            self.log.info("no heartbeat yet: the idle timer starts now")
            return
        except (OSError, ValueError) as e:
            self.log.warning("cannot read the last heartbeat (%s): the idle timer starts now", e)
            return
        if not isinstance(beat, dict) or beat.get("instance_id") != self.config.instance_id:
            self.log.info("the heartbeat is for another instance: the idle timer starts now")
            return
        idle_for = beat.get("idle_for_s")
        if is_number(idle_for):
            self.idle_since = self.started_at - max(0.0, float(idle_for))
            self.log.info("restarted: idle for %s at the last heartbeat; the timer resumes from there",
                          minutes(float(idle_for)))
        for job in beat.get("jobs") or []:
            if isinstance(job, dict) and isinstance(job.get("container"), str) and is_number(job.get("last_event_at")):
                started = job.get("started_at") if is_number(job.get("started_at")) else None
                self._last_event[(job["container"], started)] = float(job["last_event_at"])

    # -- one check

    def _guard(self, step: str, fn: Callable[[], Any], default: Any = None) -> Any:
        """fn(), or ``default`` when it raises: the failure is logged and listed in the heartbeat."""
        try:
            return fn()
        except Exception as e:
            self._failed(step, e)
            return default

    def _failed(self, step: str, e: BaseException) -> None:
        message = f"{step}: {type(e).__name__}: {e}"[:500]
        self._errors.append(message)
        count = self.error_counts[step] = self.error_counts.get(step, 0) + 1
        # a traceback for a failure that is not the host's plain trouble (Docker down, a file
        # missing, a command failing), once per step; otherwise one line
        trace = count == 1 and not isinstance(e, _EXPECTED)
        self.log.warning("%s (failure %d)", message, count, exc_info=(type(e), e, e.__traceback__) if trace else None)

    def tick(self) -> Decision:
        self._errors = []
        now = self.clock()
        try:
            decision = self._decide(now)
        except Exception as e:  # a bug in the agent itself: report it, keep the timer as it was
            self._failed("decide", e)
            decision = Decision(at=now, activity=[], idle_since=self.idle_since,
                                idle_for_s=max(0.0, now - self.idle_since))
        decision.errors = list(self._errors)
        self._guard("heartbeat", lambda: self._write_heartbeat(decision))
        self.log.info("%s", decision.summary())
        return decision

    def _decide(self, now: float) -> Decision:
        cfg = self.config
        activity: list[str] = []
        ignored: list[str] = []
        running = self._guard("containers", self.probes.containers)
        stopped = self._guard("exited_unsaved", self.probes.exited_unsaved, [])
        gpus = self._guard("gpu_utilisation", self.probes.gpu_utilisation)
        ssh = self._guard("ssh_sessions", self.probes.ssh_sessions, 0)
        uploads = self._guard("uploads_pending", self.probes.uploads_pending, [])
        decision = Decision(at=now, activity=activity, idle_since=self.idle_since, idle_for_s=0.0,
                            ignored=ignored)
        self._jobs = []

        # running jobs, and hung ones
        if running is not None:
            self._forget_gone(running)
        for c in running or []:
            last = self._remember_event(c)
            limit = decide.hung_limit(c, cfg.hung_minutes_default)
            hung = c.id in self._hung or decide.is_hung(last, limit, now)
            self._jobs.append({"job_id": c.job_id, "container": c.id, "state": c.state, "started_at": c.started_at,
                               "last_event_at": last, "idle_minutes": limit, "hung": hung})
            if not hung:
                activity.append(f"job {c.job_id} running")
                continue
            ignored.append(f"job {c.job_id} hung: no progress events for {limit:g} minutes")
            if self._guard(f"stop hung job {c.job_id}", lambda c=c: self.probes.stop_container(c.id, cfg.stop_grace_s),
                           "failed") != "failed":
                self._guard(f"hung record for job {c.job_id}", lambda c=c: self._write_hung(c, last, limit, now))
                decision.hung.append(c.job_id)
            self._hung[c.id] = c.job_id

        readings: list[tuple[bool, str] | None] = []
        for c in stopped:
            self._jobs.append({"job_id": c.job_id, "container": c.id, "state": c.state})
            readings.append(decide.leftover(c, c.id in self._hung or self._hung_record_exists(c.job_id)))
        readings += decide.gpu_readings(gpus, cfg.gpu_busy_percent)
        readings.append(decide.ssh_reading(ssh, cfg.ssh_keeps_alive))
        for reading in filter(None, readings):
            is_activity, text = reading
            (activity if is_activity else ignored).append(text)

        activity.extend(f"upload pending for job {job}" for job in uploads)

        # the hard deadline, then idleness
        if cfg.hard_deadline is not None and now >= cfg.hard_deadline:
            if not self._deadline:
                self._reason = f"past the hard deadline ({iso(cfg.hard_deadline)})"
                self._deadline = True
                self._confirmed_at = None
            for c in running or []:
                if c.id in self._hung:
                    continue
                if self._guard(f"stop job {c.job_id} at the deadline",
                               lambda c=c: self.probes.stop_container(c.id, cfg.stop_grace_s), "failed") != "failed":
                    decision.stopped.append(c.job_id)
        if activity:
            self.idle_since = now
            if self._reason and not self._deadline and self._confirmed_at is None:
                self.log.warning("activity again (%s): calling off the terminate that had not gone through",
                                 "; ".join(activity))
                self._reason, self._terminate_error, self._attempts = None, None, 0
        elif not self._reason:
            self._reason = decide.idle_reason(now - self.idle_since, cfg.idle_minutes)
        decision.idle_since = self.idle_since
        decision.idle_for_s = max(0.0, now - self.idle_since)
        decision.reason = self._reason
        if self._reason:
            self._terminate_step(now, decision)
        return decision

    def _terminate_step(self, now: float, decision: Decision) -> None:
        if self._confirmed_at is not None and now - self._confirmed_at < TERMINATE_REISSUE_S:
            decision.action = "terminating"
            return
        if self._confirmed_at is not None:
            self.log.warning("still running %s after the API said terminating: asking again",
                             minutes(now - self._confirmed_at))
        decision.retry = self._attempts > 0
        self._attempts += 1
        self.log.warning("terminating instance %s (attempt %d): %s", self.config.instance_id, self._attempts,
                         self._reason)
        try:
            self.terminate()
        except Exception as e:
            self._terminate_error = f"{type(e).__name__}: {e}"[:500]
            self._errors.append(f"terminate: {self._terminate_error}")
            self.error_counts["terminate"] = self.error_counts.get("terminate", 0) + 1
            self.log.error("terminate failed (%s); retrying at the next check", self._terminate_error)
            decision.action = "terminate-failed"
        else:
            self._terminate_error = None
            self._confirmed_at = now
            decision.action = "terminate"
        decision.terminate_error = self._terminate_error

    def _remember_event(self, c: ContainerInfo) -> float | None:
        """The newest event seen for this run of the container (not counting earlier runs)."""
        key = (c.id, c.started_at)
        last = decide.newest_event(c, self._last_event.get(key))
        if last is not None:
            self._last_event[key] = last
        return last

    def _forget_gone(self, running: list[ContainerInfo]) -> None:
        ids = {c.id for c in running}
        self._last_event = {k: v for k, v in self._last_event.items() if k[0] in ids}

    # -- files

    def _hung_record_exists(self, job_id: str) -> bool:
        return os.path.exists(os.path.join(self.layout.hung_dir, _safe_name(job_id) + ".json"))

    def _write_hung(self, c: ContainerInfo, last: float | None, limit: float, now: float) -> None:
        record = {"job_id": c.job_id, "container_id": c.id, "instance_id": self.config.instance_id,
                  "last_event_at": last, "stopped_at": now, "idle_minutes": limit,
                  "reason": f"no progress events for {limit:g} minutes; stopped as hung"}
        write_json_atomic(os.path.join(self.layout.hung_dir, _safe_name(c.job_id) + ".json"), record)
        self.log.warning("job %s stopped as hung: last progress event at %s", c.job_id, iso(last))

    def heartbeat(self, decision: Decision) -> dict[str, Any]:
        return {
            "version": HEARTBEAT_VERSION,
            "at": decision.at,
            "instance_id": self.config.instance_id,
            "pid": os.getpid(),
            "agent_started_at": self.started_at,
            "check_interval_s": self.config.check_interval_s,
            "idle_since": decision.idle_since,
            "idle_for_s": round(decision.idle_for_s, 3),
            "idle_minutes": self.config.idle_minutes,
            "hard_deadline": self.config.hard_deadline,
            "activity": decision.activity,
            "ignored": decision.ignored,
            "jobs": self._jobs,
            "hung": sorted(set(self._hung.values())),
            "terminating": decision.terminating,
            "terminate_reason": decision.reason,
            "terminate_confirmed": self._confirmed_at is not None,
            "terminate_error": decision.terminate_error,
            "errors": decision.errors,
            "error_counts": dict(self.error_counts),
        }

    def _write_heartbeat(self, decision: Decision) -> None:
        write_json_atomic(self.layout.heartbeat_path, self.heartbeat(decision))

    # -- the loop

    def run_forever(self, sleep: Callable[[float], None] = time.sleep, *, max_ticks: int | None = None) -> None:
        self.log.info("gpujob agent for instance %s: idle_minutes %g, checks every %gs, hard deadline %s",
                      self.config.instance_id, self.config.idle_minutes, self.config.check_interval_s,
                      iso(self.config.hard_deadline) if self.config.hard_deadline else "none")
        ticks = 0
        while max_ticks is None or ticks < max_ticks:
            started = self.clock()
            try:
                self.tick()
            except Exception:  # tick() guards itself; this is the last line of defence
                self.log.exception("the check failed")
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            self._between_checks(started, sleep)

    def _between_checks(self, started: float, sleep: Callable[[float], None]) -> None:
        """Until the next check: step the GPU queue every queue_interval_s (none past the hard deadline)."""
        due = started + max(1.0, self.config.check_interval_s)
        while True:
            if self.queue is not None and not self._deadline:
                self._errors = []
                self._guard("gpu queue", self.queue.step)
            left = due - self.clock()
            if left <= 0:
                return
            sleep(min(left, self.config.queue_interval_s) if self.queue is not None else left)


def _safe_name(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", job_id) or "_"


def write_json_atomic(path: str, data: Any, mode: int = 0o644) -> None:
    """Write to a temporary file next to ``path``, then rename it over: readers see the old file
    or the new one, never half of one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # not subject to the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


