"""gpujob.fleet (rented hosts as the registry keeps them) as a user sees it, in the fast tier: `host list`
brought in line with the provider (the Lambda API emulator, tests/support/lambda_emulator.py), the idle
timer in words, which host a job goes to, and the refusals before anything is launched. Launch and
provisioning over SSH are tested end to end in tests/backends/test_host_backend.py (daemon tier)."""

from __future__ import annotations

import time

import pytest

from gpujob.errors import GpujobError, UserError
from gpujob.fleet import access, jobs, transfer, watch
from gpujob.hosts.lambda_api import LambdaClient
from gpujob.registry import Registry
from gpujob.spec.runtime import HostRuntime
from lambda_emulator import LambdaEmulator

HOUR = 3600.0


@pytest.fixture
def emu(monkeypatch):
    with LambdaEmulator(boot_s=0, terminate_s=0.5, launch_interval_s=0) as emu:
        monkeypatch.setenv("LAMBDA_API_KEY", emu.api_key)
        monkeypatch.setenv("GPUJOB_LAMBDA_API_URL", emu.url)
        emu.add_ssh_key("gpujob")
        yield emu


def launch(emu) -> str:
    """An instance started at the provider (as `host up` would; no spacing between launches here)."""
    client = LambdaClient(emu.api_key, base_url=emu.url, launch_interval_s=0)
    return client.launch(instance_type="gpu_1x_a10", ssh_key_names=["gpujob"])


def add_host(registry: Registry, name: str = "box", *, instance_id: str | None = "i-1", state: str = "ready",
             **fields):
    now = time.time()
    fields = {"provider": "lambda", "instance_id": instance_id, "instance_type": "gpu_1x_a10",
              "region": "us-west-1", "ip": "127.0.0.1", "ssh_user": "ubuntu", "ssh_port": 22,
              "price_cents_per_hour": 75.0, "state": state, "idle_minutes": 15.0, "launched_at": now - HOUR,
              "hard_deadline": now + HOUR, **fields}
    return registry.add_host(name=name, **fields)


# ----------------------------------------------------------------------------- host list, in line with the provider


def test_a_host_terminated_at_the_provider_is_listed_as_terminated(emu):
    registry = Registry()
    alive = add_host(registry, "alive", instance_id=launch(emu))
    add_host(registry, "gone", instance_id="no-such-instance")
    watch.sync(registry)   # what `host list` does first (then it reads each ready host's heartbeat over SSH)
    views = watch.list_hosts(registry, all_=True, live=False)
    states = {v.host.name: v.host.state for v in views}
    assert states == {"alive": "ready", "gone": "terminated"}
    gone = registry.get_host("gone")
    assert "terminated" in gone.reason and gone.terminated_at is not None
    assert gone.terminated_at <= time.time()
    assert [h.name for h in registry.list_hosts(active_only=True)] == [alive.name]


def test_a_gone_hosts_end_is_estimated_from_its_agents_last_heartbeat_never_past_the_deadline(emu):
    registry = Registry()
    now = time.time()
    # Idle for 10 of its 15 minutes when last heard from, 20 minutes ago: it ended 5 minutes later.
    add_host(registry, "idle", instance_id="gone-1", heartbeat={"at": now - 1200, "idle_for_s": 600, "activity": []})
    # Its hard deadline passed half an hour ago: billing stopped then (one check later at most).
    add_host(registry, "late", instance_id="gone-2", hard_deadline=now - 1800, heartbeat={})
    watch.sync(registry)
    interval = access.check_interval_s()
    idle_end = registry.get_host("idle").terminated_at
    assert idle_end == pytest.approx(now - 1200 + 300 + interval, abs=5)
    assert registry.get_host("late").terminated_at == pytest.approx(now - 1800 + interval, abs=5)


def test_a_terminating_instance_and_a_new_address_are_taken_from_the_provider(emu):
    registry = Registry()
    stopping, moved = launch(emu), launch(emu)
    add_host(registry, "stopping", instance_id=stopping)
    add_host(registry, "moved", instance_id=moved, ip="10.9.9.9")
    LambdaClient(emu.api_key, base_url=emu.url).terminate([stopping])
    watch.sync(registry)
    assert registry.get_host("stopping").state == "terminating"
    assert registry.get_host("moved").ip == emu.instance_ip


def test_without_the_api_key_host_list_shows_what_gpujob_last_knew_and_says_why(monkeypatch):
    monkeypatch.delenv("LAMBDA_API_KEY", raising=False)
    monkeypatch.setenv("GPUJOB_LAMBDA_API_URL", "http://127.0.0.1:9")
    registry = Registry()
    add_host(registry, "box", ip=None)  # no address: nothing to read a heartbeat from
    said = []
    [view] = watch.list_hosts(registry, say=said.append)
    assert view.host.name == "box" and view.host.state == "ready"
    assert len(said) == 1 and said[0].startswith("showing what gpujob last knew") and "LAMBDA_API_KEY" in said[0]


# ----------------------------------------------------------------------------- the idle timer in words


