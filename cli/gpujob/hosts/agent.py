"""The idle agent: runs on a rented GPU host and terminates that host once nothing uses it.

Installed by the provisioner as ``/opt/gpujob/agent.py`` (next to ``lambda_api.py`` and
``layout.py``) and run by systemd as ``/usr/bin/python3 /opt/gpujob/agent.py --config
/etc/gpujob/agent.json``. Standard library only (``pynvml`` from nvidia-ml-py is used when
importable). ``python -m gpujob.hosts.agent --config FILE --once`` runs one check and prints it.

Every ``check_interval_s`` (60 s) the agent looks at the host. Each of these counts as activity
and resets the idle timer:

* a running gpujob container (label ``gpujob.dev/managed-by=gpujob``) that is not hung:
  "job abc123 running";
* a gpujob container that is not running but still exists (exited, dead, created, paused): the
  client removes a container only after it has saved its log and outputs, so one that still
  exists has results waiting to be collected: "job abc123 ended; its log and outputs not
  collected yet" (bounded by ``hard_deadline``);
* any GPU whose utilisation is at or above ``gpu_busy_percent``: "GPU 0 at 87%";
* an interactive SSH session, when ``ssh_keeps_alive``: "1 SSH session". Interactive means the
  session has a terminal: its sshd process is titled ``sshd: USER@pts/N`` (``sshd-session:`` on
  OpenSSH 9.8+), found by scanning ``/proc/*/cmdline``. Sessions without a terminal
  (``sshd: USER@notty``: ``ssh host CMD``, scp, sftp, and gpujob's own commands, which never ask
  for one) do not count;
* a file in ``uploads_dir`` (an output upload in flight writes one, named after its job):
  "upload pending for job abc123".

What does not count: CPU load, network traffic, GPU memory in use while utilisation is below the
threshold, containers without the gpujob label, SSH sessions without a terminal, the agent
itself, a hung job (below), and a container the agent stopped as hung (its container is left for
the client to collect, but it does not keep the host up).

A probe that fails (Docker down, NVML broken, /proc unreadable) is *no evidence of activity*: a
broken Docker engine cannot keep a host billing forever. The probes are independent, so GPU
utilisation still protects a running job while Docker does not answer. Nothing that goes wrong in
a probe or a step stops the agent: the exception is logged and listed in the heartbeat.

Decisions, in this order, each tick:

1. Hung jobs. A running container that has reported at least one progress-protocol event
   (``@gpujob/v1 {...}`` in its log, any event) and whose last event is older than its
   ``gpujob.dev/idle-minutes`` label (``hung_minutes_default`` for containers without the
   label; never, when neither is set) is stopped (SIGTERM, SIGKILL after ``stop_grace_s``) and
   ``hung/<job id>.json`` is written for the client. The last event's time is the engine's
   timestamp of that log line (the last ``LOG_TAIL_LINES`` lines are read each tick; the newest
   event seen is remembered across ticks). Events from before the container's latest start do
   not count.
2. Hard deadline. At or past ``hard_deadline`` (launch time + the maximum lifetime) the host is
   terminated whatever is going on, after stopping the running gpujob containers with
   ``stop_grace_s`` of grace so jobs can save a checkpoint.
3. Idle. Once no activity has been seen for ``idle_minutes`` the host terminates itself. The
   idle timer counts from the last check that saw activity, so the host goes at the first check
   at least ``idle_minutes`` after that: never before, at most one check interval late.

Terminating calls the cloud API for this instance. A failure is retried at every following
check (the heartbeat shows ``terminate_error``) until the API answers that the instance is
terminating or terminated. A terminate for idleness that has not gone through yet is called off
when activity comes back; one for the hard deadline never is. If the host is still up
``TERMINATE_REISSUE_S`` after the API said it was terminating, the agent asks again.

Restarts: the heartbeat file keeps the idle timer. On start the agent reads it back and resumes
the timer where the last heartbeat left it (``idle_for_s``): time while the agent was not running
(a reboot, a crash, a service restart) counts neither as idle nor as activity, so a restart
neither resets the timer to "just now" nor terminates at once. A restart counts as activity
(the timer starts at zero) only when there is no readable heartbeat for this instance, i.e. on
the host's first start.

After every check the agent writes ``heartbeat.json`` atomically (0644): the client reads it over
SSH to know the agent is alive and what it sees. It logs to ``agent.log`` in the state
directory (size-capped, rotated) and to stdout (journald). The Lambda API key is read from its
0600 file only when terminating; it never appears in a command line, a child's environment, the
heartbeat or the log.
"""

from __future__ import annotations

import argparse
import calendar
import http.client
import json
import logging
import logging.handlers
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.parse
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable, Iterable, Mapping, Protocol

