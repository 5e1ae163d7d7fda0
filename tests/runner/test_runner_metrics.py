"""WER/CER: equal to jiwer on the normalised text; the same normaliser everywhere."""

from __future__ import annotations

import jiwer
import pytest

from gpujob.runner.metrics import normalizer, score, worst

REFS = ["Καλημέρα, τι κάνεις;", "Ο καιρός είναι ωραίος σήμερα.", "Hello World!", "   "]
HYPS = ["καλημέρα τι κάνεις", "ο καιρός είναι άσχημος σήμερα", "hello word", "anything"]


def test_basic_normalizer_lowercases_and_drops_punctuation_but_keeps_accents():
    norm = normalizer("basic")
    assert norm("Καλημέρα, τι ΚΆΝΕΙΣ;") == "καλημέρα τι κάνεις"
    assert normalizer("none")("  Hello, World! ") == "Hello, World!"


def test_corpus_wer_and_cer_equal_jiwer_on_normalised_text():
    scores = score(REFS, HYPS, normalize="basic")
    norm = normalizer("basic")
    refs = [norm(r) for r in REFS[:3]]
    hyps = [norm(h) for h in HYPS[:3]]
    assert scores.wer == pytest.approx(jiwer.wer(refs, hyps))
    assert scores.cer == pytest.approx(jiwer.cer(refs, hyps))
    # by hand: 0 + 1 substitution (of 5 words) + 1 substitution (of 2 words) = 2 / 10 words
    assert scores.wer == pytest.approx(2 / 10)
    assert scores.skipped_empty == 1 and scores.utterances == 4 and scores.words == 10


def test_without_normaliser_punctuation_counts():
    assert score(["Hello, world."], ["hello world"], normalize="none").wer == pytest.approx(1.0)
    assert score(["Hello, world."], ["hello world"], normalize="basic").wer == 0.0


def test_worst_utterances_come_first():
    scores = score(REFS, HYPS)
    bad = worst(scores, 2)
    assert [u["reference"] for u in bad] == ["Hello World!", "Ο καιρός είναι ωραίος σήμερα."]
    assert bad[0]["wer"] == pytest.approx(0.5)
