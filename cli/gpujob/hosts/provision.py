"""Idempotent set-up of a rented GPU host over SSH.

:func:`provision` runs the :data:`STEPS` in order. Each step is a check (is it in place already?),
an apply when it is not, and the check again to confirm. A finished step reports ``ok`` and is not
redone, so a run that stopped half-way (a dropped connection, a failed step) is completed by
running :func:`provision` again.

* nvidia driver: in place when ``nvidia-smi -L`` lists a GPU. No apply: the image must ship the
  driver (Lambda's do), so this fails with that message.
* docker: ``docker -H <layout.docker_host> version`` answers. Apply: ``apt-get install docker.io``
  when there is no docker CLI at all (an image's docker-ce is left alone), then
  ``systemctl enable --now docker``.
* nvidia container toolkit: ``nvidia-ctk --version`` works and ``docker info`` lists the
  ``nvidia`` runtime. Apply: ``apt-get install nvidia-container-toolkit`` when nvidia-ctk is
  missing, ``nvidia-ctk runtime configure --runtime=docker``, ``systemctl restart docker``.
* job image: ``docker image inspect IMAGE``. Apply: ``docker pull IMAGE``, else
  ``settings.load_image`` streams it from this machine through :meth:`HostConnection.docker_socket`.
* persistent file system (only when ``filesystem_mount`` is set): the mount is a mountpoint, writable,
  with ``gpujob/outputs`` in it. Apply: create ``gpujob/outputs``; a file system that is not mounted
  fails (only the cloud attaches one, at launch), as outputs on the boot disk die with the instance.
* idle agent: ``agent.pyz`` (0644, in ``opt_dir``: :func:`agent_zipapp`), the config and API
  key (0600, in ``etc_dir``, 0700) and the systemd unit match what this gpujob would write (sha256
  and mode), and ``systemctl is-active gpujob-agent``. Apply: upload what differs,
  ``systemctl daemon-reload && systemctl enable --now gpujob-agent``, and restart it when a file
  changed under a running agent. Also makes ``state_dir`` and ``uploads_dir`` (owned by the login
  user, who writes upload markers there over SFTP).

Commands that need root go through ``sudo -n`` when the login user isn't root
(:meth:`HostConnection.privileged`). The API key only ever travels through
:meth:`HostConnection.put_file` (SFTP or stdin), never on a command line, in a log or an error.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import io
import json
import posixpath
import shlex
import time
import zipfile
from dataclasses import dataclass
from typing import Callable, Literal

from gpujob.errors import GpujobError
from gpujob.hosts.layout import AGENT_UNIT, HostLayout
from gpujob.hosts.ssh import HostConnection
from gpujob.hosts.ssh_errors import RemoteCommandFailed

STEPS = ("nvidia driver", "docker", "nvidia container toolkit", "job image", "persistent file system",
         "idle agent")
AGENT_ZIPAPP = "agent.pyz"   # the idle agent as one file, in layout.opt_dir
# What the agent imports, all stdlib-only (a folder: its .py files), from the installed gpujob package.
AGENT_SOURCES = ("__init__.py", "errors.py", "events.py", "wire.py", "gpu_rules.py", "hosts/__init__.py", "hosts/layout.py",
                 "hosts/agent", "hosts/lambda_api")
AGENT_MAIN = b'''"""gpujob's idle agent as shipped to a host (gpujob.hosts.provision.agent_zipapp)."""

import sys

from gpujob.hosts.agent.main import main

