"""The storage API against a real S3 API (moto's server on 127.0.0.1, through AWS_ENDPOINT_URL)."""

from __future__ import annotations

import pytest

from gpujob.storage import (
    MARKER, AccessDenied, BucketNotFound, MissingCredentials, StorageFailed, Store, commit_dir, committed_children,
    parse_uri, read_manifest, stage,
)


def _tree(root, files):
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def test_upload_list_download_round_trip(s3, tmp_path):
    uri = parse_uri(f"s3://{s3.bucket()}/runs/a")
    store = Store(uri)
    src = _tree(tmp_path / "src", {"x.bin": b"1" * 1000, "d/y.txt": b"hello"})
    seen = []
    store.upload_dir(src, uri, progress=lambda done, total: seen.append((done, total)))
    assert seen[-1] == (1005, 1005) and all(d <= t for d, t in seen)
    assert [(f.rel, f.size) for f in store.list()] == [("d/y.txt", 5), ("x.bin", 1000)]
    got = store.download_dir(uri, tmp_path / "dst")
    assert (tmp_path / "dst/d/y.txt").read_bytes() == b"hello" and len(got) == 2
    assert store.download_dir(uri, tmp_path / "dst") == []  # complete files are skipped
    assert not list((tmp_path / "dst").rglob("*.part"))


def test_an_upload_stays_inside_the_folder_links_out_and_special_files_are_not_sent(s3, tmp_path):
    """Outputs go up through the same walker as every upload (gpujob.datatree): a job that links
    /etc/passwd into its output folder gets the upload refused, naming the link; a fifo is skipped."""
    import os

    from gpujob.datatree import TreeError

    uri = parse_uri(f"s3://{s3.bucket()}/out")
    store = Store(uri)
    src = _tree(tmp_path / "out", {"metrics.json": b"{}"})
    os.mkfifo(src / "pipe")
    (src / "inner").symlink_to("metrics.json")
    assert sorted(f.rel for f in store.upload_dir(src, uri)) == ["inner", "metrics.json"]
    (src / "passwd").symlink_to("/etc/passwd")
    with pytest.raises(TreeError, match="passwd"):
        store.upload_dir(src, uri.child("again"))
    assert not [k for k in s3.keys(uri.bucket) if "passwd" in k or "again" in k or "pipe" in k]


def test_a_directory_is_committed_only_when_its_marker_is_written_last(s3, tmp_path):
    bucket = s3.bucket()
    out = parse_uri(f"s3://{bucket}/out")
    store = Store(out)
    ckpt = _tree(tmp_path / "checkpoint-2", {"model.safetensors": b"w" * 300, "state.json": b"{}"})
    commit_dir(store, ckpt, out.child("checkpoint-2"))
    assert s3.keys(bucket)[-1] == f"out/checkpoint-2/{MARKER}" or f"out/checkpoint-2/{MARKER}" in s3.keys(bucket)
    # a half-uploaded checkpoint (no marker) and one whose file was cut short are not checkpoints
    s3.client().put_object(Bucket=bucket, Key="out/checkpoint-4/model.safetensors", Body=b"w" * 10)
    commit_dir(store, ckpt, out.child("checkpoint-6"))
    s3.client().put_object(Bucket=bucket, Key="out/checkpoint-6/model.safetensors", Body=b"w" * 3)
    assert committed_children(store, out) == [(2, "checkpoint-2")]
    assert read_manifest(store, out.child("checkpoint-2"))["files"] == {"model.safetensors": 300, "state.json": 2}


def test_stage_downloads_only_what_changed(s3, tmp_path):
    bucket = s3.bucket()
    for key, body in {"ds/a.wav": b"a" * 50, "ds/meta.csv": b"file,text\n"}.items():
        s3.client().put_object(Bucket=bucket, Key=key, Body=body)
    uri = parse_uri(f"s3://{bucket}/ds")
    local, first = stage(Store(uri), uri, tmp_path / "cache")
    assert sorted(f.rel for f in first) == ["a.wav", "meta.csv"]
    assert (local / "a.wav").read_bytes() == b"a" * 50
    _, second = stage(Store(uri), uri, tmp_path / "cache")
    assert second == []  # a second job on the same data downloads nothing
    s3.client().put_object(Bucket=bucket, Key="ds/meta.csv", Body=b"file,text\na.wav,hi\n")
    s3.client().delete_object(Bucket=bucket, Key="ds/a.wav")
    local, third = stage(Store(uri), uri, tmp_path / "cache")
    assert [f.rel for f in third] == ["meta.csv"] and not (local / "a.wav").exists()


def test_missing_bucket_is_a_user_error_naming_it(s3, tmp_path):
    uri = parse_uri("s3://no-such-bucket-here/x")
    with pytest.raises(BucketNotFound) as err:
        Store(uri).list()
    assert "no-such-bucket-here" in err.value.message and err.value.exit_code == 2


def test_missing_credentials_name_the_variable(s3, monkeypatch):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(MissingCredentials) as err:
        Store(parse_uri("s3://bkt/x"))
    assert "AWS_SECRET_ACCESS_KEY" in err.value.message and err.value.exit_code == 2


def test_keys_the_store_refuses_are_access_denied(tmp_path, monkeypatch):
    from s3_server import start_s3

    server = start_s3(tmp_path, check_keys=True)
    try:
        for name, value in server.env.items():
            monkeypatch.setenv(name, value)
        with pytest.raises(AccessDenied) as err:
            Store(parse_uri("s3://some-bucket/x")).list()
        assert "403" in err.value.message and err.value.exit_code == 2
    finally:
        server.stop()


def test_server_gone_fails_naming_the_object_after_retries(tmp_path, monkeypatch):
    from ports import refusing_port
    from s3_server import KEYS

    with refusing_port() as port:
        endpoint = f"http://127.0.0.1:{port}"
        for name, value in {**KEYS, "AWS_ENDPOINT_URL": endpoint, "GPUJOB_STORAGE_ATTEMPTS": "2"}.items():
            monkeypatch.setenv(name, value)
        src = _tree(tmp_path / "src", {"model.bin": b"m" * 10})
        uri = parse_uri("s3://bkt/out/final")
        with pytest.raises(StorageFailed) as err:
            Store(uri).upload_dir(src, uri)
    assert "s3://bkt/out/final/model.bin" in err.value.message and "tried 2 times" in err.value.message
    assert err.value.exit_code == 1


def test_the_server_going_away_mid_upload_fails_naming_the_object_and_writes_no_marker(tmp_path, monkeypatch):
    from s3_server import start_s3

    server = start_s3(tmp_path)
    for name, value in {**server.env, "GPUJOB_STORAGE_ATTEMPTS": "2"}.items():
        monkeypatch.setenv(name, value)
    bucket = server.bucket()
    out = parse_uri(f"s3://{bucket}/out")
    store = Store(out)
    ckpt = _tree(tmp_path / "checkpoint-4", {"a.bin": b"a" * 100, "b.bin": b"b" * 100, "c.bin": b"c" * 100})
    at_stop = []

    def stop_after_first_file(done, total):
        if done >= 100 and not at_stop:
            at_stop.append(server.keys(bucket))
            server.go_away()

    try:
        with pytest.raises(StorageFailed) as err:
            commit_dir(store, ckpt, out.child("checkpoint-4"), progress=stop_after_first_file)
    finally:
        server.stop()
    assert at_stop == [["out/checkpoint-4/a.bin"]]  # the marker is written after every file, so never here
    assert f"s3://{bucket}/out/checkpoint-4/b.bin: uploading failed" in err.value.message
    assert "tried 2 times" in err.value.message and err.value.exit_code == 1
