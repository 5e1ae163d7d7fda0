"""Datasets, a starting model and outputs in object storage (``s3://``, ``gs://``, ``az://``): the runner's side.

Inputs are *staged*: before the preflight, each URI the spec reads (``data.*[i].dataset``,
``model.checkpoint``) is copied to the job's storage cache (:func:`cache_root`; on Docker and Kubernetes
the cache volume) by :func:`gpujob.storage.stage`, kept by object version, so a second job on the same data
downloads nothing. :func:`local_path` then gives the runner the local copy wherever it reads the value;
the spec keeps the URI (messages, the run's identity for resume, the model card). Staging is told as
heartbeats (``phase: staging data``, bytes done and in all), which ``status`` shows.
``data.streaming: true`` does not stream a bucket: the prefix is staged the same way (Hub datasets still stream).

Outputs: with ``output.dir`` a URI, the job writes to a local scratch folder and :class:`Mirror` (the
progress writer, wrapped) uploads as it goes: each checkpoint when it is saved (committed: the marker
object last, :mod:`gpujob.storage.commit`; older ones beyond ``save_total_limit`` deleted marker first),
the final model when it is announced, then every other file (metrics.json, predictions, the model card,
trackers' logs) before the end event. :func:`restore_checkpoint` brings back the newest *complete*
checkpoint from the bucket before training, so a resubmitted job resumes from it under the same identity
rules as a local one (runner/train.py). An upload that fails every retry fails the job with the object named.

Several processes: one process a machine (``LOCAL_RANK`` 0) stages the inputs and downloads the checkpoint
to resume from, into the same paths on every machine (so a multi-node job needs no shared volume for a
bucket ``output.dir``); the writer alone uploads.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from gpujob.storage import (
    MARKER, Store, StorageURI, commit_dir, committed_children, committed_files, is_uri, parse_uri, read_manifest,
    stage,
)
from gpujob.storage.cache import cache_dir

STAGED: dict[str, Path] = {}
CHECKPOINTS = "checkpoints"
HEARTBEAT_EVERY_S = 1.0


def local_path(value: str) -> str:
    """The local copy of a staged URI; any other value as it is."""
    staged = STAGED.get(value)
    return str(staged) if staged is not None else value


def cache_root() -> Path:
    """Where staged objects are kept: ``GPUJOB_STORAGE_CACHE``, else the job's cache volume (``/cache``,
    on Docker and Kubernetes), else ``~/.cache/gpujob/storage``."""
    if os.environ.get("GPUJOB_STORAGE_CACHE"):
        return Path(os.environ["GPUJOB_STORAGE_CACHE"])
    if Path("/cache").is_dir() and os.access("/cache", os.W_OK):
        return Path("/cache/gpujob-storage")
    return Path.home() / ".cache" / "gpujob" / "storage"


def inputs(spec: Any) -> list[tuple[str, str]]:
    """``(spec key, URI)`` of each object-store value the job reads."""
    found = [("model.checkpoint", spec.model.checkpoint)]
    for section in ("train", "eval"):
        found += [(f"data.{section}[{i}].dataset", s.dataset) for i, s in enumerate(getattr(spec.data, section))]
    return [(key, value) for key, value in found if is_uri(value)]


class _Beat:
    """Byte progress as heartbeats, at most one a second (and the last one always)."""

    def __init__(self, writer: Any, phase: str) -> None:
        self.writer, self.phase, self.last = writer, phase, 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if now - self.last >= HEARTBEAT_EVERY_S or done >= total:
            self.last = now
            self.writer.heartbeat(phase=self.phase, done=done, total=max(total, 1), unit="bytes")


def stage_inputs(spec: Any, writer: Any, *, download: bool = True) -> None:
    """Stage every URI the job reads (``download=False``: another process of the job did; only record where)."""
    root = cache_root()
    for key, value in inputs(spec):
        uri = parse_uri(value)
        if not download:
            STAGED[value] = cache_dir(root, uri)
            continue
        what = "model" if key == "model.checkpoint" else "data"
        store = Store(uri)
        t0 = time.monotonic()
        local, fetched = stage(store, uri, root, _Beat(writer, f"staging {what}"))
        size = sum(f.size for f in fetched)
        print(f"{key}: {value} staged in {local} ({len(fetched)} object{'s' if len(fetched) != 1 else ''}, "
              f"{size / 1e6:.1f} MB downloaded in {time.monotonic() - t0:.1f} s"
              + ("; the rest unchanged since the last job" if not fetched or size == 0 else "") + ")", flush=True)
        STAGED[value] = local


def scratch_dir(uri: StorageURI) -> Path:
    """A local folder of this job's own for outputs bound for ``uri``."""
    base = Path(os.environ["GPUJOB_SCRATCH"]) if os.environ.get("GPUJOB_SCRATCH") else cache_root() / "scratch"
    base.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=f"{uri.name[:30]}-", dir=base))


