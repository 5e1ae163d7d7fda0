"""The `gpujob` command as a user runs it, for the end-to-end backend tests: a subprocess in a
working directory, with the environment the test gives it (its own GPUJOB_HOME, DOCKER_HOST, ...)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

GPUJOB = [sys.executable, "-m", "gpujob"]


class GpujobCli:
    def __init__(self, tmp: Path, env: dict[str, str]):
        self.tmp, self.env = tmp, env

    def gpujob(self, *args: str, timeout: float = 120, env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run([*GPUJOB, *args], env={**self.env, **(env or {})}, capture_output=True, text=True,
                              timeout=timeout, cwd=self.tmp)

    def submit(self, path: Path, *extra: str, env: dict | None = None) -> str:
        r = self.gpujob("submit", str(path), *extra, env=env)
        assert r.returncode == 0, r.stdout + r.stderr
        return r.stdout.split()[2]  # "submitted job <id> (...)"

    def status(self, job_id: str) -> dict:
        r = self.gpujob("status", job_id, "--json")
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def wait_status(self, job_id: str, predicate, timeout: float = 60, what: str = "status") -> dict:
        deadline = time.monotonic() + timeout
        seen = None
        while time.monotonic() < deadline:
            seen = self.status(job_id)
            if predicate(seen):
                return seen
            time.sleep(0.3)
        raise AssertionError(f"timed out waiting for {what}; last status: {seen}")
