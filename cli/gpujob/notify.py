"""Notifications when a job ends: the spec's ``notify:`` webhook and/or command, once per job.

Who sends: whoever records the job's end: the local backend's supervisor as it records it; for the
other backends the job service, when a command (``status``, ``list``, ``logs -f``, ``cancel``) sees
the end. Either claims it (below) and hands the delivery to a detached ``python -m gpujob.notify
JOB_DIR`` (:func:`send_in_background`), so neither a command nor a supervisor, with the GPUs it
holds, waits for a slow webhook.

- **Once**: the sender first creates ``notify.json`` in the job's folder with ``O_EXCL``; whoever
  creates it sends, anyone racing it (a supervisor and a CLI, two CLIs) does not. The file keeps the
  payload that was sent.
- **Retried, bounded**: a failed attempt (connection refused, a timeout, HTTP 5xx, 408 or 429, a
  command exiting non-zero) is tried again after :data:`BACKOFF_S`, never past :data:`DEADLINE_S`
  in all; each attempt has :data:`ATTEMPT_TIMEOUT_S` for the whole of it (not per read), and the
  command runs in a session of its own, whose processes are killed at that deadline; another HTTP 4xx is a wrong URL, not tried again. Every attempt is written to
  ``notify.log`` in the job's folder; a notification that fails never changes the job's status.
- **No secret**: the payload is built from the registry's record (id, name, kind, backend, status,
  event, reason, step/total, last WER, metrics, runtime, cost, output dir) and every string in it
  is passed through :class:`gpujob.redact.Redactor` with the job's secret values where they are
  known, and the webhook URL's. ``notify.webhook_env`` is read where the notification is sent and
  written nowhere; a URL of it in an error message is replaced by ``***``.

Stdlib only: urllib.request and subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterable, Mapping

from gpujob import procs
from gpujob.progress_state import ProgressState
from gpujob.records import BUDGET_WORDS, TERMINAL, Job
from gpujob.redact import Redactor

MARKER = "notify.json"     # created once, O_EXCL: whoever creates it sends
LOG = "notify.log"
BACKOFF_S = (0.5, 1.0, 2.0, 4.0)  # waits between attempts: five attempts at most
ATTEMPT_TIMEOUT_S = 10.0          # one POST, or one run of the command
DEADLINE_S = 30.0                 # all attempts of one target together
RETRY_HTTP = (408, 429)           # besides 5xx
DEFAULT_ON = ("succeeded", "failed", "hung", "budget")
# The webhook_env URL handed from submit to the local supervisor: a name under the local backend's
# secret prefix, so the job never gets it (tests/test_notify.py checks the prefix).
JOB_SECRET_PREFIX = "GPUJOB_SECRET_"  # the local backend's SECRET_PREFIX: a job's secrets, on their way to it
HANDOVER_VAR = JOB_SECRET_PREFIX + "__NOTIFY_WEBHOOK"
USER_AGENT = "gpujob-notify/1"


def handover(webhook_env: str | None, environ: Mapping[str, str]) -> dict[str, str]:
    """What the local backend hands its supervisor, on the supervisor's stdin (never in its environment,
    which a job can read at /proc/$PPID/environ), so that the supervisor can send to ``notify.webhook_env``:
    ``{HANDOVER_VAR: url}``, or {} when there is no such URL."""
    url = environ.get(webhook_env) if webhook_env else None
    return {HANDOVER_VAR: url} if url else {}


def read_handover(stream: Any) -> str | None:
    """The webhook URL a parent wrote on ``stream`` (stdin) as :func:`handover`'s JSON; None when
    nothing was handed (stdin is /dev/null or a terminal) or it is not that JSON."""
    try:
        if stream is None or stream.isatty():
            return None
        data = json.loads(stream.buffer.read(1 << 16) or b"null")
    except (OSError, ValueError, AttributeError):
        return None
    url = data.get(HANDOVER_VAR) if isinstance(data, dict) else None
    return url if isinstance(url, str) and url else None


def event_for(status: str, reason: str | None) -> str | None:
    """What a job's end is called in ``notify.on``: succeeded, failed, hung, budget or cancelled;
    None while it is active."""
    if status not in TERMINAL:
        return None
    reason = reason or ""
    if reason.startswith(BUDGET_WORDS):
        return "budget"
    if status == "failed" and "hung" in reason:
        return "hung"
    return status


def settings(job: Job) -> dict[str, Any]:
    """The job's ``notify`` section as recorded, as plain data (empty when its spec is unreadable)."""
    return job.spec.notify.model_dump(mode="json") if job.spec is not None else {}


