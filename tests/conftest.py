"""Every test gets its own $GPUJOB_HOME, so nothing touches ~/.gpujob."""

from __future__ import annotations

import os
import sys

import pytest

# tests/support/browser.py: the `browser` fixture (one headless chromium per session, whichever modules use it)
pytest_plugins = ["browser"]

# Tiers (issue 16): `make test` runs everything (CI); `make test-fast` leaves out what needs a daemon the
# tests start, a real Whisper model or synthesized speech, and what is marked slow. The marks follow
# from the fixtures a test uses, so a new test lands in the right tier without anyone marking it.
DAEMON_FIXTURES = {"docker_engine", "ssh_host"}
# tests/dev/test_convert_ct2.py's `converted` builds the real whisper-base (its hf_model, ct2_model and
# processor hang off it): the closure of a test's fixtures is what counts, so those are covered too.
MODEL_FIXTURES = {"base_model", "tiny_model", "small_greek", "converted"}


# Run in pytest-xdist workers (`-n 2 --dist loadgroup`), every daemon test goes to one of them, in order (one
# dockerd, one image build, one sshd), while the others take the rest. `make test` stays serial: two workers
# cut a full run from ~73 to ~45 minutes, but each run under that load showed new faults and flaky tests
# (tests/test_tiers.py lists them). tryfirst: xdist reads the group from the marks in its own hook.
DAEMON_GROUP = "daemons"


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & DAEMON_FIXTURES:
            item.add_marker(pytest.mark.daemon)
        if used & MODEL_FIXTURES:
            item.add_marker(pytest.mark.model)
        if item.get_closest_marker("daemon"):
            item.add_marker(pytest.mark.xdist_group(DAEMON_GROUP))


@pytest.fixture(autouse=True)
def gpujob_home(tmp_path, monkeypatch):
    home = tmp_path / "gpujob-home"
    monkeypatch.setenv("GPUJOB_HOME", str(home))
    return home


def pytest_configure(config):
    """The same for module- and session-scoped fixtures, which run before the autouse fixture below."""
    os.environ["GPUJOB_CPU_PRECISION"] = "fp32"


@pytest.fixture(autouse=True)
def cpu_precision(monkeypatch):
    """`training.precision: auto` on a CPU is fp32 here, not measured (gpujob.runner.cpu_probe): a test's numbers
    must not depend on how loaded the machine was when its job started. tests/runner/test_cpu_probe.py unsets it."""
    monkeypatch.setenv("GPUJOB_CPU_PRECISION", "fp32")


@pytest.fixture(autouse=True)
def whisper_window():
    """Each test starts with Whisper's 30 s window (``model.window_seconds`` sets a shorter one per process)."""
    yield
    data = sys.modules.get("gpujob.runner.data")
    if data is not None:
        data.set_window_seconds(data.MAX_SECONDS)


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the Hugging Face Hub (there is no network); say so to the libraries."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")


# ----------------------------------------------------------------------------- Whisper models for the runner
# (real Whisper base converted from the packaged CTranslate2 model; a tiny random Whisper with its tokenizer)


@pytest.fixture(scope="session")
def base_model(tmp_path_factory):
    from gpujob_dev.convert_ct2 import ensure_whisper_base

    return ensure_whisper_base(tmp_path_factory.mktemp("models") / "whisper-base")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory, base_model):
    from gpujob_dev.tiny_whisper import tiny_whisper

    return tiny_whisper(tmp_path_factory.mktemp("models") / "tiny", base_dir=base_model)


@pytest.fixture(scope="session")
def small_greek(tmp_path_factory):
    """An audio folder of synthesized Greek speech: 40 training clips, 3 held out (an odd number, for
    uneven shares across processes)."""
    from gpujob_dev.greek_speech import build

    return build(tmp_path_factory.mktemp("greek") / "speech", train=40, heldout=3).out_dir


# ----------------------------------------------------------------------------- a real Docker engine
# (tests/support/docker_engine.py: a dockerd the tests start, and images built from a local Debian base)


@pytest.fixture(scope="session")
def docker_engine():
    from docker_engine import start_engine

    engine = start_engine()
    if engine.owned:  # a killed test session's containers, brought back by live-restore: gone first
        _remove_job_containers(engine)
    yield engine
    if engine.owned:  # live-restore would keep the tests' containers running past the daemon
        _remove_job_containers(engine)
        engine.stop()


def _remove_job_containers(engine) -> None:
    """Every gpujob container on the tests' own engine. A host agent under test counts any running
    gpujob container as work on its host, so one left by an earlier session keeps it from going idle."""
    try:
        client = engine.client()
        for container in client.containers.list(all=True, filters={"label": "gpujob.dev/id"}):
            container.remove(force=True)
    except Exception:
        pass


@pytest.fixture(scope="session")
def docker_base_image(docker_engine):
    from docker_engine import ensure_base_image

    return ensure_base_image(docker_engine)


@pytest.fixture(scope="session")
def docker_demo_image(docker_engine, docker_base_image):
    from docker_engine import ensure_demo_image

    return ensure_demo_image(docker_engine)


# ----------------------------------------------------------------------------- a real SSH server
# (tests/support/ssh_server.py: Debian's sshd on loopback standing in for a rented GPU host, with fakes for
# what only a GPU host has: nvidia-smi, systemctl, apt-get, nvidia-ctk, mountpoint)


@pytest.fixture
def ssh_host(tmp_path, gpujob_home):
    """A fresh stand-in GPU host for each test (sshd starts in well under a second): nvidia-smi
    works; Docker and the NVIDIA toolkit are not installed yet (``ssh_host.preinstall(...)``);
    gpujob's key pair is in $GPUJOB_HOME/ssh and known_hosts is $GPUJOB_HOME/known_hosts (empty)."""
    import os

    from ssh_server import SshHost, sshd_unavailable, start_sshd

    why = sshd_unavailable()
    if why:
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(f"SSH server tests cannot run in CI: {why}")
        pytest.skip(why)
    from gpujob.hosts.ssh_keys import ensure_keypair

    key_path, public_key = ensure_keypair(gpujob_home)
    server = start_sshd(tmp_path / "sshd", public_key)
    try:
        yield SshHost(server, key_path, public_key, gpujob_home / "known_hosts")
    finally:
        server.stop()


# ----------------------------------------------------------------------------- a real S3 API
# (tests/support/s3_server.py: moto's server mode on 127.0.0.1, reached through AWS_ENDPOINT_URL)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    from s3_server import start_s3

    server = start_s3(tmp_path_factory.mktemp("moto"))
    yield server
    server.stop()


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The session's S3 server with its keys and endpoint in this process's environment."""
    for name, value in s3_server.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("GPUJOB_STORAGE_ATTEMPTS", "2")  # a failure is told in a second, not after 4 backoffs
    return s3_server
