"""What every model in this package shares: the outputs, the heads, input validation and the objective's call.

Each method's file holds its models whole, as transformers' `models/clip` does: `XPreTrainedModel` builds the
method's encoders (`_build_encoders`) and encodes (`get_image_features`, `get_text_features`), and `XModel`,
`XVisionModelWithProjection` and `XTextModelWithProjection` give their `forward`. What does not depend on the
method is here, once, in their common base [`DualEncoderPreTrainedModel`] and driven by the [`ContrastiveConfig`]
fields: the augmentation-aware image head, the projections, the (domain-dependent) similarity, input validation and
the one contrastive objective (`losses.contrastive_objective`). So UniCL labels, UniCLIP views and MS-CLIP sharing
combine freely.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils import ModelOutput

from .auto_map import ZeroShotAutoMapMixin
from .configuration_contrastive import ContrastiveConfig
from .losses import IMAGE_TEXT, contrastive_objective, similarity_logits, text_identity_keys

VISION, TEXT = "vision", "text"


@dataclass
class ContrastiveOutput(ModelOutput):
    """Output of a dual encoder, laid out like transformers' `CLIPOutput` plus the per-view embeddings.

    Args:
        loss (`torch.Tensor` of shape `()`, *optional*):
            The contrastive loss (`config`'s objective), returned when asked for.
        logits_per_image (`torch.Tensor` of shape `(image_batch_size, text_batch_size)`):
            Scaled image-text similarities (with `domain_similarity`, the image-text pair's scale and offset); the
            zero-shot pipeline reads row 0.
        logits_per_text (`torch.Tensor` of shape `(text_batch_size, image_batch_size)`):
            The transpose of `logits_per_image`.
        text_embeds (`torch.Tensor` of shape `(text_batch_size, projection_dim)`):
            L2-normalised projected text features.
        image_embeds (`torch.Tensor` of shape `(image_batch_size, projection_dim)`):
            L2-normalised projected image features: of each image for 4-D `pixel_values`, of view 0 for multi-view
            input.
        image_view_embeds (`torch.Tensor` of shape `(image_batch_size, num_views, projection_dim)`):
            L2-normalised embeddings of every view (`num_views = 1` for 4-D `pixel_values`).
        text_model_output (`BaseModelOutputWithPooling`):
            The text encoder's output.
        vision_model_output (`BaseModelOutputWithPooling`):
            The image encoder's output; for multi-view input its batch is the `image_batch_size * num_views` views,
            view-major per image.
        loss_terms (`torch.Tensor` of shape `(3,)`, *optional*):
            With `loss`: the loss split by domain pair (image-image, image-text, text-text: `losses.DOMAIN_PAIRS`),
            detached; the three sum to `loss` (`losses.contrastive_objective`'s `return_terms`). Without
            `intra_domain_pairs` (CLIP, UniCL, SigLIP) image-image and text-text are 0.
    """

    loss: torch.Tensor | None = None
    logits_per_image: torch.Tensor | None = None
    logits_per_text: torch.Tensor | None = None
    text_embeds: torch.Tensor | None = None
    image_embeds: torch.Tensor | None = None
    text_model_output: BaseModelOutputWithPooling | None = None
    vision_model_output: BaseModelOutputWithPooling | None = None
    image_view_embeds: torch.Tensor | None = None
    # Last, like image_view_embeds: the fields before keep CLIPOutput's tuple layout.
    loss_terms: torch.Tensor | None = None

    def to_tuple(self) -> tuple[Any, ...]:
        return tuple(v.to_tuple() if isinstance(v, ModelOutput) else v for v in self.values())


@dataclass
class EmbeddingOutput(ModelOutput):
    """Output of a single-modality model (`*VisionModelWithProjection`, `*TextModelWithProjection`): the projected,
    un-normalised embedding first, then the encoder's output, so that the (image-)feature-extraction pipelines
    return the embedding, with or without `pool=True` (the pipeline's pooled output is `pooler_output`).

    Args:
        embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`): projected pooled features.
        last_hidden_state (`torch.Tensor` of shape `(batch_size, sequence_length, hidden_size)`): encoder tokens.
        pooler_output (`torch.Tensor` of shape `(batch_size, projection_dim)`): `embeds` again, the tensor
            transformers' pipelines read as the pooled output (as `get_*_features` return it).
        hidden_states (`tuple(torch.Tensor)`, *optional*): per-layer hidden states when asked for.
        attentions (`tuple(torch.Tensor)`, *optional*): per-layer attention weights when asked for.
    """

    embeds: torch.Tensor | None = None
    last_hidden_state: torch.Tensor | None = None
    pooler_output: torch.Tensor | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None
    attentions: tuple[torch.Tensor, ...] | None = None

    @classmethod
    def from_features(cls, features: BaseModelOutputWithPooling) -> EmbeddingOutput:
        return cls(
            embeds=features.pooler_output,
            last_hidden_state=features.last_hidden_state,
            pooler_output=features.pooler_output,
            hidden_states=features.hidden_states,
            attentions=features.attentions,
        )


# `torch.compiler.is_exporting` is missing from older torch releases; there `is_compiling` (export or torch.compile)
# is the closest.
_is_exporting = getattr(torch.compiler, "is_exporting", torch.compiler.is_compiling)


def capturing_graph() -> bool:
    """Whether an exporter is recording this call as a graph (`torch.export`, the ONNX exporters, `torch.jit.trace`).

    Checks of input *values* (token ids in the vocabulary, no all-padding text) read tensors into Python: a captured
    graph cannot hold them (dynamo refuses data-dependent branches, tracing would bake in the example's answer), so
    they are skipped while capturing and the graph's caller validates its inputs. Shape checks stay: they read sizes.
    """
    return torch.jit.is_tracing() or _is_exporting()


def with_pooler_output(encoder_output, pooler_output: torch.Tensor) -> BaseModelOutputWithPooling:
    """The encoder's output with `pooler_output` replaced by the projected embedding (transformers 5's
    `get_*_features` convention)."""
    return BaseModelOutputWithPooling(
        last_hidden_state=encoder_output.last_hidden_state,
        pooler_output=pooler_output,
        hidden_states=encoder_output.hidden_states,
        attentions=encoder_output.attentions,
    )


class HeadLinear(nn.Linear):
    """An `nn.Linear` of the heads' small MLPs (`AugmentationEncoder`, `MLPProjection`), which
    `init_contrastive_weights` initialises itself.

    Why a class of its own: transformers never calls `_init_weights` on a module without parameters of its own in a
    model defined outside transformers (it marks such a container initialised and moves on), so the MLPs cannot be
    initialised through their parent module; each of their layers is found by its type instead, in every method's
    `_init_weights` (MS-CLIP's too, whose own scheme would otherwise leave them at PyTorch's default).
    """


class AugmentationEncoder(nn.Module):
    """UniCLIP's augmentation encoder: a small MLP from an augmentation parameter vector to a conditioning code.

    The input is the deviation from the identity parameters, so an un-augmented image feeds zeros.

    Args:
        config ([`ContrastiveConfig`]): gives `augmentation_param_dim` (P), `augmentation_hidden_size` and the
            identity parameters.
        output_size (`int`): width of the code (the image feature width for `"add"` fusion).
    """

    def __init__(self, config: ContrastiveConfig, output_size: int):
        super().__init__()
        self.identity = tuple(config.identity_augmentation_params)
        self.fc1 = HeadLinear(config.augmentation_param_dim, config.augmentation_hidden_size)
        self.activation = nn.GELU()
        self.fc2 = HeadLinear(config.augmentation_hidden_size, output_size)

    def forward(self, augmentation_params: torch.Tensor) -> torch.Tensor:
        """`(num_images, P)` -> `(num_images, output_size)`."""
        identity = torch.tensor(self.identity, dtype=augmentation_params.dtype, device=augmentation_params.device)
        return self.fc2(self.activation(self.fc1(augmentation_params - identity)))


class MLPProjection(nn.Module):
    """The image projection of `augmentation_fusion="mlp"`: `Linear(in, hidden) -> GELU -> Linear(hidden, out)`,
    no bias on the last layer (as CLIP's linear projection). It takes the place of `visual_projection`'s Linear,
    under the same name (its weights are `visual_projection.fc1.*` and `visual_projection.fc2.weight`).

    Args:
        input_size (`int`): the pooled image feature's width plus the augmentation code's.
        hidden_size (`int`): the hidden width (the pooled image feature's width, `_build_heads`).
        output_size (`int`): `projection_dim`.
    """

    def __init__(self, input_size: int, hidden_size: int, output_size: int):
        super().__init__()
        self.fc1 = HeadLinear(input_size, hidden_size)
        self.activation = nn.GELU()
        self.fc2 = HeadLinear(hidden_size, output_size, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """`(num_images, input_size)` -> `(num_images, output_size)`."""
        return self.fc2(self.activation(self.fc1(features)))


def init_contrastive_weights(module: nn.Module, config: ContrastiveConfig) -> None:
    """Initialises what [`DualEncoderPreTrainedModel`] adds: the similarity's scales and offsets and the layers of
    the augmentation encoder and of the MLP image head (`HeadLinear`: weights `normal(0, initializer_range)`, as the
    tower models' linear heads, biases zero). Each method's `_init_weights` calls it for every module; the encoders
    initialise themselves."""
    if isinstance(getattr(module, "logit_scale", None), nn.Parameter):
        init.copy_(module.logit_scale, torch.tensor(config.logit_scale_init()))
    if isinstance(getattr(module, "logit_offset", None), nn.Parameter):
        init.copy_(module.logit_offset, torch.tensor(config.logit_offset_init()))
    if isinstance(module, HeadLinear):
        init.normal_(module.weight, std=config.initializer_range)
        if module.bias is not None:
            init.zeros_(module.bias)


class DualEncoderPreTrainedModel(ZeroShotAutoMapMixin, PreTrainedModel):
    """The base of every model in this package: heads, validation, similarity and objective on top of a method's
    encoders.

    A method's `XPreTrainedModel` (its one file) provides:

    - `_build_encoders(config, modalities) -> dict[str, int]`: builds the encoders of `modalities` (`"vision"`,
      `"text"`) and returns the width of each one's pooled feature;
    - `get_image_features(pixel_values, augmentation_params=None, **kwargs)` and `get_text_features(input_ids,
      attention_mask, position_ids, token_type_ids, **kwargs)`: validate, encode, pool, project
      (`_project_image`, `text_projection`).

    Its `XModel`, `XVisionModelWithProjection` and `XTextModelWithProjection` set `modalities` and give `forward`.
    """

    config: ContrastiveConfig
    modalities: tuple[str, ...] = (VISION, TEXT)
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_attention_backend = True
    # The single-modality models (class names in the same module) that `pipeline(task, model=folder)` gets for
    # these tasks (see `from_pretrained`); the dual encoders set it.
    pipeline_models: dict[str, str] = {}

    def __init__(self, config: ContrastiveConfig):
        config.check_values()  # again: fields may have been changed in place since the config was built
        super().__init__(config)
        self._build_heads(config, self._build_encoders(config, self.modalities))
        self.post_init()

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        r"""`PreTrainedModel.from_pretrained`, except under a feature-extraction pipeline.

        `pipeline("image-feature-extraction", model=folder, trust_remote_code=True)` loads the folder's custom code
        with `AutoModel` (the dual encoder); its config remembers the task (`ContrastiveConfig.from_pretrained`).
        The dual encoder then hands over to its single-modality model of `pipeline_models`, whose output leads with
        the projected embedding and holds it as `pooler_output` (`pool=True`), as `CLIPVisionModelWithProjection`'s
        users expect. (Where this package is imported, transformers passes the task to no class: give the pipeline
        `model=XVisionModelWithProjection.from_pretrained(folder)`, as for CLIP.)
        """
        name = cls.pipeline_models.get(getattr(kwargs.get("config"), "_pipeline_task", None))
        if name is not None:
            single_modality = getattr(sys.modules[cls.__module__], name)
            return single_modality.from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module):
        # Tower encoders initialise themselves (their own `_init_weights`); this covers the heads. The heads' MLP
        # layers are drawn once, by `init_contrastive_weights`.
        if not isinstance(module, HeadLinear):
            super()._init_weights(module)
        init_contrastive_weights(module, self.config)

    def _build_heads(self, config: ContrastiveConfig, widths: dict[str, int]) -> None:
        """The heads of the modalities in `widths` (each one's pooled feature width); the similarity's scale and
        offsets where both are present."""
        if VISION in widths:
            width = projected = widths[VISION]  # the pooled feature's width; what the projection reads
            if config.augmentation_aware:
                code_width = width if config.augmentation_fusion == "add" else config.augmentation_hidden_size
                self.augmentation_encoder = AugmentationEncoder(config, code_width)
                if config.augmentation_fusion != "add":  # "concat" and "mlp"
                    projected += code_width
            if config.augmentation_fusion == "mlp":  # the config refuses it without augmentation_aware
                self.visual_projection = MLPProjection(projected, width, config.projection_dim)
            else:
                self.visual_projection = nn.Linear(projected, config.projection_dim, bias=False)
        if TEXT in widths:
            self.text_projection = nn.Linear(widths[TEXT], config.projection_dim, bias=False)
        if VISION in widths and TEXT in widths:
            # Never 0-D (FSDP shards parameters along their first dimension).
            self.logit_scale = nn.Parameter(torch.tensor(config.logit_scale_init()))
            offsets = config.logit_offset_init()  # per domain pair, one (similarity_offset) or none
            self.logit_offset = nn.Parameter(torch.tensor(offsets)) if offsets is not None else None

    # ------------------------------------------------------------------------------------------------------------
    # Validation: a clear ValueError naming the field, before any library code sees bad input.

    def _check_pixel_values(self, pixel_values: torch.Tensor | None, multi_view: bool = False) -> None:
        if pixel_values is None:
            raise ValueError("pixel_values is required to compute image features")
        expected = "(batch_size, num_views, channels, height, width)" if multi_view else "(batch, channels, h, w)"
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != (5 if multi_view else 4):
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values)
            raise ValueError(f"pixel_values must be a tensor of shape {expected}, got {shape}")
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating-point tensor (normalised images), got {pixel_values.dtype}: "
                "prepare images with the model's processor, e.g. AutoProcessor.from_pretrained(...)(images=...)"
            )
        channels = getattr(self.config.vision_config, "num_channels", None)
        if channels is not None and pixel_values.shape[-3] != channels:
            raise ValueError(
                f"pixel_values has {pixel_values.shape[-3]} channels, the image encoder takes {channels} "
                f"(config.vision_config.num_channels); shape {tuple(pixel_values.shape)} is read as {expected}"
            )
        if pixel_values.shape[0] == 0:
            raise ValueError("pixel_values is an empty batch (0 images)")

    def _check_text(self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> None:
        if input_ids is None:
            raise ValueError("input_ids is required to compute text features")
        if not isinstance(input_ids, torch.Tensor) or input_ids.ndim != 2 or input_ids.is_floating_point():
            shape = tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids)
            raise ValueError(
                f"input_ids must be an integer tensor of shape (batch_size, sequence_length), got {shape}"
            )
        if input_ids.shape[0] == 0 or input_ids.shape[1] == 0:
            raise ValueError(f"input_ids is empty (shape {tuple(input_ids.shape)}): give at least one token per text")
        max_positions = getattr(self.config.text_config, "max_position_embeddings", None)
        if max_positions is not None and input_ids.shape[1] > max_positions:
            raise ValueError(
                f"input_ids has {input_ids.shape[1]} tokens per text, the text encoder takes at most {max_positions} "
                "(config.text_config.max_position_embeddings): tokenize with truncation=True and max_length="
                f"{max_positions}, or shorten the prompt template"
            )
        vocab_size = getattr(self.config.text_config, "vocab_size", None)
        if vocab_size is not None and not capturing_graph():
            low, high = int(input_ids.min()), int(input_ids.max())
            if low < 0 or high >= vocab_size:
                raise ValueError(
                    f"input_ids holds token id {high if high >= vocab_size else low} outside the vocabulary "
                    f"[0, {vocab_size}) (config.text_config.vocab_size): was the text tokenised with this model's "
                    "tokenizer?"
                )
        if attention_mask is not None:
            if attention_mask.shape != input_ids.shape:
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must have the shape of input_ids "
                    f"{tuple(input_ids.shape)}"
                )
            empty = [] if capturing_graph() else (attention_mask.sum(dim=1) == 0).nonzero().flatten().tolist()
            if empty:
                raise ValueError(f"texts {empty[:10]} are empty (their attention_mask is all 0)")

    def _check_augmentation_params(self, augmentation_params: torch.Tensor, leading: tuple[int, ...]) -> None:
        expected = (*leading, self.config.augmentation_param_dim)
        if tuple(augmentation_params.shape) != expected:
            layout = "batch, views" if len(leading) == 2 else "batch"
            raise ValueError(
                f"augmentation_params must have shape {list(expected)} ([{layout}, "
                f"augmentation_param_dim={self.config.augmentation_param_dim}]); got {list(augmentation_params.shape)}"
            )

    def _recorded_outputs(self, kwargs: dict) -> tuple[bool, bool]:
        """Pops `output_hidden_states` / `output_attentions` from an encoder call's kwargs: the call's value, else
        the model config's (so `from_pretrained(..., output_hidden_states=True)` works as in transformers)."""
        hidden = kwargs.pop("output_hidden_states", None)
        attentions = kwargs.pop("output_attentions", None)
        hidden = self.config.output_hidden_states if hidden is None else hidden
        attentions = self.config.output_attentions if attentions is None else attentions
        return bool(hidden), bool(attentions)

    def _check_forward_inputs(
        self,
        input_ids: torch.Tensor | None,
        pixel_values: torch.Tensor | None,
        augmentation_params: torch.Tensor | None,
        labels: torch.Tensor | None,
        return_loss: bool | None,
    ) -> bool:
        """Checks which inputs a dual encoder's `forward` was given together; returns whether a loss is asked."""
        wants_loss = bool(return_loss) or labels is not None
        if wants_loss and (input_ids is None or pixel_values is None):
            raise ValueError("a contrastive loss needs both input_ids and pixel_values")
        if input_ids is None and pixel_values is None:
            raise ValueError("give input_ids, pixel_values or both")
        if labels is not None and not self.config.use_labels:
            raise ValueError("labels were given but config.use_labels is False: drop them or set use_labels=True")
        if pixel_values is None and augmentation_params is not None:
            raise ValueError("augmentation_params were given without pixel_values")
        return wants_loss

    # ------------------------------------------------------------------------------------------------------------
    # Heads

    def _project_image(self, pooled: torch.Tensor, augmentation_params: torch.Tensor | None = None) -> torch.Tensor:
        """Pooled image features `(batch_size, width)` (and their `(batch_size, P)` augmentation parameters, None:
        identity) -> the projected, un-normalised embeddings `(batch_size, projection_dim)`. With augmentation
        awareness the code is added (`"add"`) or concatenated (`"concat"`, `"mlp"`) before `visual_projection`
        (a Linear, or the 2-layer `MLPProjection` for `"mlp"`)."""
        if self.config.augmentation_aware:
            batch, width = pooled.shape[0], self.config.augmentation_param_dim
            if augmentation_params is None:
                identity = self.config.identity_augmentation_params
                augmentation_params = torch.tensor(identity, device=pooled.device).expand(batch, width)
            else:
                self._check_augmentation_params(augmentation_params, (batch,))
            code = self.augmentation_encoder(augmentation_params.to(device=pooled.device, dtype=pooled.dtype))
            pooled = pooled + code if self.config.augmentation_fusion == "add" else torch.cat([pooled, code], dim=-1)
        return self.visual_projection(pooled)

    def _image_view_embeddings(
        self, pixel_values: torch.Tensor, augmentation_params: torch.Tensor | None, **kwargs
    ) -> tuple[torch.Tensor, BaseModelOutputWithPooling]:
        """Normalised `(batch_size, num_views, projection_dim)` embeddings of `(batch_size, channels, height, width)`
        images (one view) or of `(batch_size, num_views, channels, height, width)` views, and the encoder output."""
        if isinstance(pixel_values, torch.Tensor) and pixel_values.ndim == 4:
            if augmentation_params is not None and augmentation_params.ndim == 3:
                if self.config.augmentation_aware:
                    self._check_augmentation_params(augmentation_params, (pixel_values.shape[0], 1))
                augmentation_params = augmentation_params[:, 0]
            outputs = self.get_image_features(pixel_values, augmentation_params, return_dict=True, **kwargs)
            return nn.functional.normalize(outputs.pooler_output, dim=-1)[:, None], outputs
        self._check_pixel_values(pixel_values, multi_view=True)
        batch, num_views = pixel_values.shape[:2]
        if num_views != self.config.num_views:
            raise ValueError(
                f"pixel_values has {num_views} views per image but config.num_views is {self.config.num_views}"
            )
        if self.config.augmentation_aware:
            if augmentation_params is None:
                raise ValueError(
                    "multi-view pixel_values [batch, views, C, H, W] need augmentation_params "
                    f"[batch, views, {self.config.augmentation_param_dim}] describing each view (augmentation_aware)"
                )
            self._check_augmentation_params(augmentation_params, (batch, num_views))
            augmentation_params = augmentation_params.flatten(0, 1)
        outputs = self.get_image_features(pixel_values.flatten(0, 1), augmentation_params, return_dict=True, **kwargs)
        embeds = nn.functional.normalize(outputs.pooler_output, dim=-1)
        return embeds.unflatten(0, (batch, num_views)), outputs

    # ------------------------------------------------------------------------------------------------------------
    # Similarity and objective (dual encoders)

    def similarity_scale(self) -> torch.Tensor:
        """`exp(logit_scale)`: of shape `(3,)` (per domain pair) with `domain_similarity`, else `(1,)`."""
        return self.logit_scale.exp()

    def image_text_logits(self, image_embeds: torch.Tensor, text_embeds: torch.Tensor) -> torch.Tensor:
        """`(num_images, num_texts)` image-text similarities of normalised embeddings."""
        return similarity_logits(image_embeds @ text_embeds.T, IMAGE_TEXT, self.similarity_scale(), self.logit_offset)

    @torch.no_grad()
    def calibrate_logit_offsets(self, image_view_embeds: torch.Tensor, text_embeds: torch.Tensor) -> list[float]:
        r"""Sets `logit_offset[D]` to the mean cosine of *different* items' embeddings in domain pair D (image-image,
        image-text, text-text) over this batch, averaged over all ranks; returns the three values.

        At initialisation the three domain pairs sit at very different similarities (measured on CLIP-style towers:
        about 0.95 image-image, -0.06 image-text, 0.76 text-text), so with one offset the intra-domain negatives
        swamp the image-text positives. Centring each pair on its own negatives starts the domain-dependent
        similarity where it can learn; the trainer calls this once, on the first batch of a run from scratch.

        Args:
            image_view_embeds (`torch.Tensor` of shape `(batch_size, num_views, projection_dim)`): L2-normalised.
            text_embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`): L2-normalised.
        """
        if not self.config.domain_similarity:
            raise ValueError("calibrate_logit_offsets needs domain_similarity=True (per-pair offsets)")
        n, num_views, _ = image_view_embeds.shape
        views = image_view_embeds.reshape(n * num_views, -1).float()
        texts = text_embeds.float()
        view_items = torch.arange(n, device=views.device).repeat_interleave(num_views)
        text_items = torch.arange(n, device=views.device)
        sums, counts = [], []
        for left, right, left_items, right_items in (
            (views, views, view_items, view_items),
            (views, texts, view_items, text_items),
            (texts, texts, text_items, text_items),
        ):
            different = left_items[:, None] != right_items[None, :]
            sums.append((left @ right.T)[different].sum())
            counts.append(different.sum().to(torch.float32))
        totals = torch.stack(sums + counts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(totals)
        means = totals[:3] / totals[3:].clamp_min(1)
        self.logit_offset.copy_(means.to(self.logit_offset.dtype))
        return means.tolist()

    def contrastive_loss(
        self,
        image_view_embeds: torch.Tensor,
        text_embeds: torch.Tensor,
        labels: torch.Tensor | None = None,
        text_keys: torch.Tensor | None = None,
        return_terms: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        r"""The config's objective over (this rank's share of) a batch of embeddings.

        `forward(..., return_loss=True)` calls it; so does exact large-batch accumulation, on embeddings cached over
        several micro-batches.

        Args:
            image_view_embeds (`torch.Tensor` of shape `(batch_size, num_views, projection_dim)`): L2-normalised.
            text_embeds (`torch.Tensor` of shape `(batch_size, projection_dim)`): L2-normalised; text `i` pairs with
                the views of image `i`.
            labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*): class ids (`-1`: a pair of its own),
                with `config.use_labels`.
            text_keys (`torch.LongTensor` of shape `(batch_size,)`, *optional*): `losses.text_identity_keys` of the
                texts, used with `config.mask_duplicate_texts`.
            return_terms (`bool`): also return the loss split by domain pair.

        Returns:
            `torch.Tensor` of shape `()`; with `return_terms`, `(loss, terms)` with `terms` of shape `(3,)`
            ([`ContrastiveOutput`]'s `loss_terms`).
        """
        config = self.config
        if labels is not None and not config.use_labels:
            raise ValueError("labels were given but config.use_labels is False: drop them or set use_labels=True")
        if image_view_embeds.shape[0] != text_embeds.shape[0]:
            raise ValueError(
                f"the loss pairs image i with text i: got {image_view_embeds.shape[0]} images and "
                f"{text_embeds.shape[0]} texts"
            )
        return contrastive_objective(
            image_view_embeds,
            text_embeds,
            self.similarity_scale(),
            self.logit_offset,
            labels=None if labels is None else labels.to(text_embeds.device),
            text_keys=text_keys if config.mask_duplicate_texts else None,
            intra_domain_pairs=config.intra_domain_pairs,
            variant=config.contrastive_loss,
            chunk_size=config.loss_chunk_size,
            return_terms=return_terms,
        )

    def _dual_forward(
        self,
        input_ids: torch.LongTensor | None,
        pixel_values: torch.FloatTensor | None,
        attention_mask: torch.Tensor | None,
        position_ids: torch.LongTensor | None,
        token_type_ids: torch.LongTensor | None,
        augmentation_params: torch.FloatTensor | None,
        labels: torch.LongTensor | None,
        return_loss: bool | None,
        **kwargs,
    ) -> ContrastiveOutput:
        """Every method's `forward`: the images' view embeddings `(image_batch_size, num_views, projection_dim)` and
        the texts' `(text_batch_size, projection_dim)` (L2-normalised) through the subclass's `get_*_features`, the
        config's contrastive loss where asked (`_check_forward_inputs`), the logits where both modalities ran."""
        wants_loss = self._check_forward_inputs(input_ids, pixel_values, augmentation_params, labels, return_loss)
        image_view_embeds = vision_outputs = text_embeds = text_outputs = loss = loss_terms = None
        if pixel_values is not None:
            image_view_embeds, vision_outputs = self._image_view_embeddings(
                pixel_values, augmentation_params, **kwargs
            )
        if input_ids is not None:
            text_outputs = self.get_text_features(
                input_ids, attention_mask, position_ids, token_type_ids, return_dict=True, **kwargs
            )
            text_embeds = nn.functional.normalize(text_outputs.pooler_output, dim=-1)
        if wants_loss:
            text_keys = self._text_keys(input_ids, attention_mask)
            loss, loss_terms = self.contrastive_loss(
                image_view_embeds, text_embeds, labels, text_keys, return_terms=True
            )
        return self._contrastive_output(loss, loss_terms, image_view_embeds, text_embeds, vision_outputs, text_outputs)

    def _text_keys(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor | None:
        """The texts' identity keys where the config masks duplicate texts (`losses.text_identity_keys`), else None."""
        return text_identity_keys(input_ids, attention_mask) if self.config.mask_duplicate_texts else None

    def _contrastive_output(
        self,
        loss: torch.Tensor | None,
        loss_terms: torch.Tensor | None,
        image_view_embeds: torch.Tensor | None,
        text_embeds: torch.Tensor | None,
        vision_outputs: BaseModelOutputWithPooling | None,
        text_outputs: BaseModelOutputWithPooling | None,
    ) -> ContrastiveOutput:
        """A dual encoder's output: view 0 as `image_embeds`, the image-text logits where both modalities ran."""
        image_embeds = None if image_view_embeds is None else image_view_embeds[:, 0]
        logits_per_image = logits_per_text = None
        if image_embeds is not None and text_embeds is not None:
            logits_per_image = self.image_text_logits(image_embeds, text_embeds)
            logits_per_text = logits_per_image.T
        return ContrastiveOutput(
            loss=loss,
            logits_per_image=logits_per_image,
            logits_per_text=logits_per_text,
            text_embeds=text_embeds,
            image_embeds=image_embeds,
            image_view_embeds=image_view_embeds,
            text_model_output=text_outputs,
            vision_model_output=vision_outputs,
            loss_terms=loss_terms,
        )


__all__ = [
    "AugmentationEncoder",
    "ContrastiveOutput",
    "DualEncoderPreTrainedModel",
    "EmbeddingOutput",
    "HeadLinear",
    "MLPProjection",
    "VISION",
    "TEXT",
    "init_contrastive_weights",
    "with_pooler_output",
]
