"""The quickstart's speech (dev/gpujob_dev/greek_speech.py): its unseen-voice split is honest evidence of
generalisation. Its sentences are the held-out ones (never trained on); its voices, speeds, pitches and
formats are none of the training set's; and every variant named exists (libespeak-ng would silently
speak an unknown one in the plain voice, a training voice)."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

pytest.importorskip("espeakng_loader")
import soundfile as sf  # noqa: E402

from gpujob_dev import greek_speech as gs  # noqa: E402


def rows(folder: Path) -> list[tuple[str, str]]:
    with open(folder / "metadata.csv", newline="", encoding="utf-8") as f:
        return [(r["file_name"], r["transcription"]) for r in csv.DictReader(f)]


@pytest.fixture(scope="module")
def speech(tmp_path_factory) -> Path:
    return gs.build(tmp_path_factory.mktemp("speech") / "gs", train=24, heldout=16, seed=5).out_dir


def test_the_unseen_split_speaks_the_held_out_sentences_in_voices_speeds_and_formats_never_trained_on(speech):
    train, held, unseen = rows(speech / "train"), rows(speech / "heldout"), rows(speech / "unseen")
    assert [t for _, t in unseen] == [t for _, t in held]
    assert not {t for _, t in held} & {t for _, t in train}

    trained = [gs.training_voice(5, t) for _, t in train + held]
    assert {v.voice for v in trained} <= set(gs.TRAIN_VOICES) and len({v.voice for v in trained}) >= 6
    for v in trained:
        assert gs.SPEED_RANGE[0] <= v.speed <= gs.SPEED_RANGE[1] and gs.PITCH_RANGE[0] <= v.pitch <= gs.PITCH_RANGE[1]
    voices = [gs.unseen_voice(5, t, i) for i, (_, t) in enumerate(unseen)]
    assert not {v.voice for v in voices} & set(gs.TRAIN_VOICES)
    for v in voices:
        assert not gs.SPEED_RANGE[0] <= v.speed <= gs.SPEED_RANGE[1], v
        assert not gs.PITCH_RANGE[0] <= v.pitch <= gs.PITCH_RANGE[1], v

    kinds = set()
    for (name, _), (held_name, _) in zip(unseen, held):
        info = sf.info(speech / "unseen" / name)
        kinds.add((Path(name).suffix, info.format, info.samplerate))
        assert sf.info(speech / "heldout" / held_name).samplerate == 16000
    assert {k[0] for k in kinds} == {".flac", ".mp3", ".ogg", ".wav"}
    assert {k[1] for k in kinds} == {"FLAC", "MP3", "OGG", "WAV"}
    assert {k[2] for k in kinds} == {16000, 22050, 44100, 48000}
    assert len(kinds) == 16   # every format at every rate


def test_every_voice_variant_named_exists_and_an_unknown_one_is_refused(monkeypatch):
    gs.check_voices()
    with pytest.raises(gs.SpeechError, match=r"el\+nosuchvoice"):
        gs.check_voices(("el+m1", "el+nosuchvoice"))


def test_extra_sentences_only_train_and_several_can_share_a_clip(tmp_path):
    main = gs.load_sentences()[:10]
    extra = ["Το τρένο έφυγε νωρίς σήμερα.", main[0], "Ο σκύλος κοιμάται στον κήπο."]
    out = gs.build(tmp_path / "gs", train=4, heldout=4, seed=1, sentences=main, extra=extra, per_clip=3).out_dir
    held = [t for _, t in rows(out / "heldout")]
    train = [t for _, t in rows(out / "train")]
    spoken = " ".join(train)
    assert not any(h in spoken for h in held)                     # an extra that is held out is dropped
    assert len(train) == 2                                        # 4 + 2 new extras (one was known), 3 a clip
    assert "Ο σκύλος κοιμάται στον κήπο." in spoken and "Το τρένο έφυγε νωρίς σήμερα." in spoken