try:
    from gpujob.hosts.layout import HostLayout
except ImportError:  # run as /opt/gpujob/agent.py: the siblings are files next to this one
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from layout import HostLayout  # type: ignore[no-redef]

HEARTBEAT_VERSION = 1
CHECK_INTERVAL_S = 60
LOG_TAIL_LINES = 200             # log lines read per running container per check
LOG_MAX_BYTES = 4 << 20          # ...and at most this much of them
DOCKER_TIMEOUT_S = 15
NVIDIA_SMI_TIMEOUT_S = 15
TERMINATE_REISSUE_S = 600        # still alive this long after the API said "terminating": ask again
AGENT_LOG_MAX_BYTES = 1 << 20
AGENT_LOG_BACKUPS = 3

MANAGED_LABEL = "gpujob.dev/managed-by"
ID_LABEL = "gpujob.dev/id"
IDLE_MINUTES_LABEL = "gpujob.dev/idle-minutes"
EVENT_PREFIX = "@gpujob/v1 "
EVENT_MAX_CHARS = 64 * 1024      # a longer line holds no event (gpujob.events.MAX_EVENT_CHARS)
EVENT_NAME = re.compile(r"[A-Za-z0-9_.\-]{1,40}")
EVENT_MAX_DEPTH = 16             # an object nested deeper is not an event (gpujob.events.MAX_DEPTH)
TERMINAL_STATUSES = ("terminating", "terminated", "preempted")   # the instance is going or gone
NOT_RUNNING_STATES = ("exited", "dead", "created", "paused")

logger = logging.getLogger("gpujob.agent")


# --------------------------------------------------------------------------- config


class ConfigError(ValueError):
    """The agent's config is unusable; ``problems`` lists every reason, one per line."""

    def __init__(self, problems: list[str], source: str = "agent config") -> None:
        self.problems = problems
        self.source = source
        super().__init__(f"invalid {source}:\n" + "\n".join(f"  {p}" for p in problems))


@dataclass(frozen=True)
class AgentConfig:
    """/etc/gpujob/agent.json, written by the provisioner. Unknown keys are ignored (an older
    agent reads a newer file); missing required keys and wrong types are errors."""

    instance_id: str                       # the cloud instance this agent runs on (and terminates)
    idle_minutes: float                    # terminate after this long without activity
    api_base_url: str | None = None        # cloud API base URL; None: lambda_api's default
    hard_deadline: float | None = None     # epoch seconds (launch + max lifetime); None: none
    check_interval_s: float = CHECK_INTERVAL_S
    gpu_busy_percent: float = 10.0         # utilisation at or above this on any GPU is activity
    ssh_keeps_alive: bool = True           # an interactive SSH session is activity
    hung_minutes_default: float | None = None  # hung-job limit for containers without the label
    stop_grace_s: float = 30               # SIGTERM -> SIGKILL when the agent stops a container
    root: str = "/"                        # HostLayout.root: "/" on a real host
    docker_host: str = HostLayout.docker_host

    @property
    def layout(self) -> HostLayout:
        return HostLayout(root=self.root, docker_host=self.docker_host)

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, data: str | bytes | Mapping[str, Any], source: str = "agent config") -> AgentConfig:
        if isinstance(data, (str, bytes)):
            try:
                data = json.loads(data)
            except ValueError as e:
                raise ConfigError([f"not valid JSON: {e}"], source) from None
        if not isinstance(data, Mapping):
            raise ConfigError([f"expected a JSON object, got {type(data).__name__}"], source)
        problems: list[str] = []
        values: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                if f.name in _REQUIRED:
                    problems.append(f"{f.name}: missing required key")
                continue
            value, problem = _check(f.name, data[f.name])
            if problem:
                problems.append(f"{f.name}: {problem}")
            else:
                values[f.name] = value
        if problems:
            raise ConfigError(problems, source)
        return cls(**values)


_REQUIRED = ("instance_id", "idle_minutes")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value


def _check(name: str, value: Any) -> tuple[Any, str | None]:
    """(the value, None) or (None, what is wrong with it)."""
    if name in ("instance_id", "root"):
        if not isinstance(value, str) or not value.strip():
            return None, f"must be a non-empty string, got {value!r}"
        return value, None
    if name == "docker_host":
        if not isinstance(value, str) or not value.startswith(("unix:///", "tcp://")):
            return None, f"must be unix:///PATH or tcp://HOST:PORT, got {value!r}"
        return value, None
    if name == "api_base_url":
        if value is not None and (not isinstance(value, str) or not value.startswith(("http://", "https://"))):
            return None, f"must be null or an http(s) URL, got {value!r}"
        return value, None
    if name == "ssh_keeps_alive":
        if not isinstance(value, bool):
            return None, f"must be true or false, got {value!r}"
        return value, None
    optional = name in ("hard_deadline", "hung_minutes_default")
    if value is None and optional:
        return None, None
    if not _number(value):
        return None, f"must be a number{' or null' if optional else ''}, got {value!r}"
    value = float(value)
    if name == "gpu_busy_percent" and not 0 <= value <= 100:
        return None, f"must be between 0 and 100, got {value:g}"
    if name == "stop_grace_s" and value < 0:
        return None, f"must be 0 or more, got {value:g}"
    if name in ("idle_minutes", "check_interval_s", "hung_minutes_default") and value <= 0:
        return None, f"must be more than 0, got {value:g}"
    return value, None


