"""Sweeps: ``--grid key.path=v1,v2`` options, their combinations, and what each job of a sweep is called.

A grid axis is one spec key and the values to try, written as ``--set`` writes one value (YAML:
``1e-5`` is a number, ``none`` a string, ``[a, b]`` a list), separated by commas outside brackets and
quotes. The combinations are the cartesian product of the axes, in the order the axes and values
were given (the last axis varies fastest), numbered from 1. Each combination is turned into ``--set``
overrides, so its values are typed, checked and reported exactly as ``--set`` values are.

Every job of a sweep gets ``name: <name>-<n>`` and ``output.dir: <output.dir>/<sweep id>-<n>``, n being
its combination's number: the same spec, grid and sweep id always give the same names, which is how
``gpujob sweep --resume`` finds the combinations not submitted yet. Stdlib-only.
"""

from __future__ import annotations

import itertools
import json
import math
import secrets
import string
from dataclasses import dataclass
from typing import Sequence

from gpujob.errors import UserError

# Keys a sweep sets on every job itself.
OWN_KEYS = ("name", "output.dir")
NAME_MAX = 53  # the spec's limit on name
# The most jobs one sweep may make (README, Sweeps): each combination is loaded, checked and submitted
# before any starts, so the count is checked first, from the axes' lengths, before anything is expanded.
MAX_COMBINATIONS = 1000
GRID_EXAMPLE = "--grid training.learning_rate=1e-5,3e-5"
_QUOTES = "'\""
_OPEN, _CLOSE = "[{", "]}"


