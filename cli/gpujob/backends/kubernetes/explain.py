"""A Job and its pods, as the registry's status and a reason in plain words (for several processes,
the launcher's line naming the rank that failed first; with several nodes, which worker).

Pure functions over the API's dicts, so every case (Unschedulable, ImagePullBackOff, OOMKilled,
DeadlineExceeded, suspended by a queue, a missing Secret, retries) is tested without a cluster.
"""

from __future__ import annotations

import re
from typing import Any

from gpujob.backends.base import Observed, failure_reason
from gpujob.words import cut_words, fmt_duration

CONTAINER = "job"
QUEUE_LABEL = "kueue.x-k8s.io/queue-name"
_PULL_ERRORS = ("ImagePullBackOff", "ErrImagePull", "InvalidImageName", "ErrImageNeverPull")


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind and c.get("status") == "True":
            return c
    return None


def container_state(pod: dict[str, Any]) -> dict[str, Any]:
    """The job container's state: {"waiting": ...} | {"running": ...} | {"terminated": ...} | {}."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == CONTAINER:
            return cs.get("state") or {}
    return {}


def terminated(pod: dict[str, Any]) -> dict[str, Any] | None:
    return container_state(pod).get("terminated")


def pod_ended(pod: dict[str, Any]) -> bool:
    phase = (pod.get("status") or {}).get("phase")
    return phase in ("Succeeded", "Failed") or terminated(pod) is not None


def last_failed(pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    failed = [p for p in pods if (p.get("status") or {}).get("phase") == "Failed"
              or ((terminated(p) or {}).get("exitCode") not in (None, 0))]
    return failed[-1] if failed else None


# The Job controller's message when a podFailurePolicy rule failed the Job: it names the pod.
_POLICY_POD = re.compile(r"for pod [^/\s]+/(\S+) failed with exit code")


def blamed(job: dict[str, Any] | None, pods: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The pod whose failure explains the Job's: the one a podFailurePolicy rule named (with several
    workers, the others are stopped after it and fail too), else the last that failed."""
    cond = condition(job, "Failed") or condition(job, "FailureTarget")
    found = _POLICY_POD.search((cond or {}).get("message") or "") if cond else None
    if found:
        pod = next((p for p in pods if p["metadata"]["name"] == found.group(1)), None)
        if pod is not None:
            return pod
    return last_failed(pods)


def pod_words(pod: dict[str, Any], log_tail: list[str] | None = None) -> tuple[str, int | None]:
    """How one pod ended, in words, and its exit code."""
    term = terminated(pod)
    status = pod.get("status") or {}
    if term is None:
        if status.get("reason"):  # the pod itself was evicted, or hit its own deadline
            return f"pod {pod['metadata']['name']} {status['reason']}: {status.get('message', '')}".rstrip(": "), None
        return f"pod {pod['metadata']['name']} ended without an exit status", None
    code = term.get("exitCode")
    if term.get("reason") == "OOMKilled":
        limit = _memory_limit(pod)
        where = f", memory limit {limit}" if limit else ""
        return (f"killed: out of memory (OOMKilled{where}); raise resources.memory or lower the batch size",
                code if code is not None else 137)
    return failure_reason(code, log_tail or [], cut_words(term.get("message") or "", 1000) or None), code


def _memory_limit(pod: dict[str, Any]) -> str | None:
    for c in (pod.get("spec") or {}).get("containers") or []:
        if c.get("name") == CONTAINER:
            return ((c.get("resources") or {}).get("limits") or {}).get("memory")
    return None


def observe(job: dict[str, Any] | None, pods: list[dict[str, Any]], *,
            log_tail: list[str] | None = None, name: str = "", namespace: str = "") -> Observed:
    """The Job's state. ``pods`` oldest first; ``log_tail`` is the end of the last failed pod's log."""
    if job is None:
        return Observed("failed", reason=(
            f"the Job {namespace}/{name} no longer exists on the cluster (deleted outside gpujob, or removed "
            "by ttlSecondsAfterFinished before gpujob saw it end)"))
    spec = job.get("spec") or {}
    if condition(job, "Complete") or condition(job, "SuccessCriteriaMet"):
        return Observed("succeeded", exit_code=0)
    failed = condition(job, "Failed") or condition(job, "FailureTarget")
    if failed:
        return _failed(job, failed, pods, log_tail)
    labels = (job.get("metadata") or {}).get("labels") or {}
    if condition(job, "Suspended") or spec.get("suspend"):
        queue = labels.get(QUEUE_LABEL)
        if queue:
            return Observed("queued", reason=(
                f"suspended: waiting in queue {queue!r} for GPU quota; Kueue starts it when the queue admits it "
                "(see `kubectl get workloads`)"))
        return Observed("queued", reason="suspended (spec.suspend is true); nothing runs until it is resumed")
    if not pods:
        return Observed("queued", reason="waiting for the Job controller to create a pod")
    pod = pods[-1]
    attempt = len(pods)
    prev = ""
    if attempt > 1:
        earlier = last_failed(pods[:-1])
        prev = f" (attempt {attempt}; attempt {attempt - 1}: {pod_words(earlier, log_tail)[0]})" if earlier else \
            f" (attempt {attempt})"
    disrupted = condition(pod, "DisruptionTarget")
    if disrupted and not pod_ended(pod):
        return Observed("starting", reason=(
            f"pod {pod['metadata']['name']} is being stopped by the cluster ({disrupted.get('reason')}: "
            f"{disrupted.get('message', '')}); a new pod will be started, not counted as a failure"))
    phase = (pod.get("status") or {}).get("phase")
    if phase == "Pending":
        return _pending(pod, prev)
    if phase == "Running":
        return Observed("running", reason=prev.strip(" ()") or None)
    if phase == "Succeeded" or (terminated(pod) or {}).get("exitCode") == 0:
        return Observed("running", reason=None)  # done; the Job controller records it in a moment
    words, _ = pod_words(pod, log_tail)
    backoff = spec.get("backoffLimit", 6)
    return Observed("running", reason=(
        f"attempt {attempt} failed: {words}; Kubernetes retries it (backoffLimit {backoff})"))


