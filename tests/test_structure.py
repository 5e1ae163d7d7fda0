"""The package's shape: its layers (import-linter), no import cycle, no module over 600 lines, no
function over 80 lines without a reason, and imports inside functions only for what pyproject.toml's
[tool.gpujob.lazy-imports] lists."""

from __future__ import annotations

import ast
import re
import sys
import textwrap
import tomllib
from pathlib import Path

import grimp
import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "cli" / "gpujob"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
MAX_LINES = 600
MAX_FUNCTION_LINES = 80
LONG_BECAUSE = re.compile(r"Long because:\s*\S")  # in a long function's docstring, followed by the reason


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def test_the_import_contracts_are_kept():
    from importlinter.cli import lint_imports

    assert lint_imports(config_filename=str(ROOT / "pyproject.toml"), no_cache=True, no_logo=True) == 0, \
        "an import crosses gpujob's layers: see the contract that broke above ([tool.importlinter] in pyproject.toml)"


def test_every_module_is_in_a_layer():
    layers = next(c for c in PYPROJECT["tool"]["importlinter"]["contracts"] if c["type"] == "layers")["layers"]
    named = {m.strip() for layer in layers for m in layer.replace(":", "|").split("|")}
    outside = [m for m in _modules() if m != "gpujob" and not any(m == n or m.startswith(n + ".") for n in named)]
    assert not outside, f"add these to a layer in pyproject.toml's [tool.importlinter]: {outside}"


