"""The dashboard's routes: pages (Jinja2, autoescaped), the JSON API, the curves as PNG, the log stream.

Pages: ``/`` jobs, ``/jobs/<id>`` one job, ``/compare`` runs side by side, ``/hosts`` rented hosts; each
reads without JavaScript (tables, the log tail, a PNG of the curves), and small scripts keep them live
(``static/app.js``: polling the API, the log as server-sent events, a uPlot chart). API: ``/api/jobs``,
``/api/jobs/<id>``, ``/api/jobs/<id>/metrics`` (the metric history, as the registry keeps it),
``/api/hosts``. The one action: ``POST /jobs/<id>/cancel`` (the CSRF check is in :mod:`gpujob.ui.guard`).
Every handler opens its own registry (SQLite connections stay in their thread).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse as _JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from gpujob import service
from gpujob.errors import GpujobError, JobNotFound, UserError
from gpujob.registry import Registry
from gpujob.sysview import human_bytes
from gpujob.ui import charts, downloads, logstream, overview, views
from gpujob.ui.worst import rows as worst_rows
from gpujob.ui.guard import Guard
from gpujob.ui.security import Access

HERE = Path(__file__).parent
CANCEL_GRACE_S = 10.0


class JSONResponse(_JSONResponse):
    def render(self, content) -> bytes:
        return views.dumps(content).encode("utf-8")


@contextmanager
def _registry() -> Iterator[Registry]:
    registry = Registry()
    try:
        yield registry
    finally:
        registry.close()


def _env() -> Environment:
    env = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(default=True),
                      trim_blocks=True, lstrip_blocks=True)
    env.filters["pct"] = lambda v: "-" if v is None else f"{v * 100:.2f}%"
    env.filters["size"] = human_bytes
    # a final metric as the rest of the page writes it: WER and CER (fractions) in %
    env.filters["metric"] = lambda kv: (f"{kv[1] * 100:.2f}%" if isinstance(kv[1], (int, float)) and not isinstance(
        kv[1], bool) and ("wer" in kv[0] or "cer" in kv[0]) and not kv[0].endswith("_step") else str(kv[1]))
    return env


class Dashboard:
    def __init__(self, access: Access) -> None:
        self.access = access
        self.refresher = views.Refresher()
        self.templates = _env()

    def page(self, request: Request, name: str, status_code: int = 200, **context) -> HTMLResponse:
        html = self.templates.get_template(name).render(csrf=request.scope["state"]["csrf"], path=request.url.path,
                                                        **context)
        return HTMLResponse(html, status_code=status_code)

    def _error(self, request: Request, exc: GpujobError, status_code: int) -> HTMLResponse:
        return self.page(request, "error.html", status_code=status_code, message=views.text(exc.message),
                         hint=views.text(exc.hint or ""))

    # ------------------------------------------------------------------ jobs

    def _filters(self, request: Request) -> dict[str, str]:
        return {k: request.query_params.get(k, "") for k in ("status", "backend", "sweep")}

    def jobs_page(self, request: Request) -> Response:
        filters = self._filters(request)
        with _registry() as registry:
            jobs = views.filtered_jobs(registry, self.refresher, **filters)
            choices = views.filter_choices(registry)
        return self.page(request, "jobs.html", rows=[views.job_row(j) for j in jobs], filters=filters, choices=choices)

    def api_jobs(self, request: Request) -> Response:
        with _registry() as registry:
            jobs = views.filtered_jobs(registry, self.refresher, **self._filters(request))
        return JSONResponse({"jobs": [views.job_row(j) for j in jobs]})

    def _job(self, registry: Registry, request: Request):
        return self.refresher.job(registry, registry.resolve(request.path_params["job"]))

    def job_page(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                job = self._job(registry, request)
            except GpujobError as exc:
                return self._error(request, exc, 404)
            detail = views.job_detail(registry, job)
            history = registry.history(job.id)
            worst, worst_note = worst_rows(job)
            context = dict(job=detail, spec_yaml=views.spec_yaml(job), log=views.log_tail(registry, job),
                           series=views.series(history), has_history=bool(history), worst=worst,
                           worst_note=worst_note, outputs=views.outputs(job), overview=overview.overview(job))
        return self.page(request, "job.html", **context)

    def api_job(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                job = self._job(registry, request)
            except GpujobError as exc:
                return JSONResponse({"error": exc.message}, status_code=404)
            return JSONResponse({**views.job_detail(registry, job), "outputs": views.outputs(job)})

    def api_metrics(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                job = registry.resolve(request.path_params["job"])
            except GpujobError as exc:
                return JSONResponse({"error": exc.message}, status_code=404)
            return JSONResponse({"job": job.id, "points": registry.history(job.id)})

    def curves_png(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                job = registry.resolve(request.path_params["job"])
            except GpujobError:
                return Response(status_code=404)
            runs = [(f"{job.id} {views.text(job.name, 200)}", registry.history(job.id))]
        return Response(charts.png(runs, title=f"gpujob: {runs[0][0]}"), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    async def log_stream(self, request: Request) -> Response:
        job_id = request.path_params["job"]
        with _registry() as registry:
            try:
                job_id = registry.resolve(job_id).id
            except GpujobError as exc:
                return JSONResponse({"error": exc.message}, status_code=404)
        return StreamingResponse(logstream.stream(job_id, self.refresher, request.is_disconnected),
                                 media_type="text/event-stream",
                                 headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    def cancel_confirm(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                job = self._job(registry, request)
            except GpujobError as exc:
                return self._error(request, exc, 404)
        return self.page(request, "cancel.html", job=views.job_row(job))

    async def cancel(self, request: Request) -> Response:
        body = parse_qs((await request.body()).decode("utf-8", "replace"))
        if (body.get("confirm") or [""])[0] != "yes":  # without JavaScript: the button leads to the question
            return RedirectResponse(f"/jobs/{request.path_params['job']}/cancel", status_code=303)
        return await run_in_threadpool(self._cancel, request)

    def _cancel(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                ref = request.path_params["job"]
                job = registry.resolve(ref)
                if job.id != ref:  # an action names its job whole: no prefix, no name
                    return self._error(request, UserError(f"cancel needs the job's full id, not {ref[:60]!r}",
                                                          hint=f"use the button on /jobs/{job.id}"), 404)
                service.cancel(registry, job, grace_s=CANCEL_GRACE_S)
            except JobNotFound as exc:
                return self._error(request, exc, 404)
            except GpujobError as exc:
                return self._error(request, exc, 409)
        return RedirectResponse(f"/jobs/{job.id}", status_code=303)

    # ------------------------------------------------------------------ compare and hosts

    def _compare_jobs(self, registry: Registry, request: Request):
        sweep = request.query_params.get("sweep", "").strip()
        refs = [r.strip() for r in request.query_params.get("jobs", "").split(",") if r.strip()]
        if sweep:
            return sorted(registry.list(sweep=sweep), key=lambda j: j.created_at), sweep, refs
        seen = {}
        for ref in refs:
            job = registry.resolve(ref)
            seen.setdefault(job.id, job)
        return list(seen.values()), sweep, refs

    def compare_page(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                jobs, sweep, refs = self._compare_jobs(registry, request)
            except GpujobError as exc:
                return self._error(request, exc, 404)
            jobs = self.refresher.jobs(registry, jobs)
            data = views.compare(registry, jobs) if jobs else None
            series = [s for i, j in enumerate(jobs) for s in views.series(registry.history(j.id), label=j.id, run=i)]
            choices = [views.job_row(j) for j in registry.list(limit=200)]
            sweeps = views.filter_choices(registry)["sweep"]
        query = request.url.query
        return self.page(request, "compare.html", data=data, sweep=sweep, refs=refs, series=series,
                         choices=choices, sweeps=sweeps, query=query)

    def api_compare(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                jobs, _, _ = self._compare_jobs(registry, request)
            except GpujobError as exc:
                return JSONResponse({"error": exc.message}, status_code=404)
            return JSONResponse(views.compare(registry, jobs) if jobs else {"jobs": []})

    def compare_png(self, request: Request) -> Response:
        with _registry() as registry:
            try:
                jobs, sweep, _ = self._compare_jobs(registry, request)
            except GpujobError:
                return Response(status_code=404)
            runs = [(f"{j.id} {views.text(j.name, 200)}", registry.history(j.id)) for j in jobs]
        title = f"sweep {sweep}" if sweep else ", ".join(j.id for j in jobs)
        return Response(charts.png(runs, title=f"gpujob: {title}"), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    def download_file(self, request: Request) -> Response:
        with _registry() as registry:
            return downloads.file_response(registry, request)

    def audio_clip(self, request: Request) -> Response:
        with _registry() as registry:
            return downloads.audio_response(registry, request)

    def download_log(self, request: Request) -> Response:
        with _registry() as registry:
            return downloads.log_response(registry, request)

    def hosts_page(self, request: Request) -> Response:
        with _registry() as registry:
            rows = views.host_rows(registry)
        return self.page(request, "hosts.html", hosts=rows)

    def api_hosts(self, request: Request) -> Response:
        with _registry() as registry:
            return JSONResponse({"hosts": views.host_rows(registry)})


def build(access: Access) -> Guard:
    """The dashboard as an ASGI app, behind its guard (host header, token, CSRF)."""
    d = Dashboard(access)
    routes = [
        Route("/", d.jobs_page),
        Route("/jobs/{job}", d.job_page),
        Route("/jobs/{job}/curves.png", d.curves_png),
        Route("/jobs/{job}/stream", d.log_stream),
        Route("/jobs/{job}/files/{path:path}", d.download_file),
        Route("/jobs/{job}/log.txt", d.download_log),
        Route("/jobs/{job}/audio/{name}", d.audio_clip),
        Route("/favicon.ico", lambda request: RedirectResponse("/static/favicon.svg", status_code=301)),
        Route("/jobs/{job}/cancel", d.cancel_confirm, methods=["GET"]),
        Route("/jobs/{job}/cancel", d.cancel, methods=["POST"]),
        Route("/compare", d.compare_page),
        Route("/compare/curves.png", d.compare_png),
        Route("/hosts", d.hosts_page),
        Route("/api/jobs", d.api_jobs),
        Route("/api/jobs/{job}", d.api_job),
        Route("/api/jobs/{job}/metrics", d.api_metrics),
        Route("/api/compare", d.api_compare),
        Route("/api/hosts", d.api_hosts),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    return Guard(Starlette(routes=routes), access)

