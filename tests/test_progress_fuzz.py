"""No line a job prints can crash or stall gpujob (issue 15): the progress parser, the state it
folds into, and every view of either, fed hostile input. Each field of an event is checked
against the table in gpujob.progress's docstring, independently of the code that enforces it."""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import time
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpujob.events import parse_line
from gpujob.linesplit import LineSplitter
from gpujob.progress import PREFIX
from gpujob.progress_state import ProgressState
from gpujob.words import describe_event

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow])

UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069\ud800-\udfff]")
NASTY_STRINGS = [
    "", "ok", "\x1b[31mred\x1b[0m", "\x1b]0;title\x07", "\x9b2J", "\x1bc", "a\nb\r\nc\td", "\x00\x7f",
    "\ud800", "\udfff", "x\ud83d", "\u202egnp.exe", "Καλημέρα 🔑", "x" * 5000, "\u2028", "@gpujob/v1 ",
]
NUMBERS = [
    0, 1, -1, 7, 10**12, 10**12 + 1, -(10**12), 10**30, 10**310, -(10**310), 2**63, 0.0, -0.0, 0.5, 1.5,
    -1e-9, 1e29, 1e30, 1e31, 1e308, 1e308 * 10, -math.inf, math.nan, 1000.0, 1000.5, 1e11, 1e11 + 1,
]
FIELDS = ["event", "t", "step", "total_steps", "epoch", "epochs", "loss", "learning_rate", "samples_per_s",
          "wer", "cer", "eval_loss", "path", "name", "kind", "status", "metrics", "message", "phase", "done",
          "total", "wer_fleurs", "x", "\x1b[2J", "\ud800", "n", "cpu_percent", "rss_bytes", "gpu_util_percent",
          "gpu_mem_used_bytes", "gpu_power_w", "gpus", "loader_wait_percent"]
EVENT_NAMES = ["start", "progress", "eval", "checkpoint", "artifact", "end", "heartbeat", "system", "future_event",
               "", "\x1b[31mend", "e" * 41, "end\n", "ev\ud800"]

scalars = (st.none() | st.booleans() | st.sampled_from(NUMBERS) | st.integers() | st.floats()
           | st.sampled_from(NASTY_STRINGS) | st.text(max_size=30)
           | st.sampled_from(["succeeded", "failed", "cancelled", "SUCCEEDED"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=12), inner, max_size=4),
                      max_leaves=8)
metric_dicts = st.dictionaries(st.sampled_from(["wer", "cer", "steps", "best_wer", "\x1b[31mwer", "k" * 101, ""])
                               | st.text(max_size=12), values, max_size=8)
field_values = values | metric_dicts
events = st.fixed_dictionaries(
    {"event": st.sampled_from(EVENT_NAMES) | values},
    optional={k: field_values for k in FIELDS if k != "event"},
)


def dumps(obj: Any, ascii_only: bool) -> str:
    return json.dumps(obj, ensure_ascii=ascii_only, default=str)  # NaN/Infinity tokens and all


@st.composite
def hostile_lines(draw) -> str:
    kind = draw(st.integers(0, 5))
    if kind == 0:  # an object, serialised as it is (bools, huge ints, NaN tokens, surrogates, …)
        return PREFIX + dumps(draw(events), draw(st.booleans()))
    if kind == 1:  # token soup behind the prefix
        tokens = st.sampled_from(['{', '}', '[', ']', '"event"', ':', ',', '"progress"', '"end"', '"step"',
                                  '1e999', 'NaN', '-Infinity', "9" * 400, '"\\ud800"', '"\\u001b[2J"', PREFIX,
                                  'true', 'null', '"metrics"', '{"event":"eval","wer":', '-0.0', ' '])
        return PREFIX + "".join(draw(st.lists(tokens, max_size=40)))
    if kind == 2:  # deep nesting, inside a well-formed event or bare
        depth = draw(st.integers(1, 6000))
        opener, closer = draw(st.sampled_from([("[", "]"), ('{"a":', "}")]))
        inner = opener * depth + "1" + closer * depth
        return PREFIX + draw(st.sampled_from(['{"event":"eval","wer":' + inner + "}", inner, opener * depth]))
    if kind == 3:  # several events on a line, behind a tqdm bar
        parts = draw(st.lists(events.map(lambda e: PREFIX + dumps(e, True)), min_size=1, max_size=4))
        return " 45%|████▌ | 45/100\r" + " ".join(parts)
    if kind == 4:  # a big number where a step goes
        digits = draw(st.integers(300, 5000))
        key = draw(st.sampled_from(["step", "total_steps", "loss", "t", "done"]))
        return PREFIX + f'{{"event":"progress","{key}":{"9" * digits}}}'
    return draw(st.text(max_size=200))


