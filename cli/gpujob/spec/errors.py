"""Problems and SpecError, and turning pydantic and YAML errors into plain-words messages keyed by YAML path."""

from __future__ import annotations

import difflib
import re
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Union

from pydantic import BaseModel
from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.nodes import MappingNode, Node, SequenceNode

from .cross_field import CrossFieldError
from .fields import HUB_REPO_PATTERN, NAME_PATTERN, looks_like_credential
from .models import SECTIONS, JobSpec, Source
from .runtime import DEFAULT_BACKEND, RUNTIMES, backend_names, backend_of, foreign_message, owners
from .units import shown

MAX_KEY_CHARS = 80
MAX_MESSAGE_CHARS = 300
_LONG_WORD = re.compile(r"\S{61,}")

Path_ = tuple[Union[str, int], ...]


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or worth a warning) in a spec, with where it is."""

    file: str
    line: int | None
    column: int | None
    key: str
    message: str

    def __post_init__(self) -> None:  # a huge key or value must never be echoed back in full
        object.__setattr__(self, "key", clip(self.key, MAX_KEY_CHARS))
        object.__setattr__(self, "message", clip(self.message, MAX_MESSAGE_CHARS))

    def __str__(self) -> str:
        where = self.file
        if self.line is not None:
            where += f":{self.line}" + (f":{self.column}" if self.column is not None else "")
        return f"{where}: {self.key}: {self.message}" if self.key else f"{where}: {self.message}"


class SpecError(Exception):
    """The spec could not be loaded; ``problems`` lists every reason found."""

    def __init__(self, problems: Sequence[Problem]):
        self.problems = list(problems)
        super().__init__(str(self))

    def __str__(self) -> str:
        return "\n".join(str(p) for p in self.problems)


class Fatal(Exception):
    """One problem that ends loading at once; :func:`~gpujob.spec.loader.load_spec_text` raises it as a SpecError."""

    def __init__(self, problem: Problem):
        self.problem = problem


_EXPECTED = {
    "string_type": "a string", "int_type": "a whole number", "float_type": "a number", "bool_type": "true or false",
    "list_type": "a list", "dict_type": "a mapping of keys", "model_type": "a mapping of keys",
    "model_attributes_type": "a mapping of keys", "tuple_type": "a list", "set_type": "a list",
}
_PATTERN_HINTS = {
    NAME_PATTERN: "must be lowercase letters, digits and '-', starting and ending with a letter or digit",
    HUB_REPO_PATTERN: "must look like owner/name, e.g. my-org/whisper-small-el",
}
_REQUIRED_HINTS = {
    ("apiVersion",): "is required (apiVersion: gpujob/v1)",
    ("kind",): "is required (one of train, evaluate, command)",
}
_SYNONYMS = {"k8s": "kubernetes", "kube": "kubernetes", "eval": "evaluate", "evaluation": "evaluate",
             "finetune": "train", "fine-tune": "train", "training": "train", "run": "command", "fp16-mixed": "fp16",
             "bfloat16": "bf16", "float16": "fp16", "float32": "fp32", "true": "on", "false": "off"}
_TAG = re.compile(r"^(function-\w+|literal|nullable|union|tagged-union|lax-or-strict|json-or-python)\[.*\]$")


def clip(text: str, limit: int) -> str:
    """``text`` with each run of more than 60 non-blank characters and then the whole cut short."""
    if len(text) <= 60:
        return text
    text = _LONG_WORD.sub(lambda m: f"{m.group(0)[:40]}... ({len(m.group(0))} characters)", text)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def fmt_path(path: Path_) -> str:
    """``("data", "train", 1, "split")`` -> ``data.train[1].split``."""
    out = ""
    for seg in path:
        out += f"[{seg}]" if isinstance(seg, int) else (f".{seg}" if out else str(seg))
    return out


def describe(value: Any) -> str:
    """A short, safe description of a user's value for messages (credentials are never echoed)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "nothing (null)"
    if isinstance(value, str):
        if looks_like_credential(value):
            return "a string that looks like a credential"
        text = value if len(value) <= 40 else value[:37] + "..."
        return f'a string "{text}"'
    if isinstance(value, (int, float)):
        return f"a number {shown(value)}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def _yaml_repr(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    if isinstance(value, (int, float)):
        return shown(value)
    return str(value) if len(str(value)) <= 40 else str(value)[:37] + "..."


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    args = typing.get_args(annotation)
    if typing.get_origin(annotation) is typing.Annotated:
        args = args[:1]
    elif typing.get_origin(annotation) is dict:
        args = args[1:]
    return [m for a in args for m in _models_in(a)]


