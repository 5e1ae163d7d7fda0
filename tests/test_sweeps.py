"""Sweeps without running anything: --grid parsing, the combinations, and what each job is called.
The combinations are checked through the spec loader, so each job's spec is what --set makes of it."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gpujob import sweeps
from gpujob.errors import UserError
from gpujob.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "jobs" / "hello.yaml"


def test_values_split_at_commas_outside_brackets_and_quotes():
    assert sweeps.split_values("1e-5,3e-5") == ["1e-5", "3e-5"]
    assert sweeps.split_values('[a, b],[c],"x,y"') == ["[a, b]", "[c]", '"x,y"']
    assert sweeps.split_values("{encoder_layers: 4, x: 1},none") == ["{encoder_layers: 4, x: 1}", "none"]


@pytest.mark.parametrize("item, words", [
    ("training.learning_rate", "write key.path=value1,value2"),
    ("=1,2", "write key.path=value1,value2"),
    ("training..learning_rate=1,2", "has an empty part"),
    ("training.learning_rate=1e-5,,3e-5", "value 2 of training.learning_rate is empty"),
    ("training.learning_rate=1e-5,1e-5", "lists 1e-5 twice"),
    ("name=a,b", "a sweep sets name of each job itself"),
    ("output.dir=a,b", "a sweep sets output.dir of each job itself"),
])
def test_a_malformed_grid_is_refused_naming_it(item, words):
    with pytest.raises(UserError) as caught:
        sweeps.parse_grid([item])
    assert words in caught.value.message and f"--grid {item!r}" in caught.value.message


def test_a_key_twice_or_also_in_set_is_refused():
    with pytest.raises(UserError, match="given to --grid twice"):
        sweeps.parse_grid(["limits.max_runtime=1m,2m", "limits.max_runtime=3m"])
    with pytest.raises(UserError, match="given to both --set and --grid"):
        sweeps.parse_grid(["data.train[0].weight=1,2"], set_keys=["data.train.0.weight=3"])
    with pytest.raises(UserError, match="at least one --grid"):
        sweeps.parse_grid([])


priorities = st.lists(st.integers(min_value=-1000, max_value=1000), min_size=1, max_size=5, unique=True)
idle_minutes = st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=5, unique=True)


@settings(max_examples=25, deadline=None)
@given(first=priorities, second=idle_minutes)
def test_n_by_m_values_make_n_times_m_distinct_specs_each_with_exactly_its_values(first, second):
    axes = sweeps.parse_grid([f"priority={','.join(map(str, first))}",
                              f"limits.idle_minutes={','.join(map(str, second))}"])
    combos = sweeps.combinations(axes)
    assert len(combos) == len(first) * len(second)
    assert [c.n for c in combos] == list(range(1, len(combos) + 1))
    seen = set()
    for combo in combos:
        overrides = sweeps.member_overrides(combo, name="hello", output_dir="outputs/hello", sweep_id="sabcde")
        spec = load_spec(HELLO, overrides).spec
        assert (spec.priority, spec.limits.idle_minutes) == tuple(int(v) for _, v in combo.settings)
        assert spec.name == f"hello-{combo.n}"
        assert spec.output.dir == f"outputs/hello/sabcde-{combo.n}"
        seen.add((spec.priority, spec.limits.idle_minutes))
    assert seen == set(itertools.product(first, second))  # every pair, none twice


def test_values_are_typed_as_set_types_them():
    axes = sweeps.parse_grid(["training.learning_rate=1e-5,auto", "training.freeze=none,encoder"])
    train = ROOT / "jobs" / "train-el-small.yaml"
    specs = [load_spec(train, c.overrides).spec for c in sweeps.combinations(axes)]
    assert [(s.training.learning_rate, s.training.freeze) for s in specs] == [
        (1e-5, "none"), (1e-5, "encoder"), ("auto", "none"), ("auto", "encoder")]


def test_member_names_stay_within_the_spec_limit():
    long = "a" * 53
    assert sweeps.member_name(long, 12) == "a" * 50 + "-12"
    assert len(sweeps.member_name(long, 12)) == 53
    assert sweeps.member_name("hello", 3) == "hello-3"
    assert sweeps.member_output_dir("outputs/x/", "s12345", 2) == "outputs/x/s12345-2"


def test_a_million_combination_grid_is_refused_at_once_with_its_count(tmp_path, monkeypatch):
    """issue 29 (4): --grid priority=0..999 --grid description=d0..d999 printed nothing for 60 s and
    grew to 447 MB; now the CLI exits 2 at once, naming the count and the cap."""
    import time
    import tracemalloc

    from typer.testing import CliRunner

    from gpujob.cli.app import app

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("GPUJOB_HOME", str(tmp_path / "home"))
    grid = [f"priority={','.join(str(i) for i in range(1000))}",
            f"description={','.join(f'd{i}' for i in range(1000))}"]
    tracemalloc.start()
    started = time.monotonic()
    result = CliRunner().invoke(app, ["sweep", str(HELLO), "--grid", grid[0], "--grid", grid[1]])
    took = time.monotonic() - started
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert result.exit_code == 2, result.output
    assert "1,000,000 jobs (1000 x 1000)" in result.output and "at most 1,000" in result.output
    assert "Traceback" not in result.output
    assert took < 5 and peak < 50 * 2**20, (took, peak)


@settings(max_examples=60, deadline=None)
@given(lengths=st.lists(st.integers(min_value=1, max_value=3000), min_size=1, max_size=4))
def test_any_grid_either_stays_within_the_cap_or_is_refused_before_expanding(lengths):
    """The property: a grid of any shape either makes exactly the product of its axes' lengths,
    at most MAX_COMBINATIONS, or is refused with that product; nothing is expanded to find out."""
    items = [f"k{a}.x={','.join(str(i) for i in range(n))}" for a, n in enumerate(lengths)]
    total = 1
    for n in lengths:
        total *= n
    if total <= sweeps.MAX_COMBINATIONS:
        assert len(sweeps.combinations(sweeps.parse_grid(items))) == total
        return
    with pytest.raises(UserError) as caught:
        sweeps.parse_grid(items)
    assert f"{total:,} jobs" in caught.value.message
    with pytest.raises(UserError):  # and combinations() refuses as well, for callers that skip parse_grid
        sweeps.combinations([sweeps.Axis(f"k{a}", tuple(map(str, range(n)))) for a, n in enumerate(lengths)])
