"""Backends, routed by name. Each is imported only when a job uses it.

| name       | where the job runs                                  | status        |
|------------|-----------------------------------------------------|---------------|
| local      | a detached process group on this machine            | available     |
| docker     | a container on a Docker engine (local or ssh://)    | planned       |
| kubernetes | a batch/v1 Job on a cluster                         | planned       |
| host       | a rented GPU host (Lambda-style), via docker/ssh    | planned       |
"""

from __future__ import annotations

import importlib

from gpujob.backends.base import Backend, JobRequest, Observed
from gpujob.errors import BackendUnavailable, UserError

NAMES = ("local", "docker", "kubernetes", "host")
_IMPLEMENTED = {"local": ("gpujob.backends.local", "LocalBackend")}

__all__ = ["Backend", "JobRequest", "Observed", "NAMES", "get_backend"]


def get_backend(name: str) -> Backend:
    if name not in NAMES:
        raise UserError(f"unknown backend {name!r}; one of: {', '.join(NAMES)}")
    if name not in _IMPLEMENTED:
        raise BackendUnavailable(name, "not available in this version of gpujob yet")
    module, cls = _IMPLEMENTED[name]
    return getattr(importlib.import_module(module), cls)()
