"""Opening the registry: gpujob's home, whether it may be written, and a registry that is broken.

* A new home is created private (0700). An existing one is never chmod-ed: its mode is the user's.
* Home or registry not writable by you, or not yours (``sudo gpujob`` on someone's home), is
  opened **read-only**: the database is opened with ``mode=ro`` (``immutable=1`` when SQLite could
  not use its WAL index there), nothing is created, migrated or reaped; reads work, and a command
  that must record something says why it cannot (:class:`~gpujob.errors.RegistryError`, exit 1).
* A registry that is damaged (not a SQLite file, truncated), or empty or missing while
  ``jobs/<id>`` folders exist, is never used as "no jobs yet" and never overwritten: with a
  writable home it is kept as ``registry.db.broken-<time>`` and the registry is rebuilt from the
  job folders (:mod:`gpujob.registry_repair`), with a note on stderr; read-only, it is an error
  that names the file and what to do.
* SQLite errors that reach the CLI become a message naming the file (:func:`explain`), never
  "a bug in gpujob".
"""

from __future__ import annotations

import errno
import json
import os
import re
import sqlite3
import stat
import time
from pathlib import Path
from typing import NamedTuple
from urllib.parse import quote

from gpujob.errors import GpujobError, RegistryError
from gpujob.records import gpujob_home

DB_NAME = "registry.db"
DAMAGED_MARK = "registry.db.damaged"  # left by a command that hit a damaged page: check it on next open
JOB_ID = re.compile(r"^[a-z][a-z0-9]{5}$")
CORRUPT = ("SQLITE_CORRUPT", "SQLITE_NOTADB")

SCHEMA_VERSION = 4   # 2: the hosts table; 3: jobs.price_usd_per_hour and price_source; 4: history, jobs.sweep_id
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id            TEXT PRIMARY KEY,
    name          TEXT NOT NULL,
    kind          TEXT NOT NULL,
    backend       TEXT NOT NULL,
    status        TEXT NOT NULL,
    reason        TEXT,
    exit_code     INTEGER,
    spec_path     TEXT,
    spec_json     TEXT NOT NULL,
    output_dir    TEXT,
    handle_json   TEXT NOT NULL DEFAULT '{}',
    progress_json TEXT NOT NULL DEFAULT '{}',
    metrics_json  TEXT NOT NULL DEFAULT '{}',
    cost_usd      REAL NOT NULL DEFAULT 0,
    price_usd_per_hour REAL,
    price_source  TEXT,
    sweep_id      TEXT,
    created_at    REAL NOT NULL,
    started_at    REAL,
    finished_at   REAL,
    updated_at    REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_name ON jobs(name);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status);
