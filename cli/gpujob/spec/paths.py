"""Which values of a spec name a directory on this machine rather than a Hugging Face Hub id.

One rule for the runner (a dataset that is not there is "directory not found", not a Hub download)
and for the backends whose jobs cannot see this machine's files (kubernetes, a remote Docker engine):
a value is a local path when it exists here, or when it is written like one (``./``, ``../``, ``/``,
``~``, a trailing ``/``, a backslash, a drive letter, or more than one ``/``: Hub ids have one).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

from gpujob.storage.uri import is_uri

if TYPE_CHECKING:
    from .models import JobSpec


def looks_like_path(name: str) -> bool:
    """Written like a path, whether or not it exists (``data/cv-corpus-el/``, ``./x``, ``/data/x``)."""
    return (name.startswith((".", "/", "~", "\\")) or name.endswith(("/", "\\")) or "\\" in name
            or re.match(r"^[A-Za-z]:[\\/]", name) is not None or name.count("/") > 1)


def is_local_path(name: str) -> bool:
    """A directory or file of this machine: it exists here, or is written like a path."""
    if "://" in name:
        return False
    try:
        exists = Path(name).expanduser().exists()
    except (OSError, RuntimeError, ValueError):  # a name too long, a ~user that does not exist
        exists = False
    return exists or looks_like_path(name)


def local_paths(spec: "JobSpec") -> list[tuple[str, str]]:
    """``(key, value)`` of every local path the job reads: ``model.checkpoint`` and each
    ``data.train[i].dataset`` / ``data.eval[i].dataset`` (train and evaluate jobs; a command job's
    data is its own business)."""
    if spec.kind == "command":
        return []
    found = [("model.checkpoint", spec.model.checkpoint)]
    for section in ("train", "eval"):
        found += [(f"data.{section}[{i}].dataset", s.dataset) for i, s in enumerate(getattr(spec.data, section) or [])]
    return [(key, value) for key, value in found if is_local_path(value)]


def storage_uris(spec: "JobSpec") -> list[tuple[str, str]]:
    """``(key, value)`` of every object-store URI a train/evaluate job reads or writes: ``model.checkpoint``,
    each dataset, and ``output.dir`` (validated already: see :func:`gpujob.storage.parse_uri`)."""
    if spec.kind == "command":
        return []
    found = [("model.checkpoint", spec.model.checkpoint)]
    for section in ("train", "eval"):
        found += [(f"data.{section}[{i}].dataset", s.dataset) for i, s in enumerate(getattr(spec.data, section) or [])]
    found.append(("output.dir", spec.resolved_output_dir()))
    return [(key, value) for key, value in found if is_uri(value)]
