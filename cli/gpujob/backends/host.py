"""The host backend: the job runs on a rented GPU host, through the Docker backend over SSH.

- ``submit`` picks the host (``runtime.host``, else an idle ready host of ``runtime.host_type``,
  else a new one launched and provisioned: :func:`gpujob.hosts.service.host_for_job`), opens an
  SSH connection with the host key pinned at first contact, forwards the host's Docker socket
  through it, and hands the job to the Docker backend as a *remote* engine: nothing of this
  machine is mounted; the spec and secrets are copied into the container as files.
- Outputs: with a persistent file system on the host they are written there
  (``/lambda/nfs/<fs>/gpujob/outputs/<job id>``), so they outlive it; without one they go to a
  volume of the job's own. Either way they are copied back to ``output.dir`` here when the job
  has ended, before its container is removed; the idle agent treats an ended container that still
  exists as "outputs not collected yet", so the host is not terminated under them.
- ``status``, ``logs -f``, ``cancel`` go to the same host (its name is in the job's handle); a job
  the agent stopped as hung is reported so; a job whose host is gone says so.
- Cost: the job's runtime times the host's hourly price.
- GPUs: the container gets ``resources.gpus`` of the host's GPUs; a job asking for more than its
  instance type has is refused at submit, before a host is launched for it.
"""

from __future__ import annotations

import atexit
import json
import shlex
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from typing import TYPE_CHECKING, Iterator, Mapping

from gpujob.backends.base import LOG_NAME, JobRequest, Observed, read_saved_log
from gpujob.errors import GpujobError, UserError

if TYPE_CHECKING:
    from gpujob.backends.docker import DockerBackend
    from gpujob.registry import Host, Job, Registry

HOST_LABEL = "gpujob.dev/host"


class _Session:
    """One SSH connection and Docker tunnel to a host, kept for the rest of this process."""

    def __init__(self, host: "Host") -> None:
        from gpujob.backends.docker.engine import Engine
        from gpujob.hosts import service

        self.host = host
        self._stack = ExitStack()
        self.conn = self._stack.enter_context(service.connect(host))
        url = self._stack.enter_context(self.conn.docker_socket(service.layout_of(host).docker_host))
        self.engine = Engine(url, local=False, label=f"host {host.name} ({host.ip}, over SSH)")

    def docker(self) -> "DockerBackend":
        from gpujob.backends.docker import DockerBackend

        return DockerBackend(self.engine, outputs_root=self.host.settings.get("outputs_root"))

    def close(self) -> None:
        try:
            self._stack.close()
        except Exception:
            pass


_SESSIONS: dict[str, _Session] = {}
_LOCK = threading.Lock()


def _session(host: "Host") -> _Session:
    with _LOCK:
        s = _SESSIONS.get(host.name)
        if s is not None and s.host.ip == host.ip and s.conn.is_alive():
            return s
        if s is not None:
            s.close()
        s = _SESSIONS[host.name] = _Session(host)
        return s


@atexit.register
def _close_all() -> None:
    for s in list(_SESSIONS.values()):
        s.close()
    _SESSIONS.clear()


def _registry() -> "Registry":
    from gpujob.registry import Registry

    return Registry()


