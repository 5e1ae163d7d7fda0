"""Load a Whisper checkpoint and set it up the way the spec asks.

- Language and task go through the generation config and the tokenizer's
  prefix tokens; ``forced_decoder_ids`` is cleared, so transformers never warns
  about it and generation cannot disagree with training.
- ``use_cache`` is off while training with gradient checkpointing (the two do
  not mix) and on for generation, so no warning is printed every step.
- ``freeze: encoder`` freezes the whole encoder; ``freeze: {encoder_layers: N}``
  freezes the conv stem, the positional embedding and the first N layers.
- Gradient checkpointing is set only on the parts that train: a frozen encoder
  runs under ``torch.no_grad`` once per batch (see :func:`encode`), with no
  graph and no recomputation.
- SDPA attention; precision ``auto`` is bf16 where the GPU supports it, else
  fp16 with a loss scaler on GPU; on a CPU, bf16 where a start-up probe measures it faster than
  fp32 on this CPU, else fp32 (:mod:`.cpu_probe`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import torch

from .remote import local_path

if TYPE_CHECKING:
    from gpujob.spec.models import FreezeLayers, JobSpec


@dataclass
class Precision:
    name: str                       # "bf16" | "fp16" | "fp32"
    autocast_dtype: torch.dtype | None
    scaler: bool
    why: str = ""                   # how ``auto`` chose it on a CPU (the probe's ratio), for the job's output


def pick_device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def cpu_bf16_note(precision: Precision, device: torch.device, config=None) -> str:
    """For the start-up line: how ``auto`` chose on a CPU (the probe's measured ratio); for a bf16 asked for
    by name on a CPU, a warning where the probe (:mod:`.cpu_probe`) measures bf16 slower than fp32 here (a
    CPU without AMX or AVX512-BF16 emulates it); empty otherwise."""
    if device.type == "cuda":
        return ""
    if precision.why:
        return f" ({precision.why})"
    if precision.name != "bf16":
        return ""
    from gpujob.runner import cpu_probe

    choice = cpu_probe.decide(*cpu_probe.measure(*cpu_probe.dims(config)), min_speedup=1.0)
    if choice.name == "bf16" or choice.ratio is None:
        return ""
    return (f"; bf16 measured {choice.ratio:.2f}x the speed of fp32 on this CPU (no bf16 instructions: it is "
            "emulated): set training.precision: fp32 or auto")


def pick_precision(requested: str, device: torch.device, config=None) -> Precision:
    """The precision to run: ``requested`` where the device has it; ``auto`` on a CPU measures (:mod:`.cpu_probe`,
    shaped by the model's ``config`` where given) and says why in ``Precision.why``."""
    if device.type != "cuda":
        if requested == "auto":
            from gpujob.runner import cpu_probe

            choice = cpu_probe.choose(*cpu_probe.dims(config))
            return Precision(choice.name, torch.bfloat16 if choice.name == "bf16" else None, False,
                             why=f"auto: {choice.why}")
        if requested in ("bf16", "fp16"):
            # CPU autocast in fp16 is slow and lossy; bf16 on CPU is allowed when asked for.
            return Precision("bf16", torch.bfloat16, False) if requested == "bf16" else Precision("fp32", None, False)
        return Precision("fp32", None, False)
    if requested == "auto":
        requested = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if requested == "bf16":
        return Precision("bf16", torch.bfloat16, False)
    if requested == "fp16":
        return Precision("fp16", torch.float16, True)
    return Precision("fp32", None, False)


def job_precision(requested: str, device: torch.device, config, group, saved: dict | None) -> Precision:
    """A training job's precision: :func:`pick_precision`, but ``auto`` on a CPU is measured once, by the
    writer, and shared with every process; a resumed job keeps the precision its checkpoint was trained in
    (``saved``: that checkpoint's state), so a probe that reads differently under other load cannot switch it."""
    if requested != "auto" or device.type == "cuda":
        return pick_precision(requested, device, config)
    kept = (saved or {}).get("precision")
    if kept in ("bf16", "fp32"):
        return Precision(kept, torch.bfloat16 if kept == "bf16" else None, False,
                         why=f"auto: {kept}, as the checkpoint resumed was trained")
    return group.share(pick_precision("auto", device, config) if group.is_writer else None)


def language_name(code_or_name: str | None) -> str | None:
    """'el' or 'greek' or 'Greek' -> 'greek' (what transformers' Whisper expects)."""
    if not code_or_name:
        return None
    from transformers.models.whisper.tokenization_whisper import LANGUAGES, TO_LANGUAGE_CODE

    key = code_or_name.strip().lower()
    if key in LANGUAGES:
        return LANGUAGES[key]
    if key in TO_LANGUAGE_CODE:
        return key
    raise ValueError(f"model.language: unknown Whisper language {code_or_name!r} (use a code like 'el' or a "
                     "name like 'greek')")


def load(spec: JobSpec, device: torch.device, *, for_training: bool):
    """The model and processor for a validated spec, configured for language, task and dropout."""
    from transformers import WhisperForConditionalGeneration, WhisperProcessor

    checkpoint = local_path(spec.model.checkpoint)  # a bucket's prefix: its staged copy
    kwargs: dict[str, Any] = {"attn_implementation": "sdpa"}
    if for_training:
        kwargs["dropout"] = spec.training.dropout
    model = WhisperForConditionalGeneration.from_pretrained(checkpoint, **kwargs)
    if for_training:
        from gpujob.runner.augment import configure_spec_augment

        augment = getattr(spec.training, "augment", None)
        configure_spec_augment(model.config, augment.spec_augment if augment is not None else None)
    processor = WhisperProcessor.from_pretrained(checkpoint)
    language = language_name(spec.model.language)
    gen = model.generation_config
    gen.forced_decoder_ids = None
    model.config.forced_decoder_ids = None
    if language:
        gen.language = language
    gen.task = spec.model.task
    processor.tokenizer.set_prefix_tokens(language=language, task=spec.model.task, predict_timestamps=False)
    set_window(model, processor, spec.model.window_seconds)
    return model.to(device), processor


def window_of(model, feature_extractor) -> float:
    """Seconds of audio the encoder reads: its positions (after the stride-2 conv) times the hop."""
    return model.config.max_source_positions * 2 * feature_extractor.hop_length / feature_extractor.sampling_rate


def set_window(model, processor, seconds: int | None) -> float:
    """Shorten the encoder's window to ``seconds`` (``model.window_seconds``): keep the first positions of its
    fixed (sinusoidal) embedding, set ``max_source_positions``, and give the processor a feature extractor
    whose ``chunk_length`` pads and cuts to the window, so what is saved loads and reads the same way
    anywhere. ``None`` keeps the checkpoint's window. Clips longer than the window are dropped and counted
    (:func:`gpujob.runner.data.window_seconds`). Returns the window in seconds."""
    from transformers import WhisperFeatureExtractor

    from .data import set_window_seconds

    fe = processor.feature_extractor
    have = window_of(model, fe)
    if seconds is not None and seconds > have + 1e-6:
        raise ValueError(f"model.window_seconds: {seconds} s is longer than this checkpoint's window ({have:g} s): "
                         "a window can be shortened, never lengthened; leave it unset")
    if seconds is not None and seconds < have - 1e-6:
        n = int(round(seconds * fe.sampling_rate / fe.hop_length / 2))
        encoder = model.model.encoder
        old = encoder.embed_positions
        new = torch.nn.Embedding(n, old.embedding_dim, dtype=old.weight.dtype, device=old.weight.device)
        with torch.no_grad():
            new.weight.copy_(old.weight[:n])
        new.requires_grad_(old.weight.requires_grad)
        encoder.embed_positions = new
        encoder.max_source_positions = n
        model.config.max_source_positions = n
        processor.feature_extractor = WhisperFeatureExtractor(**{**fe.to_dict(), "chunk_length": seconds})
        have = float(seconds)
    set_window_seconds(have)
    return have


def freeze(model, how: Literal["none", "encoder"] | FreezeLayers, token_embeddings: bool = False) -> dict[str, int]:
    """Apply ``training.freeze`` (and ``training.freeze_token_embeddings``: the decoder's token embeddings,
    which Whisper's output layer shares); returns trainable/frozen parameter counts."""
    encoder = model.model.encoder
    if token_embeddings:
        model.model.decoder.embed_tokens.weight.requires_grad_(False)
        model.proj_out.weight.requires_grad_(False)  # the same tensor where tied (every Whisper checkpoint)
    if how == "encoder":
        for p in encoder.parameters():
            p.requires_grad_(False)
    elif how not in (None, "none"):
        n = how.encoder_layers if hasattr(how, "encoder_layers") else int(how["encoder_layers"])
        if n > len(encoder.layers):
            raise ValueError(f"training.freeze.encoder_layers: {n} is more than the model's "
                             f"{len(encoder.layers)} encoder layers; use freeze: encoder")
        for module in (encoder.conv1, encoder.conv2, encoder.embed_positions, *encoder.layers[:n]):
            for p in module.parameters():
                p.requires_grad_(False)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    return {"trainable": trainable, "frozen": frozen}


def encoder_frozen(model) -> bool:
    return not any(p.requires_grad for p in model.model.encoder.parameters())


def set_gradient_checkpointing(model, mode: str, *, device: torch.device) -> bool:
    """Checkpoint only layers that train. ``auto``: on for 24+ decoder layers on a GPU (medium, large).

    transformers >= 5 checkpoints per layer (``layer.gradient_checkpointing``), so a
    frozen layer is simply never checkpointed: it runs once, without a graph.
    """
    import functools

    from torch.utils.checkpoint import checkpoint

    on = mode == "on" or (mode == "auto" and device.type == "cuda" and model.config.decoder_layers >= 24)
    model.config.use_cache = not on
    fn = functools.partial(checkpoint, use_reentrant=False)
    for layer in (*model.model.encoder.layers, *model.model.decoder.layers):
        layer.gradient_checkpointing = on and any(p.requires_grad for p in layer.parameters())
        layer._gradient_checkpointing_func = fn
    return on


def encode(model, features: torch.Tensor) -> torch.Tensor:
    """Encoder states; under no_grad and in eval mode when the encoder is frozen."""
    encoder = model.model.encoder
    if encoder_frozen(model):
        was_training = encoder.training
        encoder.eval()
        with torch.no_grad():
            out = encoder(features).last_hidden_state
        encoder.train(was_training)
        return out
    return encoder(features).last_hidden_state


def frozen_prefix(model) -> int:
    """How many leading encoder layers are frozen, with the conv stem and the positions, while a later
    one trains (``freeze: {encoder_layers: N}``): their output is the same every epoch, so it can be
    computed once per clip (:func:`encode_prefix`) and only the rest run each step (:func:`encode_rest`).
    0 when the stem trains, or when the whole encoder is frozen (then :func:`encode` is cached whole)."""
    encoder = model.model.encoder
    if any(p.requires_grad for m in (encoder.conv1, encoder.conv2, encoder.embed_positions) for p in m.parameters()):
        return 0
    n = 0
    for layer in encoder.layers:
        if any(p.requires_grad for p in layer.parameters()):
            return n
        n += 1
    return 0


def encode_prefix(model, features: torch.Tensor, n: int) -> torch.Tensor:
    """The hidden states after the conv stem, the positions and the first ``n`` encoder layers, computed
    as :meth:`WhisperEncoder.forward` does, in eval mode and without a graph (those parts are frozen)."""
    encoder = model.model.encoder
    was_training = encoder.training
    encoder.eval()
    with torch.no_grad():
        hidden = torch.nn.functional.gelu(encoder.conv1(features))
        hidden = torch.nn.functional.gelu(encoder.conv2(hidden)).permute(0, 2, 1)
        hidden = hidden + encoder.embed_positions.weight[: hidden.shape[1]]
        for layer in encoder.layers[:n]:
            hidden = _layer_out(layer(hidden, None))
    encoder.train(was_training)
    return hidden


def encode_rest(model, hidden: torch.Tensor, n: int) -> torch.Tensor:
    """The encoder's output from :func:`encode_prefix`'s states: layers ``n`` on, then the final norm."""
    encoder = model.model.encoder
    for layer in encoder.layers[n:]:
        hidden = _layer_out(layer(hidden, None))
    return encoder.layer_norm(hidden)


def _layer_out(out):
    return out[0] if isinstance(out, tuple) else out
