"""Shared pieces of the trainer tests: the tiny shapes data, tiny tower configs, a YAML writer, train.py itself.

The fixtures are in `training_fixtures.py`: test modules load them with `pytest_plugins = ("training_fixtures",)`
and reset accelerate's process state around each test with
`pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")`.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

from hf_unified.training.data import synthetic_data

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("train_script", ROOT / "training" / "train.py")
train_script = importlib.util.module_from_spec(spec)
sys.modules["train_script"] = train_script  # dataclasses resolve annotations through sys.modules
spec.loader.exec_module(train_script)

TINY_VISION = {
    "model_type": "clip_vision_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
    "patch_size": 8,
}
TINY_TEXT = {
    "model_type": "clip_text_model",
    "hidden_size": 32,
    "intermediate_size": 64,
    "num_hidden_layers": 1,
    "num_attention_heads": 2,
}


def make_shapes(folder: Path) -> Path:
    """96 training and 40 evaluation samples at 32 px. 3 shards: not a multiple of 2, so split_dataset_by_node
    strides examples and 2 ranks share every batch."""
    return synthetic_data.generate(folder, num_train=96, num_eval=40, num_train_shards=3, image_size=32)


def reset_accelerate_state() -> None:
    """accelerate keeps one process-wide state; every test builds its own `Accelerator`."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(True)
    GradientState._reset_state()


def write_config(path: Path, shapes: Path, model_type: str = "unicl", **overrides) -> Path:
    model_config = {"projection_dim": 16, "vision_config": TINY_VISION, "text_config": TINY_TEXT}
    config = {
        "model_type": model_type,
        "model_config": model_config,
        "tokenizer_vocab_size": 300,
        "max_text_length": 16,
        "train_data": [f"{shapes}/train-*.tar", f"{shapes}/train-*.tar"],
        "label_column": ["cls", "none"],
        "text_column": ["none", "txt"],
        "train_probabilities": [0.5, 0.5],
        "eval_data": f"{shapes}/eval-*.tar",
        "class_names_file": f"{shapes}/classes.json",
        "templates": "shapes",
        "image_size": 32,
        "resize_ratio": 1.0,
        "shuffle_buffer_size": 16,
        "num_workers": 0,
        "per_device_train_batch_size": 8,
        "per_device_eval_batch_size": 20,
        "max_steps": 50,  # the tests override it on the command line
        "output_dir": str(path / "from-config"),
        "learning_rate": 1e-3,
        "warmup_steps": 1,
        "logging_steps": 1,
        "disable_tqdm": True,
        "embedded_data_dir": str(shapes),
    }
    if model_type != "unicl":
        config.update(
            train_data=[f"{shapes}/train-*.tar"], label_column=["none"], text_column=["txt"], train_probabilities=None
        )
    if model_type == "uniclip":
        model_config["augmentation_hidden_size"] = 16
        config["augmentation_kwargs"] = {"scale": [0.5, 1.0], "blur_p": 0.0}
    config.update(overrides)
    file = path / f"{model_type}.yaml"
    import yaml

    file.write_text(yaml.safe_dump(config))
    return file


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_two_processes(script: Path, *args: str, timeout: float = 600) -> None:
    """Runs `script` (train.py or a test runner) in two CPU processes over gloo, as users launch train.py:
    `--multi_gpu` selects accelerate's torchrun launcher, and train.py asks for the CPU (no GPU here), so the two
    processes train as MULTI_CPU. (`--cpu` alone would start one process.) Raises with the end of its output when
    it fails."""
    import os
    import subprocess

    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    launch += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    launch += ["--main_process_port", str(free_port())]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    completed = subprocess.run(
        [*launch, str(script), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout
    )
    if completed.returncode != 0:
        raise AssertionError(f"{script.name} {' '.join(args)} failed:\n{completed.stderr[-4000:]}")


def log_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]


def losses(output_dir: Path) -> list[float]:
    return [record["loss"] for record in log_records(output_dir)]


def assert_resumes_exactly(tmp_path: Path, flags: list[str], stop_at_step: int) -> None:
    """train.py with `flags` (which checkpoint at `stop_at_step`): stopped there and resumed, the run logs the
    uninterrupted run's losses and ends with its weights, bit for bit."""
    from safetensors.torch import load_file

    full, part = tmp_path / "full", tmp_path / "part"
    train_script.main([*flags, "--output_dir", str(full)])
    train_script.main([*flags, "--output_dir", str(part), "--stop_at_step", str(stop_at_step)])
    train_script.main([*flags, "--output_dir", str(part), "--resume_from_checkpoint", "latest"])
    assert losses(part) == losses(full)
    expected, resumed = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert all(resumed[name].equal(value) for name, value in expected.items())
