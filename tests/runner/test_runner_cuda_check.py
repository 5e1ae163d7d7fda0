"""The runner's start-up check of CUDA (gpujob/runner/cuda_check.py): a job asking for GPUs that this torch
cannot use stops at once with exit 2 and one plain line naming the driver found and the minimum, never a
CUDA stack trace. This machine has no GPU: torch's answers and the driver's version are patched, and the
driver is read from a real fake `nvidia-smi` process and from a /proc file written here."""

from __future__ import annotations

import json
import os
import sys

import pytest

from gpujob.events import parse_line
from gpujob.runner import cuda_check

pytest.importorskip("torch")


def patch(monkeypatch, cuda: str | None, available: bool, driver: str | None) -> None:
    monkeypatch.setattr(cuda_check, "torch_cuda", lambda: (cuda, available))
    monkeypatch.setattr(cuda_check, "driver_version", lambda: driver)


@pytest.mark.parametrize("cuda, need", [("13.0", 580), ("13.2", 580), ("12.8", 570), ("12.9", 575),
                                        ("12.4", 550), (None, None), ("11.2", None), ("bogus", None)])
def test_the_oldest_driver_each_cuda_needs(cuda, need):
    assert cuda_check.min_driver(cuda) == need


def test_cuda_unavailable_with_an_old_driver_names_the_driver_and_the_minimum(monkeypatch):
    patch(monkeypatch, "13.0", False, "570.86.15")
    said = cuda_check.problem(1)
    assert "570.86.15" in said and "too old" in said and "580" in said


def test_cuda_unavailable_without_a_driver_says_none_was_found(monkeypatch):
    patch(monkeypatch, "13.0", False, None)
    said = cuda_check.problem(2)
    assert "2 GPUs" in said and "no NVIDIA driver was found" in said and "580" in said
    assert "resources.gpus: 0" in said


def test_a_driver_older_than_torch_needs_stops_even_where_cuda_answers(monkeypatch):
    patch(monkeypatch, "12.8", True, "550.54.14")
    said = cuda_check.problem(1)
    assert "550.54.14" in said and "570" in said


@pytest.mark.parametrize("cuda, available, driver", [("13.0", True, "580.95.05"), ("12.8", True, "575.1"),
                                                     ("13.0", True, None)])
def test_a_usable_gpu_passes(monkeypatch, cuda, available, driver):
    patch(monkeypatch, cuda, available, driver)
    assert cuda_check.problem(1) is None


def test_no_gpus_asked_means_no_check(monkeypatch):
    patch(monkeypatch, "13.0", False, "470.1")
    assert cuda_check.problem(0) is None and cuda_check.cpu_torch_warning(0) is None


def test_a_cpu_torch_with_gpus_asked_is_a_warning_not_an_error(monkeypatch):
    patch(monkeypatch, None, False, "580.95.05")
    assert cuda_check.problem(1) is None
    assert "CPU build" in cuda_check.cpu_torch_warning(1)


def test_the_driver_version_from_nvidia_smi(monkeypatch, tmp_path):
    smi = tmp_path / "nvidia-smi"
    smi.write_text("#!/bin/sh\necho '580.95.05'\necho '580.95.05'\n")
    smi.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setitem(sys.modules, "pynvml", None)  # NVML absent
    assert cuda_check.driver_version() == "580.95.05"


def test_the_driver_version_from_proc_when_nvidia_smi_is_missing(monkeypatch, tmp_path):
    proc = tmp_path / "version"
    proc.write_text("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  570.133.20  Release Build  "
                    "(dvs-builder@U16-I3-B03-4-3)  Fri Mar 14 2025\nGCC version:  gcc version 12.2.0\n")
    monkeypatch.setattr(cuda_check, "PROC_VERSION", proc)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setitem(sys.modules, "pynvml", None)
    assert cuda_check.driver_version() == "570.133.20"
    proc.write_text("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 01:15:15 UTC 2023\n")
    assert cuda_check.driver_version() == "535.104.05"
    monkeypatch.setattr(cuda_check, "PROC_VERSION", tmp_path / "absent")
    assert cuda_check.driver_version() is None


def test_the_runner_exits_2_with_one_plain_line_and_a_failed_end(monkeypatch, tmp_path, capsys):
    from gpujob.runner.__main__ import main

    from tiny_runs import write_spec

    spec = json.loads(write_spec(tmp_path, tmp_path / "model", tmp_path / "data").read_text())
    spec["resources"]["gpus"] = 1
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec))
    patch(monkeypatch, "13.0", False, "570.86.15")
    monkeypatch.delenv("RANK", raising=False)
    assert main([str(path)]) == 2
    out, err = capsys.readouterr()
    assert err.startswith("gpujob runner: ") and "570.86.15" in err and "580" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    ends = [e for line in out.splitlines() for e in parse_line(line) if e["event"] == "end"]
    assert [e["status"] for e in ends] == ["failed"] and "570.86.15" in ends[0]["message"]
    assert not (tmp_path / "out").exists()  # nothing started


def test_bf16_on_a_cpu_that_runs_it_slower_is_warned_about(monkeypatch):
    torch = pytest.importorskip("torch")
    from gpujob.runner import cpu_probe
    from gpujob.runner.model import cpu_bf16_note, pick_precision

    cpu = torch.device("cpu")
    bf16, fp32 = pick_precision("bf16", cpu), pick_precision("fp32", cpu)
    assert bf16.name == "bf16" and fp32.name == "fp32"
    monkeypatch.setattr(cpu_probe, "measure", lambda *a, **k: ([0.1] * 5, [0.3] * 5))  # emulated: 3x slower
    assert "0.33x the speed of fp32" in cpu_bf16_note(bf16, cpu) and "precision: fp32" in cpu_bf16_note(bf16, cpu)
    assert cpu_bf16_note(fp32, cpu) == ""
    monkeypatch.setattr(cpu_probe, "measure", lambda *a, **k: ([0.2] * 5, [0.1] * 5))
    assert cpu_bf16_note(bf16, cpu) == ""