def load_config(path: str) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError([f"cannot read it: {e.strerror or e}"], f"agent config {path}") from None
    return AgentConfig.from_json(text, source=f"agent config {path}")


# --------------------------------------------------------------------------- what the probes see


@dataclass
class ContainerInfo:
    id: str                                # the engine's container id
    job_id: str                            # label gpujob.dev/id (the short container id without one)
    state: str                             # running, exited, created, ...
    name: str = ""
    started_at: float | None = None        # epoch seconds of the latest start
    idle_minutes: float | None = None      # label gpujob.dev/idle-minutes (the job's limits.idle_minutes)
    last_event_at: float | None = None     # engine timestamp of the last @gpujob/v1 line in the log tail


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


# --------------------------------------------------------------------------- real probes


class DockerError(RuntimeError):
    """The engine answered with an error (``status``), or did not answer (``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerEngine:
    """The few Docker Engine API calls the agent makes, with http.client (unix:// or tcp://)."""

    def __init__(self, docker_host: str, timeout_s: float = DOCKER_TIMEOUT_S) -> None:
        self.docker_host = docker_host
        self.timeout_s = timeout_s
        url = urllib.parse.urlsplit(docker_host)
        if url.scheme == "unix":
            self._unix = url.path
        elif url.scheme in ("tcp", "http"):
            self._unix = None
            self._netloc = (url.hostname or "localhost", url.port or 2375)
        else:
            raise ValueError(f"unsupported docker_host {docker_host!r}: use unix:///path or tcp://host:port")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._unix is not None:
            return _UnixHTTPConnection(self._unix, timeout)
        return http.client.HTTPConnection(*self._netloc, timeout=timeout)

    def _open(self, method: str, path: str, query: Mapping[str, Any] | None, ok: Iterable[int],
              timeout: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        conn = self._connection(self.timeout_s if timeout is None else timeout)
        try:
            try:
                conn.request(method, path, headers={"Host": "docker"})
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise DockerError(f"cannot reach the Docker engine at {self.docker_host}: {e}") from e
            if resp.status not in tuple(ok):
                body = resp.read(4096)
                try:
                    message = json.loads(body).get("message") or ""
                except (ValueError, AttributeError):
                    message = body[:200].decode(errors="replace")
                raise DockerError(f"the Docker engine answered {resp.status} to {method} {path.split('?')[0]}: "
                                  f"{message}", resp.status)
        except BaseException:
            conn.close()
            raise
        return conn, resp

    def request(self, method: str, path: str, query: Mapping[str, Any] | None = None, *,
                ok: Iterable[int] = (200,), timeout: float | None = None) -> bytes:
        """The body of the answer; DockerError for a status not in ``ok``."""
        conn, resp = self._open(method, path, query, ok, timeout)
        try:
            return resp.read()
        finally:
            conn.close()

    def get_json(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return json.loads(self.request("GET", path, query))

    def list_containers(self, states: Iterable[str]) -> list[dict[str, Any]]:
        filters = {"label": [f"{MANAGED_LABEL}=gpujob"], "status": list(states)}
        return self.get_json("/containers/json", {"all": "1", "filters": json.dumps(filters)})

    def inspect(self, container_id: str) -> dict[str, Any]:
        return self.get_json(f"/containers/{urllib.parse.quote(container_id)}/json")

    def log_tail(self, container_id: str, lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_MAX_BYTES) -> str:
        """The last ``lines`` lines of stdout and stderr, each behind the engine's timestamp (at
        most the last ``max_bytes`` of them). Without a TTY the engine sends a multiplexed stream:
        frames of an 8-byte header (stream type: 1 stdout, 2 stderr; three zero bytes; the
        payload's size, big-endian) and the payload. With one it sends the raw bytes."""
        conn, resp = self._open("GET", f"/containers/{urllib.parse.quote(container_id)}/logs",
                                {"stdout": "1", "stderr": "1", "timestamps": "1", "tail": str(lines)},
                                (200,), None)
        kept = bytearray()
        try:
            head = _read_exact(resp, 8)
            if "multiplexed" in (resp.getheader("Content-Type") or "") or _looks_multiplexed(head):
                while len(head) == 8:
                    (size,) = struct.unpack(">I", head[4:8])
                    kept += _read_exact(resp, size)
                    del kept[:max(0, len(kept) - max_bytes)]
                    head = _read_exact(resp, 8)
            else:
                kept += head
                while True:
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    kept += chunk
                    del kept[:max(0, len(kept) - max_bytes)]
        finally:
            conn.close()
        return kept.decode("utf-8", errors="replace")

    def stop(self, container_id: str, grace_s: float) -> None:
        """The engine sends the stop signal (SIGTERM), then SIGKILL after grace_s; gone is fine."""
        self.request("POST", f"/containers/{urllib.parse.quote(container_id)}/stop", {"t": str(int(grace_s))},
                     ok=(204, 304, 404), timeout=grace_s + self.timeout_s + 15)


def _read_exact(resp: http.client.HTTPResponse, size: int) -> bytes:
    """``size`` bytes, or fewer at the end of the stream."""
    parts = []
    while size > 0:
        chunk = resp.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _looks_multiplexed(head: bytes) -> bool:
    # a frame header: stream 0-2, three zero bytes. A raw (TTY) stream with timestamps starts
    # with a digit instead.
    return len(head) == 8 and head[0] in (0, 1, 2) and head[1:4] == b"\0\0\0"


_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)(?:[.,](\d+))?(Z|[+-]\d\d:?\d\d)?")


def parse_docker_time(text: str | None) -> float | None:
    """RFC 3339 with nanoseconds ("2024-05-01T12:00:00.123456789Z") to epoch seconds; None for
    the engine's "never" (year 1) or anything unparsable. No datetime.fromisoformat: the host's
    python3 may be 3.10, which takes neither "Z" nor nine digits."""
    m = _TIME.match(text or "")
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups()[:6])
    if year < 1971:
        return None
    value = float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    if m.group(7):
        value += float("0." + m.group(7))
    zone = m.group(8)
    if zone and zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        digits = zone[1:].replace(":", "")
        value -= sign * (int(digits[:2]) * 3600 + int(digits[2:]) * 60)
    return value


def has_event(line: str) -> bool:
    """True when the line holds a progress-protocol event: the prefix, then a JSON object with an
    "event" key (a stdlib copy of gpujob.events.parse_line's test; the host has no gpujob).
    Never raises: a line over EVENT_MAX_CHARS holds no event, nor does an object nested deeper than
    EVENT_MAX_DEPTH (or too deep to decode at all) or one with a number too long to read."""
    if len(line) > EVENT_MAX_CHARS:
        return False
    start = line.find(EVENT_PREFIX)
    decoder = json.JSONDecoder()
    while start != -1:
        body = start + len(EVENT_PREFIX)
        try:
            obj, _ = decoder.raw_decode(line, body)
        except (ValueError, RecursionError, OverflowError):
            pass
        else:
            if (isinstance(obj, dict) and isinstance(obj.get("event"), str) and EVENT_NAME.fullmatch(obj["event"])
                    and _shallow(obj)):
                return True
        start = line.find(EVENT_PREFIX, body)
    return False


def _shallow(obj) -> bool:
    """True when lists and dicts nest at most EVENT_MAX_DEPTH deep in ``obj`` (no recursion)."""
    stack = [(obj, 1)]
    while stack:
        value, depth = stack.pop()
        if isinstance(value, dict):
            value = value.values()
        elif not isinstance(value, list):
            continue
        if depth > EVENT_MAX_DEPTH:
            return False
        stack.extend((v, depth + 1) for v in value if isinstance(v, (dict, list)))
    return True


def last_event_time(log: str) -> float | None:
    """The engine timestamp of the last line in a timestamped log that holds an event."""
    for line in reversed(log.split("\n")):  # not splitlines(): a progress bar's \r is not a new line
        stamp, _, text = line.partition(" ")
        if EVENT_PREFIX.strip() in text and has_event(text):
            return parse_docker_time(stamp)
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
                             idle_minutes=_float_or_none(labels.get(IDLE_MINUTES_LABEL)))

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
            info.started_at = parse_docker_time((details.get("State") or {}).get("StartedAt"))
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


