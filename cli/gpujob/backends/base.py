"""The one small interface every backend implements.

A backend turns a :class:`JobRequest` into something running (a process, a
container, a Kubernetes Job) and answers questions about it. It knows nothing
about YAML, the CLI or the registry: the service layer (:mod:`gpujob.service`)
records what the backend reports, and a backend that records its job's state
itself (the local backend's supervisor) is handed a :class:`JobStore` for that.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Iterator, Mapping, Protocol, TypeVar

from gpujob import history
from gpujob.errors import UserError
from gpujob.words import cut_words
from gpujob.exits import explain_exit  # noqa: F401 - re-exported: backends explain exits with it
from gpujob.progress_state import ProgressState
from gpujob.records import BUDGET_WORDS, budget_comes_first, budget_seconds

if TYPE_CHECKING:
    from gpujob.backends.outputs import Progress, Pulled
    from gpujob.records import Job
    from gpujob.spec.models import JobSpec
    from gpujob.spec.runtime import RuntimeBase

    R = TypeVar("R", bound=RuntimeBase)

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
    spec: "JobSpec"       # the validated spec; spec_data() is its plain form, for files written out
    spec_path: str | None
    command: list[str]    # argv inside the job; "{spec}" stands for the spec file there
    env: dict[str, str]   # plain environment: runtime.env and the distributed network settings
    secret_names: list[str]
    workdir: str
    output_dir: str
    job_dir: Path         # registry-owned folder for this job (log, spec copy)
    max_runtime_s: int | None = None   # limits.max_runtime in seconds (JobSpec.max_runtime_s)
    idle_s: float | None = None   # stop as hung after this long without a progress event
    labels: dict[str, str] = field(default_factory=dict)
    price_per_hour: float | None = None  # USD per hour of running, for the whole job; None: unknown
    max_cost: float | None = None        # limits.max_cost (USD)

    @property
    def gpus(self) -> int:
        """GPUs per machine (JobSpec.gpus: resources.gpus, resolved): the spec is the one source of it."""
        return self.spec.gpus

    @property
    def budget_s(self) -> float | None:
        """limits.max_cost as running time at the job's price (:func:`gpujob.records.budget_seconds`)."""
        return budget_seconds(self.max_cost, self.price_per_hour)

    @property
    def deadline_s(self) -> int | None:
        """The running time after which the job is stopped: limits.max_runtime or its budget, whichever is
        sooner (whole seconds, at least 1); None when neither is set."""
        limits = [x for x in (self.max_runtime_s, self.budget_s) if x is not None]
        return max(1, math.ceil(min(limits))) if limits else None

    @property
    def budget_first(self) -> bool:
        """True when the budget, not limits.max_runtime, is what stops the job first."""
        return budget_comes_first(self.budget_s, self.max_runtime_s)

    def spec_data(self) -> dict[str, Any]:
        """The spec as plain data (apiVersion, kind, ..., defaults filled in): what is written out
        for the job (the spec file the runner reads) and recorded in the registry."""
        return self.spec.model_dump(mode="json", by_alias=True)


@dataclass
class Observed:
    """What a backend sees of a job right now."""

    status: str                 # a registry status: queued, running, succeeded, failed, cancelled
    exit_code: int | None = None
    reason: str | None = None
    progress: dict | None = None   # a ProgressState snapshot, for backends without a supervisor of their own
    points: list | None = None     # metric history points newer than the recorded snapshot (same backends)
    started_at: float | None = None  # when the job's process really started (epoch seconds), if known
    queue: dict | None = None   # a queued job's place in a GPU queue run elsewhere (a rented host's agent):
                                # position and words, recorded in its handle as a local supervisor records it


