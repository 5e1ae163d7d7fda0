"""Hostile specs: the loader bounds its work before paying for it.

Whatever the shape (merge and alias bombs, deep nesting, huge files, odd encodings, YAML tags, numbers
far too large for their key), a spec is refused with exit 2 in well under 2 s of CPU, with an error that
names the file, without a traceback and without echoing a huge value back.
"""

from __future__ import annotations

import os
import re
import resource
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.spec import LoadedSpec, SpecError, json_schema, load_spec, load_spec_text
from gpujob.spec.models import SECTIONS, FreezeLayers, JobSpec, Source
from spec_samples import COMMAND, HEAD, TRAIN

CPU_LIMIT_S = 2.0  # per spec, in process, the CPU time of the loading thread alone (other tests leave threads behind in this process); measured: the worst case takes about 0.6 s
MAX_LINE = 500  # characters in any line of output
CLI_TIMEOUT_S = 120  # generous: before this change some of these took minutes


@dataclass
class Case:
    id: str
    content: str | bytes
    key: str | None = None  # a problem must name this key
    env: dict = field(default_factory=dict)
    overrides: tuple[str, ...] = ()


def _keys(n: int, prefix: str = "k") -> str:
    return "{" + ", ".join(f"{prefix}{i}: {i}" for i in range(n)) + "}"


def merge_bomb(width: int, uses: int) -> str:
    """The red team's: one anchor of `width` keys merged into `uses` mappings."""
    return COMMAND + f"x-a: &a {_keys(width)}\nx-b:\n" + "  - {<<: *a}\n" * uses


def merge_list_bomb(width: int, uses: int) -> str:
    return COMMAND + f"x-a: &a {_keys(width, 'a')}\nx-b: &b {_keys(width, 'b')}\nx-c:\n" \
        + "  - {<<: [*a, *b], z: 1}\n" * uses


def merge_of_merges(levels: int) -> str:
    text = COMMAND + "x-m0: &m0 {k0: 1, k1: 2}\n"
    for i in range(1, levels):
        text += f"x-m{i}: &m{i} {{<<: [*m{i - 1}, {{j{i}: *m{i - 1}}}], z{i}: {i}}}\n"
    return text


def merge_chain(levels: int, width: int) -> str:
    """Each mapping merges the previous one and adds `width` keys of its own."""
    text = COMMAND + f"x-m0: &m0 {_keys(width, 'k0_')}\n"
    for i in range(1, levels):
        own = ", ".join(f"k{i}_{j}: {j}" for j in range(width))
        text += f"x-m{i}: &m{i} {{<<: *m{i - 1}, {own}}}\n"
    return text + "x-uses: [" + ", ".join(f"{{<<: *m{levels - 1}}}" for _ in range(50)) + "]\n"


def merge_in_sections(uses: int) -> str:
    """Merges where the values really go: every source of data.train merges a big anchor."""
    return HEAD + f"kind: train\nx-src: &src {{dataset: d, {_keys(400)[1:]}\ntraining: {{max_steps: 10}}\n" \
        "data:\n  train:\n" + "    - {<<: *src}\n" * uses


def laughs(levels: int, fan: int = 10, mapping: bool = False) -> str:
    text = COMMAND + "x-l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n"
    for i in range(1, levels):
        if mapping:
            items = ", ".join(f"k{j}: *l{i - 1}" for j in range(fan))
            text += f"x-l{i}: &l{i} {{{items}}}\n"
        else:
            text += f"x-l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * fan)}]\n"
    return text


def nested_block(levels: int, seq: bool = False) -> str:
    return COMMAND + "x-deep:\n" + "".join("  " * (i + 1) + ("-" if seq else "k:") + "\n" for i in range(levels))


TAGS = ["!custom", "!!set", "!!omap", "!!pairs", "!!binary", "!!timestamp", "!!python/object:os.system",
        "!!python/object/apply:os.system", "!!python/name:os.system", "!!str", "!!int", "!!map", "!!seq",
        "!<tag:yaml.org,2002:str>", "!e!thing"]
SHAPES = {"scalar": "aGk=", "sequence": "[a, b]", "mapping": "{a: 1}"}

