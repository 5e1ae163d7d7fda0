"""What every backend does the same, as a user of the `gpujob` command checks it: one set of scenarios, run
on each backend by its harness (conftest.py's ``backend``). A new backend gets a harness in harnesses.py and
must pass these; its own test file keeps only what is specific to it."""

from __future__ import annotations

import hashlib
import json
import sqlite3
import subprocess
import time
from pathlib import Path

import pytest

from gpujob.backends import capabilities, get_backend
from gpujob.records import TERMINAL
from gpujob_cli import GPUJOB

SECRET = "tok_cOnFoRm-not-a-real-token-0123456789"
GRACE_S = 10


def py(code: str) -> list[str]:
    return ["python", "-c", code]


def demo(*args: str) -> list[str]:
    return ["python", "-m", "gpujob.demo", *args]


def test_a_job_runs_to_success_with_its_progress_in_status(backend):
    job_id = backend.submit(backend.spec("hello", demo("--steps", "20", "--step-time", "0.02",
                                                       "--eval-every", "10")))
    followed = backend.gpujob("logs", "-f", job_id, timeout=180)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "succeeded" in followed.stderr
    st = backend.status(job_id)
    assert st["status"] == "succeeded" and st["exit_code"] == 0 and st["backend"] == backend.backend
    assert st["step"] == 20 and st["total_steps"] == 20
    assert 0 <= st["metrics"]["wer"] <= 1
    assert job_id not in backend.gpujob("list", "--active").stdout


def test_logs_follow_delivers_every_line_once_in_order(backend):
    n = 300
    code = f"import time\nfor i in range({n}):\n    print(f'line {{i:04d}}', flush=True)\n    time.sleep(0.01)"
    job_id = backend.submit(backend.spec("numbers", py(code)))
    followed = backend.gpujob("logs", "-f", "--raw", job_id, timeout=180)
    assert followed.returncode == 0, followed.stderr
    assert followed.stdout.splitlines() == [f"line {i:04d}" for i in range(n)]
    # and once it ended, the saved log is the same
    assert backend.gpujob("logs", "--raw", job_id).stdout.splitlines() == [f"line {i:04d}" for i in range(n)]


HANDLER = ("import signal, sys, time\n"
           "def stop(signum, frame):\n"
           "    print('SIGTERM received: saving a checkpoint', flush=True)\n"
           "    time.sleep(1)\n"
           "    print('checkpoint saved, exiting', flush=True)\n"
           "    sys.exit(0)\n"
           "signal.signal(signal.SIGTERM, stop)\n"
           "print('ready', flush=True)\n"
           "while True: time.sleep(0.1)\n")


