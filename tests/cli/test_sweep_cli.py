"""gpujob sweep, list --sweep and compare, through the CLI, on the local backend (real job processes)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry
from polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(ROOT / "jobs" / "hello.yaml")
# hello, quicker: 20 steps of 10 ms, an eval every 10; --grid command.4 sets the number of steps
QUICK = 'command=[python, -m, gpujob.demo, --steps, "20", --step-time, "0.01", --eval-every, "10"]'
runner = CliRunner()


@pytest.fixture(autouse=True)
def in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # hello's output.dir (outputs/hello) is relative
    monkeypatch.delenv("GPUJOB_CONFIRM_ABOVE", raising=False)


def gpujob(*args: str):
    return runner.invoke(app, list(args))


def sweep(*args: str) -> str:
    result = gpujob("sweep", HELLO, "--set", QUICK, *args)
    assert result.exit_code == 0, result.output
    return re.search(r"^sweep (s[a-z0-9]{5}):", result.output, re.M).group(1)


def ended(sweep_id: str) -> list:
    def all_ended():
        listed = gpujob("list", "--sweep", sweep_id, "--json")
        jobs = json.loads(listed.output)
        return jobs if all(j["status"] in ("succeeded", "failed", "cancelled") for j in jobs) else None
    return wait_for(all_ended, timeout=60, every=0.2, what=f"the jobs of sweep {sweep_id} to end")


def test_a_two_job_sweep_of_hello_ends_and_compare_shows_the_differing_key_and_the_results():
    sweep_id = sweep("--grid", 'command.4="20","40"')
    jobs = ended(sweep_id)
    assert sorted(j["name"] for j in jobs) == ["hello-1", "hello-2"]
    assert all(j["status"] == "succeeded" and j["sweep_id"] == sweep_id for j in jobs)
    assert sorted(Path(j["output_dir"]).name for j in jobs) == [f"{sweep_id}-1", f"{sweep_id}-2"]

    result = gpujob("compare", "--sweep", sweep_id)
    assert result.exit_code == 0, result.output
    header, *rows = result.output.splitlines()[:3]
    columns = re.split(r"\s{2,}", header)
    assert columns == ["JOB", "NAME", "command.4", "STATUS", "BEST WER", "FINAL WER", "STEPS", "RUNTIME", "COST"]
    registry = Registry()
    best_seen = []
    for row in rows:
        cells = dict(zip(columns, re.split(r"\s{2,}", row)))
        history = registry.history(cells["JOB"])
        evals = [p for p in history if p["event"] == "eval"]
        best = min(evals, key=lambda p: (p["wer"], p["step"]))
        assert cells["command.4"] == cells["STEPS"] == str(max(p["step"] for p in history))  # 20 and 40
        assert cells["BEST WER"] == f"{best['wer'] * 100:.2f}% @{best['step']}"
        assert cells["FINAL WER"] == f"{evals[-1]['wer'] * 100:.2f}%"
        assert cells["COST"] == "unknown"  # no price: never $0
        best_seen.append(best["wer"])
    assert best_seen == sorted(best_seen)  # best WER first
    assert {r.split()[2] for r in rows} == {"20", "40"}

    as_json = json.loads(gpujob("compare", "--sweep", sweep_id, "--json").output)
    assert list(as_json["differences"]) == ["command.4"]  # not name, not output.dir: the sweep's suffixes
    assert sorted(as_json["differences"]["command.4"].values()) == ["20", "40"]


def test_one_invalid_combination_submits_nothing():
    result = gpujob("sweep", HELLO, "--set", QUICK, "--grid", 'command.4="20","40"',
                    "--grid", "limits.max_runtime=5m,soon")
    assert result.exit_code == 2, result.output
    assert "2 of 4 combinations are invalid; nothing was submitted" in result.output
    assert 'combination 2 (command.4="20", limits.max_runtime=soon)' in result.output
    assert 'combination 4 (command.4="40", limits.max_runtime=soon)' in result.output
    assert "--grid: limits.max_runtime: 'soon' is not a duration" in result.output
    assert Registry().list() == []
    assert not Path("outputs").exists()


@pytest.mark.parametrize("grid, words", [
    ("training.lerning_rate=1e-5,3e-5", '--grid: training.lerning_rate: unknown key "lerning_rate"'),
    ("priority", "--grid 'priority': write key.path=value1,value2"),
    ("priority=1,,2", "value 2 of priority is empty"),
    ("name=a,b", "a sweep sets name of each job itself"),
])
def test_a_bad_grid_exits_2_naming_it(grid, words):
    result = gpujob("sweep", HELLO, "--grid", grid)
    assert result.exit_code == 2, result.output
    assert words in result.output and "Traceback" not in result.output
    assert Registry().list() == []


def test_the_confirmation_threshold_applies_to_the_whole_sweep(monkeypatch):
    # each job can cost $10/h * 10 min = $1.67, under $2; the two together $3.33, over it
    monkeypatch.setenv("GPUJOB_CONFIRM_ABOVE", "2")
    args = ("sweep", HELLO, "--set", QUICK, "--set", "resources.price_per_hour=10", "--grid", "priority=1,2")
    result = gpujob(*args)
    assert result.exit_code == 2, result.output
    assert "this sweep's 2 jobs can cost up to $3.33" in result.output
    assert "at most $3.33 for the 2 priced jobs" in result.output
    assert Registry().list() == []


def test_max_parallel_1_submits_each_job_when_the_one_before_has_ended():
    sweep_id = sweep("--grid", "priority=1,2,3", "--max-parallel", "1")
    jobs = sorted(Registry().list(sweep=sweep_id), key=lambda j: j.created_at)
    assert [j.name for j in jobs] == ["hello-1", "hello-2", "hello-3"]
    for before, after in zip(jobs, jobs[1:]):
        assert before.finished_at is not None and before.finished_at <= after.created_at


def test_list_sweep_shows_the_sweeps_jobs_only():
    other = gpujob("submit", HELLO, "--set", QUICK, "--set", "output.dir=outputs/other")
    assert other.exit_code == 0, other.output
    sweep_id = sweep("--grid", "priority=1,2")
    listed = json.loads(gpujob("list", "--sweep", sweep_id, "--json").output)
    assert sorted(j["name"] for j in listed) == ["hello-1", "hello-2"]
    assert len(json.loads(gpujob("list", "--json").output)) == 3
    missing = gpujob("list", "--sweep", "snope1")
    assert missing.exit_code == 2 and "there is no sweep 'snope1'" in missing.output


def utterance(uid: str, ref: str, hyp: str, wer: float) -> str:
    return json.dumps({"id": uid, "reference": ref, "prediction": hyp, "reference_normalized": ref,
                       "prediction_normalized": hyp, "wer": wer}) + "\n"


def test_compare_utterances_shows_the_most_different_transcripts_of_two_runs():
    sweep_id = sweep("--grid", "priority=1,2")
    a, b = sorted(ended(sweep_id), key=lambda j: j["name"])
    missing = gpujob("compare", a["id"], b["id"], "--utterances")
    assert missing.exit_code == 2
    assert f"{a['output_dir']}/predictions.jsonl does not exist" in missing.output
    ref = "καλημέρα σας κύριε"
    Path(a["output_dir"], "predictions.jsonl").write_text(
        utterance("cv-1", ref, "καλημέρα σας κύριε", 0.0) + utterance("cv-2", ref, "καλημέρα σας", 1 / 3)
        + utterance("cv-3", ref, "καλή μέρα", 1.0), encoding="utf-8")
    Path(b["output_dir"], "predictions.jsonl").write_text(
        utterance("cv-1", ref, "καλημέρα σας κύριε", 0.0) + utterance("cv-2", ref, "καλημέρα σας κύριε", 0.0)
        + utterance("cv-3", ref, "καλημέρα σας κύριε", 0.0), encoding="utf-8")
    result = gpujob("compare", a["id"], b["id"], "--utterances", "-n", "1")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert "3 utterances in both, 2 transcribed differently (A better on 0, B better on 2)" in lines[0]
    assert lines[1].startswith("cv-3  WER A 100.00%  B 0.00%")
    assert lines[2:5] == [f"  ref: {ref}", "  A:   καλή μέρα", f"  B:   {ref}"]
    assert "cv-2" not in result.output  # -n 1


def test_resume_submits_only_the_combinations_not_in_the_sweep_yet():
    sweep_id = sweep("--grid", "priority=1,2")
    ended(sweep_id)
    resumed = gpujob("sweep", HELLO, "--set", QUICK, "--grid", "priority=1,2,3", "--resume", sweep_id)
    assert resumed.exit_code == 0, resumed.output
    assert resumed.output.count("submitted job ") == 1 and "(hello-3) [priority=3]" in resumed.output
    jobs = ended(sweep_id)
    assert sorted((j["name"], j["sweep_id"]) for j in jobs) == [(f"hello-{n}", sweep_id) for n in (1, 2, 3)]
    other = gpujob("sweep", HELLO, "--set", QUICK, "--grid", "priority=2,1,3", "--resume", sweep_id)
    assert other.exit_code == 2 and "is not what job" in other.output and "priority: 1 then, 2 now" in other.output
    assert len(Registry().list(sweep=sweep_id)) == 3
