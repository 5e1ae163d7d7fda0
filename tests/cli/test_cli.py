"""The CLI as a user meets it: help, validate, render, errors, exit codes, the live bar."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob import __version__
from gpujob.cli.app import app
from terminal import run_on_terminal

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "jobs" / "hello.yaml"
runner = CliRunner()


def gpujob(*args: str, **kw):
    return runner.invoke(app, list(args), **kw)


def test_version_and_help():
    assert gpujob("--version").output.strip() == f"gpujob {__version__}"
    help_text = gpujob("--help").output
    for command in ("validate", "render", "submit", "list", "status", "logs", "cancel", "schema"):
        assert command in help_text


@pytest.mark.parametrize("args", [["--help"], ["list"], ["status", "nope"]])
def test_fast_commands_import_no_heavy_library(args, tmp_path):
    probe = (
        "import sys, runpy\n"
        f"sys.argv = ['gpujob', *{args!r}]\n"
        "try:\n    runpy.run_module('gpujob', run_name='__main__')\nexcept SystemExit:\n    pass\n"
        "heavy = {'torch', 'transformers', 'datasets', 'kubernetes', 'docker', 'numpy', 'ruamel'}\n"
        "print('HEAVY', sorted(heavy & {m.split('.')[0] for m in sys.modules}))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**os.environ, "GPUJOB_HOME": str(tmp_path)})
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr


def test_validate_a_good_file():
    result = gpujob("validate", str(HELLO))
    assert result.exit_code == 0
    assert "✓" in result.output and "'hello'" in result.output


def test_validate_reports_each_bad_file_and_exits_2(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: gpujob/v1\nkind: command\ncommand: [echo]\ntraining:\n  learnig_rate: 1e-5\n")
    result = gpujob("validate", str(HELLO), str(bad))
    assert result.exit_code == 2
    assert "✓" in result.output  # the good one is still reported
    assert "bad.yaml:5" in result.output and "learnig_rate" in result.output
    assert "learning_rate" in result.output  # did you mean
    assert "Traceback" not in result.output


def test_validate_with_set_override(tmp_path):
    result = gpujob("validate", str(HELLO), "--set", "limits.max_runtime=soon")
    assert result.exit_code == 2 and "limits.max_runtime" in result.output


def test_validate_a_missing_file_is_a_user_error(tmp_path):
    result = gpujob("validate", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2 and "nope.yaml" in result.output and "Traceback" not in result.output


def test_render_shows_what_would_run_and_redacts_secrets(tmp_path, monkeypatch):
    monkeypatch.setenv("MY_API_TOKEN", "value-that-must-not-show")
    spec = tmp_path / "r.yaml"
    spec.write_text("apiVersion: gpujob/v1\nkind: command\nname: r\ncommand: [python, train.py, --lr, '1e-4']\n"
                    "runtime:\n  env: {STAGE: dev}\n  secrets: [MY_API_TOKEN]\nlimits:\n  max_runtime: 2h\n")
    result = gpujob("render", str(spec))
    assert result.exit_code == 0, result.output
    assert "command: python train.py --lr 1e-4" in result.output
    assert "STAGE=dev" in result.output and "MY_API_TOKEN=<from your environment" in result.output
    assert "value-that-must-not-show" not in result.output
    assert "7200 s" in result.output


def test_schema_is_json_with_the_yaml_key_names():
    schema = json.loads(gpujob("schema").output)
    assert "apiVersion" in schema["properties"] and "kind" in schema["required"]
    assert "training" in gpujob("schema", "--markdown").output


def test_host_backend_without_a_host_says_what_to_set_with_exit_2():
    result = gpujob("submit", str(HELLO), "--backend", "host")
    assert result.exit_code == 2
    assert "runtime.host" in result.output and "runtime.host_type" in result.output
    nomad = gpujob("render", str(HELLO), "--backend", "nomad")
    assert nomad.exit_code == 2 and "unknown backend 'nomad'; one of: local, docker, kubernetes, host" in nomad.output


def test_train_jobs_need_the_runner_libraries(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    result = gpujob("submit", str(ROOT / "jobs" / "train-el-small.yaml"))
    assert result.exit_code == 2
    assert "Whisper runner" in result.output and "torch" in result.output and "gpujob[runner]" in result.output


def test_train_job_secrets_are_checked_before_anything_starts(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = gpujob("submit", str(ROOT / "jobs" / "train-el-small.yaml"))
    assert result.exit_code == 2 and "HF_TOKEN is not set" in result.output


def test_unknown_job_is_a_user_error_and_no_jobs_is_an_answer():
    empty = gpujob("status")
    assert empty.exit_code == 0 and "no jobs yet" in empty.output
    assert (gpujob("status", "--json").output.strip(), gpujob("list", "--json").output.strip()) == ("null", "[]")
    assert gpujob("status", "zz9", "--json").exit_code == 2
    result = gpujob("logs", "zz9")
    assert result.exit_code == 2 and "no job matches 'zz9'" in result.output and "gpujob list" in result.output
    assert gpujob("cancel", "zz9").exit_code == 2
    assert "no jobs yet" in gpujob("list").output


def test_list_and_status_json(tmp_path):
    spec = tmp_path / "j.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: j\ncommand: [echo, ok]\noutput:\n  dir: {tmp_path}/o\n")
    assert gpujob("submit", str(spec), "--follow").exit_code == 0
    listed = json.loads(gpujob("list", "--json").output)
    assert listed[0]["name"] == "j" and listed[0]["status"] == "succeeded"
    status = json.loads(gpujob("status", "j", "--json").output)
    assert status["exit_code"] == 0 and status["output_dir"] == f"{tmp_path}/o"


def test_follow_on_a_terminal_draws_a_live_bar(tmp_path):
    """A real pseudo-terminal: the bar shows step/total, it/s, ETA, loss and WER; raw event lines do not."""
    env = {**os.environ, "GPUJOB_HOME": str(tmp_path / "home"), "COLUMNS": "120", "TERM": "xterm"}
    cmd = [sys.executable, "-m", "gpujob", "submit", str(HELLO), "--follow",
           "--set", f"output.dir={tmp_path}/o", "--set", "command=[python, -m, gpujob.demo, --steps, '40']"]
    code, screen = run_on_terminal(cmd, env)
    assert code == 0, screen
    assert "step 40/40" in screen and "it/s" in screen and "ETA" in screen and "loss" in screen
    assert "WER" in screen and "━" in screen
    assert "@gpujob/v1" not in screen and "[progress]" not in screen
    assert "succeeded" in screen


from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_yaml_ish = st.lists(
    st.sampled_from(["apiVersion: gpujob/v1\n", "kind: command\n", "kind: train\n", "command: [a]\n",
                     "training:\n", "  max_steps: ", "  - ", "{", "[", "]", "}", ": ", "\t", "&a ", "*a",
                     "'", '"', "${X}", "\n", "-1", "1e-5", "no", "~", "---\n", "\x00", "é", "  "])
    | st.text(max_size=8),
    max_size=25,
).map("".join)


@given(text=_yaml_ish)
@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_validate_never_shows_a_traceback_for_random_yaml(tmp_path, text):
    spec = tmp_path / "random.yaml"
    spec.write_text(text, encoding="utf-8", errors="replace")
    result = gpujob("validate", str(spec))
    assert result.exit_code in (0, 2), result.output
    assert "Traceback" not in result.output and "internal error" not in result.output
    if result.exit_code == 2:
        assert "random.yaml" in result.output


def test_costs_under_a_cent_show_as_such_not_as_nothing():
    from gpujob.cli.display import money

    assert (money(0), money(0.0004), money(0.75 * 15 / 3600), money(1.234)) == ("$0.00", "<$0.01", "<$0.01", "$1.23")


def _commands(group=None, prefix=()):
    import typer.main

    group = group or typer.main.get_command(app)
    for name, command in group.commands.items():
        if hasattr(command, "commands"):
            yield from _commands(command, (*prefix, name))
        else:
            yield (*prefix, name)


def test_help_shows_plain_names_and_offers_completion():
    """No `[[JOB]]`, `FILE... <list[str]>` or `<int range>`: what a new user met (issue 16)."""
    assert "--install-completion" in gpujob("--help").output
    commands = list(_commands())
    assert ("logs",) in commands and ("host", "up") in commands
    for command in commands:
        text = gpujob(*command, "--help").output
        assert not [bad for bad in ("[[", "]]", "<list[", "range>", "... <", "{FILE...}", "<str>", "<int>", "<float>", "<path>", "<bool>") if bad in text], (command, text)
        arguments = text.split("Arguments:")[1].split("Options:")[0] if "Arguments:" in text else ""
        assert "<" not in arguments, (command, arguments)


def test_a_backend_typed_the_way_people_say_it_gets_a_suggestion():
    for typed, meant in (("k8s", "kubernetes"), ("kubernets", "kubernetes"), ("lambda", "host"), ("dokcer", "docker")):
        result = gpujob("render", str(HELLO), "--backend", typed)
        assert result.exit_code == 2 and f"did you mean --backend {meant}?" in result.output, result.output


def test_render_is_the_same_every_time_and_says_the_id_is_a_placeholder():
    from gpujob.service import PREVIEW_ID

    for backend in ("local", "docker", "kubernetes"):
        first, second = gpujob("render", str(HELLO), "--backend", backend), gpujob("render", str(HELLO), "--backend", backend)
        assert first.exit_code == 0 and first.output == second.output, backend
        assert PREVIEW_ID in first.output and f"{PREVIEW_ID} stands for the job id" in first.output


def test_cost_is_unknown_where_the_price_is_unknown_and_logs_names_its_all_workers_flag(tmp_path):
    spec = tmp_path / "j.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: j\ncommand: [echo, ok]\noutput:\n  dir: {tmp_path}/o\n")
    assert gpujob("submit", str(spec), "--follow").exit_code == 0
    header, row = gpujob("list").output.splitlines()[:2]
    cost = row[header.index("COST"):].split()[0]
    assert cost == "unknown", row
    status = gpujob("status", "j").output
    assert "cost unknown" in status and "$0.00" not in status
    assert "cost     unknown: no price for this job" in status
    assert gpujob("logs", "j", "--all-workers").exit_code == 0
    assert "--all-workers" in gpujob("logs", "--help").output
