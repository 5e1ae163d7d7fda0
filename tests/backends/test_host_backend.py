"""Rented hosts end to end through the `gpujob` command: `host up` launches an instance on the
Lambda API emulator (tests/support/lambda_emulator.py), provisions the stand-in host over real SSH (Debian's
sshd, tests/support/ssh_server.py), jobs run in containers on a real Docker engine reached through the SSH
tunnel, and the host's idle agent (run here with a clock the test moves on, and GPU readings the
test sets) terminates the instance through the emulated API.

What is real: SSH (client and server), Docker, the agent's code and its Docker and /proc probes,
the CLI. What is emulated: the Lambda Cloud API; on the stand-in host, what only a GPU machine has
(nvidia-smi, systemd, apt).
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from pathlib import Path

import pytest

from host_lab import INTERVAL_S, demo

pytest.importorskip("docker")
pytest.importorskip("paramiko")

SECRET = "hf_hOsT-not-a-real-token-0123456789abcdef"
IDLE_MIN = 3


def test_a_job_on_a_rented_host_and_the_host_terminated_once_idle_with_nothing_lost(lab, docker_engine):
    r = lab.up("--type", "gpu_1x_a10", "--idle", f"{IDLE_MIN}m", "--max-lifetime", "2h")
    assert "host box is ready" in r.stdout and "127.0.0.1" in r.stdout
    for step in ("nvidia driver", "docker", "nvidia container toolkit", "job image", "idle agent"):
        assert f"box: {step}:" in r.stderr
    [box] = lab.hosts()
    assert box["state"] == "ready" and box["type"] == "gpu_1x_a10" and box["price_per_hour"] > 0
    assert (lab.home / "known_hosts").read_text().startswith(box["instance_id"] + " ")

    spec = lab.spec("greek-demo", demo(30), secrets=["HF_TOKEN"])
    job_id = lab.submit(spec, env={"HF_TOKEN": SECRET})
    r = lab.gpujob("logs", "-f", job_id, timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "step 30/30" in r.stdout and "succeeded" in r.stderr
    st = lab.status(job_id)
    assert st["status"] == "succeeded" and st["backend"] == "host"
    assert st["cost_usd"] > 0
    # The outputs came back from the host, and the container is gone only after that.
    assert (Path(st["output_dir"]) / "metrics.json").exists()
    assert not docker_engine.client().containers.list(all=True, filters={"label": f"gpujob.dev/id={job_id}"})
    ended = st["finished_at"]

    # The agent: a minute between checks, the clock moved on a minute each time.
    agent = lab.agent(gpu_util=0)
    instance = box["instance_id"]
    terminated_at = None
    for _ in range(IDLE_MIN + 3):
        decision = agent.tick()
        if lab.emu.terminate_calls:
            terminated_at = lab.emu.terminate_calls[-1][0]
            break
        assert decision.action == "none", decision.summary()
        lab.clock.advance(INTERVAL_S)
    assert terminated_at is not None, "the idle host was never terminated"
    billed_after_job = terminated_at - ended
    print(f"billed after the last job: {billed_after_job:.1f} s (idle {IDLE_MIN * 60} s + one check {INTERVAL_S} s "
          f"at most); billed in all: {lab.emu.billed_seconds(box['instance_id']):.1f} s")
    assert IDLE_MIN * 60 <= billed_after_job <= IDLE_MIN * 60 + INTERVAL_S + 5
    assert lab.emu.terminate_calls == [(terminated_at, [instance])]

    assert lab.hosts("--all")[0]["state"] in ("terminating", "terminated")
    lab.clock.advance(5)                                       # the emulator's instance finishes terminating
    [gone] = lab.hosts("--all")
    assert gone["state"] == "terminated" and gone["cost_usd"] > 0
    assert not lab.hosts()


def test_no_api_key_or_token_is_written_anywhere_but_the_hosts_0600_key_file(lab, docker_engine):
    lab.up("--type", "gpu_1x_a10", "--ssh-does-not-keep-alive", "--max-lifetime", "6h")
    config = json.loads(Path(lab.host.layout().config_path).read_text())
    [box] = lab.hosts()
    assert config["ssh_keeps_alive"] is False and config["idle_minutes"] == 15
    assert config["hard_deadline"] == pytest.approx(box["launched_at"] + 6 * 3600)
    assert config["instance_id"] == box["instance_id"]
    spec = lab.spec("secret-demo", demo(20, 0.2), secrets=["HF_TOKEN"])   # still running when inspected
    job_id = lab.submit(spec, env={"HF_TOKEN": SECRET})
    [container] = docker_engine.client().containers.list(all=True, filters={"label": f"gpujob.dev/id={job_id}"})
    inspect = json.dumps(docker_engine.client().api.inspect_container(container.id))
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert lab.gpujob("logs", "-f", job_id, timeout=120).returncode == 0
    rendered = lab.gpujob("render", str(spec), env={"HF_TOKEN": SECRET}).stdout
    key = lab.emu.api_key
    places = {"docker inspect": inspect, "process list": procs, "render": rendered,
              "the host's sshd/systemd/apt logs": lab.host.logs_text(),
              "commands run on the host": "\n".join(lab.host.command_lines())}
    for path in lab.home.rglob("*"):
        if path.is_file():
            places[str(path)] = path.read_bytes().decode("latin-1")
    key_file = Path(lab.host.layout().api_key_path)
    for path in Path(lab.host.root).rglob("*"):
        if path.is_file() and path != key_file:
            places[str(path)] = path.read_bytes().decode("latin-1")
    for where, text in places.items():
        assert key not in text, f"the API key is in {where}"
        assert SECRET not in text, f"the HF token is in {where}"
    assert oct(key_file.stat().st_mode & 0o777) == "0o600" and key_file.read_text().strip() == key
    assert oct(Path(lab.host.layout().config_path).stat().st_mode & 0o777) == "0o600"


def test_no_capacity_in_the_region_lists_the_regions_that_have_some(lab):
    lab.emu.capacity["gpu_1x_h100_pcie"] = {"us-west-1", "us-south-1"}
    r = lab.up("--type", "gpu_1x_h100_pcie", "--region", "us-east-1", ok=False)
    assert r.returncode == 1, r.stdout + r.stderr
    assert "us-east-1" in r.stderr and "us-west-1" in r.stderr and "us-south-1" in r.stderr
    assert "Traceback" not in r.stderr
    assert not lab.emu.instances and not lab.hosts()


def test_an_unknown_type_is_a_user_error_naming_the_known_ones(lab):
    r = lab.up("--type", "gpu_1x_tpu", ok=False)
    assert r.returncode == 2 and "gpu_1x_tpu" in r.stderr and "gpu_1x_a10" in r.stderr


def test_provisioning_interrupted_half_way_is_completed_by_running_host_up_again(lab):
    lab.host.fail_once("apt-get", match="nvidia-container-toolkit", stderr="E: Unable to fetch some archives")
    r = lab.up("--type", "gpu_1x_a10", ok=False)
    assert r.returncode == 1
    assert "nvidia container toolkit" in r.stderr and "Unable to fetch" in r.stderr
    assert "gpujob host up --name box" in r.stderr            # the hint: how to finish
    [box] = lab.hosts()
    assert box["state"] == "provisioning" and "set-up stopped" in box["reason"]
    installs_before = lab.host.apt_installs()

    r = lab.up()                                               # the same name, no --type: finish it
    assert "host box is ready" in r.stdout, r.stderr
    assert "box: nvidia driver: already in place" in r.stderr and "box: docker: already in place" in r.stderr
    assert "box: nvidia container toolkit: done" in r.stderr
    assert lab.host.apt_installs()[: len(installs_before)] == installs_before
    assert "docker.io" not in lab.host.apt_installs()[len(installs_before):]   # not done twice
    assert len(lab.emu.instances) == 1                         # one machine, launched once
    assert lab.hosts()[0]["state"] == "ready"


def test_a_hung_job_is_stopped_by_the_agent_and_reported_as_hung(lab):
    lab.up("--type", "gpu_1x_a10", "--idle", "30m")
    code = ("from gpujob.progress import ProgressWriter; import time; "
            "ProgressWriter().progress(step=1, total_steps=100, loss=1.0); time.sleep(600)")
    job_id = lab.submit(lab.spec("frozen", ["python", "-c", code]))
    lab.wait_status(job_id, lambda s: s["step"] == 1, what="the first progress event")
    agent = lab.agent(gpu_util=0)
    assert agent.tick().action == "none"
    lab.clock.advance(2 * 60)                                   # idle_minutes: 1
    decision = agent.tick()
    assert any(job_id in str(h) for h in decision.hung), decision.summary()
    st = lab.wait_status(job_id, lambda s: s["status"] == "failed", what="the hung job's end", timeout=90)
    assert "hung" in st["reason"] and "no progress events" in st["reason"]
    assert lab.emu.live_instances()                             # the host itself is still up


def test_the_reaper_in_any_command_terminates_a_host_whose_agent_never_reported(lab):
    lab.up("--type", "gpu_1x_a10", "--idle", "1m")
    instance = lab.instance()
    from gpujob.registry import Registry

    reg = Registry(lab.home)
    reg.update_host("box", check_after=time.time() - 1)        # its deadline has passed; no heartbeat ever
    reg.close()
    r = lab.gpujob("list")
    assert r.returncode == 0, r.stderr
    assert "host box: terminated: idle agent not reporting (no heartbeat ever)" in r.stderr
    assert lab.emu.terminate_calls and lab.emu.terminate_calls[-1][1] == [instance]
    assert lab.hosts("--all")[0]["state"] == "terminated"


def test_the_reaper_leaves_a_host_alone_while_a_job_runs_and_obeys_the_max_lifetime(lab):
    from gpujob import teardown
    from gpujob.hosts import lambda_api
    from gpujob.registry import Registry

    lab.up("--type", "gpu_1x_a10", "--idle", "1m", "--max-lifetime", "1h")
    job_id = lab.submit(lab.spec("long", demo(2000, 0.05)))
    lab.wait_status(job_id, lambda s: (s["step"] or 0) > 0, what="progress")
    client = lambda_api.LambdaClient(lab.emu.api_key, lab.emu.url)
    reg = Registry(lab.home)
    later = time.time() + 10 * 60
    assert teardown.reap(reg, now=lambda: later, client=client, say=lambda line: None) == []
    assert reg.get_host("box").active and not lab.emu.terminate_calls
    past_lifetime = time.time() + 61 * 60
    done = teardown.reap(reg, now=lambda: past_lifetime, client=client, say=lambda line: None)
    assert done == ["host box: terminated: max lifetime (1h00m) reached"]
    assert lab.emu.terminate_calls and reg.get_host("box").state == "terminated"


def test_a_failing_terminate_is_retried_by_the_next_command(lab):
    lab.up("--type", "gpu_1x_a10", "--idle", "1m")
    from gpujob.registry import Registry

    reg = Registry(lab.home)
    reg.update_host("box", check_after=time.time() - 1)
    lab.emu.fail_next("POST", "/instance-operations/terminate", 500, times=50)
    r = lab.gpujob("list", timeout=300)
    assert r.returncode == 0 and "could not terminate it" in r.stderr
    assert reg.get_host("box").active
    lab.emu._faults.clear()
    r = lab.gpujob("host", "reap")
    assert r.returncode == 0 and "host box: terminated" in r.stdout
    assert reg.get_host("box").state == "terminated"


def test_host_ssh_logs_in_with_the_pinned_key(lab):
    lab.up("--type", "gpu_1x_a10")
    r = lab.gpujob("host", "ssh", "box", "echo", "hello-from-the-host")
    assert r.returncode == 0, r.stderr
    assert "hello-from-the-host" in r.stdout
    r = lab.gpujob("host", "ssh", "nope", "true")
    assert r.returncode == 2 and "no host named 'nope'" in r.stderr


def test_a_job_naming_only_a_type_launches_a_host_then_the_next_job_reuses_it(lab):
    spec = lab.spec("auto", demo(5), host=None, host_type="gpu_1x_a10", host_idle="20m")
    spec.write_text(spec.read_text().replace('"host": null, ', ""))
    r = lab.gpujob("submit", str(spec), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "launching gpu_1x_a10" in r.stderr
    first = r.stdout.split()[2]
    assert lab.gpujob("logs", "-f", first, timeout=120).returncode == 0
    [host] = lab.hosts()
    assert host["state"] == "ready" and host["name"].startswith("1x-a10-") and first in host["jobs"]
    r = lab.gpujob("submit", str(spec), timeout=180)
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"reusing idle host {host['name']}" in r.stderr
    second = r.stdout.split()[2]
    assert lab.gpujob("logs", "-f", second, timeout=120).returncode == 0
    assert len(lab.emu.instances) == 1 and lab.status(second)["status"] == "succeeded"


def test_cancel_stops_a_job_on_its_host(lab):
    lab.up("--type", "gpu_1x_a10")
    job_id = lab.submit(lab.spec("to-cancel", demo(5000, 0.05)))
    lab.wait_status(job_id, lambda s: (s["step"] or 0) > 0, what="progress")
    r = lab.gpujob("cancel", job_id, "--grace", "2")
    assert r.returncode == 0, r.stderr
    st = lab.status(job_id)
    assert st["status"] == "cancelled"
    r = lab.gpujob("host", "down", "box")
    assert r.returncode == 0, r.stderr
    assert re.search(r"host box: terminated after \S+, cost (<\$0\.01|\$\d+\.\d\d)$", r.stdout.strip())


def test_host_list_without_the_api_key_shows_what_gpujob_last_knew(lab):
    lab.up("--type", "gpu_1x_a10")
    r = lab.gpujob("host", "list", env={"LAMBDA_API_KEY": ""})
    assert r.returncode == 0, r.stderr
    assert "showing what gpujob last knew" in r.stderr and "LAMBDA_API_KEY" in r.stderr
    assert re.search(r"^box\s+ready\s+gpu_1x_a10", r.stdout, re.M)


def test_with_a_persistent_file_system_outputs_land_on_it_and_come_back(lab):
    lab.emu.add_file_system("greek-asr", region="us-west-1")
    mount = lab.host.mount(Path(lab.host.root) / "lambda/nfs/greek-asr")
    r = lab.up("--type", "gpu_1x_a10", "--filesystem", "greek-asr")
    assert "persistent file system: done" in r.stderr
    [box] = lab.hosts()
    assert box["region"] == "us-west-1"                        # the file system's region
    [inst] = [i for i in lab.emu.instances.values()]
    assert inst["file_system_names"] == ["greek-asr"]
    job_id = lab.submit(lab.spec("on-fs", demo(12)))
    assert lab.gpujob("logs", "-f", job_id, timeout=120).returncode == 0
    on_host = mount / "gpujob" / "outputs" / job_id / "metrics.json"
    assert on_host.exists(), sorted(str(p) for p in mount.rglob("*"))
    here = Path(lab.status(job_id)["output_dir"]) / "metrics.json"
    assert here.read_text() == on_host.read_text()


def test_a_file_system_in_another_region_is_refused_before_launching(lab):
    lab.emu.add_file_system("greek-asr", region="us-west-1")
    r = lab.up("--type", "gpu_1x_a10", "--filesystem", "greek-asr", "--region", "us-east-1", ok=False)
    assert r.returncode == 2 and "us-west-1" in r.stderr and "--region us-west-1" in r.stderr
    assert not lab.emu.instances


# ----------------------------------------------------------------------------- GPUs per host (no SSH needed)


def gpu_spec(tmp: Path, gpus: int, **runtime) -> Path:
    path = tmp / "gpus.yaml"
    path.write_text(json.dumps({"apiVersion": "gpujob/v1", "kind": "command", "name": "gpus", "command": ["nvidia-smi"],
                                "resources": {"gpus": gpus}, "runtime": {"backend": "host", **runtime}}))
    return path


def test_more_gpus_than_the_instance_type_has_is_refused_before_a_host_is_launched(tmp_path, monkeypatch):
    from lambda_emulator import LambdaEmulator
    from typer.testing import CliRunner

    from gpujob.cli.app import app
    from gpujob.registry import Registry

    with LambdaEmulator(launch_interval_s=0) as emu:
        monkeypatch.setenv("LAMBDA_API_KEY", emu.api_key)
        monkeypatch.setenv("GPUJOB_LAMBDA_API_URL", emu.url)
        r = CliRunner().invoke(app, ["submit", str(gpu_spec(tmp_path, 2, host_type="gpu_1x_a10"))])
        assert r.exit_code == 2, r.output
        assert "error: resources.gpus: the job asks for 2 GPUs, but a gpu_1x_a10 host has 1" in r.output
        assert "gpujob host types" in r.output and "Traceback" not in r.output
        assert not emu.instances                                  # nothing launched, nothing billed
    assert Registry().list() == [] and Registry().list_hosts() == []


def test_a_hosts_gpus_are_recorded_at_launch_and_checked_without_the_api(lab):
    lab.up("--type", "gpu_1x_a10")
    path = lab.spec("two", ["nvidia-smi"])
    spec = json.loads(path.read_text())
    spec["resources"]["gpus"] = 2
    path.write_text(json.dumps(spec))
    r = lab.gpujob("submit", str(path), env={"LAMBDA_API_KEY": ""})  # the count was kept when the host was launched
    assert r.returncode == 2, r.stdout + r.stderr
    assert "the job asks for 2 GPUs, but a gpu_1x_a10 host has 1" in r.stderr
    assert "no jobs yet" in lab.gpujob("list").stdout
