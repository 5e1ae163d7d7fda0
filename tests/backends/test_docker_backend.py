"""The docker backend, end to end through the `gpujob` command, against a real Docker engine.

The engine is a real dockerd the tests start (tests/support/docker_engine.py); the job image is the
Debian base the tests make locally plus gpujob's pure-Python modules, so command jobs can run
gpujob's progress-protocol demo. The job image proper (images/Dockerfile) and the runner inside
it are tested in tests/deploy/test_image.py. What every backend does (failure reasons, cancel with
grace, max_runtime, secrets, logs without loss) is in tests/backends/conformance, run on docker too;
here what is docker's own (the container's labels and inspect, the engine restarting, remote engines).
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from gpujob import history
from gpujob.events import parse_line
from gpujob_cli import GpujobCli

pytest.importorskip("docker")

SECRET = "hf_tEsT-not-a-real-token-0123456789"


class Docker(GpujobCli):
    """The `gpujob` command pointed at the tests' engine, in a temporary working directory."""

    def __init__(self, tmp: Path, engine, image: str):
        super().__init__(tmp, {**os.environ, "DOCKER_HOST": engine.host, "GPUJOB_HOME": str(tmp / "home"),
                               "PYTHONUNBUFFERED": "1"})
        self.env.pop("HF_TOKEN", None)
        self.engine, self.image = engine, image
        self.client = engine.client()

    def spec(self, name: str, command: list[str], **sections) -> Path:
        spec = {"apiVersion": "gpujob/v1", "kind": "command", "name": name, "command": command,
                "resources": {"gpus": 0, "shm": "64Mi", **sections.pop("resources", {})},
                "runtime": {"backend": "docker", "image": self.image, **sections.pop("runtime", {})},
                "limits": {"max_runtime": "10m", **sections.pop("limits", {})}, **sections}
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(spec))  # JSON is YAML
        return path

    def containers(self, job_id: str) -> list:
        return self.client.containers.list(all=True, filters={"label": f"gpujob.dev/id={job_id}"})


@pytest.fixture
def dk(tmp_path, docker_engine, docker_demo_image):
    return Docker(tmp_path, docker_engine, docker_demo_image)


def demo(*args: str) -> list[str]:
    return ["python", "-m", "gpujob.demo", *args]


def py(code: str) -> list[str]:
    return ["python", "-c", code]


# ----------------------------------------------------------------------------- must show


def test_job_runs_in_a_container_with_progress_in_logs_and_status(dk):
    spec = dk.spec("hello-docker", demo("--steps", "30", "--step-time", "0.06", "--eval-every", "10"))
    job_id = dk.submit(spec)
    [c] = dk.containers(job_id)
    assert c.attrs["Config"]["Image"] == dk.image
    assert c.labels["gpujob.dev/id"] == job_id and c.labels["gpujob.dev/name"] == "hello-docker"

    logs = dk.gpujob("logs", "-f", job_id, timeout=120)
    assert logs.returncode == 0, logs.stderr
    assert "[progress] step 30/30" in logs.stdout and "[eval] step 30" in logs.stdout

    st = dk.wait_status(job_id, lambda s: s["status"] == "succeeded")
    assert st["exit_code"] == 0
    assert st["step"] == 30 and st["total_steps"] == 30 and st["steps_per_s"] > 0
    assert 0 <= st["metrics"]["wer"] <= 1
    # The container is gone, its log is kept, and the outputs are on this machine and ours.
    assert dk.containers(job_id) == []
    raw = dk.gpujob("logs", "--raw", job_id).stdout
    saved = Path(dk.env["GPUJOB_HOME"]) / "jobs" / job_id / "output.log"
    assert saved.read_text() == raw and raw.count("\n") > 30
    whole = dk.gpujob("logs", job_id).stdout.splitlines()  # every progress line; -f without a terminal: fewer
    followed = iter(whole)
    assert all(line in followed for line in logs.stdout.splitlines())  # in the same order
    assert sum(line.startswith("[progress]") for line in whole) == 30
    # the metric history: every event's point, kept after the container went
    points = history.points(e for line in raw.splitlines() for e in parse_line(line))
    assert json.loads(dk.gpujob("metrics", job_id, "--json").stdout) == points and len(points) == 33
    out = Path(st["output_dir"])
    assert json.loads((out / "metrics.json").read_text())["wer"] == st["metrics"]["wer"]
    assert (out / "metrics.json").stat().st_uid == os.getuid()


