"""``python -m gpujob.runner.launch [torchrun options] SPEC``: the runner on several processes.

This is torchrun (``torch.distributed.run``, the same options) running ``-m gpujob.runner SPEC``
once per GPU, with two things added so that a job means the same with one process or many:

- **exit codes**: 2 when the rank that failed first exited 2 (the spec or the data is wrong, so
  a retry cannot help: Kubernetes fails the Job at once on it); 143 when the ranks stopped after
  a SIGTERM checkpoint (torchrun itself would end with 1 and a traceback); a rank killed by a
  signal gives 128 + the signal; otherwise the first failed rank's own code.
- **one line that says which rank failed first and why**, for ``gpujob status``::

      gpujob: rank 1 of 2 failed first: exited with code 1: RuntimeError: boom

When one rank fails, torchrun stops the others (SIGTERM, then SIGKILL after 30 s), so no rank is
left waiting in a collective.

On several nodes, a node whose processes stopped because another node's were told to (every rank
saves one checkpoint first), or whose agent could not meet the others (worker 0's rendezvous
store gone, or not up yet), exits 75: the Job's failure policy counts it towards the restarts
(``distributed.restarts``) and Kubernetes starts the pod again, so a preempted worker restarts the
whole group, from the checkpoint, on fresh agents. torchrun's own in-place restarts stay off: on
torch 2.x an agent that replaces a lost node waits forever for the surviving rank 0's address.
"""

from __future__ import annotations

import os
import signal
import sys

from gpujob.exits import explain_exit
from gpujob.runner.distributed import LOST

SIGTERM_EXIT = 128 + signal.SIGTERM
GROUP_RESTART_EXIT = 75  # several nodes: this node stopped for the group to start again (EX_TEMPFAIL)
RUNNER = "gpujob.runner"


def _message(failure) -> str | None:
    message = failure.message
    if isinstance(message, dict):
        message = message.get("message")
    if not isinstance(message, str) or message.startswith(("To enable traceback", "Signal ")):
        return None
    return message.strip().splitlines()[-1][:300] if message.strip() else None


def first_failure(failures: dict) -> tuple[int, object]:
    """The rank that failed first and its ProcessFailure: the earliest, except that a rank which
    only lost the others (a collective broke under it) gives way to one that failed on its own at
    about the same time (the times are whole seconds). A rank that lost the others well before
    any other failed is the first: the others hung, and torchrun stopped them later."""
    ranked = sorted(failures.items(), key=lambda item: (item[1].timestamp, item[0]))
    rank, failure = ranked[0]
    if LOST in (_message(failure) or ""):
        own = [(r, f) for r, f in ranked if LOST not in (_message(f) or "") and f.timestamp <= failure.timestamp + 1]
        if own:
            return own[0]
    return rank, failure


def exit_code(failures: dict) -> int:
    """The launcher's exit code for torchrun's failed ranks ({rank: ProcessFailure})."""
    codes = [f.exitcode for f in failures.values()]
    first = first_failure(failures)[1].exitcode
    if first == 2 or 2 in codes and all(c in (2, SIGTERM_EXIT, -signal.SIGTERM) for c in codes):
        return 2
    if all(c in (SIGTERM_EXIT, -signal.SIGTERM) for c in codes):
        return SIGTERM_EXIT
    return 128 - first if first < 0 else first


def describe(failures: dict, world: int) -> str:
    rank, failure = first_failure(failures)
    code = 128 - failure.exitcode if failure.exitcode < 0 else failure.exitcode
    message = _message(failure)
    if message and "OutOfMemoryError" in message:
        return f"gpujob: rank {rank} of {world} failed first: ran out of GPU memory: {message}"
    return f"gpujob: rank {rank} of {world} failed first: {explain_exit(code, message)}"


def main(argv: list[str]) -> int:
    if not argv or argv[-1].startswith("-"):
        print("usage: python -m gpujob.runner.launch [torchrun options] SPEC", file=sys.stderr)
        return 2
    import torch.distributed as dist
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.elastic.rendezvous.api import RendezvousError
    from torch.distributed.run import parse_args, run

    args = parse_args([*argv[:-1], "-m", RUNNER, argv[-1]])
    host_the_store(args)
    nodes = _nodes(args)
    try:
        run(args)
    except ChildFailedError as exc:
        code = exit_code(exc.failures)
        if code == SIGTERM_EXIT and nodes > 1:
            # this node was not told to stop, so another node's ranks were (a preemption): all saved the
            # checkpoint; the group starts again, from it, on a new generation of pods
            print(f"gpujob: this node's processes stopped because another node's were told to; exit "
                  f"{GROUP_RESTART_EXIT}: the group restarts from the last checkpoint", file=sys.stderr, flush=True)
            return GROUP_RESTART_EXIT
        if code == SIGTERM_EXIT:
            print("gpujob: every process stopped on SIGTERM (exit 143)", file=sys.stderr, flush=True)
        else:
            print(describe(exc.failures, _world(args, len(exc.failures))), file=sys.stderr, flush=True)
        return code
    except SignalException as exc:  # torchrun was told to stop; it has stopped the ranks
        return 128 + int(exc.sigval)
    except (RendezvousError, dist.DistStoreError) as exc:
        if nodes <= 1:
            raise
        # the nodes did not meet (worker 0's store is gone or not up yet: a group restarting)
        print(f"gpujob: the rendezvous at {args.rdzv_endpoint} failed ({type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]}); exit {GROUP_RESTART_EXIT}: try again", file=sys.stderr, flush=True)
        return GROUP_RESTART_EXIT
    return 0


def host_the_store(args) -> None:
    """Several nodes, c10d: node 0 (``GPUJOB_NODE_INDEX``, set by the kubernetes backend) hosts the
    rendezvous store and the others connect to it. torchrun would guess from host names and
    addresses, and any guess that is not node 0 alone (no host, or two on one machine) hangs or
    breaks the group."""
    index = os.environ.get("GPUJOB_NODE_INDEX")
    if index is None or args.standalone or args.rdzv_backend != "c10d" or "is_host" in (args.rdzv_conf or ""):
        return
    flag = f"is_host={'true' if index.strip() == '0' else 'false'}"
    args.rdzv_conf = f"{args.rdzv_conf},{flag}" if args.rdzv_conf else flag


def _nodes(args) -> int:
    try:
        return int(str(args.nnodes).split(":")[-1])
    except (TypeError, ValueError):
        return 1


def _world(args, fallback: int) -> int:
    try:
        return _nodes(args) * int(args.nproc_per_node)
    except (TypeError, ValueError):
        return fallback


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
