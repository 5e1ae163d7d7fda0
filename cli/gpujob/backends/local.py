"""The local backend: the job runs as a detached process group on this machine.

``submit`` starts a small supervisor (:mod:`gpujob.supervisor`) detached, in a
new session and no child of the CLI (:func:`gpujob.procs.spawn_detached`), so the job
outlives the CLI and no environment above the job holds what the job must not read. The supervisor starts the job's
command in a process group of its own, writes its output to the job's log,
folds progress events into the registry, enforces ``limits.max_runtime`` and
records the exit status. ``cancel`` sends SIGTERM to the job's group, then
SIGKILL after a grace period. A job whose supervisor vanished (kill -9, a
reboot) is reported failed instead of staying "running" forever.

GPUs: a job's supervisor waits in this machine's GPU queue
(:mod:`gpujob.backends.gpuqueue`) until ``resources.gpus`` of the GPUs nvidia-smi
lists are free, then gives the job those (by UUID; :mod:`gpujob.backends.gpus`)
as CUDA_VISIBLE_DEVICES; a job without GPUs gets "" and never waits; asking for
more than the machine has is refused at submit, before the job is recorded. A train/evaluate job with several GPUs runs the launcher (torchrun),
one process per GPU: torchrun passes SIGTERM on to its ranks, and when the job
ends, its ranks (in sessions of their own) are killed with it.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from gpujob import notify, procs, untrusted
from gpujob.backends import gpuqueue, gpus, outputs, reaper
from gpujob.backends.base import LOG_NAME, Backend, Capabilities, JobRequest, Observed
from gpujob.backends.local_records import LAUNCH_NAME, GpuAsk, Launch, LocalHandle
from gpujob.errors import GpujobError, UserError
from gpujob.linesplit import LineSplitter
from gpujob.records import gpujob_home

if TYPE_CHECKING:
    from gpujob.backends.gpus import Found
    from gpujob.records import Job

POLL_S = 0.2


class LocalBackend(Backend):
    name = "local"
    # a process of this machine, in gpujob's environment: its supervisor records the job's state as it runs,
    # its log and output.dir are written here as it runs
    capabilities = Capabilities(self_reporting=True, outputs_written_here=True, runner_here=True,
                                log_written_here=True)

    # ------------------------------------------------------------------ submit

    def render(self, request: JobRequest) -> str:
        found = _detect_gpus(request)
        try:
            gpu_env, gpu_lines = _gpu_env(request, found), [_gpu_words(request, found)]
            if found is not None:  # which of them it gets depends on the GPU queue
                got, words = gpuqueue.preview(gpuqueue.GpuQueue(request.job_dir.parent.parent).snapshot(),
                                              [g.uuid for g in found.gpus], request.gpus,
                                              priority=request.spec.priority, share=_shares(request))
                gpu_env = {gpus.VISIBLE: ",".join(got) if got else
                           f"<{request.gpus} of the GPUs above, given when the job leaves the GPU queue>"}
                gpu_lines = [_gpu_words(request, found, got), f"queue: {words}"]
        except UserError as exc:
            gpu_env, gpu_lines = {}, [f"PROBLEM: {exc.message}; submit refuses it", f"hint: {exc.hint}"]
        env, withheld = job_environment(request, os.environ, gpu_env)
        env.update({n: "<from your environment, redacted in logs>" for n in request.secret_names})
        inherited = sorted(n for n in os.environ if n not in env and n not in withheld)
        lines = [
            "backend: local (a detached process group on this machine)",
            f"job:     {request.name} (kind {request.kind})",
            f"command: {shlex.join(self._argv(request))}",
            f"gpus:    {gpu_lines[0]}",
            *(f"         {more}" for more in gpu_lines[1:]),
            f"workdir: {request.workdir}",
            f"outputs: {request.output_dir}",
            f"logs:    {request.job_dir / LOG_NAME}",
            f"limits:  max runtime {request.max_runtime_s or 'none'}"
            + (" s" if request.max_runtime_s else "")
            + (f"; budget ${request.max_cost:g} = {request.budget_s:.0f} s of running" if request.budget_s else "")
            + (f"; stopped as hung after {request.idle_s:g} s without progress" if request.idle_s else ""),
            "env (exactly what the job gets):",
            *(f"  {k}={v}" for k, v in sorted(env.items())),
            f"  and from your environment, as they are: {', '.join(inherited) or 'nothing else'}",
        ]
        if withheld:
            lines.append(f"withheld: {withheld_words(withheld)}")
        return "\n".join(lines)

    def preflight(self, request: JobRequest) -> None:
        """Refuse a job that asks for more GPUs than this machine has, before it is recorded."""
        _gpu_env(request, _detect_gpus(request))

    def submit(self, request: JobRequest, secrets: Mapping[str, str]) -> dict:
        found = _detect_gpus(request)
        gpu_env = _gpu_env(request, found)  # first: a job without its GPUs never starts
        job_dir = request.job_dir
        job_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        spec_file = job_dir / "spec.json"
        _write_private(spec_file, json.dumps(request.spec_data(), indent=2))
        ask = None
        if found is not None:  # its supervisor waits in the GPU queue and sets CUDA_VISIBLE_DEVICES then
            ask = GpuAsk(gpus=request.gpus, candidates=[g.uuid for g in found.gpus],
                         priority=request.spec.priority, share=_shares(request))
            gpu_env = {gpus.VISIBLE: ""}
        job_env, withheld = job_environment(request, os.environ, gpu_env)
        Launch(argv=self._argv(request), workdir=request.workdir, env=job_env, withheld=withheld,
               secret_names=sorted(secrets), max_runtime_s=request.max_runtime_s, idle_s=request.idle_s,
               budget_s=request.budget_s, max_cost=request.max_cost, price_per_hour=request.price_per_hour,
               gpu_queue=ask).write(job_dir)
        # The supervisor runs in your environment as it is, less what looks like a secret; the job's
        # own variables (runtime.env: PYTHONPATH, LD_PRELOAD...) are only set for the job, and its
        # secrets travel under names nothing else reads.
        # notify.webhook_env's URL is in neither environment (a job reads its parent's at /proc/$PPID/environ):
        # the supervisor gets it on its stdin and holds it in memory only.
        hook = request.spec.notify.webhook_env
        env = {k: v for k, v in os.environ.items()
               if k not in withheld and k != hook and not k.startswith(SECRET_PREFIX)}
        env.update({SECRET_PREFIX + n: v for n, v in secrets.items()})
        # It is started detached (no child of this command, whose environment holds the URL too).
        handed = notify.handover(hook, os.environ)
        with open(job_dir / "supervisor.log", "ab") as sup_log:
            pid = procs.spawn_detached(["-m", "gpujob.supervisor", request.job_id], log=sup_log,
                                       cwd=request.workdir, env=env,
                                       stdin_data=json.dumps(handed).encode() if handed else None)
        return LocalHandle(supervisor_pid=pid, supervisor_start=procs.start_time(pid), log=str(job_dir / LOG_NAME),
                           withheld=withheld or None).dump()

    def _argv(self, request: JobRequest) -> list[str]:
        spec_file = str(request.job_dir / "spec.json")
        return [spec_file if arg == "{spec}" else arg for arg in request.command]

    # ------------------------------------------------------------------ observe

    def status(self, job: "Job") -> Observed | None:
        if not job.active:
            return None
        handle = LocalHandle.of(job)
        pid, start = handle.supervisor_pid, handle.supervisor_start
        if pid is None:
            if time.time() - job.created_at > 60:
                return Observed("failed", reason="the job never started (its supervisor was not launched)")
            return None
        if _alive(pid, start):
            return None
        self.cleanup(job)
        return Observed(
            "failed",
            reason="the job's process vanished (killed with SIGKILL, or the machine restarted) "
                   "before it could record an exit status",
        )

    def logs(self, job: "Job", *, follow: bool = False, tail: int | None = None,
             all_workers: bool = False) -> Iterator[str]:
        path = job.job_dir / LOG_NAME
        handle = LocalHandle.of(job)
        pid, start = handle.supervisor_pid, handle.supervisor_start
        waited = 0.0
        while not path.exists():
            if not follow or not _alive(pid, start) or waited > 30:
                return
            time.sleep(POLL_S)
            waited += POLL_S
        try:
            fh = untrusted.open_regular(path)
        except untrusted.Refused as exc:
            raise GpujobError(f"job {job.id}: its log cannot be read: {exc}",
                              hint="the file was replaced by something gpujob did not write; move it away") from None
        with fh:
            if tail is not None:
                yield from _tail_lines(fh, tail)
            splitter = LineSplitter()
            while True:
                chunk = fh.read(1 << 16)
                if chunk:
                    yield from splitter.feed(chunk)
                    continue
                if not follow or not _alive(pid, start):
                    # One last read: the supervisor may have written as it exited.
                    yield from splitter.feed(fh.read())
                    yield from splitter.flush()
                    return
                time.sleep(POLL_S)

    def list(self) -> list[str]:
        jobs_dir = gpujob_home() / "jobs"
        alive = []
        for launch in sorted(jobs_dir.glob(f"*/{LAUNCH_NAME}")):
            handle = _read_handle(launch.parent)
            if handle and _alive(handle.supervisor_pid, handle.supervisor_start):
                alive.append(launch.parent.name)
        return alive

    # ------------------------------------------------------------------ stop

    def cancel(self, job: "Job", *, grace_s: float = 10.0) -> None:
        handle = LocalHandle.of(job)
        pid, start = handle.supervisor_pid, handle.supervisor_start
        if not _alive(pid, start):
            self.cleanup(job)
            return
        pgid = handle.pgid
        # SIGTERM to the job's group lets it save a checkpoint; the supervisor keeps
        # logging and records the exit. Before the job started, the supervisor itself
        # is told, so it never starts it.
        if pgid:
            _signal_group(pgid, signal.SIGTERM)
        else:
            _signal(pid, signal.SIGTERM)
        if _wait_gone(pid, start, grace_s):
            return
        if pgid:
            _signal_group(pgid, signal.SIGKILL)
        if _wait_gone(pid, start, 5.0):
            return
        _signal(pid, signal.SIGKILL)
        _wait_gone(pid, start, 5.0)
        self.cleanup(job)  # its supervisor is gone: whatever it left is killed here

    def cleanup(self, job: "Job") -> None:
        """Kill whatever is left of the job (orphaned workers holding a GPU): its process group, and
        its processes in sessions of their own."""
        handle = LocalHandle.of(job)
        if _alive(handle.supervisor_pid, handle.supervisor_start):
            return  # it cleans up after its job itself
        pgid = handle.pgid
        if pgid:
            _signal_group(pgid, signal.SIGKILL)
        reaper.kill_recorded(job.job_dir)  # what its supervisor last saw, wherever it went
        kill_strays(job.id)

    def pull(self, job: "Job", dest: Path, only: str, progress=None):
        """The job's output folder, here already: copied to ``dest`` (backends/outputs.py)."""
        return outputs.pull_dir(Path(job.output_dir or ""), dest, only, job.active, progress)