def model_at(path: Path_, backend: str = DEFAULT_BACKEND) -> type[BaseModel] | None:
    """The model class describing the mapping at ``path`` (list indices skipped), if any; ``runtime``
    is described by the model of ``backend``."""
    model: type[BaseModel] | None = JobSpec
    for seg in path:
        if isinstance(seg, int) or model is None:
            continue
        if model is JobSpec and seg == "runtime":
            model = RUNTIMES.get(backend, RUNTIMES[DEFAULT_BACKEND])
            continue
        fields = {f.alias or n: f for n, f in model.model_fields.items()}
        found = _models_in(fields[seg].annotation) if seg in fields else []
        model = found[0] if found else None
    return model


def _all_keys() -> dict[str, list[str]]:
    keys: dict[str, list[str]] = {}
    for name, f in JobSpec.model_fields.items():
        keys.setdefault(f.alias or name, []).append(f.alias or name)
    for section, model in SECTIONS.items():
        for name in model.model_fields:
            keys.setdefault(name, []).append(f"{section}.{name}")
    for model in RUNTIMES.values():
        for name in model.model_fields:
            if f"runtime.{name}" not in keys.get(name, []):
                keys.setdefault(name, []).append(f"runtime.{name}")
    for name in Source.model_fields:
        keys.setdefault(name, []).append(f"data.train[N].{name} (or data.eval[N].{name})")
    return keys


_ALL_KEYS = _all_keys()


def _unknown_key(key: Any, parent: Path_, backend: str) -> str:
    model = model_at(parent, backend)
    allowed = [f.alias or n for n, f in model.model_fields.items()] if model else []
    key_s = str(key)
    if parent == ("runtime",) and owners(key_s):
        return foreign_message(key_s, owners(key_s), backend)
    close = difflib.get_close_matches(key_s, allowed, 1, 0.8)
    lower = {a.lower(): a for a in allowed}
    if not close and key_s.lower() in lower:
        close = [lower[key_s.lower()]]
    if not close and parent == ("runtime",):  # a misspelt setting of another backend
        others = [n for n in dict.fromkeys(n for m in RUNTIMES.values() for n in m.model_fields) if n not in allowed]
        near = difflib.get_close_matches(key_s, others, 1, 0.8)
        if near:
            whose = backend_names(owners(near[0]))
            return f'unknown key "{key_s[:40]}"; did you mean "{near[0]}" (a setting of the {whose})?'
    this = fmt_path(parent + (key_s,))
    elsewhere = [p for p in _ALL_KEYS.get(key_s, []) if p != this]
    if not close and not elsewhere:
        close = difflib.get_close_matches(key_s, allowed, 1, 0.6)
    if not close and not elsewhere:
        near = difflib.get_close_matches(key_s, list(_ALL_KEYS), 1, 0.8)
        elsewhere = [p for p in _ALL_KEYS[near[0]] if p != this] if near else []
    msg = f'unknown key "{key_s[:40]}"'
    if close:
        return f'{msg}; did you mean "{close[0]}"?'
    if elsewhere:
        where = elsewhere[0] if "." in elsewhere[0] else f"the top-level key {elsewhere[0]}"
        return f"{msg}; did you mean {where}?"
    return f"{msg}; allowed here: {', '.join(allowed)}" if allowed else msg


