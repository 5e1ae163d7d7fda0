"""``python -m gpujob.runner SPEC``: the program inside every train/evaluate job.

SPEC is the job's validated spec (the backend's spec.json, or a YAML file).
Exit codes: 0 done; 2 the spec or the data is wrong, or the GPUs it asks for are unusable here (no
CUDA, or an NVIDIA driver too old for this torch: runner/cuda_check.py), so retrying will not help;
1 anything else; 143 stopped by SIGTERM after saving a checkpoint.
It writes progress events on stdout (gpujob.progress) and knows nothing of backends.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

from gpujob.progress import ProgressWriter
from gpujob.storage import StorageFailed, StorageUserError, Store, is_uri, parse_uri
from gpujob.words import cut_words


def _load(path: str) -> JobSpec:
    from gpujob.spec import JobSpec, load_spec

    if path.endswith(".json"):  # the spec file gpujob wrote for the job, validated when it was written
        data = json.loads(Path(path).read_text())
        _drop_other_backends_settings(data.get("runtime"))
        return JobSpec.model_validate(data)
    return load_spec(path).spec


def _drop_other_backends_settings(runtime: object) -> None:
    """A spec file written by a gpujob before the runtime section was split by backend holds every
    backend's settings (kubernetes jobs had ``host_idle``); the runner reads none of them, so it drops
    them rather than refuse a job that a newer image runs."""
    from gpujob.spec.runtime import backend_of, foreign_keys

    if isinstance(runtime, dict) and (backend := backend_of(runtime)) is not None:
        for key in foreign_keys(runtime, backend):
            del runtime[key]


def _output_target(spec: JobSpec) -> str:
    """``output.dir`` as the backend gave it (a path, or an object-store URI)."""
    return os.environ.get("GPUJOB_OUTPUT_DIR") or spec.resolved_output_dir()


def _quiet_libraries() -> None:
    """Job logs are for people: no download bars or per-step library chatter."""
    import warnings

    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()
    except ImportError:
        pass
    warnings.filterwarnings("ignore", category=FutureWarning)


class _Silent:
    """The progress writer of a process that is not the writer: it writes nothing."""

    def __getattr__(self, name: str):
        return lambda **fields: None


def _read_spec(argv: list[str]) -> JobSpec | int:
    """The job's spec, or exit code 2 (said on stderr, and as the end event) when there is none to run."""
    if len(argv) != 1:
        print("usage: python -m gpujob.runner SPEC", file=sys.stderr)
        return 2
    from gpujob.spec import SpecError

    try:
        spec = _load(argv[0])
    except (SpecError, OSError, ValueError) as exc:
        print(f"gpujob runner: cannot read the spec {argv[0]}:\n{exc}", file=sys.stderr, flush=True)
        if os.environ.get("RANK", "0") == "0":
            ProgressWriter().end(status="failed", message="invalid spec")
        return 2
    if spec.kind not in ("train", "evaluate"):
        print(f"gpujob runner: kind {spec.kind!r} is not run by the runner", file=sys.stderr)
        return 2
    return spec


