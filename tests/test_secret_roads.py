"""Secrets by another road (issue 29, finding 5): a listed secret's value given with --set (inside
`command`) was redacted in the log but stored in spec.json and the registry and shown on the
dashboard; a job read notify.webhook_env's URL from its parent's environment (/proc/$PPID/environ).
Now a spec that holds a listed secret's value is refused before anything is stored, and the webhook
URL is in no environment of any ancestor of the job: the supervisor gets it on its stdin."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.registry import Registry
from gpujob.spec import SpecError, load_spec
from webhook import Hook

ROOT = Path(__file__).resolve().parents[1]
HELLO = ROOT / "jobs" / "hello.yaml"
SECRET = "hf_road2_Zk8q3LmNpQ7rT1vW"


def stored_files(home: Path) -> list[Path]:
    return [p for p in home.rglob("*") if p.is_file()] if home.exists() else []


def test_a_secret_given_with_set_inside_command_is_refused_and_nothing_is_stored(tmp_path, monkeypatch):
    """The report's example: the value reached spec.json, the registry and the dashboard's spec page."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    result = CliRunner().invoke(app, ["submit", str(HELLO), "--set", "runtime.secrets=[HF_TOKEN]",
                                      "--set", f'command=[sh, -c, "curl -H \'Authorization: {SECRET}\' x"]'])
    assert result.exit_code == 2, result.output
    assert "command[2]: holds the value of HF_TOKEN (runtime.secrets)" in result.output
    assert "$HF_TOKEN" in result.output and SECRET not in result.output
    home = Path(os.environ["GPUJOB_HOME"])
    assert not (home / "registry.db").exists() or Registry().list() == []
    assert all(SECRET.encode() not in p.read_bytes() for p in stored_files(home))
    rendered = CliRunner().invoke(app, ["render", str(HELLO), "--set", "runtime.secrets=[HF_TOKEN]",
                                        "--set", f"description=token {SECRET}"])
    assert rendered.exit_code == 2 and SECRET not in rendered.output  # render shows no spec holding it either


# NEL and the Unicode line/paragraph separators are line breaks to YAML, which folds them to a space inside a
# quoted scalar: the --set value then no longer holds the secret (nothing to refuse, nothing leaked)
secret_values = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00\x85\u2028\u2029"),
                        min_size=8, max_size=40).filter(lambda v: len(v.strip()) >= 8)
placements = st.sampled_from(["command.2", "description", "runtime.env.EXTRA", "data_text"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=secret_values, where=placements, prefix=st.sampled_from(["", "tok=", "Bearer "]),
       form=st.sampled_from(["as is", "json", "repr"]))
def test_no_listed_secret_value_entering_through_set_gets_past_the_loader(value, where, prefix, form, monkeypatch):
    """The property: whatever the value (any text, quotes, backslashes, newlines, non-ASCII), wherever
    --set puts it and in any form the log redactor knows (as is, JSON-escaped, repr), the spec is
    refused with a problem naming the key and never the value; a refused spec is stored nowhere
    (submit, render and sweep all load it through the loader)."""
    monkeypatch.setenv("GJ_ROAD_SECRET", value)
    shown = {"as is": value, "json": json.dumps(value)[1:-1], "repr": repr(value)[1:-1]}[form]
    text = json.dumps(prefix + shown, ensure_ascii=False)  # a YAML double-quoted scalar: reads back as prefix + shown
    key = {"command.2": "command[2]", "data_text": "description"}.get(where, where)
    sets = ["runtime.secrets=[GJ_ROAD_SECRET]", f"{key}={text}"]
    if where == "command.2":
        sets.insert(0, "command=[sh, -c, x]")
    with pytest.raises(SpecError) as caught:
        load_spec(HELLO, sets)
    message = str(caught.value)
    assert "holds the value of GJ_ROAD_SECRET" in message or "looks like a credential" in message
    assert value not in message and value.strip() not in message


def test_a_spec_without_the_value_still_loads_and_the_secret_reaches_the_job_as_a_variable(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    loaded = load_spec(HELLO, ["runtime.secrets=[HF_TOKEN]", 'command=[sh, -c, "tool --token \\"$HF_TOKEN\\""]'])
    assert loaded.spec.runtime.secrets == ["HF_TOKEN"]


ANCESTORS = r"""
import os, sys
out, pid, seen = [], os.getppid(), []
while pid > 1:
    seen.append(pid)
    try:
        out.append(open(f"/proc/{pid}/environ", "rb").read())
    except OSError:
        pass
    pid = int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
open(sys.argv[1], "wb").write(b"\n".join(out))
print("ancestors", seen, flush=True)
print(open(sys.argv[2]).read(), flush=True)
"""


def test_a_job_finds_the_webhook_url_in_no_ancestor_environment_and_printing_it_is_redacted(tmp_path):
    """The report's example: the job read notify.webhook_env's URL at /proc/$PPID/environ. Here the
    CLI runs as its own process (`submit --follow`: it stays alive for the whole job) with the URL in
    its real environment; the job reads the environ of every ancestor (the supervisor, and whatever is
    above it) and prints the URL it got by another way (a file): the log shows ***."""
    hook = Hook()
    try:
        leak, url_file = tmp_path / "ancestors.env", tmp_path / "url.txt"
        url_file.write_text(hook.url)
        spec = tmp_path / "job.yaml"
        spec.write_text("apiVersion: gpujob/v1\nkind: command\nname: roads\n"
                        f"command: {json.dumps([sys.executable, '-c', ANCESTORS, str(leak), str(url_file)])}\n"
                        f"output: {{dir: {tmp_path / 'out'}}}\n"
                        "notify: {webhook_env: NOTIFY_ROAD_URL, on: [succeeded]}\n")
        env = {**os.environ, "NOTIFY_ROAD_URL": hook.url}
        done = subprocess.run([sys.executable, "-m", "gpujob", "submit", str(spec), "--follow"], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        ancestors = leak.read_bytes()
        assert ancestors, "the job read no ancestor's environment"
        assert hook.url.encode() not in ancestors
        assert b"NOTIFY_ROAD_URL" not in ancestors
        log = (next(Path(os.environ["GPUJOB_HOME"]).glob("jobs/*/output.log"))).read_text()
        assert "ancestors" in log and hook.url not in log and "***" in log
        from polling import wait_for
        wait_for(lambda: hook.posts, timeout=30, what="the notification")  # and it was still delivered
    finally:
        hook.close()
