"""UniCLIP: unified contrastive language-image pre-training in one universal space (Lee et al., NeurIPS 2022).

Three components on top of a dual encoder (any transformers image tower, any transformers text tower):

1. **Augmentation-aware embedding.** Each image view comes with the parameter vector of its augmentation
   (`augmentation.MultiViewAugmentation`); a small MLP encodes it and the code conditions the image projection head
   (added to, or concatenated with, the pooled feature). The backbone never sees the parameters. Un-augmented
   images (inference) use the identity parameters.
2. **Domain-dependent similarity.** `s(a, b) = exp(logit_scale[D]) * (cos(z_a, z_b) - logit_offset[D])` with a
   learnable log-scale and offset for each domain pair D (image-image, image-text, text-text).
3. **One multi-positive loss over the unified batch.** N pairs with V views each give (V+1)N embeddings; the
   positives of an anchor are every other embedding of its own pair, the negatives every embedding of every other
   pair, in any domain. MP-NCE scores each positive against the negatives only (`losses.multi_positive_loss`).

The paper body was not available to us; the exact form of points 1 and 2 is our reading and configurable (see
[`UniCLIPConfig`]).
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
from .configuration_uniclip import UniCLIPConfig
from .dual_encoder import ContrastiveOutput, EmbeddingOutput, TowerHeadsMixin, with_pooler_output
from .losses import gather_with_grad, multi_positive_loss

IMAGE_DOMAIN, TEXT_DOMAIN = 0, 1
# Domain pair index = domain(a) + domain(b): 0 image-image, 1 image-text, 2 text-text (UniCLIPConfig.DOMAIN_PAIRS).
IMAGE_TEXT_PAIR = IMAGE_DOMAIN + TEXT_DOMAIN


def domain_scaled_similarity(
    cosine: torch.Tensor,
    domain_pair: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_offset: torch.Tensor | None = None,
) -> torch.Tensor:
    """Applies the domain-dependent similarity `exp(logit_scale[D]) * (cos - logit_offset[D])`.

    Args:
        cosine: `[R, C]` cosine similarities.
        domain_pair: `[R, C]` or broadcastable integer domain-pair index (0 image-image, 1 image-text, 2 text-text).
        logit_scale: `[3]` log-scales per domain pair, or `[1]` / `[]` one shared log-scale.
        logit_offset: `[3]` offsets per domain pair, or None (no offset).
    """
    scale = logit_scale.exp().reshape(-1)
    scale = scale[domain_pair] if scale.numel() > 1 else scale.reshape(())
    shifted = cosine if logit_offset is None else cosine - logit_offset[domain_pair]
    return scale * shifted


def unified_contrastive_loss(
    image_view_embeds: torch.Tensor,
    text_embeds: torch.Tensor,
    logit_scale: torch.Tensor,
    logit_offset: torch.Tensor | None = None,
    variant: str = "mp_nce",
) -> torch.Tensor:
    """UniCLIP's loss over the (V+1)N unified batch, exact under data parallelism.

    The embeddings of all ranks are gathered with gradient; this rank's `(V+1) n_local` embeddings are the anchor
    rows and all `(V+1) N_global` embeddings the candidate columns. Candidates are ordered
    `[pair 0 view 0, pair 0 view 1, ..., pair N-1 view V-1, text 0, ..., text N-1]`.

    Args:
        image_view_embeds: `[n_local, V, D]` L2-normalised image-view embeddings of this rank.
        text_embeds: `[n_local, D]` L2-normalised text embeddings (text i pairs with the views of image i).
        logit_scale: `[3]` log-scales per domain pair (image-image, image-text, text-text) or `[1]` / `[]` shared.
        logit_offset: `[3]` offsets per domain pair, or None.
        variant: `"mp_nce"`, `"supcon"` or `"infonce"` (see `losses.multi_positive_loss`).

    Returns:
        `[]` this rank's share of the global mean loss.
    """
    if image_view_embeds.ndim != 3 or text_embeds.ndim != 2:
        raise ValueError(
            "image_view_embeds must be [batch, views, dim] and text_embeds [batch, dim]; got "
            f"{tuple(image_view_embeds.shape)} and {tuple(text_embeds.shape)}"
        )
    n_local, num_views, dim = image_view_embeds.shape
    if text_embeds.shape != (n_local, dim):
        raise ValueError(
            f"text_embeds must be [{n_local}, {dim}] to pair with image views {tuple(image_view_embeds.shape)}; got "
            f"{tuple(text_embeds.shape)}"
        )
    device = image_view_embeds.device
    all_views, offset = gather_with_grad(image_view_embeds)
    all_texts, _ = gather_with_grad(text_embeds)
    n_global = all_views.shape[0]
    if n_global < 2:
        raise ValueError("the unified loss needs at least 2 image-text pairs in the (global) batch to have negatives")

    candidates = torch.cat([all_views.reshape(n_global * num_views, dim), all_texts])
    global_pairs = torch.arange(n_global, device=device)
    candidate_pair = torch.cat([global_pairs.repeat_interleave(num_views), global_pairs])
    candidate_domain = torch.cat(
        [
            torch.full((n_global * num_views,), IMAGE_DOMAIN, device=device),
            torch.full((n_global,), TEXT_DOMAIN, device=device),
        ]
    )

    anchors = torch.cat([image_view_embeds.reshape(n_local * num_views, dim), text_embeds])
    local_pairs = torch.arange(offset, offset + n_local, device=device)
    anchor_pair = torch.cat([local_pairs.repeat_interleave(num_views), local_pairs])
    anchor_domain = torch.cat(
        [
            torch.full((n_local * num_views,), IMAGE_DOMAIN, device=device),
            torch.full((n_local,), TEXT_DOMAIN, device=device),
        ]
    )
    # Column of each anchor in the candidate list, so that an anchor is never its own candidate.
    view_columns = (local_pairs[:, None] * num_views + torch.arange(num_views, device=device)).reshape(-1)
    anchor_column = torch.cat([view_columns, n_global * num_views + local_pairs])

    cosine = anchors @ candidates.T
    domain_pair = anchor_domain[:, None] + candidate_domain[None, :]
    logits = domain_scaled_similarity(cosine, domain_pair, logit_scale, logit_offset)
    positive_mask = anchor_pair[:, None] == candidate_pair[None, :]
    candidate_mask = torch.arange(candidates.shape[0], device=device)[None, :] != anchor_column[:, None]
    return multi_positive_loss(logits, positive_mask, candidate_mask, variant)


@dataclass
class UniCLIPOutput(ContrastiveOutput):
    """Output of [`UniCLIPModel`], laid out like transformers' `CLIPOutput` plus the per-view embeddings.

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*):
            The unified multi-positive loss, returned with `return_loss=True`.
        logits_per_image (`torch.Tensor` of shape `(image_batch_size, text_batch_size)`):
            Image-text domain similarity of `image_embeds` and `text_embeds`:
            `exp(logit_scale[image-text]) * (image_embeds @ text_embeds.T - logit_offset[image-text])`.
        logits_per_text (`torch.Tensor` of shape `(text_batch_size, image_batch_size)`):
            The transpose of `logits_per_image`.
        text_embeds (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
            L2-normalised projected text features.
        image_embeds (`torch.Tensor` of shape `(image_batch_size, projection_dim)`):
            L2-normalised projected image features: for `[B, C, H, W]` input the (identity-conditioned) image, for
            multi-view input view 0 (conditioned on its own augmentation parameters).
        image_view_embeds (`torch.Tensor` of shape `(image_batch_size, num_views, projection_dim)`):
            L2-normalised embeddings of every view (`num_views = 1` for `[B, C, H, W]` input).
        text_model_output (`BaseModelOutputWithPooling`): the text tower's output.
        vision_model_output (`BaseModelOutputWithPooling`):
            The image tower's output; for multi-view input its batch is the `B * V` views, view-major per image.
    """

    image_view_embeds: torch.Tensor | None = None


class UniCLIPAugmentationEncoder(nn.Module):
    """Small MLP from an augmentation parameter vector to a conditioning code.

    The input is the deviation from the identity parameters, so an un-augmented image feeds zeros.

    Args:
        config: gives `augmentation_param_dim` (P), `augmentation_hidden_size` and the identity parameters.
        output_size: width of the code (the image feature width for `"add"` fusion).
    """

    def __init__(self, config: UniCLIPConfig, output_size: int):
        super().__init__()
        self.identity = tuple(config.identity_augmentation_params)
        self.fc1 = nn.Linear(config.augmentation_param_dim, config.augmentation_hidden_size)
        self.activation = nn.GELU()
        self.fc2 = nn.Linear(config.augmentation_hidden_size, output_size)

    def forward(self, augmentation_params: torch.Tensor) -> torch.Tensor:
        """`[M, P]` -> `[M, output_size]`."""
        identity = torch.tensor(self.identity, dtype=augmentation_params.dtype, device=augmentation_params.device)
        return self.fc2(self.activation(self.fc1(augmentation_params - identity)))


class UniCLIPPreTrainedModel(ZeroShotAutoMapMixin, PreTrainedModel):
    config: UniCLIPConfig
    config_class = UniCLIPConfig
    base_model_prefix = "uniclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_attention_backend = True
    zero_shot_class_name = "UniCLIPModel"

    @torch.no_grad()
    def _init_weights(self, module):
        # The towers initialise themselves (their own `_init_weights`); this covers the heads and the similarity.
        super()._init_weights(module)
        if isinstance(getattr(module, "logit_scale", None), nn.Parameter):
            init.copy_(module.logit_scale, torch.tensor(self.config.logit_scale_init()))
        if isinstance(getattr(module, "logit_offset", None), nn.Parameter):
            init.copy_(module.logit_offset, torch.tensor(self.config.logit_offset_init()))


class _UniCLIPHeads(TowerHeadsMixin):
    """Tower -> pooled feature -> augmentation-conditioned projection (image side); the text side is the shared one."""

    config: UniCLIPConfig

    def _build_vision(self, config: UniCLIPConfig) -> None:
        hidden = config.vision_config.hidden_size
        if config.augmentation_fusion == "add":
            self.augmentation_encoder = UniCLIPAugmentationEncoder(config, output_size=hidden)
            projection_input = hidden
        else:
            self.augmentation_encoder = UniCLIPAugmentationEncoder(config, config.augmentation_hidden_size)
            projection_input = hidden + config.augmentation_hidden_size
        super()._build_vision(config, projection_input)

    def _check_augmentation_params(self, augmentation_params: torch.Tensor, shape: tuple[int, ...]) -> None:
        expected = (*shape, self.config.augmentation_param_dim)
        if tuple(augmentation_params.shape) != expected:
            raise ValueError(
                f"augmentation_params must have shape {list(expected)} ([batch{', views' if len(shape) == 2 else ''}, "
                f"augmentation_param_dim={self.config.augmentation_param_dim}]); got {list(augmentation_params.shape)}"
            )

    def _image_features(
        self, pixel_values: torch.Tensor, augmentation_params: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """`[M, C, H, W]` images and `[M, P]` parameters (None: identity) -> projected `pooler_output` `[M, D]`."""
        if pixel_values is None:
            raise ValueError("pixel_values is required to compute image features")
        if pixel_values.ndim != 4:
            raise ValueError(
                f"image features take pixel_values [batch, channels, height, width]; got {list(pixel_values.shape)} "
                "(multi-view [batch, views, C, H, W] input goes through UniCLIPModel.forward)"
            )
        batch = pixel_values.shape[0]
        if augmentation_params is None:
            identity = self.config.identity_augmentation_params
            augmentation_params = torch.tensor(identity, device=pixel_values.device).expand(batch, len(identity))
        else:
            self._check_augmentation_params(augmentation_params, (batch,))
        outputs, pooled = self._pooled_image(pixel_values, **kwargs)
        code = self.augmentation_encoder(augmentation_params.to(pooled.dtype))
        if self.config.augmentation_fusion == "add":
            conditioned = pooled + code
        else:
            conditioned = torch.cat([pooled, code], dim=-1)
        return with_pooler_output(outputs, self.visual_projection(conditioned))


class UniCLIPModel(_UniCLIPHeads, UniCLIPPreTrainedModel):
    """UniCLIP dual encoder with augmentation-aware image embeddings and a domain-dependent similarity.

    Parameters beyond the towers: `augmentation_encoder` (MLP), `visual_projection` and `text_projection` (no bias),
    `logit_scale` (`[3]` log-scales per domain pair image-image, image-text, text-text, or `[1]` without
    `domain_similarity`) and `logit_offset` (`[3]`, only with `domain_similarity`).

    Example:

    ```python
    >>> import torch
    >>> from transformers import CLIPTextConfig, CLIPVisionConfig
    >>> from hf_unified import UniCLIPConfig, UniCLIPModel
    >>> from hf_unified.training.augmentation import MultiViewAugmentation
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

    def __init__(self, config: UniCLIPConfig):
        super().__init__(config)
        self._build_vision(config)
        self._build_text(config)
        self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init()))
        if config.domain_similarity:
            self.logit_offset = nn.Parameter(torch.tensor(config.logit_offset_init()))
        else:
            self.logit_offset = None
        self.post_init()

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
    def get_image_features(
        self, pixel_values: torch.Tensor, augmentation_params: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        """Image tower output whose `pooler_output` is the projected, un-normalised image embedding `[B, D]`.

        Args:
            pixel_values: `[B, C, H, W]`.
            augmentation_params: `[B, P]` parameters of each image's augmentation; None (the default, and what
                evaluation should use) means un-augmented images: the identity parameters.
        """
        return self._image_features(pixel_values, augmentation_params, **kwargs)

    def _image_view_embeds(
        self, pixel_values: torch.Tensor, augmentation_params: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """Normalised `[B, V, D]` embeddings of `[B, C, H, W]` (V = 1) or `[B, V, C, H, W]` input."""
        if pixel_values.ndim == 4:
            if augmentation_params is not None and augmentation_params.ndim == 3:
                self._check_augmentation_params(augmentation_params, (pixel_values.shape[0], 1))
                augmentation_params = augmentation_params[:, 0]
            outputs = self._image_features(pixel_values, augmentation_params, **kwargs)
            return nn.functional.normalize(outputs.pooler_output, dim=-1)[:, None], outputs
        if pixel_values.ndim != 5:
            raise ValueError(
                "pixel_values must be [batch, channels, height, width] (inference) or "
                f"[batch, views, channels, height, width] (training); got {list(pixel_values.shape)}"
            )
        batch, num_views = pixel_values.shape[:2]
        if num_views != self.config.num_views:
            raise ValueError(
                f"pixel_values has {num_views} views per image but config.num_views is {self.config.num_views}"
            )
        if augmentation_params is None:
            raise ValueError(
                "multi-view pixel_values [batch, views, C, H, W] need augmentation_params "
                f"[batch, views, {self.config.augmentation_param_dim}] describing each view"
            )
        self._check_augmentation_params(augmentation_params, (batch, num_views))
        outputs = self._image_features(pixel_values.flatten(0, 1), augmentation_params.flatten(0, 1), **kwargs)
        embeds = nn.functional.normalize(outputs.pooler_output, dim=-1)
        return embeds.unflatten(0, (batch, num_views)), outputs

    def image_text_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`[n_images, n_texts]` image-text domain similarities of normalised embeddings."""
        pair = torch.full((), IMAGE_TEXT_PAIR, device=image_embeds.device)
        return domain_scaled_similarity(image_embeds @ text_embeds.T, pair, self.logit_scale, self.logit_offset)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        augmentation_params: torch.FloatTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        return_loss: bool | None = None,
        **kwargs,
    ) -> UniCLIPOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
                Token ids; right padding with any pad id.
            pixel_values (`torch.FloatTensor`, *optional*):
                `(batch_size, num_views, channels, height, width)` augmented views (training, `num_views` must be
                `config.num_views`) or `(batch_size, channels, height, width)` images (inference).
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*):
                1 on real tokens, 0 on padding.
            augmentation_params (`torch.FloatTensor`, *optional*):
                `(batch_size, num_views, augmentation_param_dim)` parameters of each view, required with multi-view
                pixel_values. For 4-D pixel_values, `(batch_size, augmentation_param_dim)` or None (identity).
            return_loss (`bool`, *optional*):
                Whether to return the unified contrastive loss (`config.contrastive_loss`) over the (V+1)N
                embeddings; needs both modalities, one text per image. With 4-D pixel_values each image counts as a
                single view (V = 1: image-text positives only), whatever `config.num_views` says.

        Either modality may be left out (then only the other one's embeddings are returned), unless a loss is asked.
        """
        if return_loss and (input_ids is None or pixel_values is None):
            raise ValueError("the contrastive loss needs both input_ids and pixel_values")
        if input_ids is None and pixel_values is None:
            raise ValueError("give input_ids, pixel_values or both")

        image_view_embeds = image_embeds = text_embeds = vision_outputs = text_outputs = None
        if pixel_values is not None:
            image_view_embeds, vision_outputs = self._image_view_embeds(pixel_values, augmentation_params, **kwargs)
            image_embeds = image_view_embeds[:, 0]
        elif augmentation_params is not None:
            raise ValueError("augmentation_params were given without pixel_values")
        if input_ids is not None:
            text_outputs = self._text_features(input_ids, attention_mask, position_ids, token_type_ids, **kwargs)
            text_embeds = nn.functional.normalize(text_outputs.pooler_output, dim=-1)

        logits_per_image = logits_per_text = loss = None
        if image_embeds is not None and text_embeds is not None:
            logits_per_image = self.image_text_logits(image_embeds, text_embeds)
            logits_per_text = logits_per_image.T
            if return_loss:
                if image_embeds.shape[0] != text_embeds.shape[0]:
                    raise ValueError(
                        f"the loss pairs image i with text i: got {image_embeds.shape[0]} images and "
                        f"{text_embeds.shape[0]} texts"
                    )
                loss = unified_contrastive_loss(
                    image_view_embeds, text_embeds, self.logit_scale, self.logit_offset, self.config.contrastive_loss
                )

        return UniCLIPOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            image_view_embeds=image_view_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
        )


class UniCLIPVisionModelWithProjection(_UniCLIPHeads, UniCLIPPreTrainedModel):
    """The image tower, augmentation encoder and projection alone (image-feature-extraction, image indexing).

    Loads from a saved [`UniCLIPModel`] folder; the text weights there are ignored.
    """

    main_input_name = "pixel_values"
    input_modalities = ("image",)

    def __init__(self, config: UniCLIPConfig):
        super().__init__(config)
        self._build_vision(config)
        self.post_init()

    @can_return_tuple
    def forward(
        self,
        pixel_values: torch.FloatTensor | None = None,
        augmentation_params: torch.FloatTensor | None = None,
        **kwargs,
    ) -> EmbeddingOutput:
        """`[B, C, H, W]` (+ optional `[B, P]` parameters, default identity) -> projected embedding `[B, D]` first."""
        return EmbeddingOutput.from_features(self._image_features(pixel_values, augmentation_params, **kwargs))


class UniCLIPTextModelWithProjection(_UniCLIPHeads, UniCLIPPreTrainedModel):
    """The text tower and its projection alone (feature-extraction, text indexing).

    Loads from a saved [`UniCLIPModel`] folder; the image weights there are ignored.
    """

    input_modalities = ("text",)

    def __init__(self, config: UniCLIPConfig):
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


UniCLIPConfig.register_for_auto_class()
UniCLIPModel.register_for_auto_class("AutoModel")

__all__ = [
    "UniCLIPModel",
    "UniCLIPOutput",
    "UniCLIPPreTrainedModel",
    "UniCLIPTextModelWithProjection",
    "UniCLIPVisionModelWithProjection",
    "domain_scaled_similarity",
    "unified_contrastive_loss",
]
