"""UniCL model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig
from transformers.configuration_utils import SubConfigSpec

from .configuration_contrastive import TowerDualEncoderConfig

# The released UniCL models (configs/unicl_swin_tiny.yaml): Swin-T image encoder, pooled by its final LayerNorm and
# an average over tokens (= transformers' SwinModel pooler_output).
UNICL_SWIN_TINY = {
    "image_size": 224,
    "patch_size": 4,
    "embed_dim": 96,
    "depths": [2, 2, 6, 2],
    "num_heads": [3, 6, 12, 24],
    "window_size": 7,
    "mlp_ratio": 4.0,
    "qkv_bias": True,
    "hidden_act": "gelu",
    "drop_path_rate": 0.2,
    "layer_norm_eps": 1e-5,
}

# ... and a CLIP-style causal text transformer trained from scratch: 12 layers, width 512, QuickGELU, TF-style
# LayerNorm with eps 1e-12 (not CLIP's 1e-5), 77 positions, the CLIP BPE vocabulary with <|endoftext|> = 49407.
UNICL_TEXT_TRANSFORMER = {
    "vocab_size": 49408,
    "hidden_size": 512,
    "intermediate_size": 2048,
    "num_hidden_layers": 12,
    "num_attention_heads": 8,
    "max_position_embeddings": 77,
    "hidden_act": "quick_gelu",
    "layer_norm_eps": 1e-12,
    "bos_token_id": 49406,
    "eos_token_id": 49407,
    "pad_token_id": 49407,
}


@strict
class UniCLConfig(TowerDualEncoderConfig):
    r"""Configuration of a [`UniCLModel`]: an image tower and a text tower, each any transformers model, with linear
    projections into one space, trained with UniCL's objective (items that share a label are positives).

    `UniCLConfig()` is the released UniCL architecture (Swin-T + 12-layer text transformer, 512-d embeddings). Every
    field of [`TowerDualEncoderConfig`] and [`ContrastiveConfig`] applies; the defaults that differ here:

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*):
            Defaults to UniCL's Swin-T (pooled by its final LayerNorm + average: `vision_pooling="pooler"`).
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Defaults to UniCL's 12-layer causal text transformer (pooled at the first end-of-text token).
        logit_scale_init_value (`float`, defaults to 1.0):
            UniCL initialises the log temperature to 1.0 (CLIP: ln(1/0.07) = 2.6592).
        use_labels (`bool`, defaults to `True`):
            Items that share a class label are positives of each other (UniCL's target matrix); without labels
            (or with every label `-1`) the loss is CLIP's.
    """

    model_type = "unicl"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="swin", init_kwargs=UNICL_SWIN_TINY),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_text_model", init_kwargs=UNICL_TEXT_TRANSFORMER
        ),
    }

    logit_scale_init_value: float | list[float] = 1.0
    use_labels: bool = True


__all__ = ["UniCLConfig"]
