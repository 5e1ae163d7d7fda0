"""The ``kind: train`` job: fine-tune Whisper, evaluate as it goes, keep the best.

:func:`run` reads as numbered steps, each a named function: processes, device and precision → model
→ optimiser, plan and schedule → resume → evaluation data and augmentation (those in
:mod:`.train_setup` and :mod:`.train_plan`) → the loop (:func:`_train`: progress every step, eval every
``eval_steps``, checkpoint every ``save_steps``) → final evaluation, model, metrics, card
(:func:`_finish`, :func:`_hand_over`).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from gpujob.runner import checkpoint as ckpt
from gpujob.runner import data as data_mod
from gpujob.runner import sysmetrics, update, worst_audio
from gpujob.runner.augment import Augmenter
from gpujob.runner.batches import pad_audio, prefetched
from gpujob.runner.card_curves import Recorder
from gpujob.runner.distributed import Group
from gpujob.runner.evaluate import EncoderCache, summary_lines, write_predictions
from gpujob.runner.metrics import worst
from gpujob.runner.tracking import log_worst
from gpujob.runner.model import Precision
from gpujob.runner.steps import OUTCOMES, steps
from gpujob.runner.train_plan import Plan, lr_lambda, plan_steps, resume_point, run_identity
from gpujob.runner.train_setup import Evaluator, announce, setup_augment, setup_model, setup_optimizer

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


class Stop(Exception):
    """SIGTERM arrived (at any process): save and leave."""


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
    resume_from = resume_point(out_dir, group)
    model, processor, saved, precision = setup_model(spec, group, resume_from)
    writer = Recorder(writer)  # keeps the curves for the model card

    # 3. optimiser and schedule; resume
    state = {"step": 0, "epoch": 0, "batch_in_epoch": 0, "best_wer": None, "best_step": None, "baseline": None,
             "evals_since_best": 0, "run": run_identity(spec), "precision": precision.name,
             "global_batch": t.per_device_batch_size * t.gradient_accumulation_steps * group.world}
    lr, params, optimizer, scaler = setup_optimizer(spec, model, device, precision)
    plan = plan_steps(spec, group, saved, state, out_dir)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(t.warmup_steps, plan.total_steps, t.lr_schedule))
    if saved is not None:
        ckpt.restore(resume_from, model, optimizer, scheduler, scaler)
        state.update(saved)
        print(f"resuming from {resume_from} (step {state['step']}/{plan.total_steps})", flush=True)
    ddp = update.wrap(model, group)

    # 4. data: evaluation examples decoded once, each process its share
    evaluator = Evaluator(spec, model, processor, precision, writer, group, plan.workers)
    announce(spec, plan, lr, writer, group)
    augmenter, train_cache = setup_augment(spec, evaluator.cache)

    stop = {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))

    if evaluator.n and spec.evaluation.before_training and state["baseline"] is None:
        baseline = evaluator(0, "before training: ")
        state["baseline"] = baseline.as_metrics(spec.evaluation.metrics)

    # 5. the loop
    r = _Run(spec=spec, out_dir=out_dir, writer=writer, group=group, model=model, processor=processor,
             precision=precision, optimizer=optimizer, params=params, scheduler=scheduler, scaler=scaler, ddp=ddp,
             state=state, plan=plan, evaluator=evaluator, augmenter=augmenter, train_cache=train_cache, stop=stop,
             step=state["step"], saved_at=state["step"] if resume_from is not None else None)
    try:
        _train(r)
    except Stop:
        print(f"SIGTERM: checkpoint saved at step {r.step}; resubmit with the same output to resume", flush=True)
        writer.end(status="failed", message=f"stopped by SIGTERM at step {r.step}; checkpoint saved")
        return 143

    if evaluator.cache.encoded:  # what caching the frozen encoder cost, for the stage times (make bench)
        print(f"frozen encoder: {evaluator.cache.encoded} clips encoded once, in {evaluator.cache.seconds:.1f} s",
              flush=True)

    # 6. final evaluation, model, metrics, card
    return _finish(r)


# ---------------------------------------------------------------------------- step 5: the loop


@dataclass
class _Run:
    """What steps 1 to 4 set up, and the loop's counters: what the loop and the end work with."""

    spec: JobSpec
    out_dir: Path
    writer: Recorder
    group: Group
    model: Any
    processor: Any
    precision: Precision
    optimizer: torch.optim.Optimizer
    params: list
    scheduler: Any
    scaler: Any
    ddp: Any
    state: dict
    plan: Plan
    evaluator: Evaluator
    augmenter: Augmenter | None
    train_cache: EncoderCache | None
    stop: dict                      # {"asked": True} once SIGTERM arrived at this process
    step: int = 0
    saved_at: int | None = None     # the step of the newest checkpoint
    t_step: float = 0.0             # when the step before ended (examples per second)
    skipped: dict[str, int] = field(default_factory=dict)
    # kept / too long / undecodable, summed over processes, for the 5 % rule
    seen: data_mod.Stats = field(default_factory=data_mod.Stats)


