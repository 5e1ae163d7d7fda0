"""The runner on several processes: torchrun (gloo on the CPU, fp32) with a tiny Whisper and real
(libespeak-ng) Greek speech. The same steps whatever the layout, one writer, resuming on another
number of processes, and the faults: SIGTERM, a rank killed, a rank that hangs, bad data."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file  # noqa: E402

from gpujob.events import parse_line  # noqa: E402

pytestmark = pytest.mark.slow
TORCHRUN = str(Path(sys.executable).parent / "torchrun")
LAYOUTS = [(1, 8, 1), (2, 4, 1), (1, 4, 2), (2, 2, 2)]  # (processes, per_device_batch_size, accumulation)
STEPS = 4
LOSS_RTOL = 2e-5
WEIGHT_ATOL = 1e-4


@dataclass
class Run:
    code: int
    events: list[dict]
    output: str
    out: Path

    @property
    def losses(self) -> dict[int, float]:
        return {e["step"]: e["loss"] for e in self.events if e["event"] == "progress"}

    def kinds(self, kind: str) -> list[dict]:
        return [e for e in self.events if e["event"] == kind]

    def weights(self, step: int = STEPS) -> dict[str, torch.Tensor]:
        return load_file(self.out / "checkpoints" / f"checkpoint-{step}" / "model.safetensors")


@pytest.fixture(scope="module")
def speech(small_greek) -> Path:
    return small_greek


def write_spec(path: Path, model: Path, data: Path, *, batch: int, accumulation: int = 1, group_by_length=True,
               kind: str = "train", train_split: str = "train", **training) -> Path:
    spec = {
        "apiVersion": "gpujob/v1", "kind": kind, "name": "dist",
        "model": {"checkpoint": str(model), "language": "el"},
        "data": {"train": [{"dataset": str(data), "split": train_split}] if kind == "train" else [],
                 "eval": [{"dataset": str(data), "split": "heldout"}], "loader_workers": 1},
        "training": {"max_steps": STEPS, "per_device_batch_size": batch, "gradient_accumulation_steps": accumulation,
                     "learning_rate": 1e-3, "warmup_steps": 1, "eval_steps": 2, "save_steps": 1000, "dropout": 0.0,
                     "precision": "fp32", "generation_max_length": 20, "group_by_length": group_by_length,
                     "seed": 7, **training},
        "evaluation": {"batch_size": 2},
        "output": {"dir": str(path.parent / "out")},
        "resources": {"gpus": 0},
    }
    if kind != "train":
        del spec["training"]["max_steps"]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(spec))
    return path


def job_env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1", **extra}
    env.pop("GPUJOB_OUTPUT_DIR", None)
    return env


def argv(spec: Path, processes: int, *, launcher: bool) -> list[str]:
    if launcher:
        return [sys.executable, "-m", "gpujob.runner.launch", "--standalone", f"--nproc-per-node={processes}", str(spec)]
    if processes == 1:
        return [sys.executable, "-m", "gpujob.runner", str(spec)]
    return [TORCHRUN, "--standalone", "--nproc-per-node", str(processes), "-m", "gpujob.runner", str(spec)]


def run(spec: Path, processes: int = 1, *, launcher: bool = False, on_event=None, timeout: float = 300) -> Run:
    """Run the job to its end; ``on_event(event, proc)`` sees each event as it arrives."""
    proc = subprocess.Popen(argv(spec, processes, launcher=launcher), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=job_env(), start_new_session=True)
    events, lines = [], []
    deadline = time.monotonic() + timeout
    for line in proc.stdout:
        lines.append(line)
        for event in parse_line(line):
            events.append(event)
            if on_event is not None:
                on_event(event, proc)
        assert time.monotonic() < deadline, "".join(lines)[-3000:]
    return Run(proc.wait(timeout=60), events, "".join(lines), spec.parent / "out")


def assert_same_steps(got: Run, ref: Run, *, steps=range(1, STEPS + 1)) -> None:
    """Loss at every step within 2e-5 (relative), and the final weights: the number of elements off by
    more than 1e-4 (Adam turns float noise in a near-zero gradient into a full step) stays tiny."""
    for step in steps:
        assert got.losses[step] == pytest.approx(ref.losses[step], rel=LOSS_RTOL), (step, got.losses, ref.losses)
    mine, theirs = got.weights(), ref.weights()
    total = sum(t.numel() for t in theirs.values())
    off = sum(int(((mine[k] - theirs[k]).abs() > WEIGHT_ATOL).sum()) for k in theirs)
    assert off <= total * 1e-4, f"{off} of {total} weights differ by more than {WEIGHT_ATOL}"


@pytest.fixture(scope="module")
def layouts(tmp_path_factory, tiny_model, speech):
    """Each (group_by_length, layout) trained once, on demand."""
    done: dict[tuple, Run] = {}

    def get(group_by_length: bool, layout: tuple[int, int, int]) -> Run:
        key = (group_by_length, layout)
        if key not in done:
            processes, batch, accumulation = layout
            folder = tmp_path_factory.mktemp(f"gbl{int(group_by_length)}-{processes}x{batch}x{accumulation}")
            spec = write_spec(folder / "spec.json", tiny_model, speech, batch=batch, accumulation=accumulation,
                              group_by_length=group_by_length)
            done[key] = run(spec, processes)
            assert done[key].code == 0, done[key].output[-4000:]
        return done[key]

    return get


# ------------------------------------------------------------------------------------ exactness


@pytest.mark.parametrize("group_by_length", [True, False], ids=["grouped", "shuffled"])
def test_every_layout_takes_the_same_steps(layouts, group_by_length):
    """1 process x batch 8 = 2 x 4 (torchrun) = 1 x 4 x accumulation 2 = 2 x 2 x 2: the same global
    batches, the loss normalised by the global token count, the same evaluation."""
    ref = layouts(group_by_length, LAYOUTS[0])
    ref_predictions = (ref.out / "predictions.jsonl").read_text()
    for layout in LAYOUTS[1:]:
        got = layouts(group_by_length, layout)
        assert [e["step"] for e in got.kinds("progress")] == list(range(1, STEPS + 1)), layout  # each once
        assert len(got.kinds("start")) == len(got.kinds("end")) == 1 and got.kinds("end")[0]["status"] == "succeeded"
        assert [e["step"] for e in got.kinds("eval")] == [2, 4] and len(got.kinds("checkpoint")) == 1
        assert_same_steps(got, ref)
        assert got.kinds("end")[0]["metrics"] == ref.kinds("end")[0]["metrics"], layout
        assert (got.out / "predictions.jsonl").read_text() == ref_predictions, layout
        assert "[rank" not in got.output, got.output[-3000:]  # no warnings or errors from the other ranks


def test_lora_takes_the_same_steps_on_one_process_and_on_two(tmp_path, tiny_model, speech):
    """training.lora under torchrun: 1 process x batch 8 = 2 x 4, the adapters (all a checkpoint holds) included."""
    lora = {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj", "v_proj", "fc1"]}
    runs = {}
    for processes, batch in ((1, 8), (2, 4)):
        spec = write_spec(tmp_path / f"{processes}x{batch}" / "spec.json", tiny_model, speech, batch=batch,
                          save_steps=STEPS, lora=lora)
        runs[processes] = run(spec, processes)
        assert runs[processes].code == 0, runs[processes].output[-4000:]
    one, two = runs[1], runs[2]
    for step in range(1, STEPS + 1):
        assert two.losses[step] == pytest.approx(one.losses[step], rel=LOSS_RTOL), (step, one.losses, two.losses)
    adapter = lambda r: load_file(r.out / "checkpoints" / f"checkpoint-{STEPS}" / "adapter_model.safetensors")  # noqa: E731
    mine, theirs = adapter(two), adapter(one)
    assert set(mine) == set(theirs) and all("lora_" in k for k in mine)
    for key in theirs:
        torch.testing.assert_close(mine[key], theirs[key], atol=WEIGHT_ATOL, rtol=0)
    assert two.kinds("end")[0]["metrics"] == one.kinds("end")[0]["metrics"]


def test_a_cached_frozen_encoder_prefix_takes_the_same_steps_on_two_processes(tmp_path, tiny_model, speech):
    """freeze: {encoder_layers: 1}: the frozen prefix is cached per clip and the encoder layer that trains
    runs outside the DDP wrapper's forward; its gradients are still averaged over the processes."""
    runs = {}
    for processes, batch in ((1, 8), (2, 4)):
        spec = write_spec(tmp_path / f"p{processes}" / "spec.json", tiny_model, speech, batch=batch,
                          freeze={"encoder_layers": 1})
        runs[processes] = run(spec, processes)
        assert runs[processes].code == 0, runs[processes].output[-4000:]
    assert_same_steps(runs[2], runs[1])
    assert runs[2].kinds("end")[0]["metrics"] == runs[1].kinds("end")[0]["metrics"]
    trained = [k for k in runs[1].weights() if k.startswith("model.encoder.layers.1.")]
    before = load_file(tiny_model / "model.safetensors")
    assert trained and any(not torch.equal(runs[2].weights()[k], before[k]) for k in trained)


