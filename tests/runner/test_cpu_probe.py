"""training.precision: auto on a CPU: bf16 where a start-up probe measures it faster (gpujob.runner.cpu_probe)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gpujob.runner import cpu_probe

torch = pytest.importorskip("torch")

timing = st.floats(min_value=1e-5, max_value=10.0, allow_nan=False, allow_infinity=False)
timings = st.lists(timing, min_size=1, max_size=9)


@given(timings, timings, st.floats(min_value=1.0, max_value=3.0))
def test_bf16_is_chosen_exactly_where_its_fastest_run_is_fast_enough(fp32, bf16, min_speedup):
    choice = cpu_probe.decide(fp32, bf16, min_speedup)
    ratio = min(fp32) / min(bf16)
    assert choice.ratio == pytest.approx(ratio)
    assert choice.name == ("bf16" if ratio >= min_speedup else "fp32")
    assert choice.why.startswith(choice.name + ":") and f"{ratio:.2f}x" in choice.why


@given(timings, timings, st.floats(min_value=0.01, max_value=100.0))
def test_the_choice_does_not_depend_on_how_fast_the_machine_is_overall(fp32, bf16, scale):
    """Load that slows both alike (the probe interleaves them) changes no decision."""
    a = cpu_probe.decide(fp32, bf16)
    b = cpu_probe.decide([t * scale for t in fp32], [t * scale for t in bf16])
    assert abs(a.ratio - b.ratio) <= 1e-9 * a.ratio
    if abs(a.ratio - cpu_probe.BF16_MIN_SPEEDUP) > 1e-9:
        assert a.name == b.name


@given(timing, st.integers(min_value=2, max_value=9), st.data(), st.floats(min_value=2.0, max_value=1000.0))
def test_one_outlier_cannot_flip_a_clear_result(base, n, data, spike):
    """A probe run slowed by another process's burst (one timing far off) leaves the fastest, and the choice:
    bf16 twice as fast as it needs to be stays bf16, bf16 half as fast as fp32 stays fp32."""
    i = data.draw(st.integers(min_value=0, max_value=n - 1))
    fast, slow = [base / (2 * cpu_probe.BF16_MIN_SPEEDUP)] * n, [base] * n
    for spiked in (fast, slow):
        spiked[i] *= spike
    assert cpu_probe.decide([base] * n, fast).name == "bf16"
    assert cpu_probe.decide([base / 2] * n, slow).name == "fp32"


@pytest.mark.parametrize("fp32,bf16", [([], [0.1]), ([0.1], []), ([0.1, float("nan")], [0.1]), ([0.1], [0.0]),
                                       ([float("inf")], [0.1]), ([-1.0], [0.1])])
def test_nothing_measured_means_fp32(fp32, bf16):
    choice = cpu_probe.decide(fp32, bf16)
    assert choice.name == "fp32" and choice.ratio is None and "nothing usable" in choice.why


def test_the_environment_can_fix_the_choice(monkeypatch):
    monkeypatch.setenv(cpu_probe.ENV, "bf16")
    assert cpu_probe.choose().name == "bf16"
    from gpujob.runner.model import pick_precision

    p = pick_precision("auto", torch.device("cpu"))
    assert p.name == "bf16" and p.autocast_dtype == torch.bfloat16 and "GPUJOB_CPU_PRECISION" in p.why


def test_auto_on_a_cpu_measures_and_says_why(monkeypatch):
    monkeypatch.delenv(cpu_probe.ENV)
    monkeypatch.setattr(cpu_probe, "measure", lambda *a, **k: ([0.9, 1.0, 0.95], [0.3, 0.35, 0.32]))
    from gpujob.runner.model import cpu_bf16_note, pick_precision

    cpu = torch.device("cpu")
    p = pick_precision("auto", cpu)
    assert p.name == "bf16" and p.autocast_dtype == torch.bfloat16
    assert cpu_bf16_note(p, cpu) == " (auto: bf16: measured 3.00x as fast as fp32 on this CPU (300.0 vs 900.0 ms a probe matmul))"
    # faster, but not by enough to pay for bf16's accuracy (AVX512-BF16 without AMX): fp32, saying so
    monkeypatch.setattr(cpu_probe, "measure", lambda *a, **k: ([0.4, 0.5, 0.45], [0.2, 0.3, 0.25]))
    p = pick_precision("auto", cpu)
    assert p.name == "fp32" and "2.00x" in cpu_bf16_note(p, cpu) and "bf16 needs 2.5x" in cpu_bf16_note(p, cpu)
    monkeypatch.setattr(cpu_probe, "measure", lambda *a, **k: ([0.1] * 3, [0.4] * 3))
    p = pick_precision("auto", cpu)
    assert p.name == "fp32" and p.autocast_dtype is None and "0.25x" in cpu_bf16_note(p, cpu)
    # bf16 asked for by name on a CPU that runs it slower: kept, with a warning naming the measured ratio
    bf16 = pick_precision("bf16", cpu)
    assert bf16.name == "bf16" and "0.25x the speed of fp32" in cpu_bf16_note(bf16, cpu)
    assert "training.precision: fp32" in cpu_bf16_note(bf16, cpu)
    monkeypatch.setattr(cpu_probe, "measure", lambda *a, **k: ([0.4] * 3, [0.1] * 3))
    assert cpu_bf16_note(bf16, cpu) == ""


class OneProcess:
    is_writer = True

    def share(self, obj):
        return obj


def test_a_resumed_job_keeps_the_precision_it_was_trained_in(monkeypatch):
    from gpujob.runner.model import job_precision

    monkeypatch.delenv(cpu_probe.ENV)
    monkeypatch.setattr(cpu_probe, "measure", lambda *a, **k: ([0.4] * 3, [0.1] * 3))  # bf16 4x faster now
    cpu = torch.device("cpu")
    assert job_precision("auto", cpu, None, OneProcess(), None).name == "bf16"
    kept = job_precision("auto", cpu, None, OneProcess(), {"precision": "fp32", "step": 40})
    assert kept.name == "fp32" and kept.autocast_dtype is None and "checkpoint resumed" in kept.why
    assert job_precision("fp32", cpu, None, OneProcess(), {"precision": "bf16"}).name == "fp32"  # named: as named
    assert job_precision("auto", cpu, None, OneProcess(), {"step": 3}).name == "bf16"  # an older checkpoint


def test_the_probe_runs_on_one_thread_and_gives_the_job_its_threads_back():
    before = torch.get_num_threads()
    fp32, bf16 = cpu_probe.measure(64, 128, rows=16, repeats=2)
    assert len(fp32) == len(bf16) == 2 and all(t > 0 for t in fp32 + bf16)
    assert torch.get_num_threads() == before


PROBE = ("import json; from gpujob.runner import cpu_probe as p; f, b = p.measure(); c = p.decide(f, b); "
         "print(json.dumps([c.name, c.ratio]))")


def test_the_real_probe_picks_fp32_on_a_cpu_capped_to_avx2():
    """oneDNN capped to AVX2 (a CPU without AMX or AVX512-BF16) emulates bf16: the probe, run for real in a
    subprocess, measures that and keeps fp32."""
    if os.uname().machine not in ("x86_64", "AMD64"):
        pytest.skip("ONEDNN_MAX_CPU_ISA=AVX2 caps x86-64 CPUs only")
    env = {**os.environ, "ONEDNN_MAX_CPU_ISA": "AVX2"}
    env.pop(cpu_probe.ENV, None)
    out = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    name, ratio = json.loads(out.stdout.strip().splitlines()[-1])
    assert name == "fp32" and ratio < cpu_probe.BF16_MIN_SPEEDUP
