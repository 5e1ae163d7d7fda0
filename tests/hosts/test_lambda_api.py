"""The Lambda Cloud client against the emulator (tests/support/lambda_emulator.py), over real HTTP on loopback.
One fake clock drives both: the client's waits advance it, so nothing here really sleeps."""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest

from gpujob.errors import GpujobError, UserError
from gpujob.hosts import lambda_api
from gpujob.hosts.provision import agent_zipapp
from gpujob.hosts.lambda_api import (
    DEFAULT_BASE_URL,
    INSUFFICIENT_CAPACITY,
    MAX_ATTEMPTS,
    NOT_FOUND,
    CapacityError,
    LambdaClient,
    LambdaError,
    api_key,
)
from lambda_emulator import LambdaEmulator
from ports import refusing_port

KEY_NAME = "gpujob-laptop"


class FakeClock:
    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.t = start
        self.sleeps: list[float] = []

    def now(self) -> float:
        return self.t

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(round(seconds, 3))
        self.t += seconds

    def advance(self, seconds: float) -> None:
        self.t += seconds


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def emu(clock):
    with LambdaEmulator(clock=clock.now) as emulator:
        emulator.add_ssh_key(KEY_NAME)
        yield emulator


@pytest.fixture
def client(emu, clock):
    return LambdaClient(emu.api_key, emu.url, sleep=clock.sleep, clock=clock.now)


def launches(emu) -> list[dict]:
    return [r for r in emu.requests if r["path"].endswith("/instance-operations/launch")]


def every_text(error: BaseException) -> str:
    """Everything of an error a user (or a log) could see."""
    return " | ".join(str(x) for x in (error, repr(error), getattr(error, "message", ""),
                                       getattr(error, "hint", ""), getattr(error, "suggestion", ""),
                                       error.args))


# ------------------------------------------------------------------------------ instance types


def test_instance_types_carry_prices_specs_and_regions_with_capacity(client):
    types = client.instance_types()

    h100 = types["gpu_1x_h100_pcie"]
    assert h100.description == "1x H100 (80 GB PCIe)"
    assert h100.price_cents_per_hour == 249 and h100.price_per_hour == pytest.approx(2.49)
    assert (h100.gpus, h100.vcpus, h100.memory_gib, h100.storage_gib) == (1, 26, 200, 1024)
    assert h100.regions_with_capacity == ["us-south-1", "us-west-1"]
    assert types["gpu_1x_a100_sxm4"].regions_with_capacity == []
    assert types["gpu_8x_h100_sxm5"].gpus == 8


# --------------------------------------------------------------------------------- life cycle


def test_launch_boots_then_becomes_active_with_an_ip(client, emu, clock):
    iid = client.launch(instance_type="gpu_1x_a10", region="us-west-1", ssh_key_names=[KEY_NAME],
                        name="gpujob-k3x9qa")

    booting = client.instance(iid)
    assert (booting.status, booting.ip, booting.hostname) == ("booting", None, None)
    assert (booting.name, booting.region, booting.instance_type) == ("gpujob-k3x9qa", "us-west-1", "gpu_1x_a10")
    assert booting.price_cents_per_hour == 75 and booting.ssh_key_names == [KEY_NAME]

    clock.advance(emu.boot_s)
    active = client.instance(iid)
    assert (active.status, active.ip) == ("active", "127.0.0.1")
    assert active.hostname
    sent = launches(emu)[-1]["body"]
    assert sent == {"region_name": "us-west-1", "instance_type_name": "gpu_1x_a10",
                    "ssh_key_names": [KEY_NAME], "file_system_names": [], "name": "gpujob-k3x9qa"}


def test_launch_without_a_region_takes_the_first_region_with_capacity(client, emu):
    iid = client.launch(instance_type="gpu_1x_h100_pcie", ssh_key_names=[KEY_NAME])
    assert emu.instances[iid]["region"] == "us-south-1"
    assert client.instance(iid).name is None


