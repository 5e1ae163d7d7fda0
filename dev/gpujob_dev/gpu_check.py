"""``make gpu-check``: the GPU-only paths on a real GPU, in a few minutes, with no network.

    python -m gpujob_dev.gpu_check --prepare-only                # here: make the bundle (.assets/gpu-check)
    python -m gpujob_dev.gpu_check                               # on the GPU machine: run everything
    python -m gpujob_dev.gpu_check --device cpu --out /tmp/c.json  # the same on the CPU, tiny model only

Steps, in order:

1. the bundle: the real Whisper tokenizer and processor inside a tiny random Whisper, a few synthesized
   Greek clips (train/ and heldout/), and with ``--wheels`` the wheels of gpujob, gpujob-dev and the
   runner's pure-Python dependencies, for ``pip install --no-index --find-links`` on the target;
2. the runner (``python -m gpujob.runner``) trains, then evaluates, the tiny model: bf16 on a GPU,
   fp32 on the CPU;
3. whisper-small with random weights (built from its config, nothing downloaded) trains a few steps
   through the runner, bf16 (GPU only);
4. the benchmark (``python -m gpujob_dev.bench``): the runner's step for whisper-small, -medium and
   frozen-encoder small, and evaluation at ``batch_size: auto`` (tiny model on the CPU).

It prints one table against the targets and writes one JSON (device, versions, every figure) to
``docs/bench/<gpu-name>.json``; on the CPU only where ``--out`` says. A step that fails is reported
as failed, and the others still run; the exit status is 1 when any step failed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUNDLE = REPO / ".assets" / "gpu-check"
# (what, bench model, bench recipe or "eval", target, unit): the targets for one GPU
TARGETS = [("small full fine-tune", "small", "gpujob", 300, "samples/s"),
           ("medium full fine-tune", "medium", "gpujob", 100, "samples/s"),
           ("small frozen encoder", "small", "gpujob-frozen", 450, "samples/s"),
           ("evaluation, batch_size auto", "small", "eval", 250, "utt/s")]
# the runner's imports that a GPU image with torch and transformers may lack (pure Python or manylinux wheels)
WHEEL_PACKAGES = ["jiwer", "rapidfuzz", "soundfile", "soxr", "pydantic", "pydantic-core", "PyYAML",
                  "annotated-types", "typing-inspection", "click"]
RUNNER_TIMEOUT_S = 600


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ----------------------------------------------------------------------------- 1. the bundle


def prepare(bundle: Path, *, wheels: bool = False) -> dict[str, Path]:
    """The tiny model (with the real tokenizer/processor) and a few Greek clips, made once under ``bundle``."""
    from .greek_speech import build
    from .tiny_whisper import tiny_whisper

    bundle.mkdir(parents=True, exist_ok=True)
    tiny = bundle / "whisper-tiny"
    if not (tiny / "model.safetensors").is_file():
        tiny_whisper(tiny)
    speech = build(bundle / "greek", train=16, heldout=4).out_dir
    paths = {"tiny": tiny, "speech": speech}
    if wheels:
        paths["wheels"] = _wheels(bundle / "wheels")
    return paths


def _wheels(folder: Path) -> Path:
    """gpujob and gpujob-dev as wheels, and the runner's small dependencies at the versions installed here."""
    from importlib.metadata import PackageNotFoundError, version

    folder.mkdir(parents=True, exist_ok=True)
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--quiet"]
    subprocess.run(pip + ["wheel", "--no-deps", "-w", str(folder), str(REPO), str(REPO / "dev")], check=True)
    pins = []
    for name in WHEEL_PACKAGES:
        try:
            pins.append(f"{name}=={version(name)}")
        except PackageNotFoundError:
            continue
    subprocess.run(pip + ["download", "--no-deps", "--only-binary=:all:", "-d", str(folder), *pins], check=True)
    return folder


def random_small(bundle: Path, tiny: Path) -> Path:
    """whisper-small with random weights, from its config (nothing downloaded), with the tiny model's tokenizer."""
    import shutil

    import torch
    from transformers import WhisperForConditionalGeneration

    from .bench.models import whisper_config
    from .convert_ct2 import PROCESSOR_FILES

    out = bundle / "whisper-small-random"
    if (out / "model.safetensors").is_file():
        return out
    torch.manual_seed(0)
    model = WhisperForConditionalGeneration(whisper_config("small"))
    model.generation_config = type(model.generation_config).from_pretrained(tiny)
    model.save_pretrained(out, safe_serialization=True)
    for name in PROCESSOR_FILES:
        if (tiny / name).is_file():
            shutil.copyfile(tiny / name, out / name)
    return out


# ----------------------------------------------------------------------------- 2, 3. the runner


