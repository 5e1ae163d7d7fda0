"""The training loss: Whisper's decoder, then the output layer and the token cross-entropy fused into one step.

A decoder step of a small Whisper on a CPU is dominated by the vocabulary: 51,865 logits a token. The
plain way (``model(...).logits`` then ``cross_entropy``) computes them at every position, padding included,
and keeps four tensors of that size (the logits, their float copy, the log-softmax and its gradient, each
zero-filled or written in full). :func:`linear_cross_entropy` computes the logits only at the label tokens,
and the gradient of the summed loss with respect to them (``softmax - onehot``) in the same pass, in place:
the same loss and gradients with less memory written (with whisper-base on 2 cores of an AVX2-only CPU
the step's time changed by less than its run-to-run spread; freezing the token embeddings, which skips
the output layer's weight gradient, saved a quarter: docs/recipe.md). :class:`DecoderLoss` is the module a
training step calls (and DDP wraps).
"""

from __future__ import annotations

import torch

IGNORE = -100  # label positions that carry no token (padding), as in transformers


class _LinearCrossEntropy(torch.autograd.Function):
    """sum_i (logsumexp(h_i W^T) - h_i W^T[y_i]) over rows i; its gradient is computed in the forward pass."""

    @staticmethod
    def forward(ctx, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, dtype):
        # ``dtype``: the matmuls' (autocast's bf16/fp16, else the weight's); everything after them in float32,
        # as the plain path does (``logits.float()`` before the cross-entropy)
        logits = (hidden.to(dtype) @ weight.to(dtype).t()).float()
        lse = torch.logsumexp(logits, dim=-1)
        rows = torch.arange(len(labels), device=labels.device)
        loss = (lse - logits[rows, labels]).sum()
        ctx.dtype = dtype
        if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
            probs = logits.sub_(lse[:, None]).exp_()  # d loss / d logits = softmax - onehot, in place
            probs[rows, labels] -= 1
            ctx.save_for_backward(probs, hidden, weight)
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        probs, hidden, weight = ctx.saved_tensors
        d = (probs * grad).to(ctx.dtype)  # scaled before the cast, as a Linear's backward gets it (fp16 loss scaling)
        grad_hidden = (d @ weight.to(ctx.dtype)).to(hidden.dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (d.t() @ hidden.to(ctx.dtype)).to(weight.dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The summed cross-entropy of ``hidden @ weight.T`` against ``labels`` (float32), over the positions
    whose label is not ``IGNORE``. Under ``torch.autocast`` the two matmuls run in its dtype, as a Linear does."""
    keep = labels != IGNORE
    hidden, labels = hidden[keep], labels[keep]
    if torch.is_autocast_enabled(hidden.device.type):
        dtype = torch.get_autocast_dtype(hidden.device.type)
    else:
        dtype = weight.dtype
    return _LinearCrossEntropy.apply(hidden, weight, labels, dtype)


def fusable(head) -> bool:
    """Whether the output layer is a plain bias-free Linear (Whisper's ``proj_out``; not one carrying a LoRA
    adapter, whose output the fused step would skip)."""
    return type(head) is torch.nn.Linear and head.bias is None


class DecoderLoss(torch.nn.Module):
    """``model``'s summed token cross-entropy for a batch: ``forward(labels, decoder_input_ids, states=...)``
    with the encoder's outputs, or ``input_features=...`` to run the encoder too. Holds the model (no copy),
    so its parameters are the model's and DDP may wrap it."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    def forward(self, labels, decoder_input_ids, states=None, input_features=None) -> torch.Tensor:
        from transformers.modeling_outputs import BaseModelOutput

        encoder = {"encoder_outputs": BaseModelOutput(last_hidden_state=states)} if states is not None else \
            {"input_features": input_features}
        head = self.model.proj_out
        if not fusable(head):
            logits = self.model(**encoder, decoder_input_ids=decoder_input_ids, use_cache=False).logits
            return torch.nn.functional.cross_entropy(logits.float().reshape(-1, logits.shape[-1]),
                                                     labels.reshape(-1), ignore_index=IGNORE, reduction="sum")
        hidden = self.model.model(**encoder, decoder_input_ids=decoder_input_ids, use_cache=False).last_hidden_state
        return linear_cross_entropy(hidden, head.weight, labels)