@dataclass(frozen=True)
class Capabilities:
    """What a backend does that the layers above it ask about, so that they ask the backend instead of
    asking which backend it is (as SkyPilot's clouds declare their ``CloudImplementationFeatures``).
    Each backend declares its own (``Backend.capabilities``); the defaults fit a backend that starts
    the job from this machine and is asked about it by the service."""

    # True: the secrets are read from the environment of whoever submits (runtime.secrets must be
    # set there); False: the backend finds them itself (kubernetes: a Secret the pod references).
    secrets_from_environment: bool = True
    # True: the backend's own supervisor records the job's state (through a JobStore) as it runs,
    # every event as it comes, and submit waits a moment for it to start; False: the service asks
    # ``status`` and records it, and takes the metric history from the saved log at the end.
    self_reporting: bool = False
    # True: a job's output.dir is a folder on this machine (local, docker's bind mount); False: on
    # the cluster's volume or the rented host (`gpujob rm --outputs` leaves those alone).
    outputs_on_this_machine: bool = True
    # True: the job's process writes output.dir on this machine as it runs, so it is there to list
    # once the job has succeeded (local); False: copied back at the end, or elsewhere.
    outputs_written_here: bool = False
    # Where output.dir is when it is a path on a volume of the backend's own, in words for a
    # message that it is not on this machine (kubernetes: "the cluster's volume"); None: not so.
    outputs_volume: str | None = None
    # True: train and evaluate jobs run gpujob's runner in this Python environment, so its libraries
    # must be installed here (local); False: in the job image.
    runner_here: bool = False
    # True: the job's log (LOG_NAME in its registry folder) is written as the job runs, so it is read
    # as a file (local); False: read through ``logs``, and saved to that file when the job ends.
    log_written_here: bool = False
    # True: ``render`` prints YAML (kubernetes' manifests), so lines printed below it are comments.
    renders_yaml: bool = False
    # True: the price comes from the provider once the backend chooses the machine (host: the instance
    # type's), so the price table has no entry for it and a budget needs no price before submit.
    provider_priced: bool = False
    # True: the backend's entry in the price table may be keyed by its ``price_scope`` first (kubernetes:
    # the kubeconfig context), each scope a table of its own.
    price_table_by_scope: bool = False
    # True: jobs run on the rented hosts the registry keeps (host), the one named by the handle's "host".
    rents_hosts: bool = False


# What a backend this version does not know (a record rebuilt from a damaged folder says "unknown")
# is taken to do: nothing the questions above could rely on.
UNKNOWN_CAPABILITIES = Capabilities(secrets_from_environment=False, outputs_on_this_machine=False)


