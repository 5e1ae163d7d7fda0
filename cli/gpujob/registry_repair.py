"""A broken registry, set aside and rebuilt from the job folders (``$GPUJOB_HOME/jobs/<id>``).

Called by :func:`gpujob.registry.open_db` when the registry is damaged, or empty or missing
while job folders exist. Under a lock (``registry.lock``) it looks again (another gpujob call may
have done it meanwhile), renames the broken file — never deletes it — to
``registry.db.broken-<time>`` (its ``-wal``/``-shm`` with it), builds a new registry in a temporary
file from what each job folder holds, and renames that into place; then it says so on stderr.

What a folder gives (the local backend writes all of it; others only the saved log):

* ``spec.json``: name, kind, backend, output.dir (under ``launch.json``'s workdir);
* ``handle.json``: the supervisor and job processes: a job whose supervisor is alive is running;
* the job's log (``output.log``): the progress snapshot and metrics, replayed from its events, and an ``end`` event's
  status;
* ``result.json`` (if a backend writes one): status, exit_code, reason, finished_at.

A finished job whose outcome none of these tell is recorded failed, with a reason that says so.
The transitions' times, costs, and rented hosts lived only in the registry: the note says to look
at the old file and the provider's console for those.
"""

from __future__ import annotations

import fcntl
import json
import os
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from gpujob import history, procs
from gpujob.backends.base import LOG_NAME
from gpujob.progress import PREFIX
from gpujob.progress_state import ProgressState
from gpujob.registry_open import SCHEMA_VERSION, STATEMENTS, connect, diagnose, insert_history, job_folders

LOCK_NAME = "registry.lock"


def repair(home: Path, path: Path) -> None:
    with _locked(home):
        problem = diagnose(home, path)
        if problem is None:
            return
        kept = set_aside(path)
        jobs = rebuild(home, path)
    say(note(home, path, problem, kept, jobs))


def set_aside(path: Path) -> Path | None:
    """Rename the registry and its journal files to ``<name>.broken-<time>``; the new name (None if
    there was no file)."""
    if not path.exists():
        return None
    stamp = time.strftime("%Y%m%d-%H%M%S")
    kept = path.with_name(f"{path.name}.broken-{stamp}")
    n = 1
    while kept.exists():
        n += 1
        kept = path.with_name(f"{path.name}.broken-{stamp}-{n}")
    os.rename(path, kept)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            os.rename(side, kept.with_name(kept.name + suffix))
    return kept


def rebuild(home: Path, path: Path) -> list[dict[str, Any]]:
    """A new registry at ``path`` holding one job per job folder; the jobs recorded."""
    tmp = path.with_name(f"{path.name}.rebuilding-{os.getpid()}")
    tmp.unlink(missing_ok=True)
    jobs = [job_from_folder(folder) for folder in job_folders(home)]
    conn = connect(tmp)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for statement in STATEMENTS:
            conn.execute(statement)
        for job in jobs:
            transitions, points = job.pop("transitions"), job.pop("points")
            cols = ", ".join(job)
            conn.execute(f"INSERT INTO jobs ({cols}) VALUES ({', '.join('?' * len(job))})", tuple(job.values()))
            for status, at, reason in transitions:
                conn.execute("INSERT INTO transitions (job_id, status, reason, at) VALUES (?, ?, ?, ?)",
                             (job["id"], status, reason, at))
            insert_history(conn, job["id"], points)
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        conn.execute("COMMIT")
    finally:
        conn.close()
    os.replace(tmp, path)
    return jobs


