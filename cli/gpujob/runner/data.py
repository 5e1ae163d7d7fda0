"""The runner's data stream: spec sources -> clips (transcripts, audio not decoded yet) -> examples.

Opening a source (its kind, splits and columns) is :mod:`.sources`. Here:

- :func:`iter_clips` mixes the sources' rows by weight into one stream of :class:`Clip`: a
  transcript, the audio not yet decoded, where it came from. Empty transcripts are dropped here
  and counted, with no audio decoded. At each row a source still running is drawn with
  probability proportional to its ``weight`` (``random.Random(seed)``). By default the mix runs
  until **every** source is exhausted: each row of each source comes out exactly once (no source
  is repeated or cut short) and the weights only decide the interleaving — a source with twice
  the weight is drawn twice as often while both last, so it runs out sooner.
  ``stop="first_exhausted"`` ends the mix when the first source runs out instead.
- :func:`decoded` decodes clips (ahead, on loader threads) into mono float32 at 16 kHz, drops
  clips over 30 s and undecodable ones, and counts all of it in :class:`Stats`. The results, their
  order and every count are the same for any number of threads.
- :func:`iter_examples` is both: ``{"audio", "text", "source", "id", "n", "source_name"}`` for every clip kept
  (``n``: its place in the stream), or only for every ``world``-th clip when sharded across processes.

Training takes clips, forms each step's global batch from them before any audio is decoded, and
decodes only the share of this process (:mod:`.steps`), so that the batch is the same examples
whatever the number of processes. Streaming and non-streaming use the same code; ``streaming``
only decides whether Hub/parquet datasets are downloaded first.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import math
import os
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from gpujob.spec.tracking import source_names

from .audio import TARGET_SR, AudioError
from .source_parts import DataError, short
from .sources import TEXT_COLUMNS, OpenedSource, load_audio, open_source

if TYPE_CHECKING:
    from gpujob.spec.models import Source

MAX_SECONDS = 30.0  # Whisper's window; a checkpoint or spec with ``model.window_seconds`` sets a shorter one
_WINDOW = [MAX_SECONDS]


def window_seconds() -> float:
    """The longest clip kept, in seconds: the model's window (:func:`set_window_seconds`), 30 s by default."""
    return _WINDOW[0]


def set_window_seconds(seconds: float) -> None:
    """Set the window for this process: the runner runs one job, with one model, per process."""
    _WINDOW[0] = float(seconds)
DECODER_MAX_TOKENS = 448
MIN_CLIPS_FOR_BAD_SHARE = 20
MAX_BAD_PATHS_KEPT = 1000
CGROUP_CPU_MAX = "/sys/fs/cgroup/cpu.max"  # cgroup v2: "<quota> <period>" or "max <period>"

__all__ = ["DECODER_MAX_TOKENS", "MAX_SECONDS", "window_seconds", "set_window_seconds", "TEXT_COLUMNS", "Clip", "DataError", "OpenedSource", "SourceStats",
           "Stats", "decoded", "iter_clips", "iter_examples", "load_audio", "loader_threads", "open_source"]


@dataclass
class SourceStats:
    """Counts for one source (clips read = kept + too_long + empty_text + bad_audio)."""

    label: str
    kept: int = 0
    too_long: int = 0
    empty_text: int = 0
    bad_audio: int = 0
    audio_seconds: float = 0.0  # of the kept clips
    bad_paths: list[str] = field(default_factory=list)

    @property
    def seen(self) -> int:
        return self.kept + self.too_long + self.empty_text + self.bad_audio

    @property
    def bad_share(self) -> float:
        return self.bad_audio / self.seen if self.seen else 0.0

    def line(self) -> str:
        return (f"{self.seen} read: {self.kept} kept ({self.audio_seconds / 60:.1f} min), {self.too_long} over "
                f"{window_seconds():g} s, {self.empty_text} empty transcripts, {self.bad_audio} bad audio")


