"""A broken, read-only or foreign registry or home: a clear message, nothing lost (issue 15, part 6).

Every case runs the real CLI (``python -m gpujob``) in a subprocess. The permission cases need a
user other than the test's: as root, the CLI runs as nobody (``setpriv``), since root reads and
writes whatever the modes say; the foreign-owner cases chown to uid 12345 and so need root.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from gpujob.registry import Registry
from polling import wait_for

NOBODY = 65534
FOREIGN = 12345
IS_ROOT = os.geteuid() == 0
SETPRIV = shutil.which("setpriv")
needs_root = pytest.mark.skipif(not IS_ROOT, reason="making a file someone else's needs root")
needs_other_user = pytest.mark.skipif(IS_ROOT and not SETPRIV, reason="as root, the CLI must run as nobody (setpriv)")

SPEC = """apiVersion: gpujob/v1
kind: command
name: hello
command: [sh, -c, "echo hello-from-the-job"]
output:
  dir: {out}
"""


# ----------------------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def template():
    """A home with one finished local job (its folder written by the real backend), made once."""
    base = Path(tempfile.mkdtemp(prefix="gpujob-faults-template-"))
    spec = base / "hello.yaml"
    spec.write_text(SPEC.format(out=base / "out"))
    r = subprocess.run([sys.executable, "-m", "gpujob", "submit", str(spec), "--follow"], cwd=base,
                       env={**os.environ, "GPUJOB_HOME": str(base / "home")}, capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    reg = Registry(base / "home")
    (job,) = reg.list()
    reg.close()
    # Copies of this home are made file by file: wait until no process has the registry open (its supervisor
    # exits a moment after the job's end is recorded), so that SQLite's -wal and -shm do not vanish mid-copy.
    wait_for(lambda: not (base / "home" / "registry.db-wal").exists(), timeout=30, what="the registry closed")
    yield base / "home", job.id
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def place():
    """A folder nobody may enter (pytest's own tmp folders are root's alone), removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="gpujob-faults-"))
    os.chmod(path, 0o755)
    yield path
    for root, dirs, _ in os.walk(path):
        for d in dirs:
            os.chmod(os.path.join(root, d), 0o755)
    shutil.rmtree(path, ignore_errors=True)


def home_from(template, place: Path) -> tuple[Path, str]:
    home, job_id = template
    copy = place / "home"
    shutil.copytree(home, copy)
    spec = place / "hello.yaml"
    spec.write_text(SPEC.format(out=place / "out2"))
    os.chmod(spec, 0o644)
    return copy, job_id


