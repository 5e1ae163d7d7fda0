"""Trackers fed by the runner, for real and offline: a tiny Whisper train job with two eval sources logs to
TensorBoard (read back with tensorboard's own EventAccumulator), W&B in offline mode (its run file read back),
MLflow with a local file store (MlflowClient) and trackio locally (its own storage reader), and each holds the
same loss and per-source WER values as the job's events. A tracker that fails warns once; the job goes on."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tiny_runs import write_greek_folder  # noqa: E402

from gpujob.events import parse_line  # noqa: E402
from gpujob.progress import ProgressWriter  # noqa: E402
from gpujob.runner.tracking import TrackedWriter  # noqa: E402

SECRET = "s3cr3t-value-that-must-not-leak"


@pytest.fixture(scope="module")
def greek(tmp_path_factory) -> Path:
    return write_greek_folder(tmp_path_factory.mktemp("greek"))


def train_spec(tmp_path: Path, model: Path, data: Path, tracking: dict, *, steps: int = 6) -> Path:
    spec = {
        "apiVersion": "gpujob/v1", "kind": "train", "name": "tiny-tracked",
        "model": {"checkpoint": str(model), "language": "el"},
        "data": {"train": [{"dataset": str(data), "split": "train"}],
                 "eval": [{"dataset": str(data), "split": "heldout"},
                          {"dataset": str(data), "split": "train", "name": "seen"}]},
        "training": {"max_steps": steps, "per_device_batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1,
                     "eval_steps": 3, "save_steps": 1000, "precision": "fp32", "generation_max_length": 20},
        "evaluation": {"batch_size": 8},
        "output": {"dir": str(tmp_path / "out")},
        "resources": {"gpus": 0},
        "runtime": {"secrets": ["TRACKED_TOKEN"]},
        "tracking": tracking,
    }
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def run_job(spec: Path, home: Path) -> tuple[int, list[dict], str]:
    """The runner as a job runs it, with an empty home (no W&B login, no trackio or MLflow state) and a secret."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WANDB_", "MLFLOW_", "TRACKIO_", "GPUJOB_"))}
    env.update({"HOME": str(home), "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2", "TRACKED_TOKEN": SECRET,
                "HF_HUB_OFFLINE": "1", "GPUJOB_SYSTEM_INTERVAL_S": "0.5"})
    proc = subprocess.run([sys.executable, "-m", "gpujob.runner", str(spec)], capture_output=True, text=True,
                          env=env, stdin=subprocess.DEVNULL, timeout=600)
    events = [e for line in proc.stdout.splitlines() for e in parse_line(line)]
    return proc.returncode, events, proc.stdout + proc.stderr


def same(got: list[tuple[int, float]], want: list[tuple[int, float]]) -> bool:
    """The same steps, and values equal to float32 precision (what TensorBoard keeps)."""
    return [g[0] for g in got] == [w[0] for w in want] and \
        [g[1] for g in got] == pytest.approx([w[1] for w in want], rel=1e-6)


def series(events: list[dict], key: str) -> list[tuple[int, float]]:
    return [(e["step"], e[key]) for e in events if key in e and e["event"] in ("progress", "eval")]


