"""The runner with its dataset and output.dir in a bucket (moto's S3 server, through AWS_ENDPOINT_URL),
on the tiny Whisper: staging with progress and a version-keyed cache, checkpoints uploaded as they are
saved, resume from the bucket after a kill, and what a bad bucket or prefix looks like."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

from tiny_runs import run_runner, steps_and_losses, write_greek_folder, write_spec  # noqa: E402

from gpujob.events import parse_line  # noqa: E402
from gpujob.storage import MARKER, Store, parse_uri  # noqa: E402


@pytest.fixture(scope="session")
def greek_folder(tmp_path_factory) -> Path:
    return write_greek_folder(tmp_path_factory.mktemp("greek"))


def _bucket_spec(tmp_path: Path, model: Path, data_uri: str, out_uri: str, **training) -> Path:
    path = write_spec(tmp_path, model, Path("unused"), out=out_uri, **training)
    spec = json.loads(path.read_text())
    for source in [*spec["data"].get("train", []), *spec["data"]["eval"]]:
        source["dataset"] = data_uri
    path.write_text(json.dumps(spec))
    return path


@pytest.fixture
def data_in_bucket(s3, greek_folder, monkeypatch, tmp_path):
    bucket = s3.bucket("data")
    uri = parse_uri(f"s3://{bucket}/speech/greek")
    Store(uri).upload_dir(greek_folder, uri)
    monkeypatch.setenv("GPUJOB_STORAGE_CACHE", str(tmp_path / "storage-cache"))
    return bucket, str(uri)


def test_train_from_and_to_a_bucket_is_killed_resumed_from_the_bucket_pulled_and_evaluated(
        s3, tiny_model, data_in_bucket, tmp_path, gpujob_home):
    """Must-show: the first attempt is killed (SIGKILL, as a lost pod or host) after its checkpoints 3 and 6;
    the job resubmitted on the local backend resumes from the bucket's checkpoint-6 with the data staged
    already; `gpujob pull` brings the final model back and evaluating it gives the WER the job reported."""
    from gpujob_cli import GpujobCli

    bucket, data_uri = data_in_bucket
    out = f"s3://{bucket}/runs/tiny"
    spec = _bucket_spec(tmp_path, tiny_model, data_uri, out)
    code, first, output = run_runner(spec, stop_at_step=7, sig=signal.SIGKILL)
    assert code == -signal.SIGKILL, output[-3000:]
    staging = [e for e in first if e["event"] == "heartbeat" and e.get("phase") == "staging data"]
    assert staging and staging[-1]["done"] == staging[-1]["total"] > 0 and staging[-1]["unit"] == "bytes"
    assert [e["path"] for e in first if e["event"] == "checkpoint"][:2] == [f"{out}/checkpoints/checkpoint-3",
                                                                             f"{out}/checkpoints/checkpoint-6"]
    keys = s3.keys(bucket)
    assert f"runs/tiny/checkpoints/checkpoint-6/{MARKER}" in keys and not any("runs/tiny/model/" in k for k in keys)

    # resubmitted through the CLI on the local backend: the keys reach the job through runtime.secrets
    data = json.loads(spec.read_text())
    data["runtime"] = {"backend": "local", "secrets": ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]}
    spec.write_text(json.dumps(data))
    cli = GpujobCli(tmp_path, {**os.environ, "OMP_NUM_THREADS": "2"})
    job = cli.submit(spec)
    seen = cli.wait_status(job, lambda s: s["status"] not in ("queued", "starting", "running"), timeout=600)
    log = cli.gpujob("logs", job, "--raw").stdout
    assert seen["status"] == "succeeded", log[-3000:]
    assert "0 objects, 0.0 MB downloaded" in log  # the data was staged by the first attempt
    assert f"{out}/checkpoints/checkpoint-6 is the newest complete checkpoint" in log
    second = [e for line in log.splitlines() for e in parse_line(line)]
    assert [s for s, _ in steps_and_losses(second)] == list(range(7, 13))
    keys = s3.keys(bucket)
    for name in (f"model/{MARKER}", "model/model.safetensors", "model/README.md", "metrics.json", "predictions.jsonl"):
        assert f"runs/tiny/{name}" in keys, keys
    metrics = json.loads(s3.client().get_object(Bucket=bucket, Key="runs/tiny/metrics.json")["Body"].read())
    assert metrics["steps"] == 12 and second[-1]["metrics"]["wer"] == metrics["wer"]
    assert [e["path"] for e in second if e["event"] == "artifact" and e.get("name") == "model"] == [f"{out}/model"]

    pulled = cli.gpujob("pull", job, "--to", str(tmp_path / "pulled"), "--only", "model")
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    model = tmp_path / "pulled" / "model"
    assert (model / "model.safetensors").stat().st_size == next(
        o["Size"] for o in s3.client().list_objects_v2(Bucket=bucket, Prefix="runs/tiny/model/")["Contents"]
        if o["Key"].endswith("model.safetensors"))
    (tmp_path / "eval").mkdir()
    evaluate = write_spec(tmp_path / "eval", model, Path("unused"), kind="evaluate", out=str(tmp_path / "eval" / "out"))
    data = json.loads(evaluate.read_text())
    data["data"]["eval"][0]["dataset"] = data_uri
    data["training"] = {"generation_max_length": 40, "precision": "fp32"}  # as the job decoded
    evaluate.write_text(json.dumps(data))
    code, events, output = run_runner(evaluate)
    assert code == 0, output[-3000:]
    assert events[-1]["metrics"]["wer"] == pytest.approx(metrics["wer"], abs=1e-9)
    assert events[-1]["metrics"]["cer"] == pytest.approx(metrics["cer"], abs=1e-9)  # the tiny model's WER is 100%
    job_predictions = s3.client().get_object(Bucket=bucket, Key="runs/tiny/predictions.jsonl")["Body"].read().decode()
    assert [json.loads(r)["prediction"] for r in job_predictions.splitlines()] == [
        json.loads(r)["prediction"] for r in (tmp_path / "eval" / "out" / "predictions.jsonl").read_text().splitlines()]


def test_a_prefix_without_audio_fails_with_the_key_and_exit_2(s3, tiny_model, tmp_path, monkeypatch):
    bucket = s3.bucket()
    s3.client().put_object(Bucket=bucket, Key="notes/readme.txt", Body=b"no audio here")
    monkeypatch.setenv("GPUJOB_STORAGE_CACHE", str(tmp_path / "cache"))
    spec = _bucket_spec(tmp_path, tiny_model, f"s3://{bucket}/notes", str(tmp_path / "out"), max_steps=2)
    code, events, output = run_runner(spec)
    assert code == 2, output[-3000:]
    assert events[-1]["status"] == "failed" and f"s3://{bucket}/notes" in output
    assert "Traceback" not in output


def test_an_empty_prefix_and_a_missing_bucket_fail_before_training(s3, tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("GPUJOB_STORAGE_CACHE", str(tmp_path / "cache"))
    bucket = s3.bucket()
    spec = _bucket_spec(tmp_path, tiny_model, f"s3://{bucket}/nothing", str(tmp_path / "out"), max_steps=2)
    code, events, output = run_runner(spec)
    assert code == 2 and f"s3://{bucket}/nothing: no objects under this prefix" in output, output[-3000:]
    spec = _bucket_spec(tmp_path, tiny_model, f"s3://{bucket}/nothing", "s3://no-such-bucket-xyz/out", max_steps=2)
    code, events, output = run_runner(spec)
    assert code == 2 and "bucket 'no-such-bucket-xyz' does not exist" in output, output[-3000:]
    assert events[-1]["status"] == "failed" and "Traceback" not in output


def test_the_store_going_away_mid_job_fails_it_naming_the_object(tiny_model, greek_folder, tmp_path, monkeypatch):
    """The S3 server stops after the first checkpoint is uploaded: the next upload is retried, then the job
    fails (exit 1) naming the object; the bucket never had a marker for a checkpoint it did not finish."""
    from s3_server import start_s3

    server = start_s3(tmp_path)
    for name, value in {**server.env, "GPUJOB_STORAGE_ATTEMPTS": "2",
                        "GPUJOB_STORAGE_CACHE": str(tmp_path / "cache")}.items():
        monkeypatch.setenv(name, value)
    bucket = server.bucket()
    out = f"s3://{bucket}/runs/gone"
    spec = write_spec(tmp_path, tiny_model, greek_folder, out=out, max_steps=9)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    proc = subprocess.Popen([sys.executable, "-m", "gpujob.runner", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    lines, keys_at_stop = [], None
    try:
        for line in proc.stdout:
            lines.append(line)
            if keys_at_stop is None and any(e["event"] == "checkpoint" for e in parse_line(line)):
                keys_at_stop = server.keys(bucket)
                server.go_away()
        code = proc.wait(timeout=300)
    finally:
        server.stop()
    output = "".join(lines)
    assert code == 1, output[-3000:]
    assert f"{out}/checkpoints/checkpoint-6/" in output and "failed" in output and "tried 2 times" in output
    assert "Traceback" not in output
    assert f"runs/gone/checkpoints/checkpoint-3/{MARKER}" in keys_at_stop
    events = [e for line in lines for e in parse_line(line)]
    assert events[-1]["event"] == "end" and events[-1]["status"] == "failed" and "checkpoint-6" in events[-1]["message"]
