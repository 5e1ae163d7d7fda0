"""Hostile local jobs (issue 15): a job that prints poison, leaves its process group, closes its
output, echoes its secrets in every spelling, or sets PYTHONPATH for itself cannot crash gpujob,
outlive its record, escape its limits or leak a secret. End to end, through the CLI and the real
supervisor."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry
from polling import pid_alive, wait_for

runner = CliRunner()

SECRET = 'pa"ss\\wörd-Ωmega 🔑\nsecond-line-of-the-key'

# The job: hostile event lines, its secret in many spellings, a double-forked setsid daemon, then
# its output redirected away from gpujob; then it waits forever. Pids go to PIDS for the test.
HOSTILE_JOB = r'''
import json, os, sys, time
pids = open(sys.argv[1], "a")
def note(pid): pids.write(f"{pid}\n"); pids.flush()
note(os.getpid())
secret = os.environ["HOSTILE_TOKEN"]
P = "@gpujob/v1 "
lines = [
    P + "[" * 5000,
    P + '{"event":"progress","step":' + "9" * 310 + ',"loss":' + "1" * 400 + "}",
    P + '{"event":"end","status":{"x":1},"metrics":[1]}',
    P + '{"event":"progress","step":"x","total_steps":[],"loss":{"a":1},"epoch":1e999}',
    P + '{"event":"eval","wer":' + "[" * 3000 + "]" * 3000 + "}",
    P + '{"event":"progress","step":1,"total_steps":10,"loss":0.5}',
    "plain " + secret,
    P + json.dumps({"event": "progress", "step": 2, "total_steps": 10, "message": secret}),
    P + json.dumps({"event": "end", "status": "failed", "message": secret}, ensure_ascii=False),
    P + '{"event":"eval","step":2,"note":"' + "".join(f"\\u{ord(c):04x}" if ord(c) < 0x10000 else c
                                                      for c in secret) + '"}',
    P + json.dumps({"event": "eval", "step": 2, "wer": 0.5, secret: 1.0}),
    repr(secret),
    "x" * (3 << 20),
]
for line in lines:
    print(line, flush=True)
if os.fork() == 0:          # a daemon: double fork, a session of its own
    os.setsid()
    if os.fork() == 0:
        note(os.getpid())
        os.closerange(0, 1024)
        time.sleep(300)
    os._exit(0)
os.wait()
out = os.open(os.path.join(os.path.dirname(sys.argv[1]), "elsewhere.log"), os.O_WRONLY | os.O_CREAT)
os.dup2(out, 1); os.dup2(out, 2)   # `exec > train.log 2>&1`: gpujob sees the end of its output
print("now writing elsewhere", flush=True)
time.sleep(300)
'''


def gpujob(*args: str):
    return runner.invoke(app, list(args))


def secret_forms(secret: str) -> list[bytes]:
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1], repr(secret)[1:-1]}
    forms |= {line for line in secret.splitlines() if len(line) >= 8}
    return sorted(f.encode() for f in forms)


def assert_nowhere(secret: str, home: Path, *texts: str) -> None:
    forms = secret_forms(secret)
    for path in home.rglob("*"):
        if path.is_file():
            data = path.read_bytes()
            assert not [f for f in forms if f in data], path
    for text in texts:
        assert not [f for f in forms if f in text.encode()], text[:2000]


def write_spec(tmp_path: Path, command: list[str], extra: str = "", name: str = "hostile") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text("apiVersion: gpujob/v1\nkind: command\n"
                    f"name: {name}\ncommand: {json.dumps(command)}\n"
                    f"output:\n  dir: {tmp_path / 'out' / name}\n" + extra)
    return path


def test_a_hostile_job_is_stopped_at_max_runtime_leaves_no_process_and_no_secret(tmp_path, monkeypatch,
                                                                                gpujob_home):
    monkeypatch.setenv("HOSTILE_TOKEN", SECRET)
    script, pids = tmp_path / "hostile.py", tmp_path / "pids"
    script.write_text(HOSTILE_JOB)
    spec = write_spec(tmp_path, ["python", str(script), str(pids)],
                      "limits:\n  max_runtime: 4s\nruntime:\n  secrets: [HOSTILE_TOKEN]\n")
    started = time.monotonic()
    submitted = gpujob("submit", str(spec))
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.output.split()[2]
    wait_for(lambda: len(pids.read_text().split()) == 2 if pids.exists() else False)
    job = wait_for(lambda: (j := Registry().get(job_id)) and not j.active and j, timeout=60)
    took = time.monotonic() - started
    assert job.status == "failed" and "limits.max_runtime" in job.reason, job.reason
    assert took < 4 + 10 + 15, took  # the limit, the SIGTERM grace, slack for a loaded machine
    for pid in map(int, pids.read_text().split()):
        wait_for(lambda: not pid_alive(pid), timeout=10)
    status = gpujob("status", job_id, "--json")
    assert status.exit_code == 0, status.output[-3000:]
    logs, raw = gpujob("logs", job_id), gpujob("logs", job_id, "--raw")
    assert logs.exit_code == 0 and raw.exit_code == 0, (logs.output[-3000:], raw.output[-3000:])
    # Every line after the poison is still shown; the secret is nowhere, in any spelling.
    assert "plain ***" in logs.output and "x" * 1000 in raw.output
    assert "step 1/10" in logs.output or "step 2/10" in logs.output
    assert_nowhere(SECRET, gpujob_home, status.output, logs.output, raw.output)
    assert "now writing elsewhere" in (tmp_path / "elsewhere.log").read_text()


def test_a_job_outlives_neither_cancel_nor_its_supervisor(tmp_path, gpujob_home):
    """A setsid grandchild dies on cancel; and when the supervisor is killed with SIGKILL, the
    job dies with it, and the next command kills what is left."""
    daemon = ("import os, sys, time\n"
              "open(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\n"
              "if os.fork() == 0:\n"
              "    os.setsid()\n"
              "    if os.fork() == 0:\n"
              "        open(sys.argv[1], 'a').write(f'{os.getpid()}\\n')\n"
              "        import subprocess; subprocess.Popen(['sleep', '300'], start_new_session=True, env={})\n"
              "        time.sleep(300)\n"
              "    os._exit(0)\n"
              "print('up', flush=True)\n"
              "time.sleep(300)\n")
    script = tmp_path / "daemon.py"
    script.write_text(daemon)
    for how in ("cancel", "kill-supervisor"):
        pids = tmp_path / f"pids-{how}"
        spec = write_spec(tmp_path, ["python", str(script), str(pids)], name=f"d-{how}")
        job_id = gpujob("submit", str(spec)).output.split()[2]
        wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
        job = wait_for(lambda: (j := Registry().get(job_id)).status == "running" and j)
        # the job, the daemon, and its sleep: a session of its own, no GPUJOB_JOB_ID in its environment
        tree = wait_for(lambda: len(t := _tree(job.handle["supervisor_pid"])) >= 3 and t)
        if how == "cancel":
            assert gpujob("cancel", job_id).exit_code == 0
        else:  # once the supervisor has written them down for whoever comes next
            recorded = job.job_dir / "pids.json"
            wait_for(lambda: recorded.exists() and set(tree) <= {p for p, _ in json.loads(recorded.read_text())})
            os.kill(job.handle["supervisor_pid"], signal.SIGKILL)
            wait_for(lambda: not pid_alive(job.handle["supervisor_pid"]))
            assert gpujob("list").exit_code == 0  # the next command notices, and cleans up
        for pid in tree:
            wait_for(lambda: not pid_alive(pid), timeout=15)
        assert not Registry().get(job_id).active


def _tree(root: int) -> list[int]:
    """Every live process below ``root``."""
    parents = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/stat") as fh:
                    fields = fh.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] not in ("Z", "X"):
                parents[int(entry.name)] = int(fields[1])
    found, todo = [], [root]
    while todo:
        parent = todo.pop()
        kids = [pid for pid, ppid in parents.items() if ppid == parent]
        found += kids
        todo += kids
    return found


def test_runtime_env_applies_to_the_job_never_to_the_supervisor(tmp_path, monkeypatch):
    """PYTHONPATH in runtime.env with a module that shadows the stdlib reaches the job, and does not
    kill the supervisor; a PATH in runtime.env is kept (behind gpujob's python) and render shows
    exactly that; variables named like secrets and not listed are withheld, and said so."""
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "json.py").write_text("raise SystemExit('the shadowing json module ran')\n")
    monkeypatch.setenv("SOME_SERVICE_TOKEN", "not-for-the-job-1234")
    spec = write_spec(tmp_path, ["env"],
                      f"runtime:\n  env:\n    PYTHONPATH: {shadow}\n    PATH: /opt/tools/bin:/usr/bin:/bin\n")
    rendered = gpujob("render", str(spec))
    assert rendered.exit_code == 0, rendered.output
    venv_bin = Path(sys.executable).parent
    assert f"  PATH={venv_bin}:/opt/tools/bin:/usr/bin:/bin" in rendered.output
    assert f"  PYTHONPATH={shadow}" in rendered.output
    assert "withheld: " in rendered.output and "SOME_SERVICE_TOKEN" in rendered.output.split("withheld: ")[1]
    submitted = gpujob("submit", str(spec), "--follow")
    assert submitted.exit_code == 0, submitted.output
    assert "SOME_SERVICE_TOKEN" in submitted.output and "runtime.secrets" in submitted.output
    assert f"PYTHONPATH={shadow}" in submitted.output
    assert f"PATH={venv_bin}:/opt/tools/bin:/usr/bin:/bin" in submitted.output
    assert "SOME_SERVICE_TOKEN=" not in submitted.output
    job = Registry().list()[0]
    assert job.status == "succeeded", job.reason


@pytest.mark.parametrize("secret_line", ["-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAE\n"
                                         "bm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZWQy\n-----END OPENSSH PRIVATE KEY-----"])
def test_a_multi_line_secret_is_redacted_in_the_log(tmp_path, monkeypatch, gpujob_home, secret_line):
    monkeypatch.setenv("DEPLOY_KEY", secret_line)
    spec = write_spec(tmp_path, ["sh", "-c", 'printf "key:\\n%s\\nend\\n" "$DEPLOY_KEY"'],
                      "runtime:\n  secrets: [DEPLOY_KEY]\n")
    result = gpujob("submit", str(spec), "--follow")
    assert result.exit_code == 0, result.output
    assert "key:" in result.output and "***" in result.output and "end" in result.output
    assert_nowhere(secret_line, gpujob_home, result.output)
