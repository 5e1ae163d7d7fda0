"""The Docker backend: the job runs in one container of the job image, on a Docker engine.

- ``submit`` checks the image is on the engine (pulling it if it is not), creates the container
  (:mod:`.container` says what it gets), copies the spec and the secrets in as files, starts it.
  If a step fails, the container is removed again.
- ``status`` reads the container's state and exit code and says what happened in plain words
  (for several processes: which rank failed first, and why); progress comes from the runner's
  event lines at the end of the container's log.
- ``logs -f`` follows the container's log with timestamps and reconnects where it left off when
  the stream drops (dockerd restarted under a live-restored container, an ssh tunnel cut), so no
  line is lost or repeated; a quiet job is not a dropped connection.
- ``cancel`` stops the container: SIGTERM, then SIGKILL after the grace period.
- A finished container is removed only after its log is saved in the registry's job folder (and,
  on a remote engine, its outputs are copied back).
"""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from gpujob.backends import local_data, outputs
from gpujob.backends.base import (LOG_NAME, Backend, JobRequest, Observed, budget_stop, failure_reason,
                                  last_error_line, read_saved_log, read_tail, runtime_of)
from gpujob.backends.docker import container as cplan
from gpujob.backends.docker import pull as docker_pull
from gpujob.backends.docker.handle import DockerHandle
from gpujob.backends.docker.engine import Engine, current_host, is_local
from gpujob.backends.logfollow import Follower, LogNotReady, SourceGone
from gpujob.errors import UserError
from gpujob.records import TERMINAL
from gpujob.wire import ID_LABEL, MANAGED_LABEL, MANAGED_VALUE, docker_time, rfc3339_ns

if TYPE_CHECKING:
    from gpujob.records import Job

PROGRESS_TAIL_LINES = 400
ERROR_TAIL_LINES = 60
TIMEOUT_EXIT = 124  # timeout(1): limits.max_runtime was reached


