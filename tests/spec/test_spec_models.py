"""The job spec model and loader on valid input: defaults, conversions, interpolation, overrides."""

from __future__ import annotations

import pytest

from gpujob.spec import JobSpec, LoadedSpec, SpecError, default_learning_rate, load_spec, load_spec_text
from gpujob.spec.models import FreezeLayers
from gpujob.spec.units import format_duration, parse_cpu, parse_duration, parse_quantity
from spec_samples import COMMAND, TRAIN

EVALUATE = "apiVersion: gpujob/v1\nkind: evaluate\ndata:\n  eval: [{dataset: google/fleurs, split: test}]\n"
HEAD_X = """\
apiVersion: gpujob/v1
kind: train
x-fleurs: &fleurs {dataset: google/fleurs, config: el_gr, text_column: transcription}
"""


def load(text: str, **kw) -> LoadedSpec:
    return load_spec_text(text, "jobs/test-job.yaml", **kw)


def with_training(extra: str) -> str:
    return TRAIN + "".join(f"  {line}\n" for line in extra.splitlines())


# --- defaults ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "gpus"), [(TRAIN, 1), (EVALUATE, 1), (COMMAND, 0)])
def test_gpus_default_depends_on_kind(text, gpus):
    assert load(text).spec.resources.gpus == gpus


def test_explicit_gpus_kept():
    assert load(COMMAND + "resources: {gpus: 2}\n").spec.resources.gpus == 2


def test_train_defaults():
    spec = load(TRAIN).spec
    assert spec.api_version == "gpujob/v1"
    assert spec.model.checkpoint == "openai/whisper-small"
    assert spec.model.task == "transcribe"
    assert spec.training.learning_rate == "auto"
    assert spec.training.lr_schedule == "linear"
    assert spec.training.warmup_steps == 500
    assert spec.training.per_device_batch_size == 16
    assert spec.training.freeze == "none"
    assert spec.training.generation_max_length == 225
    assert spec.evaluation.metrics == ["wer", "cer"]
    assert spec.data.train[0].split == "train" and spec.data.train[0].audio_column == "audio"
    assert spec.data.train[0].weight == 1.0 and spec.data.train[0].text_column is None
    assert spec.runtime.backend == "local" and spec.runtime.env == {} and spec.runtime.secrets == []
    assert spec.resources.shm == "8Gi" and spec.resources.shm_bytes == 8 * 2**30
    assert spec.limits.idle_minutes == 15 and spec.limits.max_runtime_seconds is None
    assert spec.output.private is True and spec.output.dir is None


def test_name_defaults_to_slugified_file_stem():
    assert load_spec_text(COMMAND, "jobs/My_Great Job.v2.yaml").spec.name == "my-great-job-v2"
    assert load_spec_text(COMMAND, "jobs/x.yaml").spec.resolved_output_dir() == "outputs/x"
    assert load(COMMAND + "name: hello\n").spec.name == "hello"


def test_command_job_needs_no_sections_and_ignores_training_ones():
    loaded = load(COMMAND + "training: {learning_rate: 1e-4}\n")
    assert loaded.spec.command == ["echo", "hi"]
    assert any("ignored for kind: command" in w.message for w in loaded.warnings)


def test_data_is_complete_plain_dict_that_revalidates():
    loaded = load(TRAIN)
    assert loaded.data["apiVersion"] == "gpujob/v1"
    assert loaded.data["resources"]["gpus"] == 1
    assert loaded.data["name"] == "test-job"
    assert JobSpec.model_validate(loaded.data) == loaded.spec


def test_empty_sections_mean_defaults():
    spec = load(COMMAND + "runtime:\n  env:\n  secrets:\nlimits:\n").spec
    assert spec.runtime.env == {} and spec.limits.idle_minutes == 15


# --- learning rate ------------------------------------------------------------------------------

@pytest.mark.parametrize(("checkpoint", "lr"), [
    ("openai/whisper-tiny", 3.75e-5),
    ("openai/whisper-base.en", 2.5e-5),
    ("openai/whisper-small", 1.25e-5),
    ("openai/whisper-small.en", 1.25e-5),
    ("openai/whisper-medium", 6.25e-6),
    ("openai/whisper-large-v3", 4.375e-6),
    ("openai/whisper-large-v3-turbo", 4.375e-6),
    ("distil-whisper/distil-large-v3", 4.375e-6),
    ("me/whisper-small-el", 1.25e-5),
])
def test_auto_learning_rate_from_checkpoint_name(checkpoint, lr):
    assert default_learning_rate(checkpoint) == pytest.approx(lr)
    spec = load(TRAIN + f"model: {{checkpoint: {checkpoint}}}\n").spec
    assert spec.resolved_learning_rate() == pytest.approx(lr)


