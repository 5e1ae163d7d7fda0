"""Throughput of the Whisper runner: the data loader on the CPU, the training and evaluation steps on one GPU.

    python scripts/bench_runner.py [--part cpu|gpu|all] [--model small,medium] [--device cuda]
                                   [--batch N] [--steps N] [--warmup N] [--recipes a,b] [--json PATH] [--quick]

CPU part (runs anywhere): real speech synthesized by espeak-ng (Greek voice; a speech-like numpy signal where
espeak-ng is missing), encoded as WAV/FLAC/MP3 at 16, 44.1 and 48 kHz, then per core (one thread): decoding with
the runner's ``audio.decode``, resampling with ``audio.to_mono_16k``, log-mel with ``WhisperFeatureExtractor`` and
with the runner's ``batches.features``; then whether the loader can keep up with the target training rates.

GPU part (``torch.cuda.is_available()``, or ``--device cpu`` for a smoke test): Whisper models built by hand from
``WhisperConfig`` (no Hub download), random weights, one training step (forward + backward + AdamW) timed per
recipe: the 2022 event recipe beside SDPA/bf16/checkpointing/compile/frozen-encoder variants and the runner's own
set-up (``gpujob*`` rows, through ``gpujob.runner.model`` and ``gpujob.runner.update.mean_loss``); model FLOPs
counted with ``torch.utils.flop_counter.FlopCounterMode``, MFU against 790 TFLOP/s; then evaluation (greedy
generation of 40 new tokens) through the runner's ``evaluate.transcribe``. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import gc
import json
import math
import os
import platform
import random
import shutil
import sys
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable

REPO = Path(__file__).resolve().parents[1]
try:
    import gpujob  # noqa: F401
except ImportError:  # run from a checkout without the editable install
    sys.path.insert(0, str(REPO / "cli"))

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing here comes from the Hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import soundfile as sf  # noqa: E402
import torch  # noqa: E402

from gpujob.runner import audio as audio_mod  # noqa: E402
from gpujob.runner import batches as batches_mod  # noqa: E402
from gpujob.runner.update import optimizer_step  # noqa: E402  (the runner's own step, in every recipe)

PEAK_FLOPS = 790e12           # the bf16 figure for one H100: MFU is measured against it
LABEL_TOKENS = 48
EVAL_NEW_TOKENS = 40
INPUT_FRAMES = 3000           # 30 s of log-mel at 10 ms hops
MEL_BINS = 80

# Multilingual Whisper's special tokens (vocabulary of 51865).
EOT, SOT, TRANSLATE, TRANSCRIBE, SOT_PREV, NO_TIMESTAMPS = 50257, 50258, 50358, 50359, 50361, 50363
FIRST_LANG, N_LANGS = 50259, 99

MODELS: dict[str, dict[str, int]] = {
    # openai/whisper-small and -medium; tiny is for smoke tests only (not openai/whisper-tiny)
    "tiny": dict(d_model=64, layers=2, heads=4, ffn=128, batch=2),
    "small": dict(d_model=768, layers=12, heads=12, ffn=3072, batch=64),
    "medium": dict(d_model=1024, layers=24, heads=16, ffn=4096, batch=32),
}

# Reference figures from the issue: one H100 80GB, samples/s of the model step.
REFERENCE: dict[str, dict[str, float]] = {
    "small": {"2022": 45, "sdpa-bf16-ckpt": 132, "sdpa-bf16": 187, "sdpa-bf16-compile": 255,
              "2022-frozen": 120, "sdpa-bf16-frozen": 401},
    "medium": {"2022": 16, "sdpa-bf16": 63, "sdpa-bf16-compile": 88},
}
# What the runner has to reach (samples/s on one GPU).
TARGETS = [("small full fine-tune", "small", False, 300), ("medium full fine-tune", "medium", False, 100),
           ("small frozen encoder", "small", True, 450)]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    attn: str = "sdpa"                 # eager | sdpa (reference recipes; the runner picks its own)
    precision: str = "bf16"            # fp16 (autocast + GradScaler) | bf16 (autocast)
    checkpointing: str = "off"         # off | reentrant (2022) | non-reentrant
    frozen: str = "no"                 # no | params (requires_grad off, 2022) | no_grad (encoder under no_grad)
    compile: bool = False
    fused_adamw: bool = True
    runner: bool = False               # set up and stepped by gpujob.runner's own code
    runner_freeze: str = "none"
    from_audio: bool = False           # runner: log-mel computed inside the step from raw audio
    end_to_end: bool = False           # runner: train.run itself, on MP3 files, timed by its progress events


RECIPES = [
    Recipe("2022", "2022 event: eager attention, fp16 + GradScaler, gradient checkpointing (reentrant), "
           "use_cache off, AdamW (foreach)", attn="eager", precision="fp16", checkpointing="reentrant",
           fused_adamw=False),
    Recipe("sdpa-bf16-ckpt", "SDPA, bf16 autocast, gradient checkpointing (non-reentrant)",
           checkpointing="non-reentrant"),
    Recipe("sdpa-bf16", "SDPA, bf16 autocast, no checkpointing"),
    Recipe("sdpa-bf16-compile", "SDPA, bf16, no checkpointing, torch.compile(model)", compile=True),
    Recipe("2022-frozen", "2022 recipe with model.freeze_encoder()", attn="eager", precision="fp16",
           checkpointing="reentrant", frozen="params", fused_adamw=False),
    Recipe("sdpa-bf16-frozen", "SDPA, bf16, no checkpointing, encoder frozen and run under no_grad",
           frozen="no_grad"),
    Recipe("gpujob", "the runner: model.pick_precision('auto'), SDPA, freeze('none'), "
           "set_gradient_checkpointing('auto'), update.mean_loss, its optimiser step", runner=True),
    Recipe("gpujob-frozen", "the runner with training.freeze: encoder (encoder cache off: first epoch)",
           runner=True, runner_freeze="encoder"),
    Recipe("gpujob-audio", "the runner, log-mel from raw audio inside the step (batches.features on the "
           "device), as train.run does it", runner=True, from_audio=True),
    Recipe("gpujob-run", "the runner end to end: train.run on a Common Voice dir of MP3s (48 kHz), decoded by "
           "data.loader_workers threads, batched and padded ahead, log-mel on the device, its optimiser step and "
           "progress events; the rate from its own progress events", runner=True, end_to_end=True),
    Recipe("gpujob-run-frozen", "gpujob-run with training.freeze: encoder (first epoch: nothing cached yet)",
           runner=True, runner_freeze="encoder", end_to_end=True),
]
RECIPE_BY_NAME = {r.name: r for r in RECIPES}
RUNNER_PRECISION = ["auto"]  # training.precision for the gpujob rows (--runner-precision)
QUICK_SKIP = {"sdpa-bf16-compile"}  # inductor on a CPU smoke test takes minutes


# ================================================================================ helpers


def log(msg: str = "") -> None:
    print(msg, flush=True)


def rate(value: float | None) -> str:
    """A throughput: one decimal, three where it is below 1 (a CPU smoke run of a real-size model)."""
    if value is None:
        return "-"
    return f"{value:.1f}" if value >= 1 else f"{value:.3f}"


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: list[str], rows: list[list[Any]], right: set[int] | None = None) -> list[str]:
    cells = [[str(h) for h in headers]] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    right = right if right is not None else set(range(1, len(headers)))
    out = []
    for n, row in enumerate(cells):
        parts = [c.rjust(w) if i in right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths))]
        out.append("  ".join(parts).rstrip())
        if n == 0:
            out.append("  ".join("-" * w for w in widths))
    return out


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cores_available() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def versions() -> dict[str, str]:
    import transformers

    out = {"python": platform.python_version(), "torch": torch.__version__,
           "transformers": transformers.__version__, "numpy": np.__version__, "soundfile": sf.__version__}
    try:
        import soxr

        out["soxr"] = soxr.__version__
    except (ImportError, AttributeError):
        pass
    out["libsndfile"] = getattr(sf, "__libsndfile_version__", "?")
    if torch.version.cuda:
        out["cuda"] = torch.version.cuda
    if torch.backends.cudnn.is_available():
        out["cudnn"] = str(torch.backends.cudnn.version())
    return out


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    return isinstance(exc, RuntimeError) and "out of memory" in str(exc).lower()


BF16_NUMPY = "Got unsupported ScalarType BFloat16"


def _failure(exc: BaseException, batch: int) -> str:
    if is_oom(exc):
        return f"OOM at batch {batch}"
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
    status = f"failed: {type(exc).__name__}: {first}"
    if BF16_NUMPY in first:
        status += (" (the log-mel was computed under bf16 autocast: batches.features runs inside the autocast "
                   "context, and WhisperFeatureExtractor returns numpy)")
    return status


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


@contextlib.contextmanager
def threads(n: int):
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# ================================================================================ speech


def synthesize_clips(n: int, seconds: float, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``n`` mono 16 kHz clips of about ``seconds`` each: espeak-ng Greek sentences joined with short pauses."""
    rng = random.Random(seed)
    if shutil.which("espeak-ng"):
        try:
            from gpujob.runner.greek_speech import load_sentences, synthesize

            sentences = load_sentences()
            rng.shuffle(sentences)

            def one(i: int) -> np.ndarray:
                parts, total, k = [], 0.0, 0
                r = random.Random(seed * 1000 + i)
                while total < seconds and k < 20:
                    text = sentences[(i * 7 + k) % len(sentences)]
                    clip = synthesize(text, speed=r.randint(150, 190), pitch=r.randint(35, 65))
                    parts += [clip, np.zeros(int(0.25 * 16000), np.float32)]
                    total += (len(clip) + 4000) / 16000
                    k += 1
                return np.concatenate(parts[:-1]).astype(np.float32)

            with ThreadPoolExecutor(max_workers=max(1, min(4, cores_available()))) as pool:
                return list(pool.map(one, range(n))), "espeak-ng (Greek voice)"
        except Exception as exc:  # noqa: BLE001 - fall back to the synthetic signal
            log(f"espeak-ng failed ({exc}); using a speech-like numpy signal")
    return [_speechlike(seconds, rng) for _ in range(n)], "speech-like numpy signal (espeak-ng not available)"


