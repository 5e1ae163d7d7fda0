"""`gpujob ui`: the dashboard, a local web app over the same registry and backends as the CLI.

* :mod:`~gpujob.ui.server` binds the socket (loopback by default; elsewhere only with the token and
  TLS, or ``--insecure``), prints the URL and serves the app with uvicorn.
* :mod:`~gpujob.ui.app` the routes: pages (Jinja2, autoescaped), the JSON API, the PNG curves, the
  log stream (server-sent events); :mod:`~gpujob.ui.guard` the token and CSRF checks in front of them.
* :mod:`~gpujob.ui.views` what the pages show, as plain data from the registry (no web library);
  :mod:`~gpujob.ui.logstream` a job's log followed for the page; :mod:`~gpujob.ui.charts` the curves as a PNG.

Imported only by ``gpujob ui`` (Starlette, uvicorn and Jinja2 come with ``gpujob[ui]``); imports no torch.
"""
