"""The kubernetes backend, end to end through the `gpujob` command, against a Kubernetes API.

Every scenario runs against the emulator (tests/support/k8s_emulator.py: kmock's API server plus a Job
controller, scheduler and kubelet that runs the container's command as a real process). The same
scenarios are the contract suite for a real cluster: set GPUJOB_TEST_KUBECONFIG (and optionally
GPUJOB_TEST_NAMESPACE, GPUJOB_TEST_IMAGE: an image with gpujob installed) to run them there.
Scenarios that need a fault only the emulator can inject (dropped log streams, 410 Gone, a
rejected create) run on the emulator alone.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from gpujob.backends.local_data import PODS_SEE_THIS_MACHINE
from gpujob import history
from gpujob.events import parse_line
from gpujob_cli import GPUJOB, GpujobCli
from k8s_emulator import CONFIGMAPS, JOBS, FakeCluster
from polling import wait_for
from webhook import Hook

pytest.importorskip("kubernetes")
pytest.importorskip("kmock")

REAL = os.environ.get("GPUJOB_TEST_KUBECONFIG")


class K8s(GpujobCli):
    """One cluster (emulated or real) and the `gpujob` command pointed at it."""

    def __init__(self, tmp: Path, kubeconfig: Path, namespace: str, image: str, fake: FakeCluster | None):
        super().__init__(tmp, {**os.environ, "KUBECONFIG": str(kubeconfig), "GPUJOB_HOME": str(tmp / "home"),
                               "PYTHONUNBUFFERED": "1"})
        self.env.pop("HF_TOKEN", None)
        if fake is not None:  # the emulator's kubelet runs pods here: local datasets and models are there
            self.env[PODS_SEE_THIS_MACHINE] = "1"
        self.kubeconfig, self.namespace, self.image, self.fake = kubeconfig, namespace, image, fake
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(kubeconfig))
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)

    @property
    def emulated(self) -> bool:
        return self.fake is not None

    def spec(self, name: str, code: str, **sections) -> Path:
        """A command job running ``python -c code`` in the job image."""
        runtime = {"backend": "kubernetes", "namespace": self.namespace, "image": self.image,
                   **sections.pop("runtime", {})}
        spec = {"apiVersion": "gpujob/v1", "kind": "command", "name": name,
                "command": ["python", "-c", code], "resources": {"gpus": 0, **sections.pop("resources", {})},
                "runtime": runtime, "limits": {"max_runtime": "10m", **sections.pop("limits", {})}, **sections}
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(spec))  # JSON is YAML
        return path

    def pods(self, job_id: str) -> list[dict]:
        data = json.loads(self.core.list_namespaced_pod(self.namespace, label_selector=f"gpujob.dev/id={job_id}",
                                                        _preload_content=False).data)
        return [p for p in data["items"] if p["metadata"].get("labels", {}).get("gpujob.dev/id") == job_id]

    def k8s_jobs(self, job_id: str) -> list[dict]:
        data = json.loads(self.batch.list_namespaced_job(self.namespace, label_selector=f"gpujob.dev/id={job_id}",
                                                         _preload_content=False).data)
        return [j for j in data["items"] if j["metadata"].get("labels", {}).get("gpujob.dev/id") == job_id]


@pytest.fixture(params=["emulator", "cluster"])
def k8s(request, tmp_path):
    if request.param == "cluster":
        if not REAL:
            pytest.skip("contract run against a real cluster: set GPUJOB_TEST_KUBECONFIG (and GPUJOB_TEST_NAMESPACE, "
                        "GPUJOB_TEST_IMAGE) to run it")
        yield K8s(tmp_path, Path(REAL), os.environ.get("GPUJOB_TEST_NAMESPACE", "gpujob"),
                  os.environ.get("GPUJOB_TEST_IMAGE", "ghcr.io/gpujob/gpujob:0.1.0"), None)
        return
    with FakeCluster(tmp_path, node_labels={"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}) as fake:
        yield K8s(tmp_path, fake.kubeconfig, fake.namespace, "ghcr.io/gpujob/gpujob:test", fake)
        assert fake.errors == [], f"the emulator's controllers failed: {fake.errors}"


@pytest.fixture
def emulated(k8s):
    if not k8s.emulated:
        pytest.skip("needs a fault only the emulator can inject")
    return k8s


DEMO = "import runpy, sys; sys.argv = ['demo'] + {args!r}; runpy.run_module('gpujob.demo', run_name='__main__')"


def demo(*args: str) -> str:
    return DEMO.format(args=list(args))


def numbered(n: int, pause: float = 0.01) -> str:
    return f"import time\nfor i in range({n}):\n    print(f'line {{i:03d}}', flush=True)\n    time.sleep({pause})"


# ----------------------------------------------------------------------------- the must-show scenario


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_submit_status_logs_follow_and_cancel_end_to_end(k8s):
    job_id = k8s.submit(k8s.spec("long-run", demo("--steps", "4000", "--step-time", "0.05", "--eval-every", "100")))
    running = k8s.wait_status(job_id, lambda s: s["status"] == "running" and (s["step"] or 0) >= 5,
                              what="running with progress")
    assert running["total_steps"] == 4000 and running["steps_per_s"] and running["eta_s"] > 0

    # --raw: every progress line (without a terminal, -f prints one a minute)
    follower = subprocess.Popen([*GPUJOB, "logs", "-f", "--raw", job_id], env=k8s.env, cwd=k8s.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    progress_lines = 0
    for line in follower.stdout:  # the live log, from the start of the job
        progress_lines += any(e["event"] == "progress" for e in parse_line(line))
        if progress_lines == 3:
            break
    assert progress_lines == 3

    cancelled = k8s.gpujob("cancel", job_id, "--grace", "5")
    assert cancelled.returncode == 0, cancelled.stdout + cancelled.stderr
    assert "cancelled" in cancelled.stdout
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 1, err  # the job did not succeed
    assert "cancelled" in err

    # Foreground deletion: the Job, its pods and its ConfigMap are gone (GPU freed), not orphaned.
    assert k8s.k8s_jobs(job_id) == [] and k8s.pods(job_id) == []
    status = k8s.status(job_id)
    assert status["status"] == "cancelled" and status["step"] >= 5
    # The log was saved before the pods went, so it can still be read.
    saved = k8s.gpujob("logs", job_id, "--tail", "3")
    assert saved.returncode == 0 and "[progress] step" in saved.stdout
    if k8s.emulated:
        assert k8s.fake.emulator.deletions[("jobs", k8s.namespace, f"long-run-{job_id}")] == "Foreground"
        assert not [c for c in k8s.fake.objects(CONFIGMAPS) if job_id in c["metadata"]["name"]]


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_a_job_that_succeeds_reports_progress_metrics_and_keeps_its_log(k8s):
    job_id = k8s.submit(k8s.spec("short-run", demo("--steps", "40", "--step-time", "0.02", "--eval-every", "20")))
    r = k8s.gpujob("logs", "-f", job_id)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "[end] succeeded" in r.stdout and "done: w=" in r.stdout
    assert "succeeded" in r.stderr  # the final line
    s = k8s.status(job_id)
    assert s["status"] == "succeeded" and s["exit_code"] == 0
    assert s["step"] == s["total_steps"] == 40 and s["metrics"]["wer"] < 0.5
    assert s["runtime_s"] is not None and s["runtime_s"] >= 0.5
    listing = k8s.gpujob("list")
    assert job_id in listing.stdout and "succeeded" in listing.stdout and "kubernetes" in listing.stdout
    details = k8s.gpujob("status", job_id).stdout
    assert "/cache/outputs/short-run  (on PersistentVolumeClaim gpujob-hf-cache" in details
    if k8s.emulated:  # ttlSecondsAfterFinished removed the Job and its pods: the saved log remains
        k8s.batch.delete_namespaced_job(k8s.k8s_jobs(job_id)[0]["metadata"]["name"], k8s.namespace,
                                        propagation_policy="Background")
        k8s.fake.wait_for(lambda: not k8s.pods(job_id), what="pods removed")
        later = k8s.gpujob("logs", job_id)
        assert later.returncode == 0 and "[end] succeeded" in later.stdout


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_the_metric_history_is_whole_and_outlives_the_pods(k8s):
    """Each look at a running job records the points of its log's tail; at the end the whole saved
    log is the history, kept in the registry after the Job and its pods are gone."""
    job_id = k8s.submit(k8s.spec("curves", demo("--steps", "80", "--step-time", "0.05", "--eval-every", "20")))
    k8s.wait_status(job_id, lambda s: (s.get("step") or 0) >= 10, what="step 10")
    running = json.loads(k8s.gpujob("metrics", job_id, "--json").stdout)
    assert running and {p["event"] for p in running} <= {"progress", "eval"}
    k8s.wait_status(job_id, lambda s: s["status"] == "succeeded", what="succeeded", timeout=120)
    raw = k8s.gpujob("logs", "--raw", job_id).stdout
    expected = history.points(e for line in raw.splitlines() for e in parse_line(line))
    assert len([p for p in expected if p["event"] == "progress"]) == 80
    if k8s.emulated:
        k8s.batch.delete_namespaced_job(k8s.k8s_jobs(job_id)[0]["metadata"]["name"], k8s.namespace,
                                        propagation_policy="Background")
        k8s.fake.wait_for(lambda: not k8s.pods(job_id), what="pods removed")
    assert json.loads(k8s.gpujob("metrics", job_id, "--json").stdout) == expected


# ----------------------------------------------------------------------------- why is it not running?


def test_the_end_is_notified_once_by_the_command_that_sees_it(k8s):
    """No supervisor of gpujob's runs beside a pod: the first command that records the end sends the
    notification (from a detached process), and no later command sends it again."""
    hook = Hook()
    try:
        job_id = k8s.submit(k8s.spec("notified", demo("--steps", "5", "--step-time", "0.01"),
                                     notify={"webhook": hook.url}))
        k8s.wait_status(job_id, lambda s: s["status"] == "succeeded", what="success")
        wait_for(lambda: hook.posts, timeout=30, what="the POST")
        assert k8s.gpujob("list").returncode == 0 and k8s.gpujob("status", job_id).returncode == 0
        [body] = hook.bodies()
        assert (body["event"], body["id"], body["backend"], body["step"]) == ("succeeded", job_id, "kubernetes", 5)
    finally:
        hook.close()


def test_unschedulable_gpu_request_is_explained(k8s):
    job_id = k8s.submit(k8s.spec("too-many-gpus", "print('never')", resources={"gpus": 64}))
    s = k8s.wait_status(job_id, lambda s: "unschedulable" in (s["reason"] or ""), what="Unschedulable")
    assert s["status"] == "queued"
    assert "Insufficient nvidia.com/gpu" in s["reason"] and "lower resources.gpus" in s["reason"]
    k8s.gpujob("cancel", job_id)


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_gpu_type_no_node_has_is_explained(k8s):
    job_id = k8s.submit(k8s.spec("wrong-gpu", "print('never')", resources={"gpus": 1, "gpu_type": "NO-SUCH-GPU"}))
    s = k8s.wait_status(job_id, lambda s: "unschedulable" in (s["reason"] or ""), what="Unschedulable")
    assert "no node has nvidia.com/gpu.product=NO-SUCH-GPU" in s["reason"]
    k8s.gpujob("cancel", job_id)


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_image_that_cannot_be_pulled_is_explained(k8s):
    if k8s.emulated:
        k8s.fake.images = {k8s.image}
    path = k8s.spec("bad-image", "print('never')", runtime={"image": "registry.invalid/gpujob/nothing:1"})
    job_id = k8s.submit(path)
    s = k8s.wait_status(job_id, lambda s: "cannot pull image" in (s["reason"] or ""), what="ImagePullBackOff")
    assert s["status"] == "starting" and "registry.invalid/gpujob/nothing:1" in s["reason"]
    assert "ImagePullBackOff" in s["reason"] or "ErrImagePull" in s["reason"]
    k8s.gpujob("cancel", job_id)


def test_out_of_memory_is_reported_as_oomkilled(k8s):
    code = "import time\nx = bytearray(700 * 2**20)\nfor i in range(0, len(x), 4096): x[i] = 1\ntime.sleep(30)"
    job_id = k8s.submit(k8s.spec("oom", code, resources={"memory": "200Mi"}))
    s = k8s.wait_status(job_id, lambda s: s["status"] == "failed", timeout=90, what="failed")
    assert "out of memory (OOMKilled, memory limit 200Mi)" in s["reason"]
    assert "failed 3 time(s)" in s["reason"] and s["exit_code"] == 137  # backoffLimit 2: three attempts


def test_max_runtime_is_enforced_as_deadline_exceeded(k8s):
    job_id = k8s.submit(k8s.spec("too-slow", "import time; print('working', flush=True); time.sleep(120)",
                                 limits={"max_runtime": "3s"}))
    s = k8s.wait_status(job_id, lambda s: s["status"] == "failed", timeout=60, what="deadline")
    assert "ran longer than limits.max_runtime (3s)" in s["reason"] and "DeadlineExceeded" in s["reason"]
    assert not [p for p in k8s.pods(job_id) if p["status"].get("phase") == "Running"]


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_max_cost_is_enforced_as_the_jobs_deadline_and_said_as_its_budget(k8s):
    path = k8s.spec("over-budget", "import time; print('working', flush=True); time.sleep(120)",
                    resources={"price_per_hour": 3600}, limits={"max_cost": 3, "max_runtime": "1h"})
    rendered = k8s.gpujob("render", str(path))
    assert "activeDeadlineSeconds: 3\n" in rendered.stdout and "# cost:     $3,600.00/h" in rendered.stdout
    job_id = k8s.submit(path)
    s = k8s.wait_status(job_id, lambda s: s["status"] == "failed", timeout=60, what="the budget")
    assert s["reason"].startswith("stopped at the budget of $3.00 (limits.max_cost, at $3,600.00/h)"), s["reason"]
    assert s["price_usd_per_hour"] == 3600 and s["cost_usd"] is not None


def test_a_job_is_priced_by_what_the_clusters_admin_published(k8s):
    from kubernetes import client

    k8s.core.create_namespaced_config_map(k8s.namespace, client.V1ConfigMap(
        metadata=client.V1ObjectMeta(name="gpujob-prices"), data={"prices.yaml": "cpu: 7.25\ngpu: 2.0\n"}))
    try:
        job_id = k8s.submit(k8s.spec("published", "print('ok')"))
        s = k8s.wait_status(job_id, lambda s: s["status"] == "succeeded", timeout=60, what="success")
        assert s["price_usd_per_hour"] == 7.25 and "ConfigMap gpujob-prices" in s["price_source"]
        assert "(ConfigMap gpujob-prices).cpu" in k8s.gpujob("status", job_id).stdout
    finally:
        k8s.core.delete_namespaced_config_map("gpujob-prices", k8s.namespace)


def test_configuration_error_exit_2_fails_at_once_without_retries(k8s):
    code = "import sys\nprint('ValueError: data.train[0]: no column named sentence', flush=True)\nsys.exit(2)"
    job_id = k8s.submit(k8s.spec("bad-config", code))
    s = k8s.wait_status(job_id, lambda s: s["status"] == "failed", what="failed")
    assert s["exit_code"] == 2 and "not retried" in s["reason"]
    assert "no column named sentence" in s["reason"]
    assert len(k8s.pods(job_id)) == 1


def test_missing_secret_is_explained_then_used_once_created(k8s):
    store = f"gpujob-test-{os.getpid()}"
    code = "import os; print('token length', len(os.environ['HF_TOKEN']), flush=True)"
    job_id = k8s.submit(k8s.spec("needs-token", code, runtime={"secrets": ["HF_TOKEN"], "secret_store": store}))
    s = k8s.wait_status(job_id, lambda s: "cannot start the container" in (s["reason"] or ""), what="secret error")
    assert f'secret "{store}" not found' in s["reason"] and "kubectl create secret" in s["reason"]
    token = "hf_" + "Zq7" * 11
    k8s.core.create_namespaced_secret(k8s.namespace, {"apiVersion": "v1", "kind": "Secret",
                                                      "metadata": {"name": store}, "stringData": {"HF_TOKEN": token}})
    try:
        r = k8s.gpujob("logs", "-f", job_id)
        assert r.returncode == 0 and f"token length {len(token)}" in r.stdout, r.stdout + r.stderr
        home = k8s.tmp / "home"
        for f in home.rglob("*"):
            if f.is_file():
                assert token.encode() not in f.read_bytes(), f
        job = k8s.k8s_jobs(job_id)
        assert token not in json.dumps(job)
    finally:
        k8s.core.delete_namespaced_secret(store, k8s.namespace)


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_retried_attempt_is_followed_and_the_job_succeeds(k8s):
    code = ("import os, sys\nmarker = os.path.join(os.environ['HF_HOME'], 'attempted-' + os.environ['GPUJOB_JOB_ID'])\n"
            "os.makedirs(os.path.dirname(marker), exist_ok=True)\n"
            "if not os.path.exists(marker):\n"
            "    open(marker, 'w').close(); print('RuntimeError: flaky node', flush=True)\n"
            "    import time; time.sleep(3); sys.exit(1)\n"
            "print('second attempt fine', flush=True)")
    job_id = k8s.submit(k8s.spec("flaky", code))
    r = k8s.gpujob("logs", "-f", job_id)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "second attempt fine" in r.stdout
    # followed from its start, attempt 1's output; joined once attempt 2 ran, the words on its failure
    assert "RuntimeError: flaky node" in r.stdout or (
        "attempt 1 failed" in r.stderr and "RuntimeError: flaky node" in r.stderr), r.stdout + r.stderr
    assert "attempt 2" in r.stderr
    assert k8s.status(job_id)["status"] == "succeeded"


# ----------------------------------------------------------------------------- streams and watches


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_dropped_log_streams_lose_and_repeat_no_line(emulated):
    fake = emulated.fake
    fake.drop_streams_after, fake.drops_left, fake.drop_mid_line = 7, 4, True
    release = emulated.tmp / "release"  # the job writes half, then waits for it: still running at every drop
    code = (f"import os, time\nfor i in range(120):\n    print(f'line {{i:03d}}', flush=True)\n"
            f"    time.sleep(0.01)\n    while i == 59 and not os.path.exists({str(release)!r}): time.sleep(0.05)")
    job_id = emulated.submit(emulated.spec("numbers", code))
    follower = subprocess.Popen([*GPUJOB, "logs", "-f", job_id, "--raw"], env=emulated.env, cwd=emulated.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        fake.wait_for(lambda: fake.drops == 4, what="four dropped streams", timeout=60)
    finally:
        release.touch()
    out, err = follower.communicate(timeout=120)
    assert follower.returncode == 0, err
    assert out.splitlines() == [f"line {i:03d}" for i in range(120)]
    assert fake.drops == 4  # every stream broke off inside a line, while the job ran


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_a_quiet_stretch_longer_than_the_read_timeout_is_followed(emulated):
    emulated.env["GPUJOB_K8S_READ_TIMEOUT_S"] = "1"
    code = "import time\nprint('before', flush=True)\ntime.sleep(4)\nprint('after', flush=True)"
    job_id = emulated.submit(emulated.spec("quiet", code))
    r = emulated.gpujob("logs", "-f", job_id, "--raw")
    assert r.returncode == 0 and r.stdout.splitlines() == ["before", "after"], r.stdout + r.stderr


def test_expired_watches_are_listed_again_and_a_queued_job_is_followed(emulated):
    fake = emulated.fake
    job_id = emulated.submit(emulated.spec("queued", numbered(5), runtime={"queue": "gpu-queue"}))
    s = emulated.wait_status(job_id, lambda s: "suspended" in (s["reason"] or ""), what="suspended")
    assert s["status"] == "queued" and "queue 'gpu-queue'" in s["reason"]
    fake.emulator.expire_watches = 3
    follower = subprocess.Popen([*GPUJOB, "logs", "-f", job_id, "--raw"], env=emulated.env, cwd=emulated.tmp,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fake.wait_for(lambda: fake.emulator.expire_watches == 0, what="the watches to expire")
    name = emulated.k8s_jobs(job_id)[0]["metadata"]["name"]
    fake.patch(JOBS, name, {"spec": {"suspend": False}})  # Kueue admits the workload
    out, err = follower.communicate(timeout=60)
    assert follower.returncode == 0, err
    assert out.splitlines() == [f"line {i:03d}" for i in range(5)]
    assert "waiting in queue 'gpu-queue'" in err


# ----------------------------------------------------------------------------- multi-node, list, failures


def test_multi_node_logs_show_worker_zero_or_every_worker(k8s):
    code = ("import os\nfor i in range(3):\n    print(f\"worker {os.environ['JOB_COMPLETION_INDEX']} line {i}\", "
            "flush=True)")
    job_id = k8s.submit(k8s.spec("two-nodes", code, resources={"nodes": 2}))
    r = k8s.gpujob("logs", "-f", job_id, "--raw")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"worker 0 line {i}" for i in range(3)]
    every = k8s.gpujob("logs", job_id, "--all-workers", "--raw")
    lines = every.stdout.splitlines()
    assert sorted(lines) == sorted([f"[{w}] worker {w} line {i}" for w in (0, 1) for i in range(3)])


RENDEZVOUS = """\
import os, socket, time
node, endpoint = int(os.environ["GPUJOB_NODE_INDEX"]), os.environ["GPUJOB_RDZV_ENDPOINT"]
host, port = endpoint.rsplit(":", 1)
print(f"node {node}: rendezvous at {endpoint}", flush=True)
if node == 0:
    server = socket.create_server(("", int(port)))
    server.settimeout(60)
    peer, _ = server.accept()
    print("worker 0 heard:", peer.recv(100).decode(), flush=True)
