"""gpujob pull from a Docker job's container on a remote engine (gpujob.backends.docker.pull).

The container is a stand-in at the Docker SDK's boundary: its ``get_archive`` returns what the Engine
API's ``GET /containers/{id}/archive`` does (a tar of the folder, under the folder's own name, in
chunks). Not run against a real engine here (the dockerd tests start one, minutes on 2 cores).
"""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from gpujob.backends.docker.pull import from_container
from gpujob.storage.errors import NothingThere


class Container:
    name = "gpujob-job1"

    def __init__(self, root: Path, extra: list[tarfile.TarInfo] | None = None) -> None:
        self.root, self.extra = root, extra or []

    def get_archive(self, path: str):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            tar.add(self.root, arcname=Path(path).name)
            for info in self.extra:
                tar.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
        data = buf.getvalue()
        return (data[i:i + 1000] for i in range(0, len(data), 1000)), {"name": Path(path).name}


def outputs_folder(root: Path) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.safetensors").write_bytes(b"w" * 5000)
    (root / "metrics.json").write_text('{"wer": 10}')
    for step, done in ((2, True), (4, False)):     # checkpoint-4 is still being written
        ck = root / "checkpoints" / f"checkpoint-{step}"
        ck.mkdir(parents=True)
        (ck / "state.bin").write_bytes(b"s" * step)
        if done:
            (ck / "complete").write_text("")
    return root


def test_a_running_jobs_outputs_come_from_its_container_complete_parts_only(tmp_path):
    src = outputs_folder(tmp_path / "outputs")
    dest = tmp_path / "back"
    seen = []
    pulled = from_container(Container(src), "/outputs", dest, "all", True, lambda d, t: seen.append(d))
    assert (dest / "model" / "model.safetensors").read_bytes() == b"w" * 5000
    assert (dest / "checkpoints" / "checkpoint-2" / "state.bin").read_bytes() == b"ss"
    assert not (dest / "checkpoints" / "checkpoint-4").exists()       # not complete: left out
    assert sorted(p.name for p in dest.iterdir()) == ["checkpoints", "metrics.json", "model"]   # no scratch left
    assert pulled.source == "container gpujob-job1:/outputs" and seen and seen[-1] > 0

    again = from_container(Container(src), "/outputs", dest, "model", True)
    assert again.fetched == 0                                        # already here at their size


def test_links_and_devices_in_the_archive_are_not_unpacked(tmp_path):
    src = outputs_folder(tmp_path / "outputs")
    link = tarfile.TarInfo("outputs/evil")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    up = tarfile.TarInfo("outputs/../../escape.txt")
    up.size = 3
    pulled = from_container(Container(src, [link, up]), "/outputs", tmp_path / "back", "all", False)
    assert not (tmp_path / "back" / "evil").exists() and not (tmp_path / "escape.txt").exists()
    assert pulled.files == 4


def test_an_empty_output_folder_says_nothing_is_there_yet(tmp_path):
    (tmp_path / "outputs").mkdir()
    with pytest.raises(NothingThere):
        from_container(Container(tmp_path / "outputs"), "/outputs", tmp_path / "back", "all", True)
