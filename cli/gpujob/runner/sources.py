"""Where the runner's data comes from: every spec ``Source`` found, its splits and columns checked.

Source kinds, detected from ``Source.dataset``:

* a local **Common Voice corpus dir** (``clips/`` and ``*.tsv``, or one language folder inside):
  splits are TSV files (``train``, ``dev``/``validation``, ``test``, ``validated``, ``other``, any
  ``<name>.tsv``), audio is ``clips/<path>``, the transcript column is ``sentence``;
* a local **audio folder** like Hugging Face's audiofolder: ``metadata.csv`` (or ``.jsonl``) with a
  ``file_name`` column plus a transcript column; a split is a subfolder (``DIR/train/metadata.csv``)
  or, for ``train``, the directory itself;
* a local **parquet/arrow dataset dir** or a **Hugging Face Hub dataset id**: :mod:`.hub`.

Splits joined with ``+`` are read one after the other, for every kind. The transcript column is the
source's ``text_column``, else the first of :data:`TEXT_COLUMNS` present (FLEURS has both a
normalised ``transcription`` and a cased, punctuated ``raw_transcription``; auto-detection picks the
former, so set ``text_column: raw_transcription`` for the latter). A row's id is, for Common Voice,
the clip's file name; for an audio folder ``split/file``; for datasets ``split/<audio path>`` or
``split/<row index>``. :func:`load_audio` turns a row's audio value into mono float32 at 16 kHz.
"""

from __future__ import annotations

import csv
import difflib
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from gpujob.spec.paths import looks_like_path
from gpujob.storage import is_uri

from .audio import TARGET_SR, AudioError, decode, to_mono_16k
from .hub import hf_parts
from .remote import local_path
from .source_parts import SPLIT_ALIASES, DataError, _Part, _Record, _short  # noqa: F401 (re-exported)

if TYPE_CHECKING:
    from gpujob.spec.models import Source

TEXT_COLUMNS = ("sentence", "transcription", "text", "normalized_text", "raw_transcription")
CV_SPLIT_FILES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev",
                  "test": "test", "validated": "validated", "other": "other", "invalidated": "invalidated"}
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
KIND_NAMES = {"common_voice": "Common Voice dir", "audiofolder": "audio folder",
              "local_dataset": "local dataset", "hub": "Hub dataset"}


@dataclass
class OpenedSource:
    """A source that was found and whose columns were checked; :meth:`records` reads it."""

    source: Source
    key: str                         # spec key, e.g. data.train[1]
    label: str                       # name in stats and reports
    kind: str                        # common_voice | audiofolder | local_dataset | hub
    location: str
    streaming: bool
    parts: list[_Part]
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

    def records(self, *, shuffle: bool = False, seed: int = 0) -> Iterator[_Record]:
        for i, part in enumerate(self.parts):
            yield from part.records(self.text_column, self.audio_column, shuffle, seed + i)


def _splits(source: Source, key: str) -> list[str]:
    parts = [p.strip() for p in str(source.split).split("+")]
    if not parts or any(not p for p in parts):
        raise DataError(f'"{source.split}" has an empty split name; join split names with +', key=f"{key}.split")
    return parts


def _has_metadata(folder: Path) -> bool:
    return any((folder / m).is_file() for m in METADATA_FILES)


def _is_cv_dir(folder: Path) -> bool:
    return (folder / "clips").is_dir() and any(folder.glob("*.tsv"))


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
    if root.exists():
        if not root.is_dir():
            raise DataError(f"{name} is a file; point `dataset` at a directory (Common Voice corpus, audio folder "
                            "with metadata.csv, or parquet/arrow files) or a Hugging Face Hub id", key=f"{key}.dataset")
        kind, base = _local_kind(root, source.config)
        if kind is None:
            raise DataError(f"{name} is a directory, but not one gpujob can read: expected a Common Voice corpus "
                            "(clips/ and *.tsv), an audio folder (metadata.csv with file_name and a transcript "
                            "column), or parquet/arrow files", key=f"{key}.dataset")
        if kind == "common_voice":
            parts = [_cv_part(base, s, key) for s in splits]
        elif kind == "audiofolder":
            parts = [_audiofolder_part(base, s, key) for s in splits]
        else:
            parts = hf_parts(source, str(base), splits, streaming=streaming, key=key, local=True)
    elif is_uri(name):
        raise DataError(f"{name} is in a bucket and was not staged: a job stages it before it reads it "
                        "(`gpujob check` reads local data only)", key=f"{key}.dataset")
    elif looks_like_path(name):
        raise DataError(f"directory {name} not found (relative paths are resolved from {Path.cwd()})",
                        key=f"{key}.dataset")
    else:
        kind = "hub"
        streaming = streaming if hub_streaming is None else hub_streaming
        parts = hf_parts(source, name, splits, streaming=streaming, key=key, local=False)
    text_column = _text_column(source, parts, label, key)
    audio_column = _audio_column(source, kind, parts, label, key)
    return OpenedSource(source, key, label, kind, name, streaming, parts, text_column, audio_column)


def _local_kind(root: Path, config: str | None) -> tuple[str | None, Path]:
    candidates = [root] + ([root / config] if config and (root / config).is_dir() else [])
    for base in reversed(candidates):
        if _is_cv_dir(base):
            return "common_voice", base
    subdirs = sorted(d for d in root.iterdir() if d.is_dir())
    cv_inside = [d for d in subdirs if _is_cv_dir(d)]
    if len(cv_inside) == 1:                      # cv-corpus-17.0/el/clips ...
        return "common_voice", cv_inside[0]
    if _has_metadata(root) or any(_has_metadata(d) for d in subdirs):
        return "audiofolder", root
    if (root / "dataset_dict.json").is_file() or (root / "state.json").is_file():
        return "local_dataset", root
    for pattern in ("*.parquet", "*.arrow"):
        if next(root.rglob(pattern), None) is not None:
            return "local_dataset", root
    return None, root


