"""Issue 29, finding 1: a GPU is never given to a second job while anything of the first still runs on it,
and the queue's file is untrusted input.

- End to end (fake `nvidia-smi`, real supervisors): kill -9 of a holder's supervisor while the job has
  a rank in a session of its own; the next job starts only once that rank is gone (it is killed by
  the waiting supervisor, not left to the next gpujob command). The job is not told GPUJOB_HOME.
- Fault injection (hypothesis): whatever is written to ``gpu-queue.json`` (garbage, wrong types, huge
  numbers, a FIFO, a symlink, a valid file that drops the holder) while a job holds the only GPU,
  a waiting job's ``take`` never raises and never gets that GPU.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.backends import gpuqueue
from gpujob.backends.gpuqueue import Entry, GpuQueue, Wait
from gpujob_cli import GpujobCli
from polling import pid_alive, wait_for

UUID = "GPU-5a1b2c3d-0000-1111-2222-aaaaaaaaaaaa"

# The holder: starts a "rank" in a session of its own (as torchrun does) that beats a clock file every
# 10 ms until it is killed (each beat replaces the file whole: a kill mid-write must not leave it
# empty), then waits. The waiter: records when it started.
HOLDER = r"""
import os, subprocess, sys, time
d = sys.argv[1]
rank = ("import os, sys, time\n"
        "os.setsid()\n"
        "open(sys.argv[1] + '/rank.pid', 'w').write(str(os.getpid()))\n"
        "while True:\n"
        "    open(sys.argv[1] + '/rank.beat~', 'w').write(repr(time.time()))\n"
        "    os.replace(sys.argv[1] + '/rank.beat~', sys.argv[1] + '/rank.beat')\n"
        "    time.sleep(0.01)\n")
subprocess.Popen([sys.executable, "-c", rank, d])
open(d + "/holder.env", "w").write("\n".join(sorted(os.environ)))
while True:
    time.sleep(1)