def wanted(job: Job) -> str | None:
    """The event to notify of, when the job has ended and its spec asks for that event."""
    cfg = settings(job)
    if not (cfg.get("webhook") or cfg.get("webhook_env") or cfg.get("command")):
        return None
    event = event_for(job.status, job.reason)
    return event if event in (cfg.get("on") or DEFAULT_ON) else None


def secret_values(job: Job, environ: Mapping[str, str]) -> list[str]:
    """The job's secret values as far as this process knows them (runtime.secrets from ``environ``)."""
    names = job.spec.runtime.secrets if job.spec is not None else []
    return [environ[n] for n in names if environ.get(n)]


def payload(job: Job, event: str, redactor: Redactor) -> dict[str, Any]:
    """What is sent: the registry's record of the job, with no secret in it. ``text`` is one line for
    people (Slack and Mattermost show it as is)."""
    state = ProgressState.from_dict(job.progress)
    step, total, wer = state.step, state.total_steps, state.last_wer
    runtime = job.runtime_s
    data = {
        "gpujob": 1,
        "event": event,
        "id": job.id,
        "name": job.name,
        "kind": job.kind,
        "backend": job.backend,
        "status": job.status,
        "reason": job.reason,
        "exit_code": job.exit_code,
        "step": step,
        "total_steps": total,
        "wer": wer,
        "metrics": job.metrics or {},
        "runtime_s": round(runtime, 1) if runtime is not None else None,
        "cost_usd": job.cost,  # None where the price is unknown
        "output_dir": job.output_dir,
        "finished_at": job.finished_at,
    }
    data["text"] = _text(data)
    return redactor.value(data)


def _text(d: Mapping[str, Any]) -> str:
    words = f"gpujob: job {d['id']} ({d['name']}) on {d['backend']} {d['event']}"
    if d["step"] is not None:
        words += f" at step {d['step']}" + (f"/{d['total_steps']}" if d["total_steps"] else "")
    if isinstance(d["wer"], (int, float)):
        words += f", WER {d['wer'] * 100:.2f}%"
    if d["reason"] and d["event"] != "succeeded":
        words += f": {d['reason']}"
    return words


