"""The vendored front-end files are the ones recorded (version, source and sha256) in their README, and
the pages load nothing from elsewhere (no CDN: the dashboard works offline, and its CSP allows only itself)."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

UI = Path(__file__).resolve().parents[2] / "cli" / "gpujob" / "ui"
VENDOR = UI / "static" / "vendor"


def test_the_committed_vendor_files_match_their_recorded_sha256():
    recorded = dict((path, digest) for digest, path in
                    re.findall(r"^([0-9a-f]{64})  (\S+)$", (VENDOR / "README.md").read_text(), flags=re.M))
    on_disk = {str(p.relative_to(VENDOR)) for p in VENDOR.rglob("*") if p.is_file() and p.name != "README.md"}
    assert recorded and set(recorded) == on_disk, "record every vendored file (and only those) in vendor/README.md"
    for path, digest in recorded.items():
        assert hashlib.sha256((VENDOR / path).read_bytes()).hexdigest() == digest, path


def test_the_pages_load_scripts_and_styles_only_from_the_dashboard():
    for template in (UI / "templates").glob("*.html"):
        for ref in re.findall(r'(?:src|href)="([^"{]+)"', template.read_text()):
            assert not re.match(r"(https?:)?//", ref), f"{template.name} loads {ref} from elsewhere"
        assert "<script>" not in template.read_text(), f"{template.name}: inline script (the CSP forbids it)"
