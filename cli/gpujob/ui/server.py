"""Serving the dashboard: bind, say where, serve until Ctrl-C.

The socket is bound here (``--port 0``: any free port), so the URL printed — ``gpujob ui:
http://127.0.0.1:8080/``, with ``?token=...`` the one time the token is made — names the real port and
is printed once the socket listens. uvicorn serves on it with its access log off (URLs may carry the
token) and warnings only.
"""

from __future__ import annotations

import errno
import socket
import sys
import threading
import webbrowser

import uvicorn

from gpujob.errors import UserError
from gpujob.ui import app as web
from gpujob.ui.security import Access

SHUTDOWN_GRACE_S = 2


def bind(host: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UserError(f"--host {host}: not an address of this machine ({exc.strerror})",
                        hint="e.g. --host 127.0.0.1 (the default), or this machine's address on your network") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} on {host} is in use", hint="pick another with --port, or --port 0 for any free one") from None
        raise UserError(f"cannot listen on {host}:{port}: {exc.strerror}",
                        hint="ports under 1024 need root; pick another with --port") from None
    sock.listen(128)
    sock.set_inheritable(True)
    return sock


def url(access: Access, sock: socket.socket, *, with_token: bool) -> str:
    host, port = sock.getsockname()[:2]
    shown = access.host if access.host not in ("0.0.0.0", "::") else socket.gethostname()
    if ":" in shown:
        shown = f"[{shown}]"
    out = f"{access.scheme}://{shown}:{port}/"
    return out + (f"?token={access.token}" if with_token and access.token else "")


def serve(access: Access, port: int, *, open_browser: bool = False) -> None:
    sock = bind(access.host, port)
    config = uvicorn.Config(web.build(access), log_level="warning", access_log=False, lifespan="off",
                            ssl_certfile=access.certfile, ssl_keyfile=access.keyfile,
                            timeout_graceful_shutdown=SHUTDOWN_GRACE_S, server_header=False)
    server = uvicorn.Server(config)
    address = url(access, sock, with_token=access.token_made)
    print(f"gpujob ui: {address}", flush=True)
    if access.token and not access.token_made:
        print(f"gpujob ui: the token is in {_token_file()} (shown once, when it was made)", file=sys.stderr, flush=True)
    if open_browser:
        threading.Timer(0.3, webbrowser.open, args=(address,)).start()
    server.run(sockets=[sock])


def _token_file() -> str:
    from gpujob.ui.security import token_path

    return str(token_path())
