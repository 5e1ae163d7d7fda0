"""How jobs and logs look on screen. Plain text everywhere; rich only for the live bar."""

from __future__ import annotations

import dataclasses
import sys
import time
from datetime import datetime
from typing import Any

import typer

from gpujob.events import clean_metrics, is_event_line, parse_line
from gpujob.progress_state import ProgressState
from gpujob.sparkline import status_rows as sparkline_rows
from gpujob.sysview import status_rows as system_rows
from gpujob.words import describe_event, fmt_duration, fmt_pct, fmt_rate, money, phase_words, printable  # noqa: F401 (money: re-exported)
from gpujob.backends import backend_class, capabilities
from gpujob.backends.base import Notice
from gpujob.cli.termsafe import for_terminal
from gpujob.backends.gpuqueue import ordinal
from gpujob.registry import Job


def _state(job: Job) -> ProgressState:
    return ProgressState.from_dict(job.progress)


_safe = printable  # (the name the views here use)


def _metrics(job: Job, state: ProgressState) -> dict[str, Any]:
    return clean_metrics(job.metrics) or state.metrics


def _wer(state: ProgressState) -> str:
    wer = state.last_wer
    return "-" if wer is None else f"{wer * 100:.2f}%"


def _metric(key: str, value: Any) -> str:
    if key.endswith(("wer", "cer")) and isinstance(value, (int, float)) and not isinstance(value, bool):
        label = key.upper() if key in ("wer", "cer") else key
        return f"{label} {value * 100:.2f}%"
    if isinstance(value, float):
        return f"{key} {value:.4g}"
    return f"{key} {value}"


def _cost(job: Job, state: ProgressState | None = None) -> str:
    """What the job has cost so far, and for a running job with an ETA what it should cost at the end:
    "$1.23 (~$4.56)"; "unknown" where gpujob does not know the job's price (never "$0.00")."""
    cost = job.cost
    if cost is None:
        return "unknown"
    projected = _projected(job, state or _state(job))
    return money(cost) + (f" (~{money(projected)})" if projected is not None else "")


def _projected(job: Job, state: ProgressState) -> float | None:
    """The cost at the ETA, for a job that is running (not one still queued, starting or being cancelled)."""
    return job.projected_cost(state.eta_s) if job.status == "running" else None


def cost_details(job: Job) -> str:
    """status's cost line: so far, the price and where it came from, the projection, the budget."""
    cost, state = job.cost, _state(job)
    if cost is None:
        return ("unknown: no price for this job (set resources.price_per_hour, or add one to "
                "$GPUJOB_HOME/prices.yaml)")
    words = f"{money(cost)} so far" if job.active else money(cost)
    if job.price_usd_per_hour is not None:
        words += f" at ${job.price_usd_per_hour:,.2f}/h ({_safe(job.price_source or 'price')})"
    projected = _projected(job, state)
    if projected is not None:
        words += f"; ~{money(projected)} at the ETA"
    if job.max_cost is not None:
        words += f"; budget {money(job.max_cost)} (limits.max_cost)"
    return words


def estimate_lines(est: Any) -> list[str]:
    """What a job should cost, for render and submit (a :class:`gpujob.pricing.Estimate`)."""
    if est.price is None:
        if est.provider_priced:
            lines = ["cost:     the host's price per hour, from its provider once the host is chosen"]
        else:
            lines = ["cost:     unknown: no price (set resources.price_per_hour, or add one to $GPUJOB_HOME/prices.yaml)"]
    else:
        line = f"cost:     ${est.price.usd_per_hour:,.2f}/h ({est.price.source})"
        if est.most is not None:
            line += f"; at most {money(est.most[0])} ({est.most[1]})"
        else:
            line += "; no limit bounds it (set limits.max_runtime or limits.max_cost)"
        lines = [line]
        if est.projected is not None:
            usd, seconds = est.projected
            lines.append(f"          ~{money(usd)} for {fmt_duration(seconds)} of running, at the speed of job "
                         f"{est.seen.job_id} ({est.seen.steps_per_s:.3g} steps/s, same model, GPUs and batch)")
    lines += [f"warning:  {w}" for w in est.warnings]
    if est.problem:
        lines.append(f"PROBLEM:  {est.problem}; submit refuses it")
    return lines


