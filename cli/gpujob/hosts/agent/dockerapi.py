"""The few Docker Engine API calls the agent makes, with http.client over the engine's unix
socket (or tcp://): list gpujob's containers, inspect one, read the tail of its log, stop it.
The host has no Docker SDK."""

from __future__ import annotations

import http.client
import json
import socket
import struct
import urllib.parse
from typing import Any, Iterable, Mapping

from gpujob.wire import MANAGED_LABEL, MANAGED_VALUE

LOG_TAIL_LINES = 200             # log lines read per running container per check
LOG_MAX_BYTES = 4 << 20          # ...and at most this much of them
DOCKER_TIMEOUT_S = 15


class DockerError(RuntimeError):
    """The engine answered with an error (``status``), or did not answer (``status`` None)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        self.status = status
        super().__init__(message)


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path: str, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self._path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class DockerEngine:
    """The few Docker Engine API calls the agent makes, with http.client (unix:// or tcp://)."""

    def __init__(self, docker_host: str, timeout_s: float = DOCKER_TIMEOUT_S) -> None:
        self.docker_host = docker_host
        self.timeout_s = timeout_s
        url = urllib.parse.urlsplit(docker_host)
        if url.scheme == "unix":
            self._unix = url.path
        elif url.scheme in ("tcp", "http"):
            self._unix = None
            self._netloc = (url.hostname or "localhost", url.port or 2375)
        else:
            raise ValueError(f"unsupported docker_host {docker_host!r}: use unix:///path or tcp://host:port")

    def _connection(self, timeout: float) -> http.client.HTTPConnection:
        if self._unix is not None:
            return _UnixHTTPConnection(self._unix, timeout)
        return http.client.HTTPConnection(*self._netloc, timeout=timeout)

    def _open(self, method: str, path: str, query: Mapping[str, Any] | None, ok: Iterable[int],
              timeout: float | None) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
        if query:
            path += "?" + urllib.parse.urlencode(query)
        conn = self._connection(self.timeout_s if timeout is None else timeout)
        try:
            try:
                conn.request(method, path, headers={"Host": "docker"})
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                raise DockerError(f"cannot reach the Docker engine at {self.docker_host}: {e}") from e
            if resp.status not in tuple(ok):
                body = resp.read(4096)
                try:
                    message = json.loads(body).get("message") or ""
                except (ValueError, AttributeError):
                    message = body[:200].decode(errors="replace")
                raise DockerError(f"the Docker engine answered {resp.status} to {method} {path.split('?')[0]}: "
                                  f"{message}", resp.status)
        except BaseException:
            conn.close()
            raise
        return conn, resp

    def request(self, method: str, path: str, query: Mapping[str, Any] | None = None, *,
                ok: Iterable[int] = (200,), timeout: float | None = None) -> bytes:
        """The body of the answer; DockerError for a status not in ``ok``."""
        conn, resp = self._open(method, path, query, ok, timeout)
        try:
            return resp.read()
        finally:
            conn.close()

    def get_json(self, path: str, query: Mapping[str, Any] | None = None) -> Any:
        return json.loads(self.request("GET", path, query))

    def list_containers(self, states: Iterable[str]) -> list[dict[str, Any]]:
        filters = {"label": [f"{MANAGED_LABEL}={MANAGED_VALUE}"], "status": list(states)}
        return self.get_json("/containers/json", {"all": "1", "filters": json.dumps(filters)})

    def inspect(self, container_id: str) -> dict[str, Any]:
        return self.get_json(f"/containers/{urllib.parse.quote(container_id)}/json")

    def log_tail(self, container_id: str, lines: int = LOG_TAIL_LINES, max_bytes: int = LOG_MAX_BYTES) -> str:
        """The last ``lines`` lines of stdout and stderr, each behind the engine's timestamp (at
        most the last ``max_bytes`` of them). Without a TTY the engine sends a multiplexed stream:
        frames of an 8-byte header (stream type: 1 stdout, 2 stderr; three zero bytes; the
        payload's size, big-endian) and the payload. With one it sends the raw bytes."""
        conn, resp = self._open("GET", f"/containers/{urllib.parse.quote(container_id)}/logs",
                                {"stdout": "1", "stderr": "1", "timestamps": "1", "tail": str(lines)},
                                (200,), None)
        kept = bytearray()
        try:
            head = _read_exact(resp, 8)
            if "multiplexed" in (resp.getheader("Content-Type") or "") or _looks_multiplexed(head):
                while len(head) == 8:
                    (size,) = struct.unpack(">I", head[4:8])
                    kept += _read_exact(resp, size)
                    del kept[:max(0, len(kept) - max_bytes)]
                    head = _read_exact(resp, 8)
            else:
                kept += head
                while True:
                    chunk = resp.read(65536)
                    if not chunk:
                        break
                    kept += chunk
                    del kept[:max(0, len(kept) - max_bytes)]
        finally:
            conn.close()
        return kept.decode("utf-8", errors="replace")

    def start(self, container_id: str) -> None:
        """Start a created container (the GPU queue); already started is fine."""
        self.request("POST", f"/containers/{urllib.parse.quote(container_id)}/start", ok=(204, 304))

    def path_exists(self, container_id: str, path: str) -> bool:
        """Whether a file is in the container (HEAD of its archive: works on a container not started)."""
        conn, resp = self._open("HEAD", f"/containers/{urllib.parse.quote(container_id)}/archive", {"path": path},
                                (200, 404), None)
        try:
            resp.read()
            return resp.status == 200
        finally:
            conn.close()

    def stop(self, container_id: str, grace_s: float) -> None:
        """The engine sends the stop signal (SIGTERM), then SIGKILL after grace_s; gone is fine."""
        self.request("POST", f"/containers/{urllib.parse.quote(container_id)}/stop", {"t": str(int(grace_s))},
                     ok=(204, 304, 404), timeout=grace_s + self.timeout_s + 15)


def _read_exact(resp: http.client.HTTPResponse, size: int) -> bytes:
    """``size`` bytes, or fewer at the end of the stream."""
    parts = []
    while size > 0:
        chunk = resp.read(size)
        if not chunk:
            break
        parts.append(chunk)
        size -= len(chunk)
    return b"".join(parts)


def _looks_multiplexed(head: bytes) -> bool:
    # a frame header: stream 0-2, three zero bytes. A raw (TTY) stream with timestamps starts
    # with a digit instead.
    return len(head) == 8 and head[0] in (0, 1, 2) and head[1:4] == b"\0\0\0"