DEADLINE_WORDS = "stopped: ran longer than limits.max_runtime"  # activeDeadlineSeconds: max_runtime, or the budget


def _failed(job: dict[str, Any], cond: dict[str, Any], pods: list[dict[str, Any]],
            log_tail: list[str] | None) -> Observed:
    spec, st = job.get("spec") or {}, job.get("status") or {}
    reason = cond.get("reason") or ""
    pod = blamed(job, pods)
    words, code = pod_words(pod, log_tail) if pod else ("", None)
    if reason == "DeadlineExceeded":
        limit = spec.get("activeDeadlineSeconds")
        text = (f"{DEADLINE_WORDS} ({fmt_duration(limit)}); Kubernetes DeadlineExceeded"
                if limit else f"DeadlineExceeded: {cond.get('message', '')}")
        return Observed("failed", reason=text, exit_code=code)
    if reason == "BackoffLimitExceeded":
        n = st.get("failed") or len([p for p in pods if (p.get("status") or {}).get("phase") == "Failed"])
        text = f"failed {n} time(s), past the retry limit (backoffLimit {spec.get('backoffLimit', 6)})"
        return Observed("failed", reason=f"{text}; last attempt {words}" if words else text, exit_code=code)
    if reason == "PodFailurePolicy":
        text = words or cond.get("message", "")
        if pod is not None and spec.get("completionMode") == "Indexed" and words:
            text = f"worker {_index(pod)}: {text}"
        if code == 2:
            text += "; not retried: exit code 2 means the spec or the data needs fixing"
        return Observed("failed", reason=text, exit_code=code)
    text = f"{reason}: {cond.get('message', '')}".strip(": ")
    return Observed("failed", reason=f"{text}; {words}" if words else text, exit_code=code)


def _index(pod: dict[str, Any]) -> str:
    meta = pod.get("metadata") or {}
    key = "batch.kubernetes.io/job-completion-index"
    return (meta.get("labels") or {}).get(key) or (meta.get("annotations") or {}).get(key) or "?"


_INSUFFICIENT = re.compile(r"Insufficient ([\w./-]+)")


def _pending(pod: dict[str, Any], prev: str) -> Observed:
    name = pod["metadata"]["name"]
    sched = next((c for c in (pod.get("status") or {}).get("conditions") or []
                  if c.get("type") == "PodScheduled" and c.get("status") == "False"), None)
    if sched and sched.get("reason") == "Unschedulable":
        message = (sched.get("message") or "").strip()
        return Observed("queued", reason=f"unschedulable: {message}{_schedule_hint(pod, message)}{prev}")
    waiting = container_state(pod).get("waiting") or {}
    why, message = waiting.get("reason") or "", (waiting.get("message") or "").strip()
    if why in _PULL_ERRORS:
        image = next((c.get("image") for c in (pod.get("spec") or {}).get("containers") or []
                      if c.get("name") == CONTAINER), "?")
        return Observed("starting", reason=(
            f"cannot pull image {image} ({why}{': ' + message if message else ''}); check runtime.image and "
            "that the cluster may pull from its registry (imagePullSecrets); Kubernetes keeps retrying"))
    if why == "CreateContainerConfigError":
        hint = ""
        if "secret" in message.lower():
            hint = ("; the admin adds the key: kubectl create secret generic NAME --from-literal=KEY=... "
                    "(see k8s/secret-example.yaml)")
        return Observed("starting", reason=f"cannot start the container: {message}{hint}")
    if why and why != "ContainerCreating":
        return Observed("starting", reason=f"{why}: {message}".strip(": "))
    return Observed("starting", reason=f"pod {name} is starting (pulling the image, mounting volumes){prev}")


def _schedule_hint(pod: dict[str, Any], message: str) -> str:
    spec = pod.get("spec") or {}
    hints = []
    for resource in (r.rstrip(".") for r in _INSUFFICIENT.findall(message)):
        if resource == "nvidia.com/gpu":
            hints.append("no node has that many free GPUs now: it starts when GPUs free up, or lower resources.gpus")
        elif resource in ("cpu", "memory", "ephemeral-storage"):
            hints.append(f"no node has that much free {resource}: lower resources.{_SPEC_KEY.get(resource, resource)}")
    if "node affinity/selector" in message or "didn't match" in message:
        for label, value in (spec.get("nodeSelector") or {}).items():
            hints.append(f"no node has {label}={value}: check resources.gpu_type against "
                         f"`kubectl get nodes -L {label}`")
    return f" ({'; '.join(hints)})" if hints else ""


_SPEC_KEY = {"ephemeral-storage": "disk"}
