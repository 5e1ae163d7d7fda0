"""`make gpu-check` (python -m gpujob_dev.gpu_check) with --device cpu: the whole script on the tiny model, as a
lent GPU machine would run it, minus whisper-small and -medium, which it must say it skipped. No GPU figure
is claimed: every target row on the CPU is a smoke figure or "skipped"."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[2]


def test_the_gpu_check_runs_on_the_cpu_on_the_tiny_model(tmp_path, tiny_model):
    bundle = tmp_path / "bundle"
    shutil.copytree(tiny_model, bundle / "whisper-tiny")  # the fixture's tiny model: the bundle's first part
    before = sorted((REPO / "docs" / "bench").glob("*")) if (REPO / "docs" / "bench").is_dir() else []
    out = tmp_path / "check.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    done = subprocess.run([sys.executable, "-m", "gpujob_dev.gpu_check", "--device", "cpu", "--bundle", str(bundle),
                           "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())

    # the bundle: the tiny model with the real tokenizer, and Greek clips in both splits
    assert (bundle / "whisper-tiny" / "tokenizer.json").is_file()
    for split in ("train", "heldout"):
        assert len(list((bundle / "greek" / split).glob("*.wav"))) >= 4

    # the steps, in order: the runner's train and evaluate (fp32 here), whisper-small skipped, the benchmark
    steps = {s["step"]: s for s in result["steps"]}
    assert list(steps) == ["train-tiny", "evaluate-tiny", "train-small", "bench tiny"]
    assert steps["train-tiny"]["status"] == "ok" and steps["train-tiny"]["precision"] == "fp32"
    assert steps["evaluate-tiny"]["status"] == "ok" and steps["evaluate-tiny"]["wer"] >= 0
    # the evaluate run scores the trained model as the train run's last evaluation did
    assert steps["evaluate-tiny"]["wer"] == pytest.approx(steps["train-tiny"]["wer"], abs=1e-6)
    assert steps["train-small"]["status"] == "skipped" and "GPU only" in steps["train-small"]["message"]
    assert steps["bench tiny"]["status"] == "ok"
    assert result["device"]["type"] == "cpu" and "name" not in result["device"]
    assert result["device"]["versions"]["torch"]

    # the targets: CPU smoke figures for small/frozen/eval, medium skipped with the words, no verdict anywhere
    rows = {r["target"]: r for r in result["targets"]}
    assert [(r["goal"], r["unit"]) for r in rows.values()] == [(300, "samples/s"), (100, "samples/s"),
                                                              (450, "samples/s"), (250, "utt/s")]
    medium = rows["medium full fine-tune"]
    assert medium["measured"] is None and medium["note"] == "skipped: whisper-medium runs on a GPU only"
    for name in ("small full fine-tune", "small frozen encoder", "evaluation, batch_size auto"):
        assert rows[name]["model"] == "tiny" and rows[name]["measured"] > 0 and "meets" not in rows[name]
    bench_train = {r["recipe"]: r["samples_per_s"] for r in result["bench"][0]["train"] if r.get("samples_per_s")}
    assert rows["small frozen encoder"]["measured"] == round(bench_train["gpujob-frozen"], 2)

    # the printed table holds the same figures, and nothing landed in docs/bench
    lines = [line for line in done.stdout.splitlines() if line.startswith(tuple(rows))]
    assert len(lines) == 4
    for line in lines:
        row = rows[next(name for name in rows if line.startswith(name))]
        assert (f"{row['measured']:.1f}" if row["measured"] is not None else " - ") in line
    assert "skipped: whisper-medium runs on a GPU only" in done.stdout
    after = sorted((REPO / "docs" / "bench").glob("*")) if (REPO / "docs" / "bench").is_dir() else []
    assert after == before
