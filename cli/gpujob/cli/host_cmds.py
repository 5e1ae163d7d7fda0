"""`gpujob host ...`: rented GPU hosts (Lambda Cloud): types, up, list, down, ssh, reap."""

from __future__ import annotations

import json
import os
import re
from typing import Annotated, List, Optional

import typer

from gpujob.cli import completion
from gpujob.cli.common import JsonOpt, friendly, open_registry, reap_due_hosts
from gpujob.defaults import HOST_IDLE, HOST_MAX_LIFETIME
from gpujob.errors import UserError
from gpujob.words import fmt_duration

host_app = typer.Typer(help="Rented GPU hosts (Lambda Cloud) that terminate themselves when idle.",
                       no_args_is_help=True)

NameArg = Annotated[str, typer.Argument(metavar="NAME", help="The host's name (see `gpujob host list`).",
                                        autocompletion=completion.host_names)]


def register(app: typer.Typer) -> None:
    app.add_typer(host_app, name="host")
    host_app.command("types")(friendly(types))
    host_app.command("up")(friendly(up))
    host_app.command("list")(friendly(list_hosts))
    host_app.command("down")(friendly(down))
    host_app.command("ssh", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})(
        friendly(ssh))
    host_app.command("reap")(friendly(reap))


def _seconds(text: str, flag: str) -> float:
    from gpujob.spec.units import parse_duration

    try:
        return float(parse_duration(text))
    except ValueError as exc:
        raise UserError(f"{flag} {text!r}: {exc}", hint=f"e.g. {flag} 15m, {flag} 12h, {flag} 1h30m") from None