CASES: list[Case] = [
    # --- merge bombs (merge keys expand at construction, before any node limit used to run)
    Case("merge-600x600", merge_bomb(600, 600)),
    Case("merge-1200x1000", merge_bomb(1200, 1000)),
    Case("merge-100x120", merge_bomb(100, 120)),
    Case("merge-list-300x300", merge_list_bomb(300, 300)),
    Case("merge-of-merges", merge_of_merges(30)),
    Case("merge-chain", merge_chain(40, 40)),
    Case("merge-in-data-train", merge_in_sections(500)),
    Case("merge-recursive", COMMAND + "x-a: &a {k: 1, <<: [*a]}\n", "x-a.<<[0]"),
    Case("merge-self", COMMAND + "x-a: &a {<<: *a}\n"),
    # --- alias bombs
    Case("billion-laughs", laughs(9)),
    Case("billion-laughs-mappings", laughs(9, mapping=True)),
    Case("alias-doubling", laughs(64, fan=2)),
    Case("big-sequence-many-refs", COMMAND + "x-a: &a [" + ", ".join(["1"] * 5000) + "]\nx-b: ["
         + ", ".join(["*a"] * 2000) + "]\n"),
    Case("alias-recursive", COMMAND + "x-a: &a [1, *a]\n", "x-a[1]"),
    # --- depth
    Case("block-mapping-1000", nested_block(1000)),
    Case("block-sequence-1000", nested_block(1000, seq=True)),
    Case("flow-3000", COMMAND + "x-a: " + "[" * 3000 + "]" * 3000 + "\n"),
    Case("flow-mapping-99", COMMAND + "x-a: " + "{a: " * 99 + "1" + "}" * 99 + "\n"),
    Case("flow-unclosed-100000", COMMAND + "x-a: " + "[" * 100_000 + "\n"),
    Case("depth-through-aliases", COMMAND + "x-a: &a " + "[" * 30 + "1" + "]" * 30 + "\nx-b: " + "[" * 20 + "*a"
         + "]" * 20 + "\n"),
    # --- size
    Case("two-megabytes", "# " + "x" * 2_000_000 + "\n"),
    Case("fifty-megabytes", b"#" * 50_000_000),
    Case("one-mib-flow-list", COMMAND + "x-a: [" + "1," * 500_000 + "1]\n"),
    Case("one-mib-of-lines", COMMAND + "x-a:\n" + "- 1\n" * 250_000),
    Case("one-mib-folded-scalar", COMMAND + "description: a\n" + "  a\n" * 250_000),
    Case("one-mib-key", COMMAND + "? " + "k" * 1_000_000 + "\n: 1\n"),
    Case("one-mib-alias-name", COMMAND + "x-a: *" + "a" * 1_000_000 + "\n"),
    Case("one-mib-anchor-name", COMMAND + "x-a: &" + "a" * 1_000_000 + " [1]\nx-b: 1\nx-c: {\n"),
    Case("one-mib-tag", COMMAND + "x-a: !" + "t" * 1_000_000 + " 1\n"),
    Case("many-documents", COMMAND + "---\n" * 250_000),
    Case("second-document-huge", COMMAND + "---\n" + "x-a: [" + "1," * 400_000 + "1]\n"),
    Case("duplicate-key-then-huge-document", COMMAND + "name: a\nname: b\n---\nx-a: [" + "1," * 400_000 + "1]\n"),
    Case("default-bomb", COMMAND + "description: '" + "${A:-" * 190_000 + "'\n", "description"),
    Case("variable-bomb", COMMAND + "description: '" + "${A}" * 100_000 + "'\n", "description",
         env={"A": "x" * 1000}),
    Case("directives", "".join(f"%TAG !t{i}! tag:x,2000:\n" for i in range(40_000)) + "---\n" + COMMAND),
    # --- encodings
    Case("utf-16-le-bom", (COMMAND + "resources: {gpus: 100}\n").encode("utf-16")),
    Case("utf-16-be", (COMMAND + "resources: {gpus: 100}\n").encode("utf-16-be")),
    Case("utf-32", (COMMAND + "resources: {gpus: 100}\n").encode("utf-32")),
    Case("latin-1", (COMMAND + "description: café\nresources: {gpus: 100}\n").encode("latin-1")),
    Case("overlong-utf-8", COMMAND.encode() + b"description: \xc0\xaf\n"),
    Case("encoded-surrogate", COMMAND.encode() + b"description: \xed\xa0\x80\n"),
    Case("escaped-surrogate", COMMAND + 'description: "\\ud800"\n', "description"),
    Case("escaped-surrogate-key", COMMAND + '"\\udfffx": 1\n', "(top level)"),
    Case("bom-then-error", "\ufeff" + COMMAND + "resources: {gpus: 100}\n", "resources.gpus"),
    Case("two-boms-then-error", "\ufeff\ufeff" + COMMAND + "resources: {gpus: 100}\n", "resources.gpus"),
    Case("bom-mid-file", COMMAND + "x-a: 1\n\ufeff\n"),
    Case("nul-bytes", COMMAND + "x-a: \x00\n"),
    Case("control-characters", COMMAND + "description: \x1b[31m\x07\n"),
    Case("garbage", bytes(range(256)) * 100),
    # --- tags, on scalars, sequences and mappings; in ignored x- blocks and in real keys
    *[Case(f"tag-{tag}-{shape}", ("%TAG !e! tag:example.com,2000:\n---\n" if tag.startswith("!e!") else "")
           + COMMAND + f"x-t: {tag} {value}\n") for tag in TAGS for shape, value in SHAPES.items()],
    Case("tag-on-section", COMMAND + "resources: !!omap [{gpus: 1}]\n"),
    Case("tag-on-key", COMMAND + "!!str description: x\n"),
    Case("tag-on-merge", COMMAND + "x-a: &a {b: 1}\nx-b: {<<: !!map *a}\n"),
    Case("tag-on-list-item", HEAD + "kind: command\ncommand: [echo, !!binary aGk=]\n"),
    Case("many-tags", COMMAND + "x-t: [" + ", ".join(["!t 1"] * 30_000) + "]\n"),
    # --- YAML 1.1 (sexagesimal numbers, 0-prefixed octal) and number literals
    Case("yaml-1.1-sexagesimal", "%YAML 1.1\n---\n" + COMMAND + "x-a: " + "1:" * 20_000 + "1\n", "x-a"),
    Case("hex-500-digits", COMMAND + "resources: {gpus: 0x" + "f" * 500 + "}\n", "resources.gpus"),
    Case("huge-in-x-block", COMMAND + "x-a: [1" + "0" * 400 + "]\n", "x-a[0]"),
    Case("huge-list-item", HEAD + "kind: command\ncommand: [echo, 1" + "0" * 5000 + "]\n", "command[1]"),
    Case("huge-key", COMMAND + "? " + "9" * 5000 + "\n: 1\n", "(top level)"),
]


