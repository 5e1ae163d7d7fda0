"""The ``kind: train`` job: fine-tune Whisper, evaluate as it goes, keep the best.

Reads as numbered steps: device and precision → model → data → optimiser and
schedule → resume → loop (progress every step, eval every ``eval_steps``,
checkpoint every ``save_steps``) → final evaluation, model, metrics, card.

Output layout (``output.dir``)::

    checkpoints/checkpoint-<step>/   model + optimiser + state (last save_total_limit kept)
    model/                           the best model (lowest WER), or the last one without eval data
    metrics.json                     final metrics (and baseline_* with evaluation.before_training)
    predictions.jsonl                per-utterance results of the final evaluation

A job restarted with the same output resumes from the newest complete
checkpoint: same batches, same schedule, no step done twice or skipped.
SIGTERM saves a checkpoint, then exits with 143.
"""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpujob.runner import data as data_mod
from gpujob.runner.batches import batches, features, pad_audio, prefetched
from gpujob.runner.evaluate import (EncoderCache, _autocast, encoder_states, eval_batch_size, evaluate,
                                     summary_lines, write_predictions)
from gpujob.runner.model import freeze, load, pick_device, pick_precision, set_gradient_checkpointing

DONE_MARKER = "complete"


class Stop(Exception):
    """SIGTERM arrived: save and leave."""


def learning_rate(spec: Any, model) -> float:
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


def count_train_examples(spec: Any) -> int:
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


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- checkpoints