@dataclass
class Stats:
    """What the filters did, in total and per source (keyed by the source's label)."""

    kept: int = 0
    too_long: int = 0
    empty_text: int = 0
    bad_audio: int = 0
    audio_seconds: float = 0.0
    bad_paths: list[str] = field(default_factory=list)
    per_source: dict[str, SourceStats] = field(default_factory=dict)

    @property
    def seen(self) -> int:
        return self.kept + self.too_long + self.empty_text + self.bad_audio

    def source(self, label: str) -> SourceStats:
        if label not in self.per_source:
            self.per_source[label] = SourceStats(label)
        return self.per_source[label]

    def count(self, label: str, outcome: str, *, seconds: float = 0.0, path: str | None = None) -> None:
        """Record one clip: ``outcome`` is kept, too_long, empty_text or bad_audio."""
        per = self.source(label)
        for target in (self, per):
            setattr(target, outcome, getattr(target, outcome) + 1)
            if outcome == "kept":
                target.audio_seconds += seconds
            if path is not None and len(target.bad_paths) < MAX_BAD_PATHS_KEPT:
                target.bad_paths.append(path)

    def summary(self) -> str:
        lines = [f"total: {self.seen} read, {self.kept} kept ({self.audio_seconds / 3600:.2f} h), "
                 f"{self.too_long} over {window_seconds():g} s, {self.empty_text} empty transcripts, "
                 f"{self.bad_audio} bad audio"]
        lines += [f"  {label}: {s.line()}" for label, s in self.per_source.items()]
        return "\n".join(lines)


# ------------------------------------------------------------------------------------------ clips


@dataclass
class Clip:
    """One usable row: its transcript and its audio value, not decoded yet."""

    text: str           # stripped, not empty
    audio: Any          # a path, bytes, or a datasets-style dict {bytes, path} / {array, sampling_rate}
    source: str         # the spec's dataset
    id: str
    label: str          # the source's name in Stats and messages
    key: str            # the source's spec key, e.g. data.train[1]
    n: int = 0          # its place in the mixed stream (iter_clips)
    name: str = ""      # the source's short name in per-source scores (spec.tracking.source_names)

    @property
    def example_key(self) -> str:
        return f"{self.source}::{self.id}"


def source_clips(opened: OpenedSource, stats: Stats, *, shuffle: bool = False, seed: int = 0,
                 limit: int | None = None) -> Iterator[Clip]:
    """The clips of one source, in its order; empty transcripts counted in ``stats`` and left out.
    ``limit`` caps the rows read (empty ones included)."""
    label, name = opened.label, opened.source.dataset
    stats.source(label)
    rows = 0
    records = opened.records(shuffle=shuffle, seed=seed)
    try:
        while limit is None or rows < limit:
            try:
                rec = next(records)
            except StopIteration:
                return
            except DataError:
                raise
            except Exception as exc:  # noqa: BLE001 - a failing stream (network, corrupt parquet) -> clear message
                raise DataError(f"reading {label} failed after {rows} rows: {type(exc).__name__}: {short(exc)}",
                                key=opened.key) from None
            rows += 1
            text = "" if rec.text is None else str(rec.text).strip()
            if not text:
                stats.count(label, "empty_text")
                continue
            yield Clip(text, rec.audio, name, rec.id, label, opened.key)
    finally:
        records.close()


def source_labels(sources: list[Source]) -> list[str]:
    """One label per source for messages and counts: its dataset, with ``[split]`` or ``#i`` added
    where two would read the same."""
    names = [s.dataset for s in sources]
    labels = [n if names.count(n) == 1 else f"{n} [{s.split}]" for n, s in zip(names, sources)]
    return [lab if labels.count(lab) == 1 else f"{lab} #{i}" for i, lab in enumerate(labels)]


