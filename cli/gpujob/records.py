"""What the registry records, as plain data: a job (:class:`Job`) and a rented host (:class:`Host`),
their states, and gpujob's home (``$GPUJOB_HOME``, default ``~/.gpujob``), where each job has its
folder. Every layer may read these; only :mod:`gpujob.registry` stores them."""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any, Mapping

from gpujob import untrusted

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

ACTIVE = ("queued", "starting", "running", "cancelling")
TERMINAL = ("succeeded", "failed", "cancelled")
STATUSES = ACTIVE + TERMINAL

HOST_ACTIVE = ("launching", "booting", "provisioning", "ready", "terminating")

BUDGET_WORDS = "stopped at the budget of"  # how every backend's reason for a stop at limits.max_cost begins


# The longest running time a budget is turned into: 10 years. A price of 1e-310 USD/h and a budget of
# $1,000,000 buy 3.6e318 s (infinity as a float): every deadline derived from a budget (the supervisor's,
# docker's, activeDeadlineSeconds) is a whole number of seconds of at most 9 digits.
MAX_BUDGET_S = 10 * 365 * 24 * 3600


def budget_seconds(max_cost: float | None, price_per_hour: float | None) -> float | None:
    """``limits.max_cost`` as the running time it buys at ``price_per_hour`` (USD), at most MAX_BUDGET_S;
    None without a budget or a price, or when the job is free (its budget never runs out)."""
    if max_cost is None or not price_per_hour or math.isnan(max_cost) or math.isnan(price_per_hour):
        return None
    try:
        seconds = max_cost / price_per_hour * 3600.0
    except (OverflowError, ZeroDivisionError):
        return float(MAX_BUDGET_S)
    return float(MAX_BUDGET_S) if math.isnan(seconds) else min(max(seconds, 0.0), float(MAX_BUDGET_S))


def budget_comes_first(budget_s: float | None, max_runtime_s: float | None) -> bool:
    """True when a budget of ``budget_s`` runs out before ``limits.max_runtime``: the deadline is the budget."""
    return budget_s is not None and (max_runtime_s is None or budget_s < max_runtime_s)


_BAD = object()
MAX_TEXT = 100_000  # a longer text in a record is cut


def _text(value: Any) -> Any:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    return value[:MAX_TEXT] if isinstance(value, str) else _BAD


def _number(value: Any) -> Any:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and abs(value) < 1e15
    return float(value) if ok else _BAD


def _exit_code(value: Any) -> Any:
    return value if isinstance(value, int) and not isinstance(value, bool) and -(2**31) <= value < 2**32 else _BAD


def read_spec(data: Mapping[str, Any]) -> "tuple[JobSpec | None, str | None]":
    """A stored spec (``spec_json``: the spec as submitted, defaults filled in) validated as a JobSpec, and
    None or what could not be read. A record written by another version may hold a key this one refuses:
    that key is read as its default (and named), the rest as stored. Never raises."""
    import copy

    from pydantic import ValidationError  # the spec's models: only when a job's spec is looked at

    from gpujob.spec.models import JobSpec

    data, dropped = copy.deepcopy(dict(data)), []
    for _ in range(50):
        try:
            spec = JobSpec.model_validate(data)
        except ValidationError as e:
            found = [_drop(data, err["loc"]) for err in e.errors()]
            if not any(found) or "apiVersion" not in data or "kind" not in data:
                return None, "its recorded spec could not be read by this version of gpujob"
            dropped += [f for f in found if f and f not in dropped]
            continue
        return spec, (f"its recorded spec's {', '.join(dropped)} could not be read by this version of gpujob; "
                      "read as the defaults" if dropped else None)
    return None, "its recorded spec could not be read by this version of gpujob"


def _drop(data: dict[str, Any], loc: tuple) -> str | None:
    """Remove from ``data`` the deepest key on the path ``loc`` (a validation error's; parts that are not
    keys, as a union's tag, are passed over); the dotted path removed, or None when none was."""
    parent, key, cur, path, where = None, None, data, [], None
    for part in loc:
        if isinstance(cur, dict) and part in cur:
            parent, key, cur = cur, part, cur[part]
            path.append(str(part))
            where = ".".join(path)
        elif isinstance(cur, list) and isinstance(part, int) and 0 <= part < len(cur):
            cur = cur[part]
            path.append(str(part))
    if parent is None or key in ("apiVersion", "kind") and parent is data:
        return None
    del parent[key]
    return where