# --- a number far too large for every numeric key, and one just above each key's bound ------------

def _numeric_fields() -> list[tuple[str, str, type]]:
    """(YAML path, field name, model) of every int/float field of the spec."""
    out = []
    for section, model in SECTIONS.items():
        for name, info in model.model_fields.items():
            if _is_numeric(info.annotation):
                out.append((f"{section}.{name}", name, model))
    for name, info in Source.model_fields.items():
        if _is_numeric(info.annotation):
            out.append((f"data.train[0].{name}", name, Source))
    for name, info in FreezeLayers.model_fields.items():
        out.append((f"training.freeze.{name}", name, FreezeLayers))
    for name, info in JobSpec.model_fields.items():
        if _is_numeric(info.annotation):
            out.append((name, name, JobSpec))
    return out


def _is_numeric(annotation) -> bool:
    if annotation in (int, float):
        return True
    return any(_is_numeric(a) for a in getattr(annotation, "__args__", ()) if a is not type(None))


def _spec_setting(path: str, value: str) -> str:
    if path.startswith("data.train[0]."):
        return TRAIN.replace("      config: el_gr\n", f"      config: el_gr\n      {path.rsplit('.', 1)[1]}: {value}\n")
    if path.startswith("training.freeze."):
        return TRAIN + f"  freeze: {{encoder_layers: {value}}}\n"
    if "." not in path:  # a top-level key (priority)
        return TRAIN + f"{path}: {value}\n"
    section, name = path.split(".")
    if f"  {name}: " in TRAIN:
        return re.sub(rf"(?m)^  {name}: .*$", lambda _: f"  {name}: {value}", TRAIN)
    if f"\n{section}:\n" in TRAIN:
        return TRAIN.replace(f"\n{section}:\n", f"\n{section}:\n  {name}: {value}\n")
    return TRAIN + f"{section}:\n  {name}: {value}\n"


HUGE = {"ten-to-the-400": "1" + "0" * 400, "5000-nines": "9" * 5000, "1e400": "1e400", "minus-1e400": "-1e400",
        "1e300": "1e300", "2-to-the-64": str(2**64)}