"""
WAITER = r"""
import os, sys, time
open(sys.argv[1] + "/waiter.start", "w").write(repr(time.time()) + " " + os.environ["CUDA_VISIBLE_DEVICES"])
"""


@pytest.fixture
def one_gpu(tmp_path, gpujob_home):
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '0, {UUID}, NVIDIA A10\\n'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GPUJOB_HOME": str(gpujob_home)}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    cli = GpujobCli(tmp_path, env)
    yield cli
    for job in json.loads(cli.gpujob("list", "--active", "--json").stdout or "[]"):
        cli.gpujob("cancel", job["id"], "--grace", "1")


def _submit(cli: GpujobCli, name: str, script: str) -> str:
    marks = cli.tmp / "marks"
    marks.mkdir(exist_ok=True)
    (cli.tmp / f"{name}.py").write_text(script)
    spec = cli.tmp / f"{name}.yaml"
    spec.write_text(json.dumps({"apiVersion": "gpujob/v1", "kind": "command", "name": name,
                                "command": ["python", str(cli.tmp / f"{name}.py"), str(marks)],
                                "resources": {"gpus": 1}, "output": {"dir": str(cli.tmp / "out" / name)}}))
    r = cli.gpujob("submit", str(spec))
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()[2]


def test_a_killed_supervisors_gpu_is_not_given_on_while_a_rank_of_its_job_still_runs(one_gpu, gpujob_home):
    marks = one_gpu.tmp / "marks"
    holder = _submit(one_gpu, "holder", HOLDER)
    rank = int(wait_for(lambda: (marks / "rank.pid").exists() and (marks / "rank.pid").read_text(), what="the rank"))
    waiter = _submit(one_gpu, "waiter", WAITER)
    handle = json.loads((gpujob_home / "jobs" / holder / "handle.json").read_text())
    time.sleep(1.2)  # the supervisor has recorded the job's processes once
    os.kill(handle["supervisor_pid"], signal.SIGKILL)
    # No gpujob command runs from here on: only the waiting supervisor may act.
    wait_for(lambda: (marks / "waiter.start").exists(), timeout=30, what="the waiting job to start")
    started, visible = (marks / "waiter.start").read_text().split()
    assert visible == UUID
    assert not pid_alive(rank), "the rank of the killed job still runs"
    last_beat = float((marks / "rank.beat").read_text())
    assert float(started) > last_beat, "the waiting job started while the killed job's rank still ran on its GPU"
    one_gpu.wait_status(waiter, lambda s: s["status"] == "succeeded", what="the waiter to finish")
    told = (marks / "holder.env").read_text().split()
    assert "GPUJOB_HOME" not in told and "GPUJOB_JOB_ID" in told  # the job is not told where the queue is


def test_a_process_left_in_a_killed_supervisors_session_holds_its_gpu_until_it_ends(tmp_path):
    """A process with no marker and not recorded (it scrubbed its environment, started within the
    second) still counts as the job's while it is in the killed supervisor's session: not killed (its
    session id could be a reused pid), but the GPU waits for it."""
    (tmp_path / "jobs" / "gone").mkdir(parents=True)
    leader = subprocess.Popen([sys.executable, "-c", "import os, subprocess, sys, time\n"
                               "p = subprocess.Popen(['sleep', '60'], env={})\n"
                               "print(p.pid, flush=True)\ntime.sleep(60)"],
                              start_new_session=True, stdout=subprocess.PIPE, text=True)
    child = int(leader.stdout.readline())
    from gpujob import procs

    queue = GpuQueue(tmp_path)
    holder = Entry("gone", 1, ["GPU-0"], 0, 1.0, False, leader.pid, procs.start_time(leader.pid))
    queue.join(holder)
    assert queue.take(holder) == ["GPU-0"]
    os.kill(leader.pid, signal.SIGKILL)
    leader.wait()
    try:
        queue.join(_waiter())
        for _ in range(3):
            assert isinstance(queue.take(_waiter()), Wait)  # its session's process still runs
            assert pid_alive(child)                          # and was not killed
            time.sleep(0.2)
    finally:
        os.kill(child, signal.SIGKILL)
    wait_for(lambda: not pid_alive(child), what="the session's process to end")
    assert queue.take(_waiter()) == ["GPU-0"]


# ----------------------------------------------------------------------------- the file, attacked


@pytest.fixture(scope="module")
def holder_world(tmp_path_factory):
    """A home whose job ``holder`` holds the only GPU: its entry, and a process of the job running with
    that GPU (as the job's ranks do); the entry's supervisor is this test process (alive)."""
    home = tmp_path_factory.mktemp("home")
    (home / "jobs" / "holder").mkdir(parents=True)
    env = {**os.environ, "GPUJOB_JOB_ID": "holder", "CUDA_VISIBLE_DEVICES": "GPU-0"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"], env=env)
    yield home
    proc.kill()
    proc.wait()


def _holder() -> Entry:
    return Entry("holder", 1, ["GPU-0"], 0, 1.0, False, os.getpid(), None)


def _waiter() -> Entry:
    return Entry("waiter", 1, ["GPU-0"], 5, 2.0, False, os.getpid(), None)


scalar = st.one_of(st.none(), st.booleans(), st.integers(-10**30, 10**30), st.floats(), st.text(max_size=5),
                   st.just([]), st.just({}), st.just(["GPU-0"]), st.just([["GPU-0"]]))
entry_dict = st.fixed_dictionaries({}, optional={k: scalar for k in
                                                 ("job_id", "gpus", "candidates", "priority", "submitted",
                                                  "share", "pid", "start", "held", "extra")})
hostile = st.one_of(
    st.binary(max_size=200).map(lambda b: ("bytes", b)),
    st.lists(entry_dict, max_size=4).map(lambda es: ("json", {"entries": es})),
    scalar.map(lambda v: ("json", {"entries": v, "hold_off_until": v})),
    st.just(("json", {"entries": []})),  # valid, and the holder is gone from it
    st.just(("json", {"entries": [{"job_id": "waiter", "gpus": 1, "candidates": ["GPU-0"], "held": []}]})),
    st.just(("json", {"entries": [{"job_id": "holder", "gpus": 1, "candidates": ["GPU-0"], "held": []}]})),
    st.just(("bytes", b"[" * 100_000)),
    st.just(("fifo", None)), st.just(("symlink", None)), st.just(("big", None)),
)


def _plant(path: Path, kind: str, value) -> None:
    tmp = path.with_name("planted")
    for p in (tmp,):
        if p.exists() or p.is_symlink():
            p.unlink()
    if kind == "bytes":
        tmp.write_bytes(value)
    elif kind == "json":
        tmp.write_text(json.dumps(value, allow_nan=True))
    elif kind == "fifo":
        os.mkfifo(tmp)
    elif kind == "symlink":
        os.symlink("/dev/zero", tmp)
    else:
        tmp.write_bytes(b" " * (gpuqueue.MAX_BYTES + 10) + b'{"entries": []}')
    os.replace(tmp, path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(hostile, min_size=1, max_size=3))
def test_whatever_is_written_to_the_queue_file_a_waiting_job_never_crashes_nor_gets_a_held_gpu(holder_world, plants):
    queue = GpuQueue(holder_world)
    queue.path.unlink(missing_ok=True)
    queue.join(_holder())
    assert queue.take(_holder()) == ["GPU-0"]
    queue.join(_waiter())
    for kind, value in plants:
        _plant(queue.path, kind, value)
        got = queue.take(_waiter())           # never raises, whatever the file holds
        assert isinstance(got, Wait), f"the waiting job got {got} while the holder runs on it"
        queue.hold(_holder(), ["GPU-0"])       # the holder's supervisor puts its entry back, each second
        assert isinstance(queue.take(_waiter()), Wait)
        assert isinstance(queue.snapshot(), list)


def test_a_damaged_file_holds_gpus_back_until_every_holder_is_back(tmp_path):
    queue = GpuQueue(tmp_path)
    queue.join(_holder())
    assert queue.take(_holder()) == ["GPU-0"]
    queue.path.write_text('{"entries": [{"job_id": "holder", "gpus": "one"}]}')  # wrong type: was a TypeError
    queue.join(_waiter())
    assert isinstance(queue.take(_waiter()), Wait)  # no holder known, and no process to tell: it waits
    queue.leave("holder")  # the holder ends: once the hold-off is over, the waiting job starts
    deadline = time.monotonic() + gpuqueue.HOLD_OFF_S + 2
    while isinstance(got := queue.take(_waiter()), Wait) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert got == ["GPU-0"]
