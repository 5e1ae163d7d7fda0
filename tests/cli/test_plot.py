"""gpujob plot and status's sparklines, as a user checks them: the curves' points are the job's events.

Real jobs run on the local backend (the hello example, and a command job that prints known events
with per-source WER/CER); their events are read back from `gpujob logs --raw`, and every line of the
figure the CLI draws is compared with them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob.events import parse_line
from gpujob.plots import Run, figure
from gpujob.plots_term import render
from gpujob.registry import Registry
from gpujob.sparkline import BLOCKS, sparkline, thin
from gpujob_cli import GpujobCli
from terminal import run_on_terminal

ROOT = Path(__file__).resolve().parents[2]
HELLO = ROOT / "jobs" / "hello.yaml"
SOURCES = ("common_voice", "fleurs")


@pytest.fixture
def cli(tmp_path) -> GpujobCli:
    return GpujobCli(tmp_path, {**os.environ})


def run_hello(cli: GpujobCli, name: str = "hello", seed: int = 0) -> str:
    command = f"[python, -m, gpujob.demo, --steps, '60', --step-time, '0.005', --eval-every, '20', --seed, '{seed}']"
    r = cli.gpujob("submit", str(HELLO), "--follow", "--set", f"name={name}", "--set", f"command={command}",
                   "--set", f"output.dir={cli.tmp}/{name}")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()[2]


def run_printer(cli: GpujobCli, events: list[dict], name: str = "printer") -> str:
    """A command job that prints ``events`` in the progress protocol, then ends."""
    script = cli.tmp / f"{name}.py"
    script.write_text("import json\n" + "".join(f"print('@gpujob/v1 ' + json.dumps({e!r}), flush=True)\n" for e in events))
    spec = cli.tmp / f"{name}.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: {name}\ncommand: [{sys.executable}, {script}]\n"
                    f"output:\n  dir: {cli.tmp}/{name}-out\n")
    r = cli.gpujob("submit", str(spec), "--follow")
    assert r.returncode == 0, r.stdout + r.stderr
    return r.stdout.split()[2]


def known_events() -> list[dict]:
    """Ten steps of training, and two evals scored overall and on two sources."""
    out: list[dict] = [{"event": "start", "total_steps": 10}]
    for step in range(1, 11):
        out.append({"event": "progress", "step": step, "total_steps": 10, "loss": round(3.0 / step, 4),
                    "learning_rate": 1e-5 * step / 10, "samples_per_s": 40.0 + step})
        if step % 5 == 0:
            e = {"event": "eval", "step": step, "wer": 0.5 / step * 5, "cer": 0.2 / step * 5, "eval_loss": 1.0 / step}
            for i, source in enumerate(SOURCES):
                e[f"wer/{source}"] = e["wer"] * (1 + 0.2 * i)
                e[f"cer/{source}"] = e["cer"] * (1 + 0.1 * i)
            out.append(e)
    out.append({"event": "end", "status": "succeeded"})
    return out


def logged_series(cli: GpujobCli, job: str, kind: str, field: str, scale: float = 1.0) -> tuple[list, list]:
    """(steps, values) of one field of the job's events, read back from what it printed."""
    r = cli.gpujob("logs", job, "--raw")
    assert r.returncode == 0, r.stderr
    events = [e for line in r.stdout.splitlines() for e in parse_line(line)]
    pairs = [(e["step"], e[field] * scale) for e in events if e["event"] == kind and field in e]
    return [s for s, _ in pairs], [v for _, v in pairs]


def the_figure(jobs: dict[str, str]):
    """The figure as `gpujob plot` draws it: each job's history from the registry."""
    registry = Registry()
    return figure([Run(label, registry.history(job)) for job, label in jobs.items()], title="test")