def _speechlike(seconds: float, rng: random.Random) -> np.ndarray:
    """Voiced syllables: a glottal pulse train with a moving pitch through two formant resonances, plus noise."""
    sr = 16000
    t = np.arange(int(seconds * sr)) / sr
    f0 = 120 + 30 * np.sin(2 * np.pi * 0.7 * t + rng.random() * 6)
    phase = np.cumsum(f0) / sr
    pulses = np.sign(np.sin(2 * np.pi * phase)) * 0.3
    syll = 0.5 * (1 + np.sin(2 * np.pi * 3.5 * t + rng.random() * 6)) ** 2
    formants = sum(np.sin(2 * np.pi * f * t) * a for f, a in ((700, 0.5), (1200, 0.3), (2500, 0.1)))
    noise = np.random.default_rng(rng.randrange(2**31)).normal(0, 0.02, t.size)
    return (0.3 * pulses * (1 + formants) * syll + noise).astype(np.float32)


# ================================================================================ CPU part


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
    cores = cores_available()
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


@functools.lru_cache(maxsize=1)
def whisper_tokenizer():
    """The real Whisper tokenizer (from the packaged Whisper base, converted once into $GPUJOB_CACHE), or None."""
    try:
        from transformers import WhisperTokenizerFast

        from gpujob.runner.convert_ct2 import ensure_whisper_base

        tokenizer = WhisperTokenizerFast.from_pretrained(ensure_whisper_base())
        tokenizer.set_prefix_tokens(language="greek", task="transcribe", predict_timestamps=False)
        return tokenizer
    except Exception as exc:  # noqa: BLE001 - the package or the conversion is missing here
        log(f"(no Whisper tokenizer here: {type(exc).__name__}: {str(exc)[:120]}; labels are left out)")
        return None


