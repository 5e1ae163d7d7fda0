"""The job page's overview: what ran, where and from what (the command, the image, the resources, the
node or host, the spec file and the git commit of the folder it was submitted from, where recorded)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gpujob.backends.handle import Handle
from gpujob.records import Job
from gpujob.words import printable

HANDLE_KEYS = (("host", "host"), ("node", "node"), ("pod", "pod"), ("namespace", "namespace"),
               ("container", "container"), ("pid", "process"))


def _text(value: Any, limit: int = 500) -> str:
    return printable(str(value), limit)


def overview(job: Job) -> list[tuple[str, str]]:
    """(label, value) rows; a value that is not known is left out."""
    spec = job.spec
    rows: list[tuple[str, str]] = []
    if spec is not None and spec.command:
        rows.append(("command", " ".join(spec.command)))
    elif job.kind in ("train", "evaluate"):
        rows.append(("command", f"python -m gpujob.runner <spec> ({job.kind}: gpujob's runner)"))
    if spec is not None and spec.model.checkpoint:
        rows.append(("model", spec.model.checkpoint))
    if getattr(spec and spec.runtime, "image", None):
        rows.append(("image", str(spec.runtime.image)))
    resources = spec.resources.model_dump(mode="json") if spec is not None else {}
    parts = [f"{k} {v}" for k, v in resources.items() if v not in (None, "", [], {})]
    if parts:
        rows.append(("resources", ", ".join(parts)))
    handle = job.handle if isinstance(job.handle, dict) else {}
    for key, label in HANDLE_KEYS:
        if isinstance(handle.get(key), (str, int)) and not isinstance(handle.get(key), bool):
            rows.append((label, str(handle[key])))
    source = Handle.read(handle).source or {}
    if source.get("commit"):
        rows.append(("git commit", f"{str(source['commit'])[:12]}{' (uncommitted changes)' if source.get('dirty') else ''}"
                     + (f" in {source['dir']}" if source.get("dir") else "")))
    if job.spec_path:
        rows.append(("spec file", job.spec_path))
    rows.append(("submitted", f"{datetime.fromtimestamp(job.created_at):%Y-%m-%d %H:%M:%S}"))
    return [(label, _text(value)) for label, value in rows]
