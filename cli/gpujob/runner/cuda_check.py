"""The runner's start-up check of CUDA: a job that asks for GPUs stops with one plain line, not a CUDA
stack trace, when this torch cannot use them.

- torch is a CUDA build, the spec asks for GPUs, and ``torch.cuda.is_available()`` is False: no driver,
  a driver too old for this torch's CUDA, or no GPU given to the container;
- the NVIDIA driver is older than this torch's CUDA needs (:data:`MIN_DRIVER`), even where CUDA
  still answers.

A CPU build of torch with GPUs asked for is a warning, not an error: the job runs on the CPU (the cpu
image, or tests that fake GPUs). The driver's version comes from NVML (nvidia-ml-py) where it is
installed, else ``nvidia-smi``, else ``/proc/driver/nvidia/version``.
"""

from __future__ import annotations

import re
import subprocess
import warnings
from pathlib import Path

# The oldest Linux driver branch each CUDA release needs (NVIDIA's CUDA toolkit release notes, table 3).
MIN_DRIVER = {(13, 0): 580, (12, 9): 575, (12, 8): 570, (12, 6): 560, (12, 4): 550, (12, 1): 530, (11, 8): 520}
SMI = ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"]
PROC_VERSION = Path("/proc/driver/nvidia/version")
TIMEOUT_S = 15


def min_driver(cuda: str | None) -> int | None:
    """The oldest driver branch for torch's CUDA version ("13.0" -> 580); None for a CPU build or one not listed.
    A newer minor release than the table knows takes its major's newest entry."""
    if not cuda:
        return None
    try:
        version = tuple(int(p) for p in cuda.split(".")[:2])
    except ValueError:
        return None
    known = [v for v in MIN_DRIVER if v[0] == version[0] and v <= version]
    return MIN_DRIVER[max(known)] if known else None


def driver_version() -> str | None:
    """The NVIDIA driver's version ("580.95.05"), or None where no driver answers."""
    try:
        import pynvml  # nvidia-ml-py, where installed

        pynvml.nvmlInit()
        try:
            found = pynvml.nvmlSystemGetDriverVersion()
            return found.decode() if isinstance(found, bytes) else str(found)
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # not installed, or no driver behind it
        pass
    try:
        done = subprocess.run(SMI, capture_output=True, text=True, timeout=TIMEOUT_S)
        first = done.stdout.strip().splitlines()[:1]
        if done.returncode == 0 and first and re.fullmatch(r"\d+(\.\d+)+", first[0].strip()):
            return first[0].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        found = re.search(r"NVRM version:.*?\s(\d{3,}\.\d+(?:\.\d+)?)\s", PROC_VERSION.read_text())
        return found.group(1) if found else None
    except OSError:
        return None


def torch_cuda() -> tuple[str | None, bool]:
    """(torch.version.cuda, torch.cuda.is_available()), without the warning CUDA prints on an old driver."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.version.cuda, bool(torch.cuda.is_available())


def problem(gpus: int) -> str | None:
    """Why a job asking for ``gpus`` GPUs cannot use them with this torch; None when it can (or asks for none)."""
    if gpus <= 0:
        return None
    cuda, available = torch_cuda()
    if not cuda:
        return None
    need = min_driver(cuda)
    found = driver_version()
    wants = f"torch's CUDA {cuda} needs NVIDIA driver {need} or newer" if need else f"torch's CUDA {cuda}"
    if found and need and int(found.split(".")[0]) < need:
        return (f"the NVIDIA driver here is {found}, too old: {wants}. Run the job on a node with a newer driver "
                f"(R{need}+), or use an image whose torch is built for an older CUDA")
    if not available:
        where = f"the NVIDIA driver here is {found}" if found else "no NVIDIA driver was found (nvidia-smi, NVML)"
        return (f"the job asks for {gpus} GPU{'s' if gpus != 1 else ''} but torch.cuda.is_available() is False: "
                f"{where}; {wants}. Check that the node has a GPU and that it reaches the container "
                f"(NVIDIA container toolkit, resources.gpus), or set resources.gpus: 0 to run on the CPU")
    return None


def cpu_torch_warning(gpus: int) -> str | None:
    """A warning when GPUs are asked for but this torch is a CPU build (the job then runs on the CPU)."""
    if gpus <= 0:
        return None
    cuda, _ = torch_cuda()
    if cuda:
        return None
    import torch

    return (f"the job asks for {gpus} GPU{'s' if gpus != 1 else ''}, but torch {torch.__version__} is a CPU build: "
            f"it runs on the CPU")
