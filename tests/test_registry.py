"""The SQLite registry: lookups, transitions, concurrent writers, a writer killed mid-write."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpujob.errors import AmbiguousJob, JobNotFound
from gpujob.registry import Registry


def _new(reg: Registry, name: str = "hello"):
    return reg.create(name=name, kind="command", backend="local", spec={"kind": "command"},
                      spec_path="jobs/hello.yaml", output_dir="/tmp/out")


def test_create_and_get_round_trip(gpujob_home):
    reg = Registry()
    job = _new(reg)
    assert len(job.id) == 6 and job.id[0].isalpha()
    assert job.status == "queued" and job.spec_data == {"kind": "command"}
    assert (gpujob_home / "registry.db").exists()
    assert oct(gpujob_home.stat().st_mode & 0o777) == "0o700"
    assert [t[0] for t in reg.get(job.id).transitions] == ["queued"]


def test_transitions_are_recorded_in_order_with_times():
    reg = Registry()
    job = _new(reg)
    assert reg.transition(job.id, "running")
    assert reg.transition(job.id, "failed", reason="exited with code 3", exit_code=3)
    got = reg.get(job.id)
    assert [t[0] for t in got.transitions] == ["queued", "running", "failed"]
    times = [t[1] for t in got.transitions]
    assert times == sorted(times)
    assert got.exit_code == 3 and got.reason == "exited with code 3"
    assert got.started_at is not None and got.finished_at >= got.started_at


def test_a_finished_job_cannot_be_moved_again():
    reg = Registry()
    job = _new(reg)
    reg.transition(job.id, "succeeded")
    assert not reg.transition(job.id, "failed", reason="late vanished-process check")
    assert reg.get(job.id).status == "succeeded"


def test_an_exit_while_cancelling_is_recorded_as_cancelled():
    reg = Registry()
    job = _new(reg)
    reg.transition(job.id, "running")
    reg.transition(job.id, "cancelling")
    reg.transition(job.id, "failed", exit_code=-15)
    got = reg.get(job.id)
    assert got.status == "cancelled" and got.reason == "cancelled by the user" and got.exit_code == -15


def test_resolve_by_id_prefix_and_name():
    reg = Registry()
    a, b = _new(reg, "alpha"), _new(reg, "beta")
    assert reg.resolve(a.id).id == a.id
    assert reg.resolve(a.id[:4]).id == a.id
    assert reg.resolve("beta").id == b.id
    with pytest.raises(JobNotFound, match="no job matches 'gamma'"):
        reg.resolve("gamma")
    with pytest.raises(JobNotFound):
        reg.resolve("%")  # LIKE wildcards are not wildcards here


def test_resolve_an_ambiguous_name_lists_the_candidates():
    reg = Registry()
    first, second = _new(reg, "sweep"), _new(reg, "sweep")
    with pytest.raises(AmbiguousJob) as info:
        reg.resolve("sweep")
    assert first.id in info.value.message and second.id in info.value.message
    assert info.value.exit_code == 2


def _writer(home: str, worker: int, count: int) -> None:
    os.environ["GPUJOB_HOME"] = home
    reg = Registry()
    for i in range(count):
        job = _new(reg, f"w{worker}-{i}")
        reg.transition(job.id, "running")
        reg.update(job.id, progress={"step": i, "worker": worker})
        reg.transition(job.id, "succeeded", exit_code=0)


def test_concurrent_writers_lose_nothing(gpujob_home):
    Registry().close()
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_writer, args=(str(gpujob_home), w, 40)) for w in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    reg = Registry()
    jobs = reg.list()
    assert len(jobs) == 160 and len({j.id for j in jobs}) == 160
    assert all(j.status == "succeeded" and j.exit_code == 0 for j in jobs)
    assert sorted(j.name for j in jobs) == sorted(f"w{w}-{i}" for w in range(4) for i in range(40))
    assert all([t[0] for t in reg.get(j.id).transitions] == ["queued", "running", "succeeded"] for j in jobs)
    assert reg.integrity_ok()


def test_reader_is_not_blocked_while_a_writer_holds_a_transaction(gpujob_home):
    reg = Registry()
    job = _new(reg)
    other = Registry()
    other._conn.execute("BEGIN IMMEDIATE")
    other._conn.execute("UPDATE jobs SET status = 'running' WHERE id = ?", (job.id,))
    t0 = time.monotonic()
    assert reg.get(job.id).status == "queued"  # WAL: reads see the last commit, at once
    assert time.monotonic() - t0 < 1.0
    other._conn.execute("ROLLBACK")


KILL_LOOP = """
import os, sys
from gpujob.registry import Registry
reg = Registry()
job_id = sys.argv[1]
i = 0
print("ready", flush=True)
while True:
    i += 1
    reg.update(job_id, progress={"step": i, "pad": "x" * 4000})
