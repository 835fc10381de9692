"""Tiny models the Hub tests share (no tests here): CLIP towers of width 32 over the fixtures' 600-id tokenizer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPVisionConfig

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4, image_size=32)
TINY_TEXT = dict(
    vocab_size=600,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=1,
    num_attention_heads=4,
    bos_token_id=598,
    eos_token_id=599,
    pad_token_id=599,
)


def tiny_towers(patch_size: int = 8) -> dict:
    """`vision_config` / `text_config` of a tiny CLIP-tower dual encoder."""
    return {
        "vision_config": CLIPVisionConfig(**TINY_VISION, patch_size=patch_size),
        "text_config": CLIPTextConfig(**TINY_TEXT),
    }


def save_tiny_unicl(folder: Path, tokenizer, seed: int = 0):
    """Saves a tiny UniCL model and its processor to `folder`; returns `(model, processor)`."""
    from hf_unified import UniCLConfig, UniCLModel, UniCLProcessor
    from hf_unified.processing_unicl import unicl_image_processor

    torch.manual_seed(seed)
    model = UniCLModel(UniCLConfig(**tiny_towers(), projection_dim=16)).eval()
    processor = UniCLProcessor(unicl_image_processor(32), tokenizer)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return model, processor
