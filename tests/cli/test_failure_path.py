"""A failure path that leaves nothing behind: a refused submit records nothing, rm/prune forget
ended jobs and never an active one, cancel of an ended job is an answer, and commands that only
read make no $GPUJOB_HOME."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(ROOT / "jobs" / "hello.yaml")
runner = CliRunner()


def gpujob(*args: str):
    return runner.invoke(app, list(args))


def listed() -> list:
    result = gpujob("list", "--all", "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def ended_job(name: str = "old", status: str = "succeeded", output_dir: str | None = None, age_s: float = 0):
    registry = Registry()
    try:
        job = registry.create(name=name, kind="command", backend="local", spec={}, spec_path=None,
                              output_dir=output_dir)
        registry.transition(job.id, "running")
        registry.transition(job.id, status, reason="test")
        if age_s:
            registry._conn.execute("UPDATE jobs SET finished_at = finished_at - ? WHERE id = ?", (age_s, job.id))
        job.job_dir.mkdir(parents=True, exist_ok=True)
        (job.job_dir / "job.log").write_text("done\n")
        return registry.get(job.id)
    finally:
        registry.close()


def running_job(name: str = "busy", output_dir: str | None = None):
    """A job the registry holds as running, whose supervisor is this test (its pid alive): the local
    backend's refresh sees a live process and leaves it running."""
    import os

    registry = Registry()
    try:
        job = registry.create(name=name, kind="command", backend="local", spec={}, spec_path=None,
                              output_dir=output_dir)
        registry.transition(job.id, "running")
        registry.update(job.id, handle={"pid": os.getpid(), "pgid": os.getpgid(0), "supervisor_pid": os.getpid()})
        return registry.get(job.id)
    finally:
        registry.close()


# ----------------------------------------------------------------------------- refused submits

REFUSALS = {
    "no docker engine": (["-b", "docker"], {"DOCKER_HOST": "unix:///nonexistent/docker.sock"}),
    "no such host": (["-b", "host", "--set", "runtime.host=nope"], {}),
    "no cluster": (["-b", "kubernetes"], {"KUBECONFIG": "/nonexistent/kubeconfig"}),
    "unknown backend": (["-b", "lamdba"], {}),
    "secret not set": (["--set", "runtime.secrets=[NOT_SET_TOKEN]"], {}),
    "more GPUs than here": (["--set", "resources.gpus=8"], {}),
    "overflowing price": (["--set", "resources.price_per_hour=1e400"], {}),
    "overflowing budget": (["--set", "limits.max_cost=1e400"], {}),
}


@pytest.mark.parametrize("kind", list(REFUSALS))
def test_a_refused_submit_leaves_the_job_list_unchanged(kind, monkeypatch):
    ended_job()
    before = listed()
    args, env = REFUSALS[kind]
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    result = gpujob("submit", HELLO, *args)
    assert result.exit_code == 2, result.output
    assert "error" in result.output or "--set" in result.output  # the reason, named
    assert "Traceback" not in result.output
    assert listed() == before


def test_a_missing_extra_is_refused_and_recorded_nowhere(monkeypatch):
    """The kubernetes client not installed (gpujob without its [kubernetes] extra)."""
    ended_job()
    before = listed()
    monkeypatch.setitem(sys.modules, "kubernetes", None)  # `import kubernetes` raises ImportError
    result = gpujob("submit", HELLO, "-b", "kubernetes")
    assert result.exit_code == 2, result.output
    assert "kubernetes" in result.output and "Traceback" not in result.output
    assert listed() == before


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(price=st.one_of(st.floats(min_value=100_001, max_value=1e300), st.just(float("inf")),
                       st.floats(max_value=-0.001, min_value=-1e300)),
       backend=st.sampled_from(["local", "docker", "host"]))
def test_any_refused_price_on_any_backend_records_nothing(price, backend):
    before = listed()
    result = gpujob("submit", HELLO, "-b", backend, "--set", f"resources.price_per_hour={price!r}")
    assert result.exit_code == 2, result.output
    assert "resources.price_per_hour" in result.output
    assert listed() == before


def test_a_backend_that_fails_to_start_the_job_leaves_no_record_nor_folder(monkeypatch, gpujob_home):
    from gpujob.backends.local import LocalBackend
    from gpujob.errors import UserError

    def refuse(self, request, secrets):
        request.job_dir.mkdir(parents=True, exist_ok=True)  # it got as far as making the folder
        raise UserError("the engine said no")

    monkeypatch.setattr(LocalBackend, "submit", refuse)
    result = gpujob("submit", HELLO)
    assert result.exit_code == 2 and "the engine said no" in result.output
    assert listed() == []
    assert not list((gpujob_home / "jobs").glob("*"))


