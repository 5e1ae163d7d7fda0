"""Where gpujob keeps its files on a host. Shared by the provisioner (which writes them over SSH)
and the agent (which reads them there); stdlib only.

``root`` is "/" on a real host. The tests' SSH server stands in for a host on this machine, so
they provision under a folder instead of the real /etc and /opt.
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass

AGENT_UNIT = "gpujob-agent.service"


@dataclass(frozen=True)
class HostLayout:
    root: str = "/"
    docker_host: str = "unix:///var/run/docker.sock"   # the engine on the host, as the host sees it

    def _at(self, *parts: str) -> str:
        return posixpath.join(self.root, *parts)

    @property
    def opt_dir(self) -> str:          # agent.pyz, the idle agent (root-owned, 0755)
        return self._at("opt", "gpujob")

    @property
    def etc_dir(self) -> str:          # agent.json (0600), lambda-api-key (0600); dir 0700
        return self._at("etc", "gpujob")

    @property
    def config_path(self) -> str:
        return posixpath.join(self.etc_dir, "agent.json")

    @property
    def api_key_path(self) -> str:
        return posixpath.join(self.etc_dir, "lambda-api-key")

    @property
    def state_dir(self) -> str:        # heartbeat.json, agent.log, hung/<job>.json, uploads/<job>, data/<hash>, gpus/<job>
        return self._at("var", "lib", "gpujob")

    @property
    def heartbeat_path(self) -> str:
        return posixpath.join(self.state_dir, "heartbeat.json")

    @property
    def hung_dir(self) -> str:
        return posixpath.join(self.state_dir, "hung")

    @property
    def uploads_dir(self) -> str:      # one file per output upload in flight; the agent waits for them
        return posixpath.join(self.state_dir, "uploads")

    @property
    def data_dir(self) -> str:         # uploaded local data, by content hash, when there is no file system
        return posixpath.join(self.state_dir, "data")

    @property
    def gpu_grants_dir(self) -> str:   # <job id>/visible: the GPUs the agent's queue gave the job (mounted into it)
        return posixpath.join(self.state_dir, "gpus")

    def gpu_grant_dir(self, job_id: str) -> str:
        return posixpath.join(self.gpu_grants_dir, job_id)

    @property
    def gpu_queue_path(self) -> str:   # the agent's view of its GPU queue, for `gpujob status`
        return posixpath.join(self.state_dir, "gpu-queue.json")

    @property
    def unit_path(self) -> str:
        return self._at("etc", "systemd", "system", AGENT_UNIT)
