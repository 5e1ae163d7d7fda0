"""Notifications (notify: in the spec), end to end on the local backend: a real HTTP server on
loopback receives the POST, the command form gets the JSON on stdin, once per job, retried, with
no secret in it."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob import notify
from gpujob.backends.local import SECRET_PREFIX
from gpujob.cli.app import app
from gpujob.records import Job
from gpujob.registry import Registry
from polling import pid_alive, wait_for
from webhook import Hook

runner = CliRunner()
SECRET = "hf_s3cr3tValue_4notify_tests"


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def gpujob(*args: str):
    return runner.invoke(app, list(args))


def write_spec(tmp_path: Path, command: list[str], notify_yaml: str, extra: str = "", name: str = "demo") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text("apiVersion: gpujob/v1\nkind: command\n"
                    f"name: {name}\ncommand: {json.dumps(command)}\n"
                    f"output:\n  dir: {tmp_path / 'out' / name}\n"
                    f"notify:\n{notify_yaml}" + extra)
    return path


def submit(spec: Path, env: dict | None = None) -> Job:
    result = runner.invoke(app, ["submit", str(spec)], env=env)
    assert result.exit_code in (0, 1), result.output
    return Registry().list()[0]


def ended(job_id: str) -> Job:
    """The job once it has ended and its supervisor (which sends) has exited."""
    job = wait_for(lambda: (lambda j: j if not j.active else None)(Registry().get(job_id)), timeout=40, what="the end")
    wait_for(lambda: not pid_alive(job.handle["supervisor_pid"]), timeout=60, what="the supervisor to exit")
    return Registry().get(job_id)


def run_to_end(spec: Path) -> Job:
    """Submit ``spec``; the job once it has ended and its notification is delivered or given up."""
    job = ended(submit(spec).id)
    settled(job)
    return job


def settled(job: Job) -> str:
    """notify.log once the detached sender is done with every target (delivered, or given up)."""
    def done():
        log = job.job_dir / "notify.log"
        text = log.read_text() if log.exists() else ""
        return text if re.search(r"attempt \d+: (HTTP 2\d\d|exit 0)|gave up|not sent", text) else None
    return wait_for(done, timeout=60, what="the notification to be delivered or given up")


def demo(steps: int = 5) -> list[str]:
    return [sys.executable, "-m", "gpujob.demo", "--step-time", "0.01", "--steps", str(steps), "--eval-every", str(steps)]


def test_a_job_that_succeeds_is_posted_once_with_its_record(tmp_path, hook):
    job = run_to_end(write_spec(tmp_path, demo(), f"  webhook: {hook.url}\n"))
    assert job.status == "succeeded"
    [body] = hook.bodies()
    assert body["event"] == "succeeded" and body["status"] == "succeeded"
    assert (body["id"], body["name"], body["kind"], body["backend"]) == (job.id, "demo", "command", "local")
    assert body["step"] == 5 and body["total_steps"] == 5 and isinstance(body["wer"], float)
    assert body["output_dir"] == str(tmp_path / "out" / "demo") and body["runtime_s"] >= 0
    assert body["text"].startswith(f"gpujob: job {job.id} (demo) on local succeeded at step 5/5, WER ")
    assert json.loads((job.job_dir / "notify.json").read_text())["payload"] == body
    # the job's end came first: the notification never holds it up
    assert job.finished_at <= hook.posts[0][0]


def test_a_job_that_fails_is_posted_with_its_reason(tmp_path, hook):
    command = [sys.executable, "-c", "import sys; print('ValueError: bad column'); sys.exit(3)"]
    job = run_to_end(write_spec(tmp_path, command, f"  webhook: {hook.url}\n"))
    [body] = hook.bodies()
    assert body["event"] == "failed" and body["exit_code"] == 3
    assert "ValueError: bad column" in body["reason"] and body["reason"] == job.reason


def test_a_hung_job_is_posted_as_hung(tmp_path, hook):
    script = ("import time; from gpujob.progress import ProgressWriter; w = ProgressWriter(); "
              "w.progress(step=1, total_steps=10); time.sleep(120)")
    spec = write_spec(tmp_path, [sys.executable, "-c", script], f"  webhook: {hook.url}\n",
                      extra="limits:\n  idle_minutes: 0.03\n")
    job = run_to_end(spec)
    [body] = hook.bodies()
    assert body["event"] == "hung" and body["status"] == "failed" and body["reason"].startswith("hung:")
    assert body["step"] == 1


@pytest.mark.parametrize("on, sent", [("[cancelled]", True), ("[succeeded, failed]", False)])
def test_a_cancelled_job_is_posted_only_when_on_lists_it(tmp_path, hook, on, sent):
    spec = write_spec(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"],
                      f"  webhook: {hook.url}\n  on: {on}\n")
    job = submit(spec)
    wait_for(lambda: Registry().get(job.id).status == "running", timeout=20)
    assert gpujob("cancel", job.id, "--grace", "2").exit_code == 0
    job = ended(job.id)
    assert job.status == "cancelled"
    if sent:  # the supervisor and the cancelling CLI both saw the end: one of them sent it
        settled(job)
        [body] = hook.bodies()
        assert body["event"] == "cancelled"
    else:
        assert hook.posts == [] and not (job.job_dir / "notify.json").exists()
    gpujob("list")  # a later command does not send it again
    assert len(hook.posts) == (1 if sent else 0)


def test_a_webhook_that_fails_twice_gets_it_once_on_the_third_try(tmp_path):
    hook = Hook(fail_first=2)
    job = run_to_end(write_spec(tmp_path, demo(), f"  webhook: {hook.url}\n"))
    assert len(hook.posts) == 3
    assert len({json.dumps(b, sort_keys=True) for b in hook.bodies()}) == 1  # the same notification, retried
    log = (job.job_dir / "notify.log").read_text()
    assert "attempt 1: HTTP 500" in log and "attempt 3: HTTP 204" in log and "gave up" not in log
    hook.close()


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_a_dead_webhook_does_not_change_the_job_or_keep_its_supervisor(tmp_path):
    """The supervisor claims the notification and exits (ended() waits for that); a detached sender
    retries, a bounded number of times."""
    hook = Hook(always_fail=True)
    job = run_to_end(write_spec(tmp_path, demo(), f"  webhook: {hook.url}\n"))
    assert job.status == "succeeded" and job.reason is None
    assert job.finished_at <= hook.posts[0][0]  # recorded before the first attempt
    assert 1 < len(hook.posts) <= len(notify.BACKOFF_S) + 1  # retried, and bounded
    assert "webhook: gave up; the job's status is not affected" in settled(job)
    hook.close()


def test_the_command_form_gets_the_json_on_stdin(tmp_path):
    got = tmp_path / "got.json"
    command = [sys.executable, "-c", f"import sys; open({str(got)!r}, 'w').write(sys.stdin.read())"]
    job = run_to_end(write_spec(tmp_path, demo(), f"  command: {json.dumps(command)}\n"))
    body = json.loads(got.read_text())
    assert body["event"] == "succeeded" and body["id"] == job.id
    assert "attempt 1: exit 0" in (job.job_dir / "notify.log").read_text()


def test_no_secret_value_reaches_the_payload(tmp_path, hook, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    script = ("import os, sys; t = os.environ['HF_TOKEN']; print(t); "
              "print('RuntimeError: token ' + t + ' refused'); sys.exit(1)")
    spec = write_spec(tmp_path, [sys.executable, "-c", script], f"  webhook: {hook.url}\n",
                      extra="runtime:\n  secrets: [HF_TOKEN]\n")
    job = run_to_end(spec)
    [body] = hook.bodies()
    assert "RuntimeError: token *** refused" in body["reason"]
    assert SECRET not in json.dumps(body) and SECRET not in json.dumps(hook.posts)


def test_the_payload_is_redacted_also_where_the_record_holds_a_secret(tmp_path, hook, monkeypatch):
    """The service's path (other backends): a record from a backend that did not redact."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    job = Job(id="abc123", name="x", kind="train", backend="kubernetes", status="failed",
              reason=f"exited with code 1: ValueError: {SECRET}", exit_code=1, spec_path=None,
              spec_data={"apiVersion": "gpujob/v1", "kind": "command", "command": ["true"], "runtime": {"secrets": ["HF_TOKEN"]},
                         "notify": {"webhook": hook.url, "on": ["failed"]}},
              output_dir="/cache/out", handle={}, progress={"step": 4}, metrics={"note": SECRET},
              cost_usd=0.0, created_at=1.0, started_at=2.0, finished_at=3.0, updated_at=3.0)
    notify.send_in_background(job)
    settled(job)
    notify.send_in_background(job)  # a second command that sees the end sends nothing
    [body] = hook.bodies()
    assert body["reason"] == "exited with code 1: ValueError: ***" and body["metrics"] == {"note": "***"}
    assert SECRET not in (job.job_dir / "notify.json").read_text()


