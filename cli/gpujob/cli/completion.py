"""Shell completion (typer's: `gpujob --install-completion`) of job ids, sweep ids, host names and
backend names. Each function reads the registry file read-only and quickly, makes nothing (no
$GPUJOB_HOME where there is none) and answers nothing rather than fail: a completion must not print
an error into the user's command line."""

from __future__ import annotations

from gpujob.backends import NAMES
from gpujob.records import gpujob_home


def _rows(sql: str) -> list[tuple]:
    import sqlite3

    path = gpujob_home() / "registry.db"
    if not path.is_file():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
        try:
            return conn.execute(sql).fetchall()
        finally:
            conn.close()
    except sqlite3.Error:
        return []


def job_ids(incomplete: str) -> list[tuple[str, str]]:
    """Job ids (and names) starting with what was typed, newest first; a name typed matches too."""
    rows = _rows("SELECT id, name, status FROM jobs ORDER BY created_at DESC LIMIT 500")
    return [(i, f"{n} ({s})") for i, n, s in rows if i.startswith(incomplete) or n.startswith(incomplete)]


def sweep_ids(incomplete: str) -> list[tuple[str, str]]:
    rows = _rows("SELECT sweep_id, COUNT(*) FROM jobs WHERE sweep_id IS NOT NULL GROUP BY sweep_id"
                 " ORDER BY MAX(created_at) DESC")
    return [(s, f"{n} jobs") for s, n in rows if s.startswith(incomplete)]


def host_names(incomplete: str) -> list[tuple[str, str]]:
    rows = _rows("SELECT name, state FROM hosts ORDER BY created_at DESC")
    return [(n, s) for n, s in rows if n.startswith(incomplete)]


def backend_names(incomplete: str) -> list[str]:
    return [n for n in NAMES if n.startswith(incomplete)]