def write_cv_corpus(root: Path, clips: list[np.ndarray], rows: int, sr: int = 48000) -> tuple[Path, list[str]]:
    """A Common Voice-style dir (clips/*.mp3 at 48 kHz, train.tsv) of ``rows`` rows over ``clips``, each file
    used by several rows (each row is decoded on its own, as in training). Returns the dir and its texts."""
    from gpujob.runner.greek_speech import CV_COLUMNS, load_sentences

    (root / "clips").mkdir(parents=True, exist_ok=True)
    for i, clip in enumerate(clips):
        sf.write(root / "clips" / f"c{i}.mp3", audio_mod.to_mono_16k(clip, 16000, target_sr=sr), sr,
                 format="MP3", subtype="MPEG_LAYER_III")
    sentences = load_sentences()
    texts = [" ".join(sentences[(3 * i + k) % len(sentences)] for k in range(2)) for i in range(rows)]
    with open(root / "train.tsv", "w", encoding="utf-8") as f:
        f.write("\t".join(CV_COLUMNS) + "\n")
        for i, text in enumerate(texts):
            values = {"client_id": f"{i:064x}", "path": f"c{i % len(clips)}.mp3", "sentence": text, "locale": "el"}
            f.write("\t".join(values.get(c, "") for c in CV_COLUMNS) + "\n")
    return root, texts


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
                             group_by_length=True, labels=data_mod._labels(sources), pool=pool,
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


# ================================================================================ models


def whisper_config(size: str, dropout: float = 0.0):
    from transformers import WhisperConfig

    m = MODELS[size]
    config = WhisperConfig(
        vocab_size=51865, num_mel_bins=MEL_BINS, d_model=m["d_model"],
        encoder_layers=m["layers"], decoder_layers=m["layers"],
        encoder_attention_heads=m["heads"], decoder_attention_heads=m["heads"],
        encoder_ffn_dim=m["ffn"], decoder_ffn_dim=m["ffn"],
        max_source_positions=1500, max_target_positions=448,
        decoder_start_token_id=SOT, pad_token_id=EOT, bos_token_id=EOT, eos_token_id=EOT,
        begin_suppress_tokens=[220, EOT], suppress_tokens=[], activation_function="gelu", scale_embedding=False,
        dropout=dropout, tie_word_embeddings=True, use_cache=True,
    )
    config.architectures = ["WhisperForConditionalGeneration"]
    return config


def generation_config():
    """What a multilingual Whisper checkpoint's generation_config.json holds, by hand."""
    from transformers import GenerationConfig
    from transformers.models.whisper.tokenization_whisper import LANGUAGES

    langs = list(LANGUAGES)[:N_LANGS]
    return GenerationConfig(
        bos_token_id=EOT, eos_token_id=EOT, pad_token_id=EOT, decoder_start_token_id=SOT, max_length=448,
        begin_suppress_tokens=[220, EOT], suppress_tokens=[EOT],  # EOT suppressed: every utterance runs full length
        is_multilingual=True, lang_to_id={f"<|{c}|>": FIRST_LANG + i for i, c in enumerate(langs)},
        task_to_id={"transcribe": TRANSCRIBE, "translate": TRANSLATE}, no_timestamps_token_id=NO_TIMESTAMPS,
        prev_sot_token_id=SOT_PREV, max_initial_timestamp_index=50, return_timestamps=False,
    )


def build_model(size: str, attn: str, device: torch.device, seed: int = 0):
    from transformers import WhisperForConditionalGeneration

    torch.manual_seed(seed)
    with warnings.catch_warnings(), torch.device(device):  # initialised where it runs: seconds, not a minute
        warnings.simplefilter("ignore")
        model = WhisperForConditionalGeneration._from_config(whisper_config(size), attn_implementation=attn)
    model.generation_config = generation_config()
    return model.to(device)


def enable_checkpointing(model, reentrant: bool) -> None:
    kwargs = {"use_reentrant": reentrant}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.x
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        else:
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    model.config.use_cache = False


def count_flops(size: str, device: torch.device, frozen: bool) -> float:
    """Model FLOPs of one training step per sample: FlopCounterMode on batch 1, eager attention (counted the same
    on every device), fp32, no checkpointing (recomputation is not model work)."""
    from torch.utils.flop_counter import FlopCounterMode
    from transformers.modeling_outputs import BaseModelOutput

    model = build_model(size, "eager", device)
    model.train()
    if frozen:
        for p in model.model.encoder.parameters():
            p.requires_grad_(False)
    x = torch.randn(1, MEL_BINS, INPUT_FRAMES, device=device)
    y = torch.randint(0, EOT, (1, LABEL_TOKENS), device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        if frozen:
            with torch.no_grad():
                states = model.model.encoder(x).last_hidden_state
            out = model(encoder_outputs=BaseModelOutput(last_hidden_state=states), labels=y, use_cache=False)
        else:
            out = model(input_features=x, labels=y, use_cache=False)
        out.loss.backward()
    total = float(counter.get_total_flops())
    del model, out, counter
    free_memory(device)
    return total


# ================================================================================ training step


class _Precomputed:
    """A feature extractor that hands back log-mels made beforehand: the runner's step without the STFT."""

    def __init__(self, features: torch.Tensor):
        self.features = features

    def __call__(self, audio, **_kwargs):
        return SimpleNamespace(input_features=self.features)


def _reference_step(recipe: Recipe, model, device: torch.device, feats: torch.Tensor, labels: torch.Tensor):
    from transformers.modeling_outputs import BaseModelOutput

    if recipe.checkpointing != "off":
        enable_checkpointing(model, reentrant=recipe.checkpointing == "reentrant")
    else:
        model.config.use_cache = False
    if recipe.frozen == "params":
        model.freeze_encoder()
    elif recipe.frozen == "no_grad":
        for p in model.model.encoder.parameters():
            p.requires_grad_(False)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    fused = recipe.fused_adamw and device.type == "cuda"
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=fused or None)
    dtype = torch.float16 if recipe.precision == "fp16" else torch.bfloat16
    scaler = torch.amp.GradScaler(device.type) if recipe.precision == "fp16" else None
    forward = torch.compile(model) if recipe.compile else model
    encoder = model.model.encoder

    def step():
        with torch.autocast(device.type, dtype=dtype):
            if recipe.frozen == "no_grad":
                with torch.no_grad():
                    states = encoder(feats).last_hidden_state
                out = forward(encoder_outputs=BaseModelOutput(last_hidden_state=states), labels=labels,
                              use_cache=False)
            else:
                out = forward(input_features=feats, labels=labels, use_cache=False)
        loss = out.loss.float()
        (scaler.scale(loss) if scaler else loss).backward()
        optimizer_step(optimizer, params, scaler)

    setup = {"attention": recipe.attn, "precision": recipe.precision,
             "checkpointing": recipe.checkpointing, "frozen_encoder": recipe.frozen != "no",
             "compiled": recipe.compile, "adamw": "fused" if fused else "foreach"}
    return step, scaler, setup, optimizer


