"""gpujob.runner.data on real (libespeak-ng) speech: Common Voice dir + audio folder + local parquet, mixed."""

from __future__ import annotations

import csv
import hashlib
import io
from collections import Counter
from pathlib import Path

import pytest

np = pytest.importorskip("numpy")
sf = pytest.importorskip("soundfile")
datasets = pytest.importorskip("datasets")

pytest.importorskip("espeakng_loader", reason="needs espeakng-loader (make install)")

from gpujob_dev import greek_speech  # noqa: E402
from gpujob.runner.audio import to_mono_16k  # noqa: E402
from gpujob.runner.data import DataError, Stats, iter_examples, load_audio, open_source  # noqa: E402
from gpujob.runner.preflight import preflight  # noqa: E402
from gpujob.spec import load_spec_text  # noqa: E402

CV_COLUMNS = greek_speech.CV_COLUMNS
N_TRAIN, N_DEV, N_FOLDER, N_PARQUET = 6, 4, 10, 10


def _spec(data_yaml: str, training: str = "{max_steps: 10}"):
    text = f"apiVersion: gpujob/v1\nkind: train\ntraining: {training}\ndata:\n{data_yaml}"
    return load_spec_text(text).spec


def _sources(data_yaml: str):
    return _spec(data_yaml).data.train


def _write_cv(root: Path, splits: dict[str, list[tuple[str, str | None]]], clips: dict[str, np.ndarray]) -> Path:
    """splits: tsv name -> [(clip name, sentence)]; clips: name -> 16 kHz audio written as 48 kHz mp3."""
    (root / "clips").mkdir(parents=True, exist_ok=True)
    for name, audio in clips.items():
        up = to_mono_16k(audio, 16000, target_sr=48000)
        sf.write(root / "clips" / name, up, 48000, format="MP3", subtype="MPEG_LAYER_III")
    for split, rows in splits.items():
        with open(root / f"{split}.tsv", "w", encoding="utf-8", newline="") as f:
            f.write("\t".join(CV_COLUMNS) + "\n")
            for i, (path, sentence) in enumerate(rows):
                values = {"client_id": f"{i:064x}", "path": path, "sentence": sentence or "", "up_votes": "2",
                          "down_votes": "0", "locale": "el"}
                f.write("\t".join(values.get(c, "") for c in CV_COLUMNS) + "\n")
    return root


def _write_folder(folder: Path, rows: list[tuple[str, str, np.ndarray]], text_column: str = "transcription") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "metadata.csv", "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", text_column, "speaker"])
        for name, text, audio in rows:
            sf.write(folder / name, audio.astype(np.float64), 16000, subtype="DOUBLE")
            writer.writerow([name, text, "espeak"])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """Three small real-speech sources; returns paths and the expected (text, samples) per source."""
    root = tmp_path_factory.mktemp("data")
    sentences = greek_speech.load_sentences()
    speech = {}
    for i, text in enumerate(sentences[: N_TRAIN + N_DEV + N_FOLDER + N_PARQUET]):
        speech[text] = greek_speech.synthesize(text, speed=150 + (i * 7) % 40, pitch=35 + (i * 11) % 30)
    texts = list(speech)
    cv_texts, folder_texts, pq_texts = (texts[: N_TRAIN + N_DEV], texts[N_TRAIN + N_DEV: -N_PARQUET],
                                        texts[-N_PARQUET:])
    clip_names = {t: f"common_voice_el_{100 + i}.mp3" for i, t in enumerate(cv_texts)}
    cv = _write_cv(root / "cv-corpus-el", {
        "train": [(clip_names[t], t) for t in cv_texts[:N_TRAIN]],
        "dev": [(clip_names[t], t) for t in cv_texts[N_TRAIN:]],
        "validated": [(clip_names[t], t) for t in cv_texts],
    }, {clip_names[t]: speech[t] for t in cv_texts})
    folder = root / "greek-folder"
    _write_folder(folder / "train", [(f"clip_{i:02d}.wav", t, speech[t]) for i, t in enumerate(folder_texts)])
    _write_folder(folder / "heldout", [("held_00.wav", "Μία πρόταση για έλεγχο.", speech[folder_texts[0]])])
    pq_dir = root / "parquet-ds"
    pq_dir.mkdir()
    rows = []
    for i, t in enumerate(pq_texts):
        buf = io.BytesIO()
        sf.write(buf, speech[t], 16000, format="FLAC")
        rows.append({"bytes": buf.getvalue(), "path": f"pq_{i:02d}.flac"})
    ds = datasets.Dataset.from_dict({"audio": rows, "transcription": pq_texts,
                                     "speaker_id": list(range(len(pq_texts)))})
    ds.cast_column("audio", datasets.Audio(decode=False)).to_parquet(str(pq_dir / "train.parquet"))
    expected = {
        str(cv): {t: len(speech[t]) for t in cv_texts},
        str(folder): {t: len(speech[t]) for t in folder_texts},
        str(pq_dir): {t: len(speech[t]) for t in pq_texts},
    }
    return {"root": root, "cv": cv, "folder": folder, "parquet": pq_dir, "expected": expected, "speech": speech,
            "clip_names": clip_names, "texts": texts}