def _literal(err: dict, path: Path_) -> str:
    allowed = re.findall(r"'([^']*)'", err.get("ctx", {}).get("expected", ""))
    value = err.get("input")
    if path == ("apiVersion",):
        return f"unsupported apiVersion {describe(value).removeprefix('a string ')}; supported: {', '.join(allowed)}"
    msg = f"must be one of {', '.join(allowed)} (got {describe(value).removeprefix('a string ')})"
    if isinstance(value, str):
        lowered = {a.lower(): a for a in allowed}
        close = [_SYNONYMS[value.lower()]] if _SYNONYMS.get(value.lower()) in lowered else \
            difflib.get_close_matches(value.lower(), list(lowered), 1, 0.6)
        if close:
            msg += f'; did you mean "{lowered[close[0]]}"?'
    return msg


def _wrong_type(err: dict, path: Path_) -> str:
    typ, value = err["type"], err.get("input")
    msg = f"expected {_EXPECTED[typ]}, got {describe(value)}"
    if typ == "string_type" and isinstance(value, (int, float)):
        key = path[-1] if path else "key"
        if path[:2] == ("runtime", "env"):
            msg += f'; environment values are strings, so quote it: {key}: "{_yaml_repr(value)}"'
        else:
            msg += f'; quote it if you meant the text "{_yaml_repr(value)}"'
    elif typ == "bool_type" and isinstance(value, str) and value.lower() in ("yes", "no", "on", "off", "y", "n"):
        msg += " (YAML 1.2 reads yes/no/on/off as text; write true or false)"
    elif typ == "int_type" and isinstance(value, float) and value.is_integer() and abs(value) < 1e15:
        msg += f"; write {int(value)}"
    elif value is None:
        msg += "; give a value or remove the key"
    return msg


def _backend_tag(runtime: Any) -> tuple[Path_, str]:
    """The runtime section's ``backend`` picks its model; a value that picks none is reported like any
    other value outside a list of choices (a section that is not a mapping, as such)."""
    if not isinstance(runtime, dict):
        return ("runtime",), _wrong_type({"type": "model_type", "input": runtime}, ("runtime",))
    choices = ", ".join(f"'{name}'" for name in RUNTIMES)
    literal = {"ctx": {"expected": choices}, "input": runtime.get("backend")}
    return ("runtime", "backend"), _literal(literal, ("runtime", "backend"))


def _message(err: dict, path: Path_, backend: str = DEFAULT_BACKEND) -> str:
    typ, ctx, value = err["type"], err.get("ctx") or {}, err.get("input")
    if typ == "gpujob":
        return str(ctx.get("message", err["msg"]))
    if typ == "missing":
        return _REQUIRED_HINTS.get(path, "is required")
    if typ == "extra_forbidden":
        return _unknown_key(path[-1], path[:-1], backend)
    if typ == "literal_error":
        return _literal(err, path)
    if typ in _EXPECTED:
        return _wrong_type(err, path)
    bounds = {"greater_than": ("greater than", "gt"), "greater_than_equal": ("at least", "ge"),
              "less_than": ("less than", "lt"), "less_than_equal": ("at most", "le")}
    if typ in bounds:
        words, key = bounds[typ]
        return f"must be {words} {_yaml_repr(ctx.get(key))} (got {_yaml_repr(value)})"
    if typ in ("too_short", "string_too_short"):
        return "must not be empty"
    if typ == "string_too_long":
        return f"must be at most {ctx.get('max_length')} characters (got {len(value) if isinstance(value, str) else '?'})"
    if typ == "too_long":
        return f"must have at most {ctx.get('max_length')} items"
    if typ == "string_pattern_mismatch":
        hint = _PATTERN_HINTS.get(ctx.get("pattern"), f"must match {ctx.get('pattern')}")
        return f"{hint} (got {describe(value).removeprefix('a string ')})"
    if typ == "finite_number":
        return f"must be a finite number (got {_yaml_repr(value)})"
    return str(err.get("msg", "is invalid")).removeprefix("Value error, ")


