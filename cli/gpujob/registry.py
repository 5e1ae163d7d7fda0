"""The job registry: one SQLite file under ``$GPUJOB_HOME`` (default ``~/.gpujob``).

It holds every job, each status transition with its time, the backend's handle
(pid, container id, Job name...), the latest progress snapshot and the final
metrics; and every rented host (``gpujob host up``) with its instance, price,
state, deadlines and the last heartbeat its idle agent reported. No secret is
ever stored here. Safe under concurrent CLI calls and background supervisors:

* WAL journal, so readers (``list``, ``logs -f``) never block the writer;
* every write is one short ``BEGIN IMMEDIATE`` transaction with a busy timeout,
  so two ``submit`` calls at once queue instead of failing;
* ``synchronous=FULL``: a CLI killed mid-write leaves the last committed state,
  never a torn one;
* a new job's claim on its ``output.dir`` is checked in the transaction that records it, so of
  several submits at once to one directory exactly one is accepted.

Opening it (:mod:`gpujob.registry_open`): a home or registry you cannot write is opened read-only
(:attr:`Registry.read_only` says why); a damaged, empty or missing registry beside job folders is
kept aside and rebuilt from them (:mod:`gpujob.registry_repair`).
"""

from __future__ import annotations

import json
import os
import secrets
import sqlite3
import string
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from gpujob.backends import NAMES as BACKEND_NAMES, capabilities
from gpujob.errors import AmbiguousJob, JobNotFound, OutputDirInUse, RegistryError, UserError
from gpujob.records import ACTIVE, HOST_ACTIVE, STATUSES, TERMINAL, Host, Job, gpujob_home  # noqa: F401 (re-exported)
from gpujob import history as hist, registry_open, untrusted
from gpujob.registry_open import DB_NAME, READ_ONLY_HINT, SCHEMA_VERSION  # noqa: F401 (re-exported)
from gpujob.registry_repair import repair

_ID_FIRST = string.ascii_lowercase
_ID_REST = string.ascii_lowercase + string.digits


def output_key(output_dir: str) -> str:
    """``output.dir`` as compared between jobs: a URI without trailing slashes; a path absolute,
    normalised (``./x/`` is ``x``) and with symlinks resolved as they are now (submit stores
    resolved paths already; this also covers records written by older versions)."""
    if "://" in output_dir:
        return output_dir.rstrip("/")
    return os.path.realpath(os.path.expanduser(output_dir))


def new_job_id() -> str:
    """Six characters, a letter first: short to type, 1.4e9 possibilities."""
    return secrets.choice(_ID_FIRST) + "".join(secrets.choice(_ID_REST) for _ in range(5))


def open_db(home: Path, create: bool = True) -> registry_open.Opened:
    """The registry in ``home``: created, read-only (and why), or set aside and rebuilt when broken.
    ``create=False`` (commands that only read): a home that does not exist is not made; the registry
    is then an empty one in memory."""
    if not create and not home.exists() and _first_existing(home).is_dir():
        conn = registry_open.connect(":memory:")
        registry_open.setup(conn)
        return registry_open.Opened(conn, None)
    registry_open.ensure_home(home)
    path = home / DB_NAME
    why = registry_open.read_only_reason(home, path)
    if why:
        return registry_open.Opened(registry_open.open_read_only(home, path, why), why)
    conn = registry_open.connect(path) if path.exists() and path.stat().st_size else None
    # The connection that looked is the one used: opening and closing one more per call makes
    # many calls at once contend for the WAL checkpoint that a closing last connection runs.
    if registry_open.diagnose(home, path, conn):
        if conn is not None:
            conn.close()
        repair(home, path)
        conn = None
    conn = conn or registry_open.connect(path)
    registry_open.setup(conn)
    return registry_open.Opened(conn, None)