else:
    for _ in range(300):
        try:
            conn = socket.create_connection((host, int(port)), timeout=2)
            break
        except OSError:
            time.sleep(0.2)
    conn.sendall(f"hello from worker {node}".encode())
    conn.close()
"""


def test_workers_know_their_node_index_and_reach_worker_zero_at_the_rendezvous_endpoint(k8s):
    port = _free_port() if k8s.emulated else 29500  # the emulator's pods share this machine's ports
    job_id = k8s.submit(k8s.spec("rendezvous", RENDEZVOUS, resources={"nodes": 2}, distributed={"port": port}))
    s = k8s.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=120, what="finished")
    assert s["status"] == "succeeded", s
    name = k8s.k8s_jobs(job_id)[0]["metadata"]["name"]
    lines = k8s.gpujob("logs", job_id, "--all-workers", "--raw").stdout.splitlines()
    host = f"{name}-0.{name}-workers"
    if k8s.emulated:  # the emulator's DNS gives worker 0's pod an address of its own on loopback
        found = re.search(r"rendezvous at (127\.1\.0\.\d+):", "\n".join(lines))
        assert found, lines
        host = found.group(1)
    assert sorted(lines) == sorted([f"[0] node 0: rendezvous at {host}:{port}",
                                    f"[1] node 1: rendezvous at {host}:{port}",
                                    "[0] worker 0 heard: hello from worker 1"])


def test_one_failed_worker_fails_the_job_at_once_and_status_names_it(k8s):
    code = ("import os, sys, time\nif os.environ['GPUJOB_NODE_INDEX'] == '0':\n    time.sleep(120)\n"
            "print('gpujob: rank 1 of 2 failed first: exited with code 1: RuntimeError: boom', file=sys.stderr)\n"
            "sys.exit(1)")
    job_id = k8s.submit(k8s.spec("one-fails", code, resources={"nodes": 2}))
    # well before worker 0 would have ended by itself (120 s): the failure policy fails the Job at once
    s = k8s.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=60, what="failed")
    assert s["status"] == "failed" and s["exit_code"] == 1
    assert s["reason"] == "worker 1: rank 1 of 2 failed first: exited with code 1: RuntimeError: boom"


def train_spec(k8s: K8s, name: str, model: Path, data: Path, **training) -> Path:
    """A 2-node train job (1 process each, gloo on the CPU) on files of this machine, where the
    emulator's pods run."""
    spec = {"apiVersion": "gpujob/v1", "kind": "train", "name": name,
            "model": {"checkpoint": str(model), "language": "el"},
            "data": {"train": [{"dataset": str(data), "split": "train"}],
                     "eval": [{"dataset": str(data), "split": "heldout"}], "loader_workers": 1},
            "training": {"max_steps": 4, "per_device_batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1,
                         "eval_steps": 2, "save_steps": 1, "precision": "fp32", "generation_max_length": 20,
                         **training},
            "evaluation": {"batch_size": 2}, "output": {"dir": str(k8s.tmp / "outputs" / name)},
            "resources": {"gpus": 0, "nodes": 2},
            "runtime": {"backend": "kubernetes", "namespace": k8s.namespace, "image": k8s.image,
                        "env": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}},
            "distributed": {"port": _free_port()}, "limits": {"max_runtime": "10m"}}
    path = k8s.tmp / f"{name}.yaml"
    path.write_text(json.dumps(spec))
    return path