# ----------------------------------------------------------------------------- rm and prune


def test_rm_forgets_ended_jobs_and_keeps_their_outputs(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "model.bin").write_text("weights")
    job = ended_job(output_dir=str(out))
    result = gpujob("rm", job.id)
    assert result.exit_code == 0 and f"removed {job.id}" in result.output
    assert listed() == [] and not job.job_dir.exists()
    assert (out / "model.bin").read_text() == "weights"


def test_rm_outputs_removes_a_local_output_folder_no_other_job_names(tmp_path):
    shared, own = tmp_path / "shared", tmp_path / "own"
    shared.mkdir(), own.mkdir()
    a, b = ended_job("a", output_dir=str(own)), ended_job("b", output_dir=str(shared))
    ended_job("c", output_dir=str(shared))
    result = gpujob("rm", a.id, b.id, "--outputs", "--json")
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    assert sorted(done["removed"]) == sorted([a.id, b.id])
    assert not own.exists() and shared.exists()
    assert any("another job" in k for k in done["outputs_kept"])


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(statuses=st.lists(st.sampled_from(["succeeded", "failed", "cancelled", "running"]), min_size=1, max_size=5),
       command=st.sampled_from(["rm", "prune", "prune-failed", "prune-old"]))
def test_rm_and_prune_never_touch_a_running_job(statuses, command, gpujob_home, tmp_path_factory):
    import shutil

    shutil.rmtree(gpujob_home, ignore_errors=True)
    out = tmp_path_factory.mktemp("out")
    (out / "ckpt").write_text("step 10")
    jobs = [running_job(output_dir=str(out)) if s == "running"
            else ended_job(status=s, age_s=30 * 86400, output_dir=str(out)) for s in statuses]
    running = {j.id for j in jobs if j.status == "running"}
    args = {"rm": ["rm", *[j.id for j in jobs], "--outputs"], "prune": ["prune", "--outputs"],
            "prune-failed": ["prune", "--status", "failed"], "prune-old": ["prune", "--older-than", "7d"]}[command]
    result = gpujob(*args)
    after = {j["id"]: j["status"] for j in listed()}
    assert running <= set(after) and all(after[i] == "running" for i in running)
    if running or "--outputs" not in args:  # a running job's outputs are never removed
        assert (out / "ckpt").read_text() == "step 10"
    if command == "rm" and running:  # refused as a whole, naming the job, nothing removed
        assert result.exit_code == 2 and "cancel it first" in result.output
        assert len(after) == len(jobs)
    else:
        assert result.exit_code == 0, result.output


def test_prune_by_age_and_status():
    old_failed = ended_job("of", status="failed", age_s=10 * 86400)
    new_failed = ended_job("nf", status="failed")
    old_ok = ended_job("ok", status="succeeded", age_s=10 * 86400)
    dry = gpujob("prune", "--older-than", "7d", "--status", "failed", "--dry-run")
    assert dry.exit_code == 0 and old_failed.id in dry.output and len(listed()) == 3
    result = gpujob("prune", "--older-than", "7d", "--status", "failed", "--json")
    assert json.loads(result.stdout)["removed"] == [old_failed.id]
    assert {j["id"] for j in listed()} == {new_failed.id, old_ok.id}


@pytest.mark.parametrize("args, words", [(["--older-than", "soon"], "--older-than"),
                                         (["--status", "running"], "ended jobs only")])
def test_prune_bad_flags_are_user_errors(args, words):
    result = gpujob("prune", *args)
    assert result.exit_code == 2 and words in result.output and "Traceback" not in result.output


# ----------------------------------------------------------------------------- cancel, read-only commands


def test_cancel_of_an_ended_job_exits_0_saying_so():
    job = ended_job(status="cancelled")
    result = gpujob("cancel", job.id)
    assert result.exit_code == 0 and "already cancelled; nothing to cancel" in result.output
    as_json = json.loads(gpujob("cancel", job.id, "--json").stdout)
    assert as_json == {"id": job.id, "name": "old", "status": "cancelled", "already_ended": True}


@pytest.mark.parametrize("args", [["list"], ["list", "--json"], ["list", "--active"], ["status"], ["status", "--json"],
                                  ["logs"], ["metrics"], ["host", "list"], ["config"], ["--help"], ["submit", "--help"],
                                  ["compare", "a", "b"], ["rm", "abc"], ["prune"], ["cancel", "abc"]])
