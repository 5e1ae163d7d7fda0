"""A job request as Kubernetes objects: a batch/v1 Job, a ConfigMap with the spec, and for
multi-node jobs a headless Service. Pure functions over plain dicts: no cluster, no client.

What the Job carries, and why:

- the job image and the runner command (:func:`gpujob.backends.launch.runner_command`: the launcher,
  torchrun, for several GPUs or nodes); ``restartPolicy: Never``;
- several nodes (``resources.nodes``): an Indexed Job whose pods are ``<job>-<index>`` under a headless
  Service, so worker 0 is ``<job>-0.<service>``; torchrun's c10d rendezvous on worker 0 at
  ``distributed.port`` (a containerPort and the Service's port);
  ``GPUJOB_NODE_INDEX``, ``GPUJOB_NODE_HOST`` (``<job>-<index>.<service>``) and ``GPUJOB_RDZV_ENDPOINT``
  in every pod's environment. The launcher tells worker 0's agent to host the rendezvous store (from
  ``GPUJOB_NODE_INDEX``, rather than torchrun's guess from host names) and gives every agent its
  name as ``--local-addr``: c10d numbers nodes in the order of those names, so rank 0, the runner's
  writer, is on worker 0, whose log ``logs -f`` and ``status`` follow; ``distributed.network_interface`` and
  ``infiniband`` as NCCL/gloo variables (every backend gets those through the request's env);
- ``nvidia.com/gpu`` limits (requests equal limits), a nodeSelector on ``runtime.gpu_node_label`` for
  ``resources.gpu_type``, a toleration for the usual ``nvidia.com/gpu`` taint, CPU/memory requests;
- ``/dev/shm`` as a memory-backed emptyDir (the default 64 MiB breaks data loaders), the Hugging Face
  cache on the PVC ``runtime.cache_pvc`` at /cache (relative outputs go there too, so they outlive the pod);
- secrets through ``secretKeyRef`` into ``runtime.secret_store`` (never a literal value);
- ``backoffLimit``; a ``podFailurePolicy`` that ignores disruptions (eviction, preemption) and fails
  the Job at once on the runner's exit code 2 (the spec or data is wrong: a retry cannot help), and
  with several nodes on any other failure too (a worker that failed for good would leave the others
  waiting for it) but the launcher's 75: when a worker is preempted, every rank saves a checkpoint,
  the other nodes exit 75, and all pods start again and resume from it (``backoffLimit``:
  ``distributed.restarts`` × nodes);
  ``activeDeadlineSeconds`` from ``limits.max_runtime``; ``ttlSecondsAfterFinished``;
- ``app.kubernetes.io/*`` and ``gpujob.dev/id`` labels; with ``runtime.queue`` the Kueue queue label
  and ``suspend: true``, as Kueue expects;
- the restricted Pod Security profile: non-root, no privilege escalation, no capabilities,
  seccomp RuntimeDefault.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from gpujob import __version__
from gpujob.backends.base import JobRequest, runtime_of
from gpujob.backends.launch import GROUP_RESTART_EXIT, SPEC, Rendezvous, runner_command
from gpujob.image_names import default_image, default_tag

if TYPE_CHECKING:
    from gpujob.spec.models import DistributedSection, JobSpec, ResourcesSection
    from gpujob.spec.runtime import KubernetesRuntime

DEFAULT_IMAGE = default_tag("cuda")
SPEC_DIR = "/etc/gpujob"
CACHE_DIR = "/cache"
CONTAINER = "job"
BACKOFF_LIMIT = 2
TTL_AFTER_FINISHED_S = 6 * 3600
CONFIG_ERROR_EXIT = 2
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")


def object_name(request: JobRequest) -> str:
    """``<name>-<id>``, cut so it stays a DNS-1123 label (63) with room for pod suffixes."""
    head = request.name[: 52 - len(request.job_id)].rstrip("-")
    return f"{head}-{request.job_id}"


def labels(request: JobRequest) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "gpujob",
        "app.kubernetes.io/instance": object_name(request),
        "app.kubernetes.io/component": request.kind,
        "app.kubernetes.io/managed-by": "gpujob",
        "app.kubernetes.io/version": __version__,
        "gpujob.dev/id": request.job_id,
        "gpujob.dev/name": request.name[:63],
    }


def output_dir(request: JobRequest) -> str:
    return output_dir_for(request.spec)


def output_dir_for(spec: "JobSpec") -> str:
    """Where the job writes: URIs and absolute paths as given; relative ones under the cache PVC."""
    out = spec.resolved_output_dir()
    if "://" in out or out.startswith("/"):
        return out
    return f"{CACHE_DIR}/{out.removeprefix('./')}"


def distributed(request: JobRequest) -> "DistributedSection":
    """The spec's ``distributed`` section (its defaults when absent)."""
    return request.spec.distributed


