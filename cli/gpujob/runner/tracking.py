"""Experiment trackers (the spec's ``tracking:``): TensorBoard, trackio, Weights & Biases, MLflow.

:class:`TrackedWriter` wraps the job's :class:`~gpujob.progress.ProgressWriter`: every event is
written as before, and the trackers get the same numbers from it:

- ``start``: each tracker is opened, with the spec (a plain dict; it never holds a secret value, and
  ``runtime.env`` and ``notify`` are left out) as its config;
- ``progress``: ``loss``, ``learning_rate``, ``samples_per_s``, ``epoch`` at ``step``;
- ``eval``: ``wer``, ``cer``, ``eval_loss`` and the per-source ``wer/<name>``, ``cer/<name>`` at ``step``
  (in MLflow ``wer.<name>``: its file store takes ``/`` for a folder);
- ``system``: the latest system sample's numbers (CPU, memory, GPU utilisation and memory, loader wait)
  as ``system/<name>``, logged with the next progress or eval at its step (from the runner's sampler);
- :meth:`TrackedWriter.worst_utterances`: the worst utterances of the final evaluation as a table;
- ``end``: each tracker is closed (finished or failed).

Only the writer process (rank 0) has one. Libraries are imported when a tracker opens. A tracker
that fails (not installed, a bad key, no network, an unwritable directory, any exception in a
call) prints one line on stderr naming it and what to do, and is skipped from then on: the job
never fails because of a tracker. What the libraries print goes to stderr, so that it never
mixes with the event lines on stdout.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

PROGRESS_SCALARS = ("loss", "learning_rate", "samples_per_s", "epoch")
NOT_SCALARS = {"step", "t", "event", "total_steps"}
TABLE_COLUMNS = ["source", "id", "wer", "reference", "prediction"]
HINTS = {
    "tensorboard": "check that tracking.tensorboard.dir can be written",
    "trackio": "check tracking.trackio (a space_id needs HF_TOKEN in runtime.secrets)",
    "wandb": "add WANDB_API_KEY to runtime.secrets (and export it), or set tracking.wandb.mode: offline",
    "mlflow": "check tracking.mlflow.tracking_uri and, for a server that wants one, the MLFLOW_TRACKING_TOKEN secret",
}


class Tracker(Protocol):
    """One tracker: opened once, then scalars by step, a table, and closed."""

    name: str

    def open(self, config: dict[str, Any]) -> None: ...
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...
    def close(self, ok: bool) -> None: ...


def spec_config(spec: JobSpec) -> dict[str, Any]:
    """The spec as trackers get it: plain JSON values, without ``runtime.env`` and ``notify``."""
    data = spec.model_dump(mode="json", by_alias=True)
    data.pop("notify", None)
    if isinstance(data.get("runtime"), dict):
        data["runtime"].pop("env", None)
    return data


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"seed": 1}}`` -> ``{"training.seed": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def numbers(fields: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """The fields that are plain numbers (not booleans), optionally only ``keys``."""
    return {k: float(v) for k, v in fields.items() if (keys is None and k not in NOT_SCALARS or keys and k in keys)
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


# --------------------------------------------------------------------------------- the trackers


class TensorBoard:
    name = "tensorboard"

    def __init__(self, directory: Path, run_name: str) -> None:
        self.dir, self.run_name, self.writer = directory, run_name, None

    def open(self, config):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.dir), flush_secs=30)
        self.writer.add_text("spec", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def scalars(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def table(self, name, columns, rows, step):
        cells = lambda row: " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row)  # noqa: E731
        text = "\n".join([f"| {cells(columns)} |", "|" + "---|" * len(columns), *(f"| {cells(r)} |" for r in rows)])
        self.writer.add_text(name, text, step)

    def close(self, ok):
        if self.writer is not None:
            self.writer.close()


class Trackio:
    name = "trackio"

    def __init__(self, directory: Path, project: str, run_name: str, space_id: str | None) -> None:
        self.dir, self.project, self.run_name, self.space_id = directory, project, run_name, space_id
        self.run = None

    def open(self, config):
        os.environ.setdefault("TRACKIO_DIR", str(self.dir))  # read by trackio when imported
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=self.project, name=self.run_name, config=config, space_id=self.space_id,
                                embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def scalars(self, step, values):
        self.trackio.log(values, step=step)

    def table(self, name, columns, rows, step):
        self.trackio.log({name: self.trackio.Table(columns=columns, data=rows)}, step=step)

    def close(self, ok):
        if self.run is not None:
            self.trackio.finish()


class Wandb:
    name = "wandb"

    def __init__(self, settings, directory: Path, project: str, run_name: str) -> None:
        self.settings, self.dir, self.project, self.run_name = settings, directory, project, run_name
        self.run = None

    def open(self, config):
        import wandb

        self.wandb = wandb
        self.dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        self.run = wandb.init(project=self.project, entity=s.entity, name=self.run_name, dir=str(self.dir),
                              mode=s.mode, config=config, tags=list(s.tags) or None,
                              settings=wandb.Settings(console="off", silent=True, init_timeout=60,
                                                      x_disable_stats=True))

    def scalars(self, step, values):
        self.run.log(values, step=step)

    def table(self, name, columns, rows, step):
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self, ok):
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)


class Mlflow:
    """MLflow through its client (no global state); metrics go in batches (at most every 10 s, and at
    each evaluation and the end), so that a remote server is not asked once per step. Per-source
    scores are named ``wer.<name>`` there (:func:`mlflow_key`)."""

    name = "mlflow"
    FLUSH_S = 10.0

    def __init__(self, uri: str, experiment: str, run_name: str) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.run_id, self.pending, self.flushed = None, [], time.monotonic()

    def open(self, config):
        if self.uri.startswith("file:"):  # MLflow 3 wants an explicit yes for its file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a lost server costs seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.Metric, self.client = Metric, MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
        params = [Param(k[:250], json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in flat(config).items() if v is not None]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_dict(self.run_id, config, "spec.json")

    def scalars(self, step, values):
        now = int(time.time() * 1000)
        self.pending += [self.Metric(mlflow_key(k), v, now, step) for k, v in values.items()]
        if any(k.startswith(("wer", "cer", "eval_loss")) for k in values) or \
                time.monotonic() - self.flushed >= self.FLUSH_S or len(self.pending) >= 900:
            self.flush()

    def flush(self):
        pending, self.pending, self.flushed = self.pending, [], time.monotonic()
        for start in range(0, len(pending), 1000):
            self.client.log_batch(self.run_id, metrics=pending[start:start + 1000])

    def table(self, name, columns, rows, step):
        self.client.log_dict(self.run_id, {"columns": columns, "data": rows}, f"{name}.json")

    def close(self, ok):
        if self.run_id is not None:
            self.flush()
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def mlflow_key(key: str) -> str:
    """MLflow's name for a scalar: ``wer/fleurs`` -> ``wer.fleurs`` (its file store makes ``/`` a folder,
    and ``wer`` is already a file)."""
    return key.replace("/", ".")


def trackers_for(spec: JobSpec, out_dir: Path) -> list[Tracker]:
    """The trackers ``spec.tracking`` turns on; directories default under ``out_dir``."""
    t, run_name = spec.tracking, spec.name or "job"
    made: list[Tracker] = []
    if t.tensorboard is not None:
        made.append(TensorBoard(Path(t.tensorboard.dir or out_dir / "tensorboard"), run_name))
    if t.trackio is not None:
        made.append(Trackio(out_dir / "trackio", t.trackio.project or run_name, run_name, t.trackio.space_id))
    if t.wandb is not None:
        made.append(Wandb(t.wandb, Path(t.wandb.dir or out_dir), t.wandb.project or run_name, run_name))
    if t.mlflow is not None:
        uri = t.mlflow.tracking_uri or (out_dir / "mlruns").resolve().as_uri()
        made.append(Mlflow(uri, t.mlflow.experiment or run_name, run_name))
    return made


# ----------------------------------------------------------------------------------- the writer


class TrackedWriter:
    """A progress writer that also feeds the trackers (see the module's text)."""

    def __init__(self, writer, trackers: list[Tracker], config: dict[str, Any], *, warn=None) -> None:
        self.writer, self.trackers, self.config = writer, list(trackers), config
        self.opened: list[Tracker] = []
        self.step = 0
        self.closed = False
        self._warn = warn or (lambda line: print(line, file=sys.stderr, flush=True))
        self._lock = threading.RLock()
        self._system: dict[str, float] | None = None  # the latest system sample not yet logged

    def _each(self, action: str, call, trackers: list[Tracker] | None = None) -> None:
        with self._lock:
            self._each_locked(action, call, trackers)

    def _each_locked(self, action: str, call, trackers: list[Tracker] | None) -> None:
        for tracker in list(self.opened if trackers is None else trackers):
            try:
                with contextlib.redirect_stdout(sys.stderr):
                    call(tracker)
            except BaseException as exc:  # noqa: BLE001 - a tracker never fails the job (KeyboardInterrupt: see below)
                if isinstance(exc, KeyboardInterrupt):
                    raise
                self._drop(tracker, action, exc)

    def _drop(self, tracker: Tracker, action: str, exc: BaseException) -> None:
        if tracker in self.opened:
            self.opened.remove(tracker)
        hint = ("install gpujob[trackers] where the job runs (the gpujob image has it)"
                if isinstance(exc, ImportError) else HINTS[tracker.name])
        message = " ".join(str(exc).split())[:300] or type(exc).__name__
        self._warn(f"gpujob: tracking.{tracker.name} failed to {action} ({type(exc).__name__}: {message}); "
                   f"the job goes on without it: {hint}")

    # the ProgressWriter's methods
    def emit(self, event: str, **fields: Any) -> None:
        getattr(self, event)(**fields)

    def start(self, **fields: Any) -> None:
        self.writer.start(**fields)
        with self._lock:  # no system sample reaches a tracker before it is open
            if not self.opened and not self.closed:
                pending, self.trackers = self.trackers, []
                self.opened = list(pending)
                self._each("start", lambda t: t.open(self.config), pending)

    def progress(self, **fields: Any) -> None:
        self.writer.progress(**fields)
        self._scalars(fields, PROGRESS_SCALARS)
        self._flush_system()

    def eval(self, **fields: Any) -> None:
        self.writer.eval(**fields)
        self._scalars(fields, None)
        self._flush_system()

    def _scalars(self, fields: dict[str, Any], keys: tuple[str, ...] | None) -> None:
        self.step = int(fields.get("step", self.step) or 0)
        values = numbers(fields, keys)
        if values:
            self._each("log", lambda t: t.scalars(self.step, values))

    def checkpoint(self, **fields: Any) -> None:
        self.writer.checkpoint(**fields)

    def artifact(self, **fields: Any) -> None:
        self.writer.artifact(**fields)

    def heartbeat(self, **fields: Any) -> None:
        self.writer.heartbeat(**fields)

    def system(self, **fields: Any) -> None:
        """A system sample (runner/sysmetrics.py), written now; the trackers get its numbers as
        ``system/<name>`` with the next progress or eval, on the training loop's thread (trackio, for one,
        keeps its run per thread, and no tracker is asked to log from two threads at once)."""
        self.writer.system(**fields)
        values = {f"system/{k}": v for k, v in numbers(fields).items() if k != "n"}
        if values:
            self._system = values  # the latest only (one assignment: safe across threads)

    def _flush_system(self) -> None:
        values, self._system = self._system, None
        if values:
            self._each("log", lambda t: t.scalars(self.step, values))

    def worst_utterances(self, rows: list[dict[str, Any]]) -> None:
        """The worst utterances (:func:`gpujob.runner.metrics.worst`) as a table named ``worst_utterances``."""
        table = [[u.get("source", ""), u["id"], u["wer"], u["reference"], u["prediction"]] for u in rows]
        self._each("log the worst utterances", lambda t: t.table("worst_utterances", TABLE_COLUMNS, table, self.step))

    def end(self, **fields: Any) -> None:
        self.writer.end(**fields)
        self.close(ok=fields.get("status") == "succeeded")

    def close(self, ok: bool = False) -> None:
        if not self.closed:
            self.closed = True
            self._each("finish", lambda t: t.close(ok))
            self.opened = []


def wrap(writer, spec: JobSpec, out_dir: Path):
    """``writer`` itself when ``spec.tracking`` turns nothing on, else a :class:`TrackedWriter`."""
    trackers = trackers_for(spec, out_dir)
    return TrackedWriter(writer, trackers, spec_config(spec)) if trackers else writer


def log_worst(writer, rows: list[dict[str, Any]]) -> None:
    """Give the trackers the worst utterances, where ``writer`` has any (a plain writer has not)."""
    method = getattr(writer, "worst_utterances", None)
    if method is not None:
        method(rows=rows)
