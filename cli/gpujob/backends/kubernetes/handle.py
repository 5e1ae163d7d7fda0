"""The kubernetes backend's handle: which cluster, namespace and Job, and every object submit created."""

from __future__ import annotations

from gpujob.backends.handle import Handle


class KubernetesHandle(Handle):
    namespace: str | None = None
    job: str | None = None             # the Job's name
    uid: str | None = None
    context: str | None = None         # the kubeconfig context it went to
    server: str | None = None
    nodes: int = 1                     # resources.nodes: the Indexed Job's workers
    objects: list[tuple[str, str]] = []  # (kind, name) of what submit created, the Job last
