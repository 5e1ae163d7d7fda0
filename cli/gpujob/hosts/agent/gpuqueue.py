"""The host's GPU queue: the agent starts queued GPU jobs once their own GPUs are free. Standard library
only; the rules are :mod:`gpujob.gpu_rules`, the same as a local machine's queue.

A GPU job on a rented host is a container the client *creates* but does not start (labels
``gpujob.dev/gpus``, ``priority``, ``submitted``, ``share-gpus``; a device request for all the host's
GPUs; the grants folder mounted read-only). Every ``queue_interval_s`` (1 s) between its checks, the agent's :meth:`HostGpuQueue.step`:

1. lists the host's GPUs (``nvidia-smi --query-gpu=index,uuid``) and gpujob's containers that ask for GPUs;
2. takes the GPUs a running (or paused, restarting) one holds from its grant file (one started
   without a grant holds the first ``gpus`` GPUs, so nothing is oversubscribed);
3. for each created one, in queue order, whose files the client has finished copying in (the ready
   marker) and whose earlier start did not fail: when the rules give it GPUs, writes them to
   ``<gpu_grants_dir>/<job id>`` (the entry makes them its CUDA_VISIBLE_DEVICES) and starts it;
4. writes ``gpu_queue_path``: each job's GPUs, or its place and what it waits for, which
   ``gpujob status`` reads.

The queue is the containers themselves: nothing is lost when the agent restarts, and a job the client
cancels (its container removed) simply leaves it. Nothing is started past the hard deadline.
"""

from __future__ import annotations

import logging
import os
import subprocess
import time
from typing import Any, Callable

from gpujob.gpu_rules import Entry, decide, wait_of
from gpujob.hosts.agent.check import write_json_atomic
from gpujob.hosts.agent.dockerapi import DockerEngine, DockerError
from gpujob.hosts.layout import HostLayout
from gpujob.wire import GPUS_LABEL, ID_LABEL, PRIORITY_LABEL, READY_FILE, SHARE_LABEL, SUBMITTED_LABEL

HOLDING_STATES = ("running", "restarting", "paused")
GPU_QUERY = ["--query-gpu=index,uuid", "--format=csv,noheader"]
NVIDIA_SMI_TIMEOUT_S = 15

logger = logging.getLogger("gpujob.agent")


def parse_gpu_uuids(text: str) -> list[str]:
    """``0, GPU-5d3a...`` lines -> the UUIDs, in nvidia-smi's order."""
    found = []
    for line in text.splitlines():
        index, _, uuid = (part.strip() for part in line.partition(","))
        if index.isdigit() and uuid:
            found.append(uuid)
    return found


