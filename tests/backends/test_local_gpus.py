"""GPUs on the local backend: what nvidia-smi lists, which GPUs a job gets (CUDA_VISIBLE_DEVICES), a
job that asks for more than the machine has refused at submit, the launch line render shows, and the
ranks of a multi-process job (in sessions of their own, as torchrun starts them) killed with it.

This machine has no GPU: a fake ``nvidia-smi`` first on PATH stands in for a machine that has some."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob.backends import gpus
from gpujob.cli.app import app
from gpujob.registry import Registry
from test_local_backend import pid_alive

A10 = [("GPU-5a1b2c3d-0000-1111-2222-aaaaaaaaaaaa", "NVIDIA A10"),
       ("GPU-5a1b2c3d-0000-1111-2222-bbbbbbbbbbbb", "NVIDIA A10")]
UUID0, UUID1 = A10[0][0], A10[1][0]

runner = CliRunner()


def gpujob(*args: str):
    return runner.invoke(app, list(args))


def machine(tmp_path: Path, monkeypatch, devices: list[tuple[str, str]] | None, *, fails: str | None = None) -> None:
    """Put a fake nvidia-smi first on PATH: one that lists ``devices``, or fails saying ``fails``."""
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    if fails is not None:
        body = f"cat >&2 <<'EOF'\n{fails}\nEOF\nexit 9\n"
    else:
        rows = "".join(f"{i}, {uuid}, {name}\n" for i, (uuid, name) in enumerate(devices or []))
        body = ('[ "$*" = "--query-gpu=index,uuid,name --format=csv,noheader" ] || '
                '{ echo "unexpected arguments: $*" >&2; exit 64; }\n' f"printf '{rows}'\n")
    script = bin_dir / "nvidia-smi"
    script.write_text("#!/bin/sh\n" + body)
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def spec(tmp_path: Path, command: list[str], *, gpus: int, name: str = "g", extra: str = "") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: {name}\ncommand: {json.dumps(command)}\n"
                    f"resources:\n  gpus: {gpus}\noutput:\n  dir: {tmp_path / 'out' / name}\n" + extra)
    return path


TRAIN = """\
apiVersion: gpujob/v1
kind: train
name: two-gpus
model: {{checkpoint: openai/whisper-small, language: el}}
data:
  train: [{{dataset: google/fleurs, config: el_gr, split: train}}]
