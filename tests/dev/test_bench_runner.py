"""python -m gpujob_dev.bench: a smoke run on the CPU (tiny model, a handful of clips) and its report.

The GPU figures need an H100/H200 (docs/performance.md); here the same code runs with --quick --device cpu,
and the report is checked for its sections, its rows and that the JSON holds the printed numbers. The run takes
40-50 s on 2 cores, so those tests are marked slow; the out-of-memory test is not.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("soundfile")

DEV = Path(__file__).resolve().parents[2] / "dev"  # the development package, for the benchmark's own process
TARGETS = ("small full fine-tune", "medium full fine-tune", "small frozen encoder")


def same(json_value: float, shown: str) -> bool:
    """``shown`` is ``json_value`` as the report prints it (one decimal, three below 1)."""
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    return abs(json_value - float(shown)) <= 0.5 * 10 ** -decimals + 1e-9


def cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def table_after(lines: list[str], header_start: str) -> tuple[list[str], list[list[str]]]:
    """The header and rows of the first table whose header line starts with ``header_start``."""
    i = next(n for n, line in enumerate(lines) if line.startswith(header_start))
    assert set(lines[i + 1].replace(" ", "")) == {"-"}, lines[i + 1]
    rows = []
    for line in lines[i + 2:]:
        if not line.strip() or line.startswith(("==", "x2022 =", "note:", "  ")):
            break
        rows.append(cells(line))
    return cells(lines[i]), rows


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path = out / "bench.json"
    path = os.pathsep.join(p for p in (str(DEV), os.environ.get("PYTHONPATH")) if p)
    # GPUJOB_CPU_PRECISION as tests/conftest.py sets it for each test (a module fixture runs before it does):
    # precision auto is fp32 here, not measured under whatever load the machine has
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "PYTHONPATH": path,
           "GPUJOB_CPU_PRECISION": "fp32"}
    proc = subprocess.run([sys.executable, "-m", "gpujob_dev.bench", "--quick", "--device", "cpu",
                           "--json", str(json_path)], capture_output=True, text=True, timeout=240, env=env, cwd=out)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout.splitlines(), json.loads(json_path.read_text())


@pytest.mark.slow  # one ~40-50 s subprocess (shared by the module)
def test_cpu_section_measures_every_stage_per_core(report):
    lines, data = report
    assert any(line.startswith("== CPU: data loading, per core") for line in lines)
    header, rows = table_after(lines, "stage ")
    assert header[:4] == ["stage", "clips/s", "audio-s/s", "ms/clip"]
    by_stage = {row[0]: row[1] for row in rows}
    for stage in ("decode wav 16 kHz", "decode flac 16 kHz", "decode flac 44.1 kHz", "decode mp3 48 kHz",
                  "resample 44.1 -> 16 kHz", "resample 48 -> 16 kHz", "log-mel, WhisperFeatureExtractor"):
        assert float(by_stage[stage]) > 0, stage
    assert any(s.startswith("log-mel, runner features()") and float(v) > 0 for s, v in by_stage.items())
    # the JSON holds the printed numbers
    stages = {s["stage"]: s for s in data["cpu"]["stages"]}
    assert set(stages) == set(by_stage)
    for stage, shown in by_stage.items():
        assert same(stages[stage]["clips_per_s"], shown), (stage, shown)
        assert stages[stage]["audio_s_per_s"] > 0


@pytest.mark.slow  # one ~40-50 s subprocess (shared by the module)
def test_keep_up_table_names_the_three_targets_with_cores_and_a_verdict(report):
    lines, data = report
    header, rows = table_after(lines, "target ")
    assert header[:5] == ["target", "samples/s", "pipeline (CPU work per sample)", "per core", "cores needed"]
    for target, rate in zip(TARGETS, (300, 100, 450)):
        mine = [r for r in rows if r[0] == target]
        assert mine, target
        for r in mine:
            assert int(r[1]) == rate
            assert int(r[4]) >= 1
            assert r[5] in ("yes", "no") and r[6] in ("yes", "no")
    keep = data["cpu"]["keep_up"]
    assert {k["target"] for k in keep} == set(TARGETS)
    for k in keep:
        assert k["cores_needed"] * k["per_core_clips_per_s"] >= k["samples_per_s"]
        assert k["keeps_up_here"] == (k["cores_needed"] <= k["cores_here"])


@pytest.mark.slow  # one ~40-50 s subprocess (shared by the module)
def test_loader_table_runs_the_runners_own_pipeline_per_thread_count(report):
    lines, data = report
    header, rows = table_after(lines, "data.loader_workers ")
    assert header[:4] == ["data.loader_workers", "samples/s", "audio-s/s", "x inline"]
    loader = data["cpu"]["loader"]
    assert [r["workers"] for r in loader["runs"]] == sorted({0, 1, max(1, data["cores"] - 1), data["cores"]})
    assert rows[0][0] == "0 (inline)" and rows[0][3] == "1.00"
    for row, run in zip(rows, loader["runs"]):
        assert same(run["samples_per_s"], row[1]) and run["samples_per_s"] > 0
        assert row[4:] == ["yes" if run["samples_per_s"] >= t else "no" for t in (300, 100, 450)]
    assert loader["rows"] == 12 and loader["labels"] is True  # the real Whisper tokenizer made the labels


@pytest.mark.slow  # one ~40-50 s subprocess (shared by the module)
def test_the_runner_end_to_end_row_comes_from_train_run_and_the_summary_shows_it(report):
    lines, data = report
    train = {r["recipe"]: r for r in data["train"]}
    for name in ("gpujob-run", "gpujob-run-frozen"):
        row = train[name]
        assert row["status"] == "ok" and row["samples_per_s"] > 0, row
        assert row["loader_workers"] >= 1 and row["rows"] == 1000 + 2 * 2  # shuffle buffer + the steps' batches
        assert any(line.startswith("model ") for line in row["runner_output"])  # train.run's own first line
    assert train["gpujob-run-frozen"]["setup"]["frozen_encoder"] is True
    header, rows = table_after(lines, "model  recipe ")
    assert header == ["model", "recipe", "samples/s", "loader here", "end to end", "target", "meets"]
    by_recipe = {r[1]: r for r in rows}
    assert by_recipe["gpujob-run"][3] == "(in it)"
    assert float(by_recipe["gpujob"][3]) > 0  # the loader's capacity from the CPU part
    assert {s["recipe"] for s in data["summary"]} == {r for r in train if r.startswith("gpujob")}


@pytest.mark.slow  # one ~40-50 s subprocess (shared by the module)
def test_training_table_has_the_2022_recipe_the_runner_and_ratios(report):
    lines, data = report
    header, rows = table_after(lines, "recipe ")
    for column in ("samples/s", "x2022", "ref", "TFLOP/sample", "MFU", "peak GiB"):
        assert column in header
    col = {name: header.index(name) for name in header}
    by_recipe = {r[0]: r for r in rows}
    for recipe in ("2022", "sdpa-bf16", "2022-frozen", "sdpa-bf16-frozen", "gpujob", "gpujob-frozen", "gpujob-audio",
                   "gpujob-run", "gpujob-run-frozen"):
        assert recipe in by_recipe, recipe
        assert float(by_recipe[recipe][col["samples/s"]]) > 0, by_recipe[recipe]
        assert float(by_recipe[recipe][col["x2022"]]) > 0
    assert by_recipe["2022"][col["x2022"]] == "1.00"
    assert "sdpa-bf16-compile" not in by_recipe  # left out of --quick
    train = {r["recipe"]: r for r in data["train"]}
    assert set(train) == set(by_recipe)
    for name, row in by_recipe.items():
        assert train[name]["status"] == "ok"
        assert same(train[name]["samples_per_s"], row[col["samples/s"]]), (name, row)
        assert same(train[name]["x_2022"], row[col["x2022"]]), (name, row)
        assert train[name]["flop_per_sample"] > 0 and 0 < train[name]["mfu"] < 1
    # the runner rows are set up by the runner's own code
    assert train["gpujob"]["setup"]["precision"] == "fp32"  # model.pick_precision('auto') on a CPU
    assert train["gpujob-frozen"]["setup"]["frozen_encoder"] is True
    assert train["gpujob-frozen"]["flop_per_sample"] < train["gpujob"]["flop_per_sample"]
    assert train["2022"]["setup"] == {"attention": "eager", "precision": "fp16", "checkpointing": "reentrant",
                                      "frozen_encoder": False, "compiled": False, "adamw": "foreach"}


@pytest.mark.slow  # one ~40-50 s subprocess (shared by the module)
def test_evaluation_rows_and_json_metadata(report):
    lines, data = report
    assert any(line.startswith("== cpu: evaluation") for line in lines)
    rows = data["eval"]
    assert [r["status"] for r in rows] == ["ok"] * 4
    assert rows[0]["config"].startswith("2022") and rows[-1]["config"].startswith("gpujob")
    assert all(r["utt_per_s"] > 0 and r["new_tokens"] == 8 for r in rows)
    for key in ("date", "cpu_model", "cores", "versions", "device"):
        assert data[key]
    assert {"torch", "transformers", "numpy"} <= set(data["versions"])
    assert data["flop_per_sample"]["tiny"]["full"] > data["flop_per_sample"]["tiny"]["frozen_encoder"] > 0


def test_an_out_of_memory_recipe_is_reported_and_the_run_goes_on(monkeypatch):
    import torch

    from gpujob_dev.bench import training
    from gpujob_dev.bench.common import RECIPE_BY_NAME

    def oom(*_args, **_kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")

    monkeypatch.setattr(training, "build_model", oom)
    row = training.run_recipe(RECIPE_BY_NAME["sdpa-bf16"], "tiny", torch.device("cpu"), 64, 1, 1,
                              None, None, [])
    assert row["status"] == "OOM at batch 64"
    assert "samples_per_s" not in row
