"""What goes wrong in real runs: a NaN batch, damaged shards, a kill during the final save, a resume after a crash,
a Hub target that cannot be pushed to, a log read by a cluster, an engine that did not come up."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from damaged_shards import write_damaged_shards
from safetensors.torch import load_file
from training_helpers import ROOT, TINY_TEXT, TINY_VISION, train_script, write_config

from hf_unified.training.builders import build_trainer
from hf_unified.training.data.health import DataError
from hf_unified.training.engine import checkpoint as checkpoints
from hf_unified.training.trainer import NonFiniteLossError

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


TRAIN = str(ROOT / "training" / "train.py")
MODEL_CONFIG = {"projection_dim": 16, "vision_config": TINY_VISION, "text_config": TINY_TEXT}


def log_records(output_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (output_dir / "training_log.jsonl").read_text().splitlines()]


class PoisonedStream(torch.utils.data.IterableDataset):
    """A training stream whose chosen batches (by index in the rank's stream) hold one NaN pixel."""

    def __init__(self, stream, poisoned: set[int]):
        super().__init__()
        self.stream, self.poisoned = stream, set(poisoned)

    @property
    def batches_consumed(self) -> int:
        return self.stream.batches_consumed

    @batches_consumed.setter
    def batches_consumed(self, value: int) -> None:
        self.stream.batches_consumed = value

    def state_dict(self) -> dict:
        return self.stream.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.stream.load_state_dict(state)

    def __iter__(self):
        for index, batch in enumerate(self.stream, start=self.stream.batches_consumed):
            if index in self.poisoned:
                batch["pixel_values"][0, 0, 0, 0] = float("nan")
            yield batch


def poisoned_trainer(config: Path, out: Path, poisoned: set[int], *flags: str):
    arguments = train_script.parse_arguments(["--config", str(config), "--output_dir", str(out), *flags])
    trainer = build_trainer(*arguments)
    trainer.data.stream = PoisonedStream(trainer.data.stream, poisoned)
    return trainer


def test_a_nan_batch_is_skipped_counted_and_logged(tmp_path, shapes):
    config = write_config(tmp_path, shapes, do_eval=False, save_steps=2, num_workers=0)
    out = tmp_path / "run"
    result = poisoned_trainer(config, out, {2}, "--max_steps", "3").train()  # batch 2 is step 3
    records = log_records(out)
    assert [r["step"] for r in records] == [1, 2, 3]
    assert records[2]["skipped"] == "non-finite loss or gradient norm" and records[2]["loss"] is None
    assert records[2]["nonfinite_steps"] == 1
    assert json.loads((out / "eval_results.json").read_text())["nonfinite_steps_skipped"] == 1
    # No update at step 3: the final weights are those of the step-2 checkpoint, bit for bit, and finite.
    final, after_step_2 = load_file(out / "model.safetensors"), load_file(out / "checkpoint-2" / "model.safetensors")
    assert final.keys() == after_step_2.keys()
    for name in final:
        assert torch.equal(final[name], after_step_2[name]), name
        assert torch.isfinite(final[name]).all(), name
    assert result["counters"]["samples_seen"] == 24 and result["counters"]["samples_skipped"] == 0


def test_consecutive_nan_steps_stop_the_run_with_the_last_checkpoint_intact(tmp_path, shapes):
    config = write_config(tmp_path, shapes, do_eval=False, save_steps=2, num_workers=0)
    out = tmp_path / "run"
    trainer = poisoned_trainer(
        config, out, {2, 3, 4}, "--max_steps", "8", "--max_consecutive_nonfinite_steps", "3", "--save_total_limit", "0"
    )
    with pytest.raises(NonFiniteLossError, match=r"3 steps in a row, up to step 5.*checkpoint-4, is intact"):
        trainer.train()
    assert not (out / "model.safetensors").exists()
    assert [r["step"] for r in log_records(out)] == [1, 2, 3, 4, 5]
    state = checkpoints.read_checkpoint(out / "checkpoint-4", rank=0, world_size=1)  # a valid checkpoint
    assert state.step == 4 and state.trainer_state["nonfinite_steps"] == 2
    good, latest = (
        load_file(out / "checkpoint-2" / "model.safetensors"),
        load_file(out / "checkpoint-4" / "model.safetensors"),
    )
    assert all(torch.equal(good[name], latest[name]) for name in good)  # steps 3 and 4 changed nothing


def _damaged_source(tmp_path, shapes, **overrides) -> tuple[Path, object]:
    """A config training on `damaged_shards.write_damaged_shards`: every kind of damage, 24 samples a pass."""
    damaged = write_damaged_shards(tmp_path / "damaged")
    config = write_config(
        tmp_path,
        shapes,
        train_data=[f"{tmp_path / 'damaged'}/damaged-*.tar"],
        label_column=["cls"],
        text_column=["txt"],
        train_probabilities=None,
        shuffle_buffer_size=0,
        num_workers=0,
        **overrides,
    )
    return config, damaged


def test_a_run_over_damaged_shards_finishes_and_reports_the_counts(tmp_path, shapes):
    config, damaged = _damaged_source(tmp_path, shapes, do_eval=True, max_skipped_fraction=0.5)
    out = tmp_path / "run"
    # 3 steps of 8 samples read the 24 samples of the shards once each (no shuffle).
    result = train_script.main(["--config", str(config), "--max_steps", "3", "--output_dir", str(out)])
    counts = result["counters"]
    assert counts["skipped"] == damaged.skipped and counts["samples_used"] == len(damaged.good_texts)
    assert set(counts["damaged_shards"]) == set(damaged.damaged_shards)
    assert all(counts["damaged_shards"][path].startswith(kind) for path, kind in damaged.damaged_shards.items())
    last = log_records(out)[-1]
    assert last["skipped"] == damaged.skipped and last["damaged_shards"] == 2
    assert last["samples_skipped"] == sum(damaged.skipped.values()) == 10
    eval_results = json.loads((out / "eval_results.json").read_text())
    assert eval_results["train_samples_skipped"] == 10 and eval_results["train_data"]["skipped"] == damaged.skipped
    assert set(eval_results["train_data"]["damaged_shards"]) == set(damaged.damaged_shards)
    assert "zero_shot_top1_accuracy" in eval_results


def test_a_mostly_damaged_dataset_stops_early_with_a_clear_error(tmp_path, shapes):
    config, _ = _damaged_source(tmp_path, shapes, do_eval=False, skipped_check_after=8)  # default limit: 10%
    out = tmp_path / "run"
    with pytest.raises(DataError, match=r"of the training samples were skipped as damaged, more than max_skipped"):
        train_script.main(["--config", str(config), "--max_steps", "12", "--output_dir", str(out)])
    assert not (out / "model.safetensors").exists()


def test_after_a_resume_every_step_is_logged_once(tmp_path, shapes):
    config = write_config(tmp_path, shapes, do_eval=False, save_steps=2)
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "4", "--stop_at_step", "3", "--output_dir", str(out)])
    # A crash after step 3 was logged but before its checkpoint: the run resumes from step 2 and logs 3 again.
    import shutil

    shutil.rmtree(out / "checkpoint-3")
    train_script.main(
        ["--config", str(config), "--max_steps", "4", "--output_dir", str(out), "--resume_from_checkpoint", "latest"]
    )
    assert [r["step"] for r in log_records(out)] == [1, 2, 3, 4]


