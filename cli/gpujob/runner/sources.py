"""Where the runner's data comes from: every spec ``Source`` found, its splits and columns checked.

Source types (the spec's ``type:``, detected from ``Source.dataset`` when absent) are registered in
:mod:`.source_types`, one module each: a Common Voice corpus dir, an audio folder, a folder of JSON-lines
manifests, a local parquet/arrow dataset dir, a Hugging Face Hub dataset id (the last two: :mod:`.hub`).

Splits joined with ``+`` are read one after the other, for every kind. The transcript column is the
source's ``text_column``, else the first of :data:`TEXT_COLUMNS` present (FLEURS has both a
normalised ``transcription`` and a cased, punctuated ``raw_transcription``; auto-detection picks the
former, so set ``text_column: raw_transcription`` for the latter). A row's id is each type's (its
module says; for datasets ``split/<audio path>`` or ``split/<row index>``). :func:`load_audio` turns a
row's audio value into mono float32 at 16 kHz.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpujob.spec.paths import looks_like_path
from gpujob.spec.source_types import SOURCE_TYPES
from gpujob.storage import is_uri

from .audio import TARGET_SR, AudioError, decode, to_mono_16k
from .remote import local_path
from .source_parts import DataError, Part, Record, SourceKind, short
from .source_types import SOURCE_KINDS, detect

if TYPE_CHECKING:
    from gpujob.spec.models import Source

TEXT_COLUMNS = ("sentence", "transcription", "text", "normalized_text", "raw_transcription")


@dataclass
class OpenedSource:
    """A source that was found and whose columns were checked; :meth:`records` reads it."""

    source: Source
    key: str                         # spec key, e.g. data.train[1]
    label: str                       # name in stats and reports
    kind: str                        # its type: a name in source_types.SOURCE_KINDS
    location: str
    streaming: bool
    parts: list[Part]
    text_column: str
    audio_column: str

    @property
    def num_rows(self) -> int | None:
        """Rows in all its splits (before filtering), or None when unknown (streamed from the Hub)."""
        sizes = [p.num_rows for p in self.parts]
        return None if any(n is None for n in sizes) else sum(sizes)  # type: ignore[misc]

    @property
    def columns(self) -> list[str]:
        return self.parts[0].columns if self.parts else []

    def records(self, *, shuffle: bool = False, seed: int = 0) -> Iterator[Record]:
        for i, part in enumerate(self.parts):
            yield from part.records(self.text_column, self.audio_column, shuffle, seed + i)


def _splits(source: Source, key: str) -> list[str]:
    parts = [p.strip() for p in str(source.split).split("+")]
    if not parts or any(not p for p in parts):
        raise DataError(f'"{source.split}" has an empty split name; join split names with +', key=f"{key}.split")
    return parts


def open_source(source: Source, *, streaming: bool, key: str = "data.train[0]", label: str | None = None,
                hub_streaming: bool | None = None) -> OpenedSource:
    """Find ``source`` (a spec ``Source``), resolve its splits and columns; raise :class:`DataError`.

    ``hub_streaming``, when given, replaces ``streaming`` for Hub ids only (preflight samples Hub
    datasets by streaming rather than downloading them whole).
    """
    name = source.dataset
    label = label or name
    root = Path(local_path(name)).expanduser()  # a bucket's prefix: its staged copy (runner/remote.py)
    splits = _splits(source, key)
    if source.type is not None:
        kind = _given_kind(source, root, key)
    elif root.exists():
        if not root.is_dir():
            raise DataError(f"{name} is a file; point `dataset` at a directory (Common Voice corpus, audio folder "
                            "with metadata.csv, JSON-lines manifests, or parquet/arrow files) or a Hugging Face Hub "
                            "id", key=f"{key}.dataset")
        kind = detect(root)
        if kind is None:
            raise DataError(f"{name} is a directory, but not one gpujob can read: expected a Common Voice corpus "
                            "(clips/ and *.tsv), an audio folder (metadata.csv with file_name and a transcript "
                            "column), JSON-lines manifests (<split>.jsonl, a line per clip with audio and text), "
                            "or parquet/arrow files", key=f"{key}.dataset")
    elif is_uri(name):
        raise DataError(f"{name} is in a bucket and was not staged: a job stages it before it reads it "
                        "(`gpujob check` reads local data only)", key=f"{key}.dataset")
    elif looks_like_path(name):
        raise DataError(f"directory {name} not found (relative paths are resolved from {Path.cwd()})",
                        key=f"{key}.dataset")
    else:
        kind = SOURCE_KINDS["hub"]
    if not kind.local:
        streaming = streaming if hub_streaming is None else hub_streaming
    parts = kind.read(source, root, splits, streaming=streaming, key=key)
    text_column = _text_column(source, parts, label, key)
    audio_column = _audio_column(source, kind, parts, label, key)
    return OpenedSource(source, key, label, kind.name, name, streaming, parts, text_column, audio_column)


def _given_kind(source: Source, root: Path, key: str) -> SourceKind:
    """The spec's ``type:``, checked against what ``dataset`` is."""
    kind = SOURCE_KINDS[source.type or ""]
    if kind.local and not root.is_dir():
        raise DataError(f"directory {source.dataset} not found (type: {kind.name} reads a local directory; "
                        f"relative paths are resolved from {Path.cwd()})", key=f"{key}.dataset")
    if kind.local and not kind.detect(root):
        found = detect(root)
        seems = f"it looks like {found.label} (type: {found.name}); " if found else ""
        raise DataError(f"{source.dataset} is not {SOURCE_TYPES[kind.name]}; {seems}fix type, or leave it out to "
                        "have it detected", key=f"{key}.type")
    return kind


