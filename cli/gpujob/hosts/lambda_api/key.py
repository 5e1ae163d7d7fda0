"""The Lambda Cloud API key: where it is read from, and a holder that never prints it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

from gpujob.errors import UserError

API_KEY_ENV = "LAMBDA_API_KEY"
API_KEY_FILE = "lambda-api-key"          # under $GPUJOB_HOME (default ~/.gpujob), mode 0600
API_KEYS_PAGE = "https://cloud.lambda.ai/api-keys"


class _Secret:
    """Holds the API key; prints as *** wherever it ends up (reprs, tracebacks with locals)."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "'***'"

    __str__ = __repr__


def api_key(environ: Mapping[str, str] | None = None, path: str | os.PathLike | None = None) -> str:
    """The Lambda Cloud API key: ``$LAMBDA_API_KEY``, else the file ``$GPUJOB_HOME/lambda-api-key``
    (``path`` overrides where), which must be the user's own and mode 0600 or stricter."""
    env = os.environ if environ is None else environ
    key = (env.get(API_KEY_ENV) or "").strip()
    if key:
        return key
    if path is None:
        home = env.get("GPUJOB_HOME") or "~/.gpujob"
        path = Path(home).expanduser() / API_KEY_FILE
    path = Path(path)
    how = (f"create a key in the Lambda Cloud dashboard under API keys ({API_KEYS_PAGE}), then "
           f"`export {API_KEY_ENV}=...`, or put it in {path} and `chmod 600 {path}`")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        raise UserError(f"no Lambda Cloud API key: {API_KEY_ENV} is not set and {path} does not exist",
                        hint=how) from None
    except OSError as e:
        raise UserError(f"cannot read the Lambda Cloud API key file {path}: {e.strerror}",
                        hint=f"make it a plain file of yours: `chmod 600 {path}`") from None
    try:
        st = os.fstat(fd)
        if hasattr(os, "getuid") and st.st_uid != os.getuid():
            raise UserError(f"{path} holds a Lambda Cloud API key but belongs to uid {st.st_uid}, not you "
                            f"(uid {os.getuid()})",
                            hint=f"`sudo chown $(id -u) {path} && chmod 600 {path}`")
        if st.st_mode & 0o077:
            raise UserError(f"{path} holds a Lambda Cloud API key but other users may read it "
                            f"(mode {st.st_mode & 0o777:04o})", hint=f"`chmod 600 {path}`")
        with os.fdopen(fd, "r", encoding="utf-8", errors="replace") as f:
            fd = -1
            key = f.read().strip()
    finally:
        if fd >= 0:
            os.close(fd)
    if not key:
        raise UserError(f"{path} is empty; it should hold your Lambda Cloud API key", hint=how)
    return key
