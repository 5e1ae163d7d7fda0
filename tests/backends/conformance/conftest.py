"""The conformance suite's one fixture: ``backend``, a harness per backend (harnesses.py), so every scenario
in this folder runs on each. Docker and host need daemons the tests start (dockerd, sshd): marked ``daemon``,
and the emulated cluster's runs take 4-17 s each on 2 cores (marked ``slow``): so the fast tier
(`make test-fast`) runs the scenarios on local, and `make test` on all four."""

from __future__ import annotations

import pytest

BACKENDS = [
    pytest.param("local", id="local"),
    pytest.param("kubernetes", id="kubernetes", marks=pytest.mark.slow),  # 4-17 s each on 2 cores
    pytest.param("docker", id="docker", marks=pytest.mark.daemon),
    pytest.param("host", id="host", marks=pytest.mark.daemon),
]


@pytest.fixture(params=BACKENDS)
def backend(request, tmp_path):
    import harnesses

    name = request.param
    if name == "local":
        yield harnesses.Local(tmp_path)
    elif name == "kubernetes":
        pytest.importorskip("kubernetes")
        pytest.importorskip("kmock")
        from k8s_emulator import FakeCluster

        with FakeCluster(tmp_path) as fake:
            yield harnesses.Kubernetes(tmp_path, fake)
            assert fake.errors == [], f"the emulator's controllers failed: {fake.errors}"
    elif name == "docker":
        pytest.importorskip("docker")
        engine = request.getfixturevalue("docker_engine")
        yield harnesses.Docker(tmp_path, engine, request.getfixturevalue("docker_demo_image"))
    else:
        lab = request.getfixturevalue("lab")  # tests/backends/conftest.py: the rented-host lab
        yield harnesses.Host(lab)
