"""Local data for a Kubernetes job, staged where the pod reads it.

A ``data.*[i].dataset`` or ``model.checkpoint`` that is a folder on this machine is uploaded at
submit, listed by :func:`gpujob.datatree.walk` (links kept inside the folder, special files
skipped) and content-addressed: each file is kept once by its sha256, so a file sent before (in
this folder or any other) is not sent again, and a folder whose every file is there uploads
nothing. The spec the pod reads then names the staged copy. Two places, chosen by
``runtime.stage``:

- **unset: the cache PVC**, through a transfer pod (:mod:`.podexec`: what ``kubectl cp`` does, tar
  over the exec stream). On the PVC, under ``/cache/gpujob-data``: ``blobs/<sha256>`` (each checked
  by its hash on arrival, then moved in; a torn upload leaves only an ``incoming.*`` folder), and
  ``<id>/`` (the folder, its files hard links to the blobs) with ``<id>.sha256`` beside it once
  whole. ``<id>`` is the sha256 of the folder's manifest (``sha256sum`` lines), as on a rented host.
- **a bucket prefix** (``runtime.stage: s3://team-bucket/gpujob``): the folder under
  ``<prefix>/data/<id>/`` through :mod:`gpujob.storage` (credentials from this environment and
  ``runtime.env``), its manifest written last beside it as ``<id>.sha256`` (so the folder the job
  reads holds only the data); a file already there is not sent again, nor one whose content another
  staged folder under the prefix holds (copied inside the bucket instead).

The folder is walked again when the upload ends: one that changed while it was read (a file added,
removed, resized or rewritten) is refused, and the staged copy is not used.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import replace
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterator

from gpujob import datatree
from gpujob.backends import local_data
from gpujob.backends.base import runtime_of
from gpujob.backends.host_data import LocalFolder, local_folders, rewritten
from gpujob.backends.kubernetes import manifests, podexec
from gpujob.errors import GpujobError, UserError
from gpujob.hosts import upload as up
from gpujob.storage import Store, parse_uri
from gpujob.storage.preflight import check_credentials_for_job, probe

if TYPE_CHECKING:
    from gpujob.backends.base import JobRequest
    from gpujob.backends.kubernetes.cluster import Cluster

PVC_ROOT = f"{podexec.CACHE_DIR}/gpujob-data"
MANIFESTS_READ = 50        # staged folders' manifests read for files the bucket holds already
_BLOCK = 512
_READ = 1 << 20

Say = Callable[[str], None]
Transfer = Callable[[str], "object"]       # label -> a context manager giving a (done, total) callback


@dataclass
class Staged:
    folder: Path
    where: str            # the path or URI the pod reads
    id: str
    files: int
    sent_files: int
    sent_bytes: int
    copied: int = 0       # bucket mode: files another staged folder held, copied inside the bucket

    @property
    def cached(self) -> bool:
        return self.sent_files == 0 and self.copied == 0


class StageError(GpujobError):
    """The upload did not complete; what was sent whole is kept for the next try."""


def plan(request: "JobRequest") -> list[LocalFolder]:
    return local_folders(request.spec, request.workdir)


def check(request: "JobRequest") -> None:
    """Refuse, before anything is created, a folder the upload would refuse (links out, odd names), and
    with ``runtime.stage`` credentials missing here (to upload) or in the job (to read it back), or a
    bucket that does not answer."""
    from gpujob.spec.runtime import KubernetesRuntime

    if not local_data.where_job_runs("kubernetes"):
        return
    folders = plan(request)
    for folder in folders:
        datatree.walk(folder.path, reserved_suffix=up.PART_SUFFIX)
    rt = runtime_of(request, KubernetesRuntime)
    if folders and rt.stage:
        uris = [("runtime.stage", rt.stage)]
        check_credentials_for_job(uris, rt.env, list(rt.secrets), os.environ, False, request.spec_path)
        here = check_credentials_for_job(uris, {**os.environ, **rt.env}, [], os.environ, True, None)
        probe(uris, here)


def render_lines(request: "JobRequest") -> list[str]:
    """What submit will upload, for render: one line per local folder."""
    from gpujob.spec.runtime import KubernetesRuntime

    if not local_data.where_job_runs("kubernetes"):
        return []
    rt = runtime_of(request, KubernetesRuntime)
    where = (f"the bucket prefix {rt.stage}/data/<sha256>" if rt.stage else
             f"the PVC {rt.cache_pvc} at {PVC_ROOT}/<sha256> (through a transfer pod)")
    lines = []
    for folder in plan(request):
        try:
            tree = datatree.walk(folder.path, reserved_suffix=up.PART_SUFFIX)
            size = f"{len(tree.files)} files, {tree.total_bytes} bytes"
        except UserError as exc:
            lines.append(f"PROBLEM: {', '.join(folder.keys)}: {exc.message}; submit refuses it")
            continue
        lines.append(f"staged at submit: {folder.path} ({', '.join(folder.keys)}): {size}, to {where}, "
                     "by content (files already there are not sent); the spec the pod reads names the copy")
    return lines


def stage(cluster: "Cluster", request: "JobRequest", say: Say, transfer: Transfer) -> "JobRequest":
    """The request with each local folder uploaded and the spec naming the staged copy."""
    from gpujob.spec.runtime import KubernetesRuntime

    if not local_data.where_job_runs("kubernetes"):
        return request
    folders = plan(request)
    if not folders:
        return request
    rt = runtime_of(request, KubernetesRuntime)
    where: dict[str, str] = {}
    stage = rt.stage
    pod_ctx = contextlib.nullcontext(None) if stage else podexec.transfer_pod(
        cluster, f"gpujob-stage-{request.job_id}", rt.image or manifests.DEFAULT_IMAGE, rt.cache_pvc,
        {"gpujob.dev/id": request.job_id}, say)
    with pod_ctx as pod:
        for folder in folders:
            say(f"hashing {folder.path} ({', '.join(folder.keys)})")
            with transfer(f"staging {folder.path.name}") as progress:
                if stage:
                    done = to_bucket(stage, folder.path, dict(request.env), on_progress=progress)
                else:
                    done = to_pvc(cluster, pod, folder.path, on_progress=progress)
            say(f"data {folder.path}: " + (
                f"already staged (content {done.id[:12]}), nothing sent" if done.cached else
                f"{done.sent_files} of {done.files} files sent ({done.sent_bytes} bytes)"
                + (f", {done.copied} copied inside the bucket" if done.copied else "") + ", the rest already there")
                + f"; the job reads {done.where}")
            where.update({key: done.where for key in folder.keys})
    return replace(request, spec=rewritten(request.spec, where))


# ---------------------------------------------------------------------------- PVC mode

_PROBE = 'mkdir -p "$1/blobs" && cd "$1" && if [ -f "$2.sha256" ] && [ -d "$2" ]; then echo complete; else ls blobs; fi'
_RECEIVE = ('set -e; cd "$1"; in="incoming.$$"; mkdir -p "$in"; tar -x -f - -C "$in"; cd "$in"; bad=""; '
            'for f in *; do [ -f "$f" ] || continue; '
            's=$(sha256sum "$f" | cut -c1-64); if [ "$s" = "$f" ]; then mv -f "$f" ../blobs/"$f"; '
            'else bad="$bad $f"; rm -f "$f"; fi; done; cd ..; rmdir "$in"; '
            'if [ -n "$bad" ]; then echo "BAD$bad"; exit 3; fi; echo received')
_ASSEMBLE = ('set -e; cd "$1"; id="$2"; rm -rf "$id.partial"; mkdir -p "$id.partial"; cat > "$id.partial.sha256"; '
             'while IFS= read -r line; do sha="${line%%  *}"; rel="${line#*  ./}"; '
             'mkdir -p "$id.partial/$(dirname -- "$rel")"; '
             'ln -f "blobs/$sha" "$id.partial/$rel" 2>/dev/null || cp "blobs/$sha" "$id.partial/$rel"; '
             'done < "$id.partial.sha256"; rm -rf "$id"; mv "$id.partial" "$id"; '
             'mv -f "$id.partial.sha256" "$id.sha256"; echo complete')


def to_pvc(cluster: "Cluster", pod: str, folder: Path, *, on_progress: Callable[[int, int], None] | None = None) -> Staged:
    """``folder`` onto the PVC through the running transfer pod ``pod`` (see the module docstring)."""
    tree = datatree.walk(folder, reserved_suffix=up.PART_SUFFIX)
    manifest = up.build_manifest(folder)
    probe = _sh(cluster, pod, _PROBE, PVC_ROOT, manifest.id)
    if probe.strip() == "complete":
        datatree.unchanged(tree, folder)
        return Staged(folder, f"{PVC_ROOT}/{manifest.id}", manifest.id, len(manifest.files), 0, 0)
    there = set(probe.split())
    blobs: dict[str, tuple[int, Path]] = {}
    for rel, (size, sha) in manifest.files.items():
        if sha not in there:
            blobs.setdefault(sha, (size, manifest.sources[rel]))
    total = sum(size for size, _ in blobs.values())
    sent = 0

    def count(n: int) -> None:
        nonlocal sent
        sent += n
        if on_progress:
            on_progress(sent, total)

    if on_progress:
        on_progress(0, total)
    if blobs:
        done = podexec.run(cluster, pod, ["sh", "-c", _RECEIVE, "sh", PVC_ROOT], stdin=_tar(blobs, count))
        if done.code == 3 and done.stdout.startswith(b"BAD"):
            datatree.unchanged(tree, folder)          # the usual cause: the folder changed as it was sent
            raise StageError(f"files of {folder} arrived different from what was hashed here",
                             hint="submit again: the files that arrived whole are kept")
        if done.code != 0:
            raise StageError(f"the upload of {folder} to the PVC failed (exit {done.code}): "
                             + _tail(done.stderr or done.stdout),
                             hint="submit again: the files that arrived whole are kept")
    datatree.unchanged(tree, folder)                  # refuse a folder that changed while it was sent
    done = podexec.run(cluster, pod, ["sh", "-c", _ASSEMBLE, "sh", PVC_ROOT, manifest.id], stdin=[manifest.text()])
    if done.code != 0 or done.stdout.strip() != b"complete":
        raise StageError(f"putting {folder} together on the PVC failed (exit {done.code}): "
                         + _tail(done.stderr or done.stdout), hint="submit again")
    return Staged(folder, f"{PVC_ROOT}/{manifest.id}", manifest.id, len(manifest.files), len(blobs), sent)


def _sh(cluster: "Cluster", pod: str, script: str, *args: str) -> str:
    done = podexec.run(cluster, pod, ["sh", "-c", script, "sh", *args])
    if done.code != 0:
        raise StageError(f"a command in transfer pod {pod} failed (exit {done.code}): {_tail(done.stderr)}")
    return done.stdout.decode(errors="replace")


def _tail(data: bytes) -> str:
    return data.decode(errors="replace").strip()[-300:] or "no message"


def _tar(blobs: dict[str, tuple[int, Path]], count: Callable[[int], None]) -> Iterator[bytes]:
    """A tar stream (ustar) of each blob under its sha256, read as it is sent: a file whose size
    changed is cut or padded to the size hashed, so its hash check fails on the pod's side."""
    for sha, (size, path) in sorted(blobs.items()):
        info = tarfile.TarInfo(sha)
        info.size, info.mode, info.mtime = size, 0o644, 0
        yield info.tobuf(format=tarfile.USTAR_FORMAT)
        left = size
        with open(path, "rb") as f:
            while left > 0:
                chunk = f.read(min(_READ, left)) or b"\0" * min(_READ, left)
                left -= len(chunk)
                count(len(chunk))
                yield chunk
        if size % _BLOCK:
            yield b"\0" * (_BLOCK - size % _BLOCK)
    yield b"\0" * (2 * _BLOCK)


