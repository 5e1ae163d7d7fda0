"""A real OpenSSH server standing in for a rented GPU host, on 127.0.0.1.

Debian's ``/usr/sbin/sshd`` runs with its own config, host key and authorized_keys in a test
folder; root logs in by key only (the tests run as root). Sessions get
``PATH=<fakebin>:/usr/sbin:/usr/bin:/sbin:/bin`` (sshd's ``SetEnv``), so they find stand-ins
first for what a GPU host has and this machine cannot run:

* ``nvidia-smi``: ``-L`` lists ``GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-...)``, one line per GPU
  (1, or :meth:`SshServer.set_gpu_count`); ``--query-gpu=index,uuid,utilization.gpu,...`` answers one
  line per GPU, the utilisation from ``state/gpu-util`` (:meth:`SshServer.set_gpu_util`).
* ``systemctl``: records calls; ``is-active`` answers from ``state/units.json``; ``start``,
  ``restart``, ``enable --now`` make a unit active. (Re)starting ``docker`` loads the runtimes of
  the fake ``<root>/etc/docker/daemon.json``, as dockerd reads its config only when it starts.
* ``apt-get``: records calls; needs ``DEBIAN_FRONTEND=noninteractive`` (a real one would prompt);
  "installs" ``docker.io`` and ``nvidia-container-toolkit`` by putting their fake binaries in place.
* ``docker``: absent (exit 127, like a missing command) until docker.io is installed; then it runs
  the real docker CLI, so everything reaches the tests' real engine. The one thing it adds is what
  the NVIDIA toolkit adds to a real engine: ``docker info --format '{{json .Runtimes}}'`` also lists
  the runtimes loaded from the fake daemon.json (dockerd cannot get an nvidia runtime here).
* ``nvidia-ctk``: absent until installed; ``runtime configure --runtime=docker`` writes the
  ``nvidia`` runtime into ``<root>/etc/docker/daemon.json``, as the real one does into /etc/docker.
* ``mountpoint``: ``-q PATH`` answers from ``state/mounts`` (:meth:`SshServer.mount`).
* with :meth:`SshServer.as_non_root`: ``id -u`` says 1000 and ``sudo`` records its calls, insists
  on ``-n`` (never prompt), and runs the command.

Every fake records its argv to ``state/calls.log`` (JSON lines); :meth:`SshServer.fail_once` makes
the next matching call fail (or hang until its connection is killed).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

SSHD = "/usr/sbin/sshd"
SFTP_SERVER = "/usr/lib/openssh/sftp-server"
REAL_DOCKER = next((p for p in ("/usr/local/bin/docker", "/usr/bin/docker") if os.path.exists(p)), "docker")
FAKE_GPU = "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-5d3a7c2e-1f0b-4c8e-9a6d-2b7e4f1c0a93)"

# ---------------------------------------------------------------------------------- the fakes

_LIB = r'''
import fcntl, json, os, sys, time
STATE = {state!r}
ROOT = {root!r}
FAKEBIN = {fakebin!r}
REAL_DOCKER = {real_docker!r}
NAME = os.path.basename(sys.argv[0])
ARGS = sys.argv[1:]


def _locked(path, update):
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        text = f.read()
        new = update(text)
        if new is not None:
            f.seek(0)
            f.truncate()
            f.write(new)


def record():
    line = json.dumps([NAME, *ARGS]) + "\n"
    _locked(os.path.join(STATE, "calls.log"), lambda text: text + line)


def maybe_fail():
    hit = []

    def take(text):
        entries = json.loads(text or "[]")
        for i, e in enumerate(entries):
            if e["program"] == NAME and e["match"] in " ".join(ARGS):
                hit.append(entries.pop(i))
                return json.dumps(entries)
        return None

    _locked(os.path.join(STATE, "fail-once.json"), take)
    if not hit:
        return
    e = hit[0]
    if e["hang"]:
        open(os.path.join(STATE, "hanging-" + NAME), "w").close()
        parent, deadline = os.getppid(), time.monotonic() + 60
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(0.1)
    sys.stderr.write(e["stderr"] + ("\n" if e["stderr"] and not e["stderr"].endswith("\n") else ""))
    sys.exit(e["rc"])


def load(name, default):
    try:
        with open(os.path.join(STATE, name)) as f:
            return json.load(f)
    except (OSError, ValueError):
        return default


def save(name, data):
    tmp = os.path.join(STATE, name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(data, f)
    os.replace(tmp, os.path.join(STATE, name))


def install(program):
    shutil_src = os.path.join(STATE, "templates", program)
    dst = os.path.join(FAKEBIN, program)
    with open(shutil_src) as f, open(dst + ".tmp", "w") as g:
        g.write(f.read())
    os.chmod(dst + ".tmp", 0o755)
    os.replace(dst + ".tmp", dst)


record()
maybe_fail()
'''

_HEAD = ("#!/usr/bin/python3\nimport os, sys\n"
         "sys.path.insert(0, os.path.join({state!r}, 'lib'))\nfrom fakelib import *\n")

FAKES = {
    "nvidia-smi": r'''
count = int(open(os.path.join(STATE, "gpu-count")).read().strip() or "1")
uuids = ["GPU-5d3a7c2e-1f0b-4c8e-9a6d-2b7e4f1c0a%02x" % (0x93 + i) for i in range(count)]
if ARGS == ["-L"]:
    print("\n".join(f"GPU {i}: NVIDIA H100 80GB HBM3 (UUID: {u})" for i, u in enumerate(uuids)))
    sys.exit(0)
query = next((a.split("=", 1)[1] for a in ARGS if a.startswith("--query-gpu=")), None)
if query:
    util = open(os.path.join(STATE, "gpu-util")).read().strip()
    for i, u in enumerate(uuids):
        values = {"utilization.gpu": util, "memory.used": "0", "memory.total": "81559", "index": str(i),
                  "name": "NVIDIA H100 80GB HBM3", "uuid": u}
        print(", ".join(values.get(f.strip(), "[N/A]") for f in query.split(",")))
    sys.exit(0)
print("Mon Dec  1 06:00:00 2025\n| NVIDIA-SMI 550.127.05   Driver Version: 550.127.05   CUDA Version: 12.4 |")
''',
    "systemctl": r'''
units = load("units.json", {})
def unit(name):
    return name[:-len(".service")] if name.endswith(".service") else name
def start(name):
    units.setdefault(name, {})["active"] = True
    if name == "docker":   # dockerd reads daemon.json only when it starts
        try:
            with open(os.path.join(ROOT, "etc/docker/daemon.json")) as f:
                save("docker-runtimes.json", json.load(f).get("runtimes", {}))
        except (OSError, ValueError):
            pass
verb, names = ARGS[0], [unit(a) for a in ARGS[1:] if not a.startswith("-")]
if verb == "daemon-reload":
    pass
elif verb == "is-active":
    active = all(units.get(n, {}).get("active") for n in names)
    print("\n".join("active" if units.get(n, {}).get("active") else "inactive" for n in names))
    sys.exit(0 if active else 3)
elif verb == "is-enabled":
    print("\n".join("enabled" if units.get(n, {}).get("enabled") else "disabled" for n in names))
    sys.exit(0 if all(units.get(n, {}).get("enabled") for n in names) else 1)
elif verb in ("enable", "disable"):
    for n in names:
        units.setdefault(n, {})["enabled"] = verb == "enable"
        if "--now" in ARGS:
            if verb == "enable" and not units[n].get("active"):
                start(n)
            elif verb == "disable":
                units[n]["active"] = False
elif verb in ("start", "restart"):
    for n in names:
        if verb == "restart" or not units.get(n, {}).get("active"):
            start(n)
elif verb == "stop":
    for n in names:
        units.setdefault(n, {})["active"] = False
else:
    sys.exit(f"fake systemctl: {verb} is not faked")
save("units.json", units)
''',
    "apt-get": r'''
PACKAGES = {"docker.io": "docker", "nvidia-container-toolkit": "nvidia-ctk"}
words, flags, rest = [], [], list(ARGS)
while rest:
    a = rest.pop(0)
    if a == "-o":
        flags.append(f"-o {rest.pop(0)}")
    elif a.startswith("-"):
        flags.append(a)
    else:
        words.append(a)
verb = words[0] if words else None
if verb == "update":
    print("Reading package lists... Done")
    sys.exit(0)
if verb == "install":
    if os.environ.get("DEBIAN_FRONTEND") != "noninteractive":
        sys.exit("fake apt-get: install without DEBIAN_FRONTEND=noninteractive could stop at a prompt")
    if "-y" not in flags:
        sys.exit("fake apt-get: install without -y would ask for confirmation")
    for pkg in words[1:]:
        if pkg not in PACKAGES:
            print(f"E: Unable to locate package {pkg}", file=sys.stderr)
            sys.exit(100)
        install(PACKAGES[pkg])
        print(f"Setting up {pkg} ...")
    sys.exit(0)
sys.exit(f"fake apt-get: {ARGS} is not faked")
''',
    "mountpoint": r'''
path = os.path.normpath(ARGS[-1])
mounts = [os.path.normpath(p) for p in load("mounts.json", [])]
if "-q" not in ARGS:
    print(f"{ARGS[-1]} is {'' if path in mounts else 'not '}a mountpoint")
sys.exit(0 if path in mounts else 32)
''',
}

TEMPLATES = {   # what apt-get "installs"
    "docker": r'''
if "info" in ARGS and "{{json .Runtimes}}" in ARGS:
    import subprocess
    done = subprocess.run([REAL_DOCKER, *ARGS], capture_output=True, text=True)
    if done.returncode != 0:
        sys.stderr.write(done.stderr)
        sys.exit(done.returncode)
    runtimes = json.loads(done.stdout or "{}")
    runtimes.update(load("docker-runtimes.json", {}))
    print(json.dumps(runtimes))
    sys.exit(0)
os.execv(REAL_DOCKER, [REAL_DOCKER, *ARGS])
''',
    "nvidia-ctk": r'''
if ARGS == ["--version"]:
    print("NVIDIA Container Toolkit CLI version 1.17.8\ncommit: f202b80a9b9d0db00d9b1d73c0128c8962c55f4d")
    sys.exit(0)
if ARGS[:2] == ["runtime", "configure"] and "--runtime=docker" in ARGS:
    path = os.path.join(ROOT, "etc/docker/daemon.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    try:
        with open(path) as f:
            config = json.load(f)
    except (OSError, ValueError):
        config = {}
    config.setdefault("runtimes", {})["nvidia"] = {"args": [], "path": "nvidia-container-runtime"}
    with open(path, "w") as f:
        json.dump(config, f, indent=4)
    print(f"INFO[0000] Wrote updated config to {path}")
    print("INFO[0000] It is recommended that docker daemon be restarted.")
    sys.exit(0)
sys.exit(f"fake nvidia-ctk: {ARGS} is not faked")
''',
    "docker-absent": r'''
sys.stderr.write("bash: line 1: docker: command not found\n")
sys.exit(127)
''',
    "sudo": r'''
if not ARGS or ARGS[0] != "-n":
    sys.exit("sudo: a terminal is required to read the password; either use the -S option to read from "
             "standard input or configure an askpass helper")
command = ARGS[1:]
os.execvp(command[0], command)
''',
    "id": r'''
if ARGS == ["-u"]:
    print(1000)
    sys.exit(0)
os.execv("/usr/bin/id", ["/usr/bin/id", *ARGS])
''',
}


# ------------------------------------------------------------------------------------ the server


@dataclass
class SshServer:
    base: Path                 # everything lives here
    port: int
    host_key_fingerprint: str  # "SHA256:..." of the ed25519 host key
    root: Path                 # the host's HostLayout root (its /etc, /opt, /var under here)
    fakebin: Path
    state: Path
    log: Path                  # sshd's own log
    proc: subprocess.Popen | None = field(default=None, repr=False)

    # -- the server

    @property
    def config(self) -> Path:
        return self.base / "sshd_config"

    @property
    def host_key(self) -> Path:
        return self.base / "ssh_host_ed25519_key"

    def start(self) -> None:
        log = open(self.log, "ab")
        self.proc = subprocess.Popen([SSHD, "-D", "-f", str(self.config), "-E", str(self.log)],
                                     stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        log.close()
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited {self.proc.returncode}:\n{self.log.read_text()[-2000:]}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    if s.recv(64).startswith(b"SSH-2.0-"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"sshd did not answer on port {self.port}:\n{self.log.read_text()[-2000:]}")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop sshd and every session it has."""
        if self.proc is None:
            return
        self.kill_connections()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def restart(self, *, new_host_key: bool = False) -> None:
        """Stop sshd and start it again on the same port, with a fresh host key if asked
        (another machine answering on a reused address)."""
        self.stop()
        if new_host_key:
            self.host_key.unlink()
            Path(f"{self.host_key}.pub").unlink()
            self.host_key_fingerprint = _keygen(self.host_key)
        self.start()

    def kill_connections(self) -> int:
        """Kill every SSH session (and what it runs), as a dropped network would end them;
        the listener stays. Returns how many processes were killed."""
        if self.proc is None:
            return 0
        victims = _descendants(self.proc.pid)
        for pid in victims:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return len(victims)

    # -- the fakes

    def calls(self, program: str | None = None) -> list[list[str]]:
        """Every recorded call of a fake, as [program, *args], oldest first."""
        path = self.state / "calls.log"
        rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
        return [r for r in rows if program is None or r[0] == program]

    def apt_installs(self) -> list[str]:
        """The packages ``apt-get install`` was asked for, in order."""
        found = []
        for call in self.calls("apt-get"):
            words = [a for i, a in enumerate(call[1:]) if not a.startswith("-") and (i == 0 or call[i] != "-o")]
            if words[:1] == ["install"]:
                found += words[1:]
        return found

    def command_lines(self) -> list[str]:
        return [" ".join(r) for r in self.calls()]

    def clear_calls(self) -> None:
        (self.state / "calls.log").write_text("")

    def set_gpu_count(self, count: int) -> None:
        """How many GPUs the fake nvidia-smi lists (their UUIDs differ in the last digits)."""
        (self.state / "gpu-count").write_text(f"{count}\n")

    def set_gpu_util(self, percent: int) -> None:
        (self.state / "gpu-util").write_text(f"{percent}\n")

    def fail_once(self, program: str, match: str = "", *, rc: int = 1, stderr: str = "",
                  hang: bool = False) -> None:
        """The next call of ``program`` whose arguments contain ``match`` fails with ``rc`` and
        ``stderr``; with ``hang`` it first waits until its connection is killed
        (:meth:`wait_hanging` tells when it is there)."""
        path = self.state / "fail-once.json"
        entries = json.loads(path.read_text() or "[]") if path.exists() else []
        entries.append({"program": program, "match": match, "rc": rc, "stderr": stderr, "hang": hang})
        path.write_text(json.dumps(entries))

    def wait_hanging(self, program: str, timeout_s: float = 30) -> None:
        marker = self.state / f"hanging-{program}"
        deadline = time.monotonic() + timeout_s
        while not marker.exists():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no hanging {program} call within {timeout_s} s")
            time.sleep(0.05)

    def remove(self, program: str) -> None:
        """Take a fake away (a host without nvidia-smi)."""
        (self.fakebin / program).unlink(missing_ok=True)

    def preinstall(self, *packages: str) -> None:
        """Packages the host's image already has ("docker.io", "nvidia-container-toolkit")."""
        for package in packages:
            program = {"docker.io": "docker", "nvidia-container-toolkit": "nvidia-ctk"}[package]
            _write_fake(self.fakebin / program, self.state, TEMPLATES[program])

    def mount(self, path: str | Path) -> Path:
        """Make ``path`` (created) a "mountpoint" for the fake ``mountpoint``."""
        Path(path).mkdir(parents=True, exist_ok=True)
        mounts = json.loads((self.state / "mounts.json").read_text())
        (self.state / "mounts.json").write_text(json.dumps(mounts + [str(path)]))
        return Path(path)

    def units(self) -> dict:
        path = self.state / "units.json"
        return json.loads(path.read_text()) if path.exists() else {}

    def as_non_root(self) -> None:
        """The login user is not root (``id -u`` says 1000): gpujob must use ``sudo -n``."""
        for program in ("sudo", "id"):
            _write_fake(self.fakebin / program, self.state, TEMPLATES[program])

    def logs_text(self) -> str:
        """sshd's log, the fakes' call log, and every state file: for checking secrets are absent."""
        parts = [self.log.read_text(errors="replace")]
        parts += [p.read_text(errors="replace") for p in sorted(self.state.rglob("*")) if p.is_file()]
        return "\n".join(parts)


