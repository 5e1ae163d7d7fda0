"""The benchmark's command line: arguments, the parts in order, the summary against the targets, the JSON."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from gpujob.runner.data import usable_cores

from . import __doc__ as BENCH_DOC
from .common import (EVAL_NEW_TOKENS, MODELS, PEAK_FLOPS, QUICK_SKIP, RECIPE_BY_NAME, RECIPES, REFERENCE,
                     RUNNER_PRECISION, TARGETS, cpu_model, fmt, log, rate, table, versions)
from .evaluation import eval_part
from .loading import cpu_part
from .speech import synthesize_clips
from .training import train_part


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=BENCH_DOC.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="recipes: " + ", ".join(r.name for r in RECIPES))
    p.add_argument("--part", choices=("cpu", "gpu", "all"), default="all",
                   help="cpu: data loading; gpu: training and evaluation steps; all (default)")
    p.add_argument("--model", default=None, help="small, medium or tiny; a comma list runs each "
                   "(default small,medium; tiny with --quick)")
    p.add_argument("--device", default=None, help="cuda (default where available) or cpu (a smoke test of the "
                   "GPU part)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default small 64, medium 32, tiny 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per recipe (default 8; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per recipe, the first one included "
                   "(default 3; 1 with --quick)")
    p.add_argument("--recipes", default=None, help="comma list (default all; 2022 is always run as the baseline)")
    p.add_argument("--eval-batches", type=int, default=None, help="timed generate batches per evaluation "
                   "config (default 3; 1 with --quick)")
    p.add_argument("--eval-batch", type=int, default=None, help="one batch size for every evaluation config "
                   "(default: the reference sizes 16, 64, 256 and the runner's 16; 2 with --quick)")
    p.add_argument("--runner-precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="training.precision for the gpujob rows, through model.pick_precision (default auto)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation benchmark")
    p.add_argument("--clips", type=int, default=None, help="synthesized clips (default 24; 4 with --quick)")
    p.add_argument("--clip-seconds", type=float, default=None, help="length of each clip (default 8; 3 with --quick)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", help="start no recipe or "
                   "evaluation after this many seconds (those left are reported as skipped; the JSON is written "
                   "after every recipe)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every result here as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (tiny model, batch 2, few "
                   "steps and clips; torch.compile left out unless named in --recipes)")
    args = p.parse_args(argv)
    q = args.quick
    args.model = [m.strip() for m in (args.model or ("tiny" if q else "small,medium")).split(",") if m.strip()]
    bad = [m for m in args.model if m not in MODELS]
    if bad:
        p.error(f"--model: unknown {', '.join(bad)} (use {', '.join(MODELS)})")
    args.steps = args.steps if args.steps is not None else (1 if q else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.eval_batches = args.eval_batches if args.eval_batches is not None else (1 if q else 3)
    args.clips = args.clips if args.clips is not None else (4 if q else 24)
    args.clip_seconds = args.clip_seconds if args.clip_seconds is not None else (3.0 if q else 8.0)
    if args.steps < 1 or args.warmup < 1 or args.clips < 1:
        p.error("--steps, --warmup and --clips must be at least 1")
    if args.recipes:
        names = [n.strip() for n in args.recipes.split(",") if n.strip()]
        bad = [n for n in names if n not in RECIPE_BY_NAME]
        if bad:
            p.error(f"--recipes: unknown {', '.join(bad)} (known: {', '.join(RECIPE_BY_NAME)})")
        if "2022" not in names:
            names.insert(0, "2022")
        args.recipe_list = [RECIPE_BY_NAME[n] for n in names]
    else:
        args.recipe_list = [r for r in RECIPES if not (q and r.name in QUICK_SKIP)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RUNNER_PRECISION[0] = args.runner_precision
    warnings.filterwarnings("ignore", message=".*(gradient_checkpointing|use_reentrant|requires_grad).*")
    import transformers

    transformers.logging.set_verbosity_error()  # generate's per-call notices would drown the tables
    transformers.logging.disable_progress_bar()
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    ver = versions()
    cuda = torch.cuda.is_available()
    device = torch.device(args.device) if args.device else torch.device("cuda" if cuda else "cpu")
    run_gpu = args.part in ("gpu", "all") and (device.type == "cuda" or args.device is not None)
    if device.type == "cuda" and not cuda:
        run_gpu, device = False, torch.device("cpu")
    device_info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        device_info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                           capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    log(f"gpujob runner benchmark, {started:%Y-%m-%d %H:%M} UTC; {platform.node()}; CPU {cpu_model()} "
        f"({usable_cores()} cores available)")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    log(f"device: {device_info.get('name', device.type)}"
        + (f" ({device_info['memory_gib']} GiB, sm {device_info['capability']})" if device.type == "cuda" else ""))
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "host": platform.node(), "cpu_model": cpu_model(),
        "cores": usable_cores(), "versions": ver, "device": device_info, "peak_flops": PEAK_FLOPS,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "recipe_list"},
        "recipes": [asdict(r) for r in args.recipe_list], "reference": REFERENCE,
        "targets": [{"target": t[0], "model": t[1], "frozen_encoder": t[2], "samples_per_s": t[3]} for t in TARGETS],
    }

    deadline = t_start + args.time_limit if args.time_limit else None

    def save() -> None:
        if args.json:
            results["seconds"] = time.perf_counter() - t_start
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_name(args.json.name + ".part")
            tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
            os.replace(tmp, args.json)

    t0 = time.perf_counter()
    n_clips = args.clips if args.part != "gpu" else min(args.clips, 8)
    clips, source = synthesize_clips(n_clips, args.clip_seconds)
    log(f"synthesized {len(clips)} clips in {time.perf_counter() - t0:.1f} s ({source})")

    if args.part in ("cpu", "all"):
        results["cpu"] = cpu_part(clips, source, min_time=0.15 if args.quick else 1.0,
                                  feature_batch=16 if not args.quick else 2, loader_rows=12 if args.quick else 192)
        save()
    if not run_gpu:
        if args.part in ("gpu", "all"):
            why = "no CUDA device here (torch.cuda.is_available() is False)"
            log(f"\nGPU part skipped: {why}. Run it on an H100/H200, or smoke-test it here with --device cpu --quick.")
            results["gpu_skipped"] = why
    else:
        results["train"], results["flop_per_sample"] = [], {}
        train_part(args.model, args.recipe_list, device, args.batch, args.steps, args.warmup, clips,
                   rows=results["train"], flops=results["flop_per_sample"], deadline=deadline, save=save)
        if args.no_eval:
            pass
        elif deadline is not None and time.perf_counter() > deadline:
            log("\nevaluation skipped: --time-limit reached")
            results["eval_skipped"] = "--time-limit reached"
        else:
            results["eval"] = eval_part(args.model[0], device, clips, batches=args.eval_batches, quick=args.quick,
                                        new_tokens=8 if args.quick else EVAL_NEW_TOKENS,
                                        batch_override=args.eval_batch)
        results["summary"] = summary(results["train"], results.get("cpu"))
    results["seconds"] = time.perf_counter() - t_start
    log(f"\ndone in {results['seconds']:.0f} s")
    save()
    if args.json:
        log(f"results written to {args.json}")
    return 0


def summary(train: list[dict], cpu: dict | None) -> list[dict]:
    """The runner's rows against their targets. gpujob-run rows are the runner end to end; for the model-step rows
    the loader's measured capacity here (the CPU part, at data.loader_workers: auto) is shown beside them, since the
    two overlap: end to end is about min(step, loader)."""
    from gpujob.runner.data import loader_threads

    auto = loader_threads("auto")
    loader = None
    if cpu and cpu.get("loader", {}).get("runs"):
        runs = cpu["loader"]["runs"]
        at_auto = [r["samples_per_s"] for r in runs if r["workers"] == auto]
        loader = at_auto[0] if at_auto else cpu["loader"]["per_thread_samples_per_s"] * auto
    out = []
    for r in train:
        if not r["recipe"].startswith("gpujob") or not r.get("samples_per_s"):
            continue
        target = r.get("target_samples_per_s")  # set by train_part from the recipe's frozen encoder
        row = {"model": r["model"], "recipe": r["recipe"], "samples_per_s": r["samples_per_s"],
               "target_samples_per_s": target, "end_to_end": r["recipe"].startswith("gpujob-run")}
        if row["end_to_end"]:
            row["expected_end_to_end"] = r["samples_per_s"]
        elif loader is not None:
            row["loader_samples_per_s"] = loader
            row["expected_end_to_end"] = min(r["samples_per_s"], loader)
        if target and row.get("expected_end_to_end"):
            row["meets_target"] = row["expected_end_to_end"] >= target
        out.append(row)
    if out:
        log(f"\n== the runner against its targets (gpujob-run: measured end to end; the others: the model step, with "
            f"the loader's capacity here at data.loader_workers auto = {auto}, mp3 48 kHz, from the CPU part) ==")
        log("\n".join(table(["model", "recipe", "samples/s", "loader here", "end to end", "target", "meets"],
                            [[o["model"], o["recipe"], rate(o["samples_per_s"]),
                              "(in it)" if o["end_to_end"] else rate(o.get("loader_samples_per_s")),
                              rate(o.get("expected_end_to_end")), fmt(o["target_samples_per_s"]),
                              {True: "yes", False: "no"}.get(o.get("meets_target"), "-")] for o in out],
                            right={2, 3, 4, 5})))
    return out