NUMERIC = _numeric_fields()
CASES += [Case(f"{path}={label}", _spec_setting(path, value), path)
          for path, _, _ in NUMERIC for label, value in HUGE.items()]
CASES += [
    Case("duration-20-digits", COMMAND + "limits: {max_runtime: 99999999999999999999h}\n", "limits.max_runtime"),
    Case("duration-5000-digits", COMMAND + "limits: {max_runtime: " + "9" * 5000 + "h}\n", "limits.max_runtime"),
    Case("duration-long-string", COMMAND + "runtime: {host_idle: '" + "1h" * 5000 + "'}\n", "runtime.host_idle"),
    Case("duration-31d", COMMAND + "distributed: {timeout: 31d}\n", "distributed.timeout"),
    Case("quantity-5000-digits", COMMAND + "resources: {memory: " + "9" * 5000 + "Gi}\n", "resources.memory"),
    Case("quantity-20-digits", COMMAND + "resources: {shm: 99999999999999999999Ei}\n", "resources.shm"),
    Case("cpu-5000-digit-millicores", COMMAND + "resources: {cpu: '" + "9" * 5000 + "m'}\n", "resources.cpu"),
    Case("cpu-5000-digit-string", COMMAND + "resources: {cpu: '" + "9" * 5000 + "'}\n", "resources.cpu"),
    Case("env-var-huge", COMMAND + "resources:\n  gpus: ${GPUS}\n", "resources.gpus", env={"GPUS": "1" + "0" * 400}),
    Case("env-var-5000-digits", TRAIN + "  warmup_steps: ${N}\n", "training.warmup_steps", env={"N": "9" * 5000}),
    Case("env-var-1e400", COMMAND + "limits:\n  max_cost: ${C}\n", "limits.max_cost", env={"C": "1e400"}),
    Case("set-huge", COMMAND, "resources.gpus", overrides=("resources.gpus=1e400",)),
    Case("set-5000-digits", COMMAND, "limits.max_cost", overrides=("limits.max_cost=" + "9" * 5000,)),
    Case("set-merge-bomb", COMMAND, "description", overrides=(
        "description=[" + ", ".join(["[" + ", ".join(["x"] * 100) + "]"] * 200) + "]",)),
]


def _write(tmp_path: Path, case: Case) -> Path:
    path = tmp_path / f"{re.sub(r'[^A-Za-z0-9.-]+', '-', case.id)[:60]}.yaml"
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        path.write_text(case.content, encoding="utf-8", errors="surrogatepass")
    return path


def _check_output(text: str, path: Path) -> None:
    assert str(path) in text, text[:1000]
    assert "Traceback" not in text and "internal error" not in text, text[:3000]
    for line in text.splitlines():
        assert len(line) <= MAX_LINE, f"a line of {len(line)} characters: {line[:200]}..."
    assert not re.search(r"\d{60}", text), "a huge number was echoed back"
    assert not re.search(r"(.)\1{100}", text), "a huge value was echoed back"


def test_there_are_many_cases():
    assert len(CASES) >= 150 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_refused_quickly_in_process(tmp_path, case: Case):
    path = _write(tmp_path, case)
    start = time.thread_time()
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=case.overrides, env=case.env)
    elapsed = time.thread_time() - start
    assert elapsed < CPU_LIMIT_S, f"took {elapsed:.2f} s of CPU"
    text = str(info.value)
    assert info.value.problems
    _check_output(text, path if not case.overrides else Path(info.value.problems[0].file))
    if case.key is not None:
        assert any(p.key == case.key for p in info.value.problems), text


def _child_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _gpujob(*args: str, env: dict | None = None, cwd: Path) -> tuple[subprocess.CompletedProcess, float]:
    before = _child_cpu()
    result = subprocess.run([sys.executable, "-m", "gpujob", *args], capture_output=True, text=True,
                            timeout=CLI_TIMEOUT_S, cwd=cwd, env={**os.environ, **(env or {})})
    return result, _child_cpu() - before


