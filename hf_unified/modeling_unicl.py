"""UniCL: unified contrastive learning in image-text-label space (Yang et al., CVPR 2022).

A dual encoder (any transformers image tower, any transformers text tower, linear projections into one space)
trained with one bidirectional contrastive loss over image-text-label triplets: items that share a label are
positives of each other, image-text pairs each get a label of their own. With all labels unique the loss is CLIP's.

The encoders are [`TowerEncoders`]; heads, forward and objective are the package's one skeleton
(`dual_encoder.ContrastiveModel`), configured by [`UniCLConfig`].
"""

from __future__ import annotations

import torch
from transformers import PreTrainedModel

from .auto_map import ZeroShotAutoMapMixin
from .configuration_unicl import UniCLConfig
from .dual_encoder import (
    ContrastiveModel,
    ContrastiveOutput,
    ImageEmbeddingModel,
    TextEmbeddingModel,
    TowerEncoders,
    init_contrastive_weights,
)
from .pretrained import PretrainedTowersMixin, register_scalar_checkpoint_shapes

# [`UniCLModel`]'s output: transformers' `CLIPOutput` layout; `loss` is the UniCL loss when labels are given, CLIP's
# with `return_loss=True` alone.
UniCLOutput = ContrastiveOutput


class UniCLPreTrainedModel(ZeroShotAutoMapMixin, PreTrainedModel):
    config: UniCLConfig
    config_class = UniCLConfig
    base_model_prefix = "unicl"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    zero_shot_class_name = "UniCLModel"

    @torch.no_grad()
    def _init_weights(self, module):
        # The towers initialise themselves (their own `_init_weights`); this covers the heads.
        super()._init_weights(module)
        init_contrastive_weights(module, self.config)


class UniCLModel(ContrastiveModel, PretrainedTowersMixin, TowerEncoders, UniCLPreTrainedModel):
    """UniCL dual encoder.

    Example:

    ```python
    >>> from transformers import CLIPTextConfig, CLIPVisionConfig
    >>> from hf_unified import UniCLConfig, UniCLModel
    >>> config = UniCLConfig(
    ...     vision_config=CLIPVisionConfig(hidden_size=64), text_config=CLIPTextConfig(hidden_size=64)
    ... )
    >>> model = UniCLModel(config)
    >>> # or start from pretrained weights: UniCLModel.from_clip("openai/clip-vit-base-patch32"),
    >>> # UniCLModel.from_vision_text_pretrained("google/vit-base-patch16-224", "bert-base-uncased")
    ```
    """


class UniCLVisionModelWithProjection(ImageEmbeddingModel, TowerEncoders, UniCLPreTrainedModel):
    """The image tower and its projection alone (for the image-feature-extraction pipeline and image indexing).

    Loads from a saved [`UniCLModel`] folder; the text weights there are ignored.
    """


class UniCLTextModelWithProjection(TextEmbeddingModel, TowerEncoders, UniCLPreTrainedModel):
    """The text tower and its projection alone (for the feature-extraction pipeline and text indexing).

    Loads from a saved [`UniCLModel`] folder; the image weights there are ignored.
    """


register_scalar_checkpoint_shapes(UniCLConfig.model_type)
UniCLConfig.register_for_auto_class()
UniCLModel.register_for_auto_class("AutoModel")

__all__ = [
    "UniCLModel",
    "UniCLOutput",
    "UniCLPreTrainedModel",
    "UniCLTextModelWithProjection",
    "UniCLVisionModelWithProjection",
]
