"""The docker backend's pure parts: the container plan and the container state in words."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

from gpujob.backends.base import JobRequest
from gpujob.backends.docker.backend import observe
from gpujob.backends.docker.container import ENTRY, SECRETS_FILE, archive, image_user, plan
from gpujob.spec import JobSpec


def request(tmp_path: Path, gpus: int = 2, **over) -> JobRequest:
    spec = JobSpec.model_validate({
        "apiVersion": "gpujob/v1", "kind": "command", "name": "p", "command": ["python", "x.py", "{spec}"],
        "resources": {"gpus": gpus, "shm": "1Gi", "memory": "4Gi", "cpu": "500m"},
        "runtime": {"backend": "docker", "image": "img:1"}})
    base = dict(job_id="abc123", name="p", kind="command", spec=spec, spec_path=None,
                command=["python", "x.py", "{spec}"], env={"A": "1"}, secret_names=["HF_TOKEN"],
                workdir=str(tmp_path), output_dir=str(tmp_path / "outputs/p"), job_dir=tmp_path / "home",
                max_runtime_s=90, labels={"gpujob.dev/id": "abc123", "gpujob.dev/name": "p"})
    base.update(over)
    return JobRequest(**base)


def test_local_engine_plan_mounts_workdir_read_only_and_outputs_writable(tmp_path):
    p = plan(request(tmp_path), local=True, user=(1234, 99), secrets={"HF_TOKEN": "s3cret"})
    c = p.create
    assert c["command"] == ["python", "x.py", "/run/gpujob/spec.json"]
    assert c["user"] == "1234:99" and c["working_dir"] == str(tmp_path)
    mounts = {m["Target"]: m for m in c["mounts"]}
    assert mounts[str(tmp_path)]["ReadOnly"] and mounts[str(tmp_path)]["Type"] == "bind"
    assert not mounts[str(tmp_path / "outputs/p")]["ReadOnly"]
    assert mounts["/cache"]["Source"] == "gpujob-hf-cache"
    assert c["device_requests"] == [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}]
    assert c["shm_size"] == 1024 ** 3 and c["mem_limit"] == 4 * 1024 ** 3 and c["nano_cpus"] == 500_000_000
    assert c["environment"]["GPUJOB_MAX_RUNTIME_S"] == "90" and c["environment"]["A"] == "1"
    assert "s3cret" not in json.dumps(c)            # the create call never carries a secret
    assert dict((path, data) for path, data, _ in p.files)[SECRETS_FILE] == b"HF_TOKEN=s3cret\n"


def test_remote_engine_plan_has_no_bind_mounts_and_a_job_volume_for_outputs(tmp_path):
    p = plan(request(tmp_path, gpus=0), local=False)
    mounts = {m["Target"]: m for m in p.create["mounts"]}
    assert set(mounts) == {"/cache", "/outputs"} and mounts["/outputs"]["Source"] == "gpujob-out-abc123"
    assert "user" not in p.create and "working_dir" not in p.create and "device_requests" not in p.create
    assert p.create["environment"]["GPUJOB_OUTPUT_DIR"] == "/outputs"


def test_secret_values_are_shell_quoted_for_the_entry(tmp_path):
    p = plan(request(tmp_path), local=True, secrets={"HF_TOKEN": "a'b $HOME `x`"})
    body = dict((path, data) for path, data, _ in p.files)[SECRETS_FILE].decode()
    assert body == "HF_TOKEN='a'\"'\"'b $HOME `x`'\n"
    assert 'rm -f "$f"' in ENTRY and 'exec "$@"' in ENTRY


def test_archive_owns_the_run_folder_by_the_job_user():
    data = archive([("/run/gpujob/spec.json", b"{}", 0o400)], (1000, 1000), extra_dirs=("/outputs",))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
    assert members["run/gpujob"].isdir() and members["run/gpujob"].mode == 0o700
    assert members["run/gpujob/spec.json"].uid == 1000 and members["run/gpujob/spec.json"].mode == 0o400
    assert members["outputs"].uid == 1000


def test_image_user():
    assert image_user("") == (0, 0)
    assert image_user("1000:1000") == (1000, 1000) and image_user("1000") == (1000, 1000)
    assert image_user("gpujob") is None


def test_container_state_in_words():
    assert observe({"Status": "created"}).status == "queued"
    assert observe({"Status": "running"}).status == "running"
    assert observe({"Status": "exited", "ExitCode": 0}).status == "succeeded"
    oom = observe({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, memory="4Gi")
    assert oom.status == "failed" and "out of memory (resources.memory: 4Gi)" in oom.reason
    late = observe({"Status": "exited", "ExitCode": 124}, max_runtime_s=7200)
    assert "limits.max_runtime (7200s)" in late.reason
    assert observe({"Status": "exited", "ExitCode": 124}).reason == "exited with code 124"
    err = observe({"Status": "exited", "ExitCode": 127, "Error": 'exec: "python": executable file not found'})
    assert "could not run the job" in err.reason and "python" in err.reason
    assert "SIGTERM" in observe({"Status": "exited", "ExitCode": 143}).reason


def test_a_train_job_with_two_gpus_runs_the_launcher_one_process_per_gpu(tmp_path):
    from gpujob import service
    from gpujob.backends.docker.container import describe
    from gpujob.spec import load_spec_text

    loaded = load_spec_text(
        "apiVersion: gpujob/v1\nkind: train\nname: two\nmodel: {checkpoint: openai/whisper-small, language: el}\n"
        "data: {train: [{dataset: google/fleurs, config: el_gr, split: train}]}\ntraining: {max_steps: 10}\n"
        "resources: {gpus: 2}\nruntime: {backend: docker}\ndistributed: {network_interface: eth0}\n", "two.yaml")
    req = service.build_request(loaded, job_id="abc123", job_dir=tmp_path / "home")
    p = plan(req, local=False)
    c = p.create
    assert c["command"] == ["python", "-m", "gpujob.runner.launch", "--standalone", "--nproc-per-node=2",
                            "/run/gpujob/spec.json"]
    assert c["device_requests"] == [{"Driver": "", "Count": 2, "Capabilities": [["gpu"]]}]
    assert c["environment"]["NCCL_SOCKET_IFNAME"] == c["environment"]["GLOO_SOCKET_IFNAME"] == "eth0"
    assert "command:   python -m gpujob.runner.launch --standalone --nproc-per-node=2 /run/gpujob/spec.json" \
        in describe(p, req, "ssh://gpu-box").splitlines()


def test_a_gpu_job_on_a_host_with_a_queue_is_created_for_the_queue_to_start(tmp_path):
    p = plan(request(tmp_path, gpus=1), local=False, gpu_grants="/var/lib/gpujob/gpus", submitted=1700000000.5)
    c = p.create
    assert p.queued
    assert c["device_requests"] == [{"Driver": "", "Count": -1, "Capabilities": [["gpu"]]}]  # the queue picks one
    assert {k: c["labels"][k] for k in ("gpujob.dev/gpus", "gpujob.dev/priority", "gpujob.dev/submitted",
                                        "gpujob.dev/share-gpus")} == \
        {"gpujob.dev/gpus": "1", "gpujob.dev/priority": "0", "gpujob.dev/submitted": "1700000000.500000",
         "gpujob.dev/share-gpus": "false"}
    grants = next(m for m in c["mounts"] if m["Target"] == "/run/gpujob-gpus")
    assert grants["Source"] == "/var/lib/gpujob/gpus" and grants["ReadOnly"]
    assert c["environment"]["GPUJOB_GPU_GRANT"] == "/run/gpujob-gpus/abc123"
    assert p.files[-1][0] == "/run/gpujob/ready"    # copied in last: the agent starts it only then
    cpu = plan(request(tmp_path, gpus=0), local=False, gpu_grants="/var/lib/gpujob/gpus")
    assert not cpu.queued and "gpujob.dev/gpus" not in cpu.create["labels"]


def test_the_entry_runs_the_job_with_the_granted_gpus_and_refuses_without_a_grant(tmp_path):
    import subprocess

    grant = tmp_path / "abc123"
    grant.write_text("GPU-1111,GPU-2222")
    argv = ["sh", "-c", ENTRY, "gpujob-entry", "sh", "-c", 'echo "cuda=$CUDA_VISIBLE_DEVICES"']
    ok = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "GPUJOB_GPU_GRANT": str(grant)},
                        capture_output=True, text=True)
    assert ok.returncode == 0 and ok.stdout == "cuda=GPU-1111,GPU-2222\n"
    missing = subprocess.run(argv, env={"PATH": "/usr/bin:/bin", "GPUJOB_GPU_GRANT": str(tmp_path / "none")},
                             capture_output=True, text=True)
    assert missing.returncode == 125 and "cuda=" not in missing.stdout
    assert "without GPUs from the host's GPU queue" in missing.stderr


def test_a_container_whose_start_failed_is_failed_not_queued():
    seen = observe({"Status": "created", "Error": "could not select device driver \"\" with capabilities: [[gpu]]",
                    "ExitCode": 128})
    assert seen.status == "failed" and "could not start: could not select device driver" in seen.reason
