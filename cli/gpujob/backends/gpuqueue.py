"""This machine's GPU queue: which local job holds which GPUs, and which jobs wait. Standard library only.

There is no queue daemon: each GPU job's supervisor (a detached process, so the queue outlives the CLI)
joins the queue, asks for its GPUs every :data:`POLL_S` seconds until it gets them, and leaves when its
job ends. They agree through one small file, ``$GPUJOB_HOME/gpu-queue.json``, read and rewritten whole
under an exclusive ``flock`` of ``gpu-queue.lock``, so two supervisors never decide at once.

A GPU is free only when no process of the job that held it is left. Every reader drops a waiting
entry whose supervisor no longer runs (pid and start time, :mod:`gpujob.procs`); a holding entry
whose supervisor was killed stays until the job's other processes are gone too
(:func:`gpujob.backends.reaper.job_processes`): a supervisor that finds one kills those known to be
the job's (its recorded pids, those carrying its id) and waits for any other left in the killed
supervisor's session, so a killed supervisor's GPUs are neither held for ever nor handed on while
its ranks still run.

The file is untrusted: the job is not told where it is (``GPUJOB_HOME`` is not in its environment),
but it runs as you and could write it. Each read checks every entry's types and bounds
(:meth:`~gpujob.gpu_rules.Entry.parse`); a file that fails (garbage, a wrong type) is *damaged*:
nothing waiting is given a GPU for :data:`HOLD_OFF_S`, while every holder puts its entry back
(each holder re-asserts it every :data:`ASSERT_S`). And before any GPU is given, the GPUs the
running jobs' processes were actually given (their ``CUDA_VISIBLE_DEVICES``) count as held,
whatever the file says.

The rules are :mod:`gpujob.gpu_rules` (shared with a rented host's queue, which its agent runs).
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import stat
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

from gpujob import procs
from gpujob.backends import reaper
from gpujob.gpu_rules import Entry, Wait, decide, ordinal, preview, wait_of  # noqa: F401 (this module's API)

STATE_NAME = "gpu-queue.json"
LOCK_NAME = "gpu-queue.lock"
POLL_S = 0.2  # how often a waiting supervisor asks again: a freed GPU is taken within about this long
ASSERT_S = 1.0  # how often a holding supervisor puts its entry back (should the file have lost it)
HOLD_OFF_S = 3 * ASSERT_S  # after a damaged read, no GPU is given for this long: every holder is back by then
MAX_BYTES = 1 << 20  # a larger file is damaged


# ----------------------------------------------------------------------------- the shared file


class GpuQueue:
    """The queue as the file under ``home`` ($GPUJOB_HOME) holds it."""

    def __init__(self, home: Path) -> None:
        self.path = home / STATE_NAME
        self.lock_path = home / LOCK_NAME
        self.jobs = home / "jobs"
        self._hold_off = 0.0  # no GPU is given before this time (a damaged file was read)
        self._damaged = False

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
            if self._hold_off > time.time():  # damaged: the holders are not all known yet
                return wait_of(entries, me.job_id)
            got = decide(entries, me.job_id)
            if got is not None:  # check against what running jobs were given, whatever the file says
                seen = self._in_use(entries, me.job_id)
                got = decide(entries + seen, me.job_id) if seen else got
            if got is None:
                return wait_of(entries, me.job_id)
            me.held = got
            return list(got)

    def hold(self, entry: Entry, held: list[str]) -> None:
        """A holder's entry, put back if the file lost it or changed it (each :data:`ASSERT_S`)."""
        with self._locked() as entries:
            mine = Entry.from_dict({**asdict(entry), "held": list(held)})
            current = next((e for e in entries if e.job_id == entry.job_id), None)
            if current is None or asdict(current) != asdict(mine):
                entries[:] = [e for e in entries if e.job_id != entry.job_id] + [mine]

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
            return [e for e in self._read()[0] if procs.alive(e.pid, e.start)]

    @contextmanager
    def _locked(self, *, write: bool = True) -> Iterator[list[Entry]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            before, self._hold_off = self._read()
            entries = [e for e in before if self._live(e, reap=write)]
            saved = [asdict(e) for e in before]  # as read: the caller changes the entries in place
            yield entries
            if write and ([asdict(e) for e in entries] != saved or self._damaged):
                self._write(entries)
        finally:
            os.close(fd)  # releases the lock

    def _live(self, entry: Entry, *, reap: bool) -> bool:
        """A waiting entry lives with its supervisor; a holding one while any process of its job is
        left. A supervisor (``reap``) kills what is left of a job whose supervisor was killed."""
        if procs.alive(entry.pid, entry.start):
            return True
        if not entry.held:
            return False
        known, session = reaper.job_processes(entry.job_id, self.jobs / entry.job_id, entry.pid, entry.start)
        if known and reap:
            reaper.kill_job(known)
        return bool(known or session)

    def _in_use(self, entries: list[Entry], me: str) -> list[Entry]:
        """Holders the file does not name: the GPUs the processes of this home's other jobs run with."""
        named = {e.job_id: set(e.held) for e in entries}
        used = reaper.job_gpus(lambda job_id: job_id != me and "/" not in job_id
                               and job_id not in (".", "..") and (self.jobs / job_id).is_dir())
        return [Entry(job_id, len(gpus), sorted(gpus), held=sorted(gpus)) for job_id, gpus in used.items()
                if not gpus <= named.get(job_id, set())]

    def _read(self) -> tuple[list[Entry], float]:
        """The entries and the hold-off time; a file that fails a check sets ``_damaged`` and holds
        GPUs back for :data:`HOLD_OFF_S` (keeping the valid entries it has)."""
        self._damaged = False
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            return [], 0.0
        except OSError:
            return self._damage([], 0.0)
        try:
            with os.fdopen(fd, "rb") as fh:
                if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
                    return self._damage([], 0.0)
                raw = fh.read(MAX_BYTES + 1)
        except OSError:
            return self._damage([], 0.0)
        try:
            data = json.loads(raw) if len(raw) <= MAX_BYTES else None
        except (ValueError, RecursionError):
            data = None
        if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
            return self._damage([], 0.0)
        hold_off = data.get("hold_off_until", 0.0)
        hold_off = min(float(hold_off), time.time() + HOLD_OFF_S) \
            if type(hold_off) in (int, float) and math.isfinite(hold_off) else time.time() + HOLD_OFF_S
        parsed = [Entry.parse(d) for d in data["entries"]]
        entries = [e for e in parsed if e is not None]
        if len(entries) != len(parsed) or len({e.job_id for e in entries}) != len(entries):
            return self._damage(list({e.job_id: e for e in entries}.values()), hold_off)
        return entries, hold_off

    def _damage(self, entries: list[Entry], hold_off: float) -> tuple[list[Entry], float]:
        self._damaged = True
        return entries, max(hold_off, time.time() + HOLD_OFF_S)

    def _write(self, entries: list[Entry]) -> None:
        tmp = self.path.with_name(f".{STATE_NAME}.{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"entries": [asdict(e) for e in entries],
                       **({"hold_off_until": self._hold_off} if self._hold_off > time.time() else {})}, fh)
        os.replace(tmp, self.path)
