"""From examples to model batches: labels, log-mel features, length grouping.

The order of batches is a pure function of (seed, epoch), so a resumed job
skips exactly the batches it had done and redoes none.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

import numpy as np
import torch

MAX_LABEL_TOKENS = 448  # Whisper's decoder positions


@dataclass
class Batch:
    ids: list[str]                # example_key(): source::id
    texts: list[str]
    audio: list[np.ndarray]
    labels: torch.Tensor          # (B, T), -100 where padded
    label_lengths: list[int]

    def __len__(self) -> int:
        return len(self.ids)


def label_ids(tokenizer, text: str) -> list[int]:
    """Prefix (<|lang|><|task|><|notimestamps|>) + text + <|endoftext|>, without <|startoftranscript|>:
    the model prepends decoder_start_token_id itself when it shifts labels right."""
    ids = tokenizer(text).input_ids
    if ids and ids[0] == tokenizer.convert_tokens_to_ids("<|startoftranscript|>"):
        ids = ids[1:]
    return ids


def shuffled(examples: Iterable[dict], seed: int, buffer: int = 1000) -> Iterator[dict]:
    """A seeded shuffle buffer: works the same on streamed and in-memory data."""
    rng = random.Random(seed)
    pool: list[dict] = []
    for example in examples:
        pool.append(example)
        if len(pool) >= buffer:
            yield pool.pop(rng.randrange(len(pool)))
    rng.shuffle(pool)
    yield from pool


def batches(examples: Iterable[dict], tokenizer, *, batch_size: int, seed: int, group_by_length: bool,
            skipped: dict[str, int] | None = None, shuffle: bool = True) -> Iterator[Batch]:
    """Batches of examples with labels; groups of 50 batches sorted by label length when asked."""
    source = shuffled(examples, seed) if shuffle else iter(examples)
    rng = random.Random(seed + 1)
    group = 50 * batch_size if group_by_length else batch_size
    pending: list[tuple[dict, list[int]]] = []

    def flush(items):
        if group_by_length:
            items.sort(key=lambda item: len(item[1]))
        chunks = [items[i:i + batch_size] for i in range(0, len(items), batch_size)]
        if group_by_length and shuffle:
            rng.shuffle(chunks)
        for chunk in chunks:
            yield _collate(chunk)

    for example in source:
        ids = label_ids(tokenizer, example["text"])
        if len(ids) > MAX_LABEL_TOKENS - 1:
            if skipped is not None:
                skipped["label_too_long"] = skipped.get("label_too_long", 0) + 1
            continue
        pending.append((example, ids))
        if len(pending) >= group:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)


def _collate(items: list[tuple[dict, list[int]]]) -> Batch:
    longest = max(len(ids) for _, ids in items)
    labels = torch.full((len(items), longest), -100, dtype=torch.long)
    for row, (_, ids) in enumerate(items):
        labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return Batch(
        ids=[example_key(ex) for ex, _ in items],
        texts=[ex["text"] for ex, _ in items],
        audio=[ex["audio"] for ex, _ in items],
        labels=labels,
        label_lengths=[len(ids) for _, ids in items],
    )


def features(feature_extractor, audio: list[np.ndarray], device: torch.device) -> torch.Tensor:
    """Log-mel features, padded to 30 s, on ``device``; on a GPU the STFT runs there too.

    Always computed in float32, outside any autocast the caller is in: under bf16 autocast the
    extractor's mel-filter matmul would come out in bf16, which it then cannot turn into numpy
    (a crash on the first batch of every bf16 GPU run), and fp16 log-mels lose precision."""
    with torch.autocast(device.type, enabled=False):
        out = feature_extractor(audio, sampling_rate=16000, return_tensors="pt",
                                device=str(device) if device.type == "cuda" else "cpu")
    return out.input_features.to(device, non_blocking=True)


def example_key(example: dict[str, Any]) -> str:
    return f"{example.get('source', '')}::{example.get('id', '')}"