def test_read_only_commands_create_no_gpujob_home(args, gpujob_home):
    result = gpujob(*args)
    assert "Traceback" not in result.output
    assert not gpujob_home.exists(), f"gpujob {' '.join(args)} made {gpujob_home}"


def test_list_active_with_none_says_so():
    ended_job()
    assert "no active jobs" in gpujob("list", "--active").output


# ----------------------------------------------------------------------------- offline: one line, at once


@pytest.mark.parametrize("endpoint", ["closed-port", "https://hub.nonexistent.invalid"])
def test_check_of_a_hub_dataset_offline_fails_within_10_s_in_one_line(endpoint, tmp_path):
    """The network denied (the Hub's address a closed local port, or a name that does not resolve):
    `gpujob check` of a Hub dataset says so at once; none of huggingface_hub's retry lines."""
    import contextlib
    import os
    import subprocess

    from ports import refusing_port

    with refusing_port() if endpoint == "closed-port" else contextlib.nullcontext() as port:
        url = f"http://127.0.0.1:{port}" if port else endpoint
        env = {k: v for k, v in os.environ.items() if not k.endswith("_OFFLINE") and "PROXY" not in k.upper()}
        env.update(HF_ENDPOINT=url, GPUJOB_HOME=str(tmp_path / "home"), HF_HOME=str(tmp_path / "hf"))
        started = time.monotonic()
        out = subprocess.run([sys.executable, "-m", "gpujob", "check", str(ROOT / "jobs" / "eval-el.yaml"),
                              "--sample", "2"], capture_output=True, text=True, env=env, timeout=60, cwd=tmp_path)
        took = time.monotonic() - started
    text = out.stdout + out.stderr
    assert out.returncode == 2, text
    assert took < 10, f"took {took:.1f}s"
    assert "the Hugging Face Hub cannot be reached from this machine" in text
    assert "Retrying" not in text and "Traceback" not in text
    assert sum("cannot be reached" in line for line in text.splitlines()) == 1


def test_provider_api_whose_name_does_not_resolve_fails_within_10_s():
    from gpujob.hosts.lambda_api import LambdaError
    from gpujob.hosts.lambda_api.transport import Transport

    transport = Transport(api_key="k", base_url="https://api.nonexistent.invalid/api/v1")
    started = time.monotonic()
    with pytest.raises(LambdaError) as caught:
        transport.request("GET", "/instance-types", what="list instance types")
    assert time.monotonic() - started < 10
    assert "cannot resolve the host name" in caught.value.message and "tried 2 times" in caught.value.message


def test_status_shows_one_complete_failure_reason(tmp_path):
    """A job that prints its error and reports the same words in its failed end event (as the runner
    does): status says them once, whole; before, twice, each cut mid-word ("HF_HUB_O")."""
    words = ("we could not reach the Hub for google/fleurs and it is not in the cache; "
             + "you are offline; " * 25 + "set HF_HUB_OFFLINE=1 to use the cache only")
    script = tmp_path / "fail.py"
    script.write_text(
        "import json, sys\n"
        f"words = {words!r}\n"
        "print('DataError: ' + words, file=sys.stderr)\n"
        "print('@gpujob/v1 ' + json.dumps({'event': 'end', 'status': 'failed', 'message': words[:479] + '…'}))\n"
        "sys.exit(2)\n")
    spec = tmp_path / "fail.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: fail\ncommand: [python, {script}]\n"
                    f"output: {{dir: {tmp_path / 'out'}}}\n")
    assert gpujob("submit", str(spec), "--follow").exit_code == 1
    shown = gpujob("status").output
    reason = next(line for line in shown.splitlines() if line.startswith("reason"))
    assert reason.count("could not reach the Hub") == 1
    assert reason.endswith("set HF_HUB_OFFLINE=1 to use the cache only")


def test_host_types_offline_says_so_in_one_line_within_10_s(tmp_path):
    import os
    import subprocess

    env = {**os.environ, "GPUJOB_HOME": str(tmp_path / "home"), "LAMBDA_API_KEY": "k-test-offline",
           "GPUJOB_LAMBDA_API_URL": "https://api.nonexistent.invalid/api/v1"}
    started = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "gpujob", "host", "types"], capture_output=True, text=True,
                         env=env, timeout=60)
    assert time.monotonic() - started < 10
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 1 and len(lines) == 2, out.stderr  # the error and its hint; no retry lines
    assert lines[0].startswith("error: could not reach the Lambda Cloud API") and "cannot resolve" in lines[0]
