"""The host backend: the job runs on a rented GPU host, through the Docker backend over SSH.

- ``submit`` picks the host (``runtime.host``, else an idle ready host of ``runtime.host_type``,
  else a new one launched and provisioned: :meth:`HostSource.for_job`, which the layer above hands
  down: :class:`gpujob.fleet.jobs.RegistryHosts`), opens an
  SSH connection with the host key pinned at first contact, forwards the host's Docker socket
  through it, and hands the job to the Docker backend as a *remote* engine: nothing of this
  machine is mounted; the spec and secrets are copied into the container as files.
- With only ``resources.gpu_type`` (no ``runtime.host``/``host_type``): an idle host of yours with
  those GPUs, else the cheapest type that has them and capacity (:mod:`gpujob.hosts.choose`); render
  shows the choice, and preflight refuses a job no type fits, before anything is recorded.
- Local data: the folders the spec names (:mod:`.host_data`) are uploaded to the host before the
  container is created (:mod:`gpujob.hosts.upload`: by content hash, resumable, checked there),
  mounted read-only, and the spec copied into the container points at them.
- Outputs: with a persistent file system on the host they are written there
  (``/lambda/nfs/<fs>/gpujob/outputs/<job id>``), so they outlive it; without one they go to a
  volume of the job's own. Either way they are copied back to ``output.dir`` here when the job
  has ended, before its container is removed; the idle agent treats an ended container that still
  exists as "outputs not collected yet", so the host is not terminated under them.
- ``status``, ``logs -f``, ``cancel`` go to the same host (its name is in the job's handle); a job
  the agent stopped as hung is reported so; a job whose host is gone says so.
- Cost: the job's runtime times the host's hourly price (unless the spec sets ``resources.price_per_hour``);
  ``limits.max_cost`` is that price's running time, enforced by ``timeout(1)`` in the container.
- GPUs: a job asking for GPUs joins the host's GPU queue, which the host's agent runs
  (:mod:`gpujob.hosts.agent.gpuqueue`): its container is created, not started; the agent starts it
  once ``resources.gpus`` GPUs no other job holds are free (priority, then submit time), with them as
  its CUDA_VISIBLE_DEVICES. Until then it is ``queued`` and ``status`` gives its place. A job asking
  for more than its instance type has is refused at submit, before a host is launched for it.
"""

from __future__ import annotations

import atexit
import json
import shlex
import threading
import time
from contextlib import ExitStack
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Callable, ContextManager, Iterator, Mapping, Protocol

from gpujob.backends import outputs
from gpujob.backends.base import LOG_NAME, Backend, Capabilities, JobRequest, Observed, read_saved_log, runtime_of
from gpujob.backends.docker import container as cplan
from gpujob.backends.docker.backend import DockerBackend
from gpujob.backends.docker.engine import Engine
from gpujob.backends.host_data import DATA_MOUNT, in_container, local_folders, rewritten
from gpujob.backends.host_handle import HostHandle
from gpujob.errors import GpujobError, UserError
from gpujob.hosts import upload as up
from gpujob.hosts.choose import NoMatchingType, choose_type
from gpujob.hosts.layout import HostLayout
from gpujob.wire import IDLE_MINUTES_LABEL

if TYPE_CHECKING:
    from gpujob.hosts.choose import TypeChoice
    from gpujob.hosts.ssh import HostConnection
    from gpujob.records import Host, Job
    from gpujob.spec.runtime import HostRuntime

HOST_LABEL = "gpujob.dev/host"


class HostSource(Protocol):
    """What the host backend asks of the layer above it about hosts (:class:`gpujob.fleet.jobs.RegistryHosts`:
    the registry's hosts, and launching one for a job)."""

    def find(self, name: str) -> "Host | None":
        """The host called ``name``, active or not; None if there is none."""

    def active(self) -> list["Host"]:
        """The hosts not terminated."""

    def for_job(self, runtime: "HostRuntime", *, gpu_type: str | None = None, gpus: int = 0) -> "Host":
        """The ready host a job with this ``runtime`` section runs on, launched and provisioned if need be;
        with neither ``runtime.host`` nor ``runtime.host_type``, one with ``gpus`` ``gpu_type`` GPUs."""

    def choose(self, runtime: "HostRuntime", gpu_type: str, gpus: int) -> "TypeChoice":
        """The instance type a job without ``runtime.host``/``host_type`` would get now; a UserError if none fits."""

    def say(self, line: str) -> None:
        """A line for the person submitting (stderr)."""

    def transfer(self, label: str) -> "ContextManager[Callable[[int, int], None]]":
        """A progress display for an upload: called with (bytes sent, bytes in all)."""

    def gpus_for(self, runtime: "HostRuntime") -> tuple[str, int] | None:
        """The instance type such a job runs on and its GPUs, when known before a host is launched."""

    def connect(self, host: "Host") -> "HostConnection":
        """An open SSH connection to the host, its key checked against the one pinned at first contact."""

    def layout(self, host: "Host") -> "HostLayout":
        """Where gpujob's files are on the host."""


