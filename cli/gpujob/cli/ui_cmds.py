"""ui: the dashboard in the browser (jobs, live logs, curves, utterances, hosts and cost)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from gpujob.cli.common import friendly
from gpujob.errors import UserError


def register(app: typer.Typer) -> None:
    app.command("ui")(friendly(ui))


def ui(
    host: Annotated[str, typer.Option("--host", metavar="ADDRESS",
                                      help="Address to listen on; not loopback: needs the token, and TLS or --insecure.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", metavar="PORT", help="Port to listen on; 0: any free one.")] = 8080,
    open_: Annotated[bool, typer.Option("--open", help="Open it in your web browser.")] = False,
    insecure: Annotated[bool, typer.Option("--insecure", help="Allow plain HTTP on a non-loopback address.")] = False,
    certfile: Annotated[Optional[str], typer.Option("--certfile", metavar="FILE", help="TLS certificate (PEM).")] = None,
    keyfile: Annotated[Optional[str], typer.Option("--keyfile", metavar="FILE", help="TLS private key (PEM).")] = None,
) -> None:
    """Serve the dashboard: jobs, live logs and progress, curves, worst utterances, compare, hosts and cost.

    Prints its URL, then serves until Ctrl-C. Reads the same registry as the other commands.
    """
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port}: not a port", hint="0..65535; 0 picks a free one")
    try:
        from gpujob.ui import security, server
    except ImportError as exc:
        raise UserError(f"gpujob ui needs the dashboard's libraries, which are not installed here ({exc})",
                        hint="pip install 'gpujob[ui]' (Starlette, uvicorn, Jinja2)") from None
    access = security.access_for(host, insecure=insecure, certfile=certfile, keyfile=keyfile)
    try:
        server.serve(access, port, open_browser=open_)
    except KeyboardInterrupt:
        pass
