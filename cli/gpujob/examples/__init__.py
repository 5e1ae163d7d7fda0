"""The example job specs, shipped in the package so a wheel install has them: ``gpujob init`` writes
them out. They are copies of the repository's ``jobs/*.yaml`` (tests/spec/test_examples.py keeps them
equal)."""

from __future__ import annotations

from importlib import resources

SCHEMA_FILE = "job-spec.schema.json"
_REPO_SCHEMA = "$schema=../docs/job-spec.schema.json"


def names() -> list[str]:
    """The example files, hello first, then the quickstart, then the rest by name."""
    found = sorted(p.name for p in resources.files(__name__).iterdir() if p.name.endswith(".yaml"))
    first = [n for n in ("hello.yaml", "quickstart.yaml") if n in found]
    return first + [n for n in found if n not in first]


def text(name: str) -> str:
    """An example's text as written out: its editor schema line points at the schema beside it."""
    return resources.files(__name__).joinpath(name).read_text(encoding="utf-8").replace(
        _REPO_SCHEMA, f"$schema={SCHEMA_FILE}")
