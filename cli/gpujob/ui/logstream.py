"""A job's log followed for the page, as server-sent events (``GET /jobs/<id>/stream``).

Events: ``log`` with ``{"reset": bool, "lines": [...]}`` JSON, in words (:func:`gpujob.ui.views.log_words`;
the first batch has ``reset``: it replaces the tail the page was rendered with, so no line is lost or
shown twice in between), ``progress`` with the job's row (:func:`gpujob.ui.views.job_row`) about every
second, and ``end`` once the job has ended and its log is read.

The dashboard must not be worn down by its clients:

- A log that is a file here (every local job's, and any job's once ended and saved) is tailed on the
  event loop itself: no thread, one descriptor, closed when the client goes (Starlette cancels the
  stream when the connection closes; the loop also asks each turn).
- Another backend's live log (docker, kubernetes, a rented host) is followed by a thread of its own,
  as :func:`gpujob.service.logs` blocks; at most :data:`MAX_FOLLOWERS` at once (more clients get the
  progress without the live log, and are told), and each thread stops at its next line once its
  client is gone.
- What waits for a client is bounded: a batch is at most :data:`BATCH_BYTES` (a line is cut at
  :data:`gpujob.ui.views.LINE_CHARS` characters), and a follower's queue holds :data:`QUEUE_LINES` lines; a client
  that does not read is sent nothing more until it does, and lines it missed are counted, not kept.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator

from gpujob import service
from gpujob.backends import capabilities
from gpujob.backends.base import LOG_NAME
from gpujob.linesplit import LineSplitter
from gpujob.registry import Registry
from gpujob.ui import views
from gpujob.untrusted import Refused, open_regular

BATCH_WAIT_S = 0.25
PROGRESS_EVERY_S = 1.0
QUEUE_LINES = 2_000
BATCH_BYTES = 256 << 10      # the most read from a file, or sent, in one batch
MAX_FOLLOWERS = 16           # threads following other backends' live logs, all clients together
_DONE = object()
_followers = threading.BoundedSemaphore(MAX_FOLLOWERS)


def sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {views.dumps(data)}\n\n"


async def stream(job_id: str, refresher: views.Refresher, is_disconnected) -> AsyncIterator[str]:
    job = await asyncio.to_thread(_job, job_id)
    path = job.job_dir / LOG_NAME
    here = capabilities(job.backend).log_written_here or (not job.active and path.exists())
    source = _FileSource(path) if here else _ThreadSource(job_id)
    source.active = job.active
    loop = asyncio.get_running_loop()
    first, last_progress = True, 0.0
    try:
        yield "retry: 2000\n\n"
        while True:
            lines, following = await source.batch()
            if lines or (first and not following):
                yield sse("log", {"reset": first, "lines": views.log_words(_cut(ln) for ln in lines)})
                first = False
            now = loop.time()
            if now - last_progress >= PROGRESS_EVERY_S or not following:
                last_progress = now
                row = await asyncio.to_thread(_row, job_id, refresher)
                yield sse("progress", row)
                if not following and not row["active"]:
                    yield sse("end", {"status": row["status"], "reason": row["reason"]})
                    return
                source.active = row["active"]
            if await is_disconnected():
                return
    finally:
        source.close()


class _FileSource:
    """A log file here, tailed without a thread: the last :data:`views.LOG_TAIL` lines first (from at
    most :data:`views.LOG_TAIL_BYTES`), then what is appended, a batch at a time."""

    def __init__(self, path) -> None:
        self.path, self.fh, self.active = path, None, True
        self.splitter = LineSplitter()
        self.pending: list[str] = []

    async def batch(self) -> tuple[list[str], bool]:
        if self.fh is None:
            try:
                self.fh = open_regular(self.path)
            except FileNotFoundError:
                await asyncio.sleep(BATCH_WAIT_S)
                return [], self.active
            except Refused as exc:
                self.active = False
                return [f"gpujob: the log cannot be shown: {exc}"], False
            self.pending = _tail_start(self.fh)
        if not self.pending:
            chunk = self.fh.read(BATCH_BYTES)
            if chunk:
                self.pending = self.splitter.feed(chunk)
            elif not self.active:
                return self.splitter.flush(), False
            else:
                await asyncio.sleep(BATCH_WAIT_S)
                return [], True
        lines, size = [], 0
        while self.pending and (not lines or size < BATCH_BYTES):
            line = _cut(self.pending.pop(0))
            lines.append(line)
            size += len(line)
        return lines, True

    def close(self) -> None:
        if self.fh is not None:
            self.fh.close()


def _tail_start(fh) -> list[str]:
    """The last lines of an open log (bounded), leaving ``fh`` where the tail ended."""
    end = fh.seek(0, 2)
    start = max(0, end - views.LOG_TAIL_BYTES)
    fh.seek(start)
    data = fh.read(end - start)
    cut = data.rfind(b"\n") + 1
    fh.seek(start + cut)  # a torn last line is read again once complete
    lines = [ln.decode("utf-8", "replace").rstrip("\r") for ln in data[:cut].split(b"\n")[:-1]]
    return lines[-views.LOG_TAIL:]


class _ThreadSource:
    """Another backend's live log, through :func:`gpujob.service.logs` in a thread of its own."""

    def __init__(self, job_id: str) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(maxsize=QUEUE_LINES)
        self.stop = threading.Event()
        self.following, self.active, self.missed, self.told = True, True, 0, False
        self.loop = asyncio.get_running_loop()
        if _followers.acquire(blocking=False):
            threading.Thread(target=self._follow, args=(job_id,), daemon=True,
                             name=f"gpujob-ui-log-{job_id}").start()
        else:
            self.following = False
            self.busy = True

    def _put(self, item) -> None:
        try:
            self.queue.put_nowait(item)
        except asyncio.QueueFull:
            self.missed += 1

    def _follow(self, job_id: str) -> None:
        registry = Registry()
        try:
            job = registry.get(job_id)
            for line in service.logs(registry, job, follow=True, tail=views.LOG_TAIL):
                if self.stop.is_set():
                    return
                self.loop.call_soon_threadsafe(self._put, _cut(line))
        except Exception as exc:  # noqa: BLE001 -- said in the log, the stream goes on with progress
            self.loop.call_soon_threadsafe(self._put, f"gpujob: the log cannot be followed now: {exc}")
        finally:
            registry.close()
            _followers.release()
            try:
                self.loop.call_soon_threadsafe(self.queue.put_nowait, _DONE)
            except RuntimeError:  # the loop has closed (the server stopped)
                pass

    async def batch(self) -> tuple[list[str], bool]:
        if getattr(self, "busy", False):
            if not self.told:
                self.told = True
                return [f"gpujob: {MAX_FOLLOWERS} live logs are being followed already; reload later "
                        "for this one (`gpujob logs -f` shows it now)"], False
            await asyncio.sleep(PROGRESS_EVERY_S)
            return [], False
        lines: list[str] = []
        try:
            item = await asyncio.wait_for(self.queue.get(), timeout=BATCH_WAIT_S if self.following
                                          else PROGRESS_EVERY_S)
            size = 0
            while True:
                if item is _DONE:
                    self.following = False
                    break
                lines.append(item)
                size += len(item)
                if size >= BATCH_BYTES or self.queue.empty():
                    break
                item = self.queue.get_nowait()
        except asyncio.TimeoutError:
            pass
        if self.missed:
            lines.append(f"gpujob: {self.missed} lines were not sent (the page read too slowly); "
                         "`gpujob logs` has them all")
            self.missed = 0
        return lines, self.following

    def close(self) -> None:
        self.stop.set()


def _cut(line: str) -> str:
    return views.cut_line(line)


def _job(job_id: str):
    registry = Registry()
    try:
        return registry.get(job_id)
    finally:
        registry.close()


def _row(job_id: str, refresher: views.Refresher) -> dict:
    registry = Registry()
    try:
        return views.job_row(refresher.job(registry, registry.get(job_id)))
    finally:
        registry.close()