# The spec's sections (JobSpec's fields that are mappings) and its other top-level keys' types: a stored
# spec of another shape has the wrong parts left out (and its job marked damaged), so nothing that reads
# `job.spec` meets a list where a mapping belongs.
SPEC_SECTIONS = ("model", "data", "training", "evaluation", "output", "resources", "runtime", "limits",
                 "distributed", "notify", "tracking")
SPEC_TEXT = ("apiVersion", "kind", "name", "description")


def _spec_shape(spec: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    wrong = [k for k in SPEC_SECTIONS if k in spec and not isinstance(spec[k], dict)]
    wrong += [k for k in SPEC_TEXT if k in spec and spec[k] is not None and not isinstance(spec[k], str)]
    if spec.get("command") is not None and not (isinstance(spec["command"], list) and all(isinstance(a, str) for a in spec["command"])):
        wrong.append("command")
    if spec.get("priority") is not None and not (type(spec["priority"]) is int and abs(spec["priority"]) < 10**9):
        wrong.append("priority")
    return ({k: v for k, v in spec.items() if k not in wrong}, wrong) if wrong else (spec, [])


def _obj(value: Any) -> dict[str, Any]:
    """A JSON object stored in a row, or {} when it is not one."""
    try:
        data = untrusted.loads(value) if isinstance(value, (str, bytes)) else None
    except untrusted.Refused:
        return {}
    return data if isinstance(data, dict) else {}


def gpujob_home() -> Path:
    return Path(os.environ.get("GPUJOB_HOME") or Path.home() / ".gpujob").expanduser()


@dataclass
class Job:
    id: str
    name: str
    kind: str
    backend: str
    status: str
    reason: str | None
    exit_code: int | None
    spec_path: str | None
    spec_data: dict[str, Any]   # the spec as stored (plain JSON); read it as ``spec``, the validated JobSpec
    output_dir: str | None
    handle: dict[str, Any]      # as stored; each backend reads it through its own model (backends.handle.Handle)
    progress: dict[str, Any]
    metrics: dict[str, Any]
    cost_usd: float
    created_at: float
    started_at: float | None
    finished_at: float | None
    updated_at: float
    price_usd_per_hour: float | None = None  # what the job costs per hour of running; None: unknown
    price_source: str | None = None          # where that price came from, in words
    sweep_id: str | None = None              # the sweep it was submitted in (gpujob sweep), if any
    transitions: list[tuple[str, float, str | None]] = field(default_factory=list)

    @property
    def active(self) -> bool:
        return self.status in ACTIVE

    @property
    def cost(self) -> float | None:
        """What the job has cost so far (USD): its price times its running time (queued time is free);
        None when its price is unknown. Older records know only ``cost_usd`` (rented hosts)."""
        if self.price_usd_per_hour is None:
            return self.cost_usd if self.cost_usd else None
        return self.price_usd_per_hour * (self.runtime_s or 0.0) / 3600.0

    def projected_cost(self, eta_s: float | None) -> float | None:
        """The cost at the end, should the job run ``eta_s`` more seconds; None when either is unknown."""
        if self.price_usd_per_hour is None or eta_s is None or not self.active:
            return None
        return self.price_usd_per_hour * ((self.runtime_s or 0.0) + eta_s) / 3600.0

    @property
    def budget_s(self) -> float | None:
        """``limits.max_cost`` as running time at the job's price (:func:`budget_seconds`)."""
        return budget_seconds(self.max_cost, self.price_usd_per_hour)

    @property
    def max_cost(self) -> float | None:
        """``limits.max_cost`` of the job's spec (USD), or None."""
        return self.spec.limits.max_cost if self.spec is not None else None

    @property
    def max_runtime_s(self) -> int | None:
        """``limits.max_runtime`` of the job's spec, in seconds; None when unset (or the spec unreadable)."""
        return self.spec.max_runtime_s if self.spec is not None else None

    @cached_property
    def spec(self) -> "JobSpec | None":
        """The job's spec, validated: what it was submitted with (:func:`read_spec`); None when the stored
        spec is not one this version reads (:attr:`spec_problem` says why)."""
        spec, self.spec_problem = read_spec(self.spec_data)
        return spec

    spec_problem: str | None = None  # why ``spec`` is None, once it was read

    @property
    def runtime_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.finished_at or time.time()) - self.started_at

    @property
    def job_dir(self) -> Path:
        return gpujob_home() / "jobs" / self.id

    damage: str | None = None  # what in its record could not be read (a row changed by hand, a disk fault)

    @classmethod
    def _from_row(cls, row: Mapping[str, Any]) -> "Job":
        """The job a registry row records; a row is untrusted (anyone can edit the file): every value is
        checked, and one that is wrong is replaced by "unknown" and named in ``damage``."""
        keys, bad = row.keys(), []

        def get(col: str, check, default=None, *, optional: bool = True):
            value = row[col] if col in keys else None  # a registry opened read-only may be older
            if value is None and optional:
                return default
            checked = check(value)
            if checked is _BAD:
                bad.append(col)
                return default
            return checked

        def obj(col: str) -> dict[str, Any]:
            value = row[col] if col in keys else None
            try:
                data = untrusted.loads(value, what=col) if isinstance(value, (str, bytes)) else None
            except untrusted.Refused:
                data = None
            if not isinstance(data, dict):
                bad.append(col.removesuffix("_json"))
                return {}
            return data

        status = get("status", lambda v: v if v in STATUSES else _BAD, "failed", optional=False)
        job = cls(
            id=get("id", _text, "?", optional=False), name=get("name", _text, "?", optional=False),
            kind=get("kind", _text, "unknown", optional=False), backend=get("backend", _text, "unknown", optional=False),
            status=status, reason=get("reason", _text), exit_code=get("exit_code", _exit_code),
            spec_path=get("spec_path", _text), spec_data=obj("spec_json"), output_dir=get("output_dir", _text),
            handle=obj("handle_json"), progress=obj("progress_json"), metrics=obj("metrics_json"),
            cost_usd=get("cost_usd", _number, 0.0) or 0.0, created_at=get("created_at", _number, 0.0, optional=False),
            started_at=get("started_at", _number), finished_at=get("finished_at", _number),
            updated_at=get("updated_at", _number, 0.0, optional=False),
            price_usd_per_hour=get("price_usd_per_hour", _number), price_source=get("price_source", _text),
            sweep_id=get("sweep_id", _text),
        )
        job.spec_data, wrong = _spec_shape(job.spec_data)
        if wrong:
            bad.append(f"spec: {', '.join(wrong)}")
        said = job.handle.get("damaged")  # what a rebuild from its folder could not read
        if bad:
            job.damage = f"its record in the registry is damaged ({', '.join(bad)} unreadable)"
        elif isinstance(said, str):
            job.damage = said[:500]
        return job