def job_from_folder(folder: Path) -> dict[str, Any]:
    job_id = folder.name
    spec, launch, handle = (_json(folder / n) for n in ("spec.json", "launch.json", "handle.json"))
    result = _json(folder / "result.json")
    created = min(t for t in (_mtime(folder / "spec.json"), _mtime(folder / "launch.json"),
                              _mtime(folder), time.time()) if t)
    last = max([created, *(t for t in (_mtime(p) for p in _files(folder)) if t)])  # its last sign of life
    started = _mtime(folder / "handle.json") if handle.get("pid") else None
    progress, end_status, message, points = _replay(folder / LOG_NAME)
    if result.get("status") in ("succeeded", "failed", "cancelled"):
        status, reason, finished = result["status"], result.get("reason"), result.get("finished_at")
    elif _alive(handle.get("supervisor_pid"), handle.get("supervisor_start")):
        status, reason, finished = ("running" if started else "starting"), None, None
    elif end_status in ("succeeded", "failed"):
        status, finished = end_status, last
        reason = None if end_status == "succeeded" else f"the job reported failure{': ' + message if message else ''}"
    else:
        status, finished = "failed", last
        reason = (f"its outcome was not recorded: the registry was rebuilt from {folder}, which does not say "
                  f"how the job ended (see `gpujob logs {job_id}`)")
    rt = spec.get("runtime") or {}
    name = spec.get("name") or job_id
    transitions = [("queued", created, None)]
    if started:
        transitions.append(("running", started, None))
    if finished:
        transitions.append((status, finished, reason))
    return {
        "id": job_id, "name": str(name), "kind": str(spec.get("kind") or "unknown"),
        "backend": str(rt.get("backend") or ("local" if launch else "unknown")), "status": status,
        "reason": reason, "exit_code": result.get("exit_code"), "spec_path": None,
        "spec_json": json.dumps(spec), "output_dir": _output_dir(spec, launch, name),
        "handle_json": json.dumps(handle), "progress_json": json.dumps(progress),
        "metrics_json": json.dumps(progress.get("metrics") or {}), "cost_usd": 0.0,
        "price_usd_per_hour": _price(launch), "price_source": launch.get("price_source") if _price(launch) else None,
        "created_at": created, "started_at": started, "finished_at": finished,
        "updated_at": time.time(), "transitions": transitions, "points": points,
    }


def note(home: Path, path: Path, problem: str, kept: Path | None, jobs: list[dict[str, Any]]) -> str:
    running = sum(1 for j in jobs if j["status"] in ("running", "starting"))
    lines = [f"gpujob: the registry {path} {problem}."]
    if kept:
        lines.append(f"gpujob: it was kept, untouched, as {kept}.")
    if jobs:
        lines.append(f"gpujob: a new registry was rebuilt from the {len(jobs)} job folder{'s' * (len(jobs) != 1)} "
                     f"in {home / 'jobs'}"
                     f" ({running} still running); `gpujob list` shows them.")
    else:
        lines.append(f"gpujob: a new, empty registry was started ({home / 'jobs'} holds no job folders).")
    lines.append("gpujob: what only the old registry held is not in the new one: exact job histories, costs, "
                 "and rented hosts (`gpujob host up`): check your provider's console for hosts still running.")
    return "\n".join(lines)


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- helpers


@contextmanager
def _locked(home: Path) -> Iterator[None]:
    fd = os.open(home / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def _files(folder: Path) -> list[Path]:
    try:
        return [p for p in folder.iterdir() if p.is_file()]
    except OSError:
        return []


def _mtime(path: Path) -> float | None:
    try:
        return path.stat().st_mtime
    except OSError:
        return None


def _output_dir(spec: dict[str, Any], launch: dict[str, Any], name: Any) -> str | None:
    env = launch.get("env") if isinstance(launch.get("env"), dict) else {}
    if env.get("GPUJOB_OUTPUT_DIR"):
        return str(env["GPUJOB_OUTPUT_DIR"])
    target = (spec.get("output") or {}).get("dir") or f"outputs/{name}"
    if "://" in str(target):
        return str(target)
    base = launch.get("workdir")
    if not base and not os.path.isabs(os.path.expanduser(str(target))):
        return None
    return os.path.normpath(os.path.join(base or "/", os.path.expanduser(str(target))))


def _replay(log: Path) -> tuple[dict[str, Any], str | None, str | None, list[dict[str, Any]]]:
    """The progress snapshot folded from the events in a job's log, and its metric history."""
    try:
        state = ProgressState()
        with open(log, "r", encoding="utf-8", errors="replace") as fh:
            state.feed_lines(line for line in fh if PREFIX in line)
        with open(log, "r", encoding="utf-8", errors="replace") as fh:
            points = history.from_log(fh)
        return state.to_dict(), state.end_status, state.message, points
    except Exception:  # a log we cannot replay costs the snapshot, never the rebuild
        return {}, None, None, []


def _alive(pid: Any, start: Any) -> bool:
    """:func:`gpujob.procs.alive` for values read from a job folder's handle.json, whatever they are."""
    return isinstance(pid, int) and pid > 0 and procs.alive(pid, start)


def _price(launch: dict[str, Any]) -> float | None:
    """The price the local backend wrote beside the job (launch.json), if it is a number."""
    value = launch.get("price_per_hour")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None