@dataclass(frozen=True)
class Axis:
    """One ``--grid``: a spec key and the values to try, each as the text ``--set`` would read."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class Combination:
    """One job of a sweep: its number (from 1) and the value text of each axis, in axis order."""

    n: int
    settings: tuple[tuple[str, str], ...]

    @property
    def overrides(self) -> list[str]:
        """The combination as ``--set`` overrides."""
        return [f"{key}={value}" for key, value in self.settings]

    @property
    def words(self) -> str:
        """``training.learning_rate=1e-5, training.freeze=none``: how the combination is named to people."""
        return ", ".join(f"{key}={value.strip()}" for key, value in self.settings)


def split_values(text: str) -> list[str]:
    """``text`` split at the commas that are outside brackets and quotes: ``[a, b],[c]`` is two values."""
    values, depth, quote, start = [], 0, None, 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = None
        elif ch in _QUOTES:
            quote = ch
        elif ch in _OPEN:
            depth += 1
        elif ch in _CLOSE:
            depth = max(depth - 1, 0)
        elif ch == "," and depth == 0:
            values.append(text[start:i])
            start = i + 1
    values.append(text[start:])
    return values


def parse_grid(items: Sequence[str], set_keys: Sequence[str] = ()) -> list[Axis]:
    """The ``--grid`` options as axes; a UserError naming the option for any that is malformed, a key
    given twice (or also given to ``--set``), a key the sweep sets itself, or a value given twice."""
    if not items:
        raise UserError("a sweep needs at least one --grid key.path=v1,v2", hint=f"e.g. {GRID_EXAMPLE}")
    axes: list[Axis] = []
    set_keys = {canonical_key(k.partition("=")[0]) for k in set_keys}
    for raw in items:
        key, eq, text = raw.partition("=")
        key = key.strip()
        where = f"--grid {raw[:80]!r}"
        if not eq or not key:
            raise UserError(f"{where}: write key.path=value1,value2", hint=f"e.g. {GRID_EXAMPLE}")
        if any(not part.strip() for part in canonical_key(key).split(".")):
            raise UserError(f"{where}: the key {key!r} has an empty part", hint=f"e.g. {GRID_EXAMPLE}")
        if canonical_key(key) in OWN_KEYS:
            raise UserError(f"{where}: a sweep sets {key} of each job itself (<{key}>-<n>)",
                            hint="set the base with --set; the sweep adds a suffix per combination")
        if any(canonical_key(key) == canonical_key(a.key) for a in axes):
            raise UserError(f"{where}: {key} is given to --grid twice", hint="give all its values in one --grid")
        if canonical_key(key) in set_keys:
            raise UserError(f"{where}: {key} is given to both --set and --grid", hint="drop one of them")
        values = split_values(text)
        _check_count([*axes, Axis(key, tuple(values))], items)
        empty = [i + 1 for i, v in enumerate(values) if not v.strip()]
        if empty:
            raise UserError(f"{where}: value {empty[0]} of {key} is empty",
                            hint="separate values with single commas; quote a value that holds a comma")
        seen: set[str] = set()
        twice = next((v for v in (v.strip() for v in values) if v in seen or seen.add(v)), None)
        if twice is not None:
            raise UserError(f"{where}: {key} lists {twice} twice", hint="each value makes one job; list it once")
        axes.append(Axis(key, tuple(values)))
    return axes


def count(axes: Sequence[Axis]) -> int:
    """How many combinations the axes make (their lengths' product), without making them."""
    return math.prod(len(a.values) for a in axes)


def _check_count(axes: Sequence[Axis], items: Sequence[str]) -> None:
    """A UserError as soon as the axes so far make more than MAX_COMBINATIONS jobs (the full count
    is the product of every --grid's value count, each known before any value is checked)."""
    if count(axes) <= MAX_COMBINATIONS:
        return
    total = math.prod(len(split_values(raw.partition("=")[2])) for raw in items)
    sizes = " x ".join(str(len(split_values(raw.partition("=")[2]))) for raw in items)
    raise UserError(f"--grid: the sweep would make {total:,} jobs ({sizes}); a sweep makes at most "
                    f"{MAX_COMBINATIONS:,}", hint="list fewer values, or split the grid into several sweeps")


def canonical_key(key: str) -> str:
    """``data.train[0].weight`` as ``data.train.0.weight`` (``--set`` accepts both)."""
    return key.strip().replace("[", ".").replace("]", "")


def combinations(axes: Sequence[Axis]) -> list[Combination]:
    """The cartesian product of the axes, numbered from 1 (the last axis varies fastest); a UserError
    before anything is made when there would be more than MAX_COMBINATIONS."""
    if count(axes) > MAX_COMBINATIONS:
        raise UserError(f"--grid: the sweep would make {count(axes):,} jobs; a sweep makes at most "
                        f"{MAX_COMBINATIONS:,}", hint="list fewer values, or split the grid into several sweeps")
    product = itertools.product(*[[(a.key, v) for v in a.values] for a in axes])
    return [Combination(n, tuple(settings)) for n, settings in enumerate(product, start=1)]


def member_name(name: str, n: int) -> str:
    """``<name>-<n>``, the name cut so the whole stays within the spec's 53 characters."""
    suffix = f"-{n}"
    return name[: NAME_MAX - len(suffix)].rstrip("-") + suffix


def member_output_dir(base: str, sweep_id: str, n: int) -> str:
    """``<base>/<sweep id>-<n>``: each job of a sweep writes to its own folder under the spec's."""
    return f"{base.rstrip('/')}/{sweep_id}-{n}"


def member_overrides(combo: Combination, *, name: str, output_dir: str, sweep_id: str) -> list[str]:
    """The ``--set`` overrides that make the combination's job: its values, its name and its folder."""
    return [*combo.overrides, f"name={member_name(name, combo.n)}",
            f"output.dir={json.dumps(member_output_dir(output_dir, sweep_id, combo.n))}"]


def new_sweep_id() -> str:
    """Six characters like a job id, but starting with ``s``: ``s4k2x9``."""
    alphabet = string.ascii_lowercase + string.digits
    return "s" + "".join(secrets.choice(alphabet) for _ in range(5))
