"""``${VAR}`` interpolation in a job spec's strings, from the environment.

``${VAR}``, ``${VAR:-default}`` and ``$${`` for a literal ``${``; variables of secrets are refused and the
values added are bounded in all. A whole unquoted value like ``${STEPS}`` is typed as YAML would (4000).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.scalarbool import ScalarBoolean

from .errors import Path_, Problem
from .fields import looks_secret_name
from .limits import MAX_BYTES
from .plain import problem_at
from .yaml_bounded import Huge, new_yaml

# A default runs to the next } but never past a ${: with [^}]*, "${A:-" repeated took quadratic time.
_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^}$]|\$(?!\{))*))?\}|\$\{")


def _scalar(text: str) -> Any:
    """Type a string like an unquoted YAML 1.2 scalar: '4000' -> 4000, 'true' -> True, '' -> None."""
    if not text.strip():
        return None
    try:
        value = new_yaml().load(text)
    except Exception:  # noqa: BLE001
        return text
    if isinstance(value, (bool, ScalarBoolean)):
        return bool(value)
    if isinstance(value, Huge):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, TaggedScalar):
        return int(value) if isinstance(value, int) else float(value)
    return text


def interpolate(value: Any, path: Path_, env: Mapping[str, str], secret_names: set[str], plain: set[Path_],
                problems: list[Problem], positions: dict[Path_, tuple[int, int]], file: str,
                flagged: set[Path_], budget: list[int]) -> Any:
    """Replace ${VAR}s; ``budget[0]``: characters the variables' values may still add, all strings together."""
    if isinstance(value, dict):
        return {k: interpolate(v, path + (k,), env, secret_names, plain, problems, positions, file, flagged, budget)
                for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, path + (i,), env, secret_names, plain, problems, positions, file, flagged, budget)
                for i, v in enumerate(value)]
    if not isinstance(value, str) or "${" not in value:
        return value
    errors: list[str] = []

    def sub(match: re.Match[str]) -> str:
        whole, name, default = match.group(0), match.group(1), match.group(2)
        if whole == "$${":
            return "${"
        if name is None:
            errors.append("has a malformed ${...}; write ${VAR} or ${VAR:-default}, or $${ for a literal ${")
            return whole
        if name in secret_names or looks_secret_name(name):
            errors.append(f"${{{name}}}: secrets reach the job as environment variables; don't interpolate them "
                          f"into the spec — list {name} under runtime.secrets")
            return whole
        if name in env:
            budget[0] -= len(env[name])
            if budget[0] < 0:
                errors.append(f"${{{name}}}: the spec's ${{VAR}}s expand to more than {MAX_BYTES // 2**20} MiB of "
                              "text; refer to each variable once")
                return whole
            return env[name]
        if default is not None:
            return default
        errors.append(f"${{{name}}} is not set in your environment; export it or write ${{{name}:-default}}")
        return whole

    result = _REF.sub(sub, value)
    if errors:
        flagged.add(path)
        problems.extend(problem_at(path, msg, file, positions, set()) for msg in dict.fromkeys(errors))
        return value
    whole_ref = _REF.fullmatch(value)
    if path in plain and whole_ref and whole_ref.group(1):
        return _scalar(result)
    return result
