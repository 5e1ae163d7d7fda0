"""compare's parts: the spec keys that differ, a run's results from its history, and the utterances
two runs transcribe differently (on predictions files written as the runner writes them)."""

from __future__ import annotations

import json
import time

import pytest
from hypothesis import given, settings, strategies as st

from gpujob import compare
from gpujob.backends import capabilities
from gpujob.errors import UserError
from gpujob.records import Job

leaf = st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.floats(allow_nan=False, allow_infinity=False),
                 st.text(max_size=4))
key = st.sampled_from(["a", "b", "c", "d"])
specs = st.recursive(leaf, lambda inner: st.one_of(st.dictionaries(key, inner, max_size=3),
                                                     st.lists(inner, max_size=3)), max_leaves=8)


@settings(max_examples=200, deadline=None)
@given(runs=st.lists(st.dictionaries(key, specs, max_size=4), min_size=2, max_size=4))
def test_only_the_keys_whose_values_differ_are_listed(runs):
    flat = [compare.flatten(r) for r in runs]
    diffs = compare.spec_differences(flat)
    for k in set().union(*flat):
        values = [f.get(k, compare.MISSING) for f in flat]
        same = all(type(v) is type(values[0]) and v == values[0] for v in values)
        assert (k in diffs) == (not same), (k, values)
        if k in diffs:
            assert diffs[k] == values
    assert set(diffs) <= set().union(*flat)


def test_flatten_names_list_items_by_index():
    spec = {"command": ["python", "-m", "x"], "data": {"eval": [{"dataset": "a"}, {"dataset": "b"}]}, "e": {}}
    assert compare.flatten(spec) == {"command.0": "python", "command.1": "-m", "command.2": "x",
                                     "data.eval.0.dataset": "a", "data.eval.1.dataset": "b", "e": {}}


def test_settings_of_another_type_differ_and_a_missing_key_differs():
    diffs = compare.spec_differences([{"x": 1, "y": True}, {"x": 1.0, "y": True, "z": 0}])
    assert diffs == {"x": [1, 1.0], "z": [compare.MISSING, 0]}
    assert compare.show(compare.MISSING) == "-" and compare.show(True) == "true" and compare.show(None) == "null"


def job(**kw) -> Job:
    now = time.time()
    base = dict(id="abcdef", name="hello-1", kind="train", backend="local", status="succeeded", reason=None,
                exit_code=0, spec_path=None, spec_data={}, output_dir=None, handle={}, progress={}, metrics={},
                cost_usd=0.0, created_at=now - 100, started_at=now - 90, finished_at=now - 30, updated_at=now)
    return Job(**{**base, **kw})


def test_sweep_suffixes_of_name_and_output_dir_are_not_differences():
    a = job(id="a", sweep_id="s12345", spec_data={"name": "hello-1", "output": {"dir": "out/hello/s12345-1"}, "priority": 1})
    b = job(id="b", sweep_id="s12345", spec_data={"name": "hello-2", "output": {"dir": "out/hello/s12345-2"}, "priority": 2})
    assert compare.spec_differences([compare.comparable_spec(a), compare.comparable_spec(b)]) == {"priority": [1, 2]}
    c = job(id="c", spec_data={"name": "hello-1", "output": {"dir": "out/hello/s12345-1"}, "priority": 1})
    d = job(id="d", spec_data={"name": "hello-2", "output": {"dir": "out/hello/s12345-2"}, "priority": 1})
    assert set(compare.spec_differences([compare.comparable_spec(c), compare.comparable_spec(d)])) == {
        "name", "output.dir"}  # not from a sweep: their names are theirs


def test_results_come_from_the_evals_in_the_history():
    points = [{"event": "progress", "step": 10, "loss": 1.0},
              {"event": "eval", "step": 10, "wer": 0.5, "cer": 0.2, "wer/cv": 0.6, "cer/cv": 0.3},
              {"event": "eval", "step": 20, "wer": 0.3, "cer": 0.25, "wer/cv": 0.4, "cer/cv": 0.1},
              {"event": "progress", "step": 25, "loss": 0.5},
              {"event": "eval", "step": 30, "wer": 0.4, "cer": 0.15, "wer/cv": 0.45, "cer/cv": 0.2},
              {"event": "system", "step": 500, "train_step": 30, "cpu_percent": 90.0}]  # step: its sample number
    r = compare.result(job(price_usd_per_hour=3.6), points)
    assert r.final == {"wer": 0.4, "cer": 0.15, "wer/cv": 0.45, "cer/cv": 0.2}
    assert r.best == {"wer": 0.3, "cer": 0.15, "wer/cv": 0.4, "cer/cv": 0.1}
    assert r.best_step == {"wer": 20, "cer": 30, "wer/cv": 20, "cer/cv": 20}
    assert r.steps == 30 and abs(r.runtime_s - 60) < 1e-6 and abs(r.cost_usd - 0.06) < 1e-9
    assert compare.score_keys([r]) == ["wer", "cer", "wer/cv", "cer/cv"]