class _Session:
    """One SSH connection and Docker tunnel to a host, kept for the rest of this process."""

    def __init__(self, host: "Host", hosts: HostSource) -> None:
        self.host = host
        self._stack = ExitStack()
        self.conn = self._stack.enter_context(hosts.connect(host))
        url = self._stack.enter_context(self.conn.docker_socket(hosts.layout(host).docker_host))
        self.engine = Engine(url, local=False, label=f"host {host.name} ({host.ip}, over SSH)")

    def docker(self, data_mounts: Mapping[str, str] | None = None, gpu_grants: str | None = None) -> DockerBackend:
        return DockerBackend(self.engine, outputs_root=self.host.settings.get("outputs_root"), data_mounts=data_mounts,
                             gpu_grants=gpu_grants)

    def close(self) -> None:
        try:
            self._stack.close()
        except Exception:
            pass


_SESSIONS: dict[str, _Session] = {}
_LOCK = threading.Lock()


def _runtime(request: JobRequest) -> "HostRuntime":
    """The job's ``runtime`` section, the host backend's own."""
    from gpujob.spec.runtime import HostRuntime  # the spec is loaded: no import cost here

    return runtime_of(request, HostRuntime)


def _session(host: "Host", hosts: HostSource) -> _Session:
    with _LOCK:
        s = _SESSIONS.get(host.name)
        if s is not None and s.host.ip == host.ip and s.conn.is_alive():
            return s
        if s is not None:
            s.close()
        s = _SESSIONS[host.name] = _Session(host, hosts)
        return s


@atexit.register
def _close_all() -> None:
    for s in list(_SESSIONS.values()):
        s.close()
    _SESSIONS.clear()


