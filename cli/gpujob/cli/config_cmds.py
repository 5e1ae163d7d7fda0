"""config: the user's defaults ($GPUJOB_HOME/config.yaml, GPUJOB_* variables) and where each comes from."""

from __future__ import annotations

import json

import typer

from gpujob.cli.common import JsonOpt, friendly


def register(app: typer.Typer) -> None:
    app.command("config")(friendly(config))


def config(as_json: JsonOpt = False) -> None:
    """Show the defaults gpujob applies where a spec is silent (backend, context, namespace, image, stage),
    each with where it comes from: $GPUJOB_HOME/config.yaml, an environment variable, or none set.
    The environment wins over the file; the spec, --set and --backend win over both."""
    from gpujob import user_config

    found = user_config.load()
    rows = [{"key": key, "value": found.get(key), "source": found.sources.get(key, "not set"), "env": var,
             "sets": sets} for key, (var, sets) in user_config.KEYS.items()]
    path = user_config.config_path()
    if as_json:
        typer.echo(json.dumps({"file": str(path), "file_exists": path.is_file(), "keys": rows}, indent=2))
        return
    typer.echo(f"config file: {path}" + ("" if path.is_file() else "  (none; create it to set defaults)"))
    width = max(len(r["key"]) for r in rows)
    for r in rows:
        value = "-" if r["value"] is None else str(r["value"])
        typer.echo(f"{r['key'].ljust(width)}  {value:<28}  from {r['source']:<24}  (${r['env']}: {r['sets']})")
    if not path.is_file():
        typer.echo(f"next: e.g. `mkdir -p {path.parent} && echo 'backend: docker' > {path}`")
