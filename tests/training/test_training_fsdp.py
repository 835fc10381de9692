"""FSDP2 through the trainer on a gloo CPU mesh (tests/training_fsdp_run.py: train.py's own model, sharded): two
processes train UniCLIP (views made in the step, offsets calibrated on the first batch, zero-shot evaluation) with
per-step losses equal to the DDP run's, resume exactly from the per-rank sharded checkpoint, and save a whole
`save_pretrained` folder. The accelerate FSDP launch itself needs GPUs: here the trainer refuses it."""

from __future__ import annotations

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import ROOT, launch_two_processes, log_records, losses, train_script, write_config

from hf_unified.training.engine import checkpoint as checkpoints
from hf_unified.training.engine import launch, sharded_state

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TRAIN = ROOT / "training" / "train.py"
FSDP_RUN = ROOT / "tests" / "training_fsdp_run.py"
STEPS, RESUME_AT = 10, 5


@pytest.fixture(scope="module")
def runs(tmp_path_factory, shapes) -> dict:
    """DDP for 10 steps; FSDP2 for 10 steps with a checkpoint at step 5; FSDP2 resumed from that checkpoint."""
    root = tmp_path_factory.mktemp("fsdp")
    config = write_config(root, shapes, "uniclip", max_steps=STEPS, per_device_train_batch_size=4)
    folders = {name: root / name for name in ("ddp", "fsdp", "resumed")}
    common = ["--config", str(config)]
    launch_two_processes(TRAIN, *common, "--output_dir", str(folders["ddp"]))
    launch_two_processes(FSDP_RUN, *common, "--output_dir", str(folders["fsdp"]), "--save_steps", str(RESUME_AT))
    checkpoint = folders["fsdp"] / f"checkpoint-{RESUME_AT}"
    resume = ["--output_dir", str(folders["resumed"]), "--resume_from_checkpoint", str(checkpoint)]
    launch_two_processes(FSDP_RUN, *common, *resume)
    return folders


def test_fsdp_losses_equal_ddp_over_ten_steps(runs):
    ddp, fsdp = log_records(runs["ddp"]), log_records(runs["fsdp"])
    assert [record["step"] for record in fsdp] == list(range(1, STEPS + 1))
    assert losses(runs["fsdp"]) == pytest.approx(losses(runs["ddp"]), rel=0, abs=1e-5)
    assert losses(runs["ddp"])[-1] < losses(runs["ddp"])[0]  # it trains
    # The offsets were calibrated on the sharded model as on the replicated one, and the sharded ones logged.
    assert fsdp[0]["calibrated_logit_offsets"] == pytest.approx(ddp[0]["calibrated_logit_offsets"], abs=1e-6)
    for got, want in zip(fsdp, ddp):
        assert got["logit_offset"] == pytest.approx(want["logit_offset"], abs=1e-5)


def test_fsdp_resumes_exactly_from_per_rank_shards(runs):
    checkpoint = runs["fsdp"] / f"checkpoint-{RESUME_AT}"
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    assert state["sharded"] is True and state["world_size"] == 2
    shards = {name for rank in range(2) for name in sharded_state.sharded_state_files(rank, 2)}
    assert shards <= set(os.listdir(checkpoint)) and not (checkpoint / "model.safetensors").exists()
    assert losses(runs["resumed"]) == losses(runs["fsdp"])[RESUME_AT:]
    expected, resumed = load_file(runs["fsdp"] / "model.safetensors"), load_file(runs["resumed"] / "model.safetensors")
    assert expected.keys() == resumed.keys()
    assert all(resumed[name].equal(value) for name, value in expected.items())


def test_a_sharded_checkpoint_is_not_resumed_as_a_replicated_one(runs):
    checkpoint = runs["fsdp"] / f"checkpoint-{RESUME_AT}"
    with pytest.raises(checkpoints.CheckpointError, match=r"written by a sharded \(FSDP2\) run, this run is a repl"):
        checkpoints.read_checkpoint(checkpoint, rank=0, world_size=2, sharded=False)


def test_fsdp_final_save_is_the_whole_model(runs):
    from transformers import AutoModel

    import hf_unified  # noqa: F401  (registers the Auto classes)

    fsdp, ddp = runs["fsdp"], runs["ddp"]
    # The same folder as a replicated run writes: no FSDP class or torch sources saved as the model's code.
    saved = [sorted(n for n in os.listdir(folder) if not n.startswith("checkpoint-")) for folder in (fsdp, ddp)]
    assert saved[0] == saved[1] and "modeling_uniclip.py" in saved[0]
    assert json.loads((fsdp / "config.json").read_text())["architectures"] == ["UniCLIPModel"]
    models = [AutoModel.from_pretrained(folder).eval() for folder in (fsdp, ddp)]
    pixel_values = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        embeds = [model.get_image_features(pixel_values=pixel_values).pooler_output for model in models]
    torch.testing.assert_close(embeds[0], embeds[1], rtol=0, atol=1e-4)
    results = [json.loads((folder / "eval_results.json").read_text()) for folder in (fsdp, ddp)]
    assert results[0]["num_examples"] == results[1]["num_examples"] == 40  # both ranks' shares, in lockstep
    # The same classifier up to rounding: at most one near-tie of the 40 images may fall the other way.
    assert results[0]["zero_shot_top1_accuracy"] == pytest.approx(results[1]["zero_shot_top1_accuracy"], abs=0.026)


def test_an_fsdp_launch_accelerate_cannot_honour_is_refused_before_training(tmp_path, shapes, monkeypatch):
    """What `accelerate launch --config_file training/accelerate/fsdp.yaml` passes to train.py on a machine
    without a GPU, where accelerate sets up DDP (or one process) instead."""
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    config = write_config(tmp_path, shapes)
    out = tmp_path / "run"
    with pytest.raises(launch.EngineError, match=r"asks for FSDP .* but accelerate set up single process"):
        train_script.main(["--config", str(config), "--output_dir", str(out)])
    assert not (out / "training_log.jsonl").exists()
