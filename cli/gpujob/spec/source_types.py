"""The data source types, by the name a source's ``type:`` takes: the one table of them.

Each name is a module of :mod:`gpujob.runner.source_types` (its reader: ``detect(path)`` and ``read(...)``);
the spec only checks a ``type:`` against these names, so it needs nothing of the runner. Their order
is the order detection tries them in when a source has no ``type:`` (a Hub id is what is left when no
local directory is found). To add a type: its module there, and its line here (README, "Adding a
tracker or a data source type").
"""

from __future__ import annotations

SOURCE_TYPES: dict[str, str] = {
    "common_voice": "a Common Voice corpus dir: `clips/` and `<split>.tsv` (or one language folder of them)",
    "audiofolder": "an audio folder: `metadata.csv` (or `.jsonl`) with `file_name` and a transcript, per split "
                   "folder",
    "jsonl": "a folder of JSON-lines manifests, `<split>.jsonl`: one clip a line, its `audio` (a path relative "
             "to the manifest) and `text`",
    "local_dataset": "a local dataset dir: parquet/arrow files, or what datasets' save_to_disk wrote",
    "hub": "a Hugging Face Hub dataset id",
}
