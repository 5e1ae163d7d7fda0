"""Launching a host (`gpujob host up`): ask the API for the instance, record it at once (billing
starts there), wait for it to boot, and provision it over SSH. Run again with the same name after an
interruption, it finishes the set-up."""

from __future__ import annotations

import hashlib
import os
import secrets as _secrets
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Callable

from gpujob.errors import GpujobError, UserError
from gpujob.fleet.access import (DEFAULT_IDLE_MINUTES, DEFAULT_MAX_LIFETIME_S, FILESYSTEM_MOUNT, PROVIDER, Say, api,
                                 boot_timeout_s, check_interval_s, connect, is_pinned, layout_of, notice, poll_s)
from gpujob.hosts import lambda_api
from gpujob.hosts.agent.config import AgentConfig
from gpujob.hosts.layout import HostLayout
from gpujob.hosts.provision import ProvisionSettings, provision
from gpujob.hosts.ssh_keys import ensure_keypair
from gpujob.image_names import default_image
from gpujob.records import gpujob_home

if TYPE_CHECKING:
    from gpujob.records import Host
    from gpujob.registry import Registry


def _new_name(instance_type: str) -> str:
    short = instance_type.removeprefix("gpu_").replace("_", "-").lower()[:40].strip("-")
    return f"{short or 'host'}-{''.join(_secrets.choice('abcdefghijkmnpqrstuvwxyz23456789') for _ in range(4))}"


def _ssh_key_name(api_client, public_key: str) -> str:
    """The name of gpujob's public key at the provider, registering it the first time."""
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
    _, public_key = ensure_keypair(gpujob_home())
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
    lay = layout_of(host)
    cfg = AgentConfig(instance_id=host.instance_id, api_base_url=os.environ.get("GPUJOB_LAMBDA_API_URL") or None,
                      idle_minutes=host.idle_minutes, hard_deadline=host.hard_deadline,
                      check_interval_s=check_interval_s(), root=lay.root, docker_host=lay.docker_host,
                      ssh_keeps_alive=bool(host.settings.get("ssh_keeps_alive", True)))
    return asdict(cfg)


def _provision(registry: "Registry", host: "Host", image: str | None, say: Say) -> "Host":
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
