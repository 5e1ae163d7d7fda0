"""The dashboard over HTTP (Starlette's TestClient, in this process), on a registry holding real jobs
that ran on the local backend: what each page and API shows is checked against what the CLI says
about the same jobs (`gpujob status --json`, `gpujob logs --raw`), never against numbers written here."""

from __future__ import annotations

import json
import os
import re
import time
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import pytest
from starlette.testclient import TestClient

from gpujob.events import parse_line
from gpujob.registry import Registry
from gpujob.ui.app import build
from gpujob.ui.security import Access
from gpujob_cli import GpujobCli
from polling import wait_for

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "jobs" / "hello.yaml"
XSS = "<script>alert(1)</script>"
SECRET = "hf_UiSecretValue1234567890abcdef"


# ----------------------------------------------------------------------------- helpers


class Page(HTMLParser):
    """What a person sees on a page: text by element id, table rows by their data attribute, attributes."""

    def __init__(self, html: str) -> None:
        super().__init__(convert_charrefs=True)
        self.html = html
        self.by_id: dict[str, dict] = {}
        self.text_by_id: dict[str, str] = {}
        self.rows: dict[str, dict[str, str]] = {}      # data-job / data-host / data-key -> {cell class or #: text}
        self.tags: list[tuple[str, dict]] = []
        self._open: list[tuple[str, str | None]] = []   # (tag, id being collected)
        self._row: str | None = None
        self._cell: str | None = None
        self._cells = 0
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.tags.append((tag, a))
        if a.get("id"):
            self.by_id[a["id"]] = a
            self.text_by_id.setdefault(a["id"], "")
        if tag == "tr":
            self._row = a.get("data-job") or a.get("data-host") or a.get("data-key")
            self._cells = 0
            if self._row:
                self.rows[self._row] = {}
        if tag in ("td", "th") and self._row:
            self._cell = (a.get("class") or str(self._cells))
            self._cells += 1
            self.rows[self._row][self._cell] = ""
        if tag not in ("input", "meta", "link", "img", "br"):
            self._open.append((tag, a.get("id")))

    def handle_endtag(self, tag):
        while self._open:
            t, _ = self._open.pop()
            if t == tag:
                break
        if tag in ("td", "th"):
            self._cell = None
        if tag == "tr":
            self._row = None

    def handle_data(self, data):
        for _, ident in self._open:
            if ident:
                self.text_by_id[ident] += data
        if self._row and self._cell is not None:
            self.rows[self._row][self._cell] += data

    def text(self, ident: str) -> str:
        return " ".join(self.text_by_id[ident].split())


@pytest.fixture
def cli(tmp_path) -> GpujobCli:
    return GpujobCli(tmp_path, {**os.environ})


@pytest.fixture
def client() -> TestClient:
    with TestClient(build(Access(host="127.0.0.1")), base_url="http://127.0.0.1:8080") as c:
        yield c


def hello(cli: GpujobCli, *extra: str, steps: int = 30, step_time: float = 0.005, name: str = "hello",
          follow: bool = True, seed: int = 0, env: dict | None = None) -> str:
    command = (f"[python, -m, gpujob.demo, --steps, '{steps}', --step-time, '{step_time}', --eval-every, '10', "
               f"--seed, '{seed}', {', '.join(extra)}]" if extra else
               f"[python, -m, gpujob.demo, --steps, '{steps}', --step-time, '{step_time}', --eval-every, '10', --seed, '{seed}']")
    args = ["submit", str(HELLO), "--set", f"name={name}", "--set", f"command={command}",
            "--set", f"output.dir=out/{name}"]
    r = cli.gpujob(*args, *(["--follow"] if follow else []), env=env)
    assert r.returncode in (0, 1), r.stdout + r.stderr
    return re.search(r"job (\w{6})", r.stdout).group(1)


def raw_events(cli: GpujobCli, job_id: str) -> list[dict]:
    r = cli.gpujob("logs", job_id, "--raw")
    return [e for line in r.stdout.splitlines() for e in parse_line(line)]


def csrf_of(page: Page) -> str:
    return page.by_id["cancel"] and next(a["value"] for t, a in page.tags if t == "input" and a.get("name") == "csrf")