def lines_by_label(fig) -> dict[str, tuple]:
    """{(axis y label, legend label): (xdata, ydata, colour, linestyle)} of every line in the figure."""
    out = {}
    for ax in fig.axes:
        assert ax.get_xlabel() == "step"
        for line in ax.get_lines():
            out[(ax.get_ylabel(), line.get_label())] = (list(line.get_xdata()), list(line.get_ydata()),
                                                        line.get_color(), line.get_linestyle())
    return out


def test_the_curves_are_the_events_of_a_real_job(cli):
    job = run_hello(cli)
    lines = lines_by_label(the_figure({job: f"{job} hello"}))
    expected = {
        ("loss", f"{job} hello · train loss"): logged_series(cli, job, "progress", "loss"),
        ("loss", f"{job} hello · eval loss"): logged_series(cli, job, "eval", "eval_loss"),
        ("learning rate", f"{job} hello"): logged_series(cli, job, "progress", "learning_rate"),
        ("WER (%)", f"{job} hello"): logged_series(cli, job, "eval", "wer", scale=100),
        ("samples/s", f"{job} hello"): logged_series(cli, job, "progress", "samples_per_s"),
    }
    assert set(lines) == set(expected)  # the demo reports no CER: no CER panel
    for key, (steps, values) in expected.items():
        assert len(steps) >= 3, key
        xs, ys, _, _ = lines[key]
        assert xs == steps and ys == pytest.approx(values, rel=1e-12), key
    assert len(expected[("loss", f"{job} hello · train loss")][0]) == 60


def test_per_source_wer_and_cer_are_drawn_dashed_beside_the_overall_score(cli):
    job = run_printer(cli, known_events())
    lines = lines_by_label(the_figure({job: "p"}))
    for metric, unit in (("wer", "WER (%)"), ("cer", "CER (%)")):
        steps, overall = logged_series(cli, job, "eval", metric, scale=100)
        assert steps == [5, 10]
        xs, ys, _, style = lines[(unit, "p")]
        assert xs == steps and ys == pytest.approx(overall) and style == "-"
        for source in SOURCES:
            _, values = logged_series(cli, job, "eval", f"{metric}/{source}", scale=100)
            xs, ys, _, style = lines[(unit, f"p · {source}")]
            assert (xs, ys) == (steps, pytest.approx(values)) and style != "-"
    assert lines[("learning rate", "p")][1] == pytest.approx([1e-5 * s / 10 for s in range(1, 11)])


def test_several_jobs_overlaid_each_in_one_colour(cli):
    a, b = run_hello(cli, "a", seed=1), run_printer(cli, known_events(), "b")
    fig = the_figure({a: f"{a} a", b: f"{b} b"})
    lines = lines_by_label(fig)
    scales = {ax.get_ylabel(): ax.get_yscale() for ax in fig.axes}
    assert scales["learning rate"] == "log" and scales["loss"] == "linear"  # 0.1 beside 1e-6..1e-5: decades apart
    colours = {job: {c for (_, label), (_, _, c, _) in lines.items() if label.startswith(job)} for job in (a, b)}
    assert len(colours[a]) == 1 and len(colours[b]) == 1 and colours[a] != colours[b]
    panels = {unit for unit, label in lines if label.startswith(a)} & {unit for unit, label in lines if label.startswith(b)}
    assert {"loss", "WER (%)", "learning rate", "samples/s"} <= panels


