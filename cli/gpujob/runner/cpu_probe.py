"""``training.precision: auto`` on a CPU: bf16 where this CPU measurably runs it much faster than fp32.

Whether bf16 pays on a CPU is not a matter of its flag list: with AMX, bf16 runs Whisper about twice as
fast as fp32; with AVX512-BF16 alone about 1.5 times; with AVX2 only, oneDNN emulates it and it runs
about 4 times *slower* (issue 28). So the runner measures, at start-up, 12 runs of the model's own matmul
(a ``Linear(d_model, ffn_dim)`` forward and backward on 384 rows, tens of milliseconds each), in fp32 and
under bf16 autocast, the two interleaved so that load from other processes falls on both alike, on one
thread: the ratio is a property of each core's instructions, and a single thread is not held up at a
barrier by a sibling thread that another process has pushed off its core. :func:`decide` is the pure rule
on those timings: bf16 where the fastest fp32 time is at least :data:`BF16_MIN_SPEEDUP` times the fastest
bf16 time, else fp32; the job prints the ratio and the choice. The fastest of several runs, not their median: other processes only ever slow a run down, so
the fastest is the nearest to what the CPU does. Measured on 2 cores shared at load 11-14 (AMD EPYC with
AVX512-BF16, no AMX): on the job's 2 threads, two runs of the same probe a minute apart read medians of
0.84 and 2.45, and even the fastest runs swung between 0.79 and 1.66; on one thread, five runs read
1.71-2.15 (and 0.27-0.30 under ``ONEDNN_MAX_CPU_ISA=AVX2``), about 1-2.5 s each at that load.

``GPUJOB_CPU_PRECISION=fp32|bf16`` skips the probe (what ``auto`` then picks, and says so): for a
run that must repeat another bit for bit, and for the test suite.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from typing import Sequence

# bf16 where it is at least 2.5 times as fast: a CPU whose bf16 is native matrix hardware (AMX: about twice
# as fast for the whole job, and its models lost nothing scored again in fp32; docs/recipe.md). Not on
# AVX512-BF16 alone (the probe reads 1.7-2.15x there): six quickstart runs in bf16 on an AMD EPYC scored
# 50.4-55.4 % unseen WER (mean 52.7 %; two short of 40 % below zero-shot) against fp32's 50.0 % every
# time, to save 1m25s of about 6 minutes.
BF16_MIN_SPEEDUP = 2.5
ENV = "GPUJOB_CPU_PRECISION"


@dataclass(frozen=True)
class Choice:
    name: str              # "bf16" | "fp32"
    ratio: float | None    # fastest fp32 time / fastest bf16 time; None where not measured
    why: str               # one line for the job's output


def decide(fp32_s: Sequence[float], bf16_s: Sequence[float], min_speedup: float = BF16_MIN_SPEEDUP) -> Choice:
    """bf16 where the fastest fp32 timing is at least ``min_speedup`` times the fastest bf16 timing;
    fp32 otherwise, and also where a timing is missing, zero, negative or not finite (nothing measured)."""
    good = all(math.isfinite(t) and t > 0 for t in (*fp32_s, *bf16_s))
    if not fp32_s or not bf16_s or not good:
        return Choice("fp32", None, "fp32: the bf16 probe measured nothing usable")
    f, b = min(fp32_s), min(bf16_s)
    ratio = f / b
    if ratio >= min_speedup:
        return Choice("bf16", ratio, f"bf16: measured {ratio:.2f}x as fast as fp32 on this CPU "
                                     f"({b * 1e3:.1f} vs {f * 1e3:.1f} ms a probe matmul)")
    return Choice("fp32", ratio, f"fp32: bf16 measured {ratio:.2f}x the speed of fp32 on this CPU "
                                 f"({b * 1e3:.1f} vs {f * 1e3:.1f} ms a probe matmul; bf16 needs {min_speedup}x)")


def measure(d_model: int = 512, ffn_dim: int = 2048, *, rows: int = 384, repeats: int = 5) -> tuple[list[float], list[float]]:
    """Seconds of one ``Linear(d_model, ffn_dim)`` forward and backward on ``rows`` rows, ``repeats`` times in
    fp32 and in bf16 autocast, interleaved, after one warm-up of each (oneDNN builds its kernels then), on one
    thread (the job's thread count is put back after). Uses a generator of its own, so the job's random
    streams are untouched."""
    import torch

    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(ffn_dim, d_model, generator=gen).mul_(d_model ** -0.5).requires_grad_(True)
    x = torch.randn(rows, d_model, generator=gen)

    def once(bf16: bool) -> float:
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            y = torch.nn.functional.linear(x, weight)
        y.float().square().mean().backward()
        weight.grad = None
        return time.perf_counter() - start

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        once(False), once(True)
        fp32, bf16 = [], []
        for _ in range(repeats):
            fp32.append(once(False))
            bf16.append(once(True))
    finally:
        torch.set_num_threads(threads)
    return fp32, bf16


def choose(d_model: int = 512, ffn_dim: int = 2048) -> Choice:
    """What ``auto`` runs on this CPU: from ``$GPUJOB_CPU_PRECISION`` where set, else measured (:func:`measure`)."""
    forced = os.environ.get(ENV, "").strip().lower()
    if forced in ("fp32", "bf16"):
        return Choice(forced, None, f"{forced}: set by {ENV}")
    return decide(*measure(d_model, ffn_dim))


def dims(config) -> tuple[int, int]:
    """The probe's shape for a model config (Whisper's d_model and FFN width; whisper-base's where absent)."""
    return int(getattr(config, "d_model", 512) or 512), int(getattr(config, "decoder_ffn_dim", 2048) or 2048)
