"""Rented hosts, end to end: launch and provision (`host up`), list with cost and idle timers,
terminate (`host down`), and the client-side reaper that makes sure no host is left billing.

A host's life: ``launching`` (asking the API) -> ``booting`` (launched: billing from here on) ->
``provisioning`` (set-up over SSH) -> ``ready`` (jobs run here; the idle agent watches it) ->
``terminated``. It is recorded in the registry from the moment the API accepted the launch, so an
interrupted `host up` never leaves a machine nobody knows about.

Who stops a host, from first to last resort:

1. its idle agent (:mod:`gpujob.hosts.agent`, a systemd service on the host) once nothing has
   happened there for ``idle_minutes``, or at the hard deadline (launch + max lifetime);
2. the reaper here: every gpujob command looks (one SQLite query) for hosts whose check time or
   hard deadline has passed; for each it reads the agent's heartbeat over SSH, and terminates the
   host when the deadline has passed or the agent has stopped reporting and no job runs there
   (``gpujob host reap`` does the same for every host, at once);
3. ``gpujob host down NAME``.

Before a host is terminated by gpujob, the jobs recorded on it are refreshed, which saves their
logs and copies their outputs back (or they are on the host's persistent file system already).
"""

from __future__ import annotations

import os
import secrets as _secrets
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from gpujob.errors import GpujobError, UserError
from gpujob.hosts.layout import HostLayout

if TYPE_CHECKING:
    from gpujob.hosts.ssh import HostConnection
    from gpujob.registry import Host, Registry

PROVIDER = "lambda"
DEFAULT_IDLE_MINUTES = 15.0
DEFAULT_MAX_LIFETIME_S = 12 * 3600.0
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


# ----------------------------------------------------------------------------- connections


def api():
    """The Lambda Cloud API client, with the key from LAMBDA_API_KEY or $GPUJOB_HOME/lambda-api-key."""
    from gpujob.hosts import lambda_api

    return lambda_api.LambdaClient(lambda_api.api_key(), base_url=os.environ.get("GPUJOB_LAMBDA_API_URL") or None)


def _home() -> Path:
    from gpujob.registry import gpujob_home

    return gpujob_home()


def known_hosts_path() -> Path:
    return _home() / "known_hosts"


def layout_of(host: "Host") -> HostLayout:
    s = host.settings
    return HostLayout(root=s.get("layout_root", "/"), docker_host=s.get("docker_host", HostLayout.docker_host))


def is_pinned(alias: str) -> bool:
    from gpujob.hosts import ssh

    return ssh.is_pinned(known_hosts_path(), alias)


def connect(host: "Host", *, pin_new: bool = False, timeout_s: float = 15) -> "HostConnection":
    """An open SSH connection to the host, its key checked against the one pinned at first contact."""
    from gpujob.hosts.ssh import HostConnection, ensure_keypair

    if not host.ip:
        raise GpujobError(f"host {host.name} has no address yet ({host.state})",
                          hint=f"`gpujob host up --name {host.name}` waits for it and finishes its set-up")
    key_path, _ = ensure_keypair(_home())
    conn = HostConnection(host.ip, port=host.ssh_port, user=host.ssh_user, key_path=key_path,
                          known_hosts=known_hosts_path(), alias=host.instance_id or host.name,
                          pin_new_key=pin_new, connect_timeout_s=timeout_s)
    conn.connect()
    return conn


# ----------------------------------------------------------------------------- host up


def _new_name(instance_type: str) -> str:
    short = instance_type.removeprefix("gpu_").replace("_", "-").lower()[:40].strip("-")
    return f"{short or 'host'}-{''.join(_secrets.choice('abcdefghijkmnpqrstuvwxyz23456789') for _ in range(4))}"