def _runner_step(recipe: Recipe, size: str, device: torch.device, feats: torch.Tensor, labels: torch.Tensor,
                 audio: list[np.ndarray]):
    """The runner's set-up and step: gpujob.runner.model for precision/freeze/checkpointing, update.mean_loss for
    the loss, and train.run's optimiser step (scaler, clip at 1.0, fused AdamW, loss.item() every step)."""
    from gpujob.runner.batches import Batch
    from gpujob.runner.model import freeze, pick_precision, set_gradient_checkpointing
    from gpujob.runner.update import mean_loss

    precision = pick_precision(RUNNER_PRECISION[0], device)
    model = build_model(size, "sdpa", device)  # model.load() asks from_pretrained for attn_implementation="sdpa"
    counts = freeze(model, recipe.runner_freeze)
    ckpt_on = set_gradient_checkpointing(model, "auto", device=device)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.0, fused=device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda") if precision.scaler else None
    model.train()
    if recipe.from_audio:
        from transformers import WhisperFeatureExtractor

        extractor = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, hop_length=160,
                                            chunk_length=30, n_fft=400, padding_value=0.0,
                                            return_attention_mask=False)
    else:
        extractor = _Precomputed(feats)
    processor = SimpleNamespace(feature_extractor=extractor)
    n = labels.shape[0]
    batch = Batch(ids=[f"bench::{i}" for i in range(n)], texts=[""] * n, audio=audio, labels=labels.cpu(),
                  label_lengths=[labels.shape[1]] * n)

    def step():
        loss = mean_loss(model, processor, batch, device, precision, None)
        (scaler.scale(loss) if scaler else loss).backward()
        loss.item()  # train.run adds it to the progress line every step (a sync)
        optimizer_step(optimizer, params, scaler)

    setup = {"attention": model.config._attn_implementation, "precision": precision.name,
             "checkpointing": "on" if ckpt_on else "off", "frozen_encoder": recipe.runner_freeze == "encoder",
             "compiled": False, "adamw": "fused" if device.type == "cuda" else "foreach",
             "trainable_params": counts["trainable"], "features": "in the step" if recipe.from_audio else "precomputed"}
    return model, step, scaler, setup, optimizer


class _TimedWriter:
    """The runner's ProgressWriter into a buffer, noting when each progress event came (perf_counter)."""

    def __init__(self) -> None:
        import io

        from gpujob.progress import ProgressWriter

        self.buffer = io.StringIO()
        self._writer = ProgressWriter(self.buffer)
        self.progress_at: list[float] = []
        self.events: list[str] = []

    def __getattr__(self, name: str):
        emit = getattr(self._writer, name)

        def call(**fields: Any) -> None:
            if name == "progress":
                self.progress_at.append(time.perf_counter())
            self.events.append(name)
            emit(**fields)

        return call


def _runner_run(recipe: Recipe, size: str, device: torch.device, batch: int, steps: int, warmup: int,
                clips: list[np.ndarray], row: dict[str, Any]) -> None:
    """train.run, the runner's own loop, on a Common Voice-style dir of MP3s: samples/s between the progress events
    of the last warm-up step and the last step. The data set is the shuffle buffer plus every step's batch, so every
    timed step waits for its own decoding as in a long job."""
    import io

    from transformers import WhisperFeatureExtractor, WhisperProcessor

    from gpujob.runner import data as data_mod
    from gpujob.runner import train
    from gpujob.spec import JobSpec

    if device.type != ("cuda" if torch.cuda.is_available() else "cpu"):
        row["status"] = f"skipped: train.run picks its own device, not {device.type}"
        return
    tokenizer = whisper_tokenizer()
    if tokenizer is None:
        row["status"] = "skipped: no Whisper tokenizer here (see docs/performance.md)"
        return
    total = warmup + steps
    n_rows = batches_mod.SHUFFLE_BUFFER + batch * total
    with tempfile.TemporaryDirectory(prefix="gpujob-bench-run-") as tmp:
        root = Path(tmp)
        model = build_model(size, "sdpa", torch.device("cpu"))
        model.save_pretrained(root / "model")
        del model
        fe = WhisperFeatureExtractor(feature_size=MEL_BINS)
        WhisperProcessor(feature_extractor=fe, tokenizer=tokenizer).save_pretrained(root / "model")
        t0 = time.perf_counter()
        cv, _ = write_cv_corpus(root / "cv", clips, n_rows)
        spec = JobSpec.model_validate({
            "apiVersion": "gpujob/v1", "kind": "train", "name": f"bench-{size}",
            "model": {"checkpoint": str(root / "model"), "language": "el"},
            "data": {"train": [{"dataset": str(cv)}]},
            "training": {"max_steps": total, "per_device_batch_size": batch, "learning_rate": 1e-5,
                         "warmup_steps": 0, "precision": RUNNER_PRECISION[0], "freeze": recipe.runner_freeze,
                         "save_steps": 10**6, "eval_steps": 10**6},
            "output": {"dir": str(root / "out")}})
        writer = _TimedWriter()
        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = train.run(spec, root / "out", writer)
        row["runner_output"] = out.getvalue().splitlines()[:6]
        if code != 0 or len(writer.progress_at) != total:
            row["status"] = f"failed: train.run exited {code} after {len(writer.progress_at)} of {total} steps"
            return
        at = writer.progress_at
        elapsed = at[-1] - at[warmup - 1]
        row.update(status="ok", steps=steps, seconds=elapsed, samples_per_s=batch * steps / elapsed,
                   step_ms=1000 * elapsed / steps, first_step_s=at[0] - t0, rows=n_rows,
                   loader_workers=data_mod.loader_threads(spec.data.loader_workers))
        line = next((ln for ln in row["runner_output"] if ln.startswith("model ")), "")
        precision = line.split("precision ")[1].split(";")[0] if "precision " in line else "?"
        ckpt = "on" if "checkpointing on" in line else "off"
        row["setup"] = {"attention": "sdpa", "precision": precision, "checkpointing": ckpt,
                        "frozen_encoder": recipe.runner_freeze == "encoder", "compiled": False,
                        "adamw": "fused" if device.type == "cuda" else "foreach",
                        "features": f"mp3, {row['loader_workers']} loader thread{'s' if row['loader_workers'] != 1 else ''}"}


