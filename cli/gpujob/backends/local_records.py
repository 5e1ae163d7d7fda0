"""What the local backend records of a job: its handle (the supervisor's and the job's processes, in the
registry) and ``launch.json`` (how its supervisor starts it, written by ``submit`` beside the job, read by
the supervisor and by a registry rebuild). Each is one model, written and read here only."""

from __future__ import annotations

import json
import os
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from gpujob.backends.handle import Handle

LAUNCH_NAME = "launch.json"


class LocalHandle(Handle):
    """The local backend's handle: the detached supervisor (pid and start time, against pid reuse), and
    once the job started, its process and process group."""

    supervisor_pid: int | None = None
    supervisor_start: int | None = None
    pid: int | None = None
    pgid: int | None = None
    log: str | None = None


class GpuAsk(BaseModel):
    """A job's place to ask for in this machine's GPU queue (:mod:`gpujob.backends.gpuqueue`)."""

    model_config = ConfigDict(extra="ignore")

    gpus: int
    candidates: list[str]
    priority: int = 0
    share: bool = False


class Launch(BaseModel):
    """``launch.json``: how the supervisor starts the job. Holds no secret value (only their names)."""

    model_config = ConfigDict(extra="ignore")  # a file written by another version may hold more

    argv: list[str]
    workdir: str
    env: dict[str, str] = Field(default_factory=dict)
    withheld: list[str] = Field(default_factory=list)
    secret_names: list[str] = Field(default_factory=list)
    max_runtime_s: int | None = None
    idle_s: float | None = None
    # limits.max_cost as running time at the job's price; the price, also for a rebuilt registry
    budget_s: float | None = None
    max_cost: float | None = None
    price_per_hour: float | None = None
    price_source: str | None = None
    gpu_queue: GpuAsk | None = None  # set: the supervisor waits in the GPU queue and sets CUDA_VISIBLE_DEVICES then

    def write(self, job_dir: Path) -> None:
        """Write it beside the job (private: 0600)."""
        fd = os.open(job_dir / LAUNCH_NAME, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(self.model_dump(mode="json", exclude_none=True), indent=2))

    @classmethod
    def read(cls, job_dir: Path) -> "Launch":
        """The job's launch.json, validated (a pydantic ValidationError or OSError when it is not one)."""
        return cls.model_validate_json((job_dir / LAUNCH_NAME).read_bytes())