def _train(r: _Run) -> None:
    """Epochs of steps until ``total_steps``, the last epoch or early stopping. SIGTERM at any process:
    one checkpoint, then :class:`Stop` on every process."""
    spec, t, group, state = r.spec, r.spec.training, r.group, r.state
    r.ddp.train()
    labels = data_mod.source_labels(spec.data.train)
    n_samples = r.processor.feature_extractor.n_samples
    filler = update.silence(r.processor)
    r.t_step = time.perf_counter()

    def pad(item) -> None:  # on the prefetch thread, while the GPU runs the step before
        for batch in item.micro:
            batch.padded = pad_audio(batch.audio, n_samples, pin=group.device.type == "cuda") if len(batch) else None

    while r.step < r.plan.total_steps and not state.get("stopped_early") and (t.epochs is None or state["epoch"] < math.ceil(t.epochs)):
        whole_epoch = state["batch_in_epoch"] == 0
        stepped = _train_epoch(r, labels, pad, filler)
        if r.step >= r.plan.total_steps or state.get("stopped_early"):
            break
        if whole_epoch and not stepped:
            raise data_mod.DataError("data.train: no training examples left after filtering "
                                     "(see the preflight counts above)")
        _account(r.seen, labels, None, None, group, final=True)
        state["epoch"] += 1
        state["batch_in_epoch"] = 0


def _train_epoch(r: _Run, labels: list[str], pad, filler) -> bool:
    """The rest of the epoch ``state["epoch"]``, from ``state["batch_in_epoch"]``; whether a step was taken."""
    spec, t, group, state, plan = r.spec, r.spec.training, r.group, r.state, r.plan
    epoch, workers = state["epoch"], plan.workers
    stepped = False
    clips = data_mod.iter_clips(spec.data.train, streaming=spec.data.streaming, seed=t.seed + epoch)
    with data_mod.decoding_pool(workers, "gpujob-decode") as pool, contextlib.closing(steps(
            clips, r.processor.tokenizer, global_batch=plan.global_batch, micro_steps=plan.micro, rank=group.rank,
            world=group.world, seed=t.seed + epoch, group_by_length=t.group_by_length, labels=labels,
            skipped=r.skipped if group.is_writer else None, start=state["batch_in_epoch"], pool=pool,
            window=max(2 * plan.per_process * plan.micro, 4 * workers), augment=r.augmenter)) as made, \
            contextlib.closing(prefetched(made, prepare=pad) if workers else made) as stream:
        for item in sysmetrics.timed(stream, sysmetrics.active()):
            counts = group.sum_ints([*item.counts, int(r.stop["asked"])])
            if counts[-1]:  # some process was told to stop: all of them stop here, after one checkpoint
                if r.saved_at != r.step:
                    _save(r)
                raise Stop()
            _account(r.seen, labels, counts, item, group)
            state["batch_in_epoch"] = item.index + 1
            tokens, examples = counts[0], counts[1]
            if not tokens:
                continue  # every clip of this global batch dropped out
            _take_step(r, item, tokens, examples, filler)
            stepped = True
            if _evaluate_now(r):
                break  # early stopping
            if r.step % t.save_steps == 0:
                _save(r)
            if r.step >= plan.total_steps:
                break
    return stepped


