"""A local dataset or checkpoint where the job cannot see this machine's files (a Kubernetes pod, a
remote Docker engine): validate and render say so, submit refuses it, before anything is created."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry
from gpujob.spec.paths import is_local_path

runner = CliRunner()
REMOTE_ENGINE = "tcp://127.0.0.1:9"  # nothing answers there: a refusal must come before any call


def write_spec(tmp_path: Path, backend: str, dataset: str = "data/cv-corpus-el/",
               checkpoint: str = "openai/whisper-tiny", kind: str = "train") -> Path:
    path = tmp_path / "job.yaml"
    body = ("apiVersion: gpujob/v1\n"
            f"kind: {kind}\n"
            "name: local-data\n"
            f"model:\n  checkpoint: {checkpoint}\n  language: el\n"
            f"data:\n  train:\n    - dataset: {dataset}\n  eval:\n    - dataset: google/fleurs\n      config: el_gr\n"
            f"runtime:\n  backend: {backend}\n")
    if kind == "train":
        body += "training:\n  max_steps: 10\n"
    else:
        body += "command: [echo, hi]\n"
    path.write_text(body)
    return path


def gpujob(*args: str, env: dict | None = None):
    return runner.invoke(app, list(args), env=env)


@pytest.fixture(autouse=True)
def here(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DOCKER_HOST", raising=False)


def test_validate_names_the_key_and_the_pvc_on_kubernetes(tmp_path):
    result = gpujob("validate", str(write_spec(tmp_path, "kubernetes")))
    assert result.exit_code == 2
    assert "would not find its data on the kubernetes backend" in result.output
    assert ("data.train[0].dataset: data/cv-corpus-el/ is a path on this machine; it will not exist in "
            "the Kubernetes pod") in result.output
    assert "(and it is not a folder here, so it cannot be uploaded)" in result.output
    assert "a folder on this machine is uploaded at submit" in result.output and "Hugging Face Hub" in result.output
    assert "valid (" not in result.output


@pytest.mark.parametrize("dataset, checkpoint, flagged", [
    ("google/fleurs", "openai/whisper-tiny", []),                         # Hub ids
    ("/cache/datasets/cv-el", "/cache/outputs/run1/model", []),         # on the job's PVC
    ("corpus", "openai/whisper-tiny", []),                              # a folder here: staged at submit
    ("corpus.tsv", "openai/whisper-tiny", ["data.train[0].dataset"]),   # a file here: not a folder to stage
    ("google/fleurs", "./outputs/run1/model", ["model.checkpoint"]),
    ("~/data/el", "outputs/run1/model", ["model.checkpoint", "data.train[0].dataset"]),
])
def test_what_counts_as_a_local_path(tmp_path, dataset, checkpoint, flagged):
    (tmp_path / "corpus").mkdir()
    (tmp_path / "corpus.tsv").write_text("path\tsentence\n")
    result = gpujob("validate", str(write_spec(tmp_path, "kubernetes", dataset, checkpoint)))
    assert result.exit_code == (2 if flagged else 0), result.output
    for key in flagged:
        assert f"{key}: " in result.output
    assert result.output.count("is a path on this machine") == len(flagged)


def test_a_command_job_and_the_local_backend_are_not_checked(tmp_path):
    assert gpujob("validate", str(write_spec(tmp_path, "kubernetes", kind="command"))).exit_code == 0
    assert gpujob("validate", str(write_spec(tmp_path, "local"))).exit_code == 0


def test_docker_is_checked_only_for_a_remote_engine(tmp_path):
    spec = str(write_spec(tmp_path, "docker"))
    assert gpujob("validate", spec, env={"DOCKER_HOST": "unix:///var/run/docker.sock"}).exit_code == 0
    result = gpujob("validate", spec, env={"DOCKER_HOST": "ssh://me@gpu-box"})
    assert result.exit_code == 2
    assert "it will not exist in a container on the Docker engine at ssh://me@gpu-box" in result.output
    assert "a volume on that engine" in result.output and "runtime.backend: host" in result.output


def test_render_shows_the_problem_and_still_renders(tmp_path):
    """It renders, names the PROBLEM and exits 2 (submit would refuse it)."""
    spec = str(write_spec(tmp_path, "kubernetes"))
    result = gpujob("render", spec)
    assert result.exit_code == 2, result.output
    assert ("# PROBLEM: data.train[0].dataset: data/cv-corpus-el/ is a path on this machine; it will not "
            "exist in the Kubernetes pod (and it is not a folder here, so it cannot be uploaded); submit refuses it"
            ) in result.output
    assert "# hint: a folder on this machine is uploaded at submit" in result.output and "kind: Job" in result.output

    result = gpujob("render", spec, "--backend", "docker", env={"DOCKER_HOST": REMOTE_ENGINE})
    assert result.exit_code == 2, result.output
    assert f"PROBLEM: data.train[0].dataset: data/cv-corpus-el/ is a path on this machine; it will not exist " \
           f"in a container on the Docker engine at {REMOTE_ENGINE}; submit refuses it" in result.output
    local = gpujob("render", spec, "--backend", "docker", env={"DOCKER_HOST": "unix:///var/run/docker.sock"})
    assert local.exit_code == 0 and "PROBLEM" not in local.output


@pytest.mark.parametrize("backend, env", [("kubernetes", {}), ("docker", {"DOCKER_HOST": REMOTE_ENGINE})])
def test_submit_refuses_before_anything_is_recorded_or_created(tmp_path, backend, env):
    result = gpujob("submit", str(write_spec(tmp_path, backend)), env=env)
    assert result.exit_code == 2, result.output
    assert "the job would not find its data, so nothing was submitted" in result.output
    assert "data.train[0].dataset: data/cv-corpus-el/" in result.output and "hint: " in result.output
    assert Registry().list() == []


def test_urls_are_not_local_paths():
    assert not is_local_path("s3://bucket/datasets/el") and is_local_path("../el") and not is_local_path("a/b")
