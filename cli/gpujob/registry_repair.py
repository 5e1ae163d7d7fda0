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

from gpujob import history, procs, untrusted
from gpujob.backends.base import LOG_NAME
from gpujob.linesplit import LineSplitter
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
    """The job a folder tells of. Every file in it is untrusted (:mod:`gpujob.untrusted`: regular files
    only, size and depth bounded) and every value type-checked: one that is wrong is left out, and
    the job's reason says which file was damaged; a folder never stops the rebuild."""
    job_id = folder.name
    damaged: list[str] = []
    spec, launch, handle, result = (_json(folder / n, damaged)
                                    for n in ("spec.json", "launch.json", "handle.json", "result.json"))
    result = {"status": _pick(result, "status", lambda v: v in ("succeeded", "failed", "cancelled"), damaged, "result.json"),
              "reason": _pick(result, "reason", lambda v: isinstance(v, str), damaged, "result.json"),
              "exit_code": _pick(result, "exit_code", _is_exit_code, damaged, "result.json"),
              "finished_at": _pick(result, "finished_at", _is_time, damaged, "result.json")}
    for key, ok in (("runtime", _is_dict), ("output", _is_dict), ("name", _is_str), ("kind", _is_str)):
        if _pick(spec, key, ok, damaged, "spec.json") is None:
            spec.pop(key, None)
    for key, ok in (("workdir", _is_str), ("env", _is_dict), ("price_source", _is_str)):
        if _pick(launch, key, ok, damaged, "launch.json") is None:
            launch.pop(key, None)
    if not _is_str((spec.get("runtime") or {}).get("backend", "")):
        spec["runtime"] = {}
    if not _is_str((spec.get("output") or {}).get("dir", "")):
        spec["output"] = {}
    launch["env"] = {k: v for k, v in (launch.get("env") or {}).items() if isinstance(v, str)}
    if _pick(handle, "pid", lambda v: isinstance(v, int) and not isinstance(v, bool), damaged, "handle.json") is None:
        handle.pop("pid", None)
    created = min(t for t in (_mtime(folder / "spec.json"), _mtime(folder / "launch.json"),
                              _mtime(folder), time.time()) if t)
    last = max([created, *(t for t in (_mtime(p) for p in _files(folder)) if t)])  # its last sign of life
    started = _mtime(folder / "handle.json") if handle.get("pid") else None
    progress, end_status, message, points = _replay(folder / LOG_NAME)
    if result["status"]:
        status, reason, finished = result["status"], result["reason"], result["finished_at"] or last
    elif _alive(handle.get("supervisor_pid"), handle.get("supervisor_start")):
        status, reason, finished = ("running" if started else "starting"), None, None
    elif end_status in ("succeeded", "failed"):
        status, finished = end_status, last
        reason = None if end_status == "succeeded" else f"the job reported failure{': ' + message if message else ''}"
    else:
        status, finished = "failed", last
        reason = (f"its outcome was not recorded: the registry was rebuilt from {folder}, which does not say "
                  f"how the job ended (see `gpujob logs {job_id}`)")
    if damaged:
        handle["damaged"] = (f"its folder {folder} is damaged: {', '.join(sorted(set(damaged)))} could not be read "
                             "(replaced or changed by something other than gpujob); what it held is not shown")
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


def _json(path: Path, damaged: list[str]) -> dict[str, Any]:
    """The JSON object in a job folder's file; {} (and its name in ``damaged``) for anything else."""
    try:
        data = untrusted.read_json(path)
    except FileNotFoundError:
        return {}
    except (OSError, untrusted.Refused):
        damaged.append(path.name)
        return {}
    if not isinstance(data, dict):
        damaged.append(path.name)
        return {}
    return data


def _pick(data: dict[str, Any], key: str, ok, damaged: list[str], name: str) -> Any:
    """``data[key]`` if present and ``ok``; None otherwise (a value that is not ok: ``name`` damaged)."""
    value = data.get(key)
    if value is None:
        return None
    if not ok(value):
        damaged.append(name)
        return None
    return value


def _is_str(v: Any) -> bool:
    return isinstance(v, str) and len(v) <= 100_000


def _is_dict(v: Any) -> bool:
    return isinstance(v, dict)


def _is_exit_code(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and -(2**31) <= v < 2**32


def _is_time(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and 0 <= v < 1e11


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
        state.feed_lines(line for line in _log_lines(log) if PREFIX in line)
        points = history.from_log(_log_lines(log))
        return state.to_dict(), state.end_status, state.message, points
    except Exception:  # a log we cannot replay (not a file, a device, a FIFO) costs the snapshot, never the rebuild
        return {}, None, None, []


MAX_REPLAY_BYTES = 1 << 30  # the most of a log the rebuild replays


def _log_lines(log: Path) -> Iterator[str]:
    """The log's lines, a regular file only (untrusted.open_regular), in bounded pieces (a line over
    1 MiB is cut), at most :data:`MAX_REPLAY_BYTES`."""
    with untrusted.open_regular(log) as fh:
        splitter, read = LineSplitter(), 0
        while read < MAX_REPLAY_BYTES:
            chunk = fh.read(1 << 20)
            if not chunk:
                break
            read += len(chunk)
            yield from (line + "\n" for line in splitter.feed(chunk))
        yield from splitter.flush()


def _alive(pid: Any, start: Any) -> bool:
    """:func:`gpujob.procs.alive` for values read from a job folder's handle.json, whatever they are."""
    return isinstance(pid, int) and pid > 0 and procs.alive(pid, start)


def _price(launch: dict[str, Any]) -> float | None:
    """The price the local backend wrote beside the job (launch.json), if it is a number."""
    value = launch.get("price_per_hour")
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0 else None