class Notifier:
    """Sends one job's notification from this process: to ``settings`` (the spec's ``notify``), with
    its record kept in ``folder`` (the job's folder)."""

    def __init__(self, folder: Path, cfg: Mapping[str, Any], *, secrets: Iterable[str] = (),
                 environ: Mapping[str, str] | None = None) -> None:
        self.folder, self.cfg = folder, cfg
        self.environ = os.environ if environ is None else environ
        self.url = self._url()
        self.redactor = Redactor([*secrets, *([self.url] if self.url else [])])

    @classmethod
    def for_job(cls, job: Job, *, secrets: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> "Notifier":
        return cls(job.job_dir, settings(job), secrets=secrets, environ=environ)

    def _url(self) -> str | None:
        if self.cfg.get("webhook"):
            return self.cfg["webhook"]
        name = self.cfg.get("webhook_env")
        if name:
            return self.environ.get(name) or self.environ.get(HANDOVER_VAR) or None
        return None

    def claim(self, job: Job) -> dict[str, Any] | None:
        """Create the marker with the payload; None when the job wants no notification or another
        process has claimed it already."""
        event = wanted(job)
        if event is None:
            return None
        body = payload(job, event, self.redactor)
        self.folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.folder / MARKER, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            return None
        with os.fdopen(fd, "w") as fh:  # the settings too, for a detached sender: the URL of webhook_env is not among them
            json.dump({"payload": body, "notify": dict(self.cfg)}, fh, indent=2)
        return body

    def deliver(self, body: dict[str, Any]) -> bool:
        data = json.dumps(body).encode()
        ok = True
        if self.cfg.get("webhook") or self.cfg.get("webhook_env"):
            if self.url:
                ok &= self._retry("webhook", lambda t: self._post(data, t))
            else:
                self._log(f"webhook: not sent: the environment variable {self.cfg['webhook_env']} "
                          "(notify.webhook_env) is not set where the job's end was seen")
                ok = False
        if self.cfg.get("command"):
            ok &= self._retry("command", lambda t: self._run(list(self.cfg["command"]), data, t))
        return ok

    # -------------------------------------------------------------- targets

    def _post(self, data: bytes, within_s: float) -> tuple[bool, bool, str]:
        """One POST, given up after ``within_s`` in all (a server that answers one byte at a time
        resets a per-read timeout forever): (delivered, worth retrying, what happened)."""
        request = urllib.request.Request(self.url, data=data, method="POST", headers={
            "Content-Type": "application/json", "User-Agent": USER_AGENT})
        result: list[tuple[bool, bool, str]] = []

        def attempt() -> None:
            try:
                with urllib.request.urlopen(request, timeout=within_s) as resp:
                    result.append((True, False, f"HTTP {resp.status}"))
            except urllib.error.HTTPError as exc:
                result.append((False, exc.code >= 500 or exc.code in RETRY_HTTP, f"HTTP {exc.code} {exc.reason}"))
            except (urllib.error.URLError, OSError, ValueError) as exc:
                result.append((False, True, str(getattr(exc, "reason", exc))))
            except Exception as exc:  # noqa: BLE001 -- e.g. http.client's errors for a malformed answer
                result.append((False, True, f"{type(exc).__name__}: {exc}"))

        worker = threading.Thread(target=attempt, daemon=True)  # abandoned, not waited for, past the deadline
        worker.start()
        worker.join(within_s)
        if not result:
            return False, True, f"no complete answer within {within_s:.3g} s; abandoned"
        return result[0]

    def _run(self, argv: list[str], data: bytes, within_s: float) -> tuple[bool, bool, str]:
        """One run of the command, in a session of its own: what it leaves running in its process group
        (a background child) may finish until ``within_s``, and is killed then."""
        env = {k: v for k, v in os.environ.items() if k != HANDOVER_VAR}
        until = time.monotonic() + within_s
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                    env=env, start_new_session=True)
        except FileNotFoundError:
            return False, False, f"command not found: {argv[0]}"
        except OSError as exc:
            return False, False, f"could not run {argv[0]}: {exc.strerror}"
        try:
            _, err = proc.communicate(data, timeout=within_s)
            left = _wait_group(proc.pid, until)
        except subprocess.TimeoutExpired:  # it, or a child holding its stderr, still runs
            _kill_group(proc.pid)
            _, err = proc.communicate()
            if proc.returncode != 0:
                return False, True, f"still running after {within_s:.3g} s; killed with its process group"
            left = True
        what = "exit 0" if proc.returncode == 0 else f"exit {proc.returncode}"
        if left:
            _kill_group(proc.pid)
            what += f"; what it left running was killed at {within_s:.3g} s"
        if proc.returncode == 0:
            return True, False, what
        last = (err or b"").decode("utf-8", "replace").strip().splitlines()[-1:]
        return False, True, what + (f": {last[0][:300]}" if last else "")

    def _retry(self, target: str, attempt) -> bool:
        """Attempts until one delivers, one says not to retry, or :data:`DEADLINE_S` in all is spent:
        each attempt gets at most :data:`ATTEMPT_TIMEOUT_S` and never more than what is left."""
        deadline = time.monotonic() + DEADLINE_S
        for n in range(len(BACKOFF_S) + 1):
            left = deadline - time.monotonic()
            if left <= 0.05:
                self._log(f"{target}: the {DEADLINE_S:g} s deadline has passed")
                break
            delivered, again, what = attempt(min(ATTEMPT_TIMEOUT_S, left))
            self._log(f"{target}: attempt {n + 1}: {what}")
            if delivered:
                return True
            if not again or n == len(BACKOFF_S) or time.monotonic() + BACKOFF_S[n] > deadline:
                break
            time.sleep(BACKOFF_S[n])
        self._log(f"{target}: gave up; the job's status is not affected")
        return False

    def _log(self, line: str) -> None:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
        try:
            with open(self.folder / LOG, "a", encoding="utf-8") as fh:
                fh.write(f"{stamp} {self.redactor.text(line)}\n")
        except OSError:
            pass  # a job folder that went away: nothing to tell


