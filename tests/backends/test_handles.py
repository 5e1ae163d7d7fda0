"""Each backend's handle (gpujob.backends.handle and the backends' models) and the local backend's launch.json:
what the previous version wrote reads back validated and is written back unchanged; anything else in a
record is read as unknown, never an error."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings, strategies as st

from gpujob.backends.docker.handle import DockerHandle
from gpujob.backends.handle import Handle
from gpujob.backends.host_handle import HostHandle
from gpujob.backends.kubernetes.handle import KubernetesHandle
from gpujob.backends.local_records import LAUNCH_NAME, Launch, LocalHandle

# Handles as the previous version's submit (and the local supervisor, and the service) recorded them.
OLD = [
    (LocalHandle, {"supervisor_pid": 4242, "supervisor_start": 987654, "log": "/h/jobs/abc123/output.log",
                   "withheld": ["AWS_SECRET_ACCESS_KEY"], "pid": 4250, "pgid": 4250,
                   "source": {"dir": "/src", "commit": "deadbeef", "dirty": False}}),
    (LocalHandle, {"supervisor_pid": 4242, "supervisor_start": 987654, "log": "/l",
                   "queue": {"position": 2, "words": "second in the GPU queue"}}),
    (DockerHandle, {"host": "ssh://gpu", "container": "gpujob-x-abc123", "container_id": "f00d", "image": "img:1",
                    "remote": True, "out_in_container": "/outputs", "gpu_queue": True, "outputs_on_host": "/srv/o/abc123"}),
    (HostHandle, {"engine": "unix:///run/docker.sock", "host": "gpu-1", "container": "c", "container_id": "f00d",
                  "image": "img", "remote": True, "out_in_container": "/outputs", "price_cents_per_hour": 75.0}),
    (KubernetesHandle, {"namespace": "ml", "job": "gpujob-x-abc123", "uid": "u-1", "context": "kind", "server": "https://k",
                        "nodes": 2, "objects": [["Secret", "gpujob-x-abc123"], ["Job", "gpujob-x-abc123"]]}),
    (LocalHandle, {"damaged": "its folder /h/jobs/x is damaged: launch.json could not be read"}),
]


@pytest.mark.parametrize("model, old", OLD, ids=lambda v: getattr(v, "__name__", ""))
def test_a_handle_the_previous_version_recorded_reads_back_and_is_written_back_unchanged(model, old):
    handle = model.read(json.loads(json.dumps(old)))
    assert handle.unreadable == ()
    assert handle.dump() == old


def test_each_backend_reads_its_own_keys_typed():
    docker = DockerHandle.read(OLD[2][1])
    assert (docker.container_id, docker.remote, docker.gpu_queue, docker.outputs_on_host) == ("f00d", True, True,
                                                                                             "/srv/o/abc123")
    k8s = KubernetesHandle.read(OLD[4][1])
    assert k8s.nodes == 2 and k8s.objects == [("Secret", "gpujob-x-abc123"), ("Job", "gpujob-x-abc123")]
    host = HostHandle.read(OLD[3][1])
    assert (host.host, host.engine, host.price_cents_per_hour) == ("gpu-1", "unix:///run/docker.sock", 75.0)
    assert Handle.read(OLD[1][1]).queue == {"position": 2, "words": "second in the GPU queue"}


def test_a_key_of_the_wrong_shape_is_read_as_unknown_and_named():
    handle = DockerHandle.read({"container_id": ["x"], "remote": "maybe", "image": "ok", "later": 1})
    assert handle.container_id is None and handle.remote is False and handle.image == "ok"
    assert handle.unreadable == ("container_id", "remote")
    assert handle.dump() == {"image": "ok", "later": 1}
    assert LocalHandle.read(None).supervisor_pid is None and LocalHandle.read([1, 2]).dump() == {}


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**40, 2**40) | st.floats(allow_nan=False) | st.text(max_size=6),
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                    max_leaves=8)
KEYS = st.sampled_from(["supervisor_pid", "supervisor_start", "pid", "pgid", "log", "withheld", "queue", "container_id",
                        "remote", "nodes", "objects", "job", "host", "price_cents_per_hour", "source", "other"])


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([LocalHandle, DockerHandle, HostHandle, KubernetesHandle]), st.dictionaries(KEYS, JSON, max_size=8))
def test_any_recorded_json_reads_as_a_handle_keeping_each_valid_key(model, data):
    handle = model.read(data)
    for key, value in data.items():
        if key in handle.unreadable:
            continue
        if key in model.model_fields:
            assert model.read({key: value}).unreadable == ()  # kept: it is valid on its own too
        else:
            assert handle.model_extra[key] == value  # a key of another version's: kept as it was
    assert model.read(handle.dump()).dump() == handle.dump()  # what is written back reads back the same


def test_launch_json_written_by_the_previous_version_reads_back(tmp_path):
    old = {"argv": ["python", "-m", "gpujob.runner", "/h/jobs/abc123/spec.json"], "workdir": "/src",
           "max_runtime_s": None, "idle_s": 900.0, "budget_s": None, "max_cost": None, "price_per_hour": None,
           "secret_names": ["HF_TOKEN"], "gpu_queue": {"gpus": 2, "candidates": ["GPU-a", "GPU-b"], "priority": 1,
                                                       "share": False},
           "env": {"GPUJOB_OUTPUT_DIR": "/src/out", "CUDA_VISIBLE_DEVICES": ""}, "withheld": []}
    (tmp_path / LAUNCH_NAME).write_text(json.dumps(old, indent=2))
    launch = Launch.read(tmp_path)
    assert launch.argv == old["argv"] and launch.gpu_queue.candidates == ["GPU-a", "GPU-b"] and launch.idle_s == 900.0
    fresh = tmp_path / "new-job"
    fresh.mkdir()
    launch.write(fresh)
    assert Launch.read(fresh) == launch
    assert oct((fresh / LAUNCH_NAME).stat().st_mode & 0o777) == "0o600"  # it names the job's secrets


@pytest.mark.parametrize("queued, outputs", [(False, None), (True, "/srv/o/abc123")])
def test_the_docker_handle_submit_writes_is_the_one_the_previous_version_wrote(queued, outputs):
    """As DockerBackend.submit builds it: optional keys only when they say something."""
    written = DockerHandle(host="ssh://gpu", container="c", container_id="f00d", image="img:1", remote=True,
                           out_in_container="/outputs", gpu_queue=queued or None, outputs_on_host=outputs or None).dump()
    old = {"host": "ssh://gpu", "container": "c", "container_id": "f00d", "image": "img:1", "remote": True,
           "out_in_container": "/outputs", **({"gpu_queue": True} if queued else {}),
           **({"outputs_on_host": outputs} if outputs else {})}
    assert written == old
