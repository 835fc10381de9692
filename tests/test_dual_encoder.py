"""The skeleton every model shares: input validation, a batch of one, hidden states and config views, FSDP-ready
parameters, old checkpoints, and the single-modality models."""

from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file, save_file
from tiny_models import VOCAB, batch, tiny_model
from transformers import AutoModel

MODEL_TYPES = ("unicl", "uniclip", "msclip")


@pytest.fixture(scope="module", params=MODEL_TYPES)
def model(request):
    return tiny_model(request.param)


def _inputs(model, n=3):
    views = model.config.num_views if model.config.augmentation_aware else 0
    return batch(n, views=views)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda x: {**x, "pixel_values": (x["pixel_values"] * 50).to(torch.uint8)}, "floating-point.*processor"),
        (lambda x: {**x, "pixel_values": x["pixel_values"][..., :1, :, :]}, "1 channels, the image encoder takes 3"),
        (lambda x: {**x, "input_ids": x["input_ids"][:, :0], "attention_mask": x["attention_mask"][:, :0]}, "empty"),
        (lambda x: {**x, "input_ids": x["input_ids"] + VOCAB}, "outside the vocabulary \\[0, 600\\)"),
        (lambda x: {**x, "input_ids": x["input_ids"] - 1000}, "outside the vocabulary"),
        (
            lambda x: {
                **x,
                "attention_mask": torch.cat([torch.zeros_like(x["attention_mask"][:1]), x["attention_mask"][1:]]),
            },
            "texts \\[0\\] are empty",
        ),
        (lambda x: {**x, "input_ids": x["input_ids"].float()}, "integer tensor"),
        (
            lambda x: {
                **x,
                "input_ids": x["input_ids"].repeat(1, 6),
                "attention_mask": x["attention_mask"].repeat(1, 6),
            },
            "takes at most 32",
        ),
    ],
)
def test_bad_inputs_get_a_clear_value_error(model, change, message):
    with pytest.raises(ValueError, match=message):
        model(**change(_inputs(model)), return_loss=True)


def test_an_empty_image_batch_is_refused(model):
    inputs = _inputs(model)
    with pytest.raises(ValueError, match="empty batch"):
        model.get_image_features(pixel_values=torch.zeros(0, 3, 32, 32))
    with pytest.raises(ValueError, match="needs both"):
        model(pixel_values=inputs["pixel_values"], return_loss=True)


def test_a_batch_of_one_has_the_defined_loss(model):
    # One item: its only candidates are its own embeddings (or, in one space, its own views and text), all
    # positives: each term is -log(1) = 0 for every variant.
    loss = model(**_inputs(model, n=1), return_loss=True).loss
    assert math.isfinite(loss.item()) and loss.item() == pytest.approx(0.0, abs=1e-6)


def test_no_parameter_is_zero_dimensional_and_no_split_modules_exist(model):
    assert all(p.ndim >= 1 for p in model.parameters()), [n for n, p in model.named_parameters() if p.ndim == 0]
    classes = {type(m).__name__ for m in model.modules()}
    assert model._no_split_modules and set(model._no_split_modules) <= classes, model._no_split_modules


def test_generic_tower_config_views(model):
    config = model.config
    assert config.text_config.vocab_size == VOCAB
    assert config.vision_config.num_channels == 3 and config.vision_config.hidden_size > 0
    assert config.text_config.hidden_size > 0 and config.get_text_config().vocab_size == VOCAB


def test_hidden_states_follow_the_config_and_match_the_layer_count(model, tmp_path):
    folder = tmp_path / "m"
    model.save_pretrained(folder)
    loaded = AutoModel.from_pretrained(folder, output_hidden_states=True).eval()
    inputs = {k: v for k, v in _inputs(loaded).items() if k != "labels"}
    with torch.no_grad():
        outputs = loaded(**inputs)
    text_layers = loaded.config.text_config.num_hidden_layers
    assert len(outputs.text_model_output.hidden_states) == text_layers + 1
    if loaded.config.model_type == "msclip":  # the view counts the blocks images run
        assert len(outputs.vision_model_output.hidden_states) == loaded.config.vision_config.num_hidden_layers + 1
    else:
        assert outputs.vision_model_output.hidden_states is not None
    with torch.no_grad():
        plain = loaded(**inputs, output_hidden_states=False)
    assert plain.text_model_output.hidden_states is None


def test_checkpoints_with_a_zero_dimensional_logit_scale_still_load(tmp_path):
    for model_type in ("unicl", "msclip"):
        model = tiny_model(model_type)
        folder = tmp_path / model_type
        model.save_pretrained(folder)
        weights = load_file(folder / "model.safetensors")
        assert weights["logit_scale"].shape == (1,)
        weights["logit_scale"] = torch.tensor(2.5)  # as saved before the parameter became 1-D
        save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
        loaded = AutoModel.from_pretrained(folder)
        assert loaded.logit_scale.shape == (1,) and loaded.logit_scale.item() == 2.5
        loaded.save_pretrained(tmp_path / f"{model_type}-again")
        assert load_file(tmp_path / f"{model_type}-again" / "model.safetensors")["logit_scale"].tolist() == [2.5]


@pytest.mark.parametrize("model_type", MODEL_TYPES)
def test_single_modality_models_load_from_the_dual_folder_and_agree(model_type, tmp_path):
    import hf_unified

    prefix = {"unicl": "UniCL", "uniclip": "UniCLIP", "msclip": "MSCLIP"}[model_type]
    model = tiny_model(model_type)
    model.save_pretrained(tmp_path)
    inputs = _inputs(model)
    image = inputs["pixel_values"][:, 0] if inputs["pixel_values"].ndim == 5 else inputs["pixel_values"]
    vision = getattr(hf_unified, f"{prefix}VisionModelWithProjection").from_pretrained(tmp_path).eval()
    text = getattr(hf_unified, f"{prefix}TextModelWithProjection").from_pretrained(tmp_path).eval()
    with torch.no_grad():
        torch.testing.assert_close(vision(pixel_values=image).embeds, model.get_image_features(image).pooler_output)
        torch.testing.assert_close(
            text(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).embeds,
            model.get_text_features(inputs["input_ids"], inputs["attention_mask"]).pooler_output,
        )
    assert not any(name.startswith("text") for name, _ in vision.named_parameters())
