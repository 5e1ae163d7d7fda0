"""What a job costs: its price per hour, the most it can cost, its budget as a time, and what an earlier
run of the same model on the same GPUs says about its length.

A job's price (USD per hour of running, for all its GPUs and nodes) comes from, in this order:

1. ``resources.price_per_hour`` in the spec;
2. your price table, ``$GPUJOB_HOME/prices.yaml`` (USD per GPU-hour, by backend; for kubernetes by
   kubeconfig context first)::

       local: {RTX-4090: 0.40, gpu: 0.80, cpu: 0.02}   # gpu: any GPU type not named; cpu: a job without GPUs
       docker: {gpu: 1.10}
       kubernetes:
         gpu-cluster: {H100: 2.49, A100-80GB: 1.29}   # the context's name
         default: {gpu: 2.00}                         # any other context

3. the price a Kubernetes admin published for the cluster (ConfigMap ``gpujob-prices``, the same
   mapping as one context's entry), read by the kubernetes backend at submit;
4. a rented host's price from its provider's API (the host backend, at submit).

Nothing known: the price is unknown, and so is the cost (never shown as $0.00).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable, Mapping

from gpujob.errors import UserError
from gpujob.progress_state import ProgressState
from gpujob.records import budget_seconds, gpujob_home
from gpujob.words import fmt_duration

if TYPE_CHECKING:
    from gpujob.records import Job
    from gpujob.spec.models import JobSpec

PRICES_NAME = "prices.yaml"
MAX_PRICE = 100_000.0  # USD per GPU-hour: the spec's bound
ANY_GPU, NO_GPU, ANY_CONTEXT = "gpu", "cpu", "default"


@dataclass(frozen=True)
class Price:
    """USD per hour of running, for the whole job, and where that figure came from (in words)."""

    usd_per_hour: float
    source: str


# ----------------------------------------------------------------------------- the price table


def table_path(home: Path | None = None) -> Path:
    return (home or gpujob_home()) / PRICES_NAME


def _table_name() -> str:
    """The price table's path as people write it: ``~/.gpujob/prices.yaml``."""
    return str(table_path()).replace(str(Path.home()), "~", 1)


def load_table(path: Path | None = None, *, backends: Mapping[str, bool]) -> dict[str, Any]:
    """The price table as plain data ({} when there is none); a UserError naming the file and the key
    for anything that is not a price. ``backends``: those that may have an entry, each True when its entry
    may be keyed by scope first (:func:`gpujob.backends.price_tables`); such an entry is read as
    {scope: prices}, a plain one becoming the default scope's."""
    from gpujob.spec.yaml_bounded import parse_yaml  # the spec's reader: only commands that price a spec

    path = path or table_path()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"{path}: cannot be read ({exc})", hint="fix or remove the price table") from None
    data = parse_yaml(text, str(path))
    if data is None:
        return {}
    names = list(backends)
    if not isinstance(data, Mapping):
        raise UserError(f"{path}: expected a mapping of backends ({', '.join(names)}) to prices",
                        hint="see README.md, \"Money\": local: {gpu: 0.80}")
    table: dict[str, Any] = {}
    for backend, entries in data.items():
        if backend not in backends:
            raise UserError(f"{path}: {backend}: not a backend with a price table", hint=f"use "
                            f"{', '.join(names[:-1])} or {names[-1]} (rented hosts have their provider's price)")
        if backends[backend] and isinstance(entries, Mapping) and any(isinstance(v, Mapping) for v in entries.values()):
            table[backend] = {str(ctx): check_entries(v, f"{path}: {backend}.{ctx}") for ctx, v in entries.items()}
        else:
            table[backend] = check_entries(entries, f"{path}: {backend}")
            if backends[backend]:
                table[backend] = {ANY_CONTEXT: table[backend]}
    return table


