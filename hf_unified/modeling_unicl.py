"""UniCL: unified contrastive learning in image-text-label space (Yang et al., CVPR 2022).

A dual encoder (any transformers image tower, any transformers text tower, linear projections into one space)
trained with one bidirectional contrastive loss over image-text-label triplets: items that share a label are
positives of each other, image-text pairs each get a label of their own. With all labels unique the loss is CLIP's.

This file holds the models whole: the towers and how they are pooled ([`UniCLPreTrainedModel`]), the dual encoder's
`forward` ([`UniCLModel`]) and the single-modality models. The heads, the similarity and the objective's call are
the package's one implementation ([`DualEncoderPreTrainedModel`]), configured by [`UniCLConfig`]. UniCLIP's models
are these towers with another config (`modeling_uniclip.py`).
"""

from __future__ import annotations

import torch
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import can_return_tuple

from .configuration_unicl import UniCLConfig
from .dual_encoder import (
    TEXT,
    VISION,
    ContrastiveOutput,
    DualEncoderPreTrainedModel,
    EmbeddingOutput,
    with_pooler_output,
)
from .patch_dropout import PatchDropout
from .pretrained import PretrainedTowersMixin, register_scalar_checkpoint_shapes
from .towers import (
    PATCH_DROPOUT_TOWERS,
    attach_patch_dropout,
    build_tower,
    patch_dropout_prefix_tokens,
    pool_image,
    pool_text,
    text_tower_inputs,
)

# [`UniCLModel`]'s output: transformers' `CLIPOutput` layout; `loss` is the UniCL loss when labels are given, CLIP's
# with `return_loss=True` alone.
UniCLOutput = ContrastiveOutput


class UniCLPreTrainedModel(DualEncoderPreTrainedModel):
    """Any transformers image tower and text tower, each pooled to one vector, under the package's heads.

    The config is a `TowerDualEncoderConfig` (`vision_config`, `text_config`, `vision_pooling`, `text_pooling`,
    `patch_dropout`).

    Patch dropout: an image tower listed in `towers.PATCH_DROPOUT_TOWERS` (CLIP, ViT) gets a [`PatchDropout`]
    (`vision_patch_dropout`, no parameters) run on its embeddings module's output by a forward hook
    (`towers.attach_patch_dropout`), whatever `config.patch_dropout` is when the model is built, so that the share
    can be changed later (an unmasked final phase). Other towers refuse a share above 0.
    """

    config: UniCLConfig
    config_class = UniCLConfig
    base_model_prefix = "unicl"
    _supports_flash_attn = True
    zero_shot_class_name = "UniCLModel"

    def _build_encoders(self, config: UniCLConfig, modalities: tuple[str, ...]) -> dict[str, int]:
        widths = {}
        if VISION in modalities:
            self.vision_model = build_tower(config.vision_config, uses_pooler=config.vision_pooling == "pooler")
            # Keep one config object per tower so that attention-implementation switches reach the tower.
            config.vision_config = self.vision_model.config
            widths[VISION] = config.vision_config.hidden_size
            if config.vision_config.model_type in PATCH_DROPOUT_TOWERS:
                prefix = patch_dropout_prefix_tokens(config.vision_config, config.patch_dropout)
                self.vision_patch_dropout = PatchDropout(config, num_prefix_tokens=prefix)
                attach_patch_dropout(self.vision_model, self.vision_patch_dropout)
        if TEXT in modalities:
            self.text_model = build_tower(config.text_config, uses_pooler=False)  # text pools from tokens
            config.text_config = self.text_model.config
            widths[TEXT] = config.text_config.hidden_size
        towers = [getattr(self, name) for name in ("vision_model", "text_model") if hasattr(self, name)]
        self._no_split_modules = sorted({name for tower in towers for name in (tower._no_split_modules or [])})
        return widths

    def post_init(self):
        super().post_init()
        # transformers merges the tower classes' lists: keep the block classes this model really contains.
        present = {type(module).__name__ for module in self.modules()}
        self._no_split_modules = sorted(name for name in self._no_split_modules if name in present)

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, augmentation_params: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        r"""The image tower's output whose `pooler_output` is the projected, un-normalised image embedding.

        Args:
            pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
                Images as prepared by the model's processor.
            augmentation_params (`torch.FloatTensor` of shape `(batch_size, augmentation_param_dim)`, *optional*):
                Augmentation-aware models only: the parameters of each image's augmentation; None (the default, and
                what evaluation should use) means un-augmented images, the identity parameters.

        Returns:
            `BaseModelOutputWithPooling` with `pooler_output` of shape `(batch_size, projection_dim)`.
        """
        self._check_pixel_values(pixel_values)
        if self.training and self.config.patch_dropout and not hasattr(self, "vision_patch_dropout"):
            patch_dropout_prefix_tokens(self.config.vision_config, self.config.patch_dropout)  # raises: set in place
        hidden, attentions = self._recorded_outputs(kwargs)
        outputs = self.vision_model(
            pixel_values=pixel_values,
            output_hidden_states=hidden,
            output_attentions=attentions,
            return_dict=True,
            **kwargs,
        )
        pooled = pool_image(outputs.last_hidden_state, outputs.pooler_output, self.config.vision_pooling)
        return with_pooler_output(outputs, self._project_image(pooled, augmentation_params))

    @can_return_tuple
    def get_text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        r"""The text tower's output whose `pooler_output` is the projected, un-normalised text embedding.

        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`): token ids, right-padded.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*): 1 on real tokens.

        Returns:
            `BaseModelOutputWithPooling` with `pooler_output` of shape `(batch_size, projection_dim)`.
        """
        self._check_text(input_ids, attention_mask)
        hidden, attentions = self._recorded_outputs(kwargs)
        outputs = self.text_model(
            **text_tower_inputs(input_ids, attention_mask, position_ids, token_type_ids),
            output_hidden_states=hidden,
            output_attentions=attentions,
            return_dict=True,
            **kwargs,
        )
        eos_token_id = getattr(self.config.text_config, "eos_token_id", None)
        pooled = pool_text(
            outputs.last_hidden_state, input_ids, attention_mask, self.config.text_pooling, eos_token_id
        )
        return with_pooler_output(outputs, self.text_projection(pooled))


