"""The local backend's supervisor, run as ``python -m gpujob.supervisor JOB_ID``.

Started detached by :class:`gpujob.backends.local.LocalBackend`; :mod:`gpujob.supervisor` hands it
the registry as its :class:`~gpujob.backends.base.JobStore`, the only way it records the job. It:

0. for a job that asks for GPUs, waits in this machine's GPU queue (:mod:`gpujob.backends.gpuqueue`)
   until its own GPUs are free, recording its place meanwhile, and gives them to the job as
   CUDA_VISIBLE_DEVICES; a job cancelled while it waits never starts;
1. starts the job's command in a process group of its own, with the job's environment
   (``launch.json``: runtime.env and gpujob's variables; the secrets, renamed back) — none of which
   applies to the supervisor itself;
2. copies every output line to the job's log with secret values replaced by ``***``, in every form
   gpujob decodes (:mod:`gpujob.redact`); a line that is not a well-formed event is text, whatever
   is in it, and never stops the supervisor;
3. folds progress events into the job's recorded snapshot (at most once a second,
   at once for eval, checkpoint and end events);
4. stops the job when it runs past ``limits.max_runtime`` or stops reporting progress, whether or
   not it still writes to its output (a job may close or redirect it);
5. records the exit status and a plain-words reason (for several processes, the
   launcher's line naming the rank that failed first), then kills every process the job started,
   wherever it went (:mod:`gpujob.backends.reaper`: the supervisor is a child subreaper), so
   nothing keeps holding a GPU. If the supervisor itself dies, the job's first process dies with it
   and the next gpujob command kills the rest.

SIGTERM/SIGINT/SIGHUP sent to the supervisor are passed on to the job's group.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from typing import Callable

from gpujob import history, notify, procs
from gpujob.backends import gpuqueue, reaper
from gpujob.backends.base import JobStore, budget_reason, failure_reason
from gpujob.backends.gpus import VISIBLE
from gpujob.backends.local import LOG_NAME, SECRET_PREFIX, _write_private, kill_strays
from gpujob.backends.local_records import Launch, LocalHandle
from gpujob.backends.output import JobOutput
from gpujob.progress_state import ProgressState
from gpujob.redact import Redactor
from gpujob.words import fmt_duration

SNAPSHOT_EVERY_S = 1.0
IMPORTANT_EVERY_S = 0.1  # eval, checkpoint and end are shown at once, but a flood of them is not
KILL_GRACE_S = 10.0
EXIT_DRAIN_S = 2.0  # how long output is still read after the job's first process exited
IMPORTANT = ("start", "eval", "checkpoint", "artifact", "end")
TAIL_LINES, TAIL_CHARS = 200, 2000  # what is kept of the last lines, for the failure reason


class Supervisor:
    def __init__(self, store: JobStore, job_id: str, webhook_url: str | None = None) -> None:
        self.store = store
        self.job = store.get(job_id)
        self.dir = self.job.job_dir
        self.launch = Launch.read(self.dir)
        self.secrets = {n: os.environ.get(SECRET_PREFIX + n, "") for n in self.launch.secret_names}
        self.webhook_url = webhook_url  # notify.webhook_env's, handed on stdin: in memory only, redacted too
        self.output = JobOutput(Redactor([*self.secrets.values(), *([webhook_url] if webhook_url else [])]))
        self.state = ProgressState.from_dict(self.job.progress)
        self.child: subprocess.Popen | None = None
        self.stop_reason: str | None = None  # set when we stop the job ourselves
        self.kill_at: float | None = None
        self.tail: list[str] = []
        self.last_event: float | None = None  # monotonic time of the last event, once progress began
        self._important = False  # an event since the last snapshot that should be shown at once
        self._points: list = []  # metric history points not yet recorded
        self.queue: gpuqueue.GpuQueue | None = None  # this machine's GPU queue, once the job joined it
        self.held: tuple[gpuqueue.Entry, list[str]] | None = None  # our entry and the GPUs it holds
        self.log = open(self.dir / LOG_NAME, "ab")

    # -------------------------------------------------------------- signals

    def _on_signal(self, signum, _frame) -> None:
        if self.child is None:
            self.stop_reason = "cancelled before it started"
            return
        self._signal_job(signal.SIGTERM)

    def _signal_job(self, sig: int) -> None:
        try:
            os.killpg(self.child.pid, sig)
        except (ProcessLookupError, PermissionError):
            pass

    # -------------------------------------------------------------- run

    def run(self) -> int:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, self._on_signal)
        if not self._wait_for_gpus() or self.stop_reason:
            return self._finish(None, cancelled=True)
        self.store.transition(self.job.id, "starting", only_from=("queued",))
        argv = self.launch.argv
        # Not GPUJOB_HOME: the job is not told where gpujob keeps its state (the GPU queue, the registry).
        env = {k: v for k, v in os.environ.items() if not k.startswith(SECRET_PREFIX) and k != "GPUJOB_HOME"}
        env.update(self.launch.env)
        env.update(self.secrets)
        reaper.become_subreaper()  # orphans of the job come to us, not to init: nothing escapes
        try:
            self.child = subprocess.Popen(
                argv, cwd=self.launch.workdir, env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0, close_fds=True,
                preexec_fn=reaper.die_with_parent)
        except FileNotFoundError:
            self._write_line(f"gpujob: command not found: {argv[0]}")
            return self._finish(127, reason=f"command not found: {argv[0]!r} (the first item of `command` in the spec)")
        except PermissionError:
            self._write_line(f"gpujob: permission denied: {argv[0]}")
            return self._finish(126, reason=f"permission denied running {argv[0]!r} (is it executable?)")
        except OSError as exc:
            self._write_line(f"gpujob: could not start {argv[0]}: {exc.strerror}")
            return self._finish(126, reason=f"could not start {argv[0]!r}: {exc.strerror}")
        handle = self._record_handle(pid=self.child.pid, pgid=self.child.pid, queue=None)
        _write_private(self.dir / "handle.json", json.dumps(handle.dump()))
        self.store.transition(self.job.id, "running", only_from=("queued", "starting"))
        started = time.monotonic()
        limit = self.launch.max_runtime_s
        self._pump(started, limit)
        return self._finish(self.child.wait())

    # -------------------------------------------------------------- the GPU queue

    def _wait_for_gpus(self) -> bool:
        """Wait in the GPU queue until the job's own GPUs are free and give them to it; meanwhile its
        place is in its handle (``queue``: position and words), for submit, status and list. A job
        without GPUs does not wait. False: it was cancelled while it waited."""
        ask = self.launch.gpu_queue
        if not ask or self.stop_reason:
            return self.stop_reason is None
        self.queue = gpuqueue.GpuQueue(self.dir.parent.parent)
        me = gpuqueue.Entry(self.job.id, ask.gpus, ask.candidates, ask.priority,
                            self.job.created_at, ask.share, os.getpid(), procs.start_time(os.getpid()))
        self.queue.join(me)
        while self.stop_reason is None:
            got = self.queue.take(me)
            if isinstance(got, list):
                self.launch.env[VISIBLE] = ",".join(got)
                self.held = (me, got)
                return True
            self._record_handle(queue=got.to_dict())
            time.sleep(gpuqueue.POLL_S)
        return False

    def _assert_held(self) -> None:
        """Put our entry back in the queue's file, should something have removed or changed it."""
        if self.queue is not None and self.held is not None:
            try:
                self.queue.hold(*self.held)
            except OSError as exc:  # the queue's folder went away: the job runs on regardless
                self._write_line(f"gpujob: the GPU queue could not be updated ({exc.strerror})")

    def _record_handle(self, **changes) -> LocalHandle:
        """Record the job's handle with ``changes`` (None removes a key) if they change it. Read afresh
        each time, since submit records its part too; our own part is always written with it."""
        current = LocalHandle.of(self.store.get(self.job.id))
        handle = current.model_copy(update={
            "supervisor_pid": os.getpid(), "supervisor_start": procs.start_time(os.getpid()),
            "log": str(self.dir / LOG_NAME), "withheld": self.launch.withheld or None, **changes})
        if handle.dump() != current.dump():
            self.store.update(self.job.id, handle=handle.dump())
        return handle

    def _pump(self, started: float, limit: int | None) -> None:
        """Read the job's output and keep its timers until it exits. The timers do not depend on the
        output: a job that closes or redirects it is still stopped at its limits."""
        fd: int | None = self.child.stdout.fileno()
        last_snapshot, last_record, dirty = 0.0, 0.0, False
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            self._check_limits(now, started, limit)
            if now - last_record >= gpuqueue.ASSERT_S:  # for the next command, should this supervisor be killed
                reaper.watch(self.dir, keep=self.child.pid)
                self._assert_held()
                last_record = now
            if fd is not None:
                ready, _, _ = select.select([fd], [], [], 0.5)
                if ready:
                    chunk = os.read(fd, 1 << 16)
                    if chunk:
                        dirty |= self._take(self.output.feed(chunk))
                    else:
                        fd = None  # closed: the job may still run; only the timers go on
            else:
                try:
                    self.child.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    pass
            if self.child.poll() is not None:
                exited_at = exited_at or now
                # Something the job left behind may hold the output open: do not wait for it long.
                if fd is None or now - exited_at > EXIT_DRAIN_S:
                    break
            since = time.monotonic() - last_snapshot
            if dirty and (since >= SNAPSHOT_EVERY_S or (self._important and since >= IMPORTANT_EVERY_S)):
                self._record_points()
                self.store.update(self.job.id, progress=self.state.to_dict())
                last_snapshot, dirty, self._important = time.monotonic(), False, False
        self._take(self.output.flush())
        self.log.flush()

    def _check_limits(self, now: float, started: float, limit: int | None) -> None:
        idle, budget = self.launch.idle_s, self.launch.budget_s
        # The budget is a hard bound: SIGTERM comes a grace period early (at most half the budget), so that
        # a job that ignores it is killed when its budget runs out, not a grace period later.
        grace = min(KILL_GRACE_S, budget / 2) if budget else 0.0
        if budget and self.stop_reason is None and now - started >= budget - grace:
            self._stop(budget_reason(self.launch.max_cost, self.launch.price_per_hour,
                                     self.state.step), now, grace=grace)
        if limit and self.stop_reason is None and now - started > limit:
            self._stop(f"ran past limits.max_runtime ({fmt_duration(limit)}) and was stopped", now)
        if (idle and self.stop_reason is None and self.last_event is not None
                and now - self.last_event > idle):
            self._stop(f"hung: no progress for {fmt_duration(idle)} after step {self.state.step} "
                       "(limits.idle_minutes); stopped so it does not hold the GPU", now)
        if self.kill_at and now > self.kill_at:
            self._signal_job(signal.SIGKILL)
            reaper.kill_descendants(keep=self.child.pid)  # those that left its group too
            self.kill_at = None

    def _stop(self, reason: str, now: float, grace: float = KILL_GRACE_S) -> None:
        self.stop_reason = reason
        self._write_line(f"gpujob: {reason}")
        self._signal_job(signal.SIGTERM)
        self.kill_at = now + grace

    def _take(self, lines: list) -> bool:
        """Log the lines and fold their events; True when there was an event."""
        folded = False
        for line, events in lines:
            self._write_line(line)
            for event in events:
                try:
                    self.state.apply(event)
                except Exception as exc:  # a reader's bug must not end supervision
                    self._write_line(f"gpujob: an event could not be folded ({type(exc).__name__}); "
                                     "it is in the log as text")
                    continue
                folded = True
                if (p := history.point(event)) is not None:
                    self._points.append(p)
                self._important |= event.get("event") in IMPORTANT
                if event.get("event") == "progress" or (self.last_event is not None
                                                         and event.get("event") != "system"):
                    self.last_event = time.monotonic()  # armed by the first progress event; a system
                    # sample (a thread's, every few seconds) is no sign that the job moves
        return folded

    def _record_points(self) -> None:
        points, self._points = self._points, []
        if points:
            self.store.add_history(self.job.id, points)

    def _write_line(self, line: str) -> None:
        self.log.write(line.encode("utf-8", "replace") + b"\n")
        self.log.flush()
        if not line.lstrip().startswith("@gpujob/"):
            self.tail.append(line[:TAIL_CHARS])
            del self.tail[:-TAIL_LINES]

    # -------------------------------------------------------------- finish

    def _finish(self, code: int | None, *, cancelled: bool = False, reason: str | None = None) -> int:
        if self.child is not None:  # nothing of the job may outlive it, in its group or not
            self._signal_job(signal.SIGKILL)
            reaper.kill_descendants(keep=self.child.pid)
            kill_strays(self.job.id)
            reaper.record(self.dir, [])
        if self.queue is not None:  # its GPUs are free: the next job in the queue may start
            self.queue.leave(self.job.id)
        self.log.close()
        state = self.state
        if cancelled:
            status, reason = "cancelled", self.stop_reason
        elif reason:
            status = "failed"
        elif self.stop_reason:
            status, reason = "failed", self.stop_reason
        elif code == 0 and state.end_status not in (None, "succeeded"):
            status = "failed"
            reason = "the job reported failure" + (f": {state.message}" if state.message else "")
        elif code == 0:
            status, reason = "succeeded", None
        else:
            status = "failed"
            reason = self._reason(code)
        # Also beside the log, so a registry rebuilt from the job folders knows how the job ended.
        _write_private(self.dir / "result.json", json.dumps(
            {"status": status, "exit_code": code, "reason": reason, "finished_at": time.time()}))
        self._record_points()
        self.store.update(self.job.id, progress=state.to_dict(), metrics=state.metrics or None)
        self.store.transition(self.job.id, status, reason=reason, exit_code=code)
        notify.send_in_background(self.store.get(self.job.id), secrets=self.secrets.values(),  # once, detached
                                  webhook_url=self.webhook_url)
        return 0

    def _reason(self, code: int | None) -> str:
        said = self.state.message if self.state.end_status == "failed" else None
        return failure_reason(code, self.tail, message=said)


def main(argv: list[str], open_store: Callable[[], JobStore]) -> int:
    """Supervise the job ``argv[0]``, recording it through the store ``open_store()`` returns (a
    fresh one is opened to record a failure of the supervisor itself)."""
    if len(argv) != 1:
        print("usage: python -m gpujob.supervisor JOB_ID", file=sys.stderr)
        return 2
    webhook_url = notify.read_handover(sys.stdin)
    procs.not_dumpable()  # its /proc/PID/environ and memory out of the job's reach (the job is the same user)
    try:
        return Supervisor(open_store(), argv[0], webhook_url).run()
    except BaseException as exc:  # the job must not outlive us, and the registry must hear of it
        reaper.kill_descendants()
        kill_strays(argv[0])
        # The traceback goes to supervisor.log; an exception's words may quote the job's output.
        secrets = Redactor(v for k, v in os.environ.items() if k.startswith(SECRET_PREFIX))
        print(secrets.text(traceback.format_exc()), file=sys.stderr)
        open_store().transition(argv[0], "failed",
                                reason=f"gpujob's local supervisor failed ({type(exc).__name__}); the job was "
                                       "stopped; its traceback is in supervisor.log in the job's folder")
        return 1
