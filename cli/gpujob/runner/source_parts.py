"""What every data source is made of, shared by :mod:`.sources`, :mod:`.hub` and each source type
(:mod:`.source_types`): what a type is (:class:`SourceKind`), a split's rows (:class:`Part`,
:class:`Record`), the split names taken as one another, :class:`DataError`, and the table readers."""

from __future__ import annotations

import csv
import json
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from gpujob.spec.models import Source

SPLIT_ALIASES = {"dev": ("validation", "valid", "val"), "validation": ("dev", "valid", "val"),
                 "valid": ("validation", "dev"), "val": ("validation", "dev"), "test": ("eval",), "eval": ("test",)}


class DataError(Exception):
    """A problem with a data source, phrased for the user; ``key`` is the spec key it concerns."""

    def __init__(self, message: str, *, key: str | None = None):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


def short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class Record:
    id: str
    audio: Any   # a path, bytes, or a datasets-style dict {bytes, path} / {array, sampling_rate}
    text: Any


@dataclass
class Part:
    split: str                       # the split name as resolved (e.g. dev for validation)
    columns: list[str]
    num_rows: int | None
    records: Callable[[str, str, bool, int], Iterator[Record]]  # (text_col, audio_col, shuffle, seed)


class SourceKind(Protocol):
    """One type of data source (``type:`` on a spec source), as :mod:`.source_types` registers it."""

    name: str                         # the spec's type: (gpujob.spec.source_types.SOURCE_TYPES)
    label: str                        # how messages and `gpujob check` call it ("audio folder")
    local: bool                       # read from a local directory (False: a Hub id)
    audio_column: str | None          # the column that names each clip's audio when the spec's is absent;
                                      # None: the spec's audio_column must exist

    def detect(self, path: Path) -> bool:
        """Whether the existing directory ``path`` is of this type."""
        ...

    def read(self, source: Source, path: Path, splits: list[str], *, streaming: bool, key: str) -> list[Part]:
        """One :class:`Part` per split name; a :class:`DataError` naming ``key`` when one is missing."""
        ...


def read_table(path: Path, *, delimiter: str) -> Iterator[dict[str, Any]]:
    """The rows of a CSV/TSV file (``delimiter``) or, for ``.jsonl``, of a JSON-lines file."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix == ".jsonl":
            for line in f:
                if line.strip():
                    yield json.loads(line)
        else:
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            yield from csv.DictReader(f, delimiter=delimiter, quoting=quoting)


def shuffled(rows: Iterable[Any], seed: int) -> list[Any]:
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out
