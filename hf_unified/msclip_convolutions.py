"""MS-CLIP's convolutions: the image embeddings (patch convolution or early-specialization stem) and the stages of
the parallel CNN branch.

Channels-last convolutions with BatchNorm folded at inference; the modules' names are the checkpoint layout
(`vision_embeddings.stem.*`, `vision_parallel_branch.stages.*`, see `modeling_msclip.py`).
"""

from __future__ import annotations

import torch
from torch import nn

from .configuration_msclip import MSCLIPConfig


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


__all__ = [
    "MSCLIPBottleneck",
    "MSCLIPConvNorm",
    "MSCLIPConvStem",
    "MSCLIPFirstBranchStage",
    "MSCLIPStemStage",
    "MSCLIPVisionEmbeddings",
    "conv2d_channels_last",
    "relu_",
]
