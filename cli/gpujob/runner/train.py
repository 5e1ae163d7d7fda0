"""The ``kind: train`` job: fine-tune Whisper, evaluate as it goes, keep the best.

Reads as numbered steps: processes, device and precision → model → data → optimiser and
schedule → resume → loop (progress every step, eval every ``eval_steps``, checkpoint every
``save_steps``) → final evaluation, model, metrics, card.

One process or one per GPU under torchrun (data-parallel, DDP), with the same result:

- A step's **global batch** is ``per_device_batch_size × gradient_accumulation_steps × processes``
  examples, the same ones whatever the layout (:mod:`.steps`); each process decodes only its share.
- The **loss** of a step is the sum of the per-token losses of every label token in the global
  batch, divided by their number: each micro-batch's summed loss is scaled by
  ``processes / global tokens`` before its backward pass (DDP averages the gradients over the
  processes), so 1 process × batch 8, 2 × 4, 1 × 4 × accumulation 2 and 2 × 2 × 2 take the same
  step. The token count is summed over processes on the CPU (gloo) before the backward passes, so
  no GPU sync is needed for it; the loss shown is read from the device once per optimizer step.
- One process, the writer, writes events, checkpoints and outputs (:mod:`.distributed`).

Output layout (``output.dir``)::

    checkpoints/checkpoint-<step>/   model + optimiser + state (last save_total_limit kept)
    model/                           the best model (lowest WER), or the last one without eval data
    metrics.json                     final metrics (and baseline_* with evaluation.before_training;
                                     ``sources``: {name: {wer, cer, utterances}} with several eval sources)
    predictions.jsonl                per-utterance results of the final evaluation

A job restarted with the same output resumes from the newest complete checkpoint, on any number
of processes: same global batches, same schedule, no step done twice or skipped. SIGTERM (to
any process) saves one checkpoint; every process then exits with 143.
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gpujob.runner import checkpoint as ckpt
from gpujob.runner import data as data_mod
from gpujob.runner import sysmetrics, update, worst_audio
from gpujob.runner.augment import Augmenter, augment_summary
from gpujob.runner.batches import pad_audio, prefetched
from gpujob.runner.card import base_model_id
from gpujob.runner.card_curves import Recorder
from gpujob.runner.distributed import Group
from gpujob.runner.evaluate import EncoderCache, eval_batch_size, evaluate, summary_lines, write_predictions
from gpujob.runner.metrics import worst
from gpujob.runner.tracking import log_worst
from gpujob.runner.model import cpu_bf16_note, freeze, job_precision, load, set_gradient_checkpointing
from gpujob.runner.steps import OUTCOMES, micro_steps_for, steps

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


class Stop(Exception):
    """SIGTERM arrived (at any process): save and leave."""


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


def train_cache_for(cache: EncoderCache, augmenter, spec_augment: bool = False) -> EncoderCache | None:
    """The encoder cache training may use. It assumes the same input every epoch, so augmented training
    clips bypass it (a frozen encoder, or frozen prefix, runs on them every step), and so does SpecAugment's
    masking of the features; evaluation clips, never augmented, still use it."""
    return None if spec_augment or augmenter is not None and augmenter.active else cache


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


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------- the job


def run(spec: JobSpec, out_dir: Path, writer, group: Group | None = None) -> int:
    t = spec.training
    # 1. processes, device, precision, seed
    group = group or Group()
    device = group.device
    seed_all(t.seed)
    if group.is_writer:
        out_dir.mkdir(parents=True, exist_ok=True)

    # 2. model (the checkpoint to resume from is chosen once, by the writer)
    resume_from = _resume_point(out_dir, group)
    model, processor = load(spec, device, for_training=True)
    saved = json.loads((resume_from / "state.json").read_text()) if resume_from is not None else None
    precision = job_precision(t.precision, device, model.config, group, saved)  # auto on a CPU: measured here
    writer = Recorder(writer)  # keeps the curves for the model card
    if (base := base_model_id(spec.model.checkpoint)) is not None:
        model.config.gpujob_base_model = base  # saved with every checkpoint: the card's base_model
    frozen = freeze(model, t.freeze)
    if t.lora is not None:
        from gpujob.runner import lora

        frozen = lora.apply(model, t.lora, t.freeze, base or spec.model.checkpoint)
    ckpt_on = set_gradient_checkpointing(model, t.gradient_checkpointing, device=device)
    print(f"model {spec.model.checkpoint}: {frozen['trainable'] / 1e6:.1f}M trainable, "
          f"{frozen['frozen'] / 1e6:.1f}M frozen" + (f" (LoRA r {t.lora.r}, {frozen['trainable'] / (frozen['trainable'] + frozen['frozen']):.2%} "
          "of the weights train)" if t.lora is not None else "") + f"; precision {precision.name}; device {device.type}; "
          f"gradient checkpointing {'on' if ckpt_on else 'off'}" + cpu_bf16_note(precision, device, model.config), flush=True)
    if t.lora is not None:
        print(lora.memory_line(model, device), flush=True)

    # 3. optimiser and schedule; resume
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_wer": None, "best_step": None, "baseline": None,
             "evals_since_best": 0, "run": run_identity(spec), "precision": precision.name,
             "global_batch": t.per_device_batch_size * t.gradient_accumulation_steps * group.world}
    lr = learning_rate(spec, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
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
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, total_steps, t.lr_schedule))
    if saved is not None:
        ckpt.restore(resume_from, model, optimizer, scheduler, scaler)
        state.update(saved)
        print(f"resuming from {resume_from} (step {state['step']}/{total_steps})", flush=True)
    micro = micro_steps_for(global_batch, t.per_device_batch_size, group.world)
    per_process = math.ceil(global_batch / (group.world * micro))
    ddp = update.wrap(model, group)

    # 4. data: evaluation examples decoded once, each process its share
    eval_examples = list(data_mod.iter_examples(spec.data.eval, streaming=spec.data.streaming, seed=t.seed,
                                                key="data.eval", workers=workers,
                                                shard=(group.rank, group.world))) if spec.data.eval else []
    n_eval = group.sum_ints([len(eval_examples)])[0]  # a process's share can be empty: decide on the total
    print(f"data: {workers} loader thread{'s' if workers != 1 else ''} decoding ahead"
          if workers else "data: decoded in the training loop (data.loader_workers: 0)", flush=True)
    writer.start(total_steps=total_steps, kind="train", name=spec.name, epochs=t.epochs)
    layout = (f"{group.world} process{'es' if group.many else ''} × {micro} micro-batch{'es' if micro != 1 else ''} "
              f"of ≤{per_process}" if group.many or micro != t.gradient_accumulation_steps else None)
    print(f"{total_steps} steps of {global_batch} examples" + (f" ({layout})" if layout else "")
          + f"; learning rate {lr:.3g} ({t.lr_schedule}, {t.warmup_steps} warmup)"
          + (f"; {n_train} training examples" if n_train else ""), flush=True)

    cache = EncoderCache()
    augmenter = Augmenter(t.augment) if t.augment.waveform else None
    train_cache = train_cache_for(cache, augmenter, t.augment.spec_augment is not None)
    if augmenter is not None or t.augment.spec_augment is not None:
        print("augmentation: " + augment_summary(t.augment)
              + ("; frozen encoder run on every augmented clip (not cached)" if t.freeze == "encoder" and augmenter
                 else ""), flush=True)
    eval_batch = 0

    def run_eval(step: int, label: str = ""):
        nonlocal eval_batch
        # sized each time: what is free changes once the optimiser state exists
        size = eval_batch_size(spec.evaluation.batch_size, model, device, precision,
                               max_length=min(t.generation_max_length, 448))
        if size != eval_batch:
            eval_batch = size
            print(f"evaluation: {n_eval} utterances in batches of {size}"
                  + (f" on each of {group.world} processes" if group.many else "")
                  + (" (evaluation.batch_size: auto)" if spec.evaluation.batch_size == "auto" else ""), flush=True)
        scores = evaluate(model, processor, eval_examples, spec=spec, device=device, precision=precision,
                          cache=cache, writer=writer, batch_size=size, group=group)
        writer.eval(step=step, **scores.event_metrics(spec.evaluation.metrics))
        for line in summary_lines(scores, label)[:1]:
            print(line, flush=True)
        return scores

    stop = {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))

    if n_eval and spec.evaluation.before_training and state["baseline"] is None:
        baseline = run_eval(0, "before training: ")
        state["baseline"] = baseline.as_metrics(spec.evaluation.metrics)

    # 5. the loop
    ddp.train()
    step = state["step"]
    skipped: dict[str, int] = {}
    labels = data_mod.source_labels(spec.data.train)
    seen = data_mod.Stats()  # kept / too long / undecodable, summed over processes, for the 5 % rule
    n_samples = processor.feature_extractor.n_samples
    filler = update.silence(processor)
    t_step = time.perf_counter()

    def pad(item) -> None:  # on the prefetch thread, while the GPU runs the step before
        for batch in item.micro:
            batch.padded = pad_audio(batch.audio, n_samples, pin=device.type == "cuda") if len(batch) else None

    saved_at = step if resume_from is not None else None  # the step of the newest checkpoint

    def save() -> None:
        nonlocal saved_at
        if group.is_writer:
            ckpt.save(out_dir, model, processor, optimizer, scheduler, scaler, state, t.save_total_limit)
            writer.checkpoint(step=step, path=str(out_dir / "checkpoints" / f"checkpoint-{step}"))
        group.barrier()  # no process leaves (or is stopped) while the writer is still writing
        saved_at = step

    try:
        while step < total_steps and not state.get("stopped_early") and (t.epochs is None or state["epoch"] < math.ceil(t.epochs)):
            epoch = state["epoch"]
            whole_epoch, stepped = state["batch_in_epoch"] == 0, False
            clips = data_mod.iter_clips(spec.data.train, streaming=spec.data.streaming, seed=t.seed + epoch)
            with data_mod.decoding_pool(workers, "gpujob-decode") as pool, contextlib.closing(steps(
                    clips, processor.tokenizer, global_batch=global_batch, micro_steps=micro, rank=group.rank,
                    world=group.world, seed=t.seed + epoch, group_by_length=t.group_by_length, labels=labels,
                    skipped=skipped if group.is_writer else None, start=state["batch_in_epoch"], pool=pool,
                    window=max(2 * per_process * micro, 4 * workers), augment=augmenter)) as made, \
                    contextlib.closing(prefetched(made, prepare=pad) if workers else made) as stream:
                for item in sysmetrics.timed(stream, sysmetrics.active()):
                    counts = group.sum_ints([*item.counts, int(stop["asked"])])
                    if counts[-1]:  # some process was told to stop: all of them stop here, after one checkpoint
                        if saved_at != step:
                            save()
                        raise Stop()
                    _account(seen, labels, counts, item, group)
                    state["batch_in_epoch"] = item.index + 1
                    tokens, examples = counts[0], counts[1]
                    if not tokens:
                        continue  # every clip of this global batch dropped out
                    total = update.backward(ddp, model, processor, item.micro, tokens, group, device, precision,
                                            train_cache, filler, scaler)
                    update.optimizer_step(optimizer, params, scaler)
                    scheduler.step()
                    step, stepped = step + 1, True
                    state["step"] = step
                    if (sampler := sysmetrics.active()) is not None:
                        sampler.step = step
                    loss = group.all_reduce_(total)
                    now = time.perf_counter()
                    if group.is_writer:
                        writer.progress(step=step, total_steps=total_steps,
                                        epoch=round(step * global_batch / n_rows, 4) if n_rows else epoch,
                                        loss=float(f"{loss.item() / tokens:.7g}"), learning_rate=scheduler.get_last_lr()[0],
                                        samples_per_s=round(examples / max(now - t_step, 1e-9), 2))
                    t_step = now
                    if n_eval and step % t.eval_steps == 0 and step < total_steps:
                        _after_eval(run_eval(step), state, step, out_dir, model, processor, group)
                        if t.early_stopping_patience and state["evals_since_best"] >= t.early_stopping_patience:
                            print(f"early stopping at step {step}: {state['evals_since_best']} evaluations without "
                                  f"a lower WER than {state['best_wer']:.4f} (step {state['best_step']})", flush=True)
                            state["stopped_early"] = step
                            break
                    if step % t.save_steps == 0:
                        save()
                    if step >= total_steps:
                        break
            if step >= total_steps or state.get("stopped_early"):
                break
            if whole_epoch and not stepped:
                raise data_mod.DataError("data.train: no training examples left after filtering "
                                         "(see the preflight counts above)")
            _account(seen, labels, None, None, group, final=True)
            state["epoch"] += 1
            state["batch_in_epoch"] = 0
    except Stop:
        print(f"SIGTERM: checkpoint saved at step {step}; resubmit with the same output to resume", flush=True)
        writer.end(status="failed", message=f"stopped by SIGTERM at step {step}; checkpoint saved")
        return 143

    if cache.encoded:  # what caching the frozen encoder cost, for the stage times (make bench)
        print(f"frozen encoder: {cache.encoded} clips encoded once, in {cache.seconds:.1f} s", flush=True)

    # 6. final evaluation, model, metrics, card
    metrics: dict[str, Any] = {"steps": step}
    scores = run_eval(step, "after training: ") if n_eval else None
    if scores is not None:
        _after_eval(scores, state, step, out_dir, model, processor, group)
    if not group.is_writer:
        return 0
    if scores is not None:
        write_predictions(out_dir / "predictions.jsonl", scores)
        worst_audio.save(out_dir, scores, eval_examples)  # their clips, to listen to (the dashboard plays them)
        metrics.update(scores.as_metrics(spec.evaluation.metrics))
        if scores.loss is not None:
            metrics["eval_loss"] = float(f"{scores.loss:.7g}")
        metrics.update({"best_wer": state["best_wer"], "best_step": state["best_step"]})
        if state.get("stopped_early"):
            metrics["stopped_early_at"] = state["stopped_early"]
        if scores.sources:
            metrics["sources"] = scores.sources_metrics(spec.evaluation.metrics)
        for line in summary_lines(scores, "after training: ")[1:]:
            print(line, flush=True)
    else:
        ckpt.save_model(out_dir, model, processor)
    if state.get("baseline"):
        metrics.update({f"baseline_{k}": v for k, v in state["baseline"].items()})
    dropped = {**skipped, **{k: v for k, v in (("audio_too_long", seen.too_long), ("bad_audio", seen.bad_audio)) if v}}
    if dropped:
        metrics["skipped"] = dropped
    if saved_at != step:
        ckpt.save(out_dir, model, processor, optimizer, scheduler, scaler, state, t.save_total_limit)
        writer.checkpoint(step=step, path=str(out_dir / "checkpoints" / f"checkpoint-{step}"))
    export_problem = None
    if spec.output.export and scores is not None:
        from gpujob.runner.export import after_training

        export_problem = after_training(spec, out_dir, writer, metrics, eval_examples, group, workers, eval_batch)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    from gpujob.runner.card import write_model_card

    write_model_card(out_dir / "model", spec, metrics, worst_rows=worst(scores, 5) if scores is not None else None,
                     history=writer.history)
    writer.artifact(path=str(out_dir / "model"), name="model")
    if spec.output.hub_repo and not export_problem:
        from gpujob.runner.card import push_to_hub

        url = push_to_hub(out_dir / "model", spec.output.hub_repo, private=spec.output.private,
                          extra={"ctranslate2": out_dir / "model-ct2"} if metrics.get("export") else None)
        writer.artifact(path=url, name="hub")
    if scores is not None:
        log_worst(writer, worst(scores, 20))
    ended = {k: v for k, v in metrics.items() if not isinstance(v, dict)}
    ct2 = metrics.get("export", {}).get("ctranslate2", {})
    ended.update({name: ct2[k] for name, k in (("ct2_wer", "wer"), ("ct2_cer", "cer"), ("ct2_utterances_per_s",
                  "utterances_per_s"), ("hf_utterances_per_s", "transformers_utterances_per_s")) if k in ct2})
    if export_problem:
        print(export_problem, flush=True)
        writer.end(status="failed", message=export_problem, metrics=ended)
        return 1
    writer.end(status="succeeded", metrics=ended)
    return 0


def _resume_point(out_dir: Path, group: Group) -> Path | None:
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


def _account(seen: data_mod.Stats, labels: list[str], counts: list[int] | None, item, group: Group,
             *, final: bool = False) -> None:
    """Add a step's clip counts (summed over processes) to ``seen``; too many undecodable clips of a
    source raise DataError on every process at once."""
    if counts is not None:
        for i, label in enumerate(labels):
            for j, outcome in enumerate(OUTCOMES):
                n = counts[2 + len(OUTCOMES) * i + j]
                for target in (seen, seen.source(label)):
                    setattr(target, outcome, getattr(target, outcome) + n)
    for i, label in enumerate(labels):
        per = seen.source(label)
        try:
            data_mod.check_bad(per, f"data.train[{i}]", 0.05, final=final)
        except data_mod.DataError:
            paths = [p for share in group.gather(item.bad_paths if item is not None else []) for p in share]
            per.bad_paths = paths[:data_mod.MAX_BAD_PATHS_KEPT]
            data_mod.check_bad(per, f"data.train[{i}]", 0.05, final=final)


def _after_eval(scores, state: dict, step: int, out_dir: Path, model, processor, group: Group) -> None:
    wer = scores.wer
    if wer is not None and (state["best_wer"] is None or wer < state["best_wer"]):
        state["best_wer"], state["best_step"], state["evals_since_best"] = wer, step, 0
        if group.is_writer:
            ckpt.save_model(out_dir, model, processor)
    elif wer is not None:
        state["evals_since_best"] = state.get("evals_since_best", 0) + 1
