"""What every data source is made of, shared by :mod:`.sources` and :mod:`.hub`: a split's rows
(:class:`_Part`, :class:`_Record`), the split names taken as one another, and :class:`DataError`."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

SPLIT_ALIASES = {"dev": ("validation", "valid", "val"), "validation": ("dev", "valid", "val"),
                 "valid": ("validation", "dev"), "val": ("validation", "dev"), "test": ("eval",), "eval": ("test",)}


class DataError(Exception):
    """A problem with a data source, phrased for the user; ``key`` is the spec key it concerns."""

    def __init__(self, message: str, *, key: str | None = None):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


@dataclass
class _Record:
    id: str
    audio: Any   # a path, bytes, or a datasets-style dict {bytes, path} / {array, sampling_rate}
    text: Any


@dataclass
class _Part:
    split: str                       # the split name as resolved (e.g. dev for validation)
    columns: list[str]
    num_rows: int | None
    records: Callable[[str, str, bool, int], Iterator[_Record]]  # (text_col, audio_col, shuffle, seed)
