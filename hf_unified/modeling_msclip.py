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
- `logit_scale`: 0-d log temperature.

Projections are `nn.Linear(bias=False)`, so an official `[in, out]` matrix `P` (applied `x @ P`) loads as `P.T`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutput, BaseModelOutputWithPooling
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS

from .auto_map import ZeroShotAutoMapMixin
from .configuration_msclip import MSCLIPConfig
from .dual_encoder import (
    ContrastiveModel,
    ContrastiveOutput,
    ImageEmbeddingModel,
    TextEmbeddingModel,
    init_contrastive_weights,
)
from .patch_dropout import PatchDropout, keep_tokens
from .pretrained import register_scalar_checkpoint_shapes
from .towers import eos_positions

MODALITIES = ("vision", "text")


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
# Vision: embeddings (patch conv or early-specialization stem), parallel CNN branch, lateral adapters


def conv2d_channels_last(x: torch.Tensor, conv: nn.Conv2d, weight=None, bias=None) -> torch.Tensor:
    """`conv(x)` with input and weight in channels-last memory format (NHWC), the layout CPU (oneDNN) and GPU
    (cuDNN tensor-core) convolution kernels run fastest in; the output stays channels-last, so a chain of these
    converts once. The values are those of `conv(x)`.

    On a CPU, a strided 1x1 convolution without padding of fewer than 16 channels runs as a unit-stride one on the
    strided slice (the same values): oneDNN's 1x1 weight gradient of a strided channels-last input with fewer
    channels than its vector block (8 floats with AVX2, 16 with AVX-512) writes past its scratch buffer
    (uxlfoundation/oneDNN#6035: heap corruption, or wrong gradients where threads overrun each other's share); CPUs
    without AVX-512 crashed on the 4-channel stem of the tests' tiny MS-CLIP-S. Wider ones keep oneDNN's strided
    kernel (the slice cost 1.4x its time in training at the base model's widths)."""
    weight = conv.weight if weight is None else weight
    bias = conv.bias if bias is None else bias
    stride = conv.stride
    pointwise = conv.kernel_size == (1, 1) and conv.padding in ((0, 0), "valid")
    if pointwise and stride != (1, 1) and conv.in_channels < 16 and x.device.type == "cpu":
        x, stride = x[:, :, :: stride[0], :: stride[1]], 1
    return nn.functional.conv2d(
        x.contiguous(memory_format=torch.channels_last),
        weight.contiguous(memory_format=torch.channels_last),
        bias,
        stride,
        conv.padding,
        conv.dilation,
        conv.groups,
    )


