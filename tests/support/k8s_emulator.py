"""A Kubernetes API on loopback for the backend's tests: kmock's KubernetesEmulator (objects,
lists, watches, over real HTTP) plus what a cluster adds on top, run on this side of the API:

- a **Job controller**: pods per Job (Indexed too), ``suspend``, ``backoffLimit``,
  ``podFailurePolicy`` (FailJob on exit codes, Ignore on DisruptionTarget), ``activeDeadlineSeconds``,
  the Complete/Failed/Suspended conditions and their documented reasons;
- a **scheduler**: one node with ``gpus`` GPUs and ``node_labels``; pods that do not fit stay
  Pending with an ``Unschedulable`` condition and the scheduler's message;
- a **kubelet**: pulls only ``images``, resolves ``secretKeyRef``/``fieldRef``, expands ``$(VAR)`` as
  Kubernetes does (in an env value, only variables defined earlier in the list; in command and args,
  any of the container's; ``$$`` is a literal ``$``; an unknown ``$(VAR)`` stays as written), mounts
  the ConfigMap, the PVC and ``/dev/shm`` as folders, and *runs the container's command as a real
  process* whose output becomes the pod log (timestamped); memory over ``limits.memory`` is
  OOMKilled; deletion sends SIGTERM, then SIGKILL after the grace period;
- the **cluster DNS** for pods under a headless Service, on loopback: a pod with ``hostname`` H and
  ``subdomain`` S, selected by the headless Service S of its namespace N, is ``H.S``, ``H.S.N.svc``
  and ``H.S.N.svc.cluster.local``. Every pod of the emulator runs on this machine, so such a name
  stands for the pod's own loopback address, ``127.1.<completion index>.<n>`` (all of 127/8 is this
  machine; a replaced pod gets a new one): the kubelet writes it in the name's place in the command,
  the args and the env values before it starts the process (no resolver is involved). Ports are this
  machine's, so two pods cannot listen on one port at once;
- the **garbage collector**: ``propagationPolicy`` Foreground (finalizer, pods first), Background and
  Orphan, and ownerReferences on the ConfigMap and Service;
- **pods/log** (the emulator serves none): ``follow``, ``timestamps``, ``sinceTime``, ``tailLines``,
  400 while the container waits, with switches to drop streams (cleanly or mid-line);
- watches that honour ``timeoutSeconds`` and can be made to expire with 410 Gone;
- **pods/exec** over a WebSocket (kmock serves none), as the API server proxies it to the kubelet:
  the ``v5.channel.k8s.io`` subprotocol (``v4`` too) the official clients ask for, one byte of
  channel before each frame (0 stdin, 1 stdout, 2 stderr, 3 the final ``Status``: ``Success``, or
  ``Failure`` with reason ``NonZeroExitCode`` and the exit code as its cause), v5's close frame
  (255, 0) for the end of stdin; 404 for a pod that is not there, 400 for one whose container is
  not running. The command runs as a real process beside the pod's, with the pod's mounts applied
  to any argument that is a path under one (as for the container's command: ``tar -x -C /cache/d``
  writes into the PVC's folder); a client that goes away closes its stdin;
- the **PVC**'s data: a folder per claim (``tmp/pvc/<claim>``), shared by every pod that mounts it,
  so what an uploader pod writes there the job's pod reads. As the pod's process runs on this
  machine, a JSON string in a mounted ConfigMap file (the job's spec) that is a path under a PVC
  mount is written as that folder, as the command's arguments are.

kmock itself ignores label selectors; the backend filters on its side, which these tests exercise.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import re
import shutil
import signal
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import kmock
from kmock._internal import enums

import polling

PODS = kmock.resource("", "v1", "pods")
JOBS = kmock.resource("batch", "v1", "jobs")
CONFIGMAPS = kmock.resource("", "v1", "configmaps")
SERVICES = kmock.resource("", "v1", "services")
SECRETS = kmock.resource("", "v1", "secrets")
NAMESPACE = "gpujob"
TICK_S = 0.05
EXEC_PATH = re.compile(r"^/api/v1/namespaces/(?P<ns>[^/]+)/pods/(?P<pod>[^/]+)/exec$")


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def ts_ns(ns: int) -> str:
    seconds, frac = divmod(ns, 1_000_000_000)
    base = dt.datetime.fromtimestamp(seconds, tz=dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def parse_time(s: str) -> int:
    m = re.match(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z$", s)
    base = dt.datetime.fromisoformat(m.group(1) + "+00:00")
    return int(base.timestamp()) * 1_000_000_000 + int((m.group(2) or "0").ljust(9, "0")[:9])


def _quantity(q: Any) -> float:
    s = str(q)
    units = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 1e3, "M": 1e6, "G": 1e9, "m": 1e-3}
    for suffix, mult in units.items():
        if s.endswith(suffix):
            return float(s[: -len(suffix)]) * mult
    return float(s)


class PodRuntime:
    """What the kubelet holds for one pod: its process and its log."""

    def __init__(self) -> None:
        self.lines: list[tuple[int, bytes]] = []   # (timestamp ns, line without newline)
        self.proc: asyncio.subprocess.Process | None = None
        self.started = False
        self.ended = False
        self.changed = asyncio.Event()
        self.oom = False
        self.kill_at: float | None = None
        self.term_sent = False
        self.mounts: dict[str, Path] = {}          # mountPath -> the folder standing for the volume
        self.workdir: Path | None = None

    def host(self, value: str) -> str:
        """A path in the container as the folder that stands for it here (the longest mount first)."""
        for mount_path, target in sorted(self.mounts.items(), key=lambda kv: -len(kv[0])):
            if value == mount_path or value.startswith(mount_path + "/"):
                return str(target) + value[len(mount_path):]
        return value


class Emulator(kmock.KubernetesEmulator):
    """kmock's emulator with the API server behaviour the backend relies on."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        self.cluster: "FakeCluster | None" = None
        self.rv = 0
        self.deletions: dict[tuple[str, str, str], str] = {}
        self.expire_watches = 0
        self.reject_creates: dict[str, tuple[int, str]] = {}  # plural -> (HTTP status, message): admission says no
        self[enums.method.GET, kmock.subresource("log")] << self._serve_log

    async def __call__(self, raw_request):  # noqa: ANN001 - aiohttp's request
        m = EXEC_PATH.match(raw_request.path)
        if m and raw_request.headers.get("Upgrade", "").lower() == "websocket" and self.cluster is not None:
            return await self.cluster.serve_exec(raw_request, m["ns"], m["pod"])
        return await super().__call__(raw_request)

    def bump(self) -> str:
        self.rv += 1
        return str(self.rv)

    async def _handle(self, request):  # noqa: ANN001 - kmock's signature
        if request.action == enums.action.CREATE and request.resource is not None \
                and request.resource.plural in self.reject_creates:
            status, message = self.reject_creates[request.resource.plural]
            raise kmock.KubernetesError(status=status, reason="Forbidden" if status == 403 else "Invalid",
                                        message=message, details={})
        if request.resource is not None and isinstance(request.data, dict):
            meta = request.data.setdefault("metadata", {}) if request.action in (
                enums.action.CREATE, enums.action.UPDATE) else None
            if request.action == enums.action.CREATE:
                meta.setdefault("uid", str(uuid.uuid4()))
                meta.setdefault("creationTimestamp", now_iso())
                meta.setdefault("namespace", request.namespace)
                meta["generation"] = 1
                if request.resource.plural == "pods":   # what the API server sets on a new pod
                    request.data.setdefault("status", {"phase": "Pending", "conditions": []})
            if meta is not None:
                meta["resourceVersion"] = self.bump()
        if request.action == enums.action.DELETE and request.name is not None and request.resource is not None:
            key = (request.resource, request.namespace, request.name)
            params = dict(request.params)
            body = request.data if isinstance(request.data, dict) else {}
            policy = params.get("propagationPolicy") or body.get("propagationPolicy") or ""
            grace = params.get("gracePeriodSeconds") or body.get("gracePeriodSeconds")
            self.deletions[(request.resource.plural, request.namespace, request.name)] = policy
            async with self._lock:
                obj = self._objects[key] if key in self._objects else None
                if obj is not None and not obj.deleted and not obj.get("metadata", {}).get("deletionTimestamp"):
                    finalizers = list(obj.get("metadata", {}).get("finalizers") or [])
                    if request.resource == JOBS and policy == "Foreground":
                        finalizers.append("foregroundDeletion")
                    if request.resource == PODS:
                        finalizers.append("emulator/kubelet")  # the kubelet stops it, then it goes
                        if grace is not None:
                            obj.patch({"metadata": {"deletionGracePeriodSeconds": int(grace)}})
                    if finalizers:
                        obj.patch({"metadata": {"finalizers": finalizers}})
        return await super()._handle(request)

    async def _serve_watch(self, request):  # noqa: ANN001
        if self.expire_watches > 0:
            self.expire_watches -= 1
            yield b""
            yield {"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                "message": "too old resource version: 1 (99)", "reason": "Expired", "code": 410}}
            return
        timeout = float(request.params.get("timeoutSeconds") or 3600)
        deadline = asyncio.get_running_loop().time() + timeout
        agen = super()._serve_watch(request)
        try:
            while True:
                remaining = deadline - asyncio.get_running_loop().time()
                if remaining <= 0:
                    return
                try:
                    item = await asyncio.wait_for(anext(agen), remaining)
                except (TimeoutError, asyncio.TimeoutError, StopAsyncIteration):
                    return
                yield item
        finally:
            try:
                await agen.aclose()
            except (RuntimeError, ValueError):
                pass

    # ---------------------------------------------------------------- pods/log

    def _serve_log(self, request):  # noqa: ANN001
        key = (PODS, request.namespace, request.name)
        obj = self._objects[key] if key in self._objects else None
        if obj is None or obj.deleted:
            return kmock.KubernetesObjectNotFoundError(message=f'pods "{request.name}" not found')
        runtime = self.cluster.runtimes.get(request.name) if self.cluster else None
        if runtime is None or not runtime.started:
            return kmock.KubernetesError(status=400, reason="BadRequest", message=(
                f'container "job" in pod "{request.name}" is waiting to start: ContainerCreating'))
        params = request.params
        stamps = params.get("timestamps") == "true"
        since = parse_time(params["sinceTime"]) if params.get("sinceTime") else None
        tail = int(params["tailLines"]) if params.get("tailLines") else None

        def select() -> list[tuple[int, bytes]]:
            chosen = [(t, ln) for t, ln in runtime.lines if since is None or t >= since]
            return chosen[-tail:] if tail is not None else chosen

        def render(t: int, ln: bytes) -> bytes:
            return (ts_ns(t).encode() + b" " + ln + b"\n") if stamps else ln + b"\n"

        if params.get("follow") != "true":
            return b"".join(render(t, ln) for t, ln in select()) or b""

        cluster = self.cluster

        async def stream():
            yield b""
            sent = 0
            pending = select()
            position = len(runtime.lines)
            while True:
                for t, ln in pending:
                    chunk = render(t, ln)
                    if cluster.drops_left > 0 and cluster.drop_streams_after is not None \
                            and sent >= cluster.drop_streams_after:
                        cluster.drops_left -= 1
                        cluster.drops += 1
                        if cluster.drop_mid_line:
                            yield chunk[: max(1, len(chunk) // 2)]
                        return
                    yield chunk
                    sent += 1
                pending = []
                if position < len(runtime.lines):
                    pending = runtime.lines[position:]
                    position += len(pending)
                    continue
                if runtime.ended:
                    return
                runtime.changed.clear()
                try:
                    await asyncio.wait_for(runtime.changed.wait(), 0.5)
                except (TimeoutError, asyncio.TimeoutError):
                    pass

        return stream()


class FakeCluster:
    """The emulator on loopback in its own thread, plus the controllers. Use as a context manager."""

    def __init__(self, tmp: Path, *, gpus: int = 1, node_labels: dict[str, str] | None = None,
                 images: set[str] | None = None, namespace: str = NAMESPACE) -> None:
        self.tmp = tmp
        self.gpus = gpus
        self.node_labels = {"kubernetes.io/hostname": "gpu-node-1", **(node_labels or {})}
        self.images = images  # None: every image pulls
        self.namespace = namespace
        self.runtimes: dict[str, PodRuntime] = {}
        self.drop_streams_after: int | None = None   # end a log stream after N lines ...
        self.drops_left = 0                            # ... this many times
        self.drop_mid_line = False                     # cut the stream inside a line
        self.drops = 0
        self.loop: asyncio.AbstractEventLoop | None = None
        self.emulator: Emulator | None = None
        self.url = ""
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._pod_seq: dict[str, int] = {}
        self.errors: list[BaseException] = []

    # ---------------------------------------------------------------- lifecycle

    def __enter__(self) -> "FakeCluster":
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(30):
            raise RuntimeError("the Kubernetes emulator did not start")
        self.kubeconfig = self.tmp / "kubeconfig"
        self.kubeconfig.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "emulator",
            "clusters": [{"name": "emulator", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "emulator-token"}}],
            "contexts": [{"name": "emulator", "context": {"cluster": "emulator", "user": "tester",
                                                          "namespace": self.namespace}}],
        }))
        return self

    def __exit__(self, *exc) -> None:
        if self.loop and self._stop:
            self.loop.call_soon_threadsafe(self._stop.set)
        if self._thread:
            self._thread.join(30)

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        self.emulator = Emulator()
        self.emulator.cluster = self
        self.emulator.fallback << 404
        async with self.emulator, kmock.Server(self.emulator) as server:
            self.url = str(server.url).rstrip("/")
            for res in (PODS, JOBS, CONFIGMAPS, SERVICES, SECRETS):
                self.emulator.resources[res] = {}
            controller = asyncio.create_task(self._control())
            self._ready.set()
            await self._stop.wait()
            controller.cancel()
            for rt in self.runtimes.values():
                if rt.proc and rt.proc.returncode is None:
                    try:
                        os.killpg(rt.proc.pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass

    # ---------------------------------------------------------------- test-side helpers (any thread)

    def run(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def objects(self, res, *, include_deleted: bool = False) -> list[dict]:
        async def get():
            async with self.emulator._lock:
                return [json.loads(json.dumps(o.raw)) for (r, _, _), o in list(self.emulator.objects.items())
                        if r == res and not o.deleted]
        return self.run(get())

    def get(self, res, name: str) -> dict | None:
        return next((o for o in self.objects(res) if o["metadata"]["name"] == name), None)

    def put(self, obj: dict) -> None:
        """Create an object directly (a Secret the admin made, say)."""
        res = {"Secret": SECRETS, "ConfigMap": CONFIGMAPS, "Job": JOBS, "Pod": PODS}[obj["kind"]]
        obj.setdefault("metadata", {}).setdefault("namespace", self.namespace)
        self.run(self._create(res, obj))

    def patch(self, res, name: str, patch: dict) -> None:
        self.run(self._patch(res, name, patch))

    def pod_logs(self, name: str) -> list[str]:
        rt = self.runtimes.get(name)
        return [ln.decode() for _, ln in rt.lines] if rt else []

    def wait_for(self, predicate, timeout: float = 30, what: str = "condition"):
        return polling.wait_for(predicate, timeout, what=what)

    # ---------------------------------------------------------------- object store (loop thread)

    async def _create(self, res, obj: dict) -> dict:
        em = self.emulator
        meta = obj.setdefault("metadata", {})
        meta.setdefault("uid", str(uuid.uuid4()))
        meta.setdefault("creationTimestamp", now_iso())
        meta["resourceVersion"] = em.bump()
        key = (res, meta.get("namespace"), meta["name"])
        async with em._lock:
            if key in em._objects and em._objects[key].deleted:
                em._objects[key].create(obj)
            else:
                em._objects[key] = obj
            raw = em._objects[key].raw
            await em._buses[res].put({"type": "ADDED", "object": raw})
        return raw

    async def _patch(self, res, name: str, patch: dict, namespace: str | None = None) -> None:
        em = self.emulator
        key = (res, namespace or self.namespace, name)
        async with em._lock:
            if key not in em._objects or em._objects[key].deleted:
                return
            obj = em._objects[key]
            obj.patch(patch)
            obj.patch({"metadata": {"resourceVersion": em.bump()}})
            meta = obj.raw.get("metadata", {})
            if meta.get("deletionTimestamp") and not meta.get("finalizers"):
                raw = obj.raw
                obj.delete()
                await em._buses[res].put({"type": "DELETED", "object": raw})
            else:
                await em._buses[res].put({"type": "MODIFIED", "object": obj.raw})

    async def _remove(self, res, name: str, namespace: str | None = None) -> None:
        em = self.emulator
        key = (res, namespace or self.namespace, name)
        async with em._lock:
            if key in em._objects and not em._objects[key].deleted:
                raw = em._objects[key].raw
                em._objects[key].delete()
                await em._buses[res].put({"type": "DELETED", "object": raw})

    def _live(self, res) -> list[dict]:
        return [o.raw for (r, _, _), o in list(self.emulator._objects.items()) if r == res and not o.deleted]

    # ---------------------------------------------------------------- controllers

    async def _control(self) -> None:
        while True:
            try:
                await self._gc()
                for job in self._live(JOBS):
                    await self._reconcile_job(job)
                for pod in self._live(PODS):
                    await self._kubelet(pod)
            except asyncio.CancelledError:
                raise
            except BaseException as exc:  # noqa: BLE001 - shown by the tests that check .errors
                self.errors.append(exc)
                import traceback
                traceback.print_exc()
            await asyncio.sleep(TICK_S)

    async def _gc(self) -> None:
        live_jobs = {j["metadata"]["uid"]: j for j in self._live(JOBS)}
        for res in (PODS, CONFIGMAPS, SERVICES):
            for obj in self._live(res):
                owners = obj["metadata"].get("ownerReferences") or []
                job_owner = next((o for o in owners if o.get("kind") == "Job"), None)
                if job_owner is None or job_owner["uid"] in live_jobs:
                    continue
                policy = self.emulator.deletions.get(("jobs", obj["metadata"]["namespace"], job_owner["name"]), "")
                if policy in ("", "Orphan"):
                    await self._patch(res, obj["metadata"]["name"], {"metadata": {"ownerReferences": None}})
                elif res == PODS:
                    await self._delete_pod(obj)
                else:
                    await self._remove(res, obj["metadata"]["name"])
        for job in live_jobs.values():  # foreground deletion: dependents first, then the Job
            meta = job["metadata"]
            if meta.get("deletionTimestamp") and "foregroundDeletion" in (meta.get("finalizers") or []):
                pods = self._job_pods(job)
                for pod in pods:
                    await self._delete_pod(pod)
                if not pods:
                    for res in (CONFIGMAPS, SERVICES):
                        for obj in self._live(res):
                            if any(o.get("uid") == meta["uid"] for o in obj["metadata"].get("ownerReferences") or []):
                                await self._remove(res, obj["metadata"]["name"])
                    rest = [f for f in meta.get("finalizers") if f != "foregroundDeletion"]
                    await self._patch(JOBS, meta["name"], {"metadata": {"finalizers": rest}})

    async def _delete_pod(self, pod: dict) -> None:
        meta = pod["metadata"]
        if meta.get("deletionTimestamp"):
            return
        fins = list(meta.get("finalizers") or []) + ["emulator/kubelet"]
        await self._patch(PODS, meta["name"], {"metadata": {"deletionTimestamp": now_iso(), "finalizers": fins}})

    def _job_pods(self, job: dict) -> list[dict]:
        uid = job["metadata"]["uid"]
        pods = [p for p in self._live(PODS)
                if any(o.get("uid") == uid for o in p["metadata"].get("ownerReferences") or [])]
        return sorted(pods, key=lambda p: self._pod_seq.get(p["metadata"]["name"], 0))

    async def _reconcile_job(self, job: dict) -> None:
        meta, spec, status = job["metadata"], job["spec"], dict(job.get("status") or {})
        if meta.get("deletionTimestamp"):
            return
        conds = {c["type"]: c for c in status.get("conditions") or []}
        if any(conds.get(t, {}).get("status") == "True" for t in ("Complete", "Failed")):
            return
        pods = self._job_pods(job)
        active = [p for p in pods if p["status"].get("phase") in ("Pending", "Running")
                  and not p["metadata"].get("deletionTimestamp")]
        if spec.get("suspend"):
            for p in active:
                await self._delete_pod(p)
            if conds.get("Suspended", {}).get("status") != "True":
                await self._set_status(job, status, "Suspended", "True", "JobSuspended", "Job suspended")
            return
        if conds.get("Suspended", {}).get("status") == "True":
            await self._set_status(job, status, "Suspended", "False", "JobResumed", "Job resumed")
            return
        if not status.get("startTime"):
            status["startTime"] = now_iso()
            await self._patch(JOBS, meta["name"], {"status": {"startTime": status["startTime"]}})
        deadline = spec.get("activeDeadlineSeconds")
        if deadline and time.time() - parse_time(status["startTime"]) / 1e9 > deadline:
            for p in active:
                await self._delete_pod(p)
            await self._finish(job, status, "Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            return
        indexed = spec.get("completionMode") == "Indexed"
        completions = spec.get("completions") or 1
        failed = 0
        for pod in pods:
            if pod["status"].get("phase") != "Failed":
                continue
            verdict = self._failure_policy(spec, pod)
            if verdict == "FailJob":
                for p in active:
                    await self._delete_pod(p)
                term = _terminated(pod) or {}
                await self._finish(job, status, "Failed", "PodFailurePolicy", (
                    f"Container job for pod {meta['namespace']}/{pod['metadata']['name']} failed with exit code "
                    f"{term.get('exitCode')} matching FailJob rule at index 0"))
                return
        failed = sum(1 for p in pods if p["status"].get("phase") == "Failed"
                     and self._failure_policy(spec, p) == "Count")
        if failed > spec.get("backoffLimit", 6):
            for p in active:
                await self._delete_pod(p)
            status["failed"] = failed
            await self._finish(job, status, "Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
            return
        done = {_index(p) for p in pods if p["status"].get("phase") == "Succeeded"}
        if len(done) >= completions:
            status["succeeded"] = len(done)
            await self._finish(job, status, "Complete", "CompletionsReached", "Reached expected number of succeeded pods")
            return
        running_idx = {_index(p) for p in active}
        for index in range(completions):
            if index in done or index in running_idx:
                continue
            await self._create_pod(job, index if indexed else None)
        new = {"active": len(active), "failed": failed or None, "ready": sum(
            1 for p in active if p["status"].get("phase") == "Running")}
        if any(status.get(k) != v for k, v in new.items()):
            await self._patch(JOBS, meta["name"], {"status": new})

    def _failure_policy(self, spec: dict, pod: dict) -> str:
        term = _terminated(pod) or {}
        for rule in (spec.get("podFailurePolicy") or {}).get("rules") or []:
            codes = rule.get("onExitCodes")
            if codes and term.get("exitCode") is not None:
                hit = term["exitCode"] in codes["values"]
                if (hit if codes.get("operator", "In") == "In" else not hit):
                    return rule["action"]
            for pc in rule.get("onPodConditions") or []:
                if any(c.get("type") == pc["type"] and c.get("status") == pc.get("status", "True")
                       for c in pod["status"].get("conditions") or []):
                    return rule["action"]
        return "Count"

    async def _set_status(self, job: dict, status: dict, kind: str, value: str, reason: str, message: str) -> None:
        conds = [c for c in status.get("conditions") or [] if c["type"] != kind]
        conds.append({"type": kind, "status": value, "reason": reason, "message": message,
                      "lastTransitionTime": now_iso(), "lastProbeTime": now_iso()})
        await self._patch(JOBS, job["metadata"]["name"], {"status": {"conditions": conds}})

    async def _finish(self, job: dict, status: dict, kind: str, reason: str, message: str) -> None:
        conds = [c for c in status.get("conditions") or [] if c["type"] not in (kind,)]
        extra = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
        for t in (extra, kind):
            conds.append({"type": t, "status": "True", "reason": reason, "message": message,
                          "lastTransitionTime": now_iso(), "lastProbeTime": now_iso()})
        patch = {"conditions": conds, "active": 0}
        if kind == "Complete":
            patch["completionTime"] = now_iso()
            patch["succeeded"] = status.get("succeeded")
        if status.get("failed"):
            patch["failed"] = status["failed"]
        await self._patch(JOBS, job["metadata"]["name"], {"status": patch})

    async def _create_pod(self, job: dict, index: int | None) -> None:
        meta = job["metadata"]
        template = json.loads(json.dumps(job["spec"]["template"]))
        labels = {**(template.get("metadata") or {}).get("labels", {}),
                  "batch.kubernetes.io/controller-uid": meta["uid"], "controller-uid": meta["uid"],
                  "batch.kubernetes.io/job-name": meta["name"], "job-name": meta["name"]}
        annotations = {}
        name = f"{meta['name']}-{uuid.uuid4().hex[:5]}"
        if index is not None:
            labels["batch.kubernetes.io/job-completion-index"] = str(index)
            annotations["batch.kubernetes.io/job-completion-index"] = str(index)
            name = f"{meta['name']}-{index}-{uuid.uuid4().hex[:5]}"
        self._pod_seq[name] = len(self._pod_seq) + 1
        pod = {
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": meta["namespace"], "labels": labels,
                         "annotations": annotations,
                         "ownerReferences": [{"apiVersion": "batch/v1", "kind": "Job", "name": meta["name"],
                                              "uid": meta["uid"], "controller": True,
                                              "blockOwnerDeletion": True}]},
            "spec": {**template["spec"]},
            "status": {"phase": "Pending", "conditions": []},
        }
        if template["spec"].get("subdomain"):
            pod["spec"]["hostname"] = f"{meta['name']}-{index}"
        await self._create(PODS, pod)

    # ---------------------------------------------------------------- scheduler + kubelet

    def _gpus_in_use(self, exclude: str) -> int:
        used = 0
        for p in self._live(PODS):
            if p["metadata"]["name"] != exclude and p["spec"].get("nodeName") and \
                    p["status"].get("phase") in ("Pending", "Running"):
                used += _gpu_request(p)
        return used

    async def _kubelet(self, pod: dict) -> None:
        meta, spec, st = pod["metadata"], pod["spec"], pod["status"]
        name = meta["name"]
        rt = self.runtimes.setdefault(name, PodRuntime())
        if meta.get("deletionTimestamp"):
            await self._stop_pod(pod, rt)
            return
        if st.get("phase") in ("Succeeded", "Failed"):
            return
        if not spec.get("nodeName"):
            problem = self._unschedulable(pod)
            if problem:
                cond = {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": problem}
                if (st.get("conditions") or [None])[0] != cond:
                    await self._patch(PODS, name, {"status": {"conditions": [cond]}})
                return
            await self._patch(PODS, name, {"spec": {"nodeName": self.node_labels["kubernetes.io/hostname"]},
                                           "status": {"conditions": [{"type": "PodScheduled", "status": "True"}]}})
            return
        container = spec["containers"][0]
        if rt.proc is None and not rt.started:
            waiting = self._cannot_start(pod, container)
            if waiting:
                state = {"waiting": waiting}
                if _state(pod) != state:
                    await self._patch(PODS, name, {"status": {"containerStatuses": [
                        {"name": container["name"], "image": container["image"], "imageID": "", "ready": False,
                         "restartCount": 0, "state": state}]}})
                return
            await self._start(pod, container, rt)
            return
        if rt.proc is not None and rt.proc.returncode is None:
            limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
            if limit and _rss(rt.proc.pid) > _quantity(limit):
                rt.oom = True
                os.killpg(rt.proc.pid, signal.SIGKILL)

    def _dns_names(self, namespace: str) -> dict[str, str]:
        """The names the cluster's DNS gives pods under a headless Service, each mapped to 127.0.0.1."""
        services = {s["metadata"]["name"]: s for s in self._live(SERVICES)
                    if s["metadata"].get("namespace") == namespace and s["spec"].get("clusterIP") == "None"}
        names: dict[str, str] = {}
        for p in self._live(PODS):
            meta, spec = p["metadata"], p["spec"]
            svc = services.get(spec.get("subdomain") or "")
            if not spec.get("hostname") or svc is None or meta.get("namespace") != namespace:
                continue
            labels = meta.get("labels") or {}
            if any(labels.get(k) != v for k, v in (svc["spec"].get("selector") or {}).items()):
                continue
            base = f"{spec['hostname']}.{spec['subdomain']}"
            for name in (base, f"{base}.{namespace}.svc", f"{base}.{namespace}.svc.cluster.local"):
                names[name] = self._pod_ip(p)
        return names

    def _pod_ip(self, pod: dict) -> str:
        """A pod's own address, as every pod has one: 127.1.<completion index>.<n> on loopback (all of
        127/8 is this machine), so pods of a job are told apart and a replaced pod gets a new one."""
        name = pod["metadata"]["name"]
        return f"127.1.{_index(pod) % 256}.{1 + self._pod_seq.get(name, 0) % 254}"

    def _unschedulable(self, pod: dict) -> str | None:
        spec = pod["spec"]
        selector = spec.get("nodeSelector") or {}
        if any(self.node_labels.get(k) != v for k, v in selector.items()):
            return ("0/1 nodes are available: 1 node(s) didn't match Pod's node affinity/selector. preemption: "
                    "0/1 nodes are available: 1 Preemption is not helpful for scheduling.")
        want = _gpu_request(pod)
        if want and want > self.gpus - self._gpus_in_use(pod["metadata"]["name"]):
            return ("0/1 nodes are available: 1 Insufficient nvidia.com/gpu. preemption: 0/1 nodes are "
                    "available: 1 No preemption victims found for incoming pod.")
        return None

    def _cannot_start(self, pod: dict, container: dict) -> dict | None:
        image = container["image"]
        if self.images is not None and image not in self.images:
            return {"reason": "ImagePullBackOff", "message": f'Back-off pulling image "{image}"'}
        for env in container.get("env") or []:
            ref = (env.get("valueFrom") or {}).get("secretKeyRef")
            if ref:
                secret = next((s for s in self._live(SECRETS) if s["metadata"]["name"] == ref["name"]
                               and s["metadata"].get("namespace") == pod["metadata"]["namespace"]), None)
                if secret is None:
                    return {"reason": "CreateContainerConfigError", "message": f'secret "{ref["name"]}" not found'}
                if ref["key"] not in {**(secret.get("data") or {}), **(secret.get("stringData") or {})}:
                    return {"reason": "CreateContainerConfigError", "message": (
                        f"couldn't find key {ref['key']} in Secret {pod['metadata']['namespace']}/{ref['name']}")}
        for vol in pod["spec"].get("volumes") or []:
            cm = vol.get("configMap")
            if cm and not any(c["metadata"]["name"] == cm["name"] for c in self._live(CONFIGMAPS)):
                return {"reason": "ContainerCreating"}
        return None

    async def _start(self, pod: dict, container: dict, rt: PodRuntime) -> None:
        import base64

        name = pod["metadata"]["name"]
        root = self.tmp / "pods" / name
        mounts: dict[str, Path] = {}
        files: list[tuple[Path, dict]] = []
        volumes = {v["name"]: v for v in pod["spec"].get("volumes") or []}
        for m in container.get("volumeMounts") or []:
            vol = volumes[m["name"]]
            if "configMap" in vol:
                target = root / "configmap" / m["name"]
                target.mkdir(parents=True, exist_ok=True)
                cm = next(c for c in self._live(CONFIGMAPS) if c["metadata"]["name"] == vol["configMap"]["name"])
                files.append((target, cm.get("data") or {}))
            elif "persistentVolumeClaim" in vol:
                target = self.tmp / "pvc" / vol["persistentVolumeClaim"]["claimName"]
            else:
                target = root / "emptydir" / m["name"]
            target.mkdir(parents=True, exist_ok=True)
            mounts[m["mountPath"]] = target
        rt.mounts = mounts
        host = rt.host
        for target, data in files:   # a path under a PVC in a JSON string of the job's spec: its folder here
            for key, value in data.items():
                (target / key).write_text(_pvc_paths_in_json(value, rt, volumes, container) if key.endswith(".json")
                                          else value)

        names = self._dns_names(pod["metadata"]["namespace"])
        env: dict[str, str] = {}
        for e in container.get("env") or []:
            if "value" in e:
                env[e["name"]] = resolve(host(expand(e["value"], env)), names)
                continue
            src = e.get("valueFrom") or {}
            if "secretKeyRef" in src:
                ref = src["secretKeyRef"]
                secret = next(s for s in self._live(SECRETS) if s["metadata"]["name"] == ref["name"])
                if ref["key"] in (secret.get("stringData") or {}):
                    env[e["name"]] = secret["stringData"][ref["key"]]
                else:
                    env[e["name"]] = base64.b64decode(secret["data"][ref["key"]]).decode()
            elif "fieldRef" in src:
                path = src["fieldRef"]["fieldPath"]
                m = re.match(r"metadata\.annotations\['(.+)'\]", path)
                env[e["name"]] = (pod["metadata"].get("annotations") or {}).get(m.group(1), "") if m else ""
        argv = [resolve(host(expand(a, env)), names) for a in container["command"] + list(container.get("args") or [])]
        workdir = root / "workdir"
        workdir.mkdir(parents=True, exist_ok=True)
        rt.workdir = workdir
        proc_env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(workdir),
                    "LANG": "C.UTF-8", **env}
        if argv and argv[0] == "python":
            argv[0] = sys.executable
        try:
            rt.proc = await asyncio.create_subprocess_exec(
                *argv, cwd=workdir, env=proc_env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, start_new_session=True)
        except OSError as exc:
            rt.started = rt.ended = True
            await self._terminated(pod, container, 128, "StartError", str(exc))
            return
        rt.started = True
        started = rt.started_iso = now_iso()
        await self._patch(PODS, pod["metadata"]["name"], {"status": {
            "phase": "Running", "startTime": started, "containerStatuses": [
                {"name": container["name"], "image": container["image"], "imageID": "", "ready": True, "restartCount": 0,
                 "state": {"running": {"startedAt": started}}}]}})
        asyncio.create_task(self._pump(pod, container, rt))

    async def _pump(self, pod: dict, container: dict, rt: PodRuntime) -> None:
        assert rt.proc is not None and rt.proc.stdout is not None
        while True:
            line = await rt.proc.stdout.readline()
            if not line:
                break
            rt.lines.append((time.time_ns(), line.rstrip(b"\n")))
            rt.changed.set()
        code = await rt.proc.wait()
        exit_code = 128 - code if code < 0 else code
        reason = "OOMKilled" if rt.oom else ("Completed" if exit_code == 0 else "Error")
        await self._terminated(pod, container, exit_code, reason)
        rt.ended = True
        rt.changed.set()

    async def _terminated(self, pod: dict, container: dict, code: int, reason: str, message: str = "") -> None:
        name = pod["metadata"]["name"]
        started = getattr(self.runtimes.get(name), "started_iso", None) or now_iso()
        term = {"exitCode": code, "reason": reason, "startedAt": started, "finishedAt": now_iso()}
        if message:
            term["message"] = message
        phase = "Succeeded" if code == 0 else "Failed"
        await self._patch(PODS, name, {"status": {"phase": phase, "containerStatuses": [
            {"name": container["name"], "image": container["image"], "imageID": "", "ready": False, "restartCount": 0,
             "state": {"terminated": term}}]}})

    async def _stop_pod(self, pod: dict, rt: PodRuntime) -> None:
        """Deletion: SIGTERM, SIGKILL after the grace period, then the pod object goes."""
        meta = pod["metadata"]
        if rt.proc is not None and rt.proc.returncode is None:
            grace = meta.get("deletionGracePeriodSeconds", pod["spec"].get("terminationGracePeriodSeconds", 30))
            if not rt.term_sent:
                rt.term_sent = True
                rt.kill_at = time.monotonic() + float(grace)
                try:
                    os.killpg(rt.proc.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
            elif time.monotonic() >= (rt.kill_at or 0):
                try:
                    os.killpg(rt.proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            return
        if rt.proc is not None and not rt.ended:
            return  # let _pump record the exit first
        rest = [f for f in meta.get("finalizers") or [] if f != "emulator/kubelet"]
        await self._patch(PODS, meta["name"], {"metadata": {"finalizers": rest}})

    # ---------------------------------------------------------------- pods/exec

    async def serve_exec(self, raw, namespace: str, name: str):  # noqa: ANN001 - aiohttp's request
        """``pods/<name>/exec`` (see the module docstring): the command beside the pod's process."""
        import aiohttp
        import aiohttp.web

        def status(code: int, reason: str, message: str):
            return aiohttp.web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                                              "reason": reason, "message": message, "code": code}, status=code)

        pod = next((p for p in self._live(PODS) if p["metadata"]["name"] == name
                    and p["metadata"].get("namespace") == namespace), None)
        if pod is None:
            return status(404, "NotFound", f'pods "{name}" not found')
        rt = self.runtimes.get(name)
        if rt is None or rt.proc is None or rt.proc.returncode is not None or rt.workdir is None:
            return status(400, "BadRequest", f"unable to upgrade connection: container not found (\"{name}\")")
        command = raw.query.getall("command", [])
        want_stdin = raw.query.get("stdin") == "true"
        ws = aiohttp.web.WebSocketResponse(protocols=("v5.channel.k8s.io", "v4.channel.k8s.io"), max_msg_size=0)
        await ws.prepare(raw)
        env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(rt.workdir), "LANG": "C.UTF-8"}
        argv = [rt.host(a) for a in command]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, cwd=rt.workdir, env=env, stdin=asyncio.subprocess.PIPE if want_stdin else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            await ws.send_bytes(b"\x03" + json.dumps({"metadata": {}, "status": "Failure", "reason": "InternalError",
                                                       "message": str(exc)}).encode())
            await ws.close()
            return ws

        async def out(stream, channel: int) -> None:
            while chunk := await stream.read(1 << 16):
                await ws.send_bytes(bytes([channel]) + chunk)

        async def feed() -> None:
            try:
                async for msg in ws:
                    if msg.type != aiohttp.WSMsgType.BINARY or not msg.data or proc.stdin is None:
                        continue
                    channel, data = msg.data[0], msg.data[1:]
                    if channel == 0 and not proc.stdin.is_closing():
                        proc.stdin.write(data)
                        await proc.stdin.drain()
                    elif channel == 255 and data[:1] == b"\x00":
                        proc.stdin.close()
            except (ConnectionError, BrokenPipeError):
                pass
            finally:
                if proc.stdin is not None and not proc.stdin.is_closing():
                    proc.stdin.close()     # the client went away: the command's stdin ends

        feeder = asyncio.create_task(feed())
        await asyncio.gather(out(proc.stdout, 1), out(proc.stderr, 2))
        code = await proc.wait()
        if code == 0:
            final = {"metadata": {}, "status": "Success"}
        else:
            final = {"metadata": {}, "status": "Failure", "reason": "NonZeroExitCode",
                     "message": f"command terminated with non-zero exit code: error executing command {command}, "
                                f"exit code {code}",
                     "details": {"causes": [{"reason": "ExitCode", "message": str(code)}]}}
        if not ws.closed:
            await ws.send_bytes(b"\x03" + json.dumps(final).encode())
            await ws.close()
        feeder.cancel()
        return ws

    # ---------------------------------------------------------------- test actions

    def evict(self, pod_name: str) -> None:
        """What a preemption or a node drain does: DisruptionTarget, then deletion."""
        async def go():
            pod = next(p for p in self._live(PODS) if p["metadata"]["name"] == pod_name)
            conds = list(pod["status"].get("conditions") or []) + [{
                "type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler",
                "message": "Kueue: preempted to make room for a higher-priority workload"}]
            await self._patch(PODS, pod_name, {"status": {"conditions": conds}})
            await self._delete_pod(pod)
        self.run(go())


def _pvc_paths_in_json(text: str, rt: PodRuntime, volumes: dict, container: dict) -> str:
    """``"/cache/x"`` in a JSON document as ``"<the PVC's folder>/x"`` for each PVC mount: the pod's
    process runs on this machine, where the job's spec (a ConfigMap file) must name the PVC's folder."""
    for m in container.get("volumeMounts") or []:
        if "persistentVolumeClaim" in volumes[m["name"]]:
            mount = m["mountPath"].rstrip("/")
            text = re.sub(r'"' + re.escape(mount) + r'(?=["/])', lambda _m: '"' + rt.host(mount), text)
    return text


def expand(value: str, defined: dict[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: ``$(VAR)`` becomes VAR's value when VAR is in ``defined`` and
    stays as written when not; ``$$`` is a literal ``$``; any other ``$`` is kept."""
    out, i = [], 0
    while i < len(value):
        if value.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if value.startswith("$(", i) and ")" in value[i + 2:]:
            end = value.index(")", i + 2)
            name = value[i + 2:end]
            out.append(defined[name] if name in defined else value[i:end + 1])
            i = end + 1
            continue
        out.append(value[i])
        i += 1
    return "".join(out)


def resolve(value: str, names: dict[str, str]) -> str:
    """``value`` with every whole DNS name in ``names`` (``worker-0.svc:29500``) replaced by its address."""
    if not names:
        return value
    alternatives = "|".join(re.escape(n) for n in sorted(names, key=len, reverse=True))
    pattern = re.compile(rf"(?<![\w.-])({alternatives})(?![\w-]|\.[\w-])")
    return pattern.sub(lambda m: names[m.group(1)], value)


def _terminated(pod: dict) -> dict | None:
    for cs in pod["status"].get("containerStatuses") or []:
        return (cs.get("state") or {}).get("terminated")
    return None


def _state(pod: dict) -> dict:
    for cs in pod["status"].get("containerStatuses") or []:
        return cs.get("state") or {}
    return {}


def _index(pod: dict) -> int:
    return int((pod["metadata"].get("labels") or {}).get("batch.kubernetes.io/job-completion-index", 0))


def _gpu_request(pod: dict) -> int:
    total = 0
    for c in pod["spec"].get("containers") or []:
        total += int(((c.get("resources") or {}).get("limits") or {}).get("nvidia.com/gpu", 0))
    return total


def _rss(pid: int) -> int:
    """Resident memory of the process group led by ``pid`` (bytes), as a cgroup would count it."""
    total = 0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            fields = stat[stat.rfind(")") + 2:].split()
            if int(fields[2]) != pid:  # pgrp
                continue
            total += int(fields[21]) * os.sysconf("SC_PAGE_SIZE")  # rss pages
        except (OSError, ValueError, IndexError):
            continue
    return total


__all__ = ["FakeCluster", "PODS", "JOBS", "CONFIGMAPS", "SERVICES", "SECRETS", "NAMESPACE", "shutil"]