"""


def test_writer_killed_mid_write_leaves_a_consistent_registry(gpujob_home):
    reg = Registry()
    keep = [_new(reg, f"keep-{i}") for i in range(5)]
    for job in keep:
        reg.transition(job.id, "succeeded", exit_code=0)
    victim = _new(reg, "victim")
    for attempt in range(3):
        proc = subprocess.Popen([sys.executable, "-c", KILL_LOOP, victim.id], stdout=subprocess.PIPE,
                                env={**os.environ, "GPUJOB_HOME": str(gpujob_home)})
        assert proc.stdout.readline().strip() == b"ready"
        time.sleep(0.3 + 0.2 * attempt)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    fresh = Registry()
    assert fresh.integrity_ok()
    assert fresh.get(victim.id).progress["step"] > 0
    assert all(fresh.get(j.id).status == "succeeded" for j in keep)
    # and the registry is still writable
    assert fresh.transition(victim.id, "failed", reason="test")


FIRST_USE = """
from gpujob.registry import Registry
reg = Registry()
job = reg.create(name="first", kind="command", backend="local", spec={}, spec_path=None, output_dir=None)
reg.transition(job.id, "running")
"""


def test_many_first_calls_at_once_on_a_new_home_all_succeed(tmp_path):
    """The file is created and switched to WAL by whichever CLI call comes first; the others must wait, not fail."""
    for round_ in range(8):
        home = tmp_path / f"home-{round_}"
        procs = [subprocess.Popen([sys.executable, "-c", FIRST_USE], stderr=subprocess.PIPE, text=True,
                                  env={**os.environ, "GPUJOB_HOME": str(home)}) for _ in range(6)]
        errors = [p.communicate(timeout=60)[1] for p in procs]
        assert all(p.returncode == 0 for p in procs), errors
        assert len(Registry(home).list()) == 6


@pytest.mark.parametrize("side", ["registry.db-wal", "registry.db-shm"])
def test_a_journal_file_removed_while_it_is_looked_at_does_not_make_the_registry_read_only(tmp_path, monkeypatch,
                                                                                           side):
    """Another call's closing connection removes -wal/-shm; one that is gone between "is it there" and
    "may I write it" is not a journal we may not write (seen in CI: a first call failed with it)."""
    from gpujob import registry_open

    reg = Registry(tmp_path)
    reg.create(name="first", kind="command", backend="local", spec={}, spec_path=None, output_dir=None)
    reg.close()  # the files go only when no connection is open
    (tmp_path / side).touch()
    real_access = registry_open._access

    def removed_as_looked_at(path, mode):
        if path.name == side and path.exists():
            path.unlink()  # what another process's last close does
            return False
        return real_access(path, mode)

    monkeypatch.setattr(registry_open, "_access", removed_as_looked_at)
    assert registry_open.read_only_reason(tmp_path, tmp_path / "registry.db") is None
    monkeypatch.setattr(registry_open, "_access", real_access)
    other = Registry(tmp_path)
    other.create(name="second", kind="command", backend="local", spec={}, spec_path=None, output_dir=None)
    assert sorted(j.name for j in Registry(tmp_path).list()) == ["first", "second"]


def test_a_journal_file_that_is_not_ours_still_makes_the_registry_read_only(tmp_path, monkeypatch):
    from gpujob import registry_open

    reg = Registry(tmp_path)
    reg.create(name="first", kind="command", backend="local", spec={}, spec_path=None, output_dir=None)
    reg.close()
    (tmp_path / "registry.db-wal").touch()
    real_access = registry_open._access
    monkeypatch.setattr(registry_open, "_access",
                        lambda path, mode: False if path.name == "registry.db-wal" else real_access(path, mode))
    why = registry_open.read_only_reason(tmp_path, tmp_path / "registry.db")
    assert why and "registry.db-wal" in why and "not writable by you" in why


# ----------------------------------------------------------------------------- hosts


def _host(reg: Registry, name: str = "a10-box", **extra):
    fields = dict(provider="lambda", instance_type="gpu_1x_a10", ssh_user="ubuntu", ssh_port=22, state="booting",
                  idle_minutes=15, price_cents_per_hour=75, launched_at=1000.0, instance_id="i-1")
    return reg.add_host(name=name, **{**fields, **extra})


def test_hosts_round_trip_with_cost_from_price_and_uptime():
    reg = Registry()
    host = _host(reg, settings={"layout_root": "/"})
    assert host.state == "booting" and host.active and host.settings == {"layout_root": "/"}
    # $0.75/h for 2 hours, then terminated: $1.50, and no more after that
    done = reg.update_host("a10-box", state="terminated", terminated_at=1000.0 + 7200)
    assert not done.active
    assert done.cost_usd(now=1e9) == pytest.approx(1.50)
    assert reg.get_host("a10-box").heartbeat == {}
    assert [h.name for h in reg.list_hosts(active_only=True)] == []
    assert [h.name for h in reg.list_hosts()] == ["a10-box"]


def test_hosts_due_are_those_past_their_check_time_or_hard_deadline():
    reg = Registry()
    _host(reg, "early", check_after=500.0)
    _host(reg, "later", check_after=5000.0)
    _host(reg, "deadline", check_after=9000.0, hard_deadline=900.0)
    _host(reg, "gone", check_after=1.0, state="terminated")
    assert sorted(h.name for h in reg.hosts_due(1000.0)) == ["deadline", "early"]


def test_unknown_host_is_a_user_error_naming_it():
    from gpujob.errors import UserError

    with pytest.raises(UserError, match="no host named 'nope'"):
        Registry().get_host("nope")


def test_a_version_1_registry_gains_the_hosts_table_and_keeps_its_jobs(gpujob_home):
    import sqlite3

    reg = Registry()
    job = _new(reg)
    reg.close()
    conn = sqlite3.connect(gpujob_home / "registry.db")
    conn.execute("DROP TABLE hosts")
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    reg = Registry()
    assert reg.get(job.id).name == "hello"
    assert _host(reg).name == "a10-box"


def _version_2(home) -> None:
    """Make the registry as version 2 left it: no price columns."""
    import sqlite3

    conn = sqlite3.connect(home / "registry.db")
    conn.execute("ALTER TABLE jobs DROP COLUMN price_usd_per_hour")
    conn.execute("ALTER TABLE jobs DROP COLUMN price_source")
    conn.execute("PRAGMA user_version = 2")
    conn.commit()
    conn.close()


def test_a_version_2_registry_gains_the_price_columns_and_keeps_its_jobs(gpujob_home):
    reg = Registry()
    job = _new(reg)
    reg.update(job.id, cost_usd=1.25)
    reg.close()
    _version_2(gpujob_home)
    reg = Registry()
    old = reg.get(job.id)
    assert old.name == "hello" and old.price_usd_per_hour is None and old.cost == 1.25  # what it knew then
    reg.update(job.id, price=(2.0, "resources.price_per_hour"))
    assert reg.get(job.id).price_usd_per_hour == 2.0


@pytest.mark.skipif(os.geteuid() != 0, reason="gives the registry file to another user: needs root")
def test_a_version_2_registry_opened_read_only_still_lists_its_jobs(gpujob_home):
    reg = Registry()
    job = _new(reg)
    reg.close()
    _version_2(gpujob_home)
    db = gpujob_home / "registry.db"
    mine = os.stat(db)
    os.chown(db, mine.st_uid + 1, mine.st_gid)  # someone else's: gpujob reads it and writes nothing
    try:
        reg = Registry()
        assert reg.read_only and reg.get(job.id).price_usd_per_hour is None and reg.get(job.id).cost is None
        reg.close()
    finally:
        os.chown(db, mine.st_uid, mine.st_gid)


def test_the_final_cost_is_recorded_when_a_priced_job_ends(gpujob_home):
    reg = Registry()
    job = reg.create(name="p", kind="command", backend="local", spec={}, spec_path=None, output_dir=None,
                     price_usd_per_hour=3600.0, price_source="resources.price_per_hour")
    reg.transition(job.id, "running")
    time.sleep(0.2)
    reg.transition(job.id, "succeeded")
    done = reg.get(job.id)
    assert 0.2 <= done.cost_usd < 5 and abs(done.cost_usd - done.cost) < 1e-6


@pytest.mark.parametrize("example", sorted(p.name for p in (Path(__file__).parent.parent / "jobs").glob("*.yaml")))
def test_every_example_spec_recorded_as_submit_records_it_reads_back_undamaged(gpujob_home, example):
    """`status` once called every train job's record damaged: the spec kept ``command: null``, and the
    reader took a null command for a broken one."""
    from gpujob.spec.loader import load_spec

    loaded = load_spec(Path(__file__).parent.parent / "jobs" / example)
    registry = Registry()
    job = registry.create(name=loaded.spec.name, kind=loaded.spec.kind, backend="local", spec=loaded.data,
                          spec_path=str(loaded.path), output_dir="/tmp/out")
    again = registry.get(job.id)
    assert again.damage is None and again.spec_problem is None and again.spec_data == json.loads(json.dumps(loaded.data))
    assert again.spec == loaded.spec


def test_the_jobs_on_a_host_are_those_of_a_backend_that_rents_hosts_naming_it():
    """A docker job's handle also has a "host" (its engine's address): only jobs of a backend whose
    capabilities say rents_hosts count as on a rented host, each on the host its handle names."""
    reg = Registry()
    on_box = reg.create(name="a", kind="command", backend="host", spec={}, spec_path=None, output_dir="/tmp/a")
    elsewhere = reg.create(name="b", kind="command", backend="host", spec={}, spec_path=None, output_dir="/tmp/b")
    engine = reg.create(name="c", kind="command", backend="docker", spec={}, spec_path=None, output_dir="/tmp/c")
    reg.update(on_box.id, handle={"host": "box-1"})
    reg.update(elsewhere.id, handle={"host": "box-2"})
    reg.update(engine.id, handle={"host": "box-1"})
    assert [j.id for j in reg.jobs_on_host("box-1")] == [on_box.id]
    reg.transition(on_box.id, "failed", reason="x")
    assert reg.jobs_on_host("box-1") == [] and [j.id for j in reg.jobs_on_host("box-1", active_only=False)] == [on_box.id]
