"""Local paths in a spec where the job cannot see this machine's files.

A Kubernetes pod, or a container on a remote Docker engine (``DOCKER_HOST`` ``ssh://`` or
``tcp://``), has nothing of this machine mounted. On Kubernetes a local *folder* is uploaded at
submit (:mod:`gpujob.backends.kubernetes.staging`: to ``runtime.stage``, or onto the cache PVC
through a transfer pod), so only a path that is not a folder here is left (a file, or nothing); on
a remote Docker engine gpujob has no way to upload (the host backend does upload). Such a path
would fail there only after a GPU was found and the image pulled. So ``validate`` and ``render``
say so, and ``submit`` refuses it (exit 2), naming the key and what to do instead. ``/cache/...``
is fine on both: the job's cache volume (kubernetes: the PVC ``runtime.cache_pvc``; docker: the
engine's ``gpujob-hf-cache`` volume).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from gpujob.backends.docker.engine import current_host, is_local
from gpujob.errors import UserError

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

CACHE_DIR = "/cache"  # where both backends mount the job's cache volume
STAGED = {"kubernetes"}  # backends that upload a local folder at submit

# Set by the tests' Kubernetes emulator, whose kubelet runs every pod on this machine; users need it not.
PODS_SEE_THIS_MACHINE = "GPUJOB_K8S_PODS_SEE_THIS_MACHINE"

HINTS = {
    "kubernetes": ("a folder on this machine is uploaded at submit (to the bucket prefix runtime.stage when set, "
                   "else onto the PVC runtime.cache_pvc, mounted at /cache, through a transfer pod): name the "
                   "folder that holds the data; or name /cache/<dir> already on the PVC, a bucket URI, or a "
                   "Hugging Face Hub id"),
    "docker": ("push it to the Hugging Face Hub and name the dataset's id; or copy it into a volume on that "
               "engine (gpujob-hf-cache is mounted at /cache) and name /cache/<dir>; or run on a rented host "
               "(runtime.backend: host), which uploads it"),
}


def where_job_runs(backend: str, docker_host: str | None = None) -> str | None:
    """Where a job of ``backend`` runs when that place cannot see this machine's files; None when it can
    (local, a docker engine on this machine) or the backend brings the files along (host)."""
    if backend == "kubernetes":
        return None if os.environ.get(PODS_SEE_THIS_MACHINE) else "the Kubernetes pod"
    if backend == "docker":
        host = docker_host or current_host()
        return None if is_local(host) else f"a container on the Docker engine at {host}"
    return None


def problems(spec: "JobSpec", backend: str, docker_host: str | None = None, workdir: str | None = None) -> list[str]:
    """One ``key: message`` line per local path of ``spec`` that a job of ``backend`` will not find
    (on a backend that stages, a folder here, relative to ``workdir``, is found: it is uploaded)."""
    from gpujob.spec.paths import local_paths

    where = where_job_runs(backend, docker_host)
    if where is None:
        return []
    base = Path(workdir or os.getcwd())
    return [f"{key}: {value} is a path on this machine; it will not exist in {where}"
            + (" (and it is not a folder here, so it cannot be uploaded)" if backend in STAGED else "")
            for key, value in local_paths(spec)
            if value.rstrip("/") != CACHE_DIR and not value.startswith(CACHE_DIR + "/")
            and not (backend in STAGED and (base / Path(value).expanduser()).is_dir())]


def hint(backend: str) -> str:
    return HINTS.get(backend, HINTS["docker"])


def refuse(spec: "JobSpec", backend: str, spec_path: str | None, docker_host: str | None = None,
           workdir: str | None = None) -> None:
    """Raise a UserError (exit 2) when the job names local paths it will not find."""
    found = problems(spec, backend, docker_host, workdir)
    if found:
        lines = "\n".join(f"  {p}" for p in found)
        raise UserError(f"{spec_path or 'the spec'}: the job would not find its data, so nothing was submitted:\n"
                        f"{lines}", hint=hint(backend))
