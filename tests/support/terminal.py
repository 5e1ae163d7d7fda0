"""A command run on a real pseudo-terminal, as a person at a terminal runs it: its screen, read back."""

from __future__ import annotations

import os
import pty
import select
import subprocess
import time


def run_on_terminal(cmd: list[str], env: dict[str, str], cwd=None, timeout: float = 60) -> tuple[int, str]:
    """(exit status, everything it wrote to the terminal, decoded) of ``cmd`` run on a new pty."""
    master, slave = pty.openpty()
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=cwd, close_fds=True)
    os.close(slave)
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.5)
        if ready:
            try:
                data = os.read(master, 65536)
            except OSError:  # the other side closed (Linux says EIO)
                break
            if not data:
                break
            chunks.append(data)
        elif proc.poll() is not None:
            break
    proc.wait(10)
    os.close(master)
    return proc.returncode, b"".join(chunks).decode("utf-8", "replace")
