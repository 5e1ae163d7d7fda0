"""Scripts use gpujob: every command that prints a result has --json that parses; submit -q prints
the id alone; the shell completes job ids, sweep ids, host names and backends; config.yaml sets
defaults, the environment overrides it, `gpujob config` says where each value comes from."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry

ROOT = Path(__file__).resolve().parents[2]
HELLO = str(ROOT / "jobs" / "hello.yaml")
runner = CliRunner()


def gpujob(*args: str, **kw):
    return runner.invoke(app, list(args), **kw)


def quick_spec(tmp_path: Path, name: str = "quick", runtime: str = "") -> Path:
    spec = tmp_path / f"{name}.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: {name}\ncommand: [python, -c, 'print(1)']\n"
                    f"output: {{dir: {tmp_path / ('out-' + name)}}}\n{runtime}")
    return spec


def test_submit_quiet_prints_only_the_id_and_json_the_job(tmp_path):
    quiet = gpujob("submit", str(quick_spec(tmp_path, "a")), "-q")
    assert quiet.exit_code == 0, quiet.output
    job_id = quiet.stdout.strip()
    assert "\n" not in job_id and Registry().get(job_id).name == "a"
    as_json = gpujob("submit", str(quick_spec(tmp_path, "b")), "--json")
    assert as_json.exit_code == 0, as_json.output
    job = json.loads(as_json.stdout)
    assert job["name"] == "b" and job["backend"] == "local" and Registry().get(job["id"]).name == "b"


def test_submit_json_with_follow_is_refused_before_anything_starts(tmp_path):
    result = gpujob("submit", str(quick_spec(tmp_path)), "--json", "--follow")
    assert result.exit_code == 2 and "--follow" in result.output and Registry().list() == []


@pytest.mark.parametrize("args", [
    ["validate", HELLO, "--json"],
    ["render", HELLO, "--json"],
    ["render", HELLO, "--backend", "kubernetes", "--json"],
    ["list", "--json"],
    ["config", "--json"],
    ["prune", "--dry-run", "--json"],
])
def test_json_outputs_parse(args):
    result = gpujob(*args)
    assert result.exit_code == 0, result.output
    json.loads(result.stdout)


def test_validate_json_lists_each_file_and_its_problems(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("apiVersion: gpujob/v1\nkind: command\ncommand: [echo]\nlimits: {max_runtime: soon}\n")
    result = gpujob("validate", HELLO, str(bad), "--json")
    assert result.exit_code == 2
    good, wrong = json.loads(result.stdout)
    assert good["valid"] and not wrong["valid"] and any("limits.max_runtime" in p for p in wrong["problems"])


def test_render_json_names_the_problem_and_exits_2(tmp_path):
    result = gpujob("render", HELLO, "--set", "limits.max_cost=5", "--json")
    assert result.exit_code == 2
    assert any("limits.max_cost" in p for p in json.loads(result.stdout)["problems"])


def test_cancel_json_and_sweep_json(tmp_path):
    spec = quick_spec(tmp_path, "sw")
    result = gpujob("sweep", str(spec), "--grid", "limits.max_runtime=1m,2m", "--json")
    assert result.exit_code == 0, result.output
    sweep = json.loads(result.stdout)
    assert len(sweep["jobs"]) == 2 and {j["combination"] for j in sweep["jobs"]} == \
        {"limits.max_runtime=1m", "limits.max_runtime=2m"}
    job_id = sweep["jobs"][0]["id"]
    cancelled = json.loads(gpujob("cancel", job_id, "--json").stdout)
    assert cancelled["id"] == job_id and cancelled["status"] in ("cancelled", "succeeded")


def test_host_types_json_parses(monkeypatch):
    from lambda_emulator import LambdaEmulator  # tests/support

    with LambdaEmulator() as api:
        monkeypatch.setenv("GPUJOB_LAMBDA_API_URL", api.url)
        monkeypatch.setenv("LAMBDA_API_KEY", api.api_key)
        result = gpujob("host", "types", "--json")
    assert result.exit_code == 0, result.output
    types = json.loads(result.stdout)
    assert types and {"name", "gpus", "price_per_hour", "regions_with_capacity"} <= set(types[0])


# ----------------------------------------------------------------------------- completion


def _complete(words: str, tmp_home: Path) -> list[str]:
    """What bash completion offers after ``gpujob <words>`` (typer's protocol, as the shell runs it)."""
    env = {**os.environ, "_GPUJOB_COMPLETE": "complete_bash", "COMP_WORDS": f"gpujob {words}",
           "COMP_CWORD": str(len(words.split(" "))), "GPUJOB_HOME": str(tmp_home)}
    out = subprocess.run([sys.executable, "-c", "from gpujob.cli.app import app; app(prog_name='gpujob')"],
                         env=env, capture_output=True, text=True, timeout=60)
    return out.stdout.split()


def test_completion_of_job_ids_sweep_ids_hosts_and_backends(gpujob_home, tmp_path):
    registry = Registry()
    a = registry.create(name="train-a", kind="command", backend="local", spec={}, spec_path=None, output_dir=None,
                        sweep_id="swp123")
    b = registry.create(name="eval-b", kind="command", backend="local", spec={}, spec_path=None, output_dir=None)
    registry.add_host(name="a100-greek", provider="lambda", instance_type="gpu_1x_a100", state="ready",
                      ssh_user="ubuntu", ssh_port=22, idle_minutes=15)
    registry.close()
    assert set(_complete("status ", gpujob_home)) == {a.id, b.id}
    assert _complete(f"logs {a.id[:3]}", gpujob_home) == [a.id]
    assert set(_complete("rm ", gpujob_home)) == {a.id, b.id}
    assert _complete("list --sweep sw", gpujob_home) == ["swp123"]
    assert _complete("host down a1", gpujob_home) == ["a100-greek"]
    assert _complete("submit x.yaml --backend k", gpujob_home) == ["kubernetes"]


def test_completion_makes_no_home_and_offers_nothing_without_one(gpujob_home):
    assert _complete("status ", gpujob_home) == []
    assert not gpujob_home.exists()


# ----------------------------------------------------------------------------- config.yaml


def test_config_defaults_fill_what_the_spec_leaves_out(gpujob_home, tmp_path, monkeypatch):
    gpujob_home.mkdir()
    (gpujob_home / "config.yaml").write_text("backend: kubernetes\nnamespace: ml-team\nimage: reg.example/gj:1\n")
    spec = quick_spec(tmp_path)  # names no backend
    rendered = gpujob("render", str(spec), "--json")
    manifest = json.loads(rendered.stdout)["rendered"]
    assert "namespace: ml-team" in manifest and "image: reg.example/gj:1" in manifest
    monkeypatch.setenv("GPUJOB_IMAGE", "reg.example/gj:2")  # the environment wins over the file
    assert "image: reg.example/gj:2" in json.loads(gpujob("render", str(spec), "--json").stdout)["rendered"]
    own = quick_spec(tmp_path, "own", "runtime: {backend: kubernetes, namespace: theirs}\n")  # the spec wins
    assert "namespace: theirs" in json.loads(gpujob("render", str(own), "--json").stdout)["rendered"]
    local = gpujob("render", str(spec), "--backend", "local", "--json")  # --backend wins; no image there
    assert json.loads(local.stdout)["backend"] == "local"
    shown = json.loads(gpujob("config", "--json").stdout)
    by_key = {k["key"]: k for k in shown["keys"]}
    assert by_key["namespace"]["source"] == str(gpujob_home / "config.yaml")
    assert by_key["image"]["source"] == "$GPUJOB_IMAGE" and by_key["image"]["value"] == "reg.example/gj:2"
    assert by_key["stage"]["source"] == "not set"


@pytest.mark.parametrize("text, words", [
    ("backend: lamda\n", "backend: Input should be"),
    ("namspace: ml\n", "namspace: not a config key; did you mean namespace?"),
    ("namespace: 7\n", "namespace: Input should be a valid string"),
    ("stage: my-bucket\n", "stage: Value error, 'my-bucket' is not a bucket URI"),
    ("- backend\n", "must be a mapping"),
    ("backend: [\n", "config.yaml"),
])
def test_a_bad_config_file_names_the_file_and_key(text, words, gpujob_home):
    gpujob_home.mkdir()
    (gpujob_home / "config.yaml").write_text(text)
    for args in (["config"], ["validate", HELLO]):
        result = gpujob(*args)
        assert result.exit_code == 2, result.output
        assert words in result.output and "Traceback" not in result.output


def test_reading_config_imports_no_heavy_library_when_there_is_none(tmp_path):
    probe = ("import sys\nfrom gpujob import user_config\nuser_config.load()\n"
             "print('HEAVY', sorted({'pydantic', 'ruamel'} & {m.split('.')[0] for m in sys.modules}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GPUJOB_")}
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                         env={**env, "GPUJOB_HOME": str(tmp_path)})
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    started = time.monotonic()
    gpujob("config")
    assert time.monotonic() - started < 2
