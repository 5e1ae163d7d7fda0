"""Every number gpujob derives from a spec's numbers stays bounded (issue 29, finding 4): a price of
1e-310 USD/h with a $1,000,000 budget buys 3.6e318 s, which crashed render and submit (OverflowError)
and, at 1e-200, rendered a 210-digit activeDeadlineSeconds. Budgets become at most
records.MAX_BUDGET_S of running; whatever the floats, validate and render never crash."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from gpujob import service
from gpujob.cli.app import app
from gpujob.errors import GpujobError
from gpujob.records import MAX_BUDGET_S, budget_seconds
from gpujob.spec import SpecError, load_spec

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "jobs" / "hello.yaml"
DEADLINE = re.compile(r"activeDeadlineSeconds:\s*(\S+)")
LONG_INTEGER = re.compile(r"(?<![\d.])\d{11,}(?![\d.])")  # a whole number of more than 10 digits


@pytest.fixture(autouse=True)
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("GPUJOB_HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("price", ["1e-310", "1e-200", "5e-324"])
def test_a_subnormal_price_with_a_large_budget_renders_a_bounded_deadline(price):
    """The report's example: render (kubernetes) crashed with OverflowError, or printed 210 digits."""
    result = CliRunner().invoke(app, ["render", str(HELLO), "--backend", "kubernetes",
                                      "--set", f"resources.price_per_hour={price}", "--set", "limits.max_cost=1e6",
                                      "--set", "limits.max_runtime=null"])
    assert result.exit_code == 0, result.output
    assert "internal error" not in result.output
    assert int(DEADLINE.search(result.output).group(1)) == MAX_BUDGET_S


def test_a_subnormal_price_submits_on_local_and_records_a_bounded_budget():
    """submit crashed after recording the job (a failed record was left); now it runs."""
    result = CliRunner().invoke(app, ["submit", str(HELLO), "--set", "resources.price_per_hour=1e-310",
                                      "--set", "limits.max_cost=1e6", "--set", "limits.max_runtime=null",
                                      "--set", 'command=[python, -c, "print(1)"]'])
    assert result.exit_code == 0, result.output
    launch = json.loads(next((Path("home") / "jobs").glob("*/launch.json")).read_text())
    assert launch["budget_s"] == MAX_BUDGET_S


floats = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True)
interesting = st.one_of(floats, st.sampled_from([0.0, -0.0, 5e-324, 1e-310, 1e-200, 1e-6, 1.0, 1e5, 1e6, 1e300]))


@settings(max_examples=300, deadline=None)
@given(max_cost=st.one_of(st.none(), interesting), price=st.one_of(st.none(), interesting))
def test_budget_seconds_is_none_or_within_bounds_for_any_floats(max_cost, price):
    seconds = budget_seconds(max_cost, price)
    assert seconds is None or 0 <= seconds <= MAX_BUDGET_S


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(price=interesting, max_cost=st.one_of(st.none(), interesting),
       runtime=st.sampled_from(["null", "1s", "10m", "30d"]), backend=st.sampled_from(["local", "kubernetes", "docker"]))
def test_any_price_and_budget_either_fail_validation_or_render_with_bounded_numbers(price, max_cost, runtime, backend):
    """The property: whatever floats the spec holds (subnormal, huge, NaN, infinite, negative), loading
    gives a SpecError or a spec whose render and estimate never crash, whose deadline is a whole number
    of seconds from 1 to MAX_BUDGET_S, and whose rendered text holds no whole number of over 10 digits."""
    sets = [f"resources.price_per_hour={price!r}", f"limits.max_runtime={runtime}"]
    if max_cost is not None:
        sets.append(f"limits.max_cost={max_cost!r}")
    try:
        loaded = load_spec(HELLO, sets, backend=backend)
    except SpecError:
        return
    request = service._preview_request(loaded)
    assert request.deadline_s is None or 1 <= request.deadline_s <= MAX_BUDGET_S
    try:
        text, est = service.render(loaded)
    except GpujobError:  # a clear refusal (e.g. a budget the backend cannot enforce) is fine; a crash is not
        return
    assert not LONG_INTEGER.search(text), LONG_INTEGER.search(text).group(0)
    for found in DEADLINE.findall(text):
        assert 1 <= int(found) <= MAX_BUDGET_S
    if est.most is not None:
        assert math.isfinite(est.most[0]) and est.most[0] >= 0
