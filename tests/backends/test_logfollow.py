"""The log follower shared by the kubernetes and docker backends (gpujob.backends.logfollow)."""

from __future__ import annotations

from gpujob.backends.logfollow import Follower, LogNotReady, SourceGone, format_ts, parse_ts, since_param

T0 = 1_790_000_000 * 1_000_000_000  # a whole second, in ns


class FakeLog:
    """A pod log served the way the kubelet does (timestamps, sinceTime in whole seconds), with
    each connection cut after a planned number of bytes."""

    def __init__(self, lines: list[tuple[int, str]], cuts: list[int] | None = None, ended: bool = True):
        self.lines = lines
        self.cuts = list(cuts or [])
        self.ended = ended
        self.opened: list[tuple[str | None, int | None, bool]] = []

    def open(self, since, tail, follow):
        self.opened.append((since, tail, follow))
        floor = None if since is None else _since_ns(since)
        chosen = [(t, s) for t, s in self.lines if floor is None or t >= floor]
        if tail is not None:
            chosen = chosen[-tail:]
        data = "".join(f"{format_ts(t)} {s}\n" for t, s in chosen).encode()
        if follow and self.cuts:
            data = data[: self.cuts.pop(0)]
        for i in range(0, len(data), 5):  # small chunks: lines arrive in pieces
            yield data[i:i + 5]

    def state(self):
        return "ended" if self.ended and not self.cuts else "running"


def _since_ns(since: str) -> int:
    ns, _ = parse_ts(since + " x")
    return ns


def follow(log: FakeLog, **kw) -> list[str]:
    return list(Follower(log.open, log.state, sleep=lambda s: None, **kw).lines())


def test_timestamps_round_trip_and_since_is_whole_seconds():
    ns = T0 + 120_000_000
    assert parse_ts(f"{format_ts(ns)} hello world") == (ns, "hello world")
    assert format_ts(T0) .endswith(":20Z") and since_param(ns) == format_ts(T0)
    assert parse_ts("no timestamp here") == (None, "no timestamp here")


def test_streams_cut_inside_lines_lose_and_repeat_nothing():
    # Many lines share one second, and several share one exact timestamp: the hard case for sinceTime.
    lines = [(T0 + (i // 3) * 1_000, f"line {i}") for i in range(40)]
    log = FakeLog(lines, cuts=[37, 100, 251, 12, 400])
    assert follow(log) == [f"line {i}" for i in range(40)]
    assert len(log.opened) >= 6


def test_a_pod_that_ends_while_disconnected_is_read_to_the_end():
    lines = [(T0 + i * 10**8, f"step {i}") for i in range(20)]
    log = FakeLog(lines, cuts=[60])
    out = follow(log)
    assert out == [f"step {i}" for i in range(20)]
    assert log.opened[-1][2] is False  # the last read did not follow: the pod had ended


def test_tail_applies_to_the_first_connection_only():
    lines = [(T0 + i * 10**9, f"n{i}") for i in range(10)]
    log = FakeLog(lines, cuts=[10, 30])  # the first cut comes before a whole line: tail still applies
    assert follow(log, tail=3) == ["n7", "n8", "n9"]
    assert [t for _, t, _ in log.opened] == [3, 3, None]


def test_a_last_line_without_newline_is_kept_once_the_pod_ended():
    def opener(since, tail, follow):
        yield f"{format_ts(T0)} first\n{format_ts(T0 + 1)} no newline".encode()

    assert list(Follower(opener, lambda: "ended", sleep=lambda s: None).lines()) == ["first", "no newline"]


def test_waiting_container_and_vanished_pod():
    calls = []

    def opener(since, tail, follow):
        calls.append(follow)
        if len(calls) < 3:
            raise LogNotReady()
        yield f"{format_ts(T0)} started\n".encode()

    states = iter(["waiting", "waiting", "ended", "ended"])
    assert list(Follower(opener, lambda: next(states), sleep=lambda s: None).lines()) == ["started"]

    def gone(since, tail, follow):
        raise SourceGone()
        yield b""

    assert list(Follower(gone, lambda: "gone", sleep=lambda s: None).lines()) == []


def test_connection_errors_are_retried_with_backoff():
    attempts, sleeps = [], []

    def opener(since, tail, follow):
        attempts.append(since)
        if len(attempts) <= 3:
            raise ConnectionResetError("connection reset by peer")
        yield f"{format_ts(T0)} ok\n".encode()

    states = iter(["running"] * 3 + ["ended"] * 3)
    out = list(Follower(opener, lambda: next(states), sleep=sleeps.append).lines())
    assert out == ["ok"]
    assert sleeps == [0.2, 0.4, 0.8]
