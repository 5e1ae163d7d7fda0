"""Buckets seen from the CLI: submit's checks (credentials, bucket, scheme) before anything is recorded,
an evaluate job on the local backend reading and writing s3:// URIs, `status` naming the pull command,
and `gpujob pull` (from a bucket, from a local job's folder; resumable)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from gpujob_cli import GpujobCli

KEY_NAMES = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]


@pytest.fixture
def cli(tmp_path, gpujob_home):
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update(GPUJOB_HOME=str(gpujob_home), GPUJOB_STORAGE_CACHE=str(tmp_path / "storage-cache"),
               GPUJOB_STORAGE_ATTEMPTS="2")
    return GpujobCli(tmp_path, env)


def _spec(tmp_path: Path, *, dataset: str, out: str, model: str = "openai/whisper-tiny", endpoint: str | None = None,
          secrets=KEY_NAMES, kind: str = "evaluate") -> Path:
    spec = {"apiVersion": "gpujob/v1", "kind": kind, "name": "bucket-eval",
            "model": {"checkpoint": model, "language": "el"},
            "data": {"eval": [{"dataset": dataset, "split": "heldout"}]},
            "evaluation": {"batch_size": 4}, "output": {"dir": out}, "resources": {"gpus": 0},
            "runtime": {"backend": "local", "secrets": list(secrets),
                        "env": {"AWS_ENDPOINT_URL": endpoint} if endpoint else {}}}
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))
    return path


def _nothing_recorded(cli: GpujobCli) -> None:
    listed = cli.gpujob("list")
    assert listed.returncode == 0 and "bucket-eval" not in listed.stdout, listed.stdout


def test_an_unknown_scheme_is_refused_at_validate_with_did_you_mean(cli, tmp_path):
    spec = _spec(tmp_path, dataset="s3a://data/greek", out="S3://out-bucket/runs")
    r = cli.gpujob("validate", str(spec))
    assert r.returncode == 2 and "Traceback" not in r.stderr + r.stdout
    text = r.stdout + r.stderr
    assert 'data.eval[0].dataset: "s3a://data/greek" is not a storage URI gpujob reads; did you mean "s3://data/greek"?' in text
    assert 'output.dir: "S3://out-bucket/runs" is not a storage URI gpujob reads; did you mean "s3://out-bucket/runs"?' in text
    r = cli.gpujob("validate", str(_spec(tmp_path, dataset="ftp://host/data", out="out")))
    assert r.returncode == 2 and "unknown storage scheme ftp://" in r.stdout + r.stderr


def test_missing_credentials_exit_2_naming_the_variable_and_record_nothing(cli, s3_server, tmp_path):
    bucket = s3_server.bucket()
    spec = _spec(tmp_path, dataset=f"s3://{bucket}/greek", out=f"s3://{bucket}/out", endpoint=s3_server.url)
    r = cli.gpujob("submit", str(spec), env={"AWS_ACCESS_KEY_ID": "testing-key"})
    assert r.returncode == 2, r.stdout + r.stderr
    assert "AWS_SECRET_ACCESS_KEY" in r.stderr and "Traceback" not in r.stderr
    # set in the shell, but not listed under runtime.secrets: the job would not get it
    spec = _spec(tmp_path, dataset=f"s3://{bucket}/greek", out=f"s3://{bucket}/out", endpoint=s3_server.url,
                 secrets=["AWS_ACCESS_KEY_ID"])
    r = cli.gpujob("submit", str(spec), env={**s3_server.env})
    assert r.returncode == 2 and "AWS_SECRET_ACCESS_KEY" in r.stderr and "list it under runtime.secrets" in r.stderr, r.stderr
    _nothing_recorded(cli)


def test_a_bucket_that_does_not_exist_or_refuses_the_keys_exits_2_before_anything_starts(cli, s3_server, tmp_path):
    spec = _spec(tmp_path, dataset="s3://no-such-bucket-abc/greek", out="s3://no-such-bucket-abc/out",
                 endpoint=s3_server.url)
    r = cli.gpujob("submit", str(spec), env=s3_server.env)
    assert r.returncode == 2 and "bucket 'no-such-bucket-abc' does not exist" in r.stderr, r.stdout + r.stderr
    from s3_server import start_s3

    strict = start_s3(tmp_path, check_keys=True)  # answers 403 to keys it did not issue
    try:
        spec = _spec(tmp_path, dataset="s3://some-bucket/greek", out="s3://some-bucket/out", endpoint=strict.url)
        r = cli.gpujob("submit", str(spec), env=strict.env)
        assert r.returncode == 2 and "access denied" in r.stderr and "403" in r.stderr, r.stdout + r.stderr
    finally:
        strict.stop()
    _nothing_recorded(cli)


def test_evaluate_on_the_local_backend_reads_and_writes_the_bucket_and_pull_brings_metrics_back(
        cli, s3_server, tiny_model, tmp_path):
    from tiny_runs import write_greek_folder

    from gpujob.storage import Store, parse_uri

    bucket = s3_server.bucket()
    data = parse_uri(f"s3://{bucket}/speech/greek")
    (tmp_path / "greek-src").mkdir()
    greek = write_greek_folder(tmp_path / "greek-src")
    os.environ.update(s3_server.env)  # this process uploads the data (the job gets the keys through runtime.secrets)
    try:
        Store(data).upload_dir(greek, data)
    finally:
        for name in s3_server.env:
            os.environ.pop(name, None)
    out = f"s3://{bucket}/evals/tiny"
    spec = _spec(tmp_path, dataset=str(data), out=out, model=str(tiny_model), endpoint=s3_server.url)
    keys = {k: v for k, v in s3_server.env.items() if k != "AWS_ENDPOINT_URL"}  # the endpoint comes from runtime.env
    job = cli.submit(spec, env=keys)
    seen = cli.wait_status(job, lambda s: s["status"] not in ("queued", "starting", "running"), timeout=300)
    assert seen["status"] == "succeeded", cli.gpujob("logs", job).stdout[-3000:]
    assert f"evals/tiny/metrics.json" in s3_server.keys(bucket) and "evals/tiny/predictions.jsonl" in s3_server.keys(bucket)
    in_bucket = json.loads(s3_server.client().get_object(Bucket=bucket, Key="evals/tiny/metrics.json")["Body"].read())

    status = cli.gpujob("status", job)
    assert out in status.stdout and f"next: gpujob pull {job} --to " in status.stdout, status.stdout
    r = cli.gpujob("pull", job, "--to", str(tmp_path / "here"), env=s3_server.env)  # here: the endpoint from the shell
    assert r.returncode == 0, r.stdout + r.stderr
    assert json.loads((tmp_path / "here" / "metrics.json").read_text()) == in_bucket
    assert (tmp_path / "here" / "predictions.jsonl").is_file()
    fetched = int(re.search(r": (\d+) files? \(", r.stdout).group(1))  # metrics, predictions, the worst clips
    again = cli.gpujob("pull", job, "--to", str(tmp_path / "here"), env=s3_server.env)
    assert again.returncode == 0 and f"0 files (0 B) fetched, {fetched} already here" in again.stdout, again.stdout