class UniCLModel(PretrainedTowersMixin, UniCLPreTrainedModel):
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

    pipeline_models = {
        "image-feature-extraction": "UniCLVisionModelWithProjection",
        "feature-extraction": "UniCLTextModelWithProjection",
    }

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        augmentation_params: torch.FloatTensor | None = None,
        labels: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> ContrastiveOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(text_batch_size, sequence_length)`, *optional*):
                Token ids; right padding with any pad id.
            pixel_values (`torch.FloatTensor`, *optional*):
                `(image_batch_size, num_channels, height, width)` images as prepared by the processor, or
                `(image_batch_size, num_views, num_channels, height, width)` augmented views for training
                (`num_views` must be `config.num_views`).
            attention_mask (`torch.Tensor` of shape `(text_batch_size, sequence_length)`, *optional*):
                1 on real tokens, 0 on padding.
            augmentation_params (`torch.FloatTensor`, *optional*):
                Augmentation-aware models: `(image_batch_size, num_views, augmentation_param_dim)` parameters of each
                view, required with multi-view `pixel_values`; for 4-D `pixel_values`,
                `(image_batch_size, augmentation_param_dim)` or None (identity). Ignored by other models.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
                Class id of each item, `-1` for an image-text pair (a label of its own); with `config.use_labels`.
                Giving labels implies `return_loss`.
            return_loss (`bool`, *optional*):
                Whether to return the contrastive loss; needs both modalities with one text per image. With 4-D
                `pixel_values` each image is a single view.

        Either modality may be left out (then only the other one's embeddings are returned), unless a loss is asked.
        """
        return self._dual_forward(
            input_ids,
            pixel_values,
            attention_mask,
            position_ids,
            token_type_ids,
            augmentation_params,
            labels,
            return_loss,
            **kwargs,
        )


class UniCLVisionModelWithProjection(UniCLPreTrainedModel):
    """The image tower and its projection alone (the image-feature-extraction pipeline, image indexing), like
    transformers' `CLIPVisionModelWithProjection`.

    Loads from a saved [`UniCLModel`] folder; the text weights there are ignored.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)
    modalities = (VISION,)

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        augmentation_params: torch.FloatTensor | None = None,
        **kwargs,
    ) -> EmbeddingOutput:
        r"""`pixel_values` of shape `(batch_size, num_channels, height, width)` (and, for augmentation-aware models,
        optional `(batch_size, augmentation_param_dim)` parameters, default identity) -> the projected,
        un-normalised embedding of shape `(batch_size, projection_dim)` first, then the tower's tokens."""
        features = self.get_image_features(pixel_values, augmentation_params, return_dict=True, **kwargs)
        return EmbeddingOutput.from_features(features)


class UniCLTextModelWithProjection(UniCLPreTrainedModel):
    """The text tower and its projection alone (the feature-extraction pipeline, text indexing), like transformers'
    `CLIPTextModelWithProjection`.

    Loads from a saved [`UniCLModel`] folder; the image weights there are ignored.
    """

    input_modalities = ("text",)
    modalities = (TEXT,)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        **kwargs,
    ) -> EmbeddingOutput:
        r"""`input_ids` of shape `(batch_size, sequence_length)` -> the projected, un-normalised embedding of shape
        `(batch_size, projection_dim)` first, then the tower's tokens."""
        features = self.get_text_features(
            input_ids, attention_mask, position_ids, token_type_ids, return_dict=True, **kwargs
        )
        return EmbeddingOutput.from_features(features)


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
