"""The host a job runs on, for the host backend: the named one, else an idle ready host of the
type asked for, else a new one; and how many GPUs that host has, known before it is launched.
:class:`RegistryHosts` hands these down to the backend (:class:`gpujob.backends.host.HostSource`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from gpujob.errors import GpujobError, UserError
from gpujob.fleet.access import Say, api, connect, layout_of, notice
from gpujob.fleet.launch import UpRequest, up
from gpujob.fleet.watch import sync

if TYPE_CHECKING:
    from gpujob.hosts.layout import HostLayout
    from gpujob.hosts.ssh import HostConnection
    from gpujob.records import Host
    from gpujob.registry import Registry
    from gpujob.spec.runtime import HostRuntime


def host_for_job(registry: "Registry", runtime: "HostRuntime", *, say: Say = notice) -> "Host":
    """The host a job runs on: the one named in runtime.host, else an idle ready host of
    runtime.host_type, else a new one."""
    from gpujob.spec.units import parse_duration

    name = runtime.host
    if not name and not runtime.host_type:
        raise UserError("the host backend needs runtime.host (a host from `gpujob host up`) or runtime.host_type "
                        "(an instance type to reuse or launch)",
                        hint="e.g. --set runtime.host=NAME, or --set runtime.host_type=gpu_1x_a10")
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
    req = UpRequest(instance_type=itype, region=runtime.region, name=name,
                    idle_minutes=parse_duration(runtime.host_idle) / 60,
                    max_lifetime_s=float(parse_duration(runtime.host_max_lifetime)),
                    filesystem=runtime.filesystem, image=runtime.image)
    return up(registry, req, say=say)


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

    def for_job(self, runtime: "HostRuntime") -> "Host":
        return host_for_job(self.registry, runtime, say=notice)

    def gpus_for(self, runtime: "HostRuntime") -> tuple[str, int] | None:
        return job_host_gpus(self.registry, runtime)

    def connect(self, host: "Host") -> "HostConnection":
        return connect(host)

    def layout(self, host: "Host") -> "HostLayout":
        return layout_of(host)
