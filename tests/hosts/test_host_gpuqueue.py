"""The host's GPU queue (hosts/agent/gpuqueue.py) step by step, against a stand-in for the few Docker API
calls it makes; the real engine runs it in tests/backends/test_host_queue.py."""

from __future__ import annotations

import json
from pathlib import Path

from gpujob.hosts.agent.dockerapi import DockerError
from gpujob.hosts.agent.gpuqueue import HostGpuQueue, parse_gpu_uuids
from gpujob.hosts.layout import HostLayout

GPUS = ["GPU-a", "GPU-b"]


class Engine:
    """gpujob's containers as the Engine API lists them; start() runs one."""

    def __init__(self) -> None:
        self.containers: dict[str, dict] = {}
        self.ready: set[str] = set()
        self.errors: dict[str, str] = {}
        self.refuse: set[str] = set()
        self.started: list[str] = []

    def add(self, job: str, gpus: int = 1, *, priority: int = 0, submitted: float = 0.0, ready: bool = True,
            state: str = "created") -> None:
        self.containers[f"c-{job}"] = {"Id": f"c-{job}", "State": state, "Labels": {
            "gpujob.dev/id": job, "gpujob.dev/gpus": str(gpus), "gpujob.dev/priority": str(priority),
            "gpujob.dev/submitted": str(submitted), "gpujob.dev/share-gpus": "false"}}
        if ready:
            self.ready.add(f"c-{job}")

    def list_containers(self, states):
        return [c for c in self.containers.values() if c["State"] in states]

    def path_exists(self, cid, path):
        return cid in self.ready and path == "/run/gpujob/ready"

    def inspect(self, cid):
        return {"State": {"Error": self.errors.get(cid, "")}}

    def start(self, cid):
        if cid in self.refuse:
            raise DockerError("could not select device driver", 500)
        self.containers[cid]["State"] = "running"
        self.started.append(cid.removeprefix("c-"))


def queue(tmp_path: Path, engine: Engine, gpus=GPUS) -> tuple[HostGpuQueue, HostLayout]:
    lay = HostLayout(root=str(tmp_path))
    return HostGpuQueue(lay, engine, lambda: list(gpus)), lay


def grant(lay: HostLayout, job: str) -> str:
    return Path(lay.gpu_grants_dir, job).read_text()


def test_priority_then_submit_time_each_job_its_own_gpu_and_the_rest_wait(tmp_path):
    engine = Engine()
    engine.add("late", submitted=3)
    engine.add("early", submitted=1)
    engine.add("urgent", priority=5, submitted=9)
    q, lay = queue(tmp_path, engine)
    state = q.step()
    assert engine.started == ["urgent", "early"]
    assert {grant(lay, "urgent"), grant(lay, "early")} == set(GPUS)
    assert state["jobs"]["late"]["wait"]["words"].startswith("1st in the GPU queue, waiting for 1 GPU (2 of 2 in use")
    assert json.loads(Path(lay.gpu_queue_path).read_text())["jobs"]["late"]["wait"]["position"] == 1
    q.step()
    assert engine.started == ["urgent", "early"]              # nothing free: no oversubscription
    engine.containers.pop("c-early")                          # it ended and gpujob collected it
    q.step()
    assert engine.started == ["urgent", "early", "late"] and grant(lay, "late") != grant(lay, "urgent")
    assert not Path(lay.gpu_grants_dir, "early").exists()     # a gone job's grant is removed


def test_a_container_still_being_filled_or_whose_start_failed_is_not_started(tmp_path):
    engine = Engine()
    engine.add("filling", ready=False)
    engine.add("broken", submitted=1)
    engine.refuse.add("c-broken")
    q, lay = queue(tmp_path, engine)
    q.step()
    assert engine.started == [] and not Path(lay.gpu_grants_dir, "broken").exists()
    engine.refuse.clear()
    engine.ready.add("c-filling")
    q.step()
    assert engine.started == ["filling"]                      # the failed one is not tried again


def test_a_job_started_outside_the_queue_holds_gpus_and_no_gpus_is_said(tmp_path):
    engine = Engine()
    engine.add("legacy", gpus=2, state="running")             # no grant: it holds the first two
    engine.add("waiting")
    q, _ = queue(tmp_path, engine)
    assert q.step()["jobs"]["waiting"]["wait"]["in_use"] == 2 and engine.started == []
    bare = Engine()
    bare.add("x")
    q2, _ = queue(tmp_path / "nogpu", bare, gpus=[])
    assert q2.step()["jobs"] == {"x": {"wait": {"position": None,
                                                "words": "waiting for GPUs: nvidia-smi lists none on the host"}}}
    assert bare.started == []


def test_nvidia_smi_lines_to_uuids():
    assert parse_gpu_uuids("0, GPU-a\n1, GPU-b\n\n[N/A]\n") == ["GPU-a", "GPU-b"]