def test_auto_learning_rate_from_d_model_or_unknown():
    assert default_learning_rate("./outputs/run/checkpoint-4000", d_model=1024) == pytest.approx(6.25e-6)
    assert default_learning_rate("./outputs/run/checkpoint-4000", d_model=384) == pytest.approx(3.75e-5)
    assert default_learning_rate("./outputs/run/checkpoint-4000") is None
    assert default_learning_rate("facebook/wav2vec2", d_model=999) is None


def test_explicit_learning_rate_wins():
    spec = load(with_training("learning_rate: 3e-5")).spec
    assert spec.training.learning_rate == 3e-5 and spec.resolved_learning_rate() == 3e-5


def test_integer_learning_rate_accepted_as_float():
    assert load(with_training("learning_rate: 1")).spec.resolved_learning_rate() == 1.0


# --- YAML 1.2 -----------------------------------------------------------------------------------

def test_yaml_12_norwegian_stays_a_string_and_exponent_is_a_float():
    spec = load(TRAIN + "model:\n  language: no\n" + "  task: transcribe\n").spec
    assert spec.model.language == "no"
    spec = load(with_training("learning_rate: 1e-5")).spec
    assert isinstance(spec.training.learning_rate, float) and spec.training.learning_rate == 1e-5


def test_on_and_yes_stay_strings():
    spec = load(COMMAND + "runtime: {env: {MODE: on, OK: yes}}\n").spec
    assert spec.runtime.env == {"MODE": "on", "OK": "yes"}


def test_bom_and_anchors_are_fine():
    text = "\ufeff" + TRAIN + "  warmup_steps: &w 50\n  eval_steps: *w\n"
    spec = load(text).spec
    assert spec.training.warmup_steps == 50 and spec.training.eval_steps == 50


def test_x_keys_hold_anchors_and_merge_keys_work():
    text = HEAD_X + """\
data:
  train: [{<<: *fleurs, split: train}]
  eval: [{<<: *fleurs, split: test}]
training: {max_steps: 10}
"""
    spec = load(text).spec
    assert [s.split for s in spec.data.train + spec.data.eval] == ["train", "test"]
    assert spec.data.eval[0].config == "el_gr" and spec.data.eval[0].text_column == "transcription"


def test_load_spec_reads_files(tmp_path):
    path = tmp_path / "train-el.yaml"
    path.write_text(TRAIN, encoding="utf-8")
    loaded = load_spec(path)
    assert loaded.path == str(path) and loaded.spec.name == "train-el"


# --- freeze ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("value", "expected"), [
    ("none", "none"), ("encoder", "encoder"), ("{encoder_layers: 4}", FreezeLayers(encoder_layers=4)),
])
def test_freeze_forms(value, expected):
    assert load(with_training(f"freeze: {value}")).spec.training.freeze == expected


# --- units ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(("text", "seconds"), [
    ("45s", 45), ("90m", 5400), ("12h", 43200), ("1h30m", 5400), ("2d", 172800), ("1d2h3m4s", 93784), ("1.5h", 5400),
])
def test_durations(text, seconds):
    assert parse_duration(text) == seconds
    assert load(COMMAND + f"limits: {{max_runtime: {text}}}\n").spec.limits.max_runtime_seconds == seconds


@pytest.mark.parametrize("bad", ["90", "1h1h", "30m1h", "soon", "", "0s"])
def test_bad_durations(bad):
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_format_duration():
    assert format_duration(5400) == "1h30m" and format_duration(0) == "0s"


@pytest.mark.parametrize(("text", "size"), [
    ("32Gi", 32 * 2**30), ("16G", 16 * 10**9), ("512Mi", 512 * 2**20), ("1.5Gi", int(1.5 * 2**30)), ("100k", 10**5),
])
def test_quantities(text, size):
    assert parse_quantity(text) == size
    assert load(COMMAND + f"resources: {{memory: {text}}}\n").spec.resources.memory_bytes == size


@pytest.mark.parametrize("bad", ["32GB", "32gb", "32GiB", "32", "lots", "-1Gi", "0Gi"])
def test_bad_quantities(bad):
    with pytest.raises(ValueError):
        parse_quantity(bad)


