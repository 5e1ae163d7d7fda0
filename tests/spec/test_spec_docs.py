"""Generated docs are current, and every example job in jobs/ loads and points editors at the schema."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from gpujob.spec import json_schema, load_spec, reference_markdown

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "out of date; run `python scripts/gen_spec_docs.py`"
JOBS = sorted((ROOT / "jobs").glob("*.yaml"))
MODELINE = re.compile(r"^# yaml-language-server: \$schema=(\S+)\s*$", re.MULTILINE)


def test_markdown_reference_is_current():
    assert (ROOT / "docs" / "job-spec.md").read_text(encoding="utf-8") == reference_markdown(), \
        f"docs/job-spec.md is {REGENERATE}"


def test_json_schema_is_current():
    assert (ROOT / "docs" / "job-spec.schema.json").read_text(encoding="utf-8") == \
        json.dumps(json_schema(), indent=2) + "\n", f"docs/job-spec.schema.json is {REGENERATE}"


def test_schema_uses_yaml_key_names():
    schema = json_schema()
    assert schema["$schema"].startswith("https://json-schema.org/") and schema["title"]
    assert "apiVersion" in schema["properties"] and "api_version" not in schema["properties"]
    assert schema["required"] == ["apiVersion", "kind"]
    assert schema["additionalProperties"] is False


def test_reference_documents_every_key():
    text = reference_markdown()
    for key in ("`apiVersion`", "`training.learning_rate`", "`data.streaming`", "`runtime.secrets`",
                "`limits.max_runtime`", "`resources.memory`", "`text_column`", "`training.freeze.encoder_layers`"):
        assert key in text
    for section in ("model", "data", "training", "evaluation", "output", "resources", "runtime", "limits"):
        assert f"\n## {section}\n" in text


def test_there_are_example_jobs():
    names = {p.name for p in JOBS}
    assert {"train-el-small.yaml", "eval-el.yaml"} <= names


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_example_job_loads(path):
    loaded = load_spec(path)  # interpolation uses os.environ, as `gpujob submit` would
    assert loaded.spec.name


@pytest.mark.parametrize("path", JOBS, ids=[p.name for p in JOBS])
def test_example_job_has_schema_modeline(path):
    text = path.read_text(encoding="utf-8")
    assert text.startswith(f"# gpujob submit jobs/{path.name}"), "first line should be the command that runs it"
    match = MODELINE.search(text)
    assert match, "missing `# yaml-language-server: $schema=../docs/job-spec.schema.json`"
    assert (path.parent / match.group(1)).resolve().is_file(), f"modeline points to a missing file: {match.group(1)}"


def test_the_readme_layout_names_every_module_of_the_package():
    """The README's layout section cannot drift from the package again (issue 16)."""
    import re

    readme = (ROOT / "README.md").read_text()
    block = readme.split("\nLayout:\n", 1)[1].split("\n```\n", 2)[1]
    named = set(re.findall(r"[A-Za-z_][A-Za-z0-9_]*", block))
    package = ROOT / "cli" / "gpujob"
    missing = sorted(str(p.relative_to(package)) for p in package.rglob("*.py")
                     if p.stem not in ("__init__", "__main__") and p.stem not in named)
    folders = sorted(str(p.relative_to(package)) for p in package.iterdir()
                     if p.is_dir() and (p / "__init__.py").exists() and f"{p.name}/" not in block)
    assert not missing and not folders, f"add to the README's layout section: {missing + folders}"
