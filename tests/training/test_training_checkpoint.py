"""Checkpoints are JSON and safetensors only: every file of a checkpoint folder, replaced by a pickle payload, makes
resuming refuse with one line, and no payload ever runs."""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from training_helpers import (
    ROOT,
    TINY_TEXT,
    TINY_VISION,
    train_script,
    write_config,
)

from hf_unified.training.arguments import TrainArguments
from hf_unified.training.engine import checkpoint as checkpoints
from hf_unified.training.optim import build_optimizer, build_scheduler

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


class Payload:
    """Unpickling it calls `function(*arguments)`: what an attacker puts in a shared checkpoint."""

    def __init__(self, function, *arguments):
        self.function, self.arguments = function, arguments

    def __reduce__(self):
        return self.function, self.arguments


def payloads(marker: Path) -> dict[str, bytes]:
    from numpy.testing._private.utils import runstring

    touch = f"open({str(marker)!r}, 'w').close()"
    raw = {
        "os.system": pickle.dumps(Payload(os.system, f"touch {marker}")),
        "builtins.exec": pickle.dumps(Payload(builtins.exec, touch)),
        "numpy runstring": pickle.dumps(Payload(runstring, touch, {})),
    }
    buffer = io.BytesIO()  # the same os.system payload inside torch.save's zip container
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("archive/data.pkl", raw["os.system"])
    return {**raw, "torch zip": buffer.getvalue()}


def test_payloads_are_live(tmp_path):
    """Control: each payload does run under plain pickle, so the tests below would see it if resuming unpickled."""
    marker = tmp_path / "ran"
    for name, payload in payloads(marker).items():
        if name == "torch zip":
            continue
        pickle.loads(payload)
        assert marker.exists(), name
        marker.unlink()


@pytest.fixture()
def tiny_run(tmp_path):
    """A tiny model, optimizer and schedule after two steps, and a checkpoint of them."""
    from accelerate import Accelerator

    from hf_unified import UniCLConfig, UniCLModel

    model = UniCLModel(
        UniCLConfig(projection_dim=8, vision_config=TINY_VISION, text_config={**TINY_TEXT, "vocab_size": 40})
    )
    args = TrainArguments(output_dir=str(tmp_path / "run"), max_steps=10, warmup_steps=2)
    accelerator = Accelerator(cpu=True)
    optimizer = build_optimizer(model, args)
    scheduler = build_scheduler(optimizer, args)
    model, optimizer = accelerator.prepare(model, optimizer)
    for _ in range(2):
        for parameter in model.parameters():
            parameter.grad = torch.randn_like(parameter)
        optimizer.step()
        scheduler.step()
    rank_state = {"stream": {"batches_consumed": 2, "batch_size": 8, "rank": 0}, "counters": {"samples_seen": 16}}
    generators = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    folder = checkpoints.write_checkpoint(
        tmp_path / "run",
        2,
        accelerator=accelerator,
        model=model,
        optimizer=optimizer,
        scheduler=scheduler,
        trainer_state={"nonfinite_steps": 0},
        rank_state=rank_state,
    )
    return folder, accelerator, model, optimizer, scheduler, generators


