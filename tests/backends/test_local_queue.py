"""The GPU queue of the local backend, end to end through the `gpujob` command: each job gets its own
GPUs (CUDA_VISIBLE_DEVICES), a job that does not fit waits as `queued` with its place, by priority
then submit time, and starts when GPUs free up; cancel of a queued job; a killed supervisor's GPUs
freed; share_gpus; many submits at once never give one GPU to two jobs.

This machine has no GPU: a fake `nvidia-smi` first on PATH lists as many as a test asks for. The jobs
are real processes that say when they start (and with which GPUs), then hold them until the test
lets them go (a file), so nothing here depends on timing."""

from __future__ import annotations

import json
import os
import signal
import threading
from pathlib import Path

import pytest

from gpujob_cli import GpujobCli
from polling import pid_alive, wait_for

UUIDS = [f"GPU-5a1b2c3d-0000-1111-2222-{c * 12}" for c in "abcd"]

# A job: records when it started and with which GPUs, holds them until `<name>.stop` exists (or for
# `hold` seconds), records its end. With `exclusive`, it also claims a marker per GPU with O_EXCL, so
# two jobs given one GPU at once is seen, whatever the timing: the second job's claim fails.
JOB = r"""
import json, os, sys, time
d, name, hold = sys.argv[1], sys.argv[2], float(sys.argv[3])
visible = os.environ["CUDA_VISIBLE_DEVICES"]
claimed = []
for uuid in filter(None, visible.split(",")):
    if sys.argv[4] == "exclusive":
        try:
            os.close(os.open(os.path.join(d, "held-" + uuid), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        except FileExistsError:
            print("CLASH on " + uuid, flush=True)
            sys.exit(3)
        claimed.append(uuid)
print("visible=" + visible, flush=True)
with open(os.path.join(d, name + ".start"), "w") as fh:
    json.dump({"t": time.time(), "visible": visible}, fh)
deadline = time.monotonic() + hold if hold > 0 else None
while not os.path.exists(os.path.join(d, name + ".stop")) and (deadline is None or time.monotonic() < deadline):
    time.sleep(0.02)
for uuid in claimed:
    os.unlink(os.path.join(d, "held-" + uuid))
with open(os.path.join(d, name + ".end"), "w") as fh:
    fh.write(str(time.time()))
"""