class HostBackend:
    name = "host"

    # ------------------------------------------------------------------ render / submit

    def render(self, request: JobRequest) -> str:
        from gpujob.backends.docker import container as cplan

        rt = request.spec.get("runtime") or {}
        if rt.get("host"):
            where = f"host {rt['host']}"
        else:
            where = (f"an idle {rt.get('host_type')} host of yours, else a new one launched in "
                     f"{rt.get('region') or 'the first region with capacity'} (terminates itself after "
                     f"{rt.get('host_idle', '15m')} idle; at most {rt.get('host_max_lifetime', '12h')} after launch)")
        fs = rt.get("filesystem")
        outputs = f"/lambda/nfs/{fs}/gpujob/outputs/{request.job_id}" if fs else None
        p = cplan.plan(self._labelled(request, rt.get("host") or "<chosen at submit>"), local=False,
                       outputs_on_host=outputs)
        return f"backend: host ({where})\n" + cplan.describe(p, request, "the host, over SSH")

    @staticmethod
    def _labelled(request: JobRequest, host_name: str) -> JobRequest:
        """The labels the host's agent reads: the job's hung-after minutes (limits.idle_minutes)."""
        from gpujob.wire import IDLE_MINUTES_LABEL

        idle_minutes = (request.idle_s or 0) / 60 or 15
        labels = {**request.labels, IDLE_MINUTES_LABEL: f"{idle_minutes:g}", HOST_LABEL: host_name}
        return replace(request, labels=labels)

    def preflight(self, request: JobRequest) -> None:
        """Refuse a job that asks for more GPUs than its host's instance type has, before a host is
        launched (and billed) for it."""
        from gpujob.hosts import service

        known = service.job_host_gpus(_registry(), request.spec.get("runtime") or {}) if request.gpus else None
        if known and request.gpus > known[1]:
            itype, count = known
            raise UserError(f"resources.gpus: the job asks for {request.gpus} GPU{'s' if request.gpus > 1 else ''}, "
                            f"but a {itype} host has {count}",
                            hint="lower resources.gpus, or pick an instance type with that many GPUs for "
                                 "runtime.host_type (`gpujob host types` lists them)")

    def submit(self, request: JobRequest, secrets: Mapping[str, str]) -> dict:
        from gpujob.hosts import service

        registry = _registry()
        host = service.host_for_job(registry, request.spec.get("runtime") or {}, say=service.notice)
        session = _session(host)
        lay = service.layout_of(host)
        claim = f"{lay.uploads_dir}/submit-{request.job_id}"
        # Tell the agent a job is on its way (it counts as activity), so the host cannot be
        # terminated between our choice of it and the container's start.
        session.conn.put_file(claim, json.dumps({"job_id": request.job_id, "at": time.time()}).encode(), mode=0o644)
        try:
            outputs_root = host.settings.get("outputs_root")
            if outputs_root:
                session.conn.run(f"mkdir -p {shlex.quote(f'{outputs_root}/{request.job_id}')}", timeout_s=60)
            handle = session.docker().submit(self._labelled(request, host.name), secrets)
        finally:
            try:
                session.conn.run(f"rm -f {shlex.quote(claim)}", timeout_s=30, check=False)
            except GpujobError:
                pass
        handle["engine"] = handle.pop("host", None)
        handle["host"] = host.name
        handle["price_cents_per_hour"] = host.price_cents_per_hour
        return handle

    # ------------------------------------------------------------------ status

    def status(self, job: "Job") -> Observed | None:
        if not job.handle.get("container_id"):
            return None
        registry = _registry()
        host = registry.find_host(job.handle["host"])
        if host is None or not host.active:
            if job.job_dir.joinpath(LOG_NAME).exists() and not job.active:
                return None
            why = f" ({host.reason})" if host is not None and host.reason else ""
            return Observed("failed", reason=f"its host {job.handle['host']} was terminated{why} before gpujob "
                                             "saw the job end; outputs written to a persistent file system are there")
        try:
            session = _session(host)
            seen = session.docker().status(job)
        except GpujobError as exc:
            if not job.active:
                return None
            return Observed(job.status, reason=f"cannot reach host {host.name} right now: {exc.message}")
        if seen is not None and seen.status == "failed":
            hung = _hung_record(session, host, job.id)
            if hung:
                seen.reason = f"stopped as hung by the host's agent: {hung.get('reason', 'no progress events')}"
        return seen

    # ------------------------------------------------------------------ logs

    def logs(self, job: "Job", *, follow: bool = False, tail: int | None = None,
             all_workers: bool = False) -> Iterator[str]:
        if not job.handle.get("container_id"):
            return
        saved = job.job_dir / LOG_NAME
        host = _registry().find_host(job.handle["host"])
        if host is None or not host.active:
            if saved.exists():
                yield from read_saved_log(saved, tail)
                return
            raise GpujobError(f"job {job.id}'s host {job.handle['host']} is gone and its log was not saved",
                              hint="outputs written to the host's persistent file system are kept there")
        if saved.exists() and not job.active:
            yield from read_saved_log(saved, tail)
            return
        yield from _session(host).docker().logs(job, follow=follow, tail=tail, all_workers=all_workers)

    # ------------------------------------------------------------------ cancel / list / cleanup

    def cancel(self, job: "Job", *, grace_s: float = 10.0) -> None:
        host = _registry().find_host(job.handle.get("host", ""))
        if host is None or not host.active or not job.handle.get("container_id"):
            return
        _session(host).docker().cancel(job, grace_s=grace_s)

    def list(self) -> list[str]:
        ids: set[str] = set()
        for host in _registry().list_hosts(active_only=True):
            if host.state != "ready":
                continue
            try:
                ids.update(_session(host).docker().list())
            except GpujobError:
                continue
        return sorted(ids)

    def cleanup(self, job: "Job") -> None:
        host = _registry().find_host(job.handle.get("host", ""))
        if host is not None and host.active and job.handle.get("container_id"):
            _session(host).docker().cleanup(job)

    # ------------------------------------------------------------------ cost

    @staticmethod
    def job_cost(job: "Job") -> float | None:
        """The job's share of the bill: its runtime at the host's hourly price."""
        cents = job.handle.get("price_cents_per_hour")
        if cents is None or job.runtime_s is None:
            return None
        return float(cents) / 100.0 * job.runtime_s / 3600.0


def _hung_record(session: _Session, host: "Host", job_id: str) -> dict | None:
    from gpujob.hosts import service

    try:
        raw = session.conn.read_file(f"{service.layout_of(host).hung_dir}/{job_id}.json")
        return json.loads(raw) if raw else None
    except (GpujobError, ValueError):
        return None