def latest_checkpoint(out_dir: Path) -> Path | None:
    found = [p for p in (out_dir / "checkpoints").glob("checkpoint-*") if (p / DONE_MARKER).exists()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def save_checkpoint(out_dir: Path, model, processor, optimizer, scheduler, scaler, state: dict, keep: int) -> Path:
    root = out_dir / "checkpoints"
    final = root / f"checkpoint-{state['step']}"
    tmp = root / f".tmp-checkpoint-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    torch.save({"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                "scaler": scaler.state_dict() if scaler is not None else None,
                "rng": {"python": random.getstate(), "numpy": np.random.get_state(),
                        "torch": torch.get_rng_state()}}, tmp / "training.pt")
    (tmp / "state.json").write_text(json.dumps(state, indent=2))
    (tmp / DONE_MARKER).write_text("ok\n")
    shutil.rmtree(final, ignore_errors=True)
    tmp.rename(final)
    done = sorted((p for p in root.glob("checkpoint-*") if (p / DONE_MARKER).exists()),
                  key=lambda p: int(p.name.split("-")[1]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


# ---------------------------------------------------------------------------- the job


def run(spec: Any, out_dir: Path, writer) -> int:
    t = spec.training
    # 1. device, precision, seed
    device = pick_device()
    precision = pick_precision(t.precision, device)
    seed_all(t.seed)
    out_dir.mkdir(parents=True, exist_ok=True)

    # 2. model
    resume_from = latest_checkpoint(out_dir)
    model, processor = load(spec, device, for_training=True)
    frozen = freeze(model, t.freeze)
    ckpt_on = set_gradient_checkpointing(model, t.gradient_checkpointing, device=device)
    print(f"model {spec.model.checkpoint}: {frozen['trainable'] / 1e6:.1f}M trainable, "
          f"{frozen['frozen'] / 1e6:.1f}M frozen; precision {precision.name}; device {device.type}; "
          f"gradient checkpointing {'on' if ckpt_on else 'off'}", flush=True)

    # 3. data (one code path, streamed or not); evaluation examples are small enough to keep
    world = int(os.environ.get("WORLD_SIZE", "1"))  # one process per GPU under torchrun; 1 here
    per_step = t.per_device_batch_size * t.gradient_accumulation_steps * world
    workers = data_mod.loader_threads(spec.data.loader_workers)
    eval_examples = list(data_mod.iter_examples(spec.data.eval, streaming=spec.data.streaming, seed=t.seed,
                                                key="data.eval", workers=workers)) if spec.data.eval else []
    n_train = None
    if t.epochs is not None:
        n_train = count_train_examples(spec)
        total_steps = max(1, math.ceil(t.epochs * n_train / per_step))
    else:
        total_steps = t.max_steps

    # 4. optimiser and schedule
    lr = learning_rate(spec, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0, fused=device.type == "cuda")
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, total_steps, t.lr_schedule))
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    cache = EncoderCache()

    # 5. resume
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_wer": None, "best_step": None,
             "baseline": None}
    if resume_from is not None:
        from safetensors.torch import load_file

        weights = load_file(resume_from / "model.safetensors")
        model.load_state_dict(weights, strict=False)  # tied proj_out is not stored separately
        blob = torch.load(resume_from / "training.pt", weights_only=False)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        if scaler is not None and blob["scaler"]:
            scaler.load_state_dict(blob["scaler"])
        random.setstate(blob["rng"]["python"])
        np.random.set_state(blob["rng"]["numpy"])
        torch.set_rng_state(blob["rng"]["torch"])
        state = json.loads((resume_from / "state.json").read_text())
        print(f"resuming from {resume_from} (step {state['step']}/{total_steps})", flush=True)

    print(f"data: {workers} loader thread{'s' if workers != 1 else ''} decoding ahead"
          if workers else "data: decoded in the training loop (data.loader_workers: 0)", flush=True)
    writer.start(total_steps=total_steps, kind="train", name=spec.name, epochs=t.epochs)
    print(f"{total_steps} steps of {per_step} examples; learning rate {lr:.3g} ({t.lr_schedule}, "
          f"{t.warmup_steps} warmup)" + (f"; {n_train} training examples" if n_train else ""), flush=True)

    eval_batch = 0

    def run_eval(step: int, label: str = ""):
        nonlocal eval_batch
        # sized each time: what is free changes once the optimiser state exists
        size = eval_batch_size(spec.evaluation.batch_size, model, device, precision,
                               max_length=min(t.generation_max_length, 448))
        if size != eval_batch:
            eval_batch = size
            print(f"evaluation: {len(eval_examples)} utterances in batches of {size}"
                  + (" (evaluation.batch_size: auto)" if spec.evaluation.batch_size == "auto" else ""), flush=True)
        scores = evaluate(model, processor, eval_examples, spec=spec, device=device, precision=precision,
                          cache=cache, writer=writer, batch_size=size)
        metrics = scores.as_metrics(spec.evaluation.metrics)
        writer.eval(step=step, **metrics)
        for line in summary_lines(scores, label)[:1]:
            print(line, flush=True)
        return scores

    stop = {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))

    if eval_examples and spec.evaluation.before_training and state["baseline"] is None:
        baseline = run_eval(0, "before training: ")
        state["baseline"] = baseline.as_metrics(spec.evaluation.metrics)

    # 6. the loop
    model.train()
    step = state["step"]
    skipped: dict[str, int] = {}
    accum, micro, seen, loss_sum = t.gradient_accumulation_steps, 0, 0, 0.0
    t_step = time.perf_counter()

    n_samples = processor.feature_extractor.n_samples

    def pad(batch) -> None:  # on the prefetch thread, while the GPU runs the step before
        batch.padded = pad_audio(batch.audio, n_samples, pin=device.type == "cuda")

    def checkpoint() -> None:
        save_checkpoint(out_dir, model, processor, optimizer, scheduler, scaler, state, t.save_total_limit)
        writer.checkpoint(step=step, path=str(out_dir / "checkpoints" / f"checkpoint-{step}"))

    try:
        while step < total_steps and (t.epochs is None or state["epoch"] < math.ceil(t.epochs)):
            epoch = state["epoch"]
            examples = data_mod.iter_examples(spec.data.train, streaming=spec.data.streaming, seed=t.seed + epoch,
                                              workers=workers, prefetch=2 * t.per_device_batch_size)
            made = batches(examples, processor.tokenizer, batch_size=t.per_device_batch_size, seed=t.seed + epoch,
                           group_by_length=t.group_by_length, skipped=skipped)
            index = -1
            for index, batch in enumerate(prefetched(made, prepare=pad) if workers else made):
                if index < state["batch_in_epoch"]:
                    continue  # done before the restart
                loss = _forward(model, processor, batch, device, precision, cache) / accum
                (scaler.scale(loss) if scaler else loss).backward()
                micro += 1
                seen += len(batch)
                loss_sum += loss.item()
                state["batch_in_epoch"] = index + 1
                if micro < accum:
                    continue
                optimizer_step(optimizer, params, scaler)
                scheduler.step()
                step += 1
                state["step"] = step
                now = time.perf_counter()
                writer.progress(step=step, total_steps=total_steps,
                                epoch=round(step * per_step / n_train, 4) if n_train else epoch,
                                loss=round(loss_sum, 5), learning_rate=scheduler.get_last_lr()[0],
                                samples_per_s=round(seen / max(now - t_step, 1e-9), 2))
                micro, seen, loss_sum, t_step = 0, 0, 0.0, now
                if eval_examples and step % t.eval_steps == 0 and step < total_steps:
                    _after_eval(run_eval(step), state, step, out_dir, model, processor)
                if step % t.save_steps == 0 or stop["asked"]:
                    checkpoint()
                if stop["asked"]:
                    raise Stop()
                if step >= total_steps:
                    break
            else:
                if index < 0:
                    raise data_mod.DataError("data.train: no training examples left after filtering "
                                             "(see the preflight counts above)")
                state["epoch"] += 1
                state["batch_in_epoch"] = 0
                continue
            break
    except Stop:
        print(f"SIGTERM: checkpoint saved at step {step}; resubmit with the same output to resume", flush=True)
        writer.end(status="failed", message=f"stopped by SIGTERM at step {step}; checkpoint saved")
        return 143

    # 7. final evaluation, model, metrics, card
    metrics: dict[str, Any] = {"steps": step}
    if eval_examples:
        scores = run_eval(step, "after training: ")
        _after_eval(scores, state, step, out_dir, model, processor)
        write_predictions(out_dir / "predictions.jsonl", scores)
        metrics.update(scores.as_metrics(spec.evaluation.metrics))
        metrics.update({"best_wer": state["best_wer"], "best_step": state["best_step"]})
        for line in summary_lines(scores, "after training: ")[1:]:
            print(line, flush=True)
    else:
        _save_model(out_dir, model, processor)
    if state.get("baseline"):
        metrics.update({f"baseline_{k}": v for k, v in state["baseline"].items()})
    if skipped:
        metrics["skipped"] = skipped
    if latest_checkpoint(out_dir) != out_dir / "checkpoints" / f"checkpoint-{step}":
        checkpoint()
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from gpujob.runner.card import write_model_card

    write_model_card(out_dir / "model", spec, metrics)
    writer.artifact(path=str(out_dir / "model"), name="model")
    if spec.output.hub_repo:
        from gpujob.runner.card import push_to_hub

        url = push_to_hub(out_dir / "model", spec.output.hub_repo, private=spec.output.private)
        writer.artifact(path=url, name="hub")
    writer.end(status="succeeded", metrics={k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return 0


def optimizer_step(optimizer, params, scaler) -> None:
    """One optimiser step after the backward passes: unscale (fp16), clip the gradient norm at 1.0,
    step (through the loss scaler when there is one), clear the gradients."""
    if scaler:
        scaler.unscale_(optimizer)
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    if scaler:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def _forward(model, processor, batch, device, precision, cache) -> torch.Tensor:
    from transformers.modeling_outputs import BaseModelOutput

    labels = batch.labels.to(device, non_blocking=True)
    audio = batch.padded if batch.padded is not None else batch.audio
    states = encoder_states(model, processor.feature_extractor, audio, batch.ids, device, precision, cache)
    if states is None:
        feats = features(processor.feature_extractor, audio, device)
    with _autocast(device, precision):
        if states is not None:
            out = model(encoder_outputs=BaseModelOutput(last_hidden_state=states), labels=labels, use_cache=False)
        else:
            out = model(input_features=feats, labels=labels, use_cache=False)
    return out.loss.float()


def _after_eval(scores, state: dict, step: int, out_dir: Path, model, processor) -> None:
    wer = scores.wer
    if wer is not None and (state["best_wer"] is None or wer < state["best_wer"]):
        state["best_wer"], state["best_step"] = wer, step
        _save_model(out_dir, model, processor)


def _save_model(out_dir: Path, model, processor) -> None:
    tmp = out_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    shutil.rmtree(out_dir / "model", ignore_errors=True)
    tmp.rename(out_dir / "model")
