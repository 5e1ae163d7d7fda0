"""The `csv` tracker, added the README's way (one module in gpujob/spec/trackers/, its name in the table):
`tracking: {csv: true}` in a spec gives `<output.dir>/metrics.csv`, one row per progress or eval event, its
header the union of the names, and read back it holds the numbers of the job's own event lines."""

from __future__ import annotations

import csv
import io
import json
import math

from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob.events import parse_line
from gpujob.progress import ProgressWriter
from gpujob.runner.tracking import PROGRESS_SCALARS, TrackedWriter, numbers, wrap
from gpujob.spec import load_spec_text
from gpujob.spec.trackers import NAMES, TRACKERS
from gpujob.spec.trackers.csv import CsvFile


def spec_text(out, tracking) -> str:
    return json.dumps({"apiVersion": "gpujob/v1", "kind": "train", "name": "csv-run",
                       "data": {"train": [{"dataset": "some/dataset"}], "eval": [{"dataset": "some/dataset"}]},
                       "training": {"max_steps": 4}, "output": {"dir": str(out)}, "tracking": tracking})


def read_back(path) -> list[dict[str, float]]:
    with open(path, newline="", encoding="utf-8") as f:
        return [{k: float(v) for k, v in row.items() if v != ""} for row in csv.DictReader(f)]


def test_csv_is_in_the_table_and_the_spec_takes_it(tmp_path):
    assert "csv" in NAMES and TRACKERS["csv"].name == "csv"
    spec = load_spec_text(spec_text(tmp_path, {"csv": True, "tensorboard": False})).spec
    assert spec.tracking.enabled() == ["csv"] and spec.tracking.csv.dir is None


def test_metrics_csv_holds_the_events_numbers(tmp_path):
    out = tmp_path / "out"
    spec = load_spec_text(spec_text(out, {"csv": True})).spec
    stream = io.StringIO()
    writer = wrap(ProgressWriter(stream), spec, out)
    assert isinstance(writer, TrackedWriter)
    writer.start(total_steps=4)
    for step in range(1, 5):
        writer.progress(step=step, total_steps=4, loss=2.0 / step, learning_rate=1e-5 * step, samples_per_s=3.25,
                        epoch=step / 4)
        if step % 2 == 0:  # an eval adds names the header did not have yet (and per-source ones)
            writer.eval(step=step, wer=0.5 / step, cer=0.1 / step, **{"wer/fleurs": 0.4, "cer/fleurs": 0.2})
    writer.end(status="succeeded")

    events = [e for line in stream.getvalue().splitlines() for e in parse_line(line)]
    want = [{"step": float(e["step"]), **numbers(e, PROGRESS_SCALARS if e["event"] == "progress" else None)}
            for e in events if e["event"] in ("progress", "eval")]
    assert len(want) == 6
    path = out / "metrics.csv"
    assert read_back(path) == want
    header = path.read_text().splitlines()[0].split(",")
    assert header == ["step", "loss", "learning_rate", "samples_per_s", "epoch", "wer", "cer", "wer/fleurs",
                      "cer/fleurs"]


def test_the_worst_utterances_go_beside_it(tmp_path):
    spec = load_spec_text(spec_text(tmp_path, {"csv": {"dir": str(tmp_path / "logs")}})).spec
    writer = wrap(ProgressWriter(io.StringIO()), spec, tmp_path)
    writer.start(total_steps=1)
    writer.worst_utterances([{"source": "fleurs", "id": "a.wav", "wer": 1.0, "reference": "καλημέρα, σας",
                              "prediction": "καλη μέρα"}])
    writer.end(status="succeeded")
    with open(tmp_path / "logs" / "worst_utterances.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows == [["source", "id", "wer", "reference", "prediction"],
                    ["fleurs", "a.wav", "1.0", "καλημέρα, σας", "καλη μέρα"]]


names = st.sampled_from(["loss", "wer", "cer", "wer/a,b", 'wer/"q"', "eval_loss", "system/gpu_util"])
finite = st.floats(allow_nan=False, allow_infinity=False, width=64)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.dictionaries(names, finite, min_size=1), max_size=12))
def test_any_events_read_back_equal(tmp_path_factory, rows):
    """Whatever names come in whatever order, the file read back is the rows given, number for number."""
    folder = tmp_path_factory.mktemp("csv")
    tracker = CsvFile(folder)
    tracker.open({})
    for step, values in enumerate(rows):
        tracker.scalars(step, values)
        assert read_back(folder / "metrics.csv") == [{"step": float(i), **v} for i, v in enumerate(rows[:step + 1])]
    assert all(not math.isnan(x) for r in read_back(folder / "metrics.csv") for x in r.values())
