"""End-to-end tests of training/train.py on a tiny copy of the embedded shapes data (CPU, seconds each)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from training_helpers import (  # tests/ is on sys.path
    ROOT,
    TINY_TEXT,
    TINY_VISION,
    launch_two_processes,
    losses,
    train_script,
    write_config,
)

from hf_unified.training.arguments import TrainArguments
from hf_unified.training.optim import parameter_groups

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TRAIN = ROOT / "training" / "train.py"


def test_unicl_end_to_end_and_cli_overrides(tmp_path, shapes, monkeypatch):
    from transformers import AutoModel, AutoProcessor

    import hf_unified  # noqa: F401  (registers the Auto classes)
    from hf_unified.hub import push

    pushed, checked = [], []

    def fake_push(folder, repo_id, private=False):  # the real upload is tested by the Hub engineer's suite
        pushed.append((Path(folder), repo_id, private, sorted(p.name for p in Path(folder).iterdir())))
        return type("Result", (), {"files": ["config.json"], "repo_url": f"https://hub.test/{repo_id}"})()

    def fake_check(repo_id, token=None):  # before training: nothing of the run exists yet
        checked.append((repo_id, (tmp_path / "run" / "training_log.jsonl").exists()))

    monkeypatch.setattr(push, "push_folder", fake_push)
    monkeypatch.setattr(push, "check_can_push", fake_check, raising=False)
    config = write_config(tmp_path, shapes)
    out = tmp_path / "run"
    result = train_script.main(
        [
            "--config",
            str(config),
            "--max_steps",
            "3",
            "--output_dir",
            str(out),
            "--push_to_hub",
            "--hub_model_id",
            "me/unicl-test",
        ]
    )
    assert checked == [("me/unicl-test", False)]
    assert pushed and pushed[0][:3] == (out, "me/unicl-test", True)  # private unless --hub_private false
    assert {"README.md", "model.safetensors", "eval_results.json", "config.json"} <= set(pushed[0][3])
    # --max_steps and --output_dir beat the YAML's 50 steps and output folder.
    assert not (tmp_path / "from-config").exists()
    assert [json.loads(line)["step"] for line in (out / "training_log.jsonl").read_text().splitlines()] == [1, 2, 3]
    assert all(torch.isfinite(torch.tensor(losses(out))))
    eval_results = json.loads((out / "eval_results.json").read_text())
    for key in ("zero_shot_top1_accuracy", "zero_shot_top5_accuracy", "image_to_text_R@1", "text_to_image_R@10"):
        assert 0.0 <= eval_results[key] <= 1.0
    assert eval_results["num_examples"] == 40 and eval_results["zero_shot_chance"] == pytest.approx(1 / 6)
    assert result["eval_results"]["zero_shot_top1_accuracy"] == eval_results["zero_shot_top1_accuracy"]
    model = AutoModel.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert type(model).__name__ == "UniCLModel" and (out / "model.safetensors").exists()
    assert processor.image_processor.crop_size["height"] == 32


def test_uniclip_end_to_end_multi_view(tmp_path, shapes):
    config = write_config(tmp_path, shapes, "uniclip")
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "2", "--output_dir", str(out), "--do_eval", "false"])
    assert len(losses(out)) == 2 and all(torch.isfinite(torch.tensor(losses(out))))
    saved = json.loads((out / "config.json").read_text())
    assert saved["model_type"] == "uniclip" and saved["num_views"] == 2


def test_msclip_end_to_end(tmp_path, shapes):
    import yaml

    model_config = yaml.safe_load((ROOT / "training" / "configs" / "msclip-tiny.yaml").read_text())["model_config"]
    model_config.update(hidden_size=32, intermediate_size=64, projection_dim=16)
    config = write_config(tmp_path, shapes, "msclip", model_config=model_config)
    out = tmp_path / "run"
    train_script.main(["--config", str(config), "--max_steps", "2", "--output_dir", str(out)])
    assert len(losses(out)) == 2 and all(torch.isfinite(torch.tensor(losses(out))))
    assert json.loads((out / "config.json").read_text())["model_type"] == "msclip"
    assert "zero_shot_top1_accuracy" in json.loads((out / "eval_results.json").read_text())


@pytest.mark.parametrize("lanes", [1, 3])
def test_resume_mid_stream_matches_uninterrupted_run(tmp_path, shapes, lanes):
    # One DataLoader worker, a shuffle buffer and random crops: the resumed run must still see the same batches,
    # from one stream or from three lanes (one shard each).
    config = write_config(
        tmp_path, shapes, num_workers=1, crop_scale_min=0.6, do_eval=False, save_steps=2, stream_lanes=lanes
    )
    full, part = tmp_path / "full", tmp_path / "part"
    train_script.main(["--config", str(config), "--max_steps", "4", "--output_dir", str(full)])
    train_script.main(["--config", str(config), "--max_steps", "4", "--stop_at_step", "3", "--output_dir", str(part)])
    assert (part / "checkpoint-3" / "data_state_rank0.json").exists() and not (part / "model.safetensors").exists()
    assert not list(part.glob(".tmp-checkpoint-*"))
    train_script.main(
        ["--config", str(config), "--max_steps", "4", "--output_dir", str(part), "--resume_from_checkpoint", "latest"]
    )
    assert losses(part) == pytest.approx(losses(full), abs=1e-6)
    expected, resumed = load_file(full / "model.safetensors"), load_file(part / "model.safetensors")
    assert expected.keys() == resumed.keys()
    for name in expected:
        torch.testing.assert_close(resumed[name], expected[name], rtol=0, atol=1e-6, msg=name)


def test_two_processes_match_one_process(tmp_path, shapes):
    # Same global batch (8 = 1 x 8 = 2 x 4), deterministic preprocessing: the loss curves must agree.
    config = write_config(tmp_path, shapes, crop_scale_min=1.0, templates="name", do_eval=False)
    one, two = tmp_path / "one", tmp_path / "two"
    common = ["--config", str(config), "--max_steps", "3"]
    train_script.main(common + ["--output_dir", str(one)])
    launch_two_processes(TRAIN, *common, "--output_dir", str(two), "--per_device_train_batch_size", "4")
    assert losses(two) == pytest.approx(losses(one), rel=1e-4)
    expected, distributed = load_file(one / "model.safetensors"), load_file(two / "model.safetensors")
    for name in expected:
        torch.testing.assert_close(distributed[name], expected[name], rtol=1e-4, atol=1e-5, msg=name)


def test_the_trainer_streams_with_the_configured_shuffle_and_lanes(tmp_path, shapes, monkeypatch):
    from hf_unified.training import data as data_lib
    from hf_unified.training.builders import build_trainer

    calls, build_lanes = [], data_lib.build_lanes
    monkeypatch.setattr(data_lib, "build_lanes", lambda *a, **k: calls.append((a, k)) or build_lanes(*a, **k))
    config = write_config(tmp_path, shapes, shuffle_buffer_size=12, shuffle_input_shards=1, do_eval=False)
    trainer = build_trainer(*train_script.parse_arguments(["--config", str(config), "--stream_lanes", "3"]))
    ((arguments, keywords),) = calls
    assert arguments[-1] == 12 and keywords == {"shuffle_input_shards": 1, "lanes": 3}
    assert len(trainer.data.stream.lanes) == 3  # one per shard of the 3


def test_on_evaluate_adds_metrics_of_ones_own_to_every_evaluation(tmp_path, shapes):
    """The `Trainer`'s hook (what the benchmarks' studies use): called after each evaluation with the model in eval
    mode, the step and the trainer's results; what it returns joins the results, the log and eval_results.json."""
    from hf_unified.training.builders import build_trainer

    config = write_config(tmp_path, shapes, eval_steps=1)
    out = tmp_path / "run"
    flags = ["--config", str(config), "--output_dir", str(out), "--max_steps", "2"]
    trainer = build_trainer(*train_script.parse_arguments(flags))
    calls = []

    def hook(model, step, results):
        calls.append((step, model.training, "zero_shot_top1_accuracy" in results))
        return {"my_metric": float(step)}

    trainer.on_evaluate = hook
    result = trainer.train()
    assert calls == [(1, False, True), (2, False, True)]  # every eval_steps, then the final evaluation
    assert result["eval_results"]["my_metric"] == 2.0
    assert json.loads((out / "eval_results.json").read_text())["my_metric"] == 2.0
    assert trainer.unwrapped.training  # back in training mode after each call