def _did_you_mean(word: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(word, columns, n=3, cutoff=0.5) or \
        difflib.get_close_matches(word.lower(), [c.lower() for c in columns], n=3, cutoff=0.5)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def _require_column(name: str, what: str, parts: list[Part], label: str, key: str) -> str:
    """``name`` if every split has it; else a DataError with a did-you-mean and the columns that exist."""
    for part in parts:
        if name not in part.columns:
            raise DataError(f'{what} "{name}" not found in {label} (split {part.split}); '
                            f'{_did_you_mean(name, part.columns)}columns that exist: {", ".join(part.columns)}',
                            key=key)
    return name


def _text_column(source: Source, parts: list[Part], label: str, key: str) -> str:
    columns = parts[0].columns
    if source.text_column:
        return _require_column(source.text_column, "column", parts, label, f"{key}.text_column")
    name = next((c for c in TEXT_COLUMNS if all(c in p.columns for p in parts)), None)
    if name is None:
        close = sorted({m for c in TEXT_COLUMNS for m in difflib.get_close_matches(c, columns, n=2, cutoff=0.6)})
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise DataError(f"no transcript column found in {label} (looked for {', '.join(TEXT_COLUMNS)}); {hint}"
                        f"columns that exist: {', '.join(columns) or 'none'} — set text_column to the one that "
                        "holds the transcript", key=f"{key}.text_column")
    return name


def _audio_column(source: Source, kind: SourceKind, parts: list[Part], label: str, key: str) -> str:
    name = source.audio_column
    if kind.audio_column is not None:  # the type's own column unless the spec's exists
        return name if name in parts[0].columns else kind.audio_column
    return _require_column(name, "audio column", parts, label, f"{key}.audio_column")


# --- a row's audio


def load_audio(value: Any, *, name: str | None = None) -> np.ndarray:
    """A row's audio value (path, bytes, ``{bytes, path}`` or ``{array, sampling_rate}``) -> float32 16 kHz."""
    try:
        if isinstance(value, dict):
            if value.get("array") is not None:
                return to_mono_16k(np.asarray(value["array"]), int(value.get("sampling_rate") or TARGET_SR))
            if value.get("bytes"):
                return decode(value["bytes"], name=value.get("path") or name)
            value = value.get("path")
            if not value:
                raise AudioError(name, "the audio column holds neither bytes nor a path")
        if isinstance(value, (bytes, bytearray, memoryview)):
            return decode(bytes(value), name=name)
        if isinstance(value, Path):
            return decode(value)
        if isinstance(value, str):
            if not value:
                raise AudioError(name, "no audio file named in this row")
            if "://" in value or "::" in value:
                return decode(_read_remote(value), name=value)
            return decode(value)
        raise AudioError(name, f"unsupported audio value of type {type(value).__name__}")
    except AudioError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of one clip is a bad clip
        raise AudioError(name, short(exc)) from None


def _read_remote(url: str) -> bytes:
    try:
        from datasets.utils.file_utils import xopen
    except ImportError:  # pragma: no cover
        import fsspec

        with fsspec.open(url, "rb") as f:
            return f.read()
    with xopen(url, "rb") as f:
        return f.read()