def test_every_tracker_holds_the_events_values_the_spec_and_the_worst_utterances(tmp_path, tiny_model, greek,
                                                                                monkeypatch):
    spec = train_spec(tmp_path, tiny_model, greek, {"tensorboard": True, "wandb": {"mode": "offline", "tags": ["t"]},
                                                    "mlflow": True, "trackio": True})
    code, events, output = run_job(spec, tmp_path / "home")
    assert code == 0, output[-4000:]
    out = tmp_path / "out"
    assert "failed to" not in output, output[-4000:]

    # per-source scores: in every eval event, metrics.json and predictions.jsonl
    name = greek.name  # derived from the folder's name (the other source is named `seen`)
    evals = [e for e in events if e["event"] == "eval"]
    assert [e["step"] for e in evals] == [3, 6]
    assert all({"wer", "cer", f"wer/{name}", f"cer/{name}", "wer/seen", "cer/seen"} <= set(e) for e in evals)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["sources"][name]["utterances"] == 2 and metrics["sources"]["seen"]["utterances"] == 8
    assert metrics["sources"]["seen"]["wer"] == evals[-1]["wer/seen"]
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    assert sorted({p["source"] for p in predictions}) == sorted([name, "seen"])

    losses, wers = series(events, "loss"), series(events, f"wer/{name}")
    assert len(losses) == 6 and len(wers) == 2

    # TensorBoard, read with tensorboard's own reader
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    assert same([(s.step, s.value) for s in acc.Scalars("loss")], losses)
    assert same([(s.step, s.value) for s in acc.Scalars(f"wer/{name}")], wers)
    assert same([(s.step, s.value) for s in acc.Scalars("wer")], series(events, "wer"))
    # the system samples too (no GPU here: no GPU series)
    system = {float(e["rss_bytes"]) for e in events if e["event"] == "system"}
    logged = acc.Scalars("system/rss_bytes")
    assert system and logged and all(min(abs(s.value - v) / v for v in system) < 1e-6 for s in logged)
    assert "system/gpu_util_percent" not in acc.Tags()["scalars"]
    worst_text = acc.Tensors("worst_utterances/text_summary")[-1].tensor_proto.string_val[0].decode()
    assert "| source | id | wer | reference | prediction |" in worst_text
    spec_text = acc.Tensors("spec/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"learning_rate": 0.001' in spec_text

    # W&B offline: the run's own record file
    from wandb_offline import config, history, run_dir

    run = run_dir(out)
    rows = history(run)
    assert [(r["_step"], r["loss"]) for r in rows if "loss" in r] == losses
    assert [(r["_step"], r[f"wer/{name}"]) for r in rows if f"wer/{name}" in r] == wers
    assert any(r.get("worst_utterances/_type") == "table-file" for r in rows)
    assert config(run)["training"]["learning_rate"] == 1e-3

    # MLflow with a local file store
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=(out / "mlruns").as_uri())
    [ml_run] = client.search_runs([client.get_experiment_by_name("tiny-tracked").experiment_id])
    assert ml_run.info.status == "FINISHED" and ml_run.data.params["training.learning_rate"] == "0.001"
    assert [(m.step, m.value) for m in client.get_metric_history(ml_run.info.run_id, "loss")] == losses
    assert [(m.step, m.value) for m in client.get_metric_history(ml_run.info.run_id, f"wer.{name}")] == wers
    table = json.loads(Path(client.download_artifacts(ml_run.info.run_id, "worst_utterances.json", str(tmp_path)))
                       .read_text())
    assert table["columns"] == ["source", "id", "wer", "reference", "prediction"] and table["data"]

    # trackio, locally, through its own storage
    monkeypatch.setenv("TRACKIO_DIR", str(out / "trackio"))
    from trackio import sqlite_storage

    monkeypatch.setattr(sqlite_storage, "TRACKIO_DIR", out / "trackio")
    logs = sqlite_storage.SQLiteStorage.get_logs("tiny-tracked", "tiny-tracked")
    assert [(r["step"], r["loss"]) for r in logs if "loss" in r] == losses
    assert [(r["step"], r[f"wer/{name}"]) for r in logs if f"wer/{name}" in r] == wers
    assert any(isinstance(r.get("worst_utterances"), dict) for r in logs)

    # the secret's value reached no tracker's files (it was in the job's environment)
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert not leaked