def run_recipe(recipe: Recipe, size: str, device: torch.device, batch: int, steps: int, warmup: int,
               feats: torch.Tensor, labels: torch.Tensor, audio: list[np.ndarray],
               clips: list[np.ndarray] | None = None) -> dict[str, Any]:
    row: dict[str, Any] = {"model": size, "recipe": recipe.name, "description": recipe.description, "batch": batch}
    if recipe.end_to_end:
        free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            _runner_run(recipe, size, device, batch, steps, warmup, clips or audio, row)
        except Exception as exc:  # noqa: BLE001 - one recipe failing must not end the run
            row["status"] = _failure(exc, batch)
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        free_memory(device)
        return row
    model = step = scaler = optimizer = None
    free_memory(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        if recipe.runner:
            model, step, scaler, setup, optimizer = _runner_step(recipe, size, device, feats, labels, audio)
        else:
            model = build_model(size, recipe.attn, device)
            step, scaler, setup, optimizer = _reference_step(recipe, model, device, feats, labels)
        row["setup"] = setup
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t0 = time.perf_counter()
            step()
            sync(device)
            row["first_step_s"] = time.perf_counter() - t0
            for _ in range(max(0, warmup - 1)):
                step()
            sync(device)
            scale_before = scaler.get_scale() if scaler else None
            t0 = time.perf_counter()
            for _ in range(steps):
                step()
            sync(device)
            elapsed = time.perf_counter() - t0
        row.update(status="ok", steps=steps, seconds=elapsed, samples_per_s=batch * steps / elapsed,
                   step_ms=1000 * elapsed / steps)
        if scaler and scaler.get_scale() < scale_before:
            skipped = round(math.log2(scale_before / scaler.get_scale()))
            row["note"] = f"GradScaler skipped {skipped} of the timed steps (fp16 overflow)"
    except Exception as exc:  # noqa: BLE001 - one recipe failing must not end the run
        row.update(status=_failure(exc, batch))
    finally:
        if device.type == "cuda":
            row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        del model, step, scaler, optimizer
        if recipe.compile:
            torch._dynamo.reset()
        free_memory(device)
    return row


def train_part(sizes: list[str], recipes: list[Recipe], device: torch.device, batch: int | None, steps: int,
               warmup: int, clips: list[np.ndarray], *, rows: list[dict], flops: dict, deadline: float | None,
               save: Callable[[], None]) -> None:
    """Fills ``rows`` and ``flops`` as it goes (``save`` writes the JSON after every recipe)."""
    from transformers import WhisperFeatureExtractor

    fe = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, hop_length=160, chunk_length=30,
                                 n_fft=400, padding_value=0.0, return_attention_mask=False)
    base_feats = fe(clips, sampling_rate=16000, return_tensors="pt").input_features  # (n, 80, 3000)
    for size in sizes:
        b = batch or MODELS[size]["batch"]
        idx = [i % len(clips) for i in range(b)]
        feats = base_feats[idx].to(device)
        gen = torch.Generator().manual_seed(0)
        labels = torch.randint(0, EOT, (b, LABEL_TOKENS), generator=gen).to(device)
        audio = [clips[i] for i in idx]
        log(f"\n== {'GPU' if device.type == 'cuda' else 'device ' + device.type}: training step, whisper-{size}, "
            f"batch {b}, {LABEL_TOKENS} label tokens, 30 s log-mels ({MEL_BINS}x{INPUT_FRAMES}), random weights, "
            f"{warmup} warm-up + {steps} timed steps ==")
        t0 = time.perf_counter()
        try:
            flops[size] = {"full": count_flops(size, device, frozen=False),
                           "frozen_encoder": count_flops(size, device, frozen=True)}
            log(f"model FLOPs per sample (FlopCounterMode, one step): full fine-tune "
                f"{flops[size]['full'] / 1e12:.3f} TFLOP, frozen encoder {flops[size]['frozen_encoder'] / 1e12:.3f} "
                f"TFLOP (counted in {time.perf_counter() - t0:.1f} s)")
        except Exception as exc:  # noqa: BLE001 - the timings are still worth having
            flops[size] = {"full": None, "frozen_encoder": None}
            log(f"model FLOPs not counted ({_failure(exc, 1)}); MFU left out")
            free_memory(device)
        size_rows = []
        # compiled recipes last (minutes of compiling): under --time-limit the others are measured first
        for recipe in sorted(recipes, key=lambda r: r.compile):
            if deadline is not None and time.perf_counter() > deadline:
                row = {"model": size, "recipe": recipe.name, "description": recipe.description, "batch": b,
                       "status": "skipped: --time-limit reached"}
            else:
                t_recipe = time.perf_counter()
                row = run_recipe(recipe, size, device, b, steps, warmup, feats, labels, audio, clips)
                row["wall_s"] = time.perf_counter() - t_recipe
            frozen = row.get("setup", {}).get("frozen_encoder",
                                              recipe.frozen != "no" or recipe.runner_freeze != "none")
            row["flop_per_sample"] = flops[size]["frozen_encoder" if frozen else "full"]
            row["reference_samples_per_s"] = REFERENCE.get(size, {}).get(recipe.name)
            row["target_samples_per_s"] = next((t[3] for t in TARGETS if recipe.runner and t[1] == size
                                                and t[2] == frozen), None)
            if row.get("samples_per_s") and row["flop_per_sample"]:
                row["tflops"] = row["samples_per_s"] * row["flop_per_sample"] / 1e12
                row["mfu"] = row["tflops"] * 1e12 / PEAK_FLOPS
            status = row["status"] if row["status"] != "ok" else f"{rate(row['samples_per_s'])} samples/s"
            log(f"  {recipe.name}: {status}")
            size_rows.append(row)
            rows.append(row)
            save()
        order = [r.name for r in recipes]
        size_rows.sort(key=lambda r: order.index(r["recipe"]))
        base = next((r for r in size_rows if r["recipe"] == "2022" and r.get("samples_per_s")), None)
        ref_base = REFERENCE.get(size, {}).get("2022")
        for row in size_rows:
            if base and row.get("samples_per_s"):
                row["x_2022"] = row["samples_per_s"] / base["samples_per_s"]
            if ref_base and row["reference_samples_per_s"]:
                row["reference_x_2022"] = row["reference_samples_per_s"] / ref_base
            if row.get("samples_per_s") and row["reference_samples_per_s"]:
                row["vs_reference"] = row["samples_per_s"] / row["reference_samples_per_s"]
        log("")
        log("\n".join(train_table(size_rows)))
        for r in size_rows:
            if r["status"].startswith("failed"):
                log(f"  {r['recipe']}: {r['status']}")
        rows.sort(key=lambda r: (sizes.index(r["model"]), order.index(r["recipe"])))
        save()
        del feats, labels
        free_memory(device)
    log(f"x2022 = samples/s / the 2022 recipe's, same run; ref = the issue's H100 80GB figure; MFU = samples/s x "
        f"model FLOP/sample / {PEAK_FLOPS / 1e12:.0f} TFLOP/s (checkpoint recomputation not counted)")


