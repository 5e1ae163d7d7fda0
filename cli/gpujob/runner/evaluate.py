"""Transcribe and score: used by evaluation inside training and by ``kind: evaluate`` jobs.

Greedy batched generation (no ``forced_decoder_ids``: language and task are
passed to ``generate``). When the encoder is frozen its outputs do not change,
so they are computed once per clip and kept (within a memory budget) for every
later evaluation and epoch; when only its first layers are frozen, their output
is kept the same way and the layers that train run on it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import torch

from gpujob.runner.batches import MAX_LABEL_TOKENS, example_key, features, label_ids
from gpujob.runner.loss import DecoderLoss
from gpujob.runner.metrics import Scores, score_sources, worst
from gpujob.spec.tracking import source_names
from gpujob.runner.model import (Precision, encode, encode_prefix, encode_rest, encoder_frozen, frozen_prefix,
                                 language_name)
from gpujob.runner import worst_audio
from gpujob.runner.tracking import log_worst

if TYPE_CHECKING:
    from gpujob.spec.models import JobSpec

CACHE_BUDGET_MB = int(os.environ.get("GPUJOB_ENCODER_CACHE_MB", "4096"))


class EncoderCache:
    """Encoder states by example key, on the CPU, up to a budget; only used while the encoder, or a prefix of
    its layers, is frozen (then it holds that prefix's output)."""

    def __init__(self, budget_mb: int = CACHE_BUDGET_MB) -> None:
        self.budget = budget_mb * 2**20
        self.used = 0
        self.states: dict[str, torch.Tensor] = {}
        self.hits = 0
        self.encoded = 0          # clips run through the frozen part (cache misses), and the seconds that took
        self.seconds = 0.0

    def get(self, keys: list[str]) -> list[torch.Tensor] | None:
        if not all(k in self.states for k in keys):
            return None
        self.hits += len(keys)
        return [self.states[k] for k in keys]

    def put(self, keys: list[str], states: torch.Tensor) -> None:
        for key, state in zip(keys, states):
            size = state.numel() * state.element_size()
            if key in self.states or self.used + size > self.budget:
                continue
            self.states[key] = state.detach().to("cpu", copy=True)
            self.used += size


def encoder_states(model, feature_extractor, audio, keys, device: torch.device, precision: Precision,
                   cache: EncoderCache | None) -> torch.Tensor | None:
    """Encoder outputs for a batch when the encoder is frozen (from the cache where possible); else None.

    With only a prefix of the encoder frozen (``freeze: {encoder_layers: N}``) and a cache, the cache
    keeps the prefix's output per clip and the layers that train run on it here, with their graph."""
    def cached(compute) -> torch.Tensor:
        hit = cache.get(keys) if cache is not None else None
        if hit is not None:
            return torch.stack(hit).to(device)
        start = time.perf_counter()
        with autocast(device, precision):
            states = compute(features(feature_extractor, audio, device))
        if cache is not None:
            cache.put(keys, states)
            cache.encoded += len(keys)
            cache.seconds += time.perf_counter() - start
        return states

    if encoder_frozen(model):
        return cached(lambda feats: encode(model, feats))
    n = frozen_prefix(model) if cache is not None else 0
    if not n:
        return None
    hidden = cached(lambda feats: encode_prefix(model, feats, n))
    with autocast(device, precision):
        return encode_rest(model, hidden, n)


def autocast(device: torch.device, precision: Precision):
    """The ``torch.autocast`` context for ``precision`` on ``device`` (disabled for fp32)."""
    if precision.autocast_dtype is None:
        return torch.autocast(device.type, enabled=False)
    return torch.autocast(device.type, dtype=precision.autocast_dtype)


class LossTally:
    """The teacher-forced cross-entropy of the evaluation batches: summed over label tokens, and their count."""

    def __init__(self) -> None:
        self.total = 0.0
        self.tokens = 0

    def add(self, total: float, tokens: int) -> None:
        self.total += total
        self.tokens += tokens

    def mean(self) -> float | None:
        return self.total / self.tokens if self.tokens else None


def teacher_forced_loss(model, tokenizer, states: torch.Tensor, texts: list[str], device: torch.device,
                        precision: Precision) -> tuple[float, int]:
    """(summed token cross-entropy, label tokens) of ``texts`` given the encoder ``states``: the training
    loss's definition (:func:`gpujob.runner.update.loss_sum`), on the states the generation reuses."""
    from transformers.models.whisper.modeling_whisper import shift_tokens_right

    ids = [label_ids(tokenizer, text)[: MAX_LABEL_TOKENS - 1] for text in texts]
    labels = torch.full((len(ids), max(1, max(map(len, ids), default=1))), -100, dtype=torch.long)
    for row, label in enumerate(ids):
        labels[row, : len(label)] = torch.tensor(label, dtype=torch.long)
    labels = labels.to(device)
    decoder_input_ids = shift_tokens_right(labels, model.config.pad_token_id, model.config.decoder_start_token_id)
    with autocast(device, precision):
        loss = DecoderLoss(model)(labels, decoder_input_ids, states=states)
    return float(loss.item()), int((labels != -100).sum().item())


@torch.no_grad()
def transcribe(model, processor, audio: list, keys: list[str], *, spec: JobSpec, device: torch.device,
               precision: Precision, cache: EncoderCache | None = None, texts: list[str] | None = None,
               tally: LossTally | None = None) -> list[str]:
    """Greedy transcripts of ``audio``; with ``texts`` (the references) and a ``tally``, the batch's
    teacher-forced loss is added to it, computed on the encoder states the generation uses (one
    encoder pass for both)."""
    from transformers.modeling_outputs import BaseModelOutput

    was_training = model.training
    model.eval()
    gen_kwargs = {
        "language": language_name(spec.model.language),
        "task": spec.model.task,
        "max_length": min(spec.training.generation_max_length, 448),
        "num_beams": 1,
        "do_sample": False,
    }
    states = encoder_states(model, processor.feature_extractor, audio, keys, device, precision, cache)
    if tally is not None and texts is not None:
        if states is None:
            with autocast(device, precision):
                states = encode(model, features(processor.feature_extractor, audio, device))
        tally.add(*teacher_forced_loss(model, processor.tokenizer, states, texts, device, precision))
    with autocast(device, precision):
        if states is not None:
            out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), **gen_kwargs)
        else:
            out = model.generate(input_features=features(processor.feature_extractor, audio, device), **gen_kwargs)
    model.train(was_training)
    sequences = out.sequences if hasattr(out, "sequences") else out
    return [t.strip() for t in processor.tokenizer.batch_decode(sequences, skip_special_tokens=True)]


