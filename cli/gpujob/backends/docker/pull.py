"""``gpujob pull`` for a Docker job: its outputs from wherever they are now.

- On an engine on this machine, or once the job has ended and its outputs were copied back to
  ``output.dir`` here: that folder (:func:`gpujob.backends.outputs.pull_dir`).
- On a remote engine (``DOCKER_HOST`` ssh:// or tcp://, a rented host through its SSH tunnel) while
  the container is there: the container's output folder as a tar stream (the Engine API's
  ``GET /containers/{id}/archive``, what ``docker cp`` uses; a running container's too), written to
  ``dest/.gpujob-pull.tar.part`` as it comes (progress: bytes received), unpacked (regular files only,
  nothing outside) into a scratch folder beside ``dest``, from which :func:`pull_dir` picks what
  ``--only`` asks for (complete checkpoints only), size-checks and moves it into place. Files already in
  ``dest`` at their size are kept; the stream itself is sent whole each time (the API has no ranges).
"""

from __future__ import annotations

import shutil
import tarfile
from pathlib import Path
from typing import Callable

from gpujob.backends import outputs
from gpujob.errors import UserError

TAR_PART = ".gpujob-pull.tar.part"
SCRATCH = ".gpujob-pull-scratch"


def from_container(container, src: str, dest: Path, only: str, active: bool,
                   progress: Callable[[int, int], None] | None = None) -> outputs.Pulled:
    """The outputs in ``src`` inside ``container`` (a docker SDK Container) into ``dest``."""
    dest.mkdir(parents=True, exist_ok=True)
    tar_path, scratch = dest / TAR_PART, dest / SCRATCH
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        stream, _ = container.get_archive(src.rstrip("/"))
        received = 0
        with open(tar_path, "wb") as sink:
            for chunk in stream:
                sink.write(chunk)
                received += len(chunk)
                if progress:
                    progress(received, 0)
        _unpack(tar_path, scratch)
        result = outputs.pull_dir(scratch, dest, only, active, progress)
        result.source = f"container {getattr(container, 'name', '?')}:{src}"
        return result
    finally:
        tar_path.unlink(missing_ok=True)
        shutil.rmtree(scratch, ignore_errors=True)


def _unpack(tar_path: Path, scratch: Path) -> None:
    """The archive's regular files (its top folder, ``src``'s own name, stripped) into ``scratch``."""
    scratch.mkdir(parents=True)
    with tarfile.open(tar_path, "r:") as tar:
        members = []
        for m in tar:
            name = m.name.split("/", 1)[1] if "/" in m.name else ""
            if not name or not (m.isfile() or m.isdir()) or name.startswith("/") or ".." in name.split("/"):
                continue                # links, devices, and names that would land outside: never unpacked
            m.name = name
            members.append(m)
        tar.extractall(scratch, members=members, filter="data")


def not_there(job_id: str) -> UserError:
    return UserError(f"job {job_id}'s container is gone and its outputs were not copied back here",
                     hint="outputs of a finished job are in its output.dir; set output.dir to a bucket to pull from anywhere")
