"""What every dual encoder in this package shares: its outputs and the tower -> pooled -> projected path.

UniCL and UniCLIP put linear projections on top of any transformers image and text tower; MS-CLIP runs its own
modality-shared stack but returns the same outputs. The per-method files only add what makes the method.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedConfig
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .towers import build_tower, pool_image, pool_text, text_tower_inputs


@dataclass
class ContrastiveOutput(ModelOutput):
    """Output of a dual encoder, laid out like transformers' `CLIPOutput`.

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*):
            The method's contrastive loss, returned when asked for.
        logits_per_image (`torch.Tensor` of shape `(image_batch_size, text_batch_size)`):
            Scaled image-text similarities; the zero-shot pipeline reads row 0.
        logits_per_text (`torch.Tensor` of shape `(text_batch_size, image_batch_size)`):
            The transpose of `logits_per_image`.
        text_embeds (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
            L2-normalised projected text features.
        image_embeds (`torch.Tensor` of shape `(image_batch_size, projection_dim)`):
            L2-normalised projected image features.
        text_model_output (`BaseModelOutputWithPooling`):
            The text tower's output.
        vision_model_output (`BaseModelOutputWithPooling`):
            The image tower's output.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class EmbeddingOutput(ModelOutput):
    """Output of a single-tower model: the projected (not normalised) embedding first, then the tower's output, so
    that the (image-)feature-extraction pipelines return the embedding.

    Args:
        embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`): projected pooled features.
        last_hidden_state (`torch.Tensor` of shape `(batch_size, sequence_length, hidden_size)`): tower tokens.
        hidden_states (`tuple(torch.Tensor)`, *optional*): per-layer hidden states when asked for.
        attentions (`tuple(torch.Tensor)`, *optional*): per-layer attention weights when asked for.
    """

    embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def from_features(cls, features: BaseModelOutputWithPooling) -> EmbeddingOutput:
        return cls(
            embeds=features.pooler_output,
            last_hidden_state=features.last_hidden_state,
            hidden_states=features.hidden_states,
            attentions=features.attentions,
        )


def with_pooler_output(tower_output, pooler_output: torch.Tensor) -> BaseModelOutputWithPooling:
    """The tower's output with `pooler_output` replaced by the projected embedding (transformers 5's
    `get_*_features` convention)."""
    return BaseModelOutputWithPooling(
        last_hidden_state=tower_output.last_hidden_state,
        pooler_output=pooler_output,
        hidden_states=tower_output.hidden_states,
        attentions=tower_output.attentions,
    )


class TowerHeadsMixin:
    """Any transformers tower -> pooled feature -> linear projection, for the image and the text side.

    The host model's config has `vision_config`, `text_config`, `projection_dim`, `vision_pooling`, `text_pooling`.
    Methods that condition the image projection (UniCLIP) override `_build_vision` / `_image_features` and reuse
    `_pooled_image`.
    """

    config: PreTrainedConfig

    def _build_vision(self, config, projection_input: int | None = None) -> None:
        self.vision_model = build_tower(config.vision_config)
        # Keep one config object per tower so that attention-implementation switches reach the tower.
        config.vision_config = self.vision_model.config
        width = projection_input or config.vision_config.hidden_size
        self.visual_projection = nn.Linear(width, config.projection_dim, bias=False)

    def _build_text(self, config) -> None:
        self.text_model = build_tower(config.text_config)
        config.text_config = self.text_model.config
        self.text_projection = nn.Linear(config.text_config.hidden_size, config.projection_dim, bias=False)

    def _pooled_image(self, pixel_values: torch.Tensor, **kwargs) -> tuple[Any, torch.Tensor]:
        """`[B, C, H, W]` -> (tower output, pooled `[B, H_vision]`)."""
        if pixel_values is None:
            raise ValueError("pixel_values is required to compute image features")
        outputs = self.vision_model(pixel_values=pixel_values, return_dict=True, **kwargs)
        return outputs, pool_image(outputs.last_hidden_state, outputs.pooler_output, self.config.vision_pooling)

    def _image_features(self, pixel_values: torch.Tensor, **kwargs) -> BaseModelOutputWithPooling:
        outputs, pooled = self._pooled_image(pixel_values, **kwargs)
        return with_pooler_output(outputs, self.visual_projection(pooled))

    def _text_features(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> BaseModelOutputWithPooling:
        if input_ids is None:
            raise ValueError("input_ids is required to compute text features")
        if attention_mask is not None and attention_mask.shape != input_ids.shape:
            raise ValueError(
                f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                f"{tuple(input_ids.shape)}"
            )
        outputs = self.text_model(
            **text_tower_inputs(input_ids, attention_mask, position_ids, token_type_ids), return_dict=True, **kwargs
        )
        eos_token_id = getattr(self.config.text_config, "eos_token_id", None)
        pooled = pool_text(
            outputs.last_hidden_state, input_ids, attention_mask, self.config.text_pooling, eos_token_id
        )
        return with_pooler_output(outputs, self.text_projection(pooled))


__all__ = ["ContrastiveOutput", "EmbeddingOutput", "TowerHeadsMixin", "with_pooler_output"]