def iter_clips(sources: Iterable[Source], *, streaming: bool, seed: int, stats: Stats | None = None,
               stop: Literal["all_exhausted", "first_exhausted"] = "all_exhausted", shuffle: bool = False,
               key: str = "data.train") -> Iterator[Clip]:
    """The clips of ``sources`` (spec ``Source`` objects), mixed by weight; see the module's text.
    All sources are opened (and their columns checked) before the first clip is yielded.
    ``shuffle`` also shuffles each source's rows (seeded; a 1000-row buffer when streaming)."""
    if stop not in ("all_exhausted", "first_exhausted"):
        raise ValueError(f"stop must be all_exhausted or first_exhausted, not {stop!r}")
    sources = list(sources)
    stats = stats if stats is not None else Stats()
    opened = [open_source(s, streaming=streaming, key=f"{key}[{i}]", label=lab)
              for i, (s, lab) in enumerate(zip(sources, source_labels(sources)))]
    weights = [float(s.weight) for s in sources]
    names = source_names(sources)
    rng = random.Random(seed)
    streams = [source_clips(o, stats, shuffle=shuffle, seed=seed + 7919 * i) for i, o in enumerate(opened)]
    active = list(range(len(streams)))
    n = 0
    try:
        while active:
            i = active[0] if len(active) == 1 else rng.choices(active, weights=[weights[j] for j in active])[0]
            try:
                clip = next(streams[i])
            except StopIteration:
                active.remove(i)
                if stop == "first_exhausted":
                    return
                continue
            clip.n, clip.name, n = n, names[i], n + 1
            yield clip
    finally:
        for s in streams:
            s.close()


# ----------------------------------------------------------------------------------------- decoding


def decode_clip(clip: Clip) -> np.ndarray | AudioError:
    """A clip's audio, or the AudioError. Runs on a loader thread: soundfile, soxr and ffmpeg
    release the GIL."""
    try:
        return load_audio(clip.audio, name=clip.id)
    except AudioError as exc:
        return exc


def judge(audio: np.ndarray | AudioError) -> str:
    """What happens to a decoded clip: kept, too_long or bad_audio."""
    if isinstance(audio, AudioError):
        return "bad_audio"
    return "too_long" if len(audio) / TARGET_SR > window_seconds() else "kept"


def count(stats: Stats, clip: Clip, audio: np.ndarray | AudioError) -> str:
    """Record one decoded clip in ``stats``; returns :func:`judge`'s word."""
    outcome = judge(audio)
    if outcome == "bad_audio":
        stats.count(clip.label, outcome, path=audio.path if audio.path != "<bytes>" else clip.id)
    elif outcome == "kept":
        stats.count(clip.label, outcome, seconds=len(audio) / TARGET_SR)
    else:
        stats.count(clip.label, outcome)
    return outcome


def ordered(fn: Callable[[Any], Any], items: Iterable[Any], pool: Any, window: int) -> Iterator[tuple[Any, Any]]:
    """``(item, fn(item))`` in the order of ``items``, with up to ``window`` calls running ahead on
    ``pool``; without a pool, one call at a time as the items are asked for."""
    if pool is None:
        for item in items:
            yield item, fn(item)
        return
    pending: collections.deque = collections.deque()
    try:
        for item in items:
            pending.append((item, pool.submit(fn, item)))
            if len(pending) >= window:
                item, future = pending.popleft()
                yield item, future.result()
        while pending:
            item, future = pending.popleft()
            yield item, future.result()
    finally:
        for _, future in pending:
            future.cancel()


def check_bad(per: SourceStats, key: str, max_bad_share: float, *, final: bool) -> None:
    """Raise :class:`DataError` when a source's share of undecodable clips is over ``max_bad_share``
    (checked once it has 20 clips, and whatever its count when ``final``)."""
    if not per.bad_audio or (not final and per.seen < MIN_CLIPS_FOR_BAD_SHARE) or per.bad_share <= max_bad_share:
        return
    first = ", ".join(per.bad_paths[:5]) + (", ..." if per.bad_audio > 5 else "")
    raise DataError(f"{per.bad_audio} of {per.seen} clips read from {per.label} could not be decoded "
                    f"({per.bad_share:.0%}, more than the allowed {max_bad_share:.0%}); first bad: {first}. "
                    "Fix or remove those files, or check the audio column", key=key)