def test_no_import_cycle_among_gpujob_modules():
    """Imports inside functions and under TYPE_CHECKING count: a loop hidden there is still a loop."""
    graph = grimp.build_graph("gpujob", cache_dir=None)
    edges = {m: graph.find_modules_directly_imported_by(m) for m in graph.modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for module in sorted(edges):
        if module not in index:
            visit(module)
    assert not cycles, f"modules that import each other, directly or round a loop: {cycles}"


def test_no_module_is_over_600_lines():
    long = {name: n for name, path in _modules().items() if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"split these (at most {MAX_LINES} lines): {long}"


def _long_functions(source: str, where: str) -> list[str]:
    """``where:line: name (n lines)`` for every function (methods and nested ones too) over
    MAX_FUNCTION_LINES lines, from its ``def`` to its last line, whose docstring gives no reason."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            n = node.end_lineno - node.lineno + 1
            if n > MAX_FUNCTION_LINES and not LONG_BECAUSE.search(ast.get_docstring(node) or ""):
                found.append(f"{where}:{node.lineno}: {node.name} ({n} lines)")
    return found


def test_no_function_is_over_80_lines_without_a_reason():
    """A long function is split into named steps (functions with one job each), or its docstring says
    why it stays whole after "Long because:"."""
    long = [hit for path in _modules().values()
            for hit in _long_functions(path.read_text(), str(path.relative_to(ROOT)))]
    assert not long, (f"split these into named steps (at most {MAX_FUNCTION_LINES} lines each), or give the reason "
                      f"in the docstring after 'Long because:': {long}")


def test_the_long_function_check_names_file_and_line_and_takes_a_reason():
    body = "".join(f"    x{i} = {i}\n" for i in range(MAX_FUNCTION_LINES))
    short = "def short():\n" + body[: -len(f"    x{MAX_FUNCTION_LINES - 1} = {MAX_FUNCTION_LINES - 1}\n")]
    plain = f"import os\n\n\ndef steps():\n{body}"
    nested = "class A:\n    def outer(self):\n" + textwrap.indent(plain.split("\n", 3)[3], "        ")
    reasoned = f'def steps():\n    """One table.\n\n    Long because: one literal table reads best whole."""\n{body}'
    empty_reason = f'def steps():\n    """Long because:"""\n{body}'
    assert _long_functions(short, "m.py") == []
    assert _long_functions(plain, "m.py") == [f"m.py:4: steps ({MAX_FUNCTION_LINES + 1} lines)"]
    assert [hit.split(": ", 1)[1] for hit in _long_functions(nested, "m.py")] == \
        [f"outer ({MAX_FUNCTION_LINES + 2} lines)", f"steps ({MAX_FUNCTION_LINES + 1} lines)"]
    assert _long_functions(reasoned, "m.py") == []
    assert _long_functions(empty_reason, "m.py") == [f"m.py:1: steps ({MAX_FUNCTION_LINES + 2} lines)"]


def _function_level_imports(name: str, path: Path):
    """(line, module) of every import inside a function of the module ``name``."""
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    known = _modules()

    def walk(node, in_function: bool):
        for child in ast.iter_child_nodes(node):
            inside = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if inside and isinstance(child, ast.Import):
                for alias in child.names:
                    yield child.lineno, alias.name
            elif inside and isinstance(child, ast.ImportFrom):
                if child.level:
                    base = ".".join(package[:len(package) - child.level + 1] + ([child.module] if child.module else []))
                else:
                    base = child.module or ""
                for alias in child.names:  # `from gpujob import service` imports the module gpujob.service
                    yield child.lineno, f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base
            yield from walk(child, inside)

    yield from walk(ast.parse(path.read_text()), False)


def test_imports_inside_functions_are_only_the_listed_ones():
    lazy = PYPROJECT["tool"]["gpujob"]["lazy-imports"]
    unlisted = []
    for name, path in _modules().items():
        for line, module in _function_level_imports(name, path):
            if module.split(".")[0] in sys.stdlib_module_names:
                continue
            if not any(module == allowed or module.startswith(allowed + ".") for allowed in lazy):
                unlisted.append(f"{path.relative_to(ROOT)}:{line}: {module}")
    assert not unlisted, ("import these at the module's top, or list them (with why) in pyproject.toml's "
                          f"[tool.gpujob.lazy-imports]: {unlisted}")


def _optional_imports(tree: ast.AST) -> set[int]:
    """ids of the import statements in a ``try:`` whose ``except`` catches ImportError."""
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Try) and any(
                h.type is not None and "ImportError" in ast.unparse(h.type) for h in node.handlers):
            found.update(id(n) for stmt in node.body + node.handlers for n in ast.walk(stmt)
                         if isinstance(n, (ast.Import, ast.ImportFrom)))
    return found


def test_the_host_agent_imports_the_standard_library_only():
    """The agent runs on the host as lone files, without gpujob's dependencies: it and the gpujob
    modules it imports (each copied beside it, imported there by its own name) import nothing else,
    but for libraries it does without (an import in ``try: ... except ImportError``)."""
    modules = _modules()
    seen, todo, outside = set(), ["gpujob.hosts.agent"], []
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        tree = ast.parse(modules[name].read_text())
        optional = _optional_imports(tree)
        for node in ast.walk(tree):
            if id(node) in optional:
                continue
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and not node.level:
                targets = [node.module or ""]
                targets += [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in modules]
            else:
                continue
            for target in targets:
                if target in modules and target != "gpujob":
                    todo.append(target)
                elif target.split(".")[0] not in sys.stdlib_module_names and target.split(".")[0] != "gpujob":
                    outside.append(f"{name}: {target}")
    assert not outside, f"the host agent's modules import more than the standard library: {outside}"


def test_every_backend_names_the_protocol_it_implements():
    """Capabilities (the :class:`~gpujob.backends.base.Capabilities` a backend declares, and preflight,
    output_dir, prices) are part of :class:`gpujob.backends.base.Backend`; a backend that names it as its
    base has every one."""
    import importlib

    from gpujob.backends import _IMPLEMENTED
    from gpujob.backends.base import Backend, Capabilities

    for name, (module, cls) in _IMPLEMENTED.items():
        backend = getattr(importlib.import_module(module), cls)
        assert Backend in backend.__mro__, f"{cls} ({name}) does not name Backend as its base"
        assert backend.name == name
        assert isinstance(backend.capabilities, Capabilities)
