"""UniCLIP model configuration."""

from huggingface_hub.dataclasses import strict
from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

from .towers import check_dual_encoder_fields, check_tower_dicts

# The augmentation parameter vector each image view carries (its layout is documented and produced by
# `hf_unified.training.augmentation.MultiViewAugmentation`); the model only needs its width and identity point.
AUGMENTATION_PARAM_NAMES: tuple[str, ...] = (
    "crop_left",
    "crop_top",
    "crop_width",
    "crop_height",
    "flip",
    "brightness",
    "contrast",
    "saturation",
    "hue",
    "grayscale",
    "blur_sigma",
)
AUGMENTATION_PARAM_DIM = len(AUGMENTATION_PARAM_NAMES)
# The parameters of an un-augmented image: the whole image, no flip, unit jitter factors, colour, no blur.
IDENTITY_PARAMS: tuple[float, ...] = (0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)

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

FUSION_MODES = ("add", "concat")
CONTRASTIVE_LOSSES = ("mp_nce", "supcon", "infonce")
# Index of each unordered domain pair in `logit_scale` / `logit_offset` (image = 0, text = 1, index = sum).
DOMAIN_PAIRS = ("image-image", "image-text", "text-text")


def _per_domain_pair(name: str, value) -> list[float]:
    if isinstance(value, (int, float)):
        return [float(value)] * len(DOMAIN_PAIRS)
    values = [float(v) for v in value]
    if len(values) != len(DOMAIN_PAIRS):
        raise ValueError(f"{name} must be one float or {len(DOMAIN_PAIRS)} floats {DOMAIN_PAIRS}, got {value}")
    return values


