"""Directories in a store that are only "there" once complete: checkpoints, final models, outputs.

A store has no rename, so a directory cannot appear at once. Instead a directory is *committed*: its
files are uploaded first, then one marker object, :data:`MARKER`, a manifest of every file's relative
path and size. Readers (resume, ``gpujob pull``) take a directory only when its marker is there and every
file it lists has the listed size; a directory whose upload stopped half-way has no marker and is
never taken for a checkpoint. Re-committing a directory deletes its marker first.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .transfer import Progress, RemoteFile, Store
from .uri import StorageURI

MARKER = "_gpujob_complete.json"


def commit_dir(store: Store, local_dir: Path, uri: StorageURI, progress: Progress | None = None,
               extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Upload ``local_dir`` to ``uri`` and write its marker last; returns the manifest written."""
    store.delete(uri.child(MARKER))
    sent = store.upload_dir(local_dir, uri, progress, skip=[MARKER])
    manifest = {"files": {f.rel: f.size for f in sent}, "committed_at": time.time(), **(extra or {})}
    store.write_bytes(uri.child(MARKER), json.dumps(manifest, indent=1, sort_keys=True).encode())
    return manifest


def read_manifest(store: Store, uri: StorageURI, listed: list[RemoteFile] | None = None) -> dict[str, Any] | None:
    """The manifest of committed directory ``uri`` when it is complete (marker there, each file at its
    listed size), else None. ``listed``: the objects under ``uri`` when already listed."""
    listed = store.list(uri) if listed is None else listed
    sizes = {f.rel: f.size for f in listed}
    if MARKER not in sizes:
        return None
    try:
        manifest = json.loads(store.read_bytes(uri.child(MARKER)))
        files = manifest["files"]
    except (ValueError, KeyError, TypeError):
        return None
    if not isinstance(files, dict) or any(sizes.get(rel) != size for rel, size in files.items()):
        return None
    return manifest


def committed_files(manifest: Mapping[str, Any], listed: list[RemoteFile]) -> list[RemoteFile]:
    """The objects a manifest lists (with their versions from ``listed``), marker excluded."""
    files = manifest["files"]
    return [f for f in listed if f.rel in files]


def committed_children(store: Store, uri: StorageURI, pattern: str = r"checkpoint-(\d+)") -> list[tuple[int, str]]:
    """``(number, name)`` of each complete directory right under ``uri`` whose name matches ``pattern``
    (one group: its number), oldest first. One listing of ``uri``, then one read per marker."""
    listed = store.list(uri)
    by_dir: dict[str, list[RemoteFile]] = {}
    for f in listed:
        top, _, rest = f.rel.partition("/")
        if rest:
            by_dir.setdefault(top, []).append(RemoteFile(rest, f.size, f.version))
    found = []
    for name, files in by_dir.items():
        match = re.fullmatch(pattern, name)
        if match and read_manifest(store, uri.child(name), files) is not None:
            found.append((int(match.group(1)), name))
    return sorted(found)