def runner_spec(kind: str, model: Path, speech: Path, out: Path, *, gpu: bool, max_steps: int,
                batch: int) -> dict[str, Any]:
    """A train or evaluate spec for the runner; bf16 on a GPU, fp32 on the CPU."""
    spec: dict[str, Any] = {
        "apiVersion": "gpujob/v1", "kind": kind, "name": f"gpu-check-{kind}",
        "model": {"checkpoint": str(model), "language": "el"},
        "data": {"eval": [{"dataset": str(speech), "split": "heldout"}]},
        "evaluation": {"batch_size": "auto"},
        "output": {"dir": str(out)},
        "resources": {"gpus": 1 if gpu else 0},
        # the same generation limit for both kinds: the evaluate run then scores exactly what the train run's
        # last evaluation scored (with Whisper's default of 225 a random tiny model babbles 5x longer)
        "training": {"generation_max_length": 40},
    }
    if kind == "train":
        spec["data"]["train"] = [{"dataset": str(speech), "split": "train"}]
        spec["training"] |= {"max_steps": max_steps, "per_device_batch_size": batch, "learning_rate": 1e-3,
                            "warmup_steps": 1, "eval_steps": 1000, "save_steps": 1000,
                            "precision": "bf16" if gpu else "fp32"}
    return spec


def run_runner(name: str, spec: dict[str, Any], work: Path) -> dict[str, Any]:
    """``python -m gpujob.runner`` on ``spec``: its end event, its last eval's WER, and the wall time."""
    from gpujob.events import parse_line

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{name}.json"
    path.write_text(json.dumps(spec))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPUJOB_OUTPUT_DIR": spec["output"]["dir"]}
    if not spec["resources"]["gpus"]:
        env["CUDA_VISIBLE_DEVICES"] = ""
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", "gpujob.runner", str(path)], capture_output=True, text=True,
                              env=env, timeout=RUNNER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return {"step": name, "status": "failed", "message": f"no end after {RUNNER_TIMEOUT_S} s"}
    seconds = time.perf_counter() - started
    events = [e for line in done.stdout.splitlines() for e in parse_line(line)]
    end = next((e for e in reversed(events) if e["event"] == "end"), {})
    wer = next((e.get("wer") for e in reversed(events) if e["event"] == "eval" and "wer" in e), None)
    ok = done.returncode == 0 and end.get("status") == "succeeded"
    result = {"step": name, "status": "ok" if ok else "failed", "seconds": round(seconds, 1), "wer": wer,
              "steps": spec.get("training", {}).get("max_steps"), "precision": spec.get("training", {}).get("precision")}
    if not ok:
        result["message"] = end.get("message") or done.stderr.strip().splitlines()[-1:] or f"exit {done.returncode}"
    return result


# ----------------------------------------------------------------------------- 4. the benchmark


def run_bench(gpu: bool, work: Path, time_limit: float | None) -> list[dict[str, Any]]:
    """The benchmark's GPU part as subprocesses; small and medium on a GPU, the tiny model (--quick) on the CPU."""
    if gpu:
        runs = [("small", ["--model", "small", "--recipes", "gpujob,gpujob-frozen"]),
                ("medium", ["--model", "medium", "--recipes", "gpujob", "--no-eval"])]
    else:
        runs = [("tiny", ["--quick", "--device", "cpu", "--recipes", "gpujob,gpujob-frozen"])]
    results = []
    for name, extra in runs:
        out = work / f"bench-{name}.json"
        cmd = [sys.executable, "-m", "gpujob_dev.bench", "--part", "gpu", "--json", str(out), *extra]
        if time_limit:
            cmd += ["--time-limit", str(time_limit)]
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
        data = json.loads(out.read_text()) if out.is_file() else {}
        results.append({"step": f"bench {name}", "status": "ok" if done.returncode == 0 and data else "failed",
                        "message": None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["?"])[-1],
                        "train": data.get("train", []), "eval": data.get("eval", [])})
    return results


def figures(bench: list[dict[str, Any]], gpu: bool) -> list[dict[str, Any]]:
    """Each target with its measured figure (None where not measured, with the reason)."""
    train = [row for b in bench for row in b["train"]]
    evals = [row for b in bench for row in b["eval"]]
    out = []
    for what, model, recipe, target, unit in TARGETS:
        skipped = not gpu and model != "small"
        row: dict[str, Any] = {"target": what, "model": model if gpu or skipped else "tiny", "unit": unit,
                               "goal": target, "measured": None}
        if skipped:
            row["note"] = f"skipped: whisper-{model} runs on a GPU only"
            out.append(row)
            continue
        if recipe == "eval":
            found = next((r for r in evals if r.get("runner") and r.get("status") == "ok"), None)
            value = found and found.get("utt_per_s")
            row["batch"] = found and found.get("batch")
        else:
            found = next((r for r in train if r.get("recipe") == recipe and r.get("model") == row["model"]), None)
            value = found and found.get("samples_per_s")
        row["measured"] = round(value, 2) if value else None
        if not value:
            row["note"] = "not measured: " + str((found or {}).get("status") or "missing from the benchmark")
        elif gpu:
            row["meets"] = value >= target
        else:
            row["note"] = "tiny model on the CPU: a smoke test, not against the target"
        out.append(row)
    return out


