"""The GPU queue on a rented host, end to end through the `gpujob` command in the rented-host lab
(tests/support/host_lab.py): the stand-in host's nvidia-smi lists a set number of GPUs, jobs are real
containers on a real Docker engine (which takes GPU device requests through a stand-in NVIDIA hook:
tests/support/docker_engine.py), and the host's agent runs the queue, stepped here in the background
as its service steps it between checks.

Each job prints the CUDA_VISIBLE_DEVICES it got, then waits until the test ends it (a file it
creates in the container), so nothing depends on how long a job takes.
"""

from __future__ import annotations

import json

import pytest

from host_lab import INTERVAL_S
from polling import wait_for

pytest.importorskip("docker")
pytest.importorskip("paramiko")

WAITER = ["sh", "-c", "echo visible=$CUDA_VISIBLE_DEVICES; while [ ! -e /tmp/done ]; do sleep 0.1; done"]


@pytest.fixture(autouse=True)
def _engine_takes_gpu_requests(docker_engine):
    from docker_engine import gpu_requests_work

    if not gpu_requests_work(docker_engine):
        pytest.skip("the Docker engine has no GPU device driver (GPUJOB_TEST_DOCKER_HOST without the NVIDIA hook)")


def gpu_spec(lab, name: str, gpus: int = 1, priority: int = 0):
    path = lab.spec(name, WAITER)
    spec = json.loads(path.read_text())
    spec["resources"]["gpus"] = gpus
    spec["priority"] = priority
    path.write_text(json.dumps(spec))
    return path


def visible(lab, job_id: str) -> str:
    """The CUDA_VISIBLE_DEVICES the job printed, once it has."""
    def printed():
        r = lab.gpujob("logs", job_id)
        return next((line.split("=", 1)[1] for line in r.stdout.splitlines() if line.startswith("visible=")), None)
    return wait_for(printed, timeout=60, what=f"job {job_id} to print its GPUs")


def end(docker_engine, job_id: str) -> None:
    """Let the job finish (it exits 0 once /tmp/done exists in its container)."""
    [c] = docker_engine.client().containers.list(filters={"label": f"gpujob.dev/id={job_id}"})
    assert c.exec_run(["sh", "-c", "touch /tmp/done"]).exit_code == 0


def running(lab, job_id: str) -> dict:
    return lab.wait_status(job_id, lambda s: s["status"] == "running", timeout=60, what=f"job {job_id} running")


def test_three_one_gpu_jobs_on_a_two_gpu_host_run_two_at_a_time(lab, docker_engine):
    lab.host.set_gpu_count(2)
    lab.up("--type", "gpu_1x_a10")
    uuids = {"GPU-5d3a7c2e-1f0b-4c8e-9a6d-2b7e4f1c0a93", "GPU-5d3a7c2e-1f0b-4c8e-9a6d-2b7e4f1c0a94"}
    rendered = lab.gpujob("render", str(gpu_spec(lab, "render-only")))
    assert rendered.returncode == 0, rendered.stderr
    assert "from the host's GPU queue" in rendered.stdout

    agent = lab.agent()
    with lab.gpu_queue(agent) as failures:
        first, second = (lab.submit(gpu_spec(lab, name)) for name in ("first", "second"))
        running(lab, first), running(lab, second)
        got = {first: visible(lab, first), second: visible(lab, second)}
        assert set(got.values()) == uuids            # one GPU each, by UUID, not the same one

        third = lab.submit(gpu_spec(lab, "third"))
        st = lab.wait_status(third, lambda s: "GPU queue" in (s.get("reason") or ""), what="the third job's place")
        assert st["status"] == "queued"
        assert st["reason"].startswith("1st in the GPU queue, waiting for 1 GPU (2 of 2 in use by jobs ")
        assert first in st["reason"] and second in st["reason"] and "on host box" in st["reason"]
        assert st.get("started_at") is None
        listed = lab.gpujob("list")
        assert listed.returncode == 0
        assert "queued (1st for GPUs)" in next(line for line in listed.stdout.splitlines() if third in line)
        assert st["queue"]["position"] == 1
        assert agent.tick().activity.count(f"job {third} queued for 1 GPU") == 1

        end(docker_engine, first)
        assert lab.wait_status(first, lambda s: s["status"] == "succeeded")["exit_code"] == 0
        running(lab, third)
        assert visible(lab, third) == got[first]     # the GPU the first job left
        assert lab.status(second)["status"] == "running"
        for job in (second, third):
            end(docker_engine, job)
            lab.wait_status(job, lambda s: s["status"] == "succeeded")
    assert not failures


def test_a_cancelled_queued_job_never_starts_and_a_queued_job_keeps_the_host_up(lab, docker_engine):
    lab.up("--type", "gpu_1x_a10", "--idle", "2m")   # the stand-in host lists 1 GPU
    agent = lab.agent()
    with lab.gpu_queue(agent) as failures:
        holder = lab.submit(gpu_spec(lab, "holder"))
        running(lab, holder)
        cancelled = lab.submit(gpu_spec(lab, "cancelled", priority=5))
        st = lab.wait_status(cancelled, lambda s: "GPU queue" in (s.get("reason") or ""), what="its place")
        assert st["status"] == "queued" and st["reason"].startswith("1st in the GPU queue")
        r = lab.gpujob("cancel", cancelled)
        assert r.returncode == 0, r.stdout + r.stderr
        assert lab.status(cancelled)["status"] == "cancelled"
        assert not docker_engine.client().containers.list(all=True, filters={"label": f"gpujob.dev/id={cancelled}"})
        end(docker_engine, holder)
        lab.wait_status(holder, lambda s: s["status"] == "succeeded")
        # the GPU is free and the queue keeps stepping: it has nothing of the cancelled job to start
        queue_file = lab.host.layout().gpu_queue_path
        wait_for(lambda: json.loads(open(queue_file).read())["jobs"] == {}, what="the queue to empty")
        assert lab.status(cancelled)["status"] == "cancelled"
        assert "visible=" not in lab.gpujob("logs", cancelled).stdout
    assert not failures

    # With the queue not stepping, a job waits as created: the idle agent counts it as activity.
    waiting = lab.submit(gpu_spec(lab, "waiting"))
    assert lab.status(waiting)["status"] == "queued"
    for _ in range(4):                                    # 4 minutes > --idle 2m
        decision = agent.tick()
        assert decision.action == "none", decision.summary()
        assert f"job {waiting} queued for 1 GPU" in decision.activity
        lab.clock.advance(INTERVAL_S)
    assert not lab.emu.terminate_calls
    with lab.gpu_queue(agent):
        running(lab, waiting)
        assert visible(lab, waiting) == "GPU-5d3a7c2e-1f0b-4c8e-9a6d-2b7e4f1c0a93"
        end(docker_engine, waiting)
        lab.wait_status(waiting, lambda s: s["status"] == "succeeded")
