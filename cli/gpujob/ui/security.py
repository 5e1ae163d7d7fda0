"""Who may talk to the dashboard: the bind address, the access token and TLS (no web library here).

* Loopback (127.0.0.1, ::1, localhost) is the default and needs no token: only this machine's users
  reach it (and the Host header is checked, so a web page cannot reach it by DNS rebinding).
* Any other address needs the token (``$GPUJOB_HOME/ui-token``, mode 0600, made with
  :func:`secrets.token_urlsafe` the first time and printed in the URL that once), and TLS
  (``--certfile``/``--keyfile``) unless ``--insecure`` says plain HTTP is acceptable.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
import sys
from dataclasses import dataclass
from pathlib import Path

from gpujob.errors import UserError
from gpujob.records import gpujob_home

TOKEN_FILE = "ui-token"
LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Access:
    """How the server is reached: whether it needs the token (and which), and TLS files."""

    host: str
    token: str | None = None
    token_made: bool = False     # made now: the URL printed carries it (the only time it is shown)
    certfile: str | None = None
    keyfile: str | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.certfile else "http"


def token_path(home: Path | None = None) -> Path:
    return (home or gpujob_home()) / TOKEN_FILE


def ensure_token(home: Path | None = None) -> tuple[str, bool]:
    """The dashboard's token, and whether it was made now (mode 0600, created exclusively)."""
    path = token_path(home)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        _private(path)
        token = path.read_text().strip()
        if len(token) < 16:
            raise UserError(f"{path} holds no usable token", hint=f"delete {path}; a new one is made and printed once")
        return token, False
    token = secrets.token_urlsafe(32)
    with os.fdopen(fd, "w") as fh:
        fh.write(token + "\n")
    return token, True


def _private(path: Path) -> None:
    """A token file others can read (or write) is made 0600 again, with a warning: whoever read it could
    use the dashboard until it is replaced."""
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        os.chmod(path, 0o600)
        print(f"warning: {path} was readable by other users (mode {mode:04o}); it is 0600 now. Anyone who read it "
              f"can use the dashboard: delete it and restart `gpujob ui` to make a new token", file=sys.stderr)


def access_for(host: str, *, insecure: bool = False, certfile: str | None = None,
               keyfile: str | None = None, home: Path | None = None) -> Access:
    """Check the bind options (a UserError, exit 2, says what to do) and make the token where one is needed."""
    if bool(certfile) != bool(keyfile):
        raise UserError("--certfile and --keyfile go together", hint="give both (a PEM certificate and its key), or neither")
    for flag, path in (("--certfile", certfile), ("--keyfile", keyfile)):
        if path and not Path(path).is_file():
            raise UserError(f"{flag} {path}: no such file", hint="give the PEM file's path")
    if is_loopback(host):
        return Access(host=host, certfile=certfile, keyfile=keyfile)
    if not certfile and not insecure:
        raise UserError(
            f"--host {host} is not a loopback address: the dashboard would be reachable from other machines, "
            "and it refuses plain HTTP there (the token and your jobs would cross the network unencrypted)",
            hint="give --certfile FILE --keyfile FILE (TLS), or --insecure to accept plain HTTP; "
                 "or keep the default --host 127.0.0.1 and reach it through an SSH tunnel (ssh -L 8080:127.0.0.1:8080)")
    token, made = ensure_token(home)
    return Access(host=host, token=token, token_made=made, certfile=certfile, keyfile=keyfile)
