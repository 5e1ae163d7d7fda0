"""Each optimizer step's data, for this process: the global batch, split, and only its share decoded.

A step's **global batch** is the next ``global_batch`` clips of the clip stream (shuffled, grouped
by label length when asked, all seeded): the same clips whatever the number of processes and of
micro-batches, because it is formed from transcripts alone, before any audio is decoded. It is
cut into ``world × micro_steps`` near-equal contiguous parts; process ``rank`` takes part
``a·world + rank`` for its micro-step ``a`` and decodes those clips only, on loader threads, ahead
of the step.

A clip over 30 s or that cannot be decoded drops out after decoding: the same clips in every
layout, so a step can hold fewer examples than ``global_batch``. The loss of a step is therefore
normalised by the label tokens that remain; each process counts its own here (:attr:`Step.counts`)
and the training loop sums them over processes before the backward passes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .batches import Batch, collate, labelled
from .data import Clip, decode_clip, judge, ordered

OUTCOMES = ("kept", "too_long", "bad_audio")


@dataclass
class Step:
    """This process's share of one global batch."""

    index: int                    # the global batch's position in the epoch (0-based)
    micro: list[Batch]            # one per micro-step; a batch can be empty
    counts: list[int]             # [label tokens, examples, then kept, too_long, bad_audio per source]
    bad_paths: list[str] = field(default_factory=list)

    @property
    def tokens(self) -> int:
        return self.counts[0]


def split(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous (start, end) ranges over ``n`` items, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for i in range(parts):
        end = start + base + (1 if i < extra else 0)
        bounds.append((start, end))
        start = end
    return bounds


def my_parts(n: int, *, rank: int, world: int, micro_steps: int) -> list[tuple[int, int]]:
    """The ranges of a global batch of ``n`` that process ``rank`` trains on, one per micro-step."""
    bounds = split(n, world * micro_steps)
    return [bounds[a * world + rank] for a in range(micro_steps)]


def micro_steps_for(global_batch: int, per_device: int, world: int) -> int:
    """Micro-steps per optimizer step so that ``world`` processes cover ``global_batch`` examples in
    batches of at most ``per_device``: the spec's accumulation when the layout is the one it was made
    for, more when a job resumes on fewer processes."""
    return max(1, -(-global_batch // (per_device * world)))


def steps(clips: Iterable[Clip], tokenizer, *, global_batch: int, micro_steps: int, rank: int, world: int,
          seed: int, group_by_length: bool, labels: list[str], skipped: dict[str, int] | None = None,
          start: int = 0, pool: Any = None, window: int = 1,
          augment: Callable[[np.ndarray, str, int], np.ndarray] | None = None) -> Iterator[Step]:
    """The steps of one epoch for process ``rank`` of ``world``, from global batch ``start`` on (the
    ones before are skipped without decoding anything). ``labels`` are the sources' labels, in
    the order their counts appear in :attr:`Step.counts`. ``augment(audio, key, seed)`` changes each
    kept clip on the loader thread that decoded it (:class:`.augment.Augmenter`); labels stay as they are."""
    where = {label: i for i, label in enumerate(labels)}
    groups = labelled(clips, tokenizer, size=global_batch, seed=seed, group_by_length=group_by_length,
                      text=lambda clip: clip.text, skipped=skipped)

    def mine() -> Iterator[tuple[int, int | None, Clip | None, list[int] | None]]:
        """(step, micro-step, clip, label ids) for this process's clips; (step, None, ...) ends a step."""
        for index, group in enumerate(groups):
            if index < start:
                continue
            for a, (lo, hi) in enumerate(my_parts(len(group), rank=rank, world=world, micro_steps=micro_steps)):
                for clip, ids in group[lo:hi]:
                    yield index, a, clip, ids
            yield index, None, None, None

    def decode(item):
        if item[2] is None:
            return None
        audio = decode_clip(item[2])
        if augment is not None and judge(audio) == "kept":
            audio = augment(audio, item[2].example_key, seed)
        return audio

    rows: list[list[tuple[str, str, np.ndarray, list[int]]]] = [[] for _ in range(micro_steps)]
    counts = [0] * (2 + len(OUTCOMES) * len(labels))
    bad: list[str] = []
    for (index, a, clip, ids), audio in ordered(decode, mine(), pool, window):
        if a is not None:
            outcome = judge(audio)
            counts[2 + len(OUTCOMES) * where[clip.label] + OUTCOMES.index(outcome)] += 1
            if outcome == "kept":
                rows[a].append((clip.example_key, clip.text, audio, ids))
                counts[0] += len(ids)
                counts[1] += 1
            elif outcome == "bad_audio":
                bad.append(audio.path if audio.path != "<bytes>" else clip.id)
            continue
        yield Step(index, [collate(r) for r in rows], counts, bad)
        rows = [[] for _ in range(micro_steps)]
        counts = [0] * (2 + len(OUTCOMES) * len(labels))
        bad = []
