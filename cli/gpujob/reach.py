"""Is a server reachable from here, answered within seconds: DNS and a TCP connection, each bounded
(``socket.getaddrinfo`` has no timeout of its own, so it runs in a helper thread). Used before a
client library that would retry an unreachable server for most of a minute (the Hugging Face Hub's
client, the provider API), so an offline machine gets one clear line at once. Stdlib only."""

from __future__ import annotations

import os
import socket
import threading
from urllib.parse import urlsplit

PROBE_TIMEOUT_S = 3.0
_PROXY_VARS = ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")


def hub_endpoint() -> str:
    """The Hugging Face Hub's address, as huggingface_hub reads it."""
    return os.environ.get("HF_ENDPOINT") or "https://huggingface.co"


def hub_offline_set() -> bool:
    """HF_HUB_OFFLINE / HF_DATASETS_OFFLINE set: the Hub's client reads its cache alone."""
    return any(os.environ.get(v, "").strip().lower() in ("1", "true", "yes", "on")
               for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why ``url``'s server cannot be reached from here, in words; None when it answers a TCP
    connection (or when no probe applies: a proxy is set and cannot be told apart, an odd URL).
    With HTTPS_PROXY / ALL_PROXY set, the proxy is what must be reachable."""
    target = next((os.environ[v] for v in _PROXY_VARS if os.environ.get(v)), None) or url
    parts = urlsplit(target if "://" in target else f"http://{target}")
    host = parts.hostname
    if not host:
        return None
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return None
    where = f"{host}:{port}" + (" (the proxy)" if target is not url else "")
    found: list = []

    def resolve() -> None:
        try:
            found.append(socket.getaddrinfo(host, port, type=socket.SOCK_STREAM))
        except OSError as exc:
            found.append(exc)

    thread = threading.Thread(target=resolve, name="gpujob-dns", daemon=True)
    thread.start()
    thread.join(timeout)
    if not found:
        return f"{where}: the name did not resolve within {timeout:g} s (no DNS?)"
    if isinstance(found[0], OSError):
        return f"{where}: the name does not resolve ({found[0].strerror or found[0]}; offline, or no DNS?)"
    last: OSError | None = None
    for family, kind, proto, _, address in found[0][:3]:
        try:
            with socket.socket(family, kind, proto) as sock:
                sock.settimeout(timeout)
                sock.connect(address)
            return None
        except OSError as exc:
            last = exc
    why = "timed out" if isinstance(last, TimeoutError) else (getattr(last, "strerror", None) or str(last))
    return f"{where}: no connection ({why})"