def train_table(rows: list[dict[str, Any]]) -> list[str]:
    out = []
    for r in rows:
        s = r.get("setup", {})
        value = rate(r.get("samples_per_s")) if r["status"] == "ok" else r["status"].split(":")[0]
        if r["status"].startswith("skipped"):
            out.append([r["recipe"], r["batch"], "skipped"] + ["-"] * 8 + [r["status"].split(": ", 1)[-1]])
            continue
        note = r.get("note", "")
        if r["recipe"].startswith("gpujob") and s:
            note = (f"{s['precision']}, {s['attention']}, ckpt {s['checkpointing']}, features {s['features']}"
                    + (f"; {note}" if note else ""))
        if r.get("target_samples_per_s"):
            note += f"; target {r['target_samples_per_s']}"
        if r.get("first_step_s") and r["recipe"].endswith("compile"):
            note += f"; first step (compile) {r['first_step_s']:.0f} s"
        out.append([r["recipe"], r["batch"], value, fmt(r.get("x_2022"), 2), fmt(r.get("reference_samples_per_s"), 0),
                    fmt(r.get("reference_x_2022"), 2), fmt(r.get("vs_reference"), 2),
                    fmt(r["flop_per_sample"] / 1e12 if r.get("flop_per_sample") else None, 3), fmt(r.get("tflops")),
                    f"{100 * r['mfu']:.1f}%" if r.get("mfu") is not None else "-",
                    fmt(r.get("peak_mem_gib")), note.lstrip("; ")])
    return table(["recipe", "batch", "samples/s", "x2022", "ref", "ref x2022", "vs ref", "TFLOP/sample", "TFLOP/s",
                  "MFU", "peak GiB", "notes"], out, right=set(range(1, 11)))


# ================================================================================ evaluation


class _CpuFeatures:
    """The real feature extractor, always on the CPU (log-mel made where the 2022 collator made it)."""

    def __init__(self, fe):
        self.fe = fe

    def __call__(self, audio, **kwargs):
        kwargs["device"] = "cpu"
        return self.fe(audio, **kwargs)


class _Tokenizer:
    """Stands in for the tokenizer in evaluate.transcribe: keeps the generated ids, decodes nothing."""

    def __init__(self):
        self.sequences: torch.Tensor | None = None

    def batch_decode(self, sequences, **_kwargs):
        self.sequences = sequences
        return [""] * sequences.shape[0]


def _generate(model, fe, audio: list[np.ndarray], *, device: torch.device, precision, cpu_features: bool,
              new_tokens: int):
    """Reference evaluation step: log-mel (on the CPU or the device, outside autocast), then greedy generate."""
    from gpujob.runner.evaluate import _autocast

    feats = fe(audio, sampling_rate=16000, return_tensors="pt",
               device="cpu" if cpu_features or device.type != "cuda" else str(device)).input_features.to(device)
    with torch.no_grad(), _autocast(device, precision):
        out = model.generate(input_features=feats, language="greek", task="transcribe", max_new_tokens=new_tokens,
                             num_beams=1, do_sample=False)
    return out.sequences if hasattr(out, "sequences") else out


def _new_tokens(sequences: torch.Tensor) -> int:
    """Generated tokens per utterance; the decoder prompt is left out where generate returns it."""
    n = sequences.shape[1]
    return n - 4 if n and int(sequences[0, 0]) == SOT else n


