"""The dashboard as a person sees it, in headless chromium (tests/support/browser.py): `gpujob ui` over a
registry holding real jobs run by the local backend — a finished hello job, a running long one, and one
that prints ``<script>alert(1)</script>`` (and a secret it was given). What is checked is what shows on
the page: the jobs table, the log and step moving without a reload, cancel after a confirmation, the
script shown as text, keyboard focus, phone and laptop widths, and the pages without JavaScript.
Screenshots: test-artifacts/ui/."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser import ARTIFACTS, LAPTOP, PHONE, UiServer, save, screenshot, settle, start_ui
from gpujob_cli import GpujobCli
from polling import wait_for

# one registry, server and browser: `make test-fast` (--dist loadgroup) keeps the module on one worker
pytestmark = pytest.mark.xdist_group("dashboard")
SECRET = "hf_dashboardSecret0c4a9e71b25d4f"
XSS = "<script>alert(1)</script>"
XSS_IMG = "<img src=x onerror=alert(2)>"
LONG_HELLO = 'command=[python, -m, gpujob.demo, --steps, "100000", --step-time, "0.05"]'
HELLO = Path(__file__).resolve().parents[2] / "jobs" / "hello.yaml"
WAIT_MS = 20_000  # what a person would wait for a live page to move
# the innermost elements reaching past the screen's right edge (outside a scrolling container): the culprits
TOO_WIDE = """() => { const w = document.documentElement.clientWidth;
    const scrolls = e => e.closest('.table-wrap, pre') !== null;
    const wide = [...document.body.querySelectorAll('*')]
        .filter(e => e.getBoundingClientRect().right > w + 0.5 && !scrolls(e));
    return wide.filter(e => !wide.some(o => o !== e && e.contains(o))).slice(0, 5)
               .map(e => `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''}${e.className ? '.' + e.className : ''}`
                         + ` (right edge ${Math.round(e.getBoundingClientRect().right)})`); }"""

# each chart within its own panel: one wider than its box shows cut off (or widens the page)
CUT_CHARTS = """() => [...document.querySelectorAll('#chart .panel')].map(p => {
        const c = p.querySelector('canvas'); return c && c.getBoundingClientRect().right > p.getBoundingClientRect().right + 0.5
            ? `${p.querySelector('h3') ? p.querySelector('h3').textContent : '?'}: canvas ${Math.round(c.getBoundingClientRect().width)} px`
              + ` in a panel of ${Math.round(p.getBoundingClientRect().width)} px` : null; }).filter(Boolean)"""


@dataclass
class Dashboard:
    cli: GpujobCli
    ui: UiServer
    finished: str
    running: str
    xss: str

    def url(self, path: str) -> str:
        return self.ui.page_url(path)


def job_env(home: Path) -> dict[str, str]:
    bin_dir = str(Path(sys.executable).parent)  # the jobs' `python` is this one
    return {**os.environ, "GPUJOB_HOME": str(home), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "HF_TOKEN": SECRET, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}


def submit_long_hello(cli: GpujobCli, out: str) -> str:
    job_id = cli.submit(HELLO, "--set", LONG_HELLO, "--set", f"output.dir={out}")
    cli.wait_status(job_id, lambda s: s["status"] == "running" and (s["step"] or 0) >= 1, what=f"{job_id} running")
    return job_id


@pytest.fixture(scope="module")
def dashboard(tmp_path_factory, browser):  # the browser first: no chromium, no jobs started
    tmp = tmp_path_factory.mktemp("dashboard")
    cli = GpujobCli(tmp, job_env(tmp / "home"))
    ui = None
    try:
        finished = cli.submit(HELLO, "--follow", "--set", "output.dir=out/finished")
        code = f"import os; print({XSS!r}); print({XSS_IMG!r}); print('token:', os.environ['HF_TOKEN'])"
        xss_spec = tmp / "xss.yaml"
        xss_spec.write_text(json.dumps({
            "apiVersion": "gpujob/v1", "kind": "command", "name": "prints-html", "command": ["python", "-c", code],
            "resources": {"gpus": 0}, "runtime": {"backend": "local", "secrets": ["HF_TOKEN"]},
            "output": {"dir": "out/xss"}}))
        xss = cli.submit(xss_spec, "--follow")
        running = submit_long_hello(cli, "out/running")
        ui = start_ui(cli.env, tmp)
        yield Dashboard(cli, ui, finished, running, xss)
    finally:
        if ui is not None:
            ui.stop()
        for job in json.loads(cli.gpujob("list", "--active", "--json").stdout or "[]"):
            cli.gpujob("cancel", job["id"], "--grace", "1")


@pytest.fixture
def context(browser):
    ctx = browser.new_context(viewport=LAPTOP)
    yield ctx
    ctx.close()


@pytest.fixture
def page(context):
    return context.new_page()


def lines_of(page) -> list[str]:
    return page.locator("#log").text_content().splitlines()


def test_the_jobs_page_lists_every_job_with_its_status(dashboard, page):
    from playwright.sync_api import expect

    page.goto(dashboard.url("/"))
    settle(page)
    for job_id in (dashboard.finished, dashboard.xss, dashboard.running):
        expected = dashboard.cli.status(job_id)["status"]
        expect(page.locator(f'#jobs tr[data-job="{job_id}"] .status')).to_contain_text(expected)
    finished = page.locator(f'#jobs tr[data-job="{dashboard.finished}"]')
    expect(finished.locator(".progress")).to_contain_text("100")
    wer = dashboard.cli.status(dashboard.finished)["eval"]["wer"]
    expect(finished.locator(".wer")).to_contain_text(f"{wer * 100:.1f}")
    save(page, ARTIFACTS / "jobs-page.png")


def test_the_jobs_table_moves_without_a_reload(dashboard, page):
    from playwright.sync_api import expect

    page.goto(dashboard.url("/"))
    page.evaluate("window.gpujobTestMarker = 'not reloaded'")
    row = page.locator(f'#jobs tr[data-job="{dashboard.running}"]')
    before = row.locator(".runtime").text_content() + "|" + row.locator(".progress").text_content()
    page.wait_for_function(
        """([id, before]) => { const r = document.querySelector(`#jobs tr[data-job="${id}"]`);
             return r && r.querySelector('.runtime').textContent + '|' + r.querySelector('.progress').textContent
                    !== before; }""", arg=[dashboard.running, before], timeout=WAIT_MS)
    expect(row.locator(".status")).to_contain_text("running")
    assert page.evaluate("window.gpujobTestMarker") == "not reloaded"


def test_a_running_jobs_log_and_step_update_without_a_reload(dashboard, page, request):
    page.goto(dashboard.url(f"/jobs/{dashboard.running}"))
    page.evaluate("window.gpujobTestMarker = 'not reloaded'")
    step_before = page.locator("#step").text_content()
    bar_before = page.locator("#bar").evaluate("bar => bar.value")
    lines_before = set(lines_of(page))
    page.wait_for_function("s => document.querySelector('#step').textContent !== s", arg=step_before,
                           timeout=WAIT_MS)
    page.wait_for_function("v => document.querySelector('#bar').value > v", arg=bar_before, timeout=WAIT_MS)
    new_lines = wait_for(lambda: [line for line in lines_of(page) if line.strip() and line not in lines_before],
                         timeout=WAIT_MS / 1000, what="new lines in the page's log")
    assert page.evaluate("window.gpujobTestMarker") == "not reloaded"
    assert any("step" in line for line in new_lines), new_lines[-5:]
    screenshot(page, request)


def test_cancel_asks_first_and_then_ends_the_running_job(dashboard, page):
    job_id = submit_long_hello(dashboard.cli, f"out/cancel-{os.getpid()}")
    page.goto(dashboard.url(f"/jobs/{job_id}"))
    dialogs, posts = [], []
    page.on("request", lambda r: posts.append(r.url) if r.method == "POST" else None)

    page.once("dialog", lambda d: (dialogs.append(d.type), d.dismiss()))
    page.locator("#cancel-button").click()
    assert dialogs == ["confirm"]
    assert posts == [], "dismissing the confirmation must not send the cancel"
    assert dashboard.cli.status(job_id)["status"] == "running"

    page.once("dialog", lambda d: (dialogs.append(d.type), d.accept()))
    page.locator("#cancel-button").click()
    dashboard.cli.wait_status(job_id, lambda s: s["status"] == "cancelled", what=f"{job_id} cancelled")
    assert dialogs == ["confirm", "confirm"]
    assert [url.split("?")[0] for url in posts] == [dashboard.url(f"/jobs/{job_id}/cancel")]


def test_a_job_printing_a_script_tag_shows_it_as_text_and_runs_nothing(dashboard, page, request):
    from playwright.sync_api import expect

    dialogs = []
    page.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    page.goto(dashboard.url(f"/jobs/{dashboard.xss}"))
    log = page.locator("#log")
    expect(log).to_contain_text(XSS)
    expect(log).to_contain_text(XSS_IMG)
    assert page.locator("#log script, #log img").count() == 0
    screenshot(page, request)
    pages = [page.content()]
    for path in ("/", f"/api/jobs/{dashboard.xss}", "/api/jobs"):
        page.goto(dashboard.url(path))
        pages.append(page.content())
    assert dialogs == []
    assert not any(SECRET in html for html in pages), "the job's secret reached a page"
    assert SECRET not in dashboard.ui.log()


def test_the_keyboard_reaches_the_links_and_the_cancel_button_with_a_visible_focus(dashboard, page):
    page.goto(dashboard.url(f"/jobs/{dashboard.running}"))
    seen = []
    for _ in range(80):
        page.keyboard.press("Tab")
        focused = page.evaluate("""() => { const e = document.activeElement, s = getComputedStyle(e);
            return {tag: e.tagName.toLowerCase(), id: e.id, href: e.getAttribute('href'),
                    ring: (s.outlineStyle !== 'none' && parseFloat(s.outlineWidth) > 0)
                          || s.boxShadow !== 'none'}; }""")
        seen.append(focused)
        if focused["id"] == "cancel-button":
            break
    links = [f for f in seen if f["tag"] == "a" and f["href"]]
    assert links, f"Tab reached no link: {seen}"
    assert seen[-1]["id"] == "cancel-button", f"Tab never reached the cancel button: {seen}"
    unringed = [f for f in links + seen[-1:] if not f["ring"]]
    assert not unringed, f"focused without a visible focus ring: {unringed}"


@pytest.mark.parametrize("viewport", [PHONE, LAPTOP], ids=["phone", "laptop"])
def test_every_page_fits_the_screen_width(dashboard, browser, viewport, request):
    phone = viewport is PHONE
    ctx = browser.new_context(viewport=viewport, is_mobile=phone, has_touch=phone)
    try:
        page = ctx.new_page()
        overflow = {}
        paths = {"jobs": "/", "job": f"/jobs/{dashboard.finished}", "running": f"/jobs/{dashboard.running}",
                 "hosts": "/hosts", "compare": f"/compare?jobs={dashboard.finished},{dashboard.xss}"}
        for name, path in paths.items():
            page.goto(dashboard.url(path))
            settle(page)
            width, inner = page.evaluate("[document.scrollingElement.scrollWidth, window.innerWidth]")
            if inner != viewport["width"] or width > inner:  # a page without a viewport meta is 980 wide
                overflow[name] = {"scrollWidth": width, "innerWidth": inner, "too wide": page.evaluate(TOO_WIDE)}
            if cut := page.evaluate(CUT_CHARTS):
                overflow[name] = {"charts wider than their panel (cut off)": cut}
            screenshot(page, request, name)
        assert not overflow, f"wider than the {viewport['width']} px screen: {overflow}"
    finally:
        ctx.close()


def test_without_javascript_the_tables_log_and_curves_are_there(dashboard, browser, request):
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport=LAPTOP, java_script_enabled=False)
    try:
        page = ctx.new_page()
        page.goto(dashboard.url("/"))
        for job_id in (dashboard.finished, dashboard.xss, dashboard.running):
            expect(page.locator(f'#jobs tr[data-job="{job_id}"]')).to_have_count(1)
        # the filters are a plain GET form
        page.locator('#filters select[name="status"]').select_option("succeeded")
        page.locator('#filters button, #filters input[type="submit"]').first.click()
        page.wait_for_url("**status=succeeded**")
        expect(page.locator(f'#jobs tr[data-job="{dashboard.finished}"]')).to_have_count(1)
        expect(page.locator(f'#jobs tr[data-job="{dashboard.running}"]')).to_have_count(0)

        page.goto(dashboard.url(f"/jobs/{dashboard.finished}"))
        expect(page.locator("#log")).to_contain_text("done: w=")
        expect(page.locator("#curves-png")).to_be_visible()
        assert page.locator("#curves-png").evaluate("img => img.complete && img.naturalWidth") > 0
        screenshot(page, request)
    finally:
        ctx.close()
