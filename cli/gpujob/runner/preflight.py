"""``gpujob check`` and the start of every train/evaluate job: a spec's sources checked before
anything is trained — reachable, columns present, audio decodable, transcripts within Whisper's
decoder limit — with sizes and steps per epoch, from a sample of each source.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .data import (DECODER_MAX_TOKENS, set_window_seconds, window_seconds, DataError, SourceStats, Stats, decoded, decoding_pool,
                   loader_threads, source_clips, source_labels)
from .source_types import SOURCE_KINDS
from .sources import open_source

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec


@dataclass
class SourceReport:
    """What preflight found for one source."""

    key: str
    label: str
    kind: str | None = None
    split: str = ""
    streaming: bool = False
    reachable: bool = False
    text_column: str | None = None
    columns: list[str] = field(default_factory=list)
    rows: int | None = None
    stats: SourceStats | None = None
    labels_checked: int = 0
    labels_over_decoder: int = 0
    labels_over_generation: int = 0
    longest_label: int = 0
    label_method: str = ""
    estimated_examples: int | None = None
    error: str | None = None

    generation_max_length: int = 0

    def line(self) -> str:
        where = f"{self.key} {self.label}"
        if not self.reachable:
            return f"{where}: not readable (see the error below)"
        kind = SOURCE_KINDS[self.kind].label if self.kind in SOURCE_KINDS else self.kind or "?"
        size = f"{self.rows} row{'s' if self.rows != 1 else ''}" if self.rows is not None else "size unknown"
        est = f" (~{self.estimated_examples} usable)" if self.estimated_examples is not None else ""
        s = self.stats or SourceStats(self.label)
        return (f"{where} [{kind}, split {self.split}, text: {self.text_column}]: {size}{est}; sample of {s.seen}: "
                f"{s.kept} kept, {s.too_long} over {window_seconds():g} s, {s.empty_text} empty, {s.bad_audio} bad audio; "
                f"longest label {self.longest_label} tokens, {self.labels_over_decoder} over {DECODER_MAX_TOKENS}, "
                f"{self.labels_over_generation} over {self.generation_max_length}")


@dataclass
class PreflightReport:
    """The outcome of :func:`preflight`: ``ok`` when there are no errors."""

    sources: list[SourceReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    examples_per_epoch: int | None = None
    steps_per_epoch: int | None = None
    effective_batch_size: int = 0
    sample: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        head = "Data preflight: OK" if self.ok else f"Data preflight: FAILED ({len(self.errors)} error" \
            f"{'s' if len(self.errors) != 1 else ''})"
        lines = [f"{head} — up to {self.sample} clips read per source"]
        lines += [f"  {r.line()}" for r in self.sources]
        if any(r.key.startswith("data.train") for r in self.sources):
            ex = f"~{self.examples_per_epoch}" if self.examples_per_epoch is not None else "unknown"
            steps = f"~{self.steps_per_epoch}" if self.steps_per_epoch is not None else "unknown"
            lines.append(f"  train: examples per epoch {ex}, steps per epoch {steps} "
                         f"(effective batch {self.effective_batch_size})")
        methods = {r.label_method for r in self.sources if r.reachable}
        if methods:
            lines.append(f"  label lengths: {', '.join(sorted(methods))}; over {DECODER_MAX_TOKENS} = Whisper's "
                         "decoder limit, the other = training.generation_max_length")
        lines += [f"error: {e}" for e in self.errors]
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _token_counter(tokenizer: Any) -> tuple[Callable[[str], int], str]:
    if tokenizer is None:
        return (lambda text: math.ceil(len(text) / 2)), "approximate: characters/2, no tokenizer given"

    def count(text: str) -> int:
        out = tokenizer(text)
        ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
        return len(ids)

    return count, "tokenizer"


def preflight(spec: JobSpec, *, tokenizer: Any = None, sample: int = 200, max_bad_share: float = 0.05,
              processes: int | None = None) -> PreflightReport:
    """Check a spec's train and eval sources before launching: reachable, columns, audio, labels, sizes.

    ``spec`` is a ``JobSpec`` or a ``LoadedSpec``. For each source, up to ``sample`` clips are read
    (from the start of its splits) and filtered as in training; label lengths are checked against
    Whisper's 448-token decoder limit and ``training.generation_max_length`` (counted with
    ``tokenizer`` when given, else approximated as characters/2). Sizes are row counts scaled by the
    kept share of the sample. Hub datasets are sampled by streaming (never downloaded whole here),
    so their size comes from the dataset's metadata and is "unknown" where that has none.
    """
    spec = getattr(spec, "spec", spec)
    if spec.model.window_seconds is not None:  # the job's window, before its model is loaded
        set_window_seconds(float(spec.model.window_seconds))
    report = PreflightReport(sample=sample)
    training, data = spec.training, spec.data
    processes = processes or max(1, spec.gpus) * spec.resources.nodes
    report.effective_batch_size = training.per_device_batch_size * training.gradient_accumulation_steps * processes
    count_tokens, method = _token_counter(tokenizer)
    gen_limit = training.generation_max_length
    train_estimates: list[int | None] = []
    workers = loader_threads(getattr(data, "loader_workers", 0))
    window = 4 * workers
    with decoding_pool(workers, "gpujob-check") as pool:
        for group in ("train", "eval"):
            sources = list(getattr(data, group))
            for i, (source, label) in enumerate(zip(sources, source_labels(sources))):
                key = f"data.{group}[{i}]"
                rep = SourceReport(key=key, label=label, split=source.split, streaming=data.streaming,
                                   label_method=method, generation_max_length=gen_limit)
                report.sources.append(rep)
                try:
                    opened = open_source(source, streaming=data.streaming, key=key, label=label, hub_streaming=True)
                except DataError as exc:
                    rep.error = str(exc)
                    report.errors.append(str(exc))
                    if group == "train":
                        train_estimates.append(None)
                    continue
                rep.reachable, rep.kind, rep.columns = True, opened.kind, opened.columns
                rep.text_column, rep.rows = opened.text_column, opened.num_rows
                stats = Stats()
                try:
                    clips = source_clips(opened, stats, limit=sample)
                    for clip, audio in decoded(clips, stats, pool=pool, window=window, check=False):
                        if audio is None:
                            continue
                        n = count_tokens(clip.text)
                        rep.labels_checked += 1
                        rep.longest_label = max(rep.longest_label, n)
                        rep.labels_over_decoder += n > DECODER_MAX_TOKENS
                        rep.labels_over_generation += n > gen_limit
                except DataError as exc:
                    report.errors.append(str(exc))
                per = stats.source(label)
                rep.stats = per
                if per.seen and per.kept and rep.rows is not None:
                    rep.estimated_examples = round(rep.rows * per.kept / per.seen)
                elif rep.rows == 0 or (per.seen and not per.kept):
                    rep.estimated_examples = 0
                if group == "train":
                    train_estimates.append(rep.estimated_examples)
                _judge_source(report, rep, per, key, max_bad_share, gen_limit, method)
    if train_estimates and all(n is not None for n in train_estimates):
        report.examples_per_epoch = sum(train_estimates)  # type: ignore[arg-type]
        report.steps_per_epoch = math.ceil(report.examples_per_epoch / report.effective_batch_size)
    if (spec.kind == "train" and data.streaming and training.epochs is not None and data.train
            and report.examples_per_epoch is None):
        unknown = [r.key for r in report.sources if r.key.startswith("data.train") and r.estimated_examples is None]
        if any(r.reachable for r in report.sources if r.key in unknown):
            report.errors.append(f"training.epochs: needs a known dataset size, but the size of {', '.join(unknown)} "
                                 "is unknown (streamed); set training.max_steps instead")
    return report


def _judge_source(report: PreflightReport, rep: SourceReport, per: SourceStats, key: str, max_bad_share: float,
                  gen_limit: int, method: str) -> None:
    if per.seen == 0:
        report.errors.append(f"{key}: {rep.label} (split {rep.split}) has no rows")
        return
    if per.bad_audio and per.bad_share > max_bad_share:
        first = ", ".join(per.bad_paths[:5]) + (", ..." if per.bad_audio > 5 else "")
        report.errors.append(f"{key}: {per.bad_audio} of {per.seen} sampled clips from {rep.label} could not be "
                             f"decoded ({per.bad_share:.0%}, more than {max_bad_share:.0%}); first bad: {first}")
    elif per.bad_audio:
        report.warnings.append(f"{key}: {per.bad_audio} of {per.seen} sampled clips could not be decoded and will "
                               f"be skipped: {', '.join(per.bad_paths[:5])}")
    if per.kept == 0:
        report.errors.append(f"{key}: none of the {per.seen} sampled clips of {rep.label} is usable "
                             f"({per.too_long} over {window_seconds():g} s, {per.empty_text} empty transcripts, "
                             f"{per.bad_audio} bad audio)")
    if per.too_long:
        report.warnings.append(f"{key}: {per.too_long} of {per.seen} sampled clips are longer than "
                               f"{window_seconds():g} s and will be skipped (the model's window: model.window_seconds, 30 s for Whisper)")
    if per.empty_text:
        report.warnings.append(f"{key}.text_column: {per.empty_text} of {per.seen} sampled transcripts in "
                               f"{rep.text_column} are empty and will be skipped")
    how = "" if method == "tokenizer" else " (approximate: characters/2; pass a tokenizer for exact counts)"
    if rep.labels_over_decoder:
        report.warnings.append(f"{key}: {rep.labels_over_decoder} of {rep.labels_checked} sampled transcripts are "
                               f"longer than Whisper's {DECODER_MAX_TOKENS}-token decoder limit{how}")
    if rep.labels_over_generation and gen_limit < DECODER_MAX_TOKENS:
        report.warnings.append(f"training.generation_max_length: {rep.labels_over_generation} of "
                               f"{rep.labels_checked} sampled transcripts of {key} are longer than {gen_limit} "
                               f"tokens{how}; predictions for them would be cut short")
