"""Training checkpoints: written whole or not at all, found again after a restart.

``output.dir/checkpoints/checkpoint-<step>/`` holds the model (with ``training.lora``, the adapter alone) and processor, ``training.pt``
(optimiser, schedule, loss scaler, random states) and ``state.json`` (step, epoch, global batches
done in the epoch, the global batch size, best WER, baseline). A checkpoint is written to a
temporary folder, marked complete, then renamed, so a job killed while saving leaves the
previous one intact; only the last ``save_total_limit`` are kept.

The global batch size is saved with the state: a job that resumes on another number of processes
keeps it (more or fewer micro-steps per optimizer step), so it trains on the same examples.
"""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gpujob.runner import lora

DONE_MARKER = "complete"


def latest(out_dir: Path) -> Path | None:
    """The newest complete checkpoint under ``out_dir``, or None."""
    found = [p for p in (out_dir / "checkpoints").glob("checkpoint-*") if (p / DONE_MARKER).exists()]
    return max(found, key=lambda p: int(p.name.split("-")[1]), default=None)


def save(out_dir: Path, model, processor, optimizer, scheduler, scaler, state: dict, keep: int) -> Path:
    root = out_dir / "checkpoints"
    final = root / f"checkpoint-{state['step']}"
    tmp = root / f".tmp-checkpoint-{state['step']}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if lora.active(model):  # training.lora: the adapter alone
        lora.save_adapter(model, tmp)
    else:
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


def restore(path: Path, model, optimizer, scheduler, scaler) -> dict[str, Any]:
    """Load a checkpoint into the model and training objects; returns its state."""
    from safetensors.torch import load_file

    if lora.active(model):
        lora.load_adapter(model, path)
    else:
        model.load_state_dict(load_file(path / "model.safetensors"), strict=False)  # tied proj_out is not stored
    blob = torch.load(path / "training.pt", weights_only=False)
    optimizer.load_state_dict(blob["optimizer"])
    scheduler.load_state_dict(blob["scheduler"])
    if scaler is not None and blob["scaler"]:
        scaler.load_state_dict(blob["scaler"])
    random.setstate(blob["rng"]["python"])
    np.random.set_state(blob["rng"]["numpy"])
    torch.set_rng_state(blob["rng"]["torch"])
    return json.loads((path / "state.json").read_text())


def save_model(out_dir: Path, model, processor) -> None:
    """The model for use (``output.dir/model``), replaced whole."""
    tmp = out_dir / ".tmp-model"
    shutil.rmtree(tmp, ignore_errors=True)
    if lora.active(model):  # merged, or the adapter alone (training.lora.merge)
        lora.save_output(tmp, model, processor)
    else:
        model.save_pretrained(tmp)
        processor.save_pretrained(tmp)
    shutil.rmtree(out_dir / "model", ignore_errors=True)
    tmp.rename(out_dir / "model")