@dataclass
class Host:
    """A rented machine (``gpujob host up``). ``settings`` holds how to reach and lay out it
    (ssh, where gpujob's files live there, the image); ``heartbeat`` the idle agent's last word."""

    name: str
    provider: str
    instance_id: str | None
    instance_type: str
    region: str | None
    ip: str | None
    ssh_user: str
    ssh_port: int
    price_cents_per_hour: float
    state: str
    reason: str | None
    idle_minutes: float
    max_lifetime_s: float | None
    filesystem: str | None
    settings: dict[str, Any]
    heartbeat: dict[str, Any]
    heartbeat_seen_at: float | None
    check_after: float | None
    hard_deadline: float | None
    launched_at: float | None
    terminated_at: float | None
    created_at: float
    updated_at: float

    @property
    def active(self) -> bool:
        return self.state in HOST_ACTIVE

    @property
    def price_per_hour(self) -> float:
        return self.price_cents_per_hour / 100.0

    def uptime_s(self, now: float | None = None) -> float:
        if self.launched_at is None:
            return 0.0
        return max(0.0, (self.terminated_at or now or time.time()) - self.launched_at)

    def cost_usd(self, now: float | None = None) -> float:
        """What the instance has billed so far: its hourly price times the time since launch."""
        return self.price_per_hour * self.uptime_s(now) / 3600.0

    @classmethod
    def _from_row(cls, row: Mapping[str, Any]) -> "Host":
        data = dict(row)
        data["settings"] = _obj(data.pop("settings_json"))
        data["heartbeat"] = _obj(data.pop("heartbeat_json"))
        return cls(**data)
