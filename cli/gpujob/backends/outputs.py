"""``gpujob pull``'s work: a job's outputs brought to this machine, from a bucket or a folder.

What is pulled (``only``): ``model``, the final model (``model/``), or for a job without one yet (still
running, stopped) its newest complete checkpoint; ``checkpoints``, every complete checkpoint; ``all``
(the default), everything complete: metrics.json, predictions, the model card, trackers' logs, the model,
and the checkpoints (of a running job, the newest complete one only). *Complete* means: in a bucket, a
directory whose marker object is there (:mod:`gpujob.storage.commit`); in a folder, a checkpoint with its
``complete`` file (runner/checkpoint.py) and never a ``.tmp-*`` folder being written.

Pulling is resumable: a file already in ``dest`` at the source's size (and, from a bucket, the object
version it was fetched at: ``dest/.gpujob-pull.json``) is not fetched again; each file is written to
``name.part`` and renamed once its size is checked. Backends call these from their ``pull`` (base.py);
a bucket ``output.dir`` is pulled the same way whatever the backend.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from gpujob.errors import UserError
from gpujob.storage import MARKER, RemoteFile, Store, parse_uri, read_manifest
from gpujob.storage.errors import NothingThere, StorageFailed

ONLY = ("all", "model", "checkpoints")
INDEX = ".gpujob-pull.json"
LOCAL_DONE = "complete"   # runner/checkpoint.py's DONE_MARKER
_CHECKPOINT = re.compile(r"checkpoints/(checkpoint-(\d+))/(.+)")
Progress = Callable[[int, int], None]


@dataclass
class Pulled:
    """What ``pull`` did: from where to where, which parts, files and bytes fetched or already there."""

    source: str
    dest: Path
    parts: list[str] = field(default_factory=list)   # "model", "checkpoint-12", "metrics.json and 2 more files"
    files: int = 0
    fetched: int = 0
    bytes_total: int = 0
    bytes_fetched: int = 0
    notes: list[str] = field(default_factory=list)


def choose(files: dict[str, int], only: str, complete: set[str], model_complete: bool, active: bool,
           ) -> tuple[list[str], list[str], list[str]]:
    """The relative paths to pull from ``files`` (path -> size), the parts they make, and notes for the user.
    ``complete``: the names of complete checkpoints; ``model_complete``: whether ``model/`` is whole."""
    ckpts = sorted(complete, key=lambda n: int(n.split("-")[1]))
    by_ckpt: dict[str, list[str]] = {}
    top: list[str] = []
    model: list[str] = []
    for rel in sorted(files):
        found = _CHECKPOINT.fullmatch(rel)
        if found:
            by_ckpt.setdefault(found.group(1), []).append(rel)
        elif rel.startswith("model/"):
            model.append(rel)
        elif not rel.startswith(("checkpoints/", ".tmp")) and "/.tmp" not in rel:
            top.append(rel)
    notes: list[str] = []
    picked: list[str] = []
    parts: list[str] = []
    want_ckpts: list[str] = []
    if only in ("model", "all"):
        if model and model_complete:
            picked += model
            parts.append("model")
        elif only == "model":
            if not ckpts:
                raise NothingThere("the job's outputs", "no final model and no complete checkpoint yet")
            want_ckpts = ckpts[-1:]
            notes.append(f"no final model {'yet' if active else '(the job did not finish)'}: "
                         f"pulling its newest complete checkpoint, {ckpts[-1]}")
        elif model:
            notes.append("model/ is not complete yet (still being uploaded): left out")
    if only == "checkpoints":
        want_ckpts = ckpts
        if not ckpts:
            raise NothingThere("the job's outputs", "no complete checkpoint")
    if only == "all":
        want_ckpts = ckpts[-1:] if active else ckpts
        if top:
            picked += top
            parts.append(top[0] if len(top) == 1 else f"{top[0]} and {len(top) - 1} more file{'s' if len(top) > 2 else ''}")
    for name in want_ckpts:
        picked += by_ckpt.get(name, [])
        parts.append(name)
    if not picked:
        raise NothingThere("the job's outputs", f"nothing to pull for --only {only}")
    return sorted(picked), parts, notes


def _read_index(dest: Path) -> dict[str, str]:
    try:
        data = json.loads((dest / INDEX).read_text())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_index(dest: Path, index: dict[str, str]) -> None:
    tmp = dest / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, sort_keys=True))
    os.replace(tmp, dest / INDEX)


def pull_bucket(output_uri: str, dest: Path, only: str, active: bool, progress: Progress | None = None) -> Pulled:
    """The outputs under ``output_uri`` (a bucket prefix) into ``dest``."""
    uri = parse_uri(output_uri)
    store = Store(uri)
    listed = {f.rel: f for f in store.list(uri)}
    if not listed:
        raise NothingThere(output_uri, "no outputs yet")
    complete = set()
    for rel in listed:
        found = re.fullmatch(r"checkpoints/(checkpoint-\d+)/" + re.escape(MARKER), rel)
        if found:
            name = found.group(1)
            inner = [RemoteFile(r.split("/", 2)[2], f.size, f.version) for r, f in listed.items()
                     if r.startswith(f"checkpoints/{name}/")]
            if read_manifest(store, uri.child("checkpoints", name), inner) is not None:
                complete.add(name)
    model_files = [RemoteFile(r[len("model/"):], f.size, f.version) for r, f in listed.items() if r.startswith("model/")]
    model_complete = bool(model_files) and read_manifest(store, uri.child("model"), model_files) is not None
    sizes = {rel: f.size for rel, f in listed.items() if not rel.endswith(MARKER)}
    picked, parts, notes = choose(sizes, only, complete, model_complete, active)
    result = Pulled(output_uri, dest, parts, len(picked), notes=notes)
    dest.mkdir(parents=True, exist_ok=True)
    index = _read_index(dest)
    result.bytes_total = sum(listed[r].size for r in picked)
    done = 0
    for rel in picked:
        f, local = listed[rel], dest / rel
        if index.get(rel) == f.version and local.is_file() and local.stat().st_size == f.size:
            done += f.size
            continue
        base = done
        store.download_file(uri.child(rel), local, f.size,
                            (lambda n, b=base: progress(b + n, result.bytes_total)) if progress else None)
        index[rel] = f.version
        _write_index(dest, index)
        done += f.size
        result.fetched += 1
        result.bytes_fetched += f.size
        if progress:
            progress(done, result.bytes_total)
    return result


def pull_dir(source: Path, dest: Path, only: str, active: bool, progress: Progress | None = None) -> Pulled:
    """The outputs in the folder ``source`` (on this machine) into ``dest``."""
    if not source.is_dir():
        raise UserError(f"the job's output directory {source} is not there", hint="was it moved or deleted?")
    if source.resolve() == dest.resolve():
        raise UserError(f"the job's outputs are already in {dest}", hint="give --to another directory")
    sizes = {p.relative_to(source).as_posix(): p.stat().st_size for p in source.rglob("*") if p.is_file()}
    if not sizes:
        raise NothingThere(str(source), "no outputs yet")
    complete = {p.parent.name for p in source.glob(f"checkpoints/checkpoint-*/{LOCAL_DONE}")}
    picked, parts, notes = choose(sizes, only, complete, (source / "model").is_dir(), active)
    result = Pulled(str(source), dest, parts, len(picked), notes=notes, bytes_total=sum(sizes[r] for r in picked))
    done = 0
    for rel in picked:
        src, local = source / rel, dest / rel
        if local.is_file() and local.stat().st_size == sizes[rel] and local.stat().st_mtime >= src.stat().st_mtime:
            done += sizes[rel]
            continue
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")
        try:
            shutil.copyfile(src, part)
        except FileNotFoundError:  # a running job replaced it (an old checkpoint pruned): not an output any more
            result.notes.append(f"{rel} went away while pulling (the job pruned it)")
            continue
        got = part.stat().st_size
        if got != sizes[rel]:
            part.unlink()
            raise StorageFailed(f"{src}: copied {got} bytes, expected {sizes[rel]} (the job is rewriting it?)",
                                hint="run gpujob pull again")
        os.replace(part, local)
        done += sizes[rel]
        result.fetched += 1
        result.bytes_fetched += sizes[rel]
        if progress:
            progress(done, result.bytes_total)
    return result