def test_checkpoint_holds_only_json_and_safetensors_and_round_trips(tiny_run):
    folder, accelerator, model, optimizer, scheduler, generators = tiny_run
    names = sorted(path.name for path in folder.iterdir())
    assert names == sorted(checkpoints.checkpoint_files(1, with_scaler=False))
    assert all(name.endswith((".json", ".safetensors")) for name in names)
    assert not list(folder.parent.glob(".checkpoint-2.*"))  # the staging folder became the checkpoint

    expected_weights = {k: v.clone() for k, v in model.state_dict().items()}
    expected_optimizer = {k: v.clone() for k, v in optimizer.state_dict()["state"][0].items()}
    expected_schedule = scheduler.state_dict()
    # Change everything, then restore it from the files.
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    torch.manual_seed(123), random.seed(123), np.random.seed(123)
    saved = checkpoints.read_checkpoint(folder, rank=0, world_size=1)
    fresh_optimizer = build_optimizer(model, TrainArguments(max_steps=10, warmup_steps=2))
    fresh_scheduler = build_scheduler(fresh_optimizer, TrainArguments(max_steps=10, warmup_steps=2))
    checkpoints.restore(
        saved, accelerator=accelerator, model=model, optimizer=fresh_optimizer, scheduler=fresh_scheduler
    )
    assert saved.step == 2 and saved.rank_state["stream"]["batches_consumed"] == 2
    state = fresh_optimizer.state_dict()
    for key, value in expected_optimizer.items():
        assert torch.equal(state["state"][0][key], value), key
    assert state["param_groups"][0]["betas"] == (0.9, 0.98)  # a tuple again, as torch writes it
    assert fresh_scheduler.state_dict() == expected_schedule
    for name, value in model.state_dict().items():
        assert torch.equal(value, expected_weights[name]), name
    torch_state, python_state, numpy_key = generators
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == python_state
    assert np.array_equal(np.random.get_state()[1], numpy_key)


@pytest.mark.parametrize("name", checkpoints.checkpoint_files(1, with_scaler=False))
def test_every_checkpoint_file_replaced_by_a_payload_is_refused_and_never_runs(tiny_run, tmp_path, name):
    folder, accelerator, model, optimizer, scheduler, _ = tiny_run
    marker = tmp_path / "payload-ran"
    for kind, payload in payloads(marker).items():
        attacked = tmp_path / f"attacked-{name}"
        shutil.copytree(folder, attacked)
        (attacked / name).write_bytes(payload)
        with pytest.raises(checkpoints.CheckpointError) as refused:
            state = checkpoints.read_checkpoint(attacked, rank=0, world_size=1)
            checkpoints.restore(state, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler)
        message = str(refused.value)
        assert name in message and "\n" not in message and "weights_only" not in message, (kind, message)
        assert not marker.exists(), f"{kind} payload in {name} ran"
        shutil.rmtree(attacked)


@pytest.mark.parametrize("extra", ["custom_checkpoint_0.pkl", "random_states_0.pkl", "optimizer.bin", "notes.txt"])
def test_a_foreign_file_in_a_checkpoint_is_refused_unread(tiny_run, tmp_path, extra):
    folder, *_ = tiny_run
    marker = tmp_path / "payload-ran"
    (folder / extra).write_bytes(payloads(marker)["os.system"])
    with pytest.raises(checkpoints.CheckpointError, match=rf"holds \['{extra}'\], which this trainer never writes"):
        checkpoints.read_checkpoint(folder, rank=0, world_size=1)
    assert not marker.exists()


def test_resume_refuses_a_payload_checkpoint_with_one_line(tmp_path, shapes):
    """End to end, as a user runs it: the run stops with one line on stderr; no payload runs, no step trains."""
    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "3", "--stop_at_step", "2", "--output_dir", str(out)])
    marker = tmp_path / "payload-ran"
    (out / "checkpoint-2" / "scheduler.json").write_bytes(payloads(marker)["numpy runstring"])
    log_before = (out / "training_log.jsonl").read_text()
    result = subprocess.run(
        [sys.executable, str(ROOT / "training" / "train.py"), "--config", str(config), "--max_steps", "3"]
        + ["--output_dir", str(out), "--resume_from_checkpoint", "latest"],
        cwd=ROOT,
        env={**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 1, result.stderr[-2000:]
    assert (
        result.stderr.strip()
        .splitlines()[-1]
        .startswith(f"train.py: error: cannot resume from {out / 'checkpoint-2'}: scheduler.json is not a JSON file")
    )
    assert "Traceback" not in result.stderr and not marker.exists()
    assert (out / "training_log.jsonl").read_text() == log_before
    assert json.loads((out / "checkpoint-2" / "trainer_state.json").read_text())["step"] == 2
