"""Downloads from the dashboard: a file of a job's own output folder, and the job's log.

A file is served only when its path, relative to the job's ``output.dir`` on this machine, names a
regular file inside that folder: no ``..``, no absolute path, no symbolic link on the way (a link
could point anywhere), at most :data:`MAX_FILE_BYTES`. The log is the job's log as ``gpujob logs``
reads it, its last :data:`MAX_LOG_LINES` lines. Both come as attachments (the browser saves them,
never renders them) under the dashboard's token, like every other route.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path, PurePosixPath

from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response

from gpujob import service
from gpujob.errors import GpujobError
from gpujob.records import Job
from gpujob.registry import Registry

MAX_FILE_BYTES = 4 * 2**30
MAX_LOG_LINES = 200_000


def output_file(job: Job, relative: str) -> Path | None:
    """The file ``relative`` names in the job's output folder, or None when it is not one to serve."""
    out = job.output_dir
    if not out or "://" in out or not relative or "\x00" in relative or "\\" in relative:
        return None
    parts = relative.split("/")  # as given: "a/./b", "a//b", "/a" and ".." are refused, not normalised
    if PurePosixPath(relative).is_absolute() or any(p in ("..", ".", "") for p in parts):
        return None
    base = Path(out)
    try:
        if not stat.S_ISDIR(os.lstat(base).st_mode):
            return None
        path = base
        for part in parts:
            path = path / part
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                return None
        if not stat.S_ISREG(mode) or os.lstat(path).st_size > MAX_FILE_BYTES:
            return None
    except OSError:
        return None
    return path


def _attachment(name: str) -> dict[str, str]:
    safe = "".join(c if c.isalnum() or c in "._-" else "_" for c in name)[:120] or "download"
    return {"Content-Disposition": f'attachment; filename="{safe}"', "Cache-Control": "no-store",
            "X-Content-Type-Options": "nosniff"}


def file_response(registry: Registry, request: Request) -> Response:
    try:
        job = registry.resolve(request.path_params["job"])
    except GpujobError:
        return PlainTextResponse("no such job", status_code=404)
    path = output_file(job, request.path_params["path"])
    if path is None:
        return PlainTextResponse("not a file of this job's outputs", status_code=404)
    return FileResponse(path, media_type="application/octet-stream", headers=_attachment(path.name))


def audio_response(registry: Registry, request: Request) -> Response:
    """A clip the runner kept of a worst utterance (``worst_audio/NNN.wav``), to play in the page."""
    from gpujob.ui.worst import AUDIO_FOLDER, AUDIO_NAME

    name = request.path_params["name"]
    try:
        job = registry.resolve(request.path_params["job"])
    except GpujobError:
        return PlainTextResponse("no such job", status_code=404)
    path = output_file(job, f"{AUDIO_FOLDER}/{name}") if AUDIO_NAME.fullmatch(name) else None
    if path is None:
        return PlainTextResponse("no such clip", status_code=404)
    return FileResponse(path, media_type="audio/wav", headers={"Cache-Control": "no-store",
                                                               "X-Content-Type-Options": "nosniff"})


def log_response(registry: Registry, request: Request) -> Response:
    try:
        job = registry.resolve(request.path_params["job"])
        lines = list(service.logs(registry, job, follow=False, tail=MAX_LOG_LINES))
    except GpujobError as exc:
        return PlainTextResponse(f"the log cannot be read: {exc.message}", status_code=404)
    body = "".join(line if line.endswith("\n") else line + "\n" for line in lines)
    return PlainTextResponse(body, headers=_attachment(f"{job.id}-{job.name}.log"))
