#!/usr/bin/env python3
"""Regenerate docs/job-spec.md and docs/job-spec.schema.json from the spec models.

Usage: python scripts/gen_spec_docs.py [--check]
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "cli"))

from gpujob.spec.reference import reference_markdown, schema_text  # noqa: E402

TARGETS = {ROOT / "docs" / "job-spec.md": reference_markdown, ROOT / "docs" / "job-spec.schema.json": schema_text}


def main(argv: list[str]) -> int:
    check = "--check" in argv
    stale = []
    for path, render in TARGETS.items():
        text = render()
        if path.exists() and path.read_text(encoding="utf-8") == text:
            continue
        stale.append(path.relative_to(ROOT))
        if not check:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
    for path in stale:
        print(f"{'out of date' if check else 'wrote'}: {path}")
    return 1 if check and stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
