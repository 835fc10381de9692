"""MS-CLIP: learning visual-language representations with a modality-shared transformer (You et al., ECCV 2022).

One stack of pre-LN transformer blocks serves both modalities. Images run it bidirectionally, text causally, each
with its own head count. Which sub-layers of which blocks hold a single copy for both modalities is configuration
([`MSCLIPConfig`]), so the whole sharing spectrum (nothing shared = a CLIP baseline, attention only, MLP only, all
but LayerNorm, everything) is one code path.

Module layout (the names a checkpoint converter maps to):

- `encoder.layers.{i}` ([`MSCLIPEncoderLayer`]): the shared sub-layers of block `i` are direct children
  (`attention`, `mlp`, `layer_norm1`, `layer_norm2`); the modality-specific ones live in `encoder.layers.{i}.vision`
  and `encoder.layers.{i}.text` (`nn.ModuleDict`s with the same four names). Every weight exists exactly once:
  there is no parameter aliasing between towers, so `state_dict` and safetensors hold each shared tensor once.
  A modality that does not run block `i` (vision block 0 under early specialization) has no entry there.
- Attention keeps **separate** `q_proj`, `k_proj`, `v_proj` and `out_proj` Linears (CLIP naming). The official
  fused `attn.in_proj_weight` `[3W, W]` splits by rows into q `[0:W]`, k `[W:2W]`, v `[2W:3W]` (same for the bias);
  `attn.out_proj` maps to `out_proj`. The MLP is `mlp.fc1` / `mlp.fc2` (official `mlp.c_fc` / `mlp.c_proj`).
- Vision: `vision_embeddings.{class_embedding, position_embedding, stem | patch_embedding}`, `vision_pre_layernorm`,
  `vision_post_layernorm`, `vision_parallel_branch.{stages, adapters}`, `visual_projection`.
- Text: `text_embeddings.{token_embedding, position_embedding}`, `text_final_layer_norm`, `text_projection`.
- `logit_scale`: `(1,)` log temperature. Projections are `nn.Linear(bias=False)`, so an official `[in, out]` matrix
  `P` (applied `x @ P`) loads as `P.T`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import can_return_tuple

from .configuration_msclip import MSCLIPConfig
from .dual_encoder import (
    TEXT,
    VISION,
    ContrastiveOutput,
    DualEncoderPreTrainedModel,
    EmbeddingOutput,
    init_contrastive_weights,
    with_pooler_output,
)
from .msclip_convolutions import (
    MSCLIPBottleneck,
    MSCLIPConvNorm,
    MSCLIPFirstBranchStage,
    MSCLIPVisionEmbeddings,
    conv2d_channels_last,
)
from .patch_dropout import PatchDropout, keep_tokens
from .pretrained import register_scalar_checkpoint_shapes
from .towers import eos_positions

MODALITIES = (VISION, TEXT)
# [`MSCLIPModel`]'s output: transformers' `CLIPOutput` layout (`dual_encoder.ContrastiveOutput`).
MSCLIPOutput = ContrastiveOutput


# ----------------------------------------------------------------------------------------------------------------
# Transformer block


class MSCLIPLayerNorm(nn.LayerNorm):
    """LayerNorm computed in at least float32 whatever the input dtype (the official TF-style LayerNorm, eps inside
    the sqrt); float64 stays float64."""

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        compute = torch.promote_types(dtype, torch.float32)
        output = nn.functional.layer_norm(
            hidden_states.to(compute),
            self.normalized_shape,
            self.weight.to(compute) if self.weight is not None else None,
            self.bias.to(compute) if self.bias is not None else None,
            self.eps,
        )
        return output.to(dtype)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Plain attention. query/key/value `[B, H, L, D]`, additive mask `[B, 1, L, L]`; returns `[B, L, H, D]` and
    weights."""
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = nn.functional.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class MSCLIPAttention(nn.Module):
    """Multi-head self-attention whose head count is chosen per call, so one set of weights serves a modality with
    12 heads and another with 8 (only parameters are shared between modalities, not the head split).

    The weights stay three `q_proj` / `k_proj` / `v_proj` Linears (CLIP naming, one checkpoint layout), but they run
    as one fused `[3W, W]` matmul: one GEMM over the tokens instead of three is the cheaper step on CPU, and the
    concatenated weight is tiny next to the activations. The fusion is skipped when a projection is not a plain
    `nn.Linear` or carries hooks (PEFT/LoRA wrappers, quantised layers), which must run as modules.
    """

    def __init__(self, config: MSCLIPConfig):
        super().__init__()
        self.config = config
        self.embed_dim = config.hidden_size
        self.dropout = config.attention_dropout
        # Causality is decided per call (text only), never inferred by SDPA from this attribute.
        self.is_causal = False
        self.q_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.k_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.v_proj = nn.Linear(self.embed_dim, self.embed_dim)
        self.out_proj = nn.Linear(self.embed_dim, self.embed_dim)

    def _can_fuse_projections(self) -> bool:
        return all(
            type(proj) is nn.Linear
            and proj.bias is not None
            and not proj._forward_hooks
            and not proj._forward_pre_hooks
            for proj in (self.q_proj, self.k_proj, self.v_proj)
        )

    def _project_qkv(self, hidden_states: torch.Tensor, shape: tuple[int, ...]):
        """`[B, L, W]` -> query, key, value `[B, H, L, D]` each."""
        if self._can_fuse_projections():
            weight = torch.cat([self.q_proj.weight, self.k_proj.weight, self.v_proj.weight])
            bias = torch.cat([self.q_proj.bias, self.k_proj.bias, self.v_proj.bias])
            batch_size, seq_len, num_heads, head_dim = shape
            qkv = nn.functional.linear(hidden_states, weight, bias)
            # [B, L, 3, H, D] -> [3, B, H, L, D]: views only, SDPA reads the strides as they are.
            return qkv.view(batch_size, seq_len, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        return tuple(
            proj(hidden_states).view(shape).transpose(1, 2) for proj in (self.q_proj, self.k_proj, self.v_proj)
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        num_heads: int,
        attention_mask: torch.Tensor | None = None,
        is_causal: bool = False,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states `[B, L, W]`, additive attention_mask `[B, 1, L, L]` or None -> `[B, L, W]`, weights.

        `is_causal=True` with no mask asks a kernel that supports it (SDPA, flash) for causal attention without a
        materialised mask; backends that ignore the flag (eager) must be given the mask (see `text_attention_mask`).
        """
        batch_size, seq_len, _ = hidden_states.shape
        head_dim = self.embed_dim // num_heads
        query, key, value = self._project_qkv(hidden_states, (batch_size, seq_len, num_heads, head_dim))

        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        attn_output, attn_weights = attention_interface(
            self,
            query,
            key,
            value,
            attention_mask,
            scaling=head_dim**-0.5,
            dropout=self.dropout if self.training else 0.0,
            is_causal=is_causal and attention_mask is None,
            **kwargs,
        )
        attn_output = attn_output.reshape(batch_size, seq_len, self.embed_dim)
        return self.out_proj(attn_output), attn_weights


class MSCLIPMLP(nn.Module):
    def __init__(self, config: MSCLIPConfig):
        super().__init__()
        self.activation_fn = ACT2FN[config.hidden_act]
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.activation_fn(self.fc1(hidden_states)))


def _build_sublayer(config: MSCLIPConfig, name: str) -> nn.Module:
    if name == "attention":
        return MSCLIPAttention(config)
    if name == "mlp":
        return MSCLIPMLP(config)
    return MSCLIPLayerNorm(config.hidden_size, eps=config.layer_norm_eps)


# Sub-layer names of a block, and the `shared_sublayers` entry that controls each.
_SUBLAYER_KIND = {"attention": "attention", "mlp": "mlp", "layer_norm1": "layernorm", "layer_norm2": "layernorm"}


class MSCLIPEncoderLayer(GradientCheckpointingLayer):
    """Block `layer_idx` of the modality-shared stack: `x += attn(ln1(x)); x += mlp(ln2(x))`.

    Shared sub-layers are direct children (one copy); the others are built per modality under `self.vision` /
    `self.text`. `modalities` limits which modality-specific parts exist (a vision-only model builds no text parts);
    which sub-layers are shared depends on the config alone, so every model class uses the same parameter names.
    """

    def __init__(self, config: MSCLIPConfig, layer_idx: int, modalities: tuple[str, ...] = MODALITIES):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads = {m: config.num_attention_heads(m) for m in MODALITIES}
        shared_kinds = config.shared_sublayers_of(layer_idx)
        self.shared_names = tuple(name for name, kind in _SUBLAYER_KIND.items() if kind in shared_kinds)
        self.runs = tuple(m for m in modalities if m == "text" or config.vision_has_block(layer_idx))
        if self.runs:
            for name in self.shared_names:
                self.add_module(name, _build_sublayer(config, name))
        for modality in self.runs:
            own = {n: _build_sublayer(config, n) for n in _SUBLAYER_KIND if n not in self.shared_names}
            if own:
                self.add_module(modality, nn.ModuleDict(own))

    def sublayer(self, modality: str, name: str) -> nn.Module:
        """The module `modality` uses for sub-layer `name` (the shared one, or its own)."""
        if name in self.shared_names:
            return getattr(self, name)
        return getattr(self, modality)[name]

    def forward(
        self,
        hidden_states: torch.Tensor,
        modality: str,
        attention_mask: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """hidden_states `[B, L, W]` -> `[B, L, W]` and the attention weights (None under SDPA)."""
        if modality not in self.runs:
            raise ValueError(f"{modality} does not run block {self.layer_idx} in this model")
        residual = hidden_states
        hidden_states = self.sublayer(modality, "layer_norm1")(hidden_states)
        hidden_states, attn_weights = self.sublayer(modality, "attention")(
            hidden_states, self.num_heads[modality], attention_mask, is_causal=modality == "text", **kwargs
        )
        hidden_states = residual + hidden_states
        residual = hidden_states
        hidden_states = self.sublayer(modality, "mlp")(self.sublayer(modality, "layer_norm2")(hidden_states))
        return residual + hidden_states, attn_weights


class MSCLIPEncoder(nn.Module):
    """The single stack of blocks both modalities run through."""

    def __init__(self, config: MSCLIPConfig, modalities: tuple[str, ...] = MODALITIES):
        super().__init__()
        self.layers = nn.ModuleList(
            [MSCLIPEncoderLayer(config, i, modalities) for i in range(config.num_hidden_layers)]
        )

    def forward(
        self,
        hidden_states: torch.Tensor,
        modality: str,
        attention_mask: torch.Tensor | None = None,
        before_layer: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
        output_hidden_states: bool = False,
        output_attentions: bool = False,
        **kwargs,
    ) -> BaseModelOutput:
        """Runs `modality` through every block it has. `before_layer(i, x)`, if given, transforms the stream just
        before block `i` (the parallel branch's lateral adapters)."""
        all_hidden_states = () if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for layer in self.layers:
            if modality not in layer.runs:
                continue
            if before_layer is not None:
                hidden_states = before_layer(layer.layer_idx, hidden_states)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            hidden_states, attn_weights = layer(hidden_states, modality, attention_mask, **kwargs)
            if output_attentions:
                all_attentions += (attn_weights,)
        if output_hidden_states:
            all_hidden_states += (hidden_states,)
        return BaseModelOutput(
            last_hidden_state=hidden_states, hidden_states=all_hidden_states, attentions=all_attentions
        )


# ----------------------------------------------------------------------------------------------------------------
# Vision: the parallel CNN branch's lateral adapters (the embeddings and the stages: `msclip_convolutions.py`)


class MSCLIPLateralAdapter(nn.Module):
    """Fuses branch features `[B, C_k, h*K, w*K]` into the token stream `[B, 1 + h*w, W]` (official `Lateral_Adapter`).

    `tokens = ln_adapt(cat[cls, BN(dw3x3(grid))] + cat[cls, pw1x1(BN(dwKxK_strideK(branch)))])`: the patch tokens get
    no identity residual (as in the official code), the CLS token is added to itself (invisible after the LayerNorm).

    Under patch dropout the stream holds `1 + K` tokens, the patches at `kept` (`[B, K]` grid indices, those the
    stack runs on). The branch runs on the whole image as always and its tokens are taken at the same indices. The
    token path places the kept tokens on the grid with zeros where patches were dropped (as sparse convolutions of
    masked image modelling do: a dropped neighbour contributes nothing), and its BatchNorm normalises over the kept
    tokens only.
    """

    def __init__(self, config: MSCLIPConfig, branch_channels: int, t2b_kernel: int):
        super().__init__()
        width = config.hidden_size
        eps = config.batch_norm_eps
        self.branch_depthwise = MSCLIPConvNorm(
            branch_channels, branch_channels, t2b_kernel, t2b_kernel, 0, groups=branch_channels, eps=eps
        )
        self.branch_pointwise = nn.Conv2d(branch_channels, width, 1, bias=False)
        self.token_depthwise = MSCLIPConvNorm(width, width, 3, 1, 1, groups=width, eps=eps)
        self.layer_norm = MSCLIPLayerNorm(width, eps=config.layer_norm_eps)

    def forward(
        self, hidden_states: torch.Tensor, branch_features: torch.Tensor, kept: torch.Tensor | None = None
    ) -> torch.Tensor:
        """`[B, 1 + N, W]` tokens (or `[B, 1 + K, W]`, the patches at `kept` `[B, K]`) -> the same shape."""
        batch_size, _, width = hidden_states.shape
        cls, tokens = hidden_states[:, :1], hidden_states[:, 1:]
        branch = conv2d_channels_last(self.branch_depthwise(branch_features), self.branch_pointwise)
        from_branch = branch.permute(0, 2, 3, 1).flatten(1, 2)
        side = branch.shape[-1]  # the branch lands on the token grid (the config checks its kernels)
        if kept is not None:
            index = kept.unsqueeze(-1).expand(-1, -1, width)
            from_branch = from_branch.gather(1, index)
            tokens = tokens.new_zeros(batch_size, side * side, width).scatter(1, index, tokens)
        # Tokens are already a channels-last grid: views in and out, no transposed copies.
        grid = tokens.reshape(batch_size, side, side, width).permute(0, 3, 1, 2)
        from_tokens = self.token_depthwise(grid, kept).permute(0, 2, 3, 1).flatten(1, 2)
        if from_branch.shape != from_tokens.shape:
            raise ValueError(
                f"parallel branch gives {tuple(from_branch.shape)} tokens, the stream has {tuple(from_tokens.shape)}"
            )
        # cat[cls, a] + cat[cls, b] == cat[cls + cls, a + b], with one concatenation instead of two.
        fused = torch.cat([cls + cls, from_tokens + from_branch.to(from_tokens.dtype)], dim=1)
        return self.layer_norm(fused)


class MSCLIPParallelBranch(nn.Module):
    """Vision-only CNN on the raw image; stage `k` output is fused by adapter `k` just before vision block
    `config.parallel_lateral_layers[k]`."""

    def __init__(self, config: MSCLIPConfig):
        super().__init__()
        channels = [config.num_channels] + list(config.parallel_channels)
        stages = []
        for k, stride in enumerate(config.parallel_strides):
            if k == 0:
                stages.append(MSCLIPFirstBranchStage(channels[0], channels[1], stride, config.batch_norm_eps))
            else:
                stages.append(MSCLIPBottleneck(channels[k], channels[k + 1], stride, config.parallel_batch_norm_eps))
        self.stages = nn.ModuleList(stages)
        self.adapters = nn.ModuleList(
            [
                MSCLIPLateralAdapter(config, channels[k + 1], kernel)
                for k, kernel in enumerate(config.parallel_t2b_kernels)
            ]
        )
        self.lateral_layers = list(config.parallel_lateral_layers)

    def fuser(
        self, pixel_values: torch.Tensor, kept: torch.Tensor | None = None
    ) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """A `before_layer(i, x)` hook for [`MSCLIPEncoder`] that advances the branch and fuses it where configured;
        `kept` (`[B, K]`): the patches the stream holds under patch dropout."""
        state = {"features": pixel_values.to(self.stages[0].layer.conv.weight.dtype)}

        def before_layer(layer_idx: int, hidden_states: torch.Tensor) -> torch.Tensor:
            if layer_idx not in self.lateral_layers:
                return hidden_states
            k = self.lateral_layers.index(layer_idx)
            state["features"] = self.stages[k](state["features"])
            return self.adapters[k](hidden_states, state["features"], kept)

        return before_layer


# ----------------------------------------------------------------------------------------------------------------
# Text


class MSCLIPTextEmbeddings(nn.Module):
    def __init__(self, config: MSCLIPConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden_size)
        self.position_embedding = nn.Embedding(config.max_position_embeddings, config.hidden_size)
        self.register_buffer(
            "position_ids", torch.arange(config.max_position_embeddings).expand((1, -1)), persistent=False
        )

    def forward(self, input_ids: torch.Tensor, position_ids: torch.Tensor | None = None) -> torch.Tensor:
        seq_len = input_ids.shape[-1]
        max_len = self.position_embedding.num_embeddings
        if seq_len > max_len:
            raise ValueError(f"input_ids has {seq_len} tokens, more than max_position_embeddings {max_len}")
        if position_ids is None:
            position_ids = self.position_ids[:, :seq_len]
        return self.token_embedding(input_ids) + self.position_embedding(position_ids)


# Attention backends that build the causal pattern themselves from `is_causal=True` when no mask is passed.
CAUSAL_FLAG_ATTENTION = frozenset({"sdpa", "flash_attention_2", "flash_attention_3"})


def causal_attention_mask(seq_len: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Additive `[1, 1, L, L]` causal mask (the official text mask: `-inf` above the diagonal).

    Padding needs no mask of its own: text is right-padded, so the causal mask already hides every pad token from
    the real tokens (and from the pooled end-of-text token). Pad positions keep the official values too.
    """
    mask = torch.full((seq_len, seq_len), torch.finfo(dtype).min, dtype=dtype, device=device).triu_(1)
    return mask[None, None]


# ----------------------------------------------------------------------------------------------------------------
# Models


class MSCLIPPreTrainedModel(DualEncoderPreTrainedModel):
    """MS-CLIP's encoders: the modality-specific parts around the one shared stack, for the dual encoder and for
    the single-modality models (which build the same parameter names, minus the other modality's), under the
    package's heads ([`DualEncoderPreTrainedModel`])."""

    config: MSCLIPConfig
    config_class = MSCLIPConfig
    base_model_prefix = "msclip"
    _supports_flex_attn = False
    _no_split_modules = ["MSCLIPEncoderLayer", "MSCLIPVisionEmbeddings", "MSCLIPTextEmbeddings"]
    zero_shot_class_name = "MSCLIPModel"

    @torch.no_grad()
    def _init_weights(self, module):
        config = self.config
        factor = config.initializer_factor
        width = config.hidden_size
        # CLIP's scheme for the transformer; He init for the convolutions; BN / LN to identity.
        if isinstance(module, MSCLIPAttention):
            in_std = (width**-0.5) * ((2 * config.num_hidden_layers) ** -0.5) * factor
            for proj in (module.q_proj, module.k_proj, module.v_proj):
                init.normal_(proj.weight, std=in_std)
                init.zeros_(proj.bias)
            init.normal_(module.out_proj.weight, std=width**-0.5 * factor)
            init.zeros_(module.out_proj.bias)
        elif isinstance(module, MSCLIPMLP):
            in_std = (width**-0.5) * ((2 * config.num_hidden_layers) ** -0.5) * factor
            init.normal_(module.fc1.weight, std=(2 * width) ** -0.5 * factor)
            init.zeros_(module.fc1.bias)
            init.normal_(module.fc2.weight, std=in_std)
            init.zeros_(module.fc2.bias)
        elif isinstance(module, MSCLIPVisionEmbeddings):
            init.normal_(module.class_embedding, std=width**-0.5 * factor)
            init.normal_(module.position_embedding.weight, std=config.initializer_range * factor)
            init.copy_(module.position_ids, torch.arange(module.num_positions).expand((1, -1)))
        elif isinstance(module, MSCLIPTextEmbeddings):
            init.normal_(module.token_embedding.weight, std=config.initializer_range * factor)
            init.normal_(module.position_embedding.weight, std=0.01 * factor)
            init.copy_(module.position_ids, torch.arange(config.max_position_embeddings).expand((1, -1)))
        elif isinstance(module, nn.Conv2d):
            init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, (nn.BatchNorm2d, nn.LayerNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if isinstance(module, nn.BatchNorm2d):
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, nn.Linear) and module.bias is None:
            # visual_projection / text_projection
            init.normal_(module.weight, std=width**-0.5 * factor)
        init_contrastive_weights(module, config)

    def _build_encoders(self, config: MSCLIPConfig, modalities: tuple[str, ...]) -> dict[str, int]:
        width, eps = config.hidden_size, config.layer_norm_eps
        if VISION in modalities:
            self.vision_embeddings = MSCLIPVisionEmbeddings(config)
            self.vision_patch_dropout = PatchDropout(config)
            self.vision_pre_layernorm = MSCLIPLayerNorm(width, eps=eps)
            if config.parallel_branch:
                self.vision_parallel_branch = MSCLIPParallelBranch(config)
            self.vision_post_layernorm = MSCLIPLayerNorm(width, eps=eps)
        if TEXT in modalities:
            self.text_embeddings = MSCLIPTextEmbeddings(config)
            self.text_final_layer_norm = MSCLIPLayerNorm(width, eps=eps)
        self.encoder = MSCLIPEncoder(config, modalities)
        return {modality: width for modality in modalities}

    def get_input_embeddings(self) -> nn.Module | None:
        embeddings = getattr(self, "text_embeddings", None)
        return None if embeddings is None else embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_embeddings.token_embedding = value

    @can_return_tuple
    def get_image_features(
        self, pixel_values: torch.Tensor, augmentation_params: torch.Tensor | None = None, **kwargs
    ) -> BaseModelOutputWithPooling:
        r"""`(batch_size, num_channels, height, width)` images -> the image tokens `(batch_size, 1 + grid**2,
        hidden_size)` (before `vision_post_layernorm`) with the projected, un-normalised embedding of the pooled
        CLS feature as `pooler_output` `(batch_size, projection_dim)`. `augmentation_params`
        (`(batch_size, augmentation_param_dim)`): for augmentation-aware configs only, None meaning identity.

        `hidden_states`, when recorded, holds the stem's (or patch embedding's) tokens after `vision_pre_layernorm`
        and the output of every block images run: `config.vision_config.num_hidden_layers + 1` tensors (the conv
        stem replaces block 0 under early specialization).

        Patch dropout (training mode, `config.patch_dropout > 0`): the stack runs on the class token and the kept
        patches, `1 + K` tokens; the parallel branch's tokens are taken at the same indices.
        """
        self._check_pixel_values(pixel_values)
        output_hidden_states, output_attentions = self._recorded_outputs(kwargs)
        hidden_states = self.vision_embeddings(pixel_values)
        kept = self.vision_patch_dropout.choose(
            hidden_states.shape[0], hidden_states.shape[1] - 1, pixel_values.device
        )
        if kept is not None:
            hidden_states = keep_tokens(hidden_states, kept)
        hidden_states = self.vision_pre_layernorm(hidden_states)
        before_layer = None
        if self.config.parallel_branch:
            before_layer = self.vision_parallel_branch.fuser(pixel_values, kept)
        outputs = self.encoder(
            hidden_states,
            VISION,
            attention_mask=None,
            before_layer=before_layer,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        pooled = self.vision_post_layernorm(outputs.last_hidden_state[:, 0])
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
        r"""Right-padded `(batch_size, sequence_length)` token ids -> the text tokens `(batch_size, sequence_length,
        hidden_size)` after the final LayerNorm with the projected, un-normalised embedding of the end-of-text token
        as `pooler_output` `(batch_size, projection_dim)`; `token_type_ids` are accepted and ignored.

        `hidden_states`, when recorded, holds the embeddings and the output of every block:
        `config.num_hidden_layers + 1` tensors.
        """
        self._check_text(input_ids, attention_mask)
        output_hidden_states, output_attentions = self._recorded_outputs(kwargs)
        hidden_states = self.text_embeddings(input_ids, position_ids)
        batch_size, seq_len = input_ids.shape
        # Kernels that take `is_causal` need no materialised mask (and skip the masked blocks); others get it.
        mask = None
        if self.config._attn_implementation not in CAUSAL_FLAG_ATTENTION:
            mask = causal_attention_mask(seq_len, hidden_states.dtype, hidden_states.device)
        outputs = self.encoder(
            hidden_states,
            TEXT,
            attention_mask=mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        last_hidden_state = self.text_final_layer_norm(outputs.last_hidden_state)
        # Official: the first end-of-text token (the largest id). By id, not argmax, so any pad id works.
        positions = eos_positions(input_ids, attention_mask, self.config.eos_token_id).to(last_hidden_state.device)
        pooled = last_hidden_state[torch.arange(batch_size, device=last_hidden_state.device), positions]
        return BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            pooler_output=self.text_projection(pooled),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )


class MSCLIPModel(MSCLIPPreTrainedModel):
    """MS-CLIP dual encoder with one modality-shared transformer.

    Example:

    ```python
    >>> from hf_unified import MSCLIPConfig, MSCLIPModel
    >>> model = MSCLIPModel(MSCLIPConfig.from_preset("shared", hidden_size=64, intermediate_size=128,
    ...     num_hidden_layers=2, vision_num_attention_heads=2, text_num_attention_heads=2, image_size=64))
    ```
    """

    pipeline_models = {
        "image-feature-extraction": "MSCLIPVisionModelWithProjection",
        "feature-extraction": "MSCLIPTextModelWithProjection",
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
        r"""Texts `input_ids` `(text_batch_size, sequence_length)` (right-padded, `attention_mask` 1 on real tokens)
        and images `pixel_values` `(image_batch_size, num_channels, height, width)` (or training views
        `(image_batch_size, config.num_views, num_channels, height, width)`, with `augmentation_params` for
        augmentation-aware configs) through the shared stack -> [`ContrastiveOutput`]. `labels`
        `(batch_size,)` (with `config.use_labels`) or `return_loss=True` add the config's contrastive loss, which
        needs both modalities, one text per image; otherwise either modality may be left out."""
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


class MSCLIPVisionModelWithProjection(MSCLIPPreTrainedModel):
    """The vision path alone (stack with shared + vision parts, stem, branch, projection), for image indexing and
    the image-feature-extraction pipeline. Loads from a saved [`MSCLIPModel`] folder; text weights are ignored."""

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
        r"""`(batch_size, num_channels, height, width)` images -> their projected, un-normalised embeddings
        `(batch_size, projection_dim)` first, then the stack's tokens."""
        features = self.get_image_features(pixel_values, augmentation_params, return_dict=True, **kwargs)
        return EmbeddingOutput.from_features(features)


class MSCLIPTextModelWithProjection(MSCLIPPreTrainedModel):
    """The text path alone (stack with shared + text parts, embeddings, projection), for text indexing and the
    feature-extraction pipeline. Loads from a saved [`MSCLIPModel`] folder; image weights are ignored."""

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
        r"""`(batch_size, sequence_length)` token ids -> their projected, un-normalised embeddings
        `(batch_size, projection_dim)` first, then the stack's tokens."""
        features = self.get_text_features(
            input_ids, attention_mask, position_ids, token_type_ids, return_dict=True, **kwargs
        )
        return EmbeddingOutput.from_features(features)


register_scalar_checkpoint_shapes(MSCLIPConfig.model_type)
MSCLIPConfig.register_for_auto_class()
MSCLIPModel.register_for_auto_class("AutoModel")

__all__ = [
    "MSCLIPModel",
    "MSCLIPOutput",
    "MSCLIPPreTrainedModel",
    "MSCLIPTextModelWithProjection",
    "MSCLIPVisionModelWithProjection",
]
