"""``training.lora``: LoRA adapters (peft) on Whisper's linear layers, the rest of the model frozen.

The adapters are injected into the model in place (``peft.inject_adapter_in_model``), so it stays a
``WhisperForConditionalGeneration``: evaluation, the encoder cache, gradient checkpointing, DDP and early
stopping run as for full fine-tuning. ``training.freeze`` still applies: no adapter goes into a frozen part
(``freeze: encoder``: the decoder alone gets adapters, and the encoder's outputs are cached).

- Checkpoints hold the adapter alone (``adapter_model.safetensors``, ``adapter_config.json``): a resumed job
  loads the base checkpoint, injects the same adapters and loads their weights, so it continues exactly.
- ``model/`` is the merged model (``W + alpha/r · B·A``, a plain Whisper) by default; with ``merge: false`` the
  adapter in peft's format (``PeftModel.from_pretrained(base, "model")``), whose ``adapter_config.json`` names
  the base model's Hub id.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

if TYPE_CHECKING:
    from gpujob.spec.serving import LoraSection

ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."  # how PeftModel names the wrapped model's weights in a saved adapter


def active(model) -> bool:
    return getattr(model, "_gpujob_lora", None) is not None


def targets(model, lora: LoraSection, freeze: Any) -> list[str]:
    """Names of the linear layers that get adapters: ``target_modules`` outside what ``freeze`` keeps frozen."""
    skip_encoder = freeze == "encoder"
    frozen_layers = getattr(freeze, "encoder_layers", 0) if freeze not in (None, "none", "encoder") else 0
    names = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or name.rsplit(".", 1)[-1] not in lora.target_modules:
            continue
        if name.startswith("model.encoder."):
            if skip_encoder:
                continue
            parts = name.split(".")
            if parts[2] == "layers" and int(parts[3]) < frozen_layers:
                continue
        names.append(name)
    return names


def apply(model, lora: LoraSection, freeze: Any, base: str | None) -> dict[str, int]:
    """Inject the adapters and train only them; returns trainable/frozen parameter counts."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout,
                        target_modules=targets(model, lora, freeze), bias="none")
    inject_adapter_in_model(config, model)
    for name, p in model.named_parameters():
        p.requires_grad_("lora_" in name)
    config.base_model_name_or_path = base
    config.task_type = None
    model._gpujob_lora = config
    model._gpujob_merge = lora.merge
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return {"trainable": trainable, "frozen": sum(p.numel() for p in model.parameters()) - trainable}


def memory_line(model, device: torch.device) -> str:
    """What the weights and AdamW's state take (and the device's allocation on a GPU), for the log."""
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    trainable = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    line = (f"memory: weights {weights / 2**30:.2f} GiB, trainable {trainable / 2**20:.1f} MiB, AdamW state "
            f"{2 * trainable / 2**20:.1f} MiB, gradients {trainable / 2**20:.1f} MiB")
    if device.type == "cuda":
        line += f"; allocated on the GPU {torch.cuda.memory_allocated(device) / 2**30:.2f} GiB"
    return line


def adapter_state(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {PEFT_PREFIX + k: v.detach().to("cpu").contiguous() for k, v in get_peft_model_state_dict(model).items()}


def save_adapter(model, folder: Path) -> None:
    """The adapter in peft's format: weights and config (naming the base model)."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    save_file(adapter_state(model), str(folder / ADAPTER_WEIGHTS), metadata={"format": "pt"})
    model._gpujob_lora.save_pretrained(str(folder))


def load_adapter(model, folder: Path) -> None:
    """The adapter weights of ``folder`` into ``model``'s injected adapters (same targets and rank)."""
    from peft import set_peft_model_state_dict
    from safetensors.torch import load_file

    saved = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(str(folder / ADAPTER_WEIGHTS)).items()}
    result = set_peft_model_state_dict(model, saved)
    missing = [k for k in result.missing_keys if "lora_" in k]
    if missing:
        raise ValueError(f"{folder}: the adapter lacks {len(missing)} weights the job's training.lora has "
                         f"(e.g. {missing[0]}): it was saved with other LoRA settings")


def merged(model):
    """A copy of ``model`` with every adapter merged into its layer's weight: a plain Whisper."""
    from peft.tuners.lora import LoraLayer

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if isinstance(module, LoraLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, module.get_base_layer())
    del out._gpujob_lora, out._gpujob_merge
    return out


def save_output(folder: Path, model, processor) -> None:
    """``model/``: merged (a Whisper checkpoint) or, with ``merge: false``, the adapter and the processor."""
    lora = model._gpujob_lora
    if model._gpujob_merge:
        plain = merged(model)
        plain.save_pretrained(folder)
    else:
        save_adapter(model, folder)
        model.generation_config.save_pretrained(folder)  # the base's Hub id is peft's base_model_name_or_path
    processor.save_pretrained(folder)