def main(argv: list[str]) -> int:
    spec = _read_spec(argv)
    if isinstance(spec, int):
        return spec
    if (stop := _cuda_problem(spec)) is not None:
        return stop
    _quiet_libraries()
    from gpujob.runner import data as data_mod
    from gpujob.runner import distributed

    from gpujob.runner import tracking

    from gpujob.runner import remote

    group = distributed.start(spec.distributed.timeout_seconds)
    target = _output_target(spec)
    bucket = parse_uri(target) if is_uri(target) else None  # outputs written here, then uploaded (runner/remote.py)
    out_dir = Path(target) if bucket is None else Path(group.share(str(remote.scratch_dir(bucket)) if group.is_writer else None))
    # the writer process alone writes events and feeds the trackers (spec tracking:)
    writer = tracking.wrap(ProgressWriter(), spec, out_dir) if group.is_writer else _Silent()
    node_lead = os.environ.get("LOCAL_RANK", "0") == "0"  # one process a machine downloads, the others wait
    from gpujob.runner import sysmetrics

    sampler = sysmetrics.Sampler(writer.system).start() if group.is_writer else None
    try:
        if bucket is not None:
            out_dir.mkdir(parents=True, exist_ok=True)  # the writer's scratch path, on every machine
            store = Store(bucket)
            if group.is_writer:
                store.check_bucket()  # a wrong bucket or refused keys: now, not after hours of training
                writer = remote.Mirror(writer, store, bucket, out_dir, spec.training.save_total_limit)
            if spec.kind == "train" and node_lead:
                remote.restore_checkpoint(store, bucket, out_dir, writer)
            group.barrier()
        if remote.inputs(spec):
            remote.stage_inputs(spec, writer, download=node_lead)
            group.barrier()
        report = _preflight(spec, group)
        if not report["ok"]:
            writer.end(status="failed", message=cut_words("preflight: " + "; ".join(report["errors"]), 480))
            return 2
        code = _run_kind(spec, out_dir, writer, group)
        if bucket is not None and group.is_writer:
            remote.finish_scratch(out_dir, ok=code == 0)
        return code
    except (StorageUserError, StorageFailed) as exc:
        print(f"gpujob runner: {exc.message}" + (f"\n  {exc.hint}" if exc.hint else ""), file=sys.stderr, flush=True)
        if not getattr(writer, "ended", False):
            writer.end(status="failed", message=cut_words(exc.message, 480))
        return exc.exit_code
    except data_mod.DataError as exc:
        print(f"DataError: {exc}", file=sys.stderr, flush=True)
        writer.end(status="failed", message=cut_words(str(exc), 480))
        return 2
    except Exception as exc:
        if not (group.many and distributed.peer_lost(exc)):
            raise
        return _peer_lost(exc, writer)
    finally:
        if sampler is not None:
            sampler.stop()
        getattr(writer, "close", lambda: None)()
        group.close()


def _run_kind(spec: JobSpec, out_dir: Path, writer, group) -> int:
    """The job itself: training, or evaluation (of a CTranslate2 model directory, or a transformers model)."""
    if spec.kind == "train":
        from gpujob.runner import train

        return train.run(spec, out_dir, writer, group)
    from gpujob.runner import evaluate, evaluate_ct2

    if evaluate_ct2.wanted(spec):  # a CTranslate2 model directory
        return evaluate_ct2.run(spec, out_dir, writer, group)
    return evaluate.run(spec, out_dir, writer, group)


def _peer_lost(exc: Exception, writer) -> int:
    """Exit 1 for a process whose peer failed, hung or was stopped: said on stderr, recorded for the
    launcher's summary and as the end event."""
    from gpujob.runner import distributed

    # Most likely not this process's fault: the launcher names the one that failed first.
    lost = f"{distributed.LOST}: {distributed.plain(exc)}"
    print(f"gpujob runner: {lost}", file=sys.stderr, flush=True)
    from torch.distributed.elastic.multiprocessing.errors import get_error_handler

    get_error_handler().record_exception(RuntimeError(lost))  # for the launcher's summary
    writer.end(status="failed", message="another process of the job failed, hung or was stopped")
    return 1


def _cuda_problem(spec: JobSpec) -> int | None:
    """Exit 2 with one plain line when the spec asks for GPUs that this torch cannot use (runner/cuda_check.py)."""
    from gpujob.runner import cuda_check

    gpus = spec.gpus
    if (warning := cuda_check.cpu_torch_warning(gpus)) is not None:
        print(f"gpujob runner: warning: {warning}", file=sys.stderr, flush=True)
    if (problem := cuda_check.problem(gpus)) is None:
        return None
    print(f"gpujob runner: {problem}", file=sys.stderr, flush=True)
    if os.environ.get("RANK", "0") == "0":
        ProgressWriter().end(status="failed", message=problem[:400])
    return 2


def _preflight(spec: JobSpec, group) -> dict:
    """The data preflight, run by the writer alone (it reads and decodes a sample of every source)
    and its verdict shared, so every process stops, or none."""
    report = None
    if group.is_writer:
        from gpujob.runner.preflight import preflight

        found = preflight(spec, processes=group.world)
        print(found.format(), flush=True)
        report = {"ok": found.ok, "errors": found.errors}
    return group.share(report)


if __name__ == "__main__":
    from torch.distributed.elastic.multiprocessing.errors import record

    sys.exit(record(main)(sys.argv[1:]))
