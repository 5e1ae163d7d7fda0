"""The idle agent that runs on a rented GPU host (gpujob/hosts/agent/, shipped as agent.pyz).

Most tests drive a real Agent with a fake clock (60 s per check, nothing sleeps), fake probes (GPU
readings, containers, SSH sessions, uploads) and a fake terminate that records its calls; the
host's files live under a temporary HostLayout root. The real probes are tested where this
machine allows: the Docker probe and container stop against the tests' own dockerd, the SSH
probe on a made-up /proc, the nvidia-smi fallback on made-up output, the agent itself as the
zip application systemd runs.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
import time
import uuid
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import pytest

import gpujob
from gpujob.hosts import provision
from gpujob.hosts.agent.check import HEARTBEAT_VERSION, TERMINATE_REISSUE_S, Agent
from gpujob.hosts.agent.config import AgentConfig, ConfigError
from gpujob.hosts.agent.decide import Decision
from gpujob.hosts.agent.main import build_agent, close_logging, lambda_terminator
from gpujob.hosts.agent.main import main as agent_main
from gpujob.hosts.agent.probes import ContainerInfo, HostProbes, count_ssh_sessions, last_event_time
from gpujob.hosts.layout import HostLayout
from gpujob.hosts.provision import ProvisionSettings
from gpujob.wire import ID_LABEL, IDLE_MINUTES_LABEL, MANAGED_LABEL, docker_time

T0 = 1_750_000_000.0
TICK = 60.0


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float = TICK) -> None:
        self.t += seconds


class FakeProbes:
    """What the host looks like, set by the test; ``fail[name]`` makes that probe raise."""

    def __init__(self, events: list | None = None) -> None:
        self.running: list[ContainerInfo] = []
        self.exited: list[ContainerInfo] = []
        self.gpus: list[float | None] | None = None
        self.ssh = 0
        self.uploads: list[str] = []
        self.fail: dict[str, Exception] = {}
        self.stops: list[tuple[str, float]] = []
        self.events = events if events is not None else []

    def _check(self, name: str) -> None:
        if name in self.fail:
            raise self.fail[name]

    def containers(self):
        self._check("containers")
        return [replace(c) for c in self.running]

    def exited_unsaved(self):
        self._check("exited_unsaved")
        return [replace(c) for c in self.exited]

    def gpu_utilisation(self):
        self._check("gpu_utilisation")
        return self.gpus

    def ssh_sessions(self):
        self._check("ssh_sessions")
        return self.ssh

    def uploads_pending(self):
        self._check("uploads_pending")
        return list(self.uploads)

    def stop_container(self, container_id, grace_s):
        self._check("stop_container")
        self.stops.append((container_id, grace_s))
        self.events.append(("stop", container_id))
        for c in list(self.running):  # like the engine: a stopped container exists until removed
            if c.id == container_id:
                self.running.remove(c)
                self.exited.append(replace(c, state="exited"))


class FakeTerminate:
    def __init__(self, failures: int = 0, events: list | None = None) -> None:
        self.failures = failures
        self.calls = 0
        self.events = events if events is not None else []

    def __call__(self) -> None:
        self.calls += 1
        self.events.append(("terminate",))
        if self.calls <= self.failures:
            raise RuntimeError(f"API unavailable (attempt {self.calls})")


@dataclass
class Host:
    agent: Agent
    probes: FakeProbes
    terminate: FakeTerminate
    clock: Clock
    layout: HostLayout
    events: list

    def tick(self) -> Decision:
        decision = self.agent.tick()
        self.clock.advance()
        return decision

    def ticks(self, n: int) -> list[Decision]:
        return [self.tick() for _ in range(n)]

    def heartbeat(self) -> dict:
        return json.loads(Path(self.layout.heartbeat_path).read_text())


def config(tmp_path: Path, **overrides) -> AgentConfig:
    values = {"instance_id": "i-0123", "idle_minutes": 10.0, "root": str(tmp_path / "host"), "stop_grace_s": 30.0}
    values.update(overrides)
    return AgentConfig(**values)


@pytest.fixture
def make_host(tmp_path):
    def make(probes: FakeProbes | None = None, terminate: FakeTerminate | None = None,
             clock: Clock | None = None, **overrides) -> Host:
        events: list = []
        probes = probes or FakeProbes(events)
        terminate = terminate or FakeTerminate(events=probes.events)
        clock = clock or Clock()
        cfg = config(tmp_path, **overrides)
        agent = Agent(cfg, probes, terminate, clock=clock)
        return Host(agent, probes, terminate, clock, cfg.layout, probes.events)

    return make


def job(job_id: str, *, last_event_at: float | None = None, idle_minutes: float | None = None,
        started_at: float = T0 - 600) -> ContainerInfo:
    return ContainerInfo(id=f"c-{job_id}", job_id=job_id, state="running", started_at=started_at,
                            idle_minutes=idle_minutes, last_event_at=last_event_at)


def first_terminate(decisions: list[Decision]) -> int | None:
    return next((i for i, d in enumerate(decisions) if d.action != "none"), None)


# ----------------------------------------------------------------------------- idle timer


@pytest.mark.parametrize("idle_minutes, ticks_after", [(10, 10), (10.5, 11), (0.5, 1)])
def test_terminates_idle_minutes_after_the_job_ends_not_a_check_before(make_host, idle_minutes, ticks_after):
    host = make_host(idle_minutes=idle_minutes)
    host.probes.running = [job("abc123")]
    active = host.ticks(5)
    assert all(d.activity == ["job abc123 running"] and d.action == "none" for d in active)
    last_active = active[-1].at
    host.probes.running = []                       # the job ended and the client collected it
    idle = host.ticks(ticks_after + 3)
    at = first_terminate(idle)
    assert at is not None and idle[at].at - last_active == ticks_after * TICK
    assert idle[at].at - last_active >= idle_minutes * 60 > idle[at].at - last_active - TICK
    assert idle[at].action == "terminate" and "idle for" in idle[at].reason
    assert host.terminate.calls == 1               # and not again: the API said terminating
    assert [d.action for d in idle[at + 1:]] == ["terminating"] * (len(idle) - at - 1)
    beat = host.heartbeat()
    assert beat["terminating"] is True and beat["terminate_confirmed"] is True


def test_a_fresh_host_counts_as_just_active(make_host):
    host = make_host()
    decisions = host.ticks(12)
    assert first_terminate(decisions) == 10       # idle_minutes after the agent first started
    assert decisions[0].activity == [] and decisions[0].idle_for_s == 0


def test_gpu_busy_keeps_the_host_up(make_host):
    host = make_host()
    host.probes.gpus = [3.0, 87.0]
    decisions = host.ticks(30)
    assert first_terminate(decisions) is None
    assert decisions[-1].activity == ["GPU 1 at 87%"] and decisions[-1].ignored == ["GPU 0 at 3%"]
    host.probes.gpus = [9.9, 10.0]                 # "at or above" the threshold (10 %)
    assert host.tick().activity == ["GPU 1 at 10%"]
    host.probes.gpus = [0.0, None]                 # a GPU that does not report is no evidence
    assert first_terminate(host.ticks(12)) == 9   # idle_minutes after the last busy reading


@pytest.mark.parametrize("keeps_alive", [True, False])
def test_an_interactive_ssh_session_keeps_the_host_up_only_when_configured(make_host, keeps_alive):
    host = make_host(ssh_keeps_alive=keeps_alive)
    host.probes.ssh = 1
    decisions = host.ticks(20)
    if keeps_alive:
        assert first_terminate(decisions) is None and decisions[-1].activity == ["1 SSH session"]
    else:
        assert first_terminate(decisions) == 10
        assert decisions[0].activity == [] and decisions[0].ignored == ["1 SSH session (ssh_keeps_alive is off)"]


def test_exited_but_uncollected_containers_keep_the_host_up(make_host):
    host = make_host()
    host.probes.exited = [replace(job("done1"), state="exited"), replace(job("new1"), state="created")]
    decisions = host.ticks(30)
    assert first_terminate(decisions) is None
    assert decisions[-1].activity == ["job done1 ended; its log and outputs not collected yet",
                                      "job new1 created; not started yet"]
    host.probes.exited = []                        # collected
    assert first_terminate(host.ticks(12)) == 9


def test_an_upload_in_flight_keeps_the_host_up(make_host):
    host = make_host()
    host.probes.uploads = ["abc123"]
    decisions = host.ticks(30)
    assert first_terminate(decisions) is None and decisions[-1].activity == ["upload pending for job abc123"]
    host.probes.uploads = []
    assert first_terminate(host.ticks(12)) == 9


# ----------------------------------------------------------------------------- hung jobs


def test_a_hung_job_is_stopped_recorded_and_then_the_host_goes_idle(make_host):
    host = make_host(idle_minutes=10, stop_grace_s=45)
    host.probes.running = [job("hung1", last_event_at=T0 - 60, idle_minutes=5),   # silent from now on
                           job("quiet", last_event_at=None, idle_minutes=5)]       # never reported: not hung
    decisions = host.ticks(4)                      # T0 .. T0+180: the last event is 1 to 4 minutes old
    assert all(d.hung == [] and "job hung1 running" in d.activity for d in decisions)
    hung = host.tick()                             # T0+240: 5 minutes without an event
    assert hung.hung == ["hung1"] and host.probes.stops == [("c-hung1", 45)]
    assert "job hung1 running" not in hung.activity and "job quiet running" in hung.activity
    record = json.loads(Path(host.layout.hung_dir, "hung1.json").read_text())
    assert record == {"job_id": "hung1", "container_id": "c-hung1", "instance_id": "i-0123",
                      "last_event_at": T0 - 60, "stopped_at": T0 + 240, "idle_minutes": 5,
                      "reason": "no progress events for 5 minutes; stopped as hung"}
    assert "hung1" in host.heartbeat()["hung"]

    # its container still exists (exited) but does not keep the host up; the silent job does
    later = host.tick()
    assert later.activity == ["job quiet running"]
    assert "job hung1 stopped as hung; not waiting for its log and outputs" in later.ignored
    assert host.probes.stops == [("c-hung1", 45)]  # stopped once
    host.probes.running = []
    last_active = later.at
    idle = host.ticks(12)
    assert idle[first_terminate(idle)].at - last_active == 600


def test_the_hung_limit_defaults_for_unlabelled_containers_and_remembers_events(make_host):
    host = make_host(hung_minutes_default=3)
    host.probes.running = [job("nolabel", last_event_at=T0)]
    host.tick()
    # the event scrolls out of the log tail: the agent remembers it
    host.probes.running = [job("nolabel", last_event_at=None)]
    decisions = host.ticks(3)
    assert [d.hung for d in decisions] == [[], [], ["nolabel"]]


def test_events_from_before_the_latest_start_do_not_count(make_host):
    host = make_host()
    host.probes.running = [job("restarted", last_event_at=T0 - 3600, idle_minutes=5, started_at=T0 - 60)]
    assert all(d.hung == [] for d in host.ticks(10))


def test_a_hung_job_whose_stop_fails_is_stopped_at_the_next_check(make_host):
    host = make_host()
    host.probes.running = [job("hung2", last_event_at=T0 - 600, idle_minutes=5)]
    host.probes.fail["stop_container"] = RuntimeError("engine busy")
    first = host.tick()
    assert first.hung == [] and "stop hung job hung2: RuntimeError: engine busy" in first.errors
    assert not Path(host.layout.hung_dir, "hung2.json").exists()
    del host.probes.fail["stop_container"]
    assert host.tick().hung == ["hung2"] and Path(host.layout.hung_dir, "hung2.json").exists()


# ----------------------------------------------------------------------------- terminating


def test_a_failing_terminate_is_retried_every_check_until_it_goes_through(make_host):
    host = make_host(terminate=FakeTerminate(failures=2))
    decisions = host.ticks(14)
    at = first_terminate(decisions)
    assert at == 10
    failed1, failed2, done, after = decisions[at:at + 4]
    assert (failed1.action, failed1.retry) == ("terminate-failed", False)
    assert failed1.terminate_error == "RuntimeError: API unavailable (attempt 1)"
    assert "terminate: RuntimeError: API unavailable (attempt 1)" in failed1.errors
    assert "retrying at the next check" in failed1.summary()
    assert (failed2.action, failed2.retry, failed2.terminate_error) == (
        "terminate-failed", True, "RuntimeError: API unavailable (attempt 2)")
    assert (done.action, done.retry, done.terminate_error) == ("terminate", True, None)
    assert after.action == "terminating" and host.terminate.calls == 3
    beat = host.heartbeat()
    assert beat["terminate_error"] is None and beat["error_counts"]["terminate"] == 2


def test_activity_calls_off_an_idle_terminate_that_has_not_gone_through(make_host):
    host = make_host(terminate=FakeTerminate(failures=100))
    decisions = host.ticks(11)
    assert decisions[-1].action == "terminate-failed"
    host.probes.running = [job("late")]            # the client submitted a job meanwhile
    resumed = host.ticks(5)
    assert [d.action for d in resumed] == ["none"] * 5 and host.terminate.calls == 1
    assert host.heartbeat()["terminating"] is False


def test_the_agent_asks_again_if_the_host_outlives_a_confirmed_terminate(make_host):
    host = make_host(idle_minutes=1)
    decisions = host.ticks(1 + 1 + TERMINATE_REISSUE_S // int(TICK) + 1)
    assert [d.action for d in decisions].count("terminate") == 2 and host.terminate.calls == 2


def test_the_hard_deadline_stops_running_jobs_then_terminates(make_host):
    host = make_host(hard_deadline=T0 + 300, stop_grace_s=30)
    host.probes.running = [job("train1", last_event_at=T0)]
    host.probes.gpus = [95.0]
    decisions = host.ticks(7)
    at = first_terminate(decisions)
    assert at == 5 and decisions[at].at == T0 + 300
    deadline = decisions[at]
    assert deadline.action == "terminate" and deadline.reason.startswith("past the hard deadline")
    assert deadline.stopped == ["train1"] and "GPU 0 at 95%" in deadline.activity
    assert host.events == [("stop", "c-train1"), ("terminate",)]   # stopped first, with grace
    assert host.probes.stops == [("c-train1", 30)]


def test_a_terminate_for_the_deadline_is_not_called_off_by_activity(make_host):
    host = make_host(hard_deadline=T0, terminate=FakeTerminate(failures=2))
    host.probes.gpus = [99.0]
    decisions = host.ticks(4)
    assert [d.action for d in decisions] == ["terminate-failed", "terminate-failed", "terminate", "terminating"]


# ----------------------------------------------------------------------------- robustness


def test_a_probe_that_raises_every_check_neither_crashes_the_agent_nor_keeps_the_host_up(make_host):
    host = make_host()
    host.probes.fail["containers"] = ConnectionRefusedError(111, "Connection refused")
    host.probes.fail["ssh_sessions"] = PermissionError(13, "Permission denied")
    decisions = host.ticks(12)
    assert first_terminate(decisions) == 10       # a broken Docker is no evidence of activity
    assert "containers: ConnectionRefusedError: [Errno 111] Connection refused" in decisions[0].errors
    beat = host.heartbeat()
    assert any(e.startswith("containers: ConnectionRefusedError") for e in beat["errors"])
    assert beat["error_counts"]["containers"] == 12 and beat["error_counts"]["ssh_sessions"] == 12


def test_gpu_use_still_protects_a_job_while_docker_is_down(make_host):
    host = make_host()
    host.probes.fail["containers"] = ConnectionRefusedError(111, "Connection refused")
    host.probes.gpus = [80.0]
    assert first_terminate(host.ticks(30)) is None


def test_a_bug_in_the_decision_is_reported_and_the_loop_goes_on(make_host, monkeypatch):
    host = make_host()
    monkeypatch.setattr(host.agent, "_decide", lambda now: 1 / 0)
    decision = host.tick()
    assert decision.action == "none" and decision.errors == ["decide: ZeroDivisionError: division by zero"]
    assert host.heartbeat()["error_counts"] == {"decide": 1}


def test_run_forever_checks_every_interval_and_survives_a_failing_heartbeat(make_host, tmp_path):
    host = make_host(check_interval_s=60)
    Path(host.layout.state_dir).parent.mkdir(parents=True)
    Path(host.layout.state_dir).write_text("not a directory")   # the heartbeat cannot be written
    slept = []

    def sleep(s):
        slept.append(s)
        host.clock.advance(s)

    host.agent.run_forever(sleep, max_ticks=12)
    assert slept == [60.0] * 11 and host.terminate.calls == 1
    assert host.agent.error_counts["heartbeat"] == 12


# ----------------------------------------------------------------------------- restarts and the heartbeat


def test_a_restart_resumes_the_idle_timer_from_the_heartbeat(make_host):
    first = make_host()
    first.ticks(5)                                 # idle for 4 minutes at the last heartbeat
    assert first.heartbeat()["idle_for_s"] == 240
    # the agent is down for half an hour (a reboot): that time counts neither way
    clock = Clock(first.clock.t + 1800)
    second = make_host(clock=clock)
    decisions = second.ticks(8)
    assert decisions[0].action == "none" and decisions[0].idle_for_s == 240
    assert first_terminate(decisions) == 6        # the remaining 6 of the 10 minutes


def test_a_restart_after_activity_starts_from_zero_and_a_missing_heartbeat_too(make_host):
    first = make_host()
    first.probes.running = [job("j1")]
    first.ticks(3)
    first.probes.running = []
    second = make_host(clock=Clock(first.clock.t + 60))
    assert second.tick().idle_for_s == 0
    os.unlink(second.layout.heartbeat_path)
    third = make_host(clock=Clock(second.clock.t + 3600))
    assert third.tick().idle_for_s == 0 and first_terminate(third.ticks(12)) == 9


def test_a_heartbeat_of_another_instance_is_not_resumed(make_host):
    make_host(instance_id="i-old").ticks(8)
    host = make_host()
    assert host.tick().idle_for_s == 0


def test_the_heartbeat_is_written_atomically_and_says_what_the_agent_sees(make_host):
    host = make_host(hard_deadline=T0 + 7200)
    host.probes.running = [job("abc123", last_event_at=T0 - 5, idle_minutes=30)]
    host.probes.gpus = [87.0]
    host.tick()
    path = Path(host.layout.heartbeat_path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["heartbeat.json"]   # no temporary file left
    beat = host.heartbeat()
    assert beat["version"] == HEARTBEAT_VERSION and beat["instance_id"] == "i-0123"
    assert beat["at"] == T0 and beat["idle_since"] == T0 and beat["idle_for_s"] == 0
    assert beat["idle_minutes"] == 10 and beat["hard_deadline"] == T0 + 7200
    assert beat["activity"] == ["job abc123 running", "GPU 0 at 87%"]
    assert beat["terminating"] is False and beat["terminate_error"] is None and beat["errors"] == []
    assert beat["jobs"] == [{"job_id": "abc123", "container": "c-abc123", "state": "running",
                             "started_at": T0 - 600, "last_event_at": T0 - 5, "idle_minutes": 30, "hung": False}]


# ----------------------------------------------------------------------------- config and the command


def test_config_round_trips_ignores_unknown_keys_and_lists_every_problem(tmp_path):
    cfg = config(tmp_path, hard_deadline=T0, api_base_url="https://cloud.example/api/v1")
    data = json.loads(cfg.to_json())
    assert AgentConfig.from_json(cfg.to_json()) == cfg
    assert AgentConfig.from_json({**data, "from_the_future": 1}) == cfg
    assert cfg.layout == HostLayout(root=str(tmp_path / "host"))
    with pytest.raises(ConfigError) as e:
        AgentConfig.from_json({"idle_minutes": "ten", "gpu_busy_percent": 120, "ssh_keeps_alive": "yes",
                                  "docker_host": "/var/run/docker.sock"})
    assert e.value.problems == [
        "instance_id: missing required key",
        "idle_minutes: must be a number, got 'ten'",
        "gpu_busy_percent: must be between 0 and 100, got 120",
        "ssh_keeps_alive: must be true or false, got 'yes'",
        "docker_host: must be unix:///PATH or tcp://HOST:PORT, got '/var/run/docker.sock'",
    ]
    with pytest.raises(ConfigError, match="not valid JSON"):
        AgentConfig.from_json("{")


def test_a_bad_config_exits_2_with_a_clear_message(tmp_path, capsys):
    path = tmp_path / "agent.json"
    path.write_text(json.dumps({"instance_id": "i-1", "idle_minutes": 0}))
    assert agent_main(["--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert f"invalid agent config {path}" in err and "idle_minutes: must be more than 0, got 0" in err
    assert "Traceback" not in err
    assert agent_main(["--config", str(tmp_path / "missing.json")]) == 2
    assert "cannot read it: No such file or directory" in capsys.readouterr().err


@dataclass
class FakeInstance:
    id: str
    status: str


class FakeLambda:
    made: list = []

    def __init__(self, api_key, base_url, *, fail_with=None, status="terminating"):
        self.api_key, self.base_url, self.fail_with, self.status = api_key, base_url, fail_with, status
        self.calls = []
        FakeLambda.made.append(self)

    def terminate(self, ids):
        self.calls.append(("terminate", ids))
        if self.fail_with:
            raise self.fail_with
        return [FakeInstance(i, self.status) for i in ids]

    def instance(self, instance_id):
        self.calls.append(("instance", instance_id))
        return FakeInstance(instance_id, self.status)


def write_host_config(tmp_path: Path, **overrides) -> tuple[Path, HostLayout, str]:
    cfg = config(tmp_path, idle_minutes=1, api_base_url="https://cloud.example/api/v1", **overrides)
    host = cfg.layout
    Path(host.etc_dir).mkdir(parents=True)
    key = "secret_" + uuid.uuid4().hex
    Path(host.api_key_path).write_text(key + "\n")
    os.chmod(host.api_key_path, 0o600)
    Path(host.config_path).write_text(cfg.to_json())
    return Path(host.config_path), host, key


def test_the_default_wiring_terminates_through_the_api_and_never_shows_the_key(tmp_path):
    path, host, key = write_host_config(tmp_path)
    FakeLambda.made = []
    clock = Clock()
    agent = build_agent(str(path), client_factory=FakeLambda, probes=FakeProbes(), clock=clock)
    try:
        decisions = []
        for _ in range(3):
            decisions.append(agent.tick())
            clock.advance()
    finally:
        close_logging()
    assert [d.action for d in decisions] == ["none", "terminate", "terminating"]
    [client] = FakeLambda.made
    assert (client.api_key, client.base_url) == (key, "https://cloud.example/api/v1")
    assert client.calls == [("terminate", ["i-0123"])]
    log = Path(host.state_dir, "agent.log").read_text()
    assert "terminating instance i-0123" in log
    for text in (log, Path(host.heartbeat_path).read_text()):
        assert key not in text


def test_the_default_terminate_checks_the_instance_and_scrubs_the_key_from_errors(tmp_path):
    path, host, key = write_host_config(tmp_path)

    def refused(api_key, base_url):   # a repeated terminate may be refused; the instance says it goes
        return FakeLambda(api_key, base_url, fail_with=RuntimeError("already terminating"), status="terminated")

    lambda_terminator("i-0123", host.api_key_path, client_factory=refused)()

    def leaky(api_key, base_url):
        return FakeLambda(api_key, base_url, fail_with=RuntimeError(f"401 bad key {api_key}"), status="active")

    with pytest.raises(RuntimeError) as e:
        lambda_terminator("i-0123", host.api_key_path, client_factory=leaky)()
    assert key not in str(e.value) and "401 bad key ***" in str(e.value)

    def ignored(api_key, base_url):
        return FakeLambda(api_key, base_url, status="active")

    with pytest.raises(RuntimeError, match="reports the instance active"):
        lambda_terminator("i-0123", host.api_key_path, client_factory=ignored)()
    os.unlink(host.api_key_path)
    with pytest.raises(RuntimeError, match="cannot read the API key file"):
        lambda_terminator("i-0123", host.api_key_path, client_factory=ignored)()


def ship(tmp_path: Path, **overrides) -> tuple[list[str], HostLayout, str]:
    """What provisioning uploads, written under a temporary host root (and nothing else there),
    and the systemd unit's ExecStart as this machine runs it: this python, isolated (-I: no
    PYTHONPATH, no user site, not the working directory) and without site-packages (-S)."""
    cfg = config(tmp_path, idle_minutes=1, api_base_url="https://cloud.example/api/v1",
                 docker_host=f"unix://{tmp_path}/no-docker.sock", **overrides)
    key = "secret_" + uuid.uuid4().hex
    settings = ProvisionSettings(layout=cfg.layout, image="unused", agent_config=json.loads(cfg.to_json()),
                                 api_key=key)
    for path, (data, mode) in provision.agent_files(settings).items():
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(data)
        os.chmod(path, mode)
    unit = Path(cfg.layout.unit_path).read_text()
    [exec_start] = [line.removeprefix("ExecStart=") for line in unit.splitlines() if line.startswith("ExecStart=")]
    argv = shlex.split(exec_start)
    assert argv[0] == "/usr/bin/python3" and argv[1] == f"{cfg.layout.opt_dir}/agent.pyz"
    return [sys.executable, "-I", "-S", *argv[1:]], cfg.layout, key


@pytest.mark.parametrize("how", ["service", "module"])
def test_the_agent_runs_as_the_service_runs_it(tmp_path, how):
    """As systemd runs what provisioning shipped (agent.pyz, with no gpujob package and no
    site-packages), and as python -m gpujob.hosts.agent. Docker does not answer here."""
    cmd, host, key = ship(tmp_path)
    if how == "module":
        cmd = [sys.executable, "-m", "gpujob.hosts.agent", *cmd[4:]]
    empty = tmp_path / "cwd"
    empty.mkdir()
    done = subprocess.run([*cmd, "--once"], capture_output=True, text=True, timeout=60, cwd=empty)
    assert done.returncode == 0, done.stderr
    printed = json.loads(done.stdout)
    assert printed == json.loads(Path(host.heartbeat_path).read_text())
    assert printed["terminating"] is False and printed["instance_id"] == "i-0123"
    assert any(e.startswith("containers: ") for e in printed["errors"])
    assert key not in done.stdout + done.stderr


def test_the_shipped_agent_imports_only_the_stdlib_and_what_is_shipped(tmp_path):
    """The host has python3 and nothing else: every module the agent loads for --help, a bad
    config and a real check comes from agent.pyz or the standard library."""
    cmd, host, key = ship(tmp_path)
    pyz = cmd[3]
    probe = tmp_path / "probe.py"
    probe.write_text(textwrap.dedent("""
        import json, runpy, sys, sysconfig
        out, sys.argv = sys.argv[1], sys.argv[2:]
        try:
            runpy.run_path(sys.argv[0], run_name="__main__")
            code = None
        except SystemExit as e:
            code = e.code
        stdlib = (sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["platstdlib"])
        outside = sorted(name for name, m in list(sys.modules.items())
                         if getattr(m, "__file__", None) and m.__file__ != __file__
                         and not m.__file__.startswith((sys.argv[0], *stdlib)))
        json.dump({"code": code, "outside": outside}, open(out, "w"))
    """))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"instance_id": "i-1", "idle_minutes": "soon"}))
    runs = {"help": ["--help"], "bad config": ["--config", str(bad)], "check": [*cmd[4:], "--once"]}
    for what, args in runs.items():
        out = tmp_path / f"{what}.json"
        done = subprocess.run([*cmd[:3], str(probe), str(out), pyz, *args], capture_output=True, text=True,
                              timeout=60, cwd=tmp_path)
        seen = json.loads(out.read_text())
        assert seen["outside"] == [], (what, seen, done.stderr)
        assert seen["code"] == {"help": 0, "bad config": 2, "check": 0}[what], (what, done.stderr)
    assert "usage: gpujob-agent" in subprocess.run([*cmd[:4], "--help"], capture_output=True, text=True,
                                                   timeout=60).stdout
    done = subprocess.run([*cmd[:4], "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "idle_minutes: must be a number, got 'soon'" in done.stderr


def test_the_zipapp_is_the_same_bytes_each_time_and_holds_the_sources():
    """Provisioning compares sha256 sums to upload only what changed: the same gpujob must build
    the same agent.pyz, and it must hold exactly the installed sources."""
    data = provision.agent_zipapp()
    assert data == provision.agent_zipapp()
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        names = zf.namelist()
        assert names[0] == "__main__.py" and len(names) == len(set(names))
        package = Path(gpujob.__file__).parent
        for name in names[1:]:
            assert zf.read(name) == (package.parent / name).read_bytes(), name
        assert {i.date_time for i in zf.infolist()} == {(1980, 1, 1, 0, 0, 0)}
    assert {"gpujob/wire.py", "gpujob/hosts/agent/main.py", "gpujob/hosts/lambda_api/client.py"} <= set(names)


def test_provisioning_uploads_the_agent_once_and_restarts_it_only_when_it_changed(ssh_host, monkeypatch):
    """The idle-agent step against the stand-in host (no Docker needed for it): set up once, a
    second run finds everything in place and changes nothing, a changed agent.pyz is uploaded
    alone and the running agent restarted."""
    settings = ProvisionSettings(layout=ssh_host.layout(), image="unused",
                                 agent_config={"instance_id": ssh_host.alias, "idle_minutes": 20},
                                 api_key="secret_" + uuid.uuid4().hex)
    pyz = Path(settings.layout.opt_dir) / "agent.pyz"
    with ssh_host.connection() as conn:
        step = provision._Host(conn, settings)
        done, why = step.check_agent()
        assert not done and why == "10 file(s) to install or update"   # 6 folders, 4 files
        assert step.apply_agent(why) == "installed 4 file(s) and started gpujob-agent"
        assert pyz.read_bytes() == provision.agent_zipapp()
        installed = pyz.stat().st_mtime_ns

        ssh_host.clear_calls()
        assert step.check_agent() == (True, "gpujob-agent active")
        assert all(c[1] == "is-active" for c in ssh_host.calls("systemctl"))
        assert pyz.stat().st_mtime_ns == installed

        monkeypatch.setattr(provision, "AGENT_MAIN", provision.AGENT_MAIN + b"# another version\n")
        done, why = step.check_agent()
        assert not done and why == "1 file(s) to install or update"
        assert step.apply_agent(why) == "installed 1 file(s) and restarted gpujob-agent"
        assert ["systemctl", "restart", "gpujob-agent"] in ssh_host.calls("systemctl")
        assert pyz.read_bytes() == provision.agent_zipapp() and step.check_agent()[0]


# ----------------------------------------------------------------------------- the real probes, without Docker


def test_ssh_sessions_count_only_interactive_sessions(tmp_path):
    proc = tmp_path / "proc"
    cmdlines = {
        "1": b"/sbin/init\0splash\0",
        "400": b"sshd: /usr/sbin/sshd -D [listener] 0 of 10-100 startups\0",
        "501": b"sshd: ubuntu [priv]\0",
        "502": b"sshd: ubuntu@pts/0\0\0\0\0\0\0",          # interactive: counts
        "503": b"-bash\0",
        "601": b"sshd: ubuntu@notty\0",                    # ssh host CMD, scp, gpujob's own: does not count
        "701": b"sshd-session: alice@pts/3\0",             # OpenSSH 9.8+: counts
        "702": b"python3\0-c\0sshd: x@pts/9\0",            # not an sshd
    }
    for pid, data in cmdlines.items():
        (proc / pid).mkdir(parents=True)
        (proc / pid / "cmdline").write_bytes(data)
    (proc / "800").mkdir()                                 # ended while we looked: no cmdline
    (proc / "self").mkdir()
    (proc / "self" / "cmdline").write_bytes(b"sshd: root@pts/7\0")  # not a pid
    probes = HostProbes(HostLayout(root=str(tmp_path)), proc_root=str(proc))
    assert probes.ssh_sessions() == 2
    assert count_ssh_sessions(["sshd: ubuntu@pts/0", "sshd: ubuntu@pts/0 "]) == 1  # one session, one pty


def test_ssh_sessions_on_this_machine_does_not_fail():
    assert HostProbes(HostLayout()).ssh_sessions() >= 0


def test_gpu_utilisation_falls_back_to_nvidia_smi(tmp_path):
    calls = []

    def run(cmd, **kwargs):
        calls.append((cmd, kwargs))
        return subprocess.CompletedProcess(cmd, 0, stdout="87\n 3\n[N/A]\n\n", stderr="")

    probes = HostProbes(HostLayout(root=str(tmp_path)), use_nvml=False, run=run)
    assert probes.gpu_utilisation() == [87.0, 3.0, None]
    [(cmd, kwargs)] = calls
    assert cmd == ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"]
    assert "env" not in kwargs and kwargs["timeout"] > 0

    def missing(cmd, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    assert HostProbes(HostLayout(), use_nvml=False, run=missing).gpu_utilisation() is None

    def broken(cmd, **kwargs):
        return subprocess.CompletedProcess(cmd, 9, stdout="", stderr="NVIDIA-SMI has failed: driver/library mismatch")

    with pytest.raises(RuntimeError, match="nvidia-smi exited 9: NVIDIA-SMI has failed"):
        HostProbes(HostLayout(), use_nvml=False, run=broken).gpu_utilisation()


def test_uploads_pending_are_the_files_in_the_uploads_dir(tmp_path):
    host = HostLayout(root=str(tmp_path))
    probes = HostProbes(host)
    assert probes.uploads_pending() == []          # no folder yet
    Path(host.uploads_dir).mkdir(parents=True)
    Path(host.uploads_dir, "abc123").write_text("")
    Path(host.uploads_dir, "def456.json").write_text("{}")
    Path(host.uploads_dir, ".tmp-x").write_text("")
    assert probes.uploads_pending() == ["abc123", "def456"]


def test_docker_timestamps_and_event_lines():
    assert docker_time("2024-05-01T12:00:00.123456789Z") == pytest.approx(1714564800.123456789)
    assert docker_time("2024-05-01T14:00:00+02:00") == 1714564800
    assert docker_time("0001-01-01T00:00:00Z") is None and docker_time("") is None
    log = ("2024-05-01T12:00:00.5Z @gpujob/v1 {\"event\":\"progress\",\"step\":1}\n"
           "2024-05-01T12:00:09Z \rstep 2 @gpujob/v1 {\"event\":\"heartbeat\"}\n"
           "2024-05-01T12:05:00Z usage: print @gpujob/v1 lines\n"
           "2024-05-01T12:06:00Z plain output\n")
    assert last_event_time(log) == 1714564809
    assert last_event_time("2024-05-01T12:00:00Z nothing\n") is None
    # a system sample (the runner's sampler thread writes one every few seconds) is no sign of progress
    assert last_event_time(log + "2024-05-01T12:07:00Z @gpujob/v1 {\"event\":\"system\",\"n\":3}\n") == 1714564809


# ----------------------------------------------------------------------------- the real probes, against a Docker engine


LABELS = {MANAGED_LABEL: "gpujob"}


class OnlyThese:
    """The real Docker probes, seeing only this test's containers (others may share the engine)."""

    def __init__(self, probes: HostProbes, job_ids: set[str]) -> None:
        self.probes, self.job_ids = probes, job_ids

    def containers(self):
        return [c for c in self.probes.containers() if c.job_id in self.job_ids]

    def exited_unsaved(self):
        return [c for c in self.probes.exited_unsaved() if c.job_id in self.job_ids]

    def stop_container(self, container_id, grace_s):
        self.probes.stop_container(container_id, grace_s)

    def gpu_utilisation(self):   # this machine's own (no GPU, no SSH sessions expected, but not assumed)
        return None

    def ssh_sessions(self):
        return 0

    def uploads_pending(self):
        return []


