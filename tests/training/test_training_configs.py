"""The shipped configs: every one parses and builds its model config, and the fine-tuning chain runs as a user runs
it (clip-tiny.yaml pre-trains and exports a plain CLIPModel folder, the *-from-clip-tiny configs fine-tune it),
with tiny step counts and the test's small copy of the shapes data given on the command line."""

from __future__ import annotations

import json

import pytest
import yaml
from training_helpers import ROOT, log_records, losses, train_script

from hf_unified.training.methods import config_class

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
CONFIGS = ROOT / "training" / "configs"
FINE_TUNING = ("unicl-from-clip-tiny", "uniclip-from-clip-tiny")


@pytest.mark.parametrize("name", sorted(path.stem for path in CONFIGS.glob("*.yaml")))
def test_shipped_configs_parse_and_build_their_model_config(name):
    model_args, data_args, train_args = train_script.parse_arguments(
        ["--config", str(CONFIGS / f"{name}.yaml"), "--max_steps", "7000"]  # above any final unmasked phase
    )
    assert train_args.max_steps == 7000
    if not model_args.init_from_clip:  # a CLIP start takes its towers from the checkpoint (tested below)
        config = config_class(model_args.model_type)(**model_args.model_config)
        assert config.model_type == model_args.model_type
    assert len(data_args.train_data) >= 1


def test_the_fine_tuning_configs_start_from_what_clip_tiny_exports():
    exported = yaml.safe_load((CONFIGS / "clip-tiny.yaml").read_text())
    assert exported["model_type"] == "unicl" and exported["model_config"]["use_labels"] is False  # CLIP's objective
    for name in FINE_TUNING:
        assert yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())["init_from_clip"] == exported["export_clip"]


def data_flags(shapes, sources: int) -> list[str]:
    return [
        "--train_data",
        *[f"{shapes}/train-*.tar"] * sources,
        "--eval_data",
        f"{shapes}/eval-*.tar",
        "--class_names_file",
        f"{shapes}/classes.json",
        "--embedded_data_dir",
        str(shapes),
        "--num_workers",
        "0",
        "--per_device_train_batch_size",
        "16",
        "--per_device_eval_batch_size",
        "20",
        "--max_steps",
        "2",
        "--warmup_steps",
        "1",
        "--logging_steps",
        "1",
    ]


def test_clip_tiny_exports_a_clip_model_that_both_methods_fine_tune(tmp_path, shapes):
    from huggingface_hub import ModelCard
    from transformers import AutoModel, AutoTokenizer, CLIPModel

    clip_run, export = tmp_path / "clip-tiny", tmp_path / "clip-tiny-clip"
    train_script.main(
        ["--config", str(CONFIGS / "clip-tiny.yaml"), *data_flags(shapes, 1), "--do_eval", "false"]
        + ["--output_dir", str(clip_run), "--export_clip", str(export)]
    )
    assert type(CLIPModel.from_pretrained(export)).__name__ == "CLIPModel"
    # The caption tokenizer ends texts with id 3, which CLIPTextModel pools at (id 2 would mean its legacy pooling).
    assert AutoTokenizer.from_pretrained(export).eos_token_id == 3

    for name in FINE_TUNING:
        config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
        out = tmp_path / name
        train_script.main(
            ["--config", str(CONFIGS / f"{name}.yaml"), *data_flags(shapes, len(config["train_data"]))]
            + ["--output_dir", str(out), "--init_from_clip", str(export)]
        )
        assert len(losses(out)) == 2
        assert "calibrated_logit_offsets" not in log_records(out)[0]  # a pretrained start keeps CLIP's offsets
        expected_class = "UniCLModel" if name.startswith("unicl-") else "UniCLIPModel"
        assert type(AutoModel.from_pretrained(out)).__name__ == expected_class
        card = ModelCard.load(out / "README.md")
        assert card.data.base_model is None and str(export) not in card.content  # a local start is never published
        assert "zero_shot_top1_accuracy" in json.loads((out / "eval_results.json").read_text())
