"""Contract test: the same client against the real Lambda Cloud API, when a key is given.

    GPUJOB_TEST_LAMBDA_API_KEY=... pytest tests/hosts/test_lambda_contract.py
        read-only: instance types, instances, SSH keys, file systems parse into the client's types,
        and a bad key and an unknown instance give the errors the emulator gives.
    GPUJOB_TEST_LAMBDA_LAUNCH=gpu_1x_a10 (as well)
        also launches that type in the first region with capacity, waits until it is active with an
        IP, terminates it and checks it goes terminating/terminated (a few minutes; costs cents).

Without a key (the development machines have no network) the same tests run against the emulator
(tests/support/lambda_emulator.py), which keeps the two honest to each other: what passes here against the
emulator is what the real API is expected to answer.
"""

from __future__ import annotations

import os
import time

import pytest

from gpujob.hosts import lambda_api

KEY = os.environ.get("GPUJOB_TEST_LAMBDA_API_KEY")
LAUNCH = os.environ.get("GPUJOB_TEST_LAMBDA_LAUNCH")
URL = os.environ.get("GPUJOB_LAMBDA_API_URL") or None


@pytest.fixture
def api():
    """(client, base URL): the real API with a key, else the emulator."""
    if KEY:
        yield lambda_api.LambdaClient(KEY, URL), URL
        return
    from lambda_emulator import LambdaEmulator

    with LambdaEmulator(boot_s=0.5, terminate_s=0.5, launch_interval_s=0) as emu:
        yield lambda_api.LambdaClient(emu.api_key, emu.url), emu.url


@pytest.fixture
def client(api):
    return api[0]


def test_instance_types_parse_with_prices_and_regions(client):
    types = client.instance_types()
    assert types, "the account sees no instance types"
    for t in types.values():
        assert t.name and t.price_cents_per_hour > 0 and t.gpus >= 0
        assert all(isinstance(r, str) and r for r in t.regions_with_capacity)


def test_lists_parse(client):
    for inst in client.instances():
        assert inst.id and inst.status in lambda_api.INSTANCE_STATUSES
    assert all("name" in k for k in client.ssh_keys())
    assert all("name" in fs for fs in client.file_systems())


def test_a_bad_key_is_rejected_with_the_documented_code(api):
    bad = lambda_api.LambdaClient("secret_gpujob-contract-bad-key", api[1])
    with pytest.raises(lambda_api.LambdaError) as info:
        bad.instances()
    assert info.value.code == "global/invalid-api-key"
    assert "gpujob-contract-bad-key" not in str(info.value)


def test_an_unknown_instance_is_not_found(client):
    with pytest.raises(lambda_api.LambdaError) as info:
        client.instance("0" * 32)
    assert info.value.code in ("global/object-does-not-exist", "global/not-found")


@pytest.mark.skipif(bool(KEY) and not LAUNCH,
                    reason="set GPUJOB_TEST_LAMBDA_LAUNCH=TYPE to launch (and terminate) a real instance")
def test_launch_becomes_active_and_terminate_ends_it(client, tmp_path):
    from gpujob.hosts.ssh_keys import ensure_keypair

    _, public = ensure_keypair(tmp_path)
    key = client.add_ssh_key(f"gpujob-contract-{int(time.time())}", public)
    instance_id = None
    try:
        instance_id = client.launch(instance_type=LAUNCH or "gpu_1x_a10", ssh_key_names=[key["name"]],
                                    name="gpujob-contract")
        deadline = time.monotonic() + 20 * 60
        inst = client.instance(instance_id)
        while inst.status != "active" and time.monotonic() < deadline:
            assert inst.status in ("booting", "active", "unhealthy"), inst.status
            time.sleep(10 if KEY else 0.2)
            inst = client.instance(instance_id)
        assert inst.status == "active" and inst.ip
    finally:
        if instance_id:
            done = client.terminate([instance_id])
            assert done and done[0].status in ("terminating", "terminated")
        client.delete_ssh_key(key["id"])
