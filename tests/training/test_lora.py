"""LoRA through peft (`train.py --lora_rank`): which layers are adapted, what trains, the merged model and the
adapter, exact resume, the adapter push, and the refused combinations (tiny models, CPU, seconds)."""

from __future__ import annotations

import json
import re
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_models import IMAGE_SIZE, tiny_config, tiny_model, tiny_text, tiny_vision
from training_helpers import log_records, losses, reset_accelerate_state, train_script, write_config

from hf_unified import UniCLModel
from hf_unified.training import lora
from hf_unified.training.arguments import ConfigError, TrainArguments
from hf_unified.training.finetuning import block_of_parameters
from hf_unified.training.outputs.adapter import save_adapter

peft = pytest.importorskip("peft", reason="the lora extra (peft) is not installed")

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")
TOKEN = "hf_lora_test_token"


def lora_args(rank: int = 4, **overrides) -> TrainArguments:
    return TrainArguments(lora_rank=rank, **overrides)


MODELS = {
    "unicl-clip": lambda: tiny_model("unicl"),
    "unicl-swin-bert": lambda: UniCLModel(
        tiny_config("unicl", vision_config=tiny_vision("swin"), text_config=tiny_text("bert"))
    ),
    "uniclip": lambda: tiny_model("uniclip"),
    "uniclip-mlp": lambda: tiny_model("uniclip", augmentation_fusion="mlp"),  # the head: an MLP, trained whole
    "msclip-shared": lambda: tiny_model("msclip"),
    "msclip-separate": lambda: tiny_model("msclip", preset="separate"),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_linear_layer_of_the_blocks_is_adapted_once_and_only_adapters_and_heads_train(name):
    torch.manual_seed(0)
    model = MODELS[name]()
    blocks = set(block_of_parameters(model).values())
    in_blocks = {
        n: m
        for n, m in model.named_modules()
        if isinstance(m, torch.nn.Linear) and any(n.startswith(f"{b}.") for b in blocks)
    }
    heads = {
        n for n, _ in model.named_children() if n in ("visual_projection", "text_projection", "augmentation_encoder")
    }
    total_before = sum(p.numel() for p in model.parameters())
    wrapped = lora.apply_lora(model, lora_args(4))
    adapted = {
        n.removeprefix("base_model.model."): m
        for n, m in wrapped.named_modules()
        if isinstance(m, peft.tuners.lora.LoraLayer)
    }
    assert set(adapted) == set(in_blocks)  # MS-CLIP: a shared sub-layer is one module, so one adapter
    trainable = {n: p.numel() for n, p in wrapped.named_parameters() if p.requires_grad}
    expected_lora = sum(4 * (m.in_features + m.out_features) for m in in_blocks.values())
    head_params = sum(
        p.numel() for h in heads for p in getattr(wrapped.base_model.model, h).original_module.parameters()
    )
    assert sum(v for n, v in trainable.items() if "lora_" in n) == expected_lora
    assert sum(v for n, v in trainable.items() if ".modules_to_save." in n) == head_params
    assert set(trainable) == {n for n in trainable if "lora_" in n or ".modules_to_save." in n}
    share = 100 * (expected_lora + head_params) / (total_before + expected_lora + head_params)
    assert f"({share:.2f}%)" in lora.describe_trainable(wrapped)


def test_named_target_modules_adapt_only_those_layers():
    wrapped = lora.apply_lora(tiny_model("unicl"), lora_args(4, lora_target_modules=["q_proj", "v_proj"]))
    adapted = [n for n, m in wrapped.named_modules() if isinstance(m, peft.tuners.lora.LoraLayer)]
    assert len(adapted) == 2 * 2 * 2 and all(n.endswith(("q_proj", "v_proj")) for n in adapted)  # 2 towers x 2 blocks


def test_msclip_shared_sublayers_carry_one_adapter_for_both_modalities():
    model = tiny_model("msclip")  # the "shared" preset: attention and MLP shared by both modalities
    layer = model.encoder.layers[0]
    assert "attention" in layer.shared_names
    wrapped = lora.apply_lora(model, lora_args(2))
    q_proj = wrapped.base_model.model.encoder.layers[0].sublayer("vision", "attention").q_proj
    assert q_proj is wrapped.base_model.model.encoder.layers[0].sublayer("text", "attention").q_proj
    assert isinstance(q_proj, peft.tuners.lora.LoraLayer)


@pytest.mark.parametrize(
    "flags",
    [
        {"freeze_vision_tower": True},
        {"freeze_text_tower": True},
        {"lock_image_tower": True},
        {"head_learning_rate": 1e-4},
        {"layerwise_lr_decay": 0.8},
    ],
)
def test_lora_with_a_freezing_control_is_refused_naming_both_flags_and_the_fix(flags):
    (flag,) = flags
    with pytest.raises(ConfigError, match=rf"--lora_rank 8 with --{flag}: .* drop --{flag} .*or drop --lora_rank"):
        TrainArguments(lora_rank=8, **flags)


def test_train_py_refuses_lora_with_lit_before_anything_is_written(shapes, tmp_path, capsys):
    config, out = write_config(tmp_path, shapes), tmp_path / "run"
    with pytest.raises(SystemExit):
        train_script.main(
            ["--config", str(config), "--output_dir", str(out), "--lora_rank", "8", "--lock_image_tower"]
        )
    assert "--lora_rank 8 with --lock_image_tower: LoRA already freezes" in capsys.readouterr().err
    assert not out.exists()


def test_other_bad_lora_settings_are_refused_in_one_line():
    with pytest.raises(ConfigError, match="--lora_rank -1: LoRA needs --lora_rank R with R >= 1"):
        TrainArguments(lora_rank=-1)
    with pytest.raises(ConfigError, match="lora_dropout must be in"):
        TrainArguments(lora_rank=4, lora_dropout=1.0)
    with pytest.raises(ConfigError, match="--push_adapter: LoRA needs --lora_rank"):
        TrainArguments(push_adapter=True, push_to_hub=True, hub_model_id="me/x")
    with pytest.raises(ConfigError, match="--push_adapter needs --push_to_hub"):
        TrainArguments(lora_rank=4, push_adapter=True)
    with pytest.raises(ValueError, match=r"--lora_target_modules \['no_such_layer'\]: .*suffixes"):
        lora.apply_lora(tiny_model("unicl"), lora_args(4, lora_target_modules=["no_such_layer"]))


def test_sharded_engines_are_refused_with_the_fix():
    from accelerate.utils import DistributedType

    for engine in (DistributedType.FSDP, DistributedType.DEEPSPEED):
        with pytest.raises(ValueError, match=r"--lora_rank under .*: LoRA runs are not sharded here.*DDP"):
            lora.apply_lora(tiny_model("unicl"), lora_args(4), distributed_type=engine)


def test_without_peft_the_error_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "peft", None)
    with pytest.raises(
        ImportError, match=re.escape('--lora_rank needs the peft library: pip install "hf-unified[lora]"')
    ):
        lora.apply_lora(tiny_model("unicl"), lora_args(4))


