"""One optimizer step on this process: the backward passes of its micro-batches, each normalised by
the global batch's label tokens, then the update (see :mod:`.train` for why it is exact)."""

from __future__ import annotations

import contextlib

import numpy as np
import torch

from gpujob.runner.batches import Batch, collate, features
from gpujob.runner.distributed import Group
from gpujob.runner.evaluate import autocast, encoder_states
from gpujob.runner.loss import DecoderLoss


def wrap(model, group: Group):
    """The training step's module: the model's loss (:class:`DecoderLoss`), under DDP over the processes
    (gradients averaged in buckets while the backward pass runs) when there are several. Inputs are already
    on the device, so DDP is given no device_ids to move them."""
    step = DecoderLoss(model)
    if not group.many:
        return step
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(step, device_ids=None, gradient_as_bucket_view=True)


def backward(ddp, model, processor, micro: list[Batch], tokens: int, group: Group, device, precision, cache,
             filler: Batch, scaler=None) -> torch.Tensor:
    """The backward passes of one optimizer step on this process; returns its summed loss (on the device).

    Each micro-batch's summed token loss is scaled by ``processes / tokens`` (``tokens``: the global
    batch's label tokens, summed over processes), so that after DDP's averaging the gradient is the
    global batch's token mean. Only the last micro-batch synchronises gradients; every process must
    take part in it, so a process whose share is empty there runs ``filler`` (:func:`silence`) with weight 0."""
    total = torch.zeros((), device=device)
    order = sorted(micro, key=lambda b: len(b) > 0)  # empty ones first: the synchronising pass has data
    for a, batch in enumerate(order):
        last = a == len(order) - 1
        weight = group.world / tokens
        if not len(batch):
            if not (last and group.many):
                continue
            batch, weight = filler, 0.0
        sync = contextlib.nullcontext() if last or not group.many else ddp.no_sync()
        with sync:
            loss = loss_sum(ddp, model, processor, batch, device, precision, cache)
            scaled = loss * weight
            (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if weight:
            total += loss.detach()
    return total


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


def loss_sum(forward, model, processor, batch: Batch, device, precision, cache) -> torch.Tensor:
    """The sum of the per-token cross-entropy over the batch's label tokens, in float32.

    ``forward`` is the model's :class:`DecoderLoss` (:func:`wrap`'s, under DDP through which the pass must go
    for gradients to be averaged); ``model`` is the plain model, for the frozen encoder's cached states."""
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    labels = batch.labels.to(device, non_blocking=True)
    decoder_input_ids = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    audio = batch.padded if batch.padded is not None else batch.audio
    states = encoder_states(model, processor.feature_extractor, audio, batch.ids, device, precision, cache)
    with autocast(device, precision):
        if states is not None:
            return forward(labels, decoder_input_ids, states=states)
        return forward(labels, decoder_input_ids,
                       input_features=features(processor.feature_extractor, audio, device))


def mean_loss(model, processor, batch: Batch, device, precision, cache) -> torch.Tensor:
    """The batch's mean token loss: one process, one batch (the benchmark's training step)."""
    return loss_sum(DecoderLoss(model), model, processor, batch, device, precision, cache) / max(1, batch.tokens)


def silence(processor) -> Batch:
    """One second of silence with a one-token label: the synchronising pass of a process with no data."""
    eot = processor.tokenizer.eos_token_id
    return collate([("gpujob::silence", "", np.zeros(16000, dtype=np.float32), [eot])])