class HostBackend(Backend):
    name = "host"
    capabilities = Capabilities(
        outputs_on_this_machine=False,  # on the rented host, until pulled
        provider_priced=True,           # the instance type's price, once the host is chosen
        rents_hosts=True,
    )

    def __init__(self, hosts: HostSource | None = None) -> None:
        """``hosts``: where hosts come from; a backend without it can only render."""
        self._hosts = hosts

    @classmethod
    def made(cls, hosts: HostSource | None) -> "HostBackend":
        return cls(hosts=hosts)

    @property
    def hosts(self) -> HostSource:
        if self._hosts is None:
            raise RuntimeError("the host backend was made without a HostSource; it can only render")
        return self._hosts

    # ------------------------------------------------------------------ render / submit

    def render(self, request: JobRequest) -> str:
        rt = _runtime(request)
        chosen = ""
        if rt.host:
            where = f"host {rt.host}"
        elif not rt.host_type:
            where, chosen = _render_choice(rt, request.spec.resources.gpu_type or "", request.gpus)
        else:
            where = (f"an idle {rt.host_type} host of yours, else a new one launched in "
                     f"{rt.region or 'the first region with capacity'} (terminates itself after "
                     f"{rt.host_idle} idle; at most {rt.host_max_lifetime} after launch)")
        fs = rt.filesystem
        outputs = f"/lambda/nfs/{fs}/gpujob/outputs/{request.job_id}" if fs else None
        p = cplan.plan(self._labelled(request, rt.host or "<chosen at submit>"), local=False, image=rt.image,
                       outputs_on_host=outputs, gpu_grants=HostLayout().gpu_grants_dir if request.gpus else None)
        data = [_render_folder(f, fs) for f in local_folders(request.spec, request.workdir)]
        return f"backend: host ({where})\n" + chosen + cplan.describe(p, request, "the host, over SSH") \
            + ("\ndata uploaded to the host before the job starts:\n" + "\n".join(data) if data else "")

    @staticmethod
    def _labelled(request: JobRequest, host_name: str) -> JobRequest:
        """The labels the host's agent reads: the job's hung-after minutes (limits.idle_minutes)."""
        idle_minutes = (request.idle_s or 0) / 60 or 15
        labels = {**request.labels, IDLE_MINUTES_LABEL: f"{idle_minutes:g}", HOST_LABEL: host_name}
        return replace(request, labels=labels)

    def preflight(self, request: JobRequest) -> None:
        """Refuse a job that asks for more GPUs than its host's instance type has, before a host is
        launched (and billed) for it."""
        local_folders(request.spec, request.workdir)        # an empty folder is refused here
        rt = _runtime(request)
        if not rt.host and not rt.host_type:
            self.hosts.choose(rt, request.spec.resources.gpu_type or "", request.gpus)
            return
        known = self.hosts.gpus_for(rt) if request.gpus else None
        if known and request.gpus > known[1]:
            itype, count = known
            raise UserError(f"resources.gpus: the job asks for {request.gpus} GPU{'s' if request.gpus > 1 else ''}, "
                            f"but a {itype} host has {count}",
                            hint="lower resources.gpus, or pick an instance type with that many GPUs for "
                                 "runtime.host_type (`gpujob host types` lists them)")

    def submit(self, request: JobRequest, secrets: Mapping[str, str]) -> dict:
        host = self.hosts.for_job(_runtime(request), gpu_type=request.spec.resources.gpu_type, gpus=request.gpus)
        session = _session(host, self.hosts)
        lay = self.hosts.layout(host)
        claim = f"{lay.uploads_dir}/submit-{request.job_id}"
        # Tell the agent a job is on its way (it counts as activity), so the host cannot be
        # terminated between our choice of it and the container's start.
        session.conn.put_file(claim, json.dumps({"job_id": request.job_id, "at": time.time()}).encode(), mode=0o644)
        try:
            outputs_root = host.settings.get("outputs_root")
            if outputs_root:
                session.conn.run(f"mkdir -p {shlex.quote(f'{outputs_root}/{request.job_id}')}", timeout_s=60)
            request, mounts = self._upload_data(session, host, request)
            if request.spec.resources.price_per_hour is None:  # its budget is running time at this host's price
                request = replace(request, price_per_hour=host.price_per_hour)
            grants = self._gpu_grants(session, host, lay) if request.gpus else None
            handle = session.docker(mounts, grants).submit(self._labelled(request, host.name), secrets)
        finally:
            try:
                session.conn.run(f"rm -f {shlex.quote(claim)}", timeout_s=30, check=False)
            except GpujobError:
                pass
        on_engine = HostHandle.read(handle)
        return on_engine.model_copy(update={"engine": on_engine.host, "host": host.name,
                                            "price_cents_per_hour": host.price_cents_per_hour}).dump()

    @staticmethod
    def _gpu_grants(session: _Session, host: "Host", lay: "HostLayout") -> str:
        """The host's GPU grants folder (its agent's queue writes there); a host set up by an older gpujob
        has none, nor an agent that runs the queue."""
        where = lay.gpu_grants_dir
        if session.conn.run(f"test -d {shlex.quote(where)}", timeout_s=30, check=False).exit_code != 0:
            raise UserError(f"host {host.name} has no GPU queue yet (it was set up by an older gpujob)",
                            hint=f"update its agent with `gpujob host up --name {host.name}`, then submit again")
        return where

    def _upload_data(self, session: _Session, host: "Host", request: JobRequest) -> tuple[JobRequest, dict[str, str]]:
        """The job's local folders uploaded to the host (:mod:`gpujob.hosts.upload`; what is there
        already is not sent again), and the request with the spec the container reads pointing at
        them, with their mounts (host folder -> container path)."""
        folders = local_folders(request.spec, request.workdir)
        if not folders:
            return request, {}
        root = _data_root(host, self.hosts.layout(host))
        up.ensure_dir(session.conn, root)
        where, mounts = {}, {}
        for folder in folders:
            self.hosts.say(f"hashing {folder.path} ({', '.join(folder.keys)})")
            try:
                manifest = up.build_manifest(folder.path)
                for note in manifest.notes:
                    self.hosts.say(f"data {folder.path}: {note}")
                with self.hosts.transfer(f"uploading {folder.path.name} to host {host.name}") as progress:
                    done = up.upload(up.SshRemote(session.conn), manifest, root, on_progress=progress)
            except up.UploadError as exc:
                raise GpujobError(exc.message, hint=exc.hint) from None
            self.hosts.say(f"data {folder.path}: " + (
                f"already on host {host.name} (content {done.id[:12]}), nothing sent" if done.cached else
                f"{done.sent_files} files sent ({done.sent_bytes} bytes), {len(done.skipped)} already there, "
                f"checked by sha256 on the host"))
            target = in_container(done.id)
            mounts[done.path] = target          # the host's engine runs there: the same path
            where.update({key: target for key in folder.keys})
        return replace(request, spec=rewritten(request.spec, where)), mounts

    # ------------------------------------------------------------------ status

    def status(self, job: "Job") -> Observed | None:
        handle = HostHandle.of(job)
        if not handle.container_id or not handle.host:
            return None
        host = self.hosts.find(handle.host)
        if host is None or not host.active:
            if job.job_dir.joinpath(LOG_NAME).exists() and not job.active:
                return None
            why = f" ({host.reason})" if host is not None and host.reason else ""
            return Observed("failed", reason=f"its host {handle.host} was terminated{why} before gpujob "
                                             "saw the job end; outputs written to a persistent file system are there")
        try:
            session = _session(host, self.hosts)
            seen = session.docker().status(job)
        except GpujobError as exc:
            if not job.active:
                return None
            return Observed(job.status, reason=f"cannot reach host {host.name} right now: {exc.message}")
        if seen is not None and seen.status == "queued" and handle.gpu_queue:
            place = _queue_place(session, self.hosts.layout(host), job.id, host.name)
            seen.reason = place["words"] if place else f"in host {host.name}'s GPU queue; its agent has not placed it yet"
            seen.queue = place if place and isinstance(place.get("position"), int) else None
        if seen is not None and seen.status == "failed":
            hung = _hung_record(session, self.hosts.layout(host), job.id)
            if hung:
                seen.reason = f"stopped as hung by the host's agent: {hung.get('reason', 'no progress events')}"
        return seen

    # ------------------------------------------------------------------ logs

    def logs(self, job: "Job", *, follow: bool = False, tail: int | None = None,
             all_workers: bool = False) -> Iterator[str]:
        handle = HostHandle.of(job)
        if not handle.container_id or not handle.host:
            return
        saved = job.job_dir / LOG_NAME
        host = self.hosts.find(handle.host)
        if host is None or not host.active:
            if saved.exists():
                yield from read_saved_log(saved, tail)
                return
            raise GpujobError(f"job {job.id}'s host {handle.host} is gone and its log was not saved",
                              hint="outputs written to the host's persistent file system are kept there")
        if saved.exists() and not job.active:
            yield from read_saved_log(saved, tail)
            return
        yield from _session(host, self.hosts).docker().logs(job, follow=follow, tail=tail, all_workers=all_workers)

    # ------------------------------------------------------------------ cancel / list / cleanup

    def pull(self, job: "Job", dest, only: str, progress=None):
        """A finished job's outputs, copied back to ``output.dir`` here; a running one's from its container
        on the host, over the SSH tunnel to its engine (:mod:`gpujob.backends.docker.pull`)."""
        here = Path(job.output_dir) if job.output_dir and "://" not in job.output_dir else None
        if here is not None and not job.active and here.is_dir():
            return outputs.pull_dir(here, dest, only, job.active, progress)
        host = self._host_of(job)
        if host is None:
            raise UserError(f"job {job.id}'s host is gone and its outputs were not copied back here",
                            hint="set output.dir to a bucket (s3://, gs://, az://) so outputs outlive the host")
        return _session(host, self.hosts).docker().pull(job, dest, only, progress)

    def cancel(self, job: "Job", *, grace_s: float = 10.0) -> None:
        host = self._host_of(job)
        if host is None:
            return
        _session(host, self.hosts).docker().cancel(job, grace_s=grace_s)

    def _host_of(self, job: "Job") -> "Host | None":
        """The active host the job's container is on; None when it has none (or the host is gone)."""
        handle = HostHandle.of(job)
        host = self.hosts.find(handle.host) if handle.host and handle.container_id else None
        return host if host is not None and host.active else None

    def list(self) -> list[str]:
        ids: set[str] = set()
        for host in self.hosts.active():
            if host.state != "ready":
                continue
            try:
                ids.update(_session(host, self.hosts).docker().list())
            except GpujobError:
                continue
        return sorted(ids)

    def cleanup(self, job: "Job") -> None:
        host = self._host_of(job)
        if host is not None:
            _session(host, self.hosts).docker().cleanup(job)

    # ------------------------------------------------------------------ price

    def provider_price(self, request: JobRequest) -> tuple[float, str] | None:
        """The price of the host the job would run on, from the provider: the named host's, the instance
        type's, or for a job that names only its GPU the type chosen now; None when the API cannot say."""
        from gpujob.hosts import lambda_api

        rt = _runtime(request)
        if rt.host:
            host = self._hosts.find(rt.host) if self._hosts is not None else None
            if host is not None and host.active:
                return host.price_per_hour, f"host {host.name} ({host.instance_type}): its provider's price"
            if not rt.host_type:
                return None
        try:
            types = lambda_api.LambdaClient.from_environment().instance_types()
            if rt.host_type:
                found = types.get(rt.host_type)
                return (found.price_per_hour, f"{found.name}: Lambda's price") if found is not None else None
            allowed = [rt.region] if rt.region else []
            choice = choose_type(types, request.spec.resources.gpu_type or "", request.gpus, allowed)
        except (GpujobError, NoMatchingType):
            return None
        return choice.itype.price_per_hour, f"{choice.itype.name}: Lambda's price, the cheapest that fits now"


