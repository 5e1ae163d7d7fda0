"""The progress protocol: writer, parser (torn and interleaved lines), state folding."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob.events import parse_line
from gpujob.linesplit import LineSplitter
from gpujob.progress import PREFIX, ProgressWriter
from gpujob.progress_state import ProgressState
from gpujob.words import describe_event, fmt_duration


class Clock:
    def __init__(self, t: float = 1000.0):
        self.t = t

    def __call__(self) -> float:
        return self.t


def test_writer_emits_one_prefixed_json_line_per_event():
    out, clock = io.StringIO(), Clock(1234.5)
    writer = ProgressWriter(out, clock=clock)
    writer.progress(step=3, total_steps=10, loss=0.5, epoch=None)
    line = out.getvalue()
    assert line.startswith(PREFIX) and line.endswith("\n") and line.count("\n") == 1
    payload = json.loads(line[len(PREFIX):])
    assert payload == {"event": "progress", "t": 1234.5, "step": 3, "total_steps": 10, "loss": 0.5}


def test_writer_rejects_unknown_events_and_nan():
    writer = ProgressWriter(io.StringIO())
    with pytest.raises(ValueError, match="unknown progress event"):
        writer.emit("progres", step=1)
    with pytest.raises(ValueError):
        writer.progress(step=1, loss=float("nan"))


def test_parser_round_trips_writer_output():
    out = io.StringIO()
    writer = ProgressWriter(out, clock=Clock())
    writer.start(total_steps=5)
    writer.eval(step=5, wer=0.25, cer=0.1, eval_loss=0.7)
    writer.end(status="succeeded", metrics={"wer": 0.25})
    events = [e for line in out.getvalue().splitlines() for e in parse_line(line)]
    assert [e["event"] for e in events] == ["start", "eval", "end"]
    assert events[1]["wer"] == 0.25 and events[2]["metrics"] == {"wer": 0.25}


def test_event_behind_a_tqdm_bar_is_found():
    line = ' 45%|████▌     | 45/100 [00:09<00:11,  4.9it/s]\r@gpujob/v1 {"event":"progress","step":45}'
    assert parse_line(line) == [{"event": "progress", "step": 45}]


def test_interleaved_writers_keep_every_complete_event():
    # Writer B's line landed inside writer A's: A's object is torn, B's survives, as does a later one.
    line = ('@gpujob/v1 {"event":"progress","st@gpujob/v1 {"event":"eval","step":7,"wer":0.3}'
            ' @gpujob/v1 {"event":"checkpoint","step":7,"path":"/o/c7"}')
    assert [e["event"] for e in parse_line(line)] == ["eval", "checkpoint"]


@pytest.mark.parametrize("line", [
    "", "plain output", "@gpujob/v1", "@gpujob/v1 ", "@gpujob/v1 {", "@gpujob/v1 [1,2]",
    '@gpujob/v1 {"step": 3}', '@gpujob/v1 {"event": 5}', "@gpujob/v2 {\"event\":\"progress\"}",
    '@gpujob/v1 {"event":"progress","step":1', "@gpujob/v1 \x00\xff",
])
def test_malformed_or_torn_lines_are_not_events(line):
    assert parse_line(line) == []


@given(st.text(max_size=300))
@settings(max_examples=300, deadline=None)
def test_parser_never_raises(text):
    for event in parse_line(text):
        assert isinstance(event, dict) and isinstance(event["event"], str)


def test_line_splitter_holds_a_torn_tail_until_its_newline():
    splitter = LineSplitter()
    assert splitter.feed(b'@gpujob/v1 {"event":"prog') == []
    assert splitter.feed(b'ress","step":2}\nnext li') == ['@gpujob/v1 {"event":"progress","step":2}']
    assert splitter.feed(b"ne\r\n") == ["next line"]
    assert splitter.feed(b"tail without newline") == []
    assert splitter.flush() == ["tail without newline"]


def test_line_splitter_keeps_multibyte_characters_split_across_chunks():
    data = "Καλημέρα κόσμε\n".encode()
    splitter = LineSplitter()
    assert splitter.feed(data[:5]) == [] and splitter.feed(data[5:]) == ["Καλημέρα κόσμε"]


def _progress(step, t, total=100, **kw):
    return {"event": "progress", "step": step, "total_steps": total, "t": t, **kw}


def test_state_computes_rate_eta_and_fraction():
    state = ProgressState()
    state.apply({"event": "start", "total_steps": 100, "t": 0.0})
    for step in range(1, 11):
        state.apply(_progress(step, t=step * 0.5, loss=1.0 / step))  # 2 steps/s
    assert state.step == 10 and state.fraction == pytest.approx(0.10)
    assert state.steps_per_s == pytest.approx(2.0)
    assert state.eta_s == pytest.approx(45.0)
    assert state.loss == pytest.approx(0.1)


def test_state_keeps_last_eval_and_final_metrics_and_round_trips():
    state = ProgressState()
    state.apply(_progress(50, t=1.0))
    state.apply({"event": "eval", "step": 50, "wer": 0.31, "cer": 0.12, "t": 2.0})
    state.apply({"event": "checkpoint", "step": 50, "path": "/out/checkpoint-50", "t": 2.1})
    assert state.last_wer == pytest.approx(0.31)
    state.apply({"event": "end", "status": "succeeded", "metrics": {"wer": 0.2}, "t": 3.0})
    assert state.last_wer == pytest.approx(0.2) and state.fraction == 1.0
    again = ProgressState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again.checkpoint == {"step": 50, "path": "/out/checkpoint-50"}
    assert again.metrics == {"wer": 0.2} and again.end_status == "succeeded"


def test_state_rate_restarts_after_resume_from_an_earlier_step():
    state = ProgressState()
    for step in range(100, 111):
        state.apply(_progress(step, t=float(step), total=1000))
    state.apply(_progress(50, t=200.0, total=1000))  # the job restarted from checkpoint 50
    state.apply(_progress(54, t=201.0, total=1000))
    assert state.step == 54 and state.steps_per_s == pytest.approx(4.0)


def test_state_ignores_wrong_types_instead_of_crashing():
    state = ProgressState()
    state.apply({"event": "progress", "step": "ten", "loss": [1], "total_steps": True, "t": "x"})
    state.apply({"event": "end", "metrics": "oops", "status": 3})
    assert state.step is None and state.loss is None and state.metrics == {}


def test_describe_event_words():
    assert describe_event(_progress(120, 0, total=500, loss=0.41234, learning_rate=1e-5)) == \
        "[progress] step 120/500  loss 0.4123  lr 1.00e-05"
    assert describe_event({"event": "eval", "step": 100, "wer": 0.231, "cer": 0.082}) == \
        "[eval] step 100  WER 23.10%  CER 8.20%"


@pytest.mark.parametrize("seconds,words", [(None, "-"), (5, "5s"), (95, "1m35s"), (3725, "1h02m"),
                                           (90000, "1d01h")])
def test_fmt_duration(seconds, words):
    assert fmt_duration(seconds) == words


def test_writer_is_importable_without_heavy_modules():
    code = ("import sys, gpujob.progress; heavy = {'torch','transformers','datasets','pydantic',"
            "'kubernetes','docker','typer','rich'} & set(sys.modules); print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_protocol_modules_import_only_the_stdlib_and_each_other():
    """The writer, the parser, the state and the words: nothing heavy, and no module of gpujob
    beyond these five and gpujob.wire (no backends, registry or cli), so jobs and the CLI can import
    any of them."""
    code = ("import sys; import gpujob.progress, gpujob.events, gpujob.linesplit, gpujob.progress_state, "
            "gpujob.words; ours = {'gpujob', 'gpujob.progress', 'gpujob.events', 'gpujob.linesplit', "
            "'gpujob.progress_state', 'gpujob.words', 'gpujob.wire'}; heavy = {'torch','transformers','datasets','pydantic',"
            "'kubernetes','docker','typer','rich'}; print(sorted((heavy & set(sys.modules)) | "
            "{m for m in sys.modules if m.startswith('gpujob') and m not in ours}))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_byte_heartbeat_is_the_phase_status_shows_until_the_first_step():
    from gpujob.progress_state import ProgressState
    from gpujob.words import phase_words

    state = ProgressState()
    state.apply({"event": "heartbeat", "phase": "staging data", "done": 1_234_000_000, "total": 3_400_000_000,
                 "unit": "bytes"})
    assert phase_words(state.phase) == "staging data 1.2 of 3.4 GB"
    assert ProgressState.from_dict(json.loads(json.dumps(state.to_dict()))).phase == state.phase
    state.apply({"event": "heartbeat", "phase": "staging data", "done": 5_000_000, "total": 3_400_000_000, "unit": "bytes"})
    assert phase_words(state.phase) == "staging data 5.0 MB of 3.4 GB"
    state.apply({"event": "heartbeat", "phase": "eval", "done": 3, "total": 10, "unit": "furlongs"})
    assert phase_words(state.phase) == "eval 3/10"  # an unknown unit is dropped
    state.apply({"event": "progress", "step": 1, "total_steps": 10})
    assert state.phase == {}
