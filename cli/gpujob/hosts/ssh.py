"""SSH to a rented GPU host (paramiko): pinned host keys, commands, files, and a Docker tunnel.

Host keys are pinned by *alias* (the instance id), never by address: Lambda hands the same IP to
the next customer's machine. The pins live in one OpenSSH-format file (``<alias> <type> <base64>``),
so ``ssh -o HostKeyAlias=<alias> -o UserKnownHostsFile=<file>`` (see
:meth:`HostConnection.interactive_argv`) checks the same keys as this module. An unknown key is
recorded only when the caller says so (``pin_new_key=True``, right after gpujob launched the
instance); otherwise it is refused, and a known alias with a different key is refused always.

Commands (:meth:`HostConnection.run`) go to the remote sshd as they are: sshd runs them with the
login user's shell (``$SHELL -c COMMAND``), non-login, so no profile is read and PATH is sshd's
default. Write plain POSIX shell; wrap in ``bash -lc`` yourself if a login environment is needed.
Secrets never go on a command line (sshd, sudo and ps all show those): pass them with
:meth:`HostConnection.put_file`, which sends them over SFTP or stdin.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import posixpath
import secrets
import select
import shlex
import shutil
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

from gpujob.errors import GpujobError, UserError

log = logging.getLogger(__name__)
# paramiko logs a traceback at ERROR for every failed handshake; without a handler Python prints
# those on stderr (logging.lastResort). Ours are turned into HostUnreachable: keep them quiet.
logging.getLogger("paramiko").addHandler(logging.NullHandler())

KEY_COMMENT = "gpujob"
STDERR_TAIL_LINES = 15
RETRY_DELAY_S = 1.0            # between connection attempts to a host that is still booting
TCP_ATTEMPT_TIMEOUT_S = 10.0   # one TCP connect / SSH handshake
KEEPALIVE_S = 30               # notices a host that vanished mid-command

_RETRYABLE_ERRNOS = {errno.ECONNREFUSED, errno.EHOSTUNREACH, errno.ENETUNREACH, errno.ECONNRESET,
                     errno.ECONNABORTED, errno.ETIMEDOUT, errno.EPIPE}


# ----------------------------------------------------------------------------------------- errors


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


# ------------------------------------------------------------------------------------ the key pair


def ensure_keypair(home: Path) -> tuple[Path, str]:
    """gpujob's own SSH key: ``<home>/ssh/id_ed25519`` (0600, folder 0700) and ``.pub``.

    ``home`` is $GPUJOB_HOME. Generated (Ed25519, OpenSSH format) when missing, never replaced.
    Returns the private key's path and the public key line (``ssh-ed25519 AAAA... gpujob``).
    """
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    folder = Path(home) / "ssh"
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o700)
    private, public = folder / "id_ed25519", folder / "id_ed25519.pub"
    if not private.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption())
        tmp = folder / f".id_ed25519.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(pem)
        try:
            os.link(tmp, private)       # never replaces a key another gpujob just made
        except FileExistsError:
            pass
        finally:
            tmp.unlink()
    os.chmod(private, 0o600)
    line = _public_line(private)
    if not public.exists() or public.read_text().split()[:2] != line.split()[:2]:
        public.write_text(line + "\n")
    return private, line


def _public_line(private: Path) -> str:
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_private_key(private.read_bytes(), password=None)
    blob = key.public_key().public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    return f"{blob.decode()} {KEY_COMMENT}"


def fingerprint(key) -> str:
    """OpenSSH's SHA256 fingerprint of a paramiko key: ``SHA256:...`` (no padding)."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


# ------------------------------------------------------------------------------ pinned host keys


def _pinned_keys(known_hosts: Path, alias: str) -> list:
    """The keys pinned for ``alias`` (paramiko keys), in file order."""
    import paramiko

    if not known_hosts.exists():
        return []
    keys = paramiko.HostKeys()
    keys.load(str(known_hosts))
    found = keys.lookup(alias)
    return list(found.values()) if found else []


def is_pinned(known_hosts: Path, alias: str) -> bool:
    """Whether a host key is pinned for ``alias``."""
    return bool(_pinned_keys(known_hosts, alias))


def _pin(known_hosts: Path, alias: str, key) -> None:
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        os.chmod(known_hosts, 0o600)
        if not any(k == key for k in _pinned_keys(known_hosts, alias)):
            f.write(f"{alias} {key.get_name()} {key.get_base64()}\n")


