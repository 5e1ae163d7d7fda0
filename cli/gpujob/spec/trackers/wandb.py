"""Weights & Biases, online or offline."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from gpujob.spec.fields import NonEmptyStr, Section

from .base import TrackerKind


class WandbTracking(Section):
    """Weights & Biases; the key comes from the `WANDB_API_KEY` secret."""

    project: NonEmptyStr | None = Field(None, description="W&B project. Default: the job's name.")
    entity: NonEmptyStr | None = Field(None, description="W&B team or user. Default: the key's default entity.")
    mode: Literal["online", "offline"] = Field("online", description=(
        "`online` sends as it goes (needs `WANDB_API_KEY` in `runtime.secrets`); `offline` writes the run "
        "under `dir` for a later `wandb sync`."))
    dir: NonEmptyStr | None = Field(None, description="Where W&B keeps its files. Default: the job's output directory.")
    tags: list[NonEmptyStr] = Field(default_factory=list, max_length=20, description="Tags of the run.")


class Wandb:
    name = "wandb"

    def __init__(self, settings, directory: Path, project: str, run_name: str) -> None:
        self.settings, self.dir, self.project, self.run_name = settings, directory, project, run_name
        self.run = None

    def open(self, config):
        import wandb

        self.wandb = wandb
        self.dir.mkdir(parents=True, exist_ok=True)
        s = self.settings
        self.run = wandb.init(project=self.project, entity=s.entity, name=self.run_name, dir=str(self.dir),
                              mode=s.mode, config=config, tags=list(s.tags) or None,
                              settings=wandb.Settings(console="off", silent=True, init_timeout=60,
                                                      x_disable_stats=True))

    def scalars(self, step, values):
        self.run.log(values, step=step)

    def table(self, name, columns, rows, step):
        self.run.log({name: self.wandb.Table(columns=columns, data=rows)}, step=step)

    def close(self, ok):
        if self.run is not None:
            self.run.finish(exit_code=0 if ok else 1)


KIND = TrackerKind(
    name="wandb", settings=WandbTracking, secret="WANDB_API_KEY",
    doc="`true`, or `{project: ..., entity: ..., mode: online|offline}`: Weights & Biases.",
    hint="add WANDB_API_KEY to runtime.secrets (and export it), or set tracking.wandb.mode: offline",
    make=lambda s, out, run: Wandb(s, Path(s.dir or out), s.project or run, run))
