"""A connection to one cluster through the official ``kubernetes`` client, speaking plain dicts.

Objects go in and come out as the same camelCase dicts :mod:`manifests` renders (the client's
models are skipped: ``_preload_content=False`` and ``json.loads``), so the backend, its tests and
the manifests all share one shape. API errors become :class:`GpujobError` messages that name the
cluster, the namespace and what to do; a missing object is ``None``, not an exception.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from gpujob.errors import GpujobError, UserError

IN_CLUSTER_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
CONNECT_TIMEOUT_S = 10
READ_TIMEOUT_S = 60  # a log stream quiet this long is reopened (override: GPUJOB_K8S_READ_TIMEOUT_S)


def _read_timeout_s() -> float:
    return float(os.environ.get("GPUJOB_K8S_READ_TIMEOUT_S") or READ_TIMEOUT_S)


class ClusterError(GpujobError):
    """The cluster answered with an error (or could not be reached)."""


def _import_client():
    try:
        import kubernetes  # heavy: imported only when a kubernetes job is touched
    except ImportError:
        raise UserError("the kubernetes backend needs the official Kubernetes client",
                        hint="pip install 'gpujob[kubernetes]'") from None
    return kubernetes


def current_context() -> str | None:
    """The kubeconfig's current context, read offline; None without a kubeconfig (or in a cluster)."""
    kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    first = kubeconfig.split(os.pathsep)[0]
    if not Path(first).exists():
        return None
    try:
        k8s = _import_client()
        _, active = k8s.config.list_kube_config_contexts(config_file=first)
        return active.get("name") if active else None
    except Exception:  # noqa: BLE001 - a kubeconfig it cannot read: submit says what is wrong with it
        return None


@dataclass
class Target:
    """Which cluster and namespace: recorded in each job's handle, so a job is found again even
    after the user switches kubectl context."""

    context: str | None
    namespace: str
    server: str


