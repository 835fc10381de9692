"""AdamW as the trainer builds it: the three kernels compute the same steps, `auto` picks by device, and the
similarity offsets train in their own group at `logit_offset_learning_rate_multiplier` times their rate, the log
temperatures at the towers' rate."""

from __future__ import annotations

import pytest
import torch
from tiny_models import tiny_config

from hf_unified import UniCLIPModel
from hf_unified.training.arguments import TrainArguments
from hf_unified.training.optim import adam_kernel, build_optimizer, parameter_groups

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state (the tiny training runs)


def tiny_uniclip(seed: int = 0) -> UniCLIPModel:
    torch.manual_seed(seed)
    return UniCLIPModel(tiny_config("uniclip")).train()


def fake_gradients(model: torch.nn.Module, step: int) -> None:
    generator = torch.Generator().manual_seed(step)
    for parameter in model.parameters():
        parameter.grad = torch.randn(parameter.shape, generator=generator)


def test_adam_kernels_take_the_same_first_steps():
    finals = {}
    for implementation in ("fused", "foreach", "for-loop"):
        model = tiny_uniclip()
        args = TrainArguments(learning_rate=1e-3, weight_decay=0.1, adam_implementation=implementation)
        optimizer = build_optimizer(model, args, device="cpu")
        expected = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}
        assert all(optimizer.defaults[k] == v for k, v in expected[implementation].items())
        for step in range(3):
            fake_gradients(model, step)
            optimizer.step()
        finals[implementation] = {name: p.detach().clone() for name, p in model.named_parameters()}
    start = dict(tiny_uniclip().named_parameters())
    for implementation in ("foreach", "for-loop"):
        for name, value in finals[implementation].items():
            torch.testing.assert_close(value, finals["fused"][name], rtol=0, atol=1e-6, msg=name)
            assert not value.equal(start[name]), name  # every parameter moved


def test_auto_is_fused_where_torch_has_the_kernel_and_foreach_elsewhere():
    assert adam_kernel("auto", "cuda:0") == {"fused": True}
    assert adam_kernel("auto", torch.device("cpu")) == {"fused": True}
    assert adam_kernel("auto", "meta") == {"foreach": True}
    with pytest.raises(ValueError, match="adam_implementation must be one of"):
        adam_kernel("apex", "cpu")


def test_the_offsets_have_their_own_group_at_the_multiplier_and_the_log_scales_the_towers_rate():
    model = tiny_uniclip()
    names = {id(p): n for n, p in model.named_parameters()}
    args = TrainArguments(learning_rate=1e-3, logit_offset_learning_rate_multiplier=10.0)
    groups = parameter_groups(model, args)
    (offsets,) = [group for group in groups if group["offset"]]
    assert [names[id(p)] for p in offsets["params"]] == ["logit_offset"]
    assert offsets["lr"] == pytest.approx(1e-2) and offsets["lr_scale"] == pytest.approx(10.0)
    assert offsets["weight_decay"] == 0.0
    assert all(group["lr"] == pytest.approx(1e-3) for group in groups if not group["offset"])
    (scales,) = [group for group in groups if any(p is model.logit_scale for p in group["params"])]
    assert scales["lr"] == pytest.approx(1e-3) and scales["weight_decay"] == 0.0  # CLIP's: the towers' rate
    # With a multiplier of 1 they keep their own group (checkpoints do not change layout with the setting).
    groups = parameter_groups(model, TrainArguments(logit_offset_learning_rate_multiplier=1.0))
    assert sum(group["offset"] for group in groups) == 1


def test_the_multiplier_applies_on_top_of_the_head_learning_rate():
    from hf_unified.training.finetuning import ParameterRole

    model = tiny_uniclip()
    head = ParameterRole(frozenset())  # the loss's own parameters are heads
    roles = {name: head for name, _ in model.named_parameters()}
    args = TrainArguments(learning_rate=1e-3, head_learning_rate=4e-3, logit_offset_learning_rate_multiplier=5.0)
    (offsets,) = [group for group in parameter_groups(model, args, roles) if group["offset"]]
    assert offsets["lr"] == pytest.approx(2e-2)


