"""UniCL model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .towers import check_dual_encoder_fields, check_tower_dicts

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
class UniCLConfig(PreTrainedConfig):
    r"""Configuration of a [`UniCLModel`]: an image tower and a text tower, each any transformers model, with linear
    projections into one space.

    `UniCLConfig()` is the released UniCL architecture (Swin-T + 12-layer text transformer, 512-d embeddings).

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*):
            Image tower: any transformers vision config (`CLIPVisionConfig`, `ViTConfig`, `SwinConfig`, ...) or a dict
            with its `model_type`. Defaults to UniCL's Swin-T.
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Text tower: any transformers text config (`CLIPTextConfig`, `BertConfig`, `RobertaConfig`, ...) or a dict
            with its `model_type`. Defaults to UniCL's 12-layer causal text transformer.
        projection_dim (`int`, defaults to 512):
            Dimension of the shared embedding space.
        logit_scale_init_value (`float`, defaults to 1.0):
            Initial value of the log temperature `logit_scale` (logits are scaled by `exp(logit_scale)`). UniCL
            initialises it to 1.0; CLIP to ln(1/0.07) = 2.6592.
        text_pooling (`str`, defaults to `"eos"`):
            How the text tower's tokens become one vector: `"eos"` (first end-of-text token, CLIP-style causal
            towers), `"cls"` (first token, BERT-style) or `"mean"` (mean over attended tokens).
        vision_pooling (`str`, defaults to `"pooler"`):
            How the image tower's output becomes one vector: `"pooler"` (the tower's own `pooler_output`: CLIP's
            normed CLS token, Swin's normed average), `"cls"` or `"mean"`.
        use_labels (`bool`, defaults to `True`):
            Whether items that share a class label are positives of each other (UniCL's target matrix). The trainer
            then feeds each item's label (`-1` for an image-text pair); with `False` labels are refused and the loss
            is CLIP's.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the projection initialisation.
    """

    model_type = "unicl"
    sub_configs_defaults = {
        "vision_config": SubConfigSpec(config_class=AutoConfig, model_type="swin", init_kwargs=UNICL_SWIN_TINY),
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="clip_text_model", init_kwargs=UNICL_TEXT_TRANSFORMER
        ),
    }

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    logit_scale_init_value: float = 1.0
    text_pooling: str = "eos"
    vision_pooling: str = "pooler"
    use_labels: bool = True
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        check_tower_dicts(self)
        super().__post_init__(**kwargs)
        check_dual_encoder_fields(self)


__all__ = ["UniCLConfig"]
