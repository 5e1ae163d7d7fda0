"""trackio, stored locally or synced to a Hugging Face Space."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field

from gpujob.spec.fields import NonEmptyStr, Section

from .base import TrackerKind


class TrackioTracking(Section):
    """trackio, stored locally (or on a Space with `space_id` and the `HF_TOKEN` secret)."""

    project: NonEmptyStr | None = Field(None, description="trackio project. Default: the job's name.")
    space_id: NonEmptyStr | None = Field(None, description=(
        "A Hugging Face Space to sync to (`owner/name`; needs `HF_TOKEN` in `runtime.secrets`). Unset: local only."))


class Trackio:
    name = "trackio"

    def __init__(self, directory: Path, project: str, run_name: str, space_id: str | None) -> None:
        self.dir, self.project, self.run_name, self.space_id = directory, project, run_name, space_id
        self.run = None

    def open(self, config):
        os.environ.setdefault("TRACKIO_DIR", str(self.dir))  # read by trackio when imported
        import trackio

        self.trackio = trackio
        self.run = trackio.init(project=self.project, name=self.run_name, config=config, space_id=self.space_id,
                                embed=False, auto_log_gpu=False, auto_log_cpu=False)

    def scalars(self, step, values):
        self.trackio.log(values, step=step)

    def table(self, name, columns, rows, step):
        self.trackio.log({name: self.trackio.Table(columns=columns, data=rows)}, step=step)

    def close(self, ok):
        if self.run is not None:
            self.trackio.finish()


KIND = TrackerKind(
    name="trackio", settings=TrackioTracking, secret="HF_TOKEN",
    doc="`true`, or `{project: ..., space_id: ...}`: trackio (`trackio show`).",
    hint="check tracking.trackio (a space_id needs HF_TOKEN in runtime.secrets)",
    make=lambda s, out, run: Trackio(out / "trackio", s.project or run, run, s.space_id))
