"""The three ideas composed through training/train.py from a config: `objective` names the objective, the model
type the towers, so MS-CLIP + UniCL labels, UniCLIP + UniCL labels and MS-CLIP + UniCLIP views each train."""

from __future__ import annotations

import json

import pytest
import yaml
from training_helpers import ROOT, losses, train_script, write_config

from hf_unified.configuration_contrastive import OBJECTIVE_PRESETS
from hf_unified.training.arguments import OBJECTIVE_NAMES, ConfigError, ModelArguments

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")

MSCLIP_TINY = yaml.safe_load((ROOT / "training" / "configs" / "msclip-tiny.yaml").read_text())["model_config"]
MSCLIP_TINY = {**MSCLIP_TINY, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 16}


@pytest.mark.parametrize(
    "model_type, objective",
    [("msclip", "unicl"), ("uniclip", "uniclip+unicl"), ("msclip", "uniclip")],
)
def test_a_combination_trains_from_a_config(tmp_path, shapes, model_type, objective):
    overrides = dict(objective=objective, do_eval=False, per_device_train_batch_size=16, learning_rate=3e-3)
    if model_type == "msclip":
        overrides["model_config"] = dict(MSCLIP_TINY)
    if OBJECTIVE_PRESETS[objective]["use_labels"]:  # UniCL's 50/50 mix of labelled images and captions
        overrides.update(
            train_data=[f"{shapes}/train-*.tar"] * 2,
            label_column=["cls", "none"],
            text_column=["none", "txt"],
            train_probabilities=[0.5, 0.5],
        )
    config = write_config(tmp_path, shapes, model_type, **overrides)
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "16", "--output_dir", str(out)])
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == model_type
    # The objective preset's fields, except those the config's model_config sets itself (which win over a preset:
    # the MS-CLIP tiny config's temperature start).
    preset = {
        key: value
        for key, value in OBJECTIVE_PRESETS[objective].items()
        if key not in overrides.get("model_config", {})
    }
    assert {key: saved[key] for key in preset} == preset
    values = losses(out)
    assert len(values) == 16 and sum(values[-4:]) < 0.9 * sum(values[:4]), values


def test_model_config_fields_win_over_the_objective_and_a_saved_model_keeps_its_own():
    assert set(OBJECTIVE_NAMES) == set(OBJECTIVE_PRESETS)  # the parser's choices are the presets
    arguments = ModelArguments(model_type="msclip", objective="uniclip", model_config={"num_views": 3})
    assert arguments.config_kwargs == {**OBJECTIVE_PRESETS["uniclip"], "num_views": 3}
    with pytest.raises(ConfigError, match="a saved model keeps the objective it was trained with"):
        ModelArguments(objective="unicl", model_name_or_path="outputs/unicl-tiny")


def test_an_unknown_objective_is_refused_with_the_choices(tmp_path, shapes, capsys):
    config = write_config(tmp_path, shapes, objective="siglip2")
    with pytest.raises(SystemExit):
        train_script.main(["--config", str(config), "--output_dir", str(tmp_path / "run")])
    error = capsys.readouterr().err
    assert "objective" in error and "uniclip+unicl" in error and "Traceback" not in error