training: {{max_steps: 100}}
resources: {{gpus: {gpus}}}
output: {{dir: {out}}}
"""

PRINT_VISIBLE = ["python", "-c", "import os; print('visible=' + os.environ.get('CUDA_VISIBLE_DEVICES', 'unset'))"]


# ----------------------------------------------------------------------------- what nvidia-smi says


def test_gpus_are_listed_by_index_uuid_and_name(tmp_path, monkeypatch):
    machine(tmp_path, monkeypatch, A10)
    found = gpus.detect()
    assert [str(g) for g in found.gpus] == [f"GPU 0 NVIDIA A10 ({UUID0})", f"GPU 1 NVIDIA A10 ({UUID1})"]
    assert found.why_none is None


def test_no_nvidia_smi_or_a_failing_one_means_no_gpus_and_says_why(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert gpus.detect({"PATH": str(empty)}).describe() == "0 (nvidia-smi: not found)"
    machine(tmp_path, monkeypatch, None, fails="NVIDIA-SMI has failed because it couldn't communicate with the "
                                               "NVIDIA driver.")
    assert gpus.detect().describe() == ("0 (nvidia-smi failed (exit 9): NVIDIA-SMI has failed because it couldn't "
                                        "communicate with the NVIDIA driver.)")


@pytest.mark.parametrize("visible, chosen", [
    ("1", [UUID1]), ("1,0", [UUID1, UUID0]), (UUID1[:31], [UUID1]), ("GPU-5a1b", []),  # a prefix of both
    ("", []), ("-1", []), ("0,7,1", [UUID0])])
def test_cuda_visible_devices_already_set_limits_the_candidates_as_cuda_reads_it(tmp_path, monkeypatch,
                                                                                 visible, chosen):
    machine(tmp_path, monkeypatch, A10)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    found = gpus.detect()
    assert [g.uuid for g in found.gpus] == chosen and found.total == 2


# ----------------------------------------------------------------------------- submit on the local backend


def test_a_job_on_a_two_gpu_machine_sees_its_two_gpus(tmp_path, monkeypatch):
    machine(tmp_path, monkeypatch, A10)
    result = gpujob("submit", str(spec(tmp_path, PRINT_VISIBLE, gpus=2)), "--follow")
    assert result.exit_code == 0, result.output
    assert f"visible={UUID0},{UUID1}" in result.output


def test_one_gpu_of_those_your_cuda_visible_devices_allows(tmp_path, monkeypatch):
    machine(tmp_path, monkeypatch, A10)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    result = gpujob("submit", str(spec(tmp_path, PRINT_VISIBLE, gpus=1)), "--follow")
    assert result.exit_code == 0, result.output
    assert f"visible={UUID1}\n" in result.output


def test_a_cpu_job_gets_no_gpu_even_where_there_are_some(tmp_path, monkeypatch):
    machine(tmp_path, monkeypatch, A10)
    result = gpujob("submit", str(spec(tmp_path, PRINT_VISIBLE, gpus=0)), "--follow")
    assert result.exit_code == 0, result.output
    assert "visible=\n" in result.output


def test_more_gpus_than_the_machine_has_is_refused_before_the_job_is_recorded(tmp_path, monkeypatch):
    machine(tmp_path, monkeypatch, A10[:1])
    result = gpujob("submit", str(spec(tmp_path, PRINT_VISIBLE, gpus=2)))
    assert result.exit_code == 2, result.output
    assert (f"error: resources.gpus: the job asks for 2 GPUs, but this machine has 1: GPU 0 NVIDIA A10 ({UUID0})"
            in result.output)
    assert "resources.gpus: 0 to run on the CPU" in result.output and "--backend kubernetes" in result.output
    assert "Traceback" not in result.output
    assert Registry().list() == []


def test_a_gpu_job_on_a_machine_without_nvidia_smi_says_so(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    result = gpujob("submit", str(spec(tmp_path, PRINT_VISIBLE, gpus=1)))
    assert result.exit_code == 2, result.output
    assert "the job asks for 1 GPU, but this machine has 0 (nvidia-smi: not found)" in result.output
    assert Registry().list() == []


def test_render_shows_the_launch_line_and_the_gpus_chosen(tmp_path, monkeypatch):
    machine(tmp_path, monkeypatch, A10)
    path = tmp_path / "train.yaml"
    path.write_text(TRAIN.format(gpus=2, out=tmp_path / "out"))
    result = gpujob("render", str(path))
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    command = next(line for line in lines if line.startswith("command:"))
    assert command.startswith("command: python -m gpujob.runner.launch --standalone --nproc-per-node=2 ")
    assert command.endswith("/spec.json")
    assert (f"gpus:    2; one process each, under torchrun: GPU 0 NVIDIA A10 ({UUID0}), "
            f"GPU 1 NVIDIA A10 ({UUID1})") in lines
    assert f"  CUDA_VISIBLE_DEVICES={UUID0},{UUID1}" in lines


def test_render_shows_the_problem_where_the_gpus_are_missing(tmp_path, monkeypatch):
    machine(tmp_path, monkeypatch, A10[:1])
    path = tmp_path / "train.yaml"
    path.write_text(TRAIN.format(gpus=2, out=tmp_path / "out"))
    result = gpujob("render", str(path))
    assert result.exit_code == 2, result.output  # rendered, and refused as submit would
    assert ("gpus:    PROBLEM: resources.gpus: the job asks for 2 GPUs, but this machine has 1: "
            f"GPU 0 NVIDIA A10 ({UUID0}); submit refuses it") in result.output


# ----------------------------------------------------------------------------- ranks in sessions of their own

# What torchrun does: each rank in a session of its own (start_new_session=True), so a signal to the
# job's process group reaches the agent but not the ranks.
AGENT = """
import os, signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)   # an agent that does not stop when told
rank = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
open(sys.argv[1], "w").write(str(rank.pid))
print("rank started", flush=True)
if sys.argv[2] == "wait":
    time.sleep(300)
"""


def wait_gone(pid: int, timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and pid_alive(pid):
        time.sleep(0.05)
    return not pid_alive(pid)


def test_a_rank_in_its_own_session_does_not_outlive_its_job(tmp_path):
    marker = tmp_path / "rank.pid"
    result = gpujob("submit", str(spec(tmp_path, ["python", "-c", AGENT, str(marker), "exit"], gpus=0)), "--follow")
    assert result.exit_code == 0, result.output
    rank = int(marker.read_text())
    try:
        assert wait_gone(rank), "the rank outlived its job"
    finally:
        if pid_alive(rank):
            os.kill(rank, signal.SIGKILL)


def test_cancel_kills_the_ranks_of_an_agent_that_ignores_sigterm(tmp_path):
    marker = tmp_path / "rank.pid"
    assert gpujob("submit", str(spec(tmp_path, ["python", "-c", AGENT, str(marker), "wait"], gpus=0))).exit_code == 0
    deadline = time.monotonic() + 20
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    rank = int(marker.read_text())
    try:
        job = Registry().list()[0]
        assert gpujob("cancel", job.id, "--grace", "1").exit_code == 0
        assert wait_gone(rank), "the rank outlived its cancelled job"
        assert Registry().get(job.id).status == "cancelled"
    finally:
        if pid_alive(rank):
            os.kill(rank, signal.SIGKILL)
