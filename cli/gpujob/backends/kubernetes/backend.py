"""The Kubernetes backend: specs become batch/v1 Jobs on a GPU cluster.

- ``submit`` first stages the local folders the spec names (:mod:`.staging`: to ``runtime.stage`` or
  onto the cache PVC through a transfer pod, content-addressed, with a progress bar), then renders the Job, the spec ConfigMap and (multi-node) a headless Service, validates
  them offline and strictly, creates them with the official client, and makes the Job own the
  others (deleting the Job, or its TTL, removes them). If one create fails, what was created is
  removed again.
- ``status`` reads the Job's conditions and its pods and says why it is not running in plain words
  (:mod:`.explain`); progress comes from the runner's event lines at the end of the pod's log.
- ``logs -f`` waits for the pod (a watch that survives 410 Gone), follows its log across dropped
  streams without losing or repeating lines (:mod:`gpujob.backends.logfollow`), and moves on to the next attempt
  when Kubernetes retries. Multi-node: worker 0, or every worker with ``--all``.
- ``cancel`` deletes the Job with foreground propagation and its pods with the grace period asked for.
- A finished job's log is saved in the registry's job folder before Kubernetes deletes the pods.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from typing import TYPE_CHECKING, Any, Iterator, Mapping

from gpujob.backends import local_data
from gpujob.backends.base import (LOG_NAME, Backend, Capabilities, JobRequest, Notice, Observed, budget_stop,
                                  read_saved_log, read_tail, runtime_of)
from gpujob.backends.kubernetes import explain, manifests, prices, staging
from gpujob.backends.kubernetes import pull as pvc_pull
from gpujob.backends.kubernetes.handle import KubernetesHandle
from gpujob.backends.logfollow import Follower, LogNotReady, SourceGone, parse_ts
from gpujob.defaults import HF_CACHE
from gpujob.errors import GpujobError, UserError
from gpujob.records import TERMINAL

if TYPE_CHECKING:
    from gpujob.backends.host import HostSource
    from gpujob.backends.kubernetes.cluster import Cluster
    from gpujob.records import Job
    from gpujob.spec.models import JobSpec

INDEX_KEY = "batch.kubernetes.io/job-completion-index"  # a pod label (Kubernetes 1.28+) and annotation
PROGRESS_TAIL_LINES = 400
ERROR_TAIL_LINES = 60
_CREATE_ORDER = {"ConfigMap": 0, "Service": 1, "Job": 2}


class KubernetesBackend(Backend):
    name = "kubernetes"
    capabilities = Capabilities(
        secrets_from_environment=False,   # the pod reads them from a Kubernetes Secret (secretKeyRef)
        outputs_on_this_machine=False,    # on the cluster's volume (or a URI)
        outputs_volume="the cluster's volume",
        renders_yaml=True,                # render prints the manifests
        price_table_by_scope=True,        # the price table's entry by kubeconfig context first (price_scope)
    )
    watch_timeout_s = 10               # how long one pod watch lasts before the Job is read again
    poll_s = 0.5

    def __init__(self, hosts: "HostSource | None" = None) -> None:
        self.people = hosts            # the layer above's say() and transfer() (progress bars); None: silent

    @classmethod
    def made(cls, hosts: "HostSource | None") -> "KubernetesBackend":
        return cls(hosts=hosts)

    @classmethod
    def outputs_place(cls, job: "Job") -> str | None:
        """A relative output.dir is on the cache PVC (``/cache/...``): its claim and the job's namespace."""
        if not (job.output_dir and job.output_dir.startswith(f"{manifests.CACHE_DIR}/")):
            return None
        claim = getattr(job.spec and job.spec.runtime, "cache_pvc", None) or HF_CACHE
        return f"on PersistentVolumeClaim {claim}, namespace {KubernetesHandle.of(job).namespace or '?'}"

    def _say(self, line: str) -> None:
        if self.people is not None:
            self.people.say(line)

    def _transfer(self, label: str):
        if self.people is not None:
            return self.people.transfer(label)
        return contextlib.nullcontext(lambda done, total: None)

    # ------------------------------------------------------------------ render / submit

    def render(self, request: JobRequest) -> str:
        objects = manifests.render(request)
        problems = manifests.semantic_problems(objects)
        header = "# gpujob: what `gpujob submit --backend kubernetes` will create\n"
        if problems:
            header += "".join(f"# PROBLEM: {p}\n" for p in problems)
        missing = local_data.problems(request.spec, self.name, workdir=request.workdir)
        header += "".join(f"# {line}\n" for line in staging.render_lines(request))
        if missing:
            header += "".join(f"# PROBLEM: {p}; submit refuses it\n" for p in missing)
            header += f"# hint: {local_data.hint(self.name)}\n"
        return header + manifests.to_yaml(objects)

    def preflight(self, request: JobRequest) -> None:
        local_data.refuse(request.spec, self.name, request.spec_path, workdir=request.workdir)  # before anything is created
        staging.check(request)          # a folder with links out of it, or an odd name, refused here

    def output_dir(self, spec: "JobSpec") -> str:
        return manifests.output_dir_for(spec)

    def price_scope(self, request: JobRequest) -> str | None:
        """The kubeconfig context the job goes to: the price table's entry for this cluster."""
        from gpujob.backends.kubernetes.cluster import current_context
        from gpujob.spec.runtime import KubernetesRuntime

        return runtime_of(request, KubernetesRuntime).context or current_context()

    def published_prices(self, request: JobRequest) -> Mapping[str, float] | None:
        """The prices the cluster's admin published (ConfigMap gpujob-prices in the job's namespace); None when
        there is none or the cluster cannot be asked (the job is then priced by the table, or unknown)."""
        from gpujob.spec.runtime import KubernetesRuntime

        rt = runtime_of(request, KubernetesRuntime)
        try:
            cluster = self._connect(context=rt.context, namespace=rt.namespace)
        except GpujobError:
            return None
        return prices.published(cluster)

    def submit(self, request: JobRequest, secrets: Mapping[str, str]) -> dict:
        from gpujob.spec.runtime import KubernetesRuntime

        rt = runtime_of(request, KubernetesRuntime)
        cluster = self._connect(context=rt.context, namespace=rt.namespace)
        request = staging.stage(cluster, request, self._say, self._transfer)
        objects = manifests.render(request)
        for obj in objects:
            obj["metadata"]["namespace"] = cluster.namespace
        problems = _validate(objects)
        if problems:
            raise UserError("the manifests for this job are not valid, so nothing was created:\n"
                            + "\n".join(f"  - {p}" for p in problems),
                            hint="see them with `gpujob render SPEC --backend kubernetes`")
        created: list[dict[str, Any]] = []
        try:
            for obj in sorted(objects, key=lambda o: _CREATE_ORDER[o["kind"]]):
                created.append(cluster.create(obj))
                created[-1].setdefault("kind", obj["kind"])
            job = created[-1]
            for obj in created[:-1]:
                cluster.patch_owner(obj["kind"], obj["metadata"]["name"], job)
        except BaseException:
            for obj in reversed(created):
                try:
                    cluster.delete(obj["kind"], obj["metadata"]["name"], propagation="Background")
                except GpujobError:
                    pass
            raise
        t = cluster.target
        return KubernetesHandle(namespace=t.namespace, job=job["metadata"]["name"], uid=job["metadata"].get("uid"),
                                context=t.context, server=t.server, nodes=request.spec.resources.nodes,
                                objects=[(o["kind"], o["metadata"]["name"]) for o in created]).dump()

    def pull(self, job: "Job", dest, only: str, progress=None):
        """The job's outputs off the cache PVC through a transfer pod (:mod:`.pull`)."""
        return pvc_pull.pull(self._cluster(job), job, dest, only, progress, self._say)

    # ------------------------------------------------------------------ status

    def status(self, job: "Job") -> Observed | None:
        name = KubernetesHandle.of(job).job
        if not name:
            return None
        cluster = self._cluster(job)
        kjob = cluster.job(name)
        pods = self._pods(cluster, job)
        lead = self._lead_pods(pods, 0)
        current = lead[-1] if lead else None
        # One read of the current pod's log serves both progress and, if it failed, the error line.
        lead_tail = self._tail(cluster, current, PROGRESS_TAIL_LINES)
        blamed = explain.blamed(kjob, pods)
        if blamed is None:
            error_tail = None
        elif blamed is current and lead_tail is not None:
            error_tail = lead_tail[-ERROR_TAIL_LINES:]
        else:
            error_tail = self._tail(cluster, blamed, ERROR_TAIL_LINES)
        seen = explain.observe(kjob, pods, log_tail=error_tail, name=name, namespace=cluster.namespace)
        if lead_tail:
            seen.progress, seen.points = read_tail(job, lead_tail)
        if seen.status == "failed" and (seen.reason or "").startswith(explain.DEADLINE_WORDS):  # or the budget's
            seen.reason = budget_stop(job, seen) or seen.reason
        seen.started_at = _started_at(lead)
        if seen.status in TERMINAL:
            self._save_log(cluster, job, pods)
        return seen

    # ------------------------------------------------------------------ logs

    def logs(self, job: "Job", *, follow: bool = False, tail: int | None = None,
             all_workers: bool = False) -> Iterator[str]:
        handle = KubernetesHandle.of(job)
        if not handle.job:
            return
        cluster = self._cluster(job)
        indices = list(range(max(1, handle.nodes))) if all_workers else [0]
        if len(indices) == 1:
            yield from self._worker_lines(cluster, job, indices[0], follow=follow, tail=tail, prefix="")
            return
        yield from _merge([
            (lambda i=i: self._worker_lines(cluster, job, i, follow=follow, tail=tail, prefix=f"[{i}] "))
            for i in indices])

    def _worker_lines(self, cluster: "Cluster", job: "Job", index: int, *, follow: bool,
                      tail: int | None, prefix: str) -> Iterator[str]:
        from gpujob.backends.kubernetes.cluster import ClusterError, WatchExpired

        name = KubernetesHandle.of(job).job
        followed: set[str] = set()
        first, last_notice = True, None
        while True:
            try:
                kjob = cluster.job(name)
                all_pods, rv = cluster.pods(self._selector(job))
                pods = self._lead_pods(all_pods, index)
            except ClusterError as exc:  # the API server went away for a moment (an upgrade, the VPN)
                if not follow:
                    raise
                if str(exc) != last_notice:
                    yield Notice(f"{exc}; retrying")
                    last_notice = str(exc)
                time.sleep(2.0)
                continue
            started = [p for p in pods if _started(p) and p["metadata"]["name"] not in followed]
            if first and follow and len(started) > 1:  # joining late: the current attempt, not the old ones
                followed.update(p["metadata"]["name"] for p in started[:-1])
                earlier = explain.last_failed(started[:-1])
                if earlier is not None:
                    words, _ = explain.pod_words(earlier, self._tail(cluster, earlier, ERROR_TAIL_LINES))
                    yield Notice(f"attempt {len(started) - 1} failed: {words}")
                started = started[-1:]
            first = False
            if started:
                pod = started[0]
                attempt = pods.index(pod) + 1
                if attempt > 1 and follow:
                    yield Notice(f"attempt {attempt}: following pod {pod['metadata']['name']}")
                for line in self._pod_lines(cluster, pod, follow=follow, tail=tail):
                    yield prefix + line
                followed.add(pod["metadata"]["name"])
                tail = None
                if not follow:
                    return
                continue
            seen = explain.observe(kjob, pods, name=name, namespace=cluster.namespace)
            if seen.status in TERMINAL or kjob is None:
                if not pods and index == 0 and job.job_dir.joinpath(LOG_NAME).exists():
                    yield from (prefix + ln for ln in read_saved_log(job.job_dir / LOG_NAME, tail))
                return
            if not follow:
                return
            if seen.reason and seen.reason != last_notice:
                yield Notice(f"{seen.status}: {seen.reason}")
                last_notice = seen.reason
            # A pod that just ended: its Job's condition follows within moments, so look again soon.
            wait_s = 2 if pods and explain.pod_ended(pods[-1]) else self.watch_timeout_s
            try:
                for _ in cluster.watch_pods(self._selector(job), rv, wait_s):
                    break  # something changed: look again
            except WatchExpired:
                continue  # 410 Gone: list again and watch from the new version
            except GpujobError:
                time.sleep(1.0)

    def _pod_lines(self, cluster: "Cluster", pod: dict, *, follow: bool, tail: int | None) -> Iterator[str]:
        import urllib3

        from gpujob.backends.kubernetes.cluster import ClusterError

        pod_name = pod["metadata"]["name"]
        api_exc = cluster._ApiException

        def open_stream(since: str | None, tail_lines: int | None, follow_now: bool):
            try:
                resp = cluster.open_log(pod_name, explain.CONTAINER, follow=follow_now, since_time=since,
                                        tail=tail_lines)
            except api_exc as exc:
                body = str(exc.body or "")
                if exc.status == 404:
                    raise SourceGone() from None
                if exc.status == 400 and ("waiting to start" in body or "ContainerCreating" in body
                                          or "PodInitializing" in body):
                    raise LogNotReady() from None
                if exc.status >= 500 or exc.status == 429:
                    raise ConnectionError(f"HTTP {exc.status}") from None
                raise cluster.explain(exc, f"reading the log of pod {pod_name}") from None
            try:
                yield from resp.stream(1 << 16, decode_content=True)
            finally:
                resp.release_conn()

        def pod_state() -> str:
            try:
                current = cluster.call(cluster.core.read_namespaced_pod, pod_name, cluster.namespace,
                                       missing_ok=True, what=f"reading pod {pod_name}")
            except ClusterError:
                return "running"  # unreachable for now: keep trying
            if current is None:
                return "gone"
            if explain.pod_ended(current):
                return "ended"
            return "running" if explain.container_state(current).get("running") else "waiting"

        follower = Follower(open_stream, pod_state, tail=tail, follow=follow,
                            transient=(urllib3.exceptions.HTTPError, OSError))
        return follower.lines()

    # ------------------------------------------------------------------ cancel / list / cleanup

    def cancel(self, job: "Job", *, grace_s: float = 10.0) -> None:
        handle = KubernetesHandle.of(job)
        if not handle.job:
            return
        cluster = self._cluster(job)
        pods = self._pods(cluster, job)
        self._save_log(cluster, job, pods)
        cluster.delete("Job", handle.job, propagation="Foreground")
        for pod in pods:
            if not explain.pod_ended(pod):
                try:
                    cluster.delete("Pod", pod["metadata"]["name"], grace_s=int(grace_s))
                except UserError:
                    pass  # not allowed to delete pods: foreground deletion still removes them
        deadline = time.monotonic() + grace_s + 15
        while time.monotonic() < deadline and [p for p in self._pods(cluster, job) if not explain.pod_ended(p)]:
            time.sleep(self.poll_s)
        for kind, obj_name in handle.objects:
            if kind != "Job":
                cluster.delete(kind, obj_name)

    def list(self) -> list[str]:
        cluster = self._connect()
        jobs = cluster.jobs({"app.kubernetes.io/managed-by": "gpujob"})
        return sorted({j["metadata"]["labels"]["gpujob.dev/id"] for j in jobs
                       if "gpujob.dev/id" in j["metadata"].get("labels", {})})

    def cleanup(self, job: "Job") -> None:
        handle = KubernetesHandle.of(job)
        if not handle.job:
            return
        cluster = self._cluster(job)
        self._save_log(cluster, job, self._pods(cluster, job))
        for kind, obj_name in reversed(handle.objects):
            cluster.delete(kind, obj_name, propagation="Foreground" if kind == "Job" else None)

    # ------------------------------------------------------------------ helpers

    def _connect(self, *, context: str | None = None, namespace: str | None = None) -> "Cluster":
        from gpujob.backends.kubernetes.cluster import Cluster

        return Cluster(context=context, namespace=namespace)

    def _cluster(self, job: "Job") -> "Cluster":
        handle = KubernetesHandle.of(job)
        return self._connect(context=handle.context, namespace=handle.namespace)

    @staticmethod
    def _selector(job: "Job") -> dict[str, str]:
        return {"gpujob.dev/id": job.id}

    def _pods(self, cluster: "Cluster", job: "Job") -> list[dict]:
        return cluster.pods(self._selector(job))[0]

    @staticmethod
    def _lead_pods(pods: list[dict], index: int) -> list[dict]:
        """The pods (attempts, oldest first) of one worker index."""
        return [p for p in pods if _index(p) == index]

    def _tail(self, cluster: "Cluster", pod: dict | None, lines: int) -> list[str] | None:
        if pod is None or not _started(pod):
            return None
        try:
            resp = cluster.open_log(pod["metadata"]["name"], explain.CONTAINER, follow=False, tail=lines)
            data = resp.read()
            resp.release_conn()
        except Exception:  # the log is a bonus for the reason; never fail a status call over it
            return None
        return [parse_ts(ln)[1] for ln in data.decode("utf-8", "replace").splitlines()]

    def _save_log(self, cluster: "Cluster", job: "Job", pods: list[dict]) -> None:
        """Keep worker 0's log (all attempts) in the registry before Kubernetes deletes the pods."""
        lead = [p for p in self._lead_pods(pods, 0) if _started(p)]
        if not lead:
            return
        lines: list[str] = []
        for n, pod in enumerate(lead, 1):
            if len(lead) > 1:
                lines.append(f"----- attempt {n}: pod {pod['metadata']['name']} -----")
            try:
                lines.extend(self._pod_lines(cluster, pod, follow=False, tail=None))
            except Exception:
                continue
        if not lines:
            return
        path = job.job_dir / LOG_NAME
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
        tmp.chmod(0o600)
        tmp.replace(path)


