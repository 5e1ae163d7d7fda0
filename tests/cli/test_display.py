"""What `gpujob status` shows of a job that depends on where it ran (cli/gpujob/cli/display.py): asked of the
backend's capabilities, never of its name, so each backend, and a record whose backend this version does not
know, gets what its capabilities say."""

from __future__ import annotations

import time

import pytest

from gpujob.backends import NAMES
from gpujob.cli.display import job_details
from gpujob.records import Job


def job(**changes) -> Job:
    now = time.time()
    fields = dict(id="abc123", name="t", kind="command", backend="local", status="succeeded", reason=None, exit_code=0,
                  spec_path=None, spec_data={}, output_dir="/data/out/t", handle={}, progress={}, metrics={}, cost_usd=0.0,
                  created_at=now - 100, started_at=now - 60, finished_at=now, updated_at=now)
    fields.update(changes)
    return Job(**fields)


def row(text: str, key: str) -> str:
    (line,) = [ln for ln in text.splitlines() if ln.split(" ", 1)[0] == key]
    return line[len(key):].strip()


@pytest.mark.parametrize("backend", [*NAMES, "unknown"])
def test_a_succeeded_job_suggests_listing_its_outputs_only_where_the_job_wrote_them_here(backend):
    shown = row(job_details(job(backend=backend)), "next")
    # the local backend's process writes output.dir here as it runs; elsewhere they are copied back or stay away
    assert shown == ("ls /data/out/t" if backend == "local" else "gpujob logs abc123")


@pytest.mark.parametrize("backend", [*NAMES, "unknown"])
def test_outputs_on_the_clusters_cache_volume_name_their_claim_and_namespace(backend):
    record = job(backend=backend, output_dir="/cache/outputs/t", spec_data={"apiVersion": "gpujob/v1", "kind": "command", "name": "t", "command": ["true"],
                            "runtime": {"backend": "kubernetes", "cache_pvc": "team-cache"}},
                 handle={"namespace": "speech"})
    shown = row(job_details(record), "outputs")
    if backend == "kubernetes":
        assert shown == "/cache/outputs/t  (on PersistentVolumeClaim team-cache, namespace speech)"
    else:
        assert shown == "/cache/outputs/t"
    # a relative output.dir elsewhere on the claim's default, and a path off the volume says nothing more
    default = row(job_details(job(backend="kubernetes", output_dir="/cache/o", handle={"namespace": "n"})), "outputs")
    assert default == "/cache/o  (on PersistentVolumeClaim gpujob-hf-cache, namespace n)"
    assert row(job_details(job(backend="kubernetes", output_dir="s3://b/o")), "outputs") == "s3://b/o"
