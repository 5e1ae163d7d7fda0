"""Secret values out of everything gpujob keeps: log lines, decoded events, stored strings.

A job may print a secret in many forms. :class:`Redactor` replaces each of them by ``***``:

* the value as it is, and stripped of surrounding white space;
* as JSON writes it inside a string, with and without ``ensure_ascii`` (a quote, a backslash,
  a newline or non-ASCII escaped), and as Python's ``repr`` writes it;
* each line of a multi-line value (a PEM key) of 8 characters or more, in case the lines are
  printed apart or with other line endings.

A form that gpujob itself decodes (``\\u0068f_…`` inside an event) is caught after decoding:
:meth:`Redactor.value` walks the decoded event, keys and values. A value that spans lines is
caught in the byte stream, before it is cut into lines, by :class:`StreamRedactor`.

Values shorter than :data:`MIN_SECRET` characters are not redacted: replacing every ``a`` in a
log hides nothing and ruins the log.

Stdlib only: the local supervisor imports it for every job.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any, Iterable

MIN_SECRET = 4
MIN_LINE_PIECE = 8
MASK = "***"
# The start of an escape that a match would tear: a lone backslash, or \u with fewer than 4 hex digits
# (a secret "0\x1f..." is found as JSON writes it, "0\u001f...", inside "\u0030\u001f...").
_TORN_ESCAPE = re.compile(r"\\(?:u[0-9a-fA-F]{0,3})?$")


def _forms(secret: str) -> set[str]:
    forms = {
        secret,
        secret.strip(),
        json.dumps(secret)[1:-1],
        json.dumps(secret, ensure_ascii=False)[1:-1],
        repr(secret)[1:-1],
        secret.replace("\n", "\r\n"),
    }
    forms.update(piece.strip() for piece in secret.splitlines() if len(piece.strip()) >= MIN_LINE_PIECE)
    return {f for f in forms if len(f) >= MIN_SECRET}


class Redactor:
    """Replaces every known form of the given secret values by ``***``."""

    def __init__(self, secrets: Iterable[str]) -> None:
        values = {s for s in secrets if isinstance(s, str) and len(s) >= MIN_SECRET}
        forms: set[str] = set()
        for value in values:
            forms |= _forms(value)
        # Longest first, so a value is replaced whole and not one of its lines at a time.
        self.forms = sorted(forms, key=len, reverse=True)
        self._pattern = re.compile("|".join(map(re.escape, self.forms))) if self.forms else None

    def __bool__(self) -> bool:
        return self._pattern is not None

    def text(self, text: str) -> str:
        """``text`` with every form replaced; a match that begins inside an escape sequence takes the whole
        escape with it, so a JSON line stays JSON (its event is kept, with ``***`` in the value)."""
        if self._pattern is None:
            return text
        out, last = [], 0
        for found in self._pattern.finditer(text):
            start = found.start()
            torn = _TORN_ESCAPE.search(text, max(last, start - 6), start)
            if torn and _escapes(text, torn.start(), last):
                start = torn.start()
            out += [text[last:start], MASK]
            last = found.end()
        out.append(text[last:])
        return "".join(out)

    def value(self, value: Any) -> Any:
        """A decoded value (an event) with every string in it, keys too, redacted."""
        if self._pattern is None:
            return value
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.value(k): self.value(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.value(v) for v in value]
        return value

    def multiline_forms(self) -> list[str]:
        return [f for f in self.forms if "\n" in f]


def _escapes(text: str, at: int, floor: int) -> bool:
    """True when the backslash at ``at`` begins an escape: an even number of backslashes before it."""
    run = 0
    while at - run - 1 >= floor and text[at - run - 1] == "\\":
        run += 1
    return run % 2 == 0


class StreamRedactor:
    """Bytes in, bytes out, with every multi-line form of a secret replaced, even one written in
    several chunks. Holds back only a tail that could still become such a form (usually nothing),
    so a live log is not delayed. Bytes that are not UTF-8 come out as U+FFFD, as in the log."""

    def __init__(self, redactor: Redactor) -> None:
        self.forms = redactor.multiline_forms()
        self._pattern = re.compile("|".join(map(re.escape, self.forms))) if self.forms else None
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")
        self._held = ""

    def feed(self, chunk: bytes) -> bytes:
        if self._pattern is None:
            return chunk
        text = self._pattern.sub(MASK, self._held + self._decoder.decode(chunk))
        keep = self._open_prefix(text)
        self._held = text[len(text) - keep:] if keep else ""
        return text[:len(text) - keep].encode("utf-8")

    def flush(self) -> bytes:
        if self._pattern is None:
            return b""
        text, self._held = self._held + self._decoder.decode(b"", final=True), ""
        return self._pattern.sub(MASK, text).encode("utf-8")

    def _open_prefix(self, text: str) -> int:
        """The length of the longest end of ``text`` that begins some form (0 when none does)."""
        best = 0
        for form in self.forms:
            tail = text[len(text) - (len(form) - 1):] if len(text) >= len(form) else text
            at = tail.find(form[0])
            while at != -1 and len(tail) - at > best:  # the first match is the longest
                if form.startswith(tail[at:]):
                    best = len(tail) - at
                    break
                at = tail.find(form[0], at + 1)
        return best