@pytest.mark.slow
def test_a_two_node_train_job_runs_the_runner_to_success(k8s, tiny_model, small_greek):
    """The pods really run the runner under the launcher: c10d rendezvous at worker 0 (the emulator's
    DNS is loopback), rank 0 on worker 0 writes every event once, worker 1 writes none."""
    if not k8s.emulated:
        pytest.skip("the model and data are files of this machine")
    spec = train_spec(k8s, "two-node-train", tiny_model, small_greek)
    rendered = k8s.gpujob("render", str(spec))
    assert rendered.returncode == 0, rendered.stderr
    assert "--rdzv-backend=c10d" in rendered.stdout and "--nnodes=2" in rendered.stdout
    assert "-0.two-node-train-" in rendered.stdout  # worker 0 under the headless Service
    job_id = k8s.submit(spec)
    s = k8s.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=240, what="finished")
    assert s["status"] == "succeeded", s
    logs = k8s.gpujob("logs", job_id, "--all-workers", "--raw").stdout.splitlines()
    events = [e for line in logs if line.startswith("[0] ") for e in parse_line(line)]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3, 4]
    assert [e["event"] for e in events].count("end") == 1 and events[-1]["status"] == "succeeded"
    assert not [line for line in logs if line.startswith("[1] ") and "@gpujob/v1" in line]
    assert s["step"] == 4 and s["metrics"]["steps"] == 4
    assert (k8s.tmp / "outputs" / "two-node-train" / "metrics.json").exists()