def test_max_cost_stops_the_job_at_its_budget_inside_the_container(dk):
    job_id = dk.submit(dk.spec("over-budget", ["sleep", "60"], resources={"price_per_hour": 3600},
                               limits={"max_cost": 2, "max_runtime": "1h"}))
    st = dk.wait_status(job_id, lambda s: s["status"] == "failed", timeout=40)
    assert st["reason"].startswith("stopped at the budget of $2.00 (limits.max_cost, at $3,600.00/h)"), st["reason"]
    assert st["runtime_s"] < 30


# ----------------------------------------------------------------------------- secrets


def test_secrets_reach_the_job_but_no_manifest_label_log_or_registry(dk):
    code = ("import hashlib, os; t = os.environ['HF_TOKEN']; "
            "print('token sha256', hashlib.sha256(t.encode()).hexdigest()); "
            "print('file left:', os.path.exists('/run/gpujob/secrets.env')); import time; time.sleep(3)")
    spec = dk.spec("secret", py(code), runtime={"secrets": ["HF_TOKEN"]})
    job_id = dk.submit(spec, env={"HF_TOKEN": SECRET})
    [c] = dk.containers(job_id)
    assert SECRET not in json.dumps(c.attrs)            # docker inspect: env, labels, command
    logs = dk.gpujob("logs", "-f", "--raw", job_id).stdout
    assert f"token sha256 {hashlib.sha256(SECRET.encode()).hexdigest()}" in logs
    assert "file left: False" in logs
    dk.wait_status(job_id, lambda s: s["status"] == "succeeded")
    home = Path(dk.env["GPUJOB_HOME"])
    for path in home.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
    with sqlite3.connect(home / "registry.db") as db:
        assert SECRET not in json.dumps(db.execute("select * from jobs").fetchall())
    render = dk.gpujob("render", str(spec), env={"HF_TOKEN": SECRET})
    assert render.returncode == 0 and SECRET not in render.stdout and "HF_TOKEN" in render.stdout


def test_a_missing_secret_is_refused_before_anything_runs(dk):
    spec = dk.spec("nosecret", ["true"], runtime={"secrets": ["HF_TOKEN"]})
    r = dk.gpujob("submit", str(spec))
    assert r.returncode == 2 and "HF_TOKEN" in r.stderr and "Traceback" not in r.stderr
    assert dk.client.containers.list(all=True, filters={"label": "gpujob.dev/name=nosecret"}) == []


# ----------------------------------------------------------------------------- the engine misbehaves


def _follow(dk: Docker, job_id: str, out: list[str]) -> threading.Thread:
    def run():
        r = dk.gpujob("logs", "-f", job_id, timeout=180)
        out.append(r.stdout)
        out.append(r.stderr)

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_logs_follow_rides_out_a_dockerd_restart(dk):
    if not dk.engine.owned:
        pytest.skip("the engine was not started by the tests; cannot restart it")
    code = "import time\nfor i in range(60):\n    print(f'line {i}', flush=True); time.sleep(0.15)"
    job_id = dk.submit(dk.spec("restart", py(code)))
    out: list[str] = []
    follower = _follow(dk, job_id, out)
    time.sleep(2.0)
    dk.engine.restart()  # live-restore: the container keeps running; the log stream drops
    follower.join(timeout=120)
    assert not follower.is_alive()
    lines = [ln for ln in out[0].splitlines() if ln.startswith("line ")]
    assert lines == [f"line {i}" for i in range(60)], out
    st = dk.wait_status(job_id, lambda s: s["status"] == "succeeded")
    assert st["exit_code"] == 0


