"""What every tracker is: the adapter's :class:`Tracker` protocol and the table entry :class:`TrackerKind`."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Protocol

from gpujob.spec.fields import Section


class Tracker(Protocol):
    """One tracker: opened once, then scalars by step, a table, and closed. Any exception it raises is
    caught by the runner's writer, which warns once with :attr:`TrackerKind.hint` and drops it."""

    name: str

    def open(self, config: dict[str, Any]) -> None: ...
    def scalars(self, step: int, values: dict[str, float]) -> None: ...
    def table(self, name: str, columns: list[str], rows: list[list[Any]], step: int) -> None: ...
    def close(self, ok: bool) -> None: ...


@dataclass(frozen=True)
class TrackerKind:
    """A tracker as the table knows it."""

    name: str                                   # its key under `tracking:`
    settings: type[Section]                     # the mapping `tracking.<name>` takes (`true` is all defaults)
    doc: str                                    # the key's line in the spec reference
    secret: str                                 # the credential its library reads from the environment, or "none"
    hint: str                                   # what to do when it fails (after "the job goes on without it: ")
    make: Callable[[Any, Path, str], Tracker]   # (its settings, the job's output dir, the run's name) -> adapter
