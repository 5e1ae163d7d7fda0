"""A CSV file of the scalars: one row per event that has numbers (progress, eval), one column per name.

Needs no library, no account, no server: a file beside the job's other outputs, which a spreadsheet or
pandas opens as it is. The header is the union of the names seen so far, ``step`` first, then in the
order they first appeared; a row leaves a column empty where its event had no such number. When a
new name appears the file is written again whole with the wider header (rows are few: one per
logged step), otherwise a row is appended and flushed, so the file is whole at every moment it is read.
A table (the worst utterances) goes to ``<name>.csv`` in the same folder.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

from pydantic import Field

from gpujob.spec.fields import NonEmptyStr, Section

from .base import TrackerKind

FILE = "metrics.csv"


class CsvTracking(Section):
    """A CSV file of the scalars, in the job's output directory: `metrics.csv`."""

    dir: NonEmptyStr | None = Field(None, description=(
        f"Where `{FILE}` (and each table, as `<name>.csv`) goes. Default: the job's output directory."))


class CsvFile:
    name = "csv"

    def __init__(self, directory: Path) -> None:
        self.dir, self.path = directory, directory / FILE
        self.columns: list[str] = ["step"]
        self.rows: list[dict[str, Any]] = []

    def open(self, config):
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_all()

    def scalars(self, step, values):
        row = {"step": step, **values}
        self.rows.append(row)
        new = [k for k in values if k not in self.columns]
        if new:
            self.columns += new
            self._write_all()
        else:
            with open(self.path, "a", newline="", encoding="utf-8") as f:
                csv.DictWriter(f, self.columns).writerow(row)

    def _write_all(self) -> None:
        part = self.path.with_name(self.path.name + ".part")
        with open(part, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, self.columns)
            writer.writeheader()
            writer.writerows(self.rows)
        part.replace(self.path)

    def table(self, name, columns, rows, step):
        with open(self.dir / f"{name}.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(columns)
            writer.writerows(rows)

    def close(self, ok):
        pass


KIND = TrackerKind(
    name="csv", settings=CsvTracking, secret="none",
    doc=f"`true`, or `{{dir: ...}}`: the scalars as `{FILE}` in the job's output directory, one row per event.",
    hint="check that tracking.csv.dir (default: output.dir) can be written",
    make=lambda s, out, run: CsvFile(Path(s.dir or out)))
