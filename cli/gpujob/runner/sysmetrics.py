"""System metrics while a job runs: a thread that samples the machine every few seconds and writes
``system`` events (see :mod:`gpujob.progress`), so every backend records them the same way.

What one sample holds (a key is absent where it cannot be measured, never zero in its place):

- ``cpu_percent``: the CPU time of the job's processes over the interval, in % of one core (the runner
  and its children; under torchrun the node's whole process tree, from the launcher down);
- ``rss_bytes``: their resident memory; ``mem_used_bytes`` / ``mem_total_bytes``: the host's;
- ``gpu_util_percent`` (mean over the GPUs this process sees), ``gpu_mem_used_bytes`` /
  ``gpu_mem_total_bytes`` and ``gpu_power_w`` (summed), ``gpus``: through NVML (``nvidia-ml-py``,
  imported when the sampler starts; where it or a GPU is missing, none of these keys);
- ``loader_wait_percent``: the share of the interval the training loop spent waiting for its next batch
  (:meth:`Sampler.waited`);
- ``n``: the sample's number, ``step``: the training step when it was taken.

Linux ``/proc`` is read for the processes and the host; elsewhere only the runner's own CPU time is.
The thread never fails the job: a probe that raises is left out from then on. Stdlib-only but NVML.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any, Callable

INTERVAL_S = float(os.environ.get("GPUJOB_SYSTEM_INTERVAL_S", "5"))
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096
PROC = Path("/proc")


# ---------------------------------------------------------------------------- processes and host


def _children(proc: Path) -> dict[int, list[int]]:
    """Parent pid -> child pids, for every process in ``proc``."""
    out: dict[int, list[int]] = {}
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        out.setdefault(int(fields[1]), []).append(int(entry.name))
    return out


def tree(root: int, proc: Path = PROC) -> list[int]:
    """``root`` and every process below it."""
    children = _children(proc)
    found, todo = [], [root]
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, []))
    return found


def cpu_seconds_and_rss(pids: list[int], proc: Path = PROC) -> tuple[float, int]:
    """(user + system CPU seconds, resident bytes) summed over ``pids`` (those gone meanwhile left out)."""
    cpu, rss = 0.0, 0
    for pid in pids:
        try:
            stat = (proc / str(pid) / "stat").read_text()
            statm = (proc / str(pid) / "statm").read_text().split()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2:].split()
        cpu += (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS  # utime, stime (fields 14 and 15)
        rss += int(statm[1]) * _PAGE
    return cpu, rss


def host_memory(proc: Path = PROC) -> tuple[int, int] | None:
    """(used, total) bytes of the host's memory (MemTotal - MemAvailable), or None."""
    try:
        info = dict(line.split(":", 1) for line in (proc / "meminfo").read_text().splitlines() if ":" in line)
        total = int(info["MemTotal"].split()[0]) * 1024
        available = int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None
    return total - available, total


# ---------------------------------------------------------------------------- GPUs


class Gpus:
    """NVML's view of the GPUs this process may use (``CUDA_VISIBLE_DEVICES`` as indices, where set)."""

    def __init__(self, nvml) -> None:
        self.nvml = nvml
        nvml.nvmlInit()
        count = nvml.nvmlDeviceGetCount()
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        indices = range(count)
        if visible is not None and all(p.strip().isdigit() for p in visible.split(",") if p.strip()):
            indices = [int(p) for p in visible.split(",") if p.strip() and int(p) < count]
        self.handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in indices]

    def sample(self) -> dict[str, float]:
        if not self.handles:
            return {}
        nvml = self.nvml
        utils, used, total, power = [], 0, 0, 0.0
        have_power = True
        for handle in self.handles:
            utils.append(nvml.nvmlDeviceGetUtilizationRates(handle).gpu)
            memory = nvml.nvmlDeviceGetMemoryInfo(handle)
            used, total = used + memory.used, total + memory.total
            try:
                power += nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0  # milliwatts
            except Exception:  # noqa: BLE001 - not every board reports power
                have_power = False
        out = {"gpus": len(self.handles), "gpu_util_percent": round(sum(utils) / len(utils), 1),
               "gpu_mem_used_bytes": used, "gpu_mem_total_bytes": total}
        if have_power:
            out["gpu_power_w"] = round(power, 1)
        return out

    def close(self) -> None:
        try:
            self.nvml.nvmlShutdown()
        except Exception:  # noqa: BLE001
            pass


