"""System metrics: the runner's sampler on this machine (CPU and memory from /proc; no GPU here, so no GPU
series at all), and with a stand-in NVML (a module object with NVML's calls) the GPU series, their
events read back strictly, their history points, status's current and peak values, the "GPU starved"
hint, and the plot's system panels."""

from __future__ import annotations

import io
import time
from types import SimpleNamespace as NS

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gpujob import history, plots, sysview
from gpujob.events import normalize_event, parse_line
from gpujob.progress import ProgressWriter
from gpujob.runner import sysmetrics

GB = 10**9


class FakeNvml:
    """pynvml's calls the sampler makes, over ``boards``: (utilisation %, used bytes, total bytes, mW)."""

    def __init__(self, boards):
        self.boards = boards
        self.inits = self.shutdowns = 0

    def nvmlInit(self):
        self.inits += 1

    def nvmlShutdown(self):
        self.shutdowns += 1

    def nvmlDeviceGetCount(self):
        return len(self.boards)

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetUtilizationRates(self, h):
        return NS(gpu=self.boards[h][0], memory=0)

    def nvmlDeviceGetMemoryInfo(self, h):
        return NS(used=self.boards[h][1], total=self.boards[h][2], free=self.boards[h][2] - self.boards[h][1])

    def nvmlDeviceGetPowerUsage(self, h):
        return self.boards[h][3]


class NoDriver:
    def nvmlInit(self):
        raise RuntimeError("NVML Shared Library Not Found")


def run_sampler(nvml, seconds=1.2, interval=0.3, busy=True, wait=0.0) -> list[dict]:
    out = io.StringIO()
    sampler = sysmetrics.Sampler(ProgressWriter(out).system, interval=interval, nvml=nvml).start()
    assert sysmetrics.active() is sampler
    end = time.monotonic() + seconds
    x = 0
    enough = end + 15  # a loaded machine may starve the sampler's thread: wait for two samples, up to 15 s more
    while time.monotonic() < end or (len(out.getvalue().splitlines()) < 2 and time.monotonic() < enough):
        if busy:
            x += 1
        else:
            time.sleep(0.05)
        if wait:
            sampler.waited(wait)
    sampler.stop()
    assert sysmetrics.active() is None
    return [e for line in out.getvalue().splitlines() for e in parse_line(line)]


def test_on_this_machine_cpu_and_memory_are_sampled_and_no_gpu_series_exist():
    events = run_sampler(NoDriver())
    assert len(events) >= 2 and all(e["event"] == "system" for e in events)
    for e in events:
        assert e["rss_bytes"] > 10 * 2**20  # this Python process, at least
        assert 0 < e["mem_used_bytes"] <= e["mem_total_bytes"]
        assert e["cpu_percent"] >= 0 and 0 <= e["loader_wait_percent"] <= 100
        assert not any(k.startswith("gpu") for k in e), e  # absent, not zero
    assert max(e["cpu_percent"] for e in events) > 1  # a busy loop ran meanwhile
    assert [e["n"] for e in events] == list(range(1, len(events) + 1))


def test_the_pynvml_of_this_machine_gives_no_gpu_series_without_a_gpu():
    assert sysmetrics.open_gpus() is None  # nvidia-ml-py is installed here; there is no driver or GPU


