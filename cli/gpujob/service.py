"""What the CLI commands call: submit, refresh, cancel, logs.

The service joins a validated spec, a backend and the registry. It is the only
place that writes job state the backend observed into the registry, so every
backend behaves the same to the user.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import io
import os
import re
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Mapping

from gpujob import gitsource, history, notify, untrusted
from gpujob.backends import Backend, JobRequest, capabilities, get_backend, outputs, price_tables
from gpujob.backends.base import LOG_NAME, RUNNER_MODULE
from gpujob.backends.handle import Handle
from gpujob.backends.launch import runner_command
from gpujob.errors import JobStateError, MissingSecret, UserError
from gpujob.fleet.jobs import RegistryHosts
from gpujob.pricing import Estimate, Price, estimate as estimate_cost, job_price, load_table, unpriced_budget
from gpujob.records import gpujob_home
from gpujob.registry import TERMINAL, Job, Registry
from gpujob.storage import SETTING_VARS, is_uri
from gpujob.storage.preflight import check_credentials_for_job, probe

RUNNER_LIBRARIES = ("torch", "transformers", "datasets", "jiwer", "soundfile", "soxr")

if TYPE_CHECKING:
    from gpujob.spec import LoadedSpec


def _backend(name: str, registry: Registry) -> Backend:
    """The backend called ``name``, with what it may ask of this layer: the registry's hosts."""
    return get_backend(name, hosts=RegistryHosts(registry))


def build_request(loaded: "LoadedSpec", *, job_id: str, job_dir: Path, price: Price | None = None) -> JobRequest:
    spec = loaded.spec
    gpus = spec.gpus
    if spec.kind == "command":
        command = list(spec.command or [])
    else:  # one process, or one per GPU under the launcher (kubernetes makes its own multi-node line)
        command = runner_command(gpus=gpus)
    return JobRequest(
        job_id=job_id,
        name=spec.name,
        kind=spec.kind,
        spec=spec,
        spec_path=loaded.path,
        command=command,
        # distributed.network_interface / infiniband as NCCL and gloo variables; runtime.env wins
        env={**spec.distributed.network_env(), **spec.runtime.env},
        secret_names=list(spec.runtime.secrets),
        workdir=os.getcwd(),
        output_dir=output_dir(loaded),
        job_dir=job_dir,
        max_runtime_s=spec.max_runtime_s,
        idle_s=spec.limits.idle_minutes * 60,
        labels={"gpujob.dev/id": job_id, "gpujob.dev/name": spec.name},
        price_per_hour=price.usd_per_hour if price else None,
        max_cost=spec.limits.max_cost,
    )


def output_dir(loaded: "LoadedSpec") -> str:
    """``output.dir``, absolute; a URI (s3://, hf://) is kept as written."""
    target = loaded.spec.resolved_output_dir()
    if "://" in target:
        return target
    return str((Path.cwd() / Path(target).expanduser()).resolve())


# The job id in a dry run: plainly not one submit would draw (those are random), so render's output
# is the same every time and nobody looks for a job by it.
PREVIEW_ID = "xxxxxx"


def render(loaded: "LoadedSpec", backend: str | None = None) -> tuple[str, Estimate]:
    """What the backend would run, and what it would cost (the registry's earlier runs, if there is one,
    tell how long it should take)."""
    name = backend or loaded.spec.runtime.backend
    impl = get_backend(name, render_only=True)
    request = _preview_request(loaded)
    price = price_of(loaded, name, impl, request, online=False)  # a dry run asks no cluster
    home = gpujob_home()
    jobs: list[Job] = []
    if (home / "registry.db").exists():
        registry = Registry(home)
        try:
            jobs = registry.list()
        finally:
            registry.close()
    request = _preview_request(loaded, price)
    return impl.render(request), estimate_cost(loaded.spec, price, jobs, impl.capabilities.provider_priced)


_PROBLEM = re.compile(r"^\s*#?\s*(?:[\w.-]+:\s+)?PROBLEM:\s*(.+)$")  # "# PROBLEM: x", "gpus:    PROBLEM: x"


def render_problems(*texts: str | list[str]) -> list[str]:
    """The PROBLEM lines in what render shows (a backend's dry run, the estimate's lines): what submit
    would refuse, each in words."""
    lines = [ln for t in texts for part in ([t] if isinstance(t, str) else t) for ln in part.splitlines()]
    return [m.group(1).strip() for m in map(_PROBLEM.match, lines) if m]


def estimate(loaded: "LoadedSpec", registry: Registry, backend: str | None = None) -> Estimate:
    """What the job should cost, for submit to show (and confirm) before anything starts."""
    name = backend or loaded.spec.runtime.backend
    impl = _backend(name, registry)
    price = price_of(loaded, name, impl, _preview_request(loaded))
    return estimate_cost(loaded.spec, price, registry.list(), impl.capabilities.provider_priced)