class Cluster:
    def __init__(self, *, context: str | None = None, namespace: str | None = None) -> None:
        k8s = _import_client()
        from kubernetes.config.config_exception import ConfigException

        kubeconfig = os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
        first = kubeconfig.split(os.pathsep)[0]
        try:
            if not Path(first).exists() and os.environ.get("KUBERNETES_SERVICE_HOST"):
                k8s.config.load_incluster_config()
                self.api = k8s.client.ApiClient()
                ctx_name, ctx_ns = None, IN_CLUSTER_NAMESPACE.read_text().strip() if IN_CLUSTER_NAMESPACE.exists() else None
            else:
                contexts, active = k8s.config.list_kube_config_contexts(config_file=first)
                chosen = active
                if context:
                    chosen = next((c for c in contexts if c["name"] == context), None)
                    if chosen is None:
                        raise UserError(f"kubeconfig {first} has no context {context!r}",
                                        hint="known: " + ", ".join(c["name"] for c in contexts))
                self.api = k8s.config.new_client_from_config(config_file=first, context=chosen["name"])
                ctx_name, ctx_ns = chosen["name"], chosen.get("context", {}).get("namespace")
        except (ConfigException, FileNotFoundError) as exc:
            raise UserError(f"no Kubernetes cluster configured ({exc})",
                            hint="point KUBECONFIG at your cluster's kubeconfig (kubectl must work), "
                                 "or run gpujob inside the cluster") from None
        self.api.configuration.retries = 1
        self.target = Target(context=ctx_name, namespace=namespace or ctx_ns or "default",
                             server=self.api.configuration.host)
        self.core = k8s.client.CoreV1Api(self.api)
        self.batch = k8s.client.BatchV1Api(self.api)
        self._ApiException = k8s.client.exceptions.ApiException

    @property
    def namespace(self) -> str:
        return self.target.namespace

    # ------------------------------------------------------------------ calls

    def call(self, fn, *args, missing_ok: bool = False, what: str = "", **kwargs) -> dict | None:
        """``fn(*args)`` as a dict; None for a 404 when missing_ok; errors in plain words."""
        import urllib3

        try:
            resp = fn(*args, _preload_content=False, _request_timeout=(CONNECT_TIMEOUT_S, READ_TIMEOUT_S), **kwargs)
            data = resp.data
            return json.loads(data) if data else {}
        except self._ApiException as exc:
            if exc.status == 404 and missing_ok:
                return None
            raise self.explain(exc, what) from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise ClusterError(f"cannot reach the Kubernetes API at {self.target.server}: {exc}",
                               hint="check the network/VPN and that `kubectl get pods` works") from None

    def explain(self, exc, what: str = "") -> GpujobError:
        message = exc.reason or ""
        try:
            body = json.loads(exc.body or "{}")
            message = body.get("message") or message
        except (TypeError, ValueError):
            pass
        where = f" ({what})" if what else ""
        ns = self.namespace
        if exc.status in (401,):
            return UserError(f"the cluster at {self.target.server} rejected your credentials{where}: {message}",
                             hint="refresh your kubeconfig credentials (kubectl get pods should work)")
        if exc.status == 403:
            return UserError(f"not allowed in namespace {ns}{where}: {message}",
                             hint="ask the cluster admin to bind you to the gpujob-user Role (k8s/rbac.yaml)")
        if exc.status == 404 and "namespaces" in message and "not found" in message:
            return UserError(f"namespace {ns} does not exist on {self.target.server}{where}",
                             hint="the admin creates it with `kubectl apply -k k8s/`, or set runtime.namespace")
        if exc.status == 409:
            return ClusterError(f"already exists{where}: {message}")
        if exc.status == 422 or exc.status == 400:
            return UserError(f"the cluster rejected{where}: {message}")
        return ClusterError(f"Kubernetes API error {exc.status}{where}: {message}")

    # ------------------------------------------------------------------ objects

    def create(self, obj: dict[str, Any]) -> dict:
        kind, name = obj["kind"], obj["metadata"]["name"]
        fn = {"Job": self.batch.create_namespaced_job, "ConfigMap": self.core.create_namespaced_config_map,
              "Service": self.core.create_namespaced_service}[kind]
        return self.call(fn, self.namespace, obj, what=f"creating {kind} {name}")

    def delete(self, kind: str, name: str, *, propagation: str | None = None,
               grace_s: int | None = None) -> bool:
        """Delete one object; False if it was already gone."""
        fn = {"Job": self.batch.delete_namespaced_job, "ConfigMap": self.core.delete_namespaced_config_map,
              "Service": self.core.delete_namespaced_service, "Pod": self.core.delete_namespaced_pod}[kind]
        kwargs: dict[str, Any] = {}
        if propagation:
            kwargs["propagation_policy"] = propagation
        if grace_s is not None:
            kwargs["grace_period_seconds"] = grace_s
        return self.call(fn, name, self.namespace, missing_ok=True, what=f"deleting {kind} {name}",
                         **kwargs) is not None

    def patch_owner(self, kind: str, name: str, owner: dict[str, Any]) -> None:
        """Make ``owner`` (a Job) own the object, so deleting the Job removes it too."""
        fn = {"ConfigMap": self.core.patch_namespaced_config_map, "Service": self.core.patch_namespaced_service}[kind]
        ref = {"apiVersion": "batch/v1", "kind": "Job", "name": owner["metadata"]["name"],
               "uid": owner["metadata"]["uid"], "blockOwnerDeletion": False}
        self.call(fn, name, self.namespace, {"metadata": {"ownerReferences": [ref]}},
                  what=f"linking {kind} {name} to its Job")

    def job(self, name: str) -> dict | None:
        return self.call(self.batch.read_namespaced_job, name, self.namespace, missing_ok=True,
                         what=f"reading Job {name}")

    def jobs(self, selector: dict[str, str]) -> list[dict]:
        data = self.call(self.batch.list_namespaced_job, self.namespace, label_selector=_selector(selector),
                         what="listing Jobs")
        return [j for j in data.get("items", []) if matches(j, selector)]

    def pods(self, selector: dict[str, str]) -> tuple[list[dict], str | None]:
        """The pods with these labels, oldest first, and the list's resourceVersion (to watch from)."""
        data = self.call(self.core.list_namespaced_pod, self.namespace, label_selector=_selector(selector),
                         what="listing pods")
        items = [p for p in data.get("items", []) if matches(p, selector)]
        items.sort(key=_age_key)
        return items, data.get("metadata", {}).get("resourceVersion")

    def watch_pods(self, selector: dict[str, str], resource_version: str | None,
                   timeout_s: int) -> Iterator[tuple[str, dict]]:
        """(type, pod) events for up to ``timeout_s``. Raises :class:`WatchExpired` on 410 Gone:
        list again, then watch from the new resourceVersion. Events stay plain dicts (no models)."""
        import urllib3

        kwargs: dict[str, Any] = {"label_selector": _selector(selector), "timeout_seconds": timeout_s,
                                  "watch": True, "allow_watch_bookmarks": True, "_preload_content": False,
                                  "_request_timeout": (CONNECT_TIMEOUT_S, timeout_s + 5)}
        if resource_version:
            kwargs["resource_version"] = resource_version
        try:
            resp = self.core.list_namespaced_pod(self.namespace, **kwargs)
        except self._ApiException as exc:
            if exc.status == 410:
                raise WatchExpired() from None
            raise self.explain(exc, "watching pods") from None
        buffer = b""
        try:
            for chunk in resp.stream(1 << 16, decode_content=True):
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object") or {}
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise WatchExpired()
                        raise ClusterError(f"watching pods: {obj.get('reason')}: {obj.get('message')}")
                    if event.get("type") == "BOOKMARK":
                        continue
                    if matches(obj, selector):
                        yield event["type"], obj
        except (urllib3.exceptions.HTTPError, OSError):
            return  # the watch broke off: the caller looks again
        finally:
            resp.release_conn()

    def open_log(self, pod: str, container: str, *, follow: bool, since_time: str | None = None,
                 tail: int | None = None, read_timeout_s: float | None = None):
        """The raw streaming response of ``pods/log`` with timestamps (urllib3 response).

        ``sinceTime`` is in the API but not in the Python client's method, so the request is built
        with the client's own serializer (auth, TLS and proxies as for every other call)."""
        query: list[tuple[str, Any]] = [("container", container), ("timestamps", "true")]
        if follow:
            query.append(("follow", "true"))
        if since_time:
            query.append(("sinceTime", since_time))
        if tail is not None:
            query.append(("tailLines", tail))
        params = self.api.param_serialize(
            method="GET", resource_path="/api/v1/namespaces/{namespace}/pods/{name}/log",
            path_params={"namespace": self.namespace, "name": pod}, query_params=query,
            header_params={"Accept": "text/plain"}, auth_settings=["BearerToken"])
        resp = self.api.call_api(*params, _request_timeout=(CONNECT_TIMEOUT_S, read_timeout_s or _read_timeout_s()))
        if not 200 <= resp.status < 300:
            body = resp.read()
            exc = self._ApiException(status=resp.status, reason=resp.reason)
            exc.body = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
            raise exc
        return resp.response


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (HTTP 410 Gone): list again, then watch from there."""


def _age_key(pod: dict) -> tuple:
    """Oldest first. creationTimestamp has whole seconds; within one second an attempt that has
    already ended is older than one still going (a retry starts after its predecessor failed)."""
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    finished = next((((cs.get("state") or {}).get("terminated") or {}).get("finishedAt") for cs in statuses), None)
    return (pod["metadata"].get("creationTimestamp") or "", 0 if finished else 1, finished or "",
            pod["metadata"]["name"])


def _selector(labels: dict[str, str]) -> str:
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def matches(obj: dict, selector: dict[str, str]) -> bool:
    """Label check on our side too: list and watch results are filtered again, whatever the server did."""
    have = (obj.get("metadata") or {}).get("labels") or {}
    return all(have.get(k) == v for k, v in selector.items())