def test_a_stand_in_nvml_gives_gpu_series_summed_over_the_visible_boards(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,2")
    nvml = FakeNvml([(30, 10 * GB, 80 * GB, 200_000), (99, 1 * GB, 80 * GB, 1), (50, 30 * GB, 80 * GB, 300_500)])
    events = run_sampler(nvml, busy=False)
    assert events
    for e in events:
        assert e["gpus"] == 2 and e["gpu_util_percent"] == 40.0
        assert e["gpu_mem_used_bytes"] == 40 * GB and e["gpu_mem_total_bytes"] == 160 * GB
        assert e["gpu_power_w"] == 500.5
    assert nvml.inits == 1 and nvml.shutdowns == 1


def test_loader_wait_is_the_share_of_the_interval_spent_waiting():
    events = run_sampler(NoDriver(), seconds=1.5, interval=0.5, busy=False, wait=0.025)  # ~half of every 50 ms
    assert events and all(30 <= e["loader_wait_percent"] <= 60 for e in events), events


def test_timed_counts_the_wait_for_each_item_and_yields_them_all():
    sampler = sysmetrics.Sampler(lambda **_: None, nvml=NoDriver())

    def slow():
        for i in range(3):
            time.sleep(0.05)
            yield i

    assert list(sysmetrics.timed(slow(), sampler)) == [0, 1, 2]
    assert 0.14 <= sampler._wait < 0.5
    assert list(sysmetrics.timed(iter([1, 2]), None)) == [1, 2]


def gpu_history(utils, waits, gpu=True):
    out = []
    for i, (u, w) in enumerate(zip(utils, waits)):
        e = {"event": "system", "t": 1000.0 + 5 * i, "n": i, "step": 10 * i, "cpu_percent": 90.0 + i,
             "rss_bytes": (2 + i) * GB, "mem_used_bytes": 8 * GB, "mem_total_bytes": 32 * GB, "loader_wait_percent": w}
        if gpu:
            e.update(gpus=1, gpu_util_percent=u, gpu_mem_used_bytes=(20 + i) * GB, gpu_mem_total_bytes=80 * GB,
                     gpu_power_w=250.0)
        out.append(history.point(e))
    return out


def test_status_shows_current_and_peak_and_a_starved_gpu():
    points = gpu_history([95, 90, 30, 25, 20, 28], [1, 2, 45, 50, 60, 40])
    rows = dict(sysview.status_rows(points))
    assert rows["system"].startswith("CPU 95% (peak 95%)  RSS 7.0 GB (peak 7.0 GB)")
    assert "host memory 8.0 GB/32 GB" in rows["system"]
    assert rows["GPU"] == "1 GPU: utilisation 28% (peak 95%)  memory 25 GB/80 GB (peak 25 GB)  power 250 W (peak 250 W)"
    assert rows["hint"].startswith("GPU starved: 48% utilisation while the training loop waited for data 33% of "
                                   "the time"), rows["hint"]
    busy = dict(sysview.status_rows(gpu_history([95, 97, 99, 98], [1, 2, 1, 0])))
    assert "hint" not in busy
    cpu_only = dict(sysview.status_rows(gpu_history([0] * 4, [50] * 4, gpu=False)))
    assert "GPU" not in cpu_only and "hint" not in cpu_only


def test_the_plot_draws_the_gpu_and_system_panels_and_no_gpu_panel_line_without_one():
    points = gpu_history([95, 90, 30], [1, 2, 45])
    drawn = {p.key: p for p in plots.panels([plots.Run("a", points)])}
    util = drawn["util"]
    assert util.xlabel == "minutes"
    gpu_line = next(line for line in util.lines if line.label == "a · GPU")
    assert gpu_line.values == (95, 90, 30) and gpu_line.steps == pytest.approx((0, 5 / 60, 10 / 60), abs=1e-3)
    assert [line.values for line in drawn["memory"].lines if line.label == "a · GPU memory"] == [(20.0, 21.0, 22.0)]
    fig = plots.figure([plots.Run("a", points)], "t")
    gids = {line.get_gid() for ax in fig.axes for line in ax.get_lines()}
    assert {"util/a · GPU", "memory/a · GPU memory", "cpu/a"} <= gids
    cpu_only = {p.key: p for p in plots.panels([plots.Run("b", gpu_history([0] * 3, [5] * 3, gpu=False))])}
    assert [line.label for line in cpu_only["util"].lines] == ["b · loader wait"]
    assert cpu_only["util"].title == "loader wait" and util.title == "GPU utilisation, loader wait"
    assert [line.label for line in cpu_only["memory"].lines] == ["b · RSS"]


def test_human_sizes():
    assert [sysview.human_bytes(n) for n in (0, 999, 1000, 290403936, 1.5e9, 123e9, None)] == \
        ["0 B", "999 B", "1.0 kB", "290 MB", "1.5 GB", "123 GB", "-"]


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["n", "step", "cpu_percent", "rss_bytes", "gpu_util_percent", "gpus",
                                         "gpu_power_w", "loader_wait_percent", "mem_total_bytes", "other"]),
                       st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5)))
def test_a_system_event_keeps_only_its_fields_in_range(fields):
    event = normalize_event({"event": "system", **fields})
    for key, value in event.items():
        assert key in ("event", "n", "step", "cpu_percent", "rss_bytes", "gpu_util_percent", "gpus",
                       "gpu_power_w", "loader_wait_percent", "mem_total_bytes")
        if key.endswith("_percent") and key != "cpu_percent":
            assert 0 <= value <= 100
        if key.endswith("_bytes"):
            assert type(value) is int and 0 <= value <= 10**18
    p = history.point(event)
    assert (p is None) == ("n" not in event)


def test_no_system_sample_follows_the_end_event():
    out = io.StringIO()
    writer = ProgressWriter(out)
    writer.system(n=1, step=0, cpu_percent=5.0)
    writer.end(status="succeeded")
    writer.system(n=2, step=0, cpu_percent=5.0)  # the sampler thread, a moment late
    assert [e["event"] for line in out.getvalue().splitlines() for e in parse_line(line)] == ["system", "end"]
