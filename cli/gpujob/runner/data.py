"""The runner's data layer: every spec ``Source`` -> one stream of ``{"audio", "text", "source", "id"}``.

Source kinds, detected from ``Source.dataset``:

* a local **Common Voice corpus dir** (``clips/`` and ``*.tsv``, or one language folder inside):
  splits are TSV files (``train``, ``dev``/``validation``, ``test``, ``validated``, ``other``, any
  ``<name>.tsv``), audio is ``clips/<path>``, the transcript column is ``sentence``;
* a local **audio folder** like Hugging Face's audiofolder: ``metadata.csv`` (or ``.jsonl``) with a
  ``file_name`` column plus a transcript column; a split is a subfolder (``DIR/train/metadata.csv``)
  or, for ``train``, the directory itself;
* a local **parquet/arrow dataset dir** (parquet or arrow files, split names inferred from the file
  names the way ``datasets`` does, or a ``save_to_disk`` directory); a ``config`` that names a
  subfolder selects it;
* a **Hugging Face Hub dataset id**, read with ``datasets.load_dataset(id, config, split=...,
  revision=..., streaming=...)``. Audio columns are cast to ``Audio(decode=False)`` and decoded by
  :func:`gpujob.runner.audio.decode` (never by ``datasets``/torchcodec). ``google/fleurs`` loads at
  ``revision: refs/convert/parquet``; datasets that need a loading script do not load with
  ``datasets`` >= 4 (use their parquet conversion the same way, or a local copy).

Splits joined with ``+`` are read one after the other, for every kind. The transcript column is the
source's ``text_column``, else the first of :data:`TEXT_COLUMNS` present (FLEURS has both a
normalised ``transcription`` and a cased, punctuated ``raw_transcription``; auto-detection picks the
former, so set ``text_column: raw_transcription`` for the latter). Every example has the same
schema: ``audio`` (mono float32 numpy array at 16 kHz), ``text`` (stripped str), ``source`` (the
spec's ``dataset``) and ``id`` (Common Voice: the clip's file name; audio folder: ``split/file``;
datasets: ``split/<audio path>`` or ``split/<row index>``). Clips over 30 s and empty transcripts are
dropped, undecodable clips skipped, and all of it is counted in :class:`Stats`.

:func:`iter_examples` mixes sources by weight. Streaming and non-streaming use the same generator
code; ``streaming`` only decides whether Hub/parquet datasets are downloaded first. By default the
mix runs until **every** source is exhausted: each example of each source is yielded exactly once
(no source is repeated or cut short) and the weights only decide the interleaving — a source with
twice the weight is drawn twice as often while both last, so it runs out sooner.
``stop="first_exhausted"`` ends the mix when the first source runs out instead.

:func:`preflight` checks a spec's sources before a job is launched.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import csv
import difflib
import itertools
import json
import math
import os
import random
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from .audio import TARGET_SR, AudioError, decode, to_mono_16k

TEXT_COLUMNS = ("sentence", "transcription", "text", "normalized_text", "raw_transcription")
MAX_SECONDS = 30.0
DECODER_MAX_TOKENS = 448
MIN_CLIPS_FOR_BAD_SHARE = 20
MAX_BAD_PATHS_KEPT = 1000
CV_SPLIT_FILES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev",
                  "test": "test", "validated": "validated", "other": "other", "invalidated": "invalidated"}
SPLIT_ALIASES = {"dev": ("validation", "valid", "val"), "validation": ("dev", "valid", "val"),
                 "valid": ("validation", "dev"), "val": ("validation", "dev"), "test": ("eval",), "eval": ("test",)}
METADATA_FILES = ("metadata.csv", "metadata.jsonl")
KIND_NAMES = {"common_voice": "Common Voice dir", "audiofolder": "audio folder",
              "local_dataset": "local dataset", "hub": "Hub dataset"}
_FIX_HUB = ("check the network (and that HF_HUB_OFFLINE / HF_DATASETS_OFFLINE are not set), set HF_TOKEN "
            "(list it under runtime.secrets) if the dataset is private or gated and you accepted its terms, "
            "or download a local copy and point `dataset:` at that directory")

__all__ = ["DECODER_MAX_TOKENS", "MAX_SECONDS", "TEXT_COLUMNS", "DataError", "OpenedSource", "PreflightReport",
           "SourceReport", "SourceStats", "Stats", "iter_examples", "load_audio", "loader_threads", "open_source",
           "preflight"]


class DataError(Exception):
    """A problem with a data source, phrased for the user; ``key`` is the spec key it concerns."""

    def __init__(self, message: str, *, key: str | None = None):
        self.key = key
        self.message = message
        super().__init__(f"{key}: {message}" if key else message)


# ----------------------------------------------------------------------------------------- stats


@dataclass
class SourceStats:
    """Counts for one source (clips read = kept + too_long + empty_text + bad_audio)."""

    label: str
    kept: int = 0
    too_long: int = 0
    empty_text: int = 0
    bad_audio: int = 0
    audio_seconds: float = 0.0  # of the kept clips
    bad_paths: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.kept + self.too_long + self.empty_text + self.bad_audio

    @property
    def bad_share(self) -> float:
        return self.bad_audio / self.seen if self.seen else 0.0

    def line(self) -> str:
        return (f"{self.seen} read: {self.kept} kept ({self.audio_seconds / 60:.1f} min), {self.too_long} over "
                f"{MAX_SECONDS:g} s, {self.empty_text} empty transcripts, {self.bad_audio} bad audio")


@dataclass
class Stats:
    """What the filters did, in total and per source (keyed by the source's label)."""

    kept: int = 0
    too_long: int = 0
    empty_text: int = 0
    bad_audio: int = 0
    audio_seconds: float = 0.0
    bad_paths: list[str] = field(default_factory=list)
    per_source: dict[str, SourceStats] = field(default_factory=dict)

    @property
    def seen(self) -> int:
        return self.kept + self.too_long + self.empty_text + self.bad_audio

    def source(self, label: str) -> SourceStats:
        if label not in self.per_source:
            self.per_source[label] = SourceStats(label)
        return self.per_source[label]

    def count(self, label: str, outcome: str, *, seconds: float = 0.0, path: str | None = None) -> None:
        """Record one clip: ``outcome`` is kept, too_long, empty_text or bad_audio."""
        per = self.source(label)
        for target in (self, per):
            setattr(target, outcome, getattr(target, outcome) + 1)
            if outcome == "kept":
                target.audio_seconds += seconds
            if path is not None and len(target.bad_paths) < MAX_BAD_PATHS_KEPT:
                target.bad_paths.append(path)

    def summary(self) -> str:
        lines = [f"total: {self.seen} read, {self.kept} kept ({self.audio_seconds / 3600:.2f} h), "
                 f"{self.too_long} over {MAX_SECONDS:g} s, {self.empty_text} empty transcripts, "
                 f"{self.bad_audio} bad audio"]
        lines += [f"  {label}: {s.line()}" for label, s in self.per_source.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------------- opening sources


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


@dataclass
class OpenedSource:
    """A source that was found and whose columns were checked; :meth:`records` reads it."""

    source: Any                      # gpujob.spec.models.Source
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


def _splits(source: Any, key: str) -> list[str]:
    parts = [p.strip() for p in str(source.split).split("+")]
    if not parts or any(not p for p in parts):
        raise DataError(f'"{source.split}" has an empty split name; join split names with +', key=f"{key}.split")
    return parts


def _looks_like_path(name: str) -> bool:
    return (name.startswith((".", "/", "~", "\\")) or name.endswith(("/", "\\")) or "\\" in name
            or re.match(r"^[A-Za-z]:[\\/]", name) is not None or name.count("/") > 1)


def _has_metadata(folder: Path) -> bool:
    return any((folder / m).is_file() for m in METADATA_FILES)


def _is_cv_dir(folder: Path) -> bool:
    return (folder / "clips").is_dir() and any(folder.glob("*.tsv"))


def open_source(source: Any, *, streaming: bool, key: str = "data.train[0]", label: str | None = None,
                hub_streaming: bool | None = None) -> OpenedSource:
    """Find ``source`` (a spec ``Source``), resolve its splits and columns; raise :class:`DataError`.

    ``hub_streaming``, when given, replaces ``streaming`` for Hub ids only (preflight samples Hub
    datasets by streaming rather than downloading them whole).
    """
    name = source.dataset
    label = label or name
    root = Path(name).expanduser()
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
            parts = _hf_parts(source, str(base), splits, streaming=streaming, key=key, local=True)
    elif _looks_like_path(name):
        raise DataError(f"directory {name} not found (relative paths are resolved from {Path.cwd()})",
                        key=f"{key}.dataset")
    else:
        kind = "hub"
        streaming = streaming if hub_streaming is None else hub_streaming
        parts = _hf_parts(source, name, splits, streaming=streaming, key=key, local=False)
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


# --- datasets (local parquet/arrow and the Hub)


def _hf_parts(source: Any, path: str, splits: list[str], *, streaming: bool, key: str, local: bool) -> list[_Part]:
    return [_hf_part(source, path, split, streaming=streaming, key=key, local=local) for split in splits]


def _hf_part(source: Any, path: str, split: str, *, streaming: bool, key: str, local: bool) -> _Part:
    ds, split = _hf_load(source, path, split, streaming=streaming, key=key, local=local)
    columns = list(ds.column_names or [])
    if not columns:  # a stream without declared features: look at the first row
        try:
            columns = list(next(iter(ds)).keys())
        except StopIteration:
            columns = []
        except Exception as exc:  # noqa: BLE001
            raise DataError(f"could not read the first row of {path} ({split}): {_short(exc)}", key=key) from None
    num_rows: int | None = None
    if not streaming:
        num_rows = len(ds)
    else:
        try:
            info = ds.info.splits.get(split) if ds.info and ds.info.splits else None
            num_rows = int(info.num_examples) if info is not None and info.num_examples else None
        except Exception:  # noqa: BLE001 - size is only informative
            num_rows = None
        if num_rows is None and local and columns:  # local files: count one light column
            light = next((c for c in columns if c != source.audio_column), columns[0])
            try:
                num_rows = sum(1 for _ in ds.select_columns([light]))
            except Exception:  # noqa: BLE001
                num_rows = None
    base_dir = Path(path) if local else None

    def records(text_col: str, audio_col: str, shuffle: bool, seed: int) -> Iterator[_Record]:
        data = _cast_audio(ds, audio_col)
        keep = [c for c in (audio_col, text_col) if c in columns]
        try:
            data = data.select_columns(keep)
        except Exception:  # noqa: BLE001 - unknown features: keep all columns
            pass
        if shuffle:
            data = data.shuffle(seed=seed, buffer_size=1000) if streaming else data.shuffle(seed=seed)
        for i, row in enumerate(data):
            audio = row.get(audio_col)
            apath = audio.get("path") if isinstance(audio, dict) else audio if isinstance(audio, str) else None
            if isinstance(audio, str) and base_dir is not None and not Path(audio).is_absolute() \
                    and "://" not in audio and (base_dir / audio).exists():
                audio = str(base_dir / audio)
            yield _Record(f"{split}/{apath}" if apath else f"{split}/{i}", audio, row.get(text_col))

    return _Part(split, columns, num_rows, records)


def _cast_audio(ds: Any, column: str) -> Any:
    from datasets import Audio

    features = getattr(ds, "features", None) or {}
    feature = features.get(column) if hasattr(features, "get") else None
    if isinstance(feature, Audio) and feature.decode:
        return ds.cast_column(column, Audio(decode=False))
    return ds


def _hf_load(source: Any, path: str, split: str, *, streaming: bool, key: str, local: bool) -> tuple[Any, str]:
    """The dataset for ``split`` (or its alias: dev <-> validation) and the split name it was found under."""
    try:
        import datasets
    except ImportError:
        raise DataError("reading this dataset needs the `datasets` package (pip install datasets)", key=key) from None
    kwargs: dict[str, Any] = {"streaming": streaming}
    where = path
    if local:
        if (Path(path) / "dataset_dict.json").is_file() or (Path(path) / "state.json").is_file():
            return _from_disk(path, split, streaming, key)
        if source.config and (Path(path) / source.config).is_dir():
            kwargs["data_dir"] = source.config
        elif source.config:
            kwargs["name"] = source.config
    else:
        if source.config:
            kwargs["name"] = source.config
        if source.revision:
            kwargs["revision"] = source.revision
        where = f"{path}" + (f" ({source.config})" if source.config else "") + \
                (f" at revision {source.revision}" if source.revision else "")
    errors: list[BaseException] = []
    for name in (split, *SPLIT_ALIASES.get(split, ())):
        try:
            ds = datasets.load_dataset(path, split=name, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below
            errors.append(exc)
            if _is_split_error(exc):
                continue
            raise _hub_error(exc, where, split, key, local) from None
        return ds, name
    raise _hub_error(errors[0], where, split, key, local) from None


def _from_disk(path: str, split: str, streaming: bool, key: str) -> tuple[Any, str]:
    import datasets

    try:
        loaded = datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001
        raise DataError(f"could not load the saved dataset at {path}: {_short(exc)}", key=f"{key}.dataset") from None
    if isinstance(loaded, datasets.DatasetDict):
        name = next((n for n in (split, *SPLIT_ALIASES.get(split, ())) if n in loaded), None)
        if name is None:
            raise DataError(f'split "{split}" not found in {path}; it has {", ".join(loaded)}', key=f"{key}.split")
        loaded, split = loaded[name], name
    elif split != "train":
        raise DataError(f'{path} holds a single dataset without splits; use split: train', key=f"{key}.split")
    if not streaming:
        return loaded, split
    stream = loaded.to_iterable_dataset()
    try:
        from datasets import SplitDict, SplitInfo

        stream.info.splits = SplitDict({split: SplitInfo(name=split, num_examples=len(loaded))})
    except Exception:  # noqa: BLE001 - the size is only informative
        pass
    return stream, split


def _is_split_error(exc: BaseException) -> bool:
    text = str(exc)
    return isinstance(exc, (ValueError, KeyError)) and ("split" in text.lower()) and (
        "Unknown split" in text or "Bad split" in text or "Available splits" in text or "Should be one of" in text)


def _short(exc: BaseException, limit: int = 300) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _hub_error(exc: BaseException, where: str, split: str, key: str, local: bool) -> DataError:
    text = _short(exc)
    lowered = text.lower()
    kind = type(exc).__name__
    if _is_split_error(exc):
        return DataError(f'split "{split}" not found in {where}: {text}', key=f"{key}.split")
    if "script" in lowered and ("no longer supported" in lowered or "loading script" in lowered):
        return DataError(f"{where} needs a loading script, which datasets >= 4 cannot run ({text}); use its "
                         "parquet conversion with `revision: refs/convert/parquet` (this works for google/fleurs), "
                         "or a local copy", key=f"{key}.revision")
    if "builderconfig" in lowered or "config name is missing" in lowered or "config named" in lowered:
        return DataError(f"config problem for {where}: {text}", key=f"{key}.config")
    if local:
        return DataError(f"could not read the dataset in {where}: {kind}: {text}", key=f"{key}.dataset")
    where = f"{where} (no local directory of that name exists either)" if "/" in where.split(" ")[0] else where
    unreachable = (isinstance(exc, (ConnectionError, TimeoutError, OSError)) or "offline" in lowered
                   or "couldn't reach" in lowered or "connection" in lowered or "timed out" in lowered
                   or kind in ("OfflineModeIsEnabled", "LocalEntryNotFoundError", "HfHubHTTPError"))
    if kind in ("DatasetNotFoundError", "RepositoryNotFoundError", "GatedRepoError") or "doesn't exist" in lowered \
            or "not found" in lowered and not unreachable:
        return DataError(f"dataset {where} could not be found on the Hugging Face Hub, or it is private/gated "
                         f"({text}). Check the id; {_FIX_HUB}", key=f"{key}.dataset")
    if unreachable:
        return DataError(f"dataset {where} could not be reached on the Hugging Face Hub ({text}). To fix: "
                         f"{_FIX_HUB}", key=f"{key}.dataset")
    return DataError(f"could not load dataset {where}: {kind}: {text}", key=f"{key}.dataset")


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


def _text_column(source: Any, parts: list[_Part], label: str, key: str) -> str:
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


def _audio_column(source: Any, kind: str, parts: list[_Part], label: str, key: str) -> str:
    name = source.audio_column
    if kind == "common_voice":
        return name if name in parts[0].columns else "path"
    if kind == "audiofolder":
        return name if name in parts[0].columns else "file_name"
    return _require_column(name, "audio column", parts, label, f"{key}.audio_column")


# ------------------------------------------------------------------------------- audio + filtering


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


def _check_bad(per: SourceStats, key: str, max_bad_share: float, *, final: bool) -> None:
    if not per.bad_audio or (not final and per.seen < MIN_CLIPS_FOR_BAD_SHARE) or per.bad_share <= max_bad_share:
        return
    first = ", ".join(per.bad_paths[:5]) + (", ..." if per.bad_audio > 5 else "")
    raise DataError(f"{per.bad_audio} of {per.seen} clips read from {per.label} could not be decoded "
                    f"({per.bad_share:.0%}, more than the allowed {max_bad_share:.0%}); first bad: {first}. "
                    "Fix or remove those files, or check the audio column", key=key)


def _read(rec: _Record) -> tuple[str, np.ndarray | AudioError | None]:
    """One record's transcript and decoded audio (or the AudioError; None when the text is empty,
    which is not decoded at all). Runs on a loader thread: soundfile, soxr and ffmpeg release the GIL."""
    text = "" if rec.text is None else str(rec.text).strip()
    if not text:
        return text, None
    try:
        return text, load_audio(rec.audio, name=rec.id)
    except AudioError as exc:
        return text, exc


def _ordered(fn: Callable[[Any], Any], items: Iterable[Any], pool: Any, window: int) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in the order of ``items``, with up to ``window`` calls running ahead on
    ``pool``; without a pool, one call at a time as the items are asked for."""
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def _examples(opened: OpenedSource, stats: Stats, *, max_bad_share: float, limit: int | None = None,
              shuffle: bool = False, seed: int = 0, raise_on_bad: bool = True, pool: Any = None,
              window: int = 1) -> Iterator[dict[str, Any]]:
    label, name = opened.label, opened.source.dataset
    per = stats.source(label)
    records = opened.records(shuffle=shuffle, seed=seed)
    if limit is not None:
        records = itertools.islice(records, limit)
    read = _ordered(_read, records, pool, window)
    try:
        for rec, (text, audio) in read:  # counted in the order read, however many threads decode
            if audio is None:
                stats.count(label, "empty_text")
                continue
            if isinstance(audio, AudioError):
                stats.count(label, "bad_audio", path=audio.path if audio.path != "<bytes>" else rec.id)
            else:
                seconds = len(audio) / TARGET_SR
                if seconds > MAX_SECONDS:
                    stats.count(label, "too_long")
                else:
                    stats.count(label, "kept", seconds=seconds)
                    yield {"audio": audio, "text": text, "source": name, "id": rec.id}
            if raise_on_bad:
                _check_bad(per, opened.key, max_bad_share, final=False)
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - a failing stream (network, corrupt parquet) -> clear message
        raise DataError(f"reading {label} failed after {per.seen} rows: {type(exc).__name__}: {_short(exc)}",
                        key=opened.key) from None
    finally:
        read.close()
    if raise_on_bad:
        _check_bad(per, opened.key, max_bad_share, final=True)


CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a container's CPU quota (a
    Kubernetes CPU limit or ``docker --cpus`` shows only there, not in the affinity)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(CGROUP_CPU_MAX).read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


@contextlib.contextmanager
def _decoding_pool(workers: int, name: str) -> Iterator[concurrent.futures.ThreadPoolExecutor | None]:
    """``workers`` decoding threads for :func:`_examples` (None for 0), shut down on leaving; clips
    not started yet are dropped, the ones being decoded finish on their own."""
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 0 else None
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


def loader_threads(setting: int | str | None) -> int:
    """``data.loader_workers`` as a number of decoding threads: ``auto`` is one per usable core,
    less one for the training loop, at most 8; 0 decodes on the calling thread."""
    if setting not in (None, "auto"):
        return int(setting)
    return max(1, min(8, usable_cores() - 1))


def _labels(sources: list[Any]) -> list[str]:
    names = [s.dataset for s in sources]
    labels = [n if names.count(n) == 1 else f"{n} [{s.split}]" for n, s in zip(names, sources)]
    return [lab if labels.count(lab) == 1 else f"{lab} #{i}" for i, lab in enumerate(labels)]


def iter_examples(sources: Iterable[Any], *, streaming: bool, seed: int, max_bad_share: float = 0.05,
                  stats: Stats | None = None, stop: Literal["all_exhausted", "first_exhausted"] = "all_exhausted",
                  shuffle: bool = False, key: str = "data.train", workers: int = 0,
                  prefetch: int = 0) -> Iterator[dict[str, Any]]:
    """Examples ``{"audio", "text", "source", "id"}`` from ``sources`` (spec ``Source`` objects), mixed by weight.

    At each step a source still running is drawn with probability proportional to its ``weight``
    (``random.Random(seed)``), and its next example is yielded. With ``stop="all_exhausted"`` (the
    default) this continues until every source is exhausted, so each example of each source comes
    out exactly once — no source is repeated or truncated, and the weights change only the order.
    ``stop="first_exhausted"`` ends when the first source runs out. ``streaming`` is passed to
    ``datasets`` for parquet/Hub sources; local Common Voice and audio folders are always read
    lazily. ``shuffle`` also shuffles each source's rows (seeded; a 1000-row buffer when streaming).

    Clips over 30 s and empty transcripts are dropped, undecodable clips skipped; all are counted
    in ``stats``. When a source's share of undecodable clips exceeds ``max_bad_share`` (checked once
    it has 20 clips, and at its end), :class:`DataError` is raised naming counts and paths.
    All sources are opened (and their columns checked) before the first example is yielded.

    ``workers`` threads decode the audio ahead of the consumer, up to ``prefetch`` clips per
    source (at least 4 per thread). The examples, their order and the counts are the same for
    any number of workers; 0 decodes each clip on the calling thread when it is asked for.
    """
    if stop not in ("all_exhausted", "first_exhausted"):
        raise ValueError(f"stop must be all_exhausted or first_exhausted, not {stop!r}")
    sources = list(sources)
    stats = stats if stats is not None else Stats()
    opened = [open_source(s, streaming=streaming, key=f"{key}[{i}]", label=lab)
              for i, (s, lab) in enumerate(zip(sources, _labels(sources)))]
    for o in opened:
        stats.source(o.label)
    weights = [float(s.weight) for s in sources]
    rng = random.Random(seed)
    with _decoding_pool(workers, "gpujob-decode") as pool:
        streams = [_examples(o, stats, max_bad_share=max_bad_share, shuffle=shuffle, seed=seed + 7919 * i,
                             pool=pool, window=max(prefetch, 4 * workers))
                   for i, o in enumerate(opened)]
        active = list(range(len(streams)))
        try:
            while active:
                i = active[0] if len(active) == 1 else rng.choices(active, weights=[weights[j] for j in active])[0]
                try:
                    example = next(streams[i])
                except StopIteration:
                    active.remove(i)
                    if stop == "first_exhausted":
                        return
                    continue
                yield example
        finally:
            for s in streams:
                s.close()


# ------------------------------------------------------------------------------------- preflight


@dataclass
class SourceReport:
    """What preflight found for one source."""

    key: str
    label: str
    kind: str | None = None
    split: str = ""
    streaming: bool = False
    reachable: bool = False
    text_column: str | None = None
    columns: list[str] = field(default_factory=list)
    rows: int | None = None
    stats: SourceStats | None = None
    labels_checked: int = 0
    labels_over_decoder: int = 0
    labels_over_generation: int = 0
    longest_label: int = 0
    label_method: str = ""
    estimated_examples: int | None = None
    error: str | None = None

    generation_max_length: int = 0

    def line(self) -> str:
        where = f"{self.key} {self.label}"
        if not self.reachable:
            return f"{where}: not readable (see the error below)"
        kind = KIND_NAMES.get(self.kind or "", self.kind or "?")
        size = f"{self.rows} row{'s' if self.rows != 1 else ''}" if self.rows is not None else "size unknown"
        est = f" (~{self.estimated_examples} usable)" if self.estimated_examples is not None else ""
        s = self.stats or SourceStats(self.label)
        return (f"{where} [{kind}, split {self.split}, text: {self.text_column}]: {size}{est}; sample of {s.seen}: "
                f"{s.kept} kept, {s.too_long} over {MAX_SECONDS:g} s, {s.empty_text} empty, {s.bad_audio} bad audio; "
                f"longest label {self.longest_label} tokens, {self.labels_over_decoder} over {DECODER_MAX_TOKENS}, "
                f"{self.labels_over_generation} over {self.generation_max_length}")


@dataclass
class PreflightReport:
    """The outcome of :func:`preflight`: ``ok`` when there are no errors."""

    sources: list[SourceReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    examples_per_epoch: int | None = None
    steps_per_epoch: int | None = None
    effective_batch_size: int = 0
    sample: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        head = "Data preflight: OK" if self.ok else f"Data preflight: FAILED ({len(self.errors)} error" \
            f"{'s' if len(self.errors) != 1 else ''})"
        lines = [f"{head} — up to {self.sample} clips read per source"]
        lines += [f"  {r.line()}" for r in self.sources]
        if any(r.key.startswith("data.train") for r in self.sources):
            ex = f"~{self.examples_per_epoch}" if self.examples_per_epoch is not None else "unknown"
            steps = f"~{self.steps_per_epoch}" if self.steps_per_epoch is not None else "unknown"
            lines.append(f"  train: examples per epoch {ex}, steps per epoch {steps} "
                         f"(effective batch {self.effective_batch_size})")
        methods = {r.label_method for r in self.sources if r.reachable}
        if methods:
            lines.append(f"  label lengths: {', '.join(sorted(methods))}; over {DECODER_MAX_TOKENS} = Whisper's "
                         "decoder limit, the other = training.generation_max_length")
        lines += [f"error: {e}" for e in self.errors]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _token_counter(tokenizer: Any) -> tuple[Callable[[str], int], str]:
    if tokenizer is None:
        return (lambda text: math.ceil(len(text) / 2)), "approximate: characters/2, no tokenizer given"

    def count(text: str) -> int:
        out = tokenizer(text)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return len(ids)

    return count, "tokenizer"


def preflight(spec: Any, *, tokenizer: Any = None, sample: int = 200, max_bad_share: float = 0.05) -> PreflightReport:
    """Check a spec's train and eval sources before launching: reachable, columns, audio, labels, sizes.

    ``spec`` is a ``JobSpec`` or a ``LoadedSpec``. For each source, up to ``sample`` clips are read
    (from the start of its splits) and filtered as in training; label lengths are checked against
    Whisper's 448-token decoder limit and ``training.generation_max_length`` (counted with
    ``tokenizer`` when given, else approximated as characters/2). Sizes are row counts scaled by the
    kept share of the sample. Hub datasets are sampled by streaming (never downloaded whole here),
    so their size comes from the dataset's metadata and is "unknown" where that has none.
    """
    spec = getattr(spec, "spec", spec)
    report = PreflightReport(sample=sample)
    training, data = spec.training, spec.data
    gpus = max(1, int(spec.resources.gpus or 0))
    report.effective_batch_size = training.per_device_batch_size * training.gradient_accumulation_steps * gpus
    count_tokens, method = _token_counter(tokenizer)
    gen_limit = training.generation_max_length
    train_estimates: list[int | None] = []
    workers = loader_threads(getattr(data, "loader_workers", 0))
    window = 4 * workers
    with _decoding_pool(workers, "gpujob-check") as pool:
        for group in ("train", "eval"):
            sources = list(getattr(data, group))
            for i, (source, label) in enumerate(zip(sources, _labels(sources))):
                key = f"data.{group}[{i}]"
                rep = SourceReport(key=key, label=label, split=source.split, streaming=data.streaming,
                                   label_method=method, generation_max_length=gen_limit)
                report.sources.append(rep)
                try:
                    opened = open_source(source, streaming=data.streaming, key=key, label=label, hub_streaming=True)
                except DataError as exc:
                    rep.error = str(exc)
                    report.errors.append(str(exc))
                    if group == "train":
                        train_estimates.append(None)
                    continue
                rep.reachable, rep.kind, rep.columns = True, opened.kind, opened.columns
                rep.text_column, rep.rows = opened.text_column, opened.num_rows
                stats = Stats()
                try:
                    for ex in _examples(opened, stats, max_bad_share=max_bad_share, limit=sample, raise_on_bad=False,
                                       pool=pool, window=window):
                        n = count_tokens(ex["text"])
                        rep.labels_checked += 1
                        rep.longest_label = max(rep.longest_label, n)
                        rep.labels_over_decoder += n > DECODER_MAX_TOKENS
                        rep.labels_over_generation += n > gen_limit
                except DataError as exc:
                    report.errors.append(str(exc))
                per = stats.source(label)
                rep.stats = per
                if per.seen and per.kept and rep.rows is not None:
                    rep.estimated_examples = round(rep.rows * per.kept / per.seen)
                elif rep.rows == 0 or (per.seen and not per.kept):
                    rep.estimated_examples = 0
                if group == "train":
                    train_estimates.append(rep.estimated_examples)
                _judge_source(report, rep, per, key, max_bad_share, gen_limit, method)
    if train_estimates and all(n is not None for n in train_estimates):
        report.examples_per_epoch = sum(train_estimates)  # type: ignore[arg-type]
        report.steps_per_epoch = math.ceil(report.examples_per_epoch / report.effective_batch_size)
    if (spec.kind == "train" and data.streaming and training.epochs is not None and data.train
            and report.examples_per_epoch is None):
        unknown = [r.key for r in report.sources if r.key.startswith("data.train") and r.estimated_examples is None]
        if any(r.reachable for r in report.sources if r.key in unknown):
            report.errors.append(f"training.epochs: needs a known dataset size, but the size of {', '.join(unknown)} "
                                 "is unknown (streamed); set training.max_steps instead")
    return report


def _judge_source(report: PreflightReport, rep: SourceReport, per: SourceStats, key: str, max_bad_share: float,
                  gen_limit: int, method: str) -> None:
    if per.seen == 0:
        report.errors.append(f"{key}: {rep.label} (split {rep.split}) has no rows")
        return
    if per.bad_audio and per.bad_share > max_bad_share:
        first = ", ".join(per.bad_paths[:5]) + (", ..." if per.bad_audio > 5 else "")
        report.errors.append(f"{key}: {per.bad_audio} of {per.seen} sampled clips from {rep.label} could not be "
                             f"decoded ({per.bad_share:.0%}, more than {max_bad_share:.0%}); first bad: {first}")
    elif per.bad_audio:
        report.warnings.append(f"{key}: {per.bad_audio} of {per.seen} sampled clips could not be decoded and will "
                               f"be skipped: {', '.join(per.bad_paths[:5])}")
    if per.kept == 0:
        report.errors.append(f"{key}: none of the {per.seen} sampled clips of {rep.label} is usable "
                             f"({per.too_long} over {MAX_SECONDS:g} s, {per.empty_text} empty transcripts, "
                             f"{per.bad_audio} bad audio)")
    if per.too_long:
        report.warnings.append(f"{key}: {per.too_long} of {per.seen} sampled clips are longer than "
                               f"{MAX_SECONDS:g} s and will be skipped (Whisper reads 30 s windows)")
    if per.empty_text:
        report.warnings.append(f"{key}.text_column: {per.empty_text} of {per.seen} sampled transcripts in "
                               f"{rep.text_column} are empty and will be skipped")
    how = "" if method == "tokenizer" else " (approximate: characters/2; pass a tokenizer for exact counts)"
    if rep.labels_over_decoder:
        report.warnings.append(f"{key}: {rep.labels_over_decoder} of {rep.labels_checked} sampled transcripts are "
                               f"longer than Whisper's {DECODER_MAX_TOKENS}-token decoder limit{how}")
    if rep.labels_over_generation and gen_limit < DECODER_MAX_TOKENS:
        report.warnings.append(f"training.generation_max_length: {rep.labels_over_generation} of "
                               f"{rep.labels_checked} sampled transcripts of {key} are longer than {gen_limit} "
                               f"tokens{how}; predictions for them would be cut short")
