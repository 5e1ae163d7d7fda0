"""Comparing runs: which spec keys differ, each run's results, and the utterances two runs hear differently.

* :func:`spec_differences`: the specs flattened to dotted keys (``training.learning_rate``, list items
  by index: ``command.4``, ``data.eval.1.dataset``), and only the keys whose values are not the same
  in every run. A key one run lacks counts as different (shown as missing). The suffixes a sweep
  adds to each job's ``name`` (``-<n>``) and ``output.dir`` (``/<sweep id>-<n>``) are taken off first,
  so runs of one sweep differ only by their grid keys.
* :func:`result`: a run's final and best WER/CER (overall and per eval source) from its metric
  history's eval points, else from its final metrics; its steps, runtime and cost (None: unknown).
* :func:`utterance_differences`: two runs' ``predictions.jsonl`` matched by utterance (eval source
  and id, else line number), ranked by how far apart the two runs' per-utterance WERs are, then by
  the word edit distance between the two hypotheses; utterances transcribed the same are left out.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

from gpujob import untrusted
from gpujob.errors import UserError
from gpujob.linesplit import LineSplitter
from gpujob.records import Job

MISSING = object()  # a key one spec does not have
PREDICTIONS = "predictions.jsonl"


# ----------------------------------------------------------------------------- spec differences

def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested mappings and lists as ``{dotted.key: leaf}``; an empty mapping or list is a leaf."""
    if isinstance(value, dict) and value:
        items: Iterable[tuple[Any, Any]] = value.items()
    elif isinstance(value, list) and value:
        items = enumerate(value)
    else:
        return {prefix: value} if prefix else {}
    out: dict[str, Any] = {}
    for key, item in items:
        out.update(flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return out


def comparable_spec(job: Job) -> dict[str, Any]:
    """The job's spec, flat, with the suffixes its sweep gave ``name`` and ``output.dir`` taken off."""
    flat = flatten(job.spec_data)
    if job.sweep_id:
        if isinstance(flat.get("name"), str):
            flat["name"] = re.sub(r"-\d+$", "", flat["name"])
        if isinstance(flat.get("output.dir"), str):
            flat["output.dir"] = re.sub(rf"/{re.escape(job.sweep_id)}-\d+/*$", "", flat["output.dir"])
    return flat


def spec_differences(specs: Sequence[dict[str, Any]]) -> dict[str, list[Any]]:
    """``{key: [value in each spec]}`` for the keys (of flat specs) whose values are not all the same,
    in the order the keys first appear; a spec without the key has :data:`MISSING` there."""
    keys = list(dict.fromkeys(k for spec in specs for k in spec))
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [spec.get(key, MISSING) for spec in specs]
        if any(not _same(values[0], v) for v in values[1:]):
            out[key] = values
    return out


def _same(a: Any, b: Any) -> bool:
    # 1 and 1.0 and true are three settings in a spec; compare the type too
    return a is b or (type(a) is type(b) and a == b)


def show(value: Any) -> str:
    """A spec value as YAML would write it: ``1e-05``, ``true``, ``null``; missing as ``-``."""
    if value is MISSING:
        return "-"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


# ----------------------------------------------------------------------------- results

@dataclass
class Result:
    """What a run reached. WER/CER are fractions (0.23 is 23 %); None: not known."""

    final: dict[str, float] = field(default_factory=dict)      # wer, cer, wer/<source>, cer/<source>
    best: dict[str, float] = field(default_factory=dict)       # the lowest of each
    best_step: dict[str, int] = field(default_factory=dict)    # the step each best was reached at
    steps: int | None = None
    runtime_s: float | None = None
    cost_usd: float | None = None

    @property
    def sort_key(self) -> tuple[bool, float]:
        """Best WER first; runs without one last."""
        wer = self.best.get("wer")
        return (wer is None, wer if wer is not None else math.inf)


def _is_score(key: str) -> bool:
    return key in ("wer", "cer") or key.startswith(("wer/", "cer/"))


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def result(job: Job, points: Sequence[dict[str, Any]]) -> Result:
    """``job``'s results from its metric history (``points``), completed by its final metrics."""
    out = Result(runtime_s=job.runtime_s, cost_usd=job.cost)
    for p in points:
        if p.get("event") != "eval":
            continue
        for key, value in p.items():
            if _is_score(key) and _number(value):
                out.final[key] = float(value)
                if key not in out.best or value < out.best[key]:
                    out.best[key], out.best_step[key] = float(value), p["step"]
    for key, value in (job.metrics or {}).items():  # an end event's metrics, when no eval was kept
        if _is_score(key) and _number(value) and key not in out.final:
            out.final[key] = out.best[key] = float(value)
    steps = [p["step"] for p in points if isinstance(p.get("step"), int) and p.get("event") != "system"]  # (a
    # system point's step is its sample number)
    progress_step = (job.progress or {}).get("step")
    candidates = steps + ([progress_step] if isinstance(progress_step, int) else [])
    out.steps = max(candidates) if candidates else None
    return out


def score_keys(results: Sequence[Result]) -> list[str]:
    """``wer``, ``cer``, then ``wer/<source>``, ``cer/<source>`` of every source some run reports."""
    keys = dict.fromkeys(k for r in results for k in (*r.final, *r.best))
    ordered = [k for k in ("wer", "cer") if k in keys]
    sources = dict.fromkeys(k.split("/", 1)[1] for k in keys if "/" in k)
    return ordered + [f"{m}/{s}" for s in sources for m in ("wer", "cer") if f"{m}/{s}" in keys]


# ----------------------------------------------------------------------------- utterances

@dataclass
class UtteranceDiff:
    key: str                      # the utterance: "<source>/<id>", "<id>" or "#<line>"
    reference: str
    hypotheses: tuple[str, str]
    wers: tuple[float | None, float | None]
    distance: int                 # word edit distance between the two hypotheses

    @property
    def gap(self) -> float:
        a, b = self.wers
        return abs(a - b) if a is not None and b is not None else 0.0


def predictions_path(job: Job, volume: str | None = None) -> Path:
    """Where ``job``'s ``predictions.jsonl`` is, if this machine can read it; a UserError saying where it
    is and why it cannot be read otherwise. ``volume``: where the job's backend keeps its outputs when
    they are on a volume of its own (:attr:`gpujob.backends.base.Capabilities.outputs_volume`)."""
    out = job.output_dir
    who = f"job {job.id} ({job.name})"
    if not out:
        raise UserError(f"{who} has no output directory on record", hint="only train and evaluate jobs write predictions")
    if "://" in out:
        raise UserError(f"{who} wrote its outputs to {out}, which is not a folder on this machine",
                        hint=f"download {out}/{PREDICTIONS} and compare the files yourself")
    path = Path(out) / PREDICTIONS
    try:
        path.lstat()
        return path
    except OSError as exc:
        if exc.errno not in (errno.ENOENT, errno.ENOTDIR):  # a name too long, a folder we may not read
            raise UserError(f"{who}: its predictions at {str(path)[:300]} cannot be read: {exc.strerror}",
                            hint="the job's output directory on record may be damaged; see `gpujob status`") from None
    if volume:
        raise UserError(f"{who} ran on {job.backend}: its outputs are at {out} on {volume}, not on this "
                        "machine", hint=f"copy {PREDICTIONS} out of the volume (kubectl cp from a pod that mounts it)")
    if not _is_dir(out):
        raise UserError(f"{who}: its output directory {out} is not on this machine (or cannot be read here)",
                        hint="a job on a remote engine or host has its outputs copied back when it ends")
    raise UserError(f"{who}: {path} does not exist: the job ({job.status}) has not written predictions",
                    hint="train and evaluate jobs write it after their final evaluation")


MAX_PREDICTIONS_BYTES = 256 << 20  # the most of a predictions.jsonl read
TEXT_CHARS = 10_000                # a longer reference or prediction is cut
DISTANCE_WORDS = 500               # word distances are measured on at most this many words of each


def _is_dir(path: str) -> bool:
    try:
        return os.path.isdir(path)
    except (OSError, ValueError):
        return False


def read_predictions(path: Path) -> dict[str, dict[str, Any]]:
    """``predictions.jsonl`` as ``{utterance key: record}``: keyed by eval source and id when the runner
    wrote them, else by line number. The file is untrusted: a regular file only (a FIFO or a device is
    a UserError naming it), at most :data:`MAX_PREDICTIONS_BYTES`, lines over 1 MiB or nested deeper than
    JSON needs are skipped as lines that are not JSON objects are, and each record keeps only
    ``id``, ``source``, ``reference``, ``prediction``, ``reference_normalized``, ``prediction_normalized`` (text, cut at
    :data:`TEXT_CHARS`) and ``wer`` (a finite number), whatever types the file gave them."""
    try:
        fh = untrusted.open_regular(path)
    except untrusted.Refused as exc:
        raise UserError(str(exc), hint="predictions.jsonl is written by train and evaluate jobs; move this one away") from None
    out: dict[str, dict[str, Any]] = {}
    with fh:
        splitter, n, read = LineSplitter(), 0, 0
        while read < MAX_PREDICTIONS_BYTES:
            chunk = fh.read(1 << 20)
            read += len(chunk)
            pieces = splitter.feed_pieces(chunk) if chunk else splitter.flush_pieces()
            for piece, continues in pieces:
                if continues:  # the rest of a line over 1 MiB: not a record
                    continue
                n += 1
                if len(piece) >= splitter.max_line:
                    continue
                record = _record(piece)
                if record is None:
                    continue
                uid = record.get("id")
                key = f"#{n}" if uid is None else uid
                if record.get("source"):
                    key = f"{record['source']}/{key}"
                out[key] = record
            if not chunk:
                break
    return out


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        data = untrusted.loads(line, what="a predictions line")
    except untrusted.Refused:
        return None
    if not isinstance(data, dict):
        return None
    record: dict[str, Any] = {}
    for key in ("id", "source", "reference", "prediction", "reference_normalized", "prediction_normalized"):
        value = data.get(key)
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, int) and key in ("id",) and abs(value) < 10**18:
            value = str(value)
        if isinstance(value, str):
            record[key] = value[:TEXT_CHARS]
    wer = data.get("wer")
    if _number(wer) and abs(wer) < 1e12:
        record["wer"] = float(wer)
    return record