@pytest.fixture(scope="module", autouse=True)
def _datasets_cache(tmp_path_factory):
    """Keep datasets' Arrow cache in a temporary directory."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf-cache")))
        yield


def _mix_yaml(c, w=(1, 1, 1)) -> str:
    return (f"  train:\n"
            f"    - {{dataset: '{c['cv']}', split: train+dev, weight: {w[0]}}}\n"
            f"    - {{dataset: '{c['folder']}', weight: {w[1]}}}\n"
            f"    - {{dataset: '{c['parquet']}', weight: {w[2]}}}\n")


def _signature(examples) -> Counter:
    return Counter((e["source"], e["id"], e["text"], hashlib.sha1(e["audio"].tobytes()).hexdigest())
                   for e in examples)


def test_mix_yields_every_example_of_every_source_once(corpus):
    stats = Stats()
    out = list(iter_examples(_sources(_mix_yaml(corpus)), streaming=False, seed=3, stats=stats))
    assert len(out) == N_TRAIN + N_DEV + N_FOLDER + N_PARQUET
    assert len({(e["source"], e["id"]) for e in out}) == len(out)
    by_source = Counter(e["source"] for e in out)
    assert by_source == {str(corpus["cv"]): N_TRAIN + N_DEV, str(corpus["folder"]): N_FOLDER,
                         str(corpus["parquet"]): N_PARQUET}
    names = {str(corpus[k]): Path(corpus[k]).name for k in ("cv", "folder", "parquet")}  # source_names()
    assert {(e["source"], e["source_name"]) for e in out} == set(names.items())
    for e in out:
        assert set(e) == {"audio", "text", "source", "id", "n", "source_name"}
        assert e["audio"].dtype == np.float32 and e["audio"].ndim == 1
        expected = corpus["expected"][e["source"]][e["text"]]  # the exact transcript, 16 kHz length
        assert abs(len(e["audio"]) - expected) <= 0.01 * expected + 16
    assert stats.kept == len(out) and stats.seen == len(out) and stats.bad_audio == 0
    assert stats.per_source[str(corpus["parquet"])].kept == N_PARQUET
    assert stats.audio_seconds == pytest.approx(sum(len(e["audio"]) for e in out) / 16000)
    cv_ids = {e["id"] for e in out if e["source"] == str(corpus["cv"])}
    assert cv_ids == set(corpus["clip_names"].values())
    assert [e["n"] for e in out] == list(range(len(out)))  # places in the stream, in order


def test_weights_change_order_not_totals(corpus):
    even = list(iter_examples(_sources(_mix_yaml(corpus)), streaming=False, seed=5))
    heavy = list(iter_examples(_sources(_mix_yaml(corpus, (1, 1, 20))), streaming=False, seed=5))
    assert _signature(even) == _signature(heavy)
    assert [e["source"] for e in even] != [e["source"] for e in heavy]
    first = Counter(e["source"] for e in heavy[:N_PARQUET])
    assert first[str(corpus["parquet"])] >= 7  # weight 20 of 22: parquet comes out first
    again = list(iter_examples(_sources(_mix_yaml(corpus, (1, 1, 20))), streaming=False, seed=5))
    assert [(e["source"], e["id"]) for e in again] == [(e["source"], e["id"]) for e in heavy]


def test_stop_first_exhausted(corpus):
    out = list(iter_examples(_sources(_mix_yaml(corpus, (1, 1, 50))), streaming=False, seed=1,
                             stop="first_exhausted"))
    assert Counter(e["source"] for e in out)[str(corpus["parquet"])] == N_PARQUET
    assert len(out) < N_TRAIN + N_DEV + N_FOLDER + N_PARQUET


def test_streaming_and_not_give_the_same_examples(corpus):
    sources = _sources(_mix_yaml(corpus))
    eager = list(iter_examples(sources, streaming=False, seed=11))
    lazy = list(iter_examples(sources, streaming=True, seed=11))
    assert _signature(eager) == _signature(lazy) and len(lazy) == N_TRAIN + N_DEV + N_FOLDER + N_PARQUET


def test_splits_join_with_plus_and_aliases(corpus):
    cv = corpus["cv"]

    def count(split: str) -> int:
        return len(list(iter_examples(_sources(f"  train: [{{dataset: '{cv}', split: '{split}'}}]"),
                                      streaming=False, seed=0)))

    assert (count("train"), count("dev"), count("validation"), count("train+dev")) == (
        N_TRAIN, N_DEV, N_DEV, N_TRAIN + N_DEV)
    assert count("validated") == N_TRAIN + N_DEV
    folder = corpus["folder"]
    both = list(iter_examples(_sources(f"  train: [{{dataset: '{folder}', split: train+heldout}}]"),
                              streaming=True, seed=0))
    assert len(both) == N_FOLDER + 1 and any(e["id"] == "heldout/held_00.wav" for e in both)
    with pytest.raises(DataError) as info:
        open_source(_sources(f"  train: [{{dataset: '{cv}', split: train+bogus}}]")[0], streaming=False)
    assert info.value.key == "data.train[0].split" and "dev" in str(info.value)
    with pytest.raises(DataError) as info:
        open_source(_sources(f"  train: [{{dataset: '{corpus['parquet']}', split: test}}]")[0], streaming=True)
    assert info.value.key == "data.train[0].split"


def test_missing_text_column_suggests_existing_columns(corpus):
    sources = _sources(f"  train:\n    - {{dataset: '{corpus['cv']}'}}\n"
                       f"    - {{dataset: '{corpus['parquet']}', text_column: transcript}}\n")
    with pytest.raises(DataError) as info:
        list(iter_examples(sources, streaming=False, seed=0))
    msg = str(info.value)
    assert info.value.key == "data.train[1].text_column" and msg.startswith("data.train[1].text_column: ")
    assert "did you mean 'transcription'" in msg and "speaker_id" in msg and "audio" in msg


def test_autodetect_failure_lists_columns(tmp_path, corpus):
    speech = next(iter(corpus["speech"].values()))
    _write_folder(tmp_path / "words", [("a.wav", "Καλημέρα σε όλους εδώ.", speech)], text_column="Sentence")
    with pytest.raises(DataError) as info:
        open_source(_sources(f"  train: [{{dataset: '{tmp_path / 'words'}'}}]")[0], streaming=False)
    msg = str(info.value)
    assert info.value.key == "data.train[0].text_column"
    assert "did you mean 'Sentence'" in msg and "file_name, Sentence, speaker" in msg
    assert "Traceback" not in msg


def test_too_long_and_empty_transcripts_are_dropped_and_counted(tmp_path, corpus):
    speech = list(corpus["speech"].values())
    long_clip = np.concatenate([speech[0], np.zeros(31 * 16000, dtype=np.float32)])
    rows = [(f"ok_{i}.wav", t, speech[i]) for i, t in enumerate(corpus["texts"][:4])]
    rows += [("long.wav", "Αυτό το κομμάτι είναι πολύ μεγάλο.", long_clip), ("empty.wav", "   ", speech[5])]
    _write_folder(tmp_path / "filtered" / "train", rows)
    stats = Stats()
    out = list(iter_examples(_sources(f"  train: [{{dataset: '{tmp_path / 'filtered'}'}}]"),
                             streaming=False, seed=0, stats=stats))
    assert len(out) == 4 and all(e["text"].strip() == e["text"] and e["text"] for e in out)
    assert (stats.kept, stats.too_long, stats.empty_text, stats.bad_audio) == (4, 1, 1, 0)
    per = stats.per_source[str(tmp_path / "filtered")]
    assert (per.kept, per.too_long, per.empty_text, per.seen) == (4, 1, 1, 6)


def test_corrupt_mp3_is_skipped_and_counted_then_too_many_raise(tmp_path, corpus):
    speech = corpus["speech"]
    texts = corpus["texts"][:10]
    clips = {f"c_{i}.mp3": speech[t] for i, t in enumerate(texts)}
    cv = _write_cv(tmp_path / "cv", {"train": [(f"c_{i}.mp3", t) for i, t in enumerate(texts)]
                                     + [("broken.mp3", "Το αρχείο αυτό είναι χαλασμένο.")]}, clips)
    (cv / "clips" / "broken.mp3").write_bytes(b"not an mp3 at all, only some text\n" * 100)
    sources = _sources(f"  train: [{{dataset: '{cv}'}}]")
    stats = Stats()
    out = list(iter_examples(sources, streaming=False, seed=0, stats=stats, max_bad_share=0.2))
    assert len(out) == 10 and stats.bad_audio == 1 and stats.kept == 10
    assert stats.bad_paths == [str(cv / "clips" / "broken.mp3")]
    assert stats.per_source[str(cv)].bad_paths == stats.bad_paths
    with pytest.raises(DataError) as info:  # 1 of 11 is over the default 5%: raised at the end
        list(iter_examples(sources, streaming=False, seed=0))
    assert "1 of 11" in str(info.value) and "broken.mp3" in str(info.value) and info.value.key == "data.train[0]"


def test_bad_share_raises_early_after_twenty_clips(tmp_path, corpus):
    speech = corpus["speech"]
    texts = corpus["texts"][:3]
    rows = [(f"missing_{i}.mp3", f"Πρόταση αριθμός {i} χωρίς αρχείο ήχου.") for i in range(22)]
    rows += [(f"c_{i}.mp3", t) for i, t in enumerate(texts)] * 20  # many good rows after the bad ones
    cv = _write_cv(tmp_path / "cv", {"train": rows}, {f"c_{i}.mp3": speech[t] for i, t in enumerate(texts)})
    stats = Stats()
    with pytest.raises(DataError) as info:
        list(iter_examples(_sources(f"  train: [{{dataset: '{cv}'}}]"), streaming=True, seed=0, stats=stats))
    assert stats.seen == 20  # stopped as soon as 20 clips were read, not at the end
    msg = str(info.value)
    assert "20 of 20" in msg and "missing_0.mp3" in msg and "Traceback" not in msg


def test_preflight_on_a_good_spec(corpus):
    spec = _spec(_mix_yaml(corpus) + f"  eval:\n    - {{dataset: '{corpus['folder']}', split: heldout}}\n",
                 training="{max_steps: 10, per_device_batch_size: 4, gradient_accumulation_steps: 2}")
    report = preflight(spec, sample=5)
    assert report.ok, report.format()
    assert [r.key for r in report.sources] == ["data.train[0]", "data.train[1]", "data.train[2]", "data.eval[0]"]
    assert [r.rows for r in report.sources] == [N_TRAIN + N_DEV, N_FOLDER, N_PARQUET, 1]
    assert [r.stats.seen for r in report.sources] == [5, 5, 5, 1]
    assert [r.text_column for r in report.sources] == ["sentence", "transcription", "transcription", "transcription"]
    assert report.examples_per_epoch == N_TRAIN + N_DEV + N_FOLDER + N_PARQUET
    assert report.effective_batch_size == 8 and report.steps_per_epoch == 4
    assert all(r.labels_over_decoder == 0 and "characters/2" in r.label_method for r in report.sources)
    text = report.format()
    assert "OK" in text and text.count("data.train[") == 3 and "data.eval[0]" in text and "steps per epoch ~4" in text


def test_preflight_counts_tokens_with_a_tokenizer_and_flags_long_labels(tmp_path, corpus):
    speech = next(iter(corpus["speech"].values()))
    _write_folder(tmp_path / "long-labels", [("a.wav", "λέξη " * 500, speech), ("b.wav", "Καλημέρα.", speech)])
    spec = _spec(f"  train: [{{dataset: '{tmp_path / 'long-labels'}'}}]")

    def tokenizer(text):
        return {"input_ids": text.split()}

    report = preflight(spec, tokenizer=tokenizer)
    rep = report.sources[0]
    assert report.ok and rep.label_method == "tokenizer" and rep.longest_label == 500
    assert rep.labels_over_decoder == 1 and rep.labels_over_generation == 1
    assert any("448-token" in w for w in report.warnings)
    assert any(w.startswith("training.generation_max_length") for w in report.warnings)


def test_preflight_reports_errors_with_spec_keys(tmp_path, corpus):
    spec = _spec(f"  train:\n    - {{dataset: '{corpus['cv']}'}}\n"
                 f"    - {{dataset: '{corpus['parquet']}', text_column: sentense}}\n"
                 f"    - {{dataset: ./no/such/dir}}\n")
    report = preflight(spec, sample=3)
    assert not report.ok
    assert any(e.startswith("data.train[1].text_column:") for e in report.errors)
    assert any(e.startswith("data.train[2].dataset:") and "not found" in e for e in report.errors)
    assert report.examples_per_epoch is None and "FAILED" in report.format()


@pytest.fixture
def offline(monkeypatch):
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True, raising=False)


@pytest.mark.parametrize("streaming", [False, True])
def test_unreachable_hub_dataset_gives_a_clear_error(offline, streaming):
    sources = _sources("  train: [{dataset: google/fleurs, config: el_gr, split: train, "
                       "revision: refs/convert/parquet}]")
    with pytest.raises(DataError) as info:
        list(iter_examples(sources, streaming=streaming, seed=0))
    msg = str(info.value)
    assert info.value.key == "data.train[0].dataset"
    assert "google/fleurs" in msg and "could not be reached" in msg and "HF_TOKEN" in msg and "local copy" in msg
    assert "Traceback" not in msg and "File \"" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_preflight_unreachable_hub_source(offline, corpus):
    spec = _spec(f"  train: [{{dataset: '{corpus['folder']}'}}]\n"
                 "  eval: [{dataset: someone/greek-speech, split: test}]\n  streaming: true\n")
    report = preflight(spec, sample=2)
    assert not report.ok and len(report.errors) == 1
    assert report.errors[0].startswith("data.eval[0].dataset:") and "could not be reached" in report.errors[0]
    assert report.examples_per_epoch == N_FOLDER and "not readable" in report.format()


def test_epochs_need_a_known_size(offline):
    spec = load_spec_text("apiVersion: gpujob/v1\nkind: train\ntraining: {epochs: 2}\ndata:\n  streaming: true\n"
                          "  train: [{dataset: someone/greek-speech}]\n").spec
    report = preflight(spec, sample=1)
    assert any(e.startswith("data.train[0].dataset") for e in report.errors)


def test_load_audio_values():
    tone = (np.sin(np.arange(48000) / 10) * 20000).astype(np.int16)
    out = load_audio({"array": tone, "sampling_rate": 48000})
    assert out.dtype == np.float32 and len(out) == 16000 and np.abs(out).max() <= 1
    buf = io.BytesIO()
    sf.write(buf, tone, 48000, format="WAV")
    assert np.allclose(load_audio({"bytes": buf.getvalue(), "path": "x.wav"}), out, atol=1e-3)
    with pytest.raises(Exception) as info:
        load_audio({"bytes": None, "path": None}, name="row-3")
    assert "row-3" in str(info.value)


def test_greek_speech_builds_disjoint_splits_and_a_common_voice_copy(tmp_path):
    out, cv = tmp_path / "greek", tmp_path / "cv"
    first = greek_speech.build(out, train=6, heldout=4, seed=7, common_voice=cv, workers=2)
    assert (first.train, first.heldout, first.skipped) == (6, 4, False)
    again = greek_speech.build(out, train=6, heldout=4, seed=7, common_voice=cv)
    assert again.skipped  # idempotent: the marker matches
    train = list(iter_examples(_sources(f"  train: [{{dataset: '{out}'}}]"), streaming=False, seed=0))
    held = list(iter_examples(_sources(f"  train: [{{dataset: '{out}', split: heldout}}]"), streaming=False, seed=0))
    assert len(train) == 6 and len(held) == 4
    assert not {e["text"] for e in train} & {e["text"] for e in held}
    assert all(1.0 < len(e["audio"]) / 16000 < 15 for e in train + held)
    with open(cv / "validated.tsv", encoding="utf-8") as f:
        header = f.readline().rstrip("\n").split("\t")
    assert tuple(header) == CV_COLUMNS and len(list((cv / "clips").glob("*.mp3"))) == 10
    cv_all = list(iter_examples(_sources(f"  train: [{{dataset: '{cv}', split: train+dev+test}}]"),
                                streaming=True, seed=0))
    assert sorted(e["text"] for e in cv_all) == sorted(e["text"] for e in train + held)
    assert sf.info(str(next((cv / "clips").glob("*.mp3")))).samplerate == 48000
    other_seed = greek_speech.build(tmp_path / "g2", train=6, heldout=4, seed=8, workers=1)
    assert not other_seed.skipped


def _order(examples) -> list[tuple]:
    return [(e["source"], e["id"], e["text"], hashlib.sha1(e["audio"].tobytes()).hexdigest()) for e in examples]


def test_loader_threads_give_the_same_examples_order_and_counts_as_inline_decoding(tmp_path, corpus):
    """Three sources mixed by weight, with a corrupt clip, an empty transcript and a clip over 30 s
    among them: decoding on 3 threads ahead of the consumer changes nothing a user could see."""
    speech = corpus["speech"]
    texts = corpus["texts"][:6]
    long_clip = np.concatenate([speech[texts[0]], np.zeros(31 * 16000, dtype=np.float32)])
    rows = [(f"c_{i}.mp3", t) for i, t in enumerate(texts)] + [("broken.mp3", "Χαλασμένο αρχείο ήχου."),
                                                              ("long.mp3", "Πολύ μεγάλο κομμάτι."),
                                                              ("c_0.mp3", "   ")]
    clips = {f"c_{i}.mp3": speech[t] for i, t in enumerate(texts)} | {"long.mp3": long_clip}
    cv = _write_cv(tmp_path / "cv", {"train": rows}, clips)
    (cv / "clips" / "broken.mp3").write_bytes(b"not audio\n" * 100)
    data = (f"  train:\n    - {{dataset: '{cv}', weight: 2}}\n"
            f"    - {{dataset: '{corpus['folder']}'}}\n    - {{dataset: '{corpus['parquet']}'}}\n")
    runs = {}
    for workers in (0, 3):
        stats = Stats()
        out = list(iter_examples(_sources(data), streaming=False, seed=4, stats=stats, max_bad_share=0.5,
                                 shuffle=True, workers=workers, prefetch=5))
        runs[workers] = (_order(out), stats)
    (inline, s0), (threaded, s3) = runs[0], runs[3]
    assert threaded == inline and len(inline) == 6 + N_FOLDER + N_PARQUET
    assert (s3.kept, s3.too_long, s3.empty_text, s3.bad_audio) == (s0.kept, s0.too_long, s0.empty_text,
                                                                  s0.bad_audio) == (len(inline), 1, 1, 1)
    assert s3.bad_paths == s0.bad_paths == [str(cv / "clips" / "broken.mp3")]
    assert s3.audio_seconds == pytest.approx(s0.audio_seconds)


def test_too_many_bad_clips_raise_at_the_same_clip_with_loader_threads(tmp_path, corpus):
    speech = corpus["speech"]
    texts = corpus["texts"][:3]
    rows = [(f"missing_{i}.mp3", f"Πρόταση αριθμός {i} χωρίς αρχείο ήχου.") for i in range(22)]
    rows += [(f"c_{i}.mp3", t) for i, t in enumerate(texts)] * 20
    cv = _write_cv(tmp_path / "cv", {"train": rows}, {f"c_{i}.mp3": speech[t] for i, t in enumerate(texts)})
    stats = Stats()
    with pytest.raises(DataError) as info:
        list(iter_examples(_sources(f"  train: [{{dataset: '{cv}'}}]"), streaming=True, seed=0, stats=stats,
                           workers=2, prefetch=16))
    assert stats.seen == 20 and "20 of 20" in str(info.value)


def test_a_consumer_that_stops_early_leaves_no_decoding_behind(corpus):
    import threading

    stream = iter_examples(_sources(_mix_yaml(corpus)), streaming=False, seed=0, workers=2, prefetch=8)
    first = [next(stream) for _ in range(3)]
    stream.close()
    assert len(first) == 3
    for thread in threading.enumerate():
        if thread.name.startswith("gpujob-decode"):
            thread.join(timeout=10)
            assert not thread.is_alive(), "a decoding thread outlived its stream"


def test_loader_workers_auto_leaves_a_core_for_the_training_loop(monkeypatch, tmp_path):
    from gpujob.runner import data

    for cores, expected in ((1, 1), (2, 1), (4, 3), (16, 8), (64, 8)):
        monkeypatch.setattr(data.os, "sched_getaffinity", lambda _pid, n=cores: set(range(n)))
        assert data.loader_threads("auto") == expected
    assert data.loader_threads(0) == 0 and data.loader_threads(5) == 5
    cpu_max = tmp_path / "cpu.max"
    monkeypatch.setattr(data, "CGROUP_CPU_MAX", str(cpu_max))
    for quota, expected in (("250000 100000", 2), ("400000 100000", 3), ("max 100000", 8), ("garbage", 8)):
        cpu_max.write_text(quota + "\n")  # a container limited to 2.5 CPUs has 3 usable, 4 CPUs has 4
        assert data.loader_threads("auto") == expected, quota
    assert _spec(f"  train: [{{dataset: x}}]\n  loader_workers: 3").data.loader_workers == 3
    assert _spec("  train: [{dataset: x}]").data.loader_workers == "auto"


@pytest.mark.parametrize("world", [2, 3])
def test_shards_are_disjoint_and_together_the_whole_stream_in_order(corpus, world):
    """Each of `world` processes decodes every world-th clip of the one mixed stream: nothing twice, nothing
    missed, each example's n its place in that stream."""
    sources = _sources(_mix_yaml(corpus))
    whole = list(iter_examples(sources, streaming=False, seed=9))
    shares = [list(iter_examples(sources, streaming=False, seed=9, shard=(rank, world), workers=rank))
              for rank in range(world)]
    assert all(e["n"] % world == rank for rank, share in enumerate(shares) for e in share)
    merged = sorted((e for share in shares for e in share), key=lambda e: e["n"])
    assert [(e["n"], e["id"], e["text"]) for e in merged] == [(e["n"], e["id"], e["text"]) for e in whole]
    assert all(np.array_equal(a["audio"], b["audio"]) for a, b in zip(merged, whole))
