"""The host upload over a real SSH server (tests/support/ssh_server.py), with the safe walker:
links inside the folder carried as files, special files skipped, a loop refused before anything is made."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from gpujob.datatree import TreeError
from gpujob.hosts.upload import SshRemote, build_manifest, upload

pytest.importorskip("paramiko")


def sha_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


def test_a_folder_with_links_inside_and_a_fifo_arrives_as_files_over_ssh(ssh_host, tmp_path):
    src = tmp_path / "cv"
    (src / "clips").mkdir(parents=True)
    (src / "clips" / "a.wav").write_bytes(os.urandom(70_000))
    (src / "train.tsv").write_text("path\tsentence\na.wav\tgeia\n")
    (src / "latest.tsv").symlink_to("train.tsv")
    (src / "audio").symlink_to("clips")
    os.mkfifo(src / "pipe")                                       # os.walk + open would block on it
    manifest = build_manifest(src)
    assert manifest.notes == ["pipe: a fifo, not a regular file; skipped"]
    root = tmp_path / "host-data"
    root.mkdir()
    with ssh_host.connection() as conn:
        done = upload(SshRemote(conn), manifest, str(root))
    got = sha_tree(Path(done.path))
    assert set(got) == {"clips/a.wav", "train.tsv", "latest.tsv", "audio/a.wav"}
    assert got["audio/a.wav"] == got["clips/a.wav"] and got["latest.tsv"] == got["train.tsv"]
    assert not any(Path(done.path).rglob("*")) or all(not p.is_symlink() for p in Path(done.path).rglob("*"))


def test_a_loop_is_refused_before_the_host_is_asked_anything(tmp_path):
    src = tmp_path / "cv"
    src.mkdir()
    (src / "a.wav").write_bytes(b"x")
    (src / "loop").symlink_to(".")
    (src / "again").symlink_to(".")
    with pytest.raises(TreeError) as err:
        build_manifest(src)
    assert "again: a link back to the folder itself (a loop)" in err.value.message
