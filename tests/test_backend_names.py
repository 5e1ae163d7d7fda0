"""No code outside gpujob/backends/ asks which backend a job is on: it asks the backend what it does
(:class:`gpujob.backends.base.Capabilities`, ``gpujob.backends.capabilities(name)``).

The rule, checked on the syntax tree of every module of the package except ``gpujob/backends/**`` and
``gpujob/spec/runtime.py`` (the spec's backend literals: one runtime model per backend, by name). A
*backend name* is a string constant equal to one of ``gpujob.backends.NAMES`` ("local", "docker",
"kubernetes", "host"). Refused:

1. a comparison (``==``, ``!=``, ``in``, ``not in``, ``is``, ``is not``) with a backend name on either side,
   alone or inside a tuple, list or set written there (``backend == "docker"``, ``b in ("kubernetes", "host")``);
2. a dict written with a backend name as a key (a table keyed by backend: ``{"local": ..., "docker": ...}``);
3. a ``backend=`` keyword argument that is a backend name (``registry.list(backend="host")``);
4. a ``case "docker":`` pattern;
5. a name assigned a tuple, list or set of backend names only (``PRICED_AT_SUBMIT = ("host",)``), the
   constant that rule 1 would then compare against.

Allowed: a backend name anywhere else, as words for people (messages, help, hints, a did-you-mean
table's *values*), and inside ``Literal[...]`` (a type naming what a user may write, as the user
config's ``backend`` does). The scanner's own test below shows each refused form caught and each
allowed one passed, so the rule cannot pass by seeing nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gpujob.backends import NAMES

PACKAGE = Path(__file__).resolve().parents[1] / "cli" / "gpujob"
EXEMPT = ("backends/", "spec/runtime.py")
NAME_SET = frozenset(NAMES)


def _is_name(node: ast.AST) -> bool:
    return isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in NAME_SET


def _holds_name(node: ast.AST) -> bool:
    """A backend name, or a tuple/list/set written with one in it."""
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        return any(_is_name(e) for e in node.elts)
    return _is_name(node)


def _literal_parts(tree: ast.AST) -> set[int]:
    """The ids of the nodes inside ``Literal[...]`` subscripts (types, not questions)."""
    inside: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript):
            base = node.value
            name = base.id if isinstance(base, ast.Name) else base.attr if isinstance(base, ast.Attribute) else ""
            if name == "Literal":
                inside.update(id(n) for n in ast.walk(node.slice))
    return inside


def backend_questions(source: str, filename: str = "<source>") -> list[str]:
    """Each place in ``source`` that asks which backend it is, as "line N: what"."""
    tree = ast.parse(source, filename)
    in_literal = _literal_parts(tree)
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if id(node) in in_literal:
            continue
        if isinstance(node, ast.Compare) and any(_holds_name(side) for side in (node.left, *node.comparators)):
            found.append((node.lineno, "compares with a backend name"))
        elif isinstance(node, ast.Dict) and any(k is not None and _is_name(k) for k in node.keys):
            found.append((node.lineno, "a dict keyed by backend name"))
        elif isinstance(node, ast.keyword) and node.arg == "backend" and _is_name(node.value):
            found.append((node.value.lineno, "backend=<a backend name>"))
        elif isinstance(node, ast.MatchValue) and _is_name(node.value):
            found.append((node.value.lineno, "case <a backend name>"))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and isinstance(node.value, (ast.Tuple, ast.List, ast.Set)) \
                and node.value.elts and all(_is_name(e) for e in node.value.elts):
            found.append((node.lineno, "a constant of backend names"))
    return [f"line {line}: {what}" for line, what in sorted(found)]


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py")
                  if not any(p.relative_to(PACKAGE).as_posix().startswith(e) for e in EXEMPT))


def test_no_module_outside_the_backends_asks_which_backend_a_job_is_on():
    modules = _modules()
    assert len(modules) > 100  # the package itself was scanned
    found = [f"gpujob/{p.relative_to(PACKAGE).as_posix()} {q}"
             for p in modules for q in backend_questions(p.read_text(encoding="utf-8"), str(p))]
    assert not found, ("ask the backend what it does instead (gpujob.backends.capabilities(name); "
                       "a new field on Capabilities if none says it):\n" + "\n".join(found))


@pytest.mark.parametrize("source", [
    'if job.backend == "local": pass',
    'ok = "kubernetes" != backend',
    'if name in ("docker", "host"): pass',
    'if name not in ["kubernetes"]: pass',
    'if backend is "host": pass',
    'TABLE = {"local": 1, "gpu": 2}',
    'jobs = registry.list(active_only=True, backend="host")',
    'match backend:\n    case "docker":\n        pass',
    'PRICED_AT_SUBMIT = ("host",)',
    'BACKENDS: tuple = ("local", "docker", "kubernetes", "host")',
])
def test_the_scanner_finds_each_refused_form(source):
    assert backend_questions(source), source


@pytest.mark.parametrize("source", [
    'raise UserError("runtime.backend: host needs runtime.host", hint="set runtime.backend: kubernetes")',
    'ALIASES = {"k8s": "kubernetes", "lambda": "host"}',
    'backend: Optional[Literal["local", "docker", "kubernetes", "host"]] = None',
    'STEPS = ("nvidia driver", "docker", "job image")',
    'KEYS = (("host", "host"), ("pod", "pod"))',
    'if caps.rents_hosts and job.handle.get("host") == name: pass',
    'app.add_typer(host_app, name="host")',
    'if key == "Host": pass',
])
def test_the_scanner_lets_words_and_types_pass(source):
    assert backend_questions(source) == [], source


words = st.one_of(st.sampled_from([*NAMES, "Host", "locals", "docker.io", "k8s", ""]), st.text(max_size=12))


@settings(max_examples=300, deadline=None)
@given(word=words, op=st.sampled_from(["==", "!=", "in", "not in"]), left=st.booleans(), as_key=st.booleans())
def test_a_string_is_refused_in_a_question_exactly_when_it_is_a_backend_name(word, op, left, as_key):
    """Any string constant, compared either way round (alone or in a tuple), or used as a dict key: refused
    when, and only when, it is one of the backend names."""
    text = repr(word)
    if as_key:
        source = f"TABLE = {{{text}: 1}}"
    elif op in ("in", "not in"):
        source = f"ok = name {op} ({text}, 'other')" if left else f"ok = {text} {op} names"
    else:
        source = f"ok = name {op} {text}" if left else f"ok = {text} {op} name"
    assert bool(backend_questions(source)) == (word in NAMES), source
