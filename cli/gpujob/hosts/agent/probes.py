"""What the agent looks at on its host: gpujob's containers and the time of the last progress
event in each log (through the Docker engine), GPU utilisation (NVML, else nvidia-smi),
interactive SSH sessions (/proc) and uploads in flight (a folder). The parsers are plain
functions of text, tested on their own."""

from __future__ import annotations

import logging
import os
import re
import subprocess
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping, Protocol

from gpujob.events import parse_line
from gpujob.hosts.agent.dockerapi import DOCKER_TIMEOUT_S, DockerEngine, DockerError
from gpujob.hosts.layout import HostLayout
from gpujob.wire import EVENT_PREFIX, GPUS_LABEL, ID_LABEL, IDLE_MINUTES_LABEL, docker_time

NVIDIA_SMI_TIMEOUT_S = 15
NOT_RUNNING_STATES = ("exited", "dead", "created", "paused")

logger = logging.getLogger("gpujob.agent")


@dataclass
class ContainerInfo:
    id: str                                # the engine's container id
    job_id: str                            # label gpujob.dev/id (the short container id without one)
    state: str                             # running, exited, created, ...
    name: str = ""
    started_at: float | None = None        # epoch seconds of the latest start
    idle_minutes: float | None = None      # label gpujob.dev/idle-minutes (the job's limits.idle_minutes)
    last_event_at: float | None = None     # engine timestamp of the last @gpujob/v1 line in the log tail
    gpus: int = 0                          # label gpujob.dev/gpus: it is in the host's GPU queue


class Probes(Protocol):
    """What the agent can find out about its host, and the one thing it does to it."""

    def containers(self) -> list[ContainerInfo]:
        """Running gpujob containers, with the time of the last progress event in each log."""

    def exited_unsaved(self) -> list[ContainerInfo]:
        """gpujob containers that are not running but still exist: their results are not collected yet."""

    def gpu_utilisation(self) -> list[float | None] | None:
        """Utilisation % per GPU (None for a GPU that does not report it); None: no GPU information."""

    def ssh_sessions(self) -> int:
        """Interactive (terminal) SSH sessions."""

    def uploads_pending(self) -> list[str]:
        """Job ids with an output upload in flight."""

    def stop_container(self, container_id: str, grace_s: float) -> None:
        """SIGTERM, then SIGKILL after grace_s."""


def has_event(line: str) -> bool:
    """True when the line holds a progress-protocol event: the prefix, then a JSON object with an
    "event" key (what :func:`gpujob.events.parse_line` finds). Never raises: a line over
    :data:`gpujob.events.MAX_EVENT_CHARS` holds no event, nor does an object nested deeper than
    :data:`gpujob.events.MAX_DEPTH` (or too deep to decode at all) or one with a number too long
    to read. A ``system`` event (sampled by a thread every few seconds, whatever the training does)
    is no sign of progress and does not count."""
    return any(event["event"] != "system" for event in parse_line(line))


def last_event_time(log: str) -> float | None:
    """The engine timestamp of the last line in a timestamped log that holds an event."""
    for line in reversed(log.split("\n")):  # not splitlines(): a progress bar's \r is not a new line
        stamp, _, text = line.partition(" ")
        if EVENT_PREFIX.strip() in text and has_event(text):
            return docker_time(stamp)
    return None


_SSHD_TTY = re.compile(r"^sshd(?:-session)?: (\S+)@((?:pts/|tty)\d+)")


def count_ssh_sessions(cmdlines: Iterable[str]) -> int:
    """Interactive SSH sessions among process command lines: sshd retitles the process that
    serves a session ``sshd: USER@pts/N`` when it has a terminal, ``sshd: USER@notty`` when not
    (``ssh host CMD``, scp, sftp); the privileged monitor is ``sshd: USER [priv]``."""
    ttys = set()
    for cmdline in cmdlines:
        m = _SSHD_TTY.match(cmdline.replace("\0", " ").strip())
        if m:
            ttys.add(m.group(2))
    return len(ttys)


def proc_cmdlines(proc_root: str = "/proc") -> Iterable[str]:
    for name in os.listdir(proc_root):
        if not name.isdigit():
            continue
        try:
            with open(os.path.join(proc_root, name, "cmdline"), "rb") as fh:
                yield fh.read(4096).decode("utf-8", errors="replace")
        except OSError:  # the process ended meanwhile, or is not ours to read
            continue


