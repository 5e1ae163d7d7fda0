"""The Kubernetes backend: specs become batch/v1 Jobs on a GPU cluster.

So far it renders (``gpujob render SPEC --backend kubernetes``); submitting, status, logs and
cancel through the official client come next (issue: Kubernetes backend).
"""

from __future__ import annotations

from gpujob.backends.base import JobRequest
from gpujob.backends.kubernetes import manifests


class KubernetesBackend:
    name = "kubernetes"

    def render(self, request: JobRequest) -> str:
        objects = manifests.render(request)
        problems = manifests.semantic_problems(objects)
        header = "# gpujob: what `gpujob submit --backend kubernetes` will create\n"
        if problems:
            header += "".join(f"# PROBLEM: {p}\n" for p in problems)
        return header + manifests.to_yaml(objects)