# --------------------------------------------------------------------------- the agent

_EXPECTED = (DockerError, OSError, subprocess.SubprocessError, http.client.HTTPException)


@dataclass
class Decision:
    """What one check saw and did."""

    at: float
    activity: list[str]                    # what kept the host up this check (empty: idle)
    idle_since: float                      # the idle timer counts from here
    idle_for_s: float
    action: str = "none"                   # none | terminate | terminate-failed | terminating
    reason: str | None = None              # why the host is being terminated
    retry: bool = False                    # this check repeated a terminate that had failed
    terminate_error: str | None = None
    ignored: list[str] = field(default_factory=list)   # seen, but not activity (and why)
    hung: list[str] = field(default_factory=list)      # job ids stopped as hung this check
    stopped: list[str] = field(default_factory=list)   # job ids stopped for the hard deadline
    errors: list[str] = field(default_factory=list)    # "step: error" for each failure this check

    @property
    def terminating(self) -> bool:
        return self.action != "none"

    def summary(self) -> str:
        if self.action == "terminate":
            return f"terminating the instance: {self.reason}"
        if self.action == "terminate-failed":
            return f"terminate failed ({self.terminate_error}); retrying at the next check: {self.reason}"
        if self.action == "terminating":
            return "the API reports the instance terminating"
        if self.activity:
            return "active: " + "; ".join(self.activity)
        return f"idle for {_minutes(self.idle_for_s)}"


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.1f} min"


