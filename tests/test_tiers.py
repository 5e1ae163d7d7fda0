"""In pytest-xdist workers (`-n 2 --dist loadgroup`), every test that needs a daemon the tests start goes to
one of them, in order, so there is one dockerd, one image build and one sshd (`make test` itself runs
serially; `make test-fast` keeps the browser tests' groups the same way). Here a small suite in a temporary
folder gets the real marking hook of tests/conftest.py and stand-in daemon fixtures that record which worker
made them.

Two workers ran the whole suite in about 45 minutes against about 73 serially (AMD EPYC, 2 cores), and
their load showed three real faults and two flaky tests: progress events written to stderr while a tracker
logged (gpujob.progress), a first transfer line held back on a freshly booted machine (gpujob.fleet.transfer),
pytest 9.2 ignoring every xdist_group (pyproject.toml), a "free" port that another worker's server took
(tests/storage/test_storage_s3.py), and a hung-container check that found no container hung
(tests/hosts/test_host_agent.py, not yet understood)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")

TOY_CONFTEST = f'''
import importlib.util, os, time
import pytest

_spec = importlib.util.spec_from_file_location("gpujob_tests_conftest", {str(CONFTEST)!r})
_real = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_real)
pytest_collection_modifyitems = _real.pytest_collection_modifyitems  # the hook make test runs, marks and all


def record(what):
    with open(os.environ["TOY_LOG"], "a") as f:
        f.write(f"{{what}} {{os.environ['PYTEST_XDIST_WORKER']}}\\n")


@pytest.fixture(scope="session")
def docker_engine():
    record("engine")
    return object()


@pytest.fixture
def ssh_host(docker_engine):
    return object()
'''

TOY_TESTS = '''
import time
import pytest
from conftest import record


@pytest.mark.parametrize("i", range(16))
def test_plain(i):
    record("plain")
    time.sleep(0.1)


@pytest.mark.parametrize("i", range(3))
def test_uses_the_engine(i, docker_engine):
    record("daemon")
    time.sleep(0.2)


def test_uses_the_ssh_host(ssh_host):
    record("daemon")


@pytest.mark.parametrize("backend", [pytest.param("docker", marks=pytest.mark.daemon), "local"])
def test_a_scenario(backend):
    record("daemon" if backend == "docker" else "plain")
'''


def test_daemon_tests_all_run_on_one_worker_while_the_other_takes_the_rest(tmp_path):
    (tmp_path / "conftest.py").write_text(TOY_CONFTEST)
    (tmp_path / "test_toy.py").write_text(TOY_TESTS)
    (tmp_path / "pytest.ini").write_text("[pytest]\nmarkers =\n    daemon: x\n    model: x\n")
    log = tmp_path / "log"
    env = {**os.environ, "TOY_LOG": str(log)}
    env.pop("PYTEST_XDIST_WORKER", None)
    env.pop("PYTEST_ADDOPTS", None)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-n", "2", "--dist", "loadgroup",
                             "-p", "no:cacheprovider", "-p", "no:kmock", "-p", "no:randomly", str(tmp_path)],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    workers = defaultdict(set)
    for line in log.read_text().splitlines():
        what, worker = line.split()
        workers[what].add(worker)
    assert len(workers["daemon"]) == 1, f"daemon tests ran on {sorted(workers['daemon'])}"
    assert workers["engine"] == workers["daemon"], "the engine was started on another worker too"
    assert workers["plain"] - workers["daemon"], "no test ran beside the daemon tests: the run was not parallel"