def start_sshd(tmp: Path, authorized_key: str) -> SshServer:
    """An sshd on a free loopback port that lets root in with ``authorized_key`` (a public key
    line), with the fakes described above. Call ``stop()`` when done."""
    base = Path(tmp)
    base.mkdir(parents=True, exist_ok=True)
    root, fakebin, state = base / "root", base / "fakebin", base / "state"
    for folder in (root, fakebin, state / "lib", state / "templates"):
        folder.mkdir(parents=True, exist_ok=True)
    os.chmod(base, 0o755)
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)   # sshd's privilege separation folder
    (base / "authorized_keys").write_text(authorized_key.strip() + "\n")
    fingerprint = _keygen(base / "ssh_host_ed25519_key")

    (state / "lib" / "fakelib.py").write_text(_LIB.format(state=str(state), root=str(root), fakebin=str(fakebin),
                                                         real_docker=REAL_DOCKER))
    for name, body in FAKES.items():
        _write_fake(fakebin / name, state, body)
    for name, body in TEMPLATES.items():
        (state / "templates" / name).write_text(_HEAD.format(state=str(state)) + body)
    _write_fake(fakebin / "docker", state, TEMPLATES["docker-absent"])
    (state / "gpu-util").write_text("0\n")
    (state / "gpu-count").write_text("1\n")
    (state / "mounts.json").write_text("[]")
    (state / "calls.log").write_text("")

    last_error: Exception | None = None
    for _ in range(5):
        port = _free_port()
        server = SshServer(base=base, port=port, host_key_fingerprint=fingerprint, root=root,
                           fakebin=fakebin, state=state, log=base / "sshd.log")
        _write_config(server)
        try:
            server.start()
            return server
        except RuntimeError as e:  # lost the port to someone else: take another
            last_error = e
    raise RuntimeError(f"could not start sshd: {last_error}")


