"""What a process's exit status means, in plain words (stdlib only: the CLI, the backends and the
launcher inside a job share it)."""

from __future__ import annotations

import signal


def explain_exit(code: int | None, last_error: str | None = None) -> str:
    """An exit status in plain words: 137 -> 'killed by SIGKILL (often: out of memory)'."""
    if code is None:
        words = "ended without an exit status"
    elif code == 0:
        words = "exited with code 0"
    else:
        signum = -code if code < 0 else code - 128 if 128 < code < 160 else None
        if signum == signal.SIGKILL:
            words = f"killed by SIGKILL (exit {code}; often: out of memory, or kill -9)"
        elif signum == signal.SIGTERM:
            words = f"terminated by SIGTERM (exit {code})"
        elif signum == signal.SIGSEGV:
            words = f"crashed with a segmentation fault (exit {code})"
        elif signum == signal.SIGINT:
            words = f"interrupted (exit {code})"
        elif signum is not None and code < 0:
            words = f"killed by signal {signal.Signals(signum).name if signum in signal.valid_signals() else signum}"
        elif code == 2:
            words = "exited with code 2 (the job rejected its input or configuration)"
        elif code == 126:
            words = "exited with code 126 (the command is not executable)"
        elif code == 127:
            words = "exited with code 127 (command not found)"
        else:
            words = f"exited with code {code}"
    return f"{words}: {last_error}" if last_error else words