class Agent:
    """The idle check. ``tick()`` runs one; ``run_forever()`` runs one every check_interval_s.
    ``terminate()`` asks the cloud to terminate this instance and returns once the API reports it
    terminating or terminated; anything it raises is a failure to retry."""

    def __init__(self, config: AgentConfig, probes: Probes, terminate: Callable[[], None], *,
                 clock: Callable[[], float] = time.time, log: logging.Logger | None = None) -> None:
        self.config = config
        self.layout = config.layout
        self.probes = probes
        self.terminate = terminate
        self.clock = clock
        self.log = log or logger
        self.started_at = clock()
        self.idle_since = self.started_at
        self.error_counts: dict[str, int] = {}
        self._reason: str | None = None        # a terminate is wanted, for this reason
        self._deadline = False                 # ...because of the hard deadline (never called off)
        self._confirmed_at: float | None = None  # the API said terminating at this time
        self._terminate_error: str | None = None
        self._attempts = 0
        self._last_event: dict[tuple[str, float | None], float] = {}  # (container, started_at) -> newest event
        self._hung: dict[str, str] = {}        # container id -> job id, stopped (or being stopped) as hung
        self._errors: list[str] = []
        self._jobs: list[dict[str, Any]] = []   # what the last check saw of each job, for the heartbeat
        self._restore()

    # -- restart

    def _restore(self) -> None:
        """Resume the idle timer from the last heartbeat (see the module docstring)."""
        try:
            with open(self.layout.heartbeat_path, encoding="utf-8") as fh:
                beat = json.load(fh)
        except FileNotFoundError:
            self.log.info("no heartbeat yet: the idle timer starts now")
            return
        except (OSError, ValueError) as e:
            self.log.warning("cannot read the last heartbeat (%s): the idle timer starts now", e)
            return
        if not isinstance(beat, dict) or beat.get("instance_id") != self.config.instance_id:
            self.log.info("the heartbeat is for another instance: the idle timer starts now")
            return
        idle_for = beat.get("idle_for_s")
        if _number(idle_for):
            self.idle_since = self.started_at - max(0.0, float(idle_for))
            self.log.info("restarted: idle for %s at the last heartbeat; the timer resumes from there",
                          _minutes(float(idle_for)))
        for job in beat.get("jobs") or []:
            if isinstance(job, dict) and isinstance(job.get("container"), str) and _number(job.get("last_event_at")):
                started = job.get("started_at") if _number(job.get("started_at")) else None
                self._last_event[(job["container"], started)] = float(job["last_event_at"])

    # -- one check

    def _guard(self, step: str, fn: Callable[[], Any], default: Any = None) -> Any:
        """fn(), or ``default`` when it raises: the failure is logged and listed in the heartbeat."""
        try:
            return fn()
        except Exception as e:
            self._failed(step, e)
            return default

    def _failed(self, step: str, e: BaseException) -> None:
        message = f"{step}: {type(e).__name__}: {e}"[:500]
        self._errors.append(message)
        count = self.error_counts[step] = self.error_counts.get(step, 0) + 1
        # a traceback for a failure that is not the host's plain trouble (Docker down, a file
        # missing, a command failing), once per step; otherwise one line
        trace = count == 1 and not isinstance(e, _EXPECTED)
        self.log.warning("%s (failure %d)", message, count, exc_info=(type(e), e, e.__traceback__) if trace else None)

    def tick(self) -> Decision:
        self._errors = []
        now = self.clock()
        try:
            decision = self._decide(now)
        except Exception as e:  # a bug in the agent itself: report it, keep the timer as it was
            self._failed("decide", e)
            decision = Decision(at=now, activity=[], idle_since=self.idle_since,
                                idle_for_s=max(0.0, now - self.idle_since))
        decision.errors = list(self._errors)
        self._guard("heartbeat", lambda: self._write_heartbeat(decision))
        self.log.info("%s", decision.summary())
        return decision

    def _decide(self, now: float) -> Decision:
        cfg = self.config
        activity: list[str] = []
        ignored: list[str] = []
        running = self._guard("containers", self.probes.containers)
        stopped = self._guard("exited_unsaved", self.probes.exited_unsaved, [])
        gpus = self._guard("gpu_utilisation", self.probes.gpu_utilisation)
        ssh = self._guard("ssh_sessions", self.probes.ssh_sessions, 0)
        uploads = self._guard("uploads_pending", self.probes.uploads_pending, [])
        decision = Decision(at=now, activity=activity, idle_since=self.idle_since, idle_for_s=0.0,
                            ignored=ignored)
        self._jobs = []

        # running jobs, and hung ones
        if running is not None:
            self._forget_gone(running)
        for c in running or []:
            last = self._remember_event(c)
            limit = c.idle_minutes if c.idle_minutes is not None else cfg.hung_minutes_default
            hung = c.id in self._hung or (last is not None and limit is not None and now - last >= limit * 60)
            self._jobs.append({"job_id": c.job_id, "container": c.id, "state": c.state, "started_at": c.started_at,
                               "last_event_at": last, "idle_minutes": limit, "hung": hung})
            if not hung:
                activity.append(f"job {c.job_id} running")
                continue
            ignored.append(f"job {c.job_id} hung: no progress events for {limit:g} minutes")
            if self._guard(f"stop hung job {c.job_id}", lambda c=c: self.probes.stop_container(c.id, cfg.stop_grace_s),
                           "failed") != "failed":
                self._guard(f"hung record for job {c.job_id}", lambda c=c: self._write_hung(c, last, limit, now))
                decision.hung.append(c.job_id)
            self._hung[c.id] = c.job_id

        for c in stopped:
            self._jobs.append({"job_id": c.job_id, "container": c.id, "state": c.state})
            if c.id in self._hung or self._hung_record_exists(c.job_id):
                ignored.append(f"job {c.job_id} stopped as hung; not waiting for its log and outputs")
            elif c.state == "created":
                activity.append(f"job {c.job_id} created; not started yet")
            elif c.state == "paused":
                activity.append(f"job {c.job_id} paused")
            else:
                activity.append(f"job {c.job_id} ended; its log and outputs not collected yet")

        for index, value in enumerate(gpus or []):
            if value is None:
                continue
            text = f"GPU {index} at {value:g}%"
            (activity if value >= cfg.gpu_busy_percent else ignored).append(text)

        if ssh:
            text = f"{ssh} SSH session{'s' if ssh != 1 else ''}"
            if cfg.ssh_keeps_alive:
                activity.append(text)
            else:
                ignored.append(f"{text} (ssh_keeps_alive is off)")

        activity.extend(f"upload pending for job {job}" for job in uploads)

        # the hard deadline, then idleness
        if cfg.hard_deadline is not None and now >= cfg.hard_deadline:
            if not self._deadline:
                self._reason = f"past the hard deadline ({_iso(cfg.hard_deadline)})"
                self._deadline = True
                self._confirmed_at = None
            for c in running or []:
                if c.id in self._hung:
                    continue
                if self._guard(f"stop job {c.job_id} at the deadline",
                               lambda c=c: self.probes.stop_container(c.id, cfg.stop_grace_s), "failed") != "failed":
                    decision.stopped.append(c.job_id)
        if activity:
            self.idle_since = now
            if self._reason and not self._deadline and self._confirmed_at is None:
                self.log.warning("activity again (%s): calling off the terminate that had not gone through",
                                 "; ".join(activity))
                self._reason, self._terminate_error, self._attempts = None, None, 0
        elif not self._reason and now - self.idle_since >= cfg.idle_minutes * 60:
            self._reason = f"idle for {_minutes(now - self.idle_since)} (idle_minutes: {cfg.idle_minutes:g})"
        decision.idle_since = self.idle_since
        decision.idle_for_s = max(0.0, now - self.idle_since)
        decision.reason = self._reason
        if self._reason:
            self._terminate_step(now, decision)
        return decision

    def _terminate_step(self, now: float, decision: Decision) -> None:
        if self._confirmed_at is not None and now - self._confirmed_at < TERMINATE_REISSUE_S:
            decision.action = "terminating"
            return
        if self._confirmed_at is not None:
            self.log.warning("still running %s after the API said terminating: asking again",
                             _minutes(now - self._confirmed_at))
        decision.retry = self._attempts > 0
        self._attempts += 1
        self.log.warning("terminating instance %s (attempt %d): %s", self.config.instance_id, self._attempts,
                         self._reason)
        try:
            self.terminate()
        except Exception as e:
            self._terminate_error = f"{type(e).__name__}: {e}"[:500]
            self._errors.append(f"terminate: {self._terminate_error}")
            self.error_counts["terminate"] = self.error_counts.get("terminate", 0) + 1
            self.log.error("terminate failed (%s); retrying at the next check", self._terminate_error)
            decision.action = "terminate-failed"
        else:
            self._terminate_error = None
            self._confirmed_at = now
            decision.action = "terminate"
        decision.terminate_error = self._terminate_error

    def _remember_event(self, c: ContainerInfo) -> float | None:
        """The newest event seen for this run of the container (not counting earlier runs)."""
        key = (c.id, c.started_at)
        last = c.last_event_at
        if last is not None and c.started_at is not None and last < c.started_at:
            last = None  # from before the container's latest start
        known = self._last_event.get(key)
        if known is not None and (last is None or known > last):
            last = known
        if last is not None:
            self._last_event[key] = last
        return last

    def _forget_gone(self, running: list[ContainerInfo]) -> None:
        ids = {c.id for c in running}
        self._last_event = {k: v for k, v in self._last_event.items() if k[0] in ids}

    # -- files

    def _hung_record_exists(self, job_id: str) -> bool:
        return os.path.exists(os.path.join(self.layout.hung_dir, _safe_name(job_id) + ".json"))

    def _write_hung(self, c: ContainerInfo, last: float | None, limit: float, now: float) -> None:
        record = {"job_id": c.job_id, "container_id": c.id, "instance_id": self.config.instance_id,
                  "last_event_at": last, "stopped_at": now, "idle_minutes": limit,
                  "reason": f"no progress events for {limit:g} minutes; stopped as hung"}
        write_json_atomic(os.path.join(self.layout.hung_dir, _safe_name(c.job_id) + ".json"), record)
        self.log.warning("job %s stopped as hung: last progress event at %s", c.job_id, _iso(last))

    def heartbeat(self, decision: Decision) -> dict[str, Any]:
        return {
            "version": HEARTBEAT_VERSION,
            "at": decision.at,
            "instance_id": self.config.instance_id,
            "pid": os.getpid(),
            "agent_started_at": self.started_at,
            "check_interval_s": self.config.check_interval_s,
            "idle_since": decision.idle_since,
            "idle_for_s": round(decision.idle_for_s, 3),
            "idle_minutes": self.config.idle_minutes,
            "hard_deadline": self.config.hard_deadline,
            "activity": decision.activity,
            "ignored": decision.ignored,
            "jobs": self._jobs,
            "hung": sorted(set(self._hung.values())),
            "terminating": decision.terminating,
            "terminate_reason": decision.reason,
            "terminate_confirmed": self._confirmed_at is not None,
            "terminate_error": decision.terminate_error,
            "errors": decision.errors,
            "error_counts": dict(self.error_counts),
        }

    def _write_heartbeat(self, decision: Decision) -> None:
        write_json_atomic(self.layout.heartbeat_path, self.heartbeat(decision))

    # -- the loop

    def run_forever(self, sleep: Callable[[float], None] = time.sleep, *, max_ticks: int | None = None) -> None:
        self.log.info("gpujob agent for instance %s: idle_minutes %g, checks every %gs, hard deadline %s",
                      self.config.instance_id, self.config.idle_minutes, self.config.check_interval_s,
                      _iso(self.config.hard_deadline) if self.config.hard_deadline else "none")
        ticks = 0
        while max_ticks is None or ticks < max_ticks:
            started = self.clock()
            try:
                self.tick()
            except Exception:  # tick() guards itself; this is the last line of defence
                self.log.exception("the check failed")
            ticks += 1
            if max_ticks is not None and ticks >= max_ticks:
                break
            sleep(max(1.0, self.config.check_interval_s - (self.clock() - started)))


