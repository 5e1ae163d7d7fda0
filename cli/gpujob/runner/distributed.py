"""The runner's processes: one, or one per GPU under torchrun, and what they agree on.

Under torchrun (``WORLD_SIZE`` > 1 in the environment) :func:`start` joins the process group
(NCCL on CUDA, gloo on the CPU) with ``distributed.timeout`` as the collective timeout, and makes
a second, gloo group for the small decisions every step needs on the CPU: the step's label-token
count, the data counts and whether anyone was asked to stop. Those travel as integers, so no
GPU sync is needed to agree on them.

One process, the **writer**, writes progress events, checkpoints, the model, metrics,
predictions and the card, and pushes to the Hub: rank 0 (transformers' ``save_pretrained`` writes
nothing on any other rank). torchrun's c10d rendezvous numbers the nodes in the order of their
host names, so on Kubernetes, where worker ``i``'s host name is ``<job>-<i>``, rank 0 is on
worker 0, whose log the backend follows. The other processes print only warnings and errors,
each line prefixed with ``[rank N]``.

Without torchrun, :func:`start` returns a group of one and every collective is the identity,
so one process runs exactly the same code.
"""

from __future__ import annotations

import datetime
import io
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

import torch

DEFAULT_TIMEOUT_S = 600


@dataclass
class Group:
    """This process's place among the job's processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cuda" if torch.cuda.is_available() else "cpu"))
    _ctrl: Any = None  # the gloo group for CPU-side collectives

    @property
    def is_writer(self) -> bool:
        """Rank 0: the one process that writes (see the module's text)."""
        return self.rank == 0

    @property
    def many(self) -> bool:
        return self.world > 1

    def sum_ints(self, values: list[int]) -> list[int]:
        """Element-wise sums over every process (identity for one); on the CPU, no GPU sync."""
        if not self.many:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.int64)
        dist.all_reduce(t, group=self._ctrl)
        return t.tolist()

    def gather(self, obj: Any) -> list[Any]:
        """Every process's ``obj``, in rank order, on every process."""
        if not self.many:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self._ctrl)
        return out

    def share(self, obj: Any) -> Any:
        """The writer's ``obj``, on every process: a decision taken once."""
        if not self.many:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_writer else None]
        dist.broadcast_object_list(box, src=0, group=self._ctrl)
        return box[0]

    def all_reduce_(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum ``tensor`` in place over every process, where it lives (NCCL on a GPU): no host sync."""
        if self.many:
            import torch.distributed as dist

            dist.all_reduce(tensor)
        return tensor

    def barrier(self) -> None:
        if self.many:
            import torch.distributed as dist

            dist.barrier(group=self._ctrl)

    def close(self) -> None:
        if self.many:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()


def env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def start(timeout_s: int = DEFAULT_TIMEOUT_S) -> Group:
    """Join torchrun's process group when there is one; a group of one otherwise."""
    world = env_int("WORLD_SIZE", 1)
    cuda = torch.cuda.is_available()
    local_rank = env_int("LOCAL_RANK", 0)
    if cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    if world <= 1:
        return Group(device=device)
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=timeout,
                            **({"device_id": device} if cuda else {}))
    ctrl = dist.new_group(backend="gloo", timeout=timeout) if cuda else None
    group = Group(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank, device=device,
                  _ctrl=ctrl)
    if not group.is_writer:
        quiet(group.rank)
    return group


LOST = "lost the other processes"  # what a process says when a collective broke under it
_PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "Socket Timeout", "Timed out",
              "NCCL communicator was aborted", "Watchdog caught collective operation timeout")


def peer_lost(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective that failed because another process died, stopped or hung."""
    import torch.distributed as dist

    text = str(exc)
    return isinstance(exc, getattr(dist, "DistError", ())) or (
        isinstance(exc, RuntimeError) and any(word in text for word in _PEER_LOST))


def plain(exc: BaseException) -> str:
    """A collective's error in one line, without the C++ source location gloo and NCCL put first."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return re.sub(r"^\[[^\]]*\.(?:cc|cpp|h|hpp):\d+\]\s*", "", first)[:200]


class _Prefixed(io.TextIOBase):
    """A text stream that writes every line to ``target`` behind ``prefix``."""

    def __init__(self, target, prefix: str) -> None:
        self._target, self._prefix, self._at_start = target, prefix, True

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        out = []
        for piece in text.splitlines(keepends=True):
            if self._at_start:
                out.append(self._prefix)
            out.append(piece)
            self._at_start = piece.endswith("\n")
        self._target.write("".join(out))
        self._target.flush()
        return len(text)

    def flush(self) -> None:
        self._target.flush()

    def fileno(self) -> int:
        return self._target.fileno()


def quiet(rank: int) -> None:
    """Another rank than the writer: no stdout (so no event, no summary twice), and its warnings
    and errors on stderr behind ``[rank N]``."""
    sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    sys.stderr = _Prefixed(sys.__stderr__, f"[rank {rank}] ")
