"""The GPU queue's rules and its shared file (gpujob.backends.gpuqueue), below the CLI: random sequences
of submits, ends and kills against the rules (hypothesis), real processes racing on the real file, and
entries of dead supervisors dropped. The end-to-end scenarios are in test_local_queue.py."""

from __future__ import annotations

import multiprocessing
import os
import subprocess
import sys
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob.backends.gpuqueue import Entry, GpuQueue, Wait, decide, preview, wait_of

GPUS = ["GPU-0", "GPU-1", "GPU-2", "GPU-3"]

submit = st.tuples(st.just("submit"), st.integers(1, 4), st.integers(0, 2), st.booleans(),
                   st.sampled_from([GPUS, GPUS, GPUS[:2], GPUS[2:], GPUS[1:3]]))
end = st.tuples(st.just("end"), st.integers(0, 50))
tick = st.tuples(st.just("tick"), st.randoms(use_true_random=False))


@settings(max_examples=300, deadline=None)
@given(st.lists(st.one_of(submit, submit, end, tick, tick), max_size=40))
def test_no_gpu_is_given_to_two_jobs_and_no_job_passes_an_earlier_one_that_wants_its_gpus(ops):
    entries: list[Entry] = []
    clock = 0
    for op in ops:
        if op[0] == "submit":
            _, gpus, priority, share, candidates = op
            clock += 1
            entries.append(Entry(f"j{clock:03d}", min(gpus, len(candidates)), list(candidates), priority,
                                 float(clock), share))
        elif op[0] == "end":  # a job ends, or its supervisor is killed: its entry goes
            holding = [e for e in entries if e.held]
            if holding:
                entries.remove(holding[op[1] % len(holding)])
        else:  # the waiting supervisors ask, in any order, again and again (they poll) until none starts
            started = True
            while started:
                started = _ask_all(entries, op[1])
            # Work-conserving: a waiting job that no earlier job blocks and whose GPUs are free has started.
            busy = {u for e in entries if e.held for u in e.held}
            for me in entries:
                if me.waiting:
                    blocked = any(e.waiting and not e.share and e.order < me.order
                                  and set(e.candidates) & set(me.candidates) for e in entries)
                    free = [u for u in me.candidates if u not in busy]
                    assert blocked or len(free) < me.gpus, f"{me.job_id} could start but waits"
                    assert isinstance(wait_of(entries, me.job_id), Wait)
        exclusive = [u for e in entries if e.held and not e.share for u in e.held]
        assert len(exclusive) == len(set(exclusive)), "two exclusive jobs hold one GPU"


def _ask_all(entries: list[Entry], rng) -> bool:
    """Each waiting job asks once, in a random order; True if one started."""
    waiting = [e for e in entries if e.waiting]
    rng.shuffle(waiting)
    started = False
    for me in waiting:
        before = [Entry(**vars(e)) for e in entries]
        got = decide(entries, me.job_id)
        if got is None:
            continue
        busy = {u for e in before if e.held for u in e.held}
        assert len(set(got)) == me.gpus and set(got) <= set(me.candidates)
        if not me.share:
            assert not busy & set(got), "an exclusive job started on a GPU another job holds"
            assert not any(e.waiting and not e.share and e.order < me.order
                           and set(e.candidates) & set(me.candidates) for e in before), \
                "a job passed an earlier waiting job that wants the same GPUs"
        me.held = got
        started = True
    return started


def test_the_order_is_priority_then_submit_time_and_the_words_name_the_holders():
    holder = Entry("hold01", 2, GPUS[:2], 0, 1.0, held=GPUS[:2])
    entries = [holder, Entry("late", 1, GPUS[:2], 0, 3.0), Entry("early", 1, GPUS[:2], 0, 2.0),
               Entry("urgent", 1, GPUS[:2], 1, 4.0)]
    assert [wait_of(entries, j).position for j in ("urgent", "early", "late")] == [1, 2, 3]
    assert wait_of(entries, "late").words() == ("3rd in the GPU queue, waiting for 1 GPU "
                                                "(2 of 2 in use by job hold01)")
    entries.remove(holder)
    assert decide(entries, "urgent") == [GPUS[0]] and decide(entries, "late") is None


def test_sharing_jobs_prefer_free_gpus_then_those_only_sharing_jobs_use():
    entries = [Entry("alone", 1, GPUS[:3], held=[GPUS[0]]), Entry("s1", 1, GPUS[:3], share=True, held=[GPUS[1]])]
    entries.append(Entry("s2", 1, GPUS[:3], share=True))
    assert decide(entries, "s2") == [GPUS[2]]
    entries[-1].held = [GPUS[2]]
    entries.append(Entry("s3", 2, GPUS[:3], share=True))
    assert decide(entries, "s3") == [GPUS[1], GPUS[2]]


def test_preview_says_whether_a_job_would_start_or_wait():
    entries = [Entry("a", 1, GPUS[:2], held=[GPUS[0]])]
    assert preview(entries, GPUS[:2], 1) == ([GPUS[1]], "1 of 2 GPUs free now; it would start at once")
    got, words = preview(entries, GPUS[:2], 2)
    assert got is None and words == "it would wait: 1st in the GPU queue, waiting for 2 GPUs (1 of 2 in use by job a)"


# ----------------------------------------------------------------------------- the shared file


def _me(job_id: str, gpus: int = 1, **kw) -> Entry:
    from gpujob import procs

    return Entry(job_id, gpus, GPUS[:2], pid=os.getpid(), start=procs.start_time(os.getpid()), **kw)


def test_entries_of_dead_supervisors_are_dropped(tmp_path):
    queue = GpuQueue(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    queue.join(Entry("dead", 2, GPUS[:2], pid=gone.pid, held=GPUS[:2]))
    assert [e.job_id for e in queue.snapshot()] == []
    queue.join(_me("live"))
    assert queue.take(_me("live")) == [GPUS[0]]
    assert [e.job_id for e in queue.snapshot()] == ["live"]
    queue.leave("live")
    assert queue.snapshot() == []


def _worker(home: str, marks: str, index: int, rounds: int) -> None:
    queue = GpuQueue(__import__("pathlib").Path(home))
    for r in range(rounds):
        me = _me(f"w{index}r{r}", gpus=1 + (index + r) % 2, submitted=time.time())
        queue.join(me)
        while not isinstance(got := queue.take(me), list):
            time.sleep(0.001)
        for uuid in got:  # O_EXCL: fails if another process holds this GPU right now
            try:
                os.close(os.open(os.path.join(marks, uuid), os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                open(os.path.join(marks, "CLASH"), "a").write(f"{me.job_id} {uuid}\n")
        time.sleep(0.002)
        for uuid in got:
            os.unlink(os.path.join(marks, uuid))
        queue.leave(me.job_id)


def test_processes_racing_on_the_file_never_hold_one_gpu_at_once(tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    ctx = multiprocessing.get_context("fork")
    workers = [ctx.Process(target=_worker, args=(str(tmp_path), str(marks), i, 15)) for i in range(6)]
    for w in workers:
        w.start()
    deadline = time.monotonic() + 90
    try:
        for w in workers:
            w.join(max(0.0, deadline - time.monotonic()))
        assert [w.exitcode for w in workers] == [0] * 6, "a worker failed or never got its GPUs"
    finally:
        for w in workers:
            if w.is_alive():
                w.kill()
    assert not (marks / "CLASH").exists(), (marks / "CLASH").read_text()
    assert GpuQueue(tmp_path).snapshot() == []
