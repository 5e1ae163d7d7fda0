"""Load a job spec: bytes -> YAML 1.2 -> plain data with positions -> ``${VAR}`` -> ``--set`` -> JobSpec.

Every failure caused by user input becomes a :class:`SpecError` listing all problems found,
each with file, line, column and the YAML key path.
"""

from __future__ import annotations

import datetime as _dt
import math
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
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scalarbool import ScalarBoolean
from ruamel.yaml.scanner import RoundTripScanner
from ruamel.yaml.tag import Tag

from .errors import (Path_, Problem, SpecError, duplicate_keys, fmt_path, model_at, syntax_problem,
                     translate_errors)
from .models import JobSpec, cross_field_problems, looks_like_credential, looks_secret_name
from .units import shown

__all__ = ["Problem", "SpecError", "LoadedSpec", "load_spec", "load_spec_text"]

# Limits on the work a spec can cause, each checked before that work is done: the size on the bytes read,
# the flow depth on the raw text, the values and depth while ruamel composes the document (before anything
# is constructed: an alias *a or a merge <<: *a counts the whole of what it repeats), numbers as they are
# constructed. Every real job spec is far inside them; composing MAX_NODES values takes well under a second.
MAX_BYTES = 1024 * 1024
MAX_LINES = 10_000  # ruamel scans a line in microseconds; a million short lines would take seconds
MAX_NODES = 10_000
MAX_DEPTH = 32
MAX_FLOW_DEPTH = 100  # checked on the raw text: ruamel is slow to hit RecursionError on [[[[...]]]]
MAX_NUMBER = 2**63  # |number| must be below this; the models have tighter bounds for every key
MAX_NUMBER_CHARS = 100  # longer number literals are not even converted (int() of 5,000 digits is refused)
MAX_TAG_PROBLEMS = 20
MAX_TAG_CHARS = 100  # ruamel decodes a tag in quadratic time: a 1 MB tag would take a minute
_SURROGATE = re.compile("[\ud800-\udfff]")
_SURROGATE_MSG = ("contains a lone UTF-16 surrogate (an escape like \\ud800, or bytes that are not UTF-8), "
                  "which is not a character; remove it")