def cancel_while_followed(backend) -> tuple[str, str, float]:
    """Submit the job with the SIGTERM handler, follow its log, cancel it once the handler is installed:
    (the job's id, what the follower saw after "ready", how long cancel took)."""
    job_id = backend.submit(backend.spec("to-cancel", py(HANDLER)))
    follower = subprocess.Popen([*GPUJOB, "logs", "-f", "--raw", job_id], env=backend.env, cwd=backend.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert follower.stdout.readline().strip() == "ready"  # the handler is installed
    started = time.monotonic()
    r = backend.gpujob("cancel", job_id, "--grace", str(GRACE_S))
    took = time.monotonic() - started
    assert r.returncode == 0, r.stdout + r.stderr
    rest, _ = follower.communicate(timeout=60)
    return job_id, rest, took


def test_cancel_lets_the_jobs_sigterm_handler_finish_within_the_grace(backend, request):
    if backend.backend == "host":  # seen once in 3 runs: the container still listed when cancel had returned
        request.applymarker(pytest.mark.xfail(strict=False, reason="host: cancel sometimes returns before the "
                                              "job's container is removed"))
    job_id, followed, took = cancel_while_followed(backend)
    assert took < GRACE_S + 10, f"cancel took {took:.1f} s"
    # the handler ran to its end: both its lines, in order, reached whoever followed the log
    assert "SIGTERM received: saving a checkpoint\ncheckpoint saved, exiting\n" in followed, followed
    assert backend.status(job_id)["status"] == "cancelled"
    assert backend.leftovers(job_id) == []
    assert job_id not in backend.gpujob("list", "--active").stdout


def test_the_saved_log_of_a_cancelled_job_keeps_what_its_handler_printed(backend, request):
    if backend.backend == "kubernetes":  # cancel saves the log before it deletes the pods (backend.py: cancel)
        request.applymarker(pytest.mark.xfail(strict=True, reason="kubernetes saves a cancelled job's log "
                                              "before SIGTERM: the handler's lines are lost from it, and the "
                                              "follower gets the lines before them again at the end"))
    if backend.backend in ("docker", "host"):  # seen once each in 3 runs: "SIGTERM received" twice
        request.applymarker(pytest.mark.xfail(strict=False, reason=f"{backend.backend}: a cancelled job's log "
                                              "(saved on host, followed on docker) sometimes repeats a line the "
                                              "handler printed"))
    job_id, followed, _ = cancel_while_followed(backend)
    # the follower, too, got each line once: after "ready", the handler's two lines and nothing again
    assert followed.splitlines() == ["SIGTERM received: saving a checkpoint", "checkpoint saved, exiting"], followed
    log = backend.gpujob("logs", "--raw", job_id).stdout
    assert log.splitlines() == ["ready", "SIGTERM received: saving a checkpoint", "checkpoint saved, exiting"], log


def test_max_runtime_stops_the_job_and_the_reason_says_so(backend):
    job_id = backend.submit(backend.spec("too-long", py("import time; print('working', flush=True); "
                                                        "time.sleep(120)"), limits={"max_runtime": "3s"}))
    st = backend.wait_status(job_id, lambda s: s["status"] in TERMINAL, timeout=90)
    assert st["status"] == "failed"
    assert "limits.max_runtime (3s)" in st["reason"], st["reason"]
    assert backend.leftovers(job_id) == []
    assert job_id not in backend.gpujob("list", "--active").stdout


def test_a_failing_job_reports_its_exit_code_and_error_line(backend):
    code = ("import sys, time; print('loading data', flush=True); time.sleep(1); "
            "print('ValueError: column sentence not found', file=sys.stderr, flush=True); sys.exit(3)")
    job_id = backend.submit(backend.spec("fails", py(code)))
    st = backend.wait_status(job_id, lambda s: s["status"] in TERMINAL, timeout=120)
    assert st["status"] == "failed" and st["exit_code"] == 3
    assert "exited with code 3" in st["reason"], st["reason"]
    assert "ValueError: column sentence not found" in st["reason"], st["reason"]
    assert "ValueError: column sentence not found" in backend.gpujob("status", job_id).stdout
    assert backend.leftovers(job_id) == []


def test_a_secret_reaches_the_job_but_no_log_registry_stored_spec_or_manifest(backend):
    runtime, env = backend.give_secret("HF_TOKEN", SECRET)
    code = ("import hashlib, os, time; t = os.environ['HF_TOKEN']; "
            "print('token sha256', hashlib.sha256(t.encode()).hexdigest(), flush=True); time.sleep(2)")
    spec = backend.spec("secret", py(code), runtime=runtime)
    job_id = backend.submit(spec, env=env)
    seen_by_engine = backend.engine_view(job_id)   # while it runs: container, Job and pod objects
    followed = backend.gpujob("logs", "-f", "--raw", job_id, timeout=180)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert f"token sha256 {hashlib.sha256(SECRET.encode()).hexdigest()}" in followed.stdout  # it got there
    assert SECRET not in followed.stdout + followed.stderr
    assert SECRET not in seen_by_engine
    for path in backend.home.rglob("*"):                # registry, stored spec, launch files, saved log
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
            if path.name in ("spec.json", "launch.json", "handle.json"):  # what says how the job runs: 0600
                assert path.stat().st_mode & 0o077 == 0, path
    with sqlite3.connect(backend.home / "registry.db") as db:
        assert SECRET not in json.dumps(db.execute("select * from jobs").fetchall())
    rendered = backend.gpujob("render", str(spec), env=env)
    assert rendered.returncode == 0, rendered.stderr
    assert SECRET not in rendered.stdout and "HF_TOKEN" in rendered.stdout


def test_a_secret_the_job_prints_is_masked_in_its_log(backend):
    """Where gpujob knows the value (it read it from the submitter's environment), the job's own printing
    of it is masked in the log gpujob shows and keeps (local: by its supervisor; docker and host: in the
    container, before the engine's log holds it); a kubernetes Secret never passes through gpujob."""
    if not capabilities(backend.backend).secrets_from_environment:
        pytest.skip("the backend never sees the secret's value (the cluster hands it to the pod)")
    runtime, env = backend.give_secret("HF_TOKEN", SECRET)
    job_id = backend.submit(backend.spec("prints-secret", py("import os; print('the token is', "
                                                             "os.environ['HF_TOKEN'], flush=True)"),
                                         runtime=runtime), env=env)
    followed = backend.gpujob("logs", "-f", "--raw", job_id, timeout=180)
    assert followed.returncode == 0, followed.stdout + followed.stderr
    assert "the token is ***" in followed.stdout and SECRET not in followed.stdout
    for path in backend.home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_outputs_land_where_the_backend_says(backend):
    code = ("import os, pathlib; out = pathlib.Path(os.environ['GPUJOB_OUTPUT_DIR']); "
            "out.mkdir(parents=True, exist_ok=True); (out / 'result.txt').write_text('42\\n')")
    spec_path = backend.spec("outputs", py(code), output={"dir": "outputs/conformance"})
    job_id = backend.submit(spec_path)
    assert backend.gpujob("logs", "-f", job_id, timeout=180).returncode == 0
    st = backend.status(job_id)
    assert st["status"] == "succeeded"
    from gpujob.spec import load_spec

    elsewhere = get_backend(backend.backend, render_only=True).output_dir(load_spec(spec_path).spec)
    if elsewhere is None:   # the capability: outputs come back to output.dir on this machine
        assert (Path(st["output_dir"]) / "result.txt").read_text() == "42\n"
    else:                   # they stay where the backend keeps them, and status says where
        assert st["output_dir"] == elsewhere
