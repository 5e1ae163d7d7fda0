"""What the dashboard's pages and API show, as plain data read from the registry (no web library).

Rows carry raw numbers for the API and words for the pages (``*_text``). Active jobs are refreshed
through :func:`gpujob.service.refresh` at most every :data:`REFRESH_EVERY_S` per job, however many
pages poll (:class:`Refresher`), so open tabs do not hammer the backends.
"""

from __future__ import annotations

from datetime import datetime

import io
import itertools
import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable

from gpujob import service, untrusted, words
from gpujob.backends import capabilities
from gpujob.backends.base import LOG_NAME
from gpujob.compare import comparable_spec, result, score_keys, show, spec_differences
from gpujob.events import is_event_line, parse_line
from gpujob.plots import Run, panels
from gpujob.progress_state import ProgressState
from gpujob.records import STATUSES, Job
from gpujob.registry import Registry
from gpujob.words import describe_event, fmt_duration, fmt_pct

REFRESH_EVERY_S = 2.0
LOG_TAIL = 200
LOG_TAIL_BYTES = 1 << 20   # the most of a log file a page view reads
LINE_CHARS = 20_000        # a longer log line is shown cut
MAX_OUTPUTS = 200


text = words.printable  # a job's text for the pages, which escape it


def dumps(data: Any) -> str:
    """JSON for the API and the log stream, with ``<``, ``>`` and ``&`` escaped (as Jinja's ``tojson``
    does): a job's text can never read as markup, whatever a client does with the body."""
    return (json.dumps(data, ensure_ascii=False, allow_nan=False, default=str)
            .replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026"))


def money(usd: float | None) -> str:
    """As every view words it (:func:`gpujob.words.money`); ``unknown`` without a price, never $0.00."""
    return "unknown" if usd is None else words.money(usd)


class Refresher:
    """Refreshes active jobs through the service, each at most every ``every_s`` seconds."""

    def __init__(self, every_s: float = REFRESH_EVERY_S) -> None:
        self.every_s = every_s
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    def _due(self, job_id: str) -> bool:
        now = time.monotonic()
        with self._lock:
            if now - self._last.get(job_id, -1e9) < self.every_s:
                return False
            self._last[job_id] = now
            return True

    def job(self, registry: Registry, job: Job) -> Job:
        if job.active and self._due(job.id):
            try:
                return service.refresh(registry, job)
            except Exception:  # noqa: BLE001 -- a backend that cannot be asked now: show the last record
                return registry.get(job.id)
        return job

    def jobs(self, registry: Registry, jobs: Iterable[Job]) -> list[Job]:
        return [self.job(registry, job) for job in jobs]


# ----------------------------------------------------------------------------- jobs


def job_row(job: Job) -> dict[str, Any]:
    state = ProgressState.from_dict(job.progress)
    wer = state.last_wer
    eta = state.eta_s if job.active else None
    cost = job.cost
    projected = job.projected_cost(eta) if job.status == "running" else None
    progress_text = fmt_pct(state.fraction)
    if state.step is not None:
        progress_text += f" (step {state.step}/{state.total_steps or '?'})"
    return {
        "id": job.id, "name": text(job.name, 200), "kind": job.kind, "backend": job.backend, "status": job.status,
        "reason": text(job.reason) if job.reason else None, "sweep_id": job.sweep_id,
        "damage": text(job.damage) if job.damage else None,
        "progress": state.fraction, "progress_text": progress_text, "step": state.step,
        "total_steps": state.total_steps, "eta_s": eta, "eta_text": fmt_duration(eta) if job.active else "-",
        "loss": state.loss, "loss_text": "-" if state.loss is None else f"{state.loss:.4f}",
        "wer": wer, "wer_text": "-" if wer is None else f"{wer * 100:.2f}%",
        "runtime_s": job.runtime_s, "runtime_text": fmt_duration(job.runtime_s),
        "cost_usd": cost, "cost_text": money(cost) + (f" (~{money(projected)})" if projected is not None else ""),
        "price_usd_per_hour": job.price_usd_per_hour, "active": job.active,
        "created_at": job.created_at, "started_at": job.started_at, "finished_at": job.finished_at,
        "submitted_text": f"{datetime.fromtimestamp(job.created_at):%Y-%m-%d %H:%M}",
    }


def filtered_jobs(registry: Registry, refresher: Refresher, *, status: str = "", backend: str = "",
                  sweep: str = "") -> list[Job]:
    jobs = registry.list(backend=backend or None, sweep=sweep or None, active_only=status == "active")
    jobs = refresher.jobs(registry, jobs)
    if status and status != "active":
        jobs = [j for j in jobs if j.status == status]
    return jobs


def filter_choices(registry: Registry) -> dict[str, list[str]]:
    jobs = registry.list()
    return {"status": ["active", *STATUSES], "backend": sorted({j.backend for j in jobs}),
            "sweep": sorted({j.sweep_id for j in jobs if j.sweep_id})}


def cut_line(line: str) -> str:
    return line if len(line) <= LINE_CHARS else line[:LINE_CHARS] + f" … [{len(line) - LINE_CHARS:,} characters cut]"


def log_words(lines: Iterable[str]) -> list[str]:
    """Log lines as `gpujob logs` shows them: progress-protocol events in words, other lines as written."""
    out = []
    for line in lines:
        events = parse_line(line)
        if not events:
            out.append(text(line, 20_000))
            continue
        if not is_event_line(line):
            out.append(text(line[: line.find("@gpujob/")].rstrip(), 20_000))
        out.extend(describe_event(e) for e in events if e["event"] != "system")  # system samples: the chart
    return [line for line in out if line]


def log_tail(registry: Registry, job: Job, tail: int = LOG_TAIL) -> list[str]:
    """The last lines of the job's log for its page, read from at most :data:`LOG_TAIL_BYTES` when the
    log is a file here (a local job's, an ended job's saved log), each cut at :data:`LINE_CHARS`."""
    path = job.job_dir / LOG_NAME
    try:
        if capabilities(job.backend).log_written_here or (not job.active and path.exists()):
            try:
                lines = untrusted.tail_lines(path, tail, LOG_TAIL_BYTES)
            except FileNotFoundError:
                lines = []
        else:
            lines = itertools.islice(service.logs(registry, job, follow=False, tail=tail), tail)
        return log_words(cut_line(line) for line in lines)
    except Exception as exc:  # noqa: BLE001 -- the page still shows everything else
        return [f"gpujob: the log cannot be read now: {text(getattr(exc, 'message', exc), 300)}"]


def spec_yaml(job: Job) -> str:
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.default_flow_style = False
    buf = io.StringIO()
    yaml.dump(job.spec_data, buf)
    return buf.getvalue()


def outputs(job: Job) -> dict[str, Any]:
    """The output folder, its files (when this machine can read it), the last checkpoint and the artifacts."""
    state = ProgressState.from_dict(job.progress)
    files: list[dict[str, Any]] = []
    out = job.output_dir
    try:
        readable = bool(out) and "://" not in out and Path(out).is_dir()
    except (OSError, ValueError):  # a damaged record's path: a name too long, a NUL
        readable = False
    if readable:
        for root, dirs, names in os.walk(out):
            dirs.sort()
            depth = Path(root).relative_to(out).parts
            if len(depth) >= 2:
                dirs[:] = []
            for name in sorted(names):
                path = Path(root) / name
                try:
                    size = path.stat().st_size
                except OSError:
                    continue
                files.append({"path": text(str(path.relative_to(out))), "size": size})
                if len(files) >= MAX_OUTPUTS:
                    break
            if len(files) >= MAX_OUTPUTS:
                break
    checkpoint = state.checkpoint or {}
    return {"dir": text(out or "-"), "readable": readable, "files": files,
            "checkpoint": {k: text(v) if isinstance(v, str) else v for k, v in checkpoint.items()},
            "artifacts": [text(a) for a in state.artifacts], "metrics": state.metrics or job.metrics or {}}


def job_detail(registry: Registry, job: Job) -> dict[str, Any]:
    state = ProgressState.from_dict(job.progress)
    row = job_row(job)
    evals = {k: v for k, v in (state.eval or {}).items() if isinstance(v, (int, float))}
    return {**row, "spec_path": text(job.spec_path or ""), "output_dir": text(job.output_dir or ""),
            "learning_rate": state.learning_rate, "samples_per_s": state.samples_per_s, "eval": evals,
            "checkpoint": state.checkpoint or None, "price_source": text(job.price_source or ""),
            "transitions": [{"status": s, "at": at, "reason": text(r) if r else None} for s, at, r in job.transitions]}


def series(history: list[dict[str, Any]], label: str = "", run: int = 0) -> list[dict[str, Any]]:
    """The curves the JS chart draws (the same panels as the PNG): [{panel, label, steps, values, run, dash}];
    ``run``: the job's place among those drawn, its colour in every panel (as `gpujob plot`); ``dash``: a
    secondary series (eval loss, a per-source score, loader wait, GPU memory), drawn dashed."""
    out = []
    for panel in panels([Run(label or "run", history)]):
        for line in panel.lines:
            name = line.label.rsplit(" · ", 1)[1] if " · " in line.label else panel.key
            out.append({"panel": panel.key, "label": f"{label} {name}".strip(), "steps": list(line.steps),
                        "values": list(line.values), "run": run, "dash": line.style != "-"})
    return out


# ----------------------------------------------------------------------------- compare and hosts


def compare(registry: Registry, jobs: list[Job]) -> dict[str, Any]:
    differ = spec_differences([comparable_spec(job) for job in jobs])
    results = [result(job, registry.history(job.id)) for job in jobs]
    keys = score_keys(results)
    rows = []
    for job, res in zip(jobs, results):
        rows.append({"id": job.id, "name": text(job.name, 200), "status": job.status, "steps": res.steps,
                     "runtime_text": fmt_duration(res.runtime_s), "cost_text": money(res.cost_usd),
                     "best": {k: res.best.get(k) for k in keys}, "final": {k: res.final.get(k) for k in keys},
                     "best_step": {k: res.best_step.get(k) for k in keys}})
    return {"jobs": [j.id for j in jobs], "score_keys": keys, "results": rows,
            "differences": {key: {job.id: text(show(v), 500) for job, v in zip(jobs, values)}
                            for key, values in differ.items()}}


def host_rows(registry: Registry) -> list[dict[str, Any]]:
    """The registry's hosts with their idle timer and agent health in words (what it last recorded:
    the page asks no provider and opens no SSH connection)."""
    from gpujob.fleet.watch import idle_words

    now = time.time()
    rows = []
    for host in registry.list_hosts():
        idle, agent = idle_words(host, now)
        rows.append({"name": host.name, "state": host.state, "type": host.instance_type, "region": host.region,
                     "price_per_hour": host.price_per_hour, "price_text": f"${host.price_per_hour:,.2f}",
                     "uptime_s": host.uptime_s(now), "uptime_text": fmt_duration(host.uptime_s(now) or None),
                     "cost_usd": host.cost_usd(now), "cost_text": money(host.cost_usd(now)),
                     "idle": text(idle, 200), "agent": text(agent, 200), "reason": text(host.reason or "", 500)})
    return rows
