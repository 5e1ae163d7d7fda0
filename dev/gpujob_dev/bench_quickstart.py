"""The quickstart's time per stage on this CPU, as it is and with oneDNN capped to smaller CPUs.

    python -m gpujob_dev.bench_quickstart [--isa default,AVX512_CORE_BF16,AVX2] [--short] [--json PATH]

For each ISA, in a subprocess of its own with ``ONEDNN_MAX_CPU_ISA`` set (``default``: not set; ``AVX2`` also
sets ``MKL_ENABLE_INSTRUCTIONS=AVX2``, as fp32 matmuls go through MKL) and a fresh ``GPUJOB_HOME``, it submits ``jobs/quickstart.yaml`` with ``--follow`` and times the lines as they come:

- **assets**: ``make assets``'s two commands (whisper-base converted, the Greek speech spoken), once, with
  ``--assets`` (into ``.assets/`` where missing, else into a temporary folder); without it the ``.assets/``
  already built is used and this reads ``-``
- **start + zero-shot**: submit to the ``before training:`` line (model load, the precision probe, the frozen
  encoder on the evaluation clips, generation)
- **training**: from there to the ``frozen encoder:`` line the runner prints after its last step; the seconds the
  frozen encoder took inside it (once per clip, cached) are shown on their own as **encoder cache**
- **final eval**: to the ``after training:`` line; **total**: to the job's exit

and the precision the probe chose, with its measured ratio, and the unseen voices' WER before and after.
On a CPU with AMX, ``AVX512_CORE_BF16`` approximates a CPU with AVX512-BF16 only (AMD EPYC Genoa, say) and
``AVX2`` an older one (issue 28). ``--short`` (CI): 4 training steps and 8 generated tokens, the stages only.
Every time depends on the load beside it; the load average is printed with each row.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("assets", "start + zero-shot", "encoder cache", "training", "final eval", "total")
SHORT = ["--set", "training.max_steps=4", "--set", "training.generation_max_length=8",
         "--set", "training.save_steps=4", "--set", "training.warmup_steps=1"]
MARKS = {"zero": re.compile(r"before training: WER"), "encoder": re.compile(r"frozen encoder: (\d+) clips encoded once, in ([\d.]+) s"),
         "final": re.compile(r"after training: WER"), "precision": re.compile(r"; precision (\w+);"), "why": re.compile(r"\((auto: .*)\)\s*$"),
         "unseen": re.compile(r"unseen WER ([\d.]+)%")}


def stage_times(lines: list[tuple[float, str]], end: float, assets: float | None = None) -> dict:
    """Seconds per stage, from (seconds since submit, line) pairs and the exit time; a stage whose mark never
    came is None."""
    at: dict[str, float] = {}
    out: dict = {"assets": assets, "precision": None, "unseen_before": None, "unseen_after": None, "encoder_clips": None,
                 "precision_why": None}
    encoder_s = None
    for t, line in lines:
        for name in ("zero", "encoder", "final"):
            m = MARKS[name].search(line)
            if m and name not in at:
                at[name] = t
                if name == "encoder":
                    out["encoder_clips"], encoder_s = int(m.group(1)), float(m.group(2))
        m = MARKS["precision"].search(line)
        if m and out["precision"] is None and "trainable" in line:
            why = MARKS["why"].search(line)
            out["precision"], out["precision_why"] = m.group(1), why.group(1) if why else None
        m = MARKS["unseen"].search(line)
        if m:
            out["unseen_before" if "before training" in line else "unseen_after"] = float(m.group(1))
    zero, enc, final = at.get("zero"), at.get("encoder"), at.get("final")
    out["start + zero-shot"] = zero
    out["encoder cache"] = encoder_s
    out["training"] = enc - zero if enc is not None and zero is not None else None
    out["final eval"] = final - enc if final is not None and enc is not None else None
    out["total"] = end + (assets or 0.0)
    return out


def build_assets(into: Path) -> float:
    """``make assets``'s commands into ``into``; their seconds."""
    start = time.perf_counter()
    cache = tempfile.mkdtemp(prefix="gpujob-bench-cache-")  # a newcomer's first conversion, not a cache hit
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GPUJOB_CACHE": cache}
    py = sys.executable
    try:
        subprocess.run([py, "-m", "gpujob_dev.convert_ct2", "--out", str(into / "whisper-base")], check=True,
                       env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        subprocess.run([py, "-m", "gpujob_dev.greek_speech", str(into / "greek-speech"), "--heldout", "40",
                        "--extra-sentences", "dev/gpujob_dev/greek_sentences_train.txt"], check=True, env=env,
                       cwd=ROOT, stdout=subprocess.DEVNULL)
    finally:
        shutil.rmtree(cache, ignore_errors=True)
    return time.perf_counter() - start


def run_one(isa: str, *, short: bool, assets: float | None, log=print) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")}
    if isa != "default":
        env["ONEDNN_MAX_CPU_ISA"] = isa
    if isa == "AVX2":  # fp32 matmuls go through MKL, which oneDNN's cap does not reach: cap it too
        env["MKL_ENABLE_INSTRUCTIONS"] = "AVX2"
    home = tempfile.mkdtemp(prefix="gpujob-bench-")  # its registry and model (~1.6 GB): gone after the run
    env["GPUJOB_HOME"] = home
    env.pop("GPUJOB_CPU_PRECISION", None)
    out = Path(home) / "output"  # each run its own: the next one must not resume this one's checkpoints
    cmd = [sys.executable, "-m", "gpujob", "submit", "jobs/quickstart.yaml", "--follow", "--set", f"output.dir={out}",
           *(SHORT if short else [])]
    load = os.getloadavg()[0]
    start = time.perf_counter()
    lines: list[tuple[float, str]] = []
    with subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:
            lines.append((time.perf_counter() - start, line.rstrip()))
            log(f"  [{isa} {lines[-1][0]:6.0f}s] {line.rstrip()}")
    row = stage_times(lines, time.perf_counter() - start, assets)
    shutil.rmtree(home, ignore_errors=True)
    row.update(isa=isa, exit=proc.returncode, load_before=round(load, 2), load_after=round(os.getloadavg()[0], 2))
    return row


def fmt(seconds) -> str:
    return "-" if seconds is None else f"{int(seconds // 60)}m{seconds % 60:04.1f}s"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--isa", default="default,AVX512_CORE_BF16,AVX2",
                   help="comma list of ONEDNN_MAX_CPU_ISA values, 'default' for none (default: all three)")
    p.add_argument("--short", action="store_true", help="4 steps, 8 generated tokens: the stages, not the recipe")
    p.add_argument("--assets", action="store_true", help="time building the assets too (into a temporary folder)")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    p.add_argument("--quiet", action="store_true", help="only the table, not the job's lines")
    args = p.parse_args(argv)
    from gpujob_dev.bench.common import cpu_model

    assets = None
    if args.assets:  # into .assets/ where missing (the job needs them), else into a folder thrown away
        if not (ROOT / ".assets" / "greek-speech").is_dir():
            assets = build_assets(ROOT / ".assets")
        else:
            with tempfile.TemporaryDirectory() as tmp:
                assets = build_assets(Path(tmp))
    elif not (ROOT / ".assets" / "greek-speech").is_dir():
        p.error("no .assets/ here: run `make assets` first, or pass --assets")
    rows = []
    for isa in [s.strip() for s in args.isa.split(",") if s.strip()]:
        rows.append(run_one(isa, short=args.short, assets=assets, log=(lambda s: None) if args.quiet else print))
    print(f"\nquickstart{' (--short)' if args.short else ''} on {cpu_model()}, {os.cpu_count()} cores")
    print("  ".join(f"{h:>17}" for h in ("ONEDNN_MAX_CPU_ISA", *STAGES, "precision", "unseen WER", "load avg")))
    print("  ".join(f"{'':>17}" for _ in range(len(STAGES) + 3)) + "  (1-min average, before/after)")
    for r in rows:
        wer = f"{r['unseen_before']} -> {r['unseen_after']}%" if r["unseen_after"] is not None else "-"
        print("  ".join(f"{v:>17}" for v in (r["isa"], *(fmt(r[s]) for s in STAGES), (r["precision"] or "-")[:17],
                                              wer, f"{r['load_before']}/{r['load_after']}")))
        if r["precision_why"]:
            print(f"{'':>19}{r['precision_why']}")
    if args.json:
        args.json.write_text(json.dumps({"cpu": cpu_model(), "short": args.short, "rows": rows}, indent=2) + "\n")
    return 0 if all(r["exit"] == 0 for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
