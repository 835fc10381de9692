"""Starting from pretrained weights: a CLIP checkpoint, or any pretrained vision and text backbones.

[`PretrainedTowersMixin`] gives the tower dual encoders (UniCL, UniCLIP) two class methods, as transformers'
`VisionTextDualEncoderModel.from_vision_text_pretrained` does:

- `from_clip(clip_name_or_path, **config_kwargs)`: towers, projections and temperature of a transformers
  `CLIPModel` (a local folder or a Hub id), with the method's objective on top. Whatever the method adds starts
  neutral, so that before any training image and text embeddings and logits equal the CLIP model's: the
  augmentation encoder's last layer starts at zero (its code is 0 for every view), the image-text offset at 0 and
  every domain pair's scale at CLIP's. With `augmentation_fusion="concat"` CLIP's projection fills the image
  feature's columns of `visual_projection`, the code's columns start fresh. One exception, said in a warning: the
  2-layer MLP image head of `augmentation_fusion="mlp"` starts fresh (CLIP's projection is one Linear, which no
  GELU MLP reproduces), so image embeddings differ from CLIP's until it is trained; everything else is CLIP's.
- `from_vision_text_pretrained(vision_name_or_path, text_name_or_path, **kwargs)`: any transformers vision and text
  models (ViT, Swin, ConvNeXt, CLIP's towers, ... / BERT, RoBERTa, CLIP's text tower, ...), pooled by their model
  type unless told otherwise, with fresh projections.

Also here: reading checkpoints saved before the similarity scale became a 1-element tensor.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, PreTrainedModel
from transformers.utils import logging

from .towers import tower_kwargs

logger = logging.get_logger(__name__)

# How each tower type is pooled when `from_vision_text_pretrained` is not told (`vision_pooling` / `text_pooling`):
# the representation the backbone was trained to produce. Unlisted vision towers use their `pooler_output`
# (Swin, ConvNeXt, DINOv2, ... normed average or CLS), unlisted text towers the mean over tokens (BERT-style
# encoders, whose [CLS] is not trained as a sentence embedding without a fine-tuned head).
VISION_POOLING_BY_MODEL_TYPE = {"vit": "cls", "deit": "cls", "beit": "mean"}
TEXT_POOLING_BY_MODEL_TYPE = {"clip_text_model": "eos", "siglip_text_model": "eos", "xclip_text_model": "eos"}


def default_pooling(role: str, model_type: str) -> str:
    """The pooling of a pretrained tower of `model_type` for `role` (`"vision"` or `"text"`)."""
    if role == "vision":
        return VISION_POOLING_BY_MODEL_TYPE.get(model_type, "pooler")
    return TEXT_POOLING_BY_MODEL_TYPE.get(model_type, "mean")


def load_pretrained_tower(name_or_path: str, role: str, uses_pooler: bool = True, **kwargs) -> PreTrainedModel:
    """The `role` (`"vision"` / `"text"`) tower of a checkpoint: the whole model of a single-tower checkpoint, the
    matching sub-model of a two-tower one (a CLIP folder gives its `CLIPVisionModel` / `CLIPTextModel`).

    Keyword arguments go to `from_pretrained` (`revision`, `cache_dir`, `torch_dtype`, ...).
    """
    config = AutoConfig.from_pretrained(name_or_path, **kwargs)
    tower_config = getattr(config, f"{role}_config", None) or config
    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    try:
        tower_class = MODEL_MAPPING[type(tower_config)]
    except KeyError:
        raise ValueError(
            f"{name_or_path}: transformers has no model class for a {role} tower of type {tower_config.model_type!r}"
        ) from None
    return tower_class.from_pretrained(
        name_or_path, config=tower_config, **tower_kwargs(tower_config, uses_pooler), **kwargs
    )


def _tower_model_type(name_or_path: str, role: str, loading_kwargs: dict) -> str:
    config = AutoConfig.from_pretrained(name_or_path, **loading_kwargs)
    return (getattr(config, f"{role}_config", None) or config).model_type


class PretrainedTowersMixin:
    """`from_clip` and `from_vision_text_pretrained` for a model class whose config has `vision_config` /
    `text_config` towers ([`TowerDualEncoderConfig`])."""

    @classmethod
    def from_vision_text_pretrained(
        cls, vision_name_or_path: str, text_name_or_path: str, *, loading_kwargs: dict | None = None, **kwargs
    ):
        r"""A model whose towers are loaded from two pretrained checkpoints; projections and temperatures are new.

        Args:
            vision_name_or_path (`str`): folder or Hub id of any transformers vision model (or a two-tower model,
                whose vision tower is taken).
            text_name_or_path (`str`): folder or Hub id of any transformers text model (or a two-tower model).
            loading_kwargs (`dict`, *optional*): passed to both towers' `from_pretrained` (`revision`, ...).
            **kwargs: fields of the model's config (`projection_dim`, the objective, ...); `vision_pooling` and
                `text_pooling` default to the towers' model types (`default_pooling`).

        Build the matching processor with `ProcessorClass.from_pretrained_parts(vision_name_or_path,
        text_name_or_path)`.
        """
        loading_kwargs = loading_kwargs or {}
        vision_type = _tower_model_type(vision_name_or_path, "vision", loading_kwargs)
        text_type = _tower_model_type(text_name_or_path, "text", loading_kwargs)
        kwargs.setdefault("vision_pooling", default_pooling("vision", vision_type))
        kwargs.setdefault("text_pooling", default_pooling("text", text_type))
        uses_pooler = kwargs["vision_pooling"] == "pooler"
        vision = load_pretrained_tower(vision_name_or_path, "vision", uses_pooler=uses_pooler, **loading_kwargs)
        text = load_pretrained_tower(text_name_or_path, "text", uses_pooler=False, **loading_kwargs)
        model = cls(cls.config_class(vision_config=vision.config, text_config=text.config, **kwargs))
        model.vision_model.load_state_dict(vision.state_dict())
        model.text_model.load_state_dict(text.state_dict())
        return model

    @classmethod
    def from_clip(cls, clip_name_or_path: str, *, loading_kwargs: dict | None = None, **kwargs):
        r"""This method's model initialised exactly from a transformers `CLIPModel` checkpoint.

        Towers, projections and the temperature are CLIP's, and whatever the method adds starts neutral, so that
        before any training the embeddings and logits equal the CLIP model's (at identity augmentation). Except
        with `augmentation_fusion="mlp"`: its 2-layer MLP image head starts fresh (a warning says so), since no
        such MLP computes CLIP's linear projection; the text embeddings are still CLIP's.

        Args:
            clip_name_or_path (`str`): a `CLIPModel` folder or Hub id (e.g. `"openai/clip-vit-base-patch32"`).
            loading_kwargs (`dict`, *optional*): passed to `from_pretrained` (`revision`, `torch_dtype`, ...).
            **kwargs: other fields of the model's config (the objective: `use_labels`, `num_views`, ...). The
                towers, `projection_dim`, the poolings and `logit_scale_init_value` come from the checkpoint.

        Build the matching processor with `ProcessorClass.from_pretrained_parts(clip_name_or_path)`.
        """
        from transformers import CLIPModel

        loading_kwargs = loading_kwargs or {}
        clip = CLIPModel.from_pretrained(clip_name_or_path, **loading_kwargs)
        text_config = clip.config.text_config
        if text_config.eos_token_id == 2:
            # Legacy CLIP configs say eos 2 and CLIP then pools at the largest id, the end-of-text token.
            text_config.eos_token_id = text_config.vocab_size - 1
        scale = float(clip.logit_scale.detach().reshape(-1)[0])
        kwargs.pop("logit_scale_init_value", None)  # the checkpoint's temperature, not an objective preset's start
        config = cls.config_class(
            vision_config=clip.config.vision_config,
            text_config=text_config,
            projection_dim=clip.config.projection_dim,
            vision_pooling="pooler",
            text_pooling="eos",
            logit_scale_init_value=[scale] * 3
            if kwargs.get("domain_similarity", cls.config_class.domain_similarity)
            else scale,
            **kwargs,
        )
        model = cls(config)
        with torch.no_grad():
            _load_tower(model.vision_model, clip.vision_model)
            _load_tower(model.text_model, clip.text_model)
            if config.augmentation_fusion == "mlp":
                logger.warning(
                    "from_clip with augmentation_fusion='mlp': the image head (visual_projection, a 2-layer MLP) "
                    "starts fresh, CLIP's image projection is one Linear; the towers, the text projection and the "
                    "temperature are CLIP's, but image embeddings differ from CLIP's until the head is trained"
                )
            else:  # "concat": CLIP's projection reads the image feature's columns, the code's start fresh
                width = clip.visual_projection.weight.shape[1]
                model.visual_projection.weight[:, :width].copy_(clip.visual_projection.weight)
            model.text_projection.weight.copy_(clip.text_projection.weight)
            model.logit_scale.fill_(scale)
            if model.logit_offset is not None:
                model.logit_offset[1] = 0.0  # image-text: CLIP's logits exactly; the intra-domain pairs keep theirs
            if config.augmentation_aware:
                model.augmentation_encoder.fc2.weight.zero_()
                model.augmentation_encoder.fc2.bias.zero_()
        return model


def _load_tower(tower: PreTrainedModel, clip_tower: torch.nn.Module) -> None:
    """Copies a `CLIPModel`'s tower into ours (`CLIPVisionModel` / `CLIPTextModel`), strictly. Recent transformers
    hold those very classes inside `CLIPModel`; earlier 5.x releases held their inner transformer."""
    if not isinstance(clip_tower, type(tower)):
        tower = next(child for child in tower.children() if isinstance(child, type(clip_tower)))
    tower.load_state_dict(clip_tower.state_dict())


def register_scalar_checkpoint_shapes(model_type: str) -> None:
    """Checkpoints saved before the similarity scale became a 1-element tensor hold a 0-D `logit_scale`; FSDP refuses
    0-D parameters, so models now hold shape `(1,)` and reshape such a value on load (transformers' checkpoint
    conversion mapping for the model type; files are written with the new shape)."""
    from transformers.conversion_mapping import register_checkpoint_conversion_mapping
    from transformers.core_model_loading import ConversionOps, WeightConverter

    class AtLeast1D(ConversionOps):
        def convert(self, input_dict, source_patterns, target_patterns, **kwargs):
            (value,) = input_dict.values()
            tensor = value[0] if isinstance(value, list) else value
            return {target_patterns[0]: tensor.reshape(1) if tensor.ndim == 0 else tensor}

        @property
        def reverse_op(self) -> ConversionOps:
            return self

    register_checkpoint_conversion_mapping(
        model_type, [WeightConverter("logit_scale", "logit_scale", operations=[AtLeast1D()])], overwrite=True
    )


__all__ = [
    "PretrainedTowersMixin",
    "default_pooling",
    "load_pretrained_tower",
    "register_scalar_checkpoint_shapes",
]