def _queue(job: Job) -> dict[str, Any] | None:
    """Where a queued local job waits in the GPU queue (its supervisor records it), or None."""
    from gpujob.backends.handle import Handle  # the handle's model: only for a job that waits

    queue = Handle.of(job).queue if job.status == "queued" else None
    return queue if queue and isinstance(queue.get("position"), int) else None


def status_words(job: Job) -> str:
    """``queued: 1st in the GPU queue, waiting for 1 GPU (2 of 2 in use by jobs ...)``, or the status."""
    queue = _queue(job)
    return f"queued: {_safe(queue.get('words') or '', 400)}" if queue else job.status


def _status_cell(job: Job) -> str:
    queue = _queue(job)
    cell = f"queued ({ordinal(queue['position'])} for GPUs)" if queue else job.status
    return f"{cell} (damaged)" if job.damage else cell


def _age(ts: float) -> str:
    return fmt_duration(time.time() - ts) + " ago"


# ----------------------------------------------------------------------------- list


def job_table(jobs: list[Job]) -> str:
    header = ("ID", "NAME", "BACKEND", "STATUS", "PROGRESS", "WER", "RUNTIME", "COST", "SUBMITTED")
    rows = [header]
    for job in jobs:
        state = _state(job)
        rows.append((job.id, _safe(job.name, 200), job.backend, _status_cell(job), fmt_pct(state.fraction), _wer(state),
                     fmt_duration(job.runtime_s), _cost(job, state), _age(job.created_at)))
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)


def job_summary(job: Job) -> dict[str, Any]:
    state = _state(job)
    return {
        "id": job.id, "name": job.name, "kind": job.kind, "backend": job.backend, "status": job.status,
        "reason": job.reason, "exit_code": job.exit_code, "queue": _queue(job), "progress": state.fraction,
        "step": state.step, "total_steps": state.total_steps, "steps_per_s": state.steps_per_s,
        "eta_s": state.eta_s if job.active else None, "loss": state.loss, "eval": state.eval,
        "metrics": _metrics(job, state), "checkpoint": state.checkpoint,
        "output_dir": job.output_dir, "spec_path": job.spec_path, "runtime_s": job.runtime_s,
        "cost_usd": job.cost, "price_usd_per_hour": job.price_usd_per_hour, "price_source": job.price_source,
        "projected_cost_usd": _projected(job, state),
        "max_cost_usd": job.max_cost, "created_at": job.created_at, "started_at": job.started_at,
        "finished_at": job.finished_at, "sweep_id": job.sweep_id, "damage": job.damage,
    }


# ----------------------------------------------------------------------------- status


