"""Property tests: whatever the input, the loader returns a LoadedSpec or raises SpecError — nothing else."""

from __future__ import annotations

import copy
import io
import os
import tempfile

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ruamel.yaml import YAML

from gpujob.spec import LoadedSpec, SpecError, load_spec, load_spec_text

# GPUJOB_FUZZ_EXAMPLES=5000 for a longer hunt; the default keeps the file to a few seconds.
FUZZ = settings(max_examples=int(os.environ.get("GPUJOB_FUZZ_EXAMPLES", "200")), deadline=None,
                suppress_health_check=[HealthCheck.too_slow])

VALID = {
    "apiVersion": "gpujob/v1",
    "kind": "train",
    "name": "fuzz",
    "model": {"checkpoint": "openai/whisper-small", "language": "el"},
    "data": {
        "train": [
            {"dataset": "data/cv-corpus-el/", "split": "train+validation", "text_column": "sentence", "weight": 2},
            {"dataset": "google/fleurs", "config": "el_gr", "revision": "refs/convert/parquet",
             "text_column": "transcription"},
        ],
        "eval": [{"dataset": "google/fleurs", "config": "el_gr", "split": "test"}],
    },
    "training": {"learning_rate": 1e-5, "max_steps": 100, "freeze": {"encoder_layers": 2}, "dropout": 0.05},
    "evaluation": {"metrics": ["wer", "cer"]},
    "resources": {"gpus": 1, "cpu": "500m", "memory": "32Gi"},
    "runtime": {"backend": "docker", "env": {"MODE": "x"}, "secrets": ["HF_TOKEN"]},
    "limits": {"max_runtime": "1h30m", "max_cost": 5},
}
ENV = {"HOME": "/home/me", "X": "1"}

YAML_TOKENS = st.sampled_from([
    "apiVersion", "gpujob/v1", "kind", "train", "command", "training", "learning_rate", "data", "- ", ": ", ":",
    "\n", "  ", "\t", "[", "]", "{", "}", ",", "'", '"', "#", "---", "...", "&a ", "*a", "<<: ", "!!str ",
    "!tag ", "? ", "|", ">", "${X}", "${Y:-1}", "$${", "1e-5", "no", "null", "~", "-1", ".inf", "%YAML 1.1\n",
    "\x00", "\ufeff", "é", "2024-01-01", "0o17", "true",
])

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30), st.sampled_from(["auto", "none", "encoder", "wer", "1h", "32Gi", "${X}", "${NOPE}",
                                           "hf_" + "a" * 34, "train+", "", "local"]),
)
values = st.recursive(scalars, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=12), inner, max_size=4)), max_leaves=12)


def check(result_or_error) -> None:
    if isinstance(result_or_error, SpecError):
        assert result_or_error.problems
        for problem in result_or_error.problems:
            assert problem.key or problem.message
            assert str(problem)
    else:
        assert isinstance(result_or_error, LoadedSpec)


def run_text(text: str, overrides=()) -> None:
    try:
        result = load_spec_text(text, "fuzz.yaml", overrides=overrides, env=ENV)
    except SpecError as exc:
        result = exc
    check(result)


@FUZZ
@given(st.text(max_size=300))
def test_random_text(text):
    run_text(text)


@FUZZ
@given(st.lists(YAML_TOKENS, max_size=40).map("".join))
def test_random_yaml_like_text(text):
    run_text(text)


@FUZZ
@given(st.binary(max_size=300))
def test_random_bytes_as_text_and_file(data):
    run_text(data.decode("utf-8", errors="replace"))
    fd, name = tempfile.mkstemp(suffix=".yaml")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        try:
            result = load_spec(name, env=ENV)
        except SpecError as exc:
            result = exc
        check(result)
    finally:
        os.unlink(name)


def _paths(value, prefix=()):
    yield prefix
    if isinstance(value, dict):
        for key, sub in value.items():
            yield from _paths(sub, prefix + (key,))
    elif isinstance(value, list):
        for index, sub in enumerate(value):
            yield from _paths(sub, prefix + (index,))


def _mutate(doc, draw):
    paths = list(_paths(doc))
    for _ in range(draw(st.integers(1, 4))):
        path = draw(st.sampled_from(paths))
        parent = doc
        for seg in path[:-1]:
            parent = parent[seg]
        op = draw(st.sampled_from(["replace", "add", "delete"]))
        try:
            target = parent[path[-1]] if path else doc
        except (KeyError, IndexError, TypeError):
            continue
        if op == "replace" and path:
            parent[path[-1]] = draw(values)
        elif op == "add" and isinstance(target, dict):
            target[draw(st.text(max_size=15))] = draw(values)
        elif op == "add" and isinstance(target, list):
            target.append(draw(values))
        elif op == "delete" and path:
            del parent[path[-1]]
        paths = list(_paths(doc))
    return doc


def _dump(doc) -> str:
    yaml = YAML(typ="safe", pure=True)
    yaml.default_flow_style = False
    out = io.StringIO()
    yaml.dump(doc, out)
    return out.getvalue()


def test_valid_base_document_loads():
    loaded = load_spec_text(_dump(VALID), "fuzz.yaml", env=ENV)
    assert loaded.spec.training.max_steps == 100 and loaded.spec.resources.cpu == 0.5


@FUZZ
@given(st.data())
def test_mutated_documents(data):
    doc = _mutate(copy.deepcopy(VALID), data.draw)
    overrides = data.draw(st.lists(st.sampled_from([
        "training.max_steps=5", "training.max_steps", "data.train.0.weight=3", "data.train.9.x=1",
        "model.checkpoint.x=1", "evaluation.metrics=[wer", "runtime.env.A=1", "=", "a.b.c=[1, {x: 2}]",
    ]), max_size=2))
    run_text(_dump(doc), overrides)
