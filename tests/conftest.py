"""Every test gets its own $GPUJOB_HOME, so nothing touches ~/.gpujob."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def gpujob_home(tmp_path, monkeypatch):
    home = tmp_path / "gpujob-home"
    monkeypatch.setenv("GPUJOB_HOME", str(home))
    return home