def job_details(job: Job, history: list[dict[str, Any]] | None = None) -> str:
    """status's rows; ``history`` (the job's metric points) adds a sparkline of WER and of loss."""
    state = _state(job)
    rows: list[tuple[str, str]] = [
        ("job", f"{job.id}  {_safe(job.name, 200)}  (kind {job.kind}, backend {job.backend})")]
    since = job.finished_at or job.started_at or job.created_at
    rows.append(("status", f"{job.status}  since {datetime.fromtimestamp(since):%Y-%m-%d %H:%M:%S}"
                           f"  (runtime {fmt_duration(job.runtime_s)}, cost {_cost(job)})"))
    if _queue(job):
        rows.append(("queue", status_words(job).removeprefix("queued: ")))
    if job.reason and job.status != "succeeded":
        rows.append(("reason", _safe(job.reason)))
    if job.damage:
        rows.append(("damaged", _safe(job.damage)))
    rows.append(("cost", cost_details(job)))
    if state.phase and job.active:
        rows.append(("now", phase_words(state.phase)))
    if state.step is not None or state.total_steps:
        total = state.total_steps or "?"
        line = f"step {state.step or 0}/{total} ({fmt_pct(state.fraction)})  {fmt_rate(state.steps_per_s)}"
        if job.active:
            line += f"  ETA {fmt_duration(state.eta_s)}"
        rows.append(("progress", line))
        extra = []
        if state.loss is not None:
            extra.append(f"loss {state.loss:.4f}")
        if state.learning_rate is not None:
            extra.append(f"lr {state.learning_rate:.2e}")
        if state.samples_per_s is not None:
            extra.append(f"{state.samples_per_s:.1f} samples/s")
        if state.epoch is not None:
            extra.append(f"epoch {state.epoch:.2f}")
        if extra:
            rows.append(("train", "  ".join(extra)))
    if state.eval:
        rows.append(("eval", describe_event({"event": "eval", **state.eval}).removeprefix("[eval] ")))
    metrics = _metrics(job, state)
    if metrics:
        rows.append(("metrics", "  ".join(_metric(k, v) for k, v in metrics.items())))
    rows += sparkline_rows(history or [])
    rows += system_rows(history or [])
    if state.checkpoint:
        rows.append(("checkpoint", f"step {state.checkpoint.get('step')}  {state.checkpoint.get('path')}"))
    outputs = _safe(job.output_dir or "-")
    found = backend_class(job.backend)
    place = found.outputs_place(job) if found is not None else None
    if place:
        outputs += f"  ({place})"
    rows.append(("outputs", outputs))
    if job.spec_path:
        rows.append(("spec", _safe(job.spec_path)))
    if job.active:
        nxt = f"gpujob logs -f {job.id}   |   gpujob cancel {job.id}"
    elif job.status == "succeeded" and capabilities(job.backend).outputs_written_here:
        nxt = f"ls {job.output_dir}" if job.output_dir and "://" not in job.output_dir else f"gpujob logs {job.id}"
    elif job.status == "succeeded":
        nxt = f"gpujob logs {job.id}"
    else:
        nxt = f"gpujob logs {job.id} --tail 50"
    rows.append(("next", nxt))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k.ljust(width)}  {v}" for k, v in rows)


def final_line(job: Job) -> str:
    state = _state(job)
    words = f"job {job.id} ({_safe(job.name, 200)}) {job.status} after {fmt_duration(job.runtime_s)}"
    if state.last_wer is not None:
        words += f", WER {_wer(state)}"
    if job.status != "succeeded" and job.reason:
        words += f": {_safe(job.reason)}"
    return words


# ----------------------------------------------------------------------------- logs


QUIET_EVERY_S = 60.0  # followed with no terminal: one progress line a minute (of the job's time)
QUIET_NOTE = ("gpujob: not a terminal, so progress is printed once a minute, with every eval, checkpoint "
              "and the end; --raw prints every line")


