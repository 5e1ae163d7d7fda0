"""A folder of JSON-lines manifests, one per split (``train.jsonl``, ``dev.jsonl``...): one clip a line,
``{"audio": "clips/0001.wav", "text": "..."}``, the audio a path relative to the manifest's folder (or
absolute), the transcript under ``text`` (or any of the usual transcript names, or ``text_column``).
Other keys on a line are kept as columns. A row's id is ``split/<audio path>``. The format NeMo and
many ASR toolkits write, without their other fields being required."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..source_parts import SPLIT_ALIASES, DataError, Part, Record, shuffled

SUFFIX = ".jsonl"


def _manifests(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob(f"*{SUFFIX}") if p.is_file())


def _rows(path: Path, key: str) -> Iterator[dict[str, Any]]:
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DataError(f"{path}:{number}: not a JSON line ({exc.msg}); each line of a manifest is one "
                                'clip, e.g. {"audio": "clips/1.wav", "text": "..."}', key=f"{key}.dataset") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a line of a manifest is a JSON object (got "
                                f"{type(row).__name__})", key=f"{key}.dataset")
            yield row


def _part(root: Path, split: str, key: str) -> Part:
    manifest = next((root / f"{s}{SUFFIX}" for s in (split, *SPLIT_ALIASES.get(split, ()))
                     if (root / f"{s}{SUFFIX}").is_file()), None)
    if manifest is None:
        have = [p.stem for p in _manifests(root)]
        raise DataError(f'split "{split}" not found in manifest folder {root}: no {split}{SUFFIX}; splits found: '
                        f'{", ".join(have) or "none"}', key=f"{key}.split")
    header: list[str] = []
    num_rows = 0
    for row in _rows(manifest, key):
        header += [k for k in row if k not in header]
        num_rows += 1

    def records(text_col: str, audio_col: str, shuffle: bool, seed: int) -> Iterator[Record]:
        rows = ((str(r.get(audio_col) or ""), r.get(text_col)) for r in _rows(manifest, key))
        if shuffle:
            rows = iter(shuffled(rows, seed))
        for audio, text in rows:
            yield Record(f"{manifest.stem}/{audio}", root / audio if audio else "", text)

    return Part(manifest.stem, header, num_rows, records)


class JsonlManifest:
    name, label, local, audio_column = "jsonl", "JSON-lines manifest", True, None

    def detect(self, path: Path) -> bool:
        """A folder with a ``*.jsonl`` whose first line is a JSON object (its columns are checked once read:
        the audio under ``audio_column``, ``audio`` unless set, e.g. NeMo's ``audio_filepath``)."""
        for manifest in _manifests(path):
            try:
                if next(_rows(manifest, "data"), None) is not None:
                    return True
            except (DataError, OSError, UnicodeDecodeError):
                continue
        return False

    def read(self, source, path, splits, *, streaming, key):
        return [_part(path, s, key) for s in splits]


KIND = JsonlManifest()
