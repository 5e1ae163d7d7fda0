"""Checks that span several keys of a job spec (kind and command, data, training, backend and nodes).

They run on plain, possibly invalid, data: :class:`~gpujob.spec.models.JobSpec` runs them after its fields
validate and raises :class:`CrossFieldError`; the loader runs them on data whose fields did not.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .runtime import DEFAULT_BACKEND, RUNTIMES


class CrossFieldError(ValueError):
    """Raised by :class:`JobSpec` when checks spanning several keys fail."""

    def __init__(self, problems: list[tuple[tuple[str | int, ...], str]]):
        self.problems = problems
        super().__init__("; ".join(f"{'.'.join(map(str, p))}: {m}" for p, m in problems))


def cross_field_problems(data: Mapping[str, Any]) -> list[tuple[tuple[str | int, ...], str]]:
    """Checks that span several keys, on plain (possibly invalid) spec data."""
    out: list[tuple[tuple[str | int, ...], str]] = []

    def section(key: str) -> Mapping[str, Any]:
        value = data.get(key)
        return value if isinstance(value, Mapping) else {}

    kind, command = data.get("kind"), data.get("command")
    if kind == "command":
        if command is None:
            out.append((("command",), "is required for kind: command (a list like [python, train.py])"))
        elif command == []:
            out.append((("command",), "must not be empty for kind: command (a list like [python, train.py])"))
    elif kind in ("train", "evaluate"):
        if command is not None:
            out.append((("command",), "only for kind: command; train/evaluate jobs run the built-in Whisper runner"))
        key = "train" if kind == "train" else "eval"
        if section("data").get(key) in (None, []):
            what = "datasets to fine-tune on" if kind == "train" else "datasets to evaluate on"
            out.append((("data", key), f"is required for kind: {kind} (a list of {what})"))
    tracking = section("tracking")
    if kind == "command" and any(v not in (None, False) for v in tracking.values()):
        out.append((("tracking",), "is for train and evaluate jobs (the Whisper runner logs to the trackers); "
                                   "a command job logs to its tracker itself"))
    if kind == "train":
        training = section("training")
        steps, epochs = training.get("max_steps"), training.get("epochs")
        if steps is not None and epochs is not None:
            out.append((("training", "epochs"),
                        "training.max_steps and training.epochs are both set; keep only one"))
        elif steps is None and epochs is None:
            out.append((("training",), "set training.max_steps or training.epochs (exactly one) "
                                       "so the job knows when to stop"))
    if kind == "train" and section("model").get("engine") == "ctranslate2":
        out.append((("model", "engine"), "ctranslate2 is for kind: evaluate; a train job fine-tunes a transformers "
                                         "checkpoint (export it with output.export: [ctranslate2])"))
    export = section("output").get("export")
    if export and kind != "train":
        out.append((("output", "export"), "is for kind: train (the model it trains is exported); to score a "
                                          "CTranslate2 model, point a kind: evaluate job's model.checkpoint at it"))
    elif export and kind == "train" and section("data").get("eval") in (None, []):
        out.append((("output", "export"), "needs data.eval: the export is checked by WER against the trained "
                                          "model on those clips"))
    runtime = section("runtime")
    backend = runtime.get("backend", DEFAULT_BACKEND)
    model = RUNTIMES.get(backend) if isinstance(backend, str) else None  # None: the spec's own error, said elsewhere
    nodes = section("resources").get("nodes")
    if isinstance(nodes, int) and not isinstance(nodes, bool) and nodes > 1 and not (model and model.multi_node):
        several = " or ".join(name for name, m in RUNTIMES.items() if m.multi_node)
        out.append((("resources", "nodes"), f"{nodes} nodes need runtime.backend: {several}; the "
                                            f"{backend} backend runs a job on one machine "
                                            "(for several GPUs on it, set resources.gpus)"))
    if model is not None:
        out.extend(model.cross_field(runtime, section("resources")))
    env, secrets = runtime.get("env"), runtime.get("secrets")
    if isinstance(env, Mapping) and isinstance(secrets, list):
        for name in env:
            if name in secrets:
                out.append((("runtime", "env", name), "is also listed in runtime.secrets; keep it in one place"))
    return out
