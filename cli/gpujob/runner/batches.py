"""From examples to model batches: labels, log-mel features, length grouping.

The order of batches is a pure function of (seed, epoch), so a resumed job
skips exactly the batches it had done and redoes none.
"""

from __future__ import annotations

import queue
import random
import threading
import weakref
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np
import torch

MAX_LABEL_TOKENS = 448  # Whisper's decoder positions
T = TypeVar("T")
SHUFFLE_BUFFER = 1000   # examples held by the seeded shuffle (streamed or not)


@dataclass
class Batch:
    ids: list[str]                # example_key(): source::id
    texts: list[str]
    audio: list[np.ndarray]
    labels: torch.Tensor          # (B, T), -100 where padded
    label_lengths: list[int]
    padded: torch.Tensor | None = None  # the audio as one (B, 30 s) tensor, made ahead by prefetched()

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def tokens(self) -> int:
        """Label tokens in the batch: what its summed loss is divided by (with the other batches of the step)."""
        return sum(self.label_lengths)


def label_ids(tokenizer, text: str) -> list[int]:
    """Prefix (<|lang|><|task|><|notimestamps|>) + text + <|endoftext|>, without <|startoftranscript|>:
    the model prepends decoder_start_token_id itself when it shifts labels right."""
    ids = tokenizer(text).input_ids
    if ids and ids[0] == tokenizer.convert_tokens_to_ids("<|startoftranscript|>"):
        ids = ids[1:]
    return ids


def shuffled(examples: Iterable[dict], seed: int, buffer: int = SHUFFLE_BUFFER) -> Iterator[dict]:
    """A seeded shuffle buffer: works the same on streamed and in-memory data."""
    rng = random.Random(seed)
    pool: list[dict] = []
    for example in examples:
        pool.append(example)
        if len(pool) >= buffer:
            yield pool.pop(rng.randrange(len(pool)))
    rng.shuffle(pool)
    yield from pool


def labelled(items: Iterable[T], tokenizer, *, size: int, seed: int, group_by_length: bool,
             text: Callable[[T], str], skipped: dict[str, int] | None = None,
             shuffle: bool = True) -> Iterator[list[tuple[T, list[int]]]]:
    """``items`` with their label ids, in groups of ``size`` (the last one may be smaller).

    Seeded shuffle buffer first (``shuffle``); with ``group_by_length``, 50 groups' worth of items
    are sorted by label length, cut into groups, and the groups shuffled. Labels over Whisper's
    decoder limit are left out and counted in ``skipped["label_too_long"]``. Only ``text(item)``
    is read, so items can be clips whose audio is not decoded yet.
    """
    source = shuffled(items, seed) if shuffle else iter(items)
    rng = random.Random(seed + 1)
    window = 50 * size if group_by_length else size
    pending: list[tuple[T, list[int]]] = []

    def flush(rows):
        if group_by_length:
            rows.sort(key=lambda row: len(row[1]))
        groups = [rows[i:i + size] for i in range(0, len(rows), size)]
        if group_by_length and shuffle:
            rng.shuffle(groups)
        yield from groups

    for item in source:
        ids = label_ids(tokenizer, text(item))
        if len(ids) > MAX_LABEL_TOKENS - 1:
            if skipped is not None:
                skipped["label_too_long"] = skipped.get("label_too_long", 0) + 1
            continue
        pending.append((item, ids))
        if len(pending) >= window:
            yield from flush(pending)
            pending = []
    if pending:
        yield from flush(pending)


def batches(examples: Iterable[dict], tokenizer, *, batch_size: int, seed: int, group_by_length: bool,
            skipped: dict[str, int] | None = None, shuffle: bool = True) -> Iterator[Batch]:
    """Batches of decoded examples with labels (:func:`labelled` groups, collated)."""
    for group in labelled(examples, tokenizer, size=batch_size, seed=seed, group_by_length=group_by_length,
                          text=lambda ex: ex["text"], skipped=skipped, shuffle=shuffle):
        yield collate([(example_key(ex), ex["text"], ex["audio"], ids) for ex, ids in group])


