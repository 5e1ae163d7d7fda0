"""gpujob's SSH key pair, and the host keys pinned by alias.

Host keys are pinned by *alias* (the instance id), never by address: Lambda hands the same IP to
the next customer's machine. The pins live in one OpenSSH-format file (``<alias> <type> <base64>``),
so ``ssh -o HostKeyAlias=<alias> -o UserKnownHostsFile=<file>`` (see
:meth:`~gpujob.hosts.ssh.HostConnection.interactive_argv`) checks the same keys as
:class:`~gpujob.hosts.ssh.PinPolicy`. An unknown key is recorded only when the caller says so (``pin_new_key=True``,
right after gpujob launched the instance); otherwise it is refused, and a known alias with a
different key is refused always.
"""

from __future__ import annotations

import base64
import fcntl
import hashlib
import logging
import os
import secrets
from pathlib import Path

from gpujob.hosts.ssh_errors import HostKeyMismatch, HostKeyNotPinned

log = logging.getLogger(__name__)

KEY_COMMENT = "gpujob"


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


def pinned_keys(known_hosts: Path, alias: str) -> list:
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
    return bool(pinned_keys(known_hosts, alias))


def pin_key(known_hosts: Path, alias: str, key) -> None:
    known_hosts.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(known_hosts, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        os.chmod(known_hosts, 0o600)
        if not any(k == key for k in pinned_keys(known_hosts, alias)):
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