def _validate(objects: list[dict[str, Any]]) -> list[str]:
    try:
        return manifests.validate(objects)
    except ImportError:
        raise UserError("validating Kubernetes manifests needs kubernetes-validate",
                        hint="pip install 'gpujob[kubernetes]'") from None


def _index(pod: dict) -> int:
    meta = pod.get("metadata") or {}
    raw = (meta.get("labels") or {}).get(INDEX_KEY) or (meta.get("annotations") or {}).get(INDEX_KEY)
    try:
        return int(raw) if raw is not None else 0
    except ValueError:
        return 0


def _started(pod: dict) -> bool:
    state = explain.container_state(pod)
    return "running" in state or "terminated" in state


def _started_at(pods: list[dict]) -> float | None:
    """When the first attempt's container started (epoch seconds)."""
    from datetime import datetime

    for pod in pods:
        state = explain.container_state(pod)
        stamp = (state.get("running") or state.get("terminated") or {}).get("startedAt") \
            or (pod.get("status") or {}).get("startTime")
        if stamp:
            try:
                return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
            except ValueError:
                return None
    return None



def _merge(sources) -> Iterator[str]:
    """Lines of several generators, as they come (one thread each)."""
    q: queue.Queue = queue.Queue()
    done = object()

    def pump(make) -> None:
        try:
            for line in make():
                q.put(line)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer
            q.put(exc)
        finally:
            q.put(done)

    for make in sources:
        threading.Thread(target=pump, args=(make,), daemon=True).start()
    remaining = len(sources)
    while remaining:
        item = q.get()
        if item is done:
            remaining -= 1
        elif isinstance(item, BaseException):
            raise item
        else:
            yield item
