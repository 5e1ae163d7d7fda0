"""A webhook on loopback for the notification tests: a real HTTP server in a thread that records
every POST (its time and JSON body) and can be told to fail."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Hook:
    """Records every POST as (time, body); answers the first ``fail_first`` with HTTP 500 (every one
    when ``always_fail``), the others with 204. ``close()`` stops it."""

    def __init__(self, fail_first: int = 0, always_fail: bool = False) -> None:
        self.posts: list[tuple[float, dict]] = []
        self.fail_first, self.always_fail = fail_first, always_fail
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                hook.posts.append((time.time(), body))
                failing = hook.always_fail or len(hook.posts) <= hook.fail_first
                self.send_response(500 if failing else 204)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def bodies(self) -> list[dict]:
        return [b for _, b in self.posts]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
