"""SSH to a rented GPU host (paramiko): the connection, its commands and files.

Host keys are checked against the pins of :mod:`gpujob.hosts.ssh_keys` (by alias, the instance id);
the errors are in :mod:`gpujob.hosts.ssh_errors`; :meth:`HostConnection.docker_socket` opens the
Docker tunnel of :mod:`gpujob.hosts.ssh_tunnel`.

Commands (:meth:`HostConnection.run`) go to the remote sshd as they are: sshd runs them with the
login user's shell (``$SHELL -c COMMAND``), non-login, so no profile is read and PATH is sshd's
default. Write plain POSIX shell; wrap in ``bash -lc`` yourself if a login environment is needed.
Secrets never go on a command line (sshd, sudo and ps all show those): pass them with
:meth:`HostConnection.put_file`, which sends them over SFTP or stdin.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import posixpath
import secrets
import select
import shlex
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

from gpujob.errors import UserError
from gpujob.hosts.ssh_errors import (
    HostKeyMismatch,
    HostKeyNotPinned,
    HostUnreachable,
    RemoteCommandFailed,
    describe,
    retryable,
)
from gpujob.hosts.ssh_keys import pin_key, fingerprint, pinned_keys
from gpujob.hosts.ssh_tunnel import TCP_ATTEMPT_TIMEOUT_S, docker_socket

# paramiko logs a traceback at ERROR for every failed handshake; without a handler Python prints
# those on stderr (logging.lastResort). Ours are turned into HostUnreachable: keep them quiet.
logging.getLogger("paramiko").addHandler(logging.NullHandler())
log = logging.getLogger(__name__)

STDERR_TAIL_LINES = 15
RETRY_DELAY_S = 1.0            # between connection attempts to a host that is still booting
KEEPALIVE_S = 30               # notices a host that vanished mid-command


# -------------------------------------------------------------------------------- the connection


@dataclass(frozen=True)
class RunResult:
    exit_code: int     # -1: the command was killed by a signal (sshd sends no exit status then)
    stdout: str
    stderr: str


class HostConnection:
    """One SSH connection to a host, as a context manager::

        with HostConnection(ip, key_path=key, known_hosts=kh, alias=instance_id) as conn:
            conn.run("nvidia-smi -L")

    ``connect()`` retries refused connections and timeouts for up to ``connect_timeout_s`` (a host
    that is still booting); authentication and host-key failures are not retried.
    Thread-safe for concurrent :meth:`run` calls (one SSH channel each).
    """

    def __init__(self, address: str, *, port: int = 22, user: str = "ubuntu", key_path: Path,
                 known_hosts: Path, alias: str, pin_new_key: bool = False, connect_timeout_s: float = 15,
                 repin_hint: str | None = None) -> None:
        self.address, self.port, self.user = address, int(port), user
        self.key_path, self.known_hosts = Path(key_path), Path(known_hosts)
        self.alias, self.pin_new_key = alias, pin_new_key
        self.connect_timeout_s = connect_timeout_s
        self.repin_hint = repin_hint       # the CLI's words for re-pinning (HostKeyMismatch.hint)
        self._client = None
        self._host_key = None
        self._sftp = None
        self._sftp_lock = threading.Lock()
        self._remote_uid: int | None = None

    @property
    def target(self) -> str:
        return f"{self.user}@{self.address}:{self.port}"

    # -- connecting

    def __enter__(self) -> HostConnection:
        self.connect()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def connect(self) -> None:
        import paramiko

        if self._client is not None:
            return
        pkey = self._load_key()
        deadline = time.monotonic() + self.connect_timeout_s
        while True:
            client = paramiko.SSHClient()
            client.set_missing_host_key_policy(PinPolicy(self))
            attempt_timeout = max(1.0, min(TCP_ATTEMPT_TIMEOUT_S, deadline - time.monotonic()))
            try:
                client.connect(self.address, port=self.port, username=self.user, pkey=pkey,
                               allow_agent=False, look_for_keys=False, timeout=attempt_timeout,
                               banner_timeout=attempt_timeout, auth_timeout=attempt_timeout,
                               transport_factory=self._transport_factory)
            except (HostKeyMismatch, HostKeyNotPinned):
                client.close()
                raise
            except paramiko.AuthenticationException:
                client.close()
                raise HostUnreachable(
                    f"SSH to {self.target} ({self.alias}): authentication failed: the host did not accept "
                    f"the key {self.key_path} ({pkey.get_name()} {fingerprint(pkey)})",
                    hint="the instance must have been launched with gpujob's public key "
                         f"({self.key_path}.pub) among its SSH keys") from None
            except Exception as e:  # noqa: BLE001 -- sorted below: retry what a booting host does
                client.close()
                if not retryable(e):
                    raise HostUnreachable(f"SSH to {self.target} ({self.alias}) failed: {describe(e)}") from None
                if time.monotonic() + RETRY_DELAY_S > deadline:
                    raise HostUnreachable(
                        f"cannot reach {self.target} ({self.alias}) over SSH: {describe(e)} "
                        f"(kept trying for {self.connect_timeout_s:g} s)",
                        hint="check that the instance is running (`gpujob host list`) and that port "
                             f"{self.port} is open to this machine") from None
                time.sleep(RETRY_DELAY_S)
                continue
            client.get_transport().set_keepalive(KEEPALIVE_S)
            self._client = client
            return

    def _load_key(self):
        import paramiko

        try:
            return paramiko.PKey.from_path(str(self.key_path))
        except FileNotFoundError:
            raise UserError(f"SSH key {self.key_path} does not exist") from None
        except (paramiko.SSHException, ValueError) as e:
            raise UserError(f"cannot read the SSH key {self.key_path}: {e}") from None

    def _transport_factory(self, sock, **kwargs):
        """A Transport that asks first for the host key type(s) pinned for the alias, so a host
        that also has other key types is not reported as a mismatch."""
        import paramiko

        t = paramiko.Transport(sock, **kwargs)
        wanted: list[str] = []
        for key in pinned_keys(self.known_hosts, self.alias):
            name = key.get_name()
            wanted += ["rsa-sha2-512", "rsa-sha2-256"] if name == "ssh-rsa" else [name]
        opts = t.get_security_options()
        available = list(opts.key_types)
        first = [k for k in wanted if k in available]
        if first:
            opts.key_types = first + [k for k in available if k not in first]
        return t

    def close(self) -> None:
        with self._sftp_lock:
            if self._sftp is not None:
                with contextlib.suppress(Exception):
                    self._sftp.close()
                self._sftp = None
        if self._client is not None:
            self._client.close()
            self._client = None

    def _transport(self):
        """The live transport; a connection that dropped (a network blip, sshd restarted) is made
        again once, with the same pinned key, so a long `logs -f` rides it out."""
        if self._client is None:
            self.connect()
        t = self._client.get_transport()
        if t is None or not t.is_active():
            self.close()
            self.connect()
            t = self._client.get_transport() if self._client is not None else None
        if t is None or not t.is_active():
            raise HostUnreachable(f"the SSH connection to {self.target} ({self.alias}) was lost",
                                  hint="run the command again; gpujob reconnects")
        return t

    def is_alive(self) -> bool:
        t = self._client.get_transport() if self._client is not None else None
        return t is not None and t.is_active()

    @property
    def host_key_fingerprint(self) -> str:
        if self._host_key is None:
            self.connect()
        return fingerprint(self._host_key)

    # -- commands

    def run(self, command: str, *, timeout_s: float | None = 600, check: bool = True,
            input: bytes | None = None, on_line: Callable[[str], None] | None = None,
            what: str | None = None) -> RunResult:
        """Run ``command`` (a shell command line, see the module docstring) and wait for it.

        ``input`` goes to its stdin (then EOF). ``on_line`` gets each line of stdout and stderr as
        it arrives (no newline). ``what`` names the step in error messages (default: the command).
        ``check``: a non-zero exit raises RemoteCommandFailed. A timeout always raises it (the
        channel is closed; the remote process may go on until it next writes). A dropped
        connection raises HostUnreachable.
        """
        label = what or f"`{_shorten(command)}`"
        try:
            chan = self._transport().open_session(timeout=TCP_ATTEMPT_TIMEOUT_S)
            chan.exec_command(command)
        except HostUnreachable:
            raise
        except Exception as e:  # noqa: BLE001 -- paramiko raises SSHException/EOFError/OSError here
            raise HostUnreachable(f"SSH to {self.target} ({self.alias}): could not start {label}: "
                                  f"{describe(e)}") from None
        writer = None
        if input is not None:
            writer = threading.Thread(target=_feed, args=(chan, input), daemon=True)
            writer.start()
        else:
            chan.shutdown_write()
        out, err = _Lines(on_line), _Lines(on_line)
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        try:
            while True:
                drained = False
                while chan.recv_ready():
                    out.feed(chan.recv(65536))
                    drained = True
                while chan.recv_stderr_ready():
                    err.feed(chan.recv_stderr(65536))
                    drained = True
                if chan.exit_status_ready() and (chan.eof_received or chan.closed) \
                        and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if chan.closed and not chan.recv_ready() and not chan.recv_stderr_ready():
                    break
                if deadline is not None and time.monotonic() > deadline:
                    raise RemoteCommandFailed(label, self.target, None, _tail(err.text() or out.text()),
                                              timeout_s=timeout_s)
                if not drained:
                    select.select([chan], [], [], 0.2)
        finally:
            chan.close()
            if writer is not None:
                writer.join(timeout=1)
        out.flush()
        err.flush()
        if chan.exit_status == -1 and self._lost():   # closed with no exit status: the connection went
            raise HostUnreachable(f"the SSH connection to {self.target} ({self.alias}) dropped while "
                                  f"running {label}",
                                  hint="run it again: gpujob's host steps are safe to repeat")
        result = RunResult(chan.recv_exit_status(), out.text(), err.text())
        if check and result.exit_code != 0:
            raise RemoteCommandFailed(label, self.target, result.exit_code,
                                      _tail(result.stderr if result.stderr.strip() else result.stdout))
        return result

    def _lost(self, wait_s: float = 1.0) -> bool:
        """Whether the connection is gone (paramiko closes a channel a moment before it marks its
        transport inactive, so give it that moment)."""
        t = self._client.get_transport() if self._client is not None else None
        deadline = time.monotonic() + wait_s
        while t is not None and t.is_active() and time.monotonic() < deadline:
            time.sleep(0.02)
        return t is None or not t.is_active()

    @property
    def is_root(self) -> bool:
        """Whether the login user is root on the host (asked once: ``id -u``)."""
        if self._remote_uid is None:
            self._remote_uid = int(self.run("id -u", timeout_s=30, what="`id -u`").stdout.strip())
        return self._remote_uid == 0

    def privileged(self, command: str) -> str:
        """``command`` as root: unchanged when logged in as root, else through ``sudo -n sh -c``
        (non-interactive: fails instead of prompting; Lambda's ubuntu user has passwordless sudo)."""
        return command if self.is_root else f"sudo -n sh -c {shlex.quote(command)}"

    # -- files

    def put_file(self, remote_path: str, data: bytes, *, mode: int = 0o644, as_root: bool = False) -> None:
        """Write ``data`` to ``remote_path`` atomically (readers see the old file or the new one),
        with ``mode``, creating missing parent folders (0755).

        Over SFTP, the file is written in a fresh 0700 folder next to the target, given its mode,
        then renamed into place: nobody else can read it at any point, whatever the umask.
        ``as_root`` when the login user isn't root: the bytes go through stdin to ``sudo -n``
        (``mktemp`` makes a 0600 file; chmod; ``mv``). Never on a command line.
        """
        if as_root and not self.is_root:
            self._put_file_sudo(remote_path, data, mode)
            return
        sftp = self._sftp_client()
        parent, name = posixpath.split(remote_path)
        try:
            self._makedirs(sftp, parent)
            staging = posixpath.join(parent, f".{name}.gpujob-{secrets.token_hex(4)}")
            sftp.mkdir(staging, 0o700)
            try:
                tmp = posixpath.join(staging, name)
                with sftp.open(tmp, "wx") as f:
                    f.chmod(mode)
                    f.set_pipelined(True)   # don't wait for each 32 KiB write's ack
                    f.write(data)
                sftp.posix_rename(tmp, remote_path)
            finally:
                with contextlib.suppress(OSError):
                    sftp.remove(posixpath.join(staging, name))
                with contextlib.suppress(OSError):
                    sftp.rmdir(staging)
        except OSError as e:
            raise RemoteCommandFailed(f"writing {remote_path}", self.target, 1, describe(e)) from None

    def _put_file_sudo(self, remote_path: str, data: bytes, mode: int) -> None:
        parent = posixpath.dirname(remote_path) or "/"
        q = shlex.quote
        script = (f"set -e; (umask 022; mkdir -p {q(parent)}); umask 077; "
                  f"t=$(mktemp {q(posixpath.join(parent, '.' + posixpath.basename(remote_path)))}.XXXXXX); "
                  f"trap 'rm -f \"$t\"' EXIT; cat > \"$t\"; chmod {mode:o} \"$t\"; mv -f \"$t\" {q(remote_path)}; "
                  "trap - EXIT")
        self.run(self.privileged(script), input=data, timeout_s=120, what=f"writing {remote_path}")

    def read_file(self, remote_path: str) -> bytes | None:
        """The file's bytes, or None if it does not exist (over SFTP, as the login user)."""
        sftp = self._sftp_client()
        try:
            with sftp.open(remote_path, "rb") as f:
                f.prefetch()
                return f.read()
        except FileNotFoundError:
            return None
        except OSError as e:
            if getattr(e, "errno", None) == errno.ENOENT:
                return None
            raise RemoteCommandFailed(f"reading {remote_path}", self.target, 1, describe(e)) from None

    def sftp(self):
        """The connection's SFTP client (paramiko's SFTPClient), opened on first use."""
        return self._sftp_client()

    def _sftp_client(self):
        with self._sftp_lock:
            if self._sftp is None:
                t = self._transport()
                import paramiko

                try:
                    self._sftp = paramiko.SFTPClient.from_transport(t)
                except Exception as e:  # noqa: BLE001
                    raise HostUnreachable(f"SFTP to {self.target} ({self.alias}) failed: {describe(e)}") from None
            return self._sftp

    @staticmethod
    def _makedirs(sftp, path: str) -> None:
        if path in ("", "/"):
            return
        try:
            sftp.stat(path)
            return
        except FileNotFoundError:
            pass
        HostConnection._makedirs(sftp, posixpath.dirname(path))
        with contextlib.suppress(OSError):   # made meanwhile by someone else: stat tells
            sftp.mkdir(path, 0o755)
        sftp.stat(path)

    # -- docker

    def docker_socket(self, remote_docker_host: str = "unix:///var/run/docker.sock"
                      ) -> contextlib.AbstractContextManager[str]:
        """A local unix socket that reaches the host's Docker engine: yields ``unix:///.../docker.sock``
        for ``docker.DockerClient(base_url=...)``.

        Each connection to it opens an SSH exec channel running ``docker -H <remote_docker_host>
        system dial-stdio`` on the host (as docker's own ssh:// transport does, but checked against
        our pinned host key), through ``sudo -n`` when the login user isn't root. The socket lives in
        a private 0700 folder, removed on exit.
        """
        return docker_socket(self, remote_docker_host)

    # -- for `gpujob host ssh`

    def interactive_argv(self, extra: Sequence[str] = ()) -> list[str]:
        """The OpenSSH client command for an interactive session, checking the same pinned key."""
        return ["ssh", "-i", str(self.key_path), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", f"HostKeyAlias={self.alias}", "-o", "IdentitiesOnly=yes",
                f"{self.user}@{self.address}", *extra]


# ------------------------------------------------------------------------------------- internals


def _feed(chan, data: bytes) -> None:
    try:
        chan.sendall(data)
    except OSError:
        pass
    finally:
        with contextlib.suppress(Exception):
            chan.shutdown_write()


class _Lines:
    """Collects one output stream and hands complete lines to ``on_line`` as they arrive."""

    def __init__(self, on_line: Callable[[str], None] | None) -> None:
        self.on_line = on_line
        self.chunks: list[bytes] = []
        self.partial = b""

    def feed(self, data: bytes) -> None:
        self.chunks.append(data)
        if self.on_line is None:
            return
        self.partial += data
        *lines, self.partial = self.partial.split(b"\n")
        for line in lines:
            self.on_line(line.rstrip(b"\r").decode(errors="replace"))

    def flush(self) -> None:
        if self.on_line is not None and self.partial:
            self.on_line(self.partial.rstrip(b"\r").decode(errors="replace"))
        self.partial = b""

    def text(self) -> str:
        return b"".join(self.chunks).decode(errors="replace")


def _tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _shorten(command: str, limit: int = 160) -> str:
    return command if len(command) <= limit else command[: limit - 1] + "…"


class PinPolicy:
    """paramiko's MissingHostKeyPolicy for every connection: no host keys are loaded into the
    SSHClient, so paramiko asks this policy each time, and it decides by alias."""

    def __init__(self, conn: HostConnection) -> None:
        self.conn = conn

    def missing_host_key(self, client, hostname, key) -> None:
        c = self.conn
        offered = f"{key.get_name()} {fingerprint(key)}"
        pinned = pinned_keys(c.known_hosts, c.alias)
        if pinned:
            if not any(k == key for k in pinned):
                raise HostKeyMismatch(c.alias, c.target, c.known_hosts,
                                      [f"{k.get_name()} {fingerprint(k)}" for k in pinned], offered,
                                      hint=c.repin_hint)
        elif c.pin_new_key:
            pin_key(c.known_hosts, c.alias, key)
            log.info("pinned the SSH host key of %s (%s): %s", c.alias, c.target, offered)
        else:
            raise HostKeyNotPinned(c.alias, c.target, c.known_hosts, offered)
        c._host_key = key