def _hypothesis(record: dict[str, Any]) -> str:
    text = record.get("prediction_normalized")
    return str(text if text is not None else record.get("prediction") or "")


def word_distance(a: str, b: str) -> int:
    """Levenshtein distance between the words of ``a`` and ``b`` (their first :data:`DISTANCE_WORDS`)."""
    x, y = a.split()[:DISTANCE_WORDS], b.split()[:DISTANCE_WORDS]
    row = list(range(len(y) + 1))
    for i, wx in enumerate(x, start=1):
        prev, row[0] = row[0], i
        for j, wy in enumerate(y, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (wx != wy))
    return row[-1]


def utterance_differences(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]],
                          n: int | None = None) -> list[UtteranceDiff]:
    """The utterances both runs transcribed, differently, most different first (see the module's doc)."""
    diffs = []
    for key, ra in a.items():
        rb = b.get(key)
        if rb is None:
            continue
        ha, hb = _hypothesis(ra), _hypothesis(rb)
        if ha == hb:
            continue
        wa, wb = ra.get("wer"), rb.get("wer")
        diffs.append(UtteranceDiff(key, str(ra.get("reference") or ""), (str(ra.get("prediction") or ""),
                                   str(rb.get("prediction") or "")),
                                   (float(wa) if _number(wa) else None, float(wb) if _number(wb) else None),
                                   word_distance(ha, hb)))
    diffs.sort(key=lambda d: (-d.gap, -d.distance, d.key))
    return diffs if n is None else diffs[:n]

