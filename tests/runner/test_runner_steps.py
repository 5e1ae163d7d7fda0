"""How a step's global batch is shared among processes (properties, with hypothesis), and how the
launcher turns torchrun's failures into an exit code and a sentence."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

np = pytest.importorskip("numpy")
pytest.importorskip("torch")

from gpujob.runner import steps as steps_mod  # noqa: E402
from gpujob.runner.data import Clip  # noqa: E402
from gpujob.runner.launch import describe, exit_code  # noqa: E402
from gpujob.runner.steps import micro_steps_for, my_parts, split, steps  # noqa: E402


@given(st.integers(0, 200), st.integers(1, 40))
def test_split_covers_everything_once_in_parts_that_differ_by_at_most_one(n, parts):
    bounds = split(n, parts)
    assert len(bounds) == parts and bounds[0][0] == 0 and bounds[-1][1] == n
    assert all(a[1] == b[0] for a, b in zip(bounds, bounds[1:]))
    sizes = [hi - lo for lo, hi in bounds]
    assert max(sizes) - min(sizes) <= 1


@given(st.integers(0, 100), st.integers(1, 4), st.integers(1, 4))
def test_every_example_of_a_global_batch_goes_to_exactly_one_process_and_micro_step(n, world, micro):
    taken = [i for rank in range(world) for lo, hi in my_parts(n, rank=rank, world=world, micro_steps=micro)
             for i in range(lo, hi)]
    assert sorted(taken) == list(range(n))


@given(st.integers(1, 512), st.integers(1, 64), st.integers(1, 8))
def test_micro_steps_cover_the_global_batch_in_batches_no_larger_than_asked(global_batch, per_device, world):
    micro = micro_steps_for(global_batch, per_device, world)
    assert micro * per_device * world >= global_batch
    assert micro == 1 or (micro - 1) * per_device * world < global_batch


class Tokenizer:
    """Word count decides the label length, like a real tokenizer would in spirit."""

    def __call__(self, text):
        return SimpleNamespace(input_ids=[1, 2, *range(10, 10 + len(text.split()))])

    def convert_tokens_to_ids(self, token):
        return 1


def clip_list(kinds: list[tuple[int, str]]) -> list[Clip]:
    """Clips whose audio is an array (decoded without files): normal, too long (31 s) or broken."""
    out = []
    for i, (words, kind) in enumerate(kinds):
        seconds = {"ok": 1 + words / 10, "long": 31, "bad": 0}[kind]
        audio = "" if kind == "bad" else {"array": np.full(int(seconds * 16000), 0.01, np.float32),
                                          "sampling_rate": 16000}
        out.append(Clip(" ".join(["λέξη"] * words), audio, "src", f"clip-{i}", "src", "data.train[0]", n=i))
    return out


CLIPS = st.lists(st.tuples(st.integers(1, 12), st.sampled_from(["ok", "ok", "ok", "long", "bad"])),
                 min_size=1, max_size=40)


@settings(max_examples=40, deadline=None)
@given(CLIPS, st.integers(1, 3), st.integers(1, 3), st.integers(1, 4), st.booleans())
def test_the_processes_of_any_layout_train_on_the_global_batches_of_one(kinds, world, micro, per_device, grouped):
    """Whatever the number of processes and micro-steps: together they train on exactly the examples
    one process trains on, step by step, with the same label-token and clip counts, and each
    decodes only its own share."""
    clips = clip_list(kinds)
    global_batch = per_device * micro * world

    def layout(world: int, micro: int, rank: int, decoded: list[str]):
        original = steps_mod.decode_clip

        def counting(clip):
            decoded.append(clip.id)
            return original(clip)

        steps_mod.decode_clip = counting
        try:
            return list(steps(iter(clips), Tokenizer(), global_batch=global_batch, micro_steps=micro, rank=rank,
                              world=world, seed=3, group_by_length=grouped, labels=["src"]))
        finally:
            steps_mod.decode_clip = original

    one_decoded: list[str] = []
    one = layout(1, 1, 0, one_decoded)
    shares: list[list[str]] = []
    per_rank = []
    for rank in range(world):
        shares.append([])
        per_rank.append(layout(world, micro, rank, shares[-1]))
    assert sorted(i for share in shares for i in share) == sorted(one_decoded)  # each clip decoded once
    for index, reference in enumerate(one):
        mine = [run[index] for run in per_rank]
        assert all(s.index == reference.index and len(s.micro) == micro for s in mine)
        assert sorted(k for s in mine for b in s.micro for k in b.ids) == sorted(reference.micro[0].ids)
        summed = [sum(column) for column in zip(*(s.counts for s in mine))]
        assert summed == reference.counts and reference.tokens == reference.micro[0].tokens
        assert all(len(b) <= per_device for s in mine for b in s.micro)


def test_a_resumed_epoch_starts_at_its_global_batch_and_decodes_nothing_before():
    clips = clip_list([(3, "ok")] * 12)
    full = list(steps(iter(clips), Tokenizer(), global_batch=4, micro_steps=1, rank=0, world=1, seed=0,
                      group_by_length=False, labels=["src"]))
    decoded = []
    original = steps_mod.decode_clip
    steps_mod.decode_clip = lambda clip: decoded.append(clip.id) or original(clip)
    try:
        rest = list(steps(iter(clips), Tokenizer(), global_batch=4, micro_steps=1, rank=0, world=1, seed=0,
                          group_by_length=False, labels=["src"], start=2))
    finally:
        steps_mod.decode_clip = original
    assert [s.index for s in rest] == [2] and rest[0].micro[0].ids == full[2].micro[0].ids
    assert sorted(decoded) == sorted(k.split("::")[1] for k in full[2].micro[0].ids)


# ------------------------------------------------------------------------------------ the launcher


def failure(code: int, t: int, message: str = "", rank: int = 0):
    return SimpleNamespace(exitcode=code, timestamp=t, message=message or "To enable traceback see: ...",
                           local_rank=rank)


@pytest.mark.parametrize(("failures", "code", "says"), [
    ({1: failure(1, 10, {"message": "RuntimeError: boom", "extraInfo": {}}, 1)}, 1,
     "rank 1 of 2 failed first: exited with code 1: RuntimeError: boom"),
    ({1: failure(-9, 10, rank=1), 0: failure(1, 10, "RuntimeError: lost the other processes: Connection closed")},
     137, "rank 1 of 2 failed first: killed by SIGKILL"),
    ({0: failure(1, 10, "RuntimeError: lost the other processes: Timed out waiting 5000ms"), 1: failure(-9, 40, rank=1)},
     1, "rank 0 of 2 failed first: exited with code 1: RuntimeError: lost the other processes: Timed out"),
    ({0: failure(2, 10), 1: failure(2, 10, rank=1)}, 2, "rank 0 of 2 failed first: exited with code 2"),
    ({0: failure(143, 10), 1: failure(-15, 11, rank=1)}, 143, None),
    ({1: failure(1, 9, "OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", 1)}, 1,
     "rank 1 of 2 failed first: ran out of GPU memory: OutOfMemoryError: CUDA out of memory"),
])
def test_the_launcher_names_the_rank_that_failed_first_and_keeps_the_runners_exit_codes(failures, code, says):
    assert exit_code(failures) == code
    if says:
        assert describe(failures, 2).startswith(f"gpujob: {says}")
