"""The GPU part's training step: each recipe's set-up and timed steps (the reference recipes, the runner's
own set-up and step, train.run end to end), and the training table."""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import torch

from gpujob.runner import batches as batches_mod
from gpujob.runner.update import optimizer_step  # the runner's own step, in every recipe

from .common import (EOT, INPUT_FRAMES, LABEL_TOKENS, MEL_BINS, MODELS, PEAK_FLOPS, REFERENCE, RUNNER_PRECISION,
                     TARGETS, Recipe, failure, fmt, free_memory, log, rate, sync, table)
from .models import build_model, count_flops, enable_checkpointing
from .speech import whisper_tokenizer, write_cv_corpus


class _Precomputed:
    """A feature extractor that hands back log-mels made beforehand: the runner's step without the STFT."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def __call__(self, audio, **_kwargs):
        return SimpleNamespace(input_features=self.features)


def _reference_step(recipe: Recipe, model, device: torch.device, feats: torch.Tensor, labels: torch.Tensor):
    from transformers.modeling_outputs import BaseModelOutput

    if recipe.checkpointing != "off":
        enable_checkpointing(model, reentrant=recipe.checkpointing == "reentrant")
    else:
        model.config.use_cache = False
    if recipe.frozen == "params":
        model.freeze_encoder()
    elif recipe.frozen == "no_grad":
        for p in model.model.encoder.parameters():
            p.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = recipe.fused_adamw and device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=fused or None)
    dtype = torch.float16 if recipe.precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if recipe.precision == "fp16" else None
    forward = torch.compile(model) if recipe.compile else model
    encoder = model.model.encoder

    def step():
        with torch.autocast(device.type, dtype=dtype):
            if recipe.frozen == "no_grad":
                with torch.no_grad():
                    states = encoder(feats).last_hidden_state
                out = forward(encoder_outputs=BaseModelOutput(last_hidden_state=states), labels=labels,
                              use_cache=False)
            else:
                out = forward(input_features=feats, labels=labels, use_cache=False)
        loss = out.loss.float()
        (scaler.scale(loss) if scaler else loss).backward()
        optimizer_step(optimizer, params, scaler)

    setup = {"attention": recipe.attn, "precision": recipe.precision,
             "checkpointing": recipe.checkpointing, "frozen_encoder": recipe.frozen != "no",
             "compiled": recipe.compile, "adamw": "fused" if fused else "foreach"}
    return step, scaler, setup, optimizer


def _runner_step(recipe: Recipe, size: str, device: torch.device, feats: torch.Tensor, labels: torch.Tensor,
                 audio: list[np.ndarray]):
    """The runner's set-up and step: gpujob.runner.model for precision/freeze/checkpointing, update.mean_loss for
    the loss, and train.run's optimiser step (scaler, clip at 1.0, fused AdamW, loss.item() every step)."""
    from gpujob.runner.batches import Batch
    from gpujob.runner.model import freeze, pick_precision, set_gradient_checkpointing
    from gpujob.runner.update import mean_loss

    precision = pick_precision(RUNNER_PRECISION[0], device)
    model = build_model(size, "sdpa", device)  # model.load() asks from_pretrained for attn_implementation="sdpa"
    counts = freeze(model, recipe.runner_freeze)
    ckpt_on = set_gradient_checkpointing(model, "auto", device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    model.train()
    if recipe.from_audio:
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, hop_length=160,
                                            chunk_length=30, n_fft=400, padding_value=0.0,
                                            return_attention_mask=False)
    else:
        extractor = _Precomputed(feats)
    processor = SimpleNamespace(feature_extractor=extractor)
    n = labels.shape[0]
    batch = Batch(ids=[f"bench::{i}" for i in range(n)], texts=[""] * n, audio=audio, labels=labels.cpu(),
                  label_lengths=[labels.shape[1]] * n)

    def step():
        loss = mean_loss(model, processor, batch, device, precision, None)
        (scaler.scale(loss) if scaler else loss).backward()
        loss.item()  # train.run adds it to the progress line every step (a sync)
        optimizer_step(optimizer, params, scaler)

    setup = {"attention": model.config._attn_implementation, "precision": precision.name,
             "checkpointing": "on" if ckpt_on else "off", "frozen_encoder": recipe.runner_freeze == "encoder",
             "compiled": False, "adamw": "fused" if device.type == "cuda" else "foreach",
             "trainable_params": counts["trainable"], "features": "in the step" if recipe.from_audio else "precomputed"}
    return model, step, scaler, setup, optimizer