@pytest.mark.slow
def test_a_preempted_worker_restarts_the_group_from_the_last_checkpoint(k8s, tiny_model, small_greek):
    """Worker 0 (which also hosts the rendezvous store) is preempted: DisruptionTarget, then deleted,
    so SIGTERM. Every rank saves one checkpoint and stops; worker 1 exits 75 (counted, not failed);
    Kubernetes starts both pods again, and the runner resumes from that checkpoint. The job succeeds
    with every step done once."""
    if not k8s.emulated:
        pytest.skip("the model and data are files of this machine, and only the emulator preempts on cue")
    job_id = k8s.submit(train_spec(k8s, "preempted", tiny_model, small_greek, max_steps=12, eval_steps=100))
    k8s.wait_status(job_id, lambda s: (s["step"] or 0) >= 2, timeout=120, what="step 2")
    name = k8s.k8s_jobs(job_id)[0]["metadata"]["name"]
    k8s.fake.evict(next(p["metadata"]["name"] for p in k8s.pods(job_id) if p["metadata"]["name"].startswith(f"{name}-0-")))
    s = k8s.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=300, what="finished")
    assert s["status"] == "succeeded" and s["step"] == 12, s
    ran = list(k8s.fake.runtimes)  # pods in the order they ran
    worker_0, worker_1 = ([p for p in ran if p.startswith(f"{name}-{i}-")] for i in (0, 1))
    assert len(worker_0) >= 2 and len(worker_1) >= 2, ran
    logs = [line for pod in worker_0 for line in k8s.fake.pod_logs(pod)]  # rank 0, the writer, is on worker 0
    events = [e for line in logs for e in parse_line(line)]
    assert [e["step"] for e in events if e["event"] == "progress"] == list(range(1, 13))  # each step once
    first_end = next(i for i, e in enumerate(events) if e["event"] == "end")
    saved = [e["step"] for e in events[:first_end] if e["event"] == "progress"][-1]  # the first generation's last
    assert any("resuming from" in line and f"checkpoint-{saved} " in line for line in logs)
    # worker 1 leaves for a group restart: its ranks stopped with worker 0's, or, when worker 0's store went
    # first, its rendezvous failed; either way it exits 75 and the Job starts a new generation of pods
    assert "exit 75: " in "\n".join(k8s.fake.pod_logs(worker_1[0]))
    assert [e["status"] for e in events if e["event"] == "end"] == ["failed", "succeeded"]


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_list_selects_gpujob_jobs_by_label(k8s):
    from gpujob.backends.kubernetes.backend import KubernetesBackend

    k8s.batch.create_namespaced_job(k8s.namespace, {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": "someone-elses", "labels": {"team": "x"}},
        "spec": {"suspend": True, "template": {"spec": {"restartPolicy": "Never", "containers": [
            {"name": "c", "image": k8s.image, "command": ["true"]}]}}}})
    try:
        job_id = k8s.submit(k8s.spec("listed", numbered(1)))
        old = os.environ.get("KUBECONFIG")
        os.environ["KUBECONFIG"] = str(k8s.kubeconfig)
        try:
            ids = KubernetesBackend().list()
        finally:
            os.environ.pop("KUBECONFIG") if old is None else os.environ.__setitem__("KUBECONFIG", old)
        assert job_id in ids and all(len(i) == 6 for i in ids)
    finally:
        k8s.batch.delete_namespaced_job("someone-elses", k8s.namespace, propagation_policy="Background")


