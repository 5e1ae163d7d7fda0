"""WER/CER per eval source: each source's scores equal jiwer on that source's normalised transcripts, the
overall scores jiwer on all of them; the eval event's per-source keys survive the event reader; the model
card holds one model-index result per dataset."""

from __future__ import annotations

import io
from types import SimpleNamespace as NS

import jiwer
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.events import parse_line
from gpujob.progress import ProgressWriter
from gpujob.runner.metrics import normalizer, score_sources

WORDS = ["καλημέρα", "νερό", "Hello,", "world!", "ΘΆΛΑΣΣΑ", "the", "a", "“quoted”", "x"]
utterance = st.lists(st.sampled_from(WORDS), min_size=0, max_size=6).map(" ".join)
row = st.tuples(utterance, utterance, st.sampled_from(["cv", "fleurs", "other"]))


def jiwer_scores(refs, hyps, norm):
    pairs = [(norm(r), norm(h)) for r, h in zip(refs, hyps) if norm(r)]
    if not pairs:
        return None, None
    r, h = [p[0] for p in pairs], [p[1] for p in pairs]
    return jiwer.wer(r, h), jiwer.cer(r, h)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(row, min_size=1, max_size=12), normalize=st.sampled_from(["basic", "none"]))
def test_per_source_and_overall_scores_equal_jiwer_with_the_same_normaliser(rows, normalize):
    refs, hyps, sources = [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows]
    names = ["cv", "fleurs", "other"]
    scores = score_sources(refs, hyps, sources, names=names, normalize=normalize)
    norm = normalizer(normalize)
    overall = jiwer_scores(refs, hyps, norm)
    assert (scores.wer, scores.cer) == pytest.approx(overall)
    assert list(scores.sources) == names
    for name in names:
        mine = [i for i, s in enumerate(sources) if s == name]
        expected = jiwer_scores([refs[i] for i in mine], [hyps[i] for i in mine], norm)
        part = scores.sources[name]
        assert (part.wer, part.cer) == pytest.approx(expected), name
        assert part.utterances == len(mine)
    assert [u["source"] for u in scores.per_utterance] == sources


def test_one_source_gives_only_the_overall_scores():
    scores = score_sources(["a b"], ["a c"], ["cv"], names=["cv"])
    assert scores.sources == {} and scores.event_metrics(["wer", "cer"]) == {"wer": 0.5, "cer": pytest.approx(1 / 3, abs=1e-6)}
    assert scores.sources_metrics(["wer"]) == {}


def test_the_eval_event_keeps_per_source_keys_through_the_event_reader():
    scores = score_sources(["a b", "c d e f", "g"], ["a b", "c x e f", "h"], ["cv", "fleurs", "fleurs"],
                           names=["cv", "fleurs"], normalize="none")
    fields = scores.event_metrics(["wer", "cer"])
    assert fields["wer/cv"] == 0.0 and fields["wer/fleurs"] == pytest.approx(2 / 5)
    assert fields["wer"] == pytest.approx(2 / 7)
    out = io.StringIO()
    ProgressWriter(out).eval(step=30, **fields)
    [event] = parse_line(out.getvalue())
    assert {k: event[k] for k in fields} == pytest.approx(fields)
    assert scores.sources_metrics(["wer", "cer"])["fleurs"] == {"wer": pytest.approx(0.4), "cer": pytest.approx(
        fields["cer/fleurs"]), "utterances": 2}


def test_the_model_card_has_one_model_index_result_per_eval_dataset():
    yaml = pytest.importorskip("ruamel.yaml")
    from gpujob.runner.card import model_card

    src = lambda dataset, config, split: NS(dataset=dataset, config=config, split=split, name=None)  # noqa: E731
    spec = NS(name="el-small", model=NS(checkpoint="openai/whisper-small", language="el", task="transcribe"),
              data=NS(train=[src("mozilla-foundation/common_voice_17_0", "el", "train")],
                      eval=[src("mozilla-foundation/common_voice_17_0", "el", "test"), src("google/fleurs", "el_gr", "test")]),
              training=NS(learning_rate=1e-5, lr_schedule="linear", warmup_steps=50, per_device_batch_size=16,
                          gradient_accumulation_steps=1, freeze="none", dropout=0.0, precision="auto"))
    metrics = {"wer": 0.2, "cer": 0.1, "steps": 100, "sources": {
        "common_voice_17_0": {"wer": 0.25, "cer": 0.12, "utterances": 10},
        "fleurs": {"wer": 0.15, "cer": 0.08, "utterances": 5}}}
    # the licence given: looking up openai/whisper-small's card would wait on the Hub (offline here: ~20 s)
    front = model_card(spec, metrics, license="mit").split("---\n")[1]
    results = yaml.YAML(typ="safe").load(front)["model-index"][0]["results"]
    assert [(r["dataset"]["name"], r["dataset"]["config"], r["dataset"]["split"]) for r in results] == [
        ("mozilla-foundation/common_voice_17_0", "el", "test"), ("google/fleurs", "el_gr", "test")]
    assert [{m["type"]: m["value"] for m in r["metrics"]} for r in results] == [
        {"wer": 25.0, "cer": 12.0}, {"wer": 15.0, "cer": 8.0}]