class _TimedWriter:
    """The runner's ProgressWriter into a buffer, noting when each progress event came (perf_counter)."""

    def __init__(self) -> None:
        import io

        from gpujob.progress import ProgressWriter

        self.buffer = io.StringIO()
        self._writer = ProgressWriter(self.buffer)
        self.progress_at: list[float] = []
        self.events: list[str] = []

    def __getattr__(self, name: str):
        emit = getattr(self._writer, name)

        def call(**fields: Any) -> None:
            if name == "progress":
                self.progress_at.append(time.perf_counter())
            self.events.append(name)
            emit(**fields)

        return call


def _runner_run(recipe: Recipe, size: str, device: torch.device, batch: int, steps: int, warmup: int,
                clips: list[np.ndarray], row: dict[str, Any]) -> None:
    """train.run, the runner's own loop, on a Common Voice-style dir of MP3s: samples/s between the progress events
    of the last warm-up step and the last step. The data set is the shuffle buffer plus every step's batch, so every
    timed step waits for its own decoding as in a long job."""
    import io

    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from gpujob.runner import data as data_mod
    from gpujob.runner import train
    from gpujob.spec import JobSpec

    if device.type != ("cuda" if torch.cuda.is_available() else "cpu"):
        row["status"] = f"skipped: train.run picks its own device, not {device.type}"
        return
    tokenizer = whisper_tokenizer()
    if tokenizer is None:
        row["status"] = "skipped: no Whisper tokenizer here (see docs/performance.md)"
        return
    total = warmup + steps
    n_rows = batches_mod.SHUFFLE_BUFFER + batch * total
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-run-") as tmp:
        root = Path(tmp)
        model = build_model(size, "sdpa", torch.device("cpu"))
        model.save_pretrained(root / "model")
        del model
        fe = WhisperFeatureExtractor(feature_size=MEL_BINS)
        WhisperProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(root / "model")
        t0 = time.perf_counter()
        cv, _ = write_cv_corpus(root / "cv", clips, n_rows)
        spec = JobSpec.model_validate({
            "apiVersion": "gpujob/v1", "kind": "train", "name": f"bench-{size}",
            "model": {"checkpoint": str(root / "model"), "language": "el"},
            "data": {"train": [{"dataset": str(cv)}]},
            "training": {"max_steps": total, "per_device_batch_size": batch, "learning_rate": 1e-5,
                         "warmup_steps": 0, "precision": RUNNER_PRECISION[0], "freeze": recipe.runner_freeze,
                         "save_steps": 10**6, "eval_steps": 10**6},
            "output": {"dir": str(root / "out")}})
        writer = _TimedWriter()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = train.run(spec, root / "out", writer)
        row["runner_output"] = out.getvalue().splitlines()[:6]
        if code != 0 or len(writer.progress_at) != total:
            row["status"] = f"failed: train.run exited {code} after {len(writer.progress_at)} of {total} steps"
            return
        at = writer.progress_at
        elapsed = at[-1] - at[warmup - 1]
        row.update(status="ok", steps=steps, seconds=elapsed, samples_per_s=batch * steps / elapsed,
                   step_ms=1000 * elapsed / steps, first_step_s=at[0] - t0, rows=n_rows,
                   loader_workers=data_mod.loader_threads(spec.data.loader_workers))
        line = next((ln for ln in row["runner_output"] if ln.startswith("model ")), "")
        precision = line.split("precision ")[1].split(";")[0] if "precision " in line else "?"
        ckpt = "on" if "checkpointing on" in line else "off"
        row["setup"] = {"attention": "sdpa", "precision": precision, "checkpointing": ckpt,
                        "frozen_encoder": recipe.runner_freeze == "encoder", "compiled": False,
                        "adamw": "fused" if device.type == "cuda" else "foreach",
                        "features": f"mp3, {row['loader_workers']} loader thread{'s' if row['loader_workers'] != 1 else ''}"}


