"""The host a job runs on, for the host backend: the named one, else an idle ready host of the
type asked for, else a new one; with only a GPU model asked for, an idle host of yours with it, else
the cheapest type with it that has capacity (:mod:`gpujob.hosts.choose`); and how many GPUs that
host has, known before it is launched.
:class:`RegistryHosts` hands these down to the backend (:class:`gpujob.backends.host.HostSource`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpujob.errors import GpujobError, UserError
from gpujob.fleet.access import Say, api, connect, layout_of, notice
from gpujob.fleet.launch import UpRequest, up
from gpujob.fleet.transfer import transfer_progress
from gpujob.fleet.watch import sync
from gpujob.hosts.choose import NoMatchingType, choose_type, matching_hosts

if TYPE_CHECKING:
    from gpujob.hosts.choose import TypeChoice
    from gpujob.hosts.layout import HostLayout
    from gpujob.hosts.ssh import HostConnection
    from gpujob.records import Host
    from gpujob.registry import Registry
    from gpujob.spec.runtime import HostRuntime


def host_for_job(registry: "Registry", runtime: "HostRuntime", *, gpu_type: str | None = None, gpus: int = 0,
                 say: Say = notice) -> "Host":
    """The host a job runs on: the one named in runtime.host, else an idle ready host of
    runtime.host_type, else a new one; with neither, one for ``gpu_type`` (:func:`_host_for_gpu`)."""
    name = runtime.host
    if not name and not runtime.host_type:
        if gpu_type:
            return _host_for_gpu(registry, runtime, gpu_type, gpus, say)
        raise UserError("the host backend needs runtime.host (a host from `gpujob host up`), runtime.host_type "
                        "(an instance type to reuse or launch) or resources.gpu_type",
                        hint="e.g. --set runtime.host=NAME, --set runtime.host_type=gpu_1x_a10, "
                             "or --set resources.gpu_type=H100")
    if name:
        host = registry.find_host(name)
        if host is None or not host.active:
            if host is None and not runtime.host_type:
                raise UserError(f"no host named {name!r}",
                                hint=f"start it: gpujob host up --type TYPE --name {name}, or see `gpujob host list`")
            if host is not None and not runtime.host_type:
                raise UserError(f"host {name} is {host.state}" + (f" ({host.reason})" if host.reason else ""),
                                hint=f"start a new one: gpujob host up --type {host.instance_type} --name {name}")
        elif host.state != "ready":
            return up(registry, UpRequest(instance_type=None, name=name, image=runtime.image), say=say)
        else:
            return host
    itype = runtime.host_type
    if not name:
        sync(registry)
        for host in registry.list_hosts(active_only=True):
            if host.state == "ready" and host.instance_type == itype and not registry.jobs_on_host(host.name):
                say(f"reusing idle host {host.name} ({host.instance_type})")
                return host
    return up(registry, _up_request(runtime, itype, runtime.region, name), say=say)


def _up_request(runtime: "HostRuntime", itype: str, region: str | None, name: str | None) -> UpRequest:
    from gpujob.spec.units import parse_duration

    return UpRequest(instance_type=itype, region=region, name=name,
                     idle_minutes=parse_duration(runtime.host_idle) / 60,
                     max_lifetime_s=float(parse_duration(runtime.host_max_lifetime)),
                     filesystem=runtime.filesystem, image=runtime.image)


def _host_for_gpu(registry: "Registry", runtime: "HostRuntime", gpu_type: str, gpus: int, say: Say) -> "Host":
    """An idle ready host of yours whose type has ``gpu_type`` GPUs, at least ``gpus`` (the cheapest
    such), else a new one of the cheapest type that fits and has capacity (:func:`choose_for_job`)."""
    client = api()
    types = client.instance_types()
    sync(registry, client)
    idle = [h for h in registry.list_hosts(active_only=True)
            if h.state == "ready" and not registry.jobs_on_host(h.name)]
    for host in matching_hosts(idle, types, gpu_type, gpus):
        say(f"reusing idle host {host.name} ({host.instance_type}, ${host.price_per_hour:.2f}/h) for {gpu_type}")
        return host
    choice = choose_for_job(runtime, gpu_type, gpus, client=client, types=types)
    say(f"cheapest {gpu_type} type with capacity: {choice.describe()}")
    return up(registry, _up_request(runtime, choice.itype.name, choice.region, None), say=say)


def choose_for_job(runtime: "HostRuntime", gpu_type: str, gpus: int, *, client=None, types=None) -> "TypeChoice":
    """The cheapest type with ``gpu_type`` GPUs that has capacity in the allowed regions
    (``runtime.region`` when set, and the file system's region when there is one).
    No such type: a UserError listing the types with that GPU and where they have capacity."""
    client = client or api()
    types = types if types is not None else client.instance_types()
    allowed = [runtime.region] if runtime.region else []
    if runtime.filesystem:
        fs = next((f for f in client.file_systems() if f.get("name") == runtime.filesystem), None)
        where = fs.get("region") if fs else None
        where = where if isinstance(where, str) or where is None else where.get("name")
        if where and allowed and where not in allowed:
            raise UserError(f"runtime.filesystem: {runtime.filesystem} is in {where}, not runtime.region {allowed[0]}",
                            hint=f"set runtime.region: {where}, or leave it out")
        allowed = [where] if where else allowed
    try:
        return choose_type(types, gpu_type, gpus, allowed)
    except NoMatchingType as exc:
        raise UserError(exc.message, hint=exc.hint) from None


def job_host_gpus(registry: "Registry", runtime: "HostRuntime") -> tuple[str, int] | None:
    """The instance type a job with this ``runtime`` section runs on, and its GPUs, when that is known
    before any host is launched for it: recorded with the named host at its launch, else from the
    API's list of types. None when it is not known (no key, the API unreachable): the job goes on."""
    name, itype = runtime.host, runtime.host_type
    if name:
        host = registry.find_host(name)
        if host is not None and host.active:
            if host.settings.get("gpus") is not None:
                return host.instance_type, int(host.settings["gpus"])
            itype = host.instance_type
    if not itype:
        return None
    try:
        found = api().instance_types().get(itype)
    except GpujobError:
        return None
    return (itype, found.gpus) if found is not None else None




class RegistryHosts:
    """The hosts in ``registry``, as the host backend asks for them."""

    def __init__(self, registry: "Registry") -> None:
        self.registry = registry

    def find(self, name: str) -> "Host | None":
        return self.registry.find_host(name)

    def active(self) -> list["Host"]:
        return self.registry.list_hosts(active_only=True)

    def for_job(self, runtime: "HostRuntime", *, gpu_type: str | None = None, gpus: int = 0) -> "Host":
        return host_for_job(self.registry, runtime, gpu_type=gpu_type, gpus=gpus, say=notice)

    def choose(self, runtime: "HostRuntime", gpu_type: str, gpus: int) -> "TypeChoice":
        return choose_for_job(runtime, gpu_type, gpus)

    def say(self, line: str) -> None:
        notice(line)

    def transfer(self, label: str):
        return transfer_progress(label)

    def gpus_for(self, runtime: "HostRuntime") -> tuple[str, int] | None:
        return job_host_gpus(self.registry, runtime)

    def connect(self, host: "Host") -> "HostConnection":
        return connect(host)

    def layout(self, host: "Host") -> "HostLayout":
        return layout_of(host)
