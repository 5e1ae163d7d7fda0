"""A job as the registry records it (gpujob.records): its spec read back as a validated JobSpec, from rows
this version wrote and rows the previous version wrote (plain JSON, no version mark), and rows it cannot
read, which are listed and shown without a traceback."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.records import read_spec
from gpujob.registry import Registry
from gpujob.spec import load_spec

ROOT = Path(__file__).resolve().parents[1]


def _old_row(home: Path, job_id: str, *, backend: str, status: str, spec_json: str, handle_json: str) -> None:
    """A row as the previous version's Registry.create and update wrote it: the spec's plain dump and the
    backend's handle dict, straight into the jobs table."""
    Registry().close()  # the registry file, with its tables
    now = time.time()
    with sqlite3.connect(home / "registry.db") as conn:
        conn.execute(
            "INSERT INTO jobs (id, name, kind, backend, status, spec_path, spec_json, output_dir, handle_json,"
            " created_at, started_at, updated_at) VALUES (?, 'old', 'command', ?, ?, 'jobs/hello.yaml', ?, '/tmp/o', ?,"
            " ?, ?, ?)", (job_id, backend, status, spec_json, handle_json, now - 60, now - 50, now))
        conn.execute("INSERT INTO transitions (job_id, status, at) VALUES (?, ?, ?)", (job_id, status, now))


def test_a_row_written_by_the_previous_version_reads_back_typed(gpujob_home):
    loaded = load_spec(ROOT / "jobs" / "hello.yaml", overrides=["limits.max_runtime=90m", "limits.max_cost=2"])
    old_handle = {"host": "unix:///var/run/docker.sock", "container": "gpujob-hello-abc123",
                  "container_id": "f00d", "image": "gpujob:cpu", "remote": False, "out_in_container": "/tmp/o"}
    _old_row(gpujob_home, "abc123", backend="docker", status="succeeded", spec_json=json.dumps(loaded.data),
             handle_json=json.dumps(old_handle))
    job = Registry().get("abc123")
    assert job.spec == loaded.spec and job.spec_problem is None and job.damage is None
    assert job.max_runtime_s == 5400 and job.max_cost == 2.0
    from gpujob.backends.docker.handle import DockerHandle

    handle = DockerHandle.of(job)
    assert (handle.container_id, handle.container, handle.remote, handle.unreadable) == ("f00d", old_handle["container"],
                                                                                        False, ())
    assert handle.dump() == old_handle  # written back as it was: nothing lost, nothing added


def test_a_row_this_version_cannot_read_is_listed_and_shown_without_a_traceback(gpujob_home):
    loaded = load_spec(ROOT / "jobs" / "hello.yaml")
    newer = {**loaded.data, "limits": {**loaded.data["limits"], "max_gpu_hours": 3, "max_runtime": "1h"}}
    # an active local job whose supervisor fields are of another shape: read as unknown, so it never started
    _old_row(gpujob_home, "abc123", backend="local", status="running", spec_json=json.dumps(newer),
             handle_json=json.dumps({"supervisor_pid": "not a pid", "supervisor_start": [1], "pgid": {"x": 1}}))
    _old_row(gpujob_home, "def456", backend="docker", status="running", spec_json='{"kind": "command"}',
             handle_json='{"container_id": ["not", "an", "id"]}')
    job = Registry().get("abc123")
    assert job.max_runtime_s == 3600  # the key it does not know is read as its default; the rest as recorded
    assert "limits.max_gpu_hours" in job.spec_problem
    assert Registry().get("def456").spec is None
    runner = CliRunner()
    for args in (["list"], ["status", "abc123"], ["status", "def456"], ["status", "def456", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Traceback" not in result.output, (args, result.output)
    listed = runner.invoke(app, ["list"]).output
    assert "abc123" in listed and "def456" in listed
    assert Registry().get("abc123").status == "failed"  # its supervisor pid was unreadable: it never started
    assert Registry().get("def456").status == "running"  # no container id to ask about: left as recorded


SECTION = st.dictionaries(st.sampled_from(["max_runtime", "max_cost", "gpus", "backend", "image", "dir", "x", "on"]),
                          st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5),
                                    st.lists(st.text(max_size=3), max_size=2)), max_size=4)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(["apiVersion", "kind", "limits", "resources", "runtime", "output", "notify",
                                        "command", "name", "zzz"]),
                       st.one_of(SECTION, st.text(max_size=8), st.integers(), st.none()), max_size=6))
def test_reading_any_stored_spec_never_raises_and_a_valid_one_is_kept_whole(data):
    spec, problem = read_spec(data)
    assert spec is None or problem is None or "could not be read" in problem
    base = {"apiVersion": "gpujob/v1", "kind": "command", "command": ["true"]}
    whole, _ = read_spec(base)
    assert read_spec(whole.model_dump(mode="json", by_alias=True)) == (whole, None)
