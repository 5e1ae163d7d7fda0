"""A job's price, the most it can cost, its budget as running time, and what earlier runs say it will cost
(cli/gpujob/pricing.py, the cost in records.Job, the deadline in backends.base.JobRequest)."""

from __future__ import annotations

import math
import time
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gpujob.backends import capabilities, price_tables
from gpujob.backends.base import JobRequest
from gpujob.errors import UserError
from gpujob.pricing import Price, earlier_throughput, estimate, job_price, load_table, most_it_can_cost
from gpujob.records import MAX_BUDGET_S, Job
from gpujob.spec import load_spec_text

HEAD = "apiVersion: gpujob/v1\n"
K8S_BY_SCOPE = capabilities("kubernetes").price_table_by_scope  # its entry by kubeconfig context first
LOCAL_PROVIDER_PRICED = capabilities("local").provider_priced


def spec_of(text: str, backend: str | None = None):
    return load_spec_text(HEAD + text, "job.yaml", env={}, backend=backend).spec


def train(extra: str = "", *, gpus: int = 1, gpu_type: str | None = "A10") -> str:
    kind = f"resources: {{gpus: {gpus}" + (f", gpu_type: {gpu_type}" if gpu_type else "") + "}\n"
    return ("kind: train\nname: t\nmodel: {checkpoint: openai/whisper-small, language: el}\n"
            "data:\n  train: [{dataset: google/fleurs, config: el_gr}]\n  eval: [{dataset: google/fleurs, config: el_gr, split: test}]\n"
            "training: {max_steps: 4000, eval_steps: 1000, save_steps: 500}\n" + kind + extra)


def table_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "prices.yaml"
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- the price table


def test_a_table_prices_gpus_by_type_with_a_fallback_and_cpu_jobs_by_the_hour(tmp_path):
    table = load_table(table_file(tmp_path, "local: {A10: 0.75, gpu: 2.0, cpu: 0.1}\n"), backends=price_tables())
    found = job_price(spec_of(train(gpus=2)), "local", table=table)
    assert found.usd_per_hour == 1.5 and "local.a10 x 2 GPUs" in found.source
    assert job_price(spec_of(train(gpu_type="H100")), "local", table=table).usd_per_hour == 2.0
    cpu = spec_of("kind: command\ncommand: ['true']\n")
    assert job_price(cpu, "local", table=table).usd_per_hour == 0.1
    assert job_price(cpu, "docker", table=table) is None  # no docker entry: unknown, not free


def test_kubernetes_prices_go_by_context_then_default_then_what_the_cluster_published(tmp_path):
    table = load_table(table_file(tmp_path, "kubernetes:\n  big: {H100: 3.0}\n  default: {gpu: 1.0}\n"), backends=price_tables())
    spec = spec_of(train(gpus=8, gpu_type="H100"), "kubernetes")
    assert job_price(spec, "kubernetes", by_scope=K8S_BY_SCOPE, context="big", table=table).usd_per_hour == 24.0
    assert job_price(spec, "kubernetes", by_scope=K8S_BY_SCOPE, context="other", table=table).usd_per_hour == 8.0
    published = {"h100": 2.5}
    assert job_price(spec, "kubernetes", by_scope=K8S_BY_SCOPE, context="x", table={}, published=published).usd_per_hour == 20.0
    assert "published" in job_price(spec, "kubernetes", by_scope=K8S_BY_SCOPE, table={}, published=published).source


def test_the_spec_price_wins_over_every_table():
    spec = spec_of(train().replace("gpu_type: A10}", "gpu_type: A10, price_per_hour: 7.5}"))
    found = job_price(spec, "local", table={"local": {"gpu": 1.0}})
    assert found == Price(7.5, "resources.price_per_hour")


@pytest.mark.parametrize("text,words", [
    ("local: {A10: cheap}\n", "local.A10: expected a price in USD per hour"),
    ("local: {gpu: -1}\n", "local.gpu: expected a price"),
    ("lambda: {gpu: 1}\n", "lambda: not a backend with a price table"),
    ("host: {gpu: 1}\n", "host: not a backend with a price table"),
    ("local: [1, 2]\n", "local: expected a mapping of GPU types"),
    ("- 1\n", "expected a mapping of backends"),
])
def test_a_bad_table_is_refused_naming_the_file_and_the_key(tmp_path, text, words):
    path = table_file(tmp_path, text)
    with pytest.raises(UserError) as info:
        load_table(path, backends=price_tables())
    assert str(path) in info.value.message and words in info.value.message


@settings(max_examples=200, deadline=None)
@given(per_gpu=st.floats(0, 1000), gpus=st.integers(1, 8), nodes=st.integers(1, 4))
def test_a_jobs_price_is_the_gpu_price_times_all_its_gpus(per_gpu, gpus, nodes):
    spec = spec_of(train(gpus=gpus, gpu_type="L4").replace("resources: {", f"resources: {{nodes: {nodes}, "),
                   "kubernetes")
    found = job_price(spec, "kubernetes", by_scope=K8S_BY_SCOPE, table={"kubernetes": {"default": {"l4": per_gpu}}})
    assert math.isclose(found.usd_per_hour, per_gpu * gpus * nodes)