@pytest.mark.parametrize("beat, idle", [
    ({"at": 1000.0, "idle_for_s": 300, "activity": []}, "idle 5m00s of 15m00s"),
    ({"at": 1000.0, "idle_for_s": 0, "activity": ["job abc123", "ssh session"]}, "busy: job abc123; ssh session"),
    ({"at": 1000.0, "terminating": True}, "terminating"),
])
def test_host_list_says_how_idle_each_host_is(beat, idle):
    host = add_host(Registry(), heartbeat=beat, heartbeat_seen_at=1000.0)
    words, agent = watch.idle_words(host, now=1010.0)
    assert words == idle and agent == "ok"


def test_an_agent_that_stopped_reporting_is_called_silent():
    host = add_host(Registry(), heartbeat={"at": 1000.0, "idle_for_s": 60}, heartbeat_seen_at=1000.0)
    _, agent = watch.idle_words(host, now=1000.0 + 3 * 60 + 600)
    assert agent.startswith("silent for ")
    assert watch.idle_words(add_host(Registry(), "new", state="provisioning"), now=1.0) == ("-", "not reporting yet")


# ----------------------------------------------------------------------------- which host a job runs on


def test_a_job_naming_no_host_no_type_and_no_gpu_is_refused_with_the_three_ways(emu):
    with pytest.raises(UserError) as err:
        jobs.host_for_job(Registry(), HostRuntime())
    assert "runtime.host" in err.value.message and "runtime.host_type" in err.value.message
    assert "resources.gpu_type" in err.value.message


def test_a_job_naming_an_unknown_or_ended_host_says_how_to_start_one(emu):
    registry = Registry()
    with pytest.raises(UserError, match="no host named 'nope'") as err:
        jobs.host_for_job(registry, HostRuntime(host="nope"))
    assert "gpujob host up" in err.value.hint
    add_host(registry, "old", state="terminated", reason="idle for 15m")
    with pytest.raises(UserError, match=r"host old is terminated \(idle for 15m\)") as err:
        jobs.host_for_job(registry, HostRuntime(host="old"))
    assert "gpujob host up --type gpu_1x_a10 --name old" in err.value.hint


def test_a_job_naming_a_type_reuses_an_idle_ready_host_of_it_not_a_busy_or_other_one(emu):
    registry = Registry()
    add_host(registry, "other", instance_id=launch(emu), instance_type="gpu_8x_h100_sxm5")
    idle = add_host(registry, "idle", instance_id=launch(emu))
    said = []
    host = jobs.host_for_job(registry, HostRuntime(host_type="gpu_1x_a10"), say=said.append)
    assert host.name == idle.name and said == ["reusing idle host idle (gpu_1x_a10)"]
    assert len(emu.live_instances()) == 2  # nothing new launched


def test_ssh_to_a_host_that_ended_or_was_never_reached_is_refused_with_the_next_step(emu):
    registry = Registry()
    add_host(registry, "ended", state="terminated")
    with pytest.raises(UserError, match="host ended is terminated; nothing to log in to"):
        access.ssh_argv(registry, "ended", [])
    add_host(registry, "unpinned", instance_id="i-unpinned")
    with pytest.raises(UserError, match="not pinned yet") as err:
        access.ssh_argv(registry, "unpinned", [])
    assert err.value.hint == "finish its set-up first: gpujob host up --name unpinned"


def test_connecting_to_a_host_without_an_address_names_the_command_that_waits_for_it():
    host = add_host(Registry(), "booting", ip=None, state="booting")
    with pytest.raises(GpujobError, match="host booting has no address yet") as err:
        access.connect(host)
    assert "gpujob host up --name booting" in err.value.hint


# ----------------------------------------------------------------------------- transfers, for people


@pytest.mark.parametrize("up_for_s", [30.0, 2 * 3600.0, 40 * 86400.0])
def test_a_transfer_off_a_terminal_prints_a_line_now_and_then_and_one_at_the_end(capsys, monkeypatch, up_for_s):
    """Whatever the monotonic clock reads (seconds since boot on Linux: a fresh CI machine's is small)."""
    monkeypatch.setattr(transfer, "PLAIN_EVERY_S", 3600.0)
    monkeypatch.setattr(transfer.time, "monotonic", lambda: up_for_s)
    with transfer.transfer_progress("image to box") as update:
        for done in range(0, 2_500_001, 100_000):
            update(done, 2_500_000)
    lines = capsys.readouterr().err.splitlines()
    assert len(lines) == 2  # the first, then the last: no line per chunk
    assert lines[0].startswith("gpujob: image to box: 0% (0 B of 2.5 MB")
    assert lines[-1].startswith("gpujob: image to box: 100% (2.5 MB of 2.5 MB")


@pytest.mark.parametrize("n, words", [(999, "999 B"), (1000, "1.0 kB"), (1_234_567, "1.2 MB"),
                                      (5e12, "5.0 TB"), (7.5e15, "7500.0 TB")])
def test_sizes_are_in_decimal_units(n, words):
    assert transfer.fmt_bytes(n) == words
