"""What ships and what does not: gpujob's wheel holds the gpujob package only; the test and demo asset
makers and the benchmark live in the development package dev/gpujob_dev (issue 16)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEV_ONLY = ("convert_ct2", "tiny_whisper", "greek_speech", "greek_sentences", "espeak", "bench_runner")


def test_the_asset_makers_and_the_benchmark_are_not_in_the_package():
    for name in ("convert_ct2", "greek_speech"):
        assert importlib.util.find_spec(f"gpujob.runner.{name}") is None, name
    shipped = [p.relative_to(REPO).as_posix() for p in (REPO / "cli" / "gpujob").rglob("*")]
    assert not [p for p in shipped if any(word in p for word in DEV_ONLY)]
    assert not (REPO / "scripts" / "bench_runner.py").exists()
    for module in ("convert_ct2", "tiny_whisper", "greek_speech", "espeak", "bench.run"):
        assert importlib.util.find_spec(f"gpujob_dev.{module}") is not None, module


@pytest.mark.skipif(importlib.util.find_spec("setuptools") is None, reason="needs setuptools to build the wheel")
def test_the_wheel_holds_gpujob_and_nothing_of_the_development_package(tmp_path):
    source = tmp_path / "src"  # a copy, so the build leaves nothing in the checkout
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "cli", source / "cli", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    shutil.copytree(REPO / "dev", source / "dev", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--disable-pip-version-check", "-w", str(tmp_path / "dist"), str(source)],
                   check=True, capture_output=True, timeout=300)
    (wheel,) = (tmp_path / "dist").glob("gpujob-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "gpujob/runner/train.py" in names and "gpujob/cli/app.py" in names
    assert all(n.startswith(("gpujob/", "gpujob-")) for n in names), [n for n in names if not n.startswith("gpujob")]
    assert not [n for n in names if any(word in n for word in DEV_ONLY) or "gpujob_dev" in n]


def test_the_synthesized_speech_is_the_same_every_time(tmp_path):
    """The demo and the tests train on this speech: the same seed must give the same audio, sample for
    sample, whichever worker process speaks which sentence and whenever it does (libespeak-ng carries
    state between utterances in one process, so two builds differed in every clip before each was spoken
    alone; and it seeds the noise of the variants with breath, f2, f3 and f5, with the time)."""
    pytest.importorskip("espeakng_loader")
    import time

    import soundfile as sf

    from gpujob_dev.greek_speech import build

    def clips(folder):
        return {p.relative_to(folder).as_posix(): sf.read(p, dtype="int16")[0].tobytes()
                for p in sorted(folder.rglob("*.*")) if p.suffix in (".wav", ".flac", ".mp3", ".ogg")}

    build(tmp_path / "a", train=12, heldout=4, seed=3)
    time.sleep(1.1)  # the time-seeded noise changes with the second
    build(tmp_path / "b", train=12, heldout=4, seed=3, workers=1)
    a, b = clips(tmp_path / "a"), clips(tmp_path / "b")
    assert len(a) == 12 + 4 + 4 and a == b
