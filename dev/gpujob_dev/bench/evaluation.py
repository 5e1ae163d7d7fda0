"""The GPU part's evaluation: greedy generation as the 2022 recipe did it, with bf16/SDPA, and through the
runner's ``evaluate.transcribe``."""

from __future__ import annotations

import time
import warnings
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch

from .common import MEL_BINS, RUNNER_PRECISION, SOT, failure, fmt, free_memory, log, rate, sync, table
from .models import build_model


class _CpuFeatures:
    """The real feature extractor, always on the CPU (log-mel made where the 2022 collator made it)."""

    def __init__(self, fe):
        self.fe = fe

    def __call__(self, audio, **kwargs):
        kwargs["device"] = "cpu"
        return self.fe(audio, **kwargs)


class _Tokenizer:
    """Stands in for the tokenizer in evaluate.transcribe: keeps the generated ids, decodes nothing."""

    def __init__(self):
        self.sequences: torch.Tensor | None = None

    def batch_decode(self, sequences, **_kwargs):
        self.sequences = sequences
        return [""] * sequences.shape[0]


def _generate(model, fe, audio: list[np.ndarray], *, device: torch.device, precision, cpu_features: bool,
              new_tokens: int):
    """Reference evaluation step: log-mel (on the CPU or the device, outside autocast), then greedy generate."""
    from gpujob.runner.evaluate import autocast

    feats = fe(audio, sampling_rate=16000, return_tensors="pt",
               device="cpu" if cpu_features or device.type != "cuda" else str(device)).input_features.to(device)
    with torch.no_grad(), autocast(device, precision):
        out = model.generate(input_features=feats, language="greek", task="transcribe", max_new_tokens=new_tokens,
                             num_beams=1, do_sample=False)
    return out.sequences if hasattr(out, "sequences") else out


def _new_tokens(sequences: torch.Tensor) -> int:
    """Generated tokens per utterance; the decoder prompt is left out where generate returns it."""
    n = sequences.shape[1]
    return n - 4 if n and int(sequences[0, 0]) == SOT else n


def eval_part(size: str, device: torch.device, clips: list[np.ndarray], *, batches: int, quick: bool,
              new_tokens: int, batch_override: int | None = None) -> list[dict[str, Any]]:
    from transformers import WhisperFeatureExtractor

    from gpujob.runner.evaluate import eval_batch_size, transcribe
    from gpujob.runner.model import Precision, pick_precision

    fe = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, hop_length=160, chunk_length=30,
                                 n_fft=400, padding_value=0.0, return_attention_mask=False)
    dev = "GPU" if device.type == "cuda" else device.type
    runner_precision = pick_precision(RUNNER_PRECISION[0], device)
    configs = [  # name, batch, precision, attention, CPU log-mel, through the runner, reference utt/s (H100, small)
        ("2022: fp16, eager, CPU log-mel", 16, Precision("fp16", torch.float16, True), "eager", True, False, 36),
        (f"bf16, sdpa, {dev} log-mel", 64, Precision("bf16", torch.bfloat16, False), "sdpa", False, False, 95),
        (f"bf16, sdpa, {dev} log-mel", 256, Precision("bf16", torch.bfloat16, False), "sdpa", False, False, 169),
        (f"gpujob: evaluate.transcribe, defaults (batch_size auto, {runner_precision.name}, sdpa, {dev} log-mel)",
         None, runner_precision, "sdpa", False, True, None),
    ]
    log(f"\n== {dev}: evaluation, whisper-{size}, greedy, {new_tokens} new tokens per utterance, log-mel time "
        f"included, {batches} timed batch(es) after one warm-up ==")
    rows = []
    models: dict[str, Any] = {}
    for name, batch, precision, attn, cpu_features, runner, ref in configs:
        b = batch_override or (2 if quick else batch)
        row: dict[str, Any] = {"model": size, "config": name, "batch": b, "precision": precision.name,
                               "attention": attn, "features": "cpu" if cpu_features else device.type,
                               "runner": runner, "reference_utt_per_s": ref if size == "small" and b == batch else None}
        free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if attn not in models:
                models.clear()
                free_memory(device)
                models[attn] = build_model(size, attn, device).eval()
            model = models[attn]
            if b is None:  # what evaluation.batch_size: auto picks for a job's default generation_max_length
                b = row["batch"] = eval_batch_size("auto", model, device, precision, max_length=225)
            audio = [clips[i % len(clips)] for i in range(b)]
            if runner:
                tok = _Tokenizer()
                processor = SimpleNamespace(feature_extractor=fe, tokenizer=tok)
                spec = SimpleNamespace(model=SimpleNamespace(language="el", task="transcribe"),
                                       training=SimpleNamespace(generation_max_length=new_tokens))
                keys = [f"bench::{i}" for i in range(b)]

                def once():
                    transcribe(model, processor, audio, keys, spec=spec, device=device, precision=precision)
                    return tok.sequences
            else:
                def once():
                    return _generate(model, fe, audio, device=device, precision=precision, cpu_features=cpu_features,
                                     new_tokens=new_tokens)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                once()
                sync(device)
                t0 = time.perf_counter()
                for _ in range(batches):
                    sequences = once()
                sync(device)
                elapsed = time.perf_counter() - t0
            row.update(status="ok", utt_per_s=b * batches / elapsed, batches=batches,
                       new_tokens=_new_tokens(sequences))
        except Exception as exc:  # noqa: BLE001
            row.update(status=failure(exc, b))
        finally:
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
    models.clear()
    free_memory(device)
    base = rows[0].get("utt_per_s")
    for row in rows:
        if base and row.get("utt_per_s"):
            row["x_2022"] = row["utt_per_s"] / base
        if row.get("utt_per_s") and row["reference_utt_per_s"]:
            row["vs_reference"] = row["utt_per_s"] / row["reference_utt_per_s"]
    log("\n".join(table(["config", "batch", "utt/s", "x2022", "ref", "vs ref", "new tokens", "peak GiB"],
                        [[r["config"], r["batch"], rate(r.get("utt_per_s")) if r["status"] == "ok" else "failed",
                          fmt(r.get("x_2022"), 2), fmt(r["reference_utt_per_s"], 0), fmt(r.get("vs_reference"), 2),
                          fmt(r.get("new_tokens")), fmt(r.get("peak_mem_gib"))] for r in rows])))
    for r in rows:
        if r["status"] != "ok":
            log(f"  {r['config']}, batch {r['batch']}: {r['status']}")
    return rows
