"""Every test gets its own $GPUJOB_HOME, so nothing touches ~/.gpujob."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def gpujob_home(tmp_path, monkeypatch):
    home = tmp_path / "gpujob-home"
    monkeypatch.setenv("GPUJOB_HOME", str(home))
    return home


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    """Nothing here may reach the Hugging Face Hub (there is no network); say so to the libraries."""
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.setenv(var, "1")