def _data_root(host: "Host", layout: "HostLayout") -> str:
    """Where uploaded data is kept on the host: beside the outputs on its persistent file system
    (``/lambda/nfs/<fs>/gpujob/data``), else gpujob's data folder there."""
    outputs_root = host.settings.get("outputs_root")
    return f"{outputs_root.rstrip('/').rsplit('/', 1)[0]}/data" if outputs_root else layout.data_dir


def _render_choice(rt: "HostRuntime", gpu_type: str, gpus: int) -> tuple[str, str]:
    """What `render` says about the type a job that names only a GPU model would get: the rule, and
    the choice it makes now (lines), when the API can be asked."""
    from gpujob.hosts import lambda_api

    need = max(gpus, 1)
    allowed = [rt.region] if rt.region else []
    rule = (f"the cheapest instance type with {need}+ {gpu_type} GPU{'s' if need > 1 else ''} that has capacity"
            + (f" in {', '.join(allowed)}" if allowed else "") + "; an idle ready host of yours that fits is reused first")
    try:
        client = lambda_api.LambdaClient.from_environment()
        choice = choose_type(client.instance_types(), gpu_type, gpus, allowed)
    except NoMatchingType as exc:
        raise UserError(exc.message, hint=exc.hint) from None
    except GpujobError as exc:
        return rule, (f"host type: chosen at submit, from the prices and capacity then (not looked up now: "
                      f"{exc.message}; `gpujob host types --available` lists them)\n")
    passed = "".join(f"  passed over: {line}\n" for line in choice.passed_over)
    return rule, f"host type: {choice.describe()}\n{passed}"