# ----------------------------------------------------------------------------- the jobs page


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_the_jobs_table_shows_what_status_says_and_filters_without_javascript(cli, client):
    done = hello(cli, name="done")
    failed = hello(cli, "--fail-at, '5'", name="broken")
    running = hello(cli, steps=4000, step_time=0.05, name="long", follow=False)
    try:
        page = Page(client.get("/").text)
        assert set(page.rows) >= {done, failed, running}
        for job_id in (done, failed):
            status = cli.status(job_id)
            row = page.rows[job_id]
            assert row["status"].strip() == status["status"]
            assert row["progress"].startswith(f"{round(status['progress'] * 100)}%")
            wer = status["eval"].get("wer") if status["eval"] else None
            assert row["wer"].strip() == ("-" if wer is None else f"{wer * 100:.2f}%")
            assert row["cost"].strip() == "unknown"  # no price for a local job without a price table
        # the filter form is a GET form: each filter is a URL a person can open without JavaScript
        form = page.by_id["filters"]
        assert form["method"] == "get"
        for name in ("status", "backend", "sweep"):
            assert any(t == "select" and a.get("name") == name for t, a in page.tags)
        only_failed = Page(client.get("/?status=failed").text)
        assert set(only_failed.rows) == {failed}
        only_active = Page(client.get("/?status=active").text)
        assert set(only_active.rows) == {running}
        assert Page(client.get("/?backend=docker").text).rows == {}
        api = client.get("/api/jobs?status=succeeded").json()["jobs"]
        assert [j["id"] for j in api] == [done]
        assert api[0]["status"] == "succeeded" and api[0]["progress"] == 1.0
    finally:
        cli.gpujob("cancel", running, "--grace", "1")


def test_the_jobs_table_filters_by_sweep(cli, client):
    r = cli.gpujob("sweep", str(HELLO), "--grid", "command.4='4','6'", "--set", "output.dir=out/sw", "--yes")
    assert r.returncode == 0, r.stdout + r.stderr
    sweep = re.search(r"sweep (\w+):", r.stdout).group(1)
    other = hello(cli, name="other")
    ids = {j["id"] for j in json.loads(cli.gpujob("list", "--sweep", sweep, "--json").stdout)}
    page = Page(client.get(f"/?sweep={sweep}").text)
    assert set(page.rows) == ids and other not in page.rows
    assert sweep in [a.get("value") for t, a in page.tags if t == "option"]


# ----------------------------------------------------------------------------- one job


def test_a_job_page_shows_spec_progress_log_and_curves_drawn_from_its_events(cli, client):
    job_id = hello(cli)
    status = cli.status(job_id)
    page = Page(client.get(f"/jobs/{job_id}").text)
    assert "name: hello" in page.text_by_id["spec"] and "gpujob.demo" in page.text_by_id["spec"]
    assert page.by_id["bar"]["value"] == str(status["progress"])
    assert page.text("step") == f"100% (step {status['step']}/{status['total_steps']})"
    assert page.text("loss") == f"{status['loss']:.4f}"
    assert page.text("wer") == f"{status['eval']['wer'] * 100:.2f}%"
    # the log tail: the job's own lines and its events in words, as `gpujob logs` prints them
    logs = cli.gpujob("logs", job_id).stdout.splitlines()
    assert page.text_by_id["log"].splitlines()[-5:] == logs[-5:]
    # the curves: the API is the registry's history, and the chart's series are the job's events
    points = client.get(f"/api/jobs/{job_id}/metrics").json()["points"]
    assert points == Registry().history(job_id)
    events = raw_events(cli, job_id)
    series = {s["label"]: s for s in json.loads(page.by_id["chart"]["data-series"])}
    progress = [e for e in events if e["event"] == "progress"]
    evals = [e for e in events if e["event"] == "eval"]
    assert series["train loss"]["steps"] == [e["step"] for e in progress]
    assert series["train loss"]["values"] == pytest.approx([e["loss"] for e in progress])
    assert series["wer"]["values"] == pytest.approx([e["wer"] * 100 for e in evals])
    assert page.by_id["chart"]["data-metrics"] == f"/api/jobs/{job_id}/metrics"
    # the picture for readers without JavaScript
    img = page.by_id["curves-png"]
    png = client.get(img["src"])
    assert png.headers["content-type"] == "image/png" and png.content.startswith(b"\x89PNG\r\n\x1a\n")
    assert img["alt"]
    # outputs: the demo's checkpoints, in the job's output folder
    assert "checkpoint-" in page.text_by_id["outputs"]
    assert "cancel" not in page.by_id  # nothing to cancel in a finished job


