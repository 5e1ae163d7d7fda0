"""Inside a docker (or rented host's) job container: the job's output with its secrets masked, before
the engine's log ever holds it.

A job given secrets (``runtime.secrets``) could print them, and the engine keeps what a container
prints. So the container's entry runs the job under this script, copied in beside it with
:mod:`gpujob.redact` (as ``gpujob_redact.py``), when the job has secrets and the image has python3:

    python3 -I -S /run/gpujob/mask.py ARGV...

It reads the names of the secrets from ``GPUJOB_SECRET_NAMES`` and their values from its own
environment (the entry has just read them from the secrets file and deleted it), starts the job with
the same environment, and copies its stdout and stderr to its own with every form of each value
replaced by ``***`` (:class:`gpujob.redact.Redactor`). It stays out of the job's way:

* the signals a container gets (``docker stop``'s SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1/2) go on to
  the job, so its handler runs as without this script;
* it ends as the job ends: with its exit code, or killed by the same signal; output still held by a
  process the job left behind is waited for :data:`DRAIN_S` at most, as the container would end then;
* output goes on at each line end (``\\n`` or ``\\r``); an unended line is held until it ends, and
  passed on in pieces of :data:`MAX_HELD` bytes when it never does.

Stdlib only (Python 3.8 or newer), and nothing of gpujob but the redactor: it runs in any image.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading

if __package__:  # imported as a part of gpujob
    from gpujob.redact import Redactor, StreamRedactor
else:  # the container's mask.py, run with -I: its own folder, where gpujob_redact.py is, is not on the path
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from gpujob_redact import Redactor, StreamRedactor

NAMES_VAR = "GPUJOB_SECRET_NAMES"
FORWARDED = tuple(getattr(signal, n) for n in ("SIGTERM", "SIGINT", "SIGHUP", "SIGQUIT", "SIGUSR1", "SIGUSR2")
                  if hasattr(signal, n))
MAX_HELD = 1 << 16
DRAIN_S = 2.0


class Masker:
    """Bytes of one stream in, the same bytes with the secrets masked out, at line ends."""

    def __init__(self, redactor: Redactor) -> None:
        self.redactor = redactor
        self._stream = StreamRedactor(redactor)
        self._held = b""

    def feed(self, chunk: bytes) -> bytes:
        self._held += self._stream.feed(chunk)
        cut = max(self._held.rfind(b"\n"), self._held.rfind(b"\r")) + 1
        if not cut and len(self._held) > MAX_HELD:
            cut = len(self._held)
        out, self._held = self._held[:cut], self._held[cut:]
        return self._mask(out)

    def flush(self) -> bytes:
        out, self._held = self._held + self._stream.flush(), b""
        return self._mask(out)

    def _mask(self, data: bytes) -> bytes:
        if not data or not self.redactor:
            return data
        text = data.decode("utf-8", "surrogateescape")  # bytes that are not UTF-8 pass through as they were
        masked = self.redactor.text(text)
        return data if masked == text else masked.encode("utf-8", "surrogateescape")


def _write_all(fd: int, data: bytes) -> None:
    while data:
        try:
            data = data[os.write(fd, data):]
        except BrokenPipeError:
            return


def _pump(source, fd: int, redactor: Redactor) -> None:
    masker = Masker(redactor)
    while True:
        chunk = os.read(source.fileno(), 1 << 16)
        if not chunk:
            break
        _write_all(fd, masker.feed(chunk))
    _write_all(fd, masker.flush())


def main(argv: list[str]) -> int:
    if not argv:
        print("gpujob mask: no command to run", file=sys.stderr)
        return 2
    names = [n for n in os.environ.pop(NAMES_VAR, "").split(",") if n]
    redactor = Redactor(os.environ[n] for n in names if n in os.environ)
    pending: list[int] = []
    child: list[subprocess.Popen] = []

    def forward(signum, _frame) -> None:
        if child:
            child[0].send_signal(signum)
        else:
            pending.append(signum)

    for signum in FORWARDED:
        signal.signal(signum, forward)
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    except OSError as exc:
        print(f"gpujob: cannot run {argv[0]!r}: {exc.strerror or exc}", file=sys.stderr)
        return 127 if isinstance(exc, FileNotFoundError) else 126
    child.append(proc)
    for signum in pending:
        proc.send_signal(signum)
    pumps = [threading.Thread(target=_pump, args=(src, fd, redactor), daemon=True)
             for src, fd in ((proc.stdout, 1), (proc.stderr, 2))]
    for pump in pumps:
        pump.start()
    code = proc.wait()
    for pump in pumps:
        pump.join(DRAIN_S)
    if code < 0:  # killed by a signal: end the same way, so the container's exit says so
        if -code != signal.SIGKILL:  # SIGKILL's action cannot be set, and needs no reset
            signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