SET = "--set"
# A default runs to the next } but never past a ${: with [^}]*, "${A:-" repeated took quadratic time.
_REF = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-((?:[^}$]|\$(?!\{))*))?\}|\$\{")
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


class _Huge:
    """A number literal too large to convert (or that overflows a float); reported by key, never echoed whole."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        text = self.text
        return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"


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
    lines = max(text.count("\n"), text.count("\r")) + sum(text.count(c) for c in "\x85\u2028\u2029")
    if lines > MAX_LINES:
        raise _Fatal(Problem(file, None, None, "", f"has {lines:,} lines, more than the {MAX_LINES:,} a job spec may "
                                                   "have — did you pass a data file?"))
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
    data = _interpolate(data, (), env, secret_names, conv.plain, problems, positions, file, flagged, [MAX_BYTES])
    override_paths = _apply_overrides(data, overrides, problems)
    for path, value in _unusable_values(data, ()):
        flagged.add(path)
        message = _SURROGATE_MSG if isinstance(value, str) else _huge_message(value, path)
        problems.append(_problem_at(path, message, file, positions, override_paths))
        _replace(data, path, _Huge(""))  # so that no check below sees (or prints) the value
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

class _YamlProblems(Exception):
    """Problems found while composing, as (line, column, key, message); raised before anything is constructed."""

    def __init__(self, found: list[tuple[int | None, int | None, str, str]]):
        super().__init__(found[0][3] if found else "")
        self.found = found

    def problems(self, file: str) -> list[Problem]:
        return [Problem(file, line, col, key, message) for line, col, key, message in self.found]


def _short_key(path: list[str | int]) -> str:
    return fmt_path(tuple(path)) if len(path) <= 6 else fmt_path(tuple(path[:4])) + "..."


def _tag_text(tag: Any) -> str:
    handle, suffix = getattr(tag, "handle", None), getattr(tag, "suffix", None)
    text = f"{handle}{suffix}" if handle and suffix is not None else f"!<{suffix}>" if suffix else str(tag)
    return text if len(text) <= 40 else text[:37] + "..."


class _BoundedComposer(Composer):
    """ruamel's composer, counting what it builds so that no document costs more than MAX_NODES values.

    Each value counts once, and each alias (``*a``, also as ``<<: *a``) counts the full expanded size of
    the node it repeats, so the running total is the size the document will have once constructed; it is
    checked at every event, before the work. Depth is checked the same way, and explicit tags (``!!set``,
    ``!custom``, ``!!python/object``) are refused: a spec is plain strings, numbers, lists and mappings.
    """

    def __init__(self, loader: Any = None):
        super().__init__(loader)
        self.total = 0
        self.sizes: dict[int, int] = {}  # id(node) -> expanded size, for nodes fully composed
        self.path: list[str | int] = []
        self.tags: list[tuple[int | None, int | None, str, str]] = []
        self.roots: list[Node] = []

    def compose_document(self) -> Any:
        self.sizes = {}
        node = super().compose_document()
        self.roots.append(node)
        if self.tags:
            raise _YamlProblems(self.tags)
        return node

    def _where(self, event: Any) -> tuple[int | None, int | None, str]:
        mark = getattr(event, "start_mark", None)
        return (mark.line + 1 if mark else None), (mark.column + 1 if mark else None), _short_key(self.path)

    def _count(self, n: int, event: Any) -> None:
        self.total += n
        if self.total > MAX_NODES:
            line, col, key = self._where(event)
            message = (f"this alias makes the spec expand to more than {MAX_NODES:,} values (an alias *name or a "
                       "merge <<: *name counts all that it repeats); a job spec never needs that many"
                       if isinstance(event, AliasEvent) else f"the spec has more than {MAX_NODES:,} values by here; "
                       "a job spec never needs that many — did you pass a data file?")
            raise _YamlProblems([(line, col, key, message)])

    def compose_node(self, parent: Any, index: Any) -> Any:
        if parent is None:
            segment: str | int | None = None
        elif isinstance(parent, SequenceNode):
            segment = index
        else:  # a mapping: index is None while its key is composed, then the key node
            segment = str(index.value)[:40] if isinstance(index, ScalarNode) else "?"
        if segment is not None:
            self.path.append(segment)
        try:
            event = self.parser.peek_event()
            if isinstance(event, AliasEvent):
                node = super().compose_node(parent, index)
                if id(node) not in self.sizes:  # named, but not complete: the alias is inside its anchor
                    line, col, key = self._where(event)
                    raise _YamlProblems([(line, col, key, "refers to itself through a YAML alias (*name); aliases "
                                                          "cannot be recursive")])
                self._count(self.sizes[id(node)], event)
                return node
            if len(self.path) > MAX_DEPTH:
                line, col, key = self._where(event)
                raise _YamlProblems([(line, col, key, f"is nested too deeply (more than {MAX_DEPTH} levels)")])
            tag = getattr(event, "ctag", None)  # "!" alone (non-specific) just means "not resolved": allowed
            if tag is not None and not (tag.handle is None and tag.suffix == "!"):
                line, col, key = self._where(event)
                self.tags.append((line, col, key, f"YAML tags like {_tag_text(tag)} are not supported; remove the "
                                                  "tag (quote the value if it must be text)"))
                if len(self.tags) >= MAX_TAG_PROBLEMS or len(tag.suffix or "") > MAX_TAG_CHARS:
                    raise _YamlProblems(self.tags)  # before ruamel reads the tag (in quadratic time)
            before = self.total
            self._count(1, event)
            node = super().compose_node(parent, index)
            self.sizes[id(node)] = self.total - before
            return node
        finally:
            if segment is not None:
                self.path.pop()


class _BoundedScanner(RoundTripScanner):
    """Refuses a long tag as soon as it is scanned: ruamel's parser decodes tags in quadratic time."""

    def scan_tag(self) -> Any:
        token = super().scan_tag()
        handle, suffix = token.value
        if len(suffix or "") > MAX_TAG_CHARS:
            mark, shown_tag = token.start_mark, _tag_text(Tag(handle, suffix))
            raise _YamlProblems([(mark.line + 1, mark.column + 1, "", f"YAML tags like {shown_tag} are not supported; "
                                  "remove the tag (quote the value if it must be text)")])
        return token


class _BoundedConstructor(RoundTripConstructor):
    """Numbers whose literal is too long, or that overflow a float (1e400), become :class:`_Huge`."""

    def construct_yaml_int(self, node: Any) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            return _Huge(node.value)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            return _Huge(node.value)
        value = super().construct_yaml_float(node)
        if isinstance(value, float) and math.isinf(value) and "inf" not in node.value.lower():
            return _Huge(node.value)
        return value


_BoundedConstructor.add_constructor("tag:yaml.org,2002:int", _BoundedConstructor.construct_yaml_int)
_BoundedConstructor.add_constructor("tag:yaml.org,2002:float", _BoundedConstructor.construct_yaml_float)


def _new_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Scanner = _BoundedScanner
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _BoundedConstructor
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    return yaml


def _parse_yaml(text: str, file: str) -> Any:
    yaml = _new_yaml()
    try:
        docs = []
        with warnings.catch_warnings():  # e.g. ReusedAnchorWarning: legal YAML, not worth a traceback-ish line
            warnings.simplefilter("ignore")
            for doc in yaml.load_all(text):
                docs.append(doc)
                if len(docs) > 2:
                    break
    except _YamlProblems as exc:
        raise SpecError(exc.problems(file)) from None
    except RecursionError:
        raise _Fatal(Problem(file, None, None, "", "is nested too deeply to be a job spec")) from None
    except DuplicateKeyError as exc:
        dupes = duplicate_keys(text, file, yaml.composer.roots)
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
        if self.count > MAX_NODES:  # the composer counts first; this is a second line of defence
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
                    text = "null" if key is None else str(key).lower() if isinstance(key, bool) else str(key)[:40]
                    self.problems.append(Problem(self.file, line, col, fmt_path(path) or "(top level)",
                                                 f'key {text} is not text; keys must be strings (write "{text}")'))
                    continue
                if _SURROGATE.search(key):
                    line, col = pos or (None, None)
                    self.problems.append(Problem(self.file, line, col, fmt_path(path) or "(top level)",
                                                 f"a key {_SURROGATE_MSG}"))
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
        if isinstance(node, _Huge):
            return node  # reported by _unusable_values, with --set and ${VAR} values
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
    if isinstance(value, _Huge):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, TaggedScalar):
        return int(value) if isinstance(value, int) else float(value)
    return text