def _ssh_key_name(api_client, public_key: str) -> str:
    """The name of gpujob's public key at the provider, registering it the first time."""
    import hashlib

    body = public_key.split()[1] if len(public_key.split()) > 1 else public_key
    name = f"gpujob-{hashlib.sha256(body.encode()).hexdigest()[:10]}"
    for key in api_client.ssh_keys():
        if key.get("name") == name or (key.get("public_key") or "").split()[1:2] == [body]:
            return key.get("name") or name
    api_client.add_ssh_key(name, public_key)
    return name


@dataclass
class UpRequest:
    instance_type: str | None
    region: str | None = None
    name: str | None = None
    idle_minutes: float = DEFAULT_IDLE_MINUTES
    max_lifetime_s: float | None = DEFAULT_MAX_LIFETIME_S
    filesystem: str | None = None
    image: str | None = None
    ssh_keeps_alive: bool = True       # an interactive SSH session counts as activity


def up(registry: "Registry", req: UpRequest, *, say: Say = notice) -> "Host":
    """Launch a host (or pick up a half-made one by name), wait for it, provision it. Idempotent:
    run it again with the same --name after an interruption and it finishes the set-up."""
    existing = registry.find_host(req.name) if req.name else None
    client = api()
    if existing is not None and existing.active:
        host = existing
        if req.instance_type and req.instance_type != host.instance_type:
            raise UserError(f"host {host.name} is a {host.instance_type}, not a {req.instance_type}",
                            hint="leave out --type to finish setting it up, or pick another --name")
        say(f"host {host.name} exists ({host.state}); "
            + ("checking its set-up" if host.state == "ready" else "finishing its set-up"))
    else:
        host = _launch(registry, client, req, existing, say)
    host = _wait_active(registry, client, host, say)
    return _provision(registry, host, req.image or host.settings.get("image"), say)


def _launch(registry: "Registry", client, req: UpRequest, existing, say: Say) -> "Host":
    from gpujob.hosts.ssh import ensure_keypair

    if not req.instance_type:
        raise UserError("host up needs --type (an instance type such as gpu_1x_a10)",
                        hint="`gpujob host types` lists the types with prices and where they have capacity")
    types = client.instance_types()
    itype = types.get(req.instance_type)
    if itype is None:
        close = ", ".join(sorted(types)[:12])
        raise UserError(f"unknown instance type {req.instance_type!r}", hint=f"one of: {close}")
    fs_mount = None
    region = req.region
    if req.filesystem:
        systems = {fs.get("name"): fs for fs in client.file_systems()}
        fs = systems.get(req.filesystem)
        if fs is None:
            raise UserError(f"no persistent file system named {req.filesystem!r} in your account",
                            hint=("yours: " + ", ".join(sorted(n for n in systems if n))) if systems
                            else "create one in the Lambda Cloud dashboard (Storage), in the region you launch in")
        fs_region = fs.get("region") if isinstance(fs.get("region"), str) else (fs.get("region") or {}).get("name")
        if region and fs_region and region != fs_region:
            raise UserError(f"file system {req.filesystem} is in {fs_region}, not {region}; an instance can only "
                            "attach a file system of its own region", hint=f"use --region {fs_region}")
        region = region or fs_region
        fs_mount = fs.get("mount_point") or FILESYSTEM_MOUNT.format(name=req.filesystem)
    _, public_key = ensure_keypair(_home())
    key_name = _ssh_key_name(client, public_key)
    name = req.name or _new_name(req.instance_type)
    settings = {
        "layout_root": os.environ.get("GPUJOB_HOST_ROOT", "/"),
        "docker_host": os.environ.get("GPUJOB_HOST_DOCKER", HostLayout.docker_host),
        "image": req.image,
        "ssh_key_name": key_name,
        "ssh_keeps_alive": req.ssh_keeps_alive,
        "filesystem_mount": fs_mount,
        "gpus": itype.gpus,
    }
    fields = dict(provider=PROVIDER, instance_type=req.instance_type, region=region,
                  ssh_user=os.environ.get("GPUJOB_HOST_SSH_USER", "ubuntu"),
                  ssh_port=int(os.environ.get("GPUJOB_HOST_SSH_PORT", "22")),
                  price_cents_per_hour=float(itype.price_cents_per_hour), state="launching", reason=None,
                  idle_minutes=float(req.idle_minutes), max_lifetime_s=req.max_lifetime_s,
                  filesystem=req.filesystem, settings=settings, heartbeat={}, instance_id=None, ip=None,
                  launched_at=None, terminated_at=None, check_after=None, hard_deadline=None,
                  heartbeat_seen_at=None)
    if existing:
        registry.update_host(name, **fields)
    else:
        registry.add_host(name=name, **fields)
    say(f"launching {req.instance_type} (${itype.price_per_hour:.2f}/h) as host {name}")
    try:
        instance_id = client.launch(instance_type=req.instance_type, region=region, ssh_key_names=[key_name],
                                    file_system_names=[req.filesystem] if req.filesystem else [],
                                    name=f"gpujob-{name}")
    except BaseException as exc:
        registry.update_host(name, state="terminated", reason=f"launch failed: {getattr(exc, 'message', exc)}",
                             terminated_at=time.time())
        raise
    now = time.time()
    # Billing starts now: from here on the reaper knows this machine, even if we are interrupted.
    return registry.update_host(
        name, instance_id=instance_id, state="booting", launched_at=now,
        hard_deadline=now + req.max_lifetime_s if req.max_lifetime_s else None,
        check_after=now + boot_timeout_s() + req.idle_minutes * 60)


