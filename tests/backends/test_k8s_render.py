"""Kubernetes manifests rendered from specs: strictly valid against the official schemas, and carrying
what a GPU job on a shared cluster needs (GPU limits, shm, cache PVC, secret refs, failure policy,
deadline, TTL, restricted security context, Kueue, multi-node)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML
from typer.testing import CliRunner

from gpujob import service
from gpujob.backends.kubernetes import manifests
from gpujob.cli.app import app
from gpujob.spec import load_spec, load_spec_text

ROOT = Path(__file__).resolve().parents[2]
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
K8S_VERSION = "1.33.0"


def request_for(loaded, job_id: str = "ab12cd"):
    return service.build_request(loaded, job_id=job_id, job_dir=Path("/tmp/unused") / job_id)


def objects_for(text: str, *overrides: str) -> dict[str, dict]:
    """The manifests for ``text``, as `gpujob render --backend kubernetes` makes them."""
    loaded = load_spec_text(text, "t.yaml", overrides=overrides, backend="kubernetes")
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
runtime: {backend: kubernetes, namespace: speech, secrets: [HF_TOKEN], env: {WANDB_MODE: offline}}
limits: {max_runtime: 12h}
"""


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_every_example_job_renders_to_strictly_valid_manifests(path, monkeypatch):
    kv = pytest.importorskip("kubernetes_validate")
    monkeypatch.setenv("HF_TOKEN", "unused")
    objects = manifests.render(request_for(load_spec(path, backend="kubernetes")))
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
    assert container["command"] == ["python", "-m", "gpujob.runner.launch", "--standalone", "--nproc-per-node=2",
                                    "/etc/gpujob/spec.json"]
    spec = job["spec"]
    assert pod["restartPolicy"] == "Never" and spec["backoffLimit"] == 2
    assert spec["podFailurePolicy"] == {"rules": [  # one node: other failures are retried (backoffLimit)
        {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "In", "values": [2]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]}]}
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