def test_two_nodes_on_loopback_write_once_from_node_0(tmp_path, layouts, tiny_model, speech):
    """2 nodes x 1 process, c10d rendezvous on 127.0.0.1. torchrun numbers nodes in the order of their
    addresses (on Kubernetes: <job>-0, <job>-1, ...); here node 0 says 127.0.0.1 and node 1 localhost,
    and node 1 starts first, so only that order can make node 0 rank 0, the writer."""
    ref = layouts(True, LAYOUTS[0])
    spec = write_spec(tmp_path / "spec.json", tiny_model, speech, batch=4)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    nodes = []
    for address in ("localhost", "127.0.0.1"):  # node 1, then node 0
        cmd = [TORCHRUN, "--nnodes", "2", "--nproc-per-node", "1", "--rdzv-backend", "c10d",
               "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes", "--local-addr", address,
               "-m", "gpujob.runner", str(spec)]
        nodes.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=job_env()))
        time.sleep(0.5)
    node1, node0 = (p.communicate(timeout=300)[0] for p in nodes)
    assert [p.returncode for p in nodes] == [0, 0], node0[-3000:] + node1[-3000:]
    assert "@gpujob/v1" not in node1 and "Data preflight" not in node1
    events = [e for line in node0.splitlines() for e in parse_line(line)]
    got = Run(0, events, node0, tmp_path / "out")
    assert [e["step"] for e in got.kinds("progress")] == list(range(1, STEPS + 1))
    assert_same_steps(got, ref)


