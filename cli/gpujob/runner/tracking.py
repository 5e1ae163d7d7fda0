"""Experiment trackers (the spec's ``tracking:``; each tracker is one module of :mod:`gpujob.spec.trackers`).

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
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from gpujob.spec.trackers import TRACKERS, Tracker

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

PROGRESS_SCALARS = ("loss", "learning_rate", "samples_per_s", "epoch")
NOT_SCALARS = {"step", "t", "event", "total_steps"}
TABLE_COLUMNS = ["source", "id", "wer", "reference", "prediction"]


def spec_config(spec: JobSpec) -> dict[str, Any]:
    """The spec as trackers get it: plain JSON values, without ``runtime.env`` and ``notify``."""
    data = spec.model_dump(mode="json", by_alias=True)
    data.pop("notify", None)
    if isinstance(data.get("runtime"), dict):
        data["runtime"].pop("env", None)
    return data


def numbers(fields: dict[str, Any], keys: tuple[str, ...] | None = None) -> dict[str, float]:
    """The fields that are plain numbers (not booleans), optionally only ``keys``."""
    return {k: float(v) for k, v in fields.items() if (keys is None and k not in NOT_SCALARS or keys and k in keys)
            and isinstance(v, (int, float)) and not isinstance(v, bool)}


def trackers_for(spec: JobSpec, out_dir: Path) -> list[Tracker]:
    """The trackers ``spec.tracking`` turns on (:data:`~gpujob.spec.trackers.TRACKERS`); directories default
    under ``out_dir``."""
    run_name = spec.name or "job"
    return [TRACKERS[name].make(getattr(spec.tracking, name), out_dir, run_name) for name in spec.tracking.enabled()]


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
                if isinstance(exc, ImportError) else TRACKERS[tracker.name].hint)
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
