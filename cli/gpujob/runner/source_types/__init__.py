"""The data source types the runner reads, registered in one place: one module each, named as the spec's
``type:`` value, each with ``KIND`` (a :class:`~gpujob.runner.source_parts.SourceKind`: ``detect(path)``
and ``read(...)``). The names and their order come from :data:`gpujob.spec.source_types.SOURCE_TYPES`,
the table the spec checks a ``type:`` against; a source without one is of the first local type whose
``detect`` says yes (:func:`detect`).

To add a type: a module here with ``KIND``, and its line in ``SOURCE_TYPES`` (README, "Adding a tracker
or a data source type").
"""

from __future__ import annotations

from importlib import import_module
from pathlib import Path

from gpujob.spec.source_types import SOURCE_TYPES

from ..source_parts import SourceKind

SOURCE_KINDS: dict[str, SourceKind] = {name: import_module(f"{__name__}.{name}").KIND for name in SOURCE_TYPES}


def detect(path: Path) -> SourceKind | None:
    """The first local type that the existing directory ``path`` is, in the table's order; None if none."""
    return next((kind for kind in SOURCE_KINDS.values() if kind.local and kind.detect(path)), None)