def test_a_process_with_nothing_in_a_step_still_takes_part_and_changes_nothing(tmp_path, tiny_model, speech):
    """9 clips, a global batch of 8: the second step holds one example, so under 2 processes x 2
    micro-steps three of the four shares are empty. A process whose share is empty at the step's
    synchronising pass runs one silent clip with weight 0; the steps are still one process's."""
    nine = tmp_path / "nine"
    (nine / "train").mkdir(parents=True)
    rows = (speech / "train" / "metadata.csv").read_text().splitlines()
    (nine / "train" / "metadata.csv").write_text("\n".join(rows[:10]) + "\n")
    for row in rows[1:10]:
        name = row.split(",")[0]
        (nine / "train" / name).symlink_to(speech / "train" / name)
    (nine / "heldout").symlink_to(speech / "heldout")
    runs = []
    for processes, batch, accumulation in ((1, 8, 1), (2, 2, 2)):
        spec = write_spec(tmp_path / f"{processes}" / "spec.json", tiny_model, nine, batch=batch,
                          accumulation=accumulation, max_steps=STEPS, eval_steps=1000)
        runs.append(run(spec, processes))
        assert runs[-1].code == 0, runs[-1].output[-3000:]
    assert runs[0].losses.keys() == runs[1].losses.keys() == {1, 2, 3, 4}
    assert_same_steps(runs[1], runs[0])


