"""A local folder (a dataset, a checkpoint) copied to a rented host, once, checked by content.

- **Manifest**: every file under the folder, by relative path, with its size and sha256, written in
  ``sha256sum`` format (``<sha256>  ./<path>``). The folder's id is the sha256 of that text: the
  same content is the same id, wherever it lies here and whatever it is called.
- **Where**: ``<data root>/<id>`` on the host (the persistent file system's ``gpujob/data`` when the
  host has one, so it outlives the host; else gpujob's data folder there), with the manifest beside it
  as ``<id>.sha256`` once it is complete. A complete folder is not sent again: a second job with the
  same data uploads nothing.
- **Resumable**: files go to ``<id>.partial/``, each written as ``<name>.gpujob-part`` and renamed when
  whole. A new attempt hashes what ``<id>.partial/`` holds (``sha256sum`` on the host) and sends only
  the files missing or different, so an interrupted upload goes on where it stopped.
- **Checked**: when every file is there, ``sha256sum -c`` of the manifest runs on the host; only then
  is ``<id>.partial`` renamed to ``<id>`` and the manifest put beside it. A file that does not match is deleted (the next attempt
  sends it again) and the upload fails, naming it.

The folder is listed by :func:`gpujob.datatree.walk` (links kept inside it); the host is reached through :class:`Remote` (:class:`SshRemote`: the SSH connection).
"""

from __future__ import annotations

import hashlib
import posixpath
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Protocol

from gpujob import datatree

PART_SUFFIX = ".gpujob-part"
_CHUNK = 1 << 20

Progress = Callable[[int, int], None]     # (bytes sent so far, bytes to send in all)


class UploadError(Exception):
    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


@dataclass(frozen=True)
class Manifest:
    root: Path
    files: dict[str, tuple[int, str]]       # relative posix path -> (size, sha256)
    sources: dict[str, Path] = field(default_factory=dict)   # relative path -> the real file it reads
    notes: list[str] = field(default_factory=list)           # what the walk skipped (special files)

    def text(self) -> bytes:
        return "".join(f"{sha}  ./{rel}\n" for rel, (_, sha) in sorted(self.files.items())).encode()

    @property
    def id(self) -> str:
        return hashlib.sha256(self.text()).hexdigest()

    @property
    def total_bytes(self) -> int:
        return sum(size for size, _ in self.files.values())


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def walk(root: Path) -> list[tuple[str, Path]]:
    """The files an upload of ``root`` sends, as (relative posix path, the real file it reads), sorted:
    :func:`gpujob.datatree.walk` (links kept inside the folder, special files skipped, odd names refused)."""
    return [(e.rel, e.path) for e in datatree.walk(root, reserved_suffix=PART_SUFFIX).files]


def build_manifest(root: Path) -> Manifest:
    tree = datatree.walk(root, reserved_suffix=PART_SUFFIX)
    files = {e.rel: (e.size, file_sha256(e.path)) for e in tree.files}
    manifest = Manifest(root, files, {e.rel: e.path for e in tree.files}, tree.notes)
    datatree.unchanged(tree, root)          # what was hashed is what the walk saw
    return manifest


def folder_size(root: Path) -> tuple[int, int]:
    """(files, bytes) under ``root``, without reading them (for a dry run)."""
    tree = datatree.walk(root, reserved_suffix=PART_SUFFIX)
    return len(tree.files), tree.total_bytes


class Remote(Protocol):
    def run(self, command: str, *, input: bytes | None = None) -> str:
        """Run a shell command line on the host; its stdout. A non-zero exit raises."""

    def send(self, local: Path | bytes, remote_path: str, on_bytes: Callable[[int], None]) -> None:
        """Write ``local`` (a file, or bytes) to ``remote_path``; ``on_bytes(n)`` as n more bytes go."""


@dataclass
class Uploaded:
    path: str                 # the complete folder on the host
    id: str
    sent_files: int = 0
    sent_bytes: int = 0
    cached: bool = False      # it was there already: nothing sent
    skipped: list[str] = field(default_factory=list)   # files an earlier attempt had sent


