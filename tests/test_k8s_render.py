"""Kubernetes manifests rendered from specs: strictly valid against the official schemas, and carrying
what a GPU job on a shared cluster needs (GPU limits, shm, cache PVC, secret refs, failure policy,
deadline, TTL, restricted security context, Kueue, multi-node)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from gpujob import service
from gpujob.backends.kubernetes import manifests
from gpujob.cli.app import app
from gpujob.spec import load_spec, load_spec_text

ROOT = Path(__file__).resolve().parents[1]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
K8S_VERSION = "1.33.0"


def request_for(loaded, job_id: str = "ab12cd"):
    return service.build_request(loaded, job_id=job_id, job_dir=Path("/tmp/unused") / job_id)


def objects_for(text: str, *overrides: str) -> dict[str, dict]:
    loaded = load_spec_text(text, "t.yaml", overrides=overrides)
    return {obj["kind"]: obj for obj in manifests.render(request_for(loaded))}


TRAIN = """\
apiVersion: gpujob/v1
kind: train
name: whisper-small-el
model: {checkpoint: openai/whisper-small, language: el}
data:
  train: [{dataset: google/fleurs, config: el_gr, split: train}]
training: {max_steps: 100}
resources: {gpus: 2, gpu_type: H100, cpu: 8, memory: 64Gi, shm: 16Gi}
runtime: {namespace: speech, secrets: [HF_TOKEN], env: {WANDB_MODE: offline}}
limits: {max_runtime: 12h}
"""


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_example_job_renders_to_strictly_valid_manifests(path, monkeypatch):
    kv = pytest.importorskip("kubernetes_validate")
    monkeypatch.setenv("HF_TOKEN", "unused")
    objects = manifests.render(request_for(load_spec(path)))
    for obj in objects:
        kv.validate(obj, K8S_VERSION, strict=True)
    assert manifests.semantic_problems(objects) == []
    assert manifests.validate(objects, K8S_VERSION) == []


def test_the_job_carries_gpus_shm_cache_secrets_policy_deadline_ttl_and_security():
    objs = objects_for(TRAIN)
    job = objs["Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert job["metadata"]["name"] == "whisper-small-el-ab12cd" and job["metadata"]["namespace"] == "speech"
    assert job["metadata"]["labels"]["gpujob.dev/id"] == "ab12cd"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == "2"
    assert container["resources"]["requests"]["cpu"] == "8" and container["resources"]["limits"]["memory"] == "64Gi"
    assert pod["nodeSelector"] == {"nvidia.com/gpu.product": "H100"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "gpujob-hf-cache"
    env = {e["name"]: e for e in container["env"]}
    assert env["HF_TOKEN"] == {"name": "HF_TOKEN",
                               "valueFrom": {"secretKeyRef": {"name": "gpujob-secrets", "key": "HF_TOKEN"}}}
    assert env["WANDB_MODE"]["value"] == "offline"
    assert env["GPUJOB_OUTPUT_DIR"]["value"] == "/cache/outputs/whisper-small-el"
    assert container["command"][:3] == ["torchrun", "--nproc-per-node=2", "--nnodes=1"]
    spec = job["spec"]
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] == 2
    rules = spec["podFailurePolicy"]["rules"]
    assert rules[0] == {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "In", "values": [2]}}
    assert rules[1]["action"] == "Ignore" and rules[1]["onPodConditions"][0]["type"] == "DisruptionTarget"
    assert spec["activeDeadlineSeconds"] == 12 * 3600 and spec["ttlSecondsAfterFinished"] > 0
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                            "runAsNonRoot": True}
    assert "suspend" not in spec and "Service" not in objs
    assert '"name": "whisper-small-el"' in objs["ConfigMap"]["data"]["spec.json"]


def test_a_queue_adds_the_kueue_label_and_creates_the_job_suspended():
    job = objects_for(TRAIN, "runtime.queue=gpujob")["Job"]
    assert job["metadata"]["labels"]["kueue.x-k8s.io/queue-name"] == "gpujob"
    assert job["spec"]["suspend"] is True


def test_several_nodes_use_an_indexed_job_a_headless_service_and_torchrun_rendezvous():
    objs = objects_for(TRAIN, "resources.nodes=2", "resources.gpus=8")
    job, svc = objs["Job"], objs["Service"]
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == svc["metadata"]["name"] and svc["spec"]["clusterIP"] == "None"
    assert svc["spec"]["selector"] == {"gpujob.dev/id": "ab12cd"}
    argv = pod["containers"][0]["command"]
    assert "--nnodes=2" in argv and "--nproc-per-node=8" in argv and "--node-rank=$(JOB_COMPLETION_INDEX)" in argv
    assert f"--master-addr={job['metadata']['name']}-0.{svc['metadata']['name']}" in argv
    env = {e["name"] for e in pod["containers"][0]["env"]}
    assert "JOB_COMPLETION_INDEX" in env


def test_a_command_job_runs_its_command_with_the_spec_path_filled_in():
    job = objects_for("apiVersion: gpujob/v1\nkind: command\nname: c\ncommand: [python, train.py, '{spec}']\n")["Job"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["python", "train.py", "/etc/gpujob/spec.json"]
    assert "tolerations" not in job["spec"]["template"]["spec"]  # no GPUs asked for


def test_long_names_are_cut_to_valid_labels():
    objs = objects_for(TRAIN.replace("name: whisper-small-el", "name: " + "a" * 53))
    assert all(len(o["metadata"]["name"]) <= 63 for o in objs.values())
    assert manifests.semantic_problems(list(objs.values())) == []


def test_semantic_rules_catch_what_the_schema_misses():
    job = objects_for(TRAIN)["Job"]
    bad = copy.deepcopy(job)
    bad["spec"]["template"]["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"] = "1"
    bad["spec"]["template"]["spec"]["restartPolicy"] = "OnFailure"
    bad["metadata"]["name"] = "Bad_Name"
    problems = " | ".join(manifests.semantic_problems([bad]))
    assert "must equal limits" in problems and "restartPolicy: Never" in problems and "DNS-1123" in problems


def test_cli_renders_kubernetes_yaml_without_secret_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "unused")
    result = CliRunner().invoke(app, ["render", str(ROOT / "jobs" / "train-el-medium.yaml"), "--backend", "kubernetes"])
    assert result.exit_code == 0, result.output
    docs = list(YAML(typ="safe").load_all(result.output))
    assert [d["kind"] for d in docs] == ["ConfigMap", "Job"]
    assert "unused" not in result.output


def test_submit_without_a_cluster_configured_says_what_to_do(monkeypatch, tmp_path):
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing-kubeconfig"))
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    submit = CliRunner().invoke(app, ["submit", str(ROOT / "jobs" / "hello.yaml"), "--backend", "kubernetes"])
    assert submit.exit_code == 2, submit.output
    assert "no Kubernetes cluster configured" in submit.output and "KUBECONFIG" in submit.output
    assert "Traceback" not in submit.output
