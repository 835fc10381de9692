"""The one tiny model of each kind that tests share, and batches for it.

Vocabulary 600 with bos 598 and eos 599 (the shared fixtures' tiny CLIP BPE tokenizer), 32 px images, 16-d
embeddings, two layers: every model in a few hundred kilobytes, any objective of `ContrastiveConfig` on top.
`tests/` is on `sys.path` (pytest's rootdir imports), so tests do `from tiny_models import tiny_model, batch`.
"""

from __future__ import annotations

import torch
from transformers import BertConfig, CLIPTextConfig, CLIPVisionConfig, SwinConfig, ViTConfig

import hf_unified  # noqa: F401  (registers the Auto classes)
from hf_unified import MSCLIPConfig, MSCLIPModel, UniCLConfig, UniCLIPConfig, UniCLIPModel, UniCLModel
from hf_unified.configuration_contrastive import AUGMENTATION_PARAM_DIM, IDENTITY_PARAMS

VOCAB, BOS, EOS = 600, 598, 599
IMAGE_SIZE = 32
CLASSES = {
    "unicl": (UniCLConfig, UniCLModel),
    "uniclip": (UniCLIPConfig, UniCLIPModel),
    "msclip": (MSCLIPConfig, MSCLIPModel),
}


def tiny_vision(kind: str = "clip"):
    common = dict(num_hidden_layers=2, num_attention_heads=2, image_size=IMAGE_SIZE, num_channels=3)
    if kind == "clip":
        return CLIPVisionConfig(hidden_size=32, intermediate_size=64, patch_size=16, **common)
    if kind == "vit":
        return ViTConfig(hidden_size=32, intermediate_size=64, patch_size=16, **common)
    if kind == "swin":
        return SwinConfig(
            image_size=IMAGE_SIZE, patch_size=4, embed_dim=8, depths=[1, 1], num_heads=[1, 2], window_size=4
        )
    raise ValueError(kind)


def tiny_text(kind: str = "clip"):
    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, vocab_size=VOCAB)
    if kind == "clip":
        return CLIPTextConfig(
            max_position_embeddings=32, bos_token_id=BOS, eos_token_id=EOS, pad_token_id=EOS, **common
        )
    if kind == "bert":
        return BertConfig(max_position_embeddings=32, pad_token_id=0, **common)
    raise ValueError(kind)


MSCLIP_TINY = dict(
    vocab_size=VOCAB,
    max_position_embeddings=32,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    vision_num_attention_heads=2,
    text_num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=8,
    projection_dim=16,
    stem_channels=[4, 8, 16],
    stem_strides=[2, 2],
    parallel_channels=[4, 8],
    parallel_strides=[2, 2],
    parallel_t2b_kernels=[4, 2],
    parallel_lateral_layers=[1, 2],
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=0,
)


def tiny_config(model_type: str = "unicl", preset: str | None = None, **overrides):
    """A tiny config of `model_type` (`"unicl"`, `"uniclip"`, `"msclip"`); `preset` is an MS-CLIP sharing preset
    (default `"shared"`); `overrides` are any config fields (e.g. an objective from `OBJECTIVE_PRESETS`)."""
    config_class, _ = CLASSES[model_type]
    if model_type == "msclip":
        return MSCLIPConfig.from_preset(preset or "shared", **{**MSCLIP_TINY, **overrides})
    kwargs = dict(vision_config=tiny_vision(), text_config=tiny_text(), projection_dim=16, augmentation_hidden_size=8)
    return config_class(**{**kwargs, **overrides})


def tiny_model(model_type: str = "unicl", seed: int = 0, preset: str | None = None, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(model_type, preset, **overrides)
    return CLASSES[model_type][1](config).eval()


def text_batch(batch: int, seed: int = 0, length: int = 7) -> dict[str, torch.Tensor]:
    """Right-padded CLIP-style token ids (eos, then eos padding) of varying lengths."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(0, BOS, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    for row in range(batch):
        end = 2 + row % (length - 3)
        input_ids[row, end:] = EOS
        attention_mask[row, end + 1 :] = 0
    return {"input_ids": input_ids, "attention_mask": attention_mask}


def batch(batch_size: int, views: int = 0, seed: int = 0, labels: list[int] | None = None) -> dict[str, torch.Tensor]:
    """Model inputs for `batch_size` items: `(B, 3, 32, 32)` images (or `(B, views, 3, 32, 32)` with augmentation
    parameters when `views > 0`), texts, and `labels` when given."""
    generator = torch.Generator().manual_seed(seed + 1)
    inputs = text_batch(batch_size, seed)
    if views:
        inputs["pixel_values"] = torch.randn(batch_size, views, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
        identity = torch.tensor(IDENTITY_PARAMS).expand(batch_size, views, AUGMENTATION_PARAM_DIM)
        inputs["augmentation_params"] = identity + 0.3 * torch.rand(identity.shape, generator=generator)
    else:
        inputs["pixel_values"] = torch.randn(batch_size, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)
    if labels is not None:
        inputs["labels"] = torch.tensor(labels)
    return inputs