def check_entries(entries: Any, where: str) -> dict[str, float]:
    """{GPU type | gpu | cpu: USD per hour}; a UserError naming ``where`` and the key otherwise."""
    if not isinstance(entries, Mapping):
        raise UserError(f"{where}: expected a mapping of GPU types to USD per GPU-hour, e.g. {{H100: 2.49, gpu: 1.0}}",
                        hint="`gpu` is any GPU type not named, `cpu` a job without GPUs")
    out: dict[str, float] = {}
    for key, value in entries.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or not 0 <= value <= MAX_PRICE:
            raise UserError(f"{where}.{key}: expected a price in USD per hour from 0 to {MAX_PRICE:g}, got {value!r:.40}",
                            hint="write a plain number, e.g. 2.49")
        out[str(key).lower()] = float(value)
    return out


def _from_entries(entries: Mapping[str, float], spec: "JobSpec", where: str) -> Price | None:
    gpus = spec.gpus * spec.resources.nodes
    if gpus == 0:
        per_hour = entries.get(NO_GPU)
        return Price(per_hour * spec.resources.nodes, f"{where}.{NO_GPU}") if per_hour is not None else None
    gpu_type = (spec.resources.gpu_type or "").lower()
    key = gpu_type if gpu_type in entries else ANY_GPU if ANY_GPU in entries else None
    if key is None:
        return None
    return Price(entries[key] * gpus, f"{where}.{key} x {gpus} GPU{'s' if gpus != 1 else ''}")


# ----------------------------------------------------------------------------- a job's price


def job_price(spec: "JobSpec", backend: str, *, table: Mapping[str, Any], by_scope: bool = False,
              context: str | None = None, published: Mapping[str, float] | None = None,
              table_name: str | None = None) -> Price | None:
    """The job's price before it is submitted (the host backend adds its host's price at submit), from
    ``table`` (:func:`load_table`'s); ``by_scope``: the backend's entry is keyed by scope first, ``context``
    the job's (the backend's ``price_scope``)."""
    if spec.resources.price_per_hour is not None:
        return Price(float(spec.resources.price_per_hour), "resources.price_per_hour")
    name = table_name or _table_name()
    entries, where = table.get(backend), f"{name}: {backend}"
    if by_scope and entries:  # by context first
        scope = context if context in entries else ANY_CONTEXT
        entries, where = entries.get(scope), f"{where}.{scope}"
    found = _from_entries(entries, spec, where) if entries else None
    if found is None and published:
        found = _from_entries(published, spec, "the cluster's published prices (ConfigMap gpujob-prices)")
    return found


def most_it_can_cost(price: Price | None, spec: "JobSpec") -> tuple[float, str] | None:
    """The most the job can cost and the limit that says so (``limits.max_runtime`` or ``limits.max_cost``);
    None when nothing bounds it (or the price is unknown)."""
    if price is None:
        return None
    if price.usd_per_hour == 0:
        return 0.0, "a price of $0/h"
    bounds = []
    if spec.limits.max_runtime_seconds:
        bounds.append((price.usd_per_hour * spec.limits.max_runtime_seconds / 3600.0,
                       f"limits.max_runtime {spec.limits.max_runtime}"))
    if spec.limits.max_cost is not None:
        bounds.append((float(spec.limits.max_cost), "limits.max_cost"))
    return min(bounds) if bounds else None


# ----------------------------------------------------------------------------- what earlier runs say


@dataclass(frozen=True)
class Throughput:
    steps_per_s: float
    job_id: str
    total_steps: int | None  # the earlier run's, when its data and epochs were the same as this job's


def _same_setup(spec: "JobSpec", other: "JobSpec | None") -> bool:
    """Same model, GPU type and count, nodes and batch: an earlier run's speed holds for this job."""
    if other is None:
        return False
    res, tr = other.resources, other.training
    return (other.kind == spec.kind and other.model.checkpoint == spec.model.checkpoint
            and res.gpu_type == spec.resources.gpu_type and res.gpus == spec.resources.gpus
            and res.nodes == spec.resources.nodes
            and tr.per_device_batch_size == spec.training.per_device_batch_size
            and tr.gradient_accumulation_steps == spec.training.gradient_accumulation_steps
            and tr.freeze == spec.training.freeze)