def test_terminate_goes_through_terminating_to_terminated_and_billing_stops(client, emu, clock):
    iid = client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="a")
    clock.advance(600)

    answered = client.terminate([iid])
    assert [(i.id, i.status) for i in answered] == [(iid, "terminating")]
    assert [i.id for i in client.instances()] == [iid]          # still listed while terminating
    assert emu.billed_seconds(iid) == pytest.approx(600)
    assert emu.terminate_calls == [(clock.now(), [iid])]

    clock.advance(emu.terminate_s)
    assert client.instance(iid).status == "terminated"
    assert client.instances() == []                             # gone from the running instances
    clock.advance(3600)
    assert emu.billed_seconds(iid) == pytest.approx(600)        # billing ended at the terminate request
    assert emu.billed_cents(iid) == pytest.approx(10 * 75 / 60)


def test_restart_reboots_an_active_instance_and_refuses_a_booting_one(client, emu, clock):
    iid = client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="r")

    with pytest.raises(LambdaError) as refused:
        client.restart([iid])
    assert refused.value.code == "global/conflict" and refused.value.exit_code == 1
    assert "cannot be restarted while booting" in refused.value.message

    clock.advance(emu.boot_s)
    [restarted] = client.restart([iid])
    assert restarted.status == "booting" and restarted.ip == "127.0.0.1"    # keeps its address
    clock.advance(emu.restart_s)
    assert client.instance(iid).status == "active"
    assert len(emu.restart_calls) == 1


def test_list_get_and_rename(client, emu):
    first = client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="one")
    second = client.launch(instance_type="gpu_1x_gh200", ssh_key_names=[KEY_NAME], name="two")

    assert {(i.id, i.name, i.region) for i in client.instances()} == {
        (first, "one", "us-east-1"), (second, "two", "us-east-3")}
    assert client.rename(second, "renamed").name == "renamed"
    assert client.instance(second).name == "renamed"
    assert client.instance(first).raw["id"] == first


def test_an_unknown_instance_is_a_not_found_user_error(client):
    with pytest.raises(LambdaError) as missing:
        client.instance("0920582c7ff041399e34823a0be62549")
    err = missing.value
    assert err.code == NOT_FOUND and err.status == 404
    assert isinstance(err, UserError) and err.exit_code == 2
    assert "Specified instance does not exist" in err.message
    assert "get instance 0920582c7ff041399e34823a0be62549" in err.message

    with pytest.raises(LambdaError) as unknown:
        client.terminate(["nope"])
    assert unknown.value.code == NOT_FOUND


# ----------------------------------------------------------------------- ssh keys, file systems


def test_ssh_keys_add_list_delete(client, emu):
    added = client.add_ssh_key("gpujob-ci", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIci ci@example\n")
    assert added["name"] == "gpujob-ci" and added["public_key"] == "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIci ci@example"
    assert sorted(k["name"] for k in client.ssh_keys()) == ["gpujob-ci", KEY_NAME]

    client.delete_ssh_key(added["id"])
    assert [k["name"] for k in client.ssh_keys()] == [KEY_NAME]
    with pytest.raises(LambdaError) as gone:
        client.delete_ssh_key(added["id"])
    assert gone.value.code == "global/not-found" and gone.value.exit_code == 2


def test_launch_with_an_unknown_ssh_key_says_which(client):
    with pytest.raises(LambdaError) as err:
        client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=["nobody"], name="x")
    assert err.value.code == NOT_FOUND and err.value.exit_code == 2
    assert "'nobody'" in err.value.message


def test_file_systems_create_mount_and_delete(client, emu, clock):
    fs = client.create_file_system("hf-cache", "us-west-1")
    assert fs["mount_point"] == "/lambda/nfs/hf-cache" and fs["region"]["name"] == "us-west-1"

    with pytest.raises(LambdaError) as wrong_region:
        client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME],
                      file_system_names=["hf-cache"], name="w")
    assert wrong_region.value.code == "instance-operations/launch/file-system-in-wrong-region"
    assert wrong_region.value.exit_code == 2

    iid = client.launch(instance_type="gpu_1x_a10", region="us-west-1", ssh_key_names=[KEY_NAME],
                        file_system_names=["hf-cache"], name="m")
    assert client.instance(iid).file_system_names == ["hf-cache"]
    assert [f["is_in_use"] for f in client.file_systems()] == [True]
    with pytest.raises(LambdaError) as in_use:
        client.delete_file_system(fs["id"])
    assert in_use.value.code == "filesystems/filesystem-in-use"
    assert "terminate the instances using it first" in in_use.value.hint

    client.terminate([iid])
    clock.advance(emu.terminate_s)
    client.delete_file_system(fs["id"])
    assert client.file_systems() == []


