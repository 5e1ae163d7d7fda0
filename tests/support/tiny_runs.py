"""The tiny runs the runner's tests share (and the image's, the trackers'): a folder of real synthesized
Greek speech (libespeak-ng), a spec for a tiny train or evaluate job on it,
and run_runner: the runner run as a job runs it, its events read as they come (optionally signalled at a step)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from gpujob.events import parse_line
from gpujob_dev.espeak import write_wav  # libespeak-ng from espeakng-loader: what espeak-ng -w writes

SENTENCES = [
    "Καλημέρα σε όλους.", "Ο καιρός είναι ωραίος σήμερα.", "Πού είναι ο σταθμός;", "Θέλω ένα ποτήρι νερό.",
    "Η θάλασσα είναι ήσυχη.", "Τα παιδιά παίζουν στο πάρκο.", "Διαβάζω ένα βιβλίο.", "Το τρένο φεύγει στις οκτώ.",
    "Η γιαγιά μαγειρεύει φασολάδα.", "Ανοίξτε το παράθυρο, παρακαλώ.",
]



def write_greek_folder(root: Path) -> Path:
    """An audio folder (metadata.csv + wav) of real synthesized Greek speech: train/ and heldout/."""
    for split, sentences in (("train", SENTENCES[:8]), ("heldout", SENTENCES[8:])):
        folder = root / split
        folder.mkdir()
        rows = ["file_name,transcription"]
        for i, text in enumerate(sentences):
            wav = folder / f"{split}-{i}.wav"
            write_wav(wav, text, speed=170)
            rows.append(f'{wav.name},"{text}"')
        (folder / "metadata.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def write_spec(tmp_path: Path, model: Path, data: Path, *, kind="train", out=None, **training) -> Path:
    settings = {"max_steps": 12, "per_device_batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 2,
                "eval_steps": 1000, "save_steps": 3, "save_total_limit": 10, "precision": "fp32",
                "generation_max_length": 40, **training}
    spec = {
        "apiVersion": "gpujob/v1", "kind": kind, "name": "tiny-el",
        "model": {"checkpoint": str(model), "language": "el"},
        "data": {"eval": [{"dataset": str(data), "split": "heldout"}]},
        "evaluation": {"batch_size": 4},
        "output": {"dir": str(out or tmp_path / "out")},
        "resources": {"gpus": 0},
    }
    if kind == "train":
        spec["data"]["train"] = [{"dataset": str(data), "split": "train"}]
        spec["training"] = settings
    path = tmp_path / "spec.yaml"
    path.write_text(json.dumps(spec))  # JSON is YAML
    return path


def run_runner(spec: Path, *, stop_at_step: int | None = None, sig=signal.SIGKILL) -> tuple[int, list[dict], str]:
    """Run `python -m gpujob.runner SPEC`; optionally send `sig` once a progress event for stop_at_step appears."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "2"}
    env.pop("GPUJOB_OUTPUT_DIR", None)
    proc = subprocess.Popen([sys.executable, "-m", "gpujob.runner", str(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=env)
    events, lines = [], []
    for line in proc.stdout:
        lines.append(line)
        for event in parse_line(line):
            events.append(event)
            if stop_at_step is not None and event["event"] == "progress" and event["step"] >= stop_at_step:
                proc.send_signal(sig)
                stop_at_step = None
    return proc.wait(timeout=300), events, "".join(lines)


def steps_and_losses(events: list[dict]) -> list[tuple[int, float]]:
    return [(e["step"], e["loss"]) for e in events if e["event"] == "progress"]