# ----------------------------------------------------------------------------- environment

SECRET_PREFIX = "GPUJOB_SECRET_"  # how the supervisor receives a job's secrets (renamed for the job)
# Names of variables that look like credentials, besides the words the spec refuses in runtime.env.
_SECRET_ENDINGS = ("TOKEN", "KEY", "SECRET", "PASSWORD", "PASSWD", "_PASS", "CREDENTIALS", "CREDENTIAL", "_AUTH")


def looks_like_secret_name(name: str) -> bool:
    """HF_TOKEN, AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS, DB_PASSWORD, WANDB_API_KEY..."""
    from gpujob.spec.fields import looks_secret_name

    upper = name.upper()
    return looks_secret_name(name) or upper.endswith(_SECRET_ENDINGS)


def job_environment(request: JobRequest, environ: Mapping[str, str],
                    gpu_env: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """What gpujob sets for the job (on top of ``environ``), and the names in ``environ`` withheld
    from it because they look like secrets and are not listed in runtime.secrets."""
    listed = set(request.secret_names)
    withheld = sorted(n for n in environ if n not in listed and not n.startswith(SECRET_PREFIX)
                      and looks_like_secret_name(n))
    # `python` in a command means gpujob's own interpreter and virtualenv, in front of the PATH the
    # job would otherwise have: runtime.env's, or yours.
    path = request.env.get("PATH", environ.get("PATH", ""))
    venv_bin = str(Path(sys.executable).parent)
    env = {
        **request.env,
        "GPUJOB_JOB_ID": request.job_id,
        "GPUJOB_JOB_NAME": request.name,
        "GPUJOB_SPEC": str(request.job_dir / "spec.json"),
        "GPUJOB_OUTPUT_DIR": request.output_dir,
        "PYTHONUNBUFFERED": "1",
        "PATH": f"{venv_bin}{os.pathsep}{path}" if path else venv_bin,
        **gpu_env,
    }
    return env, withheld


def withheld_words(names: list[str]) -> str:
    return (f"{', '.join(names)}: in your environment and named like secrets, so the job does not get "
            "them; to pass one, list it under runtime.secrets (its value is then redacted in logs)")


# ----------------------------------------------------------------------------- GPUs


def _detect_gpus(request: JobRequest) -> "Found | None":
    """The GPUs the job may use (CUDA_VISIBLE_DEVICES in runtime.env limits them too); None
    when it asks for none, so CPU jobs never run nvidia-smi."""
    return gpus.detect({**os.environ, **request.env}) if request.gpus > 0 else None


def _gpu_env(request: JobRequest, found: "Found | None") -> dict[str, str]:
    """CUDA_VISIBLE_DEVICES for the job: its GPUs by UUID, or "" for a job without GPUs."""
    return gpus.job_env(request.gpus, found)


def _shares(request: JobRequest) -> bool:
    return request.spec.resources.share_gpus


def _gpu_words(request: JobRequest, found: "Found | None", got: list[str] | None = None) -> str:
    """The GPUs the job would get now (``got``), or, when it would wait, those it may get."""
    if found is None:
        return "none (CUDA_VISIBLE_DEVICES is empty, so the job cannot take a GPU)"
    each = "; one process each, under torchrun" if request.gpus > 1 and request.kind != "command" else ""
    if got is None:
        return f"{request.gpus}{each}, of: " + ", ".join(map(str, found.gpus))
    return f"{request.gpus}{each}: " + ", ".join(str(g) for uuid in got for g in found.gpus if g.uuid == uuid)


# ----------------------------------------------------------------------------- process helpers

def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(text)


def _read_handle(job_dir: Path) -> LocalHandle | None:
    try:
        data = untrusted.read_json(job_dir / "handle.json", 1 << 20)
    except (OSError, ValueError):
        return None
    return LocalHandle.read(data) if isinstance(data, dict) else None


def _alive(pid: int | None, start: int | None) -> bool:
    if not pid:
        return False
    return procs.alive(pid, start)  # a supervisor is no child of ours (procs.spawn_detached): init reaps it


def kill_strays(job_id: str) -> None:
    """SIGKILL this user's processes that carry the job's id in their environment (GPUJOB_JOB_ID):
    those in sessions of their own, which a signal to the job's process group does not reach.
    torchrun starts each rank so; it passes SIGTERM on to them itself, but if it is killed, or dies,
    the ranks would go on holding their GPUs."""
    needle = f"GPUJOB_JOB_ID={job_id}".encode()
    me = os.getpid()
    try:
        entries = [e.name for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) != me]
    except OSError:
        return
    for pid in entries:
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle not in fh.read().split(b"\0"):
                    continue
        except OSError:  # gone, or not ours
            continue
        _signal(int(pid), signal.SIGKILL)


def _wait_gone(pid: int | None, start: int | None, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _alive(pid, start):
            return True
        time.sleep(0.05)
    return not _alive(pid, start)


def _signal(pid: int | None, sig: int) -> None:
    if pid:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _tail_lines(fh, count: int) -> list[str]:
    """The last ``count`` complete lines; leaves ``fh`` at the end of what was read."""
    fh.seek(0, os.SEEK_END)
    end = fh.tell()
    if count <= 0:
        return []
    block, data, pos = 1 << 14, b"", end
    while pos > 0 and data.count(b"\n") <= count:
        pos = max(0, pos - block)
        fh.seek(pos)
        data = fh.read(end - pos)
        block *= 2  # linear in what is read, however long the lines
    fh.seek(end)
    lines = data.split(b"\n")
    complete, torn = lines[:-1], lines[-1]
    fh.seek(end - len(torn))  # a torn last line is read again by the follower once complete
    return [ln.decode("utf-8", "replace").rstrip("\r") for ln in complete[-count:]]