def _write_config(server: SshServer) -> None:
    b = server.base
    server.config.write_text(f"""\
Port {server.port}
ListenAddress 127.0.0.1
HostKey {server.host_key}
PidFile {b / 'sshd.pid'}
AuthorizedKeysFile {b / 'authorized_keys'}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
PrintMotd no
PrintLastLog no
AcceptEnv none
X11Forwarding no
LogLevel DEBUG1
MaxSessions 64
MaxStartups 64
SetEnv PATH={server.fakebin}:/usr/sbin:/usr/bin:/sbin:/bin
Subsystem sftp {SFTP_SERVER}
""")


def _write_fake(path: Path, state: Path, body: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(_HEAD.format(state=str(state)) + body)
    os.chmod(tmp, 0o755)
    os.replace(tmp, path)


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "gpujob-test-host", "-f", str(path)],
                   check=True)
    out = subprocess.run(["ssh-keygen", "-l", "-f", f"{path}.pub"], check=True, capture_output=True, text=True)
    return out.stdout.split()[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(children.get(pid, []))
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, []))
    return found


def tiny_image(client, tag: str) -> str:
    """An image with just /bin/sh (dash), sleep and cat and the libraries they need, from this
    machine's files: enough to run a container that prints, without any registry."""
    import io
    import tarfile

    files = ["/bin/dash", "/bin/sleep", "/bin/cat", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path in files:
            tar.add(os.path.realpath(path), arcname=path.lstrip("/"))
        link = tarfile.TarInfo("bin/sh")
        link.type, link.linkname = tarfile.SYMTYPE, "dash"
        tar.addfile(link)
    repo, _, name = tag.rpartition(":")
    client.api.import_image_from_data(buf.getvalue(), repository=repo, tag=name)
    return tag


# ------------------------------------------------------------------------------ for the fixture


class SshHost:
    """What the ``ssh_host`` fixture gives: the server (its controls are available directly:
    ``ssh_host.fail_once(...)``, ``ssh_host.port``...) and the client side, gpujob's key pair and
    known_hosts in the test's $GPUJOB_HOME."""

    def __init__(self, server: SshServer, key_path: Path, public_key: str, known_hosts: Path,
                 alias: str = "i-test-0001") -> None:
        self.server, self.key_path, self.public_key = server, key_path, public_key
        self.known_hosts, self.alias = known_hosts, alias

    def __getattr__(self, name):
        return getattr(self.server, name)

    def connection(self, *, pin_new_key: bool = True, alias: str | None = None, port: int | None = None,
                   **kwargs):
        """A HostConnection (not connected yet) to this host as root."""
        from gpujob.hosts.ssh import HostConnection

        kwargs.setdefault("connect_timeout_s", 5)
        return HostConnection("127.0.0.1", port=port or self.server.port, user="root", key_path=self.key_path,
                              known_hosts=self.known_hosts, alias=alias or self.alias,
                              pin_new_key=pin_new_key, **kwargs)

    def layout(self, docker_host: str = "unix:///var/run/docker.sock"):
        """The host's HostLayout: its files under the test root; its engine at ``docker_host``."""
        from gpujob.hosts.layout import HostLayout

        return HostLayout(root=str(self.server.root), docker_host=docker_host)


def sshd_unavailable() -> str | None:
    """Why this machine cannot run the SSH server tests, or None."""
    if not os.path.exists(SSHD):
        return f"{SSHD} is not installed (apt-get install openssh-server)"
    if os.geteuid() != 0:
        return "the SSH server tests log in as root (the stand-in host's files need it): run them as root"
    if not os.path.exists("/usr/bin/python3"):
        return "the stand-in host's fakes need /usr/bin/python3"
    return None