def translate_errors(errors: list[dict], data: Any) -> list[tuple[Path_, str, bool]]:
    """pydantic ``errors()`` -> ``(path, message, is_missing)``; cross-field errors are left to the caller."""
    out = []
    runtime = data.get("runtime") if isinstance(data, dict) else None
    backend = backend_of(runtime) or DEFAULT_BACKEND
    for err in errors:
        if isinstance((err.get("ctx") or {}).get("error"), CrossFieldError):
            continue
        path = tuple(seg for seg in err["loc"] if not (isinstance(seg, str) and _TAG.match(seg)))
        if path[:1] == ("runtime",) and len(path) > 1 and path[1] in RUNTIMES:
            path = path[:1] + path[2:]  # the tag of the backend's model: runtime.<backend>.key -> runtime.key
        if path and path[-1] == "[key]":
            path = path[:-1]
        if err["type"] in ("union_tag_invalid", "union_tag_not_found") and path == ("runtime",):
            out.append((*_backend_tag(runtime), False))
            continue
        out.append((path, _message(err, path, backend), err["type"] == "missing"))
    return out


# --- YAML syntax errors -------------------------------------------------------------------------

def syntax_problem(exc: MarkedYAMLError, text: str, file: str) -> Problem:
    mark = exc.problem_mark or exc.context_mark
    problem, context = (exc.problem or "").strip(), (exc.context or "").strip()
    lines = text.splitlines()
    bad_line = lines[mark.line] if mark is not None and 0 <= mark.line < len(lines) else ""
    hint = ""
    if "\t" in bad_line[: len(bad_line) - len(bad_line.lstrip())] or "'\\t'" in problem:
        hint = "YAML does not allow tabs for indentation; use spaces"
    elif "quoted scalar" in context and exc.context_mark is not None:
        mark, hint = exc.context_mark, "a quoted string is never closed; add the closing quote"
    elif "mapping values are not allowed" in problem:
        hint = "check the indentation, or quote a value that contains ': '"
    elif "could not find expected ':'" in problem or "expected <block end>" in problem:
        hint = "check the indentation of this line and the one above it"
    elif "flow" in context:
        hint = "a [list] or {mapping} is not closed"
    message = "YAML syntax error: " + (f"{context}, {problem}" if context else problem or "cannot parse")
    message = message.replace("\n", " ") + (f" — {hint}" if hint else "")
    return Problem(file, mark.line + 1 if mark else None, mark.column + 1 if mark else None, "", message)


def duplicate_keys(text: str, file: str, roots: Sequence[Node] | None = None) -> list[Problem]:
    """Every duplicate key in the documents ``roots`` (composed from ``text`` when not given)."""
    try:
        nodes = list(roots) if roots is not None else [n for n in YAML(typ="rt").compose_all(text)]
    except Exception:  # noqa: BLE001 - best effort; the caller falls back to ruamel's message
        return []
    found: list[Problem] = []
    seen_ids: set[int] = set()

    def walk(node: Node, path: Path_) -> None:
        if id(node) in seen_ids:
            return
        seen_ids.add(id(node))
        if isinstance(node, MappingNode):
            first: dict[str, int] = {}
            for knode, vnode in node.value:
                key = str(knode.value)
                line = knode.start_mark.line + 1
                if key in first and key != "<<":
                    found.append(Problem(file, line, knode.start_mark.column + 1, fmt_path(path + (key,)),
                                         f'duplicate key "{key[:40]}" (first on line {first[key]}); '
                                         "each key may appear once"))
                first.setdefault(key, line)
                walk(vnode, path + (key,))
        elif isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                walk(item, path + (i,))

    for root in nodes:
        if root is not None:
            walk(root, ())
    return found