def wait_for(probe, job_id: str, timeout: float = 60) -> ContainerInfo:
    deadline = time.monotonic() + timeout
    while True:
        found = [c for c in probe() if c.job_id == job_id and c.last_event_at is not None]
        if found:
            return found[0]
        assert time.monotonic() < deadline, f"no container of job {job_id} with a progress event"
        time.sleep(0.2)


@pytest.fixture
def engine_probes(tmp_path, docker_engine):
    return HostProbes(HostLayout(root=str(tmp_path / "host"), docker_host=docker_engine.host), use_nvml=False)


@pytest.fixture
def containers(docker_engine):
    client = docker_engine.client()
    made = []

    def run(image, command, job_id, **kwargs):
        c = client.containers.run(image, command, detach=True, init=True,
                                  labels={**LABELS, ID_LABEL: job_id, **kwargs.pop("labels", {})}, **kwargs)
        made.append(c)
        return c

    yield run
    for c in made:
        try:
            c.remove(force=True)
        except Exception:
            pass


def test_docker_probe_sees_a_running_demo_job_and_its_last_event(engine_probes, containers, docker_demo_image):
    job_id = "agt" + uuid.uuid4().hex[:6]
    c = containers(docker_demo_image, ["python", "-m", "gpujob.demo", "--steps", "2000", "--step-time", "0.05"],
                   job_id, labels={IDLE_MINUTES_LABEL: "5"}, environment={"GPUJOB_OUTPUT_DIR": "/tmp/out"})
    seen = wait_for(engine_probes.containers, job_id)
    assert seen.id == c.id and seen.state == "running" and seen.idle_minutes == 5.0
    assert abs(seen.last_event_at - time.time()) < 10 and abs(seen.started_at - time.time()) < 60
    assert job_id not in [x.job_id for x in engine_probes.exited_unsaved()]

    engine_probes.stop_container(c.id, 5)          # the demo saves and exits on SIGTERM
    assert job_id not in [x.job_id for x in engine_probes.containers()]
    [ended] = [x for x in engine_probes.exited_unsaved() if x.job_id == job_id]
    assert ended.state == "exited"
    engine_probes.stop_container(c.id, 5)          # stopping a stopped container is fine


