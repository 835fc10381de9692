"""Fine-tuning controls: frozen towers and LiT leave their parameters unchanged, layer-wise decay gives each layer
the learning rate of its depth, and the roles come out right for two towers and for MS-CLIP's shared stack."""

from __future__ import annotations

import pytest
import torch
import yaml
from training_helpers import (
    ROOT,
    TINY_TEXT,
    TINY_VISION,
    train_script,
    write_config,
)

from hf_unified.training.arguments import TrainArguments
from hf_unified.training.builders import build_trainer
from hf_unified.training.finetuning import example_inputs, freeze_parameters, trace_parameter_roles
from hf_unified.training.optim import parameter_groups

pytest_plugins = ("training_fixtures",)  # shapes, fresh_accelerate_state
pytestmark = pytest.mark.usefixtures("fresh_accelerate_state")


@pytest.fixture(scope="module")
def tokenizer():
    from hf_unified.tokenization import train_caption_tokenizer

    return train_caption_tokenizer(["a red circle.", "a blue square in the top left."] * 5, vocab_size=280)


def processor_for(model, tokenizer):
    from hf_unified.training.methods import processor_class

    cls = processor_class(model.config)
    return cls(image_processor=cls.default_image_processor(32), tokenizer=tokenizer)


def unicl(tokenizer, vision_layers=2, text_layers=3):
    from hf_unified import UniCLConfig, UniCLModel

    text = {**TINY_TEXT, "num_hidden_layers": text_layers, "vocab_size": len(tokenizer)}
    text.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=0)
    vision = {**TINY_VISION, "num_hidden_layers": vision_layers, "image_size": 32}
    return UniCLModel(UniCLConfig(projection_dim=16, vision_config=vision, text_config=text))


def test_layerwise_decay_and_head_learning_rate_per_layer(tokenizer):
    model = unicl(tokenizer, vision_layers=2, text_layers=3)
    roles = trace_parameter_roles(model, example_inputs(processor_for(model, tokenizer)))
    args = TrainArguments(learning_rate=1e-3, head_learning_rate=1e-2, layerwise_lr_decay=0.5, weight_decay=0.1)
    learning_rate = {id(p): group["lr"] for group in parameter_groups(model, args, roles) for p in group["params"]}
    lr = dict((name, learning_rate[id(p)]) for name, p in model.named_parameters())

    for i in range(2):  # vision block i of L = 2: 1e-3 * 0.5 ** (2 - i)
        assert lr[f"vision_model.encoder.layers.{i}.mlp.fc1.weight"] == pytest.approx(1e-3 * 0.5 ** (2 - i))
    for i in range(3):
        assert lr[f"text_model.encoder.layers.{i}.self_attn.q_proj.bias"] == pytest.approx(1e-3 * 0.5 ** (3 - i))
    for name in ("vision_model.embeddings.patch_embedding.weight", "vision_model.pre_layrnorm.weight"):
        assert lr[name] == pytest.approx(1e-3 * 0.5**3)  # before the first block: decay ** (L + 1)
    assert lr["text_model.embeddings.token_embedding.weight"] == pytest.approx(1e-3 * 0.5**4)
    for name in ("visual_projection.weight", "text_projection.weight", "vision_model.post_layernorm.weight"):
        assert lr[name] == pytest.approx(1e-2)  # the heads
    assert lr["logit_scale"] == pytest.approx(1e-2)  # a head; the offset multiplier is not for log temperatures
    # Weight decay is still only on matrices of the blocks and projections.
    decays = {id(p): group["weight_decay"] for group in parameter_groups(model, args, roles) for p in group["params"]}
    assert decays[id(model.logit_scale)] == 0.0 and decays[id(model.visual_projection.weight)] == 0.1


def test_without_controls_every_parameter_of_clip_has_the_base_rate(tokenizer):
    model = unicl(tokenizer)  # CLIP's similarity: one temperature, no offset
    groups = parameter_groups(model, TrainArguments(learning_rate=3e-4))
    assert {group["lr"] for group in groups} == {3e-4} and {group["lr_scale"] for group in groups} == {1.0}
    assert not any(group["offset"] for group in groups)  # CLIP's and open_clip's choice


def test_msclip_shared_stack_roles_and_freezing(tokenizer):
    from transformers import AutoConfig, AutoModel

    model_config = yaml.safe_load((ROOT / "training" / "configs" / "msclip-tiny.yaml").read_text())["model_config"]
    model_config.update(hidden_size=32, intermediate_size=64, image_size=32, vocab_size=len(tokenizer))
    model_config.update(eos_token_id=tokenizer.eos_token_id, bos_token_id=tokenizer.bos_token_id, pad_token_id=0)
    model = AutoModel.from_config(AutoConfig.for_model("msclip", **model_config))
    roles = trace_parameter_roles(model, example_inputs(processor_for(model, tokenizer)))
    assert roles["encoder.layers.2.attention.q_proj.weight"].towers == {"vision", "text"}  # shared by both modalities
    assert roles["encoder.layers.2.attention.q_proj.weight"].is_shared  # the optimizer's shared group reads this
    assert roles["encoder.layers.2.vision.layer_norm1.weight"].towers == {"vision"}
    assert not any(roles[n].is_shared for n in roles if not n.startswith("encoder.layers."))
    assert roles["text_embeddings.token_embedding.weight"].towers == {"text"}
    assert roles["vision_embeddings.stem.first.conv.weight"].depth == 0  # the conv stem comes before the blocks
    assert roles["visual_projection.weight"].is_head and roles["logit_scale"].is_head
    frozen = set(freeze_parameters(model, roles, TrainArguments(freeze_text_tower=True)))
    assert "encoder.layers.2.attention.q_proj.weight" in frozen  # a shared block is part of the text tower too
    assert "text_embeddings.token_embedding.weight" in frozen and "text_projection.weight" not in frozen
    assert "encoder.layers.2.vision.layer_norm1.weight" not in frozen and "vision_post_layernorm.weight" not in frozen


def _trained(tmp_path, shapes, **overrides) -> tuple[dict, object]:
    config = write_config(tmp_path, shapes, do_eval=False, **overrides)
    arguments = train_script.parse_arguments(["--config", str(config), "--max_steps", "3"])
    trainer = build_trainer(*arguments)
    before = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    trainer.train()
    return before, trainer


def _changed(before: dict, model) -> set[str]:
    return {name for name, p in model.named_parameters() if not torch.equal(p.detach(), before[name])}


def test_frozen_text_tower_does_not_change_and_its_head_trains(tmp_path, shapes):
    before, trainer = _trained(tmp_path, shapes, freeze_text_tower=True)
    changed = _changed(before, trainer.unwrapped)
    text_body = {n for n in before if n.startswith("text_model.") and "final_layer_norm" not in n}
    assert text_body and not changed & text_body
    assert "text_projection.weight" in changed and "vision_model.encoder.layers.0.mlp.fc1.weight" in changed
    assert not trainer.unwrapped.text_model.embeddings.training  # frozen subtrees run in eval mode


def test_lit_locks_the_whole_image_path(tmp_path, shapes):
    before, trainer = _trained(tmp_path, shapes, lock_image_tower=True)
    changed = _changed(before, trainer.unwrapped)
    image_path = {n for n in before if n.startswith(("vision_model.", "visual_projection."))}
    assert not changed & image_path
    assert "text_projection.weight" in changed and "text_model.encoder.layers.0.mlp.fc1.weight" in changed
    assert not trainer.unwrapped.vision_model.training and trainer.unwrapped.text_model.training
