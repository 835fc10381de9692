"""The command line of training/train.py, run as users run it (a subprocess): bad flags and config values end with
one message, no traceback, before torch or the models are imported."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from training_helpers import ROOT, train_script

TRAIN = str(ROOT / "training" / "train.py")
UNICL_TINY = str(ROOT / "training" / "configs" / "unicl-tiny.yaml")


def run_train(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, TRAIN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_unknown_flag_names_it_and_suggests_the_right_one():
    result = run_train("--config", UNICL_TINY, "--max_stepz", "3")
    assert result.returncode == 2
    assert "unrecognized arguments: --max_stepz 3" in result.stderr
    assert "did you mean --max_steps?" in result.stderr
    assert "Traceback" not in result.stderr


def test_command_line_type_error_is_argparse_message():
    result = run_train("--max_steps", "many")
    assert result.returncode == 2 and "argument --max_steps" in result.stderr and "invalid int value" in result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_type_error_names_the_file_and_the_key(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("model_type: unicl\nlearning_rate: fast\nmax_steps: 10\n")
    result = run_train("--config", str(config))
    assert result.returncode == 2
    assert f"{config}: learning_rate must be a float, got 'fast' (str)" in result.stderr
    assert "Traceback" not in result.stderr


def test_yaml_unknown_key_and_wrong_list_type(tmp_path):
    config = tmp_path / "bad.yaml"
    config.write_text("max_step: 10\n")
    result = run_train("--config", str(config))
    assert (
        result.returncode == 2
        and "unknown keys ['max_step']" in result.stderr
        and "did you mean max_steps" in result.stderr
    )
    config.write_text("train_probabilities: [0.5, half]\n")
    result = run_train("--config", str(config))
    assert "train_probabilities must be a list of float (or one value) or null" in result.stderr


def test_help_lists_config_and_every_option():
    result = run_train("--help")
    assert result.returncode == 0
    options = ("--config", "--max_steps", "--layerwise_lr_decay", "--max_skipped_fraction", "--init_from_clip")
    options += ("--max_image_pixels", "--max_aspect_ratio", "--max_caption_chars")
    for option in options:
        assert option in result.stdout


def test_overriding_train_data_alone_explains_per_source_lengths():
    result = run_train("--config", UNICL_TINY, "--train_data", "/data/cc3m")
    assert result.returncode == 2
    message = result.stderr
    assert "train_data has 1 source (command line)" in message
    assert (
        f"text_column has 2 values ({UNICL_TINY})" in message
        and f"label_column has 2 values ({UNICL_TINY})" in message
    )
    assert "one value for all sources or one per source" in message
    assert "Traceback" not in message


def test_argument_errors_come_before_torch_is_imported():
    code = (
        "import runpy, sys\n"
        f"sys.argv = [{TRAIN!r}, '--max_stepz', '1']\n"
        "try:\n"
        f"    runpy.run_path({TRAIN!r}, run_name='__main__')\n"
        "except SystemExit:\n"
        "    pass\n"
        "print('heavy:', sorted(m for m in ('torch', 'accelerate', 'datasets', 'hf_unified') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert "heavy: []" in result.stdout, result.stdout + result.stderr


def test_parse_arguments_keeps_yaml_and_command_line_precedence(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("learning_rate: 1e-3\nmax_steps: 10\nreport_to: tensorboard\nfreeze_text_tower: true\n")
    model_args, data_args, train_args = train_script.parse_arguments(["--config", str(config), "--max_steps", "3"])
    assert train_args.learning_rate == pytest.approx(1e-3)  # PyYAML reads 1e-3 as a string
    assert train_args.max_steps == 3 and train_args.report_to == ["tensorboard"] and train_args.freeze_text_tower


def test_shipped_ddp_launch_config_loads():
    from accelerate.commands.config.config_args import load_config_from_file

    config = load_config_from_file(str(ROOT / "training" / "accelerate" / "ddp.yaml"))
    assert config.distributed_type.name == "MULTI_GPU" and config.mixed_precision == "bf16"
    assert config.num_machines == 1 and not config.use_cpu


def test_every_accumulation_mode_the_parser_accepts_has_a_strategy():
    from hf_unified.training.arguments import GRADIENT_ACCUMULATION_MODES
    from hf_unified.training.engine.steps import STEP_STRATEGIES

    assert set(GRADIENT_ACCUMULATION_MODES) == set(STEP_STRATEGIES)


def test_input_limits_are_checked_options_whose_defaults_are_the_librarys():
    from hf_unified.image_processing import MAX_ASPECT_RATIO, MAX_IMAGE_PIXELS
    from hf_unified.training.arguments import ConfigError
    from hf_unified.training.data.sources import MAX_CAPTION_CHARS

    data_args = train_script.parse_arguments([])[1]
    assert (data_args.max_image_pixels, data_args.max_aspect_ratio, data_args.max_caption_chars) == (
        MAX_IMAGE_PIXELS,
        MAX_ASPECT_RATIO,
        MAX_CAPTION_CHARS,
    )
    for flag, value, message in [
        ("--max_image_pixels", "0", "max_image_pixels must be a positive whole number, got 0"),
        ("--max_caption_chars", "-5", "max_caption_chars must be a positive whole number, got -5"),
        (
            "--max_aspect_ratio",
            "0.5",
            "max_aspect_ratio must be a finite number >= 1 (long side / short side), got 0.5",
        ),
        ("--max_aspect_ratio", "nan", "max_aspect_ratio must be a finite number >= 1"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            train_script.parse_arguments([flag, value])