def test_bad_column_fails_before_training(tmp_path, shapes):
    config = write_config(tmp_path, shapes)
    out = tmp_path / "run"
    with pytest.raises(ValueError, match=r"no column 'caption'.*columns are"):
        train_script.main(["--config", str(config), "--output_dir", str(out), "--text_column", "none", "caption"])
    assert not (out / "training_log.jsonl").exists()


def test_unknown_yaml_key_is_an_error(tmp_path, shapes):
    config = write_config(tmp_path, shapes, learning_rat=0.1)
    with pytest.raises(ValueError, match="unknown keys.*learning_rat"):
        train_script.parse_arguments(["--config", str(config)])


def test_parameter_groups_exclude_norms_biases_embeddings_temperatures(tmp_path, shapes):
    from hf_unified import UniCLConfig, UniCLModel

    model = UniCLModel(
        UniCLConfig(projection_dim=16, vision_config=TINY_VISION, text_config={**TINY_TEXT, "vocab_size": 50})
    )
    groups = parameter_groups(model, TrainArguments(weight_decay=0.1, logit_offset_learning_rate_multiplier=4.0))
    assert not any(group["offset"] for group in groups)  # CLIP's similarity has no offset
    decay, plain = sorted(groups, key=lambda group: -group["weight_decay"])
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert "logit_scale" not in decayed
    assert not any("norm" in n or n.endswith("bias") or "embedding" in n for n in decayed)
    assert "visual_projection.weight" in decayed and any("q_proj.weight" in n for n in decayed)
    # The temperature: no decay, at the towers' rate (the offset multiplier does not apply to it).
    assert "logit_scale" in {names[id(p)] for p in plain["params"]} and plain["lr"] == pytest.approx(decay["lr"])
    assert sum(len(group["params"]) for group in groups) == len(list(model.parameters()))
