"""The local backend's supervisor: ``python -m gpujob.backends._supervise JOB_ID``.

Started detached by :class:`gpujob.backends.local.LocalBackend`. It:

1. starts the job's command in a process group of its own;
2. copies every output line to the job's log, with secret values replaced by ``***``;
3. folds progress events into the registry's snapshot (at most once a second,
   at once for eval, checkpoint and end events);
4. stops the job when it runs past ``limits.max_runtime``;
5. records the exit status and a plain-words reason (for several processes, the
   launcher's line naming the rank that failed first), then kills any process
   the job left behind, in its group or in a session of its own (torchrun's
   ranks), so nothing keeps holding a GPU.

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

from gpujob.backends.base import failure_reason
from gpujob.backends.local import LAUNCH_NAME, LOG_NAME, _start_time, _write_private, kill_strays
from gpujob.progress import LineSplitter, ProgressState, fmt_duration, parse_line
from gpujob.registry import Registry

SNAPSHOT_EVERY_S = 1.0
KILL_GRACE_S = 10.0
IMPORTANT = ("start", "eval", "checkpoint", "artifact", "end")


class Supervisor:
    def __init__(self, job_id: str) -> None:
        self.registry = Registry()
        self.job = self.registry.get(job_id)
        self.dir = self.job.job_dir
        self.launch = json.loads((self.dir / LAUNCH_NAME).read_text())
        self.secrets = sorted(
            {os.environ[n] for n in self.launch["secret_names"] if len(os.environ.get(n, "")) >= 4},
            key=len, reverse=True)
        self.state = ProgressState.from_dict(self.job.progress)
        self.child: subprocess.Popen | None = None
        self.stop_reason: str | None = None  # set when we stop the job ourselves
        self.kill_at: float | None = None
        self.tail: list[str] = []
        self.last_event: float | None = None  # monotonic time of the last event, once progress began
        self._important = False  # an event since the last snapshot that should be shown at once
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
        if self.stop_reason:
            return self._finish(None, cancelled=True)
        self.registry.transition(self.job.id, "starting", only_from=("queued",))
        argv = self.launch["argv"]
        env = dict(os.environ)
        try:
            self.child = subprocess.Popen(
                argv, cwd=self.launch["workdir"], env=env, stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, process_group=0, close_fds=True)
        except FileNotFoundError:
            self._write_line(f"gpujob: command not found: {argv[0]}")
            return self._finish(127, reason=f"command not found: {argv[0]!r} (the first item of `command` in the spec)")
        except PermissionError:
            self._write_line(f"gpujob: permission denied: {argv[0]}")
            return self._finish(126, reason=f"permission denied running {argv[0]!r} (is it executable?)")
        except OSError as exc:
            self._write_line(f"gpujob: could not start {argv[0]}: {exc.strerror}")
            return self._finish(126, reason=f"could not start {argv[0]!r}: {exc.strerror}")
        handle = {**self.job.handle, "pid": self.child.pid, "pgid": self.child.pid,
                  "supervisor_pid": os.getpid(), "supervisor_start": _start_time(os.getpid())}
        _write_private(self.dir / "handle.json", json.dumps(handle))
        self.registry.update(self.job.id, handle=handle)
        self.registry.transition(self.job.id, "running", only_from=("queued", "starting"))
        started = time.monotonic()
        limit = self.launch.get("max_runtime_s")
        self._pump(started, limit)
        return self._finish(self.child.wait())

    def _pump(self, started: float, limit: int | None) -> None:
        splitter, fd = LineSplitter(), self.child.stdout.fileno()
        last_snapshot, dirty = 0.0, False
        idle = self.launch.get("idle_s")
        exited_at: float | None = None
        while True:
            now = time.monotonic()
            if limit and self.stop_reason is None and now - started > limit:
                self.stop_reason = f"ran past limits.max_runtime ({fmt_duration(limit)}) and was stopped"
                self._write_line(f"gpujob: {self.stop_reason}")
                self._signal_job(signal.SIGTERM)
                self.kill_at = now + KILL_GRACE_S
            if (idle and self.stop_reason is None and self.last_event is not None
                    and now - self.last_event > idle):
                self.stop_reason = (f"hung: no progress for {fmt_duration(idle)} after step {self.state.step} "
                                    "(limits.idle_minutes); stopped so it does not hold the GPU")
                self._write_line(f"gpujob: {self.stop_reason}")
                self._signal_job(signal.SIGTERM)
                self.kill_at = now + KILL_GRACE_S
            if self.kill_at and now > self.kill_at:
                self._signal_job(signal.SIGKILL)
                self.kill_at = None
            ready, _, _ = select.select([fd], [], [], 0.5)
            if ready:
                chunk = os.read(fd, 1 << 16)
                if not chunk:
                    break
                for line in splitter.feed(chunk):
                    dirty |= self._take_line(line)
            elif self.child.poll() is not None:
                # The job exited but something it left behind still holds the pipe open.
                exited_at = exited_at or now
                if now - exited_at > 2.0:
                    break
            if dirty and (time.monotonic() - last_snapshot >= SNAPSHOT_EVERY_S or self._important):
                self.registry.update(self.job.id, progress=self.state.to_dict())
                last_snapshot, dirty, self._important = time.monotonic(), False, False
        for line in splitter.flush():
            self._take_line(line, parse=False)
        self.log.flush()

    def _take_line(self, line: str, parse: bool = True) -> bool:
        for secret in self.secrets:
            if secret in line:
                line = line.replace(secret, "***")
        self._write_line(line)
        events = parse_line(line) if parse else []
        for event in events:
            self.state.apply(event)
            self._important |= event.get("event") in IMPORTANT
            if event.get("event") == "progress" or self.last_event is not None:
                self.last_event = time.monotonic()  # armed by the first progress event
        return bool(events)

    def _write_line(self, line: str) -> None:
        self.log.write(line.encode("utf-8", "replace") + b"\n")
        self.log.flush()
        if not line.lstrip().startswith("@gpujob/"):
            self.tail = (self.tail + [line])[-200:]

    # -------------------------------------------------------------- finish

    def _finish(self, code: int | None, *, cancelled: bool = False, reason: str | None = None) -> int:
        if self.child is not None:  # nothing of the job may outlive it, in its group or not
            self._signal_job(signal.SIGKILL)
            kill_strays(self.job.id)
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
        self.registry.update(self.job.id, progress=state.to_dict(), metrics=state.metrics or None)
        self.registry.transition(self.job.id, status, reason=reason, exit_code=code)
        return 0

    def _reason(self, code: int | None) -> str:
        reason = failure_reason(code, self.tail)
        if self.state.message and self.state.end_status == "failed":
            reason += f" ({self.state.message})"
        return reason


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m gpujob.backends._supervise JOB_ID", file=sys.stderr)
        return 2
    try:
        return Supervisor(argv[0]).run()
    except Exception as exc:  # the registry must hear about it, whatever broke
        try:
            Registry().transition(argv[0], "failed", reason=f"gpujob's local supervisor failed: {exc}")
        finally:
            raise


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
