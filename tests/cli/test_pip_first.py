"""A start from `pip install gpujob`: the example specs ship in the package (equal to jobs/), `gpujob
init` writes them, every hint the CLI prints works there; and the wheel alone, in a clean venv,
runs hello end to end."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import venv
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob import examples
from gpujob.cli.app import app

ROOT = Path(__file__).resolve().parents[2]
runner = CliRunner()


def test_the_packaged_examples_are_the_jobs_folder():
    shipped = sorted(p.name for p in (ROOT / "cli" / "gpujob" / "examples").glob("*.yaml"))
    assert shipped == sorted(p.name for p in (ROOT / "jobs").glob("*.yaml"))
    for name in shipped:
        assert (ROOT / "cli" / "gpujob" / "examples" / name).read_bytes() == (ROOT / "jobs" / name).read_bytes(), \
            f"cli/gpujob/examples/{name} differs from jobs/{name}: cp jobs/*.yaml cli/gpujob/examples/"


def test_init_writes_the_examples_and_says_what_next(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["init"])
    assert result.exit_code == 0, result.output
    for name in ("hello.yaml", "quickstart.yaml", "eval-el.yaml", "train-el-small.yaml",
                 "train-el-large-2nodes.yaml", "train-el-small-lambda.yaml", examples.SCHEMA_FILE):
        assert (tmp_path / "jobs" / name).is_file(), name
    assert "next: gpujob submit jobs/hello.yaml --follow" in result.output
    assert "$schema=job-spec.schema.json" in (tmp_path / "jobs" / "hello.yaml").read_text()
    json.loads((tmp_path / "jobs" / examples.SCHEMA_FILE).read_text())
    valid = runner.invoke(app, ["validate", *map(str, sorted((tmp_path / "jobs").glob("*.yaml")))])
    assert valid.exit_code == 0, valid.output


def test_init_keeps_a_changed_file_unless_forced(tmp_path):
    target = tmp_path / "mine"
    assert runner.invoke(app, ["init", str(target)]).exit_code == 0
    (target / "hello.yaml").write_text("# my own\n")
    again = runner.invoke(app, ["init", str(target), "--json"])
    assert json.loads(again.stdout)["kept"] == [str(target / "hello.yaml")]
    assert (target / "hello.yaml").read_text() == "# my own\n"
    assert runner.invoke(app, ["init", str(target), "--force"]).exit_code == 0
    assert (target / "hello.yaml").read_text() == examples.text("hello.yaml")


def test_init_into_a_file_is_a_user_error(tmp_path):
    (tmp_path / "f").write_text("x")
    result = runner.invoke(app, ["init", str(tmp_path / "f")])
    assert result.exit_code == 2 and "not a folder" in result.output


def test_every_spec_path_a_hint_names_is_one_init_writes():
    """The CLI's hints that name jobs/<file>.yaml name a file `gpujob init` writes to jobs/."""
    named = set()
    for path in (ROOT / "cli" / "gpujob").rglob("*"):
        if path.suffix in (".py", ".html") and "runner" not in path.parts:
            named |= set(re.findall(r"jobs/([\w.-]+\.yaml)", path.read_text(encoding="utf-8")))
    assert named and named <= set(examples.names())


@pytest.mark.slow
def test_the_wheel_alone_in_a_clean_venv_runs_hello(tmp_path):
    """pip wheel, then a venv with nothing but the wheel and its dependencies from PyPI: `gpujob init`,
    then `gpujob submit jobs/hello.yaml --follow` succeeds."""
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(dist), str(ROOT)],
                   check=True, timeout=300)
    wheel = next(dist.glob("gpujob-*.whl"))
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True, clear=True)
    python = env_dir / "bin" / "python"
    # nothing of the checkout on the path: pip would take it for gpujob installed already
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(GPUJOB_HOME=str(tmp_path / "home"), PATH=f"{env_dir / 'bin'}:{env.get('PATH', '')}")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)],
                   check=True, timeout=600, env=env)
    work = tmp_path / "work"
    work.mkdir()
    gpujob = str(env_dir / "bin" / "gpujob")
    where = subprocess.run([str(python), "-c", "import gpujob; print(gpujob.__file__)"], env=env, cwd=work,
                           capture_output=True, text=True)
    assert str(env_dir) in where.stdout, where.stdout + where.stderr  # the wheel's gpujob, not the checkout's
    init = subprocess.run([gpujob, "init"], env=env, cwd=work, capture_output=True, text=True, timeout=120)
    assert init.returncode == 0, init.stdout + init.stderr
    hint = re.search(r"next: (gpujob submit \S+ --follow)", init.stdout).group(1)
    run = subprocess.run(hint.split(), env=env, cwd=work, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "succeeded" in run.stderr
