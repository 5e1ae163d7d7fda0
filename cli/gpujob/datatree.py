"""A local folder as the files an upload may send: one safe walk for every upload gpujob makes.

Every upload of the user's data (to a rented host, to a bucket, onto a cluster's volume) lists the
folder through :func:`walk`, which keeps the upload inside the folder and bounded:

- **Links** are resolved. One whose target lies outside the folder (``/etc/passwd``, ``~/.ssh``) is
  refused; one to a folder that holds it (``loop -> .``), or a chain of links that loops, is refused.
  A link to a file or folder inside is carried under the link's name, with the target's content (a
  bucket or a tar stream has no links). A folder brought in by links more than :data:`MAX_VISITS`
  times is refused, so links cannot multiply the upload.
- **Special files** (fifos, sockets, devices) and links to nothing are skipped, each with a note the
  caller shows; they have no content to send.
- **Names** are carried as they are when they are UTF-8 without control characters (what object
  stores, tar and ``sha256sum`` all take); any other name is refused, shown with its odd bytes
  escaped, so the user knows which file to rename.

Every problem is listed at once (up to :data:`SHOWN`), before anything is sent. :func:`unchanged`
walks again after an upload and refuses a folder that changed while it was read.
"""

from __future__ import annotations

import os
import stat
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

from gpujob.errors import UserError

MAX_VISITS = 8              # times one real folder may be entered (through its own path and links)
MAX_FILES = 2_000_000       # files in one upload
SHOWN = 10                  # problems listed in one message


class TreeError(UserError):
    """The folder cannot be uploaded as it is: a link out of it or looping, a name no store takes."""


@dataclass(frozen=True)
class Entry:
    rel: str            # relative posix path in the upload (UTF-8, no control characters)
    path: Path          # the real file it reads (inside the folder)
    size: int
    mtime_ns: int


@dataclass
class Tree:
    root: Path                                          # the folder's real path
    files: list[Entry] = field(default_factory=list)    # sorted by rel
    notes: list[str] = field(default_factory=list)      # what was skipped, and why

    @property
    def total_bytes(self) -> int:
        return sum(e.size for e in self.files)

    def fingerprint(self) -> dict[str, tuple[int, int]]:
        return {e.rel: (e.size, e.mtime_ns) for e in self.files}


def shown(name: str) -> str:
    """A file name fit to print: bytes that are not UTF-8 and control characters escaped."""
    text = os.fsencode(name).decode("utf-8", "backslashreplace")
    return "".join(repr(c)[1:-1] if unicodedata.category(c) == "Cc" else c for c in text)


def _name_problem(name: str, reserved_suffix: str | None) -> str | None:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "its name is not UTF-8 (object stores and the job cannot name it)"
    if any(unicodedata.category(c) == "Cc" for c in name) or "\\" in name:
        return "its name holds a control character or a backslash"
    if reserved_suffix and name.endswith(reserved_suffix):
        return f"names ending {reserved_suffix} are gpujob's own (partial uploads)"
    return None


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip(os.sep) + os.sep)


def walk(folder: Path, *, reserved_suffix: str | None = None, what: str = "upload") -> Tree:
    """The regular files an upload of ``folder`` sends (see the module docstring); :class:`TreeError`
    listing every problem when there is one."""
    root = os.path.realpath(folder)
    if not os.path.isdir(root):
        raise TreeError(f"{folder}: not a folder", hint="point the spec at the folder that holds the data")
    tree = Tree(Path(root))
    problems: list[str] = []
    visits: dict[str, int] = {root: 1}
    stack: list[tuple[str, str, tuple[str, ...]]] = [(root, "", (root,))]
    while stack:
        real_dir, prefix, chain = stack.pop()
        try:
            with os.scandir(real_dir) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as exc:
            problems.append(f"{shown(prefix) or '.'}: cannot be read ({exc.strerror})")
            continue
        below: list[tuple[str, str, tuple[str, ...]]] = []
        for entry in entries:
            rel = prefix + entry.name
            bad = _name_problem(entry.name, reserved_suffix)
            if bad:
                problems.append(f"{shown(rel)}: {bad}")
                continue
            real = entry.path                   # real_dir is real, so a non-link entry is too
            try:
                st = os.lstat(real)
                if stat.S_ISLNK(st.st_mode):
                    target = os.readlink(real)
                    real = os.path.realpath(entry.path)
                    if not _inside(real, root):
                        problems.append(f"{shown(rel)} -> {shown(target)}: a link out of the folder")
                        continue
                    st = os.stat(real)
            except FileNotFoundError:
                tree.notes.append(f"{shown(rel)}: a link to nothing, skipped")
                continue
            except OSError as exc:
                problems.append(f"{shown(rel)}: {'a loop of links' if exc.errno == 40 else exc.strerror}")
                continue
            if stat.S_ISDIR(st.st_mode):
                if real in chain:
                    inner = os.path.relpath(real, root)
                    problems.append(f"{shown(rel)}: a link back to {'the folder itself' if inner == '.' else shown(inner)} "
                                    "(a loop)")
                    continue
                visits[real] = visits.get(real, 0) + 1
                if visits[real] > MAX_VISITS:
                    problems.append(f"{shown(rel)}: links bring {shown(os.path.relpath(real, root))} into the "
                                    f"{what} more than {MAX_VISITS} times")
                    continue
                below.append((real, rel + "/", chain + (real,)))
            elif stat.S_ISREG(st.st_mode):
                tree.files.append(Entry(rel, Path(real), st.st_size, st.st_mtime_ns))
            else:
                tree.notes.append(f"{shown(rel)}: {_kind(st.st_mode)}, not a regular file; skipped")
        stack.extend(reversed(below))
        if len(tree.files) > MAX_FILES:
            raise TreeError(f"{folder}: more than {MAX_FILES:,} files; too many for one {what}",
                            hint="point the spec at a smaller folder, or keep the data in a bucket")
        if len(problems) >= SHOWN:
            break
    if problems:
        more = " (and perhaps more)" if len(problems) >= SHOWN else ""
        raise TreeError(f"{folder} cannot be uploaded as it is{more}:\n" + "\n".join(f"  {p}" for p in problems),
                        hint="copy the files a link points at into the folder (or remove the link), rename the "
                             "files named, then submit again")
    tree.files.sort(key=lambda e: e.rel)
    return tree


def _kind(mode: int) -> str:
    if stat.S_ISFIFO(mode):
        return "a fifo"
    if stat.S_ISSOCK(mode):
        return "a socket"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    return "a special file"


def unchanged(tree: Tree, folder: Path | None = None, *, what: str = "upload") -> None:
    """Walk the folder again; :class:`TreeError` when a file was added, removed or changed (size or
    modification time) since ``tree`` was taken: what was sent may mix old and new content."""
    again = walk(folder or tree.root, what=what)
    before, after = tree.fingerprint(), again.fingerprint()
    differ = sorted(rel for rel in before.keys() | after.keys() if before.get(rel) != after.get(rel))
    if differ:
        listed = ", ".join(shown(r) for r in differ[:5]) + (f" and {len(differ) - 5} more" if len(differ) > 5 else "")
        raise TreeError(f"{folder or tree.root} changed while it was uploaded ({listed}); the copy would mix "
                        "old and new files, so it is not used",
                        hint="wait until whatever writes to the folder is done (or copy it), then submit again: "
                             "the files already sent are not sent twice")
