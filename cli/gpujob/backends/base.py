"""The one small interface every backend implements.

A backend turns a :class:`JobRequest` into something running (a process, a
container, a Kubernetes Job) and answers questions about it. It knows nothing
about YAML, the CLI or the registry's tables: the service layer
(:mod:`gpujob.service`) records what the backend reports.
"""

from __future__ import annotations

import re
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterator, Mapping, Protocol

if TYPE_CHECKING:
    from gpujob.registry import Job

# The runner that train/evaluate jobs run inside the job (issue: the Whisper runner).
RUNNER_MODULE = "gpujob.runner"
# A job's output, in the registry's folder for it (written live by the local backend, saved at the
# end by backends whose logs live elsewhere).
LOG_NAME = "output.log"


@dataclass
class JobRequest:
    """Everything a backend needs to start one job. Holds no secret values."""

    job_id: str
    name: str
    kind: str
    spec: dict            # the validated spec, as plain data (apiVersion, kind, ...)
    spec_path: str | None
    command: list[str]    # argv inside the job; "{spec}" stands for the spec file there
    env: dict[str, str]   # plain environment from runtime.env
    secret_names: list[str]
    workdir: str
    output_dir: str
    job_dir: Path         # registry-owned folder for this job (log, spec copy)
    max_runtime_s: int | None = None
    idle_s: float | None = None   # stop as hung after this long without a progress event
    gpus: int = 0
    labels: dict[str, str] = field(default_factory=dict)


@dataclass
class Observed:
    """What a backend sees of a job right now."""

    status: str                 # a registry status: queued, running, succeeded, failed, cancelled
    exit_code: int | None = None
    reason: str | None = None
    progress: dict | None = None   # a ProgressState snapshot, for backends without a supervisor of their own
    started_at: float | None = None  # when the job's process really started (epoch seconds), if known


class Backend(Protocol):
    name: ClassVar[str]

    def render(self, request: JobRequest) -> str:
        """What submit would do, as text a person can read (the dry run)."""

    def submit(self, request: JobRequest, secrets: Mapping[str, str]) -> dict:
        """Start the job; return the handle the backend needs to find it again."""

    def status(self, job: "Job") -> Observed | None:
        """The job's state as the backend sees it; None when nothing is known beyond the registry."""

    def logs(self, job: "Job", *, follow: bool = False, tail: int | None = None,
             all_workers: bool = False) -> Iterator[str]:
        """The job's output lines; with follow, keep yielding until the job has ended. Multi-node
        jobs show worker 0, or with all_workers every worker's lines prefixed by its index."""

    def cancel(self, job: "Job", *, grace_s: float = 10.0) -> None:
        """Stop the job: a polite signal, then a forced one after the grace period."""

    def list(self) -> list[str]:
        """Ids of the gpujob jobs this backend currently holds resources for."""

    def cleanup(self, job: "Job") -> None:
        """Free whatever the finished job still holds (processes, containers, pods)."""


# ----------------------------------------------------------------------------- shared helpers


def explain_exit(code: int | None, last_error: str | None = None) -> str:
    """An exit status in plain words: 137 -> 'killed by SIGKILL (often: out of memory)'."""
    if code is None:
        words = "ended without an exit status"
    elif code == 0:
        words = "exited with code 0"
    else:
        signum = -code if code < 0 else code - 128 if 128 < code < 160 else None
        if signum == signal.SIGKILL:
            words = f"killed by SIGKILL (exit {code}; often: out of memory, or kill -9)"
        elif signum == signal.SIGTERM:
            words = f"terminated by SIGTERM (exit {code})"
        elif signum == signal.SIGSEGV:
            words = f"crashed with a segmentation fault (exit {code})"
        elif signum == signal.SIGINT:
            words = f"interrupted (exit {code})"
        elif signum is not None and code < 0:
            words = f"killed by signal {signal.Signals(signum).name if signum in signal.valid_signals() else signum}"
        elif code == 2:
            words = "exited with code 2 (the job rejected its input or configuration)"
        elif code == 126:
            words = "exited with code 126 (the command is not executable)"
        elif code == 127:
            words = "exited with code 127 (command not found)"
        else:
            words = f"exited with code {code}"
    return f"{words}: {last_error}" if last_error else words


_ERROR_LINE = re.compile(
    r"^\s*(?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*|(?:error|fatal|ERROR|FATAL)\b[:\s].*)$")


def last_error_line(lines: list[str]) -> str | None:
    """The last line that looks like an error message ("RuntimeError: CUDA out of memory")."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line):
            return line.strip()[:300]
    return None


def read_saved_log(path: Path, tail: int | None) -> list[str]:
    """A finished job's saved log (``LOG_NAME`` in its job folder), whole or its last ``tail`` lines."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[-tail:] if tail else ([] if tail == 0 else lines)


def runner_argv(python: str, spec_file: str) -> list[str]:
    return [python, "-m", RUNNER_MODULE, spec_file]


class Notice(str):
    """A line from gpujob itself inside a log stream ("waiting: unschedulable ..."), not the job's
    output: the CLI prints it to stderr, so stdout stays exactly what the job wrote."""
