"""Experiment trackers, registered in one place: one module each, named as its key under the spec's
``tracking:``, and :data:`NAMES`, the table (its order is the order they open in).

A tracker's module holds all of it: the settings the spec takes for it (a :class:`~gpujob.spec.fields.Section`),
its adapter (a :class:`~.base.Tracker`: open, scalars by step, a table, close), and ``KIND``, a
:class:`~.base.TrackerKind` that ties them to its credential and the hint shown when it fails. The
spec's ``tracking:`` section (:mod:`gpujob.spec.tracking`) and the runner's writer
(:mod:`gpujob.runner.tracking`) read only this table. An adapter imports its library when a job opens
it, never here, so the spec stays light wherever it is read.

To add one: a module ``<name>.py`` here with ``KIND``, and ``<name>`` in :data:`NAMES` (README,
"Adding a tracker or a data source type").
"""

from __future__ import annotations

from importlib import import_module

from .base import Tracker, TrackerKind

NAMES = ("tensorboard", "trackio", "wandb", "mlflow", "csv")

TRACKERS: dict[str, TrackerKind] = {name: import_module(f"{__name__}.{name}").KIND for name in NAMES}

__all__ = ["NAMES", "TRACKERS", "Tracker", "TrackerKind"]