def _wait_active(registry: "Registry", client, host: "Host", say: Say) -> "Host":
    deadline = time.monotonic() + boot_timeout_s()
    said = None
    while True:
        inst = client.instance(host.instance_id)
        if inst.status == "active" and inst.ip:
            return registry.update_host(host.name, ip=inst.ip, region=inst.region or host.region,
                                        state="provisioning" if host.state in ("booting", "launching") else host.state)
        if inst.status in ("terminating", "terminated"):
            registry.update_host(host.name, state="terminated", reason=f"the instance was {inst.status} while booting",
                                 terminated_at=time.time())
            raise GpujobError(f"host {host.name}: instance {host.instance_id} was {inst.status} while booting",
                              hint="try again, or another --region")
        if inst.status != said:
            say(f"host {host.name}: instance {inst.status}" + (f" in {inst.region}" if inst.region else ""))
            said = inst.status
        if time.monotonic() > deadline:
            raise GpujobError(f"host {host.name} did not become active within {boot_timeout_s():.0f} s "
                              f"(instance {host.instance_id} is {inst.status}); it may be billing",
                              hint=f"`gpujob host up --name {host.name}` waits again; `gpujob host down {host.name}` "
                                   "terminates it")
        time.sleep(poll_s())


def agent_config(host: "Host") -> dict:
    from gpujob.hosts.agent.config import AgentConfig

    lay = layout_of(host)
    cfg = AgentConfig(instance_id=host.instance_id, api_base_url=os.environ.get("GPUJOB_LAMBDA_API_URL") or None,
                      idle_minutes=host.idle_minutes, hard_deadline=host.hard_deadline,
                      check_interval_s=check_interval_s(), root=lay.root, docker_host=lay.docker_host,
                      ssh_keeps_alive=bool(host.settings.get("ssh_keeps_alive", True)))
    from dataclasses import asdict

    return asdict(cfg)


