"""The configuration every model of this package shares: the contrastive objective and the heads.

The three papers each unify one thing: UniCL the label space (positives from labels), UniCLIP the domains (image
views and texts in one space, augmentation-aware embeddings, a domain-dependent similarity, MP-NCE), MS-CLIP the
parameters (one shared transformer). Here the first two are orthogonal fields of [`ContrastiveConfig`], so that any
model (any two transformers towers in `UniCLConfig` / `UniCLIPConfig`, or MS-CLIP's shared stack in
`MSCLIPConfig`) trains with any point of the objective. CLIP, UniCL, UniCLIP and SigLIP are named points
(`OBJECTIVE_PRESETS`); `UniCLConfig()` and `UniCLIPConfig()` default to their own.
"""

from __future__ import annotations

import math

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig

from .config_checks import check_finite, check_float
from .losses import DOMAIN_PAIRS, IMAGE_TEXT, MULTI_POSITIVE_VARIANTS, intra_domain_flags
from .patch_dropout import check_patch_dropout
from .towers import check_dual_encoder_fields, check_tower_dicts

# The augmentation parameter vector each image view carries (its layout is documented, and produced, by
# `hf_unified.training.data.augmentation.MultiViewAugmentation`); the model only needs its width and identity point.
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
# How the augmentation code enters the image head (`ContrastiveConfig.augmentation_fusion`).
# UniCLIP's initial log-scales per domain pair: SimCLR's and SLIP's temperature 0.1 for image-image (views of one
# image are near-duplicates: a low start scale leaves room to learn), CLIP's 0.07 for the pairs with text.
UNICLIP_LOGIT_SCALE_INIT = [math.log(1 / 0.1), math.log(1 / 0.07), math.log(1 / 0.07)]
FUSION_MODES = ("add", "concat", "mlp")

# Named points of the objective. Each lists every objective field, so applying one gives that method's objective
# whatever the config's class defaults are.
OBJECTIVE_PRESETS: dict[str, dict] = {
    # Every item its own positive, image-text pairs only, one temperature.
    "clip": {
        "use_labels": False,
        "num_views": 1,
        "augmentation_aware": False,
        "intra_domain_pairs": False,
        "domain_similarity": False,
        "similarity_offset": False,
        "contrastive_loss": "supcon",
        "mask_duplicate_texts": False,
    },
    # CLIP with UniCL's target matrix: items that share a label are positives.
    "unicl": {
        "use_labels": True,
        "num_views": 1,
        "augmentation_aware": False,
        "intra_domain_pairs": False,
        "domain_similarity": False,
        "similarity_offset": False,
        "contrastive_loss": "supcon",
        "mask_duplicate_texts": False,
    },
    # Two augmentation-aware views per image and the text in one space, per-domain-pair similarity, MP-NCE.
    "uniclip": {
        "use_labels": False,
        "num_views": 2,
        "augmentation_aware": True,
        "intra_domain_pairs": True,
        "domain_similarity": True,
        "similarity_offset": False,
        "contrastive_loss": "mp_nce",
        "mask_duplicate_texts": True,
        "logit_scale_init_value": UNICLIP_LOGIT_SCALE_INIT,
    },
    # UniCLIP whose positives come from labels: views and texts of the same class are positives.
    "uniclip+unicl": {
        "use_labels": True,
        "num_views": 2,
        "augmentation_aware": True,
        "intra_domain_pairs": True,
        "domain_similarity": True,
        "similarity_offset": False,
        "contrastive_loss": "mp_nce",
        "mask_duplicate_texts": True,
        "logit_scale_init_value": UNICLIP_LOGIT_SCALE_INIT,
    },
    # SigLIP: CLIP's pairs, each an independent binary term (sigmoid loss) of `t * (cos - o)` with one learnable
    # scale and offset (SigLIP's bias b = -t * o), initialised as SigLIP: t = 10, b = -10.
    "siglip": {
        "use_labels": False,
        "num_views": 1,
        "augmentation_aware": False,
        "intra_domain_pairs": False,
        "domain_similarity": False,
        "similarity_offset": True,
        "contrastive_loss": "sigmoid",
        "mask_duplicate_texts": False,
        "logit_scale_init_value": math.log(10.0),
        "logit_offset_init_value": 1.0,
    },
    # SigLIP with UniCL's target matrix: every same-label pair is a positive term.
    "siglip+unicl": {
        "use_labels": True,
        "num_views": 1,
        "augmentation_aware": False,
        "intra_domain_pairs": False,
        "domain_similarity": False,
        "similarity_offset": True,
        "contrastive_loss": "sigmoid",
        "mask_duplicate_texts": False,
        "logit_scale_init_value": math.log(10.0),
        "logit_offset_init_value": 1.0,
    },
}


