"""A job's output as the local supervisor keeps it: bytes in, redacted lines and their events out.

* A line is cut at :data:`MAX_LINE` bytes, so a job that never prints a newline cannot make the
  supervisor hold its output in memory.
* Secrets are replaced before the output is cut into lines (a multi-line key), in each line, and
  again in each decoded event (a value written with JSON escapes, ``\\u0068f_…``). When decoding
  found one, the line is written back from the redacted events, so the log holds no form of it.
* Parsing can never raise: a line that does not parse as an event is text.

Stdlib only.
"""

from __future__ import annotations

import json
from typing import Any

from gpujob.events import decode_line, normalize_event
from gpujob.progress import PREFIX
from gpujob.redact import Redactor, StreamRedactor

MAX_LINE = 1 << 20

Event = dict[str, Any]


class JobOutput:
    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._stream = StreamRedactor(redactor)
        self._buf = b""

    def feed(self, chunk: bytes) -> list[tuple[str, list[Event]]]:
        self._buf += self._stream.feed(chunk)
        *lines, self._buf = self._buf.split(b"\n")
        while len(self._buf) > MAX_LINE:  # no newline in sight: keep it as lines of MAX_LINE
            lines.append(self._buf[:MAX_LINE])
            self._buf = self._buf[MAX_LINE:]
        return [self._line(raw) for raw in lines]

    def flush(self) -> list[tuple[str, list[Event]]]:
        """The rest at the end of the output: a torn last line is text, never an event."""
        rest, self._buf = self._buf + self._stream.flush(), b""
        # The redactor may have held back a newline (it could have begun a multi-line secret): the
        # lines it ends are whole; only what follows the last newline is torn.
        *whole, torn = rest.split(b"\n")
        return [self._line(raw) for raw in whole] + ([self._line(torn, parse=False)] if torn else [])

    def _line(self, raw: bytes, parse: bool = True) -> tuple[str, list[Event]]:
        line = self.redactor.text(raw.decode("utf-8", "replace").rstrip("\r"))
        if not parse:
            return line, []
        try:
            objects = decode_line(line)
        except Exception:  # the parser guards itself; this guards the supervisor from the parser
            return line, []
        if self.redactor:  # every decoded object, whole, before fields are checked and dropped
            clean = [self.redactor.value(o) for o in objects]
            if clean != objects:  # a form only decoding revealed: write the line from the clean objects
                line = " ".join(PREFIX + json.dumps(o, separators=(",", ":"), default=str) for o in clean)
                objects = clean
        return line, [e for o in objects if (e := normalize_event(o)) is not None]
