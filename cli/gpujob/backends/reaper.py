"""Every process of a local job, found and stopped, wherever it went (Linux; stdlib only).

A job's processes can leave its process group (``setsid``, a double fork, torchrun's ranks in
sessions of their own). The supervisor therefore:

* makes itself a *child subreaper* (``PR_SET_CHILD_SUBREAPER``): an orphan anywhere below it is
  re-parented to it, not to init, so everything the job started stays in its process tree;
* starts the job with ``PR_SET_PDEATHSIG`` = SIGKILL, so the job's first process dies if the
  supervisor dies, whatever killed it;
* writes the tree's processes (pid and start time) to ``pids.json`` in the job's folder every
  second, so that whatever is left after the supervisor itself was killed is found and killed by
  the next gpujob command that looks at the job (:func:`kill_recorded`);
* at the end, kills the whole tree (:func:`kill_descendants`) until nothing of it is left.

Where ``prctl`` is missing (not Linux) these are no-ops and the process group and the
``GPUJOB_JOB_ID`` marker (:func:`gpujob.backends.local.kill_strays`) remain.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import time
from pathlib import Path
from typing import Callable

from gpujob import procs, untrusted

PR_SET_PDEATHSIG = 1
PR_SET_CHILD_SUBREAPER = 36
PIDS_NAME = "pids.json"


def _prctl(option: int, arg: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, arg, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def become_subreaper() -> bool:
    return _prctl(PR_SET_CHILD_SUBREAPER, 1)


def die_with_parent() -> None:
    """For ``preexec_fn``: this process gets SIGKILL when the process that started it dies."""
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def _table() -> dict[int, tuple[int, str, int]]:
    """pid -> (parent pid, state, start time) for every process we can see."""
    table = {}
    try:
        names = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        return table
    for name in names:
        try:
            fields = procs.stat_fields(int(name))
            table[int(name)] = (int(fields[1]), fields[0].decode(), int(fields[19]))
        except (OSError, IndexError, ValueError):
            continue
    return table


def descendants(root: int | None = None, table: dict | None = None) -> list[tuple[int, int]]:
    """(pid, start time) of every live process below ``root`` (default: this process), in ``table``
    (default: read now)."""
    root = os.getpid() if root is None else root
    table = _table() if table is None else table
    children: dict[int, list[int]] = {}
    for pid, (ppid, _state, _start) in table.items():
        children.setdefault(ppid, []).append(pid)
    found, todo = [], list(children.get(root, []))
    while todo:
        pid = todo.pop()
        ppid, state, start = table[pid]
        if state not in ("Z", "X"):
            found.append((pid, start))
        todo.extend(children.get(pid, []))
    return found


def reap(keep: int | None = None, table: dict | None = None) -> None:
    """Collect this process's finished children (orphans it adopted), all but ``keep``."""
    me = os.getpid()
    for pid, (ppid, state, _start) in (_table() if table is None else table).items():
        if ppid == me and state == "Z" and pid != keep:
            try:
                os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                pass


def kill_descendants(keep: int | None = None, timeout: float = 5.0) -> int:
    """SIGKILL everything below this process until nothing is left (a process forking as it
    dies is caught on the next pass). Returns how many processes were killed."""
    killed, deadline = 0, time.monotonic() + timeout
    while True:
        alive = descendants()
        if not alive or time.monotonic() > deadline:
            return killed
        killed += _kill(pid for pid, _start in alive)
        time.sleep(0.02)
        reap(keep)


def record(job_dir: Path, processes: list[tuple[int, int]]) -> None:
    """Write the job's processes for :func:`kill_recorded`; atomic, so a reader never sees half."""
    tmp = job_dir / f".{PIDS_NAME}.tmp"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(processes, fh)
        os.replace(tmp, job_dir / PIDS_NAME)
    except OSError:
        pass


