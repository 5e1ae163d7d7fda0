"""The host backend's handle: the docker backend's (the job is a container on the rented host's engine),
with the host's name, its engine as seen from there, and its price when the job was submitted."""

from __future__ import annotations

from gpujob.backends.docker.handle import DockerHandle


class HostHandle(DockerHandle):
    engine: str | None = None  # the DOCKER_HOST the job was started on, through the host's tunnel
