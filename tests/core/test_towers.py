"""Towers (config from a dict, pooling) and the shared image preprocessing, with exact expected values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import BertConfig

from hf_unified.image_processing import center_crop_image_processor
from hf_unified.towers import eos_positions, pool_image, pool_text, tower_config

EOS = 9


def test_eos_positions_find_the_first_end_of_text_token_whatever_the_padding():
    ids = torch.tensor([[1, 2, EOS, EOS, EOS], [1, EOS, 0, 0, 0], [1, 2, 3, 4, 5], [1, 2, 3, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
    # rows 2 and 3 have no end-of-text token (truncated text): their last attended token
    assert eos_positions(ids, mask, EOS).tolist() == [2, 1, 4, 2]
    assert eos_positions(ids, None, None).tolist() == [4, 4, 4, 4]


def test_text_pooling_values():
    hidden = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)  # [B=2, L=3, H=2]
    ids = torch.tensor([[4, EOS, 0], [4, 5, EOS]])
    mask = torch.tensor([[1, 1, 0], [1, 1, 1]])
    torch.testing.assert_close(pool_text(hidden, ids, mask, "eos", EOS), torch.tensor([[2.0, 3.0], [10.0, 11.0]]))
    torch.testing.assert_close(pool_text(hidden, ids, mask, "cls"), torch.tensor([[0.0, 1.0], [6.0, 7.0]]))
    torch.testing.assert_close(pool_text(hidden, ids, mask, "mean"), torch.tensor([[1.0, 2.0], [8.0, 9.0]]))
    with pytest.raises(ValueError, match="text pooling must be one of"):
        pool_text(hidden, ids, mask, "max")


def test_image_pooling_values():
    tokens = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    pooled = torch.tensor([[7.0, 7.0], [8.0, 8.0]])
    torch.testing.assert_close(pool_image(tokens, pooled, "pooler"), pooled)
    torch.testing.assert_close(pool_image(tokens, None, "cls"), tokens[:, 0])
    torch.testing.assert_close(pool_image(tokens, None, "mean"), torch.tensor([[2.0, 3.0], [8.0, 9.0]]))
    maps = torch.ones(2, 4, 3, 3)  # a convolutional tower's [B, C, h, w] output
    torch.testing.assert_close(pool_image(maps, None, "mean"), torch.ones(2, 4))
    with pytest.raises(ValueError, match="needs a tower with a pooler_output"):
        pool_image(tokens, None, "pooler")


def test_tower_config_from_a_dict():
    config = tower_config({"model_type": "bert", "hidden_size": 48, "num_attention_heads": 4}, "text_config")
    assert isinstance(config, BertConfig) and config.hidden_size == 48
    with pytest.raises(ValueError, match="needs a 'model_type'"):
        tower_config({"hidden_size": 4}, "text_config")
    with pytest.raises(ValueError, match="unknown tower model_type 'nope'"):
        tower_config({"model_type": "nope"}, "vision_config")


def test_center_crop_image_processor_resizes_crops_and_normalises_exactly():
    processor = center_crop_image_processor(8, 10, image_mean=(0.5, 0.25, 0.0), image_std=(0.5, 0.25, 1.0))
    image = Image.fromarray(np.full((20, 30, 3), 51, dtype=np.uint8))  # 51 / 255 = 0.2 everywhere
    pixels = processor(images=image, return_tensors="pt")["pixel_values"]
    assert pixels.shape == (1, 3, 8, 8)
    expected = torch.tensor([(0.2 - 0.5) / 0.5, (0.2 - 0.25) / 0.25, 0.2])
    torch.testing.assert_close(pixels[0, :, 4, 4], expected, rtol=0, atol=1e-5)
    assert processor.size == {"shortest_edge": 10} and processor.crop_size == {"height": 8, "width": 8}


def test_towers_leave_out_pooling_layers_nobody_reads(tmp_path):
    from tiny_models import tiny_config, tiny_text, tiny_vision
    from transformers import AutoModel

    from hf_unified import UniCLConfig, UniCLModel

    model = UniCLModel(
        UniCLConfig(
            vision_config=tiny_vision("vit"),
            text_config=tiny_text("bert"),
            vision_pooling="cls",
            text_pooling="cls",
            projection_dim=16,
        )
    )
    names = [name for name, _ in model.named_parameters()]
    assert not any(".pooler." in name for name in names), [n for n in names if "pooler" in n]
    # ... so every parameter gets a gradient (what DDP requires), and a pooler-reading ViT keeps its pooler.
    loss = model(**{**_batch(), "return_loss": True}).loss
    loss.backward()
    assert all(p.grad is not None for p in model.parameters())
    with_pooler = UniCLModel(tiny_config("unicl", vision_config=tiny_vision("vit"), vision_pooling="pooler"))
    assert any(".pooler." in name for name, _ in with_pooler.named_parameters())
    with_pooler.save_pretrained(tmp_path)  # a folder with pooler weights still loads into a cls-pooling model
    loaded = AutoModel.from_pretrained(tmp_path, vision_pooling="cls")
    assert not any(".pooler." in name for name, _ in loaded.named_parameters())


def _batch():
    from tiny_models import batch

    inputs = batch(3)
    inputs["input_ids"] = inputs["input_ids"].clamp(max=590)
    return inputs