def check_text(value: Any, limit: int) -> None:
    assert isinstance(value, str) and len(value) <= limit and not UNSAFE.search(value), value


def check_plain(value: Any) -> None:
    if value is None or isinstance(value, bool):
        return
    if isinstance(value, (int, float)):
        assert math.isfinite(value) and abs(value) <= 1e30, value
        return
    check_text(value, 200)


def check_metrics(metrics: Any) -> None:
    assert isinstance(metrics, dict) and len(metrics) <= 50
    for key, value in metrics.items():
        check_text(key, 100)
        assert key
        check_plain(value)


def is_int(value: Any, lo: int, hi: int) -> bool:
    return type(value) is int and lo <= value <= hi


def is_real(value: Any, lo: float, hi: float) -> bool:
    return type(value) is float and math.isfinite(value) and lo <= value <= hi


KNOWN = {
    "start": {"total_steps", "epochs", "name", "kind"},
    "progress": {"step", "total_steps", "epoch", "loss", "learning_rate", "samples_per_s"},
    "eval": {"step", "wer", "cer", "eval_loss"},
    "checkpoint": {"step", "path"},
    "artifact": {"path", "name"},
    "end": {"status", "metrics", "message"},
    "heartbeat": {"phase", "done", "total"},
    "system": {"n", "step", "cpu_percent", "rss_bytes", "mem_used_bytes", "mem_total_bytes", "loader_wait_percent",
               "gpus", "gpu_util_percent", "gpu_mem_used_bytes", "gpu_mem_total_bytes", "gpu_power_w"},
}


def check_event(event: Any) -> None:
    """An event as the module's table documents it."""
    assert isinstance(event, dict)
    kind = event["event"]
    assert isinstance(kind, str) and re.fullmatch(r"[A-Za-z0-9_.\-]{1,40}", kind), kind
    extra = {}
    for key, value in event.items():
        if key == "event":
            continue
        if key == "t":
            assert is_real(value, 0, 1e11), value
        elif key not in KNOWN.get(kind, ()):
            assert kind == "eval", (kind, key)
            extra[key] = value
        elif kind == "system" and key.endswith("_bytes"):
            assert is_int(value, 0, 10**18), value
        elif kind == "system" and key.endswith("_percent"):
            assert is_real(value, 0, 1e6 if key == "cpu_percent" else 100), value
        elif key == "gpu_power_w":
            assert is_real(value, 0, 1e7), value
        elif key == "gpus":
            assert is_int(value, 1, 100_000), value
        elif key in ("step", "done", "n"):
            assert is_int(value, 0, 10**12), value
        elif key in ("total_steps", "total"):
            assert is_int(value, 1, 10**12), value
        elif key in ("epoch", "epochs"):
            assert is_real(value, 0, 1e9), value
        elif key in ("loss", "learning_rate", "eval_loss"):
            assert is_real(value, -1e30, 1e30), value
        elif key == "samples_per_s":
            assert is_real(value, 0, 1e30), value
        elif key in ("wer", "cer"):
            assert is_real(value, 0, 1000), value
        elif key == "status":
            assert value in ("succeeded", "failed")
        elif key in ("message", "path"):
            check_text(value, 500)
        elif key in ("name", "kind", "phase"):
            check_text(value, 200)
        elif key == "metrics":
            check_metrics(value)
    check_metrics(extra)
    json.dumps(event, allow_nan=False)  # finite, and plain JSON