def test_webhook_env_is_read_when_sending_and_stored_nowhere(tmp_path, hook, monkeypatch):
    # named like a secret: withheld from the job, yet the supervisor can send to it
    monkeypatch.setenv("NOTIFY_HOOK_TOKEN", hook.url)
    script = "import os; print('job sees', sorted(os.environ))"
    spec = write_spec(tmp_path, [sys.executable, "-c", script], "  webhook_env: NOTIFY_HOOK_TOKEN\n")
    job = run_to_end(spec)
    assert job.status == "succeeded"
    assert len(hook.posts) == 1
    seen = gpujob("logs", job.id, "--raw").output
    assert "job sees" in seen and "NOTIFY_HOOK_TOKEN" not in seen and notify.HANDOVER_VAR not in seen
    home = Path(os.environ["GPUJOB_HOME"])
    for path in home.rglob("*"):
        if path.is_file():
            assert hook.url.encode() not in path.read_bytes(), path
    assert notify.HANDOVER_VAR.startswith(SECRET_PREFIX)  # so the job never gets it


def test_webhook_env_unset_where_the_end_is_seen_is_logged(tmp_path, hook):
    job = run_to_end(write_spec(tmp_path, demo(), "  webhook_env: NOT_SET_ANYWHERE_URL\n"))
    assert job.status == "succeeded" and hook.posts == []
    assert "NOT_SET_ANYWHERE_URL (notify.webhook_env) is not set" in (job.job_dir / "notify.log").read_text()


