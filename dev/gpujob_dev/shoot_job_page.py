"""Screenshots of one job's dashboard page, on a laptop's and a phone's screen, from a real registry.

    python -m gpujob_dev.shoot_job_page JOB [--out test-artifacts/ui] [--name quickstart-job-page]

It starts ``gpujob ui --port 0`` over ``$GPUJOB_HOME`` (the registry the job is in), opens the job's page in
Debian's chromium (headless, through Playwright, as the browser tests do), waits for its images and chart, and
writes ``NAME-laptop.png`` and ``NAME-phone.png`` (whole pages). Issue 31 asks for the quickstart's page.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "support"))

SIZES = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("job", help="the job's id (or a unique prefix or name), as gpujob status takes it")
    p.add_argument("--out", type=Path, default=ROOT / "test-artifacts" / "ui")
    p.add_argument("--name", default="quickstart-job-page")
    args = p.parse_args(argv)
    from browser import settle, start_ui  # tests/support/browser.py: the dashboard as the browser tests start it
    from playwright.sync_api import sync_playwright

    from gpujob.registry import Registry

    job = Registry().resolve(args.job)
    server = start_ui(dict(os.environ), ROOT)
    written = []
    try:
        with sync_playwright() as pw:
            chromium = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                          args=["--no-sandbox"] if os.geteuid() == 0 else [])
            for size, viewport in SIZES.items():
                context = chromium.new_context(viewport=viewport, device_scale_factor=1,
                                               is_mobile=size == "phone", has_touch=size == "phone")
                page = context.new_page()
                page.goto(server.url)  # the URL with its token sets the session cookie
                page.goto(server.page_url(f"/jobs/{job.id}"))
                settle(page)
                args.out.mkdir(parents=True, exist_ok=True)
                path = args.out / f"{args.name}-{size}.png"
                page.screenshot(path=str(path), full_page=True)
                written.append(path)
                context.close()
            chromium.close()
    finally:
        server.stop()
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
