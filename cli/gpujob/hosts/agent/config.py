"""The agent's config, ``/etc/gpujob/agent.json`` (written by the provisioner): AgentConfig and
its checks, which list every problem at once."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping

from gpujob.hosts.layout import HostLayout

CHECK_INTERVAL_S = 60
QUEUE_INTERVAL_S = 1.0   # how often the GPU queue starts what may start (between the checks)


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
    queue_interval_s: float = QUEUE_INTERVAL_S
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


def is_number(value: Any) -> bool:
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
    if not is_number(value):
        return None, f"must be a number{' or null' if optional else ''}, got {value!r}"
    value = float(value)
    if name == "gpu_busy_percent" and not 0 <= value <= 100:
        return None, f"must be between 0 and 100, got {value:g}"
    if name == "stop_grace_s" and value < 0:
        return None, f"must be 0 or more, got {value:g}"
    if name in ("idle_minutes", "check_interval_s", "queue_interval_s", "hung_minutes_default") and value <= 0:
        return None, f"must be more than 0, got {value:g}"
    return value, None


def load_config(path: str) -> AgentConfig:
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as e:
        raise ConfigError([f"cannot read it: {e.strerror or e}"], f"agent config {path}") from None
    return AgentConfig.from_json(text, source=f"agent config {path}")