def _first_existing(path: Path) -> Path:
    """``path`` or its nearest ancestor that exists (a file there means no home can be made: said as
    for a command that makes one)."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return path


HOST_COLUMNS = tuple(f for f in Host.__dataclass_fields__ if f not in ("created_at", "updated_at"))


class Registry:
    def __init__(self, home: Path | None = None, *, create: bool = True) -> None:
        self.home = Path(home) if home else gpujob_home()
        self.path = self.home / DB_NAME
        self._conn, self.read_only = open_db(self.home, create)

    def close(self) -> None:
        self._conn.close()

    def check_writable(self, what: str) -> None:
        """Raise, naming why, when this registry cannot record ``what`` (e.g. "submit a job")."""
        if self.read_only:
            raise RegistryError(f"cannot {what}: {self.read_only}, so gpujob could not record it",
                                hint=READ_ONLY_HINT)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        self.check_writable("record a change")
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        else:
            conn.execute("COMMIT")

    # ------------------------------------------------------------------ writes

    def create(self, *, name: str, kind: str, backend: str, spec: dict[str, Any],
               spec_path: str | None, output_dir: str | None, exclusive_output: bool = False,
               price_usd_per_hour: float | None = None, price_source: str | None = None,
               sweep_id: str | None = None) -> Job:
        """Record a new queued job. With ``exclusive_output``, raise :class:`OutputDirInUse` if an
        active job writes to the same directory (compared by :func:`output_key`); the check and
        the insert are one transaction, so concurrent submits cannot both pass it."""
        now = time.time()
        with self._write() as conn:
            if exclusive_output and output_dir:
                key = output_key(output_dir)
                for row in conn.execute(
                        f"SELECT id, name, status, output_dir FROM jobs WHERE status IN ({', '.join('?' * len(ACTIVE))})"
                        " AND output_dir IS NOT NULL ORDER BY created_at", ACTIVE).fetchall():
                    if output_key(row["output_dir"]) == key:
                        raise OutputDirInUse(output_dir, row["id"], row["name"], row["status"])
            while True:
                job_id = new_job_id()
                if not conn.execute("SELECT 1 FROM jobs WHERE id = ?", (job_id,)).fetchone():
                    break
            conn.execute(
                "INSERT INTO jobs (id, name, kind, backend, status, spec_path, spec_json, output_dir,"
                " price_usd_per_hour, price_source, sweep_id, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, 'queued', ?, ?, ?, ?, ?, ?, ?, ?)",
                (job_id, name, kind, backend, spec_path, json.dumps(spec), output_dir, price_usd_per_hour,
                 price_source, sweep_id, now, now),
            )
            conn.execute("INSERT INTO transitions (job_id, status, at) VALUES (?, 'queued', ?)", (job_id, now))
        return self.get(job_id)

    def transition(self, job_id: str, status: str, *, reason: str | None = None,
                   exit_code: int | None = None, only_from: tuple[str, ...] = ACTIVE,
                   started_at: float | None = None) -> bool:
        """Move a job to ``status`` if it is currently in ``only_from``; True if it moved.

        The condition makes racing writers safe: a supervisor reporting "succeeded"
        and a ``cancel`` reporting "cancelled" cannot both win.
        """
        if status not in STATUSES:
            raise ValueError(f"unknown status {status!r}")
        now = time.time()
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] not in only_from:
                return False
            if status in TERMINAL and row["status"] == "cancelling" and status != "cancelled":
                status, reason = "cancelled", None  # the exit that a cancel caused
            if status == "cancelled":
                reason = reason or "cancelled by the user"
            sets = ["status = ?", "updated_at = ?"]
            args: list[Any] = [status, now]
            if reason is not None or status in TERMINAL:
                sets.append("reason = ?")
                args.append(reason)
            if exit_code is not None:
                sets.append("exit_code = ?")
                args.append(exit_code)
            if status == "running" or (started_at is not None and status in TERMINAL):
                sets.append("started_at = COALESCE(started_at, ?)")
                args.append(started_at or now)  # a backend may know when it really started
            if status in TERMINAL:
                sets.append("finished_at = ?")
                args.append(now)
                # the final cost, where the price is known: price x running time
                sets.append("cost_usd = COALESCE(price_usd_per_hour * MAX(0, ? - COALESCE(started_at, ?)) / 3600.0,"
                            " cost_usd)")
                args.extend([now, now])
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))
            conn.execute("INSERT INTO transitions (job_id, status, reason, at) VALUES (?, ?, ?, ?)",
                         (job_id, status, reason, now))
        return True

    def delete(self, job_id: str, *, only_from: tuple[str, ...] = TERMINAL) -> bool:
        """Forget a job (its record, transitions and metric history) if it is in ``only_from``;
        True if it was. The check and the delete are one transaction, so a job that a racing writer
        moved out of ``only_from`` is kept. Its folder and outputs are the caller's to remove."""
        with self._write() as conn:
            row = conn.execute("SELECT status FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row["status"] not in only_from:
                return False
            for table in ("history", "transitions"):
                conn.execute(f"DELETE FROM {table} WHERE job_id = ?", (job_id,))
            conn.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
        return True

    def update(self, job_id: str, *, handle: dict[str, Any] | None = None,
               progress: dict[str, Any] | None = None, metrics: dict[str, Any] | None = None,
               cost_usd: float | None = None, price: tuple[float, str] | None = None) -> None:
        """Record what changed; ``price``: (USD per hour, where it came from), once the backend knows it."""
        sets, args = ["updated_at = ?"], [time.time()]
        if price is not None:
            sets.extend(["price_usd_per_hour = ?", "price_source = ?"])
            args.extend(price)
        for column, value in (("handle_json", handle), ("progress_json", progress), ("metrics_json", metrics)):
            if value is not None:
                sets.append(f"{column} = ?")
                args.append(json.dumps(value))
        if cost_usd is not None:
            sets.append("cost_usd = ?")
            args.append(cost_usd)
        with self._write() as conn:
            conn.execute(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ?", (*args, job_id))

    def add_history(self, job_id: str, points: list[dict[str, Any]], *, replace: bool = False) -> None:
        """Record metric history points (:func:`gpujob.history.point`); a point already recorded (same
        kind, step and time) is not added twice. ``replace``: these are the whole history (from a
        complete log), instead of what was recorded. Each series is then thinned to its cap."""
        if not points and not replace:
            return
        with self._write() as conn:
            if replace:
                conn.execute("DELETE FROM history WHERE job_id = ?", (job_id,))
            registry_open.insert_history(conn, job_id, points)
            for kind, cap in hist.CAPS.items():
                rows = conn.execute("SELECT seq, step, t FROM history WHERE job_id = ? AND kind = ? ORDER BY seq",
                                    (job_id, kind)).fetchall()
                drop = hist.thin([tuple(r) for r in rows], cap)
                if drop:
                    conn.executemany("DELETE FROM history WHERE seq = ?", [(seq,) for seq in drop])

    # ------------------------------------------------------------------ reads

    def history(self, job_id: str) -> list[dict[str, Any]]:
        """The job's metric history points, in the order they were recorded (empty on a registry too
        old to have them, opened read-only)."""
        try:
            rows = self._conn.execute("SELECT kind, step, t, data_json FROM history WHERE job_id = ? ORDER BY seq",
                                      (job_id,)).fetchall()
        except sqlite3.OperationalError:
            return []
        out = []
        for r in rows:  # a row is untrusted (the file can be edited): one that is not a point is left out
            step, t = r["step"], r["t"]
            if not isinstance(r["kind"], str) or (step is not None and type(step) is not int) \
                    or (t is not None and not isinstance(t, (int, float))):
                continue
            try:
                data = untrusted.loads(r["data_json"]) if isinstance(r["data_json"], (str, bytes)) else None
            except untrusted.Refused:
                continue
            if not isinstance(data, dict):
                continue
            p = {"event": r["kind"], "step": step, **({"t": t} if t is not None else {})}
            p.update({k: v for k, v in data.items() if k not in p})
            out.append(p)
        return out

    def get(self, job_id: str) -> Job:
        row = self._conn.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise JobNotFound(job_id)
        job = Job._from_row(row)
        job.transitions = [
            (r["status"], r["at"], r["reason"])
            for r in self._conn.execute(
                "SELECT status, at, reason FROM transitions WHERE job_id = ? ORDER BY seq", (job_id,))
        ]
        return job

    def resolve(self, ref: str) -> Job:
        """A job by full id, unique id prefix, or unambiguous name."""
        ref = ref.strip()
        if not ref:
            raise JobNotFound(ref)
        rows = self._conn.execute("SELECT id FROM jobs WHERE id = ?", (ref,)).fetchall()
        if not rows:
            escaped = ref.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
            rows = self._conn.execute(
                "SELECT id FROM jobs WHERE id LIKE ? ESCAPE '\\' ORDER BY created_at DESC",
                (escaped + "%",)).fetchall()
        if not rows:
            rows = self._conn.execute(
                "SELECT id FROM jobs WHERE name = ? ORDER BY created_at DESC", (ref,)).fetchall()
        if not rows:
            raise JobNotFound(ref)
        if len(rows) > 1:
            raise AmbiguousJob(ref, [self.get(r["id"]) for r in rows[:10]])
        return self.get(rows[0]["id"])

    def list(self, *, limit: int | None = None, active_only: bool = False,
             backend: str | None = None, sweep: str | None = None) -> list[Job]:
        sql, args = "SELECT * FROM jobs", []
        where = []
        if sweep:
            where.append("sweep_id = ?")
            args.append(sweep)
        if active_only:
            where.append(f"status IN ({', '.join('?' * len(ACTIVE))})")
            args.extend(ACTIVE)
        if backend:
            where.append("backend = ?")
            args.append(backend)
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY created_at DESC"
        if limit:
            sql += " LIMIT ?"
            args.append(limit)
        try:
            return [Job._from_row(r) for r in self._conn.execute(sql, args)]
        except sqlite3.OperationalError:
            if sweep:  # an older registry, opened read-only: it has no sweeps
                return []
            raise

    # ------------------------------------------------------------------ hosts

    def add_host(self, **fields: Any) -> Host:
        now = time.time()
        cols = {k: v for k, v in fields.items() if k in HOST_COLUMNS}
        cols.setdefault("settings", {})
        cols.setdefault("heartbeat", {})
        cols["settings_json"] = json.dumps(cols.pop("settings"))
        cols["heartbeat_json"] = json.dumps(cols.pop("heartbeat"))
        cols.update(created_at=now, updated_at=now)
        with self._write() as conn:
            conn.execute(f"INSERT INTO hosts ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                         tuple(cols.values()))
        return self.get_host(fields["name"])

    def update_host(self, name: str, **fields: Any) -> Host:
        unknown = set(fields) - set(HOST_COLUMNS)
        if unknown:
            raise ValueError(f"unknown host fields {sorted(unknown)}")
        sets, args = ["updated_at = ?"], [time.time()]
        for key, value in fields.items():
            if key in ("settings", "heartbeat"):
                key, value = f"{key}_json", json.dumps(value)
            sets.append(f"{key} = ?")
            args.append(value)
        with self._write() as conn:
            conn.execute(f"UPDATE hosts SET {', '.join(sets)} WHERE name = ?", (*args, name))
        return self.get_host(name)

    def get_host(self, name: str) -> Host:
        row = self._conn.execute("SELECT * FROM hosts WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise UserError(f"no host named {name!r}", hint="run `gpujob host list` to see your hosts")
        return Host._from_row(row)

    def find_host(self, name: str) -> Host | None:
        row = self._conn.execute("SELECT * FROM hosts WHERE name = ?", (name,)).fetchone()
        return Host._from_row(row) if row else None

    def list_hosts(self, *, active_only: bool = False) -> list[Host]:
        sql = "SELECT * FROM hosts"
        args: list[Any] = []
        if active_only:
            sql += f" WHERE state IN ({', '.join('?' * len(HOST_ACTIVE))})"
            args.extend(HOST_ACTIVE)
        return [Host._from_row(r) for r in self._conn.execute(sql + " ORDER BY created_at DESC", args)]

    def hosts_due(self, now: float) -> list[Host]:
        """Active hosts whose check time or hard deadline has passed (the reaper's work)."""
        rows = self._conn.execute(
            f"SELECT * FROM hosts WHERE state IN ({', '.join('?' * len(HOST_ACTIVE))})"
            " AND ((check_after IS NOT NULL AND check_after <= ?) OR (hard_deadline IS NOT NULL AND hard_deadline <= ?))",
            (*HOST_ACTIVE, now, now)).fetchall()
        return [Host._from_row(r) for r in rows]

    def jobs_on_host(self, name: str, *, active_only: bool = True) -> list[Job]:
        """The jobs on rented host ``name``: those of the backends that run on the hosts kept here
        (:attr:`~gpujob.backends.base.Capabilities.rents_hosts`) whose handle names it."""
        from gpujob.backends.host_handle import HostHandle  # the handle's model: only when a host's jobs are asked for

        renting = [b for b in BACKEND_NAMES if capabilities(b).rents_hosts]
        return [j for b in renting for j in self.list(active_only=active_only, backend=b)
                if HostHandle.of(j).host == name]

    def integrity_ok(self) -> bool:
        return self._conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
