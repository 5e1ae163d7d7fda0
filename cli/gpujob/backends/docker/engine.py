"""The connection to one Docker engine, through the official SDK, with its errors in plain words.

Which engine: the ``DOCKER_HOST`` a job was submitted to (kept in its handle, so later commands
reach the same engine), else ``DOCKER_HOST`` now, else the local socket. ``ssh://user@host``
runs the system ``ssh`` client (your ~/.ssh/config and agent apply); TLS settings come from
``DOCKER_TLS_VERIFY``/``DOCKER_CERT_PATH`` as for the docker CLI.

An engine is *local* when it is reached through a unix socket: it sees this machine's files, so
the job's working directory and output directory are bind-mounted. Any other engine (ssh://,
tcp://) is *remote*: files travel through the API instead.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

from gpujob.errors import UserError

DEFAULT_SOCKET = "unix:///var/run/docker.sock"


def timeout_s() -> int:
    """Seconds an API call may take (``GPUJOB_DOCKER_TIMEOUT_S``; log streams are not limited)."""
    try:
        return max(1, int(float(os.environ.get("GPUJOB_DOCKER_TIMEOUT_S", "60"))))
    except ValueError:
        return 60


def current_host() -> str:
    return os.environ.get("DOCKER_HOST") or DEFAULT_SOCKET


def is_local(host: str) -> bool:
    return host.startswith(("unix://", "npipe://")) or host.startswith("/")


class Engine:
    """A DockerClient for one engine, created lazily; ``errors()`` turns SDK failures into words."""

    def __init__(self, host: str | None = None, *, local: bool | None = None, label: str | None = None) -> None:
        self.host = host or current_host()
        # A unix socket that is a tunnel to another machine (the host backend's SSH forward) is remote.
        self.local = is_local(self.host) if local is None else local
        self.label = label   # how messages name the engine, when its URL would mean nothing to the user
        self._client = None

    @property
    def where(self) -> str:
        return self.label or self.host

    @property
    def client(self):
        if self._client is None:
            try:
                import docker
                from docker.utils import kwargs_from_env
            except ImportError:
                raise UserError("the docker backend needs the Docker SDK for Python",
                                hint="pip install 'gpujob[docker]'") from None
            kwargs = kwargs_from_env()
            kwargs["base_url"] = self.host
            with self.errors("connecting"):
                self._client = docker.DockerClient(
                    **kwargs, timeout=timeout_s(), use_ssh_client=self.host.startswith("ssh://"))
        return self._client

    @contextmanager
    def errors(self, doing: str) -> Iterator[None]:
        """SDK and connection errors -> UserError naming the engine and what to do."""
        import requests

        try:
            import docker.errors as derr
        except ImportError:  # reported by .client
            yield
            return
        try:
            yield
        except derr.NotFound:
            raise
        except derr.APIError as exc:
            raise UserError(f"the Docker engine at {self.where} refused {doing}: {exc.explanation or exc}",
                            hint=_hint_for(str(exc.explanation or exc))) from None
        except (derr.DockerException, requests.exceptions.RequestException, OSError) as exc:
            raise self.unreachable(exc) from None

    def unreachable(self, exc: BaseException) -> UserError:
        text = str(exc)
        if "Permission denied" in text or isinstance(exc, PermissionError):
            return UserError(f"not allowed to use the Docker engine at {self.where}",
                             hint="add yourself to the docker group (sudo usermod -aG docker $USER, then log in "
                                  "again), or use a rootless engine through DOCKER_HOST")
        if "timed out" in text.lower():
            return UserError(f"the Docker engine at {self.where} did not answer within {timeout_s()} s",
                             hint="it may be busy (a large image being copied); try again, or allow longer "
                                  "with GPUJOB_DOCKER_TIMEOUT_S")
        if self.label:
            return UserError(f"no Docker engine answers at {self.where}: {_short(text)}",
                             hint="check the host with `gpujob host list`; `gpujob host up --name NAME` "
                                  "finishes its set-up (Docker included)")
        where = self.host + ("" if os.environ.get("DOCKER_HOST") else " (DOCKER_HOST is not set)")
        return UserError(f"no Docker engine answers at {where}: {_short(text)}",
                         hint="start it (sudo systemctl start docker), or point DOCKER_HOST at one "
                              "(unix:///path/docker.sock, ssh://user@gpu-box)")

    def transient(self) -> tuple[type[BaseException], ...]:
        """Errors that mean "the engine went away for a moment" (a restart, a dropped ssh tunnel)."""
        import requests
        import urllib3
        from docker.errors import DockerException

        return (requests.exceptions.RequestException, urllib3.exceptions.HTTPError, OSError, DockerException)


def _hint_for(text: str) -> str | None:
    if "could not select device driver" in text and "gpu" in text:
        return ("the engine has no GPU support: install the NVIDIA Container Toolkit on that machine "
                "(nvidia-ctk runtime configure --runtime=docker), or set resources.gpus: 0")
    if "No such image" in text or "pull access denied" in text:
        return "build it with `gpujob image build`, or set runtime.image to one the engine has"
    return None


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= 200 else text[:197] + "..."