def _provision(registry: "Registry", host: "Host", image: str | None, say: Say) -> "Host":
    from gpujob.hosts import lambda_api
    from gpujob.hosts.provision import ProvisionSettings, provision
    from gpujob.image import default_image

    image = image or default_image(1)
    registry.update_host(host.name, settings={**host.settings, "image": image})
    # The host key is pinned at first contact with a machine gpujob itself just launched, never later.
    first_contact = host.state in ("booting", "provisioning") and not is_pinned(host.instance_id or host.name)
    mount = (host.settings.get("filesystem_mount") or FILESYSTEM_MOUNT.format(name=host.filesystem)
             if host.filesystem else None)
    if mount:
        lay = layout_of(host)
        mount = lay.root.rstrip("/") + mount if lay.root != "/" else mount
    settings = ProvisionSettings(layout=layout_of(host), image=image, agent_config=agent_config(host),
                                 api_key=lambda_api.api_key(), filesystem_mount=mount,
                                 load_image=_image_loader(image))
    try:
        with connect(host, pin_new=first_contact, timeout_s=120) as conn:
            provision(conn, settings, on_step=lambda r: say(f"host {host.name}: {r.name}: "
                                                             f"{'already in place' if r.state == 'ok' else r.state}"
                                                             + (f" ({r.detail})" if r.detail else "")))
    except GpujobError as exc:
        registry.update_host(host.name, reason=f"set-up stopped: {exc.message}")
        again = (f"run `gpujob host up --name {host.name}` again to finish (the host is billing meanwhile; "
                 f"`gpujob host down {host.name}` terminates it)")
        kind = UserError if isinstance(exc, UserError) else GpujobError
        raise kind(f"host {host.name}: set-up stopped: {exc.message}",
                   hint=f"{exc.hint}; then {again}" if exc.hint else f"fix it and {again}") from None
    now = time.time()
    settings_now = {**registry.get_host(host.name).settings, "outputs_root": f"{mount}/gpujob/outputs" if mount else None}
    return registry.update_host(host.name, state="ready", reason=None, settings=settings_now,
                                check_after=now + host.idle_minutes * 60 + 2 * check_interval_s())


def _image_loader(image: str) -> Callable[[str], None]:
    """Stream ``image`` from this machine's Docker engine to the host's (when the host cannot pull it)."""

    def load(remote_url: str) -> None:
        import docker
        import docker.errors

        try:
            local = docker.from_env(timeout=600)
            img = local.images.get(image)
        except docker.errors.DockerException as exc:
            raise UserError(f"the host cannot pull {image}, and this machine's Docker engine cannot give it either "
                            f"({exc})", hint="push it to a registry the host can reach (`gpujob image build --push "
                                             "REGISTRY`) and set runtime.image, or pass --image") from None
        remote = docker.DockerClient(base_url=remote_url, timeout=3600)
        remote.api.load_image(img.save(chunk_size=1 << 20))

    return load


# ----------------------------------------------------------------------------- state, list


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
    import json

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
    agent = "ok" if silent <= 3 * max(check_interval_s(), 60) else f"silent for {_dur(silent)}"
    if beat.get("terminating"):
        return "terminating", agent
    activity = beat.get("activity") or []
    if activity:
        return "busy: " + "; ".join(map(str, activity))[:60], agent
    idle_for = float(beat.get("idle_for_s") or 0)
    return f"idle {_dur(idle_for)} of {_dur(host.idle_minutes * 60)}", agent


def _dur(seconds: float | None) -> str:
    from gpujob.words import fmt_duration

    return fmt_duration(seconds)


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


# ----------------------------------------------------------------------------- down, reap


def _collect(registry: "Registry", host: "Host") -> list:
    """Refresh the jobs recorded on the host: ended ones get their log saved and outputs copied back.
    Returns those still running."""
    from gpujob import service

    still = []
    for job in registry.jobs_on_host(host.name):
        try:
            job = service.refresh(registry, job)
        except GpujobError:
            pass
        if job.active:
            still.append(job)
    return still


def terminate(registry: "Registry", host: "Host", reason: str, client=None,
              now: Callable[[], float] = time.time) -> "Host":
    """Terminate the instance. A failed call (the API down, a 5xx after retries) leaves the host
    active with its check time now, so the next gpujob command tries again."""
    client = client or api()
    if host.instance_id:
        try:
            client.terminate([host.instance_id])
        except GpujobError as exc:
            registry.update_host(host.name, reason=f"terminate failed, will retry: {exc.message}", check_after=now())
            raise
    return registry.update_host(host.name, state="terminated", reason=reason,
                                terminated_at=host.terminated_at or now(), check_after=None)


