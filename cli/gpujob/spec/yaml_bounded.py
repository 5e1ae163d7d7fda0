"""YAML 1.2 with ruamel, bounded: no spec, however hostile, costs more than the limits allow to read.

The composer counts values (an alias or merge at the size of what it repeats) and depth and refuses tags,
the scanner refuses long tags, the constructor keeps number literals too large to convert as :class:`Huge`;
:func:`parse_yaml` turns ruamel's errors into :class:`Problem` s.
"""

from __future__ import annotations

import math
import re
import warnings
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import DuplicateKeyError, RoundTripConstructor
from ruamel.yaml.error import MarkedYAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.nodes import Node, ScalarNode, SequenceNode
from ruamel.yaml.reader import ReaderError
from ruamel.yaml.scanner import RoundTripScanner
from ruamel.yaml.tag import Tag

from .errors import Fatal, Problem, SpecError, duplicate_keys, fmt_path, syntax_problem
from .limits import MAX_DEPTH, MAX_NODES, MAX_NUMBER_CHARS, MAX_TAG_CHARS, MAX_TAG_PROBLEMS


class Huge:
    """A number literal too large to convert (or that overflows a float); reported by key, never echoed whole."""

    def __init__(self, text: str):
        self.text = text

    def __repr__(self) -> str:
        text = self.text
        return text if len(text) <= 40 else f"{text[:24]}... ({len(text)} characters)"


class YamlProblems(Exception):
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
            raise YamlProblems(self.tags)
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
            raise YamlProblems([(line, col, key, message)])

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
                    raise YamlProblems([(line, col, key, "refers to itself through a YAML alias (*name); aliases "
                                                         "cannot be recursive")])
                self._count(self.sizes[id(node)], event)
                return node
            if len(self.path) > MAX_DEPTH:
                line, col, key = self._where(event)
                raise YamlProblems([(line, col, key, f"is nested too deeply (more than {MAX_DEPTH} levels)")])
            tag = getattr(event, "ctag", None)  # "!" alone (non-specific) just means "not resolved": allowed
            if tag is not None and not (tag.handle is None and tag.suffix == "!"):
                line, col, key = self._where(event)
                self.tags.append((line, col, key, f"YAML tags like {_tag_text(tag)} are not supported; remove the "
                                                  "tag (quote the value if it must be text)"))
                if len(self.tags) >= MAX_TAG_PROBLEMS or len(tag.suffix or "") > MAX_TAG_CHARS:
                    raise YamlProblems(self.tags)  # before ruamel reads the tag (in quadratic time)
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
            raise YamlProblems([(mark.line + 1, mark.column + 1, "", f"YAML tags like {shown_tag} are not supported; "
                                 "remove the tag (quote the value if it must be text)")])
        return token


class _BoundedConstructor(RoundTripConstructor):
    """Numbers whose literal is too long, or that overflow a float (1e400), become :class:`Huge`."""

    def construct_yaml_int(self, node: Any) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            return Huge(node.value)
        return super().construct_yaml_int(node)

    def construct_yaml_float(self, node: Any) -> Any:
        if len(node.value) > MAX_NUMBER_CHARS:
            return Huge(node.value)
        value = super().construct_yaml_float(node)
        if isinstance(value, float) and math.isinf(value) and "inf" not in node.value.lower():
            return Huge(node.value)
        return value


_BoundedConstructor.add_constructor("tag:yaml.org,2002:int", _BoundedConstructor.construct_yaml_int)
_BoundedConstructor.add_constructor("tag:yaml.org,2002:float", _BoundedConstructor.construct_yaml_float)


def new_yaml() -> YAML:
    yaml = YAML(typ="rt")
    yaml.Scanner = _BoundedScanner
    yaml.Composer = _BoundedComposer
    yaml.Constructor = _BoundedConstructor
    yaml.preserve_quotes = True
    yaml.allow_duplicate_keys = False
    return yaml


def parse_yaml(text: str, file: str) -> Any:
    yaml = new_yaml()
    try:
        docs = []
        with warnings.catch_warnings():  # e.g. ReusedAnchorWarning: legal YAML, not worth a traceback-ish line
            warnings.simplefilter("ignore")
            for doc in yaml.load_all(text):
                docs.append(doc)
                if len(docs) > 2:
                    break
    except YamlProblems as exc:
        raise SpecError(exc.problems(file)) from None
    except RecursionError:
        raise Fatal(Problem(file, None, None, "", "is nested too deeply to be a job spec")) from None
    except DuplicateKeyError as exc:
        dupes = duplicate_keys(text, file, yaml.composer.roots)
        if dupes:
            raise SpecError(dupes) from None
        raise Fatal(syntax_problem(exc, text, file)) from None
    except ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        raise Fatal(Problem(file, line, None, "", f"contains a control character (#x{exc.character:04x}) that YAML "
                            "does not allow; is this a text YAML file?")) from None
    except MarkedYAMLError as exc:
        raise Fatal(syntax_problem(exc, text, file)) from None
    except Exception as exc:  # ruamel raises assorted errors on garbage input  # noqa: BLE001
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Fatal(Problem(file, None, None, "", f"is not valid YAML: {first[:200]}")) from None
    present = [d for d in docs if d is not None]
    if len(present) > 1:
        raise Fatal(Problem(file, _second_doc_line(text), 1, "", "contains several YAML documents (separated by "
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