def rendezvous_endpoint(request: JobRequest) -> str:
    """``host:port`` of worker 0 under the headless Service: its pod's hostname is ``<job>-0`` and
    its subdomain the Service, so the cluster's DNS resolves ``<job>-0.<service>``."""
    name = object_name(request)
    return f"{name}-0.{service_name(request)}:{distributed(request).port}"


def service_name(request: JobRequest) -> str:
    return f"{object_name(request)}-workers"


def _command(request: JobRequest, gpus: int, nodes: int) -> list[str]:
    spec_file = f"{SPEC_DIR}/spec.json"
    if request.kind == "command":
        argv = request.command
    else:
        rdzv = Rendezvous(endpoint=rendezvous_endpoint(request), run_id=request.job_id,
                          local_addr="$(GPUJOB_NODE_HOST)") if nodes > 1 else None
        argv = runner_command(gpus=gpus, nodes=nodes, rendezvous=rdzv)
    return [spec_file if arg == SPEC else arg for arg in argv]


def _env(request: JobRequest, store: str, out: str) -> list[dict[str, Any]]:
    env = [{"name": k, "value": v} for k, v in sorted(request.env.items())]
    env += [{"name": n, "valueFrom": {"secretKeyRef": {"name": store, "key": n}}} for n in request.secret_names]
    env += [
        {"name": "GPUJOB_JOB_ID", "value": request.job_id},
        {"name": "GPUJOB_JOB_NAME", "value": request.name},
        {"name": "GPUJOB_SPEC", "value": f"{SPEC_DIR}/spec.json"},
        {"name": "GPUJOB_OUTPUT_DIR", "value": out},
        {"name": "HF_HOME", "value": f"{CACHE_DIR}/huggingface"},
        {"name": "PYTHONUNBUFFERED", "value": "1"},
    ]
    return env


def _resources(res: "ResourcesSection", gpus: int) -> dict[str, Any]:
    requests: dict[str, Any] = {}
    limits: dict[str, Any] = {}
    if res.cpu:
        requests["cpu"] = f"{res.cpu:g}"
    if res.memory:
        requests["memory"] = limits["memory"] = res.memory
    if res.disk:
        requests["ephemeral-storage"] = res.disk
    if gpus:
        requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)  # quantities are strings
    out = {}
    if requests:
        out["requests"] = requests
    if limits:
        out["limits"] = limits
    return out


def render(request: JobRequest) -> list[dict[str, Any]]:
    """The job's objects: the ConfigMap with its spec, the Job and, with several nodes, the headless
    Service its pods find worker 0 by (the module's docstring says what each carries, and why)."""
    from gpujob.spec.runtime import KubernetesRuntime  # the spec is loaded: no import cost here

    rt = runtime_of(request, KubernetesRuntime)
    gpus = request.spec.resources.gpus or 0
    name = object_name(request)
    config_map = {
        "apiVersion": "v1", "kind": "ConfigMap", "metadata": _meta(request, rt, f"{name}-spec"),
        "data": {"spec.json": json.dumps(request.spec_data(), indent=2, sort_keys=True)},
    }
    job_labels = {"kueue.x-k8s.io/queue-name": rt.queue} if rt.queue else {}
    job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": _meta(request, rt, name, job_labels),
           "spec": _job_spec(request, rt, gpus)}
    objects = [config_map, job]
    if request.spec.resources.nodes > 1:
        objects.append(_service(request, rt))
    return objects