class MSCLIPConvNorm(nn.Module):
    """Conv2d (no bias) + BatchNorm, channels-last. At inference (`eval()`) the BatchNorm is folded into the
    convolution (`w * gamma / sqrt(var + eps)`, bias `beta - mean * gamma / sqrt(var + eps)`): one kernel instead
    of a convolution and a normalisation pass, the same values up to float rounding."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, groups=1, eps=1e-5):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, groups=groups, bias=False)
        self.norm = nn.BatchNorm2d(out_channels, eps=eps)

    def forward(self, x: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """`[B, C_in, H, W]` -> `[B, C_out, H', W']`; with `positions` (`[B, K]` flat indices into the `H' x W'`
        output), only those outputs, as a `[B, C_out, K, 1]` map normalised over them alone (patch dropout: the
        BatchNorm's statistics are those of the tokens that go on)."""
        if positions is not None:
            out = conv2d_channels_last(x, self.conv).flatten(2)
            out = out.gather(2, positions.unsqueeze(1).expand(-1, out.shape[1], -1))
            return self.norm(out.unsqueeze(-1))
        if self.training or not self.norm.track_running_stats:
            return self.norm(conv2d_channels_last(x, self.conv))
        norm = self.norm
        scale = norm.weight * torch.rsqrt(norm.running_var + norm.eps)
        weight = self.conv.weight * scale.to(self.conv.weight.dtype).reshape(-1, 1, 1, 1)
        bias = (norm.bias - norm.running_mean * scale).to(self.conv.weight.dtype)
        return conv2d_channels_last(x, self.conv, weight, bias)


def relu_(x: torch.Tensor) -> torch.Tensor:
    """ReLU in place on a convolution's (or BatchNorm's) fresh output, as torchvision's ResNets do: neither backward
    needs that output, and the separate pass over a new tensor was 11% of MS-CLIP-S's inference time on CPU."""
    return nn.functional.relu(x, inplace=True)


class MSCLIPStemStage(nn.Module):
    """Residual stage of the stem: `relu(BN(conv3x3_s(x)) + BN(conv1x1_s(x)))`."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, eps: float):
        super().__init__()
        self.main = MSCLIPConvNorm(in_channels, out_channels, 3, stride, 1, eps=eps)
        self.shortcut = MSCLIPConvNorm(in_channels, out_channels, 1, stride, 0, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.main(x)
        out += self.shortcut(x)
        return relu_(out)


class MSCLIPConvStem(nn.Module):
    """Early specialization of the vision side (replaces the patch embedding and vision block 0):
    3x3 stride-2 conv + BN + ReLU, residual stages, then a 1x1 conv to the width (no norm, no activation).

    `[B, 3, S, S]` -> `[B, W, S / patch_size, S / patch_size]`.
    """

    def __init__(self, config: MSCLIPConfig):
        super().__init__()
        channels = config.stem_channels
        self.first = MSCLIPConvNorm(config.num_channels, channels[0], 3, 2, 1, eps=config.batch_norm_eps)
        self.stages = nn.ModuleList(
            [
                MSCLIPStemStage(channels[i], channels[i + 1], stride, config.batch_norm_eps)
                for i, stride in enumerate(config.stem_strides)
            ]
        )
        self.last_conv = nn.Conv2d(channels[-1], config.hidden_size, 1, bias=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = relu_(self.first(pixel_values))
        for stage in self.stages:
            x = stage(x)
        return conv2d_channels_last(x, self.last_conv)


class MSCLIPVisionEmbeddings(nn.Module):
    """`[B, 3, S, S]` -> `[B, 1 + grid**2, W]`: CLS token + grid tokens (row-major) + learned positions."""

    def __init__(self, config: MSCLIPConfig):
        super().__init__()
        self.config = config
        self.class_embedding = nn.Parameter(torch.empty(config.hidden_size))
        if config.early_specialization:
            self.stem = MSCLIPConvStem(config)
        else:
            self.patch_embedding = nn.Conv2d(
                config.num_channels, config.hidden_size, config.patch_size, config.patch_size, bias=False
            )
        self.num_positions = config.grid_size**2 + 1
        self.position_embedding = nn.Embedding(self.num_positions, config.hidden_size)
        self.register_buffer("position_ids", torch.arange(self.num_positions).expand((1, -1)), persistent=False)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        size = self.config.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (self.config.num_channels, size, size):
            raise ValueError(
                f"pixel_values must have shape [batch, {self.config.num_channels}, {size}, {size}], "
                f"got {tuple(pixel_values.shape)}"
            )
        embed = self.stem if self.config.early_specialization else self.patch_embedding
        weight_dtype = next(embed.parameters()).dtype
        grid = embed(pixel_values.to(weight_dtype))
        tokens = grid.permute(0, 2, 3, 1).flatten(1, 2)  # row-major grid tokens; a view of a channels-last grid
        cls = self.class_embedding.to(tokens.dtype).expand(tokens.shape[0], 1, -1)
        return torch.cat([cls, tokens], dim=1) + self.position_embedding(self.position_ids)


class MSCLIPBottleneck(nn.Module):
    """Residual stage of the parallel branch: 1x1 (to out/2) -> 3x3 stride s -> 1x1 (to out), BN + ReLU between,
    plus a 1x1 stride-s projection shortcut; ReLU after the sum. BatchNorm eps `parallel_batch_norm_eps` (1e-6)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, eps: float):
        super().__init__()
        mid = out_channels // 2
        self.reduce = MSCLIPConvNorm(in_channels, mid, 1, eps=eps)
        self.spatial = MSCLIPConvNorm(mid, mid, 3, stride, 1, eps=eps)
        self.expand = MSCLIPConvNorm(mid, out_channels, 1, eps=eps)
        self.shortcut = MSCLIPConvNorm(in_channels, out_channels, 1, stride, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = relu_(self.reduce(x))
        out = relu_(self.spatial(out))
        out = self.expand(out)
        out += self.shortcut(x)
        return relu_(out)


class MSCLIPFirstBranchStage(nn.Module):
    """Stage 0 of the parallel branch: 3x3 conv + BN + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, eps: float):
        super().__init__()
        self.layer = MSCLIPConvNorm(in_channels, out_channels, 3, stride, 1, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return relu_(self.layer(x))


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


class MSCLIPPreTrainedModel(ZeroShotAutoMapMixin, PreTrainedModel):
    config: MSCLIPConfig
    config_class = MSCLIPConfig
    base_model_prefix = "msclip"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_sdpa = True
    _supports_flex_attn = False
    _supports_attention_backend = True
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


class MSCLIPEncoders:
    """MS-CLIP's encoders: the modality-specific parts around the one shared stack, for the dual encoder and for
    the single-modality models (which build the same parameter names, minus the other modality's). The heads,
    forward and objective are the package's one skeleton (`dual_encoder.ContrastiveHeads`)."""

    config: MSCLIPConfig

    def _build_encoders(self, config: MSCLIPConfig, modalities: tuple[str, ...]) -> dict[str, int]:
        width, eps = config.hidden_size, config.layer_norm_eps
        if "vision" in modalities:
            self.vision_embeddings = MSCLIPVisionEmbeddings(config)
            self.vision_patch_dropout = PatchDropout(config)
            self.vision_pre_layernorm = MSCLIPLayerNorm(width, eps=eps)
            if config.parallel_branch:
                self.vision_parallel_branch = MSCLIPParallelBranch(config)
            self.vision_post_layernorm = MSCLIPLayerNorm(width, eps=eps)
        if "text" in modalities:
            self.text_embeddings = MSCLIPTextEmbeddings(config)
            self.text_final_layer_norm = MSCLIPLayerNorm(width, eps=eps)
        self.encoder = MSCLIPEncoder(config, modalities)
        return {modality: width for modality in modalities}

    def get_input_embeddings(self) -> nn.Module | None:
        embeddings = getattr(self, "text_embeddings", None)
        return None if embeddings is None else embeddings.token_embedding

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.text_embeddings.token_embedding = value

    def _encode_image(self, pixel_values: torch.Tensor, **kwargs) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """Image tokens `(batch_size, 1 + grid**2, hidden_size)` (before `vision_post_layernorm`) and the pooled
        CLS feature `(batch_size, hidden_size)`.

        `hidden_states`, when recorded, holds the stem's (or patch embedding's) tokens after `vision_pre_layernorm`
        and the output of every block images run: `config.vision_config.num_hidden_layers + 1` tensors (the conv
        stem replaces block 0 under early specialization).

        Patch dropout (training mode, `config.patch_dropout > 0`): the stack runs on the class token and the kept
        patches, `1 + K` tokens; the parallel branch's tokens are taken at the same indices.
        """
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
            "vision",
            attention_mask=None,
            before_layer=before_layer,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        return outputs, self.vision_post_layernorm(outputs.last_hidden_state[:, 0])

    def _encode_text(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **kwargs,
    ) -> tuple[BaseModelOutputWithPooling, torch.Tensor]:
        """Text tokens `(batch_size, sequence_length, hidden_size)` after the final LayerNorm and the pooled
        end-of-text feature `(batch_size, hidden_size)`; `token_type_ids` are accepted and ignored.

        `hidden_states`, when recorded, holds the embeddings and the output of every block:
        `config.num_hidden_layers + 1` tensors.
        """
        output_hidden_states, output_attentions = self._recorded_outputs(kwargs)
        hidden_states = self.text_embeddings(input_ids, position_ids)
        batch_size, seq_len = input_ids.shape
        # Kernels that take `is_causal` need no materialised mask (and skip the masked blocks); others get it.
        mask = None
        if self.config._attn_implementation not in CAUSAL_FLAG_ATTENTION:
            mask = causal_attention_mask(seq_len, hidden_states.dtype, hidden_states.device)
        outputs = self.encoder(
            hidden_states,
            "text",
            attention_mask=mask,
            output_hidden_states=output_hidden_states,
            output_attentions=output_attentions,
            **kwargs,
        )
        last_hidden_state = self.text_final_layer_norm(outputs.last_hidden_state)
        # Official: the first end-of-text token (the largest id). By id, not argmax, so any pad id works.
        positions = eos_positions(input_ids, attention_mask, self.config.eos_token_id).to(last_hidden_state.device)
        pooled = last_hidden_state[torch.arange(batch_size, device=last_hidden_state.device), positions]
        outputs = BaseModelOutputWithPooling(
            last_hidden_state=last_hidden_state,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return outputs, pooled


class MSCLIPModel(ContrastiveModel, MSCLIPEncoders, MSCLIPPreTrainedModel):
    """MS-CLIP dual encoder with one modality-shared transformer.

    Example:

    ```python
    >>> from hf_unified import MSCLIPConfig, MSCLIPModel
    >>> model = MSCLIPModel(MSCLIPConfig.from_preset("shared", hidden_size=64, intermediate_size=128,
    ...     num_hidden_layers=2, vision_num_attention_heads=2, text_num_attention_heads=2, image_size=64))
    ```
    """


class MSCLIPVisionModelWithProjection(ImageEmbeddingModel, MSCLIPEncoders, MSCLIPPreTrainedModel):
    """The vision path alone (stack with shared + vision parts, stem, branch, projection), for image indexing and
    the image-feature-extraction pipeline. Loads from a saved [`MSCLIPModel`] folder; text weights are ignored."""


class MSCLIPTextModelWithProjection(TextEmbeddingModel, MSCLIPEncoders, MSCLIPPreTrainedModel):
    """The text path alone (stack with shared + text parts, embeddings, projection), for text indexing and the
    feature-extraction pipeline. Loads from a saved [`MSCLIPModel`] folder; image weights are ignored."""


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