def check_state(state: ProgressState) -> None:
    """Every field of a state of the documented type and range."""
    assert state.step is None or is_int(state.step, 0, 10**12)
    assert state.total_steps is None or is_int(state.total_steps, 1, 10**12)
    for key in ("epoch", "loss", "learning_rate", "samples_per_s", "steps_per_s", "eta_s", "started_at",
                "updated_at"):
        value = getattr(state, key)
        assert value is None or (type(value) is float and math.isfinite(value) and abs(value) <= 1e30), (key, value)
    check_event({"event": "eval", **state.eval})
    assert "t" not in state.eval
    assert set(state.checkpoint) <= {"step", "path"}
    check_event({"event": "checkpoint", **state.checkpoint})
    assert isinstance(state.artifacts, list) and len(state.artifacts) <= 50
    for path in state.artifacts:
        check_text(path, 500)
    check_metrics(state.metrics)
    assert state.end_status in (None, "succeeded", "failed")
    assert state.message is None or check_text(state.message, 500) is None
    assert state.fraction is None or 0.0 <= state.fraction <= 1.0
    assert state.last_wer is None or is_real(state.last_wer, 0, 1000)
    snapshot = state.to_dict()
    text = json.dumps(snapshot, allow_nan=False)
    again = ProgressState.from_dict(json.loads(text))
    assert json.loads(json.dumps(again.to_dict())) == json.loads(text)  # a snapshot reads back as written


# ----------------------------------------------------------------------------- parser


@given(hostile_lines())
@FAST
def test_parse_line_never_raises_and_keeps_only_documented_fields(line):
    for event in parse_line(line):
        check_event(event)


@given(events)
@FAST
def test_a_decoded_object_becomes_an_event_of_documented_fields_or_nothing(obj):
    from gpujob.events import normalize_event

    for ascii_only in (True, False):
        for event in parse_line(PREFIX + dumps(obj, ascii_only)):
            check_event(event)
            assert normalize_event(event) == event  # checking a checked event changes nothing
            assert parse_line(PREFIX + json.dumps(event, ensure_ascii=False)) == [event]  # and reads back


def test_well_formed_runner_events_read_as_before():
    line = PREFIX + json.dumps({"event": "eval", "t": 5.5, "step": 100, "wer": 0.231, "cer": 0.082,
                                "eval_loss": 0.7, "wer_fleurs": 0.3, "note": "ok"})
    assert parse_line(line) == [{"event": "eval", "t": 5.5, "step": 100, "wer": 0.231, "cer": 0.082,
                                 "eval_loss": 0.7, "wer_fleurs": 0.3, "note": "ok"}]
    end = {"event": "end", "status": "succeeded", "metrics": {"steps": 4, "wer": 0.2, "best_wer": None,
                                                              "best_step": 2, "model": "m"}}
    assert parse_line(PREFIX + json.dumps(end)) == [end]
    beat = {"event": "heartbeat", "phase": "eval", "done": 3, "total": 10}
    assert parse_line(PREFIX + json.dumps(beat)) == [beat]
    assert describe_event(beat) == "[heartbeat] eval 3/10"


def test_regression_5000_brackets_are_text_not_a_crash():
    for line in (PREFIX + "[" * 5000, PREFIX + '{"event":"eval","wer":' + "[" * 5000 + "]" * 5000 + "}",
                 PREFIX + '{"event":"eval","x":' + '{"a":' * 5000 + "1" + "}" * 5000 + "}"):
        assert parse_line(line) == []
        state = ProgressState()
        assert state.feed_lines([line, PREFIX + '{"event":"progress","step":3,"total_steps":6}']) == 1
        assert state.step == 3 and state.fraction == 0.5


def test_regression_a_310_digit_number_is_dropped_not_a_crash():
    line = PREFIX + '{"event":"progress","step":%s,"total_steps":%s,"loss":%s,"t":%s}' % (("9" * 310,) * 4)
    state = ProgressState()
    state.feed_lines([line])  # (it was an OverflowError, in the local supervisor)
    assert parse_line(line) == [{"event": "progress"}]
    state.apply({"event": "progress", "step": 10**310, "loss": 10**310, "t": 10**310})
    state.apply({"event": "end", "metrics": {"wer": 10**310, "steps": 10**310}})
    assert state.step is None and state.loss is None and state.metrics == {} and state.last_wer is None
    check_state(state)


