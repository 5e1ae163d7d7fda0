"""The CPU part: decoding, resampling and log-mel per core, whether the loader keeps up with the targets,
and the runner's own loader end to end at several thread counts."""

from __future__ import annotations

import math
import os
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

import numpy as np
import soundfile as sf
import torch

from gpujob.runner import audio as audio_mod
from gpujob.runner import batches as batches_mod
from gpujob.runner.data import usable_cores

from .common import MEL_BINS, TARGETS, cpu_model, fmt, log, rate, table, threads
from .speech import whisper_tokenizer, write_cv_corpus

FORMATS = [  # name, sample rate, soundfile format, subtype, suffix
    ("wav 16 kHz", 16000, "WAV", "PCM_16", ".wav"),
    ("flac 16 kHz", 16000, "FLAC", "PCM_16", ".flac"),
    ("flac 44.1 kHz", 44100, "FLAC", "PCM_16", ".flac"),
    ("mp3 48 kHz", 48000, "MP3", "MPEG_LAYER_III", ".mp3"),
]


def measure(fn: Callable[[Any], Any], items: list[Any], min_time: float, durations: list[float],
            per_call: int = 1, rounds: int = 3) -> dict[str, Any]:
    """Run ``fn`` over ``items`` in ``rounds`` rounds of at least ``min_time / rounds`` seconds each; the best
    round's clips/s and audio-seconds/s (what one core can do: a shared machine only ever slows a round down),
    with every round's clips/s kept."""
    fn(items[0])  # warm-up
    results = []
    for _ in range(rounds):
        n, audio_s = 0, 0.0
        start = time.perf_counter()
        while True:
            for item, dur in zip(items, durations):
                fn(item)
                n += per_call
                audio_s += dur
            elapsed = time.perf_counter() - start
            if elapsed >= min_time / rounds:
                break
        results.append((n / elapsed, audio_s / elapsed, 1000 * elapsed / n))
    best = max(results)
    return {"clips_per_s": best[0], "audio_s_per_s": best[1], "ms_per_clip": best[2],
            "rounds_clips_per_s": [r[0] for r in results]}


