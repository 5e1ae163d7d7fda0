"""Start-up time of the CLI: `gpujob --help` and `gpujob list` must stay under 0.5 s; `gpujob ui` must
listen (print its URL) within 1 s.

Runs each command N times in a fresh interpreter (as a user would), reports the
median and worst wall time, and which heavy modules each one imported.
Usage: python scripts/bench_startup.py [--runs 15]
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HEAVY = ("torch", "transformers", "datasets", "kubernetes", "docker", "pydantic", "ruamel", "rich")
BUDGET_S = 0.5
UI_BUDGET_S = 1.0

PROBE = """
import sys, runpy
sys.argv = ["gpujob", *{args!r}]
try:
    runpy.run_module("gpujob", run_name="__main__")
except SystemExit:
    pass
heavy = sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r}))
sys.stderr.write("HEAVY=" + ",".join(heavy) + "\\n")
"""


def bench(args: list[str], runs: int, env: dict) -> tuple[float, float, str]:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "gpujob", *args], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-c", PROBE.format(args=args, heavy=HEAVY)], env=env,
                           capture_output=True, text=True)
    heavy = next((ln[6:] for ln in probe.stderr.splitlines() if ln.startswith("HEAVY=")), "?")
    return statistics.median(times), max(times), heavy or "none"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=15)
    opts = parser.parse_args()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "GPUJOB_HOME": home}
        subprocess.run([sys.executable, "-m", "gpujob", "list"], env=env, check=True, stdout=subprocess.DEVNULL)
        baseline = bench_python(opts.runs, env)
        print(f"{'command':<16} {'median':>8} {'worst':>8}  heavy modules imported")
        print(f"{'python -c pass':<16} {baseline:>7.3f}s {'':>8}  (interpreter start-up alone)")
        worst_median = 0.0
        for args in (["--help"], ["list"], ["--version"]):
            median, worst, heavy = bench(args, opts.runs, env)
            worst_median = max(worst_median, median)
            print(f"{'gpujob ' + ' '.join(args):<16} {median:>7.3f}s {worst:>7.3f}s  {heavy}")
        ui_median = bench_ui(max(3, opts.runs // 3), env)
        print(f"{'gpujob ui':<16} {ui_median:>7.3f}s {'':>8}  (until its URL is printed: it listens)")
    verdict = "OK" if worst_median < BUDGET_S else "OVER BUDGET"
    print(f"budget {BUDGET_S:.1f}s per command (median): {verdict}")
    ui_verdict = "OK" if ui_median < UI_BUDGET_S else "OVER BUDGET"
    print(f"budget {UI_BUDGET_S:.1f}s for gpujob ui to listen (median): {ui_verdict}")
    return 0 if worst_median < BUDGET_S and ui_median < UI_BUDGET_S else 1


def bench_ui(runs: int, env: dict) -> float:
    """Seconds from starting `gpujob ui --port 0` to its URL on stdout (the socket listens by then)."""
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-m", "gpujob", "ui", "--port", "0"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        line = proc.stdout.readline()
        times.append(time.perf_counter() - t0)
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        if not line.startswith("gpujob ui: "):
            raise SystemExit(f"gpujob ui printed {line!r}, not its URL")
    return statistics.median(times)


def bench_python(runs: int, env: dict) -> float:
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], env=env, check=True)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


if __name__ == "__main__":
    sys.exit(main())
