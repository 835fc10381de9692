"""`--gradient_accumulation_mode full_batch` through training/train.py: k micro-batches of n train as one batch of
k x n (one loss over all of them), in one process and in two gloo processes, and resume exactly.

The reference is a `micro_batch` run with the doubled batch and one micro-batch per step. Preprocessing is made
deterministic (resize + centre crop, one prompt per class, UniCLIP views that are the whole image), so that both
runs see the same samples; they are then the same optimisation, and the losses agree to float32 rounding.
"""

from __future__ import annotations

import pytest
from training_helpers import ROOT, assert_resumes_exactly, launch_two_processes, losses, train_script, write_config

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TRAIN = ROOT / "training" / "train.py"
STEPS = ["--max_steps", "3"]
FULL_BATCH = ["--gradient_accumulation_steps", "2", "--gradient_accumulation_mode", "full_batch"]
# UniCLIP's views: crops of the whole image, no colour jitter; offsets not calibrated (it would see 4 items here, 8
# there).
DETERMINISTIC = {
    "unicl": {"crop_scale_min": 1.0},
    "uniclip": {"augmentation_kwargs": {"scale": [1.0, 1.0], "jitter_p": 0.0}, "calibrate_logit_offsets": "false"},
}


def deterministic_config(tmp_path, shapes, model_type: str, **overrides):
    return write_config(
        tmp_path, shapes, model_type, templates="name", do_eval=False, **DETERMINISTIC[model_type], **overrides
    )


@pytest.fixture(scope="module")
def doubled_batch_runs(tmp_path_factory, shapes) -> dict:
    """The references: `micro_batch` with 8 samples per step, one process, for each model type."""
    from training_helpers import reset_accelerate_state

    runs = {}
    for model_type in DETERMINISTIC:
        folder = tmp_path_factory.mktemp(f"{model_type}-reference")
        config = deterministic_config(folder, shapes, model_type)
        reset_accelerate_state()
        train_script.main(["--config", str(config), *STEPS, "--output_dir", str(folder / "run")])
        runs[model_type] = losses(folder / "run")
    reset_accelerate_state()
    return runs


@pytest.mark.parametrize("model_type", ["unicl", "uniclip"])
def test_full_batch_equals_the_doubled_batch_in_one_process(tmp_path, shapes, doubled_batch_runs, model_type):
    config = deterministic_config(tmp_path, shapes, model_type, per_device_train_batch_size=4)
    out = tmp_path / "run"
    train_script.main(["--config", str(config), *STEPS, *FULL_BATCH, "--output_dir", str(out)])
    assert len(losses(out)) == 3
    assert losses(out) == pytest.approx(doubled_batch_runs[model_type], rel=0, abs=1e-5)


def test_micro_batch_accumulation_is_not_the_doubled_batch(tmp_path, shapes, doubled_batch_runs):
    """Guards the test above: plain accumulation of the same two micro-batches gives another loss (each half is
    contrasted with its own negatives only)."""
    config = deterministic_config(tmp_path, shapes, "uniclip", per_device_train_batch_size=4)
    out = tmp_path / "run"
    accumulate = ["--gradient_accumulation_steps", "2", "--gradient_accumulation_mode", "micro_batch"]
    train_script.main(["--config", str(config), *STEPS, *accumulate, "--output_dir", str(out)])
    assert abs(losses(out)[0] - doubled_batch_runs["uniclip"][0]) > 0.1


def test_full_batch_in_two_processes_equals_the_doubled_batch(tmp_path, shapes, doubled_batch_runs):
    """2 processes x 2 micro-batches x 2 samples: the same 8 samples per step as the one-process reference, one
    loss over all of them (gathered across the processes)."""
    config = deterministic_config(tmp_path, shapes, "uniclip", per_device_train_batch_size=2)
    out = tmp_path / "run"
    launch_two_processes(TRAIN, "--config", str(config), *STEPS, *FULL_BATCH, "--output_dir", str(out))
    assert losses(out) == pytest.approx(doubled_batch_runs["uniclip"], rel=0, abs=1e-5)


def test_full_batch_resumes_exactly(tmp_path, shapes):
    # Random crops, one DataLoader worker, labels: the resumed step must re-run the same micro-batches.
    config = write_config(tmp_path, shapes, num_workers=1, crop_scale_min=0.6, do_eval=False, save_steps=2)
    flags = ["--config", str(config), "--max_steps", "4", "--per_device_train_batch_size", "4", *FULL_BATCH]
    assert_resumes_exactly(tmp_path, flags, stop_at_step=3)
