"""What gpujob knows of its hosts: brought in line with the provider (:func:`sync`), the agents'
heartbeats read over SSH, and each host's idle timer in words (`gpujob host list`)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from gpujob.errors import GpujobError
from gpujob.fleet.access import Say, api, check_interval_s, connect, layout_of, notice
from gpujob.words import fmt_duration

if TYPE_CHECKING:
    from gpujob.records import Host
    from gpujob.registry import Registry


@dataclass
class HostView:
    host: "Host"
    idle: str          # the idle timer in words
    agent: str         # how the agent is doing


def sync(registry: "Registry", client=None) -> list["Host"]:
    """Bring the registry's active hosts in line with the provider (one list call): a host whose
    instance is gone or terminated is recorded as terminated."""
    hosts = registry.list_hosts(active_only=True)
    if not hosts:
        return []
    client = client or api()
    seen = {i.id: i for i in client.instances()}
    out = []
    for host in hosts:
        inst = seen.get(host.instance_id) if host.instance_id else None
        if host.instance_id and (inst is None or inst.status == "terminated"):
            reason = host.reason or "terminated (by its idle agent, or at the provider)"
            host = registry.update_host(host.name, state="terminated", reason=reason,
                                        terminated_at=host.terminated_at or _estimated_end(host, time.time()))
        elif inst is not None and inst.status == "terminating" and host.state != "terminating":
            host = registry.update_host(host.name, state="terminating", terminated_at=host.terminated_at or time.time(),
                                        reason=host.reason or "terminating (its idle agent, or the provider)")
        elif inst is not None and inst.ip and inst.ip != host.ip:
            host = registry.update_host(host.name, ip=inst.ip)
        out.append(host)
    return out


def _estimated_end(host: "Host", now: float) -> float:
    """When a host that is gone now stopped billing, as well as we can tell: its agent terminates it
    when its idle time runs out (its last heartbeat says when), and never after the hard deadline."""
    end = now
    beat = host.heartbeat
    try:
        if beat.get("terminating"):
            end = min(end, float(beat["at"]))
        elif beat.get("at") is not None and not beat.get("activity"):
            left = max(0.0, host.idle_minutes * 60 - float(beat.get("idle_for_s") or 0))
            end = min(end, float(beat["at"]) + left + check_interval_s())
    except (TypeError, ValueError, KeyError):
        pass
    if host.hard_deadline:
        end = min(end, host.hard_deadline + check_interval_s())
    return max(end, host.launched_at or end)


def read_heartbeat(registry: "Registry", host: "Host", *, timeout_s: float = 8,
                   now: Callable[[], float] = time.time) -> dict | None:
    """The agent's heartbeat file, read over SSH (None if the host cannot be reached or has none);
    a new one is recorded with the time we saw it."""
    try:
        with connect(host, timeout_s=timeout_s) as conn:
            raw = conn.read_file(layout_of(host).heartbeat_path)
    except GpujobError:
        return None
    if not raw:
        return None
    try:
        beat = json.loads(raw)
    except ValueError:
        return None
    if beat.get("at") != host.heartbeat.get("at"):
        # Written at its `at` (the host's clock), but never later than now by ours.
        try:
            written = min(now(), float(beat.get("at")))
        except (TypeError, ValueError):
            written = now()
        registry.update_host(host.name, heartbeat=beat, heartbeat_seen_at=max(written, host.heartbeat_seen_at or 0))
    return beat


def agent_silent_for(host: "Host", now: float) -> float:
    """How long (by this machine's clock) the agent's heartbeat has not changed; judged by change, not
    by the host's clock, so clock skew between the two machines cannot fool it."""
    since = host.heartbeat_seen_at or (host.launched_at or now)
    return max(0.0, now - since)


def idle_words(host: "Host", now: float | None = None) -> tuple[str, str]:
    now = now or time.time()
    if not host.active:
        return "-", "-"
    beat = host.heartbeat
    if not beat:
        return ("-", "not reporting yet" if host.state != "ready" else "no heartbeat yet")
    silent = agent_silent_for(host, now)
    agent = "ok" if silent <= 3 * max(check_interval_s(), 60) else f"silent for {fmt_duration(silent)}"
    if beat.get("terminating"):
        return "terminating", agent
    activity = beat.get("activity") or []
    if activity:
        return "busy: " + "; ".join(map(str, activity))[:60], agent
    idle_for = float(beat.get("idle_for_s") or 0)
    return f"idle {fmt_duration(idle_for)} of {fmt_duration(host.idle_minutes * 60)}", agent


def list_hosts(registry: "Registry", *, all_: bool = False, live: bool = True, say: Say = notice) -> list[HostView]:
    """The hosts, brought up to date with the provider and their agents' heartbeats; when the API
    cannot be asked (no key, no network) the registry's last word is shown, with a warning."""
    if live and registry.list_hosts(active_only=True):
        try:
            sync(registry)
        except GpujobError as exc:
            say(f"showing what gpujob last knew: cannot ask Lambda Cloud ({exc.message})")
        for host in registry.list_hosts(active_only=True):
            if host.state == "ready" and host.ip:
                read_heartbeat(registry, host, timeout_s=5)
    hosts = registry.list_hosts(active_only=not all_)
    return [HostView(h, *idle_words(h)) for h in hosts]