def run_recipe(recipe: Recipe, size: str, device: torch.device, batch: int, steps: int, warmup: int,
               feats: torch.Tensor, labels: torch.Tensor, audio: list[np.ndarray],
               clips: list[np.ndarray] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"model": size, "recipe": recipe.name, "description": recipe.description, "batch": batch}
    if recipe.end_to_end:
        free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            _runner_run(recipe, size, device, batch, steps, warmup, clips or audio, row)
        except Exception as exc:  # noqa: BLE001 - one recipe failing must not end the run
            row["status"] = failure(exc, batch)
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        free_memory(device)
        return row
    model = step = scaler = optimizer = None
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if recipe.runner:
            model, step, scaler, setup, optimizer = _runner_step(recipe, size, device, feats, labels, audio)
        else:
            model = build_model(size, recipe.attn, device)
            step, scaler, setup, optimizer = _reference_step(recipe, model, device, feats, labels)
        row["setup"] = setup
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            step()
            sync(device)
            row["first_step_s"] = time.perf_counter() - t0
            for _ in range(max(0, warmup - 1)):
                step()
            sync(device)
            scale_before = scaler.get_scale() if scaler else None
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            elapsed = time.perf_counter() - t0
        row.update(status="ok", steps=steps, seconds=elapsed, samples_per_s=batch * steps / elapsed,
                   step_ms=1000 * elapsed / steps)
        if scaler and scaler.get_scale() < scale_before:
            skipped = round(math.log2(scale_before / scaler.get_scale()))
            row["note"] = f"GradScaler skipped {skipped} of the timed steps (fp16 overflow)"
    except Exception as exc:  # noqa: BLE001 - one recipe failing must not end the run
        row.update(status=failure(exc, batch))
    finally:
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        del model, step, scaler, optimizer
        if recipe.compile:
            torch._dynamo.reset()
        free_memory(device)
    return row


