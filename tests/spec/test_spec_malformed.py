"""Malformed job specs: each must fail with a SpecError that says where and what, in plain words."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gpujob.spec import Problem, SpecError, load_spec, load_spec_text
from spec_samples import COMMAND, HEAD, TRAIN

FAKE_HF_TOKEN = "hf_" + "aBcDeFgHiJkLmNoPqRsTuVwXyZ0123456789"


@dataclass
class Case:
    id: str
    content: str | bytes
    key: str | None  # the key path the message must name (None: a whole-file problem)
    words: str  # a fragment the message must contain
    line: int | None = None  # the line the problem must point at
    overrides: tuple[str, ...] = ()
    env: dict | None = None


def train_with(training: str) -> str:
    return TRAIN + "".join(f"  {line}\n" for line in training.splitlines())


CASES = [
    # --- the file itself
    Case("garbage-bytes", bytes(range(256)) * 4, None, "not a text YAML file"),
    Case("invalid-utf8", b"apiVersion: gpujob/v1\nkind: \xff\xfe train\n", None, "not valid UTF-8", 2),
    Case("control-chars", "apiVersion: gpujob/v1\nkind: \x07\n", None, "control character", 2),
    Case("empty", "", None, "is empty; a job spec needs at least apiVersion and kind"),
    Case("whitespace", "   \n\n  \n", None, "is empty"),
    Case("comments-only", "# just a comment\n# another\n", None, "is empty"),
    Case("top-level-list", "- apiVersion: gpujob/v1\n- kind: train\n", None, "got a list", 1),
    Case("top-level-scalar", "train\n", None, "top level must be a mapping of keys (apiVersion, kind, ...), got a string"),
    Case("top-level-null", "null\n", None, "got null"),
    Case("tabs", HEAD + "kind: train\ntraining:\n\tmax_steps: 10\n", None, "YAML does not allow tabs", 4),
    Case("bad-indentation", HEAD + "kind: train\n  training: 1\n", None, "YAML syntax error", 3),
    Case("unclosed-quote", HEAD + "kind: 'train\nname: x\n", None, "never closed", 2),
    Case("unclosed-flow", HEAD + "kind: train\ncommand: [a, b\n", None, "not closed"),
    Case("ten-megabytes", "#" * (10 * 1000 * 1000), None, "10.0 MB is too large for a job spec (limit 1 MiB)"),
    Case("multiple-documents", COMMAND + "---\n" + COMMAND, None, "several YAML documents", 4),
    Case("duplicate-key", COMMAND + "name: a\nname: b\n", "name", "first on line 4", 5),
    Case("deeply-nested", "a: " + "[" * 3000 + "]" * 3000 + "\n", None, "nested too deeply"),
    Case("nested-33", COMMAND + "description: " + "[" * 40 + "]" * 40 + "\n", "description[0][0][0]...",
         "nested too deeply", 4),
    Case("alias-bomb", "a: &a [x, x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{c}: &{c} [{', '.join([f'*{p}'] * 10)}]\n" for p, c in zip("abcdef", "bcdefg")), None,
        "expand to more than 10,000 values", 4),
    Case("self-referencing-alias", COMMAND + "description: &d [*d]\n", "description[0]", "refers to itself", 4),
    Case("self-merging-mapping", COMMAND + "x-a: &a {k: 1, <<: [*a]}\n", "x-a.<<[0]", "refers to itself", 4),
    Case("non-string-key", COMMAND + "1: x\n", "(top level)", "keys must be strings", 4),
    Case("yaml-tag", COMMAND + "description: !secret x\n", "description", "tags", 4),
    # --- top-level keys
    Case("wrong-apiVersion", "apiVersion: gpujob/v2\nkind: command\ncommand: [x]\n", "apiVersion", "supported: gpujob/v1", 1),
    Case("missing-apiVersion", "kind: command\ncommand: [x]\n", "apiVersion", "is required", 1),
    Case("missing-kind", HEAD + "command: [x]\n", "kind", "is required (one of train, evaluate, command)"),
    Case("unknown-kind", HEAD + "kind: trian\n", "kind", 'did you mean "train"?', 2),
    Case("misspelled-top-level-key", COMMAND + "resorces: {gpus: 1}\n", "resorces", 'did you mean "resources"?', 4),
    Case("misspelled-nested-key", train_with("learnig_rate: 1e-5"), "training.learnig_rate",
         'unknown key "learnig_rate"; did you mean "learning_rate"?', 9),
    Case("key-in-wrong-section", TRAIN + "learning_rate: 1e-5\n", "learning_rate", "did you mean training.learning_rate?", 9),
    Case("key-in-wrong-nested-section", TRAIN + "model: {max_steps: 3}\n", "model.max_steps", "training.max_steps", 9),
    Case("bad-name-uppercase", COMMAND + "name: MyJob\n", "name", "lowercase", 4),
    Case("bad-name-underscore", COMMAND + "name: my_job\n", "name", "lowercase", 4),
    Case("name-too-long", COMMAND + "name: " + "a" * 60 + "\n", "name", "at most 53 characters", 4),
    # --- types and ranges
    Case("string-for-int", train_with('per_device_batch_size: "16"'), "training.per_device_batch_size",
         'expected a whole number, got a string "16"', 9),
    Case("word-for-number", train_with("warmup_steps: lots"), "training.warmup_steps", 'got a string "lots"', 9),
    Case("list-for-mapping", TRAIN + "model: [openai/whisper-small]\n", "model", "expected a mapping of keys, got a list", 9),
    Case("float-for-int", train_with("eval_steps: 1000.0"), "training.eval_steps", "write 1000", 9),
    Case("yes-for-bool", COMMAND + "output: {private: yes}\n", "output.private", "write true or false", 4),
    Case("negative-lr", train_with("learning_rate: -1"), "training.learning_rate", "must be greater than 0 (got -1)", 9),
    Case("word-lr", train_with("learning_rate: fast"), "training.learning_rate", '"auto"', 9),
    Case("loader-workers-word", TRAIN.replace("training:\n", "  loader_workers: lots\ntraining:\n"),
         "data.loader_workers", 'expected a whole number from 0 to 64 or "auto", got "lots"', 7),
    Case("loader-workers-negative", TRAIN.replace("training:\n", "  loader_workers: -2\ntraining:\n"),
         "data.loader_workers", "got -2", 7),
    Case("batch-zero", train_with("per_device_batch_size: 0"), "training.per_device_batch_size",
         "must be greater than 0 (got 0)", 9),
    Case("dropout-1.5", train_with("dropout: 1.5"), "training.dropout", "must be less than 1 (got 1.5)", 9),
    Case("generation-max-length-1000", train_with("generation_max_length: 1000"), "training.generation_max_length",
         "must be at most 448 (got 1000)", 9),
    Case("infinite-weight", TRAIN.replace("config: el_gr", "weight: .inf"), "data.train[0].weight", "finite", 6),
    Case("backend-synonym", COMMAND + "runtime: {backend: k8s}\n", "runtime.backend", 'did you mean "kubernetes"?', 4),
    Case("bad-lr-schedule", train_with("lr_schedule: cosin"), "training.lr_schedule", 'did you mean "cosine"?', 9),
    Case("bad-freeze", train_with("freeze: decoder"), "training.freeze", "use none, encoder, or {encoder_layers: N}", 9),
    Case("bad-freeze-layers", train_with("freeze: {encoder_layers: 0}"), "training.freeze", "at least 1", 9),
    Case("bad-split", TRAIN.replace("config: el_gr", "split: train+"), "data.train[0].split", "empty split name", 6),
    Case("missing-dataset", TRAIN.replace("- dataset: google/fleurs", "- split: test"), "data.train[0].dataset",
         "is required", 5),
    Case("bad-duration", COMMAND + "limits: {max_runtime: 90}\n", "limits.max_runtime", "no unit", 4),
    Case("bad-duration-word", COMMAND + "limits: {max_runtime: forever}\n", "limits.max_runtime", "not a duration", 4),
    Case("bad-quantity", COMMAND + "resources: {memory: 32GB}\n", "resources.memory", "write 32G", 4),
    Case("bad-cpu", COMMAND + "resources: {cpu: two}\n", "resources.cpu", "millicores", 4),
    Case("metrics-duplicate", COMMAND + "evaluation: {metrics: [wer, wer]}\n", "evaluation.metrics", "more than once", 4),
    Case("metrics-unknown", COMMAND + "evaluation: {metrics: [wer, bleu]}\n", "evaluation.metrics[1]",
         "must be one of wer, cer", 4),
    Case("metrics-empty", COMMAND + "evaluation: {metrics: []}\n", "evaluation.metrics", "must not be empty", 4),
    Case("bad-hub-repo", COMMAND + "output: {hub_repo: just-a-name}\n", "output.hub_repo", "owner/name", 4),
    Case("env-unquoted-number", COMMAND + "runtime:\n  env:\n    PORT: 8080\n", "runtime.env.PORT",
         'quote it: PORT: "8080"', 6),
    Case("env-unquoted-bool", COMMAND + "runtime:\n  env:\n    DEBUG: true\n", "runtime.env.DEBUG", '"true"', 6),
    Case("env-bad-name", COMMAND + "runtime:\n  env:\n    1ST: x\n", "runtime.env.1ST", "not a valid environment", 6),
    # --- secrets
    Case("literal-hf-token", COMMAND + f"runtime:\n  env:\n    HF_HUB: {FAKE_HF_TOKEN}\n", "runtime.env.HF_HUB",
         "looks like a credential", 6),
    Case("token-in-description", COMMAND + f"description: 'use {FAKE_HF_TOKEN}'\n", "description", "credential", 4),
    Case("private-key", HEAD + "kind: command\ncommand: ['-----BEGIN RSA PRIVATE KEY-----']\n", "command[0]",
         "credential", 3),
    Case("secret-looking-env-key", COMMAND + "runtime:\n  env:\n    HF_TOKEN: abc\n", "runtime.env.HF_TOKEN",
         "looks like a secret; don't put its value in the spec — list the name under runtime.secrets: [HF_TOKEN]", 6),
    Case("secret-with-value", COMMAND + "runtime:\n  secrets:\n    - HF_TOKEN: abc\n", "runtime.secrets[0]",
         "only names are allowed", 6),
    Case("secret-name-equals-value", COMMAND + "runtime:\n  secrets: [HF_TOKEN=abc]\n", "runtime.secrets[0]",
         "only names are allowed", 5),
    Case("secret-duplicate", COMMAND + "runtime:\n  secrets: [A_KEY, A_KEY]\n", "runtime.secrets", "more than once", 5),
    Case("unset-var", COMMAND + "description: ${WANDB_PROJECT}\n", "description",
         "${WANDB_PROJECT} is not set in your environment; export it or write ${WANDB_PROJECT:-default}", 4, env={}),
    Case("interpolated-secret", COMMAND + "description: ${HF_TOKEN}\n", "description", "don't interpolate them", 4,
         env={"HF_TOKEN": "x"}),
    Case("interpolated-listed-secret", COMMAND + "runtime: {secrets: [MY_KEYS]}\ndescription: ${MY_KEYS}\n",
         "description", "don't interpolate them", 5, env={"MY_KEYS": "x"}),
    Case("malformed-reference", COMMAND + "description: ${not valid}\n", "description", "malformed", 4, env={}),
    # --- kinds and cross-field rules
    Case("command-missing", HEAD + "kind: command\n", "command", "is required for kind: command"),
    Case("command-empty", HEAD + "kind: command\ncommand: []\n", "command", "must not be empty", 3),
    Case("command-empty-arg", HEAD + "kind: command\ncommand: [python, '']\n", "command[1]", "must not be empty", 3),
    Case("command-for-train", TRAIN + "command: [python, train.py]\n", "command", "only for kind: command", 9),
    Case("train-without-data", HEAD + "kind: train\ntraining: {max_steps: 10}\n", "data.train", "is required for kind: train"),
    Case("evaluate-without-data", HEAD + "kind: evaluate\ndata: {train: [{dataset: x}]}\n", "data.eval",
         "is required for kind: evaluate", 3),
    Case("both-steps-and-epochs", train_with("epochs: 3"), "training.epochs",
         "training.max_steps and training.epochs are both set", 9),
    Case("neither-steps-nor-epochs", TRAIN.replace("  max_steps: 100\n", "  warmup_steps: 10\n"), "training",
         "set training.max_steps or training.epochs", 7),
    Case("env-and-secret", COMMAND + "runtime: {env: {WANDB_PROJECT: x}, secrets: [WANDB_PROJECT]}\n",
         "runtime.env.WANDB_PROJECT", "also listed in runtime.secrets", 4),
    # --- --set
    Case("set-no-equals", COMMAND, "training.learning_rate", 'has no "="', overrides=("training.learning_rate",)),
    Case("set-empty-key", COMMAND, "=1", "empty key", overrides=("=1",)),
    Case("set-index-out-of-range", TRAIN, "data.train.5.weight", "index 5 is out of range",
         overrides=("data.train.5.weight=2",)),
    Case("set-into-scalar", TRAIN, "model.checkpoint.size", "is a string, not a mapping",
         overrides=("model.checkpoint=x", "model.checkpoint.size=2")),
    Case("set-bad-flow", TRAIN, "evaluation.metrics", "not a valid YAML flow list", overrides=("evaluation.metrics=[wer",)),
    Case("set-invalid-value", TRAIN, "training.max_steps", "must be greater than 0", overrides=("training.max_steps=-5",)),
    Case("set-unknown-key", TRAIN, "training.learnig_rate", 'did you mean "learning_rate"?',
         overrides=("training.learnig_rate=1e-5",)),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_malformed_spec(tmp_path, case: Case):
    path = tmp_path / "job.yaml"
    if isinstance(case.content, bytes):
        path.write_bytes(case.content)
    else:
        path.write_text(case.content, encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path, overrides=case.overrides, env=case.env if case.env is not None else {})
    problems = info.value.problems
    assert problems and all(isinstance(p, Problem) for p in problems)
    text = str(info.value)
    assert "errors.pydantic.dev" not in text and "Input should be" not in text
    matching = [p for p in problems if case.words in p.message and (case.key is None or p.key == case.key)]
    assert matching, f"no problem with key {case.key!r} mentioning {case.words!r} in:\n{text}"
    problem = matching[0]
    from_set = case.overrides and problem.file == "--set"
    assert problem.file == str(path) or from_set
    assert (str(path) in text) or from_set
    if case.key:
        assert f"{case.key}: " in str(problem)
    if case.line is not None:
        assert problem.line == case.line, text
        assert str(problem).startswith(f"{path}:{case.line}:")
    assert FAKE_HF_TOKEN not in text


def test_there_are_many_cases():
    assert len(CASES) >= 35


def test_all_problems_reported_at_once(tmp_path):
    path = tmp_path / "job.yaml"
    path.write_text(TRAIN.replace("max_steps: 100", "max_steps: 100\n  learnig_rate: 1e-5\n  dropout: 1.5")
                    + "resources: {memory: 32GB}\n", encoding="utf-8")
    with pytest.raises(SpecError) as info:
        load_spec(path)
    keys = [p.key for p in info.value.problems]
    assert keys == ["training.learnig_rate", "training.dropout", "resources.memory"]
    assert [p.line for p in info.value.problems] == [9, 10, 11]  # sorted by line
    assert len(str(info.value).splitlines()) == 3


def test_unset_variables_all_reported():
    text = COMMAND + "description: ${A} ${B}\nruntime: {env: {X: '${C}'}}\n"
    with pytest.raises(SpecError) as info:
        load_spec_text(text, "job.yaml", env={})
    messages = [p.message for p in info.value.problems]
    assert [m.split()[0] for m in messages] == ["${A}", "${B}", "${C}"]


def test_missing_file_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value) and "cannot read" in str(info.value)


def test_directory_is_a_spec_error(tmp_path):
    with pytest.raises(SpecError) as info:
        load_spec(tmp_path)
    assert str(tmp_path) in str(info.value)


def test_credential_never_echoed_even_in_type_errors():
    with pytest.raises(SpecError) as info:
        load_spec_text(TRAIN.replace("max_steps: 100", f"max_steps: {FAKE_HF_TOKEN}"), "job.yaml")
    assert FAKE_HF_TOKEN not in str(info.value) and "training.max_steps" in str(info.value)


def test_set_problems_use_set_as_file():
    with pytest.raises(SpecError) as info:
        load_spec_text(TRAIN, "job.yaml", overrides=["data.train.7.weight=2"])
    [problem] = info.value.problems
    assert problem.file == "--set" and problem.line is None
    assert str(problem) == "--set: data.train.7.weight: index 7 is out of range: data.train has 1 item(s)"
