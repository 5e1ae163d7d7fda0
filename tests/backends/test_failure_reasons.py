"""`gpujob status` of a failed job of several processes says which rank failed first and why: the
launcher's line (``gpujob: rank R of N failed first: ...``) is preferred over torchrun's own
ChildFailedError summary and the other ranks' errors, on the local backend, docker and kubernetes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from gpujob.backends.base import failure_reason, last_error_line
from gpujob.backends.docker.backend import observe as container_observe
from gpujob.backends.kubernetes import explain
from gpujob.cli.app import app
from gpujob.registry import Registry

RANK_LINE = "gpujob: rank 1 of 2 failed first: exited with code 1: RuntimeError: boom"
WHY = "rank 1 of 2 failed first: exited with code 1: RuntimeError: boom"

# What the end of a failed two-process job's log looks like: rank 1's traceback (the writer, rank 0,
# prints nothing after it), rank 0 stopped by torchrun, torchrun's agent logging the failure and
# its ChildFailedError summary, and the launcher's line.
RANKS = """\
@gpujob/v1 {"event":"progress","step":12,"total_steps":100,"loss":0.41}
[rank 1] Traceback (most recent call last):
[rank 1]   File "/opt/venv/lib/python3.12/site-packages/gpujob/runner/train.py", line 212, in run
[rank 1]     loss = step(batch)
[rank 1] RuntimeError: boom
W0114 10:00:01.500000 1234 torch/distributed/elastic/multiprocessing/api.py:900] Sending process 1236 closing signal SIGTERM
E0114 10:00:02.123000 1234 torch/distributed/elastic/multiprocessing/api.py:874] failed (exitcode: 1) local_rank: 1 (pid: 1237) of binary: /opt/venv/bin/python
"""
SUMMARY = """\
Traceback (most recent call last):
  File "/opt/venv/lib/python3.12/site-packages/torch/distributed/launcher/api.py", line 284, in launch_agent
    raise ChildFailedError(
torch.distributed.elastic.multiprocessing.errors.ChildFailedError: 
============================================================
gpujob.runner FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2025-01-14_10:00:02
  host      : worker-0
  rank      : 1 (local_rank: 1)
  exitcode  : 1 (pid: 1237)
  error_file: <N/A>
  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html
============================================================
"""


def tail(where: str) -> list[str]:
    """The log's end with the launcher's line before or after torchrun's summary (both happen)."""
    if where == "before":
        return (RANKS + RANK_LINE + "\n" + SUMMARY).splitlines()
    return (RANKS + SUMMARY + RANK_LINE + "\n").splitlines()


@pytest.mark.parametrize("where", ["before", "after"])
def test_the_launchers_line_wins_over_torchruns_summary(where):
    assert failure_reason(1, tail(where)) == WHY


def test_without_the_launchers_line_the_ranks_error_is_named_not_torchruns_summary():
    lines = (RANKS + SUMMARY).splitlines()
    assert last_error_line(lines) == "[rank 1] RuntimeError: boom"
    assert failure_reason(1, lines) == "exited with code 1: [rank 1] RuntimeError: boom"


def test_one_process_jobs_read_as_before():
    lines = ["Traceback (most recent call last):", "ValueError: column sentence not found"]
    assert failure_reason(2, lines) == ("exited with code 2 (the job rejected its input or configuration): "
                                        "ValueError: column sentence not found")
    assert failure_reason(137, []) == "killed by SIGKILL (exit 137; often: out of memory, or kill -9)"


# ----------------------------------------------------------------------------- local: end to end


def test_local_status_says_which_rank_failed_first(tmp_path):
    log = tmp_path / "torchrun.log"
    log.write_text("\n".join(tail("before")) + "\n")
    script = f"import sys; sys.stderr.write(open({str(log)!r}).read()); sys.exit(1)"
    spec = tmp_path / "ranks.yaml"
    spec.write_text(f"apiVersion: gpujob/v1\nkind: command\nname: ranks\ncommand: {json.dumps(['python', '-c', script])}\n"
                    f"output:\n  dir: {tmp_path / 'out'}\n")
    runner = CliRunner()
    assert runner.invoke(app, ["submit", str(spec), "--follow"]).exit_code == 1
    (job,) = Registry().list()
    assert job.status == "failed" and job.reason == WHY
    status = runner.invoke(app, ["status", job.id]).output.splitlines()
    assert any(line.split() == ["reason", *WHY.split()] for line in status), status


# ----------------------------------------------------------------------------- docker


def test_docker_status_says_which_rank_failed_first():
    seen = container_observe({"Status": "exited", "ExitCode": 1}, log_tail=tail("after"))
    assert seen.status == "failed" and seen.reason == WHY
    oom = container_observe({"Status": "exited", "ExitCode": 137, "OOMKilled": True}, memory="8Gi",
                            log_tail=tail("after"))
    assert oom.reason.startswith("killed: out of memory (resources.memory: 8Gi)")  # the container's fate first


# ----------------------------------------------------------------------------- kubernetes


def pod(name: str, index: int, code: int) -> dict:
    return {"metadata": {"name": name, "labels": {"batch.kubernetes.io/job-completion-index": str(index)}},
            "status": {"phase": "Failed", "containerStatuses": [
                {"name": "job", "state": {"terminated": {"exitCode": code, "reason": "Error"}}}]}}


def failed_job(pod_name: str, code: int) -> dict:
    message = (f"Container job for pod gpujob/{pod_name} failed with exit code {code} matching FailJob rule at "
               "index 2")
    return {"metadata": {"name": "w-ab12cd"}, "spec": {"completionMode": "Indexed", "completions": 2},
            "status": {"conditions": [{"type": "FailureTarget", "status": "True", "reason": "PodFailurePolicy",
                                       "message": message},
                                      {"type": "Failed", "status": "True", "reason": "PodFailurePolicy",
                                       "message": message}]}}


def test_kubernetes_status_blames_the_worker_the_failure_policy_named_and_its_rank():
    # Worker 1 failed; the Job controller then stopped worker 0, whose pod failed after it.
    workers = [pod("w-ab12cd-1-x7k2p", 1, 1), pod("w-ab12cd-0-q9z4m", 0, 143)]
    job = failed_job("w-ab12cd-1-x7k2p", 1)
    assert explain.blamed(job, workers)["metadata"]["name"] == "w-ab12cd-1-x7k2p"
    seen = explain.observe(job, workers, log_tail=tail("before"), name="w-ab12cd", namespace="gpujob")
    assert seen.status == "failed" and seen.exit_code == 1
    assert seen.reason == f"worker 1: {WHY}"


def test_kubernetes_without_a_policy_message_blames_the_last_failed_pod():
    workers = [pod("w-ab12cd-0-q9z4m", 0, 1)]
    job = {"metadata": {"name": "w"}, "spec": {"backoffLimit": 2}, "status": {"failed": 3, "conditions": [
        {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "backoff"}]}}
    seen = explain.observe(job, workers, log_tail=tail("after"))
    assert seen.reason == f"failed 3 time(s), past the retry limit (backoffLimit 2); last attempt {WHY}"


# ----------------------------------------------------------------------------- one complete reason

HUB = ("We could not connect to the Hub to fetch mozilla-foundation/common_voice_17_0 and it is not in the cache; "
       + "you are offline or the Hub is down; " * 8 + "set HF_HUB_OFFLINE=1 to use the cache only")


def test_the_runner_error_and_its_end_message_make_one_complete_reason():
    """The runner prints ``DataError: <why>`` and reports the same words (cut at 480) in its end event:
    the reason says them once, whole (status and the dashboard showed them twice, each cut: "HF_HUB_O")."""
    reason = failure_reason(2, [f"DataError: {HUB}"], message=HUB[:479] + "…")
    assert reason.count("could not connect") == 1
    assert reason.endswith("set HF_HUB_OFFLINE=1 to use the cache only")


def test_a_different_end_message_is_kept_beside_the_error():
    reason = failure_reason(1, ["RuntimeError: CUDA out of memory"], message="training stopped at step 40")
    assert "CUDA out of memory" in reason and "(training stopped at step 40)" in reason


def test_a_very_long_error_line_is_cut_after_a_whole_word():
    words = " ".join(f"w{i:04d}" for i in range(400))
    line = last_error_line([f"ValueError: {words}"])
    assert line.endswith("…") and len(line) <= 1000
    assert line[:-1].split()[-1] in words.split()  # a whole word before the ellipsis