def down(registry: "Registry", name: str, *, force: bool = False, say: Say = notice) -> "Host":
    from gpujob import service

    host = registry.get_host(name)
    if not host.active:
        raise UserError(f"host {name} is already {host.state}" + (f" ({host.reason})" if host.reason else ""),
                        hint="`gpujob host list --all` shows every host")
    running = _collect(registry, host)
    if running and not force:
        ids = ", ".join(f"{j.id} ({j.name})" for j in running)
        raise UserError(f"host {name} is running {ids}",
                        hint=f"wait for it, cancel it (`gpujob cancel {running[0].id}`), or `gpujob host down {name} "
                             "--force` to cancel and terminate")
    for job in running:
        say(f"cancelling job {job.id} ({job.name})")
        try:
            service.cancel(registry, job, grace_s=30)
        except GpujobError as exc:
            say(f"could not cancel {job.id}: {exc.message}")
        _collect(registry, host)
    return terminate(registry, host, reason="terminated with `gpujob host down`")


def reap(registry: "Registry", *, hosts: list["Host"] | None = None, now: Callable[[], float] = time.time,
         client=None, say: Say = notice) -> list[str]:
    """Check each host and terminate the ones that must not go on billing. Returns what was done."""
    client = client or api()
    done: list[str] = []
    sync(registry, client)
    names = [h.name for h in (hosts if hosts is not None else registry.list_hosts(active_only=True))]
    for name in names:
        try:
            line = _reap_one(registry, registry.get_host(name), now, client, say)
        except GpujobError as exc:  # one host's trouble (its terminate failed) must not spare the others
            line = f"host {name}: could not terminate it ({exc.message}); the next gpujob command tries again"
        if line:
            done.append(line)
    return done


def _reap_one(registry: "Registry", host: "Host", now: Callable[[], float], client, say: Say) -> str | None:
    name = host.name
    if not host.active or host.state == "terminating":
        return None
    t = now()
    if host.hard_deadline and t >= host.hard_deadline:
        _collect(registry, host)
        lifetime = _dur(host.max_lifetime_s) if host.max_lifetime_s else "its max lifetime"
        terminate(registry, host, f"max lifetime ({lifetime}) reached; terminated by gpujob's reaper", client, now)
        return f"host {name}: terminated: max lifetime ({lifetime}) reached"
    if host.check_after and t < host.check_after:
        return None
    beat = read_heartbeat(registry, host, now=now) if host.ip else None
    host = registry.get_host(name)
    interval = check_interval_s()
    silent = agent_silent_for(host, t)
    if beat is not None and silent <= 3 * interval + 30:
        # The agent is alive and will stop the host itself; look again when it should have.
        idle_for = float(beat.get("idle_for_s") or 0)
        left = max(host.idle_minutes * 60 - idle_for, 0) if not beat.get("activity") else host.idle_minutes * 60
        registry.update_host(name, check_after=t + left + 2 * interval)
        return None
    running = _collect(registry, host)
    if running:
        ids = ", ".join(j.id for j in running)
        say(f"host {name}: its idle agent is not reporting, but job {ids} still runs there; "
            "gpujob checks again later")
        registry.update_host(name, check_after=t + host.idle_minutes * 60)
        return None
    last = f"last heartbeat {_dur(silent)} ago" if host.heartbeat else "no heartbeat ever"
    terminate(registry, host, f"its idle agent stopped reporting ({last}) and no job runs there; "
                              "terminated by gpujob's reaper", client, now)
    return f"host {name}: terminated: idle agent not reporting ({last})"


