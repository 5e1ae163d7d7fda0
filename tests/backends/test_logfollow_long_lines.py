"""The log follower and lines too long to hold (issue 15): a container that never writes a newline
cannot fill gpujob's memory or stall it, and a dropped connection in the middle of such a line
loses and repeats nothing."""

from __future__ import annotations

import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.backends.logfollow import Follower, format_ts, parse_ts

T0 = 1_790_000_000 * 1_000_000_000
MAX_LINE = 48  # a timestamp and its space take 31 bytes of a line's first piece


class FakeLog:
    """A log served as the kubelet does (timestamps, sinceTime in whole seconds), each connection
    cut after a planned number of bytes, in chunks of a planned size."""

    def __init__(self, lines, cuts=(), chunk=5):
        self.lines, self.cuts, self.chunk = lines, list(cuts), chunk

    def open(self, since, tail, follow):
        floor = None if since is None else parse_ts(since + " x")[0]
        data = "".join(f"{format_ts(t)} {s}\n" for t, s in self.lines if floor is None or t >= floor).encode()
        if follow and self.cuts:
            data = data[: self.cuts.pop(0)]
        for i in range(0, len(data), self.chunk):
            yield data[i:i + self.chunk]

    def state(self):
        return "running" if self.cuts else "ended"


def regroup(pieces: list[str], texts: list[str]) -> bool:
    """True when ``pieces`` are ``texts`` in order, each passed on whole or as consecutive pieces."""
    at = 0
    for text in texts:
        if at >= len(pieces):
            return False
        got, at = pieces[at], at + 1
        while got != text:
            if at >= len(pieces) or not text.startswith(got):
                return False
            got, at = got + pieces[at], at + 1
    return at == len(pieces)


texts = st.one_of(st.text(alphabet="abé🔑 ", max_size=10), st.text(alphabet="xyΩ", min_size=20, max_size=120))


@given(st.lists(st.tuples(st.integers(0, 3), texts), min_size=1, max_size=12),
       st.lists(st.integers(1, 900), max_size=4), st.integers(1, 70))
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_drops_inside_overlong_lines_lose_and_repeat_nothing(steps, cuts, chunk):
    t, lines = T0, []
    for gap, text in steps:  # many lines share one second, some one exact timestamp
        t += gap * 300_000_000 if gap < 3 else 0
        lines.append((t, text.replace("\n", " ")))
    log = FakeLog(lines, cuts, chunk)
    out = list(Follower(log.open, log.state, sleep=lambda s: None, max_line=MAX_LINE).lines())
    assert regroup(out, [s for _, s in lines]), (out, lines)
    assert all(len(p.encode()) <= MAX_LINE for p in out)


def test_a_container_that_never_writes_a_newline_is_passed_on_in_pieces_in_linear_time():
    body = "z" * (48 << 20)

    def opener(since, tail, follow):
        data = f"{format_ts(T0)} {body}".encode()
        for i in range(0, len(data), 1 << 16):
            yield data[i:i + (1 << 16)]

    started = time.perf_counter()
    out = list(Follower(opener, lambda: "ended", sleep=lambda s: None).lines())
    assert time.perf_counter() - started < 5.0
    assert "".join(out) == body and all(len(p) <= 1 << 20 for p in out) and len(out) >= 48