def test_odd_numbers_are_dropped_or_kept_as_documented():
    line = PREFIX + ('{"event":"progress","step":-1,"total_steps":0,"epoch":-0.0,"loss":NaN,'
                     '"learning_rate":Infinity,"samples_per_s":1e400,"t":true}')
    assert parse_line(line) == [{"event": "progress", "epoch": 0.0}]
    assert math.copysign(1, parse_line(line)[0]["epoch"]) == 1  # -0.0 reads as 0.0: no "epoch -0.00"
    assert parse_line(PREFIX + '{"event":"progress","step":true,"total_steps":false,"loss":"0.5"}') == \
        [{"event": "progress"}]
    assert parse_line(PREFIX + '{"event":"progress","step":12.9,"total_steps":100.0}') == \
        [{"event": "progress", "step": 12, "total_steps": 100}]
    assert parse_line(PREFIX + '{"event":"end","status":"oops"}') == [{"event": "end", "status": "failed"}]


def test_regression_a_10_mb_line_takes_no_time():
    lines = [PREFIX + '{"event":"progress","x":"' + "a" * (10 << 20) + '"}',
             PREFIX + "[" * (10 << 20), PREFIX + ('{"event":"eval","wer":0.1}' + PREFIX) * (400_000)]
    for line in lines:
        started = time.perf_counter()
        assert parse_line(line) == []  # over 64 KiB: text, not events
        state = ProgressState()
        state.feed_lines([line])
        assert describe_event({"event": "end", "message": line, "metrics": {line: line}}).startswith("[end] ")
        assert time.perf_counter() - started < 1.0


def test_a_line_just_under_the_cap_full_of_prefixes_is_quick():
    from gpujob.events import MAX_EVENT_CHARS

    for unit in ('{"event":"eval","wer":0.1}', '["', '{"a":"', "[" * 20):
        line = (PREFIX + unit) * (MAX_EVENT_CHARS // (len(PREFIX) + len(unit)))
        started = time.perf_counter()
        for event in parse_line(line):
            check_event(event)
        assert time.perf_counter() - started < 1.0


def test_line_splitter_is_linear_and_cuts_a_line_that_never_ends():
    data = ("é" * (24 << 20)).encode() + b"\nnext\n"  # 48 MiB without a newline, two-byte characters
    splitter, pieces = LineSplitter(), []
    started = time.perf_counter()
    for at in range(0, len(data), 1 << 16):
        pieces += splitter.feed(data[at:at + (1 << 16)])
    pieces += splitter.flush()
    assert time.perf_counter() - started < 5.0
    assert pieces[-1] == "next" and "".join(pieces[:-1]) == "é" * (24 << 20)  # no character torn
    assert all(len(p.encode()) <= 1 << 20 for p in pieces)  # gpujob.linesplit.MAX_LINE_BYTES


@given(st.lists(st.binary(max_size=40) | st.sampled_from([b"\n", b"\xc3", b"\xa9", b"\r\n", b"x" * 30]), max_size=30),
       st.integers(4, 64))
@FAST
def test_line_splitter_loses_and_adds_nothing(chunks, max_line):
    splitter = LineSplitter(max_line=max_line)
    got = [p for c in chunks for p, _ in splitter.feed_pieces(c)] + [p for p, _ in splitter.flush_pieces()]
    assert all(len(p) <= max_line for p in got)
    # Joined back (the pieces of a line together, lines with newlines), nothing is lost or added.
    splitter, out, first = LineSplitter(max_line=max_line), b"", True
    for piece, continues in [p for c in chunks for p in splitter.feed_pieces(c)] + splitter.flush_pieces():
        out += piece if continues or first else b"\n" + piece
        first = False
    data = b"".join(chunks)
    assert out == (data[:-1] if data.endswith(b"\n") else data)


# ----------------------------------------------------------------------------- state


@given(st.lists(hostile_lines() | events.map(lambda e: PREFIX + dumps(e, True)), max_size=6))
@FEW
def test_state_folds_any_lines_and_keeps_documented_types(lines):
    state = ProgressState()
    state.feed_lines(lines)
    check_state(state)
    advanced = ProgressState.advance(state.to_dict(), lines + [PREFIX + '{"event":"progress","step":1,"t":1e10}'])
    assert advanced is not None
    check_state(ProgressState.from_dict(advanced))


@given(st.lists(events, max_size=6), st.one_of(st.none(), st.sampled_from(NUMBERS)))
@FEW
def test_state_applies_any_dict(objs, now):
    state = ProgressState()
    for obj in objs:
        state.apply(obj, now=now)
    check_state(state)


snapshot_keys = st.sampled_from(["step", "total_steps", "epoch", "loss", "learning_rate", "samples_per_s",
                                 "steps_per_s", "eta_s", "eval", "checkpoint", "artifacts", "metrics",
                                 "end_status", "message", "started_at", "updated_at", "window", "_window", "x"])
windows = st.lists(st.lists(values, max_size=3) | values, max_size=30)
snapshots = (st.dictionaries(snapshot_keys, field_values | windows, max_size=12) | values)


@given(snapshots)
@FAST
def test_state_reads_back_any_snapshot(snapshot):
    state = ProgressState.from_dict(snapshot)
    check_state(state)
    state.feed_lines([PREFIX + '{"event":"progress","step":5,"total_steps":10,"t":99}'])
    check_state(state)


def test_state_keeps_a_bounded_number_of_artifacts_and_metrics():
    state = ProgressState()
    for i in range(500):
        state.apply({"event": "artifact", "path": f"/p/{i}", "t": 1.0})
    state.apply({"event": "end", "metrics": {f"m{i}": i for i in range(5000)}, "message": "m" * 10**6})
    assert len(state.artifacts) == 50 and state.artifacts[-1] == "/p/499"
    assert len(state.metrics) == 50 and len(state.message) == 500
    check_state(state)


# ----------------------------------------------------------------------------- words and views


@given(st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=8), field_values, max_size=10) | events)
@FAST
def test_describe_event_never_raises_and_is_one_safe_line(obj):
    words = describe_event(obj)
    assert isinstance(words, str) and words.startswith("[") and not UNSAFE.search(words)
    words.encode("utf-8")


