"""Follow one container's log across dropped streams, without losing or repeating a line.

Shared by the backends whose logs come over a connection that can drop: the Kubernetes API
server's pod log (a dropped connection, an idle proxy, an API server restart) and the Docker
engine's container log (dockerd restarted under a live-restored container). The follower asks
for ``timestamps=true``, remembers the timestamp of the last
line it passed on and how many lines carried exactly that timestamp, and reconnects with
``sinceTime`` set to that line's second (the parameter has whole seconds; the kubelet keeps
lines at or after it). Lines older than the last one
are dropped, and so are the first N lines that repeat its timestamp. A line cut off by a drop is
held back until its newline arrives on the next connection. Once the pod has ended, one last
non-following read collects anything written after the final drop.

However long a line is, the follower's work is linear in it, and a line over
:data:`gpujob.linesplit.MAX_LINE_BYTES` is passed on in pieces of at most that size (the pieces
after the first follow the first: kept or dropped with it), so a container that never writes a
newline cannot fill the memory.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Callable, Iterable, Iterator

from gpujob.backends.base import Notice
from gpujob.linesplit import MAX_LINE_BYTES, LineSplitter
from gpujob.wire import rfc3339_ns

# open_stream(since_time, tail_lines, follow) -> byte chunks; raises on a failed connection.
Opener = Callable[[str | None, int | None, bool], Iterable[bytes]]
# state() -> "waiting" (no log yet) | "running" | "ended" | "gone" (of the pod or container)
StateFn = Callable[[], str]


class LogNotReady(Exception):
    """The container has not started yet (the API answers 400 'waiting to start')."""


class SourceGone(Exception):
    """The pod or container no longer exists."""


def parse_ts(line: str) -> tuple[int | None, str]:
    """``"2026-11-25T10:00:00.5Z text"`` -> (nanoseconds since the epoch, ``"text"``)."""
    head, sep, text = line.partition(" ")
    ns = rfc3339_ns(head)
    if ns is None:
        return None, line
    return ns, text


def format_ts(ns: int) -> str:
    """RFC 3339 with nanoseconds, as the kubelet writes them (trailing zeros trimmed)."""
    seconds, frac = divmod(ns, 1_000_000_000)
    base = datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
    digits = f"{frac:09d}".rstrip("0")
    return f"{base}.{digits}Z" if digits else f"{base}Z"


def since_param(ns: int) -> str:
    """sinceTime for a reconnect: the last line's timestamp cut to whole seconds."""
    seconds = ns // 1_000_000_000
    return datetime.fromtimestamp(seconds, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class Follower:
    """Yields a pod's or container's log lines (without timestamps) until it has ended and its log is read."""

    def __init__(self, open_stream: Opener, state: StateFn, *, tail: int | None = None,
                 follow: bool = True, transient: tuple[type[BaseException], ...] = (OSError,),
                 sleep: Callable[[float], None] = time.sleep, max_backoff_s: float = 5.0,
                 on_error: Callable[[BaseException], str] | None = None,
                 max_line: int = MAX_LINE_BYTES) -> None:
        self.open_stream = open_stream
        self.state = state
        self.tail = tail
        self.follow = follow
        self.transient = transient
        self.sleep = sleep
        self.max_backoff_s = max_backoff_s
        self.on_error = on_error  # words for a lost connection, yielded once as a Notice while following
        self.max_line = max_line
        self.last_ns: int | None = None
        self.at_last = 0          # lines passed on that carry exactly last_ns
        self.torn = 0             # bytes passed on of the last such line, when a drop cut it short
        self.reconnects = 0
        # The line now read, when it is too long to hold (it comes in pieces):
        self._keep = True         # whether its pieces are passed on
        self._sent = 0            # its bytes read on this connection
        self._drop = 0            # its bytes still to drop: passed on before a drop cut it short
        self._head_ns: int | None = None

    def _judge(self, ns: int | None, skip: list[int]) -> str:
        """What to do with a line stamped ``ns``: "pass", "skip" (passed on before a reconnect), or
        "resume" (passed on in part before a drop cut it short: the rest of it passes)."""
        if ns is not None and self.last_ns is not None:
            if ns < self.last_ns:
                return "skip"
            if ns == self.last_ns and skip[0] > 0:
                skip[0] -= 1
                return "resume" if skip[0] == 0 and self.torn else "skip"
        if ns is not None:
            if ns == self.last_ns:
                self.at_last += 1
            else:
                self.last_ns, self.at_last = ns, 1
            skip[0] = 0
            self.torn = 0
        return "pass"

    def _piece(self, raw: bytes, continues: bool, skip: list[int]) -> str | None:
        """The text to pass on for a line, or for a piece of an overlong line (the first piece
        carries its timestamp and decides for the rest); None to pass on nothing."""
        if not continues:
            ns, text = parse_ts(raw.decode("utf-8", "replace").rstrip("\r"))
            verdict = self._judge(ns, skip)
            self._keep, self._sent, self._drop, self._head_ns = verdict != "skip", 0, 0, ns
            if verdict == "resume":
                self._drop, self.torn = self.torn, 0
        if not self._keep:
            return None
        self._sent += len(raw)
        if self._drop:
            if len(raw) <= self._drop:
                self._drop -= len(raw)
                return None
            raw, self._drop = raw[self._drop:], 0
            return raw.decode("utf-8", "replace").rstrip("\r")
        return text if not continues else raw.decode("utf-8", "replace").rstrip("\r")

    def _cut_short(self, splitter: LineSplitter) -> None:
        """A connection ended: when it did so inside an overlong line that is being passed on,
        remember how much of it was, so that the next connection passes on only the rest."""
        if splitter.continued and self._keep and self._head_ns is not None and self._head_ns == self.last_ns:
            self.torn = self._sent + self._drop

    def lines(self) -> Iterator[str]:
        last_pass, backoff, final_failures, said = not self.follow, 0.2, 0, None
        while True:
            since = None if self.last_ns is None else since_param(self.last_ns)
            skip = [self.at_last]
            splitter = LineSplitter(self.max_line)
            clean = False
            try:
                # --tail applies until a first line has come through; after that, sinceTime rules.
                for chunk in self.open_stream(since, self.tail if self.last_ns is None else None, not last_pass):
                    for raw, continues in splitter.feed_pieces(chunk):
                        text = self._piece(raw, continues, skip)
                        if text is not None:
                            backoff, said = 0.2, None
                            yield text
                clean = True
            except LogNotReady:
                if last_pass:
                    return  # the container never started: there is no log to read
            except SourceGone:
                return
            except self.transient as exc:
                if last_pass:
                    final_failures += 1
                    if final_failures >= 5:
                        raise
                elif self.on_error is not None and (words := self.on_error(exc)) != said:
                    said = words
                    yield Notice(words)
            if last_pass and clean:
                for raw, continues in splitter.flush_pieces():
                    text = self._piece(raw, continues, skip)
                    if text is not None:
                        yield text
                return
            self._cut_short(splitter)
            if not last_pass:
                state = self.state()
                if state == "gone":
                    return
                if state == "ended":
                    last_pass = True
                    continue  # read once more, without follow: nothing after the last drop is lost
            self.reconnects += 1
            self.sleep(backoff)
            backoff = min(backoff * 2, self.max_backoff_s)
