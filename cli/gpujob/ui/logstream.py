"""A job's log followed for the page, as server-sent events (``GET /jobs/<id>/stream``).

:func:`gpujob.service.logs` (``follow=True``, the last :data:`~gpujob.ui.views.LOG_TAIL` lines first)
runs in a thread of its own, with its own registry (SQLite connections stay in their thread), and
hands lines to the event loop. They are sent in batches, in words (:func:`gpujob.ui.views.log_words`),
as ``event: log`` with ``{"reset": bool, "lines": [...]}`` JSON: the first batch has ``reset`` (it
replaces the tail the page was rendered with, so no line is lost or shown twice in between). A
``progress`` event carries the job's row (:func:`gpujob.ui.views.job_row`) about every second, and
``end`` is sent once the job has ended and its log is read. A client that leaves stops the follower
at its next line.
"""

from __future__ import annotations

import asyncio
import threading
from typing import AsyncIterator

from gpujob import service
from gpujob.registry import Registry
from gpujob.ui import views

BATCH_WAIT_S = 0.25
PROGRESS_EVERY_S = 1.0
QUEUE_LINES = 10_000
_DONE = object()


def sse(event: str, data: object) -> str:
    return f"event: {event}\ndata: {views.dumps(data)}\n\n"


def _follow(job_id: str, loop: asyncio.AbstractEventLoop, queue: asyncio.Queue, stop: threading.Event) -> None:
    registry = Registry()
    try:
        job = registry.get(job_id)
        for line in service.logs(registry, job, follow=True, tail=views.LOG_TAIL):
            if stop.is_set():
                return
            loop.call_soon_threadsafe(queue.put_nowait, line)
    except Exception as exc:  # noqa: BLE001 -- said in the log, the stream goes on with progress
        loop.call_soon_threadsafe(queue.put_nowait, f"gpujob: the log cannot be followed now: {exc}")
    finally:
        registry.close()
        loop.call_soon_threadsafe(queue.put_nowait, _DONE)


async def stream(job_id: str, refresher: views.Refresher, is_disconnected) -> AsyncIterator[str]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()
    stop = threading.Event()
    threading.Thread(target=_follow, args=(job_id, loop, queue, stop), daemon=True,
                     name=f"gpujob-ui-log-{job_id}").start()
    first, following, last_progress = True, True, 0.0
    try:
        yield "retry: 2000\n\n"
        while True:
            lines: list[str] = []
            try:
                item = await asyncio.wait_for(queue.get(), timeout=BATCH_WAIT_S if following else PROGRESS_EVERY_S)
                while True:
                    if item is _DONE:
                        following = False
                        break
                    lines.append(item)
                    if len(lines) >= 500 or queue.empty():
                        break
                    item = queue.get_nowait()
            except asyncio.TimeoutError:
                pass
            if lines or (first and not following):
                yield sse("log", {"reset": first, "lines": views.log_words(lines)})
                first = False
            now = loop.time()
            if now - last_progress >= PROGRESS_EVERY_S or not following:
                last_progress = now
                row = await asyncio.to_thread(_row, job_id, refresher)
                yield sse("progress", row)
                if not following and not row["active"]:
                    yield sse("end", {"status": row["status"], "reason": row["reason"]})
                    return
            if await is_disconnected():
                return
    finally:
        stop.set()


def _row(job_id: str, refresher: views.Refresher) -> dict:
    registry = Registry()
    try:
        return views.job_row(refresher.job(registry, registry.get(job_id)))
    finally:
        registry.close()
