"""Processes by pid and start time, read from /proc (Linux; stdlib only).

A pid alone can be reused; a pid with its start time (clock ticks since boot) names one process.
Used wherever gpujob asks whether a process it recorded is still the one it started: the local
backend, the registry's rebuild, the reaper.
"""

from __future__ import annotations

import os


def stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/PID/stat after the command name: [0] state, [1] parent pid, [19] start
    time. Raises FileNotFoundError when there is no such process, OSError where /proc is missing."""
    with open(f"/proc/{pid}/stat", "rb") as fh:
        return fh.read().rsplit(b")", 1)[1].split()


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (guards against pid reuse)."""
    try:
        return int(stat_fields(pid)[19])
    except (OSError, IndexError, ValueError):
        return None


def alive(pid: int | None, start: int | None) -> bool:
    """True when ``pid`` runs, is not a zombie, and (given ``start``) is the process that started then."""
    if not pid:
        return False
    try:
        fields = stat_fields(pid)
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    if fields[0] in (b"Z", b"X"):
        return False
    return start is None or int(fields[19]) == start


def group_members(pgid: int) -> list[int]:
    """The live processes (not zombies) of the process group ``pgid``, read from /proc; where there is
    no /proc, [pgid] while the kernel says the group has a member."""
    try:
        names = [e.name for e in os.scandir("/proc") if e.name.isdigit()]
    except OSError:
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return []
        return [pgid]
    found = []
    for name in names:
        try:
            fields = stat_fields(int(name))
        except (OSError, IndexError):
            continue
        if len(fields) > 2 and fields[2] == str(pgid).encode() and fields[0] not in (b"Z", b"X"):
            found.append(int(name))
    return found


PR_SET_DUMPABLE = 4


def not_dumpable() -> bool:
    """Mark this process not dumpable (Linux ``prctl(PR_SET_DUMPABLE, 0)``): its /proc/PID/environ, mem and
    fds become root's, so another process of the same user (a job it supervises) cannot read them; its
    children get the usual flag back when they exec. False where the kernel or libc does not offer it."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


# A process started through this is no child of its starter: the starter's environment (which may hold
# what the started process's own children must not read at /proc/$PPID/environ and up) is not its
# ancestor's. The first child forks, prints the grandchild's pid and exits; the grandchild starts a
# session of its own (its pid is its process group) and execs, with the log as its stdout and stderr.
_DETACH = ("import os, sys\n"
           "pid = os.fork()\n"
           "if pid == 0:\n"
           "    os.setsid()\n"
           "    os.dup2(2, 1)\n"
           "    os.execv(sys.executable, [sys.executable, *sys.argv[1:]])\n"
           "print(pid, flush=True)\n")


def spawn_detached(args: list[str], *, log, cwd: str, env: dict[str, str], stdin_data: bytes | None = None) -> int:
    """Start ``python ARGS`` (this interpreter) detached: not a child of this process, in a session of
    its own, ``log`` (a file open for writing) as its output, ``stdin_data`` (at most 64 KiB) on its
    stdin (else /dev/null). Returns its pid; an OSError when it could not be started."""
    import subprocess
    import sys

    first = subprocess.Popen([sys.executable, "-c", _DETACH, *args], cwd=cwd, env=env, close_fds=True,
                             stdin=subprocess.PIPE if stdin_data else subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=log)
    if stdin_data:
        with first.stdin:
            first.stdin.write(stdin_data)  # stays in the pipe for the grandchild, which holds its other end
    out = first.stdout.read()
    first.stdout.close()
    first.wait()
    try:
        return int(out)
    except ValueError:
        raise OSError(f"could not start python {' '.join(args)} (exit {first.returncode})") from None