def nvidia_smi_uuids(nvidia_smi: str = "nvidia-smi", run: Callable[..., Any] = subprocess.run) -> list[str]:
    """The host's GPUs by UUID; none when there is no nvidia-smi; raises when it fails."""
    try:
        done = run([nvidia_smi, *GPU_QUERY], capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S,
                   stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return []
    if done.returncode != 0:
        raise RuntimeError(f"nvidia-smi exited {done.returncode}: {(done.stderr or done.stdout or '').strip()[:200]}")
    return parse_gpu_uuids(done.stdout)


class HostGpuQueue:
    """One host's GPU queue, kept in its containers; :meth:`step` starts what may start now."""

    def __init__(self, layout: HostLayout, docker: DockerEngine, gpu_uuids: Callable[[], list[str]], *,
                 clock: Callable[[], float] = time.time, log: logging.Logger | None = None) -> None:
        self.layout = layout
        self.docker = docker
        self.gpu_uuids = gpu_uuids
        self.clock = clock
        self.log = log or logger
        self._failed: dict[str, str] = {}     # container id -> why its start failed (not tried again)
        self._written: Any = None

    def step(self) -> dict[str, Any]:
        """Start the queued jobs whose GPUs are free; write and return the queue's state."""
        gpus = self.gpu_uuids()
        entries, waiting = self._entries(gpus)
        started = []
        for entry in sorted((e for e in entries if e.job_id in waiting), key=lambda e: e.order):
            got = decide(entries, entry.job_id)
            if got is None:
                continue
            if self._start(entry.job_id, waiting[entry.job_id], got):
                entry.held = got
                started.append(entry.job_id)
            else:
                entries.remove(entry)
        state = {"gpus": gpus, "jobs": {e.job_id: self._words(entries, e, gpus) for e in entries}}
        if state != self._written:  # rewritten when it changes, not every second
            write_json_atomic(self.layout.gpu_queue_path, {**state, "at": self.clock()})
            self._written = state
        self._forget({e.job_id for e in entries})
        return {**state, "started": started}

    # -- the containers

    def _entries(self, gpus: list[str]) -> tuple[list[Entry], dict[str, str]]:
        """The queue's entries (holding or waiting), and the waiting ones' container ids by job id."""
        entries, waiting = [], {}
        for item in self.docker.list_containers(["created", *HOLDING_STATES]):
            labels = item.get("Labels") or {}
            asked = _number(labels.get(GPUS_LABEL), int)
            if not asked or item["Id"] in self._failed:
                continue
            job_id = labels.get(ID_LABEL) or item["Id"][:12]
            entry = Entry(job_id, asked, list(gpus), _number(labels.get(PRIORITY_LABEL), int),
                          _number(labels.get(SUBMITTED_LABEL), float), labels.get(SHARE_LABEL) == "true")
            if item.get("State") == "created":
                waiting[job_id] = item["Id"]
            else:
                granted = self._read_grant(job_id)
                entry.held = [g for g in granted if g in gpus] or list(gpus[:asked])
            entries.append(entry)
        return entries, waiting

    def _start(self, job_id: str, container_id: str, got: list[str]) -> bool:
        """Write the grant and start the container; False when it cannot (gone, not ready, failed)."""
        try:
            if not self.docker.path_exists(container_id, READY_FILE):
                return False  # the client is still copying its files in: next time
            error = ((self.docker.inspect(container_id).get("State") or {}).get("Error") or "").strip()
            if error:
                self._failed[container_id] = error
                return False
            write_text_atomic(self._grant_path(job_id), ",".join(got))
            self.docker.start(container_id)
        except DockerError as e:
            if e.status != 404:
                self._failed[container_id] = str(e)
                self.log.warning("job %s: could not start its container: %s", job_id, e)
            self._drop_grant(job_id)
            return False
        self.log.info("job %s started on GPUs %s", job_id, ",".join(got))
        return True

    @staticmethod
    def _words(entries: list[Entry], entry: Entry, gpus: list[str]) -> dict[str, Any]:
        if entry.held:
            return {"held": entry.held}
        if not gpus:
            return {"wait": {"position": None, "words": "waiting for GPUs: nvidia-smi lists none on the host"}}
        return {"wait": wait_of(entries, entry.job_id).to_dict()}

    # -- grant files

    def _grant_path(self, job_id: str) -> str:
        return os.path.join(self.layout.gpu_grants_dir, job_id)

    def _read_grant(self, job_id: str) -> list[str]:
        try:
            with open(self._grant_path(job_id), encoding="utf-8") as fh:
                return [g for g in fh.read().strip().split(",") if g]
        except OSError:
            return []

    def _drop_grant(self, job_id: str) -> None:
        try:
            os.unlink(self._grant_path(job_id))
        except OSError:
            pass

    def _forget(self, live: set[str]) -> None:
        """Remove the grants of jobs whose containers are gone."""
        try:
            names = os.listdir(self.layout.gpu_grants_dir)
        except OSError:
            return
        for name in names:
            if name not in live and not name.startswith("."):
                self._drop_grant(name)


def _number(text: Any, kind: type) -> Any:
    try:
        return kind(text)
    except (TypeError, ValueError):
        return kind(0)


def write_text_atomic(path: str, text: str, mode: int = 0o644) -> None:
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


