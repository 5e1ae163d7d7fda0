"""Backends, routed by name. Each is imported only when a job uses it.

| name       | where the job runs                                  | status        |
|------------|-----------------------------------------------------|---------------|
| local      | a detached process group on this machine            | available     |
| docker     | a container on a Docker engine (local or ssh://)    | available     |
| kubernetes | a batch/v1 Job on a cluster                         | available     |
| host       | a rented GPU host (Lambda-style), docker over ssh   | available     |
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from gpujob.backends.base import UNKNOWN_CAPABILITIES, Backend, Capabilities, JobRequest, JobStore, Observed
from gpujob.errors import BackendUnavailable, UserError

if TYPE_CHECKING:
    from gpujob.backends.host import HostSource

NAMES = ("local", "docker", "kubernetes", "host")
_IMPLEMENTED = {
    "local": ("gpujob.backends.local", "LocalBackend"),
    "docker": ("gpujob.backends.docker.backend", "DockerBackend"),
    "kubernetes": ("gpujob.backends.kubernetes.backend", "KubernetesBackend"),
    "host": ("gpujob.backends.host", "HostBackend"),
}
_RENDER_ONLY: set[str] = set()

__all__ = ["Backend", "Capabilities", "JobRequest", "JobStore", "Observed", "NAMES", "capabilities", "get_backend",
           "price_tables"]


def get_backend(name: str, *, render_only: bool = False, hosts: "HostSource | None" = None) -> Backend:
    """The backend called ``name``; ``render_only`` for a dry run, which more backends support.
    ``hosts``: where the host backend finds its hosts (the layer above hands it down; the other
    backends need nothing, and a dry run needs no host)."""
    if name not in NAMES:
        raise UserError(f"unknown backend {name!r}; one of: {', '.join(NAMES)}")
    if name not in _IMPLEMENTED:
        raise BackendUnavailable(name, "not available in this version of gpujob yet")
    if name in _RENDER_ONLY and not render_only:
        raise BackendUnavailable(name, "this version of gpujob can only render its manifests "
                                       f"(gpujob render SPEC --backend {name}); submitting comes next")
    return _class(name).made(hosts)


def _class(name: str) -> type[Backend]:
    module, cls = _IMPLEMENTED[name]
    return getattr(importlib.import_module(module), cls)


def backend_class(name: str) -> type[Backend] | None:
    """The class of backend ``name`` (imported on first use), to ask what it declares without making
    one; None for a name this version does not implement (a record rebuilt from a damaged folder)."""
    return _class(name) if name in _IMPLEMENTED else None


def capabilities(name: str) -> Capabilities:
    """What backend ``name`` declares it does (:class:`~gpujob.backends.base.Capabilities`); for a name
    this version does not implement, :data:`~gpujob.backends.base.UNKNOWN_CAPABILITIES`."""
    found = backend_class(name)
    return found.capabilities if found is not None else UNKNOWN_CAPABILITIES


def price_tables() -> dict[str, bool]:
    """The backends that have an entry in the user's price table, each True when that entry may be keyed
    by the backend's price scope first (:attr:`Capabilities.price_table_by_scope`)."""
    return {name: capabilities(name).price_table_by_scope for name in NAMES if not capabilities(name).provider_priced}
