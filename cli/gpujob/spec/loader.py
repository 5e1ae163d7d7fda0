"""Load a job spec: bytes -> YAML 1.2 -> plain data with positions -> ``${VAR}`` -> ``--set`` -> JobSpec.

Every failure caused by user input becomes a :class:`SpecError` listing all problems found,
each with file, line, column and the YAML key path.
"""

from __future__ import annotations

import datetime as _dt
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path
from typing import Any

from pydantic import ValidationError
from ruamel.yaml import YAML
from ruamel.yaml.comments import TaggedScalar
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean

from .errors import Path_, Problem, SpecError, duplicate_keys, fmt_path, syntax_problem, translate_errors
from .models import JobSpec, cross_field_problems, looks_like_credential, looks_secret_name

__all__ = ["Problem", "SpecError", "LoadedSpec", "load_spec", "load_spec_text"]

MAX_BYTES = 1024 * 1024
MAX_NODES = 100_000
MAX_DEPTH = 32
MAX_FLOW_DEPTH = 100  # checked on the raw text: ruamel is slow to hit RecursionError on [[[[...]]]]
SET = "--set"
_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$\{")
_QUOTED_OR_COMMENT = re.compile(r"""'(?:[^']|'')*'|"(?:[^"\\]|\\.)*"|(?:^|(?<=\s))#.*""", re.MULTILINE)
_CREDENTIAL_MSG = ("looks like a credential (an access token or private key); don't put secrets in the spec — "
                   "list the variable's name under runtime.secrets and export it in your shell")


@dataclass
class LoadedSpec:
    """A validated spec, where it came from, its warnings and its plain data (defaults filled in)."""

    spec: JobSpec
    path: str
    warnings: list[Problem] = field(default_factory=list)
    data: dict = field(default_factory=dict)


class _Fatal(Exception):
    def __init__(self, problem: Problem):
        self.problem = problem


def load_spec(path: str | os.PathLike[str], overrides: Sequence[str] = (),
              env: Mapping[str, str] | None = None) -> LoadedSpec:
    """Read and validate the job spec at ``path``; raise :class:`SpecError` on any problem."""
    file = os.fspath(path)
    try:
        with open(file, "rb") as fh:
            raw = fh.read(MAX_BYTES + 1)
            size = max(len(raw), os.fstat(fh.fileno()).st_size)
    except OSError as exc:
        reason = exc.strerror or str(exc)
        if isinstance(exc, IsADirectoryError):
            reason = "is a directory, not a YAML file"
        raise SpecError([Problem(file, None, None, "", f"cannot read the job spec: {reason}")]) from None
    if len(raw) > MAX_BYTES:
        raise SpecError([_too_large(file, size)])
    if b"\x00" in raw:
        raise SpecError([Problem(file, None, None, "", "is not a text YAML file (it contains NUL bytes)")])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        col = exc.start - (raw.rfind(b"\n", 0, exc.start) + 1) + 1
        raise SpecError([Problem(file, line, col, "", f"is not valid UTF-8 (byte offset {exc.start}: "
                                 f"0x{raw[exc.start]:02x}); is this a text YAML file? Save it as UTF-8")]) from None
    return load_spec_text(text, file, overrides, env)


def load_spec_text(text: str, filename: str = "<string>", overrides: Sequence[str] = (),
                   env: Mapping[str, str] | None = None) -> LoadedSpec:
    """Validate a job spec given as text; ``filename`` is used in messages and for the default name."""
    try:
        return _load(text, filename, overrides, os.environ if env is None else env)
    except _Fatal as exc:
        raise SpecError([exc.problem]) from None
    except RecursionError:
        raise SpecError([Problem(filename, None, None, "", f"is nested too deeply (more than {MAX_DEPTH} levels)")]) from None


def _too_large(file: str, size: int) -> Problem:
    return Problem(file, None, None, "", f"{size / 1e6:.1f} MB is too large for a job spec (limit 1 MiB) — "
                                         "did you pass a data file?")


def _load(text: str, file: str, overrides: Sequence[str], env: Mapping[str, str]) -> LoadedSpec:
    if len(text) > MAX_BYTES // 4 and len(text.encode("utf-8", "replace")) > MAX_BYTES:
        raise _Fatal(_too_large(file, len(text.encode("utf-8", "replace"))))
    if "\x00" in text:
        raise _Fatal(Problem(file, None, None, "", "is not a text YAML file (it contains NUL bytes)"))
    text = text.removeprefix("\ufeff")
    brackets = re.sub(r"[^\[\]{}]+", "", _QUOTED_OR_COMMENT.sub("", text))
    if len(brackets) > 2 * MAX_FLOW_DEPTH and max(accumulate(1 if c in "[{" else -1 for c in brackets)) \
            > MAX_FLOW_DEPTH:
        raise _Fatal(Problem(file, None, None, "", f"is nested too deeply (more than {MAX_FLOW_DEPTH} levels "
                                                   "of [ or {)"))
    root = _parse_yaml(text, file)
    if root is None and _is_blank(text):
        raise _Fatal(Problem(file, None, None, "", "is empty; a job spec needs at least apiVersion and kind"))
    if not isinstance(root, dict):
        raise _Fatal(Problem(file, 1, 1, "", "top level must be a mapping of keys (apiVersion, kind, ...), "
                                             f"got {_kind_of(root)}"))
    conv = _Converter(file)
    data = conv.convert(root, (), 0, frozenset())
    problems, positions = conv.problems, conv.positions
    runtime = data.get("runtime")
    listed = runtime.get("secrets") if isinstance(runtime, dict) else None
    secret_names = {s for s in listed if isinstance(s, str)} if isinstance(listed, list) else set()
    flagged: set[Path_] = set()
    data = _interpolate(data, (), env, secret_names, conv.plain, problems, positions, file, flagged)
    override_paths = _apply_overrides(data, overrides, problems)
    for path in _credential_paths(data, ()):
        flagged.add(path)
        problems.append(_problem_at(path, _CREDENTIAL_MSG, file, positions, override_paths))
    if data.get("name") is None:
        data["name"] = _slug(file)
    try:
        spec = JobSpec.model_validate(data)
    except ValidationError as exc:
        found = translate_errors(exc.errors(include_url=False), data)
        problems += [_problem_at(p, m, file, positions, override_paths, missing=miss)
                     for p, m, miss in found if not any(p[: len(f)] == f for f in flagged)]
    else:
        if problems:
            raise SpecError(_sorted(problems))
        notes = _warnings(spec, data, file, positions, override_paths)
        return LoadedSpec(spec, file, notes, spec.model_dump(mode="json", by_alias=True))
    # pydantic runs the cross-field checks only when every field is valid; run them on the raw data too
    problems += [_problem_at(p, m, file, positions, override_paths) for p, m in cross_field_problems(data)]
    raise SpecError(_sorted(problems))


def _sorted(problems: list[Problem]) -> list[Problem]:
    unique = list(dict.fromkeys(problems))
    return sorted(unique, key=lambda p: (p.file == SET, p.line or 0, p.column or 0, p.key))


def _problem_at(path: Path_, message: str, file: str, positions: dict[Path_, tuple[int, int]],
                override_paths: set[Path_], missing: bool = False) -> Problem:
    if any(path[: len(o)] == o for o in override_paths):
        return Problem(SET, None, None, fmt_path(path), message)
    probe = path[:-1] if missing else path
    while probe not in positions and probe:
        probe = probe[:-1]
    line, col = positions.get(probe, (None, None))
    return Problem(file, line, col, fmt_path(path), message)


def _is_blank(text: str) -> bool:
    return all(not s or s.startswith("#") or s in ("---", "...") for s in (ln.strip() for ln in text.splitlines()))


def _kind_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true/false"
    for typ, name in ((list, "a list"), (str, "a string"), (int, "a number"), (float, "a number")):
        if isinstance(value, typ):
            return name
    return type(value).__name__


def _slug(file: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", Path(file).stem.lower()).strip("-")[:53].rstrip("-")
    return slug or "job"


# --- YAML parsing -------------------------------------------------------------------------------

def _new_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    return yaml


def _parse_yaml(text: str, file: str) -> Any:
    try:
        docs = []
        with warnings.catch_warnings():  # e.g. ReusedAnchorWarning: legal YAML, not worth a traceback-ish line
            warnings.simplefilter("ignore")
            for doc in _new_yaml().load_all(text):
                docs.append(doc)
                if len(docs) > 2:
                    break
    except RecursionError:
        raise _Fatal(Problem(file, None, None, "", "is nested too deeply to be a job spec")) from None
    except DuplicateKeyError as exc:
        dupes = duplicate_keys(text, file)
        if dupes:
            raise SpecError(dupes) from None
        raise _Fatal(syntax_problem(exc, text, file)) from None
    except ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise _Fatal(Problem(file, line, None, "", f"contains a control character (#x{exc.character:04x}) that YAML "
                             "does not allow; is this a text YAML file?")) from None
    except MarkedYAMLError as exc:
        raise _Fatal(syntax_problem(exc, text, file)) from None
    except Exception as exc:  # ruamel raises assorted errors on garbage input  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise _Fatal(Problem(file, None, None, "", f"is not valid YAML: {first[:200]}")) from None
    present = [d for d in docs if d is not None]
    if len(present) > 1:
        raise _Fatal(Problem(file, _second_doc_line(text), 1, "", "contains several YAML documents (separated by "
                             "---); put one job in each file"))
    return present[0] if present else None


def _second_doc_line(text: str) -> int | None:
    starts, content_seen = [], False
    for no, line in enumerate(text.splitlines(), 1):
        if re.match(r"---(\s|$)", line):
            if content_seen:
                return no
            starts.append(no)
        elif line.strip() and not line.lstrip().startswith(("#", "%")):
            content_seen = True
    return starts[1] if len(starts) > 1 else None


# --- conversion to plain data -------------------------------------------------------------------

class _Converter:
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

    def _fail(self, path: Path_, message: str) -> _Fatal:
        line, col = self.positions.get(path, (None, None))
        key = fmt_path(path) if len(path) <= 6 else fmt_path(path[:4]) + "..."
        return _Fatal(Problem(self.file, line, col, key, message))

    def convert(self, node: Any, path: Path_, depth: int, active: frozenset[int]) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise _Fatal(Problem(self.file, None, None, "", f"expands to more than {MAX_NODES:,} values through "
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
                    shown = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)[:40]
                    self.problems.append(Problem(self.file, line, col, fmt_path(path) or "(top level)",
                                                 f'key {shown} is not text; keys must be strings (write "{shown}")'))
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


def _scalar(text: str) -> Any:
    """Type a string like an unquoted YAML 1.2 scalar: '4000' -> 4000, 'true' -> True, '' -> None."""
    if not text.strip():
        return None
    try:
        value = _new_yaml().load(text)
    except Exception:  # noqa: BLE001
        return text
    if isinstance(value, (bool, ScalarBoolean)):
        return bool(value)
    if isinstance(value, (int, float)) and not isinstance(value, TaggedScalar):
        return int(value) if isinstance(value, int) else float(value)
    return text


# --- ${VAR} interpolation, --set overrides, credentials ---------------------------------------

def _interpolate(value: Any, path: Path_, env: Mapping[str, str], secret_names: set[str], plain: set[Path_],
                 problems: list[Problem], positions: dict[Path_, tuple[int, int]], file: str,
                 flagged: set[Path_]) -> Any:
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (k,), env, secret_names, plain, problems, positions, file, flagged)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (i,), env, secret_names, plain, problems, positions, file, flagged)
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
            return env[name]
        if default is not None:
            return default
        errors.append(f"${{{name}}} is not set in your environment; export it or write ${{{name}:-default}}")
        return whole

    result = _REF.sub(sub, value)
    if errors:
        flagged.add(path)
        problems.extend(_problem_at(path, msg, file, positions, set()) for msg in errors)
        return value
    whole_ref = _REF.fullmatch(value)
    if path in plain and whole_ref and whole_ref.group(1):
        return _scalar(result)
    return result


def _parse_override_value(text: str) -> tuple[Any, str | None]:
    stripped = text.strip()
    if not stripped:
        return None, None
    try:
        value = _new_yaml().load(text)
    except Exception:  # noqa: BLE001
        if stripped[0] in "[{":
            return None, f"{stripped[:40]} is not a valid YAML flow {'list' if stripped[0] == '[' else 'mapping'}"
        return text, None
    if isinstance(value, dict) and stripped[0] != "{" or isinstance(value, list) and stripped[0] != "[":
        return text, None
    conv = _Converter(SET)
    try:
        converted = conv.convert(value, (), 0, frozenset())
    except _Fatal as exc:
        return None, exc.problem.message
    return converted, conv.problems[0].message if conv.problems else None


def _apply_overrides(data: dict, overrides: Sequence[str], problems: list[Problem]) -> set[Path_]:
    applied: set[Path_] = set()
    for raw in overrides:
        key, eq, text = raw.partition("=")
        key = key.strip()
        if not eq:
            problems.append(Problem(SET, None, None, key or raw, f'"{raw[:60]}" has no "="; write key.path=value, '
                                    "e.g. training.learning_rate=1e-5"))
            continue
        parts = re.sub(r"\[(\d+)\]", r".\1", key).split(".")  # accept data.train[0].weight too
        if not key or any(not p.strip() for p in parts):
            problems.append(Problem(SET, None, None, raw, "has an empty key; write key.path=value, e.g. "
                                    "training.learning_rate=1e-5"))
            continue
        value, error = _parse_override_value(text)
        if error:
            problems.append(Problem(SET, None, None, key, error))
            continue
        cur: Any = data
        path: Path_ = ()
        for i, part in enumerate(parts):
            seg: str | int = part
            if isinstance(cur, list):
                if not re.fullmatch(r"\d+", part):
                    error = f"{fmt_path(path)} is a list; use an index, e.g. {fmt_path(path)}.0"
                elif int(part) >= len(cur):
                    error = f"index {part} is out of range: {fmt_path(path)} has {len(cur)} item(s)"
                seg = int(part) if not error else part
            elif not isinstance(cur, dict):
                error = f"cannot set {key}: {fmt_path(path)} is {_kind_of(cur)}, not a mapping or list"
            if error:
                break
            path += (seg,)
            if i == len(parts) - 1:
                cur[seg] = value
                break
            if isinstance(cur, dict) and cur.get(seg) is None:
                if re.fullmatch(r"\d+", parts[i + 1]):
                    error = (f"{fmt_path(path)} is not set, so it has no item {parts[i + 1]}; set the whole list, "
                             f"e.g. {'.'.join(map(str, path))}=[...]")
                    break
                cur[seg] = {}
                applied.add(path)
            cur = cur[seg]
        if error:
            problems.append(Problem(SET, None, None, key, error))
        else:
            applied.add(path)
    return applied


def _credential_paths(value: Any, path: Path_) -> list[Path_]:
    if isinstance(value, dict):
        return [p for k, v in value.items()
                for p in ([path + (k,)] if looks_like_credential(k) else _credential_paths(v, path + (k,)))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _credential_paths(v, path + (i,))]
    return [path] if isinstance(value, str) and looks_like_credential(value) else []


def _warnings(spec: JobSpec, data: dict, file: str, positions: dict[Path_, tuple[int, int]],
              override_paths: set[Path_]) -> list[Problem]:
    """Things that are allowed but probably not what the user wants."""
    out: list[tuple[Path_, str]] = []
    if spec.training.dropout > 0.1:
        out.append((("training", "dropout"), "dropout above 0.1 tends to hurt Whisper fine-tuning "
                                             "(it was pre-trained without dropout)"))
    if spec.data.streaming and spec.training.epochs is not None:
        out.append((("training", "epochs"), "with data.streaming: true the dataset size is unknown, so epochs "
                                            "can't be turned into steps; prefer training.max_steps"))
    if spec.kind == "command":
        ignored = [k for k in ("model", "data", "training", "evaluation") if data.get(k)]
        if ignored:
            out.append(((ignored[0],), f"{', '.join(ignored)} {'is' if len(ignored) == 1 else 'are'} ignored "
                                       "for kind: command"))
    return [_problem_at(p, m, file, positions, override_paths) for p, m in out]