sys.exit(main())
'''
AGENT_SERVICE = AGENT_UNIT.removesuffix(".service")
APT_TIMEOUT_S = 1800
APT_LOCK_WAIT_S = 600
PULL_TIMEOUT_S = 3600
AGENT_START_WAIT_S = 10
NOT_FOUND = 127   # the shell's exit status for "command not found"


@dataclass
class ProvisionSettings:
    layout: HostLayout
    image: str                             # the job image to have on the host's engine
    agent_config: dict                     # written to layout.config_path (0600)
    api_key: str                           # written to layout.api_key_path (0600); nowhere else
    filesystem_mount: str | None = None    # e.g. /lambda/nfs/<name>: mounted and writable; outputs under it
    load_image: Callable[[str], None] | None = None   # (local docker URL of the host's engine) -> None

    def __repr__(self) -> str:   # keeps the API key out of tracebacks and logs
        return (f"ProvisionSettings(layout={self.layout!r}, image={self.image!r}, "
                f"filesystem_mount={self.filesystem_mount!r}, api_key='***')")


@dataclass(frozen=True)
class StepResult:
    name: str
    state: Literal["ok", "done", "failed"]   # ok = was already in place; done = set up now
    detail: str


class ProvisionStepFailed(GpujobError):
    """A step that cannot be applied from here (no driver, file system not mounted), or whose
    check still fails after its apply."""

    def __init__(self, step: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"provisioning step {step!r}: {message}", hint=hint)
        self.step = step


def provision(conn: HostConnection, settings: ProvisionSettings, *,
              on_step: Callable[[StepResult], None] = lambda r: None) -> list[StepResult]:
    """Bring the host to the state the module docstring describes; returns one StepResult per step.
    Stops at the first failing step (after reporting it ``failed`` to ``on_step``) by raising
    RemoteCommandFailed (a command failed; its message names the step), ProvisionStepFailed, or
    HostUnreachable (the connection dropped)."""
    host = _Host(conn, settings)
    results = []
    for name, (check, apply) in zip(STEPS, host.steps()):
        try:
            done, detail = check()
            if done:
                result = StepResult(name, "ok", detail)
            else:
                applied = apply(detail)
                done, detail = check()
                if not done:
                    raise ProvisionStepFailed(name, f"still not in place after setting it up: {detail}")
                result = StepResult(name, "done", applied or detail)
        except Exception as e:  # reported, then passed on as it is
            why = e.message if isinstance(e, GpujobError) else f"{type(e).__name__}: {e}"
            on_step(StepResult(name, "failed", why))
            raise
        results.append(result)
        on_step(result)
    return results


def agent_zipapp() -> bytes:
    """The idle agent as one zip application: :data:`AGENT_SOURCES` under their package paths,
    and a ``__main__.py`` that runs :func:`gpujob.hosts.agent.main.main`. The host needs only
    python3 (``python3 agent.pyz``). The bytes depend on the sources alone (fixed order, times
    and modes; stored, not compressed, so no zlib version shows), so a second provision finds
    the same file and uploads nothing."""
    package = importlib.resources.files("gpujob")
    members: list[tuple[str, bytes]] = [("__main__.py", AGENT_MAIN)]
    for name in AGENT_SOURCES:
        source = package.joinpath(*name.split("/"))
        if source.is_dir():
            found = sorted((f"{name}/{f.name}", f) for f in source.iterdir() if f.name.endswith(".py") and f.is_file())
        elif source.is_file():
            found = [(name, source)]
        else:
            found = []
        if not found:
            raise ProvisionStepFailed("idle agent", f"this gpujob installation has no gpujob/{name}",
                                      hint="reinstall gpujob")
        members += [(f"gpujob/{path}", f.read_bytes()) for path, f in found]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for path, data in members:
            info = zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0))
            info.create_system = 3                  # unix, so that the mode below means what it says
            info.external_attr = 0o100644 << 16
            zf.writestr(info, data)
    return buf.getvalue()


def agent_unit(layout: HostLayout) -> str:
    """The systemd unit that runs the agent."""

    def arg(path: str) -> str:
        return f'"{path}"' if any(c.isspace() for c in path) else path

    return ("[Unit]\n"
            "Description=gpujob idle agent: terminates this instance once nothing uses it\n"
            "After=network-online.target docker.service\n"
            "Wants=network-online.target\n\n"
            "[Service]\n"
            f"ExecStart=/usr/bin/python3 {arg(posixpath.join(layout.opt_dir, AGENT_ZIPAPP))} "
            f"--config {arg(layout.config_path)}\n"
            "Restart=always\n"
            "RestartSec=10\n\n"
            "[Install]\n"
            "WantedBy=multi-user.target\n")


def agent_files(settings: ProvisionSettings) -> dict[str, tuple[bytes, int]]:
    """remote path -> (content, mode) for everything the agent needs on the host."""
    lay = settings.layout
    config = json.dumps(settings.agent_config, indent=2, sort_keys=True).encode() + b"\n"
    return {posixpath.join(lay.opt_dir, AGENT_ZIPAPP): (agent_zipapp(), 0o644),
            lay.config_path: (config, 0o600),
            lay.api_key_path: (settings.api_key.strip().encode() + b"\n", 0o600),
            lay.unit_path: (agent_unit(lay).encode(), 0o644)}


class _Host:
    """The commands of each step, for one connection and one set of settings."""

    def __init__(self, conn: HostConnection, settings: ProvisionSettings) -> None:
        self.conn, self.s, self.lay = conn, settings, settings.layout

    def steps(self):
        return [(self.check_driver, self.apply_driver), (self.check_docker, self.apply_docker),
                (self.check_toolkit, self.apply_toolkit), (self.check_image, self.apply_image),
                (self.check_filesystem, self.apply_filesystem), (self.check_agent, self.apply_agent)]

    # -- helpers

    def sh(self, command: str, step: str, *, root: bool = False, check: bool = True,
           timeout_s: float = 300, does: str | None = None):
        """Run one command of ``step``; its errors name the step and ``does`` (default: the command)."""
        return self.conn.run(self.conn.privileged(command) if root else command, check=check,
                             timeout_s=timeout_s, what=f"provisioning step {step!r}: {does or f'`{command}`'}")

    def docker(self, args: str) -> str:
        return f"docker -H {shlex.quote(self.lay.docker_host)} {args}"

    def apt_install(self, package: str, step: str, hint: str | None = None) -> None:
        # A freshly booted Ubuntu runs unattended-upgrades: wait for the dpkg lock instead of failing.
        apt = f"DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout={APT_LOCK_WAIT_S}"
        try:
            self.sh(f"{apt} update -q", step, root=True, timeout_s=APT_TIMEOUT_S)
            self.sh(f"{apt} install -y -q {package}", step, root=True, timeout_s=APT_TIMEOUT_S)
        except RemoteCommandFailed as e:
            if hint and not e.hint:
                e.hint = hint
            raise

    # -- nvidia driver

    def check_driver(self):
        r = self.sh("nvidia-smi -L", "nvidia driver", check=False, timeout_s=60)
        gpus = [line.split(" (UUID")[0] for line in r.stdout.splitlines() if line.startswith("GPU ")]
        if r.exit_code == 0 and gpus:
            return True, f"{len(gpus)} GPU{'s' if len(gpus) > 1 else ''}: " + ", ".join(
                g.split(": ", 1)[-1] for g in gpus)
        why = "nvidia-smi is not installed" if r.exit_code == NOT_FOUND else \
            f"`nvidia-smi -L` {'lists no GPU' if r.exit_code == 0 else f'exited {r.exit_code}'}: " + \
            (r.stderr.strip() or r.stdout.strip() or "no output")[-300:]
        return False, why

    def apply_driver(self, why: str):
        raise ProvisionStepFailed(
            "nvidia driver", f"the host has no working NVIDIA driver ({why}). gpujob does not install "
            "GPU drivers: the instance's image must ship one.",
            hint="launch it from an image with the NVIDIA driver (Lambda's default image, Lambda Stack, "
                 "has it); if the driver was just upgraded, rebooting the instance loads it")

    # -- docker

    def check_docker(self):
        r = self.sh(self.docker("version --format '{{.Server.Version}}'"), "docker", root=True,
                    check=False, timeout_s=60)
        if r.exit_code == 0 and r.stdout.strip():
            return True, f"Docker {r.stdout.strip()}"
        return False, "no docker CLI" if r.exit_code == NOT_FOUND else \
            (r.stderr.strip().splitlines() or ["the engine does not answer"])[-1]

    def apply_docker(self, why: str):
        installed = False
        if why == "no docker CLI":
            self.apt_install("docker.io", "docker")
            installed = True
        self.sh("systemctl enable --now docker", "docker", root=True, timeout_s=120)
        return "installed docker.io and started it" if installed else "started the Docker engine"

    # -- nvidia container toolkit

    def check_toolkit(self):
        step = "nvidia container toolkit"
        r = self.sh("nvidia-ctk --version", step, check=False, timeout_s=60)
        if r.exit_code != 0:
            return False, "nvidia-ctk is not installed" if r.exit_code == NOT_FOUND else \
                f"`nvidia-ctk --version` exited {r.exit_code}"
        version = (r.stdout.strip().splitlines() or ["nvidia-ctk"])[0]
        info = self.sh(self.docker("info --format '{{json .Runtimes}}'"), step, root=True, timeout_s=60)
        try:
            runtimes = json.loads(info.stdout or "{}") or {}
        except ValueError:
            runtimes = {}
        if "nvidia" not in runtimes:
            return False, "the Docker engine has no nvidia runtime"
        return True, f"{version}; Docker has the nvidia runtime"

    def apply_toolkit(self, why: str):
        step = "nvidia container toolkit"
        did = []
        if why == "nvidia-ctk is not installed":
            self.apt_install("nvidia-container-toolkit", step, hint=(
                "the package comes from NVIDIA's apt repository (Lambda Stack images have it); see "
                "https://docs.nvidia.com/datacenter/cloud-native/container-toolkit/latest/install-guide.html"))
            did.append("installed nvidia-container-toolkit")
        self.sh("nvidia-ctk runtime configure --runtime=docker", step, root=True, timeout_s=60)
        self.sh("systemctl restart docker", step, root=True, timeout_s=180)
        self.wait_for_docker(step)
        return ", ".join(did + ["configured Docker's nvidia runtime"])

    def wait_for_docker(self, step: str, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while self.sh(self.docker("version --format '{{.Server.Version}}'"), step, root=True,
                      check=False, timeout_s=30).exit_code != 0:
            if time.monotonic() > deadline:
                raise ProvisionStepFailed(step, f"the Docker engine did not come back within {timeout_s:g} s "
                                                "of its restart")
            time.sleep(1)

    # -- job image

    def check_image(self):
        r = self.sh(self.docker(f"image inspect --format '{{{{.Id}}}}' {shlex.quote(self.s.image)}"),
                    "job image", root=True, check=False, timeout_s=60)
        if r.exit_code == 0 and r.stdout.strip():
            return True, f"{self.s.image} ({r.stdout.strip()[:19]})"
        return False, f"{self.s.image} is not on the host"

    def apply_image(self, why: str):
        step = "job image"
        try:
            self.sh(self.docker(f"pull -q {shlex.quote(self.s.image)}"), step, root=True, timeout_s=PULL_TIMEOUT_S)
            return f"pulled {self.s.image}"
        except RemoteCommandFailed as e:
            if self.s.load_image is None:
                e.hint = e.hint or "push the image to a registry the host can reach, or set runtime.image"
                raise
        with self.conn.docker_socket(self.lay.docker_host) as url:
            self.s.load_image(url)
        return f"copied {self.s.image} from this machine (the host could not pull it)"

    # -- persistent file system

    def outputs_dir(self) -> str:
        return posixpath.join(self.s.filesystem_mount or "", "gpujob", "outputs")

    def check_filesystem(self):
        mount = self.s.filesystem_mount
        if not mount:
            return True, "none requested"
        q = shlex.quote
        r = self.sh(f"mountpoint -q {q(mount)} && echo mounted; test -w {q(mount)} && echo writable; "
                    f"test -d {q(self.outputs_dir())} && test -w {q(self.outputs_dir())} && echo outputs",
                    "persistent file system", check=False, timeout_s=60)
        seen = set(r.stdout.split())
        if {"mounted", "writable", "outputs"} <= seen:
            return True, f"{mount} (outputs in {self.outputs_dir()})"
        if "mounted" not in seen:
            return False, "not mounted"
        if "writable" not in seen:
            return False, "not writable"
        return False, "no outputs folder"

    def apply_filesystem(self, why: str):
        step, mount = "persistent file system", self.s.filesystem_mount
        if why == "not mounted":
            raise ProvisionStepFailed(step, f"the persistent file system is not mounted at {mount}, so outputs "
                                            "written there would be lost with the instance",
                                      hint="Lambda attaches a file system only at launch: terminate this host and "
                                           "launch one with the file system, in the file system's region")
        if why == "not writable":
            raise ProvisionStepFailed(step, f"{mount} is mounted but {self.conn.user} cannot write to it")
        self.sh(f"mkdir -p {shlex.quote(self.outputs_dir())}", step, timeout_s=60)
        return f"created {self.outputs_dir()}"

    # -- idle agent

    def agent_files(self) -> dict[str, tuple[bytes, int]]:
        return agent_files(self.s)

    def dirs(self) -> dict[str, int]:
        return {self.lay.opt_dir: 0o755, self.lay.etc_dir: 0o700, posixpath.dirname(self.lay.unit_path): 0o755,
                self.lay.state_dir: 0o755, self.lay.uploads_dir: 0o755, self.lay.gpu_grants_dir: 0o755}

    def remote_state(self) -> dict[str, str]:
        """remote path -> "sha256 mode" for the agent's files, "dir mode" for its folders (missing: absent)."""
        paths = " ".join(shlex.quote(p) for p in [*self.dirs(), *self.agent_files()])
        script = (f'for f in {paths}; do if [ -d "$f" ]; then echo "dir $(stat -c %a "$f") $f"; '
                  f'elif [ -f "$f" ]; then echo "$(sha256sum < "$f" | cut -d" " -f1) $(stat -c %a "$f") $f"; fi; done')
        r = self.sh(script, "idle agent", root=True, timeout_s=60, does="reading the installed agent's files")
        state = {}
        for line in r.stdout.splitlines():
            digest, mode, path = line.split(" ", 2)
            state[path] = f"{digest} {mode}"
        return state

    def differences(self) -> list[str]:
        have = self.remote_state()
        stale = [path for path, mode in self.dirs().items() if have.get(path) != f"dir {mode:o}"]
        stale += [path for path, (data, mode) in self.agent_files().items()
                  if have.get(path) != f"{hashlib.sha256(data).hexdigest()} {mode:o}"]
        return stale

    def is_active(self) -> str:
        r = self.sh(f"systemctl is-active {AGENT_SERVICE}", "idle agent", root=True, check=False, timeout_s=60)
        return r.stdout.strip() or f"exit {r.exit_code}"

    def check_agent(self):
        stale = self.differences()
        if stale:
            return False, f"{len(stale)} file(s) to install or update"
        state = self.is_active()
        if state != "active":
            return False, f"{AGENT_SERVICE} is {state}"
        return True, f"{AGENT_SERVICE} active"

    def apply_agent(self, why: str):
        step = "idle agent"
        was_active = self.is_active() == "active"
        stale = self.differences()
        q = shlex.quote
        if any(p in self.dirs() for p in stale):
            owner = "" if self.conn.is_root else f" && chown {self.conn._remote_uid} {q(self.lay.uploads_dir)}"
            made = " && ".join(f"mkdir -p {q(d)} && chmod {m:o} {q(d)}" for d, m in self.dirs().items())
            self.sh(made + owner, step, root=True, timeout_s=60, does="creating the agent's folders")
        files = self.agent_files()
        for path in stale:
            if path in files:
                data, mode = files[path]
                self.conn.put_file(path, data, mode=mode, as_root=True)
        changed = any(p in files for p in stale)
        self.sh(f"systemctl daemon-reload && systemctl enable --now {AGENT_SERVICE}", step, root=True, timeout_s=120)
        if changed and was_active:
            self.sh(f"systemctl restart {AGENT_SERVICE}", step, root=True, timeout_s=120)
        self.wait_active(step)
        if not changed:
            return f"started {AGENT_SERVICE}"
        return f"installed {len([p for p in stale if p in files])} file(s) and " + \
            ("restarted" if was_active else "started") + f" {AGENT_SERVICE}"

    def wait_active(self, step: str) -> None:
        deadline = time.monotonic() + AGENT_START_WAIT_S
        while (state := self.is_active()) != "active":
            if time.monotonic() > deadline:
                journal = self.sh(f"journalctl -u {AGENT_SERVICE} -n 20 --no-pager", step, root=True,
                                  check=False, timeout_s=30)
                raise RemoteCommandFailed(f"provisioning step {step!r}: starting {AGENT_SERVICE} (it is {state})",
                                          self.conn.target, None, journal.stdout if journal.exit_code == 0 else "",
                                          timeout_s=AGENT_START_WAIT_S)
            time.sleep(1)