def kill_recorded(job_dir: Path) -> int:
    """SIGKILL the processes recorded for a job whose supervisor is gone, and everything now below
    them; a pid reused by another process (a different start time) is left alone."""
    try:
        recorded = untrusted.read_json(job_dir / PIDS_NAME, 1 << 22)
        wanted = {int(pid): int(start) for pid, start in recorded}
    except (OSError, ValueError, TypeError):
        return 0
    killed = 0
    for _ in range(20):
        table = _table()
        targets = {pid for pid, start in wanted.items() if pid in table and table[pid][2] == start
                   and table[pid][1] not in ("Z", "X")}
        for pid in list(targets):  # their children, remembered: once a parent dies they move to init
            below = dict(descendants(pid))
            wanted.update(below)
            targets.update(below)
        if not targets:
            return killed
        killed += _kill(targets)
        time.sleep(0.02)
    return killed


def job_processes(job_id: str, job_dir: Path, sid: int, sid_start: int | None) -> tuple[dict[int, int], set[int]]:
    """The live processes of a job whose supervisor (``sid``, started at ``sid_start``) is gone:
    pid -> start time of those known to be the job's (recorded in ``pids.json`` with their start
    time, or carrying the job's id in their environment, ``GPUJOB_JOB_ID``: a rank in a session of
    its own; and everything below them), which may be killed; and the pids of the others left in the
    supervisor's session (started after it, while no new process holds its pid), which count as the
    job's but are not killed (a pid reused as a new session's id must not cost someone else's
    processes). Used by the GPU queue: a job's GPUs are free only when both are empty."""
    table, me = _table(), os.getpid()
    found: dict[int, int] = {}
    session: set[int] = set()
    new_session = sid in table and table[sid][2] != sid_start  # its pid now names another process
    try:
        recorded = {int(pid): int(start) for pid, start in untrusted.read_json(job_dir / PIDS_NAME, 1 << 22)}
    except (OSError, ValueError, TypeError):
        recorded = {}
    needle = f"GPUJOB_JOB_ID={job_id}".encode()
    for pid, (_ppid, state, start) in table.items():
        if pid == me or state in ("Z", "X"):
            continue
        if recorded.get(pid) == start:
            found[pid] = start
            continue
        if sid and not new_session and _session(pid) == sid and (sid_start is None or start >= sid_start):
            session.add(pid)
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if needle in fh.read(1 << 20).split(b"\0"):
                    found[pid] = start
        except OSError:  # gone, or not ours
            continue
    for pid in list(found):
        found.update(descendants(pid, table))
    return found, session - set(found)


def _session(pid: int) -> int | None:
    try:
        return int(procs.stat_fields(pid)[3])
    except (OSError, IndexError, ValueError):
        return None


def job_gpus(is_job: Callable[[str], bool]) -> dict[str, set[str]]:
    """The GPUs (CUDA_VISIBLE_DEVICES) that the live processes of each job (``GPUJOB_JOB_ID``, for
    which ``is_job`` is true) were given: what the GPU queue checks its file against before it gives
    a GPU away."""
    used: dict[str, set[str]] = {}
    me = os.getpid()
    try:
        names = [e.name for e in os.scandir("/proc") if e.name.isdigit() and int(e.name) != me]
    except OSError:
        return used
    for name in names:
        try:
            with open(f"/proc/{name}/environ", "rb") as fh:
                env = dict(v.split(b"=", 1) for v in fh.read(1 << 20).split(b"\0") if b"=" in v)
        except OSError:
            continue
        job, visible = env.get(b"GPUJOB_JOB_ID"), env.get(b"CUDA_VISIBLE_DEVICES")
        if job and visible:
            job_id = job.decode("utf-8", "replace")
            if is_job(job_id):
                used.setdefault(job_id, set()).update(
                    u for u in visible.decode("utf-8", "replace").split(",") if u.strip())
    return used


def kill_job(processes: dict[int, int]) -> int:
    """SIGKILL the processes found by :func:`job_processes` that are still the same processes."""
    table = _table()
    return _kill(pid for pid, start in processes.items() if pid in table and table[pid][2] == start)


def watch(job_dir: Path, keep: int) -> None:
    """The supervisor's check each second, on one reading of /proc: record the job's processes for
    whoever comes after a killed supervisor, and collect the orphans that finished."""
    table = _table()
    record(job_dir, descendants(table=table))
    reap(keep, table)


def _kill(pids) -> int:
    """SIGKILL each; how many signals were delivered."""
    sent = 0
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            sent += 1
        except (ProcessLookupError, PermissionError):
            pass
    return sent