def test_an_end_the_cli_records_is_sent_by_the_cli(tmp_path, hook):
    """A job whose supervisor vanished is recorded failed by the next command, which notifies."""
    spec = write_spec(tmp_path, [sys.executable, "-c", "import time; time.sleep(60)"], f"  webhook: {hook.url}\n")
    job = submit(spec)
    wait_for(lambda: Registry().get(job.id).status == "running", timeout=20)
    os.kill(job.handle["supervisor_pid"], signal.SIGKILL)
    wait_for(lambda: not pid_alive(job.handle["supervisor_pid"]), timeout=20)
    assert gpujob("status", job.id).exit_code == 0
    settled(job)
    [body] = hook.bodies()
    assert body["event"] == "failed" and body["id"] == job.id
    assert gpujob("list").exit_code == 0 and len(hook.posts) == 1


def test_the_marker_lets_one_claim_win(tmp_path, hook):
    job = Job(id="def456", name="x", kind="command", backend="docker", status="succeeded", reason=None,
              exit_code=0, spec_path=None, spec_data={"apiVersion": "gpujob/v1", "kind": "command", "command": ["true"], "notify": {"webhook": hook.url}}, output_dir=None, handle={},
              progress={}, metrics={}, cost_usd=0.0, created_at=1.0, started_at=2.0, finished_at=3.0,
              updated_at=3.0)
    first, second = notify.Notifier.for_job(job), notify.Notifier.for_job(job)
    assert first.claim(job) is not None and second.claim(job) is None


@pytest.mark.parametrize("status, reason, event", [
    ("succeeded", None, "succeeded"),
    ("failed", "exited with code 1", "failed"),
    ("failed", "hung: no progress for 2s after step 1 (limits.idle_minutes)", "hung"),
    ("failed", "stopped at the budget of $3.00 at step 40; resubmit with a higher limits.max_cost to resume", "budget"),
    ("cancelled", "stopped at the budget of $3.00 at step 40", "budget"),
    ("cancelled", "cancelled by the user", "cancelled"),
    ("running", None, None),
])
def test_events_are_named_from_status_and_reason(status, reason, event):
    assert notify.event_for(status, reason) == event
