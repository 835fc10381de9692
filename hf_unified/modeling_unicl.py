"""UniCL: unified contrastive learning in image-text-label space (Yang et al., CVPR 2022).

A dual encoder (any transformers image tower, any transformers text tower, linear projections into one space)
trained with one bidirectional contrastive loss over image-text-label triplets: items that share a label are
positives of each other, image-text pairs each get a label of their own. With all labels unique the loss is CLIP's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple

from .auto_map import ZeroShotAutoMapMixin
from .configuration_unicl import UniCLConfig
from .dual_encoder import ContrastiveOutput, EmbeddingOutput, TowerHeadsMixin
from .losses import clip_loss, unicl_loss


@dataclass
class UniCLOutput(ContrastiveOutput):
    """Output of [`UniCLModel`] (transformers' `CLIPOutput` layout); `loss` is the UniCL loss when labels are given,
    CLIP's with `return_loss=True` alone."""


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
        if hasattr(module, "logit_scale") and isinstance(module.logit_scale, nn.Parameter):
            init.constant_(module.logit_scale, self.config.logit_scale_init_value)


class UniCLModel(TowerHeadsMixin, UniCLPreTrainedModel):
    """UniCL dual encoder.

    Example:

    ```python
    >>> from transformers import CLIPTextConfig, CLIPVisionConfig
    >>> from hf_unified import UniCLConfig, UniCLModel
    >>> config = UniCLConfig(
    ...     vision_config=CLIPVisionConfig(hidden_size=64), text_config=CLIPTextConfig(hidden_size=64)
    ... )
    >>> model = UniCLModel(config)
    ```
    """

    def __init__(self, config: UniCLConfig):
        super().__init__(config)
        self._build_vision(config)
        self._build_text(config)
        self.logit_scale = nn.Parameter(torch.tensor(float(config.logit_scale_init_value)))
        self.post_init()

    @classmethod
    def from_vision_text_pretrained(
        cls, vision_model_name_or_path: str, text_model_name_or_path: str, **kwargs
    ) -> UniCLModel:
        """Starts from pretrained towers (local folders or Hub ids), like `VisionTextDualEncoderModel`.

        Keyword arguments prefixed with `vision_` / `text_` go to that tower's `from_pretrained`; the rest
        (`projection_dim`, `logit_scale_init_value`, `text_pooling`, ...) go to [`UniCLConfig`]. The projections and
        `logit_scale` are newly initialised.
        """
        from transformers import AutoModel

        vision_kwargs = {k[len("vision_") :]: v for k, v in kwargs.items() if k.startswith("vision_")}
        text_kwargs = {k[len("text_") :]: v for k, v in kwargs.items() if k.startswith("text_")}
        config_kwargs = {k: v for k, v in kwargs.items() if not k.startswith(("vision_", "text_"))}
        vision_model = AutoModel.from_pretrained(vision_model_name_or_path, **vision_kwargs)
        text_model = AutoModel.from_pretrained(text_model_name_or_path, **text_kwargs)
        # A CLIP checkpoint loads as the full CLIPModel: keep only the tower we asked for.
        vision_model = (
            getattr(vision_model, "vision_model", vision_model)
            if hasattr(vision_model, "text_model")
            else vision_model
        )
        text_model = (
            getattr(text_model, "text_model", text_model) if hasattr(text_model, "vision_model") else text_model
        )
        config = UniCLConfig(vision_config=vision_model.config, text_config=text_model.config, **config_kwargs)
        model = cls(config)
        model.vision_model.load_state_dict(vision_model.state_dict())
        model.text_model.load_state_dict(text_model.state_dict())
        return model

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        """Text tower output whose `pooler_output` is the projected, un-normalised text embedding `[B, D]`."""
        return self._text_features(input_ids, attention_mask, position_ids, token_type_ids, **kwargs)

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        """Image tower output whose `pooler_output` is the projected, un-normalised image embedding `[B, D]`."""
        return self._image_features(pixel_values, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> UniCLOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(text_batch_size, sequence_length)`, *optional*):
                Token ids; right padding with any pad id.
            pixel_values (`torch.FloatTensor` of shape `(image_batch_size, num_channels, height, width)`, *optional*):
                Images as prepared by [`UniCLProcessor`].
            attention_mask (`torch.Tensor` of shape `(text_batch_size, sequence_length)`, *optional*):
                1 on real tokens, 0 on padding.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class id of each image-text item, `-1` for an image-text pair (a label of its own). Giving labels
                computes the UniCL loss; without them `return_loss=True` computes CLIP's.
            return_loss (`bool`, *optional*):
                Whether to return the contrastive loss. Needs both modalities with one row per item.

        Either modality may be left out (then only the other one's embeddings are returned), unless a loss is asked.
        """
        if labels is not None and not self.config.use_labels:
            raise ValueError("labels were given but config.use_labels is False: drop them or set use_labels=True")
        wants_loss = bool(return_loss) or labels is not None
        if wants_loss and (input_ids is None or pixel_values is None):
            raise ValueError("a contrastive loss needs both input_ids and pixel_values")
        if input_ids is None and pixel_values is None:
            raise ValueError("give input_ids, pixel_values or both")

        image_embeds = text_embeds = vision_outputs = text_outputs = None
        if pixel_values is not None:
            vision_outputs = self._image_features(pixel_values, **kwargs)
            image_embeds = nn.functional.normalize(vision_outputs.pooler_output, dim=-1)
        if input_ids is not None:
            text_outputs = self._text_features(input_ids, attention_mask, position_ids, token_type_ids, **kwargs)
            text_embeds = nn.functional.normalize(text_outputs.pooler_output, dim=-1)

        logits_per_image = logits_per_text = loss = None
        if image_embeds is not None and text_embeds is not None:
            logit_scale = self.logit_scale.exp()
            logits_per_text = logit_scale * text_embeds @ image_embeds.T
            logits_per_image = logits_per_text.T
            if wants_loss:
                if image_embeds.shape[0] != text_embeds.shape[0]:
                    raise ValueError(
                        f"a loss pairs image i with text i: got {image_embeds.shape[0]} images and "
                        f"{text_embeds.shape[0]} texts"
                    )
                if labels is None:
                    loss = clip_loss(image_embeds, text_embeds, logit_scale)
                else:
                    loss = unicl_loss(image_embeds, text_embeds, labels.to(image_embeds.device), logit_scale)

        return UniCLOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


class UniCLVisionModelWithProjection(TowerHeadsMixin, UniCLPreTrainedModel):
    """The image tower and its projection alone (for the image-feature-extraction pipeline and image indexing).

    Loads from a saved [`UniCLModel`] folder; the text weights there are ignored.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: UniCLConfig):
        super().__init__(config)
        self._build_vision(config)
        self.post_init()

    @can_return_tuple
    def forward(self, pixel_values: torch.FloatTensor | None = None, **kwargs) -> EmbeddingOutput:
        """Returns the projected image embedding `[B, D]` (not normalised) first, then the tower's tokens."""
        return EmbeddingOutput.from_features(self._image_features(pixel_values, **kwargs))


class UniCLTextModelWithProjection(TowerHeadsMixin, UniCLPreTrainedModel):
    """The text tower and its projection alone (for the feature-extraction pipeline and text indexing).

    Loads from a saved [`UniCLModel`] folder; the image weights there are ignored.
    """

    input_modalities = ("text",)

    def __init__(self, config: UniCLConfig):
        super().__init__(config)
        self._build_text(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> EmbeddingOutput:
        """Returns the projected text embedding `[B, D]` (not normalised) first, then the tower's tokens."""
        features = self._text_features(input_ids, attention_mask, position_ids, token_type_ids, **kwargs)
        return EmbeddingOutput.from_features(features)


UniCLConfig.register_for_auto_class()
UniCLModel.register_for_auto_class("AutoModel")

__all__ = [
    "UniCLModel",
    "UniCLOutput",
    "UniCLPreTrainedModel",
    "UniCLTextModelWithProjection",
    "UniCLVisionModelWithProjection",
]