@pytest.mark.slow  # over 5 s on 2 cores: the fast tier leaves it to make test
def test_plot_writes_a_png_an_svg_and_a_pdf(cli):
    job = run_hello(cli)
    r = cli.gpujob("plot", job, "-o", "curves.png")
    assert r.returncode == 0 and "wrote curves.png" in r.stdout, r.stdout + r.stderr
    png = (cli.tmp / "curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and png[12:16] == b"IHDR"
    width, height = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")
    assert width >= 800 and height >= 400
    from PIL import Image

    with Image.open(cli.tmp / "curves.png") as img:
        assert img.size == (width, height)
        assert len(img.convert("L").getcolors(maxcolors=1 << 16) or range(1 << 16)) > 2  # not a blank picture
    assert cli.gpujob("plot", job, "-o", "curves.svg").returncode == 0
    svg = ET.parse(cli.tmp / "curves.svg").getroot()
    assert svg.tag == "{http://www.w3.org/2000/svg}svg"
    text = (cli.tmp / "curves.svg").read_text()
    assert "WER (%)" in text and "samples/s" in text and f"{job} hello" in text
    assert cli.gpujob("plot", job, "-o", "curves.pdf").returncode == 0
    assert (cli.tmp / "curves.pdf").read_bytes()[:5] == b"%PDF-"


def test_plot_refuses_what_it_cannot_draw(cli):
    r = cli.gpujob("plot", "-o", "x.png")
    assert r.returncode == 2 and "no jobs yet" in r.stderr
    silent = run_printer(cli, [], "silent")
    r = cli.gpujob("plot", silent, "-o", "x.png")
    assert r.returncode == 2 and "nothing to plot" in r.stderr and not (cli.tmp / "x.png").exists()
    r = cli.gpujob("plot", silent, "-o", "x.gif")
    assert r.returncode == 2 and ".png, .svg, .pdf" in r.stderr and "Traceback" not in r.stderr
    r = cli.gpujob("plot", silent)  # no -o, and stdout is a pipe, not a terminal
    assert r.returncode == 2 and "-o curves.png" in r.stderr
    talker = run_printer(cli, known_events(), "talker")
    r = cli.gpujob("plot", silent, talker, "-o", "both.png")
    assert r.returncode == 0 and f"job {silent} (silent) has no metric history" in r.stderr
    assert "1 job:" in r.stdout and (cli.tmp / "both.png").exists()
    r = cli.gpujob("plot", "--sweep", "nosuch", "-o", "x.png")
    assert r.returncode == 2 and "no sweep 'nosuch'" in r.stderr


def test_a_sweep_is_labelled_by_its_swept_values(cli):
    from gpujob.plots import panels

    registry = Registry()
    points = [{"event": "eval", "step": 5, "wer": 0.3}, {"event": "eval", "step": 10, "wer": 0.2}]
    spec = {"name": "s", "training": {"learning_rate": 1e-5, "freeze": "none"}, "output": {"dir": "o/sw1-1"}}
    for lr, out in ((1e-5, "o/sw1-1"), (3e-5, "o/sw1-2")):  # each job's own folder, as `gpujob sweep` names it
        job = registry.create(name="s", kind="train", backend="local", spec_path=None, output_dir=out, sweep_id="sw1",
                              spec={**spec, "training": {**spec["training"], "learning_rate": lr}, "output": {"dir": out}})
        registry.add_history(job.id, points)
    from gpujob.cli.plot_cmds import swept_labels

    labels = swept_labels(registry.list(sweep="sw1"))
    assert sorted(label.split(" ", 1)[1] for label in labels.values()) == ["learning_rate=1e-05", "learning_rate=3e-05"]
    r = cli.gpujob("plot", "--sweep", "sw1", "-o", "sweep.svg")
    assert r.returncode == 0, r.stderr
    text = (cli.tmp / "sweep.svg").read_text()
    assert "learning_rate=3e-05" in text and "sweep sw1" in text
    assert len(panels([Run(label, points) for label in labels.values()])[0].lines) == 2


def test_status_shows_sparklines_of_wer_and_loss(cli):
    job = run_hello(cli)
    r = cli.gpujob("status", job)
    assert r.returncode == 0, r.stderr
    rows = {line.split("  ", 1)[0]: line for line in r.stdout.splitlines()}
    _, wer = logged_series(cli, job, "eval", "wer")
    _, loss = logged_series(cli, job, "progress", "loss")
    assert f"{wer[0] * 100:.2f}% → {wer[-1] * 100:.2f}%" in rows["WER curve"]
    assert f"{loss[0]:.4g} → {loss[-1]:.4g}" in rows["loss curve"]
    blocks = re.search(f"[{BLOCKS}]+", rows["loss curve"]).group(0)
    assert blocks == sparkline(loss) and len(blocks) == 30
    one_eval = run_printer(cli, [{"event": "progress", "step": 1, "loss": 1.0},
                                 {"event": "eval", "step": 1, "wer": 0.5}], "one")
    assert "curve" not in cli.gpujob("status", one_eval).stdout  # one point is no curve


@given(values=st.lists(st.floats(min_value=-1e9, max_value=1e9, allow_nan=False), max_size=200),
       width=st.integers(min_value=1, max_value=60))
@settings(max_examples=300, deadline=None)
def test_a_sparkline_is_short_and_never_gives_a_higher_value_a_lower_block(values, width):
    line = sparkline(values, width)
    shown = thin(values, width)
    assert len(line) == len(shown) == min(len(values), width)
    assert set(line) <= set(BLOCKS)
    if values:  # the last point always shows, and the first too where there is room for two
        assert shown[-1] == values[-1] and (width < 2 or shown[0] == values[0])
    for i, (v, a) in enumerate(zip(shown, line)):
        for w, b in zip(shown[i + 1:], line[i + 1:]):
            if v < w:
                assert BLOCKS.index(a) <= BLOCKS.index(b)
            elif v > w:
                assert BLOCKS.index(a) >= BLOCKS.index(b)
    if len(set(shown)) > 1:
        assert BLOCKS[0] in line and BLOCKS[-1] in line


def y_ticks(text: str) -> list[float]:
    return [float(m.group(1)) for m in re.finditer(r"^\s*(-?[\d.]+(?:e[-+]?\d+)?)┤", text, re.M)]


def test_the_terminal_plot_spans_the_values_of_loss_and_wer():
    history = [e for e in known_events() if e["event"] in ("progress", "eval")]
    text = render([Run("p", history)], title="job p", size=(100, 40), colour=False)
    assert "\x1b[" not in text and text.startswith("job p")
    loss_part, wer_part = text.split("word error rate")
    assert "step" in loss_part and "loss" in loss_part and "WER (%)" in wer_part
    for part, values in ((loss_part, [e["loss"] for e in history if "loss" in e] + [e["eval_loss"] for e in history if "eval_loss" in e]),
                         (wer_part, [100 * e[k] for e in history if e["event"] == "eval" for k in ("wer", "wer/common_voice", "wer/fleurs")])):
        ticks = y_ticks(part)
        span = max(values) - min(values)
        assert abs(max(ticks) - max(values)) <= 0.01 * span and abs(min(ticks) - min(values)) <= 0.01 * span, (ticks, values)
    for label in ("p · train loss", "p · eval loss", "p · common_voice", "p · fleurs"):
        assert label in text


def test_plot_on_a_terminal_draws_there(cli):
    job = run_hello(cli)
    env = {**cli.env, "COLUMNS": "100", "LINES": "40", "TERM": "xterm"}
    code, screen = run_on_terminal([sys.executable, "-m", "gpujob", "plot", job], env, cwd=cli.tmp)
    screen = re.sub(r"\x1b\[[0-9;]*m", "", screen)
    assert code == 0, screen
    assert "word error rate" in screen and "WER (%)" in screen and "step" in screen and f"{job} hello" in screen


def test_status_and_help_load_no_plotting_library(cli):
    job = run_hello(cli)
    probe = ("import sys, runpy\nsys.argv = ['gpujob', *sys.argv[1:]]\n"
             "try:\n    runpy.run_module('gpujob', run_name='__main__')\nexcept SystemExit:\n    pass\n"
             "print('LOADED', sorted({'matplotlib', 'plotext', 'numpy', 'PIL'} & {m.split('.')[0] for m in sys.modules}))\n")
    for args in (["--help"], ["status", job], ["plot", "--help"]):
        out = subprocess.run([sys.executable, "-c", probe, *args], capture_output=True, text=True, env=cli.env, cwd=cli.tmp)
        assert "LOADED []" in out.stdout, (args, out.stdout + out.stderr)
