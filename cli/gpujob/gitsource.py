"""The git commit of the folder a job is submitted from, and whether it had uncommitted changes: recorded
with the job (its overview on the dashboard), so a run can be traced to the code that made it.
Stdlib-only; no git, or not a repository: nothing."""

from __future__ import annotations

import os
import subprocess
from typing import Any

TIMEOUT_S = 3.0


def _git(folder: str, *args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=TIMEOUT_S,
                              stdin=subprocess.DEVNULL, env={**os.environ, "GIT_OPTIONAL_LOCKS": "0"})
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def source(folder: str | None = None) -> dict[str, Any] | None:
    """``{dir, commit, dirty}`` of ``folder`` (default: the current one), or None outside a git work tree."""
    folder = folder or os.getcwd()
    commit = _git(folder, "rev-parse", "HEAD")
    if not commit or len(commit.strip()) < 7:
        return None
    status = _git(folder, "status", "--porcelain", "--untracked-files=no")
    return {"dir": folder, "commit": commit.strip()[:40], "dirty": bool(status and status.strip())}