def test_a_non_positive_multiplier_is_refused():
    from hf_unified.training.arguments import ConfigError

    with pytest.raises(ConfigError, match="logit_offset_learning_rate_multiplier must be positive, got 0"):
        TrainArguments(logit_offset_learning_rate_multiplier=0.0)


# ------------------------------------------------------------------------------------------------------------------
# MS-CLIP's shared-parameter group (official TRAIN.LR_SHARE / WD_SHARE)


def traced_roles(model: torch.nn.Module) -> dict:
    """`finetuning.trace_parameter_roles` on one blank image and one text, as the trainer traces them."""
    from tiny_models import IMAGE_SIZE, text_batch

    from hf_unified.training.finetuning import trace_parameter_roles

    inputs = {"vision": {"pixel_values": torch.zeros(1, 3, IMAGE_SIZE, IMAGE_SIZE)}, "text": text_batch(1)}
    return trace_parameter_roles(model, inputs)


def msclip_shared_names(model) -> set[str]:
    """The parameters MS-CLIP's stack holds once for both modalities, read from the model's layout: the direct
    sub-layers `shared_names` of each block (`modeling_msclip.MSCLIPEncoderLayer`)."""
    return {
        f"encoder.layers.{i}.{sublayer}.{name}"
        for i, layer in enumerate(model.encoder.layers)
        for sublayer in layer.shared_names
        for name, _ in getattr(layer, sublayer).named_parameters()
    }


def names_by_group(model, groups: list[dict]) -> list[set[str]]:
    names = {id(p): n for n, p in model.named_parameters()}
    return [{names[id(p)] for p in group["params"]} for group in groups]


@pytest.mark.parametrize("preset", ["shared", "ms-clip-s", "fully-shared"])
def test_the_shared_groups_hold_exactly_msclips_shared_parameters_at_their_rate_and_decay(preset):
    from tiny_models import tiny_model

    model = tiny_model("msclip", preset=preset).train()
    expected = msclip_shared_names(model)
    assert expected and all(".vision." not in n and ".text." not in n for n in expected)
    if preset == "fully-shared":
        assert any("layer_norm" in n for n in expected)  # shared norms: in the group, never decayed
    args = TrainArguments(learning_rate=1e-3, weight_decay=0.05, shared_learning_rate=4e-3, shared_weight_decay=0.2)
    groups = parameter_groups(model, args, traced_roles(model))
    shared = [(group, names) for group, names in zip(groups, names_by_group(model, groups)) if group["shared"]]
    assert set().union(*(names for _, names in shared)) == expected
    for group, names in shared:
        assert group["lr"] == pytest.approx(4e-3) and group["lr_scale"] == pytest.approx(4.0) and not group["offset"]
        matrices = {n for n in names if dict(model.named_parameters())[n].ndim >= 2}
        # Weight decay on the shared matrices only: biases and norms never decay.
        assert group["weight_decay"] == (0.2 if matrices else 0.0)
        assert not matrices or matrices == names
    others = [group for group in groups if not group["shared"]]
    assert all(group["lr"] == pytest.approx(1e-3) for group in others)
    assert {group["weight_decay"] for group in others} == {0.0, 0.05}


def test_the_shared_group_defaults_to_learning_rate_and_keeps_its_own_group_when_equal():
    from tiny_models import tiny_model

    model = tiny_model("msclip").train()
    roles = traced_roles(model)
    groups = parameter_groups(model, TrainArguments(learning_rate=2e-4, weight_decay=0.2), roles)
    shared = [group for group in groups if group["shared"]]
    assert shared and all(group["lr"] == pytest.approx(2e-4) and group["lr_scale"] == 1.0 for group in shared)
    assert TrainArguments().shared_weight_decay == 0.2  # the official WD_SHARE
    # The same layout whatever the values (a checkpoint's optimizer state must match it on resume).
    other = parameter_groups(model, TrainArguments(shared_learning_rate=1e-2, shared_weight_decay=0.3), roles)
    assert [len(g["params"]) for g in other] == [len(g["params"]) for g in groups]
    assert names_by_group(model, other) == names_by_group(model, groups)