def test_without_history_the_final_metrics_count_and_an_unknown_price_is_unknown():
    r = compare.result(job(metrics={"wer": 0.2, "w": 3.0}, progress={"step": 7}), [])
    assert r.final == r.best == {"wer": 0.2} and r.steps == 7 and r.cost_usd is None
    assert compare.result(job(), []).sort_key == (True, float("inf"))


def write_predictions(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


def utt(uid, ref, hyp, wer, source=None):
    row = {"id": uid, "reference": ref, "prediction": hyp, "reference_normalized": ref.lower(),
           "prediction_normalized": hyp.lower(), "wer": wer}
    if source:
        row["source"] = source
    return row


def test_utterances_are_ranked_by_the_gap_in_wer_then_by_how_far_the_hypotheses_are(tmp_path):
    ref = "one two three four"
    write_predictions(tmp_path / "a.jsonl", [
        utt("u1", ref, "one two three four", 0.0),         # same in both: left out
        utt("u2", ref, "one two three for", 0.25),          # gap 0.75
        utt("u3", ref, "one two tree four", 0.25),          # gap 0.0, hypotheses 2 words apart
        utt("u4", ref, "one two three four", 0.0),          # gap 0.25
        utt("only-a", ref, "x", 1.0),                        # not in b
        utt("u1", ref, "one", 0.75, source="fleurs"),       # another source's u1
    ])
    write_predictions(tmp_path / "b.jsonl", [
        utt("u1", ref, "one two three four", 0.0),
        utt("u2", ref, "won", 1.0),
        utt("u3", ref, "one too three fore", 0.25),
        utt("u4", ref, "one two three for", 0.25),
        utt("u1", ref, "one two three four", 0.0, source="fleurs"),
    ])
    a, b = compare.read_predictions(tmp_path / "a.jsonl"), compare.read_predictions(tmp_path / "b.jsonl")
    diffs = compare.utterance_differences(a, b)
    assert [d.key for d in diffs] == ["u2", "fleurs/u1", "u4", "u3"]
    assert diffs[0].reference == ref and diffs[0].hypotheses == ("one two three for", "won")
    assert diffs[0].wers == (0.25, 1.0) and diffs[0].distance == 4
    assert diffs[3].distance == 3  # tree/too, four/fore... : "one two tree four" vs "one too three fore"
    assert [d.key for d in compare.utterance_differences(a, b, n=2)] == ["u2", "fleurs/u1"]


def test_word_distance():
    assert compare.word_distance("a b c", "a b c") == 0
    assert compare.word_distance("a b c", "a c") == 1
    assert compare.word_distance("", "a b") == 2
    assert compare.word_distance("a b", "b a") == 2


def test_predictions_on_a_backends_own_volume_are_said_to_be_there_not_missing(tmp_path):
    """A job whose backend keeps outputs on a volume of its own (its capabilities' outputs_volume: kubernetes')
    is told apart from a job that has not written predictions yet."""
    now = time.time()
    record = Job(id="k1", name="on-cluster", kind="evaluate", backend="kubernetes", status="succeeded", reason=None,
                 exit_code=0, spec_path=None, spec_data={}, output_dir="/cache/outputs/on-cluster", handle={}, progress={},
                 metrics={}, cost_usd=0.0, created_at=now, started_at=now, finished_at=now, updated_at=now)
    with pytest.raises(UserError) as away:
        compare.predictions_path(record, capabilities(record.backend).outputs_volume)
    assert away.value.message == ("job k1 (on-cluster) ran on kubernetes: its outputs are at /cache/outputs/on-cluster "
                                  "on the cluster's volume, not on this machine")
    (tmp_path / "out").mkdir()
    here = Job(**{**record.__dict__, "backend": "local", "output_dir": str(tmp_path / "out")})
    with pytest.raises(UserError) as missing:
        compare.predictions_path(here, capabilities(here.backend).outputs_volume)
    assert "does not exist: the job (succeeded) has not written predictions" in missing.value.message
