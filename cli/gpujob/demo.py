"""A small job that speaks the progress protocol: ``python -m gpujob.demo``.

It fits a straight line y = 3x + 2 to noisy points by mini-batch gradient
descent, so its loss really falls, and reports like a training job would:
``start``, ``progress`` every step, ``eval`` (with a stand-in error rate: the
share of held-out points predicted outside a tolerance) and ``checkpoint``
at a cadence, and ``end`` with final metrics. Used by ``jobs/hello.yaml`` and
the tests, so the whole submit → logs → status path runs without a GPU.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import sys
import time
from pathlib import Path

from gpujob.progress import ProgressWriter


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m gpujob.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--step-time", type=float, default=0.05, help="seconds each step sleeps")
    parser.add_argument("--eval-every", type=int, default=20)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--fail-at", type=int, default=None, help="raise an error at this step")
    parser.add_argument("--exit-code", type=int, default=1, help="exit code used with --fail-at")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    out = Path(os.environ.get("GPUJOB_OUTPUT_DIR", "outputs/demo"))
    out.mkdir(parents=True, exist_ok=True)
    stop = {"asked": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(asked=True))

    rng = random.Random(args.seed)
    points = [(x, 3 * x + 2 + rng.gauss(0, 0.1)) for x in (rng.uniform(-1, 1) for _ in range(512))]
    train, held_out = points[:448], points[448:]
    w, b, lr = 0.0, 0.0, 0.1
    writer = ProgressWriter()
    writer.start(total_steps=args.steps, name=os.environ.get("GPUJOB_JOB_NAME", "demo"), kind="command")
    print(f"fitting y = w*x + b on {len(train)} points for {args.steps} steps", flush=True)

    wer = None
    for step in range(1, args.steps + 1):
        t0 = time.perf_counter()
        batch = rng.sample(train, args.batch_size)
        grad_w = sum(2 * (w * x + b - y) * x for x, y in batch) / len(batch)
        grad_b = sum(2 * (w * x + b - y) for x, y in batch) / len(batch)
        w, b = w - lr * grad_w, b - lr * grad_b
        loss = sum((w * x + b - y) ** 2 for x, y in batch) / len(batch)
        time.sleep(args.step_time)
        if args.fail_at == step:
            print(f"RuntimeError: demo failure requested at step {step}", file=sys.stderr, flush=True)
            writer.end(status="failed", message=f"demo failure requested at step {step}")
            return args.exit_code
        elapsed = max(time.perf_counter() - t0, 1e-9)
        writer.progress(step=step, total_steps=args.steps, epoch=step * args.batch_size / len(train),
                        loss=round(loss, 6), learning_rate=lr, samples_per_s=round(args.batch_size / elapsed, 1))
        if step % args.eval_every == 0 or step == args.steps:
            misses = sum(abs(w * x + b - y) > 0.2 for x, y in held_out)
            wer = misses / len(held_out)
            eval_loss = sum((w * x + b - y) ** 2 for x, y in held_out) / len(held_out)
            writer.eval(step=step, wer=round(wer, 4), eval_loss=round(eval_loss, 6))
            ckpt = out / f"checkpoint-{step}.json"
            ckpt.write_text(json.dumps({"step": step, "w": w, "b": b}))
            writer.checkpoint(step=step, path=str(ckpt))
        if stop["asked"]:
            ckpt = out / f"checkpoint-{step}.json"
            ckpt.write_text(json.dumps({"step": step, "w": w, "b": b}))
            writer.checkpoint(step=step, path=str(ckpt))
            print(f"SIGTERM received at step {step}: checkpoint saved, stopping", flush=True)
            writer.end(status="failed", message="stopped by SIGTERM")
            return 143
    metrics = {"wer": wer, "w": round(w, 4), "b": round(b, 4)}
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    writer.artifact(path=str(out / "metrics.json"), name="metrics")
    writer.end(status="succeeded", metrics=metrics)
    print(f"done: w={w:.3f} b={b:.3f} (true 3, 2)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