def collate(rows: list[tuple[str, str, np.ndarray, list[int]]]) -> Batch:
    """(key, text, audio, label ids) rows as one Batch; labels padded with -100."""
    longest = max((len(ids) for *_, ids in rows), default=1)
    labels = torch.full((len(rows), longest), -100, dtype=torch.long)
    for row, (*_, ids) in enumerate(rows):
        labels[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    return Batch(ids=[key for key, *_ in rows], texts=[text for _, text, *_ in rows],
                 audio=[audio for _, _, audio, _ in rows], labels=labels,
                 label_lengths=[len(ids) for *_, ids in rows])


def pad_audio(audio: list[np.ndarray], n_samples: int, *, pin: bool = False) -> torch.Tensor:
    """Clips as one (B, n_samples) float32 tensor, zero-padded or cut to ``n_samples`` (30 s);
    in pinned memory when ``pin``, so that the copy to the GPU can overlap other work."""
    out = torch.zeros(len(audio), n_samples, dtype=torch.float32, pin_memory=pin)
    for row, clip in enumerate(audio):
        k = min(len(clip), n_samples)
        if k:
            out[row, :k] = torch.from_numpy(np.ascontiguousarray(clip[:k], dtype=np.float32))
    return out


# The Hann window and mel filters of each extractor, per device: made once, dropped with the extractor
# (keyed by the object itself, so a new extractor never gets an old one's filters).
_FILTERS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def features(feature_extractor, audio: list[np.ndarray] | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Log-mel features (B, n_mels, 3000) on ``device``, for clips or a :func:`pad_audio` batch.

    The same numbers as ``WhisperFeatureExtractor`` (its torch STFT path: pad to 30 s, Hann
    window, power spectrum, the extractor's own mel filters, log10, max - 8 dB floor, scaled),
    computed where the model is: the padded audio goes to the GPU once (from pinned memory) and
    the log-mel stays there. The extractor's own path pads with numpy on the training thread,
    copies the audio to the GPU, and brings the log-mel back to the CPU as numpy before it is
    copied to the GPU again. An extractor with dither set falls back to the library.

    Always in float32, outside any autocast the caller is in: under bf16 autocast the mel-filter
    matmul would come out in bf16, and fp16 log-mels lose precision."""
    fe = feature_extractor
    with torch.autocast(device.type, enabled=False):
        if getattr(fe, "dither", 0.0) or not hasattr(fe, "mel_filters"):
            if isinstance(audio, torch.Tensor):
                audio = list(audio.numpy())
            out = fe(audio, sampling_rate=16000, return_tensors="pt",
                     device=str(device) if device.type == "cuda" else "cpu")
            return out.input_features.to(device, non_blocking=True)
        if not isinstance(audio, torch.Tensor):
            audio = pad_audio(audio, fe.n_samples, pin=device.type == "cuda")
        wave = audio.to(device, non_blocking=True)
        per_device = _FILTERS.setdefault(fe, {})
        if str(device) not in per_device:
            per_device[str(device)] = (
                torch.hann_window(fe.n_fft, device=device),
                torch.from_numpy(np.asarray(fe.mel_filters)).to(device, torch.float32).T.contiguous())
        window, mel = per_device[str(device)]
        if device.type == "cpu":  # one clip at a time stays in cache: twice as fast as the batch on a CPU
            return torch.cat([_log_mel(wave[i:i + 1], fe, window, mel) for i in range(len(wave))])
        return _log_mel(wave, fe, window, mel)


def _log_mel(wave: torch.Tensor, fe, window: torch.Tensor, mel: torch.Tensor) -> torch.Tensor:
    stft = torch.stft(wave, fe.n_fft, fe.hop_length, window=window, return_complex=True)
    power = (stft[..., :-1].abs() ** 2).contiguous()
    log_spec = torch.clamp(mel @ power, min=1e-10).log10()
    floor = log_spec.amax(dim=(1, 2), keepdim=True) - 8.0
    return (torch.maximum(log_spec, floor) + 4.0) / 4.0


_END = object()


def prefetched(items: Iterable[T], *, depth: int = 2, prepare: Callable[[T], None] | None = None,
               name: str = "gpujob-batches") -> Iterator[T]:
    """The items of ``items``, made on a background thread up to ``depth`` ahead of the consumer.

    In training the consumer is the GPU step: while it runs, the next batches are read, decoded
    (by the loader threads), shuffled, tokenised, collated and padded (``prepare``). The order is
    unchanged. An exception on the thread is raised here, at the point it happened in the stream.
    When the consumer stops early, the thread stops at its next item and closes ``items``.
    """
    q: queue.Queue = queue.Queue(maxsize=max(1, depth))
    stop = threading.Event()

    def put(entry) -> bool:
        while not stop.is_set():
            try:
                q.put(entry, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        iterator = iter(items)
        try:
            for item in iterator:
                if prepare is not None:
                    prepare(item)
                if not put((item, None)):
                    return
            put((_END, None))
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            put((_END, exc))
        finally:
            close = getattr(iterator, "close", None)
            if close is not None:
                close()

    thread = threading.Thread(target=produce, name=name, daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if error is not None:
                raise error
            if item is _END:
                return
            yield item
    finally:
        stop.set()
        thread.join(timeout=30)


def example_key(example: dict[str, Any]) -> str:
    return f"{example.get('source', '')}::{example.get('id', '')}"
