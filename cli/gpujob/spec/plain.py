"""ruamel's values as plain data, with the position of every key, and the values no key accepts.

:class:`Converter` turns what ruamel loaded into dict/list/str/int/float/bool/None and records the
1-based line and column of each key path; :func:`problem_at` places a message at a key path (or on
``--set``); :func:`unusable_values` finds numbers too large for any key and text with lone surrogates.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from typing import Any

from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.scalarbool import ScalarBoolean

from .errors import Fatal, Path_, Problem, fmt_path, model_at
from .limits import MAX_DEPTH, MAX_NODES, MAX_NUMBER
from .units import shown
from .yaml_bounded import Huge

_SURROGATE = re.compile("[\ud800-\udfff]")
SURROGATE_MSG = ("contains a lone UTF-16 surrogate (an escape like \\ud800, or bytes that are not UTF-8), "
                 "which is not a character; remove it")
SET = "--set"  # the file name of problems in --set overrides


def problem_at(path: Path_, message: str, file: str, positions: dict[Path_, tuple[int, int]],
               override_paths: set[Path_], missing: bool = False) -> Problem:
    """The problem ``message`` at ``path``: on --set if an override set it, else at the nearest key with a position."""
    if any(path[: len(o)] == o for o in override_paths):
        return Problem(SET, None, None, fmt_path(path), message)
    probe = path[:-1] if missing else path
    while probe not in positions and probe:
        probe = probe[:-1]
    line, col = positions.get(probe, (None, None))
    return Problem(file, line, col, fmt_path(path), message)


class Converter:
    """ruamel objects -> dict/list/str/int/float/bool/None, recording 1-based positions per key path."""

    def __init__(self, file: str):
        self.file = file
        self.positions: dict[Path_, tuple[int, int]] = {}
        self.problems: list[Problem] = []
        self.plain: set[Path_] = set()  # paths of unquoted string scalars
        self.count = 0

    def _pos(self, node: Any, key: Any = None, index: int | None = None) -> tuple[int, int] | None:
        try:
            lc = node.lc
            line, col = lc.key(key) if index is None and key is not None else lc.item(index) if index is not None \
                else (lc.line, lc.col)
            return line + 1, col + 1
        except Exception:  # noqa: BLE001 - merged keys and synthetic nodes have no position
            try:
                return node.lc.line + 1, node.lc.col + 1
            except Exception:  # noqa: BLE001
                return None

    def _fail(self, path: Path_, message: str) -> Fatal:
        line, col = self.positions.get(path, (None, None))
        key = fmt_path(path) if len(path) <= 6 else fmt_path(path[:4]) + "..."
        return Fatal(Problem(self.file, line, col, key, message))

    def convert(self, node: Any, path: Path_, depth: int, active: frozenset[int]) -> Any:
        self.count += 1
        if self.count > MAX_NODES:  # the composer counts first; this is a second line of defence
            raise Fatal(Problem(self.file, None, None, "", f"expands to more than {MAX_NODES:,} values through "
                                "YAML aliases (*name); a job spec never needs that many"))
        if depth > MAX_DEPTH:
            raise self._fail(path, f"is nested too deeply (more than {MAX_DEPTH} levels)")
        if isinstance(node, (dict, list)):
            if id(node) in active:
                raise self._fail(path, "refers to itself through a YAML alias (*name); aliases cannot be recursive")
            active = active | {id(node)}
        if path == () and (pos := self._pos(node)):
            self.positions[()] = pos
        if isinstance(node, dict):
            out: dict[str, Any] = {}
            for key, value in node.items():
                pos = self._pos(node, key=key)
                if not isinstance(key, str):
                    line, col = pos or (None, None)
                    text = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)[:40]
                    self.problems.append(Problem(self.file, line, col, fmt_path(path) or "(top level)",
                                                 f'key {text} is not text; keys must be strings (write "{text}")'))
                    continue
                if _SURROGATE.search(key):
                    line, col = pos or (None, None)
                    self.problems.append(Problem(self.file, line, col, fmt_path(path) or "(top level)",
                                                 f"a key {SURROGATE_MSG}"))
                    continue
                sub = path + (str(key),)
                if pos:
                    self.positions[sub] = pos
                out[str(key)] = self.convert(value, sub, depth + 1, active)
            return out
        if isinstance(node, list):
            items = []
            for i, value in enumerate(node):
                if pos := self._pos(node, index=i):
                    self.positions[path + (i,)] = pos
                items.append(self.convert(value, path + (i,), depth + 1, active))
            return items
        if isinstance(node, (bool, ScalarBoolean)):
            return bool(node)
        if isinstance(node, Huge):
            return node  # reported by unusable_values, with --set and ${VAR} values
        if isinstance(node, int):
            return int(node)
        if isinstance(node, float):
            return float(node)
        if isinstance(node, str):
            if type(node) is str:
                self.plain.add(path)
            return str(node)
        if node is None:
            return None
        if isinstance(node, (_dt.date, _dt.datetime)):
            return node.isoformat()
        if isinstance(node, TaggedScalar):
            self.problems.append(self._fail(path, f"YAML tags like {node.tag.value} are not supported; "
                                                  "remove the tag (quote the value if it must be text)").problem)
            return None
        self.problems.append(self._fail(path, f"unsupported YAML value of type {type(node).__name__} "
                                              "(sets, binary and tagged values are not allowed)").problem)
        return None


def unusable_values(value: Any, path: Path_) -> list[tuple[Path_, Any]]:
    """Values (from the file, ${VAR} or --set) no key accepts, with their paths: numbers too large for any key
    (|n| >= 2**63, or unconvertible) and text that is not Unicode (lone surrogates)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in unusable_values(v, path + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in unusable_values(v, path + (i,))]
    if isinstance(value, Huge) or isinstance(value, str) and _SURROGATE.search(value):
        return [(path, value)]
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= MAX_NUMBER:
        return [(path, value)]
    if isinstance(value, float) and math.isfinite(value) and abs(value) >= MAX_NUMBER:
        return [(path, value)]
    return []


def _bound_of(path: Path_) -> str:
    """'; at most 64' for a key whose model field has an upper bound, else a generic hint."""
    from annotated_types import Le, Lt

    model = model_at(path[:-1]) if path and isinstance(path[-1], str) else None
    field_info = model.model_fields.get(str(path[-1])) if model else None
    if field_info is None and model is not None:
        field_info = next((f for f in model.model_fields.values() if f.alias == path[-1]), None)
    if field_info is not None:
        found: list[Any] = list(field_info.metadata)
        stack = [field_info.annotation]
        while stack:  # bounds inside Annotated[int, Field(le=...)] | Literal["auto"] and the like
            ann = stack.pop()
            for meta in getattr(ann, "__metadata__", ()):
                found += getattr(meta, "metadata", [meta])
            stack += list(getattr(ann, "__args__", ()))
        for item in found:
            if isinstance(item, Le):
                return f"; it must be at most {item.le:,}"
            if isinstance(item, Lt):
                return f"; it must be less than {item.lt:,}"
    return "; numbers in a job spec must be smaller than 2^63"


def replace_at(data: Any, path: Path_, value: Any) -> None:
    for seg in path[:-1]:
        data = data[seg]
    data[path[-1]] = value


def huge_message(value: Any, path: Path_) -> str:
    shown_value = repr(value) if isinstance(value, Huge) else shown(value)
    return f"{shown_value} is far too large{_bound_of(path)}"