SORT_WINDOW_BATCHES = 8
AUTO_BATCHES = (256, 128, 64, 32, 16, 8, 4, 2, 1)
CPU_BATCH = 16


def generation_bytes_per_utterance(config, *, max_length: int, width: int) -> int:
    """GPU memory one utterance needs while it is generated, in bytes: the decoder's cross-attention
    keys and values over 1500 encoder positions, its self-attention cache up to ``max_length``, and
    the encoder's largest activations (hidden states, attention output, FFN) while it is encoded;
    ``width`` bytes per value (2 under bf16/fp16 autocast, 4 in fp32)."""
    d, src = config.d_model, config.max_source_positions
    cross = config.decoder_layers * 2 * src * d
    self_attn = config.decoder_layers * 2 * max_length * d
    encoder = 2 * src * (6 * d + config.encoder_ffn_dim) + config.num_mel_bins * 2 * src * 2
    logits = 2 * config.vocab_size * 2  # float32 scores of the last position, and a copy
    return (cross + self_attn + encoder) * width + logits * 4


def eval_batch_size(setting: int | str, model, device: torch.device, precision: Precision, *, max_length: int,
                    free_bytes: int | None = None) -> int:
    """``evaluation.batch_size``: a number as given; ``auto`` is 16 on a CPU and, on a GPU, the largest
    of 256, 128, ... 1 whose generation memory fits in half of the memory free now (what the caching
    allocator holds unused counts as free)."""
    if setting != "auto":
        return int(setting)
    if device.type != "cuda" and free_bytes is None:
        return CPU_BATCH
    if free_bytes is None:
        free, _total = torch.cuda.mem_get_info(device)
        free_bytes = free + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    width = 4 if precision.autocast_dtype is None else 2
    need = generation_bytes_per_utterance(model.config, max_length=max_length, width=width)
    return next((b for b in AUTO_BATCHES if b * need <= free_bytes // 2), 1)


def is_oom(exc: BaseException) -> bool:
    """Whether ``exc`` is the device running out of memory."""
    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError)
                                                        and "out of memory" in str(exc).lower())