def test_the_adapter_card_names_a_hub_base_and_never_a_local_path(tmp_path):
    wrapped = lora.apply_lora(tiny_model("unicl"), lora_args(4), base_model="org/tiny-base")
    save_adapter(wrapped, tmp_path / "hub", name="run")
    card = (tmp_path / "hub" / "README.md").read_text()
    assert "\nbase_model: org/tiny-base\n" in card and "library_name: peft" in card
    assert (
        json.loads((tmp_path / "hub" / "adapter_config.json").read_text())["base_model_name_or_path"]
        == "org/tiny-base"
    )
    local = lora.apply_lora(tiny_model("unicl"), lora_args(4), base_model=str(tmp_path))
    save_adapter(local, tmp_path / "local", name="run")
    assert str(tmp_path) not in (tmp_path / "local" / "README.md").read_text()
    assert json.loads((tmp_path / "local" / "adapter_config.json").read_text())["base_model_name_or_path"] is None


# ---------------------------------------------------------------------------------------------------------------
# End to end through train.py


@pytest.fixture(scope="module")
def runs(shapes, tmp_path_factory):
    """A base model (one full step), a LoRA run from it (4 steps, checkpoint at 2, its adapter pushed to a loopback
    Hub), and the same LoRA run stopped at step 2 and resumed."""
    from hub_server import FakeHub
    from huggingface_hub import constants

    root = tmp_path_factory.mktemp("lora")
    config = write_config(root, shapes, do_eval=False, save_steps=2, crop_scale_min=0.6)
    base, full, part = root / "base", root / "full", root / "part"
    reset_accelerate_state()
    train_script.main(["--config", str(config), "--max_steps", "1", "--output_dir", str(base), "--save_steps", "0"])
    common = ["--config", str(config), "--max_steps", "4", "--model_name_or_path", str(base), "--lora_rank", "4"]
    common += ["--lora_dropout", "0.1"]  # the adapters' dropout draws random numbers: the resume must restore them
    with pytest.MonkeyPatch.context() as patch, FakeHub() as hub:
        patch.setenv("HF_ENDPOINT", hub.endpoint)
        patch.setenv("HF_TOKEN", TOKEN)
        patch.setattr(constants, "HF_HUB_OFFLINE", False)
        patch.setattr(constants, "HF_HUB_DISABLE_XET", True)
        reset_accelerate_state()
        train_script.main(
            [*common, "--output_dir", str(full), "--push_to_hub", "--hub_model_id", "me/tiny-lora", "--push_adapter"]
        )
        pushed = hub.files("me/tiny-lora")
    reset_accelerate_state()
    train_script.main([*common, "--output_dir", str(part), "--stop_at_step", "2"])
    reset_accelerate_state()
    train_script.main([*common, "--output_dir", str(part), "--resume_from_checkpoint", "latest"])
    reset_accelerate_state()
    return {"base": base, "full": full, "part": part, "pushed": pushed}


