"""One harness per backend for the conformance suite: each gives the scenarios the `gpujob` command pointed
at that backend's engine, a way to write a command job's spec for it, a way to hand the job a secret, and
what the engine itself shows of a job (where a secret must not appear).

- local: real processes on this machine.
- docker: a real dockerd the tests start (tests/support/docker_engine.py), the demo image.
- kubernetes: the emulator (tests/support/k8s_emulator.py: kmock's API server, a Job controller and a
  kubelet that runs the container's command as a real process).
- host: the Lambda API emulator, a real sshd as the rented host, and a real dockerd reached through it
  (tests/support/host_lab.py); the host is brought up once per test with `gpujob host up`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from gpujob_cli import GpujobCli


class Harness(GpujobCli):
    """What every backend's harness gives the scenarios."""

    backend: str

    def __init__(self, tmp: Path, env: dict[str, str]):
        env = {**env, "PYTHONUNBUFFERED": "1"}
        env.pop("HF_TOKEN", None)
        super().__init__(tmp, env)

    @property
    def home(self) -> Path:
        return Path(self.env["GPUJOB_HOME"])

    def runtime(self) -> dict:
        return {"backend": self.backend}

    def spec(self, name: str, command: list[str], *, runtime: dict | None = None, limits: dict | None = None,
             output: dict | None = None) -> Path:
        spec = {"apiVersion": "gpujob/v1", "kind": "command", "name": name, "command": command,
                "resources": {"gpus": 0}, "runtime": {**self.runtime(), **(runtime or {})},
                "limits": {"max_runtime": "10m", **(limits or {})}}
        if output:
            spec["output"] = output
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(spec))  # JSON is YAML
        return path

    def give_secret(self, name: str, value: str) -> tuple[dict, dict]:
        """Make a secret available the way this backend takes it: (runtime keys for the spec, environment
        for submit). Backends that read secrets from the submitter's environment get it there."""
        return {"secrets": [name]}, {name: value}

    def engine_view(self, job_id: str) -> str:
        """Everything the engine holds about the job (container inspect, Kubernetes objects), as text."""
        return ""

    def leftovers(self, job_id: str) -> list[str]:
        """What of the job still runs or holds resources on the engine (processes, containers, pods)."""
        raise NotImplementedError


class Local(Harness):
    backend = "local"

    def __init__(self, tmp: Path):
        super().__init__(tmp, {**os.environ, "GPUJOB_HOME": str(tmp / "home")})

    def leftovers(self, job_id: str) -> list[str]:
        """Live processes that carry the job's id in their environment (as the job's own children do)."""
        needle, found = f"GPUJOB_JOB_ID={job_id}".encode(), []
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and needle in (proc / "environ").read_bytes().split(b"\0") \
                        and (proc / "stat").read_text().split(") ")[-1][0] != "Z":
                    found.append(f"pid {proc.name}")
            except OSError:
                pass
        return found


class Docker(Harness):
    backend = "docker"

    def __init__(self, tmp: Path, engine, image: str):
        super().__init__(tmp, {**os.environ, "DOCKER_HOST": engine.host, "GPUJOB_HOME": str(tmp / "home")})
        self.engine, self.image = engine, image

    def runtime(self) -> dict:
        return {"backend": "docker", "image": self.image}

    def spec(self, name, command, **kw):
        path = super().spec(name, command, **kw)
        spec = json.loads(path.read_text())
        spec["resources"]["shm"] = "64Mi"
        path.write_text(json.dumps(spec))
        return path

    def leftovers(self, job_id: str) -> list[str]:
        return [c.name for c in self.engine.client().containers.list(
            all=True, filters={"label": f"gpujob.dev/id={job_id}"})]

    def engine_view(self, job_id: str) -> str:
        client = self.engine.client()
        return json.dumps([client.api.inspect_container(c.id)
                           for c in client.containers.list(all=True, filters={"label": f"gpujob.dev/id={job_id}"})])


class Kubernetes(Harness):
    backend = "kubernetes"

    def __init__(self, tmp: Path, fake):
        from gpujob.backends.local_data import PODS_SEE_THIS_MACHINE

        super().__init__(tmp, {**os.environ, "KUBECONFIG": str(fake.kubeconfig), "GPUJOB_HOME": str(tmp / "home"),
                               PODS_SEE_THIS_MACHINE: "1"})
        self.fake, self.namespace = fake, fake.namespace
        from kubernetes import client, config

        api = config.new_client_from_config(config_file=str(fake.kubeconfig))
        self.core, self.batch = client.CoreV1Api(api), client.BatchV1Api(api)

    def runtime(self) -> dict:
        return {"backend": "kubernetes", "namespace": self.namespace, "image": "ghcr.io/gpujob/gpujob:test"}

    def give_secret(self, name: str, value: str) -> tuple[dict, dict]:
        """The cluster's own Secret, which the pod references (the backend never reads the value)."""
        store = f"conformance-{os.getpid()}"
        self.core.create_namespaced_secret(self.namespace, {"apiVersion": "v1", "kind": "Secret",
                                                            "metadata": {"name": store}, "stringData": {name: value}})
        return {"secrets": [name], "secret_store": store}, {}

    def leftovers(self, job_id: str) -> list[str]:
        """Pods of the job still running or waiting (ended pods hold no GPU)."""
        data = json.loads(self.core.list_namespaced_pod(self.namespace, label_selector=f"gpujob.dev/id={job_id}",
                                                        _preload_content=False).data)
        return [p["metadata"]["name"] for p in data["items"]
                if p["metadata"].get("labels", {}).get("gpujob.dev/id") == job_id
                and p["status"].get("phase") in ("Pending", "Running")]

    def engine_view(self, job_id: str) -> str:
        selector = f"gpujob.dev/id={job_id}"
        jobs = self.batch.list_namespaced_job(self.namespace, label_selector=selector, _preload_content=False).data
        pods = self.core.list_namespaced_pod(self.namespace, label_selector=selector, _preload_content=False).data
        maps = self.core.list_namespaced_config_map(self.namespace, _preload_content=False).data
        return "\n".join(b.decode() for b in (jobs, pods, maps))


class Host(Harness):
    backend = "host"

    def __init__(self, lab):
        super().__init__(lab.tmp, lab.env)
        self.lab = lab
        lab.up("--type", "gpu_1x_a10")

    def runtime(self) -> dict:
        return {"backend": "host", "host": "box", "image": self.lab.image}

    def spec(self, name, command, **kw):
        path = super().spec(name, command, **kw)
        spec = json.loads(path.read_text())
        spec["resources"]["shm"] = "64Mi"
        path.write_text(json.dumps(spec))
        return path

    def leftovers(self, job_id: str) -> list[str]:
        return [c.name for c in self.lab.engine.client().containers.list(
            all=True, filters={"label": f"gpujob.dev/id={job_id}"})]

    def engine_view(self, job_id: str) -> str:
        client = self.lab.engine.client()
        containers = client.containers.list(all=True, filters={"label": f"gpujob.dev/id={job_id}"})
        host_files = [p.read_bytes().decode("latin-1") for p in Path(self.lab.host.root).rglob("*") if p.is_file()]
        return json.dumps([client.api.inspect_container(c.id) for c in containers]) + "\n".join(host_files)
