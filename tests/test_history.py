"""Metric history: every progress and eval point of a job in the registry, bounded, and `gpujob metrics`.

The backends that read a job's log from afar (docker, kubernetes, host) are covered in their own
suites; here: the thinning rule, the registry's store, a local job end to end, a registry rebuilt
from job folders, an older registry, and the quiet `logs -f` of a job nobody watches.
"""

from __future__ import annotations

import csv
import io
import json
import sqlite3
import subprocess
import sys
from pathlib import Path

from hypothesis import given, settings, strategies as st

from gpujob import history
from gpujob.events import parse_line
from gpujob.registry import Registry
from gpujob.registry_open import SCHEMA_VERSION

GPUJOB = [sys.executable, "-m", "gpujob"]


def gpujob(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*GPUJOB, *args], capture_output=True, text=True, timeout=120, cwd=cwd)


def demo_spec(tmp_path: Path, *args: str, name: str = "curves") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(json.dumps({
        "apiVersion": "gpujob/v1", "kind": "command", "name": name,
        "command": ["python", "-m", "gpujob.demo", "--step-time", "0.005", *args],
        "output": {"dir": str(tmp_path / "out" / name)}}))
    return path


def log_points(job_id: str) -> list[dict]:
    """The points of every event in the job's log, as the user sees it with `logs --raw`."""
    raw = gpujob("logs", "--raw", job_id)
    assert raw.returncode == 0, raw.stderr
    return history.points(e for line in raw.stdout.splitlines() for e in parse_line(line))


# ----------------------------------------------------------------------------- the thinning rule

rows_strategy = st.lists(st.integers(0, 50_000), min_size=0, max_size=3000)


