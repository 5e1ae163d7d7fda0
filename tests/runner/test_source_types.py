"""Data source types, registered in one table (gpujob/spec/source_types.py, one reader module each in
gpujob/runner/source_types/): a source without `type:` is detected as before, in the table's order; a
`type:` given is checked against the table (with a did-you-mean) and against the directory it names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gpujob.runner.source_parts import DataError
from gpujob.runner.source_types import SOURCE_KINDS, detect
from gpujob.runner.sources import open_source
from gpujob.spec import SpecError, load_spec_text
from gpujob.spec.source_types import SOURCE_TYPES

EVAL = "apiVersion: gpujob/v1\nkind: evaluate\ndata:\n  eval: [{dataset: %s, split: test%s}]\n"


def source(dataset: Path | str, type_: str | None = None):
    extra = f", type: {type_}" if type_ else ""
    return load_spec_text(EVAL % (dataset, extra), "jobs/t.yaml").spec.data.eval[0]


def cv_dir(root: Path) -> Path:
    (root / "clips").mkdir(parents=True)
    (root / "test.tsv").write_text("path\tsentence\na.mp3\tγεια\n", encoding="utf-8")
    return root


def audio_folder(root: Path) -> Path:
    (root / "test").mkdir(parents=True)
    (root / "test" / "metadata.csv").write_text("file_name,transcription\na.wav,γεια\n", encoding="utf-8")
    return root


def manifests(root: Path, **lines: list[dict]) -> Path:
    root.mkdir(parents=True)
    for split, rows in (lines or {"test": [{"audio": "clips/a.wav", "text": "γεια"}]}).items():
        (root / f"{split}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return root


def test_the_runner_table_is_the_spec_table_in_its_order():
    assert list(SOURCE_KINDS) == list(SOURCE_TYPES) == ["common_voice", "audiofolder", "jsonl", "local_dataset", "hub"]
    assert all(kind.name == name for name, kind in SOURCE_KINDS.items())


def test_each_local_type_is_detected_and_read(tmp_path):
    made = {"common_voice": cv_dir(tmp_path / "cv"), "audiofolder": audio_folder(tmp_path / "af"),
            "jsonl": manifests(tmp_path / "js")}
    for name, path in made.items():
        assert detect(path).name == name
        opened = open_source(source(path), streaming=False, key="data.eval[0]")
        assert opened.kind == name and opened.num_rows == 1
        [record] = opened.records()
        assert record.text == "γεια" and Path(record.audio).name in ("a.mp3", "a.wav")
    assert detect(tmp_path).name == "common_voice"  # one Common Voice language folder inside: that one, as before
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.jsonl").write_text('["not", "an object"]\n')
    assert detect(tmp_path / "other") is None


def test_a_jsonl_clip_path_is_relative_to_its_manifest_and_other_keys_are_columns(tmp_path):
    root = manifests(tmp_path / "m", test=[{"audio": "clips/a.wav", "text": "ένα", "speaker": "s1"},
                                           {"audio": "/abs/b.wav", "text": "δύο"}])
    opened = open_source(source(root, "jsonl"), streaming=False, key="data.eval[0]")
    assert opened.columns == ["audio", "text", "speaker"] and opened.text_column == "text"
    assert [(r.id, r.audio, r.text) for r in opened.records()] == [
        ("test/clips/a.wav", root / "clips/a.wav", "ένα"), ("test//abs/b.wav", Path("/abs/b.wav"), "δύο")]


def test_an_unknown_type_is_refused_by_the_spec_with_a_did_you_mean():
    with pytest.raises(SpecError) as info:
        source("google/fleurs", "jsnol")
    message = str(info.value)
    assert "data.eval[0].type" in message and "did you mean jsonl?" in message and "audiofolder" in message


def test_a_type_that_does_not_match_the_directory_says_what_it_looks_like(tmp_path):
    root = audio_folder(tmp_path / "af")
    with pytest.raises(DataError) as info:
        open_source(source(root, "common_voice"), streaming=False, key="data.eval[0]")
    assert info.value.key == "data.eval[0].type"
    assert "is not a Common Voice corpus dir" in info.value.message and "(type: audiofolder)" in info.value.message


def test_a_jsonl_manifest_with_a_broken_line_or_a_missing_split_names_it(tmp_path):
    root = manifests(tmp_path / "m")
    (root / "test.jsonl").write_text('{"audio": "a.wav", "text": "x"}\n{"audio": "b.wav", "text": \n')
    with pytest.raises(DataError) as info:
        open_source(source(root, "jsonl"), streaming=False, key="data.eval[0]")
    assert f"{root / 'test.jsonl'}:2: not a JSON line" in info.value.message
    (root / "test.jsonl").rename(root / "train.jsonl")
    with pytest.raises(DataError) as info:
        open_source(source(root, "jsonl"), streaming=False, key="data.eval[0]")
    assert info.value.key == "data.eval[0].split" and "splits found: train" in info.value.message


def test_a_jsonl_manifest_without_the_audio_key_is_refused_with_the_columns_it_has(tmp_path):
    root = manifests(tmp_path / "m", test=[{"path": "a.wav", "text": "x"}])
    with pytest.raises(DataError) as info:
        open_source(source(root, "jsonl"), streaming=False, key="data.eval[0]")
    assert info.value.key == "data.eval[0].audio_column" and "columns that exist: path, text" in info.value.message
