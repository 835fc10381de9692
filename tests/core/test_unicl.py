"""UniCL as a transformers model: config, towers, forward, labels, processor. What every model keeps (save/load,
attention backends, pipelines, remote code, bad inputs) is the model contract, `tests/core/test_model_contract.py`."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import (
    AutoConfig,
    AutoModel,
    BertConfig,
    CLIPTextConfig,
    CLIPVisionConfig,
    SwinConfig,
    ViTConfig,
)

from hf_unified import (
    UniCLConfig,
    UniCLModel,
    UniCLProcessor,
    build_zero_shot_classifier,
)
from hf_unified.processing_unicl import unicl_image_processor

IMAGE_SIZE = 32


def tiny_vision(kind: str = "clip"):
    if kind == "clip":
        return CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
        )
    if kind == "vit":
        return ViTConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
        )
    return SwinConfig(image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[2, 2], window_size=4)


def tiny_text(kind: str = "clip"):
    if kind == "clip":
        return CLIPTextConfig(
            vocab_size=600,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=77,
            bos_token_id=598,
            eos_token_id=599,
            pad_token_id=599,
        )
    return BertConfig(vocab_size=600, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


def tiny_config(vision="clip", text="clip", **kwargs) -> UniCLConfig:
    return UniCLConfig(vision_config=tiny_vision(vision), text_config=tiny_text(text), projection_dim=16, **kwargs)


def images(n: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 255, (40 + 3 * i, 48, 3), dtype=np.uint8)) for i in range(n)]


TEXTS = ["a photo of a cat.", "an origami of the big red bus on the street.", "a dog", "itap of the ocean."]


@pytest.fixture(scope="module")
def processor(tiny_clip_tokenizer):
    return UniCLProcessor(unicl_image_processor(IMAGE_SIZE), tiny_clip_tokenizer)


@pytest.fixture(scope="module")
def inputs(processor):
    return processor(text=TEXTS, images=images(4), padding=True, return_tensors="pt")


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return UniCLModel(tiny_config()).eval()


def test_default_config_is_official_swin_tiny():
    config = UniCLConfig()
    assert config.vision_config.model_type == "swin"
    assert (config.vision_config.embed_dim, config.vision_config.depths) == (96, [2, 2, 6, 2])
    assert config.vision_config.num_heads == [3, 6, 12, 24] and config.vision_config.window_size == 7
    text = config.text_config
    assert (text.model_type, text.num_hidden_layers, text.hidden_size, text.num_attention_heads) == (
        "clip_text_model",
        12,
        512,
        8,
    )
    assert (text.hidden_act, text.layer_norm_eps, text.eos_token_id) == ("quick_gelu", 1e-12, 49407)
    assert (config.projection_dim, config.logit_scale_init_value, config.text_pooling) == (512, 1.0, "eos")


@pytest.mark.parametrize("vision, text", [("clip", "clip"), ("vit", "bert"), ("swin", "clip")])
def test_config_round_trip_and_towers(tmp_path, vision, text):
    config = tiny_config(vision, text, text_pooling="eos" if text == "clip" else "cls", logit_scale_init_value=2.5)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, UniCLConfig)
    assert loaded.to_diff_dict() == config.to_diff_dict()
    model = AutoModel.from_config(loaded)
    assert isinstance(model, UniCLModel)
    assert type(model.vision_model).__name__.lower().startswith(vision)


def test_tower_configs_accept_dicts_with_model_type():
    config = UniCLConfig(
        vision_config={"model_type": "vit", "hidden_size": 32, "num_attention_heads": 4},
        text_config={"model_type": "roberta", "hidden_size": 32, "num_attention_heads": 4},
        text_pooling="mean",
    )
    assert type(config.vision_config).__name__ == "ViTConfig"
    assert type(config.text_config).__name__ == "RobertaConfig"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vision_config={"model_type": "not-a-tower"}), "unknown tower model_type 'not-a-tower'"),
        (dict(text_pooling="max"), "text_pooling"),
        (dict(vision_pooling="first"), "vision_pooling"),
        (dict(projection_dim=0), "projection_dim"),
    ],
)
def test_bad_config_raises(kwargs, message):
    with pytest.raises(ValueError, match=message):
        UniCLConfig(**kwargs)


def test_forward_outputs_follow_clip(model, inputs):
    with torch.no_grad():
        out = model(**inputs, return_loss=True)
    assert out.logits_per_image.shape == (4, 4)
    torch.testing.assert_close(out.logits_per_text, out.logits_per_image.T)
    torch.testing.assert_close(out.image_embeds.norm(dim=-1), torch.ones(4))
    image_features = model.get_image_features(pixel_values=inputs["pixel_values"]).pooler_output
    text_features = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert text_features.last_hidden_state.shape[:2] == inputs["input_ids"].shape
    torch.testing.assert_close(out.image_embeds, torch.nn.functional.normalize(image_features, dim=-1))
    torch.testing.assert_close(out.text_embeds, torch.nn.functional.normalize(text_features.pooler_output, dim=-1))
    torch.testing.assert_close(out.logits_per_image, model.logit_scale.exp() * out.image_embeds @ out.text_embeds.T)
    assert out.loss.ndim == 0 and out.loss > 0


def test_return_dict_false(model, inputs):
    with torch.no_grad():
        as_tuple = model(**inputs, return_loss=True, return_dict=False)
        as_dict = model(**inputs, return_loss=True)
    assert isinstance(as_tuple, tuple)
    torch.testing.assert_close(as_tuple[0], as_dict.loss)
    torch.testing.assert_close(as_tuple[1], as_dict.logits_per_image)
    features = model.get_image_features(pixel_values=inputs["pixel_values"], return_dict=False)
    assert isinstance(features, tuple)


def test_labels_give_unicl_loss(model, inputs):
    with torch.no_grad():
        clip = model(**inputs, return_loss=True).loss
        unique = model(**inputs, labels=torch.tensor([-1, -1, 3, 4])).loss
        shared = model(**inputs, labels=torch.tensor([0, 0, 0, -1])).loss
    torch.testing.assert_close(unique, clip, atol=1e-6, rtol=0)
    assert (shared - clip).abs() > 1e-4


def test_eos_pooling_is_robust_to_any_pad_id(model, inputs):
    """MS-CLIP pads with 0, UniCL with end-of-text: the pooled token must be the same."""
    padded_with_zero = inputs["input_ids"].masked_fill(inputs["attention_mask"] == 0, 0)
    with torch.no_grad():
        a = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        b = model.get_text_features(input_ids=padded_with_zero, attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(a.pooler_output, b.pooler_output)


def test_logit_scale_initialised_from_config():
    model = UniCLModel(tiny_config(logit_scale_init_value=2.6592))
    assert model.logit_scale.item() == pytest.approx(2.6592)


def test_labels_of_another_length_are_refused(model, inputs):
    # The other bad inputs are the model contract's (tests/core/test_model_contract.py).
    with pytest.raises(ValueError, match="labels must be"):
        model(**inputs, labels=torch.tensor([0, 1]))


def test_single_modality_forward(model, inputs):
    with torch.no_grad():
        text_only = model(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    assert text_only.image_embeds is None and text_only.logits_per_image is None
    torch.testing.assert_close(text_only[0], text_only.text_embeds)


def test_zero_shot_classifier_is_mean_of_normalised_templates(model, processor):
    templates = ["a photo of a {}.", "{}."]
    weights = build_zero_shot_classifier(model, processor, ["cat", "dog"], templates)
    assert weights.shape == (2, 16)
    tokens = processor.tokenizer(["a photo of a dog.", "dog."], padding=True, return_tensors="pt")
    with torch.no_grad():
        each = torch.nn.functional.normalize(model.get_text_features(**tokens).pooler_output, dim=-1)
    torch.testing.assert_close(weights[1], torch.nn.functional.normalize(each.mean(0), dim=0))


def test_from_vision_text_pretrained(tmp_path, inputs):
    from transformers import CLIPTextModel, CLIPVisionModel

    torch.manual_seed(1)
    vision = CLIPVisionModel(tiny_vision("clip"))
    text = CLIPTextModel(tiny_text("clip"))
    vision.save_pretrained(tmp_path / "vision")
    text.save_pretrained(tmp_path / "text")
    model = UniCLModel.from_vision_text_pretrained(str(tmp_path / "vision"), str(tmp_path / "text"), projection_dim=8)
    assert model.config.projection_dim == 8
    for name, tensor in vision.state_dict().items():
        torch.testing.assert_close(model.vision_model.state_dict()[name], tensor)
    with torch.no_grad():
        expected = text(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).last_hidden_state
        got = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    torch.testing.assert_close(got.last_hidden_state, expected)


def test_default_processor_follows_official_unicl_preprocessing(tiny_clip_tokenizer):
    from transformers.image_utils import PILImageResampling

    image_processor = UniCLProcessor(tokenizer=tiny_clip_tokenizer).image_processor
    assert image_processor.size == {"shortest_edge": 256}
    assert image_processor.crop_size == {"height": 224, "width": 224}
    assert image_processor.resample == PILImageResampling.BICUBIC
    assert list(image_processor.image_mean) == pytest.approx([0.485, 0.456, 0.406])
    assert list(image_processor.image_std) == pytest.approx([0.229, 0.224, 0.225])
    pixels = image_processor(images(1)[0].resize((300, 260)), return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 224, 224)


def test_swin_tower_buffers_survive_save_load(tmp_path, processor):
    torch.manual_seed(0)
    model = UniCLModel(tiny_config("swin", "clip")).eval()
    model.save_pretrained(tmp_path)
    loaded = UniCLModel.from_pretrained(tmp_path).eval()
    buffers = dict(model.named_buffers())
    assert any("relative_position_index" in name for name in buffers)
    for name, buffer in loaded.named_buffers():
        torch.testing.assert_close(buffer, buffers[name], msg=name)
    batch = processor(text=TEXTS[:2], images=images(2), padding=True, return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits_per_image, model(**batch).logits_per_image)
