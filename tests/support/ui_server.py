"""`gpujob ui` as a user starts it, for the dashboard's tests: a real server process on a free port
(``--port 0``), its printed URL read from stdout, stopped with Ctrl-C (SIGINT) at the end."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

from polling import wait_for

GPUJOB = [sys.executable, "-m", "gpujob"]


class UiServer:
    def __init__(self, cwd: Path, env: dict[str, str], *args: str, python: list[str] | None = None) -> None:
        self.cwd, self.env, self.args = cwd, env, args
        self.python = python or GPUJOB
        self.proc: subprocess.Popen | None = None
        self.out: list[str] = []
        self.err: list[str] = []

    def start(self, timeout: float = 30) -> "UiServer":
        self.proc = subprocess.Popen([*self.python, "ui", "--port", "0", *self.args], cwd=self.cwd, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=lambda s=stream, k=sink: [k.append(line) for line in s], daemon=True).start()
        wait_for(lambda: self.url or self.proc.poll() is not None, timeout=timeout, what="gpujob ui to print its URL")
        assert self.url, f"gpujob ui exited {self.proc.returncode}: {''.join(self.out + self.err)}"
        return self

    @property
    def printed(self) -> str | None:
        """The URL as printed (with ``?token=`` the one time it is made)."""
        line = next((ln for ln in self.out if ln.startswith("gpujob ui: ")), None)
        return line.split(": ", 1)[1].strip() if line else None

    @property
    def url(self) -> str | None:
        """The server's base URL, by 127.0.0.1 (whatever address it listens on), without the token."""
        printed = self.printed
        if printed is None:
            return None
        base = printed.split("?", 1)[0]
        scheme, rest = base.split("://", 1)
        port = rest.rsplit(":", 1)[1].rstrip("/")
        return f"{scheme}://127.0.0.1:{port}/"

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self) -> str:
        return "".join(self.out + self.err)

    def __enter__(self) -> "UiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def env_with(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "GPUJOB_HOME": str(home), **extra}