def train_part(sizes: list[str], recipes: list[Recipe], device: torch.device, batch: int | None, steps: int,
               warmup: int, clips: list[np.ndarray], *, rows: list[dict], flops: dict, deadline: float | None,
               save: Callable[[], None]) -> None:
    """Fills ``rows`` and ``flops`` as it goes (``save`` writes the JSON after every recipe)."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, hop_length=160, chunk_length=30,
                                 n_fft=400, padding_value=0.0, return_attention_mask=False)
    base_feats = fe(clips, sampling_rate=16000, return_tensors="pt").input_features  # (n, 80, 3000)
    for size in sizes:
        b = batch or MODELS[size]["batch"]
        idx = [i % len(clips) for i in range(b)]
        feats = base_feats[idx].to(device)
        gen = torch.Generator().manual_seed(0)
        labels = torch.randint(0, EOT, (b, LABEL_TOKENS), generator=gen).to(device)
        audio = [clips[i] for i in idx]
        log(f"\n== {'GPU' if device.type == 'cuda' else 'device ' + device.type}: training step, whisper-{size}, "
            f"batch {b}, {LABEL_TOKENS} label tokens, 30 s log-mels ({MEL_BINS}x{INPUT_FRAMES}), random weights, "
            f"{warmup} warm-up + {steps} timed steps ==")
        t0 = time.perf_counter()
        try:
            flops[size] = {"full": count_flops(size, device, frozen=False),
                           "frozen_encoder": count_flops(size, device, frozen=True)}
            log(f"model FLOPs per sample (FlopCounterMode, one step): full fine-tune "
                f"{flops[size]['full'] / 1e12:.3f} TFLOP, frozen encoder {flops[size]['frozen_encoder'] / 1e12:.3f} "
                f"TFLOP (counted in {time.perf_counter() - t0:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - the timings are still worth having
            flops[size] = {"full": None, "frozen_encoder": None}
            log(f"model FLOPs not counted ({failure(exc, 1)}); MFU left out")
            free_memory(device)
        size_rows = []
        # compiled recipes last (minutes of compiling): under --time-limit the others are measured first
        for recipe in sorted(recipes, key=lambda r: r.compile):
            if deadline is not None and time.perf_counter() > deadline:
                row = {"model": size, "recipe": recipe.name, "description": recipe.description, "batch": b,
                       "status": "skipped: --time-limit reached"}
            else:
                t_recipe = time.perf_counter()
                row = run_recipe(recipe, size, device, b, steps, warmup, feats, labels, audio, clips)
                row["wall_s"] = time.perf_counter() - t_recipe
            frozen = row.get("setup", {}).get("frozen_encoder",
                                              recipe.frozen != "no" or recipe.runner_freeze != "none")
            row["flop_per_sample"] = flops[size]["frozen_encoder" if frozen else "full"]
            row["reference_samples_per_s"] = REFERENCE.get(size, {}).get(recipe.name)
            row["target_samples_per_s"] = next((t[3] for t in TARGETS if recipe.runner and t[1] == size
                                                and t[2] == frozen), None)
            if row.get("samples_per_s") and row["flop_per_sample"]:
                row["tflops"] = row["samples_per_s"] * row["flop_per_sample"] / 1e12
                row["mfu"] = row["tflops"] * 1e12 / PEAK_FLOPS
            status = row["status"] if row["status"] != "ok" else f"{rate(row['samples_per_s'])} samples/s"
            log(f"  {recipe.name}: {status}")
            size_rows.append(row)
            rows.append(row)
            save()
        order = [r.name for r in recipes]
        size_rows.sort(key=lambda r: order.index(r["recipe"]))
        base = next((r for r in size_rows if r["recipe"] == "2022" and r.get("samples_per_s")), None)
        ref_base = REFERENCE.get(size, {}).get("2022")
        for row in size_rows:
            if base and row.get("samples_per_s"):
                row["x_2022"] = row["samples_per_s"] / base["samples_per_s"]
            if ref_base and row["reference_samples_per_s"]:
                row["reference_x_2022"] = row["reference_samples_per_s"] / ref_base
            if row.get("samples_per_s") and row["reference_samples_per_s"]:
                row["vs_reference"] = row["samples_per_s"] / row["reference_samples_per_s"]
        log("")
        log("\n".join(train_table(size_rows)))
        for r in size_rows:
            if r["status"].startswith("failed"):
                log(f"  {r['recipe']}: {r['status']}")
        rows.sort(key=lambda r: (sizes.index(r["model"]), order.index(r["recipe"])))
        save()
        del feats, labels
        free_memory(device)
    log(f"x2022 = samples/s / the 2022 recipe's, same run; ref = the issue's H100 80GB figure; MFU = samples/s x "
        f"model FLOP/sample / {PEAK_FLOPS / 1e12:.0f} TFLOP/s (checkpoint recomputation not counted)")


def train_table(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        s = r.get("setup", {})
        value = rate(r.get("samples_per_s")) if r["status"] == "ok" else r["status"].split(":")[0]
        if r["status"].startswith("skipped"):
            out.append([r["recipe"], r["batch"], "skipped"] + ["-"] * 8 + [r["status"].split(": ", 1)[-1]])
            continue
        note = r.get("note", "")
        if r["recipe"].startswith("gpujob") and s:
            note = (f"{s['precision']}, {s['attention']}, ckpt {s['checkpointing']}, features {s['features']}"
                    + (f"; {note}" if note else ""))
        if r.get("target_samples_per_s"):
            note += f"; target {r['target_samples_per_s']}"
        if r.get("first_step_s") and r["recipe"].endswith("compile"):
            note += f"; first step (compile) {r['first_step_s']:.0f} s"
        out.append([r["recipe"], r["batch"], value, fmt(r.get("x_2022"), 2), fmt(r.get("reference_samples_per_s"), 0),
                    fmt(r.get("reference_x_2022"), 2), fmt(r.get("vs_reference"), 2),
                    fmt(r["flop_per_sample"] / 1e12 if r.get("flop_per_sample") else None, 3), fmt(r.get("tflops")),
                    f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-",
                    fmt(r.get("peak_mem_gib")), note.lstrip("; ")])
    return table(["recipe", "batch", "samples/s", "x2022", "ref", "ref x2022", "vs ref", "TFLOP/sample", "TFLOP/s",
                  "MFU", "peak GiB", "notes"], out, right=set(range(1, 11)))
