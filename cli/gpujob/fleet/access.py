"""Reaching rented hosts: the Lambda Cloud API client, SSH connections with the host key pinned at
first contact, where gpujob's files are on a host, and the timings the tests shorten."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gpujob.errors import GpujobError, UserError
from gpujob.defaults import HOST_IDLE_MINUTES, HOST_MAX_LIFETIME_HOURS
from gpujob.hosts import lambda_api, ssh_keys
from gpujob.hosts.layout import HostLayout
from gpujob.hosts.ssh import HostConnection
from gpujob.hosts.ssh_keys import ensure_keypair
from gpujob.records import gpujob_home

if TYPE_CHECKING:
    from gpujob.registry import Registry
    from gpujob.records import Host

PROVIDER = "lambda"
DEFAULT_IDLE_MINUTES = float(HOST_IDLE_MINUTES)
DEFAULT_MAX_LIFETIME_S = HOST_MAX_LIFETIME_HOURS * 3600.0
FILESYSTEM_MOUNT = "/lambda/nfs/{name}"   # where Lambda mounts a persistent file system on its instances


def _env_float(name: str, default: float) -> float:
    try:
        return float(os.environ.get(name, "") or default)
    except ValueError:
        return default


def check_interval_s() -> float:
    """How often the agent looks (60 s; the tests shorten it with GPUJOB_AGENT_INTERVAL_S)."""
    return _env_float("GPUJOB_AGENT_INTERVAL_S", 60.0)


def boot_timeout_s() -> float:
    return _env_float("GPUJOB_HOST_BOOT_TIMEOUT_S", 1200.0)


def poll_s() -> float:
    return _env_float("GPUJOB_HOST_POLL_S", 5.0)


Say = Callable[[str], None]


def notice(line: str) -> None:
    """A line from gpujob itself on stderr (stdout stays what commands print)."""
    print(f"gpujob: {line}", file=sys.stderr, flush=True)


def api():
    """The Lambda Cloud API client, with the key from LAMBDA_API_KEY or $GPUJOB_HOME/lambda-api-key."""
    return lambda_api.LambdaClient(lambda_api.api_key(), base_url=os.environ.get("GPUJOB_LAMBDA_API_URL") or None)


def known_hosts_path() -> Path:
    return gpujob_home() / "known_hosts"


def layout_of(host: "Host") -> HostLayout:
    s = host.settings
    return HostLayout(root=s.get("layout_root", "/"), docker_host=s.get("docker_host", HostLayout.docker_host))


def is_pinned(alias: str) -> bool:
    return ssh_keys.is_pinned(known_hosts_path(), alias)


def connect(host: "Host", *, pin_new: bool = False, timeout_s: float = 15) -> "HostConnection":
    """An open SSH connection to the host, its key checked against the one pinned at first contact."""
    if not host.ip:
        raise GpujobError(f"host {host.name} has no address yet ({host.state})",
                          hint=f"`gpujob host up --name {host.name}` waits for it and finishes its set-up")
    key_path, _ = ensure_keypair(gpujob_home())
    conn = HostConnection(host.ip, port=host.ssh_port, user=host.ssh_user, key_path=key_path,
                          known_hosts=known_hosts_path(), alias=host.instance_id or host.name,
                          pin_new_key=pin_new, connect_timeout_s=timeout_s)
    conn.connect()
    return conn


def ssh_argv(registry: "Registry", name: str, extra: list[str]) -> list[str]:
    host = registry.get_host(name)
    if not host.active or not host.ip:
        raise UserError(f"host {name} is {host.state}; nothing to log in to",
                        hint="`gpujob host list` shows your hosts")
    if not is_pinned(host.instance_id or host.name):
        raise UserError(f"host {name}'s SSH key is not pinned yet (its set-up never reached it)",
                        hint=f"finish its set-up first: gpujob host up --name {name}")
    key_path, _ = ensure_keypair(gpujob_home())
    conn = HostConnection(host.ip, port=host.ssh_port, user=host.ssh_user, key_path=key_path,
                          known_hosts=known_hosts_path(), alias=host.instance_id or host.name)
    return conn.interactive_argv(list(extra))