# ---------------------------------------------------------------------------------- errors


def test_a_rejected_key_is_a_user_error_that_never_shows_the_key(emu, clock):
    wrong = "secret_wrong_0123456789abcdef"
    client = LambdaClient(wrong, emu.url, sleep=clock.sleep, clock=clock.now)

    with pytest.raises(LambdaError) as rejected:
        client.instances()
    err = rejected.value
    assert err.code == "global/invalid-api-key" and err.status == 401
    assert isinstance(err, UserError) and isinstance(err, GpujobError) and err.exit_code == 2
    assert "rejected the API key" in err.message
    assert "LAMBDA_API_KEY" in err.hint and "API keys" in err.hint
    assert wrong not in every_text(err) and wrong not in repr(client)
    assert len(emu.requests) == 1 and clock.sleeps == []       # a 401 is not retried


def test_the_key_travels_only_in_the_authorization_header(client, emu):
    client.instances()
    client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="h")
    for request in emu.requests:
        assert request["headers"]["Authorization"] == f"Bearer {emu.api_key}"
        assert emu.api_key not in request["path"] + request["query"] + json.dumps(request["body"])
    assert "Python-urllib" not in emu.requests[0]["headers"]["User-Agent"]


def test_a_key_echoed_back_by_the_server_is_scrubbed(client, emu):
    emu.fail_next("GET", "/instances", 400, code="global/invalid-parameters",
                  message=f"bad key {emu.api_key} in request")
    with pytest.raises(LambdaError) as err:
        client.instances()
    assert emu.api_key not in every_text(err.value)
    assert "bad key *** in request" in err.value.message


def test_429_is_retried_honouring_retry_after(client, emu, clock):
    emu.fail_next("GET", "/instances", 429, code="global/too-many-requests", retry_after=7)
    assert client.instances() == []
    assert clock.sleeps == [7]
    assert [r["status"] for r in emu.requests] == [429, 200]


def test_429_without_retry_after_backs_off(client, emu, clock):
    emu.fail_next("GET", "/instance-types", 429, code="global/too-many-requests")
    assert "gpu_1x_a10" in client.instance_types()
    assert clock.sleeps == [lambda_api.INITIAL_BACKOFF_S]


def test_503_twice_then_success(client, emu, clock):
    emu.fail_next("GET", "/ssh-keys", 503, code="provider/internal-unavailable", times=2)
    assert [k["name"] for k in client.ssh_keys()] == [KEY_NAME]
    assert clock.sleeps == [1.0, 2.0]
    assert [r["status"] for r in emu.requests] == [503, 503, 200]


def test_a_persistent_500_gives_up_after_max_attempts_and_says_what_it_tried(client, emu, clock):
    emu.fail_next("GET", "/instances", 500, times=100)
    with pytest.raises(LambdaError) as gave_up:
        client.instances()
    err = gave_up.value
    assert len(emu.requests) == MAX_ATTEMPTS
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0, 16.0]
    assert err.code == "global/internal-error" and err.status == 500 and err.exit_code == 1
    assert err.message == ("Lambda Cloud had an internal error (list instances): An internal server error "
                           f"occurred (tried {MAX_ATTEMPTS} times over 31s)")
    assert err.hint == "try again later"


def test_an_error_without_a_json_body_shows_the_status_and_the_start_of_the_body(client, emu, clock):
    emu.fail_next("GET", "/instances", 400, body="<html><h1>400 Bad Request</h1>" + "x" * 500 + "</html>")
    with pytest.raises(LambdaError) as err:
        client.instances()
    message = err.value.message
    assert "HTTP 400" in message and "GET /instances" in message and "<h1>400 Bad Request</h1>" in message
    assert len(message) < 400                                     # the first 200 characters, not all
    assert clock.sleeps == []                                    # other 4xx are not retried

    emu.fail_next("GET", "/instances", 502, body="Bad gateway", times=MAX_ATTEMPTS)
    with pytest.raises(LambdaError) as gateway:
        client.instances()
    assert "HTTP 502" in gateway.value.message and "'Bad gateway'" in gateway.value.message