def decoded(clips: Iterable[Clip], stats: Stats, *, pool: Any = None, window: int = 1, max_bad_share: float = 0.05,
            check: bool = True) -> Iterator[tuple[Clip, np.ndarray | None]]:
    """``(clip, audio)`` for every clip, in order; ``audio`` is None for a clip dropped (over 30 s)
    or skipped (undecodable). Counted in ``stats`` in the order of ``clips``, however many threads
    decode; with ``check``, too many undecodable clips of a source raise :class:`DataError`."""
    keys: dict[str, str] = {}
    read = ordered(decode_clip, clips, pool, window)
    try:
        for clip, audio in read:
            outcome = count(stats, clip, audio)
            if check:
                keys[clip.label] = clip.key
                check_bad(stats.source(clip.label), clip.key, max_bad_share, final=False)
            yield clip, audio if outcome == "kept" else None
    finally:
        read.close()
    if check:
        for label, key in keys.items():
            check_bad(stats.source(label), key, max_bad_share, final=True)


def iter_examples(sources: Iterable[Source], *, streaming: bool, seed: int, max_bad_share: float = 0.05,
                  stats: Stats | None = None, stop: Literal["all_exhausted", "first_exhausted"] = "all_exhausted",
                  shuffle: bool = False, key: str = "data.train", workers: int = 0, prefetch: int = 0,
                  shard: tuple[int, int] = (0, 1)) -> Iterator[dict[str, Any]]:
    """Examples ``{"audio", "text", "source", "id", "n", "source_name"}`` from ``sources``: :func:`iter_clips`, then
    :func:`decoded`, keeping what is kept.

    ``workers`` threads decode the audio ahead of the consumer, up to ``prefetch`` clips (at least 4
    per thread). The examples, their order and the counts are the same for any number of workers;
    0 decodes each clip on the calling thread when it is asked for. ``shard=(rank, world)`` keeps
    only every ``world``-th clip from the ``rank``-th on, before anything is decoded, so each of
    ``world`` processes decodes a disjoint share; the counts in ``stats`` are then this share's.
    """
    rank, world = shard
    stats = stats if stats is not None else Stats()
    clips = iter_clips(sources, streaming=streaming, seed=seed, stats=stats, stop=stop, shuffle=shuffle, key=key)
    mine = clips if world == 1 else (c for c in clips if c.n % world == rank)
    with decoding_pool(workers, "gpujob-decode") as pool:
        for clip, audio in decoded(mine, stats, pool=pool, window=max(prefetch, 4 * workers),
                                   max_bad_share=max_bad_share):
            if audio is not None:
                yield {"audio": audio, "text": clip.text, "source": clip.source, "id": clip.id, "n": clip.n,
                       "source_name": clip.name}


# ------------------------------------------------------------------------------------ loader threads


def usable_cores() -> int:
    """Cores this process may use: its CPU affinity, capped by a container's CPU quota (a
    Kubernetes CPU limit or ``docker --cpus`` shows only there, not in the affinity)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover - not Linux
        cores = os.cpu_count() or 1
    try:
        quota, period = Path(CGROUP_CPU_MAX).read_text().split()[:2]
        if quota != "max" and int(period) > 0:
            cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return cores


@contextlib.contextmanager
def decoding_pool(workers: int, name: str) -> Iterator[concurrent.futures.ThreadPoolExecutor | None]:
    """``workers`` decoding threads (None for 0), shut down on leaving; clips not started yet are
    dropped, the ones being decoded finish on their own."""
    pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix=name) if workers > 0 else None
    try:
        yield pool
    finally:
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)



def loader_threads(setting: int | str | None) -> int:
    """``data.loader_workers`` as a number of decoding threads: ``auto`` is one per usable core,
    less one for the training loop, at most 8; 0 decodes on the calling thread."""
    if setting not in (None, "auto"):
        return int(setting)
    return max(1, min(8, usable_cores() - 1))