def _meta(request: JobRequest, rt: "KubernetesRuntime", obj_name: str,
          extra: dict[str, str] | None = None) -> dict[str, Any]:
    m: dict[str, Any] = {"name": obj_name, "labels": {**labels(request), **(extra or {})}}
    if rt.namespace:
        m["namespace"] = rt.namespace
    return m


def _container(request: JobRequest, rt: "KubernetesRuntime", gpus: int) -> dict[str, Any]:
    """The one container: image, runner command, environment, resources, mounts, no privileges; with
    several nodes, the node's index and host name and the rendezvous port."""
    res = request.spec.resources
    nodes = res.nodes
    container: dict[str, Any] = {
        "name": CONTAINER,
        "image": rt.image or default_image(gpus),  # a CPU-only job (gpus: 0) runs the CPU image
        "command": _command(request, gpus, nodes),
        "env": _env(request, rt.secret_store, output_dir(request)),
        "resources": _resources(res, gpus),
        "volumeMounts": [
            {"name": "spec", "mountPath": SPEC_DIR, "readOnly": True},
            {"name": "cache", "mountPath": CACHE_DIR},
            {"name": "shm", "mountPath": "/dev/shm"},
        ],
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                            "runAsNonRoot": True},
    }
    if nodes > 1:
        # Defined first, so the entries after it can refer to it: Kubernetes expands $(VAR) in an env
        # value only for variables defined earlier in the list.
        container["env"][:0] = [
            {"name": "JOB_COMPLETION_INDEX", "valueFrom": {"fieldRef": {
                "fieldPath": "metadata.annotations['batch.kubernetes.io/job-completion-index']"}}},
            {"name": "GPUJOB_NODE_INDEX", "value": "$(JOB_COMPLETION_INDEX)"},
            {"name": "GPUJOB_NODE_HOST",
             "value": f"{object_name(request)}-$(JOB_COMPLETION_INDEX).{service_name(request)}"},
            {"name": "GPUJOB_RDZV_ENDPOINT", "value": rendezvous_endpoint(request)},
        ]
        container["ports"] = [{"name": "rendezvous", "containerPort": distributed(request).port}]
    return container


def _pod_spec(request: JobRequest, rt: "KubernetesRuntime", gpus: int) -> dict[str, Any]:
    """The pod: the container, the restricted security profile, the spec, cache and /dev/shm volumes,
    the GPU toleration and node selector."""
    res = request.spec.resources
    pod_spec: dict[str, Any] = {
        "restartPolicy": "Never",
        "serviceAccountName": "gpujob-runner",
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_container(request, rt, gpus)],
        "volumes": [
            {"name": "spec", "configMap": {"name": f"{object_name(request)}-spec"}},
            {"name": "cache", "persistentVolumeClaim": {"claimName": rt.cache_pvc}},
            {"name": "shm", "emptyDir": {"medium": "Memory", "sizeLimit": res.shm}},
        ],
    }
    if gpus:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        if res.gpu_type:
            pod_spec["nodeSelector"] = {rt.gpu_node_label: res.gpu_type}
    if res.nodes > 1:
        pod_spec["subdomain"] = service_name(request)
    return pod_spec


def _failure_rules(nodes: int) -> list[dict[str, Any]]:
    """The podFailurePolicy's rules: exit 2 fails the Job at once, disruptions are not counted."""
    rules: list[dict[str, Any]] = [
        {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                              "values": [CONFIG_ERROR_EXIT]}},
        {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget", "status": "True"}]},
    ]
    if nodes > 1:
        # a node that stopped for the group to start again (a preempted worker) is started again, and
        # counted; any other failed worker fails the Job at once instead of leaving the others waiting
        rules += [{"action": "Count", "onExitCodes": {"containerName": CONTAINER, "operator": "In",
                                                      "values": [GROUP_RESTART_EXIT]}},
                  {"action": "FailJob", "onExitCodes": {"containerName": CONTAINER, "operator": "NotIn",
                                                        "values": [0]}}]
    return rules