def test_logs_follow_across_a_long_quiet_stretch(dk):
    # The client's API timeout is 2 s for `logs -f`; the job says nothing for 6 s in the middle.
    code = "import time; print('before', flush=True); time.sleep(6); print('after', flush=True)"
    job_id = dk.submit(dk.spec("quiet", py(code)))
    r = dk.gpujob("logs", "-f", job_id, timeout=60, env={"GPUJOB_DOCKER_TIMEOUT_S": "2"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["before", "after"]
    assert "not answering" not in r.stderr


def test_an_unreachable_engine_is_explained(dk, tmp_path):
    spec = dk.spec("nowhere", ["true"])
    r = dk.gpujob("submit", str(spec), env={"DOCKER_HOST": f"unix://{tmp_path}/no-docker.sock"})
    assert r.returncode == 2
    assert "no Docker engine answers at unix://" in r.stderr and "Traceback" not in r.stderr


def test_an_image_the_engine_lacks_says_how_to_build_it(dk):
    spec = dk.spec("noimage", ["true"], runtime={"image": "gpujob-test/absent:1"})
    r = dk.gpujob("submit", str(spec))
    assert r.returncode == 2
    assert "gpujob-test/absent:1" in r.stderr and "gpujob image build" in r.stderr
    assert dk.client.containers.list(all=True, filters={"label": "gpujob.dev/name=noimage"}) == []


def test_render_shows_the_container_without_creating_it(dk):
    spec = dk.spec("dry", demo("--steps", "3"), resources={"gpus": 2, "shm": "2Gi", "memory": "4Gi"},
                   runtime={"env": {"WANDB_MODE": "offline"}})
    r = dk.gpujob("render", str(spec))
    assert r.returncode == 0, r.stderr
    assert "2 (device request, capabilities [gpu])" in r.stdout
    assert f"{2 * 1024 ** 3} bytes" in r.stdout and "WANDB_MODE=offline" in r.stdout
    assert f"{dk.tmp} -> {dk.tmp} (read-only)" in r.stdout
    assert dk.client.containers.list(all=True, filters={"label": "gpujob.dev/name=dry"}) == []


# ----------------------------------------------------------------------------- a remote engine


def test_remote_engine_gets_no_bind_mounts_and_outputs_come_back(dk):
    if not dk.engine.tcp_host:
        pytest.skip("the tests' engine has no TCP listener (GPUJOB_TEST_DOCKER_HOST given)")
    dk.env["DOCKER_HOST"] = dk.engine.tcp_host  # not a unix socket: gpujob treats it as another machine
    spec = dk.spec("remote", demo("--steps", "20", "--step-time", "0.1"), runtime={"secrets": ["HF_TOKEN"]})
    job_id = dk.submit(spec, env={"HF_TOKEN": SECRET})
    [c] = dk.containers(job_id)
    mounts = c.attrs["Mounts"]
    assert all(m["Type"] == "volume" for m in mounts), mounts
    assert {m["Destination"] for m in mounts} == {"/cache", "/outputs"}
    assert c.attrs["Config"]["User"] in ("", "1000:1000")  # the image's own user, not ours
    dk.gpujob("logs", "-f", job_id)
    st = dk.wait_status(job_id, lambda s: s["status"] == "succeeded")
    out = Path(st["output_dir"])
    assert out == dk.tmp / "outputs" / "remote"
    assert json.loads((out / "metrics.json").read_text())["wer"] == st["metrics"]["wer"]
    assert dk.containers(job_id) == []
    assert not [v for v in dk.client.volumes.list() if v.name == f"gpujob-out-{job_id}"]
