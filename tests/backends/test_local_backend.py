"""The local backend, end to end through the CLI: what the conformance suite (tests/backends/conformance,
which covers max_runtime and secrets here) does not check on local: the human views of success and
failure, the process group and supervisor, a vanished process, the output dir in use, hung jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry
import polling
from polling import pid_alive

runner = CliRunner()


def write_spec(tmp_path: Path, command: list[str], name: str = "demo", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(
        "apiVersion: gpujob/v1\n"
        "kind: command\n"
        f"name: {name}\n"
        f"command: {json.dumps(command)}\n"
        f"output:\n  dir: {tmp_path / 'out' / name}\n"
        + extra
    )
    return path


def demo(*args: str) -> list[str]:
    return ["python", "-m", "gpujob.demo", "--step-time", "0.01", *args]


def gpujob(*args: str):
    return runner.invoke(app, list(args))


def only_job() -> "object":
    jobs = Registry().list()
    assert len(jobs) == 1
    return jobs[0]


def wait_for(predicate, timeout: float = 20.0):
    return polling.wait_for(predicate, timeout=timeout)


def test_success_shows_progress_in_logs_status_and_list(tmp_path):
    spec = write_spec(tmp_path, demo("--steps", "30", "--eval-every", "10"))
    result = gpujob("submit", str(spec), "--follow")
    assert result.exit_code == 0, result.output
    assert "submitted job" in result.output
    assert "[eval] step 30" in result.output and "WER" in result.output
    assert "succeeded" in result.output
    job = only_job()
    assert job.status == "succeeded" and job.exit_code == 0

    status = gpujob("status", job.id)
    assert status.exit_code == 0
    assert "step 30/30 (100%)" in status.output
    assert "it/s" in status.output or "s/it" in status.output
    assert "WER" in status.output and str(tmp_path / "out" / "demo") in status.output

    listing = gpujob("list")
    row = next(line for line in listing.output.splitlines() if line.startswith(job.id))
    assert "succeeded" in row and "100%" in row and "%" in row.split("100%")[1]

    raw = gpujob("logs", job.id, "--raw")
    assert raw.output.count('@gpujob/v1 {"event":"progress"') == 30
    metrics = json.loads((tmp_path / "out" / "demo" / "metrics.json").read_text())
    assert abs(metrics["w"] - 3) < 0.5  # the demo really fitted its line


def test_failure_records_exit_code_and_last_error_line(tmp_path):
    spec = write_spec(tmp_path, demo("--steps", "50", "--fail-at", "3", "--exit-code", "7"))
    result = gpujob("submit", str(spec), "--follow")
    assert result.exit_code == 1
    job = only_job()
    assert job.status == "failed" and job.exit_code == 7
    assert "exited with code 7" in job.reason and "RuntimeError: demo failure" in job.reason
    status = gpujob("status", job.name)
    assert "reason" in status.output and "exited with code 7" in status.output


def test_command_not_found_fails_at_submit_with_plain_words(tmp_path):
    spec = write_spec(tmp_path, ["no-such-program-xyz", "--help"])
    result = gpujob("submit", str(spec))
    assert result.exit_code == 1
    assert "command not found: 'no-such-program-xyz'" in result.output


def test_cancel_sends_sigterm_first_so_the_job_can_checkpoint(tmp_path):
    spec = write_spec(tmp_path, ["python", "-m", "gpujob.demo", "--steps", "100000", "--step-time", "0.02"])
    assert gpujob("submit", str(spec)).exit_code == 0
    job = only_job()
    wait_for(lambda: (Registry().get(job.id).progress.get("step") or 0) >= 3)
    pid = Registry().get(job.id).handle["pid"]
    result = gpujob("cancel", job.id, "--grace", "10")
    assert result.exit_code == 0, result.output
    job = Registry().get(job.id)
    assert job.status == "cancelled" and job.reason == "cancelled by the user"
    assert not pid_alive(pid)
    log = gpujob("logs", job.id).output
    assert "SIGTERM received" in log and "[checkpoint]" in log
    again = gpujob("cancel", job.id)
    assert again.exit_code == 0 and "already cancelled" in again.output


def test_cancel_kills_a_job_that_ignores_sigterm_after_the_grace_period(tmp_path):
    spec = write_spec(tmp_path, ["sh", "-c", "trap '' TERM; echo started; while true; do sleep 0.1; done"])
    assert gpujob("submit", str(spec)).exit_code == 0
    job = wait_for(lambda: Registry().get(only_job().id) if "pid" in only_job().handle else None)
    t0 = time.monotonic()
    assert gpujob("cancel", job.id, "--grace", "1").exit_code == 0
    assert time.monotonic() - t0 < 8
    assert Registry().get(job.id).status == "cancelled"
    assert not pid_alive(job.handle["pid"])


def test_a_vanished_process_is_marked_failed_not_running_forever(tmp_path):
    spec = write_spec(tmp_path, ["sleep", "300"])
    assert gpujob("submit", str(spec)).exit_code == 0
    job = wait_for(lambda: only_job() if only_job().status == "running" else None)
    # What a reboot or `kill -9` does: the supervisor and the job die without a word.
    os.kill(job.handle["supervisor_pid"], signal.SIGKILL)
    os.killpg(job.handle["pgid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(job.handle["supervisor_pid"]))
    listing = gpujob("list")
    assert "failed" in listing.output
    job = Registry().get(job.id)
    assert job.status == "failed" and "vanished" in job.reason


def test_job_outlives_the_cli_process(tmp_path):
    spec = write_spec(tmp_path, demo("--steps", "40", "--step-time", "0.05"))
    gpujob_bin = Path(sys.executable).parent / "gpujob"
    cli = [str(gpujob_bin)] if gpujob_bin.exists() else [sys.executable, "-m", "gpujob"]
    out = subprocess.run([*cli, "submit", str(spec)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = out.stdout.split()[2]
    job = Registry().get(job_id)
    assert job.status == "running"  # the CLI has exited; the job has not
    follow = subprocess.run([*cli, "logs", job_id, "-f"], capture_output=True, text=True, timeout=60)
    assert follow.returncode == 0 and "succeeded" in follow.stderr
    assert Registry().get(job_id).status == "succeeded"


def test_a_missing_secret_is_a_user_error_before_anything_starts(tmp_path, monkeypatch):
    monkeypatch.delenv("MY_API_TOKEN", raising=False)
    spec = write_spec(tmp_path, ["echo", "ok"], extra="runtime:\n  secrets: [MY_API_TOKEN]\n")
    result = gpujob("submit", str(spec))
    assert result.exit_code == 2
    assert "MY_API_TOKEN is not set" in result.output and "export MY_API_TOKEN" in result.output
    assert Registry().list() == []


def test_processes_the_job_left_behind_are_killed_when_it_ends(tmp_path):
    marker = tmp_path / "orphan.pid"
    spec = write_spec(tmp_path, ["sh", "-c", f"sleep 300 & echo $! > {marker}; echo parent done"])
    assert gpujob("submit", str(spec), "--follow").exit_code == 0
    orphan = int(marker.read_text())
    wait_for(lambda: not pid_alive(orphan), timeout=10)


def test_logs_tail_and_follow_on_a_finished_job(tmp_path):
    spec = write_spec(tmp_path, ["sh", "-c", "for i in 1 2 3 4 5 6; do echo line-$i; done"])
    assert gpujob("submit", str(spec), "--follow").exit_code == 0
    job = only_job()
    tail = gpujob("logs", job.id, "--tail", "2")
    assert tail.output.splitlines() == ["line-5", "line-6"]
    follow = gpujob("logs", job.id, "-f")
    assert follow.exit_code == 0 and "line-1" in follow.output and "succeeded" in follow.output


def test_two_concurrent_submits_get_two_jobs(tmp_path):
    specs = [write_spec(tmp_path, ["echo", "ok"], name=f"job-{i}") for i in range(2)]
    procs = [subprocess.Popen([sys.executable, "-m", "gpujob", "submit", str(s)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for s in specs]
    outs = [p.communicate(timeout=60) for p in procs]
    assert all(p.returncode == 0 for p in procs), outs
    jobs = Registry().list()
    assert sorted(j.name for j in jobs) == ["job-0", "job-1"]
    wait_for(lambda: all(j.status == "succeeded" for j in Registry().list()))


def test_a_second_job_on_the_same_output_dir_is_refused_while_the_first_runs(tmp_path):
    spec = write_spec(tmp_path, ["sleep", "30"])
    assert gpujob("submit", str(spec)).exit_code == 0
    second = gpujob("submit", str(spec))
    assert second.exit_code == 2 and "is in use by running job" in second.output
    gpujob("cancel", only_job().id, "--grace", "1")


def test_a_job_that_stops_reporting_progress_is_stopped_as_hung(tmp_path):
    script = ("import time; from gpujob.progress import ProgressWriter; w = ProgressWriter(); "
              "w.progress(step=1, total_steps=10); time.sleep(120)")
    spec = write_spec(tmp_path, ["python", "-c", script], extra="limits:\n  idle_minutes: 0.03\n")
    gpujob("submit", str(spec))
    job = wait_for(lambda: Registry().get(only_job().id) if not only_job().active else None, timeout=40)
    assert job.status == "failed" and job.reason.startswith("hung: no progress for 2s after step 1")
    assert "gpujob: hung" in gpujob("logs", job.id).output


def test_system_samples_are_no_sign_of_progress_for_the_hung_check(tmp_path):
    """The runner's sampler thread writes system events whatever the training loop does: a job stuck after
    step 1 that still writes them every 0.2 s is stopped as hung all the same."""
    script = ("import time; from gpujob.progress import ProgressWriter; w = ProgressWriter(); "
              "w.progress(step=1, total_steps=10)\n"
              "for n in range(600): w.system(n=n, step=1, cpu_percent=1.0); time.sleep(0.2)")
    spec = write_spec(tmp_path, ["python", "-c", script], extra="limits:\n  idle_minutes: 0.03\n")
    gpujob("submit", str(spec))
    job = wait_for(lambda: Registry().get(only_job().id) if not only_job().active else None, timeout=40)
    assert job.status == "failed" and job.reason.startswith("hung: no progress for 2s after step 1")
    assert any(p["event"] == "system" for p in Registry().history(job.id))  # recorded all the same


def test_a_quiet_job_that_never_reports_progress_is_not_stopped(tmp_path):
    spec = write_spec(tmp_path, ["sh", "-c", "sleep 3; echo done"], extra="limits:\n  idle_minutes: 0.01\n")
    assert gpujob("submit", str(spec), "--follow").exit_code == 0
    assert only_job().status == "succeeded"


def test_heartbeats_keep_a_job_with_long_work_between_steps_alive(tmp_path):
    script = ("import time; from gpujob.progress import ProgressWriter; w = ProgressWriter(); "
              "w.progress(step=1, total_steps=2)\n"
              "for i in range(8): time.sleep(0.5); w.heartbeat(phase='eval', done=i, total=8)\n"
              "w.progress(step=2, total_steps=2)")
    spec = write_spec(tmp_path, ["python", "-c", script], extra="limits:\n  idle_minutes: 0.03\n")
    result = gpujob("submit", str(spec), "--follow")
    assert result.exit_code == 0, result.output
    assert "[heartbeat] eval 7/8" in gpujob("logs").output  # (-f without a terminal: one a minute)