def evaluate(model, processor, examples: Iterable[dict], *, spec: JobSpec, device: torch.device,
             precision: Precision, cache: EncoderCache | None = None, writer=None,
             batch_size: int | None = None, group=None) -> Scores:
    """Transcribe and score ``examples``, in the order given.

    Generation runs in batches of ``batch_size`` (default: :func:`eval_batch_size` of the spec's
    ``evaluation.batch_size``), formed from windows of 8 batches sorted by clip length (longest
    first). A batch takes as many decoding steps as its longest transcript, and clips of a similar
    length have transcripts of a similar length, so less of each batch waits for one long
    utterance. Every clip is padded to 30 s, so the batch it lands in does not change its input.
    A batch that runs out of GPU memory is halved and retried, and the smaller size is kept.

    With a ``group`` of several processes, each has transcribed its own share of the examples
    (each example's ``n`` is its place in the whole set); every process gets all transcripts back
    in that order, so the scores, the per-utterance list and every decision taken from them are
    the ones a single process gets. With several ``data.eval`` sources each is also scored on its own
    (``scores.sources``)."""
    tally = LossTally()
    rows = transcripts(model, processor, examples, spec=spec, device=device, precision=precision, cache=cache,
                       writer=writer, batch_size=batch_size, tally=tally)
    if group is not None and group.many:
        rows = sorted((row for share in group.gather(rows) for row in share), key=lambda row: row[0])
        shares = group.gather((tally.total, tally.tokens))
        tally.total, tally.tokens = sum(s[0] for s in shares), sum(s[1] for s in shares)
    scores = score_sources([r[1] for r in rows], [r[2] for r in rows], [r[4] for r in rows],
                           names=source_names(spec.data.eval), normalize=spec.evaluation.normalizer,
                           ids=[r[3] for r in rows])
    scores.loss = tally.mean()
    return scores


def transcripts(model, processor, examples: Iterable[dict], *, spec: JobSpec, device: torch.device,
                precision: Precision, cache: EncoderCache | None = None, writer=None,
                batch_size: int | None = None, tally: LossTally | None = None) -> list[tuple[int, str, str, str, str]]:
    """``(n, reference, transcript, id, source name)`` for each example, in the order given (see :func:`evaluate`);
    with a ``tally``, the teacher-forced loss of every batch is added to it (once per clip, whatever the retries)."""
    size = batch_size or eval_batch_size(spec.evaluation.batch_size, model, device, precision,
                                         max_length=min(spec.training.generation_max_length, 448))
    rows: list[tuple[int, str, str, str, str]] = []
    window: list[tuple[Any, str, int, str, str, str]] = []  # (audio, key, n, reference, id, source) not yet transcribed
    total = len(examples) if isinstance(examples, list) else None

    def run(chunk: list[int]) -> list[str]:
        nonlocal size
        while True:
            try:
                out: list[str] = []
                attempt = LossTally() if tally is not None else None
                for start in range(0, len(chunk), size):
                    part = chunk[start:start + size]
                    out += transcribe(model, processor, [window[i][0] for i in part], [window[i][1] for i in part],
                                      spec=spec, device=device, precision=precision, cache=cache,
                                      texts=[window[i][3] for i in part], tally=attempt)
                if tally is not None:
                    tally.add(attempt.total, attempt.tokens)
                return out
            except Exception as exc:  # noqa: BLE001 - only out-of-memory is retried
                if not is_oom(exc) or size == 1:
                    raise
                size //= 2
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                print(f"evaluation: out of GPU memory; batch size now {size}", flush=True)

    def flush():
        order = sorted(range(len(window)), key=lambda i: -len(window[i][0]))
        texts: list[str] = [""] * len(window)
        start = 0
        while start < len(order):
            chunk = order[start:start + size]
            for i, text in zip(chunk, run(chunk)):
                texts[i] = text
            start += len(chunk)
            if writer is not None:  # alive while evaluating: no step events come in the meantime
                writer.heartbeat(phase="eval", done=len(rows) + start, total=total)
        rows.extend((n, ref, text, id_, src) for (_, _, n, ref, id_, src), text in zip(window, texts))
        window.clear()

    for position, example in enumerate(examples):
        window.append((example["audio"], example_key(example), example.get("n", position), example["text"],
                       str(example.get("id", position)), example.get("source_name", "")))
        if len(window) >= size * SORT_WINDOW_BATCHES:
            flush()
    if window:
        flush()
    return rows


