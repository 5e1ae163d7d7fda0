"""The `gpujob` command: registers the subcommands, nothing else.

Subcommands live in :mod:`gpujob.cli.spec_cmds` (validate, render, schema),
:mod:`gpujob.cli.job_cmds` (submit, list, status, logs, cancel), :mod:`gpujob.cli.clean_cmds` (rm, prune), :mod:`gpujob.cli.config_cmds` (config), :mod:`gpujob.cli.init_cmds` (init) and
:mod:`gpujob.cli.image_cmds` (image build), :mod:`gpujob.cli.host_cmds` (host types, up, list,
down, ssh, reap), :mod:`gpujob.cli.metric_cmds` (metrics), :mod:`gpujob.cli.plot_cmds` (plot) and
:mod:`gpujob.cli.sweep_cmds` (sweep, compare) and
:mod:`gpujob.cli.ui_cmds` (ui: the dashboard).
"""

from __future__ import annotations

import typer
import typer.core

from gpujob import __version__
from gpujob.cli import clean_cmds, config_cmds, host_cmds, init_cmds, image_cmds, job_cmds, metric_cmds, plot_cmds, spec_cmds, sweep_cmds, ui_cmds

# typer prints a positional argument's Python type beside its name ("FILE <list[str]>", "JOB <str>");
# ours are named for what they hold, and the type only adds noise.
if hasattr(typer.core.TyperArgument, "display_type_rich"):
    typer.core.TyperArgument.display_type_rich = lambda self, ctx: None

app = typer.Typer(
    name="gpujob",
    help="Run GPU batch jobs (Whisper fine-tuning and evaluation, or any command) from one YAML spec.",
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion for bash, zsh, fish
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"gpujob {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print gpujob's version and exit."),
) -> None:
    """gpujob: one YAML job spec in, a running GPU job and live progress out.

    Start with `gpujob init` (writes the example specs to jobs/), then `gpujob submit jobs/hello.yaml --follow`.
    """


init_cmds.register(app)
spec_cmds.register(app)
job_cmds.register(app)
clean_cmds.register(app)
config_cmds.register(app)
image_cmds.register(app)
host_cmds.register(app)
metric_cmds.register(app)
plot_cmds.register(app)
sweep_cmds.register(app)
ui_cmds.register(app)


def main() -> None:
    app()
