"""The dashboard in a real browser: Debian's chromium, headless, driven by Playwright (python).

Playwright's own browser download cannot work here (no CDN is reachable), so it launches the system
chromium (``chromium`` on PATH; dev/system-packages.sh installs it as root). Without chromium or
Playwright the browser tests skip with the reason, except in CI (``CI`` set), where they fail.

``gpujob ui --port 0`` runs as a subprocess over a test registry (:func:`start_ui`); it prints the URL
it listens on. Screenshots go to ``test-artifacts/ui/`` at the repository root (gitignored), named
after the test (:func:`screenshot`). tests/conftest.py loads this module as a plugin, so the session's one
``browser`` fixture serves every module."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "ui"
URL_LINE = re.compile(r"gpujob ui: (https?://\S+)")
START_TIMEOUT = 30.0
PHONE = {"width": 390, "height": 844}
LAPTOP = {"width": 1366, "height": 768}


def browser_unavailable() -> str | None:
    """Why the browser tests cannot run here, or None."""
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright is not installed (pyproject's test extra: make install)"
    if not shutil.which("chromium"):
        return "no chromium on PATH (as root: bash dev/system-packages.sh test; else apt-get install chromium)"
    return None


def skip_or_fail(why: str) -> None:
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(f"the browser tests cannot run in CI: {why}")
    pytest.skip(why)


@pytest.fixture(scope="session")
def browser():
    """One headless chromium for the whole session (contexts are cheap; a browser is not)."""
    why = browser_unavailable()
    if why:
        skip_or_fail(why)
    from playwright.sync_api import sync_playwright

    args = ["--no-sandbox"] if os.geteuid() == 0 else []  # chromium's sandbox refuses to run as root
    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=shutil.which("chromium"), args=args, headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


@dataclass
class UiServer:
    """`gpujob ui --port 0` running over one $GPUJOB_HOME; ``url`` is what it printed."""

    proc: subprocess.Popen
    url: str
    output: list[str] = field(default_factory=list)

    def page_url(self, path: str) -> str:
        return self.url.split("?", 1)[0].rstrip("/") + path

    def log(self) -> str:
        return "".join(self.output)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)  # Ctrl-C, as a user stops it
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def start_ui(env: dict[str, str], cwd: Path, *extra: str) -> UiServer:
    """Start `gpujob ui --port 0` and wait for the line with its URL (failing with what it printed)."""
    proc = subprocess.Popen([sys.executable, "-m", "gpujob", "ui", "--port", "0", *extra], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    output: list[str] = []
    found = threading.Event()
    url: list[str] = []

    def read() -> None:  # keeps draining, so the server never blocks on a full pipe
        for line in proc.stdout:
            output.append(line)
            if not found.is_set() and (m := URL_LINE.search(line)):
                url.append(m.group(1))
                found.set()
        found.set()

    threading.Thread(target=read, daemon=True).start()
    if not found.wait(START_TIMEOUT) or not url:
        proc.kill()
        proc.wait()
        raise AssertionError(f"gpujob ui printed no URL within {START_TIMEOUT:g} s:\n{''.join(output)}")
    return UiServer(proc, url[0], output)


SETTLED = """() => [...document.images].every(i => i.complete || i.loading === 'lazy')
    && (!document.querySelector('#chart')
        || (window.gpujobChart && (!window.gpujobChart.series.length || document.querySelector('#chart canvas'))))"""


def settle(page, timeout_ms: float = 20_000) -> None:
    """Wait until the page is what a person looks at: its images loaded (lazy ones load when scrolled to)
    and its chart drawn."""
    page.wait_for_function(SETTLED, timeout=timeout_ms)


def screenshot(page, request, suffix: str = "", *, full_page: bool = True) -> Path:
    """Save the page under test-artifacts/ui/, named after the test (and ``suffix``)."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name).strip("-")
    path = ARTIFACTS / f"{name}{'-' + suffix if suffix else ''}.png"
    return save(page, path, full_page=full_page)


def save(page, path: Path, *, full_page: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page)
    return path
