"""A local copy of a store's prefix, kept by object version: a second job on the same data downloads nothing.

``cache_root/<hash of the URI>/`` holds the objects under their relative paths and ``.gpujob-versions.json``
(relative path -> the version the local file was downloaded at). :func:`stage` lists the prefix, downloads
only objects whose version changed or whose local file is missing or of another size, removes local files
the prefix no longer has, and returns the directory. One job at a time stages one prefix (a file lock);
others wait, then find it staged.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
from pathlib import Path

from .errors import NothingThere
from .transfer import Progress, RemoteFile, Store
from .uri import StorageURI

INDEX = ".gpujob-versions.json"
LOCK = ".gpujob-lock"


def cache_dir(cache_root: Path, uri: StorageURI) -> Path:
    """Where ``uri`` is kept under ``cache_root``: its last name (to read) and a hash (to be unique)."""
    digest = hashlib.sha256(str(uri).encode()).hexdigest()[:16]
    return cache_root / f"{uri.name[:40]}-{digest}"


def stage(store: Store, uri: StorageURI, cache_root: Path, progress: Progress | None = None,
          ) -> tuple[Path, list[RemoteFile]]:
    """``uri``'s objects in a local directory, up to date; returns it and the objects downloaded this time."""
    target = cache_dir(cache_root, uri)
    target.mkdir(parents=True, exist_ok=True)
    with open(target / LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        listed = [f for f in store.list(uri) if f.rel not in (INDEX, LOCK)]
        if not listed:
            raise NothingThere(str(uri), "no objects under this prefix")
        index = _read_index(target)
        wanted = {f.rel for f in listed}
        for path in sorted(target.rglob("*"), reverse=True):
            rel = path.relative_to(target).as_posix()
            if path.is_file() and rel not in (INDEX, LOCK) and rel not in wanted:
                path.unlink()
                index.pop(rel, None)

        def have(f: RemoteFile, local: Path) -> bool:
            return index.get(f.rel) == f.version and local.is_file() and local.stat().st_size == f.size

        todo = [f for f in listed if not have(f, target / f.rel)]
        total = sum(f.size for f in listed)
        done = total - sum(f.size for f in todo)
        if progress:
            progress(done, total)
        for f in todo:
            index.pop(f.rel, None)
            base = done
            store.download_file(uri.child(f.rel), target / f.rel, f.size,
                                (lambda n, b=base: progress(b + n, total)) if progress else None)
            done += f.size
            index[f.rel] = f.version
            _write_index(target, index)
            if progress:
                progress(done, total)
        _write_index(target, index)
        return target, todo


def _read_index(target: Path) -> dict[str, str]:
    try:
        data = json.loads((target / INDEX).read_text())
        return {str(k): str(v) for k, v in data.items()} if isinstance(data, dict) else {}
    except (OSError, ValueError):
        return {}


def _write_index(target: Path, index: dict[str, str]) -> None:
    tmp = target / (INDEX + ".tmp")
    tmp.write_text(json.dumps(index, sort_keys=True))
    os.replace(tmp, target / INDEX)
