"""What every subcommand shares: option aliases, error mapping, the registry."""

from __future__ import annotations

import functools
import os
import sys
import time
from typing import TYPE_CHECKING, Annotated, Callable, List, Optional

import typer

from gpujob.backends import NAMES
from gpujob.cli import completion
from gpujob.errors import GpujobError, UserError

if TYPE_CHECKING:
    from gpujob.registry import Registry

SetOpt = Annotated[
    Optional[List[str]],
    typer.Option("--set", "-s", metavar="KEY.PATH=VALUE",
                 help="Override a spec key, e.g. --set training.learning_rate=1e-5 (repeatable)."),
]
BackendOpt = Annotated[
    Optional[str],
    typer.Option("--backend", "-b", metavar="NAME", autocompletion=completion.backend_names,
                 help="local | docker | kubernetes | host: sets runtime.backend (default: the spec's, or "
                      "backend in $GPUJOB_HOME/config.yaml)."),
]
JobRef = Annotated[str, typer.Argument(metavar="JOB", help="Job id, unique id prefix, or job name.",
                                       autocompletion=completion.job_ids)]
OptionalJobRef = Annotated[
    Optional[str],
    typer.Argument(metavar="JOB", help="Job id, unique id prefix, or job name (default: the newest job).",
                   autocompletion=completion.job_ids),
]
# The first job to run, from a clone (jobs/ is there) or a wheel (`gpujob init` writes jobs/).
FIRST_JOB_HINT = "gpujob submit jobs/hello.yaml --follow (no jobs/ folder here? `gpujob init` writes it)"
JsonOpt = Annotated[bool, typer.Option("--json", help="Machine-readable output (JSON).")]
complete_job = completion.job_ids
complete_sweep = completion.sweep_ids


def err(message: str) -> None:
    typer.echo(message, err=True)


def friendly(fn: Callable) -> Callable:
    """Turn domain errors into their message, a hint and the exit code; no traceback.

    Exit 2: the input needs fixing (spec, flag, job id). Exit 1: something failed.
    Anything else is a bug in gpujob: one line, and the traceback with GPUJOB_DEBUG=1.
    """

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except BrokenPipeError:  # `gpujob logs | head`: the reader left; so do we, quietly
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
            raise typer.Exit(141) from None
        except KeyboardInterrupt:
            err("interrupted")
            raise typer.Exit(130) from None
        except GpujobError as exc:
            err(f"error: {exc.message}")
            if exc.hint:
                err(f"hint: {exc.hint}")
            raise typer.Exit(exc.exit_code) from None
        except Exception as exc:
            if _is_spec_error(exc):
                err(str(exc))
                raise typer.Exit(2) from None
            explained = _environment_error(exc)
            if explained is not None:  # the registry or the home, not gpujob's code: say which file
                err(f"error: {explained.message}")
                if explained.hint:
                    err(f"hint: {explained.hint}")
                raise typer.Exit(explained.exit_code) from None
            if os.environ.get("GPUJOB_DEBUG"):
                raise
            err(f"gpujob: internal error: {type(exc).__name__}: {exc}")
            err("this is a bug in gpujob; rerun with GPUJOB_DEBUG=1 for the traceback and report it")
            raise typer.Exit(1) from None

    return wrapper


def _is_spec_error(exc: Exception) -> bool:
    spec = sys.modules.get("gpujob.spec")
    return spec is not None and isinstance(exc, spec.SpecError)


def _environment_error(exc: Exception):
    """A SQLite error or a permission error in gpujob's home, in words (None: something else)."""
    sqlite3 = sys.modules.get("sqlite3")
    if (sqlite3 is not None and isinstance(exc, sqlite3.Error)) or isinstance(exc, OSError):
        from gpujob.registry_open import explain

        return explain(exc)
    return None


_said_read_only = False


def open_registry(*, create: bool = True) -> "Registry":
    """The registry. A read-only registry is said so, once. ``create=False``: a command that only
    reads, which makes no $GPUJOB_HOME where there is none (it sees an empty registry)."""
    from gpujob.registry import Registry

    global _said_read_only
    registry = Registry(create=create)
    if registry.read_only and not _said_read_only:
        err(f"note: {registry.read_only}: showing what it records; state changes (a job's end, "
            "a host's deadline) are not recorded, and submit and cancel are refused")
        _said_read_only = True
    return registry


def reap_due_hosts(registry: "Registry") -> None:
    """The step the commands take before their own work: hosts past a deadline are checked (one
    query; work only when one is due), so a rented host whose agent died is terminated by whichever
    gpujob command runs next. Nothing is reaped in a read-only registry."""
    if registry.read_only or not registry.hosts_due(time.time()):
        return
    from gpujob.teardown import reap_due  # the host modules are imported only when there is work

    reap_due(registry)


def find_job(registry, ref: str | None):
    """The job a user named, or the newest one when they named none."""
    if ref is not None:
        return registry.resolve(ref)
    newest = registry.list(limit=1)
    if not newest:
        raise UserError("there are no jobs yet", hint=f"submit one: {FIRST_JOB_HINT}")
    return newest[0]


# What people type for a backend, and the backend they mean.
_BACKEND_ALIASES = {"k8s": "kubernetes", "kube": "kubernetes", "kubectl": "kubernetes", "lambda": "host",
                    "ssh": "host", "remote": "host", "container": "docker", "podman": "docker"}


def _did_you_mean(typed: str, names) -> str | None:
    import difflib

    guess = _BACKEND_ALIASES.get(typed.lower()) or next(iter(difflib.get_close_matches(typed.lower(), names, n=1)), None)
    return f"did you mean --backend {guess}?" if guess else None


def load(path: str, overrides: list[str] | None, backend: str | None = None):
    """Load and validate one spec; print its warnings; SpecError propagates. ``--backend B`` sets
    runtime.backend to B before validation, so the spec is checked for the backend it will run on (a
    ``resources.nodes: 2`` spec needs kubernetes); the settings of the spec's own backend that B does not
    have are dropped, with a note."""
    from gpujob import user_config
    from gpujob.spec import load_spec

    if backend is not None:
        if backend not in NAMES:
            raise UserError(f"unknown backend {backend!r}; one of: {', '.join(NAMES)}",
                            hint=_did_you_mean(backend, NAMES))
    defaults = user_config.load().spec_defaults()  # $GPUJOB_HOME/config.yaml, GPUJOB_BACKEND...
    loaded = load_spec(path, overrides or (), backend=backend, defaults=defaults)
    for note in loaded.notes:
        err(f"note: {note}")
    for warning in loaded.warnings:
        err(f"warning: {warning}")
    return loaded
