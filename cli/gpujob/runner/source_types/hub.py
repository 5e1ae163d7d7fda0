"""A Hugging Face Hub dataset id, read by :mod:`..hub` (``datasets.load_dataset``)."""

from __future__ import annotations

from pathlib import Path

from ..hub import hf_parts


class Hub:
    name, label, local, audio_column = "hub", "Hub dataset", False, None

    def detect(self, path: Path) -> bool:
        return False  # what is left when `dataset` is no local directory

    def read(self, source, path, splits, *, streaming, key):
        return hf_parts(source, source.dataset, splits, streaming=streaming, key=key, local=False)


KIND = Hub()