def parse_nvidia_smi(text: str) -> list[float | None]:
    """``nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits``: one line per GPU,
    a number or "[N/A]" / "[Not Supported]" (None)."""
    values: list[float | None] = []
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            values.append(float(line.split(",")[0]))
        except ValueError:
            values.append(None)
    return values


class HostProbes:
    """The real probes: the Docker engine at ``layout.docker_host``, NVML or nvidia-smi, /proc,
    and ``layout.uploads_dir``. ``run`` and ``proc_root`` are seams for the tests."""

    def __init__(self, host_layout: HostLayout, *, proc_root: str = "/proc",
                 nvidia_smi: str = "nvidia-smi", use_nvml: bool = True,
                 run: Callable[..., subprocess.CompletedProcess] = subprocess.run,
                 docker_timeout_s: float = DOCKER_TIMEOUT_S) -> None:
        self.layout = host_layout
        self.docker = DockerEngine(host_layout.docker_host, docker_timeout_s)
        self.proc_root = proc_root
        self.nvidia_smi = nvidia_smi
        self._run = run
        self._nvml: Any = None if use_nvml else False   # None: not tried yet; False: unavailable
        self._nvml_ready = False

    # containers

    def _info(self, item: Mapping[str, Any]) -> ContainerInfo:
        labels = item.get("Labels") or {}
        names = item.get("Names") or [""]
        return ContainerInfo(id=item["Id"], job_id=labels.get(ID_LABEL) or item["Id"][:12],
                             state=item.get("State", ""), name=names[0].lstrip("/"),
                             idle_minutes=_float_or_none(labels.get(IDLE_MINUTES_LABEL)),
                             gpus=int(_float_or_none(labels.get(GPUS_LABEL)) or 0))

    def containers(self) -> list[ContainerInfo]:
        found = []
        for item in self.docker.list_containers(["running", "restarting"]):
            info = self._info(item)
            try:
                details = self.docker.inspect(info.id)
            except DockerError as e:
                if e.status == 404:  # removed since the list
                    continue
                raise
            info.started_at = docker_time((details.get("State") or {}).get("StartedAt"))
            try:
                info.last_event_at = last_event_time(self.docker.log_tail(info.id))
            except DockerError as e:
                if e.status == 404:
                    continue
                raise
            found.append(info)
        return found

    def exited_unsaved(self) -> list[ContainerInfo]:
        return [self._info(item) for item in self.docker.list_containers(NOT_RUNNING_STATES)]

    def stop_container(self, container_id: str, grace_s: float) -> None:
        self.docker.stop(container_id, grace_s)

    # GPUs

    def gpu_utilisation(self) -> list[float | None] | None:
        try:
            values = self._nvml_utilisation()
        except Exception as e:  # NVML broken: nvidia-smi may still answer
            logger.debug("NVML failed (%s); trying nvidia-smi", e)
            self._nvml_ready = False
            values = None
        if values is not None:
            return values
        try:
            done = self._run([self.nvidia_smi, "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=NVIDIA_SMI_TIMEOUT_S,
                             stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            return None  # no NVIDIA tooling on this host: no GPU information, not an error
        if done.returncode != 0:
            raise RuntimeError(f"nvidia-smi exited {done.returncode}: {(done.stderr or done.stdout or '').strip()[:200]}")
        return parse_nvidia_smi(done.stdout)

    def _nvml_utilisation(self) -> list[float | None] | None:
        if self._nvml is False:
            return None
        if self._nvml is None:
            try:
                import pynvml  # nvidia-ml-py
            except ImportError:
                self._nvml = False
                return None
            self._nvml = pynvml
        nvml = self._nvml
        if not self._nvml_ready:
            nvml.nvmlInit()
            self._nvml_ready = True
        values: list[float | None] = []
        for index in range(nvml.nvmlDeviceGetCount()):
            try:
                values.append(float(nvml.nvmlDeviceGetUtilizationRates(nvml.nvmlDeviceGetHandleByIndex(index)).gpu))
            except Exception:  # not supported (a MIG-enabled GPU), or the GPU is lost
                values.append(None)
        return values

    # sessions and uploads

    def ssh_sessions(self) -> int:
        return count_ssh_sessions(proc_cmdlines(self.proc_root))

    def uploads_pending(self) -> list[str]:
        try:
            names = sorted(os.listdir(self.layout.uploads_dir))
        except FileNotFoundError:
            return []
        return [os.path.splitext(n)[0] for n in names
                if not n.startswith(".") and os.path.isfile(os.path.join(self.layout.uploads_dir, n))]


def _float_or_none(text: Any) -> float | None:
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