def cpu_part(clips: list[np.ndarray], source: str, *, min_time: float, feature_batch: int,
             loader_rows: int) -> dict[str, Any]:
    from transformers import WhisperFeatureExtractor

    durations = [len(c) / 16000 for c in clips]
    mean_s = sum(durations) / len(durations)
    cores = usable_cores()
    log(f"\n== CPU: data loading, per core (one thread; {cores} cores available, {cpu_model()}; best of 3 rounds) ==")
    log(f"clips: {len(clips)} x {mean_s:.1f} s on average, {source}")
    stages: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-") as tmp, threads(1):
        files: dict[str, list[str]] = {}
        arrays: dict[int, list[np.ndarray]] = {16000: clips}
        for name, sr, fmt_, subtype, suffix in FORMATS:
            if sr not in arrays:
                arrays[sr] = [audio_mod.to_mono_16k(c, 16000, target_sr=sr) for c in clips]
            paths = []
            for i, clip in enumerate(arrays[sr]):
                path = os.path.join(tmp, f"{name.split()[0]}{sr}_{i}{suffix}")
                sf.write(path, clip, sr, format=fmt_, subtype=subtype)
                paths.append(path)
            files[name] = paths
        size = {name: sum(os.path.getsize(p) for p in paths) for name, paths in files.items()}

        def add(stage: str, what: str, result: dict[str, float], **extra: Any) -> None:
            stages.append({"stage": stage, "what": what, **result, **extra})

        for name, _sr, *_ in FORMATS:
            add(f"decode {name}", "audio.decode(path): soundfile + soxr to 16 kHz mono",
                measure(audio_mod.decode, files[name], min_time, durations),
                kbit_per_s=round(8 * size[name] / sum(durations) / 1000, 1))
        for sr in (44100, 48000):
            add(f"resample {sr / 1000:g} -> 16 kHz", "audio.to_mono_16k(array, sr): soxr HQ",
                measure(lambda a, sr=sr: audio_mod.to_mono_16k(a, sr), arrays[sr], min_time, durations))
        fe = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, hop_length=160, chunk_length=30,
                                     n_fft=400, padding_value=0.0, return_attention_mask=False)
        add("log-mel, WhisperFeatureExtractor", "one clip per call, padded to 30 s, torch STFT on the CPU",
            measure(lambda a: fe(a, sampling_rate=16000, return_tensors="np"), clips, min_time, durations))
        b = max(1, min(feature_batch, len(clips)))
        groups = [clips[i:i + b] for i in range(0, len(clips) - b + 1, b)] or [clips]
        gdur = [sum(len(c) for c in g) / 16000 for g in groups]
        add(f"log-mel, runner features() batch {len(groups[0])}", "batches.features(fe, audio, cpu)",
            measure(lambda g: batches_mod.features(fe, g, torch.device("cpu")), groups, min_time, gdur,
                    per_call=len(groups[0])))

    log("\n".join(table(["stage", "clips/s", "audio-s/s", "ms/clip", "note"],
                        [[s["stage"], fmt(s["clips_per_s"]), fmt(s["audio_s_per_s"], 0), fmt(s["ms_per_clip"], 2),
                          f"{s['kbit_per_s']} kbit/s" if "kbit_per_s" in s else ""] for s in stages],
                        right={1, 2, 3})))

    stage_rate = {s["stage"]: s["clips_per_s"] for s in stages}
    logmel = stage_rate["log-mel, WhisperFeatureExtractor"]
    pipelines = [
        ("mp3 48 kHz, log-mel on the GPU (the runner)", [stage_rate["decode mp3 48 kHz"]]),
        ("mp3 48 kHz + log-mel on the CPU (2022 collator)", [stage_rate["decode mp3 48 kHz"], logmel]),
        ("flac 16 kHz, log-mel on the GPU (the runner)", [stage_rate["decode flac 16 kHz"]]),
        ("flac 16 kHz + log-mel on the CPU", [stage_rate["decode flac 16 kHz"], logmel]),
    ]
    keep_up = []
    for target, _model, _frozen, samples_per_s in TARGETS:
        for pipeline, rates in pipelines:
            per_core = 1.0 / sum(1.0 / r for r in rates)
            need = math.ceil(samples_per_s / per_core)
            keep_up.append({"target": target, "samples_per_s": samples_per_s, "pipeline": pipeline,
                            "per_core_clips_per_s": per_core, "cores_needed": need, "cores_here": cores,
                            "keeps_up_here": need <= cores, "keeps_up_on_one_core": per_core >= samples_per_s})
    log(f"\n== CPU: can the loader keep up? (clips of {mean_s:.1f} s; {cores} cores here; "
        "cores needed = target / per-core rate, rounded up) ==")
    log("\n".join(table(["target", "samples/s", "pipeline (CPU work per sample)", "per core", "cores needed",
                         f"here ({cores})", "1 core"],
                        [[k["target"], k["samples_per_s"], k["pipeline"], fmt(k["per_core_clips_per_s"]),
                          k["cores_needed"], "yes" if k["keeps_up_here"] else "no",
                          "yes" if k["keeps_up_on_one_core"] else "no"] for k in keep_up],
                        right={1, 3, 4})))
    mp3 = stage_rate["decode mp3 48 kHz"]
    log(f"note: at {mp3:.0f} mp3 clips/s per core, decoding costs {1000 / mp3:.1f} ms of one core per sample. "
        "The runner decodes on data.loader_workers threads ahead of the GPU step (soundfile, soxr and ffmpeg release "
        "the GIL), so cores needed = loader threads needed; with data.loader_workers: 0 it decodes in the training "
        "loop, in series with the step. Decoding time scales with clip length.")
    result = {"clips": len(clips), "clip_seconds_mean": mean_s, "audio_source": source, "cores": cores,
              "cpu_model": cpu_model(), "stages": stages, "keep_up": keep_up}
    result["loader"] = loader_part(clips, rows=loader_rows, batch=feature_batch, cores=cores)
    return result


