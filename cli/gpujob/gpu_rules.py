"""The rules of a GPU queue, as pure functions: which waiting job gets which GPUs, and where a waiting
job stands. Standard library only: shared by this machine's queue (:mod:`gpujob.backends.gpuqueue`,
run by the local jobs' supervisors) and a rented host's (:mod:`gpujob.hosts.agent.gpuqueue`, run by
its agent, which ships this file).

- Order: ``priority`` (higher first), then submit time, then job id.
- A job gets its own GPUs: ``gpus`` of its candidates that no other job holds.
- Strict order, no backfill: a waiting job never passes an earlier waiting job that could use any of the
  same GPUs, even when a GPU it could use is free. Without knowing how long jobs run, a small job let in
  ahead could delay the head job, which waits for that GPU too. A job none of whose GPUs an earlier
  waiting job can use does not wait for it.
- ``resources.share_gpus: true`` never waits: the job starts at once on its least-used candidates
  (free ones first, then those only other sharing jobs use, then the rest).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

SHOWN_IDS = 5  # job ids named in a waiting job's words


@dataclass
class Entry:
    """One GPU job in the queue: waiting (``held`` empty) or holding its GPUs."""

    job_id: str
    gpus: int                      # how many it asks for
    candidates: list[str]          # GPU UUIDs it may use, in order
    priority: int = 0
    submitted: float = 0.0         # the job's submit time (epoch seconds)
    share: bool = False            # resources.share_gpus
    pid: int = 0                   # its supervisor, with the start time that tells a reused pid apart
    start: int | None = None
    held: list[str] = field(default_factory=list)

    @property
    def order(self) -> tuple:
        return (-self.priority, self.submitted, self.job_id)

    @property
    def waiting(self) -> bool:
        return not self.held

    @classmethod
    def from_dict(cls, data: dict) -> "Entry":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    @classmethod
    def parse(cls, data: object) -> "Entry | None":
        """An entry read back from a file anyone may have written: every field of its exact type and
        in bounds, or None (the caller treats the state as damaged)."""
        if not isinstance(data, dict) or set(data) - set(cls.__dataclass_fields__):
            return None
        job_id, gpus, cands = data.get("job_id"), data.get("gpus"), data.get("candidates")
        priority, submitted = data.get("priority", 0), data.get("submitted", 0.0)
        pid, start, held = data.get("pid", 0), data.get("start"), data.get("held", [])
        if not (_text(job_id) and _int(gpus, 0, MAX_GPUS) and _uuids(cands) and _uuids(held)
                and _int(priority, -10**6, 10**6) and _int(pid, 0, 2**31) and isinstance(data.get("share", False), bool)
                and (start is None or _int(start, 0, 2**63)) and type(submitted) in (int, float)
                and math.isfinite(submitted) and len(held) <= len(cands)):
            return None
        return cls(job_id, gpus, list(cands), priority, float(submitted), data.get("share", False), pid, start,
                   list(held))


MAX_GPUS = 4096  # more than any machine has: a bound on what a file may claim


def _int(value: object, low: int, high: int) -> bool:
    return type(value) is int and low <= value <= high


def _text(value: object) -> bool:
    return type(value) is str and 0 < len(value) <= 200


def _uuids(value: object) -> bool:
    return type(value) is list and len(value) <= MAX_GPUS and all(_text(v) for v in value)


@dataclass(frozen=True)
class Wait:
    """Why a job waits: its place among the waiting jobs (1 = next) and whose jobs hold its GPUs."""

    position: int
    gpus: int
    total: int           # its candidate GPUs
    in_use: int          # of those, held by other jobs
    holders: tuple[str, ...]

    def words(self) -> str:
        """``1st in the GPU queue, waiting for 1 GPU (2 of 2 in use by jobs abc123, def456)``."""
        ids = ", ".join(self.holders[:SHOWN_IDS]) + (", ..." if len(self.holders) > SHOWN_IDS else "")
        use = (f"{self.in_use} of {self.total} in use by job{'s' if len(self.holders) != 1 else ''} {ids}"
               if self.holders else f"none of {self.total} in use; the jobs ahead of it go first")
        return (f"{ordinal(self.position)} in the GPU queue, waiting for {self.gpus} "
                f"GPU{'s' if self.gpus != 1 else ''} ({use})")

    def to_dict(self) -> dict:
        return {**asdict(self), "holders": list(self.holders), "words": self.words()}


def ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


# ----------------------------------------------------------------------------- the rules (pure)


def decide(entries: list[Entry], job_id: str) -> list[str] | None:
    """The GPUs the waiting job ``job_id`` gets now, or None while it must wait."""
    me = _find(entries, job_id)
    holders = [e for e in entries if e.held and e.job_id != job_id]
    if me.share:
        return _least_used(me, holders)
    wanted = set(me.candidates)
    if any(e.waiting and e.order < me.order and not e.share and wanted & set(e.candidates) for e in entries):
        return None  # an earlier job waits for some of the same GPUs: strict order
    busy = {uuid for e in holders for uuid in e.held}
    free = [uuid for uuid in me.candidates if uuid not in busy]
    return free[:me.gpus] if len(free) >= me.gpus else None


def wait_of(entries: list[Entry], job_id: str) -> Wait:
    """Where the waiting job ``job_id`` stands, for people."""
    me = _find(entries, job_id)
    waiting = sorted((e for e in entries if e.waiting and not e.share), key=lambda e: e.order)
    position = next(i for i, e in enumerate(waiting, 1) if e.job_id == job_id)
    mine = set(me.candidates)
    holders = sorted((e for e in entries if e.held and e.job_id != job_id and mine & set(e.held)),
                     key=lambda e: e.order)
    in_use = len(mine & {uuid for e in holders for uuid in e.held})
    return Wait(position, me.gpus, len(me.candidates), in_use, tuple(e.job_id for e in holders))


def _least_used(me: Entry, holders: list[Entry]) -> list[str]:
    exclusive = {uuid for e in holders if not e.share for uuid in e.held}
    users = {uuid: sum(uuid in e.held for e in holders) for uuid in me.candidates}
    ranked = sorted(me.candidates, key=lambda uuid: (uuid in exclusive, users[uuid], me.candidates.index(uuid)))
    return ranked[:me.gpus]


def _find(entries: list[Entry], job_id: str) -> Entry:
    for entry in entries:
        if entry.job_id == job_id:
            return entry
    raise KeyError(f"job {job_id} is not in the GPU queue")


def preview(entries: list[Entry], candidates: list[str], gpus: int, *, priority: int = 0,
            share: bool = False) -> tuple[list[str] | None, str]:
    """What a job submitted now would get (its GPUs, or None: it would wait), and that in words (render)."""
    me = Entry("(this job)", gpus, list(candidates), priority, float("inf"), share)
    entries = [*entries, me]
    got = decide(entries, me.job_id)
    if got is not None:
        busy = {uuid for e in entries if e.held for uuid in e.held}
        free = sum(uuid not in busy for uuid in candidates)
        how = "it shares GPUs (resources.share_gpus), so " if share else ""
        return got, f"{free} of {len(candidates)} GPUs free now; {how}it would start at once"
    return None, f"it would wait: {wait_of(entries, me.job_id).words()}"