def test_an_unreachable_base_url_names_it_and_suggests_the_setting(clock):
    with refusing_port() as port:
        url = f"http://127.0.0.1:{port}/api/v1"
        client = LambdaClient("k" * 20, url, sleep=clock.sleep, clock=clock.now, max_attempts=3)
        with pytest.raises(LambdaError) as err:
            client.instances()
    assert err.value.code == "client/unreachable"
    assert url in err.value.message and "connection refused" in err.value.message
    assert "tried 3 times" in err.value.message
    assert "GPUJOB_LAMBDA_API_URL" in err.value.hint and "network" in err.value.hint
    assert clock.sleeps == [1.0, 2.0]


def test_a_base_url_that_is_not_the_api_says_so(client, emu):
    emu.fail_next("GET", "/instances", 200, body="<!doctype html><title>Lambda</title>")
    with pytest.raises(LambdaError) as err:
        client.instances()
    assert err.value.code == "client/bad-response"
    assert emu.url in err.value.message and "<!doctype html>" in err.value.message
    assert "GPUJOB_LAMBDA_API_URL" in err.value.hint and DEFAULT_BASE_URL in err.value.hint


def test_a_redirect_is_not_followed_with_the_key(client, emu):
    emu.fail_next("GET", "/instances", 301, body="", headers={"Location": emu.url + "/instances?moved"})
    with pytest.raises(LambdaError) as err:
        client.instances()
    assert err.value.code == "client/redirect" and err.value.exit_code == 2
    assert "redirected GET /instances to" in err.value.message
    assert len(emu.requests) == 1                 # the Authorization header was not sent on


def test_quota_exceeded_is_a_user_error_with_what_to_do(emu, clock):
    emu.max_instances = 1
    client = LambdaClient(emu.api_key, emu.url, sleep=clock.sleep, clock=clock.now)
    client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="q1")
    with pytest.raises(LambdaError) as err:
        client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="q2")
    assert err.value.code == "global/quota-exceeded" and err.value.exit_code == 2
    assert "quota" in err.value.message and "terminate instances" in err.value.hint


def test_an_unknown_instance_type_suggests_the_close_one(client, emu):
    with pytest.raises(LambdaError) as err:
        client.launch(instance_type="gpu_1x_h100_pci", ssh_key_names=[KEY_NAME])
    assert err.value.exit_code == 2
    assert "did you mean gpu_1x_h100_pcie?" in err.value.message
    assert launches(emu) == []


# --------------------------------------------------------------------------------- capacity


def test_no_capacity_in_the_region_lists_the_regions_that_have_some_before_any_launch(client, emu):
    with pytest.raises(CapacityError) as err:
        client.launch(instance_type="gpu_1x_h100_pcie", region="us-east-1", ssh_key_names=[KEY_NAME])
    assert err.value.message == ("gpu_1x_h100_pcie has no capacity in us-east-1; "
                                 "it has capacity in: us-south-1, us-west-1")
    assert err.value.regions_with_capacity == ["us-south-1", "us-west-1"]
    assert err.value.code == INSUFFICIENT_CAPACITY and err.value.exit_code == 1
    assert launches(emu) == []


def test_no_capacity_anywhere_says_so_and_names_types_that_have_some(client, emu):
    with pytest.raises(CapacityError) as err:
        client.launch(instance_type="gpu_1x_a100_sxm4", ssh_key_names=[KEY_NAME])
    assert err.value.message == "gpu_1x_a100_sxm4 has no capacity in any region right now"
    assert err.value.regions_with_capacity == []
    assert "gpu_1x_a10" in err.value.hint
    assert launches(emu) == []

    emu.capacity["gpu_1x_a100_sxm4"].add("us-west-2")            # capacity appears
    iid = client.launch(instance_type="gpu_1x_a100_sxm4", ssh_key_names=[KEY_NAME])
    assert emu.instances[iid]["region"] == "us-west-2"