class LogPrinter:
    """Prints log lines. raw: as written. Otherwise event lines become words, and on a
    terminal (live=None → auto) progress events drive a live bar instead of lines. ``quiet``
    (a followed log with no terminal, where nobody watches a bar): progress and heartbeat lines at
    most one per :data:`QUIET_EVERY_S` of the job's time, the last one before every eval,
    checkpoint and end, and every other event."""

    def __init__(self, *, raw: bool = False, live: bool | None = None, state: ProgressState | None = None,
                 job: Job | None = None, quiet: bool = False, terminal: bool | None = None):
        """``job``: the job followed, for its cost in the bar (its price and when it started);
        ``terminal`` (default: whether stdout is one): the job's lines lose every escape sequence but
        colour codes (:mod:`gpujob.cli.termsafe`), --raw too; into a pipe or file they go as written."""
        self.job = job
        self.raw = raw
        self.terminal = sys.stdout.isatty() if terminal is None else terminal
        self.live = (sys.stdout.isatty() and not raw) if live is None else live
        self.quiet = quiet and not raw and not self.live
        self.state = state or ProgressState()
        self._live = None
        self._console = None
        self._shown_at: float | None = None   # the time of the last progress line printed (quiet)
        self._held: str | None = None         # the last progress line not printed (quiet)
        self._noted = False

    def __enter__(self) -> "LogPrinter":
        if self.live:
            from rich.console import Console
            from rich.live import Live

            self._console = Console()
            self._live = Live(self._bar(), console=self._console, refresh_per_second=4, transient=False,
                              get_renderable=self._bar)
            self._live.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        if self._held is not None and exc[0] is None:  # quiet: where it stood at the end
            self._print(self._held)
            self._held = None
        if self._live is not None:
            self._live.__exit__(*exc)
            self._live = None

    def line(self, line: str) -> None:
        if isinstance(line, Notice):  # gpujob's own word about the job (waiting, retrying), not its output
            if self._console is not None:
                self._console.print(f"gpujob: {line}", markup=False, highlight=False, style="dim")
            else:
                typer.echo(f"gpujob: {line}", err=True)
            return
        if self.raw:
            typer.echo(for_terminal(line) if self.terminal else line)
            return
        try:
            self._words(line)
        except Exception:  # noqa: BLE001 -- never: the parser and describe_event check everything. If it
            self._print(line)  # happens, the line is shown as written and the next lines still are

    def _words(self, line: str) -> None:
        events = parse_line(line)
        for event in events:
            self.state.apply(event)
        if not events:
            self._print(line)
            return
        if not is_event_line(line):  # an event behind other text (a tqdm bar): keep the text
            self._print(line[: line.find("@gpujob/")].rstrip())
        for event in events:
            kind = event.get("event")
            if self._live is not None and kind in ("progress", "heartbeat") or kind == "system":
                continue  # system samples: status, metrics --system, plot (--raw shows them)
            if self.quiet and not self._due(event):
                continue
            self._print(describe_event(event))

    def _due(self, event: dict) -> bool:
        """Quiet: whether to print ``event`` now (holding back a progress line that is not due)."""
        kind = event.get("event")
        if kind not in ("progress", "heartbeat"):
            if self._held is not None and kind in ("eval", "checkpoint", "end"):
                self._print(self._held)  # where it stood when it happened
            self._held = None
            return True
        t = event.get("t") if isinstance(event.get("t"), (int, float)) else time.time()
        if self._shown_at is not None and 0 <= t - self._shown_at < QUIET_EVERY_S:
            self._held = describe_event(event)
            if not self._noted:
                self._noted = True
                typer.echo(QUIET_NOTE, err=True)
            return False
        self._shown_at, self._held = t, None
        return True

    def _print(self, text: str) -> None:
        if not text:
            return
        if self.terminal:
            text = for_terminal(text)
        if self._console is not None:
            self._console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            typer.echo(text)

    def _bar(self):
        from rich.text import Text

        s = self.state
        head = f"step {s.step or 0}/{s.total_steps or '?'} "
        tail = f" {fmt_pct(s.fraction)}  {fmt_rate(s.steps_per_s)}  ETA {fmt_duration(s.eta_s)}"
        if s.loss is not None:
            tail += f"  loss {s.loss:.4f}"
        if s.last_wer is not None:
            tail += f"  WER {s.last_wer * 100:.2f}%"
        tail += self._cost_words(s)
        width = max(0, min(30, self._console.width - len(head) - len(tail) - 1))
        filled = int(round((s.fraction or 0.0) * width))
        text = Text(head)
        text.append("━" * filled, style="green")
        text.append("━" * (width - filled), style="grey37")
        text.append(tail)
        return text

    def _cost_words(self, s: ProgressState) -> str:
        """"  $1.23 → ~$4.56": the cost so far and at the ETA, when the job's price is known."""
        job = self.job
        if job is None or job.price_usd_per_hour is None:
            return ""
        started = job.started_at or s.started_at  # a job still queued when followed: its start event
        if started is None:
            return ""
        now = dataclasses.replace(job, status="running", started_at=min(started, time.time()), finished_at=None)
        projected = now.projected_cost(s.eta_s)
        return f"  {money(now.cost)}" + (f" → ~{money(projected)}" if projected is not None else "")


class ByteBar:
    """``pulling abc123  12.3 of 45.6 MB`` redrawn on one stderr line while bytes move (on a terminal only;
    elsewhere silent), cleared at the end. ``update(done, total)`` is a :data:`gpujob.storage.Progress`."""

    def __init__(self, label: str, stream=None) -> None:
        self.label, self.stream = label, stream or sys.stderr
        self.live = self.stream.isatty()
        self.shown_at = 0.0

    def __enter__(self) -> "ByteBar":
        return self

    def update(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.live and (now - self.shown_at > 0.2 or done >= total):
            self.shown_at = now
            words = phase_words({"phase": self.label, "done": done, "total": max(total, 1), "unit": "bytes"})
            self.stream.write(f"\r\x1b[K{words}")
            self.stream.flush()

    def __exit__(self, *exc) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