def forget_host_key(known_hosts: Path, alias: str) -> bool:
    """Remove every pin of ``alias`` (a deliberate re-pin, or a terminated instance). True if any."""
    if not known_hosts.exists():
        return False
    with open(known_hosts, "r+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        lines = f.readlines()
        kept = [ln for ln in lines if alias not in (ln.split() or [""])[0].split(",")]
        if len(kept) == len(lines):
            return False
        f.seek(0)
        f.truncate()
        f.writelines(kept)
    return True


class _PinPolicy:
    """paramiko's MissingHostKeyPolicy for every connection: no host keys are loaded into the
    SSHClient, so paramiko asks this policy each time, and it decides by alias."""

    def __init__(self, conn: HostConnection) -> None:
        self.conn = conn

    def missing_host_key(self, client, hostname, key) -> None:
        c = self.conn
        offered = f"{key.get_name()} {fingerprint(key)}"
        pinned = _pinned_keys(c.known_hosts, c.alias)
        if pinned:
            if not any(k == key for k in pinned):
                raise HostKeyMismatch(c.alias, c.target, c.known_hosts,
                                      [f"{k.get_name()} {fingerprint(k)}" for k in pinned], offered,
                                      hint=c.repin_hint)
        elif c.pin_new_key:
            _pin(c.known_hosts, c.alias, key)
            log.info("pinned the SSH host key of %s (%s): %s", c.alias, c.target, offered)
        else:
            raise HostKeyNotPinned(c.alias, c.target, c.known_hosts, offered)
        c._host_key = key


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
            client.set_missing_host_key_policy(_PinPolicy(self))
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
                if not _retryable(e):
                    raise HostUnreachable(f"SSH to {self.target} ({self.alias}) failed: {_describe(e)}") from None
                if time.monotonic() + RETRY_DELAY_S > deadline:
                    raise HostUnreachable(
                        f"cannot reach {self.target} ({self.alias}) over SSH: {_describe(e)} "
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
        for key in _pinned_keys(self.known_hosts, self.alias):
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
                                  f"{_describe(e)}") from None
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
            raise RemoteCommandFailed(f"writing {remote_path}", self.target, 1, _describe(e)) from None

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
            raise RemoteCommandFailed(f"reading {remote_path}", self.target, 1, _describe(e)) from None

    def _sftp_client(self):
        with self._sftp_lock:
            if self._sftp is None:
                t = self._transport()
                import paramiko

                try:
                    self._sftp = paramiko.SFTPClient.from_transport(t)
                except Exception as e:  # noqa: BLE001
                    raise HostUnreachable(f"SFTP to {self.target} ({self.alias}) failed: {_describe(e)}") from None
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

    @contextlib.contextmanager
    def docker_socket(self, remote_docker_host: str = "unix:///var/run/docker.sock") -> Iterator[str]:
        """A local unix socket that reaches the host's Docker engine: yields ``unix:///.../docker.sock``
        for ``docker.DockerClient(base_url=...)``.

        Each connection to it opens an SSH exec channel running ``docker -H <remote_docker_host>
        system dial-stdio`` on the host (as docker's own ssh:// transport does, but checked against
        our pinned host key), through ``sudo -n`` when the login user isn't root. The socket lives in
        a private 0700 folder, removed on exit.
        """
        command = self.privileged(f"docker -H {shlex.quote(remote_docker_host)} system dial-stdio")
        self._transport()
        folder = tempfile.mkdtemp(prefix="gpujob-docker-")
        if len(folder) > 80:  # AF_UNIX paths are limited to 107 bytes
            shutil.rmtree(folder)
            folder = tempfile.mkdtemp(prefix="gpujob-docker-", dir="/tmp")
        path = os.path.join(folder, "docker.sock")
        forwarder = _Forwarder(self, path, command)
        try:
            forwarder.start()
            yield f"unix://{path}"
        finally:
            forwarder.stop()
            shutil.rmtree(folder, ignore_errors=True)

    # -- for `gpujob host ssh`

    def interactive_argv(self, extra: Sequence[str] = ()) -> list[str]:
        """The OpenSSH client command for an interactive session, checking the same pinned key."""
        return ["ssh", "-i", str(self.key_path), "-p", str(self.port),
                "-o", f"UserKnownHostsFile={self.known_hosts}", "-o", "StrictHostKeyChecking=yes",
                "-o", f"HostKeyAlias={self.alias}", "-o", "IdentitiesOnly=yes",
                f"{self.user}@{self.address}", *extra]


# ------------------------------------------------------------------------------------- internals


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
            log.warning("docker tunnel to %s: cannot open a channel: %s", self.conn.target, _describe(e))
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


def _retryable(e: BaseException) -> bool:
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


def _describe(e: BaseException) -> str:
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
