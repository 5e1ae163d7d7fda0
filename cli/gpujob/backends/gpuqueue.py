"""This machine's GPU queue: which local job holds which GPUs, and which jobs wait. Standard library only.

There is no queue daemon: each GPU job's supervisor (a detached process, so the queue outlives the CLI)
joins the queue, asks for its GPUs every :data:`POLL_S` seconds until it gets them, and leaves when its
job ends. They agree through one small file, ``$GPUJOB_HOME/gpu-queue.json``, read and rewritten whole
under an exclusive ``flock`` of ``gpu-queue.lock``, so two supervisors never decide at once. Every
reader drops the entries of supervisors that no longer run (pid and start time, :mod:`gpujob.procs`):
a job whose supervisor was killed never holds GPUs for ever.

The rules are :mod:`gpujob.gpu_rules` (shared with a rented host's queue, which its agent runs).
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from gpujob import procs
from gpujob.gpu_rules import Entry, Wait, decide, ordinal, preview, wait_of  # noqa: F401 (this module's API)

STATE_NAME = "gpu-queue.json"
LOCK_NAME = "gpu-queue.lock"
POLL_S = 0.2  # how often a waiting supervisor asks again: a freed GPU is taken within about this long


# ----------------------------------------------------------------------------- the shared file


class GpuQueue:
    """The queue as the file under ``home`` ($GPUJOB_HOME) holds it."""

    def __init__(self, home: Path) -> None:
        self.path = home / STATE_NAME
        self.lock_path = home / LOCK_NAME

    def join(self, entry: Entry) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.job_id != entry.job_id] + [entry]

    def take(self, entry: Entry) -> list[str] | Wait:
        """The GPUs the job now holds (taken at once, under the lock), or where it waits. The entry
        joins again if it is missing (a file someone removed)."""
        with self._locked() as entries:
            me = next((e for e in entries if e.job_id == entry.job_id), None)
            if me is None:
                me = Entry.from_dict(asdict(entry))
                entries.append(me)
            if me.held:
                return list(me.held)
            got = decide(entries, me.job_id)
            if got is None:
                return wait_of(entries, me.job_id)
            me.held = got
            return list(got)

    def leave(self, job_id: str) -> None:
        with self._locked() as entries:
            entries[:] = [e for e in entries if e.job_id != job_id]

    def snapshot(self) -> list[Entry]:
        """The live entries, read without changing the file (for render)."""
        if not self.path.exists():
            return []
        try:
            with self._locked(write=False) as entries:
                return list(entries)
        except OSError:  # a home that is not ours (read-only use): read it as it is
            return [e for e in self._read() if procs.alive(e.pid, e.start)]

    @contextmanager
    def _locked(self, *, write: bool = True) -> Iterator[list[Entry]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            before = self._read()
            entries = [e for e in before if procs.alive(e.pid, e.start)]  # killed supervisors hold nothing
            saved = [asdict(e) for e in before]  # as read: the caller changes the entries in place
            yield entries
            if write and [asdict(e) for e in entries] != saved:
                self._write(entries)
        finally:
            os.close(fd)  # releases the lock

    def _read(self) -> list[Entry]:
        try:
            data = json.loads(self.path.read_text())
            return [Entry.from_dict(d) for d in data.get("entries", [])]
        except FileNotFoundError:
            return []
        except (ValueError, TypeError, AttributeError):
            return []  # never half-written (it is replaced whole); damaged by hand: waiting jobs join again

    def _write(self, entries: list[Entry]) -> None:
        tmp = self.path.with_name(f".{STATE_NAME}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"entries": [asdict(e) for e in entries]}, fh)
        os.replace(tmp, self.path)