@given(steps=rows_strategy, cap=st.integers(8, 400))
@settings(max_examples=150, deadline=None)
def test_thinning_keeps_a_series_under_its_cap_evenly_with_its_ends(steps, cap):
    rows = [(i, step, float(i)) for i, step in enumerate(steps)]
    drop = history.thin(rows, cap)
    kept = [r for r in rows if r[0] not in drop]
    if len(rows) <= cap:
        assert drop == set()  # nothing is lost before the cap
        return
    assert len(kept) <= cap // 2 + 2 <= cap
    assert kept[0] == rows[0] and kept[-1] == rows[-1]
    width = history.bucket_width(max(steps), cap)
    # every bucket of steps that had a point still has one: the gaps are even, none is wider than
    # the bucket width (plus the one bucket a point may sit at the far end of)
    assert {s // width for _, s, _ in kept} == {s // width for s in steps}
    for bucket in {s // width for s in steps}:  # the latest recorded point of each bucket stays
        latest = max(i for i, s, _ in rows if s // width == bucket)
        assert latest not in drop


@given(n=st.integers(0, 6000))
@settings(max_examples=30, deadline=None)
def test_a_long_log_is_read_into_at_most_the_caps_with_its_first_and_last_points(n):
    lines = [f'@gpujob/v1 {{"event":"progress","step":{i},"loss":{1 / (i + 1)},"t":{1000 + i}}}' for i in range(n)]
    lines += ['@gpujob/v1 {"event":"eval","step":%d,"wer":0.5,"t":%d}' % (i, 9000 + i) for i in range(0, n, 5)]
    got = history.from_log(lines)
    progress = [p for p in got if p["event"] == "progress"]
    evals = [p for p in got if p["event"] == "eval"]
    assert len(progress) <= history.CAPS["progress"] and len(evals) <= history.CAPS["eval"]
    if n:
        assert progress[0]["step"] == 0 and progress[-1]["step"] == n - 1
        assert all(p["loss"] == 1 / (p["step"] + 1) for p in progress)  # values are never changed
    if n <= history.CAPS["progress"]:
        assert len(progress) == n


def test_a_point_keeps_the_numbers_of_progress_and_eval_events_only():
    assert history.point({"event": "progress", "step": 3, "loss": 0.5, "total_steps": 10, "t": 5.0}) == \
        {"event": "progress", "step": 3, "t": 5.0, "loss": 0.5}
    assert history.point({"event": "eval", "step": 3, "wer": 0.25, "wer/fleurs": 0.3, "note": "x", "ok": True}) == \
        {"event": "eval", "step": 3, "wer": 0.25, "wer/fleurs": 0.3}
    assert history.point({"event": "progress", "loss": 0.5}) is None  # no step: not on a curve
    assert history.point({"event": "checkpoint", "step": 3}) is None
    assert history.point({"event": "eval", "step": -1, "wer": 0.2}) is None


# ----------------------------------------------------------------------------- the registry's store


def _job(reg: Registry):
    return reg.create(name="h", kind="command", backend="local", spec={"kind": "command"}, spec_path=None,
                      output_dir=None)


def test_points_are_kept_once_in_order_and_bounded_however_they_arrive():
    reg = Registry()
    job = _job(reg)
    points = [{"event": "progress", "step": i, "t": 100.0 + i, "loss": 10.0 - i / 1000} for i in range(9000)]
    evals = [{"event": "eval", "step": i, "t": 100.5 + i, "wer": 0.9 - i / 10000} for i in range(0, 9000, 3)]
    for start in range(0, 9000, 700):  # batches as a supervisor records them, some sent twice
        batch = points[start:start + 700] + [e for e in evals if start <= e["step"] < start + 700]
        reg.add_history(job.id, batch)
        reg.add_history(job.id, batch[-50:])
    got = reg.history(job.id)
    progress = [p for p in got if p["event"] == "progress"]
    got_evals = [p for p in got if p["event"] == "eval"]
    assert len(progress) <= history.CAPS["progress"] and len(got_evals) <= history.CAPS["eval"]
    assert progress[0] == points[0] and progress[-1] == points[-1]
    assert got_evals[-1] == evals[-1]
    steps = [p["step"] for p in progress]
    assert steps == sorted(set(steps))  # no point twice, in step order
    assert all(p == points[p["step"]] for p in progress)  # exactly as given
    # evenly spread: no gap in the older, thinned part is wider than the widest bucket
    width = history.bucket_width(9000, history.CAPS["progress"])
    assert max(b - a for a, b in zip(steps, steps[1:])) <= 2 * width


def test_a_history_given_whole_replaces_what_was_recorded():
    reg = Registry()
    job = _job(reg)
    reg.add_history(job.id, [{"event": "progress", "step": 5, "t": 1.0, "loss": 1.0}])
    whole = [{"event": "progress", "step": i, "t": float(i), "loss": 2.0} for i in range(1, 4)]
    reg.add_history(job.id, whole, replace=True)
    assert reg.history(job.id) == whole


def test_points_without_a_time_are_kept_once_per_step():
    """A job that prints events without "t" is read again at every look from afar: once per step."""
    reg = Registry()
    job = _job(reg)
    tail = history.points_from_lines(['@gpujob/v1 {"event":"progress","step":%d,"loss":1}' % i for i in range(5)])
    reg.add_history(job.id, tail)
    reg.add_history(job.id, tail)
    assert [p["step"] for p in reg.history(job.id)] == [0, 1, 2, 3, 4]


# ----------------------------------------------------------------------------- a job, end to end


def test_a_local_jobs_metrics_equal_its_events_in_every_format(tmp_path):
    r = gpujob("submit", str(demo_spec(tmp_path, "--steps", "60", "--eval-every", "20")), "--follow", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = r.stdout.split()[2]
    expected = log_points(job_id)
    assert [p["step"] for p in expected if p["event"] == "eval"] == [20, 40, 60]

    as_json = gpujob("metrics", job_id, "--json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout) == expected

    as_csv = gpujob("metrics", job_id, "--csv")
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert len(rows) == len(expected)
    for row, p in zip(rows, expected):
        assert row["event"] == p["event"] and int(row["step"]) == p["step"]
        for key in ("loss", "learning_rate", "samples_per_s", "wer", "eval_loss"):
            assert (float(row[key]) if row[key] else None) == p.get(key)

    table = gpujob("metrics", job_id)
    assert table.returncode == 0
    assert table.stdout.splitlines()[0].split()[:3] == ["event", "step", "loss"]
    assert f"gpujob plot {job_id}" in table.stdout


def test_metrics_of_a_job_without_events_says_so(tmp_path):
    spec = tmp_path / "quiet.yaml"
    spec.write_text(json.dumps({"apiVersion": "gpujob/v1", "kind": "command", "name": "quiet",
                                "command": ["python", "-c", "print('no events')"]}))
    r = gpujob("submit", str(spec), "--follow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    shown = gpujob("metrics", "quiet")
    assert shown.returncode == 0 and "no metric history yet" in shown.stdout
    assert gpujob("metrics", "quiet", "--csv").stdout.strip() == "event,step,t"
    both = gpujob("metrics", "quiet", "--csv", "--json")
    assert both.returncode == 2 and "give one of them" in both.stderr


def test_a_registry_rebuilt_from_the_job_folders_keeps_the_history(tmp_path, gpujob_home):
    r = gpujob("submit", str(demo_spec(tmp_path, "--steps", "30", "--eval-every", "10")), "--follow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.split()[2]
    before = json.loads(gpujob("metrics", job_id, "--json").stdout)
    (gpujob_home / "registry.db").write_bytes(b"")  # lost: rebuilt from the job folders at the next command
    for side in ("registry.db-wal", "registry.db-shm"):
        (gpujob_home / side).unlink(missing_ok=True)
    after = gpujob("metrics", job_id, "--json")
    assert after.returncode == 0, after.stderr
    assert json.loads(after.stdout) == before == log_points(job_id)


def test_an_older_registry_gains_the_history_table(gpujob_home):
    """(Read-only, it is read as it is: tests/test_registry_faults.py.)"""
    reg = Registry()
    job = _job(reg)
    reg.close()
    conn = sqlite3.connect(gpujob_home / "registry.db")
    conn.execute("DROP TABLE history")
    conn.execute("ALTER TABLE jobs DROP COLUMN sweep_id")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    reg = Registry()
    assert reg._conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    reg.add_history(job.id, [{"event": "eval", "step": 1, "wer": 0.5}])
    assert reg.history(job.id) == [{"event": "eval", "step": 1, "wer": 0.5}]
    assert reg.get(job.id).sweep_id is None and reg.list(sweep="x") == []


# ----------------------------------------------------------------------------- nobody watching


def test_a_followed_job_without_a_terminal_prints_progress_at_a_bounded_rate(tmp_path):
    """5,000 steps are not 5,000 lines in a CI log: one progress line a minute of the job's time
    (here the first, and the last before each eval and the end), every eval and checkpoint."""
    steps = 600
    r = gpujob("submit", str(demo_spec(tmp_path, "--steps", str(steps), "--step-time", "0.001",
                                       "--eval-every", "200")), "--follow", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    progress = [ln for ln in r.stdout.splitlines() if ln.startswith("[progress]")]
    evals = [ln for ln in r.stdout.splitlines() if ln.startswith("[eval]")]
    assert len(evals) == 3 and len(progress) <= 1 + len(evals) + 1
    assert progress[0].startswith("[progress] step 1/") and progress[-1].startswith(f"[progress] step {steps}/")
    assert "--raw prints every line" in r.stderr
    job_id = r.stdout.split()[2]
    raw = gpujob("logs", "-f", "--raw", job_id)
    assert sum('"event":"progress"' in ln.replace(" ", "") for ln in raw.stdout.splitlines()) == steps
