"""One safe walk for every upload (gpujob.datatree), through the host upload (gpujob.hosts.upload).

Issue 29 item 7's examples, each failing on 0d79f85: a ``loop -> .`` link multiplied the files 41
times and two of them never finished; links to /etc/passwd and to a .ssh folder were uploaded; a
name that is not UTF-8 raised UnicodeEncodeError. Then a property test over generated trees of
files, folders and links (inside, outside, looping, dangling) for the class.
"""

from __future__ import annotations

import os
import tempfile
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob import datatree
from gpujob.datatree import MAX_VISITS, TreeError
from gpujob.hosts.upload import build_manifest, folder_size, upload

from hosts.test_upload import FolderRemote, dataset, sha_tree

FILES = {"clips/a.mp3": b"a" * 500, "clips/b.mp3": b"b" * 700, "train.tsv": b"path\tsentence\na.mp3\tgeia\n"}


def in_time(fn, seconds: float = 10.0):
    """``fn()``'s result, or the test fails (instead of hanging) when it takes longer than ``seconds``."""
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:       # noqa: BLE001 - handed to the test thread
            box["error"] = exc

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(seconds)
    assert not t.is_alive(), f"still walking after {seconds} s"
    if "error" in box:
        raise box["error"]
    return box["value"]


def test_a_link_back_to_the_folder_is_refused_not_followed(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    (src / "loop").symlink_to(".")
    with pytest.raises(TreeError) as err:
        in_time(lambda: build_manifest(src))
    assert "loop: a link back to the folder itself (a loop)" in err.value.message
    assert err.value.exit_code == 2


def test_two_loops_end_at_once_in_the_dry_run_count(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    (src / "loop").symlink_to(".")
    (src / "clips" / "up").symlink_to("..")
    with pytest.raises(TreeError) as err:
        in_time(lambda: folder_size(src), seconds=5)
    assert "clips/up: a link back to the folder itself" in err.value.message
    assert "loop: a link back" in err.value.message                 # every problem at once


def test_links_out_of_the_folder_are_refused_and_nothing_is_sent(tmp_path):
    secrets = dataset(tmp_path / "home" / ".ssh", {"id_ed25519": b"PRIVATE KEY"})
    src = dataset(tmp_path / "cv", FILES)
    (src / "passwd").symlink_to("/etc/passwd")
    (src / "keys").symlink_to(secrets)
    remote = FolderRemote()
    with pytest.raises(TreeError) as err:
        upload(remote, build_manifest(src), str(tmp_path / "host"))
    assert "passwd -> /etc/passwd: a link out of the folder" in err.value.message
    assert f"keys -> {secrets}: a link out of the folder" in err.value.message
    assert remote.sent == [] and not (tmp_path / "host").exists()


def test_links_inside_the_folder_are_carried_with_their_content(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    (src / "latest.tsv").symlink_to("train.tsv")
    (src / "audio").symlink_to("clips")
    done = upload(FolderRemote(), build_manifest(src), str(tmp_path / "host"))
    got = sha_tree(Path(done.path))
    assert got["latest.tsv"] == got["train.tsv"] and got["audio/a.mp3"] == got["clips/a.mp3"]
    assert len(got) == len(FILES) + 3


def test_a_name_that_is_not_utf8_is_refused_by_name(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    (Path(os.fsdecode(bytes(src) + b"/clips/caf\xe9.mp3"))).write_bytes(b"x")
    with pytest.raises(TreeError) as err:
        build_manifest(src)
    assert "clips/caf\\xe9.mp3: its name is not UTF-8" in err.value.message


def test_special_files_are_skipped_with_a_note(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    os.mkfifo(src / "pipe")
    (src / "gone").symlink_to("nothing-here")
    manifest = in_time(lambda: build_manifest(src))
    assert set(manifest.files) == set(FILES)
    assert manifest.notes == ["gone: a link to nothing, skipped", "pipe: a fifo, not a regular file; skipped"]


def test_a_folder_that_changes_while_read_is_refused(tmp_path):
    src = dataset(tmp_path / "cv", FILES)
    tree = datatree.walk(src)
    (src / "clips" / "a.mp3").write_bytes(b"new content, another size")
    (src / "added.tsv").write_bytes(b"x")
    with pytest.raises(TreeError) as err:
        datatree.unchanged(tree)
    assert "changed while it was uploaded (added.tsv, clips/a.mp3)" in err.value.message


# ---------------------------------------------------------------- the class: any tree of links

NAMES = ["a", "b", "c"]
TARGETS = [".", "..", "../..", "a", "b/c", "f0", "missing", "../outside", "../outside/secret", "OUTSIDE_ABS"]


@st.composite
def trees(draw):
    dirs = draw(st.lists(st.sampled_from(["a", "b", "a/c", "b/c", "a/c/b"]), max_size=4, unique=True))
    dirs = sorted({p for d in dirs for p in ["/".join(d.split("/")[:i + 1]) for i in range(d.count("/") + 1)]})
    places = [""] + [d + "/" for d in dirs]
    files = draw(st.lists(st.tuples(st.sampled_from(places), st.integers(0, 3)), max_size=6, unique=True))
    links = draw(st.lists(st.tuples(st.sampled_from(places), st.sampled_from(["l", "m", "n"]),
                                    st.sampled_from(TARGETS)), max_size=4, unique_by=lambda t: t[:2]))
    return dirs, [f"{p}f{i}" for p, i in files], [(p + n, t) for p, n, t in links]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(tree=trees())
def test_any_tree_of_links_ends_stays_inside_and_carries_every_plain_file(tree):
    dirs, files, links = tree
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        dataset(base / "outside", {"secret": b"SECRET"})
        root = base / "data"
        root.mkdir()
        for d in dirs:
            (root / d).mkdir(exist_ok=True)
        for f in files:
            (root / f).write_bytes(f.encode())
        for where, target in links:
            if not (root / where).exists() and not (root / where).is_symlink():
                (root / where).symlink_to(str(base / "outside") if target == "OUTSIDE_ABS" else target)
        try:
            walked = in_time(lambda: datatree.walk(root), seconds=20)
        except TreeError as exc:
            # refused only for a link out of the folder or a loop, and the message names a link
            assert "a link out of the folder" in exc.message or "loop" in exc.message \
                or f"more than {MAX_VISITS} times" in exc.message
            assert any(f"  {where}" in exc.message or f"/{where.rsplit('/', 1)[-1]}" in exc.message
                       for where, _ in links)
            return
        real_root = os.path.realpath(root)
        rels = [e.rel for e in walked.files]
        assert len(rels) == len(set(rels)) and rels == sorted(rels)
        for e in walked.files:
            assert os.path.realpath(e.path).startswith(real_root + os.sep)       # never outside
            assert (root / e.rel).read_bytes() == e.path.read_bytes()           # what the user sees there
        assert set(files) <= set(rels)                                         # every plain file carried
        plain = sum(1 for p in root.rglob("*") if p.is_file() and not p.is_symlink())
        assert len(rels) <= MAX_VISITS * max(plain, 1) + len(links)             # links cannot multiply it
