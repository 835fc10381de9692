"""FLIP's patch dropout (Li et al., CVPR 2023): in training, the image transformer sees a random share of the patches.

A share `p` of each image's patch tokens is left out after the patch embedding (positions already added, the class
token always kept), so every transformer block runs on `1 + K` tokens instead of `1 + N`: about `1 / (1 - p)` less
image compute and activation memory. FLIP trains at p = 0.5-0.75 and finishes with a short unmasked phase. In eval
mode nothing is dropped, so the saved model, inference, the pipelines and the exports are those of the same weights
without patch dropout.

Which patches: per image, the top-K of random scores (open_clip's `PatchDropout`), drawn from torch's global
generator on the tokens' device, so that `torch.manual_seed`, GradCache's random-state capture and restore and exact
resume reproduce them. How many: [`num_kept_patches`], exact and deterministic given `p` and the patch count.
"""

from __future__ import annotations

import math
from fractions import Fraction

import torch
from torch import nn

from .config_checks import check_float


def check_patch_dropout(value) -> float:
    """`value` is a share of patches to drop: a finite number in `[0, 1)`."""
    return check_float(
        "patch_dropout",
        value,
        0.0,
        1.0,
        exclusive=(False, True),
        fix="give the share of image patches left out in training, e.g. 0.5 (FLIP), or 0.0 to keep every patch",
    )


@torch.compiler.assume_constant_result
def num_kept_patches(num_patches: int, patch_dropout: float) -> int:
    """How many of `num_patches` patches are kept when a share `patch_dropout` is dropped: `(1 - p) * N` rounded to
    the nearest integer, halves rounded down, and at least 1.

    The product is computed exactly on `p` as Python writes it (`repr(p)`, the decimal a config holds), so the count
    never depends on binary rounding: `(1 - 0.7) * 5 = 1.5` keeps 1, where float arithmetic gives
    `1.5000000000000002`. Examples: 196 patches (ViT-B/16 at 224 px) keep 98 at p = 0.5 and 49 at 0.75; 49 patches
    (B/32) keep 24 at 0.5 (24.5, a half, rounded down) and 12 at 0.75 (12.25).

    A pure function of two constants that `torch.compile` guards on (the config's share, the token count of a static
    shape): marked `assume_constant_result`, so compiled models evaluate it while tracing instead of breaking the
    graph on `Fraction`, and retrace when the share changes.
    """
    kept = (1 - Fraction(repr(float(patch_dropout)))) * num_patches
    return max(1, math.ceil(kept - Fraction(1, 2)))


def keep_tokens(tokens: torch.Tensor, kept: torch.Tensor, num_prefix_tokens: int = 1) -> torch.Tensor:
    """`(batch_size, P + N, width)` tokens -> `(batch_size, P + K, width)`: the `P` prefix tokens (class token), then
    the patches at `kept`, of shape `(batch_size, K)` (indices among the `N` patches)."""
    index = kept.unsqueeze(-1).expand(-1, -1, tokens.shape[-1])
    return torch.cat([tokens[:, :num_prefix_tokens], tokens[:, num_prefix_tokens:].gather(1, index)], dim=1)


class PatchDropout(nn.Module):
    """Leaves out `config.patch_dropout` of the patch tokens of each image in training mode; the identity in eval mode.

    The share is read from the model config at every call, so an unmasked phase is `model.config.patch_dropout = 0`.
    No parameters: the module only states where the tokens are chosen (it shows in the model's repr).

    Args:
        config (`ContrastiveConfig`): the model's config (its `patch_dropout`).
        num_prefix_tokens (`int`, defaults to 1): leading tokens that are always kept (the class token).
    """

    def __init__(self, config, num_prefix_tokens: int = 1):
        super().__init__()
        self.config = config
        self.num_prefix_tokens = num_prefix_tokens

    def extra_repr(self) -> str:
        return f"num_prefix_tokens={self.num_prefix_tokens}"

    def choose(self, batch_size: int, num_patches: int, device: torch.device) -> torch.Tensor | None:
        """Ascending indices `(batch_size, K)` of the patches each image keeps, or None when all are kept (eval mode,
        `patch_dropout` 0, or `K = N`). Only when some are dropped does it draw: `(batch_size, N)` standard normal
        scores from the global generator of `device`; the top `K` of each row are kept."""
        share = self.config.patch_dropout
        if not self.training or not share:
            return None
        keep = num_kept_patches(num_patches, check_patch_dropout(share))
        if keep >= num_patches:
            return None
        scores = torch.randn(batch_size, num_patches, device=device)
        return scores.topk(keep, dim=1).indices.sort(dim=1).values

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """`(batch_size, P + N, width)` -> `(batch_size, P + K, width)` in training, the same tensor in eval mode."""
        kept = self.choose(tokens.shape[0], tokens.shape[1] - self.num_prefix_tokens, tokens.device)
        return tokens if kept is None else keep_tokens(tokens, kept, self.num_prefix_tokens)

    def hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
        """A forward hook for an embeddings module whose output is the tokens: replaces them by the kept ones."""
        return self(output)


__all__ = ["PatchDropout", "check_patch_dropout", "keep_tokens", "num_kept_patches"]
