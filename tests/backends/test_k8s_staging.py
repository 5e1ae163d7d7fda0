"""Local data on Kubernetes, staged for the user (issue 27 item 5), in the emulator.

The emulator's kubelet runs each pod here, but these tests take away the switch that lets a pod see
this machine's files (``GPUJOB_K8S_PODS_SEE_THIS_MACHINE``): a local folder reaches the job only by
being uploaded, here onto the cache PVC through a transfer pod and tar over ``pods/exec``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob.backends.local_data import PODS_SEE_THIS_MACHINE
from k8s_emulator import CONFIGMAPS, PODS, FakeCluster

from backends.test_k8s_backend import K8s

pytest.importorskip("kubernetes")
pytest.importorskip("kmock")

# A command job that reads the folder its spec's model.checkpoint names (the staged copy) and
# prints each file's sha256, as the runner would read a dataset.
READ = ("import hashlib, json, os, pathlib\n"
        "spec = json.load(open(os.environ['GPUJOB_SPEC']))\n"
        "root = pathlib.Path(spec['model']['checkpoint'])\n"
        "for p in sorted(root.rglob('*')):\n"
        "    if p.is_file():\n"
        "        print('FILE', p.relative_to(root).as_posix(), hashlib.sha256(p.read_bytes()).hexdigest(), flush=True)\n"
        # and outputs, as a train job leaves them: a final model, metrics, a complete checkpoint
        "out = pathlib.Path(os.environ['GPUJOB_OUTPUT_DIR'])\n"
        "(out / 'model').mkdir(parents=True, exist_ok=True)\n"
        "(out / 'model' / 'model.safetensors').write_bytes(bytes(range(256)) * 1000)\n"
        "(out / 'metrics.json').write_text(json.dumps({'wer': 12.5}))\n"
        "(out / 'checkpoints' / 'checkpoint-2').mkdir(parents=True, exist_ok=True)\n"
        "(out / 'checkpoints' / 'checkpoint-2' / 'state.bin').write_bytes(b'x' * 4321)\n"
        "(out / 'checkpoints' / 'checkpoint-2' / 'complete').write_text('')\n")

FILES = {"clips/a.wav": os.urandom(300_000), "clips/b.wav": os.urandom(5000), "metadata.csv": b"file_name,x\n",
         "sub dir/c d.txt": b"spaces"}


def dataset(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


@pytest.fixture
def cluster(tmp_path):
    with FakeCluster(tmp_path) as fake:
        k8s = K8s(tmp_path, fake.kubeconfig, fake.namespace, "ghcr.io/gpujob/gpujob:test", fake)
        k8s.env.pop(PODS_SEE_THIS_MACHINE)             # the pod sees only what is uploaded
        yield k8s
        assert fake.errors == [], f"the emulator's controllers failed: {fake.errors}"


def files_the_job_read(k8s: K8s, job_id: str) -> dict[str, str]:
    k8s.wait_status(job_id, lambda s: s["status"] == "succeeded", what="the job to succeed")
    read = {}
    for line in k8s.gpujob("logs", job_id).stdout.splitlines():
        if "FILE " in line:
            rel, sha = line.split("FILE ", 1)[1].rsplit(" ", 1)
            read[rel] = sha
    return read


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_a_local_folder_is_staged_on_the_pvc_read_by_the_job_and_sent_once(cluster, tmp_path):
    data = dataset(tmp_path / "my-data", FILES)
    spec = cluster.spec("staged", READ, model={"checkpoint": str(data)})

    first = cluster.gpujob("submit", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"data {data}: 4 of 4 files sent (305018 bytes)" in first.stderr
    job_id = first.stdout.split()[2]
    read = files_the_job_read(cluster, job_id)
    assert read == {rel: hashlib.sha256(b).hexdigest() for rel, b in FILES.items()}   # the pod read the copy

    # the spec the pod read names the staged copy on the PVC, not this machine's folder
    cm = cluster.fake.objects(CONFIGMAPS)
    staged = json.loads(next(c for c in cm if job_id in c["metadata"]["name"])["data"]["spec.json"])
    assert staged["model"]["checkpoint"].startswith("/cache/gpujob-data/")
    # the transfer pod is gone
    assert not [p for p in cluster.fake.objects(PODS) if p["metadata"]["name"].startswith("gpujob-stage-")]

    pulled = cluster.gpujob("pull", job_id, "--to", str(tmp_path / "back"))  # the outputs, off the PVC
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    back = tmp_path / "back"
    assert (back / "model" / "model.safetensors").read_bytes() == bytes(range(256)) * 1000
    assert json.loads((back / "metrics.json").read_text()) == {"wer": 12.5}
    assert (back / "checkpoints" / "checkpoint-2" / "state.bin").read_bytes() == b"x" * 4321
    assert not list(back.rglob("*.part"))
    (back / "metrics.json").unlink()                               # resumable: only what is missing comes
    again_pulled = cluster.gpujob("pull", job_id, "--to", str(back))
    assert again_pulled.returncode == 0, again_pulled.stderr
    assert "1 file (13 B) fetched, 3 already here" in again_pulled.stdout
    assert json.loads((back / "metrics.json").read_text()) == {"wer": 12.5}

    again = cluster.gpujob("submit", str(spec))                  # the same data: nothing is uploaded
    assert again.returncode == 0, again.stderr
    assert "already staged (content " in again.stderr and "nothing sent" in again.stderr
    assert files_the_job_read(cluster, again.stdout.split()[2]) == read

    (data / "clips" / "b.wav").write_bytes(b"changed")          # one file changed: only it is sent
    third = cluster.gpujob("submit", str(spec))
    assert third.returncode == 0, third.stderr
    assert f"data {data}: 1 of 4 files sent (7 bytes)" in third.stderr


def test_a_folder_with_a_link_out_of_it_is_refused_before_anything_is_created(cluster, tmp_path):
    data = dataset(tmp_path / "my-data", FILES)
    (data / "passwd").symlink_to("/etc/passwd")
    result = cluster.gpujob("submit", str(cluster.spec("linked", READ, model={"checkpoint": str(data)})))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "passwd -> /etc/passwd: a link out of the folder" in result.stderr
    assert cluster.fake.objects(PODS) == []


def test_render_says_what_submit_will_stage(cluster, tmp_path):
    data = dataset(tmp_path / "my-data", FILES)
    result = cluster.gpujob("render", str(cluster.spec("shown", READ, model={"checkpoint": str(data)})))
    assert result.returncode == 0, result.stderr
    assert (f"# staged at submit: {data} (model.checkpoint): 4 files, 305018 bytes, to the PVC gpujob-hf-cache at "
            "/cache/gpujob-data/<sha256> (through a transfer pod)") in result.stdout
    assert "PROBLEM" not in result.stdout


def test_a_folder_that_changes_during_the_upload_is_refused_and_not_used(cluster, tmp_path, monkeypatch):
    from gpujob.backends.kubernetes import podexec, staging
    from gpujob.backends.kubernetes.cluster import Cluster
    from gpujob.errors import GpujobError

    monkeypatch.setenv("KUBECONFIG", str(cluster.kubeconfig))
    data = dataset(tmp_path / "my-data", FILES)
    api = Cluster(namespace=cluster.namespace)

    def rewrite_while_sending(done: int, total: int) -> None:
        if 0 < done < total:
            (data / "metadata.csv").write_bytes(b"file_name,x\nnew.wav,1\n")   # a writer is still at work

    with podexec.transfer_pod(api, "gpujob-stage-test", cluster.image, "gpujob-hf-cache", {}) as pod:
        with pytest.raises(GpujobError) as err:
            staging.to_pvc(api, pod, data, on_progress=rewrite_while_sending)
    assert err.value.exit_code == 2
    assert f"{data} changed while it was uploaded (metadata.csv)" in err.value.message
    pvc = tmp_path / "pvc" / "gpujob-hf-cache" / "gpujob-data"
    assert not list(pvc.glob("*.sha256")) and not [p for p in pvc.iterdir() if p.name not in ("blobs",)]


# A command job that reads the bucket folder its spec's model.checkpoint names (s3fs, with the keys the
# pod has from the Secret and the endpoint from runtime.env).
READ_BUCKET = ("import hashlib, json, os, s3fs\n"
               "spec = json.load(open(os.environ['GPUJOB_SPEC']))\n"
               "uri = spec['model']['checkpoint']\n"
               "fs = s3fs.S3FileSystem(endpoint_url=os.environ['AWS_ENDPOINT_URL'])\n"
               "root = uri.removeprefix('s3://')\n"
               "for path in sorted(fs.find(root)):\n"
               "    print('FILE', path[len(root) + 1:], hashlib.sha256(fs.cat_file(path)).hexdigest(), flush=True)\n")


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_a_local_folder_is_staged_to_the_bucket_prefix_read_by_the_job_and_sent_once(cluster, tmp_path, s3):
    import base64

    bucket = s3.bucket("team")
    cluster.env.update(s3.env)                                     # the keys here, to upload
    keys = ["AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"]
    cluster.core.create_namespaced_secret(cluster.namespace, {    # and in the cluster, for the pod
        "apiVersion": "v1", "kind": "Secret", "metadata": {"name": "gpujob-secrets"},
        "data": {k: base64.b64encode(s3.env[k].encode()).decode() for k in keys}})
    data = dataset(tmp_path / "my-data", FILES)
    spec = cluster.spec("bucketed", READ_BUCKET, model={"checkpoint": str(data)},
                        runtime={"stage": f"s3://{bucket}/gpujob", "secrets": keys,
                                 "env": {"AWS_ENDPOINT_URL": s3.url, "AWS_DEFAULT_REGION": "us-east-1"}})

    first = cluster.gpujob("submit", str(spec))
    assert first.returncode == 0, first.stdout + first.stderr
    assert f"data {data}: 4 of 4 files sent (305018 bytes)" in first.stderr
    job_id = first.stdout.split()[2]
    assert files_the_job_read(cluster, job_id) == {rel: hashlib.sha256(b).hexdigest() for rel, b in FILES.items()}
    stored = s3.keys(bucket)
    manifest = next(k for k in stored if k.endswith(".sha256"))
    assert sorted(stored) == sorted([manifest] + [manifest.removesuffix(".sha256") + "/" + rel for rel in FILES])
    assert not [p for p in cluster.fake.objects(PODS) if p["metadata"]["name"].startswith("gpujob-stage-")]

    again = cluster.gpujob("submit", str(spec))                   # the same data: nothing is uploaded
    assert again.returncode == 0, again.stderr
    assert "already staged (content " in again.stderr and "nothing sent" in again.stderr
    files_the_job_read(cluster, again.stdout.split()[2])          # it ends (the next one writes where it did)

    (data / "extra.txt").write_bytes(b"new")                       # a new version: only the new file is sent
    third = cluster.gpujob("submit", str(spec))
    assert third.returncode == 0, third.stderr
    assert f"data {data}: 1 of 5 files sent (3 bytes), 4 copied inside the bucket" in third.stderr
    assert files_the_job_read(cluster, third.stdout.split()[2])["extra.txt"] == hashlib.sha256(b"new").hexdigest()


def test_a_stage_prefix_without_keys_for_the_job_is_refused_naming_them(cluster, tmp_path, s3):
    bucket = s3.bucket("team")
    cluster.env.update(s3.env)
    spec = cluster.spec("nokeys", READ_BUCKET, model={"checkpoint": str(dataset(tmp_path / "d", FILES))},
                        runtime={"stage": f"s3://{bucket}/gpujob", "env": {"AWS_ENDPOINT_URL": s3.url}})
    result = cluster.gpujob("submit", str(spec))
    assert result.returncode == 2, result.stdout + result.stderr
    assert "runtime.stage: s3://" in result.stderr and "AWS_ACCESS_KEY_ID" in result.stderr
    assert "runtime.secrets" in result.stderr and s3.keys(bucket) == []


@settings(max_examples=40, deadline=None)
@given(blobs=st.lists(st.binary(max_size=2000), max_size=6))
def test_the_upload_stream_is_a_tar_of_each_blob_under_its_hash(blobs):
    """What the transfer pod's ``tar -x`` reads: every file whole, named by its sha256, any size
    (0, under and over a 512-byte block), a file that shrank padded so its hash check fails there."""
    import io
    import tarfile
    import tempfile

    from gpujob.backends.kubernetes.staging import _tar

    with tempfile.TemporaryDirectory() as tmp:
        wanted = {}
        for i, data in enumerate(blobs):
            path = Path(tmp) / f"f{i}"
            path.write_bytes(data)
            wanted[hashlib.sha256(data).hexdigest()] = (len(data), path)
        counted = []
        stream = b"".join(_tar(wanted, counted.append))
        assert sum(counted) == sum(size for size, _ in wanted.values())
        with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
            got = {m.name: tar.extractfile(m).read() for m in tar}
        assert {name: hashlib.sha256(data).hexdigest() for name, data in got.items()} == {s: s for s in wanted}
        if wanted:                                   # a file that shrank after hashing: cut short, padded
            sha, (size, path) = next(iter(sorted(wanted.items())))
            original = path.read_bytes()
            path.write_bytes(b"")
            with tarfile.open(fileobj=io.BytesIO(b"".join(_tar({sha: (size, path)}, lambda n: None)))) as tar:
                member = tar.next()
                sent = tar.extractfile(member).read()
            assert member.size == size                            # the stream stays well-formed
            assert (hashlib.sha256(sent).hexdigest() == sha) == (sent == original)   # the pod's check tells


@pytest.mark.slow
def test_an_evaluate_job_reads_its_staged_model_and_data_and_pull_brings_its_metrics_back(cluster, tmp_path,
                                                                                         tiny_model, small_greek):
    """The runner in the pod: model and dataset are folders of this machine, staged on the PVC at submit;
    metrics.json is written on the PVC (a relative output.dir) and `gpujob pull` brings it back with
    the WER the job reported."""
    spec = {"apiVersion": "gpujob/v1", "kind": "evaluate", "name": "eval-staged",
            "model": {"checkpoint": str(tiny_model), "language": "el"},
            "data": {"eval": [{"dataset": str(small_greek), "split": "heldout"}], "loader_workers": 1},
            "evaluation": {"batch_size": 2}, "output": {"dir": "outputs/eval-staged"},
            "resources": {"gpus": 0},
            "runtime": {"backend": "kubernetes", "namespace": cluster.namespace, "image": cluster.image,
                        # the job image is this checkout's gpujob (the spec it reads has this version's keys)
                        "env": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1",
                                "PYTHONPATH": str(Path(__file__).resolve().parents[2] / "cli")}},
            "limits": {"max_runtime": "10m"}}
    path = tmp_path / "eval-staged.yaml"
    path.write_text(json.dumps(spec))
    submitted = cluster.gpujob("submit", str(path), timeout=600)
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    assert submitted.stderr.count("files sent") == 2                   # the model and the dataset
    job_id = submitted.stdout.split()[2]
    done = cluster.wait_status(job_id, lambda s: s["status"] in ("succeeded", "failed"), timeout=600,
                               what="the evaluate job to end")
    assert done["status"] == "succeeded", cluster.gpujob("logs", job_id).stdout[-3000:]
    pulled = cluster.gpujob("pull", job_id, "--to", str(tmp_path / "back"))
    assert pulled.returncode == 0, pulled.stdout + pulled.stderr
    metrics = json.loads((tmp_path / "back" / "metrics.json").read_text())
    reported = cluster.status(job_id)["metrics"]
    assert metrics["wer"] == pytest.approx(reported["wer"])