def _inputs(processor):
    from PIL import Image

    images = [Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), color) for color in ("red", "navy")]
    return processor(text=["a red circle", "a blue square"], images=images, padding=True, return_tensors="pt")


def test_base_weights_stay_frozen_and_merged_equals_base_plus_adapter_through_peft(runs):
    from peft import PeftModel
    from transformers import AutoModel, AutoProcessor

    base_state = load_file(runs["base"] / "model.safetensors")
    merged_state = load_file(runs["full"] / "model.safetensors")
    adapter = runs["full"] / "adapter"
    assert sorted(p.name for p in adapter.iterdir()) == [
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
    ]
    saved = {
        k.removeprefix("base_model.model."): v for k, v in load_file(adapter / "adapter_model.safetensors").items()
    }
    scale = json.loads((adapter / "adapter_config.json").read_text())["lora_alpha"] / 4
    assert merged_state.keys() == base_state.keys()
    adapted = {k.removesuffix(".lora_A.weight") for k in saved if k.endswith(".lora_A.weight")}
    assert len(adapted) == 12 and all(
        saved[f"{layer}.lora_B.weight"].abs().sum() > 0 for layer in adapted
    )  # 2 towers x 6
    for key, merged in merged_state.items():
        layer = key.removesuffix(".weight")
        if layer in adapted:  # merged = frozen base + scale B A: the base matrix itself never trained
            delta = scale * saved[f"{layer}.lora_B.weight"] @ saved[f"{layer}.lora_A.weight"]
            torch.testing.assert_close(merged - delta, base_state[key], rtol=0, atol=1e-6, msg=key)
        elif key in saved:  # a head, trained whole (modules_to_save)
            assert torch.equal(merged, saved[key]) and not torch.equal(merged, base_state[key]), key
        else:  # everything else frozen: bit-identical to the base
            assert torch.equal(merged, base_state[key]), key

    merged = AutoModel.from_pretrained(runs["full"]).eval()
    through_peft = PeftModel.from_pretrained(AutoModel.from_pretrained(runs["base"]), adapter).eval()
    base = AutoModel.from_pretrained(runs["base"]).eval()
    inputs = _inputs(AutoProcessor.from_pretrained(runs["full"]))
    with torch.no_grad():
        expected, got, before = (m(**inputs).logits_per_image for m in (merged, through_peft, base))
        image = merged.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
        image_peft = through_peft.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(image_peft, image, rtol=0, atol=1e-5)
    assert not torch.allclose(before, expected, atol=1e-4)  # the adapter changed the model