def open_gpus(nvml=None) -> Gpus | None:
    """The GPUs through ``nvml`` (default: ``pynvml`` from nvidia-ml-py), or None without it or a GPU."""
    try:
        if nvml is None:
            import pynvml as nvml  # nvidia-ml-py
        gpus = Gpus(nvml)
    except Exception:  # noqa: BLE001 - no library, no driver, no GPU: no GPU series
        return None
    return gpus if gpus.handles else None


# ---------------------------------------------------------------------------- the sampler


class Sampler:
    """Samples every ``interval`` seconds on a daemon thread and hands each sample to ``emit``
    (the writer's ``system``); :meth:`waited` adds the training loop's time waiting for data."""

    def __init__(self, emit: Callable[..., None], *, interval: float = INTERVAL_S, root: int | None = None,
                 nvml=None, proc: Path = PROC, clock=time.monotonic) -> None:
        self.emit, self.interval, self.proc, self.clock = emit, interval, proc, clock
        self.root = root if root is not None else _tree_root()
        self.gpus = open_gpus(nvml)
        self.step = 0
        self.n = 0
        self._wait = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last: tuple[float, float, float] | None = None  # (clock, cpu seconds, wait seconds)
        self._has_proc = (proc / "meminfo").exists()

    def waited(self, seconds: float) -> None:
        with self._lock:
            self._wait += seconds

    def sample(self) -> dict[str, Any]:
        """One sample (and the base of the next one's rates)."""
        now = self.clock()
        out: dict[str, Any] = {"n": self.n, "step": self.step}
        if self._has_proc:
            cpu, rss = cpu_seconds_and_rss(tree(self.root, self.proc), self.proc)
            out["rss_bytes"] = rss
            mem = host_memory(self.proc)
            if mem is not None:
                out["mem_used_bytes"], out["mem_total_bytes"] = mem
        else:
            times = os.times()
            cpu = times.user + times.system + times.children_user + times.children_system
        with self._lock:
            wait = self._wait
        if self._last is not None and now > self._last[0]:
            span = now - self._last[0]
            out["cpu_percent"] = round(max(0.0, cpu - self._last[1]) / span * 100, 1)
            out["loader_wait_percent"] = round(min(100.0, max(0.0, wait - self._last[2]) / span * 100), 1)
        self._last = (now, cpu, wait)
        if self.gpus is not None:
            try:
                out.update(self.gpus.sample())
            except Exception:  # noqa: BLE001 - the GPU went away: no more GPU series
                self.gpus = None
        self.n += 1
        return out

    def _loop(self) -> None:
        self.sample()  # the base for the first interval's rates
        while not self._stop.wait(self.interval):
            try:
                self.emit(**self.sample())
            except Exception:  # noqa: BLE001 - system metrics never fail the job
                return

    def start(self) -> Sampler:
        global _active
        _active = self
        self._thread = threading.Thread(target=self._loop, name="gpujob-system", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        global _active
        if _active is self:
            _active = None
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2 * self.interval + 1)
        if self.gpus is not None:
            self.gpus.close()


_active: Sampler | None = None


def active() -> Sampler | None:
    """The sampler running in this process, if any (the training loop tells it the step and its waits)."""
    return _active


def _tree_root() -> int:
    """The process whose tree is the job on this node: torchrun's agent when it started several
    processes here, else the runner itself."""
    if int(os.environ.get("LOCAL_WORLD_SIZE", "1") or 1) > 1:
        return os.getppid()
    return os.getpid()


def timed(items, sampler: Sampler | None, clock=time.perf_counter):
    """``items``, with the time spent waiting for each one added to ``sampler`` (where there is one)."""
    if sampler is None:
        yield from items
        return
    iterator = iter(items)
    while True:
        t0 = clock()
        try:
            item = next(iterator)
        except StopIteration:
            return
        sampler.waited(clock() - t0)
        yield item