def write_predictions(path: Path, scores: Scores) -> None:
    with open(path, "w", encoding="utf-8") as fh:
        for utterance in scores.per_utterance:
            fh.write(json.dumps(utterance, ensure_ascii=False) + "\n")


def summary_lines(scores: Scores, label: str = "") -> list[str]:
    head = f"{label}WER {scores.wer * 100:.2f}%  CER {scores.cer * 100:.2f}%" if scores.wer is not None \
        else f"{label}no scorable utterances"
    parts = [f"{name} " + (f"WER {part.wer * 100:.2f}%" if part.wer is not None else "not scored")
             for name, part in scores.sources.items()]
    lines = [f"{head}  ({scores.utterances} utterances, {scores.words} words"
             + (f", {scores.skipped_empty} with empty references left out" if scores.skipped_empty else "") + ")"
             + (f"; {', '.join(parts)}" if parts else "")]
    bad = worst(scores, 5)
    if bad:
        lines.append("worst utterances:")
        for u in bad:
            lines.append(f"  WER {u['wer'] * 100:5.1f}%  {u['id']}")
            lines.append(f"      ref: {u['reference_normalized']}")
            lines.append(f"      hyp: {u['prediction_normalized']}")
    return lines


def run(spec: JobSpec, out_dir: Path, writer, group=None) -> int:
    """The ``kind: evaluate`` job: score a checkpoint on ``data.eval``. Under torchrun each process
    decodes and transcribes every ``world``-th utterance; the writer scores them all and writes."""
    from gpujob.runner import data as data_mod
    from gpujob.runner.distributed import Group
    from gpujob.runner.model import load, pick_precision

    group = group or Group()
    device = group.device
    model, processor = load(spec, device, for_training=False)
    precision = group.share(pick_precision(spec.training.precision, device, model.config)
                            if group.is_writer or device.type == "cuda" else None)
    stats = data_mod.Stats()
    batch_size = eval_batch_size(spec.evaluation.batch_size, model, device, precision,
                                 max_length=min(spec.training.generation_max_length, 448))
    workers = data_mod.loader_threads(spec.data.loader_workers)
    print(f"evaluation: batches of {batch_size}"
          + (" (evaluation.batch_size: auto)" if spec.evaluation.batch_size == "auto" else "")
          + f"; precision {precision.name}" + (f" ({precision.why})" if precision.why else "")
          + f"; device {device.type}; {workers} loader threads"
          + (f"; {group.world} processes" if group.many else ""), flush=True)
    examples = data_mod.iter_examples(spec.data.eval, streaming=spec.data.streaming, seed=spec.training.seed,
                                      stats=stats, key="data.eval", workers=workers, prefetch=2 * batch_size,
                                      shard=(group.rank, group.world))
    writer.start(kind="evaluate", name=spec.name)
    t0 = time.perf_counter()
    scores = evaluate(model, processor, examples, spec=spec, device=device, precision=precision, writer=writer,
                      batch_size=batch_size, group=group)
    elapsed = time.perf_counter() - t0
    if not group.is_writer:
        return 0
    return write_results(spec, out_dir, writer, scores, elapsed)


def write_results(spec: JobSpec, out_dir: Path, writer, scores: Scores, elapsed: float, **extra) -> int:
    """An evaluate job's outputs, whichever engine scored it: predictions.jsonl, the worst utterances'
    clips, metrics.json (with ``extra``), the summary lines, and the eval and end events."""
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(out_dir / "predictions.jsonl", scores)
    if not spec.data.streaming:  # the worst utterances' clips, to listen to (the dashboard plays them)
        worst_audio.from_sources(out_dir, scores, spec.data.eval, seed=spec.training.seed)
    metrics = scores.as_metrics(spec.evaluation.metrics)
    metrics.update({**extra, "utterances": scores.utterances,
                    "utterances_per_s": round(scores.utterances / max(elapsed, 1e-9), 3)})
    if scores.sources:
        metrics["sources"] = scores.sources_metrics(spec.evaluation.metrics)
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    for line in summary_lines(scores):
        print(line, flush=True)
    writer.eval(step=0, **scores.event_metrics(spec.evaluation.metrics))
    writer.artifact(path=str(out_dir / "predictions.jsonl"), name="predictions")
    log_worst(writer, worst(scores, 20))
    writer.end(status="succeeded", metrics={k: v for k, v in metrics.items() if not isinstance(v, dict)})
    return 0