def test_a_failed_create_removes_what_was_already_created(emulated):
    fake = emulated.fake
    fake.emulator.reject_creates["jobs"] = (403, 'jobs "x" is forbidden: exceeded quota: gpu-quota, requested: '
                                                 "requests.nvidia.com/gpu=1, used: 8, limited: 8")
    r = emulated.gpujob("submit", str(emulated.spec("over-quota", "print(1)")))
    assert r.returncode == 2, r.stdout + r.stderr
    assert "exceeded quota" in r.stderr and "Traceback" not in r.stderr
    assert fake.objects(CONFIGMAPS) == [] and fake.objects(JOBS) == []
    listing = emulated.gpujob("list")
    assert "no jobs yet" in listing.stdout  # refused before it started: nothing recorded


def test_a_job_deleted_behind_gpujobs_back_is_reported(emulated):
    job_id = emulated.submit(emulated.spec("deleted", "import time; time.sleep(60)"))
    emulated.wait_status(job_id, lambda s: s["status"] == "running", what="running")
    name = emulated.k8s_jobs(job_id)[0]["metadata"]["name"]
    emulated.batch.delete_namespaced_job(name, emulated.namespace, propagation_policy="Background")
    s = emulated.wait_status(job_id, lambda s: s["status"] == "failed", what="failed")
    assert "no longer exists on the cluster" in s["reason"]


def test_a_preempted_pod_is_replaced_without_counting_as_a_failure(emulated):
    fake = emulated.fake
    code = ("import os, time\nmarker = os.path.join(os.environ['HF_HOME'], 'started-' + os.environ['GPUJOB_JOB_ID'])\n"
            "os.makedirs(os.path.dirname(marker), exist_ok=True)\nfirst = not os.path.exists(marker)\n"
            "open(marker, 'a').close()\nprint('first run' if first else 'rescheduled', flush=True)\n"
            "time.sleep(30 if first else 0)")
    job_id = emulated.submit(emulated.spec("preempted", code))
    emulated.wait_status(job_id, lambda s: s["status"] == "running", what="running")
    fake.wait_for(lambda: any(l == "first run" for p in emulated.pods(job_id) for l in fake.pod_logs(
        p["metadata"]["name"])), what="first run")
    fake.evict(emulated.pods(job_id)[0]["metadata"]["name"])
    s = emulated.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), what="finished")
    assert s["status"] == "succeeded", s
    job = emulated.k8s_jobs(job_id)[0]
    assert not job["status"].get("failed")