def loader_part(clips: list[np.ndarray], *, rows: int, batch: int, cores: int) -> dict[str, Any]:
    """The runner's own input pipeline, end to end, as train.run drives it: data.iter_clips over a Common
    Voice dir of MP3s -> steps (each step's global batch from transcripts and length groups, then its
    audio decoded by ``workers`` threads) -> prefetched (pad_audio on a background thread), drained as
    fast as it comes: the most the loader can feed a GPU."""
    from gpujob.runner import data as data_mod
    from gpujob.spec.models import Source

    tokenizer = whisper_tokenizer()
    settings = sorted({0, 1, max(1, cores - 1), cores})
    out: dict[str, Any] = {"rows": rows, "batch": batch, "format": "mp3 48 kHz (Common Voice)",
                           "labels": tokenizer is not None, "runs": []}
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-cv-") as tmp:
        cv, _texts = write_cv_corpus(Path(tmp) / "cv", clips, rows)
        sources = [Source.model_validate({"dataset": str(cv), "split": "train"})]
        seconds = sum(len(clips[i % len(clips)]) for i in range(rows)) / 16000

        def drain(workers: int) -> float:
            if tokenizer is not None:  # as train.run: clips -> each step's global batch -> its audio decoded
                return drain_steps(workers)
            examples = data_mod.iter_examples(sources, streaming=False, seed=0, workers=workers, prefetch=2 * batch)
            made = (SimpleNamespace(audio=[e["audio"] for e in group], padded=None) for group in _chunks(examples, batch))

            def pad(b) -> None:
                b.padded = batches_mod.pad_audio(b.audio, 480000)

            start, n = time.perf_counter(), 0
            for b in (batches_mod.prefetched(made, prepare=pad) if workers else made):
                if b.padded is None:
                    pad(b)  # no background thread: padding happens in the training loop
                n += len(b.audio)
            assert n == rows, f"the loader yielded {n} of {rows} examples"
            return n / (time.perf_counter() - start)

        def drain_steps(workers: int) -> float:
            from gpujob.runner.steps import steps

            def pad(step) -> None:
                for b in step.micro:
                    b.padded = batches_mod.pad_audio(b.audio, 480000)

            start, n = time.perf_counter(), 0
            clips = data_mod.iter_clips(sources, streaming=False, seed=0)
            with data_mod.decoding_pool(workers, "gpujob-bench") as pool:
                made = steps(clips, tokenizer, global_batch=batch, micro_steps=1, rank=0, world=1, seed=0,
                             group_by_length=True, labels=data_mod.source_labels(sources), pool=pool,
                             window=max(2 * batch, 4 * workers))
                for step in (batches_mod.prefetched(made, prepare=pad) if workers else made):
                    for b in step.micro:
                        if b.padded is None:
                            pad(step)  # no background thread: padding happens in the training loop
                        n += len(b)
            assert n == rows, f"the loader yielded {n} of {rows} examples"
            return n / (time.perf_counter() - start)

        with threads(1):
            drain(0)  # warm-up: page cache, imports
            for workers in settings:
                best = max(drain(workers) for _ in range(2))
                out["runs"].append({"workers": workers, "samples_per_s": best,
                                    "audio_s_per_s": best * seconds / rows})
    base = out["runs"][0]["samples_per_s"]
    for r in out["runs"]:
        r["speed_up"] = r["samples_per_s"] / base
    log(f"\n== CPU: the runner's loader end to end ({rows} rows of mp3 48 kHz, batch {batch}"
        + ("" if tokenizer is not None else ", no labels") + "; data.iter_clips -> steps -> prefetched; "
        "best of 2) ==")
    targets = [(t[0], t[3]) for t in TARGETS]
    log("\n".join(table(["data.loader_workers", "samples/s", "audio-s/s", "x inline"]
                        + [f"{name} ({sps}/s)" for name, sps in targets],
                        [[("0 (inline)" if r["workers"] == 0 else r["workers"]), rate(r["samples_per_s"]),
                          fmt(r["audio_s_per_s"], 0), fmt(r["speed_up"], 2)]
                         + ["yes" if r["samples_per_s"] >= sps else "no" for _, sps in targets] for r in out["runs"]],
                        right={1, 2, 3})))
    per_thread = max(r["samples_per_s"] / r["workers"] for r in out["runs"] if r["workers"])
    out["per_thread_samples_per_s"] = per_thread
    needs = ", ".join(f"{sps}/s needs {math.ceil(sps / per_thread)}" for _, sps in targets)
    log(f"per loader thread: up to {per_thread:.0f} samples/s here, so {needs} threads of this CPU "
        f"(auto gives min(8, cores - 1) = {data_mod.loader_threads('auto')} here)")
    return out


def _chunks(items, n: int):
    group: list = []
    for item in items:
        group.append(item)
        if len(group) == n:
            yield group
            group = []
    if group:
        yield group