def test_a_lora_checkpoint_holds_what_trains_and_refuses_another_base(runs):
    from transformers import AutoModel

    from hf_unified.training.engine import checkpoint
    from hf_unified.training.optim import build_optimizer, build_scheduler

    folder = runs["full"] / "checkpoint-2"
    state = json.loads((folder / "trainer_state.json").read_text())
    saved = load_file(folder / "model.safetensors")
    assert state["model_contents"] == "trainable" and len(state["frozen_sha256"]) == 64
    assert saved and all("lora_" in key or ".modules_to_save." in key for key in saved)  # no buffers in this model
    accelerator = type("Accelerator", (), {"device": torch.device("cpu"), "scaler": None, "distributed_type": "NO"})
    args = lora_args(4, lora_dropout=0.1)

    def restore(model) -> torch.nn.Module:
        wrapped = lora.apply_lora(model, args)
        optimizer = build_optimizer(wrapped, args)
        scheduler = build_scheduler(optimizer, args)
        loaded = checkpoint.read_checkpoint(folder, 0, 1)
        checkpoint.restore(loaded, accelerator=accelerator, model=wrapped, optimizer=optimizer, scheduler=scheduler)
        return wrapped

    restored = restore(AutoModel.from_pretrained(runs["base"])).state_dict()
    for key, value in saved.items():
        assert torch.equal(restored[key], value), key
    other = AutoModel.from_pretrained(runs["base"])
    with torch.no_grad():
        other.logit_scale.add_(0.5)  # a frozen weight that differs from the one the checkpoint was trained on
    with pytest.raises(checkpoint.CheckpointError, match="frozen base weights of this run differ"):
        restore(other)


def test_the_log_states_the_trainable_parameters_and_their_share(runs):
    first = log_records(runs["full"])[0]
    adapter = load_file(runs["full"] / "adapter" / "adapter_model.safetensors")  # exactly what trained
    assert first["trainable_parameters"] == sum(tensor.numel() for tensor in adapter.values())
    assert 0 < first["trainable_share"] < 0.5


def test_lora_resume_is_exact(runs):
    full, part = runs["full"], runs["part"]
    assert losses(part) == pytest.approx(losses(full), abs=1e-6)
    for name in ("model.safetensors", "adapter/adapter_model.safetensors"):
        expected, resumed = load_file(full / name), load_file(part / name)
        assert expected.keys() == resumed.keys()
        for key in expected:
            torch.testing.assert_close(resumed[key], expected[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")


def test_the_push_carries_the_adapter_and_its_card(runs):
    adapter = runs["full"] / "adapter"
    pushed = runs["pushed"]
    assert sorted(pushed) == ["README.md", "adapter_config.json", "adapter_model.safetensors"]
    for name, data in pushed.items():
        assert data == (adapter / name).read_bytes(), name
    card = pushed["README.md"].decode()
    assert "library_name: peft" in card and "PeftModel.from_pretrained" in card
    assert str(runs["base"]) not in card  # a local start is not published


def test_msclip_shared_stack_trains_with_lora_and_its_frozen_stem_keeps_the_base_statistics(shapes, tmp_path):
    import yaml
    from peft import PeftModel
    from training_helpers import ROOT
    from transformers import AutoModel

    model_config = yaml.safe_load((ROOT / "training" / "configs" / "msclip-tiny.yaml").read_text())["model_config"]
    model_config.update(hidden_size=32, intermediate_size=64, projection_dim=16)
    config = write_config(tmp_path, shapes, "msclip", model_config=model_config, do_eval=False)
    base, out = tmp_path / "base", tmp_path / "lora"
    train_script.main(["--config", str(config), "--max_steps", "1", "--output_dir", str(base)])
    reset_accelerate_state()
    train_script.main(
        ["--config", str(config), "--max_steps", "2", "--output_dir", str(out)]
        + ["--model_name_or_path", str(base), "--lora_rank", "4"]
    )
    base_state, merged_state = load_file(base / "model.safetensors"), load_file(out / "model.safetensors")
    statistics = [key for key in base_state if key.endswith(("running_mean", "running_var"))]
    assert statistics and all(torch.equal(merged_state[key], base_state[key]) for key in statistics)
    merged = AutoModel.from_pretrained(out).eval()
    through_peft = PeftModel.from_pretrained(AutoModel.from_pretrained(base), out / "adapter").eval()
    pixels = torch.randn(2, 3, IMAGE_SIZE, IMAGE_SIZE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = merged.get_image_features(pixel_values=pixels).pooler_output
        got = through_peft.get_image_features(pixel_values=pixels).pooler_output
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-5)
