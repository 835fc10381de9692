"""Absurd config values are refused before anything is allocated, in one line naming the field, the value expected,
the value given and the fix: when a config is built, when a folder's `config.json` is loaded, and when a model is
built from a config changed in place since."""

from __future__ import annotations

import json

import pytest
import torch
from tiny_models import tiny_config, tiny_model
from transformers import AutoConfig, AutoModel

from hf_unified import (
    MSCLIP_PRESETS,
    MSCLIPConfig,
    MSCLIPModel,
    UniCLConfig,
    UniCLIPConfig,
    UniCLIPModel,
    UniCLModel,
)
from hf_unified.towers import tower_config

CLIP_VISION = {"model_type": "clip_vision_model"}
CLIP_TEXT = {"model_type": "clip_text_model"}
SWIN = {"model_type": "swin", "depths": [2, 2], "num_heads": [3, 6], "embed_dim": 96}

TOWER_CASES = [
    # (config overrides, the start of the message)
    (dict(vision_config={**CLIP_VISION, "num_attention_heads": 0}), "vision_config.num_attention_heads must be an"),
    (dict(text_config={**CLIP_TEXT, "num_attention_heads": 0}), "text_config.num_attention_heads must be an integer"),
    (dict(vision_config={**CLIP_VISION, "num_hidden_layers": -3}), "vision_config.num_hidden_layers must be an int"),
    (dict(vision_config={**CLIP_VISION, "num_hidden_layers": 10**6}), "vision_config.num_hidden_layers must be an"),
    (dict(text_config={**CLIP_TEXT, "hidden_act": "relu9"}), "text_config.hidden_act must be an activation name"),
    (
        dict(vision_config={**CLIP_VISION, "hidden_size": 30, "num_attention_heads": 4}),
        "vision_config.num_attention_heads must be a divisor of hidden_size 30, got 4",
    ),
    (dict(vision_config={**CLIP_VISION, "image_size": 30, "patch_size": 4}), "vision_config.image_size 30 is not"),
    (dict(vision_config={**CLIP_VISION, "patch_size": 0}), "vision_config.patch_size must be an integer >= 1"),
    (dict(vision_config={**CLIP_VISION, "hidden_size": "768"}), "vision_config.hidden_size must be an integer"),
    (dict(vision_config={**CLIP_VISION, "attention_dropout": 1.5}), "vision_config.attention_dropout must be a fin"),
    (dict(text_config={**CLIP_TEXT, "layer_norm_eps": float("nan")}), "text_config.layer_norm_eps must be a finite"),
    (dict(text_config={**CLIP_TEXT, "layer_norm_eps": 0.0}), "text_config.layer_norm_eps must be a finite number"),
    (dict(vision_config={**CLIP_VISION, "hidden_size": 2**20, "num_attention_heads": 1}), "vision_config must give"),
    (dict(text_config={**CLIP_TEXT, "vocab_size": 10**12}), "text_config must give a model of at most 1e+11"),
    (dict(vision_config={"model_type": "vit", "image_size": 30, "patch_size": 16}), "vision_config.image_size 30"),
    (dict(text_config={"model_type": "bert", "num_attention_heads": 0}), "text_config.num_attention_heads must be"),
    (dict(text_config={"model_type": "bert", "hidden_dropout_prob": -0.1}), "text_config.hidden_dropout_prob must"),
    (dict(vision_config={**SWIN, "num_heads": [3, 0]}), "vision_config.num_heads[1] must be an integer >= 1"),
    (dict(vision_config={**SWIN, "num_heads": [5, 6]}), "vision_config.num_heads[0] must be a divisor of stage 0"),
    (dict(vision_config={**SWIN, "depths": [600, 600]}), "vision_config.depths must be at most 1024 blocks"),
    (dict(vision_config={**SWIN, "depths": [2, 2, 2]}), "vision_config.num_heads must be one entry per stage"),
    (dict(vision_config={**SWIN, "image_size": 30}), "vision_config.image_size 30 is not divisible"),
    (dict(logit_scale_init_value=float("nan")), "logit_scale_init_value must be a finite number"),
    (dict(initializer_range=float("inf")), "initializer_range must be a finite number"),
]

MSCLIP_CASES = [
    (dict(vision_num_attention_heads=0), "vision_num_attention_heads must be an integer >= 1, got 0"),
    (dict(num_hidden_layers=-3), "num_hidden_layers must be an integer >= 1, got -3"),
    (dict(num_hidden_layers=10**6), "num_hidden_layers must be an integer in [1, 1024], got 1000000"),
    (dict(hidden_act="nope"), "hidden_act must be an activation name of transformers.activations.ACT2FN, got 'nope'"),
    (dict(layer_norm_eps=float("nan")), "layer_norm_eps must be a finite number in (0.0, inf), got nan"),
    (dict(batch_norm_eps=0.0), "batch_norm_eps must be a finite number in (0.0, inf), got 0.0"),
    (dict(attention_dropout=1.0), "attention_dropout must be a finite number in [0.0, 1.0), got 1.0"),
    (dict(initializer_factor=float("inf")), "initializer_factor must be a finite number"),
    (dict(stem_strides=[2, 0]), "stem_strides[1] must be an integer >= 1, got 0"),
    (dict(parallel_t2b_kernels=[4, 0]), "parallel_t2b_kernels[1] must be an integer >= 1, got 0"),
    (dict(parallel_strides=[0, 2]), "parallel_strides[0] must be an integer >= 1, got 0"),
    (dict(image_size=30), "image_size 30 is not divisible by patch_size 8"),
    (dict(hidden_size=2**20, intermediate_size=2**20), "MSCLIPConfig must give a model of at most 1e+11 parameters"),
    (dict(logit_scale_init_value=float("-inf")), "logit_scale_init_value must be a finite number"),
]