def _take_step(r: _Run, item, tokens: int, examples: int, filler) -> None:
    """One optimiser step on a global batch of ``tokens`` label tokens; its progress event."""
    group = r.group
    total = update.backward(r.ddp, r.model, r.processor, item.micro, tokens, group, group.device, r.precision,
                            r.train_cache, filler, r.scaler)
    update.optimizer_step(r.optimizer, r.params, r.scaler)
    r.scheduler.step()
    r.step += 1
    step = r.state["step"] = r.step
    if (sampler := sysmetrics.active()) is not None:
        sampler.step = step
    loss = group.all_reduce_(total)
    now = time.perf_counter()
    if group.is_writer:
        n_rows = r.plan.n_rows
        r.writer.progress(step=step, total_steps=r.plan.total_steps,
                          epoch=round(step * r.plan.global_batch / n_rows, 4) if n_rows else r.state["epoch"],
                          loss=float(f"{loss.item() / tokens:.7g}"), learning_rate=r.scheduler.get_last_lr()[0],
                          samples_per_s=round(examples / max(now - r.t_step, 1e-9), 2))
    r.t_step = now


def _evaluate_now(r: _Run) -> bool:
    """Evaluate every ``eval_steps`` (not at the last step: the end does); True when early stopping ends
    training here."""
    t, state, step = r.spec.training, r.state, r.step
    if r.evaluator.n and step % t.eval_steps == 0 and step < r.plan.total_steps:
        _after_eval(r.evaluator(step), state, step, r.out_dir, r.model, r.processor, r.group)
        if t.early_stopping_patience and state["evals_since_best"] >= t.early_stopping_patience:
            print(f"early stopping at step {step}: {state['evals_since_best']} evaluations without "
                  f"a lower WER than {state['best_wer']:.4f} (step {state['best_step']})", flush=True)
            state["stopped_early"] = step
            return True
    return False


def _save(r: _Run) -> None:
    """A checkpoint of the step, written by the writer; every process waits for it."""
    if r.group.is_writer:
        ckpt.save(r.out_dir, r.model, r.processor, r.optimizer, r.scheduler, r.scaler, r.state,
                  r.spec.training.save_total_limit)
        r.writer.checkpoint(step=r.step, path=str(r.out_dir / "checkpoints" / f"checkpoint-{r.step}"))
    r.group.barrier()  # no process leaves (or is stopped) while the writer is still writing
    r.saved_at = r.step


# ---------------------------------------------------------------------------- step 6: the end


def _finish(r: _Run) -> int:
    """The final evaluation (every process), then, by the writer, the best model, predictions, metrics and
    a last checkpoint; :func:`_hand_over` does the rest."""
    spec, out_dir, state, step, group = r.spec, r.out_dir, r.state, r.step, r.group
    metrics: dict[str, Any] = {"steps": step}
    scores = r.evaluator(step, "after training: ") if r.evaluator.n else None
    if scores is not None:
        _after_eval(scores, state, step, out_dir, r.model, r.processor, group)
    if not group.is_writer:
        return 0
    if scores is not None:
        write_predictions(out_dir / "predictions.jsonl", scores)
        worst_audio.save(out_dir, scores, r.evaluator.examples)  # their clips, to listen to (the dashboard plays them)
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
        ckpt.save_model(out_dir, r.model, r.processor)
    if state.get("baseline"):
        metrics.update({f"baseline_{k}": v for k, v in state["baseline"].items()})
    seen = r.seen
    dropped = {**r.skipped,
               **{k: v for k, v in (("audio_too_long", seen.too_long), ("bad_audio", seen.bad_audio)) if v}}
    if dropped:
        metrics["skipped"] = dropped
    if r.saved_at != step:
        ckpt.save(out_dir, r.model, r.processor, r.optimizer, r.scheduler, r.scaler, state,
                  spec.training.save_total_limit)
        r.writer.checkpoint(step=step, path=str(out_dir / "checkpoints" / f"checkpoint-{step}"))
    return _hand_over(r, metrics, scores)


def _hand_over(r: _Run, metrics: dict[str, Any], scores) -> int:
    """The writer's last steps: the export, metrics.json, the model card, the Hub, the worst utterances and
    the end event; 1 when the export failed."""
    spec, out_dir, writer = r.spec, r.out_dir, r.writer
    export_problem = None
    if spec.output.export and scores is not None:
        from gpujob.runner.export import after_training

        export_problem = after_training(spec, out_dir, writer, metrics, r.evaluator.examples, r.group, r.plan.workers,
                                        r.evaluator.batch)
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