def _wait_group(pgid: int, until: float) -> bool:
    """Wait until no live process (zombies aside) is left in the group ``pgid`` or ``until`` (monotonic)
    passes; True when some are left."""
    while procs.group_members(pgid):
        if time.monotonic() >= until:
            return True
        time.sleep(0.1)
    return False


def _kill_group(pgid: int, settle_s: float = 2.0) -> None:
    """SIGKILL the group, then wait (up to ``settle_s``) until the kernel has ended its members, so that
    nothing of it still runs when delivery returns."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        return
    _wait_group(pgid, time.monotonic() + settle_s)


def send_in_background(job: Job, *, secrets: Iterable[str] | None = None,
                       environ: Mapping[str, str] | None = None, webhook_url: str | None = None) -> None:
    """For the process that has just recorded or seen the job's end (the local supervisor, a command):
    claim the notification here, so that racing processes send it once, with the payload redacted
    with ``secrets`` (default: the values of runtime.secrets in ``environ``); then deliver it from a
    detached ``python -m gpujob.notify JOB_DIR``, so neither a command nor a supervisor (and the GPUs
    it holds) waits for a slow webhook. The sender gets this environment, less the job's secrets:
    webhook_env is read there, or ``webhook_url`` (what the local supervisor was handed) is written on
    its stdin, never into an environment. Nothing raised here reaches the caller."""
    environ = os.environ if environ is None else environ
    try:
        if wanted(job) is None:
            return
        secrets = secret_values(job, environ) if secrets is None else list(secrets)
        handed = {**environ, HANDOVER_VAR: webhook_url} if webhook_url else environ
        if Notifier.for_job(job, secrets=secrets, environ=handed).claim(job) is None:
            return
        env = {k: v for k, v in environ.items() if not k.startswith(JOB_SECRET_PREFIX)}
        with open(job.job_dir / LOG, "ab") as log:
            sender = subprocess.Popen([sys.executable, "-m", "gpujob.notify", str(job.job_dir)],
                                      stdin=subprocess.PIPE if webhook_url else subprocess.DEVNULL, stdout=log,
                                      stderr=subprocess.STDOUT, env=env, start_new_session=True, close_fds=True)
        if webhook_url:
            with sender.stdin:
                sender.stdin.write(json.dumps({HANDOVER_VAR: webhook_url}).encode())
    except Exception as exc:  # a notification must never change how the job ended
        _note_failure(job, exc)


def _note_failure(job: Job, exc: Exception) -> None:
    try:
        with open(job.job_dir / LOG, "a", encoding="utf-8") as fh:
            fh.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} not sent: {type(exc).__name__}\n")
    except OSError:
        pass


def main(argv: list[str]) -> int:
    """Deliver what :func:`send_in_background` claimed in the job folder ``argv[0]``."""
    if len(argv) != 1:
        print("usage: python -m gpujob.notify JOB_DIR", file=sys.stderr)
        return 2
    folder = Path(argv[0])
    claimed = json.loads((folder / MARKER).read_text())
    url = read_handover(sys.stdin)  # the local supervisor's webhook_env URL, handed on stdin
    environ = {**os.environ, HANDOVER_VAR: url} if url else None
    return 0 if Notifier(folder, claimed["notify"], environ=environ).deliver(claimed["payload"]) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