def test_a_failed_job_says_why_in_plain_words(cli, client):
    job_id = hello(cli, "--fail-at, '5'", name="broken")
    status = cli.status(job_id)
    assert status["status"] == "failed"
    page = Page(client.get(f"/jobs/{job_id}").text)
    assert status["reason"] and page.text("reason").endswith(" ".join(status["reason"].split()))
    assert client.get(f"/api/jobs/{job_id}").json()["reason"] == status["reason"]


def test_an_unknown_job_is_a_404_page_naming_it(client):
    r = client.get("/jobs/nosuch")
    assert r.status_code == 404 and "nosuch" in Page(r.text).text("error")
    assert client.get("/api/jobs/nosuch").status_code == 404


def _evaluate_job(tmp_path: Path, records: list[dict]) -> str:
    """An evaluate job's record as the runner leaves it: its predictions.jsonl in its output folder."""
    out = tmp_path / "eval-out"
    out.mkdir()
    (out / "predictions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    reg = Registry()
    job = reg.create(name="eval-el", kind="evaluate", backend="local", spec={"kind": "evaluate", "name": "eval-el"},
                     spec_path=None, output_dir=str(out))
    reg.transition(job.id, "running", started_at=time.time() - 5)
    reg.add_history(job.id, [{"event": "eval", "step": 0, "t": time.time(), "wer": 0.25, "cer": 0.1}])
    reg.transition(job.id, "succeeded")
    return job.id


def test_the_worst_utterances_come_from_predictions_worst_first_and_escaped(tmp_path, client):
    records = [{"id": f"u{i}", "source": "fleurs", "reference": f"reference {i}", "prediction": f"hypothesis {i}",
                "wer": wer} for i, wer in enumerate([0.1, 0.9, 0.0, 0.5])]
    records.append({"id": "x", "source": "fleurs", "reference": "plain", "prediction": XSS, "wer": 0.7})
    job_id = _evaluate_job(tmp_path, records)
    r = client.get(f"/jobs/{job_id}")
    page = Page(r.text)
    rows = [a for t, a in page.tags if t == "tr"]
    assert page.by_id["worst"] is not None
    table = r.text.split('id="worst"', 1)[1].split("</table>", 1)[0]
    cells = {label: [unescape(re.sub(r"<[^>]+>", "", c)) for c in
                     re.findall(rf'<td data-label="{label}"[^>]*>(.*?)</td>', table, re.S)]
             for label in ("utterance", "source", "reference", "hypothesis")}
    expected = sorted(records, key=lambda x: -x["wer"])
    assert cells["utterance"] == [x["id"] for x in expected]  # the source in its own column
    assert cells["source"] == ["fleurs"] * len(expected)
    assert cells["hypothesis"] == [x["prediction"] for x in expected]
    assert cells["reference"] == [x["reference"] for x in expected]
    assert XSS not in r.text and "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text
    assert rows


# ----------------------------------------------------------------------------- cancel, CSRF


def test_cancel_needs_the_csrf_token_asks_first_and_then_cancels(cli, client):
    job_id = hello(cli, steps=4000, step_time=0.05, name="long", follow=False)
    try:
        wait_for(lambda: cli.status(job_id)["status"] == "running", timeout=30, what="the job to run")
        page = Page(client.get(f"/jobs/{job_id}").text)
        form = page.by_id["cancel"]
        assert form["method"] == "post" and form["action"] == f"/jobs/{job_id}/cancel"
        assert "cancel-button" in page.by_id
        token = csrf_of(page)
        url = f"/jobs/{job_id}/cancel"
        assert client.post(url, data={"confirm": "yes"}).status_code == 403
        assert client.post(url, data={"confirm": "yes", "csrf": "x" * 32}).status_code == 403
        other = TestClient(build(Access(host="127.0.0.1")), base_url="http://127.0.0.1:8080")  # another browser
        assert other.post(url, data={"confirm": "yes", "csrf": token}).status_code == 403
        assert cli.status(job_id)["status"] == "running"
        # without JavaScript the button leads to the question, which has the form that cancels
        asked = client.post(url, data={"csrf": token}, follow_redirects=True)
        assert asked.status_code == 200 and "Cancel job" in asked.text
        confirm = Page(asked.text)
        assert next(a["value"] for t, a in confirm.tags if t == "input" and a.get("name") == "confirm") == "yes"
        assert cli.status(job_id)["status"] == "running"
        done = client.post(url, data={"csrf": token, "confirm": "yes"}, follow_redirects=False)
        assert done.status_code == 303 and done.headers["location"] == f"/jobs/{job_id}"
        assert cli.status(job_id)["status"] == "cancelled"
        assert client.post(url, headers={"X-CSRF-Token": token}, data={"confirm": "yes"}).status_code == 409
    finally:
        cli.gpujob("cancel", job_id, "--grace", "1")


def test_a_page_from_another_site_cannot_reach_the_dashboard_by_dns_rebinding():
    with TestClient(build(Access(host="127.0.0.1")), base_url="http://evil.example:8080") as c:
        assert c.get("/").status_code == 400
    with TestClient(build(Access(host="127.0.0.1")), base_url="http://localhost:8080") as c:
        assert c.get("/").status_code == 200


def test_off_loopback_every_request_needs_the_token():
    token = "t" * 40
    app = build(Access(host="0.0.0.0", token=token))
    with TestClient(app, base_url="http://192.0.2.7:8080") as c:
        for path in ("/", "/api/jobs", "/hosts", "/static/app.js", "/jobs/x/stream"):
            r = c.get(path)
            assert r.status_code == 401 and "token" in r.text, path
        assert c.get("/", headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert c.get("/api/jobs", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        # the printed URL: the token becomes an HttpOnly SameSite=Strict cookie and leaves the address
        r = c.get(f"/?token={token}&status=failed", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"] == "/?status=failed"
        cookie = r.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
        assert c.get("/").status_code == 200  # the cookie now
        assert c.post("/jobs/x/cancel", data={"confirm": "yes"}).status_code == 403  # and POSTs need CSRF


# ----------------------------------------------------------------------------- compare, hosts


def test_compare_shows_the_spec_differences_results_and_overlaid_curves(cli, client):
    a = hello(cli, name="a", seed=1)
    b = hello(cli, name="b", seed=2, steps=20)
    r = client.get(f"/compare?jobs={a},{b}")
    page = Page(r.text)
    cmd_a = Registry().get(a).spec.command
    cmd_b = Registry().get(b).spec.command
    differing = {f"command.{i}": (x, y) for i, (x, y) in enumerate(zip(cmd_a, cmd_b)) if x != y}
    assert differing and set(differing) | {"name", "output.dir"} == set(page.rows) - {a, b}
    for key, (x, y) in differing.items():
        assert [v.strip() for k, v in page.rows[key].items() if k != "0"] == [x, y]
    for job_id in (a, b):
        status = cli.status(job_id)
        assert page.rows[job_id]["2"].strip() == status["status"]
    assert page.by_id["curves-png"]["src"] == f"/compare/curves.png?jobs={a},{b}"
    assert client.get(f"/compare/curves.png?jobs={a},{b}").content.startswith(b"\x89PNG")
    labels = {s["label"] for s in json.loads(page.by_id["chart"]["data-series"])}
    assert {f"{a} train loss", f"{b} train loss", f"{a} wer", f"{b} wer"} <= labels
    assert set(client.get(f"/api/compare?jobs={a},{b}").json()["differences"]) == set(page.rows) - {a, b}


def test_the_hosts_page_shows_state_type_price_uptime_cost_and_agent(client):
    reg = Registry()
    launched = time.time() - 3600
    reg.add_host(name="a10-box", provider="lambda", instance_type="gpu_1x_a10", ssh_user="ubuntu", ssh_port=22,
                 state="ready", idle_minutes=15, price_cents_per_hour=75, launched_at=launched, instance_id="i-1",
                 heartbeat={"at": time.time(), "idle_for_s": 120, "activity": []}, heartbeat_seen_at=time.time())
    host = reg.get_host("a10-box")
    row = Page(client.get("/hosts").text).rows["a10-box"]
    assert row["state"] == "ready" and row["type"] == "gpu_1x_a10" and row["price"] == "$0.75"
    assert row["uptime"] in ("1h00m", "1h01m")
    assert row["cost"] == f"${host.cost_usd():.2f}"
    assert row["idle"] == "idle 2m00s of 15m00s" and row["agent"] == "ok"
    api = client.get("/api/hosts").json()["hosts"][0]
    assert api["name"] == "a10-box" and api["price_per_hour"] == 0.75


# ----------------------------------------------------------------------------- secrets and markup


def test_no_secret_and_no_live_markup_in_any_page_or_api(cli, tmp_path, client, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    spec = tmp_path / "leaky.yaml"
    spec.write_text(
        "apiVersion: gpujob/v1\nkind: command\nname: leaky\n"
        "command: [python, -c, \"import os; print('token', os.environ['HF_TOKEN']); print('<script>alert(1)</script>'); "
        "print('@gpujob/v1 ' + __import__('json').dumps({'event': 'end', 'status': 'failed', 'message': '<script>alert(1)</script> ' + os.environ['HF_TOKEN']}))\"]\n"
        "runtime: {backend: local, secrets: [HF_TOKEN]}\n")
    r = cli.gpujob("submit", str(spec), "--follow", env={"HF_TOKEN": SECRET})
    job_id = re.search(r"job (\w{6})", r.stdout).group(1)
    assert "***" in cli.gpujob("logs", job_id, "--raw").stdout  # the job did print it
    pages = ["/", f"/jobs/{job_id}", f"/jobs/{job_id}/cancel", f"/compare?jobs={job_id}", "/hosts",
             "/api/jobs", f"/api/jobs/{job_id}", f"/api/jobs/{job_id}/metrics", f"/api/compare?jobs={job_id}",
             "/api/hosts", f"/jobs/{job_id}/stream"]
    for path in pages:
        r = client.get(path)
        assert SECRET not in r.text, path
        assert XSS not in r.text, path  # escaped in HTML, \u003c in JSON
    page = client.get(f"/jobs/{job_id}").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in Page(page).html
    assert XSS in Page(page).text_by_id["log"]  # shown literally
    assert client.get(f"/api/jobs/{job_id}").json()["reason"] is not None


# ----------------------------------------------------------------------------- accessibility


def test_pages_have_landmarks_a_skip_link_labels_and_fit_a_phone(cli, client):
    job_id = hello(cli)
    for path in ("/", f"/jobs/{job_id}", f"/compare?jobs={job_id}", "/hosts"):
        r = client.get(path)
        page = Page(r.text)
        tags = [t for t, _ in page.tags]
        assert {"header", "nav", "main", "footer"} <= set(tags), path
        first_link = next(a for t, a in page.tags if t == "a")
        assert first_link["href"] == "#main" and "main" in page.by_id
        assert any(t == "meta" and a.get("name") == "viewport" for t, a in page.tags)
        labelled = {a.get("for") for t, a in page.tags if t == "label"}
        for t, a in page.tags:
            if t in ("select",) or (t == "input" and a.get("type") != "hidden"):
                assert a.get("id") in labelled or a.get("aria-label"), (path, a)
        # every data table scrolls sideways on a narrow screen rather than overflowing it
        assert r.text.count('<div class="table-wrap">') == r.text.count("<table"), path
    css = client.get("/static/app.css").text
    assert ":focus-visible" in css and "overflow-x: auto" in css and "@media (max-width" in css


# ----------------------------------------------------------------------------- not hammering the backends


def test_pages_polling_refresh_an_active_job_at_most_once_per_interval(monkeypatch, client):
    from gpujob.ui import views

    reg = Registry()
    running = reg.create(name="r", kind="command", backend="local", spec={}, spec_path=None, output_dir=None)
    reg.transition(running.id, "running", started_at=time.time())
    finished = reg.create(name="f", kind="command", backend="local", spec={}, spec_path=None, output_dir=None)
    reg.transition(finished.id, "succeeded")
    asked: list[str] = []
    monkeypatch.setattr(views.service, "refresh", lambda registry, job: asked.append(job.id) or job)
    refresher = views.Refresher(every_s=3600)
    for _ in range(5):  # five tabs polling at once
        refresher.jobs(reg, reg.list())
    assert asked == [running.id]
    assert views.REFRESH_EVERY_S <= 2.0 and views.Refresher().every_s == views.REFRESH_EVERY_S
