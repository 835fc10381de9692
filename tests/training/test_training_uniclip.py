"""UniCLIP through training/train.py: views made in the step on the training device from the workers' uint8
canvases (the default) or per image in the workers, a view preset by image size, exact resume, and the logit
offsets calibrated on the first batch of a run from scratch."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import log_records, losses, train_script, write_config

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
DOMAIN_PAIRS = ("image-image", "image-text", "text-text")


def test_views_on_the_device_resume_exactly(tmp_path, shapes, capsys):
    # Random crops (area 0.5-1) drawn in the step from each batch's augmentation_seed, one DataLoader worker.
    config = write_config(tmp_path, shapes, "uniclip", num_workers=1, do_eval=False, save_steps=2)
    flags = ["--config", str(config), "--max_steps", "4"]
    full, part = tmp_path / "full", tmp_path / "part"
    train_script.main([*flags, "--output_dir", str(full)])
    assert "views made on cpu: BatchMultiViewAugmentation(num_views=2, size=[32, 32], preset='small'" in (
        capsys.readouterr().out
    )
    train_script.main([*flags, "--output_dir", str(part), "--stop_at_step", "3"])
    train_script.main([*flags, "--output_dir", str(part), "--resume_from_checkpoint", "latest"])
    assert losses(part) == losses(full)  # the resumed run re-makes the same views, and does not recalibrate
    expected, resumed = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(resumed[name].equal(value) for name, value in expected.items())


def test_per_image_views_in_the_workers_still_train(tmp_path, shapes, capsys):
    config = write_config(tmp_path, shapes, "uniclip", do_eval=False, views_on_device=False, view_preset="simclr")
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "2", "--output_dir", str(out)])
    assert "views made on" not in capsys.readouterr().out
    assert len(losses(out)) == 2 and all(torch.isfinite(torch.tensor(losses(out))))


def test_the_preset_follows_the_setting(tmp_path, shapes, capsys):
    config = write_config(tmp_path, shapes, "uniclip", do_eval=False, view_preset="simclr", view_canvas_size=40)
    train_script.main(["--config", str(config), "--max_steps", "1", "--output_dir", str(tmp_path / "run")])
    printed = capsys.readouterr().out
    assert "preset='simclr', recipe=ViewRecipe(scale=(0.5, 1.0)" in printed  # the config's override on top
    assert "canvas=ImageCanvas(size=[40, 40]" in printed


@pytest.mark.parametrize("torch_compile", [False, True])
def test_torch_compile_also_compiles_the_views_jitter(tmp_path, shapes, torch_compile):
    from hf_unified.training.builders import build_trainer

    config = write_config(tmp_path, shapes, "uniclip", do_eval=False)
    flags = ["--config", str(config)] + (["--torch_compile"] if torch_compile else [])
    trainer = build_trainer(*train_script.parse_arguments(flags))  # builds only: nothing is compiled yet
    assert trainer.data.views.torch_compile is torch_compile


def test_a_wrong_view_recipe_field_fails_before_anything_is_built(tmp_path, shapes):
    config = write_config(tmp_path, shapes, "uniclip", augmentation_kwargs={"scale": [0.5, 1.0], "size": 64})
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"augmentation_kwargs: unknown view recipe field\(s\) \['size'\].*size is"):
        train_script.main(["--config", str(config), "--output_dir", str(out)])
    assert not (out / "tokenizer").exists()


def offsets_after_one_frozen_step(tmp_path, shapes, *flags: str) -> tuple[list[dict], list[float]]:
    """One step at learning rate 0: the saved offsets are where the run started from."""
    config = write_config(tmp_path, shapes, "uniclip", do_eval=False, learning_rate=0.0)
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "1", "--output_dir", str(out), *flags])
    return log_records(out), load_file(out / "model.safetensors")["logit_offset"].tolist()


def test_offsets_are_calibrated_on_the_first_batch_of_a_run_from_scratch(tmp_path, shapes, capsys):
    records, offsets = offsets_after_one_frozen_step(tmp_path, shapes)
    calibrated = records[0]["calibrated_logit_offsets"]
    assert list(calibrated) == list(DOMAIN_PAIRS)
    assert offsets == pytest.approx([calibrated[pair] for pair in DOMAIN_PAIRS], abs=1e-6)
    assert records[0]["logit_offset"] == pytest.approx(offsets, abs=1e-6)
    # Untrained towers: views of different images are far more alike than texts, and texts than image-text pairs.
    assert calibrated["image-image"] > calibrated["text-text"] > calibrated["image-text"]
    assert "logit offsets calibrated on the first batch (mean cosine of different items): image-image" in (
        capsys.readouterr().out
    )


def test_offsets_are_left_alone_when_asked(tmp_path, shapes):
    records, offsets = offsets_after_one_frozen_step(tmp_path, shapes, "--calibrate_logit_offsets", "false")
    assert "calibrated_logit_offsets" not in records[0] and offsets == [0.0, 0.0, 0.0]  # the config's init


def test_calibration_of_a_model_without_offsets_is_refused(tmp_path, shapes):
    config = write_config(tmp_path, shapes, do_eval=False)  # UniCL: one temperature, no offsets
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"calibrate_logit_offsets: true needs .* UniCLModel has none"):
        train_script.main(["--config", str(config), "--output_dir", str(out), "--calibrate_logit_offsets", "true"])
    assert not (out / "training_log.jsonl").exists()