def price_of(loaded: "LoadedSpec", name: str, impl: Backend, request: JobRequest, *, online: bool = True) -> Price | None:
    """The job's price: the spec's, else the price table's (by backend, kubernetes context, GPU type),
    else what the backend's operator published (``online`` only), else the provider's (a rented host's type)."""
    if loaded.spec.resources.price_per_hour is not None:
        return job_price(loaded.spec, name, table={})
    published = impl.published_prices(request) if online else None
    found = job_price(loaded.spec, name, table=load_table(backends=price_tables()), context=impl.price_scope(request),
                      by_scope=impl.capabilities.price_table_by_scope, published=published)
    if found is None:
        offered = impl.provider_price(request)
        found = Price(*offered) if offered else None
    return found


def _preview_request(loaded: "LoadedSpec", price: Price | None = None) -> JobRequest:
    """The request under the preview id, so names are shaped as submit makes them; submit draws its own id."""
    preview_id = PREVIEW_ID
    return build_request(loaded, job_id=preview_id, job_dir=gpujob_home() / "jobs" / preview_id, price=price)


def check(loaded: "LoadedSpec", registry: Registry, *, backend: str | None = None,
          environ: Mapping[str, str] | None = None, price: Price | None = None) -> Price | None:
    """Everything submit checks before it records the job (the runner's libraries, the secrets, the
    backend's preflight, a budget without a price); a UserError for the first problem. Returns the
    job's price (``price``, or looked up when None). ``gpujob sweep`` runs it on every combination
    before it submits any."""
    environ = os.environ if environ is None else environ
    spec = loaded.spec
    name = backend or spec.runtime.backend
    impl = _backend(name, registry)
    if spec.kind != "command" and impl.capabilities.runner_here:
        missing_libs = [m for m in RUNNER_LIBRARIES if importlib.util.find_spec(m) is None]
        if missing_libs:
            raise UserError(
                f"{loaded.path}: kind: {spec.kind} runs the Whisper runner ({RUNNER_MODULE}), which needs "
                f"{', '.join(missing_libs)} in gpujob's environment",
                hint="install them: pip install 'gpujob[runner]'")
    from_env = impl.capabilities.secrets_from_environment
    missing = [n for n in spec.runtime.secrets if not environ.get(n)] if from_env else []
    if missing:
        raise MissingSecret(missing, loaded.path)
    _check_buckets(loaded, impl, environ)
    impl.preflight(_preview_request(loaded))  # e.g. local: this machine has the GPUs asked for
    price = price or price_of(loaded, name, impl, _preview_request(loaded))
    unpriced = unpriced_budget(spec, price, impl.capabilities.provider_priced)
    if unpriced:
        raise UserError(f"{loaded.path}: {unpriced}",
                        hint="or remove limits.max_cost (the README's \"Money\" section, also on gpujob's PyPI page)")
    return price


def _check_buckets(loaded: "LoadedSpec", impl: Backend, environ: Mapping[str, str]) -> None:
    """Each bucket the spec names: its credentials are the job's (exit 2 naming the variable), and, where the
    secrets are read here, the bucket answers with them (a missing bucket or refused keys: exit 2)."""
    from gpujob.spec.paths import storage_uris

    uris = storage_uris(loaded.spec)
    if not uris:
        return
    runtime = loaded.spec.runtime
    job = check_credentials_for_job(uris, runtime.env, list(runtime.secrets), environ,
                                    impl.capabilities.secrets_from_environment, loaded.path)
    if impl.capabilities.secrets_from_environment:
        probe(uris, {**{n: environ[n] for n in SETTING_VARS if environ.get(n)}, **job})


def pull(registry: Registry, job: Job, dest: Path, only: str, progress=None):
    """Bring a job's outputs here (``gpujob pull``): from its bucket when ``output.dir`` is one, whatever the
    backend; else through the backend's ``pull``. Returns :class:`gpujob.backends.outputs.Pulled`."""
    if job.output_dir and is_uri(job.output_dir):
        return outputs.pull_bucket(job.output_dir, dest, only, job.active, progress)
    return _backend(job.backend, registry).pull(job, dest, only, progress)


def submit(loaded: "LoadedSpec", registry: Registry, *, backend: str | None = None,
           environ: Mapping[str, str] | None = None, price: Price | None = None,
           sweep_id: str | None = None) -> Job:
    """Record and start the job. ``price``: what :func:`estimate` found (looked up again when None);
    ``sweep_id``: the sweep it belongs to (``gpujob sweep``)."""
    environ = os.environ if environ is None else environ
    registry.check_writable("submit a job")
    spec = loaded.spec
    name = backend or spec.runtime.backend
    impl = _backend(name, registry)
    from_env = impl.capabilities.secrets_from_environment
    price = check(loaded, registry, backend=name, environ=environ, price=price)
    out = impl.output_dir(spec) or output_dir(loaded)
    # One transaction checks that no active job writes to `out` and records this one (OutputDirInUse).
    job = registry.create(name=spec.name, kind=spec.kind, backend=name, spec=loaded.data,
                          spec_path=loaded.path, output_dir=out, exclusive_output=True,
                          price_usd_per_hour=price.usd_per_hour if price else None,
                          price_source=price.source if price else None, sweep_id=sweep_id)
    request = build_request(loaded, job_id=job.id, job_dir=job.job_dir, price=price)
    try:
        handle = impl.submit(request, {n: environ[n] for n in spec.runtime.secrets if from_env})
    except Exception:
        # Refused before it started (no engine, no such host...): it never ran, so it leaves no record.
        registry.delete(job.id, only_from=("queued",))
        shutil.rmtree(job.job_dir, ignore_errors=True)
        raise
    src = gitsource.source()  # the code the job came from: the dashboard's overview shows it
    registry.update(job.id, handle={**handle, "source": src} if src and isinstance(handle, dict) else handle)
    learnt = Handle.read(handle)
    if spec.resources.price_per_hour is None and learnt.price_cents_per_hour is not None:  # the host's, now
        registry.update(job.id, price=(learnt.price_cents_per_hour / 100.0,
                                       f"host {handle.get('host')}: its provider's price"))
    if not impl.capabilities.self_reporting:
        return refresh(registry, registry.get(job.id))
    return _wait_started(registry, job.id)