class DockerBackend(Backend):
    name = "docker"

    def __init__(self, engine: Engine | None = None, *, outputs_root: str | None = None,
                 data_mounts: Mapping[str, str] | None = None, gpu_grants: str | None = None) -> None:
        """``engine``: always use this engine (the host backend's SSH tunnel) instead of the one in
        a job's handle or DOCKER_HOST. ``outputs_root``: on a remote engine, bind-mount
        ``<outputs_root>/<job id>`` of that machine at /outputs (a persistent file system) instead
        of a volume of the job's own; either way the outputs are copied back when the job ends.
        ``data_mounts``: folders of the engine's machine (uploaded data) -> where the container sees
        them, read-only. ``gpu_grants``: the engine's machine runs a GPU queue (a rented host's agent)
        that keeps its grants there: a GPU job is created, not started (:func:`.container.plan`)."""
        self._fixed_engine = engine
        self._gpu_grants = gpu_grants
        self._outputs_root = outputs_root
        self._data_mounts = dict(data_mounts or {})

    # ------------------------------------------------------------------ render / submit

    def render(self, request: JobRequest) -> str:
        host = current_host()
        local = is_local(host)
        p = cplan.plan(request, local=local, image=job_image(request), user=_my_user() if local else None)
        missing = [] if self._fixed_engine else local_data.problems(request.spec, self.name, host)
        notes = [f"PROBLEM: {m}; submit refuses it" for m in missing]
        notes += [f"hint: {local_data.hint(self.name)}"] if missing else []
        return "\n".join([cplan.describe(p, request, host), *notes])

    def preflight(self, request: JobRequest) -> None:
        if self._fixed_engine is None:  # the host backend brings the data along itself
            local_data.refuse(request.spec, self.name, request.spec_path)

    def submit(self, request: JobRequest, secrets: Mapping[str, str]) -> dict:
        engine = self._fixed_engine or Engine()
        p = cplan.plan(request, local=engine.local, image=job_image(request),
                       user=_my_user() if engine.local else None, secrets=secrets,
                       outputs_on_host=self._outputs_dir(request.job_id) if not engine.local else None,
                       data_mounts=self._data_mounts, gpu_grants=self._gpu_grants)
        client = engine.client
        image = self._ensure_image(engine, p.image)
        owner = _my_user() if engine.local else cplan.image_user((image.attrs.get("Config") or {}).get("User"))
        if engine.local and "://" not in p.out_in_container:
            Path(p.out_in_container).mkdir(parents=True, exist_ok=True)
        self._ensure_volumes(engine, p)
        created = None
        try:
            with engine.errors("creating the job's container"):
                created = client.containers.create(**p.create)
                extra = () if engine.local or "://" in p.out_in_container else (p.out_in_container,)
                created.put_archive("/", cplan.archive(p.files, owner, extra_dirs=extra))
                if not p.queued:  # a queued one is started by the host's GPU queue
                    created.start()
        except BaseException:
            if created is not None:
                try:
                    created.remove(force=True)
                except Exception:
                    pass
            raise
        return DockerHandle(host=engine.host, container=p.name, container_id=created.id, image=p.image,
                            remote=not engine.local, out_in_container=p.out_in_container, gpu_queue=p.queued or None,
                            outputs_on_host=p.outputs_on_host or None).dump()

    def _outputs_dir(self, job_id: str) -> str | None:
        return f"{self._outputs_root.rstrip('/')}/{job_id}" if self._outputs_root else None

    def _ensure_image(self, engine: Engine, ref: str):
        import docker.errors as derr

        with engine.errors(f"looking up image {ref}"):
            try:
                return engine.client.images.get(ref)
            except derr.NotFound:
                pass
        try:
            with engine.errors(f"pulling image {ref}"):
                return engine.client.images.pull(ref)
        except (UserError, derr.NotFound) as exc:
            why = exc.message if isinstance(exc, UserError) else str(exc)
            raise UserError(f"image {ref} is not on the Docker engine at {engine.host}, and pulling it failed: {why}",
                            hint="build it there with `gpujob image build` (`--variant cpu` for a machine without "
                                 "GPUs), or set runtime.image to an image the engine has") from None

    @staticmethod
    def _ensure_volumes(engine: Engine, p: cplan.Plan) -> None:
        import docker.errors as derr

        for m in p.create["mounts"]:
            if m["Type"] != "volume":
                continue
            with engine.errors(f"creating volume {m['Source']}"):
                try:
                    engine.client.volumes.get(m["Source"])
                except derr.NotFound:
                    engine.client.volumes.create(m["Source"], labels={MANAGED_LABEL: MANAGED_VALUE})

    # ------------------------------------------------------------------ status

    def status(self, job: "Job") -> Observed | None:
        handle = DockerHandle.of(job)
        if not handle.container_id:
            return None
        engine = self._engine(job)
        attrs = self._inspect(engine, job)
        if attrs is None:
            if job.job_dir.joinpath(LOG_NAME).exists() and job.status in TERMINAL:
                return None
            return Observed("failed", reason=f"its container {handle.container} is gone from the engine at "
                                             f"{engine.host} (removed outside gpujob: docker rm, docker system prune)")
        state = attrs.get("State") or {}
        tail = self._tail(engine, job, PROGRESS_TAIL_LINES) if state.get("Status") != "created" else None
        seen = observe(state, max_runtime_s=job.max_runtime_s, memory=_memory(job),
                       log_tail=tail[-ERROR_TAIL_LINES:] if tail else None)
        if tail:
            seen.progress, seen.points = read_tail(job, tail)
        if seen.exit_code == TIMEOUT_EXIT:  # timeout(1): max_runtime, or the budget if that came first
            seen.reason = budget_stop(job, seen) or seen.reason
        seen.started_at = docker_time(state.get("StartedAt"))
        if seen.status in TERMINAL:
            self._finish(engine, job)
        return seen

    # ------------------------------------------------------------------ logs

    def logs(self, job: "Job", *, follow: bool = False, tail: int | None = None,
             all_workers: bool = False) -> Iterator[str]:
        cid = DockerHandle.of(job).container_id
        if not cid:
            return
        engine = self._engine(job)
        saved = job.job_dir / LOG_NAME
        if saved.exists() and (not job.active or self._inspect(engine, job, quiet=True) is None):
            yield from read_saved_log(saved, tail)
            return
        import docker.errors as derr

        transient = engine.transient()

        def open_stream(since: str | None, tail_lines: int | None, follow_now: bool):
            try:
                c = engine.client.containers.get(cid)
                if c.status == "created":
                    raise LogNotReady()
                kwargs: dict[str, Any] = {"stream": True, "follow": follow_now, "timestamps": True,
                                          "tail": "all" if tail_lines is None else tail_lines}
                if since:
                    kwargs["since"] = rfc3339_ns(since) // 1_000_000_000
                stream = c.logs(**kwargs)
            except derr.NotFound:
                raise SourceGone() from None
            try:
                yield from stream
            finally:
                stream.close()

        def state() -> str:
            try:
                st = engine.client.containers.get(cid).status
            except derr.NotFound:
                return "gone"
            except transient:
                return "running"  # the engine is away for now (restarting): keep trying
            return {"created": "waiting", "exited": "ended", "dead": "ended"}.get(st, "running")

        def on_error(exc: BaseException) -> str:
            return f"the Docker engine at {engine.host} is not answering ({type(exc).__name__}); retrying"

        follower = Follower(open_stream, state, tail=tail, follow=follow, transient=transient, on_error=on_error)
        got_any = False
        for line in follower.lines():
            got_any = True
            yield line
        if not got_any and saved.exists():  # removed between our look and the read
            yield from read_saved_log(saved, tail)

    # ------------------------------------------------------------------ cancel / list / cleanup

    def cancel(self, job: "Job", *, grace_s: float = 10.0) -> None:
        import docker.errors as derr

        cid = DockerHandle.of(job).container_id
        if not cid:
            return
        engine = self._engine(job)
        with engine.errors("stopping the job's container"):
            try:
                c = engine.client.containers.get(cid)
            except derr.NotFound:
                return
            if c.status in ("running", "restarting", "paused", "created"):
                c.stop(timeout=max(0, int(round(grace_s))))
        self._finish(engine, job)

    def list(self) -> list[str]:
        engine = self._fixed_engine or Engine()
        with engine.errors("listing containers"):
            found = engine.client.containers.list(all=True, filters={"label": f"{MANAGED_LABEL}={MANAGED_VALUE}"})
        return sorted({c.labels[ID_LABEL] for c in found if ID_LABEL in c.labels})

    def cleanup(self, job: "Job") -> None:
        if DockerHandle.of(job).container_id:
            engine = self._engine(job)
            attrs = self._inspect(engine, job, quiet=True)
            if attrs is not None and (attrs.get("State") or {}).get("Status") in ("exited", "dead", "created"):
                self._finish(engine, job)

    # ------------------------------------------------------------------ helpers

    def pull(self, job: "Job", dest: Path, only: str, progress=None):
        """The outputs folder here (engine on this machine, or copied back at the end), else the
        container's output folder through the Engine API's archive (:mod:`.pull`)."""
        import docker.errors as derr

        handle = DockerHandle.of(job)
        here = Path(job.output_dir) if job.output_dir and "://" not in job.output_dir else None
        if here is not None and (not handle.remote or (not job.active and here.is_dir())):
            return outputs.pull_dir(here, dest, only, job.active, progress)
        if not handle.container_id or not handle.out_in_container:
            raise docker_pull.not_there(job.id)
        engine = self._engine(job)
        try:
            with engine.errors("reading the job's outputs"):
                container = engine.client.containers.get(handle.container_id)
        except derr.NotFound:
            raise docker_pull.not_there(job.id) from None
        return docker_pull.from_container(container, handle.out_in_container, dest, only, job.active,
                                          progress)

    def _engine(self, job: "Job") -> Engine:
        return self._fixed_engine or Engine(DockerHandle.of(job).host)

    @staticmethod
    def _inspect(engine: Engine, job: "Job", quiet: bool = False) -> dict | None:
        import docker.errors as derr

        try:
            with engine.errors("reading the job's container"):
                return engine.client.api.inspect_container(DockerHandle.of(job).container_id)
        except derr.NotFound:
            return None
        except UserError:
            if quiet:
                return None
            raise

    @staticmethod
    def _tail(engine: Engine, job: "Job", lines: int) -> list[str] | None:
        try:
            raw = engine.client.api.logs(DockerHandle.of(job).container_id, tail=lines)
        except Exception:  # the log is a bonus for progress and the reason; never fail status over it
            return None
        return raw.decode("utf-8", "replace").splitlines()

    def _finish(self, engine: Engine, job: "Job") -> None:
        """Save the log (and copy a remote engine's outputs back), then remove the container.
        If saving fails the container stays, so nothing is lost; the next status tries again."""
        import docker.errors as derr

        handle = DockerHandle.of(job)
        cid = handle.container_id
        try:
            c = engine.client.containers.get(cid)
        except derr.NotFound:
            return
        except engine.transient():
            return
        if c.status not in ("exited", "dead", "created"):
            return
        try:
            data = engine.client.api.logs(cid, stdout=True, stderr=True)
            _write_private(job.job_dir / LOG_NAME, data)
            copy_back = (handle.remote and "://" not in (handle.out_in_container or "://")
                         and c.status != "created")  # never started (cancelled in a GPU queue): nothing to copy
            if copy_back:
                _copy_out(c, handle.out_in_container, Path(job.output_dir))
            c.remove(v=False)
            if copy_back and not handle.outputs_on_host:
                engine.client.volumes.get(cplan.outputs_volume(job.id)).remove()
        except (derr.APIError, OSError, tarfile.TarError, *engine.transient()):
            return