def test_all_refused_by_the_cli_at_once(tmp_path):
    """`gpujob validate` on every file case: one ✗ line per file, exit 2, no traceback, no huge lines."""
    cases = [c for c in CASES if not c.env and not c.overrides]
    paths = [_write(tmp_path, c) for c in cases]
    result, cpu = _gpujob("validate", *map(str, paths), cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    assert "✓" not in output, [line for line in output.splitlines() if "✓" in line]
    for path in paths:
        assert f"✗ {path}: " in output, f"{path.name} not reported"
    _check_output(output, paths[0])
    assert cpu < CPU_LIMIT_S * len(paths) / 4, f"{len(paths)} specs took {cpu:.1f} s of CPU"


HEAVIEST = ["merge-600x600", "merge-1200x1000", "merge-list-300x300", "billion-laughs", "one-mib-flow-list",
            "one-mib-tag", "default-bomb", "fifty-megabytes", "resources.gpus=5000-nines"]


@pytest.mark.parametrize("command,case", [("validate", c) for c in CASES if c.id in HEAVIEST] + [
    ("render", c) for c in CASES if c.id in ("merge-600x600", "one-mib-flow-list")], ids=lambda v: getattr(v, "id", v))
def test_cli_refuses_each_bomb_with_exit_2(tmp_path, case: Case, command: str):
    path = _write(tmp_path, case)
    result, cpu = _gpujob(command, str(path), cwd=tmp_path, env=case.env)
    output = result.stdout + result.stderr
    assert result.returncode == 2, output[-3000:]
    _check_output(output, path)
    assert cpu < CPU_LIMIT_S + 2, f"{cpu:.2f} s of CPU, starting the CLI included"  # start-up: about 0.5 s


def test_cli_refuses_huge_numbers_from_env_and_set(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(COMMAND + "resources:\n  gpus: ${GPUS}\n", encoding="utf-8")
    result, _ = _gpujob("validate", str(path), "--set", "limits.max_cost=1e400", cwd=tmp_path,
                        env={"GPUS": "9" * 5000})
    output = result.stdout + result.stderr
    assert result.returncode == 2, output
    assert "resources.gpus: " in output and "at most 64" in output
    assert "--set: limits.max_cost: 1e400 is far too large; it must be at most 1,000,000" in output
    _check_output(output, path)


# --- every number has an upper bound -------------------------------------------------------------

def _numbers_without_maximum(schema, where="") -> list[str]:
    found = []
    if isinstance(schema, dict):
        if schema.get("type") in ("integer", "number") and "maximum" not in schema \
                and "exclusiveMaximum" not in schema:
            found.append(where)
        for key, value in schema.items():
            found += _numbers_without_maximum(value, f"{where}/{key}")
    elif isinstance(schema, list):
        for i, value in enumerate(schema):
            found += _numbers_without_maximum(value, f"{where}/{i}")
    return found


def test_every_number_in_the_schema_has_a_maximum():
    """A new int or float field without le=/lt= fails here, before 10**400 of it reaches a backend."""
    assert _numbers_without_maximum(json_schema()) == []


def test_every_numeric_field_is_in_the_torture_list():
    paths = {path for path, _, _ in NUMERIC}
    assert {"resources.gpus", "resources.nodes", "resources.cpu", "training.max_steps", "training.seed",
            "limits.max_cost", "limits.idle_minutes", "distributed.port", "data.train[0].weight",
            "training.freeze.encoder_layers", "evaluation.batch_size", "data.loader_workers",
            "resources.price_per_hour", "priority"} <= paths


EDGES = [  # (key, largest value allowed, the next one up, words of the error)
    ("resources.gpus", "64", "65", "at most 64"),
    ("resources.nodes", "64", "65", "at most 64"),
    ("resources.cpu", "1024", "1025", "at most 1024"),
    ("resources.memory", "1Pi", "1025Ti", "more than 1Pi"),
    ("limits.max_runtime", "30d", "30d1s", "longer than 30d"),
    ("limits.max_cost", "1000000", "1000001", "at most 1000000"),
    ("resources.price_per_hour", "100000", "100001", "at most 100000"),
    ("priority", "1000", "1001", "at most 1000"),
    ("limits.idle_minutes", "43200", "43201", "at most 43200"),
    ("training.max_steps", "1000000000", "1000000001", "at most 1000000000"),
    ("training.seed", "4294967295", "4294967296", "at most 4294967295"),
    ("training.learning_rate", "1.0", "1.5", "at most 1"),
    ("training.per_device_batch_size", "4096", "4097", "at most 4096"),
    ("training.freeze.encoder_layers", "64", "65", "at most 64"),
    ("evaluation.batch_size", "4096", "4097", "from 1 to 4096"),
    ("data.train[0].weight", "1000000", "1000001", "at most 1000000"),
]


@pytest.mark.parametrize("key,ok,bad,words", EDGES, ids=[e[0] for e in EDGES])
def test_bounds_at_the_edge(key, ok, bad, words):
    def spec(value: str) -> str:
        return _spec_setting(key, value) + "runtime: {backend: kubernetes}\n"  # nodes > 1 need kubernetes

    assert isinstance(load_spec_text(spec(ok), "job.yaml", env={}), LoadedSpec)
    with pytest.raises(SpecError) as info:
        load_spec_text(spec(bad), "job.yaml", env={})
    expected_key = "training.freeze" if key == "training.freeze.encoder_layers" else key
    assert any(p.key == expected_key and words in p.message for p in info.value.problems), str(info.value)


def test_errors_never_echo_a_huge_number():
    with pytest.raises(SpecError) as info:
        load_spec_text(COMMAND + "resources: {gpus: 1" + "0" * 400 + "}\n", "job.yaml", env={})
    [problem] = info.value.problems
    assert problem.key == "resources.gpus" and problem.line == 4
    assert "is far too large; it must be at most 64" in problem.message and len(problem.message) < 120


# --- what real specs do keeps working -------------------------------------------------------------

def test_anchors_and_merges_still_work():
    text = HEAD + """\
kind: train
x-fleurs: &fleurs {dataset: google/fleurs, config: el_gr}
x-text: &text {text_column: transcription}
x-cv: &cv {dataset: data/cv, text_column: sentence}
training: {max_steps: 10}
data:
  train:
    - {<<: *fleurs, split: train}
    - {<<: [*fleurs, *text], split: validation, weight: 2}
    - *cv
  eval:
    - {<<: *fleurs, split: test}
resources: {gpus: 64, nodes: 2, cpu: 1024}
runtime: {backend: kubernetes}
limits: {max_runtime: 30d}
description: ! plain text
"""
    spec = load_spec_text(text, "job.yaml", env={}).spec
    assert [(s.dataset, s.split, s.text_column, s.weight) for s in spec.data.train] == [
        ("google/fleurs", "train", None, 1.0), ("google/fleurs", "validation", "transcription", 2.0),
        ("data/cv", "train", "sentence", 1.0)]
    assert spec.data.eval[0].split == "test" and spec.limits.max_runtime_seconds == 30 * 86400
    assert spec.description == "plain text"


def test_a_big_but_reasonable_spec_loads_quickly():
    env = "".join(f"    VAR_{i}: value-{i}\n" for i in range(2000))
    text = COMMAND + "runtime:\n  env:\n" + env
    start = time.thread_time()
    spec = load_spec_text(text, "job.yaml", env={}).spec
    assert len(spec.runtime.env) == 2000 and time.thread_time() - start < CPU_LIMIT_S


# --- random shapes of aliases and merges -----------------------------------------------------------

@st.composite
def alias_documents(draw) -> str:
    # 1,000 x 1,000 is already 100 times the limit; larger files only measure how fast YAML is read
    width = draw(st.integers(1, 1000))
    uses = draw(st.integers(1, 1000))
    levels = draw(st.integers(0, 4))
    shape = draw(st.sampled_from(["merge", "merge-list", "alias", "alias-in-mapping"]))
    block = _keys(width) if shape.startswith("merge") else "[" + ", ".join(["1"] * width) + "]"
    text = COMMAND + f"x-a0: &a0 {block}\n"
    for i in range(1, levels + 1):  # each level repeats the previous one twice
        prev = f"*a{i - 1}"
        text += (f"x-a{i}: &a{i} {{<<: [{prev}, {{dup{i}: {prev}}}], lvl{i}: {i}}}\n" if shape.startswith("merge")
                 else f"x-a{i}: &a{i} [{prev}, {prev}]\n")
    top = f"*a{levels}"
    use = {"merge": f"{{<<: {top}}}", "merge-list": f"{{<<: [{top}, {{x: 1}}]}}", "alias": top,
           "alias-in-mapping": f"{{v: {top}}}"}[shape]
    return text + "x-uses: [" + ", ".join([use] * uses) + "]\n"


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(alias_documents())
def test_random_alias_and_merge_shapes_are_bounded(text):
    start = time.thread_time()
    try:
        load_spec_text(text, "job.yaml", env={})
    except SpecError as exc:
        _check_output(str(exc), Path("job.yaml"))
    assert time.thread_time() - start < CPU_LIMIT_S