def _safe_name(job_id: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", job_id) or "_"


def _iso(epoch: float | None) -> str:
    if epoch is None:
        return "never"
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(epoch))


def write_json_atomic(path: str, data: Any, mode: int = 0o644) -> None:
    """Write to a temporary file next to ``path``, then rename it over: readers see the old file
    or the new one, never half of one."""
    directory = os.path.dirname(path)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
            fh.write("\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)  # not subject to the umask
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


# --------------------------------------------------------------------------- default wiring


def _lambda_api():
    try:
        from gpujob.hosts import lambda_api
    except ImportError:
        import lambda_api  # type: ignore[no-redef]  # /opt/gpujob/lambda_api.py
    return lambda_api


def read_api_key(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as fh:
            key = fh.read().strip()
    except OSError as e:
        raise RuntimeError(f"cannot read the API key file {path}: {e.strerror or e}") from None
    if not key:
        raise RuntimeError(f"the API key file {path} is empty")
    return key


def lambda_terminator(instance_id: str, api_key_path: str, base_url: str | None = None, *,
                      client_factory: Callable[[str, str | None], Any] | None = None) -> Callable[[], None]:
    """terminate() for Agent: asks the Lambda API to terminate ``instance_id`` and returns once the
    API reports it terminating or terminated, else raises. The key is read from its file at each
    call (so a key put in place later is used) and scrubbed from any error message."""

    def default_factory(key: str, url: str | None) -> Any:
        return _lambda_api().LambdaClient(key, url)

    factory = client_factory or default_factory

    def terminate() -> None:
        key = read_api_key(api_key_path)
        try:
            client = factory(key, base_url)
            try:
                answered = client.terminate([instance_id])
            except Exception as e:  # a repeated terminate may be refused: see what the instance is doing
                try:
                    status = client.instance(instance_id).status
                except Exception:
                    raise e from None
                if status in TERMINAL_STATUSES:
                    return
                raise
            statuses = [getattr(i, "status", None) for i in answered or []
                        if getattr(i, "id", instance_id) == instance_id]
            if any(s in TERMINAL_STATUSES for s in statuses):
                return
            status = client.instance(instance_id).status
            if status not in TERMINAL_STATUSES:
                raise RuntimeError(f"the API accepted the terminate but reports the instance {status}")
        except Exception as e:
            text = str(e)
            if key in text:
                raise RuntimeError(f"{type(e).__name__}: {text.replace(key, '***')}") from None
            raise

    return terminate


_handlers: list[logging.Handler] = []


def setup_logging(host_layout: HostLayout, stream: Any = None) -> None:
    """agent.log in the state directory (rotated at 1 MiB, 3 kept) and stdout (journald)."""
    close_logging()
    console = logging.StreamHandler(stream or sys.stdout)
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    _handlers.append(console)
    try:
        os.makedirs(host_layout.state_dir, mode=0o755, exist_ok=True)
        path = os.path.join(host_layout.state_dir, "agent.log")
        to_file = logging.handlers.RotatingFileHandler(path, maxBytes=AGENT_LOG_MAX_BYTES,
                                                       backupCount=AGENT_LOG_BACKUPS, encoding="utf-8")
        to_file.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        _handlers.append(to_file)
    except OSError as e:
        console.handle(logging.makeLogRecord({"levelno": logging.WARNING, "levelname": "WARNING",
                                              "msg": f"cannot write agent.log ({e}); logging to stdout only"}))
    for handler in _handlers:
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)


def close_logging() -> None:
    while _handlers:
        handler = _handlers.pop()
        logger.removeHandler(handler)
        handler.close()


def build_agent(config_path: str, *, client_factory: Callable[[str, str | None], Any] | None = None,
                probes: Probes | None = None, clock: Callable[[], float] = time.time,
                logs: bool = True, log_stream: Any = None) -> Agent:
    """The agent as the service runs it: config from ``config_path``, the real probes, and a
    terminate through the Lambda API with the key in ``layout.api_key_path``. Raises ConfigError."""
    config = load_config(config_path)
    host = config.layout
    if logs:
        setup_logging(host, log_stream)
    try:
        mode = os.stat(host.api_key_path).st_mode
        if mode & 0o077:
            logger.warning("the API key file %s can be read by others (mode %o): it should be 0600",
                           host.api_key_path, mode & 0o777)
    except OSError as e:
        logger.warning("the API key file %s is not readable (%s): the host cannot terminate itself until it is",
                       host.api_key_path, e.strerror or e)
    terminate = lambda_terminator(config.instance_id, host.api_key_path, config.api_base_url,
                                  client_factory=client_factory)
    return Agent(config, probes or HostProbes(host), terminate, clock=clock)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpujob-agent", description="Terminates this GPU host once it is idle.")
    parser.add_argument("--config", default=HostLayout().config_path, help="agent.json (default: %(default)s)")
    parser.add_argument("--once", action="store_true",
                        help="run one real check (it terminates the host if that is due), print the heartbeat "
                             "to stdout (the log goes to stderr), exit")
    args = parser.parse_args(argv)
    try:
        agent = build_agent(args.config, log_stream=sys.stderr if args.once else sys.stdout)
    except ConfigError as e:
        print(f"gpujob-agent: {e}", file=sys.stderr)
        return 2
    if args.once:
        decision = agent.tick()
        print(json.dumps(agent.heartbeat(decision), indent=2, sort_keys=True))
        return 0

    def on_sigterm(signum: int, frame: Any) -> None:
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_sigterm)
    try:
        agent.run_forever()
    except (SystemExit, KeyboardInterrupt):
        logger.info("stopping (the idle timer is kept in the heartbeat)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
