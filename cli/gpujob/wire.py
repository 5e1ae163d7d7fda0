"""What crosses process and machine boundaries: container labels, the event-line prefix, and
Docker's timestamps. One copy, shared by the CLI, the Docker backend, the job runner and the idle
agent on a rented host (which gets this file shipped with it). Stdlib only.

Docker writes times as RFC 3339 with up to nine fraction digits ("RFC3339Nano"):
``2024-05-01T12:00:00.123456789Z``, or with an offset, ``2024-05-01T14:00:00+02:00``; the
fraction loses its trailing zeros (``.5Z``) or is absent. The kubelet writes its log timestamps
the same way. ``datetime.fromisoformat`` is not used: the host's python3 may be 3.10, which takes
neither ``Z`` nor nine digits.
"""

from __future__ import annotations

import calendar
import re
from datetime import datetime

# --------------------------------------------------------------------------- container labels

MANAGED_LABEL = "gpujob.dev/managed-by"     # = MANAGED_VALUE on every container and volume gpujob makes
MANAGED_VALUE = "gpujob"
ID_LABEL = "gpujob.dev/id"                  # the job id
NAME_LABEL = "gpujob.dev/name"              # the spec's name
KIND_LABEL = "gpujob.dev/kind"              # the spec's kind
IDLE_MINUTES_LABEL = "gpujob.dev/idle-minutes"   # limits.idle_minutes: the agent's hung-job limit
# A rented host's GPU queue (run by its agent): a job container created with these waits for its GPUs
GPUS_LABEL = "gpujob.dev/gpus"              # resources.gpus
PRIORITY_LABEL = "gpujob.dev/priority"      # the spec's priority
SUBMITTED_LABEL = "gpujob.dev/submitted"    # submit time, epoch seconds (FIFO within a priority)
SHARE_LABEL = "gpujob.dev/share-gpus"       # "true": resources.share_gpus
READY_FILE = "/run/gpujob/ready"            # copied into a queued container last: the client is done with it

# --------------------------------------------------------------------------- the progress protocol

EVENT_PREFIX = "@gpujob/v1 "                # what starts an event in a line of output (gpujob.progress)

# --------------------------------------------------------------------------- Docker's timestamps

_RFC3339 = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:\.(\d{1,9}))?(Z|[+-]\d\d:\d\d)")
_NS = 1_000_000_000
NEVER_BEFORE_YEAR = 1971    # the engine's "never" is year 1 (0001-01-01T00:00:00Z)


def _split(text: str | None) -> tuple[int, str] | None:
    """(whole seconds since the epoch, the fraction's digits) of an RFC 3339 time; None when it is
    not one (a field out of range included)."""
    m = _RFC3339.fullmatch(text or "")
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    zone = m.group(8)
    offset = 0
    if zone != "Z":
        hours, minutes = int(zone[1:3]), int(zone[4:6])
        if hours > 23 or minutes > 59:
            return None
        offset = (1 if zone[0] == "+" else -1) * (hours * 3600 + minutes * 60)
    try:
        datetime(year, month, day, hour, minute, second)   # checks the ranges (month 13, second 60)
    except ValueError:
        return None
    return calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)) - offset, m.group(7) or ""


def rfc3339_ns(text: str | None) -> int | None:
    """``"2026-11-25T10:00:00.5Z"`` -> nanoseconds since the epoch (exact); None when ``text`` is
    not an RFC 3339 time with ``Z`` or an offset and at most nine fraction digits."""
    parts = _split(text)
    if parts is None:
        return None
    seconds, digits = parts
    return seconds * _NS + int(digits.ljust(9, "0"))


def docker_time(text: str | None) -> float | None:
    """A Docker time (``State.StartedAt``, a log line's timestamp) as epoch seconds; None for the
    engine's "never" (year 1: any year before 1971) or anything that is not an RFC 3339 time."""
    parts = _split(text)
    if parts is None or int(text[:4]) < NEVER_BEFORE_YEAR:   # type: ignore[index]
        return None
    seconds, digits = parts
    return float(seconds) + float("0." + digits) if digits else float(seconds)