class Backend(Protocol):
    """What every backend implements. A backend class names it as its base, so what it does not
    set keeps these defaults."""

    name: ClassVar[str]
    # What the layers above ask of a backend besides the job's life cycle (:class:`Capabilities`).
    capabilities: ClassVar[Capabilities] = Capabilities()

    @classmethod
    def made(cls, hosts: Any) -> "Backend":
        """The backend, made with what the layer above hands down: ``hosts``, a
        :class:`gpujob.backends.host.HostSource` or None (where the host backend finds its hosts; the
        kubernetes backend's channel for progress lines); most backends need nothing."""
        return cls()

    @classmethod
    def outputs_place(cls, job: "Job") -> str | None:
        """Where the recorded job's output_dir lies, in words for ``gpujob status``, when the path alone
        does not say (kubernetes: the PersistentVolumeClaim and namespace); None: the path says it."""
        return None

    def preflight(self, request: JobRequest) -> None:
        """Check what can be checked before the job is recorded (this machine has the GPUs asked
        for) and raise a UserError if the backend cannot run it, so a refused job leaves nothing in
        the registry."""

    def output_dir(self, spec: "JobSpec") -> str | None:
        """Where the job's outputs are recorded to go, when the backend puts them somewhere of its
        own (kubernetes: the volume's path); None: ``output.dir`` resolved on this machine."""
        return None

    def price_scope(self, request: JobRequest) -> str | None:
        """Which entry of the user's price table applies beyond the backend's own (kubernetes: the
        kubeconfig context the job goes to); None: the backend's entry alone."""
        return None

    def published_prices(self, request: JobRequest) -> "Mapping[str, float] | None":
        """Prices the backend's operator published (kubernetes: the cluster's ConfigMap gpujob-prices):
        USD per GPU-hour by GPU type, ``gpu`` for any other, ``cpu`` for a job without GPUs."""
        return None

    def provider_price(self, request: JobRequest) -> "tuple[float, str] | None":
        """The provider's price for the machine the job would run on (host: the instance type's, from its
        API), USD per hour, and where it came from; None when not known before submit."""
        return None

    # ------------------------------------------------------------------ the job's life cycle

    def render(self, request: JobRequest) -> str:
        """What submit would do, as text a person can read (the dry run)."""
        raise NotImplementedError

    def submit(self, request: JobRequest, secrets: Mapping[str, str]) -> dict:
        """Start the job; return the handle the backend needs to find it again."""
        raise NotImplementedError

    def status(self, job: "Job") -> Observed | None:
        """The job's state as the backend sees it; None when nothing is known beyond the registry."""
        raise NotImplementedError

    def logs(self, job: "Job", *, follow: bool = False, tail: int | None = None,
             all_workers: bool = False) -> Iterator[str]:
        """The job's output lines; with follow, keep yielding until the job has ended. Multi-node
        jobs show worker 0, or with all_workers every worker's lines prefixed by its index."""
        raise NotImplementedError

    def cancel(self, job: "Job", *, grace_s: float = 10.0) -> None:
        """Stop the job: a polite signal, then a forced one after the grace period."""
        raise NotImplementedError

    def list(self) -> list[str]:
        """Ids of the gpujob jobs this backend currently holds resources for."""
        raise NotImplementedError

    def cleanup(self, job: "Job") -> None:
        """Free whatever the finished job still holds (processes, containers, pods)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ optional: gpujob pull

    def pull(self, job: "Job", dest: Path, only: str, progress: "Progress | None" = None) -> "Pulled":
        """Bring the job's outputs (``only``: all | model | checkpoints, as :mod:`gpujob.backends.outputs`
        chooses them) to ``dest`` on this machine: resumable, sizes checked, ``progress(done, total)`` in bytes.
        A bucket ``output.dir`` never reaches a backend (the service pulls it from the bucket); a backend
        whose outputs live somewhere of its own (a volume, a rented host) implements this with
        :func:`~gpujob.backends.outputs.pull_dir` or its own transfer. The default says it cannot."""
        raise UserError(f"gpujob pull cannot fetch outputs from the {self.name} backend (yet)",
                        hint="set output.dir to a bucket (s3://, gs://, az://) to pull from anywhere")


class JobStore(Protocol):
    """What a backend's own supervisor may read and record of its job: the registry, as the layer
    above hands it down (:mod:`gpujob.supervisor`), seen through these three calls only."""

    def get(self, job_id: str) -> "Job":
        """The job as recorded."""

    def update(self, job_id: str, *, handle: dict[str, Any] | None = None,
               progress: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None) -> None:
        """Record the job's handle, progress snapshot or final metrics."""

    def add_history(self, job_id: str, points: list[dict[str, Any]]) -> None:
        """Record metric history points (:func:`gpujob.history.point`)."""

    def transition(self, job_id: str, status: str, *, reason: str | None = None,
                   exit_code: int | None = None, only_from: tuple[str, ...] = ...) -> bool:
        """Move the job to ``status`` if it is in ``only_from`` (default: any active status)."""


# ----------------------------------------------------------------------------- shared helpers


_ERROR_LINE = re.compile(
    r"^\s*(?:\[rank ?\d+\]:?\s*)?"   # "[rank 1] ", "[rank1]:": lines of ranks other than the writer
    r"(?:[A-Za-z_][\w.]*(?:Error|Exception|Interrupt)\b.*|(?:error|fatal|ERROR|FATAL)\b[:\s].*)$")
# torchrun's own summary of failed ranks ("...errors.ChildFailedError: " and a table): it says less
# than the rank's error above it, so it is never the error line.
_CHILD_FAILED = "ChildFailedError"
# The launcher's line (gpujob.runner.launch) when one of several processes failed.
_RANK_FAILED = re.compile(r"gpujob: (rank \d+ of \d+ failed first: .+)$")


def runtime_of(request: JobRequest, *models: "type[R]") -> "R":
    """The job's runtime section as one of ``models``, the backend's own (the docker engine also runs
    host jobs). A spec for another backend is refused: ``--backend`` switches a spec before it gets here."""
    runtime = request.spec.runtime
    for model in models:
        if isinstance(runtime, model):
            return runtime
    wanted = " or ".join(str(m.model_fields["backend"].default) for m in models)
    raise UserError(f"{request.spec_path or 'this spec'} runs on the {runtime.backend} backend, not {wanted}",
                    hint=f"pass --backend {models[0].model_fields['backend'].default}")


