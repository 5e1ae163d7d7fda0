"""The docker backend's handle: which engine and container run the job (also the part of a host job's
handle that the host's engine runs: :class:`~gpujob.backends.host_handle.HostHandle`)."""

from __future__ import annotations

from gpujob.backends.handle import Handle


class DockerHandle(Handle):
    host: str | None = None              # the engine's DOCKER_HOST (a host job: the rented host's name)
    container: str | None = None         # the container's name
    container_id: str | None = None
    image: str | None = None
    remote: bool = False                 # the engine is on another machine: outputs are copied back at the end
    out_in_container: str | None = None  # output.dir inside the container
    gpu_queue: bool | None = None        # True: started by the host agent's GPU queue, not at submit
    outputs_on_host: str | None = None   # the outputs' folder on the engine's machine (a bind mount there)
