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
        self._readers: list[threading.Thread] = []

    def start(self, timeout: float = 30) -> "UiServer":
        self.proc = subprocess.Popen([*self.python, "ui", "--port", "0", *self.args], cwd=self.cwd, env=self.env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            reader = threading.Thread(target=lambda s=stream, k=sink: [k.append(line) for line in s], daemon=True)
            reader.start()
            self._readers.append(reader)
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
        for reader in self._readers:  # its last lines, so that log() after stop() holds all it printed
            reader.join(timeout=5)
        return self.proc.returncode

    def log(self) -> str:
        """What it printed so far: stdout and stderr are read apart, so a line just printed on one may not be
        here yet while the other's is; wait_for_line() waits for one, and after stop() all of it is here."""
        return "".join(self.out + self.err)

    def wait_for_line(self, text: str, timeout: float = 15) -> None:
        wait_for(lambda: text in self.log() or self.proc.poll() is not None, timeout=timeout,
                 what=f"gpujob ui to print {text!r}")
        assert text in self.log(), f"gpujob ui exited {self.proc.returncode} without printing {text!r}: {self.log()}"

    def __enter__(self) -> "UiServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def env_with(home: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "GPUJOB_HOME": str(home), **extra}