def last_error_line(lines: list[str]) -> str | None:
    """The last line that looks like an error message ("RuntimeError: CUDA out of memory")."""
    for line in reversed(lines):
        if _ERROR_LINE.match(line) and _CHILD_FAILED not in line:
            return cut_words(line, REASON_CHARS)
    return None


def rank_failure(lines: list[str]) -> str | None:
    """The launcher's word on a job of several processes: "rank 1 of 2 failed first: exited with
    code 1: RuntimeError: boom" (from its line ``gpujob: rank 1 of 2 failed first: ...``), or None."""
    for line in reversed(lines):
        found = _RANK_FAILED.search(line.rstrip())
        if found:
            return found.group(1)[:400]
    return None


REASON_CHARS = 1000  # of a job's error line quoted in its failure reason (cut after a whole word)


def failure_reason(code: int | None, lines: list[str], fallback: str | None = None,
                   message: str | None = None) -> str:
    """Why a job's process exited with ``code``, from the end of its log: the launcher's line naming
    the rank that failed first when several processes ran, else :func:`explain_exit` with the last
    error line (or ``fallback``, e.g. the container's termination message). ``message``: what the job
    said in its failed ``end`` event, added in brackets unless the error line already says it (the
    runner prints its error and reports it: one complete copy, not two cut ones)."""
    found = rank_failure(lines)
    if found:
        return found
    error = last_error_line(lines) or fallback
    if message and _says_same(error, message):
        return explain_exit(code, max(error or "", message, key=len))
    return explain_exit(code, error) + (f" ({message})" if message else "")


def _says_same(error: str | None, message: str) -> bool:
    """True when an error line ("DataError: no such column") and an end message ("no such column")
    are the same words, either one possibly cut short."""
    if not error:
        return False
    core = re.sub(r"^\s*[A-Za-z_][\w.]*(?:Error|Exception):\s*", "", error).rstrip("…").strip()
    said = message.rstrip("…").strip()
    n = min(len(core), len(said))
    return n > 0 and core[:n] == said[:n]


def read_tail(job: "Job", lines: list[str]) -> tuple[dict | None, list[dict]]:
    """For a backend that reads a job's log from afar: the job's progress snapshot advanced by the
    events in ``lines`` (the log's tail) newer than it (None when none is), and those events' metric
    history points; the lines are parsed once."""
    events: list[dict] = []
    return ProgressState.advance(job.progress, lines, folded_events=events), history.points(events)


def read_saved_log(path: Path, tail: int | None) -> list[str]:
    """A finished job's saved log (``LOG_NAME`` in its job folder), whole or its last ``tail`` lines."""
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    return lines[-tail:] if tail else ([] if tail == 0 else lines)


def runner_argv(python: str, spec_file: str) -> list[str]:
    return [python, "-m", RUNNER_MODULE, spec_file]


class Notice(str):
    """A line from gpujob itself inside a log stream ("waiting: unschedulable ..."), not the job's
    output: the CLI prints it to stderr, so stdout stays exactly what the job wrote."""


def budget_reason(max_cost: float | None, price_per_hour: float | None, step: int | None) -> str:
    """Why a job that reached limits.max_cost was stopped, the same on every backend: "stopped at the budget
    of $3.00 (limits.max_cost, at $3600.00/h) at step 17; resubmit with a higher limits.max_cost to resume"."""
    at = f", at {usd(price_per_hour)}/h" if price_per_hour else ""
    where = f" at step {step}" if step is not None else ""
    return f"{BUDGET_WORDS} {usd(max_cost or 0)} (limits.max_cost{at}){where}; resubmit with a higher limits.max_cost to resume"


def budget_stop(job: "Job", seen: Observed) -> str | None:
    """For a job stopped at its deadline (``seen``): the budget words when that deadline was its budget, not
    limits.max_runtime (the docker and kubernetes backends enforce the sooner of the two as one deadline)."""
    if not budget_comes_first(job.budget_s, job.max_runtime_s):
        return None
    return budget_reason(job.max_cost, job.price_usd_per_hour, ProgressState.from_dict(seen.progress or job.progress).step)


def usd(amount: float) -> str:
    """$3.00, $1,234.50; an amount that cents do not show exactly keeps its digits: $0.004, $0.0125."""
    return f"${amount:,.2f}" if abs(amount * 100 - round(amount * 100)) < 1e-9 else f"${amount:,.4g}"

