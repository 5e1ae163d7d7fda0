"""The benchmark's speech: Greek sentences from libespeak-ng (a speech-like numpy signal where it is
missing), the real Whisper tokenizer, and a Common Voice-style dir of MP3s for the loader and train.run."""

from __future__ import annotations

import functools
import importlib.util
import random
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import soundfile as sf

from gpujob.runner import audio as audio_mod
from gpujob.runner.data import usable_cores

from .common import log


def synthesize_clips(n: int, seconds: float, seed: int = 0) -> tuple[list[np.ndarray], str]:
    """``n`` mono 16 kHz clips of about ``seconds`` each: libespeak-ng Greek sentences joined with short pauses."""
    rng = random.Random(seed)
    if importlib.util.find_spec("espeakng_loader") is not None:
        try:
            from gpujob_dev.greek_speech import load_sentences, synthesize

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

            with ThreadPoolExecutor(max_workers=max(1, min(4, usable_cores()))) as pool:
                return list(pool.map(one, range(n))), "libespeak-ng (Greek voice)"
        except Exception as exc:  # noqa: BLE001 - fall back to the synthetic signal
            log(f"libespeak-ng failed ({exc}); using a speech-like numpy signal")
    return ([_speechlike(seconds, rng) for _ in range(n)],
            "speech-like numpy signal (libespeak-ng not available: pip install espeakng-loader)")


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


@functools.lru_cache(maxsize=1)
def whisper_tokenizer():
    """The real Whisper tokenizer (from the packaged Whisper base, converted once into $GPUJOB_CACHE), or None."""
    try:
        from transformers import WhisperTokenizerFast

        from gpujob_dev.convert_ct2 import ensure_whisper_base

        tokenizer = WhisperTokenizerFast.from_pretrained(ensure_whisper_base())
        tokenizer.set_prefix_tokens(language="greek", task="transcribe", predict_timestamps=False)
        return tokenizer
    except Exception as exc:  # noqa: BLE001 - the package or the conversion is missing here
        log(f"(no Whisper tokenizer here: {type(exc).__name__}: {str(exc)[:120]}; labels are left out)")
        return None


def write_cv_corpus(root: Path, clips: list[np.ndarray], rows: int, sr: int = 48000) -> tuple[Path, list[str]]:
    """A Common Voice-style dir (clips/*.mp3 at 48 kHz, train.tsv) of ``rows`` rows over ``clips``, each file
    used by several rows (each row is decoded on its own, as in training). Returns the dir and its texts."""
    from gpujob_dev.greek_speech import CV_COLUMNS, load_sentences

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