def assert_one_line(error: pytest.ExceptionInfo, start: str) -> None:
    message = str(error.value)
    assert message.startswith(start), message
    assert "\n" not in message and ": " in message, message  # one line, then the fix


@pytest.mark.parametrize("model_type", ["unicl", "uniclip"])
@pytest.mark.parametrize("overrides, start", TOWER_CASES)
def test_tower_models_refuse_absurd_values(model_type, overrides, start):
    with pytest.raises(ValueError) as error:
        tiny_config(model_type, **overrides)
    assert_one_line(error, start)


@pytest.mark.parametrize("overrides, start", MSCLIP_CASES)
def test_msclip_refuses_absurd_values(overrides, start):
    with pytest.raises(ValueError) as error:
        tiny_config("msclip", preset="ms-clip-s", **overrides)
    assert_one_line(error, start)


def test_tower_dicts_are_checked_by_tower_config_too():
    with pytest.raises(ValueError) as error:
        tower_config({**CLIP_VISION, "num_attention_heads": 0}, "vision_config")
    assert_one_line(error, "vision_config.num_attention_heads must be an integer >= 1, got 0")


def test_known_good_configs_pass():
    """The released architectures and every sharing preset are far inside the bounds."""
    UniCLConfig(), UniCLIPConfig(), MSCLIPConfig()
    for preset in MSCLIP_PRESETS:
        MSCLIPConfig.from_preset(preset)
    # ViT-22B-sized image tower (the largest released ViT): 48 blocks of width 6144, about 2.2e10 parameters.
    vit_22b = dict(hidden_size=6144, intermediate_size=24576, num_hidden_layers=48, num_attention_heads=48)
    UniCLIPConfig(vision_config={**CLIP_VISION, **vit_22b, "patch_size": 14})


@pytest.fixture
def no_allocation(monkeypatch):
    """Any layer built from here on fails the test (the checks must come first)."""

    def allocate(*args, **kwargs):
        raise AssertionError("a layer was allocated before the config was refused")

    for layer in (torch.nn.Linear, torch.nn.Embedding, torch.nn.Conv2d, torch.nn.LayerNorm):
        monkeypatch.setattr(layer, "__init__", allocate)


def test_models_recheck_values_changed_in_place(no_allocation):
    """Sub-config fields set after the config was built (strict dataclasses check their types only)."""
    config = tiny_config("unicl")
    config.vision_config.num_hidden_layers = 10**6
    with pytest.raises(ValueError) as error:
        UniCLModel(config)
    assert_one_line(error, "vision_config.num_hidden_layers must be an integer in [1, 1024], got 1000000")

    config = tiny_config("msclip")
    config.hidden_act = "nope"
    with pytest.raises(ValueError) as error:
        MSCLIPModel(config)
    assert_one_line(error, "hidden_act must be an activation name")


@pytest.mark.parametrize(
    "model_type, edit, start",
    [
        ("uniclip", lambda c: c["vision_config"].update(num_hidden_layers=10**6), "vision_config.num_hidden_layers"),
        ("unicl", lambda c: c["text_config"].update(num_attention_heads=0), "text_config.num_attention_heads must"),
        ("unicl", lambda c: c["vision_config"].update(image_size=30), "vision_config.image_size 30 is not divisible"),
        ("msclip", lambda c: c.update(hidden_act="nope"), "hidden_act must be an activation name"),
        ("msclip", lambda c: c.update(vision_num_attention_heads=0), "vision_num_attention_heads must be an integer"),
        ("uniclip", lambda c: c.update(patch_dropout=1.0), "patch_dropout must be a finite number in [0.0, 1.0)"),
    ],
)
def test_a_hostile_config_json_is_refused_before_any_weight(tmp_path, model_type, edit, start):
    tiny_model(model_type).save_pretrained(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    edit(config)
    path.write_text(json.dumps(config))
    model_class = {"unicl": UniCLModel, "uniclip": UniCLIPModel, "msclip": MSCLIPModel}[model_type]
    for load in (AutoConfig.from_pretrained, AutoModel.from_pretrained, model_class.from_pretrained):
        with pytest.raises(ValueError) as error:
            load(tmp_path)
        assert_one_line(error, start)


def test_loading_overrides_are_checked_when_the_model_is_built(tmp_path):
    """`from_pretrained(folder, field=value)` sets the field after the config was built."""
    tiny_model("msclip").save_pretrained(tmp_path)
    with pytest.raises(ValueError) as error:
        MSCLIPModel.from_pretrained(tmp_path, num_hidden_layers=10**6)
    assert_one_line(error, "num_hidden_layers must be an integer in [1, 1024], got 1000000")