def printed(lines: list[str]) -> str:
    """What `logs` prints for ``lines``; and the live bar (`logs -f` on a terminal) drawn after them."""
    from rich.console import Console

    from gpujob.cli.display import LogPrinter

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        printer = LogPrinter(raw=False, live=False)
        for line in lines:
            printer.line(line)
    screen = io.StringIO()
    printer._console = Console(file=screen, width=100, force_terminal=True)
    printer._console.print(printer._bar())
    assert "step " in screen.getvalue()
    return out.getvalue()


@given(st.lists(hostile_lines() | events.map(lambda e: PREFIX + dumps(e, False)), min_size=1, max_size=4))
@FEW
def test_the_log_printer_prints_every_line_after_a_hostile_one(lines):
    mixed = [x for i, line in enumerate(lines) for x in (line, f"after-{i}")]
    screen = printed(mixed)
    for i in range(len(lines)):
        assert f"after-{i}\n" in screen


def test_regression_a_malformed_end_event_is_shown_and_so_is_what_follows():
    screen = printed([PREFIX + '{"event":"end","status":{"x":1},"metrics":[1]}', "next line",
                      PREFIX + '{"event":"end","status":"failed","metrics":{"wer":0.5,"\\u001b[2Jx":[1]},'
                      '"message":"\\u001b]0;pwned\\u0007 \\ud800 bye"}', "last line"])
    assert screen.splitlines() == ["[end]", "next line", "[end] failed  wer 0.5  \ufffd]0;pwned\ufffd \ufffd bye",
                                   "last line"]


def make_job(progress: Any, metrics: Any = None, **kw):
    from gpujob.registry import Job

    fields = {"id": "abc123", "name": "hostile", "kind": "command", "backend": "local", "status": "failed",
              "reason": "exit 1: \x1b[2J\x1b[31mboom", "exit_code": 1, "spec_path": None, "spec_data": {},
              "output_dir": "/o", "handle": {}, "progress": progress, "metrics": metrics, "cost_usd": 0.0,
              "created_at": 1000.0, "started_at": 1001.0, "finished_at": 1010.0, "updated_at": 1010.0}
    fields.update(kw)
    return Job(**fields)


@given(snapshots, st.one_of(st.none(), metric_dicts), st.sampled_from(["failed", "running", "succeeded"]))
@FAST
def test_status_list_and_summary_show_any_snapshot(snapshot, metrics, status):
    from gpujob.cli.display import final_line, job_details, job_summary, job_table

    job = make_job(snapshot, metrics, status=status)
    for text in (job_details(job), job_table([job]), final_line(job)):
        assert "\x1b" not in text and "\x9b" not in text
        text.encode("utf-8")
    json.dumps(job_summary(job), allow_nan=False)