def test_several_nodes_use_an_indexed_job_a_headless_service_and_torchrun_rendezvous_on_worker_0():
    objs = objects_for(TRAIN, "resources.nodes=2", "resources.gpus=8", "runtime.backend=kubernetes",
                       "distributed.port=29400", "distributed.restarts=5")
    job, svc = objs["Job"], objs["Service"]
    name = "whisper-small-el-ab12cd"
    assert job["spec"]["completionMode"] == "Indexed"
    assert job["spec"]["completions"] == job["spec"]["parallelism"] == 2
    pod = job["spec"]["template"]["spec"]
    assert pod["subdomain"] == f"{name}-workers"
    assert svc == {"apiVersion": "v1", "kind": "Service",
                   "metadata": {"name": f"{name}-workers", "namespace": "speech", "labels": job["metadata"]["labels"]},
                   "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                            "selector": {"gpujob.dev/id": "ab12cd"},
                            "ports": [{"name": "rendezvous", "port": 29400}]}}
    (container,) = pod["containers"]
    endpoint = f"{name}-0.{name}-workers:29400"  # worker 0's pod: hostname <job>-0 under the Service
    assert container["command"] == [
        "python", "-m", "gpujob.runner.launch", "--nnodes=2", "--nproc-per-node=8", "--rdzv-backend=c10d",
        f"--rdzv-endpoint={endpoint}", "--rdzv-id=ab12cd", "--max-restarts=0", "--local-addr=$(GPUJOB_NODE_HOST)",
        "/etc/gpujob/spec.json"]
    assert container["ports"] == [{"name": "rendezvous", "containerPort": 29400}]
    # $(JOB_COMPLETION_INDEX) expands only because it is defined before GPUJOB_NODE_INDEX
    assert container["env"][:4] == [
        {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
            "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
        {"name": "GPUJOB_NODE_INDEX", "value": "$(JOB_COMPLETION_INDEX)"},
        {"name": "GPUJOB_NODE_HOST", "value": f"{name}-$(JOB_COMPLETION_INDEX).{name}-workers"},
        {"name": "GPUJOB_RDZV_ENDPOINT", "value": endpoint}]
    assert job["spec"]["podFailurePolicy"] == {"rules": [
        {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "In", "values": [2]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
        {"action": "Count", "onExitCodes": {"containerName": "job", "operator": "In", "values": [75]}},
        {"action": "FailJob", "onExitCodes": {"containerName": "job", "operator": "NotIn", "values": [0]}}]}
    assert job["spec"]["backoffLimit"] == 10  # distributed.restarts x nodes: a group restart counts each node
    assert manifests.validate(list(objs.values()), K8S_VERSION) == []


def test_network_settings_reach_the_pods_environment_and_runtime_env_wins():
    objs = objects_for(TRAIN, "distributed.network_interface=ens5", "distributed.infiniband=false",
                       "runtime.env.NCCL_IB_DISABLE='0'")
    env = {e["name"]: e.get("value") for e in objs["Job"]["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NCCL_SOCKET_IFNAME"] == env["GLOO_SOCKET_IFNAME"] == "ens5"
    assert env["NCCL_IB_DISABLE"] == "0" and env["WANDB_MODE"] == "offline"
    assert "GPUJOB_NODE_INDEX" not in env  # one node: no rendezvous between nodes
    assert manifests.validate(list(objs.values()), K8S_VERSION) == []


def test_one_gpu_runs_the_runner_itself():
    job = objects_for(TRAIN, "resources.gpus=1")["Job"]
    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "python", "-m", "gpujob.runner", "/etc/gpujob/spec.json"]


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


def test_cli_backend_flag_validates_the_spec_for_that_backend(tmp_path):
    spec = tmp_path / "two-nodes.yaml"
    spec.write_text(TRAIN.replace("resources: {gpus: 2,", "resources: {nodes: 2, gpus: 2,"))
    rendered = CliRunner().invoke(app, ["render", str(spec), "--backend", "kubernetes"])
    assert rendered.exit_code == 0, rendered.output
    docs = {d["kind"]: d for d in YAML(typ="safe").load_all(rendered.output.split("\n", 1)[1])}
    assert docs["Job"]["spec"]["completions"] == 2 and "Service" in docs
    assert '"backend": "kubernetes"' in docs["ConfigMap"]["data"]["spec.json"]
    local = CliRunner().invoke(app, ["submit", str(spec), "--backend", "local"])
    assert local.exit_code == 2
    assert "resources.nodes: 2 nodes need runtime.backend: kubernetes" in local.output
    assert "Traceback" not in local.output


def test_cli_renders_kubernetes_yaml_without_secret_values(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "unused")
    result = CliRunner().invoke(app, ["render", str(ROOT / "jobs" / "train-el-medium.yaml"), "--backend", "kubernetes"])
    # its data is a folder on this machine: rendered, with the PROBLEM named and exit 2 (submit refuses it)
    assert result.exit_code == 2 and "# PROBLEM: data.train[0].dataset" in result.output, result.output
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


def test_a_cpu_only_job_renders_with_the_cpu_image():
    """gpus: 0 on kubernetes runs the -cpu image (it named the CUDA one); with GPUs, the CUDA one."""
    from gpujob.image_names import default_image

    for gpus in (0, 1):
        result = CliRunner().invoke(app, ["render", str(ROOT / "jobs" / "hello.yaml"), "--backend", "kubernetes",
                                          "--set", f"resources.gpus={gpus}", "--json"])
        rendered = json.loads(result.stdout)["rendered"]
        assert f"image: {default_image(gpus)}" in rendered
    assert default_image(0).endswith("-cpu") and not default_image(1).endswith("-cpu")


def test_image_build_help_names_the_base_it_uses():
    text = CliRunner().invoke(app, ["image", "build", "--help"]).output
    assert "CUDA 12" not in text and "ubuntu:24.04" in text and "CUDA 13" in text