def reap_due(registry: "Registry") -> None:
    """What every gpujob command does first: one query; work only when a host is past a deadline.
    Never fails the user's command: problems are reported on stderr."""
    try:
        due = registry.hosts_due(time.time())
    except Exception:
        return
    if not due:
        return
    try:
        for line in reap(registry, hosts=due):
            notice(line)
    except GpujobError as exc:
        names = ", ".join(h.name for h in due)
        notice(f"could not check host {names} (past its deadline): {exc.message}")
        if exc.hint:
            notice(f"hint: {exc.hint}")
    except Exception as exc:  # the reaper must never break `gpujob list`
        notice(f"could not check hosts past their deadline: {type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------- jobs on hosts


def host_for_job(registry: "Registry", runtime: dict, *, say: Say = notice) -> "Host":
    """The host a job runs on: the one named in runtime.host, else an idle ready host of
    runtime.host_type, else a new one."""
    from gpujob.spec.units import parse_duration

    name = runtime.get("host")
    if not name and not runtime.get("host_type"):
        raise UserError("the host backend needs runtime.host (a host from `gpujob host up`) or runtime.host_type "
                        "(an instance type to reuse or launch)",
                        hint="e.g. --set runtime.host=NAME, or --set runtime.host_type=gpu_1x_a10")
    if name:
        host = registry.find_host(name)
        if host is None or not host.active:
            if host is None and not runtime.get("host_type"):
                raise UserError(f"no host named {name!r}",
                                hint=f"start it: gpujob host up --type TYPE --name {name}, or see `gpujob host list`")
            if host is not None and not runtime.get("host_type"):
                raise UserError(f"host {name} is {host.state}" + (f" ({host.reason})" if host.reason else ""),
                                hint=f"start a new one: gpujob host up --type {host.instance_type} --name {name}")
        elif host.state != "ready":
            return up(registry, UpRequest(instance_type=None, name=name, image=runtime.get("image")), say=say)
        else:
            return host
    itype = runtime.get("host_type")
    if not name:
        sync(registry)
        for host in registry.list_hosts(active_only=True):
            if host.state == "ready" and host.instance_type == itype and not registry.jobs_on_host(host.name):
                say(f"reusing idle host {host.name} ({host.instance_type})")
                return host
    req = UpRequest(instance_type=itype, region=runtime.get("region"), name=name,
                    idle_minutes=parse_duration(runtime.get("host_idle") or "15m") / 60,
                    max_lifetime_s=float(parse_duration(runtime.get("host_max_lifetime") or "12h")),
                    filesystem=runtime.get("filesystem"), image=runtime.get("image"))
    return up(registry, req, say=say)


def job_host_gpus(registry: "Registry", runtime: dict) -> tuple[str, int] | None:
    """The instance type a job with this ``runtime`` section runs on, and its GPUs, when that is known
    before any host is launched for it: recorded with the named host at its launch, else from the
    API's list of types. None when it is not known (no key, the API unreachable): the job goes on."""
    name, itype = runtime.get("host"), runtime.get("host_type")
    if name:
        host = registry.find_host(name)
        if host is not None and host.active:
            if host.settings.get("gpus") is not None:
                return host.instance_type, int(host.settings["gpus"])
            itype = host.instance_type
    if not itype:
        return None
    try:
        found = api().instance_types().get(itype)
    except GpujobError:
        return None
    return (itype, found.gpus) if found is not None else None


def ssh_argv(registry: "Registry", name: str, extra: list[str]) -> list[str]:
    from gpujob.hosts.ssh import HostConnection, ensure_keypair

    host = registry.get_host(name)
    if not host.active or not host.ip:
        raise UserError(f"host {name} is {host.state}; nothing to log in to",
                        hint="`gpujob host list` shows your hosts")
    if not is_pinned(host.instance_id or host.name):
        raise UserError(f"host {name}'s SSH key is not pinned yet (its set-up never reached it)",
                        hint=f"finish its set-up first: gpujob host up --name {name}")
    key_path, _ = ensure_keypair(_home())
    conn = HostConnection(host.ip, port=host.ssh_port, user=host.ssh_user, key_path=key_path,
                          known_hosts=known_hosts_path(), alias=host.instance_id or host.name)
    return conn.interactive_argv(list(extra))