def test_a_capacity_error_from_the_launch_itself_re_reads_the_regions(client, emu):
    emu.fail_next("POST", "/instance-operations/launch", 400, code=INSUFFICIENT_CAPACITY)
    with pytest.raises(CapacityError) as err:
        client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="c")
    assert err.value.message == "gpu_1x_a10 has no capacity in us-east-1; it has capacity in: us-west-1"
    assert err.value.status == 400 and err.value.suggestion
    assert sum(r["path"].endswith("/instance-types") for r in emu.requests) == 2
    assert len(launches(emu)) == 1                                 # not retried


# ------------------------------------------------------------------------------- rate limits


def test_two_launches_in_a_row_wait_for_the_launch_limit_instead_of_a_429(client, emu, clock):
    client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="l1")
    client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="l2")

    assert [r["status"] for r in launches(emu)] == [200, 200]
    first, second = emu.launch_times
    assert second - first >= emu.launch_interval_s == 12.0
    assert clock.sleeps == [lambda_api.LAUNCH_SPACING_S]


def test_the_emulator_enforces_the_launch_limit_and_the_client_retries_its_429(emu, clock):
    client = LambdaClient(emu.api_key, emu.url, sleep=clock.sleep, clock=clock.now, launch_interval_s=0)
    client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="f1")
    second = client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="f2")

    assert [r["status"] for r in launches(emu)] == [200, 429, 429, 429, 429, 200]
    assert clock.sleeps == [1.0, 2.0, 4.0, 8.0]                   # 15 s >= 12 s
    assert launches(emu)[1]["status"] == 429 and emu.instances[second]["name"] == "f2"


def test_a_lost_launch_answer_does_not_launch_twice(client, emu):
    emu.fail_next("POST", "/instance-operations/launch", 502, code="global/internal-error", after=True)
    iid = client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="once")

    assert list(emu.instances) == [iid]
    assert len(launches(emu)) == 1


def test_a_failed_launch_that_did_nothing_is_retried(client, emu, clock):
    emu.fail_next("POST", "/instance-operations/launch", 500, code="global/internal-error")
    iid = client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME], name="again")

    assert list(emu.instances) == [iid]
    assert [r["status"] for r in launches(emu)] == [500, 200]


def test_an_unnamed_launch_is_not_blindly_retried_after_an_ambiguous_failure(client, emu):
    emu.fail_next("POST", "/instance-operations/launch", 502, after=True)
    with pytest.raises(LambdaError) as err:
        client.launch(instance_type="gpu_1x_a10", region="us-east-1", ssh_key_names=[KEY_NAME])
    assert "may or may not have started an instance" in err.value.message
    assert "dashboard" in err.value.hint
    assert len(launches(emu)) == 1 and len(emu.instances) == 1


# ----------------------------------------------------------------------------- the API key


def test_api_key_from_the_environment_stripped():
    assert api_key({"LAMBDA_API_KEY": "  secret_abc\n"}) == "secret_abc"


def test_api_key_from_a_0600_file(tmp_path):
    path = tmp_path / "lambda-api-key"
    path.write_text("secret_from_file\n")
    path.chmod(0o600)
    assert api_key({}, path) == "secret_from_file"
    assert api_key({"GPUJOB_HOME": str(tmp_path)}) == "secret_from_file"


def test_api_key_file_readable_by_others_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "lambda-api-key"
    path.write_text("secret_shared")
    path.chmod(0o644)
    with pytest.raises(UserError) as err:
        api_key({}, path)
    assert str(path) in err.value.message and "0644" in err.value.message
    assert err.value.hint == f"`chmod 600 {path}`" and err.value.exit_code == 2
    assert "secret_shared" not in every_text(err.value)


def test_api_key_file_of_another_user_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "lambda-api-key"
    path.write_text("secret_theirs")
    path.chmod(0o600)
    monkeypatch.setattr(os, "getuid", lambda: os.stat(path).st_uid + 1)
    with pytest.raises(UserError) as err:
        api_key({}, path)
    assert str(path) in err.value.message and "not you" in err.value.message
    assert f"chmod 600 {path}" in err.value.hint


