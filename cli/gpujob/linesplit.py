"""Cutting a stream of bytes into lines, with a bound on how long a line may grow.

:class:`LineSplitter` turns chunks read from a job's output into whole lines and keeps a torn
tail for later; a line longer than :data:`MAX_LINE_BYTES` is passed on in pieces. Stdlib-only.
"""

from __future__ import annotations

MAX_LINE_BYTES = 1 << 20        # LineSplitter passes a longer line on in pieces of this size


def _cut_at_char(data: bytes, at: int, lo: int) -> int:
    """``at`` moved back (at most 3 bytes, never to ``lo``) so it does not split a UTF-8 character."""
    back = at
    while back > lo + 1 and at - back < 3 and (data[back] & 0xC0) == 0x80:
        back -= 1
    return back if (data[back] & 0xC0) != 0x80 else at


class LineSplitter:
    """Turns arbitrary chunks of bytes into complete lines; keeps a torn tail for later.

    Linear in what it is fed, however long a line is; and a line longer than ``max_line`` bytes
    is passed on in pieces of at most that size (cut between UTF-8 characters), so output that
    never has a newline cannot fill the memory."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self.max_line = max(int(max_line), 4)
        self._parts: list[bytes] = []
        self._size = 0
        self._continued = False  # the pending bytes continue a line already passed on in part

    def feed_pieces(self, chunk: bytes) -> list[tuple[bytes, bool]]:
        """The complete lines and pieces in ``chunk`` as ``(bytes, continues)``: ``continues`` is
        True for a piece of an overlong line after its first."""
        out: list[tuple[bytes, bool]] = []
        start, size = 0, len(chunk)
        while True:
            nl = chunk.find(b"\n", start)
            stop = size if nl == -1 else nl
            if stop > start:
                self._parts.append(chunk[start:stop])
                self._size += stop - start
                if self._size > self.max_line:
                    self._overflow(out)
            if nl == -1:
                return out
            if self._parts or not self._continued:  # (an overlong line that ended on a cut: done)
                out.append((b"".join(self._parts), self._continued))
            self._parts, self._size, self._continued = [], 0, False
            start = nl + 1

    def _overflow(self, out: list[tuple[bytes, bool]]) -> None:
        data, pos = b"".join(self._parts), 0
        while len(data) - pos > self.max_line:
            cut = _cut_at_char(data, pos + self.max_line, pos)
            out.append((data[pos:cut], self._continued))
            self._continued = True
            pos = cut
        rest = data[pos:]
        self._parts, self._size = ([rest] if rest else []), len(rest)

    @property
    def continued(self) -> bool:
        """True when part of the line now read has been passed on (it was too long to hold)."""
        return self._continued

    def flush_pieces(self) -> list[tuple[bytes, bool]]:
        tail, continued = b"".join(self._parts), self._continued
        self._parts, self._size, self._continued = [], 0, False
        return [(tail, continued)] if tail else []

    def feed(self, chunk: bytes) -> list[str]:
        return [p.decode("utf-8", "replace").rstrip("\r") for p, _ in self.feed_pieces(chunk)]

    def flush(self) -> list[str]:
        """The torn tail at end of stream, as a last line (never parsed as an event)."""
        return [p.decode("utf-8", "replace") for p, _ in self.flush_pieces()]
