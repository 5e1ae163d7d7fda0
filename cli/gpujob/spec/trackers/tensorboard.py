"""TensorBoard event files (torch's SummaryWriter)."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import Field

from gpujob.spec.fields import NonEmptyStr, Section

from .base import TrackerKind


class TensorBoardTracking(Section):
    """TensorBoard event files."""

    dir: NonEmptyStr | None = Field(None, description=(
        "Where the event files go. Default: `tensorboard/` in the job's output directory."))


class TensorBoard:
    name = "tensorboard"

    def __init__(self, directory: Path, run_name: str) -> None:
        self.dir, self.run_name, self.writer = directory, run_name, None

    def open(self, config):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.dir), flush_secs=30)
        self.writer.add_text("spec", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def scalars(self, step, values):
        for key, value in values.items():
            self.writer.add_scalar(key, value, step)

    def table(self, name, columns, rows, step):
        cells = lambda row: " | ".join(str(c).replace("|", "\\|").replace("\n", " ") for c in row)  # noqa: E731
        text = "\n".join([f"| {cells(columns)} |", "|" + "---|" * len(columns), *(f"| {cells(r)} |" for r in rows)])
        self.writer.add_text(name, text, step)

    def close(self, ok):
        if self.writer is not None:
            self.writer.close()


KIND = TrackerKind(
    name="tensorboard", settings=TensorBoardTracking, secret="none",
    doc="`true`, or `{dir: ...}`: TensorBoard event files (`tensorboard --logdir <output>/tensorboard`).",
    hint="check that tracking.tensorboard.dir can be written",
    make=lambda s, out, run: TensorBoard(Path(s.dir or out / "tensorboard"), run))
