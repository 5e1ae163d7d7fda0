"""The dashboard's action against another origin (issue 29, finding 8): CSRF was double-submit only,
and cookies are not kept apart by port, so a page on another loopback port could plant the CSRF cookie
and post a matching field: it cancelled a job. A POST now also needs the dashboard's own origin by the
browser's word (Sec-Fetch-Site, Origin) and the job's full id. A world-readable ui-token is made 0600
again, with a warning."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st
from starlette.testclient import TestClient

from gpujob.ui.app import build
from gpujob.ui.security import Access, access_for, token_path
from gpujob_cli import GpujobCli
from polling import wait_for

OWN = "http://127.0.0.1:8080"
PLANTED = "p" * 32


@pytest.fixture
def cli(tmp_path) -> GpujobCli:
    return GpujobCli(tmp_path, {**os.environ})


def long_job(cli: GpujobCli) -> str:
    spec = cli.tmp / "long.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: long\ncommand: [{sys.executable}, -c, "
                    f"'import time; time.sleep(120)']\noutput: {{dir: {cli.tmp}/out}}\n")
    job_id = cli.submit(spec)
    wait_for(lambda: cli.status(job_id)["status"] == "running", timeout=30, what="the job to run")
    return job_id


def post_cancel(path: str, headers: dict[str, str]):
    """A POST as a page elsewhere would send it: its own (planted) CSRF cookie and the matching field."""
    with TestClient(build(Access(host="127.0.0.1")), base_url=OWN) as c:
        c.cookies.set("gpujob_csrf", PLANTED)
        return c.post(path, data={"confirm": "yes", "csrf": PLANTED}, headers=headers, follow_redirects=False)


def test_a_planted_cookie_and_field_from_another_loopback_port_do_not_cancel(cli):
    """The report's example: before, this cancelled the job (303)."""
    job_id = long_job(cli)
    try:
        r = post_cancel(f"/jobs/{job_id}/cancel", {"Origin": "http://127.0.0.1:9999", "Sec-Fetch-Site": "same-site"})
        assert r.status_code == 403 and "another site or origin" in r.text
        r = post_cancel(f"/jobs/{job_id}/cancel", {"Origin": "http://localhost:9999"})  # an older browser
        assert r.status_code == 403
        r = post_cancel(f"/jobs/{job_id[:3]}/cancel", {"Origin": OWN, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 404 and "full id" in r.text  # a prefix (or a name) names no job to act on
        assert cli.status(job_id)["status"] == "running"
        r = post_cancel(f"/jobs/{job_id}/cancel", {"Origin": OWN, "Sec-Fetch-Site": "same-origin"})
        assert r.status_code == 303 and cli.status(job_id)["status"] in ("cancelling", "cancelled")
    finally:
        cli.gpujob("cancel", job_id, "--grace", "1")


origins = st.one_of(st.none(), st.sampled_from([OWN, OWN + "/", "http://127.0.0.1:9999", "http://localhost:8080",
                                                 "https://127.0.0.1:8080", "null", "http://evil.example"]),
                    st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=30))
sites = st.one_of(st.none(), st.sampled_from(["same-origin", "none", "same-site", "cross-site", "SAME-ORIGIN"]),
                  st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=12))


@settings(max_examples=80, deadline=None)
@given(origin=origins, site=sites)
def test_a_post_gets_past_the_origin_check_only_from_the_dashboards_own_origin(origin, site):
    """The property: a POST is refused (403) whenever the browser says it came from elsewhere (any
    Sec-Fetch-Site but same-origin/none; without one, any Origin but the dashboard's own), and reaches
    the route otherwise (here a 404: no such job). The dashboard's own forms send Origin "null" (its
    no-referrer policy) with Sec-Fetch-Site: same-origin."""
    headers = {k: v for k, v in (("Origin", origin), ("Sec-Fetch-Site", site)) if v is not None}
    r = post_cancel("/jobs/zzzzzz/cancel", headers)
    said = (site or "").strip().lower()
    if said:  # a browser that says where it sends from (every current one): that decides
        allowed = said in ("same-origin", "none")
    else:     # an older browser: its Origin, when it sends one ("null" is not the dashboard's)
        allowed = origin is None or origin.strip().lower().rstrip("/") == OWN
    assert r.status_code == (404 if allowed else 403), (origin, site, r.status_code, r.text[:200])


def test_a_world_readable_ui_token_is_made_private_with_a_warning(tmp_path, capsys):
    first = access_for("0.0.0.0", insecure=True, home=tmp_path)
    path = token_path(tmp_path)
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    os.chmod(path, 0o644)
    again = access_for("0.0.0.0", insecure=True, home=tmp_path)
    assert again.token == first.token
    assert oct(path.stat().st_mode & 0o777) == oct(0o600)
    said = capsys.readouterr().err
    assert "was readable by other users (mode 0644); it is 0600 now" in said and again.token not in said
    access_for("0.0.0.0", insecure=True, home=tmp_path)
    assert "readable" not in capsys.readouterr().err  # once fixed, nothing to say