def eval_part(size: str, device: torch.device, clips: list[np.ndarray], *, batches: int, quick: bool,
              new_tokens: int, batch_override: int | None = None) -> list[dict[str, Any]]:
    from transformers import WhisperFeatureExtractor

    from gpujob.runner.evaluate import eval_batch_size, transcribe
    from gpujob.runner.model import Precision, pick_precision

    fe = WhisperFeatureExtractor(feature_size=MEL_BINS, sampling_rate=16000, hop_length=160, chunk_length=30,
                                 n_fft=400, padding_value=0.0, return_attention_mask=False)
    dev = "GPU" if device.type == "cuda" else device.type
    runner_precision = pick_precision(RUNNER_PRECISION[0], device)
    configs = [  # name, batch, precision, attention, CPU log-mel, through the runner, reference utt/s (H100, small)
        ("2022: fp16, eager, CPU log-mel", 16, Precision("fp16", torch.float16, True), "eager", True, False, 36),
        (f"bf16, sdpa, {dev} log-mel", 64, Precision("bf16", torch.bfloat16, False), "sdpa", False, False, 95),
        (f"bf16, sdpa, {dev} log-mel", 256, Precision("bf16", torch.bfloat16, False), "sdpa", False, False, 169),
        (f"gpujob: evaluate.transcribe, defaults (batch_size auto, {runner_precision.name}, sdpa, {dev} log-mel)",
         None, runner_precision, "sdpa", False, True, None),
    ]
    log(f"\n== {dev}: evaluation, whisper-{size}, greedy, {new_tokens} new tokens per utterance, log-mel time "
        f"included, {batches} timed batch(es) after one warm-up ==")
    rows = []
    models: dict[str, Any] = {}
    for name, batch, precision, attn, cpu_features, runner, ref in configs:
        b = batch_override or (2 if quick else batch)
        row: dict[str, Any] = {"model": size, "config": name, "batch": b, "precision": precision.name,
                               "attention": attn, "features": "cpu" if cpu_features else device.type,
                               "runner": runner, "reference_utt_per_s": ref if size == "small" and b == batch else None}
        free_memory(device)
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
        try:
            if attn not in models:
                models.clear()
                free_memory(device)
                models[attn] = build_model(size, attn, device).eval()
            model = models[attn]
            if b is None:  # what evaluation.batch_size: auto picks for a job's default generation_max_length
                b = row["batch"] = eval_batch_size("auto", model, device, precision, max_length=225)
            audio = [clips[i % len(clips)] for i in range(b)]
            if runner:
                tok = _Tokenizer()
                processor = SimpleNamespace(feature_extractor=fe, tokenizer=tok)
                spec = SimpleNamespace(model=SimpleNamespace(language="el", task="transcribe"),
                                       training=SimpleNamespace(generation_max_length=new_tokens))
                keys = [f"bench::{i}" for i in range(b)]

                def once():
                    transcribe(model, processor, audio, keys, spec=spec, device=device, precision=precision)
                    return tok.sequences
            else:
                def once():
                    return _generate(model, fe, audio, device=device, precision=precision, cpu_features=cpu_features,
                                     new_tokens=new_tokens)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                once()
                sync(device)
                t0 = time.perf_counter()
                for _ in range(batches):
                    sequences = once()
                sync(device)
                elapsed = time.perf_counter() - t0
            row.update(status="ok", utt_per_s=b * batches / elapsed, batches=batches,
                       new_tokens=_new_tokens(sequences))
        except Exception as exc:  # noqa: BLE001
            row.update(status=_failure(exc, b))
        finally:
            if device.type == "cuda":
                row["peak_mem_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
        rows.append(row)
    models.clear()
    free_memory(device)
    base = rows[0].get("utt_per_s")
    for row in rows:
        if base and row.get("utt_per_s"):
            row["x_2022"] = row["utt_per_s"] / base
        if row.get("utt_per_s") and row["reference_utt_per_s"]:
            row["vs_reference"] = row["utt_per_s"] / row["reference_utt_per_s"]
    log("\n".join(table(["config", "batch", "utt/s", "x2022", "ref", "vs ref", "new tokens", "peak GiB"],
                        [[r["config"], r["batch"], rate(r.get("utt_per_s")) if r["status"] == "ok" else "failed",
                          fmt(r.get("x_2022"), 2), fmt(r["reference_utt_per_s"], 0), fmt(r.get("vs_reference"), 2),
                          fmt(r.get("new_tokens")), fmt(r.get("peak_mem_gib"))] for r in rows])))
    for r in rows:
        if r["status"] != "ok":
            log(f"  {r['config']}, batch {r['batch']}: {r['status']}")
    return rows


# ================================================================================ main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="recipes: " + ", ".join(r.name for r in RECIPES))
    p.add_argument("--part", choices=("cpu", "gpu", "all"), default="all",
                   help="cpu: data loading; gpu: training and evaluation steps; all (default)")
    p.add_argument("--model", default=None, help="small, medium or tiny; a comma list runs each "
                   "(default small,medium; tiny with --quick)")
    p.add_argument("--device", default=None, help="cuda (default where available) or cpu (a smoke test of the "
                   "GPU part)")
    p.add_argument("--batch", type=int, default=None, help="training batch (default small 64, medium 32, tiny 2)")
    p.add_argument("--steps", type=int, default=None, help="timed steps per recipe (default 8; 1 with --quick)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps per recipe, the first one included "
                   "(default 3; 1 with --quick)")
    p.add_argument("--recipes", default=None, help="comma list (default all; 2022 is always run as the baseline)")
    p.add_argument("--eval-batches", type=int, default=None, help="timed generate batches per evaluation "
                   "config (default 3; 1 with --quick)")
    p.add_argument("--eval-batch", type=int, default=None, help="one batch size for every evaluation config "
                   "(default: the reference sizes 16, 64, 256 and the runner's 16; 2 with --quick)")
    p.add_argument("--runner-precision", choices=("auto", "bf16", "fp16", "fp32"), default="auto",
                   help="training.precision for the gpujob rows, through model.pick_precision (default auto)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation benchmark")
    p.add_argument("--clips", type=int, default=None, help="synthesized clips (default 24; 4 with --quick)")
    p.add_argument("--clip-seconds", type=float, default=None, help="length of each clip (default 8; 3 with --quick)")
    p.add_argument("--time-limit", type=float, default=None, metavar="SECONDS", help="start no recipe or "
                   "evaluation after this many seconds (those left are reported as skipped; the JSON is written "
                   "after every recipe)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH", help="write every result here as JSON")
    p.add_argument("--quick", action="store_true", help="tiny sizes for a smoke test (tiny model, batch 2, few "
                   "steps and clips; torch.compile left out unless named in --recipes)")
    args = p.parse_args(argv)
    q = args.quick
    args.model = [m.strip() for m in (args.model or ("tiny" if q else "small,medium")).split(",") if m.strip()]
    bad = [m for m in args.model if m not in MODELS]
    if bad:
        p.error(f"--model: unknown {', '.join(bad)} (use {', '.join(MODELS)})")
    args.steps = args.steps if args.steps is not None else (1 if q else 8)
    args.warmup = args.warmup if args.warmup is not None else (1 if q else 3)
    args.eval_batches = args.eval_batches if args.eval_batches is not None else (1 if q else 3)
    args.clips = args.clips if args.clips is not None else (4 if q else 24)
    args.clip_seconds = args.clip_seconds if args.clip_seconds is not None else (3.0 if q else 8.0)
    if args.steps < 1 or args.warmup < 1 or args.clips < 1:
        p.error("--steps, --warmup and --clips must be at least 1")
    if args.recipes:
        names = [n.strip() for n in args.recipes.split(",") if n.strip()]
        bad = [n for n in names if n not in RECIPE_BY_NAME]
        if bad:
            p.error(f"--recipes: unknown {', '.join(bad)} (known: {', '.join(RECIPE_BY_NAME)})")
        if "2022" not in names:
            names.insert(0, "2022")
        args.recipe_list = [RECIPE_BY_NAME[n] for n in names]
    else:
        args.recipe_list = [r for r in RECIPES if not (q and r.name in QUICK_SKIP)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    RUNNER_PRECISION[0] = args.runner_precision
    warnings.filterwarnings("ignore", message=".*(gradient_checkpointing|use_reentrant|requires_grad).*")
    import transformers

    transformers.logging.set_verbosity_error()  # generate's per-call notices would drown the tables
    transformers.logging.disable_progress_bar()
    started = datetime.datetime.now(datetime.timezone.utc)
    t_start = time.perf_counter()
    ver = versions()
    cuda = torch.cuda.is_available()
    device = torch.device(args.device) if args.device else torch.device("cuda" if cuda else "cpu")
    run_gpu = args.part in ("gpu", "all") and (device.type == "cuda" or args.device is not None)
    if device.type == "cuda" and not cuda:
        run_gpu, device = False, torch.device("cpu")
    device_info: dict[str, Any] = {"type": device.type}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        device_info.update(name=props.name, memory_gib=round(props.total_memory / 2**30, 1),
                           capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported())
    log(f"gpujob runner benchmark, {started:%Y-%m-%d %H:%M} UTC; {platform.node()}; CPU {cpu_model()} "
        f"({cores_available()} cores available)")
    log("versions: " + ", ".join(f"{k} {v}" for k, v in ver.items()))
    log(f"device: {device_info.get('name', device.type)}"
        + (f" ({device_info['memory_gib']} GiB, sm {device_info['capability']})" if device.type == "cuda" else ""))
    results: dict[str, Any] = {
        "date": started.isoformat(timespec="seconds"), "host": platform.node(), "cpu_model": cpu_model(),
        "cores": cores_available(), "versions": ver, "device": device_info, "peak_flops": PEAK_FLOPS,
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items() if k != "recipe_list"},
        "recipes": [asdict(r) for r in args.recipe_list], "reference": REFERENCE,
        "targets": [{"target": t[0], "model": t[1], "frozen_encoder": t[2], "samples_per_s": t[3]} for t in TARGETS],
    }

    deadline = t_start + args.time_limit if args.time_limit else None

    def save() -> None:
        if args.json:
            results["seconds"] = time.perf_counter() - t_start
            args.json.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.json.with_name(args.json.name + ".part")
            tmp.write_text(json.dumps(results, indent=2, default=str) + "\n")
            os.replace(tmp, args.json)

    t0 = time.perf_counter()
    n_clips = args.clips if args.part != "gpu" else min(args.clips, 8)
    clips, source = synthesize_clips(n_clips, args.clip_seconds)
    log(f"synthesized {len(clips)} clips in {time.perf_counter() - t0:.1f} s ({source})")

    if args.part in ("cpu", "all"):
        results["cpu"] = cpu_part(clips, source, min_time=0.15 if args.quick else 1.0,
                                  feature_batch=16 if not args.quick else 2, loader_rows=12 if args.quick else 192)
        save()
    if not run_gpu:
        if args.part in ("gpu", "all"):
            why = "no CUDA device here (torch.cuda.is_available() is False)"
            log(f"\nGPU part skipped: {why}. Run it on an H100/H200, or smoke-test it here with --device cpu --quick.")
            results["gpu_skipped"] = why
    else:
        results["train"], results["flop_per_sample"] = [], {}
        train_part(args.model, args.recipe_list, device, args.batch, args.steps, args.warmup, clips,
                   rows=results["train"], flops=results["flop_per_sample"], deadline=deadline, save=save)
        if args.no_eval:
            pass
        elif deadline is not None and time.perf_counter() > deadline:
            log("\nevaluation skipped: --time-limit reached")
            results["eval_skipped"] = "--time-limit reached"
        else:
            results["eval"] = eval_part(args.model[0], device, clips, batches=args.eval_batches, quick=args.quick,
                                        new_tokens=8 if args.quick else EVAL_NEW_TOKENS,
                                        batch_override=args.eval_batch)
        results["summary"] = summary(results["train"], results.get("cpu"))
    results["seconds"] = time.perf_counter() - t_start
    log(f"\ndone in {results['seconds']:.0f} s")
    save()
    if args.json:
        log(f"results written to {args.json}")
    return 0


def summary(train: list[dict], cpu: dict | None) -> list[dict]:
    """The runner's rows against their targets. gpujob-run rows are the runner end to end; for the model-step rows
    the loader's measured capacity here (the CPU part, at data.loader_workers: auto) is shown beside them, since the
    two overlap: end to end is about min(step, loader)."""
    from gpujob.runner.data import loader_threads

    auto = loader_threads("auto")
    loader = None
    if cpu and cpu.get("loader", {}).get("runs"):
        runs = cpu["loader"]["runs"]
        at_auto = [r["samples_per_s"] for r in runs if r["workers"] == auto]
        loader = at_auto[0] if at_auto else cpu["loader"]["per_thread_samples_per_s"] * auto
    out = []
    for r in train:
        if not r["recipe"].startswith("gpujob") or not r.get("samples_per_s"):
            continue
        target = r.get("target_samples_per_s")  # set by train_part from the recipe's frozen encoder
        row = {"model": r["model"], "recipe": r["recipe"], "samples_per_s": r["samples_per_s"],
               "target_samples_per_s": target, "end_to_end": r["recipe"].startswith("gpujob-run")}
        if row["end_to_end"]:
            row["expected_end_to_end"] = r["samples_per_s"]
        elif loader is not None:
            row["loader_samples_per_s"] = loader
            row["expected_end_to_end"] = min(r["samples_per_s"], loader)
        if target and row.get("expected_end_to_end"):
            row["meets_target"] = row["expected_end_to_end"] >= target
        out.append(row)
    if out:
        log(f"\n== the runner against its targets (gpujob-run: measured end to end; the others: the model step, with "
            f"the loader's capacity here at data.loader_workers auto = {auto}, mp3 48 kHz, from the CPU part) ==")
        log("\n".join(table(["model", "recipe", "samples/s", "loader here", "end to end", "target", "meets"],
                            [[o["model"], o["recipe"], rate(o["samples_per_s"]),
                              "(in it)" if o["end_to_end"] else rate(o.get("loader_samples_per_s")),
                              rate(o.get("expected_end_to_end")), fmt(o["target_samples_per_s"]),
                              {True: "yes", False: "no"}.get(o.get("meets_target"), "-")] for o in out],
                            right={2, 3, 4, 5})))
    return out


if __name__ == "__main__":
    sys.exit(main())