@pytest.mark.parametrize("kind", ["unicl", "uniclip", "msclip-separate"])
def test_a_model_that_shares_nothing_has_no_shared_group_and_the_same_groups(kind):
    from tiny_models import tiny_model

    model = (tiny_model("msclip", preset="separate") if kind == "msclip-separate" else tiny_model(kind)).train()
    args = TrainArguments(learning_rate=1e-3, shared_learning_rate=5e-3, shared_weight_decay=0.3)
    traced = parameter_groups(model, args, traced_roles(model))
    assert not any(group["shared"] for group in traced)
    untraced = parameter_groups(model, args)  # what the optimizer built before roles were traced for every run
    assert names_by_group(model, traced) == names_by_group(model, untraced)
    assert [(g["lr"], g["weight_decay"]) for g in traced] == [(g["lr"], g["weight_decay"]) for g in untraced]


def test_shared_rate_composes_with_layerwise_decay_and_the_head_rate():
    """The rule: a head trains at head_learning_rate; any other parameter at its base rate (shared_learning_rate if
    shared, else learning_rate) times layerwise_lr_decay ** (L + 1 - depth)."""
    from tiny_models import tiny_model

    model = tiny_model("msclip", preset="ms-clip-s").train()  # 3 blocks; vision block 0 a conv stem, text 0 unshared
    roles = traced_roles(model)
    args = TrainArguments(
        learning_rate=1e-3, shared_learning_rate=4e-3, head_learning_rate=2e-2, layerwise_lr_decay=0.5
    )
    rate = {id(p): group["lr"] for group in parameter_groups(model, args, roles) for p in group["params"]}
    lr = {name: rate[id(p)] for name, p in model.named_parameters()}
    shared = msclip_shared_names(model)
    for name, role in roles.items():
        if role.is_head:
            expected = 2e-2
        else:
            expected = (4e-3 if name in shared else 1e-3) * 0.5 ** (role.num_blocks + 1 - role.depth)
        assert lr[name] == pytest.approx(expected), name
    # Anchors: the last block (depth L = 3 of the text stack, the deeper one) at half its base rate; text block 0,
    # not shared, at the towers' rate; the projections at the head rate.
    assert lr["encoder.layers.2.mlp.fc1.weight"] == pytest.approx(4e-3 * 0.5)
    assert lr["encoder.layers.1.attention.q_proj.weight"] == pytest.approx(4e-3 * 0.25)
    assert lr["encoder.layers.0.text.mlp.fc1.weight"] == pytest.approx(1e-3 * 0.125)
    assert lr["visual_projection.weight"] == lr["text_projection.weight"] == pytest.approx(2e-2)


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"shared_learning_rate": 0.0}, "shared_learning_rate must be a positive number .* got 0.0"),
        ({"shared_learning_rate": -1e-4}, "shared_learning_rate must be a positive number"),
        ({"shared_learning_rate": float("nan")}, "shared_learning_rate must be a positive number .* got nan"),
        ({"shared_learning_rate": float("inf")}, "shared_learning_rate must be a positive number"),
        ({"shared_weight_decay": -0.1}, r"shared_weight_decay must be a number >= 0 .* got -0.1"),
        ({"shared_weight_decay": float("nan")}, "shared_weight_decay must be a number >= 0"),
        ({"shared_learning_rate": 1e-4, "lora_rank": 4}, "--lora_rank 4 with --shared_learning_rate: LoRA"),
    ],
)
def test_bad_shared_settings_are_refused_in_one_line(settings, message):
    from hf_unified.training.arguments import ConfigError

    with pytest.raises(ConfigError, match=message) as error:
        TrainArguments(**settings)
    assert "\n" not in str(error.value)