CREATE TABLE IF NOT EXISTS transitions (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs(id),
    status  TEXT NOT NULL,
    reason  TEXT,
    at      REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS transitions_job ON transitions(job_id);
CREATE TABLE IF NOT EXISTS history (
    seq     INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id  TEXT NOT NULL REFERENCES jobs(id),
    kind    TEXT NOT NULL,
    step    INTEGER NOT NULL,
    t       REAL,
    data_json TEXT NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS history_point ON history(job_id, kind, step, IFNULL(t, -1));
CREATE TABLE IF NOT EXISTS hosts (
    name            TEXT PRIMARY KEY,
    provider        TEXT NOT NULL,
    instance_id     TEXT,
    instance_type   TEXT NOT NULL,
    region          TEXT,
    ip              TEXT,
    ssh_user        TEXT NOT NULL,
    ssh_port        INTEGER NOT NULL,
    price_cents_per_hour REAL NOT NULL DEFAULT 0,
    state           TEXT NOT NULL,
    reason          TEXT,
    idle_minutes    REAL NOT NULL,
    max_lifetime_s  REAL,
    filesystem      TEXT,
    settings_json   TEXT NOT NULL DEFAULT '{}',
    heartbeat_json  TEXT NOT NULL DEFAULT '{}',
    heartbeat_seen_at REAL,
    check_after     REAL,
    hard_deadline   REAL,
    launched_at     REAL,
    terminated_at   REAL,
    created_at      REAL NOT NULL,
    updated_at      REAL NOT NULL
);
"""
STATEMENTS = [s for s in _SCHEMA.split(";") if s.strip()]
# Columns added after a table was first made: (table, column, its definition), added to older files.
ADDED_COLUMNS = [("jobs", "price_usd_per_hour", "REAL"), ("jobs", "price_source", "TEXT"), ("jobs", "sweep_id", "TEXT")]

def insert_history(conn: sqlite3.Connection, job_id: str, points: list[dict]) -> None:
    """Add metric history points (:func:`gpujob.history.point`) in the open transaction; a point
    already there (same kind, step and time) is not added twice."""
    conn.executemany(
        "INSERT OR IGNORE INTO history (job_id, kind, step, t, data_json) VALUES (?, ?, ?, ?, ?)",
        [(job_id, p["event"], p["step"], p.get("t"),
          json.dumps({k: v for k, v in p.items() if k not in ("event", "step", "t")})) for p in points])


READ_ONLY_HINT = ("to record changes, make it writable by you (or run gpujob as its owner), "
                  "or set GPUJOB_HOME to a folder of your own")


class Opened(NamedTuple):
    conn: sqlite3.Connection
    read_only: str | None   # why, in words; None when the registry can be written


def connect(path: Path | str, *, uri: bool = False) -> sqlite3.Connection:
    conn = sqlite3.connect(path, timeout=30, isolation_level=None, check_same_thread=False, uri=uri)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA busy_timeout = 30000")
    return conn


def setup(conn: sqlite3.Connection, timeout: float = 30.0) -> None:
    """WAL mode and the schema, once per file. Switching the journal mode can answer
    "database is locked" at once (SQLite does not wait there), e.g. when two first
    CLI calls race to create the file, so that step is retried until ``timeout``."""
    conn.execute("PRAGMA synchronous = FULL")
    conn.execute("PRAGMA foreign_keys = ON")
    deadline = time.monotonic() + timeout
    while True:
        try:
            if conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                conn.execute("PRAGMA journal_mode = WAL")
            if conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for statement in STATEMENTS:
                        conn.execute(statement)
                    for table, column, kind in ADDED_COLUMNS:
                        have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
                        if column not in have:
                            conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
                    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# ----------------------------------------------------------------------------- the home, and who may write


def ensure_home(home: Path) -> None:
    if home.is_dir():
        if not _access(home, os.R_OK | os.X_OK):
            raise RegistryError(f"cannot read gpujob's home {home}: permission denied ({_owner_words(home)})",
                                hint="run gpujob as its owner, or set GPUJOB_HOME to a folder of your own")
        return
    if (home.exists() or home.is_symlink()) and not home.is_dir():  # is_dir again: another call may have just made it
        raise RegistryError(f"gpujob's home {home} is not a folder",
                            hint="move it out of the way, or set GPUJOB_HOME to a folder")
    try:
        home.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(home, 0o700)
        except FileExistsError:
            if home.is_dir():
                return  # another gpujob call made it just now
            raise
    except OSError as exc:
        raise RegistryError(f"cannot create gpujob's home {home}: {exc.strerror}",
                            hint="set GPUJOB_HOME to a folder you can write, e.g. "
                                 "export GPUJOB_HOME=$HOME/.gpujob") from None
    os.chmod(home, 0o700)  # new, and ours: private whatever the umask


def read_only_reason(home: Path, path: Path) -> str | None:
    """Why this process must not write the registry (None: it may). Raises when it cannot even
    read it."""
    me = os.geteuid()
    if path.exists():
        st = path.stat()
        if not _access(path, os.R_OK):
            raise RegistryError(
                f"cannot read gpujob's registry {path}: permission denied "
                f"({_owner_words(path)}; you are {_user(me)})",
                hint=f"run gpujob as {_user(st.st_uid)}, make the file yours (sudo chown {me} {path}), "
                     "or set GPUJOB_HOME to a folder of your own")
        if st.st_uid != me:
            return f"the registry {path} belongs to {_user(st.st_uid)}, not to you ({_user(me)})"
        if not _access(path, os.W_OK):
            return f"the registry {path} is read-only for you (mode {stat.S_IMODE(st.st_mode):04o})"
    elif home.stat().st_uid != me:
        return f"gpujob's home {home} belongs to {_user(home.stat().st_uid)}, not to you ({_user(me)})"
    if not _access(home, os.W_OK):
        return f"gpujob's home {home} is read-only for you ({_owner_words(home)})"
    for side in _sidecars(path):
        if _sidecar_unwritable(side):
            return f"{side} (SQLite's journal of the registry) is not writable by you ({_owner_words(side)})"
    return None


def _sidecar_unwritable(side: Path) -> bool:
    """Whether a -wal/-shm file is there and not writable by us. Another gpujob call's closing
    connection removes these files, and the next one makes them again, so an access check that
    fails may only have missed a file that was just gone: it counts only when it fails again."""
    for _ in range(3):
        if not side.exists() or _access(side, os.R_OK | os.W_OK):
            return False
    return True


def open_read_only(home: Path, path: Path, why: str) -> sqlite3.Connection:
    if not path.exists() or path.stat().st_size == 0:
        folders = job_folders(home)
        if folders:
            state = "missing" if not path.exists() else "empty (0 bytes)"
            raise RegistryError(
                f"gpujob's registry {path} is {state}, but {home / 'jobs'} holds {len(folders)} job folders, "
                f"and it cannot be rebuilt from them here: {why}",
                hint="make the home writable by you (or run gpujob as its owner) and run any gpujob command: "
                     "it rebuilds the registry from the job folders")
        conn = connect(":memory:")  # nothing recorded yet: an empty registry, written nowhere
        for statement in STATEMENTS:
            conn.execute(statement)
        return conn
    # With no WAL index (-shm) beside it, no one has the database open: read it as it is
    # (immutable), so nothing is created next to it. Otherwise share the index read-only.
    shm = _sidecars(path)[1]
    modes = ["mode=ro", "mode=ro&immutable=1"] if shm.exists() else ["mode=ro&immutable=1"]
    for i, mode in enumerate(modes):
        conn = connect(f"file:{quote(str(path))}?{mode}", uri=True)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            break
        except sqlite3.DatabaseError as exc:
            conn.close()
            if is_corrupt(exc):
                raise RegistryError(
                    f"gpujob's registry {path} is damaged ({exc}); it was left as it is, and it cannot be "
                    f"set aside and rebuilt here: {why}",
                    hint="make the home writable by you (or run gpujob as its owner) and run any gpujob command: "
                         "it keeps the file as registry.db.broken-<time> and rebuilds the registry "
                         "from the job folders") from None
            if i == len(modes) - 1:
                raise
    have = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for statement in STATEMENTS:  # an older (or empty) file: its missing tables, empty, in memory
        table = re.search(r"CREATE TABLE IF NOT EXISTS (\w+)", statement)
        if table and table.group(1) not in have:
            conn.execute(statement.replace("CREATE TABLE", "CREATE TEMP TABLE", 1))
    return conn


# ----------------------------------------------------------------------------- broken registries


def diagnose(home: Path, path: Path, conn: sqlite3.Connection | None = None) -> str | None:
    """What is wrong with the registry file, in words ("is empty (0 bytes)"), or None if nothing is.
    ``conn``: a connection to it to look through (else one is opened, and closed)."""
    if not path.exists():
        return "is missing" if job_folders(home) else None
    if path.stat().st_size == 0:
        return "is empty (0 bytes)" if job_folders(home) else None
    mark = home / DAMAGED_MARK
    own = conn is None
    conn = conn or connect(path)
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        if mark.exists():
            if conn.execute("PRAGMA quick_check(1)").fetchone()[0] != "ok":
                return "is damaged (SQLite's integrity check failed)"
            mark.unlink(missing_ok=True)
    except sqlite3.DatabaseError as exc:
        if not is_corrupt(exc):
            raise
        return "is not a SQLite database" if exc.sqlite_errorname == "SQLITE_NOTADB" else f"is damaged ({exc})"
    finally:
        if own:
            conn.close()
    return None


def job_folders(home: Path) -> list[Path]:
    try:
        return sorted(Path(e.path) for e in os.scandir(home / "jobs") if JOB_ID.match(e.name) and e.is_dir())
    except OSError:
        return []


def is_corrupt(exc: BaseException) -> bool:
    return getattr(exc, "sqlite_errorname", None) in CORRUPT or (
        isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError)
        and ("malformed" in str(exc) or "not a database" in str(exc)))


# ----------------------------------------------------------------------------- errors, in words


def explain(exc: BaseException) -> GpujobError | None:
    """A SQLite error, or a permission error on a file in gpujob's home, as the message a user sees;
    None when it is neither (then it is a bug)."""
    home = gpujob_home()
    path = home / DB_NAME
    if isinstance(exc, sqlite3.Error):
        name = getattr(exc, "sqlite_errorname", "") or ""
        if is_corrupt(exc):
            try:
                (home / DAMAGED_MARK).touch()
                hint = ("run the command again: gpujob keeps the damaged file as registry.db.broken-<time> "
                        f"and rebuilds the registry from the job folders in {home / 'jobs'}")
            except OSError:
                hint = (f"make {home} writable by you and run any gpujob command: it keeps the damaged file "
                        "and rebuilds the registry from the job folders")
            return RegistryError(f"gpujob's registry {path} is damaged ({exc}); it was left as it is", hint=hint)
        if name.startswith("SQLITE_READONLY") or "readonly" in str(exc):
            return RegistryError(f"gpujob's registry {path} cannot be written ({exc})", hint=READ_ONLY_HINT)
        if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED")) or "locked" in str(exc):
            return RegistryError(f"gpujob's registry {path} stayed locked by another gpujob process ({exc})",
                                 hint="try again in a moment; if it persists, look for a stuck gpujob process "
                                      "(ps -ef | grep gpujob)")
        if name.startswith(("SQLITE_CANTOPEN", "SQLITE_IOERR", "SQLITE_FULL", "SQLITE_PERM", "SQLITE_AUTH")):
            return RegistryError(f"cannot use gpujob's registry {path}: {exc}",
                                 hint=f"check that {home} is yours, writable and on a disk with free space, "
                                      "or set GPUJOB_HOME to another folder")
        return None
    if isinstance(exc, OSError) and exc.filename and exc.errno in (errno.EPERM, errno.EACCES, errno.EROFS):
        target = Path(os.path.abspath(exc.filename))
        if target == home or home in target.parents:
            return RegistryError(f"gpujob cannot write {target}: {exc.strerror}",
                                 hint=f"make {home} and what is in it yours and writable, "
                                      "or set GPUJOB_HOME to a folder of your own")
    return None


# ----------------------------------------------------------------------------- helpers


def _sidecars(path: Path) -> tuple[Path, Path]:
    return path.with_name(path.name + "-wal"), path.with_name(path.name + "-shm")


def _access(path: Path, mode: int) -> bool:
    return os.access(path, mode, effective_ids=os.access in os.supports_effective_ids)


def _user(uid: int) -> str:
    try:
        import pwd

        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except (ImportError, KeyError):
        return f"uid {uid}"


def _owner_words(path: Path) -> str:
    try:
        st = path.stat()
    except OSError:
        return "it cannot be looked at"
    return f"owner {_user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):04o}"
