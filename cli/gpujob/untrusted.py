"""Files gpujob reads back, read as untrusted input (standard library only).

Everything in a job's folder, a predictions file, the GPU queue's file, could have been written by the
job itself, by hand, or by a disk that failed. So every read here:

- opens without following a symlink (``O_NOFOLLOW``) and without blocking (``O_NONBLOCK``: a FIFO
  cannot hang it), and refuses what is not a regular file (a device such as ``/dev/urandom``,
  a FIFO, a socket): :class:`Refused`, whose words name the file and what is wrong;
- reads at most a bound (a file over it is refused, or only its tail is read);
- parses JSON only when its nesting is shallow (:data:`MAX_DEPTH`), so ``[[[[...`` is refused, not a
  RecursionError.

Type checks of what is inside are the readers' (records, registry rebuild, compare).
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import IO, Any

MAX_JSON_BYTES = 4 << 20   # result.json, launch.json, spec.json, handle.json: kilobytes when gpujob writes them
MAX_DEPTH = 64             # nesting of a JSON value gpujob reads back (a spec is far shallower)


class Refused(ValueError):
    """A stored file that is not read: not a regular file, too large, or not (shallow) JSON."""


def open_regular(path: str | os.PathLike) -> IO[bytes]:
    """``path`` opened for reading if it is a regular file (a symlink is not followed); Refused else.
    FileNotFoundError passes through (a missing file is not damage)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise
    except OSError as exc:
        if os.path.islink(path):
            raise Refused(f"{path}: a symlink, not a file gpujob wrote; it is not followed") from None
        raise Refused(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise Refused(f"{path}: not a regular file ({_kind(mode)}); it is not read")
        os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_bytes(path: str | os.PathLike, limit: int) -> bytes:
    """The whole file, if it is a regular file of at most ``limit`` bytes."""
    with open_regular(path) as fh:
        data = fh.read(limit + 1)
    if len(data) > limit:
        raise Refused(f"{path}: larger than {limit:,} bytes; it is not read")
    return data


def read_json(path: str | os.PathLike, limit: int = MAX_JSON_BYTES) -> Any:
    """The JSON value in ``path``: a regular file of at most ``limit`` bytes, nested at most
    :data:`MAX_DEPTH` deep. Refused (naming the file) for anything else."""
    return loads(read_bytes(path, limit), what=str(path))


def loads(data: str | bytes, *, what: str = "the value", max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that refuses deep nesting (before parsing), NaN/Infinity and bad UTF-8."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError:
            raise Refused(f"{what}: not UTF-8 text") from None
    if depth(data) > max_depth:
        raise Refused(f"{what}: JSON nested deeper than {max_depth} levels; it is not read")
    try:
        return json.loads(data, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        raise Refused(f"{what}: not valid JSON ({str(exc)[:120]})") from None


def depth(text: str) -> int:
    """The deepest nesting of ``[``/``{`` in JSON text (strings skipped); linear, no recursion."""
    deepest = level = 0
    in_string = escaped = False
    for ch in text:
        if in_string:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == '"':
                in_string = False
        elif ch == '"':
            in_string = True
        elif ch in "[{":
            level += 1
            deepest = max(deepest, level)
        elif ch in "]}":
            level -= 1
    return deepest


def tail_lines(path: Path, count: int, max_bytes: int) -> list[str]:
    """The last ``count`` lines of a regular file, from at most its last ``max_bytes`` (a line cut
    there loses its start); Refused for anything but a regular file."""
    with open_regular(path) as fh:
        end = fh.seek(0, os.SEEK_END)
        start = max(0, end - max_bytes)
        fh.seek(start)
        data = fh.read(end - start)
    lines = data.split(b"\n")
    if data.endswith(b"\n"):
        lines.pop()
    return [ln.decode("utf-8", "replace").rstrip("\r") for ln in lines[-count:]] if count > 0 else []


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number JSON has")


def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a file"