@strict
class UniCLIPConfig(PreTrainedConfig):
    r"""Configuration of a [`UniCLIPModel`] (Lee et al., NeurIPS 2022): image and text towers (any transformers
    models), an augmentation encoder that conditions the image projection, and a domain-dependent similarity used by
    one multi-positive contrastive loss over image views and texts.

    `UniCLIPConfig()` is the ViT-B/32 + 12-layer text transformer, 512-d setting. Points the paper's text could not
    confirm (marked [U]) are configurable; the defaults are this package's reading.

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*):
            Image tower: any transformers vision config or a dict with its `model_type`. Defaults to CLIP ViT-B/32.
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Text tower: any transformers text config or a dict with its `model_type`. Defaults to a CLIP-style
            12-layer, 512-wide causal transformer.
        projection_dim (`int`, defaults to 512):
            Dimension of the shared embedding space.
        num_views (`int`, defaults to 2):
            Augmented views per image in training (`pixel_values` of shape `[B, num_views, C, H, W]`).
        augmentation_param_dim (`int`, defaults to 11):
            Width `P` of an augmentation parameter vector; 11 is the layout of `augmentation.MultiViewAugmentation`.
        identity_augmentation_params (`list[float]`, *optional*):
            The `P` parameters of an un-augmented image, used at inference. Defaults to `augmentation.IDENTITY_PARAMS`;
            must be given when `augmentation_param_dim` differs from that layout.
        augmentation_hidden_size (`int`, defaults to 256):
            Hidden width of the augmentation encoder (`Linear(P, h) -> GELU -> Linear(h, out)`).
        augmentation_fusion (`str`, defaults to `"add"`) [U]:
            How the augmentation code enters the image projection head. `"add"`: the code (width = image tower
            hidden size) is added to the pooled image feature before `visual_projection`. `"concat"`: the code
            (width `augmentation_hidden_size`) is concatenated to it and `visual_projection` takes both.
        domain_similarity (`bool`, defaults to `True`) [U]:
            Domain-dependent similarity `s = exp(logit_scale[D]) * (cos - logit_offset[D])` with a learnable
            log-scale and offset per domain pair D (image-image, image-text, text-text). `False`: one shared
            log-scale and no offset.
        logit_scale_init_value (`float` or 3 floats, defaults to 2.6592) [U]:
            Initial log-scale (ln(1/0.07), CLIP's temperature 0.07) for every domain pair, or one per pair in the
            order image-image, image-text, text-text. With `domain_similarity=False` a single float.
        logit_offset_init_value (`float` or 3 floats, defaults to 0.0) [U]:
            Initial similarity offset per domain pair (ignored without `domain_similarity`).
        contrastive_loss (`str`, defaults to `"mp_nce"`):
            `"mp_nce"` (each positive against the negatives only), `"supcon"` (other positives stay in the
            denominator) or `"infonce"` (each positive against all candidates), for ablations.
        text_pooling (`str`, defaults to `"eos"`): `"eos"`, `"cls"` or `"mean"`, as in [`UniCLConfig`].
        vision_pooling (`str`, defaults to `"pooler"`): `"pooler"`, `"cls"` or `"mean"`, as in [`UniCLConfig`].
        initializer_range (`float`, defaults to 0.02): standard deviation of the head initialisation.
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

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    projection_dim: int = 512
    num_views: int = 2
    augmentation_param_dim: int = AUGMENTATION_PARAM_DIM
    identity_augmentation_params: list[float] | None = None
    augmentation_hidden_size: int = 256
    augmentation_fusion: str = "add"
    domain_similarity: bool = True
    logit_scale_init_value: float | list[float] = 2.6592
    logit_offset_init_value: float | list[float] = 0.0
    contrastive_loss: str = "mp_nce"
    text_pooling: str = "eos"
    vision_pooling: str = "pooler"
    initializer_range: float = 0.02

    def __post_init__(self, **kwargs):
        check_tower_dicts(self)
        super().__post_init__(**kwargs)
        check_dual_encoder_fields(self)
        for name in ("num_views", "augmentation_param_dim", "augmentation_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.augmentation_fusion not in FUSION_MODES:
            raise ValueError(f"augmentation_fusion must be one of {FUSION_MODES}, got {self.augmentation_fusion!r}")
        if self.contrastive_loss not in CONTRASTIVE_LOSSES:
            raise ValueError(f"contrastive_loss must be one of {CONTRASTIVE_LOSSES}, got {self.contrastive_loss!r}")
        if self.identity_augmentation_params is None:
            if self.augmentation_param_dim != AUGMENTATION_PARAM_DIM:
                raise ValueError(
                    f"augmentation_param_dim={self.augmentation_param_dim} differs from the built-in layout "
                    f"({AUGMENTATION_PARAM_DIM} slots): give identity_augmentation_params for your layout"
                )
            self.identity_augmentation_params = list(IDENTITY_PARAMS)
        self.identity_augmentation_params = [float(v) for v in self.identity_augmentation_params]
        if len(self.identity_augmentation_params) != self.augmentation_param_dim:
            raise ValueError(
                f"identity_augmentation_params has {len(self.identity_augmentation_params)} values, "
                f"augmentation_param_dim is {self.augmentation_param_dim}"
            )
        if self.domain_similarity:
            _per_domain_pair("logit_scale_init_value", self.logit_scale_init_value)
            _per_domain_pair("logit_offset_init_value", self.logit_offset_init_value)
        elif not isinstance(self.logit_scale_init_value, (int, float)):
            raise ValueError("with domain_similarity=False, logit_scale_init_value must be a single float")

    def logit_scale_init(self) -> list[float]:
        """Initial log-scales: 3 (image-image, image-text, text-text) with domain similarity, else 1."""
        if self.domain_similarity:
            return _per_domain_pair("logit_scale_init_value", self.logit_scale_init_value)
        return [float(self.logit_scale_init_value)]

    def logit_offset_init(self) -> list[float]:
        """Initial offsets per domain pair (image-image, image-text, text-text)."""
        return _per_domain_pair("logit_offset_init_value", self.logit_offset_init_value)


__all__ = ["UniCLIPConfig"]
