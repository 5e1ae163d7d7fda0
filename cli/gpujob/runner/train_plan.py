"""A ``kind: train`` job's plan, settled before its first step: the checkpoint it resumes from (and
whether it may), how many training examples, steps of how many examples cut over processes and
micro-batches, and the learning-rate schedule. The steps themselves are :mod:`gpujob.runner.train`'s.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from gpujob.runner import checkpoint as ckpt
from gpujob.runner import data as data_mod
from gpujob.runner.distributed import Group
from gpujob.runner.steps import micro_steps_for

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


@dataclass(frozen=True)
class Plan:
    """How long the job trains and how one step is cut over processes and micro-batches."""

    workers: int              # decoding threads per process (data.loader_workers)
    n_train: int | None       # training examples, counted under training.epochs
    n_rows: int | None        # rows the fractional epoch is reported by (n_train, or known without counting)
    global_batch: int         # examples per optimiser step, over all processes
    total_steps: int
    micro: int                # micro-batches per step and process
    per_process: int          # examples per micro-batch and process, at most


def learning_rate(spec: JobSpec, model) -> float:
    lr = spec.resolved_learning_rate(getattr(model.config, "d_model", None))
    if lr is None:
        raise ValueError("training.learning_rate: cannot derive a default for this checkpoint; set one "
                         "(rule of thumb: the pre-training rate / 40)")
    return lr


def lr_lambda(warmup: int, total: int, schedule: str):
    def f(step: int) -> float:  # step = optimiser steps done so far
        if warmup and step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * progress))
        return max(0.0, 1.0 - progress)

    return f


def count_train_examples(spec: JobSpec) -> int:
    """Rows in the training sources from their metadata; a counting pass only where none is known."""
    total = 0
    for i, source in enumerate(spec.data.train):
        opened = data_mod.open_source(source, streaming=spec.data.streaming, key=f"data.train[{i}]")
        rows = opened.num_rows
        if rows is None:
            print(f"data.train[{i}]: size unknown; counting its examples once", flush=True)
            rows = sum(1 for _ in opened.records())
        total += rows
    return total


def known_train_rows(spec: JobSpec) -> int | None:
    """Rows in the training sources where their metadata says (no counting pass, nothing streamed);
    None when any is unknown. What a max_steps run reports its fractional epoch by."""
    if spec.data.streaming:
        return None
    total = 0
    for i, source in enumerate(spec.data.train):
        rows = data_mod.open_source(source, streaming=False, key=f"data.train[{i}]").num_rows
        if rows is None:
            return None
        total += rows
    return total


def run_identity(spec: JobSpec) -> dict:
    """What a checkpoint must share with a job for the job to resume from it: the model, the training data
    and what is frozen. Steps, rates and evaluation may change between attempts (to train longer, say)."""
    return {"model.checkpoint": spec.model.checkpoint, "model.language": spec.model.language,
            "data.train": [s.model_dump(mode="json", exclude={"name"}) for s in spec.data.train],
            "training.freeze": spec.training.model_dump(mode="json")["freeze"],
            **({"training.lora": spec.training.lora.model_dump(mode="json", exclude={"merge"})}
               if spec.training.lora is not None else {})}


def different(saved: dict, now: dict) -> str:
    return ", ".join(k for k in now if saved.get(k) != now[k]) or "their settings"


def resume_point(out_dir: Path, group: Group) -> Path | None:
    """The newest complete checkpoint, as the writer sees it; every process must see the same one."""
    found = group.share(str(ckpt.latest(out_dir) or "") if group.is_writer else None)
    path = Path(found) if found else None
    visible = group.gather(path is None or (path / ckpt.DONE_MARKER).exists())
    if not all(visible):
        missing = ", ".join(str(r) for r, ok in enumerate(visible) if not ok)
        raise data_mod.DataError(f"the checkpoint to resume from, {path}, is not visible to process(es) {missing}: "
                                 "every node must see output.dir (shared storage: a ReadWriteMany volume)",
                                 key="output.dir")
    return path


def plan_steps(spec: JobSpec, group: Group, saved: dict | None, state: dict, out_dir: Path) -> Plan:
    """The job's :class:`Plan`. Under ``training.epochs`` the writer counts the training examples (a
    counting pass where no source says); a checkpoint ``saved`` of another run is refused here, and one
    saved before the global batch was recorded (one process) gets it."""
    t = spec.training
    workers = data_mod.loader_threads(spec.data.loader_workers)
    n_train = group.share(count_train_examples(spec) if group.is_writer else None) if t.epochs is not None else None
    # the epoch reported as a fraction, as Hugging Face's Trainer does (0.37 through the first), also
    # under max_steps where the size is known without a counting pass
    n_rows = n_train if t.epochs is not None else group.share(known_train_rows(spec) if group.is_writer else None)
    if saved is not None and saved.get("run", state["run"]) != state["run"]:
        raise data_mod.DataError(
            f"{out_dir} holds checkpoints of another run ({different(saved['run'], state['run'])} differ), so this "
            "job cannot resume from them: give it an output.dir of its own, or delete "
            f"{out_dir / 'checkpoints'} to start over", key="output.dir")
    if saved is not None and "global_batch" not in saved:  # saved before the global batch was: one process
        saved["global_batch"] = t.per_device_batch_size * t.gradient_accumulation_steps
        saved["batch_in_epoch"] //= t.gradient_accumulation_steps
    global_batch = saved["global_batch"] if saved is not None else state["global_batch"]
    total_steps = max(1, math.ceil(t.epochs * n_train / global_batch)) if n_train is not None else t.max_steps
    micro = micro_steps_for(global_batch, t.per_device_batch_size, group.world)
    per_process = math.ceil(global_batch / (group.world * micro))
    return Plan(workers=workers, n_train=n_train, n_rows=n_rows, global_batch=global_batch,
                total_steps=total_steps, micro=micro, per_process=per_process)
