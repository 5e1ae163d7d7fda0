"""One active job per output directory, also when many `gpujob submit` run at once (issue 15, part 4).

The check that no active job writes to the same ``output.dir`` and the insert of the new job are one
``BEGIN IMMEDIATE`` transaction; before, two submits racing between the check and the insert both
ran. Here ten ``gpujob submit`` processes at a time aim at one directory, written four ways
(``out/rN``, ``./out/rN/``, absolute, through a symlink), released together from a start line.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gpujob.registry import Registry
from polling import wait_for

SUBMITTERS = 10
ROUNDS = 6

# Each submitter is a process of its own that runs `gpujob submit ...` once per round, in step with
# the others: it says it is ready (a file), waits for the start line (another file), submits, and
# writes down its exit code and output. Starting together, the ten race for real; staying up for
# several rounds keeps the test fast (the imports are paid once per process, not once per submit).
SUBMITTER = """
import contextlib, io, json, sys, time
from pathlib import Path
from gpujob.cli.app import app

sync, me, rounds = Path(sys.argv[1]), sys.argv[2], json.loads(sys.argv[3])
for r, args in enumerate(rounds):
    (sync / f"ready-{r}-{me}").touch()
    while not (sync / f"go-{r}").exists():
        time.sleep(0.001)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            app(args=args, prog_name="gpujob")
            rc = 0
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    (sync / f"result-{r}-{me}.json").write_text(json.dumps({"rc": rc, "out": out.getvalue(), "err": err.getvalue()}))
"""

SPEC = """apiVersion: gpujob/v1
kind: command
name: race
command: [sh, -c, "while [ ! -e {stop} ]; do sleep 0.1; done"]
output:
  dir: outputs/default
"""


def _wait_for(predicate):
    return wait_for(predicate, timeout=60.0, every=0.02)


def _jobs_on(out: Path) -> list:
    return [j for j in Registry().list() if j.output_dir == str(out)]


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_concurrent_submits_to_one_output_dir_start_exactly_one_job(tmp_path):
    """Each job runs until the test ends, so every submit of a round finds its directory taken."""
    stop, sync = tmp_path / "stop", tmp_path / "sync"
    sync.mkdir()
    (tmp_path / "out").mkdir()
    spec = tmp_path / "race.yaml"
    spec.write_text(SPEC.format(stop=stop))
    script = tmp_path / "submitter.py"
    script.write_text(SUBMITTER)
    outs, spellings = [], []
    for r in range(ROUNDS):  # one directory per round, written four ways by the submitters
        out = (tmp_path / "out" / f"r{r}").resolve()
        (tmp_path / f"link-r{r}").symlink_to(out, target_is_directory=True)
        outs.append(out)
        spellings.append([f"out/r{r}", f"./out/r{r}/", str(out), f"link-r{r}"])
    procs = []
    for i in range(SUBMITTERS):
        rounds = [["submit", str(spec), "--set", f"output.dir={spellings[r][i % 4]}"] for r in range(ROUNDS)]
        procs.append(subprocess.Popen([sys.executable, str(script), str(sync), str(i), json.dumps(rounds)],
                                      cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    try:
        for r, out in enumerate(outs):
            _wait_for(lambda r=r: all((sync / f"ready-{r}-{i}").exists() for i in range(SUBMITTERS)))
            (sync / f"go-{r}").touch()
            _wait_for(lambda r=r: all((sync / f"result-{r}-{i}.json").exists() for i in range(SUBMITTERS)))
            results = [json.loads((sync / f"result-{r}-{i}.json").read_text()) for i in range(SUBMITTERS)]

            accepted = [res for res in results if res["rc"] == 0]
            assert len(accepted) == 1, f"round {r}: {len(accepted)} of {SUBMITTERS} submits accepted: {results}"
            winner = re.search(r"submitted job (\w+)", accepted[0]["out"]).group(1)
            for res in results:
                if res is accepted[0]:
                    continue
                text = res["out"] + res["err"]
                assert res["rc"] == 2, text
                assert f"output directory {out} is in use by" in text and winner in text, text
                assert "Traceback" not in text and "bug in gpujob" not in text, text
            # one job was recorded for the directory, and it is the one that runs
            assert [j.id for j in _jobs_on(out)] == [winner]
            _wait_for(lambda winner=winner: Registry().get(winner).status == "running")
    finally:
        stop.touch()
        deadline = time.monotonic() + 10  # done with their rounds, they exit; stuck in one, they are stopped
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
    _wait_for(lambda: not any(j.active for j in Registry().list()))
    assert len(Registry().list()) == ROUNDS


def test_a_plain_burst_of_cli_submits_also_starts_one_job(tmp_path):
    """Without the start line: `gpujob submit` processes as a shell loop with `&` would start them."""
    stop = tmp_path / "stop"
    spec = tmp_path / "race.yaml"
    spec.write_text(SPEC.format(stop=stop))
    out = (tmp_path / "shared").resolve()
    procs = [subprocess.Popen([sys.executable, "-m", "gpujob", "submit", str(spec), "--set", "output.dir=shared"],
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(SUBMITTERS)]
    try:
        codes = sorted(p.wait(timeout=60) for p in procs)
        assert codes == [0] + [2] * (SUBMITTERS - 1), [p.communicate() for p in procs]
        assert len(_jobs_on(out)) == 1
    finally:
        stop.touch()
    _wait_for(lambda: not any(j.active for j in Registry().list()))


def _create(reg: Registry, out: str):
    return reg.create(name="x", kind="command", backend="local", spec={}, spec_path=None, output_dir=out,
                      exclusive_output=True)


@pytest.mark.parametrize("first, second", [
    ("/data/run", "/data/run/"),
    ("/data/./run", "/data/run"),
    ("s3://bucket/run/", "s3://bucket/run"),
])
def test_output_dirs_are_compared_normalised(first, second):
    from gpujob.errors import OutputDirInUse

    reg = Registry()
    holder = _create(reg, first)
    with pytest.raises(OutputDirInUse) as info:
        _create(reg, second)
    assert info.value.exit_code == 2 and holder.id in info.value.message and second in info.value.message
    reg.transition(holder.id, "succeeded")
    assert _create(reg, second).status == "queued"  # a finished job holds nothing


def test_a_symlinked_output_dir_is_the_same_directory(tmp_path):
    from gpujob.errors import OutputDirInUse

    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real, target_is_directory=True)
    reg = Registry()
    _create(reg, str(real))
    with pytest.raises(OutputDirInUse):
        _create(reg, str(tmp_path / "alias"))
    assert _create(reg, str(tmp_path / "other")).status == "queued"
    assert os.path.realpath(tmp_path / "alias") == str(real)