# ----------------------------------------------------------------------------- bounds and budgets


@settings(max_examples=200, deadline=None)
@given(price=st.floats(0.01, 10_000), hours=st.integers(1, 48), budget=st.one_of(st.none(), st.floats(0.01, 1e5)))
def test_the_most_a_job_can_cost_is_the_lower_of_its_runtime_and_its_budget(price, hours, budget):
    extra = f"limits: {{max_runtime: {hours}h" + (f", max_cost: {budget!r}" if budget is not None else "") + "}\n"
    spec = spec_of("kind: command\ncommand: ['true']\n" + extra)
    most, why = most_it_can_cost(Price(price, "x"), spec)
    by_runtime = price * hours
    assert math.isclose(most, min(by_runtime, budget) if budget is not None else by_runtime)
    if budget is None or budget != by_runtime:  # at a tie either limit says it
        assert why == ("limits.max_cost" if budget is not None and budget < by_runtime else f"limits.max_runtime {hours}h")


def test_a_job_without_limits_has_no_maximum_and_one_without_a_price_none_at_all():
    spec = spec_of("kind: command\ncommand: ['true']\n")
    assert most_it_can_cost(Price(2.0, "x"), spec) is None
    assert most_it_can_cost(None, spec) is None


@settings(max_examples=300, deadline=None)
@given(runtime=st.one_of(st.none(), st.integers(1, 30 * 86400)), price=st.one_of(st.none(), st.floats(0.001, 1e5)),
       budget=st.one_of(st.none(), st.floats(0.001, 1e6)))
def test_the_deadline_is_the_sooner_of_max_runtime_and_the_budget_in_whole_seconds(runtime, price, budget):
    request = JobRequest(job_id="x", name="x", kind="command", spec=None, spec_path=None, command=["true"], env={},
                         secret_names=[], workdir="/", output_dir="/o", job_dir=Path("/j"), max_runtime_s=runtime,
                         price_per_hour=price, max_cost=budget)
    budget_s = min(budget / price * 3600, MAX_BUDGET_S) if budget is not None and price else None  # at most 10 years
    limits = [x for x in (runtime, budget_s) if x is not None]
    if not limits:
        assert request.deadline_s is None
        return
    assert request.deadline_s >= 1 and request.deadline_s - 1 < max(1, min(limits)) <= request.deadline_s
    assert request.budget_first == (budget_s is not None and (runtime is None or budget_s < runtime))


# ----------------------------------------------------------------------------- cost of a recorded job


def job(**changes) -> Job:
    now = time.time()
    fields = dict(id="abc123", name="t", kind="train", backend="local", status="running", reason=None, exit_code=None,
                  spec_path=None, spec_data={}, output_dir=None, handle={}, progress={}, metrics={}, cost_usd=0.0,
                  created_at=now - 100, started_at=now - 60, finished_at=None, updated_at=now)
    fields.update(changes)
    return Job(**fields)


def test_cost_is_price_times_running_time_and_unknown_without_a_price():
    now = time.time()
    done = job(status="succeeded", started_at=now - 7200, finished_at=now, price_usd_per_hour=1.5)
    assert math.isclose(done.cost, 3.0)
    assert job(price_usd_per_hour=None).cost is None
    queued = job(status="queued", started_at=None, price_usd_per_hour=100.0)
    assert queued.cost == 0.0  # waiting in a queue is free
    running = job(price_usd_per_hour=3600.0)
    assert 55 < running.cost < 70 and 1055 < running.projected_cost(1000) < 1070


def test_an_earlier_run_of_the_same_setup_projects_the_cost_and_warns_of_a_budget_too_small():
    spec = spec_of(train("limits: {max_cost: 0.5}\n"))
    same = spec.model_dump(mode="json", by_alias=True)
    other = {**same, "resources": {**same["resources"], "gpu_type": "H100"}}
    progress = {"step": 100, "total_steps": 4000, "steps_per_s": 0.5}
    jobs = [job(id="other1", spec_data=other, progress={**progress, "steps_per_s": 9.0}),
            job(id="same01", spec_data=same, progress=progress)]
    seen = earlier_throughput(spec, jobs)
    assert seen.job_id == "same01" and seen.steps_per_s == 0.5  # the H100 run's speed does not hold on an A10
    est = estimate(spec, Price(2.0, "x"), jobs, LOCAL_PROVIDER_PRICED)
    usd, seconds = est.projected
    assert math.isclose(seconds, 8000) and math.isclose(usd, 2.0 * 8000 / 3600)
    # $0.50 at $2/h is 15 minutes; the first checkpoint (step 500) comes after 1000 s
    assert any("before anything is saved" in w and "job same01" in w for w in est.warnings)
    assert not estimate(spec_of(train("limits: {max_cost: 5}\n")), Price(2.0, "x"), jobs, LOCAL_PROVIDER_PRICED).warnings


def test_a_budget_without_a_price_is_a_problem_except_where_the_host_prices_it():
    spec = spec_of("kind: command\ncommand: ['true']\nlimits: {max_cost: 5}\n")
    assert "no price" in estimate(spec, None, [], capabilities("local").provider_priced).problem
    assert estimate(spec, None, [], capabilities("host").provider_priced).problem is None