class Machine:
    """A machine with ``gpus`` fake GPUs, the `gpujob` command, and jobs the test starts and stops."""

    def __init__(self, tmp: Path, home: Path, gpus: int):
        bin_dir = tmp / "fake-bin"
        bin_dir.mkdir()
        rows = "".join(f"{i}, {uuid}, NVIDIA A10\\n" for i, uuid in enumerate(UUIDS[:gpus]))
        (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{rows}'\n")
        (bin_dir / "nvidia-smi").chmod(0o755)
        env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GPUJOB_HOME": str(home)}
        env.pop("CUDA_VISIBLE_DEVICES", None)
        self.cli = GpujobCli(tmp, env)
        self.home, self.marks = home, tmp / "marks"
        self.marks.mkdir()
        (tmp / "job.py").write_text(JOB)

    def spec(self, name: str, *, gpus: int = 1, priority: int = 0, share: bool = False, hold: float = 0,
             exclusive: bool = True) -> Path:
        path = self.cli.tmp / f"{name}.yaml"
        command = ["python", str(self.cli.tmp / "job.py"), str(self.marks), name, str(hold),
                   "exclusive" if exclusive and not share else "shared"]
        path.write_text(json.dumps({
            "apiVersion": "gpujob/v1", "kind": "command", "name": name, "command": command, "priority": priority,
            "resources": {"gpus": gpus, "share_gpus": share}, "output": {"dir": str(self.cli.tmp / "out" / name)}}))
        return path

    def submit(self, name: str, **kw) -> tuple[str, str]:
        """The job's id and what submit said of it."""
        r = self.cli.gpujob("submit", str(self.spec(name, **kw)))
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()[2], r.stdout.splitlines()[0]

    def started(self, name: str) -> dict | None:
        try:
            return json.loads((self.marks / f"{name}.start").read_text())
        except (FileNotFoundError, ValueError):
            return None

    def wait_started(self, name: str) -> dict:
        return wait_for(lambda: self.started(name), what=f"job {name} to start")

    def ended_at(self, name: str) -> float:
        return float((self.marks / f"{name}.end").read_text())

    def stop(self, name: str) -> None:
        (self.marks / f"{name}.stop").touch()

    def status(self, job_id: str) -> dict:
        return self.cli.status(job_id)

    def wait_status(self, job_id: str, status: str) -> dict:
        return self.cli.wait_status(job_id, lambda s: s["status"] == status, what=f"{job_id} {status}")

    def position(self, job_id: str) -> int | None:
        queue = self.status(job_id)["queue"]
        return queue and queue["position"]


@pytest.fixture
def machine(tmp_path, gpujob_home, request):
    m = Machine(tmp_path, gpujob_home, request.param)
    yield m
    for job in json.loads(m.cli.gpujob("list", "--active", "--json").stdout or "[]"):
        m.cli.gpujob("cancel", job["id"], "--grace", "1")


def on(gpus: int):
    return pytest.mark.parametrize("machine", [gpus], indirect=True, ids=[f"{gpus}-gpus"])


# ----------------------------------------------------------------------------- the must-show


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
@on(2)
def test_three_one_gpu_jobs_on_two_gpus_run_two_at_a_time_each_on_its_own_gpu(machine):
    a, said_a = machine.submit("a")
    b, said_b = machine.submit("b")
    assert said_a.endswith(": running") and said_b.endswith(": running")
    seen_a, seen_b = machine.wait_started("a"), machine.wait_started("b")
    assert {seen_a["visible"], seen_b["visible"]} == set(UUIDS[:2])  # one GPU each, not the same one

    c, said_c = machine.submit("c")  # returns at once, saying where it waits
    assert said_c == (f"submitted job {c} (c) on local: queued: 1st in the GPU queue, waiting for 1 GPU "
                      f"(2 of 2 in use by jobs {a}, {b})")
    assert machine.status(c)["status"] == "queued" and machine.position(c) == 1
    status = dict(line.split(None, 1) for line in machine.cli.gpujob("status", c).stdout.splitlines())
    assert status["queue"] == f"1st in the GPU queue, waiting for 1 GPU (2 of 2 in use by jobs {a}, {b})"
    listed = {line.split()[0]: line for line in machine.cli.gpujob("list").stdout.splitlines()[1:]}
    assert "queued (1st for GPUs)" in listed[c] and "running" in listed[a] and "running" in listed[b]
    assert machine.started("c") is None

    machine.stop("a")
    seen_c = machine.wait_started("c")
    assert seen_c["visible"] == seen_a["visible"]           # the GPU a freed
    assert seen_c["t"] > machine.ended_at("a")              # never three at once
    assert not (machine.marks / "b.end").exists()           # b still held the other one
    machine.stop("b")
    machine.stop("c")
    for job in (a, b, c):
        assert machine.wait_status(job, "succeeded")["queue"] is None
    assert f"visible={seen_c['visible']}" in machine.cli.gpujob("logs", c).stdout


# ----------------------------------------------------------------------------- order


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
@on(1)
def test_higher_priority_first_then_first_come_first_served(machine):
    holder, _ = machine.submit("holder")
    machine.wait_started("holder")
    first, _ = machine.submit("first")
    second, _ = machine.submit("second")
    urgent, said = machine.submit("urgent", priority=5)
    assert "queued: 1st in the GPU queue" in said
    wait_for(lambda: [machine.position(j) for j in (urgent, first, second)] == [1, 2, 3], what="positions")

    for running, nxt, rest in (("holder", "urgent", ["first", "second"]), ("urgent", "first", ["second"]),
                               ("first", "second", [])):
        machine.stop(running)
        machine.wait_started(nxt)
        assert all(machine.started(r) is None for r in rest), f"{rest} started before {nxt} left"
    machine.stop("second")
    machine.wait_status(second, "succeeded")


@on(2)
def test_a_one_gpu_job_does_not_pass_a_two_gpu_job_waiting_ahead_of_it(machine):
    machine.submit("one")
    machine.wait_started("one")
    big, said = machine.submit("big", gpus=2)
    assert "waiting for 2 GPUs (1 of 2 in use" in said
    small, said = machine.submit("small")  # a GPU is free, but big waits for it: strict order
    assert "queued: 2nd in the GPU queue, waiting for 1 GPU" in said
    machine.stop("one")
    assert set(machine.wait_started("big")["visible"].split(",")) == set(UUIDS[:2])
    assert machine.started("small") is None
    machine.stop("big")
    machine.wait_started("small")
    machine.stop("small")
    machine.wait_status(small, "succeeded")


# ----------------------------------------------------------------------------- cancel, a killed supervisor


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
@on(1)
def test_a_queued_job_is_cancelled_at_once_and_the_queue_moves_on(machine):
    holder, _ = machine.submit("holder")
    machine.wait_started("holder")
    doomed, _ = machine.submit("doomed")
    later, _ = machine.submit("later")
    assert machine.position(later) == 2

    r = machine.cli.gpujob("cancel", doomed)
    assert r.returncode == 0 and f"job {doomed} (doomed): cancelled" in r.stdout
    assert machine.status(doomed)["status"] == "cancelled"
    wait_for(lambda: machine.position(later) == 1, what="the next job to move up")
    machine.stop("holder")
    machine.wait_started("later")
    assert machine.started("doomed") is None                 # never started, not even after the GPU freed
    assert "visible=" not in machine.cli.gpujob("logs", doomed).stdout
    machine.stop("later")
    machine.wait_status(later, "succeeded")


@on(1)
def test_a_killed_supervisor_does_not_hold_its_gpu_for_ever(machine):
    holder, _ = machine.submit("holder", exclusive=False)  # killed: it cannot give its marker back
    machine.wait_started("holder")
    waiting, _ = machine.submit("waiting")
    assert machine.position(waiting) == 1
    handle = json.loads((machine.home / "jobs" / holder / "handle.json").read_text())
    os.kill(handle["supervisor_pid"], signal.SIGKILL)
    assert machine.wait_started("waiting")["visible"] == UUIDS[0]
    wait_for(lambda: not pid_alive(handle["pid"]), what="the killed supervisor's job to die with it")
    assert machine.status(holder)["status"] == "failed"
    machine.stop("waiting")
    machine.wait_status(waiting, "succeeded")


# ----------------------------------------------------------------------------- sharing, CPU jobs, render


@on(2)
def test_share_gpus_starts_at_once_on_the_least_used_gpu(machine):
    machine.submit("alone")
    alone = machine.wait_started("alone")["visible"]
    other = next(u for u in UUIDS[:2] if u != alone)
    for name in ("share1", "share2"):  # the free GPU, then the one only a sharing job uses
        _, said = machine.submit(name, share=True)
        assert said.endswith(": running")
        assert machine.wait_started(name)["visible"] == other
    exclusive, said = machine.submit("exclusive")  # both GPUs are in use: it waits
    assert "queued: 1st in the GPU queue" in said
    for name in ("alone", "share1", "share2"):
        machine.stop(name)
    machine.wait_started("exclusive")
    machine.stop("exclusive")
    machine.wait_status(exclusive, "succeeded")


@on(1)
def test_a_cpu_job_never_waits_for_gpus(machine):
    machine.submit("holder")
    machine.wait_started("holder")
    cpu, said = machine.submit("cpu", gpus=0, hold=0.01)
    assert said.endswith((": running", ": succeeded"))
    assert machine.wait_started("cpu")["visible"] == ""
    machine.wait_status(cpu, "succeeded")


@on(2)
def test_render_says_how_many_gpus_are_free_and_whether_the_job_would_wait(machine):
    path = machine.spec("preview")
    assert "queue: 2 of 2 GPUs free now; it would start at once" in machine.cli.gpujob("render", str(path)).stdout
    a, _ = machine.submit("a")
    b, _ = machine.submit("b")
    out = machine.cli.gpujob("render", str(path)).stdout
    assert (f"queue: it would wait: 1st in the GPU queue, waiting for 1 GPU (2 of 2 in use by jobs {a}, {b})"
            in out)
    assert "CUDA_VISIBLE_DEVICES=<1 of the GPUs above, given when the job leaves the GPU queue>" in out


# ----------------------------------------------------------------------------- many at once


@pytest.mark.slow
@on(3)
def test_many_concurrent_submits_never_give_one_gpu_to_two_jobs(machine):
    sizes = [1, 2, 1, 3, 1, 1, 2, 1, 1, 2, 1, 1]
    ids: dict[str, str] = {}

    def submit(i: int) -> None:
        ids[f"j{i}"] = machine.submit(f"j{i}", gpus=sizes[i], priority=i % 3, hold=0.3)[0]

    threads = [threading.Thread(target=submit, args=(i,)) for i in range(len(sizes))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(ids) == len(sizes)
    for i, size in enumerate(sizes):
        done = machine.cli.wait_status(ids[f"j{i}"], lambda s: s["status"] in ("succeeded", "failed"),
                                       timeout=120, what=f"j{i} to end")
        assert done["status"] == "succeeded", done["reason"]  # a clash on a GPU fails the job (exit 3)
        assert len(machine.started(f"j{i}")["visible"].split(",")) == size
    # And from the jobs' own clocks: any two that ran at the same time had no GPU in common.
    spans = [(machine.started(n)["t"], machine.ended_at(n), set(machine.started(n)["visible"].split(",")))
             for n in ids]
    for i, (s1, e1, g1) in enumerate(spans):
        for s2, e2, g2 in spans[i + 1:]:
            assert not (s1 < e2 and s2 < e1 and g1 & g2)
