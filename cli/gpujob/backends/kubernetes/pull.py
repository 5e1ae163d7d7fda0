"""``gpujob pull`` for a Kubernetes job: its outputs off the cache PVC, through a transfer pod.

A job's relative ``output.dir`` is on the PVC ``runtime.cache_pvc`` (``/cache/<dir>``), which outlives
its pods. A transfer pod (:mod:`.podexec`) mounts it and lists the folder (``find``: size and path of
every file); :func:`gpujob.backends.outputs.choose` picks what ``--only`` asks for (complete checkpoints
only: those with their ``complete`` file; of a running job, its newest); the files not already here at
their size are sent as one tar stream over the exec connection (``tar -c`` of the list on stdin),
written to ``dest/.gpujob-pull.tar.part`` as it comes (progress: bytes received), then each member is
checked (a regular file, one asked for, the size listed) and moved into place through ``name.part``.
An interrupted pull keeps every file it finished, so the next one fetches only the rest.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gpujob.backends import outputs
from gpujob.backends.kubernetes import podexec
from gpujob.backends.kubernetes.manifests import DEFAULT_IMAGE
from gpujob.defaults import HF_CACHE
from gpujob.errors import UserError
from gpujob.storage.errors import NothingThere, StorageFailed

if TYPE_CHECKING:
    from gpujob.backends.kubernetes.cluster import Cluster
    from gpujob.records import Job

_LIST = 'cd "$1" 2>/dev/null || exit 4; find . -type f ! -name "*.part" -printf "%s %P\\0"'
_SEND = 'cd "$1" && tar -c -f - --null -T -'
_CKPT_DONE = re.compile(r"checkpoints/(checkpoint-\d+)/" + re.escape(outputs.LOCAL_DONE))
TAR_PART = ".gpujob-pull.tar.part"


def pull(cluster: "Cluster", job: "Job", dest: Path, only: str, progress: Callable[[int, int], None] | None,
         say: Callable[[str], None] = lambda s: None) -> outputs.Pulled:
    out = job.output_dir or ""
    if not (out == podexec.CACHE_DIR or out.startswith(podexec.CACHE_DIR + "/")):
        raise UserError(f"job {job.id} wrote its outputs to {out or '(nowhere)'} inside its pod, not on the cache PVC; "
                        "they went with the pod",
                        hint="give output.dir a relative path (kept on the PVC) or a bucket URI to pull outputs")
    runtime = job.spec.runtime if job.spec is not None else None
    pvc, image = getattr(runtime, "cache_pvc", None), getattr(runtime, "image", None)
    with podexec.transfer_pod(cluster, f"gpujob-pull-{job.id}", image or DEFAULT_IMAGE, pvc or HF_CACHE,
                              {"gpujob.dev/id": job.id}, say) as pod:
        listed = podexec.run(cluster, pod, ["sh", "-c", _LIST, "sh", out])
        if listed.code == 4:
            raise NothingThere(out, "the job's output folder is not on the PVC (nothing written yet?)")
        if listed.code != 0:
            raise StorageFailed(f"listing {out} on the PVC failed: {listed.stderr.decode(errors='replace')[-300:]}")
        sizes = _parse(listed.stdout)
        if not sizes:
            raise NothingThere(out, "no outputs yet")
        complete = {m.group(1) for rel in sizes if (m := _CKPT_DONE.fullmatch(rel))}
        model_complete = any(rel.startswith("model/") for rel in sizes)
        picked, parts, notes = outputs.choose(sizes, only, complete, model_complete, job.active)
        result = outputs.Pulled(f"PVC {pvc or HF_CACHE}:{out}", dest, parts, len(picked), notes=notes,
                                bytes_total=sum(sizes[r] for r in picked))
        dest.mkdir(parents=True, exist_ok=True)
        todo = [rel for rel in picked if not ((dest / rel).is_file() and (dest / rel).stat().st_size == sizes[rel])]
        have = result.bytes_total - sum(sizes[r] for r in todo)
        if not todo:
            if progress:
                progress(result.bytes_total, result.bytes_total)
            return result
        tar_path = dest / TAR_PART
        received = 0
        with open(tar_path, "wb") as sink:
            def write(data: bytes) -> None:
                nonlocal received
                sink.write(data)
                received += len(data)
                if progress:
                    progress(min(have + received, result.bytes_total), result.bytes_total)

            sent = podexec.run(cluster, pod, ["sh", "-c", _SEND, "sh", out],
                               stdin=[b"\0".join(rel.encode() for rel in todo) + b"\0"], on_stdout=write)
    try:
        if sent.code != 0:
            raise StorageFailed(f"reading {out} on the PVC failed (exit {sent.code}): "
                                + sent.stderr.decode(errors="replace").strip()[-300:],
                                hint="run gpujob pull again: the files already here are kept")
        _unpack(tar_path, dest, {rel: sizes[rel] for rel in todo}, result)
    finally:
        tar_path.unlink(missing_ok=True)
    if progress:
        progress(result.bytes_total, result.bytes_total)
    return result


def _parse(listing: bytes) -> dict[str, int]:
    sizes = {}
    for entry in listing.split(b"\0"):
        size, _, rel = entry.partition(b" ")
        if rel and size.isdigit():
            sizes[rel.decode("utf-8", "surrogateescape")] = int(size)
    return sizes


def _unpack(tar_path: Path, dest: Path, want: dict[str, int], result: outputs.Pulled) -> None:
    """Each member asked for, checked, into place; anything else in the stream is ignored."""
    root = dest.resolve()
    with tarfile.open(tar_path, "r:") as tar:
        for member in tar:
            rel = member.name.removeprefix("./")
            if rel not in want or not member.isfile():
                continue
            local = (dest / rel)
            if not local.resolve().is_relative_to(root):
                continue
            if member.size != want[rel]:
                raise StorageFailed(f"{rel}: {member.size} bytes arrived, {want[rel]} were listed (the job is "
                                    "rewriting it?)", hint="run gpujob pull again")
            local.parent.mkdir(parents=True, exist_ok=True)
            part = local.with_name(local.name + ".part")
            with tar.extractfile(member) as src, open(part, "wb") as f:
                while chunk := src.read(1 << 20):
                    f.write(chunk)
            os.replace(part, local)
            result.fetched += 1
            result.bytes_fetched += member.size
    missing = sorted(set(want) - {r for r in want if (dest / r).is_file() and (dest / r).stat().st_size == want[r]})
    for rel in missing:
        result.notes.append(f"{rel} went away while pulling (the job pruned it)")
