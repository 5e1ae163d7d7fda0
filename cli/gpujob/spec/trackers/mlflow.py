"""MLflow, through its client: a server, or a local file store."""

from __future__ import annotations

import json
import os
import time
from typing import Any

from pydantic import Field

from gpujob.spec.fields import NonEmptyStr, Section

from .base import TrackerKind


class MlflowTracking(Section):
    """MLflow; a server's token comes from the `MLFLOW_TRACKING_TOKEN` secret."""

    tracking_uri: NonEmptyStr | None = Field(None, description=(
        "MLflow tracking URI (`http://mlflow:5000`, `file:///data/mlruns`). Default: a file store in "
        "`mlruns/` of the job's output directory."))
    experiment: NonEmptyStr | None = Field(None, description="Experiment name. Default: the job's name.")


def flat(data: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"training": {"seed": 1}}`` -> ``{"training.seed": 1}``."""
    out: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


class Mlflow:
    """MLflow through its client (no global state); metrics go in batches (at most every 10 s, and at
    each evaluation and the end), so that a remote server is not asked once per step. Per-source
    scores are named ``wer.<name>`` there (:func:`mlflow_key`)."""

    name = "mlflow"
    FLUSH_S = 10.0

    def __init__(self, uri: str, experiment: str, run_name: str) -> None:
        self.uri, self.experiment, self.run_name = uri, experiment, run_name
        self.run_id, self.pending, self.flushed = None, [], time.monotonic()

    def open(self, config):
        if self.uri.startswith("file:"):  # MLflow 3 wants an explicit yes for its file store
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")  # a lost server costs seconds, not minutes
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
        from mlflow.entities import Metric, Param
        from mlflow.tracking import MlflowClient

        self.Metric, self.client = Metric, MlflowClient(tracking_uri=self.uri)
        found = self.client.get_experiment_by_name(self.experiment)
        experiment_id = found.experiment_id if found else self.client.create_experiment(self.experiment)
        self.run_id = self.client.create_run(experiment_id, run_name=self.run_name).info.run_id
        params = [Param(k[:250], json.dumps(v) if not isinstance(v, str) else v)
                  for k, v in flat(config).items() if v is not None]
        for start in range(0, len(params), 100):  # MLflow takes at most 100 params a call
            self.client.log_batch(self.run_id, params=params[start:start + 100])
        self.client.log_dict(self.run_id, config, "spec.json")

    def scalars(self, step, values):
        now = int(time.time() * 1000)
        self.pending += [self.Metric(mlflow_key(k), v, now, step) for k, v in values.items()]
        if any(k.startswith(("wer", "cer", "eval_loss")) for k in values) or \
                time.monotonic() - self.flushed >= self.FLUSH_S or len(self.pending) >= 900:
            self.flush()

    def flush(self):
        pending, self.pending, self.flushed = self.pending, [], time.monotonic()
        for start in range(0, len(pending), 1000):
            self.client.log_batch(self.run_id, metrics=pending[start:start + 1000])

    def table(self, name, columns, rows, step):
        self.client.log_dict(self.run_id, {"columns": columns, "data": rows}, f"{name}.json")

    def close(self, ok):
        if self.run_id is not None:
            self.flush()
            self.client.set_terminated(self.run_id, "FINISHED" if ok else "FAILED")


def mlflow_key(key: str) -> str:
    """MLflow's name for a scalar: ``wer/fleurs`` -> ``wer.fleurs`` (its file store makes ``/`` a folder,
    and ``wer`` is already a file)."""
    return key.replace("/", ".")


def _make(s: MlflowTracking, out, run: str) -> Mlflow:
    uri = s.tracking_uri or (out / "mlruns").resolve().as_uri()
    return Mlflow(uri, s.experiment or run, run)


KIND = TrackerKind(
    name="mlflow", settings=MlflowTracking, make=_make,
    secret="MLFLOW_TRACKING_TOKEN (or MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD)",
    doc="`true`, or `{tracking_uri: ..., experiment: ...}`: MLflow.",
    hint="check tracking.mlflow.tracking_uri and, for a server that wants one, the MLFLOW_TRACKING_TOKEN secret")
