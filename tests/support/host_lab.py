"""The rented-host lab the host backend's end-to-end tests share: the Lambda API emulator
(lambda_emulator.py), the stand-in host (Debian's sshd, ssh_server.py), a real Docker engine, and a
clock the emulator and the host's agent share, which the tests move on. ``lab`` is the fixture
(tests/backends/conftest.py makes it one)."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from gpujob_cli import GpujobCli

INTERVAL_S = 60


class Clock:
    """Real time plus an offset the test moves on: the emulator and the agent share it."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += seconds


class Lab(GpujobCli):
    def __init__(self, tmp: Path, home: Path, emu, ssh_host, engine, image: str, clock: Clock):
        env = {**os.environ, "GPUJOB_HOME": str(home), "LAMBDA_API_KEY": emu.api_key,
               "GPUJOB_LAMBDA_API_URL": emu.url, "GPUJOB_HOST_SSH_PORT": str(ssh_host.port),
               "GPUJOB_HOST_SSH_USER": "root", "GPUJOB_HOST_ROOT": str(ssh_host.root),
               "GPUJOB_HOST_DOCKER": engine.host, "DOCKER_HOST": engine.host, "GPUJOB_HOST_POLL_S": "0.2",
               "PYTHONUNBUFFERED": "1"}
        env.pop("HF_TOKEN", None)
        super().__init__(tmp, env)
        self.home, self.emu, self.host, self.engine, self.image, self.clock = home, emu, ssh_host, engine, image, clock

    def up(self, *extra: str, name: str = "box", ok: bool = True) -> subprocess.CompletedProcess:
        r = self.gpujob("host", "up", "--name", name, "--image", self.image, *extra, timeout=180)
        if ok:
            assert r.returncode == 0, r.stdout + r.stderr
        return r

    def hosts(self, *extra: str) -> list[dict]:
        r = self.gpujob("host", "list", "--json", *extra)
        assert r.returncode == 0, r.stdout + r.stderr
        return json.loads(r.stdout)

    def spec(self, name: str, command: list[str], **runtime) -> Path:
        spec = {"apiVersion": "gpujob/v1", "kind": "command", "name": name, "command": command,
                "resources": {"gpus": 0, "shm": "64Mi"},
                "runtime": {"backend": "host", "host": "box", "image": self.image, **runtime},
                "limits": {"max_runtime": "10m", "idle_minutes": 1}}
        path = self.tmp / f"{name}.yaml"
        path.write_text(json.dumps(spec))
        return path

    def agent(self, *, gpu_util: int = 0):
        """The host's agent as its systemd unit would start it, from the config provisioning wrote,
        with the test's clock, no interactive SSH sessions (an empty /proc), and nvidia-smi's readings
        set by the test."""
        from gpujob.hosts.agent import config as agent_config
        from gpujob.hosts.agent.main import build_agent
        from gpujob.hosts.agent.probes import HostProbes

        self.host.set_gpu_util(gpu_util)
        config = self.host.layout().config_path
        lay = agent_config.load_config(config).layout
        empty_proc = self.tmp / "proc"
        empty_proc.mkdir(exist_ok=True)
        probes = HostProbes(lay, proc_root=str(empty_proc), nvidia_smi=str(self.host.fakebin / "nvidia-smi"),
                            use_nvml=False)
        return build_agent(config, probes=probes, clock=self.clock, logs=False)

    @contextmanager
    def gpu_queue(self, agent, every_s: float = 0.2) -> Iterator[list[Exception]]:
        """The agent's GPU queue stepped in the background, as the service does between its checks;
        yields the list of the steps' failures."""
        stop, failures = threading.Event(), []

        def loop() -> None:
            while not stop.is_set():
                try:
                    agent.queue.step()
                except Exception as e:  # noqa: BLE001 (shown by the test)
                    failures.append(e)
                stop.wait(every_s)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        try:
            yield failures
        finally:
            stop.set()
            thread.join(timeout=30)

    def instance(self) -> str:
        [host] = [h for h in self.hosts("--all") if h["name"] == "box"]
        return host["instance_id"]


@contextmanager
def host_lab(tmp_path, gpujob_home, ssh_host, docker_engine, docker_demo_image, monkeypatch) -> Iterator[Lab]:
    from lambda_emulator import LambdaEmulator

    clock = Clock()
    monkeypatch.setenv("GPUJOB_AGENT_INTERVAL_S", str(INTERVAL_S))
    with LambdaEmulator(clock=clock, boot_s=0.5, terminate_s=1.0, launch_interval_s=0) as emu:
        work = tmp_path / "work"
        work.mkdir()
        yield Lab(work, gpujob_home, emu, ssh_host, docker_engine, docker_demo_image, clock)
        # live-restore keeps containers past the test: remove this test's (its hosts' names are its own)
        lab = Lab(work, gpujob_home, emu, ssh_host, docker_engine, docker_demo_image, clock)
        names = {"box"} | {h["name"] for h in lab.hosts("--all")}
        client = docker_engine.client()
        for name in names:
            for c in client.containers.list(all=True, filters={"label": f"gpujob.dev/host={name}"}):
                c.remove(force=True)


def demo(steps: int, step_time: float = 0.02) -> list[str]:
    return ["python", "-m", "gpujob.demo", "--steps", str(steps), "--step-time", str(step_time), "--eval-every", "10"]
