"""UniCLIP: unified contrastive language-image pre-training in one universal space (Lee et al., NeurIPS 2022).

Three components on top of a dual encoder (any transformers image tower, any transformers text tower):

1. **Augmentation-aware embedding.** Each image view comes with the parameter vector of its augmentation
   (`hf_unified.training.data.augmentation.MultiViewAugmentation`); a small MLP encodes it and the code conditions the
   image projection head (added to, or concatenated with, the pooled feature). The backbone never sees the
   parameters. Un-augmented images (inference) use the identity parameters.
2. **Domain-dependent similarity.** `s(a, b) = exp(logit_scale[D]) * (cos(z_a, z_b) - logit_offset[D])` with a
   learnable log-scale and offset for each domain pair D (image-image, image-text, text-text).
3. **One multi-positive loss over the unified batch.** N pairs with V views each give (V+1)N embeddings; the
   positives of an anchor are every other embedding of its own pair, the negatives every embedding of every other
   pair, in any domain. MP-NCE scores each positive against the negatives only.

All three are fields of [`ContrastiveConfig`] (`augmentation_aware`, `domain_similarity`, `intra_domain_pairs`,
`contrastive_loss`) run by the package's one head and objective (`dual_encoder.DualEncoderPreTrainedModel`,
`losses.contrastive_objective`), so they combine with UniCL's labels and MS-CLIP's shared stack. The network is
UniCL's tower dual encoder (`modeling_unicl.py`, where its `forward` and `get_*_features` are); what makes it UniCLIP
is its config. The paper body was
not available to us; the exact form of points 1 and 2 is our reading and configurable (see [`UniCLIPConfig`]).
"""

from __future__ import annotations

from .configuration_uniclip import UniCLIPConfig
from .dual_encoder import ContrastiveOutput
from .modeling_unicl import (
    UniCLModel,
    UniCLPreTrainedModel,
    UniCLTextModelWithProjection,
    UniCLVisionModelWithProjection,
)
from .pretrained import register_scalar_checkpoint_shapes

# [`UniCLIPModel`]'s output: transformers' `CLIPOutput` layout plus `image_view_embeds`; `logits_per_image` is the
# image-text domain similarity `exp(logit_scale[image-text]) * (cos - logit_offset[image-text])`.
UniCLIPOutput = ContrastiveOutput


class UniCLIPPreTrainedModel(UniCLPreTrainedModel):
    """UniCL's towers and heads under a [`UniCLIPConfig`] (augmentation-aware, domain-dependent similarity)."""

    config: UniCLIPConfig
    config_class = UniCLIPConfig
    base_model_prefix = "uniclip"
    zero_shot_class_name = "UniCLIPModel"


class UniCLIPModel(UniCLIPPreTrainedModel, UniCLModel):
    """UniCLIP dual encoder with augmentation-aware image embeddings and a domain-dependent similarity.

    Parameters beyond the towers: `augmentation_encoder` (MLP), `visual_projection` and `text_projection` (no bias),
    `logit_scale` (`(3,)` log-scales per domain pair image-image, image-text, text-text, or `(1,)` without
    `domain_similarity`) and `logit_offset` (`(3,)`, only with `domain_similarity`).

    Example:

    ```python
    >>> import torch
    >>> from transformers import CLIPTextConfig, CLIPVisionConfig
    >>> from hf_unified import UniCLIPConfig, UniCLIPModel
    >>> from hf_unified.training.data.augmentation import MultiViewAugmentation
    >>> config = UniCLIPConfig(vision_config=CLIPVisionConfig(hidden_size=64, image_size=64, patch_size=16),
    ...                        text_config=CLIPTextConfig(hidden_size=64))
    >>> model = UniCLIPModel(config)
    >>> augment = MultiViewAugmentation(num_views=config.num_views, size=64)
    >>> views, params = map(torch.stack, zip(*(augment(image) for image in images)))  # [B, 2, 3, 64, 64], [B, 2, 11]
    >>> text = tokenizer(captions, padding=True, return_tensors="pt")
    >>> loss = model(**text, pixel_values=views, augmentation_params=params, return_loss=True).loss
    >>> # inference: processor(images=...) gives [B, 3, 64, 64]; the identity parameters are used
    ```
    """

    pipeline_models = {
        "image-feature-extraction": "UniCLIPVisionModelWithProjection",
        "feature-extraction": "UniCLIPTextModelWithProjection",
    }


class UniCLIPVisionModelWithProjection(UniCLIPPreTrainedModel, UniCLVisionModelWithProjection):
    """The image tower, augmentation encoder and projection alone (image-feature-extraction, image indexing).

    Loads from a saved [`UniCLIPModel`] folder; the text weights there are ignored.
    """


class UniCLIPTextModelWithProjection(UniCLIPPreTrainedModel, UniCLTextModelWithProjection):
    """The text tower and its projection alone (feature-extraction, text indexing).

    Loads from a saved [`UniCLIPModel`] folder; the image weights there are ignored.
    """


register_scalar_checkpoint_shapes(UniCLIPConfig.model_type)
UniCLIPConfig.register_for_auto_class()
UniCLIPModel.register_for_auto_class("AutoModel")

__all__ = [
    "UniCLIPModel",
    "UniCLIPOutput",
    "UniCLIPPreTrainedModel",
    "UniCLIPTextModelWithProjection",
    "UniCLIPVisionModelWithProjection",
]
