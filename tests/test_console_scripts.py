"""The console scripts of `pyproject.toml` run as pip installs them: each names a callable that exists, and
`hf-unified-train` (the same command as `training/train.py`, from the package) shows its help and trains a tiny job.

pip's generated script is `sys.exit(<module>.<function>())` with the command's name in `sys.argv[0]`; the tests run
exactly that in a subprocess, so they do not depend on this checkout being installed with its scripts on the PATH.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import subprocess
import sys

import pytest
from training_helpers import ROOT, make_shapes, write_config

# `[project.scripts]` of pyproject.toml, one `name = "module:function"` a line (tomllib is Python 3.11+).
_SECTION = re.search(r"^\[project\.scripts\]\n(.*?)(?:^\[|\Z)", (ROOT / "pyproject.toml").read_text(), re.S | re.M)
SCRIPTS = dict(re.findall(r'^([\w-]+) = "([\w.]+:\w+)"$', _SECTION.group(1), re.M))


def run_console_script(name: str, *args: str, cwd=ROOT) -> subprocess.CompletedProcess:
    module, function = SCRIPTS[name].split(":")
    wrapper = f"import sys; sys.argv[0] = {name!r}; from {module} import {function}; sys.exit({function}())"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", wrapper, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_console_script_names_a_callable(name):
    module, function = SCRIPTS[name].split(":")
    assert callable(getattr(importlib.import_module(module), function)), SCRIPTS[name]


def test_train_console_script_is_train_py():
    assert SCRIPTS["hf-unified-train"] == "hf_unified.training.cli:run"
    result = run_console_script("hf-unified-train", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith("usage: hf-unified-train --config FILE.yaml")
    script = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "--help"], capture_output=True, text=True, timeout=300
    )
    assert script.returncode == 0
    # One parser: the same flags and help text, only the program's name differs.
    assert result.stdout.replace("hf-unified-train", "train.py") == script.stdout


def test_train_console_script_rejects_a_bad_flag_in_one_line():
    result = run_console_script("hf-unified-train", "--max_stepz", "3")
    assert result.returncode == 2 and "did you mean --max_steps?" in result.stderr
    assert "Traceback" not in result.stderr


def test_train_console_script_trains_a_tiny_job_from_another_folder(tmp_path):
    shapes = make_shapes(tmp_path / "shapes")
    config = write_config(tmp_path, shapes)
    out = tmp_path / "out"
    result = run_console_script(
        "hf-unified-train", "--config", str(config), "--max_steps", "2", "--output_dir", str(out), cwd=tmp_path
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    assert "zero_shot_top1_accuracy" in json.loads((out / "eval_results.json").read_text())
