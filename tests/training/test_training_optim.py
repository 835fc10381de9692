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