def test_no_api_key_anywhere_says_how_to_set_one(tmp_path):
    with pytest.raises(UserError) as err:
        api_key({"GPUJOB_HOME": str(tmp_path)})
    path = tmp_path / "lambda-api-key"
    assert "LAMBDA_API_KEY is not set" in err.value.message and str(path) in err.value.message
    assert "export LAMBDA_API_KEY=..." in err.value.hint and f"chmod 600 {path}" in err.value.hint
    assert "API keys" in err.value.hint


def test_the_key_is_in_no_repr_and_no_log(emu, clock, caplog):
    caplog.set_level(logging.DEBUG)
    client = LambdaClient(emu.api_key, emu.url, sleep=clock.sleep, clock=clock.now, max_attempts=2)
    emu.fail_next("GET", "/instances", 503, times=2)
    with pytest.raises(LambdaError) as err:
        client.instances()
    assert "LambdaClient(base_url=" in repr(client) and emu.api_key not in repr(client)
    assert emu.api_key not in repr(vars(client))
    assert emu.api_key not in every_text(err.value)
    assert caplog.records and all(emu.api_key not in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- configuration


def test_the_base_url_comes_from_the_argument_the_environment_or_the_default(monkeypatch):
    monkeypatch.delenv("GPUJOB_LAMBDA_API_URL", raising=False)
    assert LambdaClient("k").base_url == DEFAULT_BASE_URL == "https://cloud.lambda.ai/api/v1"
    monkeypatch.setenv("GPUJOB_LAMBDA_API_URL", "http://127.0.0.1:9/api/v1/")
    assert LambdaClient("k").base_url == "http://127.0.0.1:9/api/v1"
    assert LambdaClient("k", "https://example.test/api/v1").base_url == "https://example.test/api/v1"


def test_plain_http_to_another_host_is_refused():
    with pytest.raises(UserError) as err:
        LambdaClient("secret_k", "http://cloud.lambda.ai/api/v1")
    assert "plain http" in err.value.message and "secret_k" not in every_text(err.value)


# --------------------------------------------------------------------------- the emulator


def test_the_emulator_takes_basic_auth_and_answers_401_with_the_documented_body(emu):
    def get(authorization: str | None) -> tuple[int, dict]:
        req = urllib.request.Request(emu.url + "/instances")
        if authorization:
            req.add_header("Authorization", authorization)
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            with opener.open(req, timeout=5) as resp:
                return resp.status, json.load(resp)
        except urllib.error.HTTPError as e:
            return e.code, json.load(e)

    assert get("Basic " + base64.b64encode(f"{emu.api_key}:".encode()).decode()) == (200, {"data": []})
    assert get(f"Bearer {emu.api_key}") == (200, {"data": []})
    assert get(None) == (401, {"error": {"code": "global/invalid-api-key",
                                         "message": "API key was invalid, expired, or deleted.",
                                         "suggestion": "Check your API key or create a new one, then try again."}})


def test_the_client_works_from_the_agents_zipapp_with_the_stdlib_only(emu, tmp_path):
    """The agent uses lambda_api from its zip application on the host, where neither gpujob nor any
    pip package is installed: -I -S leaves PYTHONPATH and site-packages out."""
    pyz = tmp_path / "agent.pyz"
    pyz.write_bytes(agent_zipapp())
    script = f"""
import sys
try:
    import gpujob
    raise SystemExit("gpujob should not be importable here")
except ImportError:
    pass
sys.path.insert(0, {str(pyz)!r})
from gpujob.hosts import lambda_api
from gpujob.errors import UserError
assert all(m.__file__.startswith({str(pyz)!r}) for n, m in sys.modules.items() if n.startswith("gpujob"))
client = lambda_api.LambdaClient({emu.api_key!r}, {emu.url!r})
assert client.instances() == []
try:
    lambda_api.LambdaClient("wrong-key", {emu.url!r}).instances()
except lambda_api.LambdaError as e:
    assert isinstance(e, UserError) and e.exit_code == 2 and e.hint, e
    print("ok", e.code)
"""
    done = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ.get("PATH", "")})
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok global/invalid-api-key"