# --- Common Voice


def _cv_part(base: Path, split: str, key: str) -> _Part:
    candidates = [CV_SPLIT_FILES.get(split, split), split]
    tsv = next((base / f"{c}.tsv" for c in candidates if (base / f"{c}.tsv").is_file()), None)
    if tsv is None:
        have = sorted(p.stem for p in base.glob("*.tsv"))
        raise DataError(f'split "{split}" not found in Common Voice dir {base}; it has {", ".join(have)} '
                        "(dev and validation both mean dev.tsv)", key=f"{key}.split")
    with open(tsv, encoding="utf-8-sig", newline="") as f:
        header = f.readline().rstrip("\r\n").split("\t")
        num_rows = sum(1 for line in f if line.strip())
    clips = base / "clips"

    def records(text_col: str, audio_col: str, shuffle: bool, seed: int) -> Iterator[_Record]:
        column = audio_col if audio_col in header else "path"
        rows = _read_table(tsv, delimiter="\t")
        if shuffle:
            rows = _shuffled(((r.get(column) or "", r.get(text_col)) for r in rows), seed)
        else:
            rows = ((r.get(column) or "", r.get(text_col)) for r in rows)
        for path, text in rows:
            yield _Record(path, clips / path if path else "", text)

    return _Part(tsv.stem, header, num_rows, records)


def _read_table(path: Path, *, delimiter: str) -> Iterator[dict[str, str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix == ".jsonl":
            for line in f:
                if line.strip():
                    yield json.loads(line)
        else:
            quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
            yield from csv.DictReader(f, delimiter=delimiter, quoting=quoting)


def _shuffled(rows: Iterable[Any], seed: int) -> list[Any]:
    out = list(rows)
    random.Random(seed).shuffle(out)
    return out


# --- audio folder


def _audiofolder_part(root: Path, split: str, key: str) -> _Part:
    folder = next((root / s for s in (split, *SPLIT_ALIASES.get(split, ())) if _has_metadata(root / s)), None)
    if folder is None and split == "train" and _has_metadata(root):
        folder = root
    if folder is None:
        have = sorted(d.name for d in root.iterdir() if d.is_dir() and _has_metadata(d))
        have += ["train (the folder itself)"] if _has_metadata(root) else []
        raise DataError(f'split "{split}" not found in audio folder {root}: no {split}/metadata.csv; '
                        f'splits found: {", ".join(have) or "none"}', key=f"{key}.split")
    meta = next(folder / m for m in METADATA_FILES if (folder / m).is_file())
    if meta.suffix == ".jsonl":
        first = next(_read_table(meta, delimiter=","), {})
        header = list(first)
        num_rows = sum(1 for _ in _read_table(meta, delimiter=","))
    else:
        with open(meta, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            num_rows = sum(1 for row in reader if row)
    if "file_name" not in header:
        raise DataError(f"{meta} has no file_name column (columns: {', '.join(header) or 'none'}); an audio "
                        "folder's metadata names each clip's file in file_name", key=f"{key}.dataset")

    def records(text_col: str, audio_col: str, shuffle: bool, seed: int) -> Iterator[_Record]:
        column = audio_col if audio_col in header else "file_name"
        rows: Iterable[tuple[str, Any]] = ((r.get(column) or "", r.get(text_col)) for r in _read_table(meta, delimiter=","))
        if shuffle:
            rows = _shuffled(rows, seed)
        for file_name, text in rows:
            path = folder / file_name if file_name else ""
            yield _Record(str(Path(folder.name if folder != root else "") / file_name), path, text)

    return _Part(folder.name if folder != root else "train", header, num_rows, records)


# --- columns


def _did_you_mean(word: str, columns: list[str]) -> str:
    close = difflib.get_close_matches(word, columns, n=3, cutoff=0.5) or \
        difflib.get_close_matches(word.lower(), [c.lower() for c in columns], n=3, cutoff=0.5)
    return f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""


def _require_column(name: str, what: str, parts: list[_Part], label: str, key: str) -> str:
    """``name`` if every split has it; else a DataError with a did-you-mean and the columns that exist."""
    for part in parts:
        if name not in part.columns:
            raise DataError(f'{what} "{name}" not found in {label} (split {part.split}); '
                            f'{_did_you_mean(name, part.columns)}columns that exist: {", ".join(part.columns)}',
                            key=key)
    return name


def _text_column(source: Source, parts: list[_Part], label: str, key: str) -> str:
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


def _audio_column(source: Source, kind: str, parts: list[_Part], label: str, key: str) -> str:
    name = source.audio_column
    if kind == "common_voice":
        return name if name in parts[0].columns else "path"
    if kind == "audiofolder":
        return name if name in parts[0].columns else "file_name"
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
        raise AudioError(name, _short(exc)) from None


def _read_remote(url: str) -> bytes:
    try:
        from datasets.utils.file_utils import xopen
    except ImportError:  # pragma: no cover
        import fsspec

        with fsspec.open(url, "rb") as f:
            return f.read()
    with xopen(url, "rb") as f:
        return f.read()
