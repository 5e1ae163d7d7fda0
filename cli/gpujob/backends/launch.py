"""How a train or evaluate job's processes start: one process, or one per GPU under torchrun.

With ``resources.gpus`` > 1 or ``resources.nodes`` > 1 the job runs ``python -m gpujob.runner.launch``:
torchrun itself (``torch.distributed.run``, every option the same), with exit codes that mean
what the runner's mean whatever the number of processes (2: the spec or the data is wrong; 143:
stopped by SIGTERM after a checkpoint) and one line that says which rank failed first and why.

Every backend takes its launch line from here, so ``gpujob render`` shows what really runs.
"""

from __future__ import annotations

from dataclasses import dataclass

from gpujob.backends.base import RUNNER_MODULE

LAUNCHER_MODULE = "gpujob.runner.launch"
SPEC = "{spec}"   # stands for the spec file inside the job


GROUP_RESTART_EXIT = 75  # the launcher's exit on several nodes when the group must start again


@dataclass(frozen=True)
class Rendezvous:
    """Multi-node: where torchrun's agents meet (c10d, hosted by worker 0's agent). The group
    restarts through the backend (new pods, fresh agents: see gpujob.runner.launch), never in place."""

    endpoint: str     # host:port of worker 0
    run_id: str       # the same for every node of one job
    local_addr: str | None = None  # this node's name as the others reach it; torchrun numbers nodes in its order


def processes_per_node(gpus: int) -> int:
    """One process per GPU; one on a machine without GPUs."""
    return max(1, gpus)


def distributed(gpus: int, nodes: int = 1) -> bool:
    """Whether the job runs under torchrun (more than one process in all)."""
    return gpus > 1 or nodes > 1


def runner_command(*, gpus: int, nodes: int = 1, rendezvous: Rendezvous | None = None) -> list[str]:
    """argv inside the job for a train/evaluate job; ``{spec}`` stands for the spec file there."""
    if not distributed(gpus, nodes):
        return ["python", "-m", RUNNER_MODULE, SPEC]
    argv = ["python", "-m", LAUNCHER_MODULE]
    if nodes == 1:
        argv += ["--standalone", f"--nproc-per-node={processes_per_node(gpus)}"]
    else:
        if rendezvous is None:
            raise ValueError("a job on several nodes needs a rendezvous")
        argv += [f"--nnodes={nodes}", f"--nproc-per-node={processes_per_node(gpus)}", "--rdzv-backend=c10d",
                 f"--rdzv-endpoint={rendezvous.endpoint}", f"--rdzv-id={rendezvous.run_id}",
                 "--max-restarts=0"]
        if rendezvous.local_addr:
            argv.append(f"--local-addr={rendezvous.local_addr}")
    return [*argv, SPEC]
