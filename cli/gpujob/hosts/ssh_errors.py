"""What goes wrong over SSH: the errors gpujob raises, and a failure put in words.

Host-key errors are the user's to settle (:class:`~gpujob.errors.UserError`); an unreachable host
or a failed command is a :class:`~gpujob.errors.GpujobError`.
"""

from __future__ import annotations

import errno
import socket
from pathlib import Path
from typing import Sequence

from gpujob.errors import GpujobError, UserError

_RETRYABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET,
                     errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE}


class HostKeyMismatch(UserError):
    """The host answered with a key other than the one pinned for its alias."""

    def __init__(self, alias: str, target: str, known_hosts: Path, pinned: Sequence[str], offered: str,
                 hint: str | None = None) -> None:
        super().__init__(
            f"the SSH host key of {alias} ({target}) is not the one gpujob pinned when it launched it: "
            f"it offered {offered}, pinned is {', '.join(pinned)} (in {known_hosts}). This may be a "
            "different machine answering on that address (Lambda reuses IPs once an instance is "
            "terminated) or someone intercepting the connection; gpujob refuses to connect.",
            hint=hint or (f"if you know {alias} itself was rebuilt, re-pin its key deliberately: remove the old "
                          f"pin with `ssh-keygen -R {alias} -f {known_hosts}`, check the new fingerprint "
                          "against the instance's console, then connect once with pinning allowed"))
        self.alias = alias


class HostKeyNotPinned(UserError):
    """No key is pinned for this alias, and the caller did not allow pinning one."""

    def __init__(self, alias: str, target: str, known_hosts: Path, offered: str) -> None:
        super().__init__(
            f"no SSH host key is pinned for {alias} ({target}) in {known_hosts}; it offered {offered}. "
            "gpujob pins a host's key only right after it launched the instance, and does not trust "
            "an unknown key later.",
            hint=f"if this is your instance, pin its key deliberately (check {offered} against the "
                 "instance's console first)")
        self.alias = alias


class HostUnreachable(GpujobError):
    """Could not connect (refused, timed out, authentication failed) or the connection dropped."""


class RemoteCommandFailed(GpujobError):
    """A command on the host exited non-zero (or timed out: then ``exit_code_remote`` is None)."""

    def __init__(self, what: str, target: str, exit_code_remote: int | None, stderr_tail: str,
                 hint: str | None = None, timeout_s: float | None = None) -> None:
        status = (f"timed out after {timeout_s:g} s" if timeout_s is not None else
                  "did not finish" if exit_code_remote is None else
                  "killed by a signal" if exit_code_remote == -1 else f"exited {exit_code_remote}")
        message = f"{what} failed on {target} ({status})"
        if stderr_tail.strip():
            message += ":\n" + "\n".join("  " + line for line in stderr_tail.splitlines())
        super().__init__(message, hint=hint)
        self.what = what
        self.exit_code_remote = exit_code_remote
        self.stderr_tail = stderr_tail


def retryable(e: BaseException) -> bool:
    """Failures a host that is still booting produces: refused, timed out, reset, no banner yet."""
    import paramiko

    if isinstance(e, (paramiko.ssh_exception.NoValidConnectionsError, socket.timeout, TimeoutError,
                      ConnectionError, EOFError)):
        return True
    if isinstance(e, paramiko.SSHException):
        text = str(e).lower()
        return "banner" in text or "timeout" in text or "closed" in text or "reset" in text
    if isinstance(e, OSError):
        return e.errno in _RETRYABLE_ERRNOS
    return False


def describe(e: BaseException) -> str:
    """A connection failure in a few words, for an error message."""
    import paramiko

    if isinstance(e, paramiko.ssh_exception.NoValidConnectionsError):
        return "connection refused"
    if isinstance(e, (socket.timeout, TimeoutError)):
        return "timed out"
    if isinstance(e, ConnectionRefusedError):
        return "connection refused"
    if isinstance(e, paramiko.SSHException) and "banner" in str(e).lower():
        return "the port answers but no SSH server spoke (the host may still be booting)"
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[0].lower() + e.strerror[1:]
    text = str(e).strip()
    return text or type(e).__name__
