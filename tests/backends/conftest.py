"""The rented-host lab (tests/support/host_lab.py) as a fixture for the host backend's tests."""

from __future__ import annotations

import pytest


@pytest.fixture
def lab(tmp_path, gpujob_home, ssh_host, docker_engine, docker_demo_image, monkeypatch):
    pytest.importorskip("docker")
    pytest.importorskip("paramiko")
    from host_lab import host_lab

    with host_lab(tmp_path, gpujob_home, ssh_host, docker_engine, docker_demo_image, monkeypatch) as lab:
        yield lab
