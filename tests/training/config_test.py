"""TrainConfig refuses settings that cannot work before any data is read."""

from __future__ import annotations

import pytest

from ecg_tfx.training.config import TrainConfig


@pytest.mark.parametrize(("settings", "message"), [
    ({"tflite_variants": ("float32", "int4")}, "TFLite variants must be some of .*; got float32, int4"),
    ({"tflite_variants": ()}, "got none"),
    ({"freeze_epochs": 2}, "they need --init_from"),
    ({"body_lr_factor": 0.1}, "they need --init_from"),
    ({"init_from": "runs/pretrained", "body_lr_factor": 0.0}, "body_lr_factor > 0"),
])
def test_settings_that_cannot_work_are_refused(settings, message):
    with pytest.raises(ValueError, match=message):
        TrainConfig(data_dir="data", run_dir="run", **settings)


def test_a_subset_of_tflite_variants_is_accepted():
    assert TrainConfig(data_dir="data", run_dir="run", tflite_variants=("int8_body",)).tflite_variants == ("int8_body",)
