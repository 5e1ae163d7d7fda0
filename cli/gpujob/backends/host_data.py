"""Local folders a host job names, and the spec the container reads once they are on the host.

A ``data.train[*].dataset``, ``data.eval[*].dataset`` or ``model.checkpoint`` that is a folder on
this machine (relative paths from the directory gpujob runs in, as the runner resolves them) is
uploaded to the host before the job starts (:mod:`gpujob.hosts.upload`), mounted read-only in the
container at ``/gpujob/data/<id>``, and that path replaces the local one in the spec the job reads.
Hub ids and paths that are not folders here are left as they are.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from gpujob import datatree
from gpujob.errors import UserError

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

DATA_MOUNT = "/gpujob/data"     # in the container


@dataclass
class LocalFolder:
    path: Path                                  # absolute, on this machine
    keys: list[str] = field(default_factory=list)   # the spec keys that name it


def local_folders(spec: "JobSpec", workdir: str) -> list[LocalFolder]:
    """The folders on this machine the spec names, each once, in the order the spec names them."""
    found: dict[Path, LocalFolder] = {}

    def look(value: str, key: str) -> None:
        path = (Path(workdir) / Path(value).expanduser()).resolve()
        if path.is_dir():
            found.setdefault(path, LocalFolder(path)).keys.append(key)

    for group in ("train", "eval"):
        for i, source in enumerate(getattr(spec.data, group)):
            look(source.dataset, f"data.{group}[{i}].dataset")
    if spec.kind != "command" or "checkpoint" in spec.model.model_fields_set:
        look(spec.model.checkpoint, "model.checkpoint")
    for folder in found.values():
        if not datatree.walk(folder.path).files:
            raise UserError(f"{folder.keys[0]}: {folder.path} is an empty folder; nothing to upload to the host",
                            hint="point it at the folder that holds the data, or at a Hugging Face Hub id")
    return list(found.values())


def in_container(data_id: str) -> str:
    return f"{DATA_MOUNT}/{data_id[:16]}"


def rewritten(spec: "JobSpec", where: dict[str, str]) -> "JobSpec":
    """A copy of ``spec`` with each key in ``where`` (``data.train[0].dataset``) set to its path there."""
    out = spec.model_copy(deep=True)
    for group in ("train", "eval"):
        for i, source in enumerate(getattr(out.data, group)):
            key = f"data.{group}[{i}].dataset"
            if key in where:
                source.dataset = where[key]
    if "model.checkpoint" in where:
        out.model.checkpoint = where["model.checkpoint"]
    return out
