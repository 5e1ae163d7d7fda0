"""A docker or host job given secrets runs under the container's masking script (mask.py): what it prints
reaches the engine's log with every form of each secret masked, and the job still gets its signals and
ends as it would without it. These run the container's real entry (sh) and the files the plan copies in,
in a folder here standing in for /run/gpujob; the conformance tests run the same in real containers."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.backends.docker.container import ENTRY, MASK_FILE, RUN_DIR, SECRET_NAMES_VAR, plan
from gpujob.backends.docker.mask_entry import Masker
from gpujob.redact import Redactor

from test_docker_plan import request

TOKEN = "hf_Mask3dT0kenValue"
PEM = "-----BEGIN KEY-----\nQUJDREVGR0hJSktMTU5PUFFSU1RVVldY\nWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2\n-----END KEY-----"


def start(tmp_path: Path, code: str, secrets: dict[str, str] | None, **popen) -> subprocess.Popen:
    """The container's entry, over the files the plan copies in (under ``tmp_path`` for /run/gpujob),
    running ``python -c code`` with the plan's environment."""
    root = tmp_path / "root"
    p = plan(request(tmp_path, gpus=0, max_runtime_s=None), local=True, secrets=secrets)
    for path, data, mode in p.files:
        target = root / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        target.chmod(mode | 0o200)  # the entry deletes the secrets file, as the job's user may
    entry = ENTRY.replace(RUN_DIR, str(root / RUN_DIR.lstrip("/")))
    env = {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", **p.create["environment"]}
    return subprocess.Popen(["/bin/sh", "-c", entry, "gpujob-entry", sys.executable, "-c", code], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def run(tmp_path: Path, code: str, secrets: dict[str, str] | None = None, timeout: float = 60):
    proc = start(tmp_path, code, secrets)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


def test_a_secret_printed_in_any_form_is_masked_on_stdout_and_stderr_and_the_exit_code_is_the_jobs(tmp_path):
    code = ("import json, os, sys; t = os.environ['HF_TOKEN']; print('token', t); print('json', json.dumps({'k': t}));"
            "print('repr', repr(t)); print('err', t, file=sys.stderr); print('kept as printed: hf_, é');"
            "print('names var:', os.environ.get('GPUJOB_SECRET_NAMES')); sys.exit(3)")
    code_, out, err = run(tmp_path, code, {"HF_TOKEN": TOKEN})
    assert code_ == 3, err
    assert TOKEN not in out + err
    assert "token ***" in out and 'json {"k": "***"}' in out and "repr '***'" in out and "err ***" in err
    assert "kept as printed: hf_, é" in out
    assert "names var: None" in out  # the job's environment is its own: the names are the script's
    assert not (tmp_path / "root" / "run/gpujob/secrets.env").exists()


def test_a_multi_line_key_printed_in_pieces_is_masked(tmp_path):
    code = ("import os, sys, time; k = os.environ['SSH_KEY']\n"
            "for i in range(0, len(k), 7):\n    sys.stdout.write(k[i:i + 7]); sys.stdout.flush(); time.sleep(0.01)\n"
            "print(); print('line two:', k.splitlines()[1])")
    code_, out, _ = run(tmp_path, code, {"SSH_KEY": PEM})
    assert code_ == 0
    assert "QUJDREVGR0hJSktMTU5PUFFSU1RVVldY" not in out and "WVphYmNk" not in out
    assert "***" in out and "line two: ***" in out


def test_without_secrets_the_job_runs_as_before_with_no_script(tmp_path):
    code_, out, _ = run(tmp_path, "import sys; print(sys.argv, flush=True)", {})
    assert code_ == 0 and "mask.py" not in out
    p = plan(request(tmp_path, gpus=0), local=True, secrets={})
    assert SECRET_NAMES_VAR not in p.create["environment"] and MASK_FILE not in {f[0] for f in p.files}


def test_the_plan_names_the_secrets_never_their_values(tmp_path):
    p = plan(request(tmp_path, gpus=0), local=True, secrets={"HF_TOKEN": TOKEN, "WANDB_API_KEY": "w4ndb-key"})
    assert p.create["environment"][SECRET_NAMES_VAR] == "HF_TOKEN,WANDB_API_KEY"
    assert TOKEN not in json.dumps(p.create) and "w4ndb-key" not in json.dumps(p.create)
    dry = plan(request(tmp_path, gpus=0), local=True)  # the dry run (render) shows the same
    assert dry.create["environment"][SECRET_NAMES_VAR] == "HF_TOKEN"


def test_sigterm_reaches_the_jobs_handler_which_finishes_and_its_words_are_kept(tmp_path):
    code = ("import os, signal, sys, time\n"
            "def bye(*_):\n    print('handler ran, token', os.environ['HF_TOKEN'], flush=True); sys.exit(0)\n"
            "signal.signal(signal.SIGTERM, bye); print('ready', flush=True); time.sleep(60)")
    proc = start(tmp_path, code, {"HF_TOKEN": TOKEN})
    assert proc.stdout.readline() == b"ready\n"
    proc.send_signal(signal.SIGTERM)  # as docker-init passes on docker stop's
    out, _ = proc.communicate(timeout=20)
    assert proc.returncode == 0 and out == b"handler ran, token ***\n"


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM])
def test_a_job_killed_by_a_signal_ends_the_script_by_the_same_signal(tmp_path, signum):
    code = f"import os; print('bye', flush=True); os.kill(os.getpid(), {int(signum)})"
    code_, out, _ = run(tmp_path, code, {"HF_TOKEN": TOKEN})
    assert code_ == -signum and out == "bye\n"


def test_a_process_the_job_left_holding_its_output_does_not_keep_the_script_running(tmp_path):
    code = ("import subprocess, sys; subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)']);"
            "print('parent done', flush=True)")
    started = time.monotonic()
    proc = start(tmp_path, code, {"HF_TOKEN": TOKEN}, start_new_session=True)
    try:
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 15
        assert proc.stdout.readline() == b"parent done\n"
    finally:
        os.killpg(proc.pid, signal.SIGKILL)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pieces=st.lists(st.sampled_from([TOKEN, PEM, "\n", "\r", "x", "é", "hf_", TOKEN[:6], "\\u0068", " "]),
                       max_size=30),
       cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=8),
       junk=st.binary(max_size=6))
def test_masking_does_not_depend_on_how_the_output_is_cut_and_changes_nothing_else(pieces, cuts, junk):
    """Any output, cut into chunks anywhere (even inside a UTF-8 character or a secret): no secret line
    comes through, the result is the same for every cut, and output holding no secret reads the same
    (bytes that are not UTF-8 read as U+FFFD, as gpujob reads every log)."""
    redactor = Redactor([TOKEN, PEM])
    data = "".join(pieces).encode() + junk

    def masked(chunks: list[bytes]) -> bytes:
        m = Masker(redactor)
        return b"".join(m.feed(c) for c in chunks) + m.flush()

    bounds = sorted({0, len(data), *(c for c in cuts if c < len(data))})
    chunks = [data[a:b] for a, b in zip(bounds, bounds[1:])]
    whole, cut = masked([data]), masked(chunks)
    assert cut == whole
    text = whole.decode("utf-8", "replace")
    assert TOKEN not in text and all(line not in text for line in PEM.splitlines()[1:3])
    if TOKEN not in "".join(pieces) and not any(line in "".join(pieces) for line in PEM.splitlines()):
        assert whole.decode("utf-8", "replace") == data.decode("utf-8", "replace")
