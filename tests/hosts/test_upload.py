"""Local data copied to a host (gpujob.hosts.upload): resumable, checked by content hash, sent once.

The "host" here is a folder on this machine reached through a Remote that runs the upload's real
shell commands with bash (sha256sum, find, mv) and writes files under a temporary name, renamed
when whole, as the SFTP one does. The same code over real SSH runs in tests/backends/test_host_choice.py.
"""

from __future__ import annotations

import hashlib
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.hosts.upload import PART_SUFFIX, UploadError, build_manifest, upload


class Interrupted(Exception):
    pass


class FolderRemote:
    """The host's side as a folder: commands run by bash; ``fail_after`` sends, the next one is cut
    half-way (a partial temporary file is left behind) and raises, as a dropped connection would."""

    def __init__(self, fail_after: int | None = None) -> None:
        self.sent: list[str] = []
        self.fail_after = fail_after

    def run(self, command: str, *, input: bytes | None = None) -> str:
        r = subprocess.run(["bash", "-c", command], input=input, capture_output=True)
        if r.returncode != 0:
            raise RuntimeError(f"{command}: {r.stderr.decode()}")
        return r.stdout.decode()

    def send(self, local, remote_path: str, on_bytes) -> None:
        data = local if isinstance(local, bytes) else Path(local).read_bytes()
        tmp = Path(remote_path + PART_SUFFIX)
        if self.fail_after is not None and len(self.sent) >= self.fail_after:
            tmp.write_bytes(data[: len(data) // 2])
            raise Interrupted(remote_path)
        tmp.write_bytes(data)
        on_bytes(len(data))
        tmp.rename(remote_path)
        if not isinstance(local, bytes):
            self.sent.append(remote_path.split(".partial/", 1)[1])


def dataset(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    return root


def sha_tree(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in root.rglob("*") if p.is_file()}


FILES = {"clips/a.mp3": b"a" * 5000, "clips/b.mp3": b"b" * 7000, "clips/sub dir/c d.mp3": b"c" * 3,
         "train.tsv": b"path\tsentence\na.mp3\tgeia\n", "validated.tsv": b"x", "empty.txt": b""}


def test_an_interrupted_upload_resumes_without_sending_a_file_twice(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    root = tmp_path / "host" / "data"
    manifest = build_manifest(src)
    first = FolderRemote(fail_after=3)
    with pytest.raises(Interrupted):
        upload(first, manifest, str(root))
    assert len(first.sent) == 3 and not (root / manifest.id).exists()
    assert list((root / f"{manifest.id}.partial").rglob(f"*{PART_SUFFIX}"))   # the torn file is there

    progress: list[tuple[int, int]] = []
    second = FolderRemote()
    done = upload(second, manifest, str(root), on_progress=lambda sent, total: progress.append((sent, total)))
    assert sorted(second.sent) == sorted(set(FILES) - set(first.sent))     # nothing sent twice
    assert done.skipped == sorted(first.sent) and done.sent_files == len(FILES) - 3
    assert done.sent_bytes == sum(len(FILES[f]) for f in second.sent) == progress[-1][0] == progress[-1][1]
    assert sha_tree(Path(done.path)) == sha_tree(src)                     # the same content, nothing more
    assert Path(done.path + ".sha256").read_bytes() == manifest.text()    # the manifest beside it
    assert not (root / f"{manifest.id}.partial").exists()

    third = FolderRemote()
    again = upload(third, build_manifest(src), str(root))
    assert again.cached and third.sent == [] and again.path == done.path  # the same data is not sent again


def test_the_id_is_the_content_not_the_place(tmp_path):
    a = build_manifest(dataset(tmp_path / "a", FILES))
    b = build_manifest(dataset(tmp_path / "elsewhere" / "b", FILES))
    c = build_manifest(dataset(tmp_path / "c", {**FILES, "validated.tsv": b"y"}))
    assert a.id == b.id != c.id


def test_a_file_spoiled_on_the_host_fails_the_check_and_is_sent_again(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    root = tmp_path / "host"
    manifest = build_manifest(src)

    class Spoiling(FolderRemote):
        def send(self, local, remote_path, on_bytes):
            super().send(local, remote_path, on_bytes)
            if remote_path.endswith("train.tsv"):
                Path(remote_path).write_bytes(b"spoiled on the way")

    with pytest.raises(UploadError) as err:
        upload(Spoiling(), manifest, str(root))
    assert "train.tsv differ" in err.value.message
    retry = FolderRemote()
    done = upload(retry, manifest, str(root))
    assert retry.sent == ["train.tsv"] and sha_tree(Path(done.path)) == sha_tree(src)


names = st.text(alphabet=st.characters(codec="utf-8", exclude_characters="/\\", exclude_categories=("Cs", "Cc")),
                min_size=1, max_size=12).filter(lambda n: n not in (".", "..") and not n.endswith(PART_SUFFIX))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(files=st.dictionaries(st.lists(names, min_size=1, max_size=3).map("/".join), st.binary(max_size=300),
                             min_size=1, max_size=8),
       cut=st.integers(0, 8))
def test_any_folder_arrives_whole_after_any_interruption(tmp_path_factory, files, cut):
    tmp = tmp_path_factory.mktemp("up")
    # a path may not be both a file and a folder
    files = {k: v for k, v in files.items() if not any(o.startswith(k + "/") for o in files)}
    src = dataset(tmp / "src", files)
    manifest = build_manifest(src)
    first = FolderRemote(fail_after=cut)
    try:
        upload(first, manifest, str(tmp / "host"))
    except Interrupted:
        pass
    second = FolderRemote()
    done = upload(second, manifest, str(tmp / "host"))
    assert not set(first.sent) & set(second.sent)
    assert sha_tree(Path(done.path)) == sha_tree(src)
