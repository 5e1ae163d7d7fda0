"""make bench's quickstart rows: the stage times read from the job's lines (gpujob_dev.bench_quickstart)."""

from __future__ import annotations

import pytest

from gpujob_dev.bench_quickstart import fmt, stage_times

MODEL_LINE = ("model .assets/whisper-base: 52.0M trainable, 20.6M frozen; precision bf16; device cpu; gradient "
              "checkpointing off (auto: bf16: measured 1.66x as fast as fp32 on this CPU (261.8 vs 434.4 ms a probe matmul))")


def test_stages_follow_the_runner_lines():
    lines = [(3.0, "submitted job abc (quickstart-el) on local: running"), (30.0, MODEL_LINE),
             (200.0, "before training: WER 99.00%  CER 60.00%  (80 utterances, 560 words); heldout WER 97.50%, "
                     "unseen WER 101.43%"),
             (500.0, "frozen encoder: 1119 clips encoded once, in 250.5 s"),
             (560.0, "after training: WER 46.00%  CER 20.00%  (80 utterances, 560 words); heldout WER 44.64%, "
                     "unseen WER 47.14%")]
    row = stage_times(lines, 565.0, assets=60.0)
    assert row["start + zero-shot"] == 200.0 and row["training"] == 300.0 and row["final eval"] == 60.0
    assert row["encoder cache"] == 250.5 and row["encoder_clips"] == 1119
    assert row["total"] == 625.0 and row["assets"] == 60.0  # set-up included, as a newcomer meets it
    assert row["precision"] == "bf16" and row["precision_why"].startswith("auto: bf16: measured 1.66x")
    assert (row["unseen_before"], row["unseen_after"]) == (101.43, 47.14)


def test_a_job_cut_short_leaves_its_later_stages_unknown():
    row = stage_times([(30.0, MODEL_LINE.replace("bf16", "fp32", 1))], 40.0)
    assert row["precision"] == "fp32" and row["training"] is None and row["final eval"] is None
    assert row["total"] == 40.0 and fmt(row["training"]) == "-"


@pytest.mark.parametrize("seconds,text", [(0.0, "0m00.0s"), (59.94, "0m59.9s"), (605.2, "10m05.2s")])
def test_times_read_as_minutes_and_seconds(seconds, text):
    assert fmt(seconds) == text
