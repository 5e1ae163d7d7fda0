"""Text a job wrote, made safe for the terminal it is printed on (``gpujob logs`` on a terminal).

A job's output may hold escape sequences a terminal acts on: OSC 0/2 (the window title), OSC 8 (a
link whose target is not the text shown), OSC 52 (a write to the clipboard), CSI sequences that clear
the screen or move the cursor over gpujob's own lines, DCS/APC/PM/SOS strings, charset switches, and
their 8-bit C1 forms. :func:`for_terminal` keeps plain SGR colour codes (``ESC [ ... m``) and drops
every other sequence whole (an OSC 8 link leaves its text); any other control character but tab and
carriage return becomes U+FFFD. Stdlib only.
"""

from __future__ import annotations

import re

_SGR = r"\x1b\[[0-9;:]*m"
_SEQUENCES = re.compile(
    "(" + _SGR + ")"                                   # 1: colour: kept
    r"|\x1b\[[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"      # any other CSI (clear, move, mode, report)
    r"|\x9b[\x30-\x3f]*[\x20-\x2f]*[\x40-\x7e]?"        # CSI as one C1 character
    r"|(?:\x1b[\]PX^_]|[\x90\x98\x9d\x9e\x9f])[^\x07\x1b\x9c]*(?:\x07|\x1b\\|\x9c)?"  # OSC, DCS, SOS, PM, APC strings
    r"|\x1b[\x20-\x2f]*[\x30-\x7e]?"                    # any other escape (charsets, keypad, reset, ...)
)
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def for_terminal(text: str) -> str:
    """``text`` with no escape sequence left but SGR colour codes, and no control character but tab
    and carriage return (each other one becomes U+FFFD)."""
    if not _CONTROLS.search(text):
        return text
    out, last = [], 0
    for m in _SEQUENCES.finditer(text):
        out.append(_CONTROLS.sub("\ufffd", text[last:m.start()]))
        out.append(m.group(1) or "")  # the colour code, or nothing
        last = m.end()
    out.append(_CONTROLS.sub("\ufffd", text[last:]))
    return "".join(out)
