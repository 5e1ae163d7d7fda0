"""A local Common Voice corpus dir: ``clips/`` and ``<split>.tsv`` (or one language folder of them inside;
``config`` picks one where there are several). Splits are TSV files (``train``, ``dev``/``validation``,
``test``, ``validated``, ``other``, any ``<name>.tsv``), audio is ``clips/<path>``, the transcript
column ``sentence``; a row's id is the clip's file name."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from ..source_parts import DataError, Part, Record, read_table, shuffled

CV_SPLIT_FILES = {"train": "train", "dev": "dev", "validation": "dev", "valid": "dev", "val": "dev",
                  "test": "test", "validated": "validated", "other": "other", "invalidated": "invalidated"}


def is_cv_dir(folder: Path) -> bool:
    return (folder / "clips").is_dir() and any(folder.glob("*.tsv"))


def _languages(root: Path) -> list[Path]:
    return sorted(d for d in root.iterdir() if d.is_dir() and is_cv_dir(d))


def _base(root: Path, config: str | None, key: str) -> Path:
    """The folder with clips/ and the TSVs: ``root/config``, ``root``, or its one language folder."""
    if config and is_cv_dir(root / config):
        return root / config
    if is_cv_dir(root):
        return root
    inside = _languages(root)
    if len(inside) == 1:                      # cv-corpus-17.0/el/clips ...
        return inside[0]
    raise DataError(f"{root} holds several Common Voice languages ({', '.join(d.name for d in inside)}); set "
                    "config to the one to read", key=f"{key}.config")


def _part(base: Path, split: str, key: str) -> Part:
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

    def records(text_col: str, audio_col: str, shuffle: bool, seed: int) -> Iterator[Record]:
        column = audio_col if audio_col in header else "path"
        rows = read_table(tsv, delimiter="\t")
        if shuffle:
            rows = shuffled(((r.get(column) or "", r.get(text_col)) for r in rows), seed)
        else:
            rows = ((r.get(column) or "", r.get(text_col)) for r in rows)
        for path, text in rows:
            yield Record(path, clips / path if path else "", text)

    return Part(tsv.stem, header, num_rows, records)


class CommonVoice:
    name, label, local, audio_column = "common_voice", "Common Voice dir", True, "path"

    def detect(self, path: Path) -> bool:
        return is_cv_dir(path) or bool(_languages(path))

    def read(self, source, path, splits, *, streaming, key):
        base = _base(path, source.config, key)
        return [_part(base, s, key) for s in splits]


KIND = CommonVoice()