def test_a_kill_during_the_final_save_leaves_the_previous_output_intact(tmp_path, shapes):
    from transformers import AutoModel

    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "2", "--output_dir", str(out)])
    previous = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and p.name != "training_log.jsonl"}
    assert {"model.safetensors", "config.json", "eval_results.json", "README.md"} <= set(previous)

    # A second run of another model (every file differs) whose process is killed (SIGKILL: no cleanup runs) after
    # its weights and config were written, before the rest of the save.
    (tmp_path / "other").mkdir()
    other = write_config(tmp_path / "other", shapes, do_eval=False, model_config={**MODEL_CONFIG, "projection_dim": 8})
    wrapper = tmp_path / "killed_during_save.py"
    wrapper.write_text(
        "import os, runpy, signal, sys\n"
        "from transformers import PreTrainedModel\n"
        "save = PreTrainedModel.save_pretrained\n"
        "def save_then_die(self, *args, **kwargs):\n"
        "    save(self, *args, **kwargs)\n"
        "    os.kill(os.getpid(), signal.SIGKILL)\n"
        "PreTrainedModel.save_pretrained = save_then_die\n"
        f"sys.argv = [{TRAIN!r}] + sys.argv[1:]\n"
        f"runpy.run_path({TRAIN!r}, run_name='__main__')\n"
    )
    flags = ["--config", str(other), "--max_steps", "2", "--output_dir", str(out), "--overwrite_output_dir"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    killed = subprocess.run([sys.executable, str(wrapper), *flags], env=env, capture_output=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    [staging] = tmp_path.glob(".run.*.partial")  # files.StagedFolder's hidden staging folder
    staged = staging / "run"
    assert (staged / "model.safetensors").exists() and (staged / "config.json").read_bytes() != previous["config.json"]
    for name, content in previous.items():
        assert (out / name).read_bytes() == content, name
    assert AutoModel.from_pretrained(out).config.projection_dim == 16  # the previous model still loads

    train_script.main(flags)  # the next run (taking over the killed run's lock) clears the leftover, saves its model
    assert not list(tmp_path.glob(".run.*"))
    assert AutoModel.from_pretrained(out).config.projection_dim == 8
    assert (out / "tokenizer" / "tokenizer.json").exists()  # the run's other files are carried over


def test_push_to_hub_is_checked_before_training(tmp_path, shapes, monkeypatch):
    from hf_unified.hub import push

    def refuse(repo_id, token=None):
        raise RuntimeError(f"no token can write to {repo_id} (offline)")

    monkeypatch.setattr(push, "check_can_push", refuse, raising=False)
    config = write_config(tmp_path, shapes, do_eval=False)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"--push_to_hub me/tiny: no token can write to me/tiny"):
        train_script.main(
            ["--config", str(config), "--output_dir", str(out), "--push_to_hub", "--hub_model_id", "me/tiny"]
        )
    assert not (out / "training_log.jsonl").exists() and not list(out.glob("checkpoint-*"))


def test_progress_is_one_line_per_logged_step_off_a_terminal(capsys):
    from hf_unified.training.logs import Progress

    progress = Progress(total=4, initial=0, description="unicl", enabled=True)  # pytest's stderr is no terminal
    progress.update(1, {"step": 1, "loss": 2.5, "lr": 1e-3})
    progress.update(2)
    progress.update(3, {"step": 3, "loss": 2.25, "lr": 5e-4})
    progress.close()
    captured = capsys.readouterr()
    assert captured.out.splitlines() == [
        "step 1/4 | loss 2.5000 | lr 1.000e-03",
        "step 3/4 | loss 2.2500 | lr 5.000e-04",
    ]
    assert captured.err == ""  # no bar refreshes in the log