def _render_folder(folder, fs: str | None) -> str:
    files, size = up.folder_size(folder.path)
    where = f"/lambda/nfs/{fs}/gpujob/data/<sha256>" if fs else "gpujob's data folder on the host"
    return (f"  {folder.path} ({', '.join(folder.keys)}): {files} files, {size} bytes; kept by content hash in "
            f"{where} (sent once, resumable), mounted read-only at {DATA_MOUNT}/<sha256> "
            "and the spec the job reads points there")


def _queue_place(session: _Session, layout: "HostLayout", job_id: str, host_name: str) -> dict | None:
    """Where a queued job stands in its host's GPU queue (position, words), as the host's agent last
    wrote it; None before the agent has placed it."""
    try:
        raw = session.conn.read_file(layout.gpu_queue_path)
        wait = ((json.loads(raw) if raw else {}).get("jobs") or {}).get(job_id, {}).get("wait") or {}
    except (GpujobError, ValueError, AttributeError):
        return None
    if not isinstance(wait, dict) or not wait.get("words"):
        return None
    return {**wait, "words": f"{wait['words']} on host {host_name}"}


def _hung_record(session: _Session, layout: "HostLayout", job_id: str) -> dict | None:
    try:
        raw = session.conn.read_file(f"{layout.hung_dir}/{job_id}.json")
        return json.loads(raw) if raw else None
    except (GpujobError, ValueError):
        return None