@pytest.mark.parametrize(("value", "cpus"), [("500m", 0.5), ("2", 2.0), (4, 4.0), (0.25, 0.25)])
def test_cpu(value, cpus):
    assert parse_cpu(value) == cpus
    assert load(COMMAND + f"resources: {{cpu: {value}}}\n").spec.resources.cpu == cpus


# --- interpolation ----------------------------------------------------------------------------

def test_interpolation_from_env_with_default_and_escape():
    text = COMMAND.replace("[echo, hi]", '[echo, "${WHO}", "${GREETING:-hello}", "$${LITERAL}", "a-${WHO}-b"]')
    spec = load(text, env={"WHO": "world"}).spec
    assert spec.command == ["echo", "world", "hello", "${LITERAL}", "a-world-b"]


def test_env_value_wins_over_default():
    spec = load(COMMAND + "description: ${DESC:-none given}\n", env={"DESC": "from env"}).spec
    assert spec.description == "from env"


def test_unquoted_whole_value_reference_is_typed_like_yaml():
    text = TRAIN.replace("max_steps: 100", "max_steps: ${STEPS:-4000}")
    assert load(text, env={}).spec.training.max_steps == 4000
    assert load(text, env={"STEPS": "250"}).spec.training.max_steps == 250


def test_quoted_reference_stays_text():
    spec = load(COMMAND + 'runtime: {env: {STEPS: "${STEPS}"}}\n', env={"STEPS": "7"}).spec
    assert spec.runtime.env == {"STEPS": "7"}


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("GPUJOB_TEST_WHO", "shell")
    assert load(COMMAND + "description: ${GPUJOB_TEST_WHO}\n").spec.description == "shell"


def test_listed_secret_names_are_allowed():
    spec = load(COMMAND + "runtime: {secrets: [HF_TOKEN, WANDB_API_KEY]}\n").spec
    assert spec.runtime.secrets == ["HF_TOKEN", "WANDB_API_KEY"]


# --- --set overrides ----------------------------------------------------------------------------

def test_set_parses_yaml_values():
    loaded = load(TRAIN, overrides=["training.learning_rate=1e-5", "evaluation.metrics=[wer]",
                                    "data.train.0.weight=2", "model.language=no", "training.freeze={encoder_layers: 2}"])
    spec = loaded.spec
    assert spec.training.learning_rate == 1e-5 and isinstance(spec.training.learning_rate, float)
    assert spec.evaluation.metrics == ["wer"]
    assert spec.data.train[0].weight == 2.0
    assert spec.model.language == "no"
    assert spec.training.freeze == FreezeLayers(encoder_layers=2)


def test_set_creates_missing_mappings_and_accepts_bracket_indexes():
    spec = load(TRAIN, overrides=["runtime.env.MODE=fast", "data.train[0].split=validation"]).spec
    assert spec.runtime.env == {"MODE": "fast"} and spec.data.train[0].split == "validation"


def test_set_empty_value_means_null_and_text_with_colon_is_text():
    spec = load(TRAIN + "output: {hub_repo: me/x}\n", overrides=["output.hub_repo=", "description=a: b"]).spec
    assert spec.output.hub_repo is None and spec.description == "a: b"


def test_set_override_replaces_list():
    spec = load(COMMAND, overrides=['command=[python, -m, x, --steps, "600"]']).spec
    assert spec.command == ["python", "-m", "x", "--steps", "600"]


# --- warnings -------------------------------------------------------------------------------------

def test_dropout_above_0_1_warns_not_errors():
    loaded = load(with_training("dropout: 0.2"))
    assert loaded.spec.training.dropout == 0.2
    [warning] = loaded.warnings
    assert warning.key == "training.dropout" and warning.line == 9
    assert "dropout above 0.1 tends to hurt Whisper fine-tuning" in str(warning)
    assert load(with_training("dropout: 0.1")).warnings == []


def test_warning_for_overridden_key_points_at_set():
    [warning] = load(TRAIN, overrides=["training.dropout=0.3"]).warnings
    assert warning.file == "--set" and warning.key == "training.dropout"


def test_streaming_with_epochs_warns():
    text = TRAIN.replace("max_steps: 100", "epochs: 2").replace("data:\n", "data:\n  streaming: true\n")
    [warning] = load(text).warnings
    assert warning.key == "training.epochs" and "max_steps" in warning.message


def test_problem_str_format():
    with pytest.raises(SpecError) as info:
        load(with_training("learning_rate: -1"))
    assert str(info.value) == "jobs/test-job.yaml:9:3: training.learning_rate: must be greater than 0 (got -1)"
