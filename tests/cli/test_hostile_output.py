"""Output a viewer interprets (issue 29, finding 6): text from a job reaches matplotlib (mathtext), a
terminal (escape sequences) and a spreadsheet (formulas). Each is neutralised for its viewer: names
drawn as written, only SGR colour codes reach a terminal, CSV text cells never start a formula."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from gpujob import history
from gpujob.cli.metric_cmds import FORMULA_STARTS, csv_cell
from gpujob.cli.termsafe import for_terminal
from gpujob.plots import Run, figure, save
from gpujob.ui import charts
from gpujob_cli import GpujobCli
from terminal import run_on_terminal

MACRO = "wer/$\\undefinedmacro{$"
SGR = re.compile(r"\x1b\[[0-9;:]*m")
# what a terminal acts on besides colour: ESC, the 8-bit C1 controls, and the other C0 controls but tab/CR/LF
ACTIVE = re.compile("[\x1b\x80-\x9f\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@pytest.fixture
def cli(tmp_path) -> GpujobCli:
    return GpujobCli(tmp_path, {**os.environ})


def run_printer(cli: GpujobCli, lines: list[str], name: str = "printer") -> str:
    """A command job that prints ``lines`` as they are (events are JSON lines in the protocol)."""
    script = cli.tmp / f"{name}.py"
    script.write_text("import sys\n" + "".join(f"sys.stdout.write({ln!r} + '\\n')\n" for ln in lines))
    spec = cli.tmp / f"{name}.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: {name}\ncommand: [{sys.executable}, {script}]\n"
                    f"output:\n  dir: {cli.tmp}/{name}-out\n")
    r = cli.gpujob("submit", str(spec), "--follow")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()[2]


def event(**fields) -> str:
    return "@gpujob/v1 " + json.dumps(fields)


# ----------------------------------------------------------------------------- matplotlib


def test_a_mathtext_source_name_is_drawn_by_plot_and_the_dashboard(cli):
    """The report's example: `gpujob plot` and the curves PNG crashed on wer/$\\undefinedmacro{$."""
    job = run_printer(cli, [event(event="progress", step=1, loss=1.0),
                            event(event="eval", step=1, wer=0.5, **{MACRO: 0.4}),
                            event(event="progress", step=2, loss=0.5),
                            event(event="eval", step=2, wer=0.3, **{MACRO: 0.2})])
    for out in ("curves.png", "curves.svg"):
        r = cli.gpujob("plot", job, "-o", str(cli.tmp / out))
        assert r.returncode == 0, r.stdout + r.stderr
        assert (cli.tmp / out).stat().st_size > 1000
    assert "$\\undefinedmacro{$" in (cli.tmp / "curves.svg").read_text()  # the name drawn as written


names = st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and "\x00" not in s)


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
@pytest.mark.filterwarnings("ignore:Glyph .* missing from font")
@settings(max_examples=25, deadline=None)
@given(source=names, label=names, title=names)
def test_any_names_draw_without_error(source, label, title, tmp_path_factory):
    """The property: whatever a source, a job label or a title holds ($, backslashes, braces, ^ _),
    the figure, its PNG and the dashboard's PNG are drawn."""
    points = history.points([{"event": "progress", "step": 1, "loss": 1.0},
                             {"event": "eval", "step": 1, "wer": 0.5, f"wer/{source}": 0.4},
                             {"event": "eval", "step": 2, "wer": 0.4, f"wer/{source}": 0.3}])
    fig = figure([Run(label, points)], title=title)
    save(fig, tmp_path_factory.mktemp("fig") / "x.png")
    assert charts.png([(label, points)], title).startswith(b"\x89PNG")
    assert charts.png([(label, [])], title).startswith(b"\x89PNG")


# ----------------------------------------------------------------------------- the terminal


HOSTILE = ["\x1b]0;pwned title\x07plain after title",
           "\x1b]8;;https://evil.example/\x1b\\a link\x1b]8;;\x1b\\ after link",
           "\x1b]52;c;cm0gLXJmIH4=\x07clipboard",
           "\x1b[2J\x1b[Hcleared",
           "\x1b[31mred\x1b[0m colour stays"]


def test_logs_on_a_terminal_pass_colour_codes_and_nothing_else(cli):
    """The report's example: OSC 0/8/52 and screen clears reached the terminal raw."""
    job = run_printer(cli, HOSTILE, name="escapes")
    env = {**cli.env, "TERM": "xterm", "COLUMNS": "200"}
    for args in (["logs", job], ["logs", job, "--raw"]):
        code, screen = run_on_terminal([sys.executable, "-m", "gpujob", *args], env, cwd=cli.tmp)
        assert code == 0, screen
        assert not ACTIVE.search(SGR.sub("", screen)), repr(screen)
        assert "\x1b[31mred\x1b[0m colour stays" in screen
        for words in ("plain after title", "a link after link", "clipboard", "cleared"):
            assert words in screen, (words, screen)
    piped = cli.gpujob("logs", job, "--raw")  # into a pipe or a file: the log as kept, escapes and all
    assert piped.stdout.splitlines()[:3] == HOSTILE[:3]


@settings(max_examples=500, deadline=None)
@given(st.text(st.characters(codec="utf-8"), max_size=80)
       | st.lists(st.sampled_from(["\x1b", "[", "]", "P", "31", ";", "m", "\x07", "\\", "\x9b", "\x9d", "\x9c",
                                   "2J", "8", "52", "a", "\r", "\t", "\x0e"]), max_size=30).map("".join))
def test_the_terminal_sanitiser_leaves_no_escape_but_colour(text):
    """The property: any text through it holds no ESC, C1 or other control character (tab and CR
    aside) outside an SGR colour code; text without controls is left as it is."""
    out = for_terminal(text)
    assert not ACTIVE.search(SGR.sub("", out)), repr(out)
    if not ACTIVE.search(text):
        assert out == text
    assert for_terminal(out) == out


# ----------------------------------------------------------------------------- spreadsheets


def test_metrics_csv_writes_no_formula_cell(cli):
    """The report's example: header cells starting =, +, -, @ were written as they are."""
    hostile = {"=HYPERLINK(\"http://x\")": 1.0, "+cmd": 2.0, "-2+3": 3.0, "@SUM(A1)": 4.0}
    job = run_printer(cli, [event(event="progress", step=1, loss=-1.5),
                            event(event="eval", step=1, wer=0.5, **hostile)], name="formulas")
    r = cli.gpujob("metrics", job, "--csv")
    assert r.returncode == 0, r.stderr
    rows = list(csv.reader(io.StringIO(r.stdout)))
    header = rows[0]
    assert not [c for c in header if c.startswith(FORMULA_STARTS)], header
    assert {"'=HYPERLINK(\"http://x\")", "'+cmd", "'-2+3", "'@SUM(A1)"} <= set(header)
    assert rows[1][header.index("loss")] == "-1.5"  # a number stays a number


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(max_size=20), st.floats(allow_nan=False), st.integers(), st.none()))
def test_a_csv_cell_never_starts_a_formula(value):
    """The property: no text cell starts with =, +, -, @, tab or CR; numbers are written unchanged."""
    cell = csv_cell(value)
    if isinstance(value, str):
        assert not cell.startswith(FORMULA_STARTS) and cell in (value, "'" + value)  # as written, or quoted
    elif value is None:
        assert cell == ""
    else:
        assert cell == value
