"""`gpujob ui` as a user runs it: a real server process (tests/support/ui_server.py) on a free port,
reached over real HTTP(S): the URL it prints, what it imports, the bind rules (token, TLS, --insecure),
the live log and progress of a running job, and what its own log never holds."""

from __future__ import annotations

import datetime
import json
import os
import re
import socket
import stat
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from gpujob_cli import GpujobCli
from polling import wait_for
from ui_server import UiServer, env_with

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "jobs" / "hello.yaml"
SECRET = "hf_ServerLogSecret0987654321zyxw"


@pytest.fixture
def env(gpujob_home) -> dict[str, str]:
    return env_with(gpujob_home)


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_it_prints_its_url_serves_imports_no_torch_and_stops_on_ctrl_c(tmp_path, env, gpujob_home):
    cli = GpujobCli(tmp_path, env)
    job_id = cli.submit(HELLO, "--follow", "--set", "output.dir=out/hello")
    server = UiServer(tmp_path, env, python=[sys.executable, "-X", "importtime", "-m", "gpujob"]).start()
    try:
        assert re.fullmatch(r"http://127\.0\.0\.1:\d+/", server.printed)
        with httpx.Client(base_url=server.url, timeout=30) as c:
            for path in ("/", f"/jobs/{job_id}", f"/jobs/{job_id}/curves.png", f"/compare?jobs={job_id}", "/hosts",
                         "/api/jobs", f"/api/jobs/{job_id}/metrics"):
                assert c.get(path).status_code == 200, path
            assert f'data-job="{job_id}"' in c.get("/").text
    finally:
        code = server.stop()
    assert code == 0, server.log()
    imported = {line.split("|")[-1].strip() for line in server.err if line.startswith("import time:")}
    assert "starlette" in imported and "matplotlib" in imported  # the probe sees the imports...
    assert not {m for m in imported if m.split(".")[0] in ("torch", "transformers", "datasets")}  # ...and no torch


