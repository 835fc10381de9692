"""UniCLIP model configuration."""

import dataclasses

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_contrastive import (  # noqa: F401 (re-exported: the layout of the parameter vector)
    AUGMENTATION_PARAM_DIM,
    AUGMENTATION_PARAM_NAMES,
    IDENTITY_PARAMS,
    UNICLIP_LOGIT_SCALE_INIT,
    TowerDualEncoderConfig,
)

# The only comparison that names UniCLIP's architecture (ALIP, arXiv 2308.08428, Table 1) says "UniCLIP-ViT-B/32":
# CLIP's ViT-B/32 image tower (768 wide, 12 layers, 12 heads, 32-pixel patches, 224-pixel images, QuickGELU).
UNICLIP_VIT_B_32 = {
    "hidden_size": 768,
    "intermediate_size": 3072,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "image_size": 224,
    "patch_size": 32,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
}

# A CLIP-style causal text transformer (12 layers, width 512, 8 heads, 77 positions, CLIP BPE vocabulary, padded
# with <|endoftext|> = 49407). Unconfirmed for UniCLIP; it is the CLIP-benchmark protocol's text tower.
UNICLIP_TEXT_TRANSFORMER = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-5,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


@strict
class UniCLIPConfig(TowerDualEncoderConfig):
    r"""Configuration of a [`UniCLIPModel`] (Lee et al., NeurIPS 2022): image and text towers (any transformers
    models), an augmentation encoder that conditions the image projection, and a domain-dependent similarity used by
    one multi-positive contrastive loss over image views and texts in one space.

    `UniCLIPConfig()` is the ViT-B/32 + 12-layer text transformer, 512-d setting, with UniCLIP's objective
    (`OBJECTIVE_PRESETS["uniclip"]`). Every field of [`TowerDualEncoderConfig`] and [`ContrastiveConfig`] applies.
    Points the paper's text could not confirm (marked [U]) are configurable; the defaults are this package's reading:

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*): defaults to CLIP ViT-B/32.
        text_config (`PreTrainedConfig` or `dict`, *optional*): defaults to a CLIP-style 12-layer, 512-wide causal
            transformer.
        num_views (`int`, defaults to 2): augmented views per image in training.
        augmentation_aware (`bool`, defaults to `True`) [U]: the augmentation-aware image head.
        augmentation_fusion (`str`, defaults to `"add"`) [U]: `"add"`, `"concat"` or `"mlp"` (the code
            concatenated to the image feature, into a 2-layer MLP projection; not a native `CLIPModel` export):
            see [`ContrastiveConfig`].
        intra_domain_pairs (`bool` or `str`, defaults to `True`): image-image and text-text pairs in the loss
            (`"image"` / `"text"`: one of the two only).
        domain_similarity (`bool`, defaults to `True`) [U]: a learnable log-scale and offset per domain pair.
        logit_scale_init_value (`float` or 3 floats, defaults to `[2.3026, 2.6593, 2.6593]`) [U]: SimCLR's and
            SLIP's temperature 0.1 for image-image, CLIP's 0.07 for image-text and text-text.
        logit_offset_init_value (`float` or 3 floats, defaults to 0.0) [U].
        contrastive_loss (`str`, defaults to `"mp_nce"`): MP-NCE (each positive against the negatives only).
        mask_duplicate_texts (`bool`, defaults to `True`): identical captions are not each other's negatives.
    """

    model_type = "uniclip"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_vision_model", init_kwargs=UNICLIP_VIT_B_32
        ),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_text_model", init_kwargs=UNICLIP_TEXT_TRANSFORMER
        ),
    }

    num_views: int = 2
    augmentation_aware: bool = True
    intra_domain_pairs: bool | str = True
    domain_similarity: bool = True
    contrastive_loss: str = "mp_nce"
    mask_duplicate_texts: bool = True
    logit_scale_init_value: float | list[float] = dataclasses.field(
        default_factory=lambda: list(UNICLIP_LOGIT_SCALE_INIT)
    )


__all__ = ["AUGMENTATION_PARAM_DIM", "AUGMENTATION_PARAM_NAMES", "IDENTITY_PARAMS", "UniCLIPConfig"]
