"""validate, check, render, schema: commands that read specs and start nothing."""

from __future__ import annotations

import json
from typing import Annotated, List

import typer

from gpujob.backends import capabilities, local_data
from gpujob.cli.common import BackendOpt, JsonOpt, SetOpt, err, friendly, load
from gpujob.errors import UserError


def register(app: typer.Typer) -> None:
    app.command("validate")(friendly(validate))
    app.command("check")(friendly(check))
    app.command("render")(friendly(render))
    app.command("schema")(friendly(schema))


def validate(
    files: Annotated[List[str], typer.Argument(metavar="FILE", help="Job spec files to check.")],
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check job specs: every problem at once, each with file, line and key. Exit 2 if any is invalid."""
    from gpujob.spec import SpecError

    bad = 0
    results = []
    for path in files:
        try:
            loaded = load(path, overrides)
        except SpecError as exc:
            bad += 1
            results.append({"file": path, "valid": False, "problems": [str(p) for p in exc.problems]})
            if not as_json:
                n = len(exc.problems)
                err(f"✗ {path}: {n} problem{'s' if n != 1 else ''}")
                for problem in exc.problems:
                    err(f"  {problem}")
            continue
        spec = loaded.spec
        unreachable = local_data.problems(spec, spec.runtime.backend)
        if unreachable:  # a valid spec, but its job would not find its data where it runs
            bad += 1
            results.append({"file": path, "valid": False, "problems": [f"{path}: {p}" for p in unreachable],
                            "hint": local_data.hint(spec.runtime.backend)})
            if not as_json:
                err(f"✗ {path}: the job would not find its data on the {spec.runtime.backend} backend")
                for problem in unreachable:
                    err(f"  {path}: {problem}")
                err(f"  hint: {local_data.hint(spec.runtime.backend)}")
            continue
        results.append({"file": path, "valid": True, "kind": spec.kind, "name": spec.name,
                        "backend": spec.runtime.backend, "problems": []})
        if not as_json:
            typer.echo(f"✓ {path}: valid ({spec.kind} job {spec.name!r}, backend {spec.runtime.backend})")
    if as_json:
        typer.echo(json.dumps(results, indent=2))
    if bad:
        raise typer.Exit(2)
    if len(files) == 1 and not as_json:
        typer.echo(f"next: gpujob render {files[0]}   (what would run)   or   gpujob submit {files[0]}")


def check(
    file: Annotated[str, typer.Argument(metavar="FILE", help="A train or evaluate job spec.")],
    overrides: SetOpt = None,
    sample: Annotated[int, typer.Option("--sample", min=1, metavar="N", help="Clips read per source.")] = 200,
) -> None:
    """Preflight the data before paying for a GPU: sources reachable, columns, bad clips, steps per epoch."""
    loaded = load(file, overrides)
    if loaded.spec.kind == "command":
        raise UserError(f"{file}: kind: command has no data to check", hint=f"gpujob validate {file}")
    try:
        from gpujob.runner.preflight import preflight
    except ImportError as exc:
        raise UserError(f"gpujob check needs the runner's libraries ({exc.name} is missing)",
                        hint="pip install 'gpujob[runner]'") from None
    report = preflight(loaded.spec, sample=sample)
    typer.echo(report.format())
    if not report.ok:
        raise typer.Exit(2)
    typer.echo(f"next: gpujob submit {file}")


def render(
    file: Annotated[str, typer.Argument(metavar="FILE", help="Job spec to render.")],
    backend: BackendOpt = None,
    overrides: SetOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Dry run: print what the backend would run for this spec, and start nothing. Exit 2 when it
    names a PROBLEM that submit would refuse."""
    from gpujob import service

    from gpujob.cli import display

    loaded = load(file, overrides, backend)
    text, est = service.render(loaded)
    name = loaded.spec.runtime.backend
    estimate = display.estimate_lines(est)
    problems = service.render_problems(text, estimate)
    if as_json:
        typer.echo(json.dumps({"backend": name, "rendered": text, "estimate": estimate, "problems": problems,
                               "job_id_placeholder": service.PREVIEW_ID}, indent=2))
    else:
        typer.echo(text)
        comment = "# " if capabilities(name).renders_yaml else ""  # YAML (kubernetes' manifests) stays YAML
        for line in estimate:
            typer.echo(comment + line)
        err(f"note: {service.PREVIEW_ID} stands for the job id that `gpujob submit {file}` assigns")
    if problems:
        raise typer.Exit(2)


def schema(
    markdown: Annotated[bool, typer.Option("--markdown", help="The spec reference as Markdown.")] = False,
) -> None:
    """Print the job spec's JSON Schema (for editors and CI), or the Markdown reference."""
    from gpujob.spec import json_schema, reference_markdown

    typer.echo(reference_markdown() if markdown else json.dumps(json_schema(), indent=2))