def _unusable_values(value: Any, path: Path_) -> list[tuple[Path_, Any]]:
    """Values (from the file, ${VAR} or --set) no key accepts, with their paths: numbers too large for any key
    (|n| >= 2**63, or unconvertible) and text that is not Unicode (lone surrogates)."""
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _unusable_values(v, path + (k,))]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _unusable_values(v, path + (i,))]
    if isinstance(value, _Huge) or isinstance(value, str) and _SURROGATE.search(value):
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


def _replace(data: Any, path: Path_, value: Any) -> None:
    for seg in path[:-1]:
        data = data[seg]
    data[path[-1]] = value


def _huge_message(value: Any, path: Path_) -> str:
    shown_value = repr(value) if isinstance(value, _Huge) else shown(value)
    return f"{shown_value} is far too large{_bound_of(path)}"


# --- ${VAR} interpolation, --set overrides, credentials ---------------------------------------

def _interpolate(value: Any, path: Path_, env: Mapping[str, str], secret_names: set[str], plain: set[Path_],
                 problems: list[Problem], positions: dict[Path_, tuple[int, int]], file: str,
                 flagged: set[Path_], budget: list[int]) -> Any:
    """Replace ${VAR}s; ``budget[0]``: characters the variables' values may still add, all strings together."""
    if isinstance(value, dict):
        return {k: _interpolate(v, path + (k,), env, secret_names, plain, problems, positions, file, flagged, budget)
                for k, v in value.items()}
    if isinstance(value, list):
        return [_interpolate(v, path + (i,), env, secret_names, plain, problems, positions, file, flagged, budget)
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
        problems.extend(_problem_at(path, msg, file, positions, set()) for msg in dict.fromkeys(errors))
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
    except _YamlProblems as exc:
        return None, exc.found[0][3]
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
