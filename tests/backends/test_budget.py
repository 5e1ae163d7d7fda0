"""Money on the local backend, end to end through the CLI: the price of a job, its cost in every view, the most
it can cost in render and submit, confirmation above a threshold, and limits.max_cost stopping the job."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry
from polling import wait_for

runner = CliRunner()

# A job that keeps printing progress (and would for 200 s); on SIGTERM it writes a checkpoint and exits 143,
# as the runner does.
FOREVER = """\
import json, os, signal, sys, time
from gpujob.progress import ProgressWriter
out = os.environ["GPUJOB_OUTPUT_DIR"]
os.makedirs(out, exist_ok=True)
p = ProgressWriter()
step = 0
def stop(*_):
    open(os.path.join(out, "checkpoint"), "w").write(str(step))
    p.checkpoint(step=step, path=out)
    sys.exit(143)
signal.signal(signal.SIGTERM, stop)
while step < 2000:
    step += 1
    p.progress(step=step, total_steps=2000)
    time.sleep(0.1)
"""


def gpujob(*args: str, env: dict[str, str] | None = None):
    return runner.invoke(app, list(args), env=env)


def write(tmp_path: Path, name: str, extra: str, code: str = FOREVER) -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text("apiVersion: gpujob/v1\nkind: command\n"
                    f"name: {name}\ncommand: {json.dumps(['python', '-c', code])}\n"
                    f"output:\n  dir: {tmp_path / 'out' / name}\n" + extra)
    return path


def job_id(result) -> str:
    found = re.search(r"submitted job (\w+)", result.output)
    assert found, result.output
    return found.group(1)


def test_a_job_at_3600_dollars_an_hour_is_stopped_by_a_3_dollar_budget_and_status_says_so(tmp_path):
    spec = write(tmp_path, "budget", "resources: {price_per_hour: 3600}\nlimits: {max_cost: 3}\n")
    submitted = gpujob("submit", str(spec))
    assert submitted.exit_code == 0, submitted.output
    assert "at most $3.00 (limits.max_cost)" in submitted.output
    jid = job_id(submitted)
    job = wait_for(lambda: (j := Registry().get(jid)) and not j.active and j, timeout=30)
    # $1 a second: $3 after 3 s of running; SIGTERM half-way (the grace, at most half the budget), so a
    # job that saves and exits stops between $1.50 and the budget
    assert 1.4 <= job.runtime_s <= 3.6, job.runtime_s
    assert 1.4 <= job.cost <= 3.6
    assert job.status == "failed" and job.exit_code == 143
    step = int((tmp_path / "out" / "budget" / "checkpoint").read_text())  # stopped as SIGTERM stops it
    assert 10 <= step < 40
    status = gpujob("status", jid).output
    said = re.search(r"stopped at the budget of \$3\.00 \(limits\.max_cost, at \$3,600\.00/h\) at step (\d+); "
                     r"resubmit with a higher limits\.max_cost to resume", status)
    assert said and step - 1 <= int(said.group(1)) <= step, status  # the step it had reached when stopped
    assert re.search(r"cost +\$[1-3]\.\d\d at \$3,600\.00/h \(resources\.price_per_hour\); budget \$3\.00", status), status
    listed = gpujob("list").output
    assert re.search(rf"{jid} +budget +local +failed .* \$[1-3]\.\d\d ", listed), listed
    summary = json.loads(gpujob("status", jid, "--json").output)
    assert summary["price_usd_per_hour"] == 3600 and summary["max_cost_usd"] == 3 and 1.4 <= summary["cost_usd"] <= 3.6


def test_render_of_a_priced_spec_prints_the_most_it_can_cost(tmp_path):
    spec = write(tmp_path, "priced", "resources: {price_per_hour: 1.5}\nlimits: {max_runtime: 2h}\n")
    rendered = gpujob("render", str(spec))
    assert rendered.exit_code == 0, rendered.output
    assert "cost:     $1.50/h (resources.price_per_hour); at most $3.00 (limits.max_runtime 2h)" in rendered.output
    unbounded = gpujob("render", str(write(tmp_path, "open", "resources: {price_per_hour: 1.5}\n")))
    assert "no limit bounds it (set limits.max_runtime or limits.max_cost)" in unbounded.output
    unpriced = gpujob("render", str(write(tmp_path, "free", "")))
    assert "cost:     unknown: no price" in unpriced.output and "$0.00" not in unpriced.output


def test_the_price_table_in_gpujob_home_prices_a_job_without_a_price_of_its_own(tmp_path):
    home = Path(os.environ["GPUJOB_HOME"])
    home.mkdir(parents=True, exist_ok=True)
    (home / "prices.yaml").write_text("local: {cpu: 0.25, gpu: 2.0}\n")
    spec = write(tmp_path, "table", "limits: {max_runtime: 4h}\n", code="print('hi')")
    rendered = gpujob("render", str(spec))
    assert "$0.25/h" in rendered.output and "prices.yaml: local.cpu" in rendered.output
    assert "at most $1.00 (limits.max_runtime 4h)" in rendered.output
    submitted = gpujob("submit", str(spec), "--follow")
    assert submitted.exit_code == 0, submitted.output
    job = Registry().get(job_id(submitted))
    assert job.price_usd_per_hour == 0.25 and "prices.yaml: local.cpu" in job.price_source
    (home / "prices.yaml").write_text("local: {cpu: free}\n")
    broken = gpujob("render", str(spec))
    assert broken.exit_code == 2 and "prices.yaml: local.cpu: expected a price in USD per hour" in broken.output


def test_a_budget_without_a_price_is_refused_before_anything_is_recorded(tmp_path):
    spec = write(tmp_path, "nobudget", "limits: {max_cost: 5}\n")
    refused = gpujob("submit", str(spec))
    assert refused.exit_code == 2, refused.output
    assert "limits.max_cost is set, but the job has no price" in refused.output
    assert "resources.price_per_hour" in refused.output and "Traceback" not in refused.output
    assert Registry().list() == []
    assert "PROBLEM:  limits.max_cost is set, but the job has no price" in gpujob("render", str(spec)).output


def test_a_budget_on_a_rented_host_needs_no_price_before_submit_and_render_says_where_it_comes_from(tmp_path):
    """The host backend learns its price from the provider when it chooses the host (its capabilities say
    provider_priced): a budget is no PROBLEM before then, and the cost line says where the price will come from."""
    spec = write(tmp_path, "onhost", "resources: {gpus: 1, gpu_type: A10}\nruntime: {backend: host, host_type: gpu_1x_a10}\n"
                 "limits: {max_cost: 5}\n")
    rendered = gpujob("render", str(spec))
    assert rendered.exit_code == 0, rendered.output
    assert "cost:     the host's price per hour, from its provider once the host is chosen" in rendered.output
    assert "PROBLEM" not in rendered.output


def test_submit_asks_before_a_job_that_can_cost_more_than_the_threshold(tmp_path):
    spec = write(tmp_path, "dear", "resources: {price_per_hour: 10}\nlimits: {max_runtime: 3h}\n", code="print('hi')")
    env = {"GPUJOB_CONFIRM_ABOVE": "20"}
    refused = gpujob("submit", str(spec), env=env)  # no terminal to ask on
    assert refused.exit_code == 2 and "can cost up to $30.00, above GPUJOB_CONFIRM_ABOVE=$20" in refused.output
    assert "--yes" in refused.output and Registry().list() == []
    cheap = write(tmp_path, "cheap", "resources: {price_per_hour: 10}\nlimits: {max_runtime: 1h}\n", code="print('hi')")
    assert gpujob("submit", str(cheap), env=env).exit_code == 0
    unbounded = write(tmp_path, "open", "resources: {price_per_hour: 10}\n", code="print('hi')")
    assert "has no upper bound" in gpujob("submit", str(unbounded), env=env).output
    accepted = gpujob("submit", str(spec), "--yes", env=env)
    assert accepted.exit_code == 0 and "submitted job" in accepted.output


def test_a_running_job_shows_its_cost_so_far_and_at_the_eta_in_list_status_and_the_bar(tmp_path):
    from gpujob.cli.display import LogPrinter

    spec = write(tmp_path, "running", "resources: {price_per_hour: 36}\nlimits: {max_runtime: 1h}\n")
    jid = job_id(gpujob("submit", str(spec)))
    wait_for(lambda: (Registry().get(jid).progress.get("eta_s") or 0) > 0, timeout=30)
    status = gpujob("status", jid).output
    found = re.search(r"cost +\$(\d+\.\d\d) so far at \$36\.00/h \(resources\.price_per_hour\); ~\$(\d+\.\d\d) at the ETA",
                      status)
    assert found, status
    so_far, at_eta = map(float, found.groups())
    assert 0 < so_far < at_eta <= 36 * 1.1 * (2000 * 0.1) / 3600 + 0.5  # ~200 s of running at $0.01/s
    listed = gpujob("list").output
    assert re.search(r"\$\d+\.\d\d \(~\$\d+\.\d\d\)", listed), listed
    job = Registry().get(jid)
    printer = LogPrinter(live=False, job=job)
    printer.line(f'@gpujob/v1 {{"event":"progress","step":10,"total_steps":20,"t":{time.time() - 10}}}')
    printer.line(f'@gpujob/v1 {{"event":"progress","step":20,"total_steps":40,"t":{time.time()}}}')
    words = printer._cost_words(printer.state)
    assert re.fullmatch(r"  \$\d+\.\d\d → ~\$\d+\.\d\d", words), words
    gpujob("cancel", jid, "--grace", "2")


def test_render_and_submit_project_the_cost_from_an_earlier_run_of_the_same_setup(tmp_path):
    from gpujob.spec import load_spec

    spec = tmp_path / "train.yaml"
    spec.write_text("apiVersion: gpujob/v1\nkind: train\nname: tr\n"
                    "model: {checkpoint: openai/whisper-small, language: el}\n"
                    "data:\n  train: [{dataset: google/fleurs, config: el_gr}]\n"
                    "  eval: [{dataset: google/fleurs, config: el_gr, split: test}]\n"
                    "training: {max_steps: 3600, save_steps: 1000, eval_steps: 1000}\n"
                    "resources: {gpus: 1, gpu_type: A10, price_per_hour: 2.0}\n"
                    f"output: {{dir: {tmp_path / 'out'}}}\n")
    assert "~$" not in gpujob("render", str(spec)).output  # nothing to go by yet
    registry = Registry()
    earlier = registry.create(name="tr", kind="train", backend="local", spec=load_spec(spec).data, spec_path=None,
                              output_dir=str(tmp_path / "old"))
    registry.update(earlier.id, progress={"step": 900, "total_steps": 3600, "steps_per_s": 0.5})
    registry.transition(earlier.id, "failed", reason="cancelled halfway")
    rendered = gpujob("render", str(spec)).output
    # 3600 steps at 0.5 steps/s: 2 h at $2/h
    assert f"~$4.00 for 2h00m of running, at the speed of job {earlier.id} (0.5 steps/s" in rendered, rendered
    tight = gpujob("render", str(spec), "--set", "limits.max_cost=0.5").output
    assert "at most $0.50 (limits.max_cost)" in tight
    assert (f"limits.max_cost $0.5 buys 15m00s of running at $2/h, but at the speed of job {earlier.id} (0.5 steps/s) "
            "its first checkpoint (step 1000) comes after 33m20s: the budget would stop it before anything is saved"
            ) in tight.replace("\n", " ")


IGNORES_SIGTERM = """\
import signal, time
from gpujob.progress import ProgressWriter
signal.signal(signal.SIGTERM, signal.SIG_IGN)
p = ProgressWriter()
for step in range(1, 2000):
    p.progress(step=step, total_steps=2000)
    time.sleep(0.1)
"""


def test_a_job_that_ignores_sigterm_costs_no_more_than_its_budget(tmp_path):
    """issue 29 (8): at its budget a job that ignored SIGTERM ran the 10 s grace period on ($13.60 on a $3
    budget at $3,600/h). The budget's SIGTERM now comes early by the grace, so SIGKILL lands at the budget."""
    spec = write(tmp_path, "deaf", "resources: {price_per_hour: 3600}\nlimits: {max_cost: 3}\n", code=IGNORES_SIGTERM)
    jid = job_id(gpujob("submit", str(spec)))
    job = wait_for(lambda: (j := Registry().get(jid)) and not j.active and j, timeout=30)
    assert job.status == "failed" and job.exit_code in (-9, 137), (job.exit_code, job.reason)
    assert "stopped at the budget of $3.00" in job.reason
    assert job.cost <= 3.6, job.cost  # the budget, and the supervisor's half-second check
    print(f"cost of a job ignoring SIGTERM on a $3 budget at $3,600/h: ${job.cost:.2f}")
