"""The progress protocol: how any job tells gpujob how far it has got.

A job writes one JSON object per line to stdout, behind a fixed prefix::

    @gpujob/v1 {"event": "progress", "t": 1732490000.1, "step": 120, "total_steps": 5000, "loss": 0.41}

Rules (version 1):

* The prefix ``@gpujob/v1`` followed by one space, then a JSON object with an
  ``event`` key. ``t`` (unix seconds) is added by the writer; readers that see
  no ``t`` use the time they read the line.
* The prefix may appear anywhere in a line (a tqdm bar drawn with ``\\r`` may
  precede it). A line may hold several events when two writers interleave;
  readers take every object that parses and skip the rest. A torn line (no
  newline yet) is not an event until its newline arrives.
* Unknown keys and unknown events are ignored, so newer jobs work with older
  readers. A later protocol version gets a new prefix.

Events and their fields (all optional but ``event``):

========== ===============================================================
start      total_steps, epochs, name, kind
progress   step, total_steps, epoch, loss, learning_rate, samples_per_s
eval       step, wer, cer, eval_loss (wer/cer are fractions: 0.231 = 23.1 %),
           and any other name: value (per-source scores: ``wer/<name>``, ``cer/<name>``)
checkpoint step, path
artifact   path, name
end        status ("succeeded" | "failed"), metrics {name: value}, message
heartbeat  phase, done, total, unit (alive during long work between steps, e.g. evaluation;
           ``unit: "bytes"`` when done/total count bytes, as staging data from a bucket does)
system     n (sample number), step (training step), cpu_percent, rss_bytes, mem_used_bytes,
           mem_total_bytes, loader_wait_percent, and with a GPU gpus, gpu_util_percent,
           gpu_mem_used_bytes, gpu_mem_total_bytes, gpu_power_w (every few seconds;
           runner/sysmetrics.py)
export     engine, wer, cer, transformers_wer, transformers_cer, utterances_per_s,
           transformers_utterances_per_s, ... (output.export: the exported model scored beside the
           trained one on the same clips)
========== ===============================================================

Any event but ``system`` counts as a sign of life for hung-job detection (``limits.idle_minutes``):
system samples come from a thread, whatever the training loop does.

Whatever a job prints, reading it never fails and never takes long: the reader checks every
field, and a field of the wrong type or out of range is dropped as if it were absent (the rest of
the event still counts). What a reader keeps:

=============================== =========================================================
event                           1-40 characters of ``A-Z a-z 0-9 _ . -`` (else not an event)
t                               a number 0 .. 1e11 (unix seconds)
step, done                      an integer 0 .. 10**12 (a float is truncated)
total_steps, total              an integer 1 .. 10**12 (0 means unknown: dropped)
epoch, epochs                   a number 0 .. 1e9
loss, learning_rate, eval_loss  a number -1e30 .. 1e30
samples_per_s                   a number 0 .. 1e30
n                               an integer 0 .. 10**12
cpu_percent                     a number 0 .. 1e6 (% of one core)
gpu_util_percent, loader_wait_% a number 0 .. 100
*_bytes                         an integer 0 .. 1e18
gpu_power_w                     a number 0 .. 1e7
gpus                            an integer 1 .. 100000
wer, cer                        a number 0 .. 1000 (a fraction; above 1 is possible)
status                          "succeeded", or "failed" for any other string
message, path                   a string, cut to 500 characters
name, kind, phase               a string, cut to 200 characters
unit                            "bytes" (anything else: dropped)
export's fields                 wer/cer and transformers_* as wer; utterances_per_s as samples_per_s;
                                engine, quantization, compute_type, device as name; counts as step
metrics, eval's other names     at most 50 names of 1-100 characters, each to null, a boolean,
                                a number -1e30 .. 1e30 or a string cut to 200 characters;
                                anything else (a list, an object) is dropped
=============================== =========================================================

Booleans are not numbers; ``NaN``, ``Infinity`` and numbers too big for a float are dropped.
Control characters, terminal escape sequences (ESC, CSI), bidirectional overrides and lone
surrogates in any kept string are replaced (by a space for tab and newline, else U+FFFD), so
nothing a job prints can restyle the terminal of someone running ``status`` or ``logs``.

A line longer than 64 Ki characters (:data:`gpujob.events.MAX_EVENT_CHARS`) holds no event: it is
text. So is an object nested more than 16 deep (:data:`gpujob.events.MAX_DEPTH`). A stream cut
into lines passes on a line longer than 1 MiB (:data:`gpujob.linesplit.MAX_LINE_BYTES`) in pieces
of at most that size. The state a reader folds keeps the latest 50 artifact paths
(:data:`gpujob.progress_state.MAX_ARTIFACTS`).

This module is the protocol and its writer. The reading side lives beside it, one job a module:

* :mod:`gpujob.events`: decoding an output line and checking its events (the table above);
* :mod:`gpujob.linesplit`: cutting a byte stream into lines of bounded size;
* :mod:`gpujob.progress_state`: folding events into what ``status``, ``list`` and the live bar show;
* :mod:`gpujob.words`: durations, rates and events in words for people.

All of them are stdlib-only: jobs import the writer, the CLI imports the parser, and neither
pulls in anything heavy.
"""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any

from gpujob.wire import EVENT_PREFIX

PREFIX = EVENT_PREFIX
VERSION = 1
EVENTS = ("start", "progress", "eval", "checkpoint", "artifact", "end", "heartbeat", "system", "export")


# --------------------------------------------------------------------------- writer


class ProgressWriter:
    """Writes event lines for a job. ``ProgressWriter().progress(step=3, total_steps=10, loss=0.5)``."""

    def __init__(self, stream: IO[str] | None = None, clock=time.time) -> None:
        # the stream is the one standard output is when the writer is made, not whatever it is when a line is
        # written: a tracker's call redirects sys.stdout to stderr (runner/tracking.py) for its own prints, and a
        # system sample written from the sampler's thread meanwhile went to stderr, out of the job's events
        self._stream = stream if stream is not None else sys.stdout
        self._clock = clock

    def emit(self, event: str, **fields: Any) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown progress event {event!r}; one of {', '.join(EVENTS)}")
        payload = {"event": event, "t": round(self._clock(), 3)}
        payload.update({k: v for k, v in fields.items() if v is not None})
        line = PREFIX + json.dumps(payload, separators=(",", ":"), allow_nan=False, default=str) + "\n"
        self._stream.write(line)  # one write call: a whole line, so lines from threads do not tear
        self._stream.flush()

    def start(self, **fields: Any) -> None:
        self.emit("start", **fields)

    def progress(self, **fields: Any) -> None:
        self.emit("progress", **fields)

    def eval(self, **fields: Any) -> None:
        self.emit("eval", **fields)

    def checkpoint(self, **fields: Any) -> None:
        self.emit("checkpoint", **fields)

    def artifact(self, **fields: Any) -> None:
        self.emit("artifact", **fields)

    def end(self, **fields: Any) -> None:
        self._ended = True
        self.emit("end", **fields)

    def heartbeat(self, **fields: Any) -> None:
        self.emit("heartbeat", **fields)

    def system(self, **fields: Any) -> None:
        """A system sample (from the runner's sampler thread); none after ``end``, which stays the last event."""
        if not getattr(self, "_ended", False):
            self.emit("system", **fields)
