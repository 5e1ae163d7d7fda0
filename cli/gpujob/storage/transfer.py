"""Objects in and out of a store: list, upload, download, with retries and byte progress.

A :class:`Store` is one URI's filesystem. Every transfer is retried (:data:`ATTEMPTS` tries with
backoff; ``GPUJOB_STORAGE_ATTEMPTS`` overrides) unless the store refused for a reason a retry cannot
fix (a missing bucket, denied credentials); then it raises a gpujob error naming the object.
Downloads land in ``name.part`` and are renamed when their size is checked, so a local file that exists
is whole. An object written to a store appears whole or not at all (one PUT, or a multipart upload
completed last), which is what :mod:`gpujob.storage.commit` builds checkpoints on.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpujob import datatree  # every upload walks the folder alike: links stay inside, special files skipped

from .errors import NothingThere, StorageFailed
from .fs import call, is_user_error, make_filesystem, translate
from .uri import StorageURI

Progress = Callable[[int, int], None]  # (bytes done, bytes in all)
ATTEMPTS = 4
BACKOFF_S = 0.5


@dataclass(frozen=True)
class RemoteFile:
    """One object under a prefix: its path relative to the prefix (``/``-separated), size and version
    (the object's version id, generation or ETag: it changes whenever the content does)."""

    rel: str
    size: int
    version: str


def _version(info: Mapping[str, Any]) -> str:
    for key in ("VersionId", "generation", "version_id", "ETag", "etag", "md5Hash", "LastModified", "last_modified"):
        if info.get(key):
            return str(info[key]).strip('"')
    return f"size-{info.get('size')}"


def _attempts() -> int:
    try:
        return max(1, int(os.environ.get("GPUJOB_STORAGE_ATTEMPTS", ATTEMPTS)))
    except ValueError:
        return ATTEMPTS


class Store:
    """The store ``uri`` is in, reached with the credentials in ``env`` (default: this process's)."""

    def __init__(self, uri: StorageURI, env: Mapping[str, str] | None = None) -> None:
        self.uri = uri
        self.fs = make_filesystem(uri, env)

    def _retry(self, target: StorageURI, doing: str, fn: Callable[[], Any]) -> Any:
        attempts = _attempts()
        for attempt in range(1, attempts + 1):
            try:
                return fn()
            except Exception as exc:  # the SDKs raise their own types
                if is_user_error(exc) or attempt == attempts:
                    error = translate(exc, target, doing)
                    if isinstance(error, StorageFailed) and attempts > 1:
                        error = StorageFailed(f"{error.message} (tried {attempts} times)", error.hint)
                    raise error from None
                time.sleep(BACKOFF_S * 2 ** (attempt - 1))
        raise AssertionError("unreachable")

    def list(self, uri: StorageURI | None = None) -> list[RemoteFile]:
        """Every object under ``uri`` (default: the store's URI), sorted; [] when there are none.
        A missing bucket raises :class:`~gpujob.storage.errors.BucketNotFound`."""
        uri = uri or self.uri
        found: dict[str, Any] = self._retry(uri, "listing", lambda: self.fs.find(uri.fs_path, detail=True))
        base = uri.fs_path.rstrip("/") + "/"
        files = []
        for path, info in found.items():
            path = path.split("://", 1)[-1]
            if info.get("type", "file") != "file" or path.endswith("/"):
                continue
            rel = path[len(base):] if path.startswith(base) else path.rsplit("/", 1)[-1]
            files.append(RemoteFile(rel, int(info.get("size") or 0), _version(info)))
        return sorted(files, key=lambda f: f.rel)

    def exists(self, uri: StorageURI) -> bool:
        return bool(call(uri, "checking", lambda: self.fs.exists(uri.fs_path)))

    def check_bucket(self) -> None:
        """Raise the store's answer if the bucket cannot be listed (missing, access denied, unreachable)."""
        self._retry(self.uri, "listing", lambda: self.fs.ls(self.uri.bucket, detail=False))

    def read_bytes(self, uri: StorageURI) -> bytes:
        return self._retry(uri, "reading", lambda: self.fs.cat_file(uri.fs_path))

    def write_bytes(self, uri: StorageURI, data: bytes) -> None:
        self._retry(uri, "writing", lambda: self.fs.pipe_file(uri.fs_path, data))

    def delete(self, uri: StorageURI) -> None:
        """Remove one object (absent is fine)."""
        def rm() -> None:
            try:
                self.fs.rm_file(uri.fs_path)
            except FileNotFoundError:
                pass

        self._retry(uri, "deleting", rm)

    def upload_file(self, local: Path, uri: StorageURI, progress: Callable[[int], None] | None = None) -> None:
        """``local`` to ``uri``; ``progress(bytes of this file done)`` as it goes."""
        self._retry(uri, "uploading", lambda: self.fs.put_file(str(local), uri.fs_path, callback=_callback(progress)))

    def download_file(self, uri: StorageURI, local: Path, size: int | None = None,
                      progress: Callable[[int], None] | None = None) -> None:
        """``uri`` to ``local`` through ``local.part``; the size is checked before the rename."""
        local.parent.mkdir(parents=True, exist_ok=True)
        part = local.with_name(local.name + ".part")

        def get() -> None:
            self.fs.get_file(uri.fs_path, str(part), callback=_callback(progress))
            got = part.stat().st_size
            if size is not None and got != size:
                raise OSError(f"downloaded {got} bytes, the store lists {size}")

        try:
            self._retry(uri, "downloading", get)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        os.replace(part, local)

    def upload_dir(self, local_dir: Path, uri: StorageURI, progress: Progress | None = None,
                   skip: Iterable[str] = ()) -> list[RemoteFile]:
        """Every file under ``local_dir`` (but those in ``skip``, relative paths) to ``uri``; returns what was sent."""
        skipped = set(skip)
        files = [e for e in datatree.walk(local_dir).files if e.rel not in skipped]
        total, done = sum(e.size for e in files), 0
        sent = []
        for entry in files:
            base = done
            self.upload_file(entry.path, uri.child(entry.rel),
                             (lambda n, b=base: progress(b + n, total)) if progress else None)
            done += entry.size
            if progress:
                progress(done, total)
            sent.append(RemoteFile(entry.rel, entry.size, ""))
        return sent

    def download_dir(self, uri: StorageURI, local_dir: Path, progress: Progress | None = None,
                     files: list[RemoteFile] | None = None, have: Callable[[RemoteFile, Path], bool] | None = None,
                     ) -> list[RemoteFile]:
        """The objects under ``uri`` (or ``files`` of them) into ``local_dir``, skipping those ``have`` says are
        already there (default: a local file of the same size). Returns what was downloaded."""
        files = self.list(uri) if files is None else files
        if not files:
            raise NothingThere(str(uri))
        have = have or (lambda f, p: p.is_file() and p.stat().st_size == f.size)
        todo = [f for f in files if not have(f, local_dir / f.rel)]
        total = sum(f.size for f in files)
        done = total - sum(f.size for f in todo)
        if progress:
            progress(done, total)
        for f in todo:
            base = done
            self.download_file(uri.child(f.rel), local_dir / f.rel, f.size,
                               (lambda n, b=base: progress(b + n, total)) if progress else None)
            done += f.size
            if progress:
                progress(done, total)
        return todo


def _callback(progress: Callable[[int], None] | None) -> Any:
    from fsspec.callbacks import Callback, NoOpCallback

    if progress is None:
        return NoOpCallback()

    class _Bytes(Callback):
        def call(self, *args: Any, **kwargs: Any) -> None:
            progress(int(self.value or 0))

    return _Bytes()