def _wait_started(registry: Registry, job_id: str, timeout: float = 5.0) -> Job:
    """Give the job a moment to start, so an immediate failure is reported by submit; a job that
    waits in the GPU queue (its supervisor records its place, ``handle["queue"]``) returns at once."""
    deadline = time.monotonic() + timeout
    job = registry.get(job_id)
    while (job.status in ("queued", "starting") and not (job.status == "queued" and Handle.of(job).queue)
           and time.monotonic() < deadline):
        time.sleep(0.05)
        job = registry.get(job_id)
    return job


def refresh(registry: Registry, job: Job) -> Job:
    """Ask the backend about an active job and record what it saw (on a read-only registry: show
    it, without recording it)."""
    if not job.active:
        return job
    try:
        impl = _backend(job.backend, registry)
    except UserError:
        return job
    seen = impl.status(job)
    if registry.read_only:
        return _as_seen(job, seen)
    if seen is not None:
        if seen.points:
            registry.add_history(job.id, seen.points)
        if seen.progress:
            registry.update(job.id, progress=seen.progress, metrics=seen.progress.get("metrics") or None)
        if seen.queue is not None and seen.queue != Handle.of(job).queue:
            registry.update(job.id, handle={**job.handle, "queue": seen.queue})
        if seen.status != job.status or (seen.reason or None) != (job.reason or None):
            if registry.transition(job.id, seen.status, reason=seen.reason, exit_code=seen.exit_code,
                                   started_at=seen.started_at) and seen.status in TERMINAL:
                _history_from_saved_log(registry, job)
                notify.send_in_background(registry.get(job.id))  # the end, seen here first: notify.on
    return registry.get(job.id)


def _history_from_saved_log(registry: Registry, job: Job) -> None:
    """A job whose log was read from afar while it ran (only its tail, at each look) leaves its whole
    log in its folder at the end: its metric history is taken from there, complete. (A self-reporting
    backend's supervisor records every event as it comes.)"""
    saved = job.job_dir / LOG_NAME
    if capabilities(job.backend).self_reporting or not saved.is_file():
        return
    try:
        with untrusted.open_regular(saved) as fh:
            points = history.from_log(io.TextIOWrapper(fh, encoding="utf-8", errors="replace"))
    except (OSError, untrusted.Refused):
        return
    if points:
        registry.add_history(job.id, points, replace=True)


def _as_seen(job: Job, seen) -> Job:
    if seen is None:
        return job
    changes: dict = {"progress": seen.progress or job.progress}
    if seen.status != job.status:
        changes.update(status=seen.status, reason=seen.reason, exit_code=seen.exit_code)
        if seen.status in TERMINAL:
            changes["finished_at"] = time.time()
    return dataclasses.replace(job, **changes)


def refresh_all(registry: Registry, jobs: list[Job]) -> list[Job]:
    return [refresh(registry, job) if job.active else job for job in jobs]


def cancel(registry: Registry, job: Job, *, grace_s: float = 10.0) -> Job:
    registry.check_writable(f"cancel job {job.id}")
    job = refresh(registry, job)
    if not job.active:
        raise JobStateError(f"job {job.id} ({job.name}) already {job.status}; nothing to cancel",
                            hint=f"see why with `gpujob status {job.id}`")
    registry.transition(job.id, "cancelling", reason="cancel requested")
    impl = _backend(job.backend, registry)
    impl.cancel(registry.get(job.id), grace_s=grace_s)
    # The backend's own record (the supervisor's) wins; if nothing recorded the end, we do.
    if registry.transition(job.id, "cancelled", reason="cancelled by the user"):
        _history_from_saved_log(registry, job)
    job = registry.get(job.id)
    notify.send_in_background(job)  # sent once, whoever recorded the end (a supervisor may have, too)
    return job


def logs(registry: Registry, job: Job, *, follow: bool = False, tail: int | None = None,
         all_workers: bool = False) -> Iterator[str]:
    impl = _backend(job.backend, registry)
    yield from impl.logs(job, follow=follow, tail=tail, all_workers=all_workers)