def _job_spec(request: JobRequest, rt: "KubernetesRuntime", gpus: int) -> dict[str, Any]:
    """The Job's spec: retries and failure policy, deadline, clean-up, Kueue's suspend, indexed pods."""
    nodes = request.spec.resources.nodes
    job_spec: dict[str, Any] = {
        # several nodes: each restart of the group can count a pod of every node
        "backoffLimit": BACKOFF_LIMIT if nodes == 1 else max(1, distributed(request).restarts * nodes),
        "podFailurePolicy": {"rules": _failure_rules(nodes)},
        "ttlSecondsAfterFinished": TTL_AFTER_FINISHED_S,
        "template": {"metadata": {"labels": labels(request)}, "spec": _pod_spec(request, rt, gpus)},
    }
    if request.deadline_s:  # limits.max_runtime, or limits.max_cost as running time if that comes first
        job_spec["activeDeadlineSeconds"] = request.deadline_s
    if rt.queue:
        job_spec["suspend"] = True
    if nodes > 1:
        job_spec.update({"completionMode": "Indexed", "completions": nodes, "parallelism": nodes})
    return job_spec


def _service(request: JobRequest, rt: "KubernetesRuntime") -> dict[str, Any]:
    """The headless Service of a several-node job: ``<job>-<index>.<service>`` resolves to each pod."""
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": _meta(request, rt, service_name(request)),
        "spec": {"clusterIP": "None", "publishNotReadyAddresses": True,
                 "selector": {"gpujob.dev/id": request.job_id},
                 "ports": [{"name": "rendezvous", "port": distributed(request).port}]},
    }


def semantic_problems(objects: list[dict[str, Any]]) -> list[str]:
    """Rules the schemas miss: DNS-1123 names, GPU requests equal limits, podFailurePolicy needs Never."""
    problems = []
    for obj in objects:
        name = obj["metadata"]["name"]
        if not _DNS_LABEL.match(name) or len(name) > 63:
            problems.append(f"{obj['kind']} name {name!r} is not a DNS-1123 label of at most 63 characters")
        if obj["kind"] != "Job":
            continue
        pod = obj["spec"]["template"]["spec"]
        if "podFailurePolicy" in obj["spec"] and pod.get("restartPolicy") != "Never":
            problems.append("Job: podFailurePolicy needs restartPolicy: Never")
        for c in pod["containers"]:
            req = c.get("resources", {}).get("requests", {}).get("nvidia.com/gpu")
            lim = c.get("resources", {}).get("limits", {}).get("nvidia.com/gpu")
            if req != lim:
                problems.append(f"container {c['name']}: nvidia.com/gpu requests ({req}) must equal limits ({lim})")
    return problems


def validate(objects: list[dict[str, Any]], version: str = "1.33.0") -> list[str]:
    """Strict offline validation against the official schemas, then :func:`semantic_problems`."""
    import kubernetes_validate

    problems = []
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            problems.append(f"{obj['kind']} {obj['metadata']['name']}: {exc.message}")
    return problems + semantic_problems(objects)


def to_yaml(objects: list[dict[str, Any]]) -> str:
    """The objects as one YAML stream; multi-line strings (the spec) as literal blocks."""
    import io

    from ruamel.yaml import YAML
    from ruamel.yaml.scalarstring import LiteralScalarString

    def literal(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: literal(v) for k, v in value.items()}
        if isinstance(value, list):
            return [literal(v) for v in value]
        return LiteralScalarString(value) if isinstance(value, str) and "\n" in value else value

    yaml = YAML()
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump_all([literal(obj) for obj in objects], buf)
    return buf.getvalue()