def restore_checkpoint(store: Store, uri: StorageURI, out_dir: Path, writer: Any) -> str | None:
    """Download the newest complete checkpoint under ``uri/checkpoints`` into ``out_dir/checkpoints``; its name."""
    found = committed_children(store, uri.child(CHECKPOINTS))
    if not found:
        return None
    name = found[-1][1]
    remote = uri.child(CHECKPOINTS, name)
    listed = store.list(remote)
    manifest = read_manifest(store, remote, listed)
    if manifest is None:  # deleted between the two listings
        return None
    store.download_dir(remote, out_dir / CHECKPOINTS / name, _Beat(writer, "downloading checkpoint"),
                       files=committed_files(manifest, listed))
    print(f"output.dir: {remote} is the newest complete checkpoint in the bucket; resuming from it", flush=True)
    return name


class Mirror:
    """The progress writer, uploading the job's outputs to ``uri`` as it announces them (see the module)."""

    def __init__(self, writer: Any, store: Store, uri: StorageURI, out_dir: Path, keep: int) -> None:
        self.writer, self.store, self.uri, self.out_dir, self.keep = writer, store, uri, out_dir, keep
        self.sent: dict[str, tuple[int, int]] = {}  # relative path -> (size, mtime_ns) uploaded
        self.ended = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.writer, name)

    def _remote(self, path: Path) -> StorageURI:
        return self.uri.child(path.resolve().relative_to(self.out_dir.resolve()).as_posix())

    def checkpoint(self, **fields: Any) -> None:
        path = Path(fields["path"])
        remote = self._remote(path)
        commit_dir(self.store, path, remote, _Beat(self.writer, "uploading checkpoint"),
                   extra={"step": fields.get("step")})
        self._prune()
        self.writer.checkpoint(**{**fields, "path": str(remote)})

    def _prune(self) -> None:
        done = committed_children(self.store, self.uri.child(CHECKPOINTS))
        for _, name in done[:-self.keep]:
            old = self.uri.child(CHECKPOINTS, name)
            self.store.delete(old.child(MARKER))  # no longer a checkpoint before any file of it goes
            for f in self.store.list(old):
                self.store.delete(old.child(f.rel))

    def artifact(self, **fields: Any) -> None:
        path = Path(fields.get("path", ""))
        if path.is_absolute() and path.exists() and path.resolve().is_relative_to(self.out_dir.resolve()):
            remote = self._remote(path)
            if path.is_dir():
                commit_dir(self.store, path, remote, _Beat(self.writer, f"uploading {fields.get('name') or 'outputs'}"))
                self._mark_sent(path)
            else:
                self._send(path)
            fields = {**fields, "path": str(remote)}
        self.writer.artifact(**fields)

    def _mark_sent(self, folder: Path) -> None:
        for p in folder.rglob("*"):
            if p.is_file():
                st = p.stat()
                self.sent[p.relative_to(self.out_dir).as_posix()] = (st.st_size, st.st_mtime_ns)

    def _send(self, path: Path) -> None:
        rel = path.relative_to(self.out_dir).as_posix()
        st = path.stat()
        if self.sent.get(rel) != (st.st_size, st.st_mtime_ns):
            self.store.upload_file(path, self.uri.child(rel))
            self.sent[rel] = (st.st_size, st.st_mtime_ns)

    def sync(self) -> None:
        """Every output file not sent yet (or changed since), checkpoints and temporary folders aside."""
        for path in sorted(self.out_dir.rglob("*")):
            rel = path.relative_to(self.out_dir)
            if path.is_file() and rel.parts[0] != CHECKPOINTS and not rel.parts[0].startswith(".tmp"):
                self._send(path)

    def end(self, **fields: Any) -> None:
        if self.ended:
            return
        self.ended = True
        try:
            self.sync()
        except Exception as exc:  # gpujob.storage's errors: the job fails naming the object
            if fields.get("status") == "succeeded":
                self.writer.end(status="failed", message=getattr(exc, "message", str(exc))[:400])
                raise
            print(f"gpujob runner: warning: {getattr(exc, 'message', exc)}", file=sys.stderr, flush=True)
        self.writer.end(**fields)
        try:  # what the trackers wrote as they closed
            self.sync()
        except Exception as exc:  # the job's result is in; only a tracker's last lines are missing
            print(f"gpujob runner: warning: {getattr(exc, 'message', exc)}", file=sys.stderr, flush=True)

    def close(self) -> None:
        getattr(self.writer, "close", lambda: None)()


def finish_scratch(out_dir: Path, ok: bool) -> None:
    """A job that succeeded leaves no scratch behind (everything is in the bucket)."""
    if ok:
        shutil.rmtree(out_dir, ignore_errors=True)