def test_regression_escape_sequences_in_a_message_or_metric_name_do_not_reach_status():
    from gpujob.cli.display import final_line, job_details, job_table

    state = ProgressState()
    state.feed_lines([
        PREFIX + json.dumps({"event": "eval", "step": 1, "wer": 0.5, "\x1b[31mwer_x": 0.1}),
        PREFIX + json.dumps({"event": "checkpoint", "step": 1, "path": "/c\x1b]8;;http://evil\x07"}),
        PREFIX + json.dumps({"event": "end", "status": "failed", "message": "\x1b[2J\x1b[Hgone",
                             "metrics": {"\x1b[31mwer": 0.5, "note": "\x9b2J"}}),
    ])
    job = make_job(state.to_dict(), {"\x1b[5mwer": 0.3})
    for text in (job_details(job), job_table([job]), final_line(job)):
        assert "\x1b" not in text and "\x9b" not in text and "\x07" not in text, text


def test_cli_logs_and_status_of_a_job_that_printed_poison(tmp_path):
    """A finished local job's log and snapshot, written as a hostile job would leave them: `logs`
    exits 0 and shows every line after the poison; `status` and `list` show the job."""
    from typer.testing import CliRunner

    from gpujob.backends.base import LOG_NAME
    from gpujob.cli.app import app
    from gpujob.registry import Registry

    registry = Registry()
    job = registry.create(name="poison", kind="command", backend="local", spec={}, spec_path=None,
                          output_dir=str(tmp_path / "o"))
    registry.transition(job.id, "running")
    registry.update(job.id, progress={"step": 10**310, "total_steps": "x", "metrics": [1], "eval": {"wer": "\x1b[2J"},
                                      "window": [[1, 2, 3], "x", [1e400, 5]], "message": {"a": 1},
                                      "checkpoint": {"path": "\x1b[31m/c"}, "artifacts": "nope"},
                    metrics={"wer": 0.25, "\x1b[31mx": [1]})
    registry.transition(job.id, "failed", reason="exit 1: \x1b[31mboom")
    job.job_dir.mkdir(parents=True, exist_ok=True)
    poison = [PREFIX + "[" * 5000,
              PREFIX + '{"event":"progress","step":' + "9" * 310 + "}",
              PREFIX + '{"event":"end","status":{"x":1},"metrics":[1]}',
              PREFIX + '{"event":"end","message":"\\u001b[2J\\ud800"}',
              "x" * (3 << 20)]
    lines = [x for i, line in enumerate(poison) for x in (line, f"after-{i}")]
    (job.job_dir / LOG_NAME).write_text("\n".join(lines) + "\n", encoding="utf-8")
    runner = CliRunner()
    for args in (["logs", job.id], ["logs", job.id, "--tail", "20"], ["logs", job.id, "--raw"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output[-2000:], result.exception)
        for i in range(len(poison)):
            assert f"after-{i}" in result.output, args
    shown = runner.invoke(app, ["logs", job.id]).output
    assert "[end]" in shown and "\x1b" not in shown
    for args in (["status", job.id], ["status", job.id, "--json"], ["list"], ["list", "--json"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (args, result.output[-2000:], result.exception)
        assert "\x1b" not in result.output and "poison" in result.output, args


# ----------------------------------------------------------------------------- the host agent's copy


@given(hostile_lines())
@FAST
def test_the_host_agents_event_test_agrees_with_the_parser_and_never_raises(line):
    from gpujob.hosts.agent import probes as ag

    # a system sample is no sign of progress to the agent (a thread writes it whatever the training does)
    assert ag.has_event(line) == any(event["event"] != "system" for event in parse_line(line))
    deep = PREFIX + '{"event":"progress","x":' + "[" * 17 + "]" * 17 + "}"
    assert not ag.has_event(deep) and not parse_line(deep)


def test_regression_the_host_agent_reads_poison_in_a_container_log():
    from gpujob.hosts.agent import probes as ag

    log = ("2024-05-01T12:00:00Z @gpujob/v1 {\"event\":\"progress\",\"step\":1}\n"
           "2024-05-01T12:00:05Z @gpujob/v1 {\"event\":\"progress\",\"x\":\"" + "a" * (10 << 20) + "\"}\n"
           "2024-05-01T12:00:06Z @gpujob/v1 " + "[" * 5000 + "\n")
    started = time.perf_counter()
    assert ag.last_event_time(log) == 1714564800
    assert time.perf_counter() - started < 1.0