def upload(remote: Remote, manifest: Manifest, data_root: str, *, on_progress: Progress | None = None) -> Uploaded:
    """Make ``<data_root>/<manifest.id>`` on the host hold exactly the folder (see the module docstring)."""
    q = shlex.quote
    final = posixpath.join(data_root, manifest.id)
    staging = final + ".partial"
    state = remote.run(
        f"if [ -f {q(final + '.sha256')} ] && [ -d {q(final)} ]; then echo complete; else "
        f"mkdir -p {q(staging)} && cd {q(staging)} && "
        f"find . -type f ! -name {q('*' + PART_SUFFIX)} -exec sha256sum {{}} + ; fi")
    if state.strip() == "complete":
        return Uploaded(final, manifest.id, cached=True)
    there = parse_sums(state)
    todo = [rel for rel, (_, sha) in sorted(manifest.files.items()) if there.get(rel) != sha]
    result = Uploaded(final, manifest.id, skipped=sorted(set(manifest.files) - set(todo)))
    total = sum(manifest.files[rel][0] for rel in todo)
    dirs = sorted({posixpath.dirname(rel) for rel in todo} - {""})
    if dirs:
        remote.run(f"cd {q(staging)} && xargs -0 mkdir -p --", input=b"\0".join(d.encode() for d in dirs))
    sent = 0
    if on_progress:
        on_progress(0, total)

    def count(n: int) -> None:
        nonlocal sent
        sent += n
        if on_progress:
            on_progress(sent, total)

    for rel in todo:
        remote.send(manifest.sources.get(rel, manifest.root / rel), posixpath.join(staging, rel), count)
        result.sent_files += 1
    result.sent_bytes = sent
    remote.send(manifest.text(), staging + ".sha256", lambda n: None)
    check = remote.run(
        f"cd {q(staging)} && find . -name {q('*' + PART_SUFFIX)} -type f -delete; "
        f"if out=$(sha256sum --strict -c {q(staging + '.sha256')} 2>&1); then "
        f"cd .. && {{ mv -T {q(staging)} {q(final)} 2>/dev/null || test -d {q(final)}; }} "
        f"&& rm -rf {q(staging)} && mv -f {q(staging + '.sha256')} {q(final + '.sha256')} && echo verified; "
        f"else printf '%s\\n' \"$out\"; fi")
    if check.strip() != "verified":
        bad = sorted({line.rsplit(":", 1)[0].removeprefix("./") for line in check.split("\n")
                      if line.rstrip().endswith("FAILED") or "FAILED open or read" in line} & set(manifest.files))
        if bad:
            remote.run(f"cd {q(staging)} && rm -f -- " + " ".join(q("./" + b) for b in bad))
        raise UploadError(f"the upload of {manifest.root} did not check out on the host: "
                          + (", ".join(bad[:5]) + (f" and {len(bad) - 5} more" if len(bad) > 5 else "") + " differ"
                             if bad else check.strip()[-300:] or "sha256sum failed"),
                          hint="submit again: the files that did not match are sent again, the others are kept")
    return result


def parse_sums(text: str) -> dict[str, str]:
    """``sha256sum`` lines as {relative path: sha256}."""
    out = {}
    for line in text.split("\n"):
        sha, sep, path = line.partition("  ")
        if sep and len(sha) == 64:
            out[path.removeprefix("./")] = sha
    return out


class SshRemote:
    """:class:`Remote` over a :class:`gpujob.hosts.ssh.HostConnection`: commands over SSH, files
    over SFTP, each written under a temporary name and renamed into place when whole."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def run(self, command: str, *, input: bytes | None = None) -> str:
        return self.conn.run(command, input=input, timeout_s=3600, what="the data upload").stdout

    def send(self, local: Path | bytes, remote_path: str, on_bytes: Callable[[int], None]) -> None:
        import io

        sftp = self.conn.sftp()
        tmp = remote_path + PART_SUFFIX
        last = 0

        def callback(done: int, _total: int) -> None:
            nonlocal last
            on_bytes(done - last)
            last = done

        if isinstance(local, bytes):
            sftp.putfo(io.BytesIO(local), tmp, file_size=len(local), callback=callback, confirm=True)
        else:
            with open(local, "rb") as f:
                sftp.putfo(f, tmp, callback=callback, confirm=True)
        sftp.posix_rename(tmp, remote_path)


def ensure_dir(conn, path: str) -> None:
    """``path`` on the host, made and given to the login user (through sudo when it needs root)."""
    q = shlex.quote(path)
    made = conn.run(f"mkdir -p {q} 2>/dev/null && test -w {q}", check=False, timeout_s=60)
    if made.exit_code != 0:
        conn.run(conn.privileged(f"mkdir -p {q} && chown {conn.run('id -u', timeout_s=30).stdout.strip()} {q}"),
                 timeout_s=60, what=f"making {path} on the host")
