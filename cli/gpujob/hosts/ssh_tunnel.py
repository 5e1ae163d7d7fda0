"""The Docker tunnel: a local unix socket whose every connection reaches the host's Docker engine
through its own SSH exec channel (``docker system dial-stdio``), checked against the pinned key."""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import socket
import tempfile
import threading
from typing import Any, Callable, Iterator, Protocol

from gpujob.hosts.ssh_errors import describe

log = logging.getLogger(__name__)

TCP_ATTEMPT_TIMEOUT_S = 10.0   # one TCP connect / SSH handshake (also the connection's, gpujob.hosts.ssh)


class HostConnection(Protocol):
    """What the tunnel needs of :class:`gpujob.hosts.ssh.HostConnection` (which imports this module)."""

    target: str

    def privileged(self, command: str) -> str: ...

    def _transport(self) -> Any: ...


@contextlib.contextmanager
def docker_socket(conn: HostConnection, remote_docker_host: str) -> Iterator[str]:
    """A local unix socket that reaches the host's Docker engine: yields ``unix:///.../docker.sock``
    for ``docker.DockerClient(base_url=...)``.

    Each connection to it opens an SSH exec channel running ``docker -H <remote_docker_host>
    system dial-stdio`` on the host (as docker's own ssh:// transport does, but checked against
    our pinned host key), through ``sudo -n`` when the login user isn't root. The socket lives in
    a private 0700 folder, removed on exit.
    """
    command = conn.privileged(f"docker -H {shlex.quote(remote_docker_host)} system dial-stdio")
    conn._transport()
    folder = tempfile.mkdtemp(prefix="gpujob-docker-")
    if len(folder) > 80:  # AF_UNIX paths are limited to 107 bytes
        shutil.rmtree(folder)
        folder = tempfile.mkdtemp(prefix="gpujob-docker-", dir="/tmp")
    path = os.path.join(folder, "docker.sock")
    forwarder = _Forwarder(conn, path, command)
    try:
        forwarder.start()
        yield f"unix://{path}"
    finally:
        forwarder.stop()
        shutil.rmtree(folder, ignore_errors=True)


class _Forwarder:
    """Accepts local connections and pumps each through its own ``dial-stdio`` exec channel."""

    def __init__(self, conn: HostConnection, path: str, command: str) -> None:
        self.conn, self.path, self.command = conn, path, command
        self.stopping = threading.Event()
        self.server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.open: set = set()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._accept, name="gpujob-docker-forward", daemon=True)

    def start(self) -> None:
        self.server.bind(self.path)
        os.chmod(self.path, 0o600)
        self.server.listen(16)
        self.server.settimeout(0.25)
        self.thread.start()

    def stop(self) -> None:
        self.stopping.set()
        self.thread.join(timeout=2)
        self.server.close()
        with self.lock:
            for thing in list(self.open):
                with contextlib.suppress(Exception):
                    thing.close()
            self.open.clear()

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                local, _ = self.server.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            local.settimeout(None)
            threading.Thread(target=self._serve, args=(local,), daemon=True).start()

    def _serve(self, local: socket.socket) -> None:
        try:
            chan = self.conn._transport().open_session(timeout=TCP_ATTEMPT_TIMEOUT_S)
            chan.exec_command(self.command)
        except Exception as e:  # noqa: BLE001 -- the docker client sees the connection close
            log.warning("docker tunnel to %s: cannot open a channel: %s", self.conn.target, describe(e))
            local.close()
            return
        with self.lock:
            self.open.update((local, chan))
        up = threading.Thread(target=self._pump_up, args=(local, chan), daemon=True)
        up.start()
        try:
            _pump(chan.recv, local.sendall)
        finally:
            with contextlib.suppress(OSError):
                local.shutdown(socket.SHUT_WR)
        up.join(timeout=5 if not self.stopping.is_set() else 0.1)
        if chan.recv_stderr_ready():
            detail = chan.recv_stderr(4096).decode(errors="replace").strip()
            if detail:
                log.warning("docker tunnel to %s: %s", self.conn.target, detail)
        for thing in (chan, local):
            with contextlib.suppress(Exception):
                thing.close()
        with self.lock:
            self.open.difference_update((local, chan))

    @staticmethod
    def _pump_up(local: socket.socket, chan) -> None:
        try:
            _pump(local.recv, chan.sendall)
        finally:
            with contextlib.suppress(Exception):
                chan.shutdown_write()


def _pump(recv: Callable[[int], bytes], send: Callable[[bytes], None]) -> None:
    """Copy bytes from one end to the other until the first end closes (or either breaks)."""
    try:
        while data := recv(65536):
            send(data)
    except OSError:
        pass