def types(
    available: Annotated[bool, typer.Option("--available", help="Only types with capacity somewhere now.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Instance types with their price and the regions that have capacity now."""
    from gpujob.fleet import access

    found = [t for t in sorted(access.api().instance_types().values(), key=lambda t: (t.price_cents_per_hour, t.name))
             if t.regions_with_capacity or not available]
    if as_json:
        typer.echo(json.dumps([{"name": t.name, "gpus": t.gpus, "price_per_hour": t.price_per_hour,
                                "regions_with_capacity": list(t.regions_with_capacity),
                                "description": t.gpu_description or t.description} for t in found], indent=2))
        return
    rows = [("TYPE", "GPUS", "$/H", "REGIONS WITH CAPACITY", "DESCRIPTION")]
    for t in found:
        rows.append((t.name, str(t.gpus), f"{t.price_per_hour:.2f}", ", ".join(t.regions_with_capacity) or "none now",
                     t.gpu_description or t.description))
    typer.echo(_table(rows))


def up(
    type_: Annotated[Optional[str], typer.Option("--type", "-t", metavar="TYPE", help="Instance type, e.g. gpu_1x_a10 (`gpujob host types`).")] = None,
    region: Annotated[Optional[str], typer.Option("--region", metavar="REGION", help="Region [default: the first with capacity].")] = None,
    name: Annotated[Optional[str], typer.Option("--name", metavar="NAME", help="Name for the host; an existing one's set-up is finished.")] = None,
    idle: Annotated[str, typer.Option("--idle", metavar="DURATION", help="Terminate after this long with nothing running.")] = HOST_IDLE,
    max_lifetime: Annotated[str, typer.Option("--max-lifetime", metavar="DURATION", help="Terminate this long after launch, busy or not.")] = HOST_MAX_LIFETIME,
    filesystem: Annotated[Optional[str], typer.Option("--filesystem", metavar="NAME", help="Persistent file system to attach; outputs go there.")] = None,
    image: Annotated[Optional[str], typer.Option("--image", metavar="IMAGE", help="Job image to have on the host [default: the gpujob image].")] = None,
    ssh_keeps_alive: Annotated[bool, typer.Option(
        "--ssh-keeps-alive/--ssh-does-not-keep-alive",
        help="Whether an interactive SSH session on the host counts as activity.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Launch a GPU host and set it up (Docker, NVIDIA toolkit, the job image, the idle agent)."""
    from gpujob.fleet import launch
    from gpujob.spec.fields import NAME_PATTERN

    if name is not None and not re.match(NAME_PATTERN, name):
        raise UserError(f"--name {name!r}: use lowercase letters, digits and -", hint="e.g. --name a100-greek")
    req = launch.UpRequest(instance_type=type_, region=region, name=name, idle_minutes=_seconds(idle, "--idle") / 60,
                            max_lifetime_s=_seconds(max_lifetime, "--max-lifetime"), filesystem=filesystem, image=image,
                            ssh_keeps_alive=ssh_keeps_alive)
    registry = open_registry()
    reap_due_hosts(registry)
    host = launch.up(registry, req)
    if as_json:
        typer.echo(json.dumps({"name": host.name, "instance_type": host.instance_type, "ip": host.ip,
                               "price_per_hour": host.price_per_hour, "state": host.state}))
        return
    typer.echo(f"host {host.name} is ready: {host.instance_type} at {host.ip} (${host.price_per_hour:.2f}/h); "
               f"terminates itself after {idle} idle, at most {max_lifetime} after launch")
    typer.echo(f"next: set runtime.backend: host and runtime.host: {host.name} in a spec, then gpujob submit SPEC"
               f"   |   gpujob host ssh {host.name}   |   gpujob host down {host.name}")


def list_hosts(
    all_: Annotated[bool, typer.Option("--all", "-a", help="Terminated hosts too.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Hosts: state, IP, $/h, uptime, cost so far, idle timer."""
    from gpujob.fleet import watch

    registry = open_registry(create=False)
    reap_due_hosts(registry)
    views = watch.list_hosts(registry, all_=all_)
    if as_json:
        typer.echo(json.dumps([{
            "name": v.host.name, "state": v.host.state, "reason": v.host.reason, "instance_id": v.host.instance_id,
            "type": v.host.instance_type, "region": v.host.region, "ip": v.host.ip,
            "price_per_hour": v.host.price_per_hour, "uptime_s": v.host.uptime_s(), "cost_usd": v.host.cost_usd(),
            "idle": v.idle, "agent": v.agent, "heartbeat": v.host.heartbeat, "launched_at": v.host.launched_at,
            "terminated_at": v.host.terminated_at, "hard_deadline": v.host.hard_deadline,
            "jobs": [j.id for j in registry.jobs_on_host(v.host.name, active_only=False)],
            "active_jobs": [j.id for j in registry.jobs_on_host(v.host.name)],
        } for v in views], indent=2))
        return
    if not views:
        typer.echo("no hosts" + ("" if all_ else " running (--all shows terminated ones)")
                   + "; start one: gpujob host up --type gpu_1x_a10")
        return
    rows = [("NAME", "STATE", "TYPE", "REGION", "IP", "$/H", "UPTIME", "COST", "IDLE TIMER", "AGENT")]
    for v in views:
        h = v.host
        rows.append((h.name, h.state, h.instance_type, h.region or "-", h.ip or "-", f"{h.price_per_hour:.2f}",
                     fmt_duration(h.uptime_s()), money(h.cost_usd()), v.idle, v.agent))
    typer.echo(_table(rows))
    for v in views:
        if v.host.reason and v.host.state in ("terminated", "provisioning"):
            typer.echo(f"{v.host.name}: {v.host.reason}")


def down(
    name: NameArg,
    force: Annotated[bool, typer.Option("--force", help="Cancel jobs still running there first.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Terminate a host (its finished jobs' logs and outputs are collected first)."""
    from gpujob import teardown

    registry = open_registry()
    reap_due_hosts(registry)
    host = teardown.down(registry, name, force=force)
    if as_json:
        typer.echo(json.dumps({"name": host.name, "state": host.state, "uptime_s": host.uptime_s(),
                               "cost_usd": host.cost_usd()}))
        return
    typer.echo(f"host {host.name}: {host.state} after {fmt_duration(host.uptime_s())}, cost {money(host.cost_usd())}")


def ssh(ctx: typer.Context, name: NameArg) -> None:
    """Log in to a host (OpenSSH, with the host key gpujob pinned); words after NAME run there."""
    from gpujob.fleet import access

    registry = open_registry(create=False)
    reap_due_hosts(registry)
    argv = access.ssh_argv(registry, name, list(ctx.args))
    try:
        os.execvp(argv[0], argv)
    except FileNotFoundError:
        raise UserError("the OpenSSH client (ssh) is not installed", hint="apt-get install openssh-client") from None


def reap() -> None:
    """Check every host now; terminate those past their max lifetime, or whose agent stopped reporting
    while nothing runs there."""
    from gpujob import teardown

    registry = open_registry()
    done = teardown.reap(registry)
    for line in done:
        typer.echo(line)
    if not done:
        active = registry.list_hosts(active_only=True)
        typer.echo(f"nothing to do: {len(active)} host(s) running, each with a live agent or within its deadlines"
                   if active else "nothing to do: no hosts running")


def money(usd: float) -> str:
    from gpujob.cli.display import money as fmt

    return fmt(usd)


def _table(rows: List[tuple]) -> str:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

