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
