"""The instance type for a job that names a GPU model (``resources.gpu_type``) and a count
(``resources.gpus``) but no type: the cheapest one that has capacity now, in the allowed regions,
whose GPU is that model and that has at least that many GPUs. Pure functions over the API's
instance types; stdlib only.

How a GPU model matches a type (case-insensitive): the words of ``gpu_type`` (split at anything
but letters and digits; ``nvidia`` and ``tesla`` dropped) must all be found in the type's name and
GPU description. The first word, the model, must be a whole word there, so ``A10`` is not an
``A100`` and ``H100`` is not a ``GH200``; the others may be run together (``80GB`` matches
"A100 (80 GB SXM4)"). So ``H100`` matches ``gpu_1x_h100_pcie`` and ``gpu_8x_h100_sxm5``,
``A100-80GB`` matches ``gpu_8x_a100_80gb_sxm4`` and not ``gpu_1x_a100_sxm4`` (40 GB).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Mapping, Sequence

from gpujob.hosts.lambda_api.models import InstanceType

_NOISE = {"nvidia", "tesla"}


def _words(text: str) -> list[str]:
    return [w for w in re.split(r"[^a-z0-9]+", text.lower()) if w]


def gpu_matches(gpu_type: str, itype: InstanceType) -> bool:
    """Whether ``itype``'s GPUs are the model ``gpu_type`` names (see the module docstring)."""
    wanted = [w for w in _words(gpu_type) if w not in _NOISE]
    if not wanted:
        return False
    text = f"{itype.name} {itype.gpu_description}"
    have = _words(text)
    joined = "".join(have)
    return wanted[0] in have and all(w in joined for w in wanted[1:])


@dataclass(frozen=True)
class TypeChoice:
    """The type chosen, the region to launch it in, and what was passed over and why."""

    itype: InstanceType
    region: str
    runner_up: InstanceType | None = None
    passed_over: list[str] = field(default_factory=list)   # "gpu_1x_h100_pcie ($2.49/h): no capacity now"

    def describe(self) -> str:
        t = self.itype
        line = f"{t.name} (${t.price_per_hour:.2f}/h, {t.gpus}x {t.gpu_description or t.description}) in {self.region}"
        if self.runner_up is not None:
            line += f"; next cheapest: {self.runner_up.name} (${self.runner_up.price_per_hour:.2f}/h)"
        return line


class NoMatchingType(Exception):
    """No type fits: the message lists the types with that GPU and where they have capacity."""

    def __init__(self, message: str, hint: str) -> None:
        super().__init__(message)
        self.message, self.hint = message, hint


def choose_type(types: Mapping[str, InstanceType], gpu_type: str, gpus: int,
                regions: Sequence[str] = ()) -> TypeChoice:
    """The cheapest type with ``gpu_type`` GPUs, at least ``max(gpus, 1)`` of them, and capacity in
    one of ``regions`` (any region when empty). Ties go to fewer GPUs, then the name. Raises
    :class:`NoMatchingType` when none fits."""
    need = max(gpus, 1)
    allowed = set(regions)
    model = [t for t in types.values() if gpu_matches(gpu_type, t)]
    fits, passed = [], []
    for t in sorted(model, key=_cost_key):
        where = [r for r in t.regions_with_capacity if not allowed or r in allowed]
        if t.gpus < need:
            passed.append(f"{t.name} (${t.price_per_hour:.2f}/h): {t.gpus} GPU{'s' if t.gpus != 1 else ''}, "
                          f"the job asks for {need}")
        elif not where:
            passed.append(f"{t.name} (${t.price_per_hour:.2f}/h): no capacity now"
                          + (f" in {', '.join(sorted(allowed))}" if allowed and t.regions_with_capacity else ""))
        else:
            fits.append((t, where[0]))
    if not fits:
        if not model:
            offered = sorted({t.gpu_description or t.name for t in types.values()})
            raise NoMatchingType(f"resources.gpu_type: no Lambda Cloud instance type has {gpu_type} GPUs",
                                 hint="GPUs offered: " + (", ".join(offered) or "none"))
        listed = "; ".join(_capacity_line(t) for t in sorted(model, key=_cost_key))
        raise NoMatchingType(
            f"resources.gpu_type: no {gpu_type} instance type with {need}+ GPU{'s' if need > 1 else ''} has "
            f"capacity now{' in ' + ', '.join(sorted(allowed)) if allowed else ''} ({listed})",
            hint="try again later, leave out runtime.region, or set runtime.host_type to a type "
                 "`gpujob host types --available` lists")
    (best, region), rest = fits[0], fits[1:]
    return TypeChoice(best, region, rest[0][0] if rest else None, passed)


def _cost_key(t: InstanceType) -> tuple:
    return (t.price_cents_per_hour, t.gpus, t.name)


def _capacity_line(t: InstanceType) -> str:
    where = ", ".join(t.regions_with_capacity) or "no capacity"
    return f"{t.name}: {t.gpus}x, ${t.price_per_hour:.2f}/h, {where}"


def matching_hosts(hosts: Iterable, types: Mapping[str, InstanceType], gpu_type: str, gpus: int) -> list:
    """Of ``hosts`` (records with ``instance_type``, ``price_cents_per_hour`` and ``settings["gpus"]``),
    those whose type has ``gpu_type`` GPUs, at least ``max(gpus, 1)``, cheapest first."""
    need = max(gpus, 1)
    out = []
    for h in hosts:
        t = types.get(h.instance_type)
        if t is None:  # a type the API no longer lists: judge by its name and recorded count
            t = InstanceType(h.instance_type, "", "", int(h.price_cents_per_hour or 0), 0, 0, 0,
                             int(h.settings.get("gpus") or 0))
        if gpu_matches(gpu_type, t) and t.gpus >= need:
            out.append(h)
    return sorted(out, key=lambda h: (h.price_cents_per_hour or 0, h.name))
