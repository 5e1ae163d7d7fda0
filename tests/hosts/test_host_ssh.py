"""gpujob.hosts.ssh (with ssh_keys, ssh_errors, ssh_tunnel) and gpujob.hosts.provision against a real
OpenSSH server (tests/support/ssh_server.py) standing in for a rented GPU host, and the tests' real Docker
engine (through the SSH tunnel)."""

from __future__ import annotations

import os
import stat
import subprocess
import threading
import time
import uuid

import pytest

from gpujob.hosts.provision import STEPS, ProvisionSettings, ProvisionStepFailed, agent_zipapp, provision
from gpujob.hosts.ssh import HostConnection
from gpujob.hosts.ssh_errors import HostKeyMismatch, HostKeyNotPinned, HostUnreachable, RemoteCommandFailed
from gpujob.hosts.ssh_keys import ensure_keypair
from ssh_server import FAKE_GPU, tiny_image

API_KEY = "secret_gpujob-test_" + uuid.uuid4().hex   # must never show up in a command line or a log


def mode_of(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# ------------------------------------------------------------------------------------ key pair


def test_ensure_keypair_makes_a_private_ed25519_key_once(gpujob_home):
    import paramiko

    path, line = ensure_keypair(gpujob_home)
    assert path == gpujob_home / "ssh" / "id_ed25519"
    assert mode_of(path) == 0o600 and mode_of(path.parent) == 0o700
    assert line.startswith("ssh-ed25519 AAAA") and line.endswith(" gpujob")
    assert (path.parent / "id_ed25519.pub").read_text().strip() == line
    assert paramiko.PKey.from_path(str(path)).get_base64() == line.split()[1]
    derived = subprocess.run(["ssh-keygen", "-y", "-f", str(path)], capture_output=True, text=True, check=True)
    assert derived.stdout.split()[:2] == line.split()[:2]
    assert ensure_keypair(gpujob_home) == (path, line)   # never replaced


# ------------------------------------------------------------------------------------ commands


def test_run_gives_exit_code_stdout_stderr_and_streams_lines(ssh_host):
    with ssh_host.connection() as conn:
        r = conn.run("echo out; echo err >&2; exit 3", check=False)
        assert (r.exit_code, r.stdout, r.stderr) == (3, "out\n", "err\n")
        assert conn.run("nvidia-smi -L").stdout.strip() == FAKE_GPU   # sessions see the fakes first
        ssh_host.set_gpu_util(87)
        query = "nvidia-smi --query-gpu=utilization.gpu --format=csv,noheader,nounits"
        assert conn.run(query).stdout == "87\n"
        assert conn.run("cat", input=b"via stdin\n").stdout == "via stdin\n"
        assert conn.run("kill -9 $$", check=False).exit_code == -1          # killed by a signal

        with pytest.raises(RemoteCommandFailed) as failed:
            conn.run("echo one >&2; echo two >&2; exit 7", what="the step under test")
        e = failed.value
        assert e.exit_code_remote == 7 and e.stderr_tail == "one\ntwo"
        assert "the step under test" in e.message and "root@127.0.0.1" in e.message and "two" in e.message

        seen: list[tuple[float, str]] = []
        start = time.monotonic()
        conn.run("for i in 1 2 3; do echo line$i; sleep 0.3; done; echo oops >&2",
                 on_line=lambda line: seen.append((time.monotonic() - start, line)))
        assert [line for _, line in seen] == ["line1", "line2", "line3", "oops"]
        assert seen[0][0] < seen[-1][0] - 0.4    # the first line came while the command still ran

        begun = time.monotonic()
        with pytest.raises(RemoteCommandFailed) as timed_out:
            conn.run("sleep 5", timeout_s=0.5)
        assert timed_out.value.exit_code_remote is None and "timed out after 0.5 s" in timed_out.value.message
        assert time.monotonic() - begun < 3


def test_put_file_is_atomic_private_and_read_file_reads_it(ssh_host):
    target = ssh_host.root / "etc" / "gpujob" / "lambda-api-key"
    parent = target.parent
    with ssh_host.connection() as conn:
        assert conn.read_file(str(target)) is None
        conn.put_file(str(target), b"old", mode=0o644)
        assert mode_of(target) == 0o644 and target.read_bytes() == b"old"
        old_inode = os.stat(target).st_ino

        # Watch the folder while a big secret is written: nothing but the old file and a 0700
        # staging folder may ever be visible, and the old file stays whole until the rename.
        seen, stop = [], threading.Event()

        def watch():
            while not stop.is_set():
                for entry in os.scandir(parent):
                    try:
                        seen.append((entry.name, entry.is_dir(), mode_of(entry.path), entry.stat().st_size))
                    except FileNotFoundError:
                        pass
                time.sleep(0.001)

        watcher = threading.Thread(target=watch)
        watcher.start()
        data = os.urandom(4 << 20)
        try:
            conn.put_file(str(target), data, mode=0o600)
        finally:
            stop.set()
            watcher.join()
        assert target.read_bytes() == data and mode_of(target) == 0o600
        assert os.stat(target).st_ino != old_inode                      # replaced by a rename
        assert sorted(os.listdir(parent)) == ["lambda-api-key"]         # no staging left behind
        staging = {(name, mode) for name, is_dir, mode, _ in seen if name != "lambda-api-key"}
        assert staging and all(mode == 0o700 for _, mode in staging), staging
        assert {size for name, _, _, size in seen if name == "lambda-api-key"} <= {3, len(data)}
        assert conn.read_file(str(target)) == data


# ------------------------------------------------------------------------------ host key pins


def test_first_contact_pins_the_key_by_alias_and_later_ones_check_it(ssh_host):
    with ssh_host.connection(pin_new_key=True) as conn:
        assert conn.host_key_fingerprint == ssh_host.host_key_fingerprint
    lines = ssh_host.known_hosts.read_text().splitlines()
    assert len(lines) == 1 and lines[0].split()[:2] == [ssh_host.alias, "ssh-ed25519"]
    assert "127.0.0.1" not in lines[0]                      # pinned by instance id, never by address
    assert mode_of(ssh_host.known_hosts) == 0o600

    with ssh_host.connection(pin_new_key=False) as conn:   # the pinned key is accepted
        assert conn.run("echo ok").stdout == "ok\n"
    assert ssh_host.known_hosts.read_text().splitlines() == lines

    with pytest.raises(HostKeyNotPinned) as unknown:       # same address, another alias: refused
        ssh_host.connection(pin_new_key=False, alias="i-other").connect()
    assert "i-other" in unknown.value.message and ssh_host.host_key_fingerprint in unknown.value.message
    assert unknown.value.exit_code == 2


def test_a_changed_host_key_is_refused(ssh_host):
    ssh_host.connection(pin_new_key=True).connect()
    pinned_text = ssh_host.known_hosts.read_text()
    old = ssh_host.host_key_fingerprint
    ssh_host.restart(new_host_key=True)                    # another machine on the same address
    for pin in (False, True):                              # pin_new_key never overrides a pin
        with pytest.raises(HostKeyMismatch) as mismatch:
            ssh_host.connection(pin_new_key=pin).connect()
        message = mismatch.value.message
        assert ssh_host.alias in message and old in message and ssh_host.host_key_fingerprint in message
        assert "different machine" in message and "reuses IPs" in message
        assert f"ssh-keygen -R {ssh_host.alias}" in mismatch.value.hint
    assert ssh_host.known_hosts.read_text() == pinned_text


def test_unreachable_and_refused_logins_say_what_failed(ssh_host, tmp_path):
    ssh_host.connection().connect()
    closed_port = ssh_host.port
    ssh_host.stop()
    begun = time.monotonic()
    with pytest.raises(HostUnreachable) as refused:
        ssh_host.connection(port=closed_port, connect_timeout_s=1.5).connect()
    assert time.monotonic() - begun < 5
    assert f"root@127.0.0.1:{closed_port}" in refused.value.message
    assert "refused" in refused.value.message and refused.value.exit_code == 1

    ssh_host.start()
    stranger, _ = ensure_keypair(tmp_path / "someone-else")
    with pytest.raises(HostUnreachable) as denied:
        HostConnection("127.0.0.1", port=ssh_host.port, user="root", key_path=stranger,
                       known_hosts=ssh_host.known_hosts, alias=ssh_host.alias).connect()
    assert "authentication failed" in denied.value.message and str(stranger) in denied.value.message


def test_interactive_argv_uses_the_same_pins_with_openssh(ssh_host):
    conn = ssh_host.connection(pin_new_key=True)
    conn.connect()
    argv = conn.interactive_argv(["true"])
    assert argv[:2] == ["ssh", "-i"] and "HostKeyAlias=i-test-0001" in argv and argv[-2] == "root@127.0.0.1"
    ok = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    ssh_host.restart(new_host_key=True)
    refused = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
    assert refused.returncode == 255
    assert "REMOTE HOST IDENTIFICATION HAS CHANGED" in refused.stderr or "verification failed" in refused.stderr


# ------------------------------------------------------------------------------ docker tunnel


def test_docker_sdk_reaches_the_hosts_engine_through_the_tunnel(ssh_host, docker_engine):
    import docker

    ssh_host.preinstall("docker.io")
    tag = tiny_image(docker_engine.client(), "gpujob-test/tiny:ssh")
    with ssh_host.connection() as conn, conn.docker_socket(docker_engine.host) as url:
        path = url.removeprefix("unix://")
        assert mode_of(os.path.dirname(path)) == 0o700
        client = docker.DockerClient(base_url=url, timeout=30)
        assert client.ping()
        client.containers.list(all=True)
        container = client.containers.run(tag, ["sh", "-c", "for i in 1 2 3; do echo tick $i; sleep 0.2; done"],
                                          detach=True, labels={"gpujob.dev/id": "ssh-tunnel-test"})
        try:
            lines = [chunk.decode().strip() for chunk in container.logs(stream=True, follow=True)]
            assert [ln for ln in lines if ln] == ["tick 1", "tick 2", "tick 3"]
            assert container.id in {c.id for c in client.containers.list(all=True)}
        finally:
            container.remove(force=True)
        client.close()
    assert not os.path.exists(os.path.dirname(path))
    assert any("dial-stdio" in call for call in ssh_host.command_lines())


# ------------------------------------------------------------------------------- provisioning


@pytest.fixture
def settings(ssh_host, docker_engine):
    """What gpujob asks of the stand-in host: an image no registry has (the pull fails at once),
    copied from "this machine" (the same engine) through the tunnel, and a persistent file system."""
    import docker

    image = f"localhost:1/gpujob-test/hostjob:{uuid.uuid4().hex[:8]}"
    source = tiny_image(docker_engine.client(), "gpujob-test/tiny:ssh")
    loads: list[str] = []

    def load_image(url: str) -> None:
        loads.append(url)
        docker.DockerClient(base_url=url, timeout=30).images.get(source).tag(image)

    mount = ssh_host.mount(ssh_host.root / "lambda" / "nfs" / "fs1")
    s = ProvisionSettings(layout=ssh_host.layout(docker_engine.host), image=image,
                          agent_config={"instance_id": ssh_host.alias, "idle_minutes": 20},
                          api_key=API_KEY, filesystem_mount=str(mount), load_image=load_image)
    s.loads = loads
    yield s
    try:
        docker_engine.client().images.remove(image)
    except Exception:
        pass


def run_provision(ssh_host, settings):
    seen = []
    with ssh_host.connection() as conn:
        results = provision(conn, settings, on_step=seen.append)
    assert seen == results and [r.name for r in results] == list(STEPS)
    return {r.name: r for r in results}


def assert_secret_kept(ssh_host):
    assert API_KEY not in ssh_host.logs_text()                         # sshd, the fakes' calls, state
    assert all(API_KEY not in line for line in ssh_host.command_lines())
    assert API_KEY not in (ssh_host.root / "etc/systemd/system/gpujob-agent.service").read_text()


def test_a_fresh_host_is_provisioned_completely_then_left_alone(ssh_host, settings):
    lay = settings.layout
    results = run_provision(ssh_host, settings)
    assert {n: r.state for n, r in results.items()} == {
        "nvidia driver": "ok", "docker": "done", "nvidia container toolkit": "done", "job image": "done",
        "persistent file system": "done", "idle agent": "done"}
    assert "NVIDIA H100 80GB HBM3" in results["nvidia driver"].detail
    assert settings.loads and settings.loads[0].startswith("unix://")   # the pull failed; copied over
    assert ssh_host.apt_installs() == ["docker.io", "nvidia-container-toolkit"]
    assert ["systemctl", "restart", "docker"] in ssh_host.calls("systemctl")
    assert ["systemctl", "enable", "--now", "gpujob-agent"] in ssh_host.calls("systemctl")
    assert ssh_host.units()["gpujob-agent"] == {"enabled": True, "active": True}
    assert (ssh_host.root / "lambda/nfs/fs1/gpujob/outputs").is_dir()

    path = os.path.join(lay.opt_dir, "agent.pyz")
    assert mode_of(path) == 0o644
    with open(path, "rb") as f:
        assert f.read() == agent_zipapp()
    assert mode_of(lay.etc_dir) == 0o700
    assert mode_of(lay.config_path) == 0o600 and mode_of(lay.api_key_path) == 0o600
    assert open(lay.api_key_path).read().strip() == API_KEY
    unit = open(lay.unit_path).read()
    assert "Restart=always" in unit and "RestartSec=10" in unit
    assert f"ExecStart=/usr/bin/python3 {lay.opt_dir}/agent.pyz --config {lay.config_path}" in unit
    assert_secret_kept(ssh_host)

    ssh_host.clear_calls()
    again = run_provision(ssh_host, settings)
    assert {r.state for r in again.values()} == {"ok"}
    assert ssh_host.calls("apt-get") == []
    assert all(c[1:] == ["--version"] for c in ssh_host.calls("nvidia-ctk"))
    assert all(c[1] == "is-active" for c in ssh_host.calls("systemctl"))

    settings.agent_config = {**settings.agent_config, "idle_minutes": 45}   # a changed config: restart
    changed = run_provision(ssh_host, settings)
    assert changed["idle agent"].state == "done" and "restarted" in changed["idle agent"].detail
    assert ["systemctl", "restart", "gpujob-agent"] in ssh_host.calls("systemctl")
    assert '"idle_minutes": 45' in open(lay.config_path).read()


def test_a_failed_step_stops_the_run_and_the_next_run_finishes_it(ssh_host, settings):
    ssh_host.fail_once("apt-get", "nvidia-container-toolkit", rc=100,
                       stderr="E: Unable to locate package nvidia-container-toolkit")
    seen = []
    with ssh_host.connection() as conn, pytest.raises(RemoteCommandFailed) as failed:
        provision(conn, settings, on_step=seen.append)
    e = failed.value
    assert "nvidia container toolkit" in e.message and "Unable to locate package" in e.message
    assert e.exit_code_remote == 100 and "NVIDIA's apt repository" in e.hint
    assert [(r.name, r.state) for r in seen] == [("nvidia driver", "ok"), ("docker", "done"),
                                                 ("nvidia container toolkit", "failed")]

    ssh_host.clear_calls()
    results = run_provision(ssh_host, settings)
    assert [r.state for r in results.values()] == ["ok", "ok", "done", "done", "done", "done"]
    assert ssh_host.apt_installs() == ["nvidia-container-toolkit"]    # docker.io was not redone
    assert_secret_kept(ssh_host)


def test_a_dropped_connection_mid_step_is_completed_by_the_next_run(ssh_host, settings):
    ssh_host.fail_once("apt-get", "docker.io", hang=True)
    threading.Thread(target=lambda: (ssh_host.wait_hanging("apt-get"), ssh_host.kill_connections()),
                     daemon=True).start()
    with ssh_host.connection() as conn, pytest.raises(HostUnreachable) as dropped:
        provision(conn, settings)
    assert "dropped" in dropped.value.message or "lost" in dropped.value.message

    results = run_provision(ssh_host, settings)
    assert [r.state for r in results.values()] == ["ok", "done", "done", "done", "done", "done"]


def test_a_host_without_a_driver_is_refused_before_anything_is_installed(ssh_host, settings):
    ssh_host.remove("nvidia-smi")
    with ssh_host.connection() as conn, pytest.raises(ProvisionStepFailed) as failed:
        provision(conn, settings)
    assert failed.value.step == "nvidia driver"
    assert "no working NVIDIA driver" in failed.value.message and "not installed" in failed.value.message
    assert "image" in failed.value.hint
    assert ssh_host.calls("apt-get") == []


def test_an_unmounted_file_system_fails_instead_of_writing_to_the_boot_disk(ssh_host, settings):
    ssh_host.preinstall("docker.io", "nvidia-container-toolkit")
    settings.filesystem_mount = str(ssh_host.root / "lambda" / "nfs" / "not-attached")
    with ssh_host.connection() as conn, pytest.raises(ProvisionStepFailed) as failed:
        provision(conn, settings)
    assert failed.value.step == "persistent file system" and "not mounted" in failed.value.message


def test_a_non_root_login_does_everything_through_sudo(ssh_host, settings):
    ssh_host.as_non_root()
    settings.filesystem_mount = None
    results = run_provision(ssh_host, settings)
    assert [r.state for r in results.values()] == ["ok", "done", "done", "done", "ok", "done"]
    assert results["persistent file system"].detail == "none requested"
    assert os.stat(settings.layout.uploads_dir).st_uid == 1000     # the login user writes markers there
    sudo = [c for c in ssh_host.calls("sudo")]
    assert sudo and all(c[1] == "-n" for c in sudo)
    through_sudo = " ".join(" ".join(c) for c in sudo)
    for command in ("install -y -q docker.io", "systemctl enable --now gpujob-agent",
                    "nvidia-ctk runtime configure", "system dial-stdio", "mv -f"):
        assert command in through_sudo, command
    assert mode_of(settings.layout.api_key_path) == 0o600
    assert_secret_kept(ssh_host)
