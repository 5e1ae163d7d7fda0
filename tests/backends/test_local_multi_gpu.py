"""A train job with `resources.gpus: 2` on the local backend, end to end through the `gpujob` command:
the launcher (torchrun) with one runner process per GPU, each event once, cancel, a rank that dies.

This machine has no GPU: a fake `nvidia-smi` first on PATH lists two, so the job gets
CUDA_VISIBLE_DEVICES with their UUIDs; the CPU torch sees no CUDA device, so the ranks train on the
CPU with gloo, which is all the distributed code needs."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest

from gpujob.events import parse_line
from gpujob_cli import GpujobCli

pytest.importorskip("torch")
pytestmark = pytest.mark.slow
UUIDS = ["GPU-5a1b2c3d-0000-1111-2222-aaaaaaaaaaaa", "GPU-5a1b2c3d-0000-1111-2222-bbbbbbbbbbbb"]


@pytest.fixture
def cli(tmp_path, gpujob_home) -> GpujobCli:
    bin_dir = tmp_path / "fake-bin"
    bin_dir.mkdir()
    rows = "".join(f"{i}, {uuid}, NVIDIA A10\\n" for i, uuid in enumerate(UUIDS))
    (bin_dir / "nvidia-smi").write_text(f"#!/bin/sh\nprintf '{rows}'\n")
    (bin_dir / "nvidia-smi").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "GPUJOB_HOME": str(gpujob_home),
           "OMP_NUM_THREADS": "1"}
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return GpujobCli(tmp_path, env)


def train_spec(cli: GpujobCli, model: Path, data: Path, **training) -> Path:
    spec = {"apiVersion": "gpujob/v1", "kind": "train", "name": "two-gpus",
            "model": {"checkpoint": str(model), "language": "el"},
            "data": {"train": [{"dataset": str(data), "split": "train"}],
                     "eval": [{"dataset": str(data), "split": "heldout"}], "loader_workers": 1},
            "training": {"max_steps": 4, "per_device_batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1,
                         "eval_steps": 2, "save_steps": 1000, "precision": "fp32", "generation_max_length": 20,
                         **training},
            "evaluation": {"batch_size": 2}, "output": {"dir": str(cli.tmp / "out")}, "resources": {"gpus": 2}}
    path = cli.tmp / "two-gpus.yaml"
    path.write_text(json.dumps(spec))
    return path


def events(cli: GpujobCli, job_id: str) -> list[dict]:
    out = cli.gpujob("logs", job_id, "--raw").stdout
    return [e for line in out.splitlines() for e in parse_line(line)]


def job_processes(job_id: str) -> list[int]:
    """Processes that carry the job's id in their environment (the launcher, the ranks)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if f"GPUJOB_JOB_ID={job_id}".encode() in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def rank_pid(job_id: str, rank: int) -> int:
    for pid in job_processes(job_id):
        try:
            if f"RANK={rank}".encode() in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0"):
                return pid
        except OSError:
            continue
    raise AssertionError(f"no rank {rank} of job {job_id}")


def test_a_two_gpu_job_runs_one_process_per_gpu_and_reports_each_step_once(cli, tiny_model, small_greek):
    spec = train_spec(cli, tiny_model, small_greek)
    rendered = cli.gpujob("render", str(spec))
    assert rendered.returncode == 0, rendered.stderr
    assert "python -m gpujob.runner.launch --standalone --nproc-per-node=2" in rendered.stdout
    assert f"CUDA_VISIBLE_DEVICES={UUIDS[0]},{UUIDS[1]}" in rendered.stdout
    job_id = cli.submit(spec)
    s = cli.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=300, what="finished")
    assert s["status"] == "succeeded", s
    seen = events(cli, job_id)
    assert [e["step"] for e in seen if e["event"] == "progress"] == [1, 2, 3, 4]
    assert [e["event"] for e in seen].count("start") == [e["event"] for e in seen].count("end") == 1
    assert s["step"] == 4 and s["metrics"]["steps"] == 4 and json.loads((cli.tmp / "out" / "metrics.json").read_text())
    assert "8 examples (2 processes × 1 micro-batch of ≤4)" in cli.gpujob("logs", job_id).stdout
    assert job_processes(job_id) == []


def test_cancel_stops_every_rank_after_one_checkpoint_and_leaves_no_process(cli, tiny_model, small_greek):
    job_id = cli.submit(train_spec(cli, tiny_model, small_greek, max_steps=1000, eval_steps=1000))
    cli.wait_status(job_id, lambda s: (s["step"] or 0) >= 2, timeout=240, what="step 2")
    r = cli.gpujob("cancel", job_id, "--grace", "60")
    assert r.returncode == 0, r.stderr
    s = cli.status(job_id)
    assert s["status"] == "cancelled", s
    seen = events(cli, job_id)
    saved = [e["step"] for e in seen if e["event"] == "checkpoint"]
    assert len(saved) == 1 and saved[0] == max(e["step"] for e in seen if e["event"] == "progress")
    assert (cli.tmp / "out" / "checkpoints" / f"checkpoint-{saved[0]}" / "complete").exists()
    deadline = time.monotonic() + 10
    while job_processes(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert job_processes(job_id) == []


def test_a_rank_killed_fails_the_job_and_status_names_it(cli, tiny_model, small_greek):
    job_id = cli.submit(train_spec(cli, tiny_model, small_greek, max_steps=1000, eval_steps=1000))
    cli.wait_status(job_id, lambda s: (s["step"] or 0) >= 2, timeout=240, what="step 2")
    os.kill(rank_pid(job_id, 1), signal.SIGKILL)  # what the kernel's OOM killer does
    s = cli.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=90, what="failed")
    assert s["status"] == "failed" and s["exit_code"] == 137, s
    assert s["reason"].startswith("rank 1 of 2 failed first: killed by SIGKILL"), s["reason"]
    details = cli.gpujob("status", job_id).stdout
    assert "rank 1 of 2 failed first" in details
    assert job_processes(job_id) == []