def test_docker_probe_reads_the_log_of_a_container_with_a_tty(engine_probes, containers, docker_base_image):
    job_id = "agt" + uuid.uuid4().hex[:6]
    code = 'import time; print("@gpujob/v1 {\\"event\\": \\"start\\"}", flush=True); time.sleep(300)'
    containers(docker_base_image, ["python3", "-c", code], job_id, tty=True)
    seen = wait_for(engine_probes.containers, job_id)
    assert abs(seen.last_event_at - time.time()) < 30


def test_a_job_that_went_silent_is_stopped_as_hung_by_a_real_check(tmp_path, engine_probes, containers,
                                                                    docker_base_image, docker_engine):
    job_id = "agt" + uuid.uuid4().hex[:6]
    code = ('import json, time; print("@gpujob/v1 " + json.dumps({"event": "progress", "t": time.time(), '
            '"step": 1}), flush=True); print("loading the next shard", flush=True); time.sleep(3600)')
    c = containers(docker_base_image, ["python3", "-c", code], job_id, labels={IDLE_MINUTES_LABEL: "5"})
    event_at = wait_for(engine_probes.containers, job_id).last_event_at

    cfg = config(tmp_path, idle_minutes=30, stop_grace_s=5, docker_host=docker_engine.host)
    terminate = FakeTerminate()
    agent = Agent(cfg, OnlyThese(engine_probes, {job_id}), terminate, clock=lambda: time.time() + 6 * 60)
    decision = agent.tick()
    assert decision.hung == [job_id] and decision.errors == []
    c.reload()
    assert c.status == "exited"
    record = json.loads(Path(cfg.layout.hung_dir, f"{job_id}.json").read_text())
    assert record["job_id"] == job_id and record["container_id"] == c.id
    assert record["last_event_at"] == event_at
    assert record["reason"] == "no progress events for 5 minutes; stopped as hung"

    after = agent.tick()                           # its container is left for the client, not activity
    assert after.activity == [] and after.hung == [] and terminate.calls == 0
    assert f"job {job_id} stopped as hung; not waiting for its log and outputs" in after.ignored