def gpujob(home: Path, *args: str, other_user: bool = False, cwd: Path | None = None):
    cmd = [sys.executable, "-m", "gpujob", *args]
    if other_user and IS_ROOT:
        cmd = [SETPRIV, f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", *cmd]
    return subprocess.run(cmd, cwd=cwd or home.parent, env={**os.environ, "GPUJOB_HOME": str(home)},
                          capture_output=True, text=True, timeout=60)


def give_to(path: Path, uid: int) -> None:
    """Make ``path`` (and all below it) ``uid``'s (as root); otherwise it is already the test user's."""
    if not IS_ROOT:
        return
    for root, dirs, files in os.walk(path):
        for name in [*dirs, *files]:
            os.chown(os.path.join(root, name), uid, uid)
    os.chown(path, uid, uid)


def clear(r: subprocess.CompletedProcess) -> str:
    """Output that is a message, not a crash; returned for further checks."""
    text = r.stdout + r.stderr
    assert "Traceback" not in text and "bug in gpujob" not in text and "internal error" not in text, text
    return text


def add_ghost(home: Path) -> str:
    """A job recorded as running whose supervisor is long gone: reading it wants to record its end."""
    reg = Registry(home)
    job = reg.create(name="ghost", kind="command", backend="local", spec={}, spec_path=None, output_dir="/tmp/g")
    reg.transition(job.id, "running")
    reg.update(job.id, handle={"supervisor_pid": 1, "supervisor_start": 5})  # pid 1 never started then
    reg.close()
    return job.id


def broken_files(home: Path) -> list[Path]:
    return sorted(p for p in home.iterdir() if p.name.startswith("registry.db.broken-") and "-wal" not in p.name
                  and "-shm" not in p.name)


# ----------------------------------------------------------------------------- broken registries


@pytest.mark.parametrize("content", [os.urandom(8192), b"this is not a database, just some notes\n" * 50],
                         ids=["random-bytes", "text"])
def test_a_corrupt_registry_is_kept_and_rebuilt_from_the_job_folders(template, place, content):
    home, job_id = home_from(template, place)
    (home / "registry.db").write_bytes(content)
    r = gpujob(home, "list")
    text = clear(r)
    assert r.returncode == 0, text
    assert f"{home / 'registry.db'} is not a SQLite database" in r.stderr
    assert job_id in r.stdout and "hello" in r.stdout          # rebuilt from jobs/<id>
    (kept,) = broken_files(home)
    assert kept.read_bytes() == content and str(kept) in r.stderr  # kept, untouched, and said where
    logs = gpujob(home, "logs", job_id)
    assert logs.returncode == 0 and "hello-from-the-job" in logs.stdout
    again = gpujob(home, "list")
    assert again.returncode == 0 and again.stderr == "" and job_id in again.stdout


def test_a_truncated_registry_is_kept_and_rebuilt(template, place):
    home, job_id = home_from(template, place)
    db = home / "registry.db"
    whole = db.read_bytes()
    db.write_bytes(whole[: len(whole) // 2])
    r = gpujob(home, "status", job_id, "--json")
    clear(r)
    assert r.returncode == 0 and "is damaged" in r.stderr and str(db) in r.stderr
    status = json.loads(r.stdout)
    assert status["id"] == job_id and status["name"] == "hello" and status["output_dir"] == str(template[0].parent / "out")
    (kept,) = broken_files(home)
    assert kept.read_bytes() == whole[: len(whole) // 2]


def test_a_zero_byte_registry_beside_job_folders_is_not_no_jobs_yet(template, place):
    home, job_id = home_from(template, place)
    (home / "registry.db").write_bytes(b"")
    r = gpujob(home, "list")
    clear(r)
    assert r.returncode == 0 and "no jobs yet" not in r.stdout and job_id in r.stdout
    assert "is empty (0 bytes)" in r.stderr and "rebuilt" in r.stderr
    (kept,) = broken_files(home)
    assert kept.stat().st_size == 0


def test_a_damaged_page_found_mid_command_is_named_then_rebuilt(template, place):
    """Damage SQLite only meets when it reads that page: an error naming the file, then a rebuild."""
    home, job_id = home_from(template, place)
    reg = Registry(home)
    for i in range(60):  # enough rows for the jobs table to span pages of its own
        reg.create(name=f"filler-{i}", kind="command", backend="local", spec={"pad": "x" * 800}, spec_path=None,
                   output_dir=None)
    reg.close()
    db = home / "registry.db"
    data = bytearray(db.read_bytes())
    page = int.from_bytes(data[16:18], "big")
    for n in range(3, len(data) // page):  # every page after the schema: b-tree headers turned to junk
        data[n * page: n * page + 16] = b"\xff" * 16
    db.write_bytes(bytes(data))
    first = gpujob(home, "list")
    text = clear(first)
    assert first.returncode == 1 and f"gpujob's registry {db} is damaged" in text and "run the command again" in text
    second = gpujob(home, "list")
    clear(second)
    assert second.returncode == 0 and "is damaged" in second.stderr and job_id in second.stdout
    assert len(broken_files(home)) == 1


# ----------------------------------------------------------------------------- read-only and foreign


@needs_other_user
def test_a_read_only_registry_file_is_read_and_never_written(template, place):
    home, job_id = home_from(template, place)
    ghost = add_ghost(home)
    give_to(home, NOBODY)
    db = home / "registry.db"
    os.chmod(db, 0o444)
    before = db.read_bytes()
    listed = gpujob(home, "list", other_user=True)
    clear(listed)
    assert listed.returncode == 0 and job_id in listed.stdout and ghost in listed.stdout
    assert listed.stderr.count("read-only") == 1 and str(db) in listed.stderr
    submit = gpujob(home, "submit", str(place / "hello.yaml"), other_user=True)
    text = clear(submit)
    assert submit.returncode == 1 and "cannot submit a job" in text and str(db) in text
    assert db.read_bytes() == before and not (home / "registry.db-wal").exists()


@needs_other_user
def test_a_read_only_registry_older_than_the_metric_history_is_read_without_it(template, place):
    home, job_id = home_from(template, place)
    conn = sqlite3.connect(home / "registry.db")
    conn.execute("DROP TABLE history")
    conn.execute("ALTER TABLE jobs DROP COLUMN sweep_id")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    give_to(home, NOBODY)
    os.chmod(home / "registry.db", 0o444)
    before = (home / "registry.db").read_bytes()
    shown = gpujob(home, "metrics", job_id, "--json", other_user=True)
    clear(shown)
    assert shown.returncode == 0 and json.loads(shown.stdout) == []
    listed = gpujob(home, "status", job_id, other_user=True)
    assert listed.returncode == 0 and "succeeded" in clear(listed)
    assert (home / "registry.db").read_bytes() == before


@needs_other_user
def test_a_read_only_home_is_read_and_left_as_it_is(template, place):
    home, job_id = home_from(template, place)
    ghost = add_ghost(home)
    give_to(home, NOBODY)
    os.chmod(home, 0o555)
    for args in (["list"], ["status", job_id], ["status", ghost], ["logs", job_id]):
        r = gpujob(home, *args, other_user=True)
        clear(r)
        assert r.returncode == 0, r.stdout + r.stderr
        assert r.stderr.count("read-only") == 1 and str(home) in r.stderr
    assert "hello-from-the-job" in gpujob(home, "logs", job_id, other_user=True).stdout
    for args in (["submit", str(place / "hello.yaml")], ["cancel", ghost]):
        r = gpujob(home, *args, other_user=True)
        text = clear(r)
        assert r.returncode == 1 and str(home) in text and "hint:" in text, text
    assert stat.S_IMODE(home.stat().st_mode) == 0o555  # never chmod-ed
    assert Registry(home).get(ghost).status == "running"  # nothing recorded


@needs_other_user
def test_a_broken_registry_in_a_read_only_home_is_an_error_that_keeps_it(template, place):
    home, _ = home_from(template, place)
    db = home / "registry.db"
    db.write_bytes(b"not a database\n" * 100)
    give_to(home, NOBODY)
    os.chmod(home, 0o555)
    r = gpujob(home, "list", other_user=True)
    text = clear(r)
    assert r.returncode == 1 and str(db) in text and "hint:" in text
    assert db.read_bytes() == b"not a database\n" * 100 and not broken_files(home)


@needs_root
def test_a_registry_owned_by_someone_else_is_read_only(template, place):
    """As root on another user's home (``sudo gpujob``): read it, but leave no root-owned files there."""
    home, job_id = home_from(template, place)
    give_to(home, FOREIGN)
    listed = gpujob(home, "list")
    clear(listed)
    assert listed.returncode == 0 and job_id in listed.stdout
    assert f"belongs to uid {FOREIGN}" in listed.stderr
    submit = gpujob(home, "submit", str(place / "hello.yaml"))
    text = clear(submit)
    assert submit.returncode == 1 and str(home / "registry.db") in text and "cannot submit" in text
    assert [p.name for p in (home / "jobs").iterdir()] == [job_id]


@needs_root
@pytest.mark.skipif(not SETPRIV, reason="needs setpriv to run the CLI as nobody")
def test_a_registry_you_cannot_read_is_an_error_naming_it(template, place):
    home, _ = home_from(template, place)
    give_to(home, NOBODY)
    db = home / "registry.db"
    os.chown(db, FOREIGN, FOREIGN)
    os.chmod(db, 0o600)
    r = gpujob(home, "list", other_user=True)
    text = clear(r)
    assert r.returncode == 1 and f"cannot read gpujob's registry {db}: permission denied" in text
    assert f"uid {FOREIGN}" in text and "GPUJOB_HOME" in text


# ----------------------------------------------------------------------------- the home itself


def test_an_existing_home_keeps_its_mode(place):
    home = place / "home"
    home.mkdir(mode=0o755)
    os.chmod(home, 0o755)
    r = gpujob(home, "list")
    clear(r)
    assert r.returncode == 0 and stat.S_IMODE(home.stat().st_mode) == 0o755
    fresh = place / "fresh"
    assert gpujob(fresh, "list").returncode == 0 and not fresh.exists()  # a command that only reads makes none
    Registry(fresh).close()  # the first command that records something makes it, private
    assert stat.S_IMODE(fresh.stat().st_mode) == 0o700


def test_a_home_that_cannot_be_made_is_an_error_naming_it(place):
    (place / "a-file").write_text("")
    home = place / "a-file" / "home"
    r = gpujob(home, "list", cwd=place)
    text = clear(r)
    assert r.returncode == 1 and f"cannot create gpujob's home {home}" in text and "GPUJOB_HOME" in text


def test_a_home_made_by_another_call_between_two_looks_is_accepted(tmp_path, monkeypatch):
    """Six first calls at once on a new home: one of them saw no folder, then a folder made by
    another call a moment later. That is a folder, not 'not a folder' (a CI failure, once in 48)."""
    from gpujob import registry_open

    home = tmp_path / "home"
    real_is_dir = Path.is_dir
    looks = []

    def is_dir_racing(self):
        if self == home and not looks:
            looks.append(1)
            answer = real_is_dir(self)  # False: not made yet ...
            os.mkdir(home, 0o700)       # ... and another gpujob call makes it now
            return answer
        return real_is_dir(self)

    monkeypatch.setattr(Path, "is_dir", is_dir_racing)
    registry_open.ensure_home(home)
    assert looks and real_is_dir(home)