def per_domain_pair(name: str, value: float | list[float]) -> list[float]:
    """One float for every domain pair, or one per pair in `DOMAIN_PAIRS` order, as a list of 3 floats."""
    if isinstance(value, (int, float)):
        return [float(value)] * len(DOMAIN_PAIRS)
    values = [float(v) for v in value]
    if len(values) != len(DOMAIN_PAIRS):
        raise ValueError(f"{name} must be one float or {len(DOMAIN_PAIRS)} floats {DOMAIN_PAIRS}, got {value}")
    return values


@strict
class ContrastiveConfig(PreTrainedConfig):
    r"""The fields every model of this package shares: the projection heads and the contrastive objective.

    Not used alone: [`UniCLConfig`], [`UniCLIPConfig`] and [`MSCLIPConfig`] add their towers. Each field is one
    orthogonal choice; `OBJECTIVE_PRESETS` names the methods' combinations ([`ContrastiveConfig.from_objective`]).

    Args:
        projection_dim (`int`, defaults to 512):
            Dimension of the shared embedding space.
        logit_scale_init_value (`float` or 3 floats, defaults to 2.6592):
            Initial log-scale of the similarity (logits are `exp(logit_scale) * cos`): ln(1/0.07) is CLIP's, 1.0 the
            UniCL and MS-CLIP releases'. One per domain pair (image-image, image-text, text-text) may be given:
            with `domain_similarity` each pair starts at its own; without, the one similarity is the image-text one
            and starts at that entry.
        use_labels (`bool`, defaults to `False`):
            Positives from labels (UniCL's target matrix): items that share a class label are positives of each
            other, also across views and texts. The trainer then feeds each item's label (`-1` for an image-text
            pair); labels given to a model with `False` are refused.
        num_views (`int`, defaults to 1):
            Image views per item in training (`pixel_values` of shape `(batch_size, num_views, channels, height,
            width)`); views of one item are positives of each other and of its text.
        augmentation_aware (`bool`, defaults to `False`):
            UniCLIP's augmentation-aware embedding: each view's augmentation parameters (`augmentation_params`) are
            encoded by a small MLP whose code conditions the image projection head; inference uses the identity
            parameters. The backbone never sees them.
        augmentation_param_dim (`int`, defaults to 11):
            Width `P` of an augmentation parameter vector; 11 is the layout of
            `hf_unified.training.data.augmentation.MultiViewAugmentation` (`AUGMENTATION_PARAM_NAMES`).
        identity_augmentation_params (`list[float]`, *optional*):
            The `P` parameters of an un-augmented image. Defaults to `IDENTITY_PARAMS`; must be given when
            `augmentation_param_dim` differs from that layout.
        augmentation_hidden_size (`int`, defaults to 256):
            Hidden width of the augmentation encoder (`Linear(P, h) -> GELU -> Linear(h, out)`).
        augmentation_fusion (`str`, defaults to `"add"`):
            How the code enters the image head. `"add"`: the code (as wide as the image feature) is added to the
            pooled feature before `visual_projection` (one Linear, no bias); `"concat"`: the code (width
            `augmentation_hidden_size`) is concatenated to it and the Linear projects both; `"mlp"`: concatenated
            the same way, and `visual_projection` is a 2-layer MLP, `Linear(W + code, W) -> GELU -> Linear(W,
            projection_dim)` with `W` the pooled image feature's width (hidden as wide as the feature, as SimCLR's
            projection head) and no bias on the last layer (as CLIP's projection), so that the head can undo
            what the augmentation did rather than shift the feature by a constant (e.g. colour jitter when captions
            name colours). `"mlp"` needs `augmentation_aware`; such a model is not a native `CLIPModel` export.
        intra_domain_pairs (`bool` or `str`, defaults to `False`):
            UniCLIP's universal space: image-image and text-text pairs are candidates too (so other items' views
            and texts are negatives), not only image-text pairs. `"image"` keeps the image-image pairs only,
            `"text"` the text-text pairs only (to measure what each brings).
        domain_similarity (`bool`, defaults to `False`):
            UniCLIP's domain-dependent similarity `s = exp(logit_scale[D]) * (cos - logit_offset[D])` with a
            learnable log-scale and offset per domain pair D. `False`: one log-scale, no offset.
        logit_offset_init_value (`float` or 3 floats, defaults to 0.0):
            Initial offset per domain pair (image-image, image-text, text-text) with `domain_similarity`; the one
            offset with `similarity_offset` alone (SigLIP's 1.0: b = -t; of 3 values, the image-text one).
        similarity_offset (`bool`, defaults to `False`):
            A learnable offset in the one similarity, `s = exp(logit_scale) * (cos - logit_offset)`: SigLIP's
            learnable bias `b = -exp(logit_scale) * logit_offset`, one scale and one offset. `domain_similarity`
            implies offsets (one per domain pair). A constant offset changes no ranking and no softmax: only the
            sigmoid loss, and the logits the model returns, depend on it.
        contrastive_loss (`str`, defaults to `"supcon"`):
            How an anchor's positives are scored (`losses.multi_positive_loss`): `"supcon"` (SupCon's L_out; with
            labels this is UniCL's target-normalised cross-entropy), `"mp_nce"` (UniCLIP's MP-NCE: each positive
            against the negatives only), `"infonce"` or `"sigmoid"` (SigLIP's: every anchor-candidate pair one
            binary term, summed and divided by the number of anchors). With one positive per anchor (CLIP) the first
            three agree.
        mask_duplicate_texts (`bool`, defaults to `False`):
            Identical texts of different items are not used as each other's negatives (templated captions repeat).
        loss_chunk_size (`int`, *optional*):
            Anchor rows the loss scores at a time (`losses.contrastive_objective`'s `chunk_size`): the same value and
            gradients in memory `O(loss_chunk_size x global batch)` instead of `O(batch x global batch)`. None
            (default): automatic, dense while a side of the loss has at most 2^22 logits on a CPU (2^24 on an
            accelerator), in blocks above; `0`: always dense.
        initializer_range (`float`, defaults to 0.02):
            Standard deviation of the head initialisation.
        patch_dropout (`float`, defaults to 0.0):
            FLIP's patch dropout: in training mode the image encoder leaves out this share of each image's patch
            tokens (the class token always kept, positions added before), in `[0, 1)`; in eval mode nothing is
            dropped. The number kept is `patch_dropout.num_kept_patches`. Towers without a class token and
            position-embedded patches (Swin) refuse values above 0.
    """

    projection_dim: int = 512
    logit_scale_init_value: float | list[float] = 2.6592
    use_labels: bool = False
    num_views: int = 1
    augmentation_aware: bool = False
    augmentation_param_dim: int = AUGMENTATION_PARAM_DIM
    identity_augmentation_params: list[float] | None = None
    augmentation_hidden_size: int = 256
    augmentation_fusion: str = "add"
    intra_domain_pairs: bool | str = False
    domain_similarity: bool = False
    logit_offset_init_value: float | list[float] = 0.0
    similarity_offset: bool = False
    contrastive_loss: str = "supcon"
    mask_duplicate_texts: bool = False
    loss_chunk_size: int | None = None
    initializer_range: float = 0.02
    patch_dropout: float = 0.0

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        for name in ("projection_dim", "num_views", "augmentation_param_dim", "augmentation_hidden_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.augmentation_fusion not in FUSION_MODES:
            raise ValueError(f"augmentation_fusion must be one of {FUSION_MODES}, got {self.augmentation_fusion!r}")
        intra_domain_flags(self.intra_domain_pairs)  # True, False, "image" or "text": a clear error otherwise
        if self.contrastive_loss not in MULTI_POSITIVE_VARIANTS:
            raise ValueError(
                f"contrastive_loss must be one of {MULTI_POSITIVE_VARIANTS}, got {self.contrastive_loss!r}"
            )
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
        if self.loss_chunk_size is not None and (isinstance(self.loss_chunk_size, bool) or self.loss_chunk_size < 0):
            raise ValueError(
                f"loss_chunk_size must be None (automatic), 0 (dense) or a positive number of anchor rows; got "
                f"{self.loss_chunk_size!r}"
            )
        # One value per domain pair, or one for all; without domain similarity the one similarity is the image-text
        # one, so a per-pair value (UniCLIPConfig's default under CLIP's objective) gives its image-text entry.
        per_domain_pair("logit_scale_init_value", self.logit_scale_init_value)
        per_domain_pair("logit_offset_init_value", self.logit_offset_init_value)
        self.check_values()

    def check_values(self) -> None:
        """Refuses an absurd value in one line before anything is allocated (`config_checks`). Runs when the config is
        built (so also when a folder's `config.json` is loaded) and again when a model is built from it, which
        catches sizes changed in place since; subclasses add their encoders' checks."""
        for name in ("logit_scale_init_value", "logit_offset_init_value", "identity_augmentation_params"):
            check_finite(name, getattr(self, name))
        check_float("initializer_range", self.initializer_range, 0.0)
        check_patch_dropout(self.patch_dropout)
        if self.augmentation_fusion == "mlp" and not self.augmentation_aware:
            raise ValueError(
                "augmentation_fusion='mlp' is the augmentation-aware image head (the augmentation code concatenated "
                "to the image feature, into a 2-layer MLP projection) and needs augmentation_aware=True, got "
                "augmentation_aware=False: set augmentation_aware=True (e.g. objective 'uniclip'), or leave "
                "augmentation_fusion at 'add' (unused without augmentation_aware)"
            )

    @classmethod
    def from_objective(cls, name: str, **overrides) -> ContrastiveConfig:
        """This config class with a named objective (`"clip"`, `"unicl"`, `"uniclip"`, `"uniclip+unicl"`,
        `"siglip"`, `"siglip+unicl"`); any field in `overrides` wins over the preset."""
        if name not in OBJECTIVE_PRESETS:
            raise ValueError(f"unknown objective {name!r}; choose one of {sorted(OBJECTIVE_PRESETS)}")
        return cls(**{**OBJECTIVE_PRESETS[name], **overrides})

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, **kwargs):
        """`PreTrainedConfig.from_pretrained`, remembering the pipeline task that loads it as `_pipeline_task`
        (never saved): the dual encoder's `from_pretrained` reads it to give the feature-extraction pipelines its
        single-modality models. Transformers hands the task (`_from_pipeline`) to a remote-code config class here
        and to neither the model nor a registered config class."""
        loaded = super().from_pretrained(pretrained_model_name_or_path, **kwargs)
        config = loaded[0] if isinstance(loaded, tuple) else loaded
        config._pipeline_task = kwargs.get("_from_pipeline")
        return loaded

    def to_dict(self) -> dict:
        output = super().to_dict()
        output.pop("_pipeline_task", None)
        return output

    def logit_scale_init(self) -> list[float]:
        """Initial log-scales: 3 (image-image, image-text, text-text) with domain similarity, else 1 (the
        image-text pair's)."""
        values = per_domain_pair("logit_scale_init_value", self.logit_scale_init_value)
        return values if self.domain_similarity else [values[IMAGE_TEXT]]

    def logit_offset_init(self) -> list[float] | None:
        """Initial offsets: 3 (image-image, image-text, text-text) with domain similarity, 1 (the image-text
        pair's) with `similarity_offset` alone, None without an offset."""
        values = per_domain_pair("logit_offset_init_value", self.logit_offset_init_value)
        if self.domain_similarity:
            return values
        return [values[IMAGE_TEXT]] if self.similarity_offset else None


