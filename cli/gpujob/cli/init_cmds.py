"""init: the example job specs written out, for a start from `pip install gpujob`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from gpujob.cli.common import JsonOpt, friendly
from gpujob.errors import UserError


def register(app: typer.Typer) -> None:
    app.command("init")(friendly(init))


def init(
    directory: Annotated[str, typer.Argument(metavar="DIR", help="Where to write the examples.")] = "jobs",
    force: Annotated[bool, typer.Option("--force", help="Overwrite example files that are already there.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write the example job specs (hello, the quickstart, train and eval for each backend) and their
    JSON Schema into DIR (default: jobs/), then say what to run next. Files already there are kept
    unless --force."""
    from gpujob import examples
    from gpujob.spec import json_schema

    target = Path(directory).expanduser()
    if target.exists() and not target.is_dir():
        raise UserError(f"{directory} exists and is not a folder", hint="name another: gpujob init DIR")
    try:
        target.mkdir(parents=True, exist_ok=True)
        written, kept = [], []
        files = {name: examples.text(name) for name in examples.names()}
        files[examples.SCHEMA_FILE] = json.dumps(json_schema(), indent=2) + "\n"
        for name, text in files.items():
            path = target / name
            there = path.read_text(encoding="utf-8", errors="replace") if path.is_file() else None
            if there == text:
                continue  # already there, as shipped
            if path.exists() and not force:
                kept.append(str(path))
                continue
            path.write_text(text, encoding="utf-8")
            written.append(str(path))
    except OSError as exc:
        raise UserError(f"cannot write the examples into {directory}: {exc.strerror or exc}",
                        hint="pick a folder you can write: gpujob init DIR") from None
    hello = target / "hello.yaml"
    if as_json:
        typer.echo(json.dumps({"dir": str(target), "written": written, "kept": kept,
                               "next": f"gpujob submit {hello} --follow"}, indent=2))
        return
    for path in written:
        typer.echo(f"wrote {path}")
    for path in kept:
        typer.echo(f"kept  {path} (yours differs; --force overwrites it)")
    typer.echo(f"next: gpujob submit {hello} --follow   (a CPU-only demo job: a progress bar, loss and WER)")
    typer.echo(f"then: gpujob validate {target}/*.yaml   |   each file's first line is the command that runs it")