def earlier_throughput(spec: "JobSpec", jobs: Iterable["Job"]) -> Throughput | None:
    """The steps per second of the newest earlier train/evaluate run with the same setup (``jobs``: newest first)."""
    if spec.kind == "command":
        return None
    for job in jobs:
        if not _same_setup(spec, job.spec):
            continue
        state = ProgressState.from_dict(job.progress)
        rate = state.steps_per_s
        if not rate or rate <= 0 or not math.isfinite(rate):
            continue
        same_data = job.spec.data == spec.data and job.spec.training.epochs == spec.training.epochs
        return Throughput(rate, job.id, state.total_steps if same_data and state.total_steps else None)
    return None


def projected(price: Price | None, spec: "JobSpec", seen: Throughput | None) -> tuple[float, float] | None:
    """(USD, seconds) the whole job should take at the earlier run's speed; None when unknown."""
    if price is None or seen is None:
        return None
    steps = spec.training.max_steps or seen.total_steps
    if not steps:
        return None
    seconds = steps / seen.steps_per_s
    usd = price.usd_per_hour * seconds / 3600.0
    return (usd, seconds) if math.isfinite(seconds) and math.isfinite(usd) else None


def first_save_s(spec: "JobSpec", seen: Throughput | None) -> tuple[float, str] | None:
    """How long until the job's first evaluation or checkpoint, at the earlier run's speed."""
    if seen is None or spec.kind != "train":
        return None
    eval_at = spec.training.eval_steps if spec.data.eval else None
    steps, what = min((s, w) for s, w in ((spec.training.save_steps, "checkpoint"), (eval_at, "evaluation")) if s)
    seconds = steps / seen.steps_per_s
    return (seconds, f"its first {what} (step {steps})") if math.isfinite(seconds) else None


# ----------------------------------------------------------------------------- all of it, for render and submit


@dataclass
class Estimate:
    """What gpujob can say about a job's cost before it starts."""

    price: Price | None
    most: tuple[float, str] | None               # the most it can cost, and the limit that says so
    projected: tuple[float, float] | None        # (USD, seconds) at an earlier run's speed
    seen: Throughput | None
    warnings: list[str]
    problem: str | None = None                   # why submit refuses it (a budget without a price)
    provider_priced: bool = False                # the price comes from the provider once the machine is chosen

    @property
    def to_confirm(self) -> float | None:
        """The amount a confirmation threshold is compared with: the most it can cost, else the projected
        cost; infinity when priced and unbounded; None when the price is unknown."""
        if self.most is not None:
            return self.most[0]
        if self.projected is not None:
            return self.projected[0]
        return math.inf if self.price is not None and self.price.usd_per_hour > 0 else None


def unpriced_budget(spec: "JobSpec", price: Price | None, provider_priced: bool) -> str | None:
    """Why submit must refuse the job: a ``limits.max_cost`` that no known price makes enforceable.
    ``provider_priced``: the backend learns the price only when it picks the machine (a rented host's
    type), so a budget needs no price before submit there."""
    if spec.limits.max_cost is None or price is not None or provider_priced:
        return None
    return ("limits.max_cost is set, but the job has no price, so its budget cannot be enforced; set "
            f"resources.price_per_hour, or add a price for this backend and GPU type to {_table_name()}")


def estimate(spec: "JobSpec", price: Price | None, jobs: Iterable["Job"], provider_priced: bool) -> Estimate:
    """Price, bounds, projection and warnings for ``spec`` (``jobs``: the registry's, newest first) on a backend
    whose price comes from its provider at submit (``provider_priced``) or not."""
    seen = earlier_throughput(spec, jobs)
    warnings: list[str] = []
    max_cost = spec.limits.max_cost
    budget = budget_seconds(max_cost, price.usd_per_hour if price else None)
    save = first_save_s(spec, seen)
    if budget is not None and save is not None and budget < save[0]:
        warnings.append(
            f"limits.max_cost ${max_cost:g} buys {fmt_duration(budget)} of running at ${price.usd_per_hour:g}/h, but at "
            f"the speed of job {seen.job_id} ({seen.steps_per_s:.3g} steps/s) {save[1]} comes after {fmt_duration(save[0])}: "
            "the budget would stop it before anything is saved")
    return Estimate(price, most_it_can_cost(price, spec), projected(price, spec, seen), seen, warnings,
                    unpriced_budget(spec, price, provider_priced), provider_priced)
