"""A ``kind: train`` job's setting up (:func:`gpujob.runner.train.run`'s steps 2 to 4): the model to
train, the optimiser, the evaluator with its examples decoded once, the augmentation and the lines
that say what was set up. The plan (steps, schedule, resume) is :mod:`.train_plan`'s.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from gpujob.runner import data as data_mod
from gpujob.runner.augment import Augmenter, augment_summary
from gpujob.runner.card import base_model_id
from gpujob.runner.distributed import Group
from gpujob.runner.evaluate import EncoderCache, eval_batch_size, evaluate, summary_lines
from gpujob.runner.model import Precision, cpu_bf16_note, freeze, job_precision, load, set_gradient_checkpointing
from gpujob.runner.train_plan import Plan, learning_rate

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


def train_cache_for(cache: EncoderCache, augmenter, spec_augment: bool = False) -> EncoderCache | None:
    """The encoder cache training may use. It assumes the same input every epoch, so augmented training
    clips bypass it (a frozen encoder, or frozen prefix, runs on them every step), and so does SpecAugment's
    masking of the features; evaluation clips, never augmented, still use it."""
    return None if spec_augment or augmenter is not None and augmenter.active else cache


def setup_model(spec: JobSpec, group: Group, resume_from: Path | None) -> tuple[Any, Any, dict | None, Precision]:
    """The model and processor to train (frozen parts, LoRA, gradient checkpointing as the spec says), the
    state of the checkpoint to resume from (None to start afresh) and the precision; one line says which."""
    t, device = spec.training, group.device
    model, processor = load(spec, device, for_training=True)
    saved = json.loads((resume_from / "state.json").read_text()) if resume_from is not None else None
    precision = job_precision(t.precision, device, model.config, group, saved)  # auto on a CPU: measured here
    if (base := base_model_id(spec.model.checkpoint)) is not None:
        model.config.gpujob_base_model = base  # saved with every checkpoint: the card's base_model
    frozen = freeze(model, t.freeze, t.freeze_token_embeddings)
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
    return model, processor, saved, precision


def setup_optimizer(spec: JobSpec, model, device: torch.device, precision: Precision):
    """(learning rate, trained parameters, AdamW, the fp16 gradient scaler or None)."""
    t = spec.training
    lr = learning_rate(spec, model)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=t.weight_decay, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    return lr, params, optimizer, scaler


def announce(spec: JobSpec, plan: Plan, lr: float, writer, group: Group) -> None:
    """The start event, and the lines that say how the data is read and what a step is."""
    t, workers, micro, per_process = spec.training, plan.workers, plan.micro, plan.per_process
    print(f"data: {workers} loader thread{'s' if workers != 1 else ''} decoding ahead"
          if workers else "data: decoded in the training loop (data.loader_workers: 0)", flush=True)
    writer.start(total_steps=plan.total_steps, kind="train", name=spec.name, epochs=t.epochs)
    layout = (f"{group.world} process{'es' if group.many else ''} × {micro} micro-batch{'es' if micro != 1 else ''} "
              f"of ≤{per_process}" if group.many or micro != t.gradient_accumulation_steps else None)
    print(f"{plan.total_steps} steps of {plan.global_batch} examples" + (f" ({layout})" if layout else "")
          + f"; learning rate {lr:.3g} ({t.lr_schedule}, {t.warmup_steps} warmup)"
          + (f"; {plan.n_train} training examples" if plan.n_train else ""), flush=True)


def setup_augment(spec: JobSpec, cache: EncoderCache) -> tuple[Augmenter | None, EncoderCache | None]:
    """The waveform augmenter (None without one) and the encoder cache training may use; a line says so."""
    t = spec.training
    augmenter = Augmenter(t.augment) if t.augment.waveform else None
    train_cache = train_cache_for(cache, augmenter, t.augment.spec_augment is not None)
    if augmenter is not None or t.augment.spec_augment is not None:
        print("augmentation: " + augment_summary(t.augment)
              + ("; frozen encoder run on every augmented clip (not cached)" if t.freeze == "encoder" and augmenter
                 else ""), flush=True)
    return augmenter, train_cache


class Evaluator:
    """Evaluation before, during and after training: ``data.eval`` decoded once, each process its share
    (``n`` is the total), scored by calling it with the step; the batch is sized each time, ``batch`` is
    the last size (what the export's comparison uses)."""

    def __init__(self, spec: JobSpec, model, processor, precision: Precision, writer, group: Group,
                 workers: int) -> None:
        self.spec, self.model, self.processor, self.precision = spec, model, processor, precision
        self.writer, self.group = writer, group
        self.examples = list(data_mod.iter_examples(spec.data.eval, streaming=spec.data.streaming,
                                                    seed=spec.training.seed, key="data.eval", workers=workers,
                                                    shard=(group.rank, group.world))) if spec.data.eval else []
        self.n = group.sum_ints([len(self.examples)])[0]  # a process's share can be empty: decide on the total
        self.cache = EncoderCache()
        self.batch = 0

    def __call__(self, step: int, label: str = ""):
        spec, group = self.spec, self.group
        # sized each time: what is free changes once the optimiser state exists
        size = eval_batch_size(spec.evaluation.batch_size, self.model, group.device, self.precision,
                               max_length=min(spec.training.generation_max_length, 448))
        if size != self.batch:
            self.batch = size
            print(f"evaluation: {self.n} utterances in batches of {size}"
                  + (f" on each of {group.world} processes" if group.many else "")
                  + (" (evaluation.batch_size: auto)" if spec.evaluation.batch_size == "auto" else ""), flush=True)
        scores = evaluate(self.model, self.processor, self.examples, spec=spec, device=group.device,
                          precision=self.precision, cache=self.cache, writer=self.writer, batch_size=size, group=group)
        self.writer.eval(step=step, **scores.event_metrics(spec.evaluation.metrics))
        for line in summary_lines(scores, label)[:1]:
            print(line, flush=True)
        return scores
