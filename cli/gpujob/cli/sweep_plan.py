"""A sweep before anything starts: every combination loaded and checked as submit checks a spec, the
plan shown, and the most the whole sweep can cost. Nothing here submits."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass
from typing import Any, Sequence

from gpujob.errors import GpujobError
from gpujob.sweeps import Axis, Combination, canonical_key, member_overrides


@dataclass
class Member:
    """One combination, ready to submit: its spec loaded with the combination's overrides, and its estimate."""

    combo: Combination
    loaded: Any   # gpujob.spec.LoadedSpec
    est: Any      # gpujob.pricing.Estimate


@dataclass
class Invalid:
    combo: Combination
    problems: list[str]


def check_all(file: str, overrides: Sequence[str], backend: str | None, combos: Sequence[Combination],
              axes: Sequence[Axis], *, name: str, output_dir: str, sweep_id: str, registry) -> tuple[
                  list[Member], list[Invalid], list[str]]:
    """Load every combination's spec and run submit's checks on it (spec, cross-field checks, the
    backend's render and preflight, local paths the job would not see, the runner's libraries, secrets,
    a budget without a price). Returns the valid members, the invalid combinations with their
    problems, and the warnings that only some combinations have."""
    from gpujob import service, user_config
    from gpujob.spec import SpecError, load_spec

    defaults = user_config.load().spec_defaults()
    grid_keys = {canonical_key(a.key) for a in axes}
    members, invalid, warnings = [], [], []
    for combo in combos:
        sets = [*overrides, *member_overrides(combo, name=name, output_dir=output_dir, sweep_id=sweep_id)]
        try:
            loaded = load_spec(file, sets, backend=backend, defaults=defaults)
        except SpecError as exc:
            invalid.append(Invalid(combo, [_problem_words(p, grid_keys) for p in exc.problems]))
            continue
        warnings += [f"combination {combo.n} ({combo.words}): {w}" for w in loaded.warnings]
        problems = []
        try:
            service.render(loaded)
            est = service.estimate(loaded, registry)
            if est.problem:
                problems.append(est.problem)
            else:
                service.check(loaded, registry, price=est.price)
        except GpujobError as exc:
            problems.append(exc.message + (f" (hint: {exc.hint})" if exc.hint else ""))
        if problems:
            invalid.append(Invalid(combo, problems))
        else:
            members.append(Member(combo, loaded, est))
    return members, invalid, warnings


def _problem_words(problem, grid_keys: set[str]) -> str:
    """A spec problem; one in a value of the grid is said to be in ``--grid``, not ``--set``."""
    text = str(problem)
    key = canonical_key(problem.key)
    if problem.file == "--set" and any(g == key or g.startswith(key + ".") for g in grid_keys):
        text = "--grid" + text[len("--set"):]
    return text


def invalid_lines(invalid: Sequence[Invalid], total: int) -> list[str]:
    """Each problem once, under the combinations that have it (``every combination`` when all do)."""
    by_problem: dict[str, list[Combination]] = {}
    for item in invalid:
        for problem in item.problems:
            by_problem.setdefault(problem, []).append(item.combo)
    lines = [f"error: {len(invalid)} of {total} combination{'s' if total != 1 else ''} "
             f"{'is' if len(invalid) == 1 else 'are'} invalid; nothing was submitted"]
    for problem, combos in by_problem.items():
        if len(combos) == total and total > 1:
            lines.append("  every combination:")
        else:
            lines += [f"  combination {c.n} ({c.words}):" for c in combos]
        lines.append(f"    {problem}")
    return lines


def plan_table(members: Sequence[Member], axes: Sequence[Axis], skipped: dict[int, str]) -> str:
    """#, the job's name, one column per grid key, and the job already submitted (``--resume``)."""
    header = ["#", "NAME", *[a.key for a in axes]]
    rows = [header]
    for m in members:
        row = [str(m.combo.n), m.loaded.spec.name, *[v.strip() for _, v in m.combo.settings]]
        if m.combo.n in skipped:
            row.append(f"(already submitted: job {skipped[m.combo.n]})")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows if i < len(r)) for i in range(len(header))]
    return "\n".join("  " + "  ".join(c.ljust(w) for c, w in zip(r, widths + [0])).rstrip() for r in rows)


def total_cost(members: Sequence[Member]) -> tuple[float | None, list[str]]:
    """The most the whole sweep can cost (what ``GPUJOB_CONFIRM_ABOVE`` is compared with: None when no
    combination is priced; infinity when one is priced and unbounded), and its lines for people."""
    from gpujob.cli import display

    amounts = [m.est.to_confirm for m in members]
    known = [a for a in amounts if a is not None]
    if not known:
        return None, ["cost:     unknown: no price (set resources.price_per_hour, or add one to "
                      "$GPUJOB_HOME/prices.yaml)"]
    total = sum(known)
    if math.isinf(total):
        words = "no limit bounds it (set limits.max_runtime or limits.max_cost)"
    else:
        words = f"at most {display.money(total)} for the {len(known)} priced job{'s' if len(known) != 1 else ''}"
    lines = [f"cost:     the whole sweep: {words}"]
    if len(known) < len(amounts):
        lines.append(f"          {len(amounts) - len(known)} job(s) have no price: their cost is unknown")
    return total, lines


def resume_command(file: str, grid: Sequence[str], overrides: Sequence[str], backend: str | None,
                   max_parallel: int | None, sweep_id: str) -> str:
    """The command that submits a sweep's combinations that are not submitted yet."""
    words = ["gpujob", "sweep", file]
    for g in grid:
        words += ["--grid", g]
    for s in overrides:
        words += ["--set", s]
    if backend:
        words += ["--backend", backend]
    if max_parallel:
        words += ["--max-parallel", str(max_parallel)]
    return shlex.join([*words, "--resume", sweep_id])