def test_roles_are_traced_whenever_whole_weights_train():
    assert TrainArguments().needs_parameter_roles  # the shared group needs them, whatever the values
    assert not TrainArguments(lora_rank=4).needs_parameter_roles  # LoRA: adapters at learning_rate, no roles


def _msclip_run(folder, shapes, *flags: str):
    """A tiny MS-CLIP trainer (train.py's settings, constant learning rate, a checkpoint at step 2) in `folder`, built
    with extra command-line `flags`."""
    import yaml
    from training_helpers import ROOT, reset_accelerate_state, train_script, write_config

    from hf_unified.training.builders import build_trainer

    reset_accelerate_state()
    model_config = yaml.safe_load((ROOT / "training" / "configs" / "msclip-tiny.yaml").read_text())["model_config"]
    model_config.update(hidden_size=32, intermediate_size=64, projection_dim=16)
    config = write_config(
        folder,
        shapes,
        "msclip",
        model_config=model_config,
        do_eval=False,
        save_steps=2,
        warmup_steps=0,
        lr_scheduler_type="constant",
        shared_learning_rate=2e-3,
        shared_weight_decay=0.3,
    )
    arguments = ["--config", str(config), "--output_dir", str(folder / "run"), *flags]
    return build_trainer(*train_script.parse_arguments(arguments))


def _shared_groups(trainer) -> list[dict]:
    names = {id(p): n for n, p in trainer.unwrapped.named_parameters()}
    return [dict(g, params=[names[id(p)] for p in g["params"]]) for g in trainer.optimizer.param_groups if g["shared"]]


@pytest.fixture(scope="module")
def msclip_run(tmp_path_factory, shapes):
    """A two-step tiny MS-CLIP run with `shared_learning_rate=2e-3` (learning_rate 1e-3), `shared_weight_decay=0.3`:
    its folder, its trainer and the parameters it started from."""
    from training_helpers import reset_accelerate_state

    folder = tmp_path_factory.mktemp("msclip-shared-group")
    trainer = _msclip_run(folder, shapes, "--max_steps", "2")
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    reset_accelerate_state()
    return folder, trainer, before


def test_a_tiny_msclip_run_trains_its_shared_group(msclip_run):
    _, trainer, before = msclip_run
    shared = _shared_groups(trainer)
    assert {n for g in shared for n in g["params"]} == msclip_shared_names(trainer.unwrapped)
    assert all(g["lr"] == pytest.approx(2e-3) and g["lr_scale"] == pytest.approx(2.0) for g in shared)  # 1e-3 x 2
    assert sorted(g["weight_decay"] for g in shared) == [0.0, 0.3]  # biases / matrices
    assert all(g["lr"] == pytest.approx(1e-3) for g in trainer.optimizer.param_groups if not g["shared"])
    moved = {n for n, p in trainer.unwrapped.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert msclip_shared_names(trainer.unwrapped) <= moved


@pytest.mark.usefixtures("fresh_accelerate_state")
def test_a_resume_may_change_the_shared_rate_and_decay(msclip_run, shapes):
    """Both are adjustable settings (`runs.ADJUSTABLE_SETTINGS`): the same group layout, the new values applied."""
    folder, _, _ = msclip_run
    flags = ["--max_steps", "3", "--resume_from_checkpoint", "latest", "--allow_setting_changes"]
    resumed = _msclip_run(folder, shapes, *flags, "--shared_learning_rate", "5e-3", "--shared_weight_decay", "0.1")
    resumed.train()
    shared = _shared_groups(resumed)
    assert {n for g in shared for n in g["params"]} == msclip_shared_names(resumed.unwrapped)
    assert all(g["lr"] == pytest.approx(5e-3) and g["lr_scale"] == pytest.approx(5.0) for g in shared)
    assert sorted(g["weight_decay"] for g in shared) == [0.0, 0.1]
