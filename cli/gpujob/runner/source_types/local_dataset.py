"""A local parquet/arrow dataset dir, or what ``datasets``' ``save_to_disk`` wrote; read by :mod:`..hub`."""

from __future__ import annotations

from pathlib import Path

from ..hub import hf_parts


class LocalDataset:
    name, label, local, audio_column = "local_dataset", "local dataset", True, None

    def detect(self, path: Path) -> bool:
        if (path / "dataset_dict.json").is_file() or (path / "state.json").is_file():
            return True
        return any(next(path.rglob(pattern), None) is not None for pattern in ("*.parquet", "*.arrow"))

    def read(self, source, path, splits, *, streaming, key):
        return hf_parts(source, str(path), splits, streaming=streaming, key=key, local=True)


KIND = LocalDataset()
