"""A short-lived pod on the job's cache PVC, and commands run in it over ``pods/exec``.

What ``kubectl cp`` does, for gpujob's uploads (local data onto the PVC) and downloads (a job's
outputs off it): a pod of the job image that mounts the PVC ``runtime.cache_pvc`` at /cache and only
sleeps (:func:`transfer_pod`), and tar streamed over the exec WebSocket (:func:`run`: channel 0
stdin, 1 stdout, 2 stderr, 3 the final Status; the v5 subprotocol's close frame ends stdin). The
pod is restricted like the job's (non-root, no privilege escalation, no capabilities), owns
nothing and is deleted when the transfer ends, whatever happens; ``activeDeadlineSeconds`` bounds
it if gpujob itself dies first.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from gpujob.backends.kubernetes.cluster import ClusterError
from gpujob.errors import GpujobError

if TYPE_CHECKING:
    from gpujob.backends.kubernetes.cluster import Cluster

CACHE_DIR = "/cache"
POD_DEADLINE_S = 6 * 3600          # the longest a transfer pod lives, even if gpujob is killed
START_TIMEOUT_S = 300              # pulling the image, attaching the PVC
STDIN_CHUNK = 1 << 20


@dataclass
class Done:
    code: int
    stdout: bytes
    stderr: bytes


def pod_manifest(name: str, image: str, pvc: str, labels: dict[str, str]) -> dict:
    return {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "gpujob",
                                              "app.kubernetes.io/component": "transfer", **labels}},
        "spec": {
            "restartPolicy": "Never",
            "serviceAccountName": "gpujob-runner",
            "automountServiceAccountToken": False,
            "activeDeadlineSeconds": POD_DEADLINE_S,
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000, "fsGroup": 1000,
                                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "transfer", "image": image,
                "command": ["sleep", str(POD_DEADLINE_S)],
                "volumeMounts": [{"name": "cache", "mountPath": CACHE_DIR}],
                "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "512Mi"}},
                "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
                                    "runAsNonRoot": True},
            }],
            "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": pvc}}],
        },
    }


@contextlib.contextmanager
def transfer_pod(cluster: "Cluster", name: str, image: str, pvc: str, labels: dict[str, str],
                 say: Callable[[str], None] = lambda s: None) -> Iterator[str]:
    """A running transfer pod's name (``name`` and a random suffix, so a pod still being deleted is
    never in the way); the pod is deleted on the way out."""
    name = f"{name[:56]}-{secrets.token_hex(3)}"
    obj = pod_manifest(name, image, pvc, labels)
    obj["metadata"]["namespace"] = cluster.namespace
    cluster.call(cluster.core.create_namespaced_pod, cluster.namespace, obj, what=f"creating transfer pod {name}")
    try:
        say(f"transfer pod {name} starting (PVC {pvc} at {CACHE_DIR})")
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            pod = cluster.call(cluster.core.read_namespaced_pod, name, cluster.namespace, missing_ok=True,
                               what=f"reading transfer pod {name}") or {}
            status = pod.get("status") or {}
            if status.get("phase") == "Running":
                break
            why = _waiting(status)
            if status.get("phase") in ("Failed", "Succeeded") or time.monotonic() > deadline:
                raise ClusterError(f"transfer pod {name} did not start{': ' + why if why else ''}",
                                   hint=f"check the PVC {pvc} exists and can be mounted (`kubectl describe pod "
                                        f"{name}` while it waits), then submit again")
            time.sleep(0.2)
        yield name
    finally:
        with contextlib.suppress(GpujobError):
            cluster.delete("Pod", name, grace_s=0)


def _waiting(status: dict) -> str:
    for c in status.get("containerStatuses") or []:
        waiting = (c.get("state") or {}).get("waiting") or {}
        if waiting.get("reason"):
            return f"{waiting['reason']} {waiting.get('message', '')}".strip()
    for cond in status.get("conditions") or []:
        if cond.get("status") == "False" and cond.get("message"):
            return cond["message"]
    return ""


def run(cluster: "Cluster", pod: str, argv: list[str], *, stdin: Iterable[bytes] | None = None,
        on_stdout: Callable[[bytes], None] | None = None, on_sent: Callable[[int], None] | None = None,
        timeout_s: float = 6 * 3600) -> Done:
    """``argv`` in the pod's container; stdin from the chunks given (then closed); stdout handed to
    ``on_stdout`` as it comes when given (else kept), stderr kept. A dropped stream raises ClusterError."""
    from kubernetes.stream import stream
    from kubernetes.stream.ws_client import V5_CHANNEL_PROTOCOL

    try:
        ws = stream(cluster.core.connect_get_namespaced_pod_exec, pod, cluster.namespace, command=argv,
                    stdin=stdin is not None, stdout=True, stderr=True, tty=False, _preload_content=False,
                    binary=True)
    except Exception as exc:  # noqa: BLE001 - the client raises ApiException or websocket errors
        raise ClusterError(f"cannot run a command in transfer pod {pod}: {_why(exc)}",
                           hint="`kubectl exec` into a pod must be allowed for you (pods/exec in k8s/rbac.yaml)") from None
    out, err = bytearray(), bytearray()

    def drain(timeout: float = 0) -> None:
        ws.update(timeout=timeout)
        for channel, sink in ((1, out), (2, err)):
            data = ws.read_channel(channel)
            if data:
                if channel == 1 and on_stdout is not None:
                    on_stdout(data)
                else:
                    sink.extend(data)

    try:
        if stdin is not None:
            if ws.subprotocol != V5_CHANNEL_PROTOCOL:
                raise ClusterError("the cluster's exec stream cannot mark the end of a file (it has no v5 "
                                   "channel protocol; Kubernetes 1.30+ has)", hint="upgrade the cluster, or stage "
                                   "the data to a bucket with runtime.stage")
            for chunk in stdin:
                for i in range(0, len(chunk), STDIN_CHUNK):
                    piece = chunk[i:i + STDIN_CHUNK]
                    ws.write_stdin(piece)
                    if on_sent:
                        on_sent(len(piece))
                    drain()
                    if not ws.is_open():
                        raise ClusterError(f"the exec stream to transfer pod {pod} closed early: "
                                           + (bytes(err).decode(errors="replace").strip()[-300:] or "no reason given"))
            ws.close_channel(0)
        deadline = time.monotonic() + timeout_s
        while ws.is_open() and time.monotonic() < deadline:
            drain(timeout=1)
        drain()
        if ws.is_open():
            raise ClusterError(f"the command in transfer pod {pod} ran past {timeout_s:.0f} s")
        code = _returncode(ws.read_channel(3))
    except (OSError, ConnectionError) as exc:
        raise ClusterError(f"the exec stream to transfer pod {pod} broke: {exc}",
                           hint="submit again: what was sent whole is kept") from None
    finally:
        with contextlib.suppress(Exception):
            ws.close()
    return Done(code, bytes(out), bytes(err))


def _returncode(status: bytes) -> int:
    if not status:
        return -1                          # the stream ended without a Status: the connection dropped
    try:
        data = json.loads(status)
    except ValueError:
        return -1
    if data.get("status") == "Success":
        return 0
    for cause in (data.get("details") or {}).get("causes") or []:
        if cause.get("reason") == "ExitCode":
            return int(cause.get("message", "-1"))
    return -1


def _why(exc: Exception) -> str:
    body = getattr(exc, "body", None)
    if body:
        try:
            return json.loads(body).get("message") or str(exc)
        except (TypeError, ValueError):
            pass
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