# ---------------------------------------------------------------------------- bucket mode

def to_bucket(prefix: str, folder: Path, env: dict[str, str], *,
              on_progress: Callable[[int, int], None] | None = None) -> Staged:
    """``folder`` under ``<prefix>/data/<id>/`` in a bucket, its manifest written last beside it as
    ``<id>.sha256`` (see the module docstring). A file whose content another staged folder under the
    prefix holds is copied inside the bucket, not sent again."""

    tree = datatree.walk(folder, reserved_suffix=up.PART_SUFFIX)
    manifest = up.build_manifest(folder)
    data = parse_uri(prefix).child("data")
    base, marker = data.child(manifest.id), data.child(manifest.id + ".sha256")
    store = Store(data, {**os.environ, **env})
    listed = {f.rel: f.size for f in store.list(data)}
    if manifest.id + ".sha256" in listed:
        datatree.unchanged(tree, folder)
        return Staged(folder, str(base), manifest.id, len(manifest.files), 0, 0)
    known: dict[str, str] = {}              # sha256 -> an object under the prefix that holds it
    for name in sorted(r for r in listed if r.endswith(".sha256") and "/" not in r)[-MANIFESTS_READ:]:
        other = name.removesuffix(".sha256")
        for rel, sha in up.parse_sums(store.read_bytes(data.child(name)).decode(errors="replace")).items():
            known.setdefault(sha, f"{other}/{rel}")
    todo = {rel: v for rel, v in manifest.files.items() if listed.get(f"{manifest.id}/{rel}") != v[0]}
    copy = {rel: known[sha] for rel, (_, sha) in todo.items() if sha in known}
    send = {rel: v for rel, v in todo.items() if rel not in copy}
    total, sent = sum(size for size, _ in send.values()), 0
    if on_progress:
        on_progress(0, total)
    for rel, src in sorted(copy.items()):
        store.fs.copy(data.child(src).fs_path, base.child(rel).fs_path)
    for rel in sorted(send):
        start = sent
        store.upload_file(manifest.sources[rel], base.child(rel),
                          (lambda n, b=start: on_progress(b + n, total)) if on_progress else None)
        sent += send[rel][0]
    datatree.unchanged(tree, folder)          # refuse a folder that changed while it was sent
    store.write_bytes(marker, manifest.text())
    return Staged(folder, str(base), manifest.id, len(manifest.files), len(send), sent, copied=len(copy))