@strict
class TowerDualEncoderConfig(ContrastiveConfig):
    r"""A [`ContrastiveConfig`] whose encoders are any transformers image tower and text tower, each pooled to one
    vector (UniCL's and UniCLIP's architecture; subclasses set the defaults).

    Args:
        vision_config (`PreTrainedConfig` or `dict`, *optional*):
            Image tower: any transformers vision config (`CLIPVisionConfig`, `ViTConfig`, `SwinConfig`, ...) or a dict
            with its `model_type`.
        text_config (`PreTrainedConfig` or `dict`, *optional*):
            Text tower: any transformers text config (`CLIPTextConfig`, `BertConfig`, `RobertaConfig`, ...) or a dict
            with its `model_type`.
        text_pooling (`str`, defaults to `"eos"`):
            How the text tower's tokens become one vector: `"eos"` (first end-of-text token, CLIP-style causal
            towers), `"cls"` (first token, BERT-style) or `"mean"` (mean over attended tokens).
        vision_pooling (`str`, defaults to `"pooler"`):
            How the image tower's output becomes one vector: `"pooler"` (the tower's own `pooler_output`: CLIP's
            normed CLS token, Swin's normed average), `"cls"` or `"mean"`.
        **kwargs: the [`ContrastiveConfig`] fields (projection, objective).
    """

    vision_config: PreTrainedConfig | dict | None = None
    text_config: PreTrainedConfig | dict | None = None
    text_pooling: str = "eos"
    vision_pooling: str = "pooler"

    def __post_init__(self, **kwargs):
        check_tower_dicts(self)
        super().__post_init__(**kwargs)

    def check_values(self) -> None:
        super().check_values()
        check_dual_encoder_fields(self)


__all__ = [
    "AUGMENTATION_PARAM_DIM",
    "AUGMENTATION_PARAM_NAMES",
    "FUSION_MODES",
    "IDENTITY_PARAMS",
    "OBJECTIVE_PRESETS",
    "ContrastiveConfig",
    "TowerDualEncoderConfig",
    "per_domain_pair",
]
