"""The audio of the worst-transcribed utterances, kept beside the predictions so that people can listen
to them (the dashboard plays them): ``worst_audio/NNN.wav`` (16 kHz mono, 16-bit PCM, at most
:data:`MAX_SECONDS` of each) and ``worst_audio/index.json``: ``[{id, source, file, duration_s}]``, the worst
first. A train job writes the clips it holds (under torchrun, the writer's share of the eval set); an
evaluate job, which streams its clips through once, reads the worst ones again from ``data.eval`` after
scoring (:func:`from_sources`; not with ``data.streaming``, where that would be a second download)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf

from gpujob.runner import data as data_mod
from gpujob.runner.audio import TARGET_SR
from gpujob.runner.metrics import Scores, worst

FOLDER = "worst_audio"
KEEP = 20
MAX_SECONDS = 30.0


def save(out_dir: Path, scores: Scores, examples: Iterable[dict], n: int = KEEP) -> int:
    """Write the ``n`` worst utterances' clips found in ``examples``; returns how many were written."""
    bad = worst(scores, n)
    wanted = {(u.get("source", ""), str(u["id"])): i for i, u in enumerate(bad)}
    clips: dict[int, np.ndarray] = {}
    for example in examples:
        key = (example.get("source_name", ""), str(example.get("id")))
        if key in wanted and wanted[key] not in clips:
            clips[wanted[key]] = np.asarray(example["audio"], dtype=np.float32)[: int(MAX_SECONDS * TARGET_SR)]
    folder = out_dir / FOLDER
    if folder.exists():
        shutil.rmtree(folder)  # a previous attempt's clips: not this evaluation's
    if not clips:
        return 0
    folder.mkdir(parents=True)
    index = []
    for i in sorted(clips):
        name = f"{i + 1:03d}.wav"
        sf.write(folder / name, np.clip(clips[i], -1.0, 1.0), TARGET_SR, subtype="PCM_16")
        index.append({"id": str(bad[i]["id"]), "source": bad[i].get("source", ""), "file": name,
                      "duration_s": round(len(clips[i]) / TARGET_SR, 3)})
    (folder / "index.json").write_text(json.dumps(index, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    return len(index)


def from_sources(out_dir: Path, scores: Scores, sources, *, seed: int, n: int = KEEP) -> int:
    """:func:`save` for a job that kept no clips: the ``n`` worst are found in ``sources`` (the spec's
    ``data.eval``) by source name and id, and only they are decoded; the reading stops once all are found."""
    wanted = {(u.get("source", ""), str(u["id"])) for u in worst(scores, n)}

    def examples():
        left = set(wanted)
        for clip in data_mod.iter_clips(sources, streaming=False, seed=seed, key="data.eval"):
            if (clip.name, str(clip.id)) in left:
                audio = data_mod.decode_clip(clip)
                if isinstance(audio, np.ndarray):
                    left.discard((clip.name, str(clip.id)))
                    yield {"audio": audio, "id": clip.id, "source_name": clip.name}
                if not left:
                    return

    return save(out_dir, scores, examples(), n) if wanted else 0