def test_gpujob_help_imports_no_web_library(env):
    probe = ("import sys, runpy\nsys.argv = ['gpujob', '--help']\n"
             "try:\n    runpy.run_module('gpujob', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('WEB', sorted({'starlette', 'uvicorn', 'jinja2', 'gpujob'} & {m.split('.')[0] for m in sys.modules}"
             " - {'gpujob'}), 'gpujob.ui' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env)
    assert "WEB [] False" in out.stdout, out.stdout + out.stderr
    assert "ui" in subprocess.run([sys.executable, "-m", "gpujob", "--help"], capture_output=True, text=True,
                                  env=env).stdout


def test_a_non_loopback_address_without_tls_is_refused_unless_insecure(tmp_path, env, gpujob_home):
    r = subprocess.run([sys.executable, "-m", "gpujob", "ui", "--host", "0.0.0.0", "--port", "0"], capture_output=True,
                       text=True, env=env, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "not a loopback address" in r.stderr and "--insecure" in r.stderr and "--certfile" in r.stderr
    assert "Traceback" not in r.stderr
    assert not (gpujob_home / "ui-token").exists()


def test_insecure_off_loopback_makes_a_0600_token_printed_once_and_401_without_it(tmp_path, env, gpujob_home):
    with UiServer(tmp_path, env, "--host", "0.0.0.0", "--insecure") as first:
        token_file = gpujob_home / "ui-token"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600
        token = token_file.read_text().strip()
        assert first.printed.endswith(f"/?token={token}")
        with httpx.Client(base_url=first.url, timeout=30) as c:
            assert c.get("/").status_code == 401
            assert c.get("/api/jobs").status_code == 401
            assert c.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
            r = c.get(f"/?token={token}", follow_redirects=True)  # the printed URL, as a browser opens it
            assert r.status_code == 200 and "<table id=\"jobs\"" in r.text
            assert c.post("/jobs/x/cancel", data={"confirm": "yes"}).status_code == 403
    with UiServer(tmp_path, env, "--host", "0.0.0.0", "--insecure") as second:
        assert "token" not in second.printed  # printed once, when made
        second.wait_for_line(str(gpujob_home / "ui-token"))  # where it is, on stderr
    assert token not in second.log() and token not in first.log().replace(first.printed, "")


def _self_signed(tmp_path: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
            .not_valid_after(now + datetime.timedelta(days=1)).sign(key, hashes.SHA256()))
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    keyfile.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    return certfile, keyfile


def test_tls_off_loopback_serves_https_with_the_token(tmp_path, env, gpujob_home):
    certfile, keyfile = _self_signed(tmp_path)
    with UiServer(tmp_path, env, "--host", "0.0.0.0", "--certfile", str(certfile), "--keyfile", str(keyfile)) as server:
        assert server.printed.startswith("https://")
        token = (gpujob_home / "ui-token").read_text().strip()
        with httpx.Client(base_url=server.url, verify=False, timeout=30) as c:
            assert c.get("/").status_code == 401
            r = c.get(f"/?token={token}", follow_redirects=False)
            assert r.status_code == 303 and "Secure" in r.headers["set-cookie"]
            assert c.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        with pytest.raises(httpx.HTTPError):  # plain HTTP is not served there
            httpx.get(server.url.replace("https://", "http://"), timeout=5)


def test_a_port_in_use_is_said_plainly(tmp_path, env):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        r = subprocess.run([sys.executable, "-m", "gpujob", "ui", "--port", str(port)], capture_output=True, text=True,
                           env=env, timeout=60)
    assert r.returncode == 2 and f"port {port}" in r.stderr and "--port 0" in r.stderr, r.stderr


def _events(response: httpx.Response):
    kind = None
    for line in response.iter_lines():
        if line.startswith("event: "):
            kind = line[7:]
        elif line.startswith("data: ") and kind:
            yield kind, json.loads(line[6:])
            kind = None


def test_a_running_jobs_log_and_progress_arrive_live_and_no_secret_reaches_the_server_log(tmp_path, gpujob_home):
    env = env_with(gpujob_home, HF_TOKEN=SECRET)
    cli = GpujobCli(tmp_path, env)
    command = "[python, -m, gpujob.demo, --steps, '400', --step-time, '0.05', --eval-every, '50']"
    job_id = cli.submit(HELLO, "--set", f"command={command}", "--set", "runtime.secrets=[HF_TOKEN]",
                        "--set", "output.dir=out/live")
    with UiServer(tmp_path, env) as server:
        try:
            with httpx.Client(base_url=server.url, timeout=30) as c:
                wait_for(lambda: cli.status(job_id)["status"] == "running", timeout=30, what="the job to run")
                seen: dict[str, list] = {"log": [], "progress": []}
                with c.stream("GET", f"/jobs/{job_id}/stream") as r:
                    assert r.headers["content-type"].startswith("text/event-stream")
                    for kind, data in _events(r):
                        seen.setdefault(kind, []).append(data)
                        stepped = [p for p in seen["progress"] if p.get("step") is not None]
                        if len(seen["log"]) >= 3 and len(stepped) >= 2 and stepped[-1]["step"] > stepped[0]["step"]:
                            break  # (a job may run a moment before it reports its first step)
                first, *later = seen["log"]
                assert first["reset"] and not any(d["reset"] for d in later)
                assert any(line.startswith("[progress] step") for d in later for line in d["lines"])  # new lines
                steps = [p["step"] for p in seen["progress"] if p.get("step") is not None]
                assert steps[-1] > steps[0] and all(p["status"] == "running" for p in seen["progress"])
                # cancel from the page's form, with its CSRF token
                page = c.get(f"/jobs/{job_id}").text
                csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
                r = c.post(f"/jobs/{job_id}/cancel", data={"csrf": csrf, "confirm": "yes"})
                assert r.status_code == 303
                assert cli.status(job_id)["status"] == "cancelled"
                c.get("/jobs/nosuch")
                c.get(f"/jobs/{job_id}?token={SECRET}")
        finally:
            cli.gpujob("cancel", job_id, "--grace", "1")
    assert SECRET not in server.log()
