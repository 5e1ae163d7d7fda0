"""The benchmark's recipes, targets and reference figures, and the helpers every part uses (log lines,
tables, versions, failures, memory)."""

from __future__ import annotations

import contextlib
import gc
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import soundfile as sf
import torch

from gpujob.runner.evaluate import is_oom

PEAK_FLOPS = 790e12           # the bf16 figure for one H100: MFU is measured against it
LABEL_TOKENS = 48
EVAL_NEW_TOKENS = 40
INPUT_FRAMES = 3000           # 30 s of log-mel at 10 ms hops
MEL_BINS = 80

# Multilingual Whisper's special tokens (vocabulary of 51865).
EOT, SOT, TRANSLATE, TRANSCRIBE, SOT_PREV, NO_TIMESTAMPS = 50257, 50258, 50358, 50359, 50361, 50363
FIRST_LANG, N_LANGS = 50259, 99

MODELS: dict[str, dict[str, int]] = {
    # openai/whisper-small and -medium; tiny is for smoke tests only (not openai/whisper-tiny)
    "tiny": dict(d_model=64, layers=2, heads=4, ffn=128, batch=2),
    "small": dict(d_model=768, layers=12, heads=12, ffn=3072, batch=64),
    "medium": dict(d_model=1024, layers=24, heads=16, ffn=4096, batch=32),
}

# Reference figures from the issue: one H100 80GB, samples/s of the model step.
REFERENCE: dict[str, dict[str, float]] = {
    "small": {"2022": 45, "sdpa-bf16-ckpt": 132, "sdpa-bf16": 187, "sdpa-bf16-compile": 255,
              "2022-frozen": 120, "sdpa-bf16-frozen": 401},
    "medium": {"2022": 16, "sdpa-bf16": 63, "sdpa-bf16-compile": 88},
}
# What the runner has to reach (samples/s on one GPU).
TARGETS = [("small full fine-tune", "small", False, 300), ("medium full fine-tune", "medium", False, 100),
           ("small frozen encoder", "small", True, 450)]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    attn: str = "sdpa"                 # eager | sdpa (reference recipes; the runner picks its own)
    precision: str = "bf16"            # fp16 (autocast + GradScaler) | bf16 (autocast)
    checkpointing: str = "off"         # off | reentrant (2022) | non-reentrant
    frozen: str = "no"                 # no | params (requires_grad off, 2022) | no_grad (encoder under no_grad)
    compile: bool = False
    fused_adamw: bool = True
    runner: bool = False               # set up and stepped by gpujob.runner's own code
    runner_freeze: str = "none"
    from_audio: bool = False           # runner: log-mel computed inside the step from raw audio
    end_to_end: bool = False           # runner: train.run itself, on MP3 files, timed by its progress events


RECIPES = [
    Recipe("2022", "2022 event: eager attention, fp16 + GradScaler, gradient checkpointing (reentrant), "
           "use_cache off, AdamW (foreach)", attn="eager", precision="fp16", checkpointing="reentrant",
           fused_adamw=False),
    Recipe("sdpa-bf16-ckpt", "SDPA, bf16 autocast, gradient checkpointing (non-reentrant)",
           checkpointing="non-reentrant"),
    Recipe("sdpa-bf16", "SDPA, bf16 autocast, no checkpointing"),
    Recipe("sdpa-bf16-compile", "SDPA, bf16, no checkpointing, torch.compile(model)", compile=True),
    Recipe("2022-frozen", "2022 recipe with model.freeze_encoder()", attn="eager", precision="fp16",
           checkpointing="reentrant", frozen="params", fused_adamw=False),
    Recipe("sdpa-bf16-frozen", "SDPA, bf16, no checkpointing, encoder frozen and run under no_grad",
           frozen="no_grad"),
    Recipe("gpujob", "the runner: model.pick_precision('auto'), SDPA, freeze('none'), "
           "set_gradient_checkpointing('auto'), update.mean_loss, its optimiser step", runner=True),
    Recipe("gpujob-frozen", "the runner with training.freeze: encoder (encoder cache off: first epoch)",
           runner=True, runner_freeze="encoder"),
    Recipe("gpujob-audio", "the runner, log-mel from raw audio inside the step (batches.features on the "
           "device), as train.run does it", runner=True, from_audio=True),
    Recipe("gpujob-run", "the runner end to end: train.run on a Common Voice dir of MP3s (48 kHz), decoded by "
           "data.loader_workers threads, batched and padded ahead, log-mel on the device, its optimiser step and "
           "progress events; the rate from its own progress events", runner=True, end_to_end=True),
    Recipe("gpujob-run-frozen", "gpujob-run with training.freeze: encoder (first epoch: nothing cached yet)",
           runner=True, runner_freeze="encoder", end_to_end=True),
]
RECIPE_BY_NAME = {r.name: r for r in RECIPES}
RUNNER_PRECISION = ["auto"]  # training.precision for the gpujob rows (--runner-precision)
QUICK_SKIP = {"sdpa-bf16-compile"}  # inductor on a CPU smoke test takes minutes


# ================================================================================ helpers


def log(msg: str = "") -> None:
    print(msg, flush=True)


def rate(value: float | None) -> str:
    """A throughput: one decimal, three where it is below 1 (a CPU smoke run of a real-size model)."""
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right if right is not None else set(range(1, len(headers)))
    out = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "numpy": np.__version__, "soundfile": sf.__version__}
    try:
        import soxr

        out["soxr"] = soxr.__version__
    except (ImportError, AttributeError):
        pass
    out["libsndfile"] = getattr(sf, "__libsndfile_version__", "?")
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    if torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


BF16_NUMPY = "Got unsupported ScalarType BFloat16"


def failure(exc: BaseException, batch: int) -> str:
    if is_oom(exc):
        return f"OOM at batch {batch}"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    status = f"failed: {type(exc).__name__}: {first}"
    if BF16_NUMPY in first:
        status += (" (the log-mel was computed under bf16 autocast: batches.features runs inside the autocast "
                   "context, and WhisperFeatureExtractor returns numpy)")
    return status


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)
