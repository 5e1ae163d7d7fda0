"""How ``gpujob compare`` looks: one row per job (the spec keys that differ, then results), and the
utterances two runs transcribe differently."""

from __future__ import annotations

import json
from typing import Any, Sequence

from gpujob.compare import MISSING, Result, UtteranceDiff, score_keys, show
from gpujob.events import clean_text
from gpujob.records import Job
from gpujob.words import fmt_duration

MAX_CELL = 60  # a spec value wider than this is cut, with …


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value * 100:.2f}%"


def _cell(text: str) -> str:
    text = clean_text(text, 4000) or ""
    return text if len(text) <= MAX_CELL else text[: MAX_CELL - 1] + "…"


def _cost(usd: float | None) -> str:
    from gpujob.cli import display

    return "unknown" if usd is None else display.money(usd)


def table(jobs: Sequence[Job], results: Sequence[Result], diffs: dict[str, list[Any]]) -> str:
    """JOB, NAME, each differing key, STATUS, best and final WER/CER (overall, then per eval source: the
    final values), STEPS, RUNTIME, COST."""
    scores = score_keys(results)
    per_source = [k for k in scores if "/" in k]
    header = ["JOB", "NAME", *diffs, "STATUS"]
    if "wer" in scores:
        header += ["BEST WER", "FINAL WER"]
    if "cer" in scores:
        header += ["BEST CER", "FINAL CER"]
    header += [k.upper() for k in per_source] + ["STEPS", "RUNTIME", "COST"]
    rows = [header]
    for i, (job, res) in enumerate(zip(jobs, results)):
        row = [job.id, _cell(job.name), *[_cell(show(values[i])) for values in diffs.values()], job.status]
        for key in ("wer", "cer"):
            if key in scores:
                best = _pct(res.best.get(key))
                if key in res.best_step:
                    best += f" @{res.best_step[key]}"
                row += [best, _pct(res.final.get(key))]
        row += [_pct(res.final.get(k)) for k in per_source]
        row += ["-" if res.steps is None else str(res.steps), fmt_duration(res.runtime_s), _cost(res.cost_usd)]
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows]
    if not diffs:
        lines.append("(the specs do not differ" + (", apart from the sweep's suffixes of name and output.dir)"
                                                    if any(j.sweep_id for j in jobs) else ")"))
    return "\n".join(lines)


def as_json(jobs: Sequence[Job], results: Sequence[Result], diffs: dict[str, list[Any]]) -> dict[str, Any]:
    """``differences``: {key: {job id: value}} (a key a job lacks is left out of its entry); ``jobs``: each
    job's id, name, status, sweep, its values of those keys and its results (WER/CER as fractions)."""
    out_jobs = []
    for i, (job, res) in enumerate(zip(jobs, results)):
        out_jobs.append({
            "id": job.id, "name": job.name, "status": job.status, "sweep_id": job.sweep_id,
            "spec": {k: v[i] for k, v in diffs.items() if v[i] is not MISSING},
            "final": res.final, "best": res.best, "best_step": res.best_step, "steps": res.steps,
            "runtime_s": res.runtime_s, "cost_usd": res.cost_usd,
        })
    differences = {k: {j.id: v[i] for i, j in enumerate(jobs) if v[i] is not MISSING} for k, v in diffs.items()}
    return {"differences": differences, "jobs": out_jobs}


def utterances_text(jobs: Sequence[Job], a: dict, b: dict, diffs: Sequence[UtteranceDiff], n: int) -> str:
    """A summary line, then the ``n`` most different utterances: id, both WERs, reference, both hypotheses."""
    ja, jb = jobs
    common = len(a.keys() & b.keys())
    better_a = sum(1 for d in diffs if None not in d.wers and d.wers[0] < d.wers[1])
    better_b = sum(1 for d in diffs if None not in d.wers and d.wers[1] < d.wers[0])
    lines = [f"A = {ja.id} ({_cell(ja.name)}), B = {jb.id} ({_cell(jb.name)}): {common} utterances in both, "
             f"{len(diffs)} transcribed differently (A better on {better_a}, B better on {better_b})"]
    if common == 0:
        lines.append("no utterance is in both predictions files (they were matched by eval source and id)")
    for d in diffs[:n]:
        lines += [f"{clean_text(d.key, 200)}  WER A {_pct(d.wers[0])}  B {_pct(d.wers[1])}  "
                  f"(hypotheses {d.distance} word edit{'s' if d.distance != 1 else ''} apart)",
                  f"  ref: {clean_text(d.reference, 2000)}",
                  f"  A:   {clean_text(d.hypotheses[0], 2000)}",
                  f"  B:   {clean_text(d.hypotheses[1], 2000)}"]
    return "\n".join(lines)


def utterances_json(jobs: Sequence[Job], a: dict, b: dict, diffs: Sequence[UtteranceDiff], n: int) -> str:
    return json.dumps({
        "a": jobs[0].id, "b": jobs[1].id, "common": len(a.keys() & b.keys()), "different": len(diffs),
        "utterances": [{"id": d.key, "reference": d.reference, "hypothesis_a": d.hypotheses[0],
                        "hypothesis_b": d.hypotheses[1], "wer_a": d.wers[0], "wer_b": d.wers[1],
                        "word_distance": d.distance} for d in diffs[:n]],
    }, indent=2, ensure_ascii=False)
