"""training.augment, weight_decay and early_stopping_patience in the spec: off by default, validated with
messages that name the key, and SpecAugment refused where a frozen encoder would never see its masks."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpujob.cli.app import app
from gpujob.spec import SpecError, load_spec_text
from spec_samples import TRAIN


def load(extra: str):
    text = TRAIN + "".join(f"  {line}\n" for line in extra.splitlines())
    return load_spec_text(text, "jobs/aug.yaml").spec


def test_everything_is_off_by_default():
    t = load("").training
    assert t.augment.spec_augment is None and t.augment.speed is None
    assert t.augment.noise is None and t.augment.gain_db is None and not t.augment.waveform
    assert t.weight_decay == 0.0 and t.early_stopping_patience is None


def test_a_full_augment_section_loads():
    t = load("augment:\n  speed: [0.9, 1.0, 1.1]\n  gain_db: [-6, 6]\n"
             "  noise: {snr_db: [5, 30], kind: pink, probability: 0.5}\n  spec_augment: {}\n"
             "early_stopping_patience: 3\nweight_decay: 0.01\nfreeze: {encoder_layers: 2}").training
    assert t.augment.speed == [0.9, 1.0, 1.1] and t.augment.waveform
    assert t.augment.noise.kind == "pink" and t.augment.noise.snr_db == [5, 30]
    assert t.augment.spec_augment.mask_time_prob == 0.05 and t.augment.spec_augment.mask_feature_prob == 0.0
    assert t.early_stopping_patience == 3 and t.weight_decay == 0.01


def test_speed_1_alone_is_no_waveform_augmentation():
    assert not load("augment: {speed: [1.0]}").training.augment.waveform


@pytest.mark.parametrize(("extra", "key", "words"), [
    ("augment: {gain_db: [6, -6]}", "training.augment.gain_db", "low <= high"),
    ("augment: {noise: {snr_db: [30, 5]}}", "training.augment.noise.snr_db", "low <= high"),
    ("augment: {noise: {snr_db: [5]}}", "training.augment.noise.snr_db", "2"),
    ("augment: {speed: [3.0]}", "training.augment.speed", "2"),
    ("augment: {noise: {snr_db: [5, 10], kind: brown}}", "training.augment.noise.kind", "white"),
    ("augment: {spec_augment: {mask_time_prob: 1.5}}", "training.augment.spec_augment.mask_time_prob", "1"),
    ("augment: {speeed: [0.9]}", "training.augment.speeed", "speed"),
    ("early_stopping_patience: 0", "training.early_stopping_patience", "1"),
    ("weight_decay: -0.1", "training.weight_decay", "0"),
])
def test_bad_values_name_the_key(extra, key, words):
    with pytest.raises(SpecError) as err:
        load(extra)
    text = str(err.value)
    assert key in text and words in text, text


def test_spec_augment_with_a_frozen_encoder_is_refused_through_the_cli(tmp_path):
    path = tmp_path / "aug.yaml"
    path.write_text(TRAIN + "  freeze: encoder\n  augment: {spec_augment: {mask_time_prob: 0.1}}\n")
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2, result.output
    assert "training.augment.spec_augment" in result.output and "training.freeze: encoder" in result.output
    assert "Traceback" not in result.output


def test_waveform_augmentation_with_a_frozen_encoder_is_allowed():
    assert load("freeze: encoder\naugment: {speed: [0.9, 1.1]}").training.augment.waveform


def test_early_stopping_without_eval_data_warns_and_with_it_does_not():
    text = TRAIN + "  early_stopping_patience: 2\n"
    assert any("watches the eval WER" in w.message for w in load_spec_text(text, "jobs/aug.yaml").warnings)
    with_eval = text.replace("training:", "  eval: [{dataset: google/fleurs, split: test}]\ntraining:")
    assert not load_spec_text(with_eval, "jobs/aug.yaml").warnings
