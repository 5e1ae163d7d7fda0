"""The spec's tracking: section and the names of eval sources: what is accepted, what is refused and why."""

from __future__ import annotations

import pytest

from gpujob.spec import SpecError, load_spec_text
from gpujob.spec.tracking import source_names
from spec_samples import COMMAND

EVAL = "apiVersion: gpujob/v1\nkind: evaluate\ndata:\n  eval: [{dataset: google/fleurs, split: test}]\n"


def load(text: str):
    return load_spec_text(text, "jobs/test-job.yaml").spec


def refusal(text: str) -> str:
    with pytest.raises(SpecError) as info:
        load(text)
    return str(info.value)


def test_true_turns_a_tracker_on_with_its_defaults_and_false_leaves_it_off():
    t = load(EVAL + "tracking: {tensorboard: true, wandb: {project: el, mode: offline}, mlflow: false}\n").tracking
    assert t.enabled() == ["tensorboard", "wandb"]
    assert t.tensorboard.dir is None and t.wandb.project == "el" and t.wandb.mode == "offline" and t.mlflow is None
    assert load(EVAL).tracking.enabled() == []


@pytest.mark.parametrize(("section", "secret"), [
    ("wandb: {project: el, api_key: abc}", "WANDB_API_KEY"),
    ("mlflow: {tracking_uri: 'http://m:5000', token: abc}", "MLFLOW_TRACKING_TOKEN"),
    ("wandb_api_key: abc", "WANDB_API_KEY"),
])
def test_a_credential_in_the_spec_is_refused_naming_the_key_and_the_secret_to_use(section, secret):
    message = refusal(EVAL + f"tracking: {{{section}}}\n")
    assert "credentials never go in the spec" in message and secret in message and "runtime.secrets" in message
    assert ("api_key" in message or "token" in message)


def test_a_password_inside_the_tracking_uri_is_refused():
    message = refusal(EVAL + "tracking: {mlflow: {tracking_uri: 'https://me:hunter2@mlflow.example.com'}}\n")
    assert "tracking_uri" in message and "runtime.secrets" in message and "hunter2" not in message


def test_wandb_online_without_the_key_in_runtime_secrets_gives_a_warning():
    from gpujob.spec import load_spec_text

    def warnings(text):
        return [str(w) for w in load_spec_text(EVAL + text, "jobs/test-job.yaml").warnings]

    [warning] = warnings("tracking: {wandb: {project: el}}\n")
    assert "tracking.wandb" in warning and "WANDB_API_KEY" in warning and "runtime.secrets" in warning
    assert warnings("tracking: {wandb: {project: el}}\nruntime: {secrets: [WANDB_API_KEY]}\n") == []
    assert warnings("tracking: {wandb: {mode: offline}}\n") == []


def test_wandb_mode_is_online_or_offline():
    assert "offline" in refusal(EVAL + "tracking: {wandb: {mode: local}}\n")


def test_tracking_is_refused_for_a_command_job():
    assert "train and evaluate" in refusal(COMMAND + "tracking: {tensorboard: true}\n")


# ----------------------------------------------------------------------------------- source names


def sources(text: str):
    return load("apiVersion: gpujob/v1\nkind: evaluate\ndata:\n  eval:\n" + text).data.eval


def test_source_names_are_the_datasets_last_part_made_unique_by_config_then_split():
    names = source_names(sources(
        "  - {dataset: mozilla-foundation/common_voice_17_0, config: el, split: test}\n"
        "  - {dataset: google/fleurs, config: el_gr, split: test}\n"
        "  - {dataset: google/fleurs, config: el_gr, split: validation}\n"
        "  - {dataset: other/fleurs, config: cy_gb, split: test}\n"
        "  - {dataset: data/cv-corpus-el/, split: dev+test}\n"))
    assert names == ["common_voice_17_0", "fleurs-el_gr-test", "fleurs-el_gr-validation", "fleurs-cy_gb",
                     "cv-corpus-el"]


def test_an_explicit_name_wins_and_derived_names_step_around_it():
    names = source_names(sources("  - {dataset: google/fleurs, split: test}\n"
                                 "  - {dataset: x/cv, split: test, name: fleurs}\n"))
    assert names == ["fleurs-test", "fleurs"]
    same = source_names(sources("  - {dataset: a/x, split: test}\n  - {dataset: b/x, split: test}\n"))
    assert same == ["x-test-0", "x-test-1"]


def test_two_sources_with_one_name_are_refused():
    message = refusal("apiVersion: gpujob/v1\nkind: evaluate\ndata:\n  eval:\n"
                      "  - {dataset: a/x, name: cv}\n  - {dataset: b/y, name: cv}\n")
    assert "data.eval" in message and "two sources are named cv" in message


def test_a_source_name_must_be_short_and_plain():
    message = refusal("apiVersion: gpujob/v1\nkind: evaluate\ndata:\n  eval: [{dataset: a/x, name: 'has space'}]\n")
    assert "data.eval" in message and "name" in message