def job_image(request: JobRequest) -> str | None:
    """``runtime.image`` of a docker job, or of a host job (a host runs its jobs on its own engine,
    through this backend); None for the gpujob image."""
    from gpujob.spec.runtime import DockerRuntime, HostRuntime  # the spec is loaded: no import cost here

    return runtime_of(request, DockerRuntime, HostRuntime).image


def observe(state: dict[str, Any], *, max_runtime_s: int | None = None, memory: str | None = None,
            log_tail: list[str] | None = None) -> Observed:
    """A container's State (from inspect) in the registry's words. ``log_tail``, the end of its log,
    says why it failed: the launcher's line naming the rank that failed first, else the last error."""
    status = state.get("Status")
    if status == "created" and state.get("Error"):  # a start that failed leaves it created
        return Observed("failed", exit_code=state.get("ExitCode"),
                        reason=f"the container could not start: {state['Error']}")
    if status == "created":
        return Observed("queued", reason="container created, not started yet")
    if status in ("running", "restarting", "paused"):
        return Observed("running", reason=None if status == "running" else f"container is {status}")
    code = state.get("ExitCode")
    lines = log_tail or []
    if code == 0 and not state.get("Error") and not state.get("OOMKilled"):
        return Observed("succeeded", exit_code=0)
    if state.get("Error"):
        reason = f"the container could not run the job: {state['Error']}"
    elif state.get("OOMKilled"):
        limit = f" (resources.memory: {memory})" if memory else ""
        reason = f"killed: out of memory{limit}; raise resources.memory or lower the batch size"
    elif code == TIMEOUT_EXIT and max_runtime_s:
        reason = f"ran longer than limits.max_runtime ({max_runtime_s}s) and was stopped"
    else:
        return Observed("failed", exit_code=code, reason=failure_reason(code, lines))
    err = last_error_line(lines) if code not in (None, 0) else None
    return Observed("failed", exit_code=code, reason=f"{reason}: {err}" if err and err not in reason else reason)


def _memory(job: "Job") -> str | None:
    return job.spec.resources.memory if job.spec is not None else None


def _my_user() -> tuple[int, int]:
    return (os.getuid(), os.getgid())


def _write_private(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    tmp.replace(path)


def _copy_out(container, src: str, dest: Path) -> None:
    """Copy a folder out of a stopped container (its volumes included) into ``dest``."""
    stream, _ = container.get_archive(src.rstrip("/"))
    buf = io.BytesIO(b"".join(stream))
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(fileobj=buf) as tar:
        members = []
        for m in tar.getmembers():
            name = m.name.split("/", 1)[1] if "/" in m.name else ""
            if not name or not (m.isfile() or m.isdir()):
                continue
            m.name = name
            members.append(m)
        tar.extractall(dest, members=members, filter="data")
