"""The dashboard's debugging views in headless chromium (issue 31), over two finished hello jobs run by the
local backend, one of them given GPU system samples made by the runner's sampler with a stand-in NVML:
the jobs table sorted, searched and two rows picked to compare; in compare, one colour per job in every
panel (the GPU series among them), the log axis and smoothing; the word diff and the sizes."""

from __future__ import annotations

import io
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser import ARTIFACTS, LAPTOP, UiServer, save, start_ui
from gpujob_cli import GpujobCli

pytestmark = pytest.mark.xdist_group("dashboard-debug")
HELLO = Path(__file__).resolve().parents[2] / "jobs" / "hello.yaml"
QUICK = 'command=[python, -m, gpujob.demo, --steps, "30", --step-time, "0.02", --eval-every, "10"]'
COLOURS = ["#1f77b4", "#ff7f0e"]
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runner"))
from test_runner_sysmetrics import FakeNvml  # noqa: E402


@dataclass
class Jobs:
    cli: GpujobCli
    ui: UiServer
    alpha: str
    beta: str


def gpu_points(seconds: float = 1.3) -> list[dict]:
    """System samples of the runner's sampler over a stand-in NVML (one board, 60 % busy, 12 GB of 80 in use)."""
    from gpujob import history
    from gpujob.events import parse_line
    from gpujob.progress import ProgressWriter
    from gpujob.runner import sysmetrics

    out = io.StringIO()
    nvml = FakeNvml([(60, 12 * 10**9, 80 * 10**9, 150_000)])
    sampler = sysmetrics.Sampler(ProgressWriter(out).system, interval=0.3, nvml=nvml).start()
    time.sleep(seconds)
    sampler.stop()
    return [p for line in out.getvalue().splitlines() for e in parse_line(line) if (p := history.point(e))]


@pytest.fixture(scope="module")
def jobs(tmp_path_factory, browser):
    tmp = tmp_path_factory.mktemp("debug")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "GPUJOB_HOME": str(tmp / "home"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "PYTHONUNBUFFERED": "1"}
    cli = GpujobCli(tmp, env)
    alpha = cli.submit(HELLO, "--follow", "--set", QUICK, "--set", "name=alpha", "--set", "output.dir=out/a")
    beta = cli.submit(HELLO, "--follow", "--set", QUICK, "--set", "name=beta", "--set", "output.dir=out/b")
    points = gpu_points()
    assert points and all(p["gpu_util_percent"] == 60.0 for p in points)
    script = ("import json, sys; from gpujob.registry import Registry; r = Registry(); "
              f"r.add_history({beta!r}, json.loads(sys.stdin.read()))")
    import subprocess

    subprocess.run([sys.executable, "-c", script], input=json.dumps(points), text=True, env=env, check=True)
    ui = start_ui(env, tmp)
    try:
        yield Jobs(cli, ui, alpha, beta)
    finally:
        ui.stop()


def visible_ids(page) -> list[str]:
    return page.evaluate("() => [...document.querySelectorAll('#jobs tbody tr')].filter(r => !r.hidden)"
                         ".map(r => r.dataset.job)")


def test_the_jobs_table_sorts_searches_and_picks_two_runs_to_compare(jobs, browser):
    ctx = browser.new_context(viewport=LAPTOP)
    try:
        page = ctx.new_page()
        page.goto(jobs.ui.page_url("/"))
        page.wait_for_selector("#jobs-tools:not([hidden])")
        assert page.locator("#jobs thead th", has_text="Submitted").count() == 1
        assert page.locator(f'tr[data-job="{jobs.alpha}"] td.submitted').text_content().startswith("20")
        name_head = page.locator('#jobs thead th[data-sort-key="name"]')
        name_head.click()
        assert visible_ids(page) == [jobs.alpha, jobs.beta]
        name_head.click()
        assert visible_ids(page) == [jobs.beta, jobs.alpha]
        page.fill("#j-search", "alph")
        assert visible_ids(page) == [jobs.alpha]
        time.sleep(2)  # a live update of the table (every 1.5 s) keeps the search and the order
        assert visible_ids(page) == [jobs.alpha]
        page.fill("#j-search", "")
        assert page.locator("#j-compare").is_disabled()
        page.locator(f'tr[data-job="{jobs.alpha}"] td.pick input').check()
        page.locator(f'tr[data-job="{jobs.beta}"] td.pick input').check()
        page.locator("#j-compare").click()
        page.wait_for_url("**/compare?jobs=*")
        assert set(page.locator("#results tbody tr").evaluate_all("rs => rs.map(r => r.dataset.job)")) == {jobs.alpha, jobs.beta}
    finally:
        ctx.close()


def test_compare_gives_each_job_one_colour_in_every_panel_with_the_gpu_series(jobs, browser):
    ctx = browser.new_context(viewport=LAPTOP)
    try:
        page = ctx.new_page()
        page.goto(jobs.ui.page_url(f"/compare?jobs={jobs.alpha},{jobs.beta}"))
        page.wait_for_function("() => document.querySelectorAll('#chart .panel canvas').length >= 4", timeout=20_000)
        series = page.evaluate("() => window.gpujobChart.series")
        colour_of: dict[str, set] = {}
        for s in series:
            colour_of.setdefault(s["label"].split()[0], set()).add(s["colour"])
        assert colour_of == {jobs.alpha: {COLOURS[0]}, jobs.beta: {COLOURS[1]}}, colour_of
        panels = {s["panel"] for s in series if s["label"].startswith(jobs.beta)}
        assert {"loss", "wer", "util", "memory"} <= panels, panels
        gpu = [s for s in series if s["panel"] == "util" and s["label"] == f"{jobs.beta} GPU"]
        assert gpu and set(gpu[0]["values"]) == {60.0}
        memory = [s for s in series if s["panel"] == "memory" and s["label"] == f"{jobs.beta} GPU memory"]
        assert memory and set(memory[0]["values"]) == {12.0}
        assert not any(s["label"].startswith(jobs.alpha) and s["panel"] in ("util", "memory") for s in series)
        drawn = page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#chart .panel')]
            .map(d => [d.dataset.panel, JSON.parse(d.dataset.colours)]))""")
        by_panel = {p: set(c) for p, c in drawn.items()}
        assert by_panel["loss"] == set(COLOURS) and by_panel["util"] == {COLOURS[1]}, by_panel
        # the log axis and smoothing redraw every panel, still one colour per job
        page.locator("#chart-log").check()
        page.locator("#chart-smooth").fill("0.9")
        page.wait_for_function("() => document.querySelectorAll('#chart .panel canvas').length >= 4")
        assert {p: set(c) for p, c in page.evaluate("""() => Object.fromEntries([...document.querySelectorAll(
            '#chart .panel')].map(d => [d.dataset.panel, JSON.parse(d.dataset.colours)]))""").items()} == by_panel
        save(page, ARTIFACTS / "compare-colours.png")
    finally:
        ctx.close()
