"""A real Docker engine for the tests, and the local images they run.

No image registry is reachable here, so nothing is pulled: the base image is Debian bookworm
(minbase, with python3) made by debootstrap from Debian's package mirror and `docker import`ed.

The tests start a dockerd of their own (root needed), on its own socket and data root, with
``--live-restore`` so they can restart it under a running job; the data root lives in
``$GPUJOB_TEST_DOCKER_ROOT`` (default /var/tmp/gpujob-test-docker) and keeps its images between
runs. ``GPUJOB_TEST_DOCKER_HOST=unix:///...`` uses an engine that is already running instead (the
restart test is then skipped: the tests do not own that daemon).

GPUs: dockerd gives containers GPUs through its ``nvidia`` device driver, which it registers when
``nvidia-container-runtime-hook`` is on its PATH, and which sets NVIDIA_VISIBLE_DEVICES and runs that
hook before the container starts. The tests' dockerd finds a stand-in hook that does nothing, so
containers with a GPU device request start (and see no GPU); :func:`gpu_requests_work` says whether the
engine takes them (an engine given by GPUJOB_TEST_DOCKER_HOST may not).
"""

from __future__ import annotations

import io
import os
import shutil
import signal
import subprocess
import tarfile
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(os.environ.get("GPUJOB_TEST_DOCKER_ROOT", "/var/tmp/gpujob-test-docker"))
BASE_IMAGE = "gpujob-test/bookworm:base"   # debootstrap minbase + python3
DEMO_IMAGE = "gpujob-test/demo:latest"     # the base + gpujob's pure-Python modules (runs gpujob.demo)
MIRROR = os.environ.get("GPUJOB_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
REPO = Path(__file__).resolve().parents[2]
# The engine also listens on loopback TCP (a "remote" engine to gpujob); one port per data root.
TCP_PORT = int(os.environ.get("GPUJOB_TEST_DOCKER_TCP_PORT") or 23751 + zlib.crc32(str(ROOT).encode()) % 1000)
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _unavailable(why: str):
    """Skip locally; in CI a missing engine is a failure, not a silent skip."""
    if IN_CI:
        pytest.fail(f"Docker engine tests cannot run in CI: {why}")
    pytest.skip(why)


@dataclass
class Engine:
    host: str                      # DOCKER_HOST for this engine
    owned: bool                    # started by the tests (so they may restart it)
    args: list[str] | None = None
    proc: subprocess.Popen | None = None
    tcp_host: str | None = None    # the same engine over TCP on loopback: a "remote" engine to gpujob

    def client(self, timeout: int = 60):
        import docker

        return docker.DockerClient(base_url=self.host, timeout=timeout)

    def ping(self) -> bool:
        try:
            return bool(self.client(timeout=2).ping())
        except Exception:
            return False

    def start(self) -> None:
        assert self.args is not None
        log = open(ROOT / "dockerd.log", "ab")
        env = {**os.environ, "PATH": f"{_fake_nvidia_hook()}:{os.environ.get('PATH', '/usr/sbin:/usr/bin')}"}
        self.proc = subprocess.Popen(self.args, stdout=log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while not self.ping():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                tail = (ROOT / "dockerd.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"dockerd did not start:\n{tail}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self) -> None:
        """Stop dockerd and start it again (live-restore keeps the containers running)."""
        if not self.owned:
            pytest.skip("the engine was not started by the tests (GPUJOB_TEST_DOCKER_HOST); cannot restart it")
        self.stop()
        self.start()


def _fake_nvidia_hook() -> Path:
    """A folder with a stand-in ``nvidia-container-runtime-hook`` (reads the container's state, does nothing)."""
    folder = ROOT / "fakebin"
    folder.mkdir(parents=True, exist_ok=True)
    hook = folder / "nvidia-container-runtime-hook"
    if not hook.exists():
        tmp = folder / ".hook.tmp"
        tmp.write_text("#!/bin/sh\ncat >/dev/null\nexit 0\n")
        tmp.chmod(0o755)
        tmp.replace(hook)
    return folder


def gpu_requests_work(engine: Engine) -> bool:
    """Whether the engine registered a GPU device driver (the stand-in hook above, or a real one)."""
    return engine.owned or "nvidia" in (engine.client().info().get("Runtimes") or {})


def start_engine() -> Engine:
    given = os.environ.get("GPUJOB_TEST_DOCKER_HOST")
    if given:
        engine = Engine(host=given, owned=False)
        if not engine.ping():
            _unavailable(f"no Docker engine answers at GPUJOB_TEST_DOCKER_HOST={given}")
        return engine
    try:
        import docker  # noqa: F401
    except ImportError:
        _unavailable("the docker SDK is not installed (pip install 'gpujob[docker]')")
    if shutil.which("dockerd") is None:
        _unavailable("dockerd is not installed (apt-get install docker.io)")
    if os.geteuid() != 0:
        _unavailable("starting a dockerd for the tests needs root")
    run = ROOT / "run"
    run.mkdir(parents=True, exist_ok=True)
    sock = run / "docker.sock"
    args = ["dockerd", "--storage-driver=vfs", "--iptables=false", "--ip-masq=false", "--bridge=none",
            "--live-restore", f"--data-root={ROOT / 'data'}", f"--exec-root={run / 'exec'}",
            f"--pidfile={run / 'dockerd.pid'}", f"--host=unix://{sock}", f"--host=tcp://127.0.0.1:{TCP_PORT}"]
    engine = Engine(host=f"unix://{sock}", owned=True, args=args, tcp_host=f"tcp://127.0.0.1:{TCP_PORT}")
    if engine.ping():  # left running by an interrupted run: take it over
        _stop_stale(run / "dockerd.pid")
    engine.start()
    return engine


def _stop_stale(pidfile: Path) -> None:
    try:
        pid = int(pidfile.read_text().strip())
        os.kill(pid, signal.SIGTERM)
    except (OSError, ValueError):
        return
    for _ in range(300):
        try:
            os.kill(pid, 0)
        except OSError:
            return
        time.sleep(0.1)


def ensure_base_image(engine: Engine) -> str:
    client = engine.client()
    try:
        client.images.get(BASE_IMAGE)
        return BASE_IMAGE
    except Exception:
        pass
    rootfs = ROOT / "rootfs"
    if not (rootfs / "usr/bin/python3").exists():
        if shutil.which("debootstrap") is None:
            _unavailable("debootstrap is not installed (apt-get install debootstrap)")
        shutil.rmtree(rootfs, ignore_errors=True)
        subprocess.run(["debootstrap", "--variant=minbase", "--include=python3,ca-certificates",
                        "bookworm", str(rootfs), MIRROR],
                       check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    tar = subprocess.Popen(["tar", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE)
    client.api.import_image_from_stream(tar.stdout, repository=BASE_IMAGE.split(":")[0],
                                        tag=BASE_IMAGE.split(":")[1])
    tar.wait()
    client.images.get(BASE_IMAGE)
    return BASE_IMAGE


def ensure_demo_image(engine: Engine) -> str:
    """The base image with gpujob's modules on PYTHONPATH and `python` on PATH: runs gpujob.demo
    (the progress-protocol example job, stdlib only). Rebuilt when the sources change."""
    import hashlib

    digest = hashlib.sha256()
    files = sorted(p for p in (REPO / "cli/gpujob").rglob("*.py"))
    for path in files:
        digest.update(str(path.relative_to(REPO)).encode() + path.read_bytes())
    tag = f"gpujob-test/demo:{digest.hexdigest()[:12]}"
    client = engine.client()
    try:
        client.images.get(tag)
        return tag
    except Exception:
        pass
    dockerfile = (f"FROM {BASE_IMAGE}\n"
                  "RUN ln -sf /usr/bin/python3 /usr/local/bin/python\n"
                  "COPY cli /opt/gpujob/cli\n"
                  "ENV PYTHONPATH=/opt/gpujob/cli PYTHONDONTWRITEBYTECODE=1\n"
                  "USER 1000:1000\n")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = dockerfile.encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
        for path in files:
            tar.add(path, arcname=str(path.relative_to(REPO)))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag=tag, rm=True, forcerm=True)
    client.images.get(tag).tag(DEMO_IMAGE)
    return tag