def table(rows: list[dict[str, Any]]) -> str:
    lines = [f"{'target':30} {'model':7} {'goal':>16} {'measured':>10}  verdict", "-" * 80]
    for r in rows:
        verdict = {True: "meets", False: "below"}.get(r.get("meets"), r.get("note", ""))
        measured = f"{r['measured']:.1f}" if r["measured"] is not None else "-"
        lines.append(f"{r['target']:30} {r['model']:7} {'≥ ' + str(r['goal']) + ' ' + r['unit']:>16} "
                     f"{measured:>10}  {verdict}")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- the whole check


def device_info(gpu: bool) -> dict[str, Any]:
    import torch
    import transformers

    info: dict[str, Any] = {"type": "cuda" if gpu else "cpu", "host": platform.node(),
                            "versions": {"python": platform.python_version(), "torch": torch.__version__,
                                         "torch_cuda": torch.version.cuda, "transformers": transformers.__version__}}
    if gpu:
        from gpujob.runner.cuda_check import driver_version

        props = torch.cuda.get_device_properties(0)
        info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                    capability=f"{props.major}.{props.minor}", driver=driver_version())
    return info


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=("cuda", "cpu"), default=None, help="default: cuda where available, else cpu")
    p.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help=f"the bundle's folder (default {DEFAULT_BUNDLE})")
    p.add_argument("--prepare-only", action="store_true", help="make the bundle and stop (to copy it to a GPU machine)")
    p.add_argument("--wheels", action="store_true", help="add wheels for an offline target to the bundle (needs an index)")
    p.add_argument("--out", type=Path, default=None, help="the JSON (default docs/bench/<gpu-name>.json on a GPU; "
                   "none on the CPU)")
    p.add_argument("--small-steps", type=int, default=3, help="whisper-small training steps (default 3)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS",
                   help="passed to each benchmark run (--time-limit)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    paths = prepare(args.bundle, wheels=args.wheels)
    log(f"bundle: {args.bundle} (tiny model, {paths['speech'].name} clips" + (", wheels" if args.wheels else "") + ")")
    if args.prepare_only:
        return 0
    import torch

    gpu = (args.device or ("cuda" if torch.cuda.is_available() else "cpu")) == "cuda"
    if gpu and not torch.cuda.is_available():
        from gpujob.runner.cuda_check import problem

        log(f"gpu-check: --device cuda, but {problem(1) or 'torch.cuda.is_available() is False'}")
        return 2
    started = datetime.datetime.now(datetime.timezone.utc)
    info = device_info(gpu)
    log(f"device: {info.get('name', 'cpu')}; " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()))
    work = args.bundle / "runs" / started.strftime("%Y%m%d-%H%M%S")
    steps: list[dict[str, Any]] = []

    log("\n1. the runner: train, then evaluate, the tiny model" + (" in bf16" if gpu else " in fp32 (CPU)"))
    train = run_runner("train-tiny", runner_spec("train", paths["tiny"], paths["speech"], work / "train-tiny",
                                                 gpu=gpu, max_steps=4, batch=4), work)
    steps.append(train)
    trained = work / "train-tiny" / "model"
    steps.append(run_runner("evaluate-tiny", runner_spec("evaluate", trained if trained.is_dir() else paths["tiny"],
                                                         paths["speech"], work / "evaluate-tiny", gpu=gpu,
                                                         max_steps=0, batch=4), work))
    log("\n2. whisper-small, random weights, through the runner")
    if gpu:
        small = random_small(args.bundle, paths["tiny"])
        steps.append(run_runner("train-small", runner_spec("train", small, paths["speech"], work / "train-small",
                                                           gpu=True, max_steps=args.small_steps, batch=8), work))
    else:
        steps.append({"step": "train-small", "status": "skipped", "message": "skipped on the CPU: whisper-small "
                      "runs on a GPU only"})
    log("\n3. the benchmark: " + ("small, medium, frozen-encoder small, evaluation at batch_size auto" if gpu
                                  else "tiny model on the CPU (small and medium skipped)"))
    bench = run_bench(gpu, work, args.time_limit)
    steps += [{k: v for k, v in b.items() if k not in ("train", "eval")} for b in bench]
    for s in steps:
        log(f"  {s['step']:16} {s['status']}" + "".join(f", {k} {s[k]}" for k in ("seconds", "wer", "message")
                                                       if s.get(k) is not None))
    rows = figures(bench, gpu)
    log("\n" + table(rows))
    result = {"date": started.isoformat(timespec="seconds"), "device": info, "steps": steps, "targets": rows,
              "bench": bench}
    out = args.out or (REPO / "docs" / "bench" / f"{slug(info['name'])}.json" if gpu else None)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=2, default=str) + "\n")
        log(f"\nwritten to {out}")
    return 1 if any(s["status"] == "failed" for s in steps) else 0


if __name__ == "__main__":
    sys.exit(main())
