"""The job page's worst utterances, for debugging a speech model: each one's split and source, WER and CER,
duration, a word-level diff of reference and hypothesis (substitutions, insertions, deletions), and its
clip where the runner kept it (``worst_audio/``, served from the job's own outputs by :mod:`.downloads`)."""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any

from gpujob.backends import capabilities
from gpujob.errors import UserError
from gpujob.compare import predictions_path, read_predictions
from gpujob.records import Job
from gpujob.words import printable

WORST = 20
AUDIO_FOLDER = "worst_audio"  # runner/worst_audio.py's
AUDIO_NAME = re.compile(r"\d{3}\.wav")
MAX_INDEX_BYTES = 1 << 20
MAX_CER_CHARS = 600  # of each transcript, for the per-utterance CER (a quadratic edit distance)


def word_diff(reference: str, hypothesis: str) -> list[tuple[str, str, str]]:
    """(op, reference word, hypothesis word) for the words of both, aligned: ``eq``, ``sub`` (a substitution),
    ``del`` (a reference word missing from the hypothesis), ``ins`` (a word the hypothesis added)."""
    ref, hyp = reference.split(), hypothesis.split()
    out: list[tuple[str, str, str]] = []
    for op, i1, i2, j1, j2 in difflib.SequenceMatcher(a=ref, b=hyp, autojunk=False).get_opcodes():
        if op == "equal":
            out += [("eq", w, w) for w in ref[i1:i2]]
        elif op == "delete":
            out += [("del", w, "") for w in ref[i1:i2]]
        elif op == "insert":
            out += [("ins", "", w) for w in hyp[j1:j2]]
        else:
            a, b = ref[i1:i2], hyp[j1:j2]
            out += [("sub", x, y) for x, y in zip(a, b)]
            out += [("del", x, "") for x in a[len(b):]] + [("ins", "", y) for y in b[len(a):]]
    return out


def edit_distance(a: str, b: str) -> int:
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def audio_index(job: Job) -> dict[tuple[str, str], dict[str, Any]]:
    """(source, id) -> {file, duration_s} of the clips the runner kept (none where it kept none)."""
    if not job.output_dir or "://" in job.output_dir:
        return {}
    path = Path(job.output_dir) / AUDIO_FOLDER / "index.json"
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_INDEX_BYTES:
            return {}
        entries = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    out = {}
    for e in entries if isinstance(entries, list) else []:
        if isinstance(e, dict) and isinstance(e.get("file"), str) and AUDIO_NAME.fullmatch(e["file"]):
            out[(str(e.get("source", "")), str(e.get("id")))] = {"file": e["file"], "duration_s": _number(e.get("duration_s"))}
    return out


def rows(job: Job, n: int = WORST) -> tuple[list[dict[str, Any]], str | None]:
    """The job's ``n`` worst utterances (highest WER first), or why there are none."""
    try:
        records = read_predictions(predictions_path(job, capabilities(job.backend).outputs_volume))
    except UserError as exc:
        return [], exc.message
    except OSError as exc:
        return [], f"its predictions cannot be read: {exc.strerror}"
    clips = audio_index(job)
    out = []
    for key, r in records.items():
        uid, source = str(r.get("id", key)), str(r.get("source") or "")
        split, _, name = uid.partition("/") if "/" in uid else ("", "", uid)
        ref_n = str(r.get("reference_normalized") or r.get("reference") or "")
        hyp_n = str(r.get("prediction_normalized") or r.get("prediction") or "")
        clip = clips.get((source, uid))
        out.append({
            "key": printable(key, 200), "id": printable(name, 200), "split": printable(split, 100),
            "source": printable(source, 100), "wer": _number(r.get("wer")),
            "cer": edit_distance(ref_n[:MAX_CER_CHARS], hyp_n[:MAX_CER_CHARS]) / len(ref_n[:MAX_CER_CHARS]) if ref_n else None,
            "reference": printable(str(r.get("reference") or "")), "hypothesis": printable(str(r.get("prediction") or "")),
            "diff": [(op, printable(a, 200), printable(b, 200)) for op, a, b in word_diff(ref_n[:5000], hyp_n[:5000])],
            "audio": clip["file"] if clip else None, "duration_s": clip["duration_s"] if clip else None})
    out.sort(key=lambda r: (r["wer"] is None, -(r["wer"] or 0.0), r["key"]))
    return out[:n], None if out else "its predictions.jsonl is empty"
