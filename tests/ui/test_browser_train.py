"""The job page of a finished Whisper train job in headless chromium: a tiny random Whisper trained for a
few steps on synthesized Greek speech by the local backend (the model tier: tiny_model, small_greek),
then `gpujob ui` over its registry. The page's chart is the job's metric history (`gpujob metrics
--json`), its curves PNG loads, and the worst utterances are those of the job's predictions.jsonl.
The screenshot test-artifacts/ui/job-page.png is the issue's must-show."""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from browser import ARTIFACTS, LAPTOP, UiServer, save, start_ui
from gpujob_cli import GpujobCli

pytest.importorskip("torch")
CHART_SERIES = """() => (window.gpujobChart && window.gpujobChart.series && window.gpujobChart.series.length
    ? window.gpujobChart.series
    : (document.querySelector('#chart') && document.querySelector('#chart').dataset.series
       ? JSON.parse(document.querySelector('#chart').dataset.series) : null))"""


@dataclass
class TrainedJob:
    cli: GpujobCli
    ui: UiServer
    job_id: str
    out: Path


@pytest.fixture(scope="module")
def trained(tmp_path_factory, browser, tiny_model, small_greek):  # the browser first: no chromium, no training
    tmp = tmp_path_factory.mktemp("trained")
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "GPUJOB_HOME": str(tmp / "home"), "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    cli = GpujobCli(tmp, env)
    out = tmp / "out"
    spec = tmp / "tiny-el.yaml"
    spec.write_text(json.dumps({
        "apiVersion": "gpujob/v1", "kind": "train", "name": "tiny-el",
        "model": {"checkpoint": str(tiny_model), "language": "el"},
        "data": {"train": [{"dataset": str(small_greek), "split": "train"}],
                 "eval": [{"dataset": str(small_greek), "split": "heldout"}], "loader_workers": 1},
        "training": {"max_steps": 6, "per_device_batch_size": 4, "learning_rate": 1e-3, "warmup_steps": 1,
                     "eval_steps": 2, "save_steps": 1000, "precision": "fp32", "generation_max_length": 20},
        "evaluation": {"batch_size": 4}, "output": {"dir": str(out)}, "resources": {"gpus": 0}}))
    r = cli.gpujob("submit", str(spec), "--follow", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    job_id = r.stdout.split()[2]
    ui = start_ui(env, tmp)
    try:
        yield TrainedJob(cli, ui, job_id, out)
    finally:
        ui.stop()


def same(values: list, expected: list, scale: float) -> bool:
    return len(values) == len(expected) and all(
        math.isclose(v, e * scale, rel_tol=1e-9, abs_tol=1e-12) for v, e in zip(values, expected))


def test_the_job_page_shows_the_loss_and_wer_curves_and_the_worst_utterances(trained, browser):
    from playwright.sync_api import expect

    points = json.loads(trained.cli.gpujob("metrics", trained.job_id, "--json").stdout)
    ctx = browser.new_context(viewport=LAPTOP)
    try:
        page = ctx.new_page()
        page.goto(trained.ui.page_url(f"/jobs/{trained.job_id}"))

        # the chart: each curve is the job's own history, point for point
        series = page.wait_for_function(CHART_SERIES, timeout=20_000).json_value()
        keys = ["loss"] + sorted({k for p in points if p["event"] == "eval" for k in p if k.startswith("wer")})
        assert "wer" in keys, points
        for key in keys:
            history = [p for p in points if key in p]
            steps, values = [p["step"] for p in history], [p[key] for p in history]
            scale = 100.0 if key.startswith("wer") else 1.0  # WER may be drawn in % (as `gpujob plot` does)
            drawn = [s for s in series if s["steps"] == steps
                     and (same(s["values"], values, 1.0) or same(s["values"], values, scale))]
            assert drawn, f"no curve on the page is the job's {key}: {steps} {values}; the chart has {series}"
            assert any(key.split("/")[0] in s["label"].lower() for s in drawn), (key, drawn)

        # the static picture (what shows without JavaScript) loaded
        page.wait_for_function("() => { const i = document.querySelector('#curves-png');"
                               " return i && i.complete && i.naturalWidth > 0; }", timeout=20_000)

        # the worst utterances: the job's own predictions, the worst first
        predictions = [json.loads(line) for line in (trained.out / "predictions.jsonl").read_text().splitlines()]
        by_reference = {p["reference"].strip(): p for p in predictions}
        worst = page.locator("#worst")
        expect(worst).to_be_visible()
        headers = [h.strip().lower() for h in worst.locator("thead th").all_text_contents()]
        ref_col = next(i for i, h in enumerate(headers) if "reference" in h)
        hyp_col = next(i for i, h in enumerate(headers) if "hypothesis" in h or "prediction" in h)
        rows = worst.locator("tbody tr")
        assert rows.count() >= 1
        shown = []
        for i in range(rows.count()):
            cells = rows.nth(i).locator("td, th").all_text_contents()
            reference, hypothesis = cells[ref_col].strip(), cells[hyp_col].strip()
            assert reference in by_reference, f"{reference!r} is none of the job's references"
            assert hypothesis == by_reference[reference]["prediction"].strip()
            shown.append(by_reference[reference]["wer"])
        assert shown[0] == max(p["wer"] for p in predictions)
        assert shown == sorted(shown, reverse=True)

        page.locator("#worst").scroll_into_view_if_needed()
        save(page, ARTIFACTS / "job-page.png")
    finally:
        ctx.close()


# ----------------------------------------------------------------------------- issue 31: debugging a run


def test_the_local_train_job_records_eval_loss_and_system_metrics_without_gpu_series(trained):
    points = json.loads(trained.cli.gpujob("metrics", trained.job_id, "--json").stdout)
    evals = [p for p in points if p["event"] == "eval"]
    assert evals and all(math.isfinite(p["eval_loss"]) and p["eval_loss"] > 0 for p in evals), evals
    r = trained.cli.gpujob("metrics", trained.job_id, "--system", "--json")
    assert r.returncode == 0, r.stderr
    system = json.loads(r.stdout)
    assert system and all(p["event"] == "system" for p in system)
    assert all(p["rss_bytes"] > 10 * 2**20 and p["mem_total_bytes"] > 0 for p in system), system
    assert any("cpu_percent" in p for p in system)
    assert not any(k.startswith("gpu") for p in system for k in p), system  # no GPU here: absent, not 0
    table = trained.cli.gpujob("metrics", trained.job_id, "--system").stdout
    assert table.splitlines()[0].split()[:4] == ["time", "step", "CPU", "%"] and "GPU" not in table
    status = trained.cli.gpujob("status", trained.job_id).stdout
    system_row = next(line for line in status.splitlines() if line.startswith("system"))
    assert "CPU" in system_row and "RSS" in system_row and "peak" in system_row
    assert not any(line.startswith("GPU") for line in status.splitlines())


def panel_colours(page) -> dict[str, list[str]]:
    return page.evaluate("""() => Object.fromEntries([...document.querySelectorAll('#chart .panel')].map(
        d => [d.dataset.panel, JSON.parse(d.dataset.colours || '[]')]))""")


def test_the_job_page_debugs_the_run(trained, browser):
    """Eval loss beside train loss, the system panels, one colour for the job, progress lines folded, human
    sizes, downloads of an output and the log (a path outside the outputs refused), the overview."""
    from playwright.sync_api import expect

    ctx = browser.new_context(viewport=LAPTOP, accept_downloads=True)
    try:
        page = ctx.new_page()
        page.goto(trained.ui.page_url(f"/jobs/{trained.job_id}"))
        series = page.wait_for_function(CHART_SERIES, timeout=20_000).json_value()
        loss_labels = [s["label"] for s in series if s["panel"] == "loss"]
        assert "train loss" in loss_labels and "eval loss" in loss_labels, loss_labels
        page.wait_for_function("() => document.querySelectorAll('#chart .panel').length >= 4", timeout=20_000)
        colours = panel_colours(page)
        assert {"loss", "wer", "util", "memory", "cpu"} <= set(colours), colours
        assert {c for cs in colours.values() for c in cs} == {"#1f77b4"}  # one job: one colour everywhere
        util = [s for s in series if s["panel"] == "util"]
        assert [s["label"] for s in util] == ["loader wait"]  # no GPU series on this machine
        assert page.locator('#chart .panel[data-panel="util"] h3').text_content() == "loader wait (%)"

        # the log: [progress] lines folded out until asked for
        log = page.locator("#log")
        assert "[progress]" not in log.text_content() and "[eval]" in log.text_content()
        page.locator("#log-progress").check()
        expect(log).to_contain_text("[progress] step 1")

        # outputs: human sizes, downloadable; the log too
        files = page.locator("ul.files li")
        assert files.count() > 1 and "bytes" not in page.locator("ul.files").text_content()
        with page.expect_download() as got:
            page.locator('ul.files a[href$="/files/metrics.json"]').click()
        assert Path(got.value.path()).read_bytes() == (trained.out / "metrics.json").read_bytes()
        with page.expect_download() as got:
            page.locator("#log-download").click()
        assert "@gpujob/v1" in Path(got.value.path()).read_text()
        for bad in ("..%2F..%2Fhome", "%2Fetc%2Fpasswd", "checkpoints%2F..%2F..%2Fx", "nonexistent"):
            r = ctx.request.get(trained.ui.page_url(f"/jobs/{trained.job_id}/files/{bad}"))
            assert r.status == 404, (bad, r.status)
        final = page.locator("#final-metrics").text_content()
        assert "wer " in final and "%" in final

        overview = page.locator("#overview").text_content()
        assert "python -m gpujob.runner" in overview and "submitted" in overview and "gpus 0" in overview
        assert ctx.request.get(trained.ui.page_url("/favicon.ico")).status == 200

        page.locator("#log-progress").uncheck()
        save(page, ARTIFACTS / "job-page-debug.png")
        phone = browser.new_context(viewport={"width": 390, "height": 844}, is_mobile=True)
        try:
            p2 = phone.new_page()
            p2.goto(trained.ui.page_url(f"/jobs/{trained.job_id}"))
            p2.wait_for_function(CHART_SERIES, timeout=20_000)
            save(p2, ARTIFACTS / "job-page-phone.png")
        finally:
            phone.close()
    finally:
        ctx.close()


def test_the_worst_utterances_play_their_own_clips_and_mark_the_word_errors(trained, browser):
    from gpujob.ui.worst import word_diff

    index = json.loads((trained.out / "worst_audio" / "index.json").read_text())
    predictions = {p["id"]: p for p in map(json.loads, (trained.out / "predictions.jsonl").read_text().splitlines())}
    assert index and all(e["id"] in predictions for e in index)
    ctx = browser.new_context(viewport=LAPTOP)
    try:
        page = ctx.new_page()
        page.goto(trained.ui.page_url(f"/jobs/{trained.job_id}"))
        rows = page.locator("#worst tbody tr")
        assert rows.count() == len(predictions)
        checked = 0
        for i in range(rows.count()):
            row = rows.nth(i)
            split, name = row.locator('td[data-label="split"]').text_content(), row.locator("td code").first.text_content()
            uid = f"{split}/{name}"
            assert uid in predictions and not name.startswith(split + "/")  # the split once, in its own column
            entry = next((e for e in index if e["id"] == uid), None)
            audio = row.locator("audio")
            if entry is None:
                assert audio.count() == 0
                continue
            src = audio.get_attribute("src")
            assert src.endswith(f"/audio/{entry['file']}")
            body = ctx.request.get(trained.ui.page_url(src)).body()
            assert body == (trained.out / "worst_audio" / entry["file"]).read_bytes()
            duration = audio.evaluate("""a => new Promise((ok, bad) => {
                if (a.readyState >= 1) return ok(a.duration);
                a.addEventListener('loadedmetadata', () => ok(a.duration)); a.addEventListener('error', () => bad('error'));
                a.load(); })""")
            assert duration == pytest.approx(entry["duration_s"], abs=0.02), (uid, duration, entry)
            played = audio.evaluate("""a => { a.muted = true; return a.play().then(() => new Promise(ok =>
                setTimeout(() => { const t = a.currentTime; a.pause(); ok(t); }, 400))); }""")
            assert played > 0
            # the diff: the first substitution of the normalised reference and hypothesis, marked as one
            p = predictions[uid]
            ops = word_diff(p["reference_normalized"], p["prediction_normalized"])
            sub = next(((a, b) for op, a, b in ops if op == "sub"), None)
            if sub is not None:
                marked = row.locator(".diff .sub").first
                assert (marked.locator("del").text_content(), marked.locator("ins").text_content()) == sub
            checked += 1
        assert checked >= 1
        page.locator('#worst-tools button[data-sort="duration"]').click()
        durations = [float(d) for d in rows.evaluate_all("rs => rs.map(r => r.dataset.duration)")]
        assert durations == sorted(durations, reverse=True)
    finally:
        ctx.close()
