"""This machine's NVIDIA GPUs, and which of them a local job gets. Standard library only.

- ``nvidia-smi --query-gpu=index,uuid,name --format=csv,noheader`` lists them. A machine without
  nvidia-smi, or where it fails or hangs, has none, and :class:`Found` keeps why.
- When CUDA_VISIBLE_DEVICES is already set (in your shell, or in ``runtime.env``), only the GPUs it
  names are candidates: indices as nvidia-smi numbers them, or UUIDs (a unique prefix is enough).
  As with CUDA, the list ends at the first entry that names no GPU, so ``""`` or ``-1`` means none.
- A job asking for N GPUs gets the first N candidates, named by UUID in its CUDA_VISIBLE_DEVICES
  (CUDA's default order can differ from nvidia-smi's indices; UUIDs cannot be misread). A job
  asking for none gets ``CUDA_VISIBLE_DEVICES=""``, so a CPU job never takes a GPU.
"""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from typing import Mapping

from gpujob.errors import UserError

QUERY = ["nvidia-smi", "--query-gpu=index,uuid,name", "--format=csv,noheader"]
TIMEOUT_S = 15
VISIBLE = "CUDA_VISIBLE_DEVICES"


@dataclass(frozen=True)
class Gpu:
    index: int   # as nvidia-smi numbers it (PCI bus order)
    uuid: str
    name: str

    def __str__(self) -> str:
        return f"GPU {self.index} {self.name} ({self.uuid})"


@dataclass(frozen=True)
class Found:
    """The GPUs a job here may use, and why there are none or fewer than the machine has."""

    gpus: tuple[Gpu, ...]
    why_none: str | None = None   # nvidia-smi's problem: "nvidia-smi: not found"
    visible: str | None = None    # CUDA_VISIBLE_DEVICES, when it was set and so limited the candidates
    total: int = 0                # GPUs nvidia-smi listed

    def describe(self) -> str:
        """``0 (nvidia-smi: not found)``, ``1: GPU 0 NVIDIA A10 (GPU-...)``."""
        if self.why_none:
            return f"0 ({self.why_none})"
        count = str(len(self.gpus))
        if self.visible is not None:
            count += f" that CUDA_VISIBLE_DEVICES={self.visible!r} leaves of its {self.total}"
        return count + (": " + ", ".join(map(str, self.gpus)) if self.gpus else "")


def detect(environ: Mapping[str, str] | None = None) -> Found:
    """The GPUs a job started with ``environ`` (default: ours) may use."""
    environ = os.environ if environ is None else environ
    gpus, why = _query(environ)
    visible = environ.get(VISIBLE)
    if visible is None:
        return Found(gpus, why, None, len(gpus))
    return Found(_visible(gpus, visible), why, visible, len(gpus))


def job_env(asked: int, found: Found | None) -> dict[str, str]:
    """The environment that gives a job ``asked`` GPUs of ``found`` (None when asked is 0);
    a UserError naming what there is when there are fewer."""
    if asked <= 0:
        return {VISIBLE: ""}
    assert found is not None
    if len(found.gpus) < asked:
        raise UserError(problem(asked, found), hint=_hint(found))
    return {VISIBLE: ",".join(g.uuid for g in found.gpus[:asked])}


def problem(asked: int, found: Found) -> str:
    return (f"resources.gpus: the job asks for {asked} GPU{'s' if asked != 1 else ''}, "
            f"but this machine has {found.describe()}")


def _hint(found: Found) -> str:
    unset = f"unset CUDA_VISIBLE_DEVICES ({found.total} GPUs in all); " if found.visible is not None \
        and found.total > len(found.gpus) else ""
    return (f"{unset}set resources.gpus: 0 to run on the CPU (--set resources.gpus=0), or run it where there "
            "are more GPUs: --backend kubernetes, or --backend host with runtime.host_type")


def _query(environ: Mapping[str, str]) -> tuple[tuple[Gpu, ...], str | None]:
    try:
        out = subprocess.run(QUERY, capture_output=True, text=True, timeout=TIMEOUT_S, stdin=subprocess.DEVNULL,
                             env=dict(environ))
    except FileNotFoundError:
        return (), "nvidia-smi: not found"
    except PermissionError:
        return (), "nvidia-smi: permission denied"
    except subprocess.TimeoutExpired:
        return (), f"nvidia-smi did not answer in {TIMEOUT_S} s"
    except OSError as exc:
        return (), f"nvidia-smi could not run: {exc.strerror}"
    if out.returncode != 0:
        said = (out.stderr.strip() or out.stdout.strip()).splitlines()
        return (), f"nvidia-smi failed (exit {out.returncode})" + (f": {said[-1][:200]}" if said else "")
    gpus = []
    for line in out.stdout.splitlines():
        fields = [f.strip() for f in line.split(",", 2)]
        if len(fields) == 3 and fields[0].isdigit():
            gpus.append(Gpu(int(fields[0]), fields[1], fields[2]))
    return tuple(gpus), None if gpus else "nvidia-smi lists no GPU"


def _visible(gpus: tuple[Gpu, ...], value: str) -> tuple[Gpu, ...]:
    """The GPUs CUDA_VISIBLE_DEVICES names, in its order, up to the first entry that names none."""
    chosen: list[Gpu] = []
    for entry in (e.strip() for e in value.split(",")):
        if entry.isdigit():
            match = [g for g in gpus if g.index == int(entry)]
        else:
            match = [g for g in gpus if entry and g.uuid.startswith(entry)]
        if len(match) != 1 or match[0] in chosen:
            break
        chosen.append(match[0])
    return tuple(chosen)