def test_failing_trackers_warn_once_each_and_the_job_still_succeeds(tmp_path, tiny_model, greek):
    """W&B online with no key (and no network to ask), TensorBoard into a directory that is a file."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    spec = train_spec(tmp_path, tiny_model, greek, {"wandb": {"mode": "online"}, "tensorboard": {"dir": str(blocker)}},
                      steps=3)
    code, events, output = run_job(spec, tmp_path / "home")
    assert code == 0, output[-4000:]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "succeeded"
    assert len(series(events, "loss")) == 3
    warnings = [line for line in output.splitlines() if line.startswith("gpujob: tracking.")]
    assert len(warnings) == 2, warnings
    assert any("tracking.wandb failed" in w and "WANDB_API_KEY" in w for w in warnings)
    assert any("tracking.tensorboard failed" in w and "tracking.tensorboard.dir" in w for w in warnings)


class Flaky:
    """A tracker whose second log call raises, as a lost connection would."""

    name = "mlflow"

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def open(self, config):
        self.calls.append(("open",))

    def scalars(self, step, values):
        self.calls.append(("scalars", step))
        if len(self.calls) == 3:
            raise ConnectionError("connection refused")

    def table(self, name, columns, rows, step):
        self.calls.append(("table",))

    def close(self, ok):
        self.calls.append(("close", ok))


def test_a_tracker_that_fails_mid_run_is_skipped_after_one_warning_and_events_are_all_written():
    out, warnings, flaky, steady = io.StringIO(), [], Flaky(), Flaky()
    steady.scalars = lambda step, values: steady.calls.append(("scalars", step, values))
    writer = TrackedWriter(ProgressWriter(out), [flaky, steady], {"kind": "train"}, warn=warnings.append)
    writer.start(total_steps=4)
    for step in range(1, 5):
        writer.progress(step=step, total_steps=4, loss=1.0 / step, learning_rate=1e-5, samples_per_s=3.0)
    writer.eval(step=4, wer=0.5, cer=0.25, **{"wer/cv": 0.4})
    writer.end(status="succeeded")
    events = [e for line in out.getvalue().splitlines() for e in parse_line(line)]
    assert [e["event"] for e in events] == ["start"] + ["progress"] * 4 + ["eval", "end"]
    assert flaky.calls == [("open",), ("scalars", 1), ("scalars", 2)]  # nothing after the failure, no close
    assert len(warnings) == 1 and "tracking.mlflow failed to log (ConnectionError: connection refused)" in warnings[0]
    assert steady.calls[1] == ("scalars", 1, {"loss": 1.0, "learning_rate": 1e-5, "samples_per_s": 3.0})
    assert steady.calls[-2] == ("scalars", 4, {"wer": 0.5, "cer": 0.25, "wer/cv": 0.4})
    assert steady.calls[-1] == ("close", True)


class Slow(Flaky):
    """A tracker whose log call waits (a slow upload), printing to stdout as tracker libraries do."""

    name = "wandb"

    def __init__(self) -> None:
        super().__init__()
        self.logging, self.release = threading.Event(), threading.Event()

    def scalars(self, step, values):
        print("wandb: uploading")
        self.logging.set()
        assert self.release.wait(10)


def test_a_system_sample_written_while_a_tracker_logs_is_still_an_event_on_stdout(capsys):
    """A tracker's call sends its own prints to stderr; the sampler's thread writing a system sample meanwhile
    must still reach the job's events (seen in a loaded test run: samples the trackers had, missing from stdout)."""
    slow = Slow()
    writer = TrackedWriter(ProgressWriter(), [slow], {"kind": "train"})
    writer.start(total_steps=2)
    logging = threading.Thread(target=writer.progress, kwargs=dict(step=1, total_steps=2, loss=0.5))
    logging.start()
    assert slow.logging.wait(10)
    sampler = threading.Thread(target=writer.system, kwargs=dict(n=1, step=1, rss_bytes=123_456_789))
    sampler.start()
    sampler.join(10)
    slow.release.set()
    logging.join(10)
    writer.end(status="succeeded")
    out, err = capsys.readouterr()
    events = [e for line in out.splitlines() for e in parse_line(line)]
    assert [e["event"] for e in events] == ["start", "progress", "system", "end"]
    assert events[2]["rss_bytes"] == 123_456_789
    assert "wandb: uploading" in err and "wandb: uploading" not in out
