"""A local audio folder like Hugging Face's audiofolder: ``metadata.csv`` (or ``.jsonl``) with a
``file_name`` column plus a transcript column; a split is a subfolder (``DIR/train/metadata.csv``) or,
for ``train``, the directory itself. A row's id is ``split/file``."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ..source_parts import SPLIT_ALIASES, DataError, Part, Record, read_table, shuffled

METADATA_FILES = ("metadata.csv", "metadata.jsonl")


def has_metadata(folder: Path) -> bool:
    return any((folder / m).is_file() for m in METADATA_FILES)


def _part(root: Path, split: str, key: str) -> Part:
    folder = next((root / s for s in (split, *SPLIT_ALIASES.get(split, ())) if has_metadata(root / s)), None)
    if folder is None and split == "train" and has_metadata(root):
        folder = root
    if folder is None:
        have = sorted(d.name for d in root.iterdir() if d.is_dir() and has_metadata(d))
        have += ["train (the folder itself)"] if has_metadata(root) else []
        raise DataError(f'split "{split}" not found in audio folder {root}: no {split}/metadata.csv; '
                        f'splits found: {", ".join(have) or "none"}', key=f"{key}.split")
    meta = next(folder / m for m in METADATA_FILES if (folder / m).is_file())
    if meta.suffix == ".jsonl":
        first = next(read_table(meta, delimiter=","), {})
        header = list(first)
        num_rows = sum(1 for _ in read_table(meta, delimiter=","))
    else:
        with open(meta, encoding="utf-8-sig", newline="") as f:
            reader = csv.reader(f)
            header = next(reader, [])
            num_rows = sum(1 for row in reader if row)
    if "file_name" not in header:
        raise DataError(f"{meta} has no file_name column (columns: {', '.join(header) or 'none'}); an audio "
                        "folder's metadata names each clip's file in file_name", key=f"{key}.dataset")

    def records(text_col: str, audio_col: str, shuffle: bool, seed: int) -> Iterator[Record]:
        column = audio_col if audio_col in header else "file_name"
        rows: Iterable[tuple[str, Any]] = ((r.get(column) or "", r.get(text_col)) for r in read_table(meta, delimiter=","))
        if shuffle:
            rows = shuffled(rows, seed)
        for file_name, text in rows:
            path = folder / file_name if file_name else ""
            yield Record(str(Path(folder.name if folder != root else "") / file_name), path, text)

    return Part(folder.name if folder != root else "train", header, num_rows, records)


class AudioFolder:
    name, label, local, audio_column = "audiofolder", "audio folder", True, "file_name"

    def detect(self, path: Path) -> bool:
        return has_metadata(path) or any(has_metadata(d) for d in path.iterdir() if d.is_dir())

    def read(self, source, path, splits, *, streaming, key):
        return [_part(path, s, key) for s in splits]


KIND = AudioFolder()