# ------------------------------------------------------------------------------------ faults


def _worker(launcher: int, rank: int) -> int:
    """The pid of the runner process with RANK=rank that torchrun (in ``launcher``) started."""
    for _ in range(100):
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                environ = (entry / "environ").read_bytes().split(b"\0")
                ppid = int((entry / "stat").read_bytes().rsplit(b")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                continue
            if ppid == launcher and f"RANK={rank}".encode() in environ:
                return int(entry.name)
        time.sleep(0.1)
    raise AssertionError(f"no rank {rank} under {launcher}")


def test_sigterm_to_one_rank_checkpoints_once_every_rank_exits_143_and_one_process_resumes(
        tmp_path, layouts, tiny_model, speech):
    ref = layouts(True, LAYOUTS[0])
    spec = write_spec(tmp_path / "spec.json", tiny_model, speech, batch=4)

    def stop_rank_1(event, proc):
        if event["event"] == "progress" and event["step"] == 1:
            os.kill(_worker(proc.pid, 1), signal.SIGTERM)

    first = run(spec, 2, launcher=True, on_event=stop_rank_1)
    assert first.code == 143, first.output[-3000:]  # the launcher says 143 only if every rank exited 143
    assert "every process stopped on SIGTERM" in first.output
    saved = first.kinds("checkpoint")
    assert len(saved) == 1 and first.kinds("end")[-1]["status"] == "failed", first.output[-3000:]
    step = saved[0]["step"]
    assert max(first.losses) == step and "Traceback" not in first.output

    second = run(spec, 1)  # the same spec, one process: the checkpoint's global batch of 8 is kept
    assert second.code == 0, second.output[-3000:]
    assert min(second.losses) == step + 1 and f"resuming from {first.out / 'checkpoints'}" in second.output
    assert "8 examples (1 process × 2 micro-batches of ≤4)" in second.output
    assert_same_steps(second, ref, steps=range(step + 1, STEPS + 1))


def test_a_killed_rank_ends_the_job_and_is_named(tmp_path, tiny_model, speech):
    spec = write_spec(tmp_path / "spec.json", tiny_model, speech, batch=4, max_steps=500, eval_steps=1000)
    killed = {}

    def kill_rank_1(event, proc):
        if event["event"] == "progress" and event["step"] == 2 and not killed:
            os.kill(_worker(proc.pid, 1), signal.SIGKILL)
            killed["at"] = time.monotonic()

    result = run(spec, 2, launcher=True, on_event=kill_rank_1)
    assert time.monotonic() - killed["at"] < 60  # no rank left waiting in a collective
    assert result.code == 137, result.output[-3000:]
    assert "gpujob: rank 1 of 2 failed first: killed by SIGKILL" in result.output
    assert max(result.losses) < 500


def test_a_hung_rank_is_given_up_after_distributed_timeout(tmp_path, tiny_model, speech):
    spec = write_spec(tmp_path / "spec.json", tiny_model, speech, batch=4, max_steps=500, eval_steps=1000)
    data = json.loads(spec.read_text())
    data["distributed"] = {"timeout": "5s"}
    spec.write_text(json.dumps(data))
    stopped = {}

    def freeze_rank_1(event, proc):
        if event["event"] == "progress" and event["step"] == 2 and not stopped:
            pid = _worker(proc.pid, 1)
            os.kill(pid, signal.SIGSTOP)
            stopped.update(at=time.monotonic(), pid=pid)
        elif event["event"] == "end" and stopped:
            # rank 0 gave up on it: the timeout held. torchrun would wait 30 s for the frozen rank to
            # take its SIGTERM before killing it; thaw it instead, to spare the test that wait
            stopped["gave_up_after"] = time.monotonic() - stopped["at"]
            os.kill(stopped["pid"], signal.SIGCONT)

    try:
        result = run(spec, 2, launcher=True, on_event=freeze_rank_1, timeout=120)
    finally:
        if stopped:
            try:
                os.kill(stopped["pid"], signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert 5 <= stopped["gave_up_after"] < 20, stopped  # distributed.timeout: 5s, and no more
    assert result.code != 0, result.output[-3000:]
    assert "gpujob runner: lost the other processes: Timed out waiting 5000ms" in result.output
    assert "gpujob: rank 0 of 2 failed first: exited with code 1: RuntimeError: lost the other processes: " \
           "Timed out waiting 5000ms" in result.output or "gpujob: rank 1 of 2 failed first" in result.output
    assert result.kinds("end")[-1]["status"] == "failed"


def test_bad_data_stops_every_process_with_exit_2(tmp_path, tiny_model, speech):
    folder = tmp_path / "bad" / "train"
    folder.mkdir(parents=True)
    rows = ["file_name,transcription"]
    for i in range(6):
        (folder / f"{i}.wav").write_bytes(b"RIFF....not audio at all")
        rows.append(f"{i}.wav,γεια σου")
    (folder / "metadata.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "bad" / "heldout").symlink_to(speech / "heldout")
    spec = write_spec(tmp_path / "spec.json", tiny_model, tmp_path / "bad", batch=2)
    result = run(spec, 2, launcher=True)
    assert result.code == 2, result.output[-3000:]
    assert "Data preflight: FAILED" in result.output and "could not be decoded" in result.output
    assert len(result.kinds("end")) == 1 and result.kinds("end")[0]["status"] == "failed"


# ------------------------------------------------------------------------------------ evaluation


def test_an_evaluate_job_on_two_processes_scores_like_one(tmp_path, tiny_model, speech):
    one = run(write_spec(tmp_path / "one" / "spec.json", tiny_model, speech, batch=2, kind="evaluate"))
    two = run(write_spec(tmp_path / "two" / "spec.json", tiny_model, speech, batch=2, kind="evaluate"), 2,
              launcher=True)
    assert one.code == 0 and two.code == 0, two.output[-3000:]
    assert (two.out / "predictions.jsonl").read_text() == (one.out / "predictions.jsonl").read_text()
    for key in ("wer", "cer", "utterances"):
        assert two.kinds("end")[0]["metrics"][key] == one.kinds("end")[0]["metrics"][key]
    assert len(two.kinds("eval")) == 1 and len(two.kinds("end")) == 1


def test_per_source_scores_and_trackers_come_once_from_rank_0_like_one_process(tmp_path, tiny_model, speech):
    """Two eval sources on two processes: the same per-source scores and predictions as one process, and one
    TensorBoard run (rank 0 alone logs to trackers)."""
    runs = []
    for folder, processes in (("one", 1), ("two", 2)):
        path = write_spec(tmp_path / folder / "spec.json", tiny_model, speech, batch=2, kind="evaluate")
        spec = json.loads(path.read_text())
        spec["data"]["eval"] = [{"dataset": str(speech), "split": "heldout", "name": "a"},
                                {"dataset": str(speech), "split": "heldout", "name": "b", "weight": 2}]
        spec["tracking"] = {"tensorboard": True}
        path.write_text(json.dumps(spec))
        runs.append(run(path, processes, launcher=processes > 1))
    one, two = runs
    assert one.code == 0 and two.code == 0, two.output[-3000:]
    assert (two.out / "predictions.jsonl").read_text() == (one.out / "predictions.jsonl").read_text()
    [eval_one], [eval_two] = one.kinds("eval"), two.kinds("eval")
    assert {k: v for k, v in eval_two.items() if k != "t"} == {k: v for k, v in eval_one.items() if k != "t"}
    assert {"wer/a", "wer/b", "cer/a", "cer/b"} <= set(eval_two)
    assert len(list((two.out / "tensorboard").glob("events.out.tfevents.*"))) == 1
    assert "tracking." not in two.output  # no tracker warned
