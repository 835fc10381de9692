"""MS-CLIP model configuration: one modality-shared transformer and the whole sharing spectrum as plain fields."""

from __future__ import annotations

import math
from types import MappingProxyType

from huggingface_hub.dataclasses import strict

from .config_checks import (
    DEPTH_FIX,
    MAX_LAYERS,
    check_activation,
    check_float,
    check_int,
    check_parameter_count,
    check_patch_grid,
    check_rate,
    transformer_parameters,
)
from .configuration_contrastive import ContrastiveConfig

# Sub-layers of a transformer block that can be shared between the image and the text modality.
SHAREABLE_SUBLAYERS = ("attention", "mlp", "layernorm")

# Named points of the sharing spectrum. Each preset only lists what differs from the defaults (the released
# MS-CLIP-S ViT-B/32), so overrides given to `from_preset` change widths, sizes, ... of any point.
MSCLIP_PRESETS: dict[str, dict] = {
    # The released model: attention + MLP shared in blocks 1..L-1, every LayerNorm modality-specific, vision block 0
    # a conv stem and text block 0 unshared (early specialization), parallel CNN branch with lateral adapters.
    "ms-clip-s": {},
    # All but LayerNorm shared in every block; no early specialization, no parallel branch.
    "shared": {
        "shared_sublayers": ["attention", "mlp"],
        "shared_layers": "all",
        "early_specialization": False,
        "parallel_branch": False,
    },
    # Everything shared, LayerNorms included.
    "fully-shared": {
        "shared_sublayers": ["attention", "mlp", "layernorm"],
        "shared_layers": "all",
        "early_specialization": False,
        "parallel_branch": False,
    },
    "mlp-shared": {
        "shared_sublayers": ["mlp"],
        "shared_layers": "all",
        "early_specialization": False,
        "parallel_branch": False,
    },
    "attention-shared": {
        "shared_sublayers": ["attention"],
        "shared_layers": "all",
        "early_specialization": False,
        "parallel_branch": False,
    },
    # Nothing shared: a CLIP baseline (ViT + causal text transformer of the same width) run by the same code.
    "separate": {
        "shared_sublayers": [],
        "shared_layers": "none",
        "early_specialization": False,
        "parallel_branch": False,
    },
}


class TowerView:
    """A read-only view of one modality of an [`MSCLIPConfig`] with the attribute names of transformers' tower
    configs (`CLIPVisionConfig` / `CLIPTextConfig`), for code written against two-tower models."""

    def __init__(self, model_type: str, fields: dict):
        object.__setattr__(self, "_fields", MappingProxyType({"model_type": model_type, **fields}))

    def __getattr__(self, name: str):
        try:
            return self._fields[name]
        except KeyError:
            raise AttributeError(f"{self._fields['model_type']} view of MSCLIPConfig has no field {name!r}") from None

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(
            f"config.{self._fields['model_type'].split('_')[-2]}_config is a read-only view of MSCLIPConfig: "
            f"set {name!r} on the MSCLIPConfig itself"
        )

    def __iter__(self):
        return iter(self._fields)

    def to_dict(self) -> dict:
        return dict(self._fields)

    def __repr__(self) -> str:
        return f"TowerView({dict(self._fields)})"


@strict
class MSCLIPConfig(ContrastiveConfig):
    r"""Configuration of an [`MSCLIPModel`]: one stack of transformer blocks that both modalities run through.

    `MSCLIPConfig()` is the released MS-CLIP-S ViT-B/32 (132.4M parameters). Named points of the sharing spectrum
    come from [`MSCLIPConfig.from_preset`].

    Block `i` of the stack is vision block `i` and text block `i` of the official model. When early specialization
    is on, vision block 0 is the convolutional stem (so vision runs blocks 1..L-1 only) and text block 0 is a
    text-only transformer block.

    Args:
        vocab_size (`int`, defaults to 49408): text vocabulary size.
        max_position_embeddings (`int`, defaults to 77): text context length.
        hidden_size (`int`, defaults to 768): width of both modalities (sharing needs equal widths).
        intermediate_size (`int`, defaults to 3072): MLP width.
        num_hidden_layers (`int`, defaults to 12): blocks in the stack (the vision stem counts as block 0).
        vision_num_attention_heads (`int`, defaults to 12): heads when images run a block.
        text_num_attention_heads (`int`, defaults to 12): heads when text runs a block. It may differ from the vision
            count even in shared blocks: only parameters are shared, the head split is per modality.
        image_size (`int`, defaults to 224), patch_size (`int`, defaults to 32), num_channels (`int`, defaults to 3):
            the image grid is `image_size // patch_size` per side. With early specialization the stem's total stride
            (`2 * prod(stem_strides)`) must equal `patch_size`.
        hidden_act (`str`, defaults to `"quick_gelu"`): MLP activation.
        layer_norm_eps (`float`, defaults to 1e-12): eps of every LayerNorm (the official TF-style LayerNorm).
        attention_dropout (`float`, defaults to 0.0): dropout on attention probabilities.
        logit_scale_init_value (`float`, defaults to 1.0): initial log temperature (official init 1.0; CLIP's 2.6592).
        shared_sublayers (`list[str]`, defaults to `["attention", "mlp"]`): which sub-layers of a shared block hold one
            copy for both modalities, any of `"attention"`, `"mlp"`, `"layernorm"` (both LayerNorms of the block).
        shared_layers (`"all"`, `"none"` or `list[int]`, defaults to `"all"`): which blocks share. `"all"` means every
            block that both modalities run (all but block 0 under early specialization).
        early_specialization (`bool`, defaults to `True`): vision block 0 is a conv stem (3x3 stride-2 conv + BN +
            ReLU, residual stages, 1x1 conv) instead of a patch embedding + block 0, and text block 0 is unshared.
        stem_channels (`list[int]`, defaults to `[48, 96, 192, 384, 768]`): output channels of the stem's first conv
            and of each residual stage.
        stem_strides (`list[int]`, defaults to `[2, 2, 2, 2]`): stride of each residual stage (`[2, 2, 2, 1]` for
            B/16).
        parallel_branch (`bool`, defaults to `True`): the vision-only CNN branch on the raw image, fused into the
            stream by lateral adapters.
        parallel_channels (`list[int]`, defaults to `[48, 96, 192, 384, 768]`): output channels of each branch stage.
        parallel_strides (`list[int]`, defaults to `[2, 2, 2, 2, 2]`): stride of each branch stage.
        parallel_t2b_kernels (`list[int]`, defaults to `[16, 8, 4, 2, 1]`): kernel = stride of the depthwise conv that
            brings branch stage `k` onto the token grid.
        parallel_lateral_layers (`list[int]`, defaults to `[2, 4, 6, 8, 10]`): adapter `k` runs just before vision
            block `parallel_lateral_layers[k]`, after branch stage `k`.
        batch_norm_eps (`float`, defaults to 1e-5): eps of the stem's and the adapters' BatchNorms and of branch
            stage 0.
        parallel_batch_norm_eps (`float`, defaults to 1e-6): eps of the BatchNorms in the branch's residual stages.
        initializer_factor (`float`, defaults to 1.0): scales the initialisation of the stack.
        bos_token_id / eos_token_id / pad_token_id (`int`, defaults to 49406 / 49407 / 0): CLIP BPE ids. Text is
            pooled at the first `eos_token_id` (the last attended token when a row has none).
        **kwargs: the [`ContrastiveConfig`] fields (projection, objective: labels, views, ...).

    Generic two-tower code reads `config.vision_config.hidden_size`, `config.text_config.vocab_size`, ...: both are
    read-only views ([`TowerView`]) of the fields above, since the stack is one.
    """

    model_type = "msclip"

    vocab_size: int = 49408
    max_position_embeddings: int = 77
    hidden_size: int = 768
    intermediate_size: int = 3072
    num_hidden_layers: int = 12
    vision_num_attention_heads: int = 12
    text_num_attention_heads: int = 12
    image_size: int = 224
    patch_size: int = 32
    num_channels: int = 3
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-12
    attention_dropout: float = 0.0
    logit_scale_init_value: float = 1.0
    shared_sublayers: list[str] | tuple[str, ...] | None = None
    shared_layers: str | list[int] | tuple[int, ...] | None = "all"
    early_specialization: bool = True
    stem_channels: list[int] | tuple[int, ...] | None = None
    stem_strides: list[int] | tuple[int, ...] | None = None
    parallel_branch: bool = True
    parallel_channels: list[int] | tuple[int, ...] | None = None
    parallel_strides: list[int] | tuple[int, ...] | None = None
    parallel_t2b_kernels: list[int] | tuple[int, ...] | None = None
    parallel_lateral_layers: list[int] | tuple[int, ...] | None = None
    batch_norm_eps: float = 1e-5
    parallel_batch_norm_eps: float = 1e-6
    initializer_factor: float = 1.0
    bos_token_id: int | None = 49406
    eos_token_id: int | None = 49407
    pad_token_id: int | None = 0

    def __post_init__(self, **kwargs):
        # Lists default to the released model's values (mutable defaults cannot be dataclass defaults).
        if self.shared_sublayers is None:
            self.shared_sublayers = ["attention", "mlp"]
        if self.stem_channels is None:
            self.stem_channels = [48, 96, 192, 384, 768]
        if self.stem_strides is None:
            self.stem_strides = [2, 2, 2, 2]
        if self.parallel_channels is None:
            self.parallel_channels = [48, 96, 192, 384, 768]
        if self.parallel_strides is None:
            self.parallel_strides = [2, 2, 2, 2, 2]
        if self.parallel_t2b_kernels is None:
            self.parallel_t2b_kernels = [16, 8, 4, 2, 1]
        if self.parallel_lateral_layers is None:
            self.parallel_lateral_layers = [2, 4, 6, 8, 10]
        for name in (
            "shared_sublayers",
            "stem_channels",
            "stem_strides",
            "parallel_channels",
            "parallel_strides",
            "parallel_t2b_kernels",
            "parallel_lateral_layers",
        ):
            setattr(self, name, list(getattr(self, name)))
        if self.shared_layers is None:
            self.shared_layers = "none"
        if not isinstance(self.shared_layers, str):
            self.shared_layers = sorted(int(i) for i in self.shared_layers)
        super().__post_init__(**kwargs)  # ends with `check_values`, which validates the architecture

    def check_values(self) -> None:
        super().check_values()
        self.validate_architecture()

    def _shared_tower_fields(self) -> dict:
        return {
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "hidden_act": self.hidden_act,
            "layer_norm_eps": self.layer_norm_eps,
            "attention_dropout": self.attention_dropout,
            "projection_dim": self.projection_dim,
            "initializer_range": self.initializer_range,
        }

    @property
    def vision_config(self) -> TowerView:
        """The image side of the stack, read-only: `num_hidden_layers` counts the transformer blocks images run (the
        conv stem replaces block 0 under early specialization)."""
        blocks = sum(self.vision_has_block(i) for i in range(self.num_hidden_layers))
        return TowerView(
            "msclip_vision_model",
            {
                **self._shared_tower_fields(),
                "num_hidden_layers": blocks,
                "num_attention_heads": self.vision_num_attention_heads,
                "image_size": self.image_size,
                "patch_size": self.patch_size,
                "num_channels": self.num_channels,
            },
        )

    @property
    def text_config(self) -> TowerView:
        """The text side of the stack, read-only."""
        return TowerView(
            "msclip_text_model",
            {
                **self._shared_tower_fields(),
                "num_hidden_layers": self.num_hidden_layers,
                "num_attention_heads": self.text_num_attention_heads,
                "vocab_size": self.vocab_size,
                "max_position_embeddings": self.max_position_embeddings,
                "bos_token_id": self.bos_token_id,
                "eos_token_id": self.eos_token_id,
                "pad_token_id": self.pad_token_id,
            },
        )

    @classmethod
    def from_preset(cls, name: str, **overrides) -> MSCLIPConfig:
        """A named point of the sharing spectrum: `"ms-clip-s"` (released), `"shared"` (all but LayerNorm),
        `"fully-shared"`, `"mlp-shared"`, `"attention-shared"` or `"separate"` (nothing shared, CLIP baseline).

        `overrides` are any config fields (widths, sizes, ...) and win over the preset.
        """
        if name not in MSCLIP_PRESETS:
            raise ValueError(f"unknown MS-CLIP preset {name!r}; choose one of {sorted(MSCLIP_PRESETS)}")
        return cls(**{**MSCLIP_PRESETS[name], **overrides})

    # ----------------------------------------------------------------------------------------------------------
    # Derived structure (used by the model; pure functions of the fields)

    @property
    def grid_size(self) -> int:
        """Tokens per side of the image grid."""
        return self.image_size // self.patch_size

    def vision_has_block(self, layer: int) -> bool:
        """Whether images run transformer block `layer` (block 0 is the conv stem under early specialization)."""
        return not (self.early_specialization and layer == 0)

    def layer_is_shared(self, layer: int) -> bool:
        """Whether block `layer` holds the `shared_sublayers` once for both modalities."""
        if not self.shared_sublayers or not self.vision_has_block(layer):
            return False
        if self.shared_layers == "all":
            return True
        if self.shared_layers == "none":
            return False
        return layer in self.shared_layers

    def shared_sublayers_of(self, layer: int) -> tuple[str, ...]:
        """The sub-layers held once in block `layer` (empty when the block is not shared)."""
        return tuple(self.shared_sublayers) if self.layer_is_shared(layer) else ()

    def num_attention_heads(self, modality: str) -> int:
        return self.vision_num_attention_heads if modality == "vision" else self.text_num_attention_heads

    # ----------------------------------------------------------------------------------------------------------

    def validate_architecture(self):
        """Raises ValueError naming the first absurd or inconsistent field, before anything is allocated: sizes are
        positive integers, at most `config_checks.MAX_LAYERS` blocks and `MAX_PARAMETERS` parameters, epsilons
        positive, the activation known, the patch grid whole."""
        for name in (
            "vocab_size",
            "max_position_embeddings",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "vision_num_attention_heads",
            "text_num_attention_heads",
            "image_size",
            "patch_size",
            "num_channels",
            "projection_dim",
        ):
            check_int(name, getattr(self, name), fix=f"the released MS-CLIP-S has {getattr(type(self), name)}")
        check_int("num_hidden_layers", self.num_hidden_layers, 1, MAX_LAYERS, DEPTH_FIX)
        lists = ("stem_channels", "stem_strides", "parallel_channels", "parallel_strides", "parallel_t2b_kernels")
        for name in lists:
            for index, value in enumerate(getattr(self, name)):
                check_int(f"{name}[{index}]", value, fix="channels, strides and kernels are positive")
        for name in ("layer_norm_eps", "batch_norm_eps", "parallel_batch_norm_eps"):
            check_float(name, getattr(self, name), 0.0, exclusive=(True, False), fix="give a small positive epsilon")
        check_rate("attention_dropout", self.attention_dropout)
        check_float("initializer_factor", self.initializer_factor, 0.0)
        check_activation("hidden_act", self.hidden_act)
        for modality in ("vision", "text"):
            heads = self.num_attention_heads(modality)
            if self.hidden_size % heads:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by {modality}_num_attention_heads {heads}: each "
                    "head takes hidden_size / heads channels; change either"
                )
        image_tokens = check_patch_grid("", self.image_size, self.patch_size)
        channels = [self.num_channels, *self.stem_channels], [self.num_channels, *self.parallel_channels]
        convolutions = sum(9 * a * b for chain in channels for a, b in zip(chain, chain[1:]))
        embeddings = self.vocab_size + self.max_position_embeddings + image_tokens + 1
        estimate = (
            2 * transformer_parameters(self.num_hidden_layers, self.hidden_size, self.intermediate_size)
            + (embeddings + 2 * self.projection_dim + sum(self.parallel_channels)) * self.hidden_size
            + convolutions
        )
        check_parameter_count("MSCLIPConfig", estimate, "reduce num_hidden_layers / hidden_size / intermediate_size")
        unknown = [s for s in self.shared_sublayers if s not in SHAREABLE_SUBLAYERS]
        if unknown:
            raise ValueError(f"unknown shared sub-layer(s) {unknown}; choose from {list(SHAREABLE_SUBLAYERS)}")
        if len(set(self.shared_sublayers)) != len(self.shared_sublayers):
            raise ValueError(f"shared_sublayers lists a sub-layer twice: {self.shared_sublayers}")
        if isinstance(self.shared_layers, str):
            if self.shared_layers not in ("all", "none"):
                raise ValueError(
                    f"shared_layers must be 'all', 'none' or a list of block indices, got {self.shared_layers!r}"
                )
        else:
            bad = [i for i in self.shared_layers if not 0 <= i < self.num_hidden_layers]
            if bad:
                raise ValueError(f"shared_layers {bad} out of range [0, {self.num_hidden_layers})")
            if self.early_specialization and 0 in self.shared_layers:
                raise ValueError(
                    "shared_layers cannot contain 0 with early_specialization: vision block 0 is the conv stem"
                )
        if self.early_specialization:
            if len(self.stem_channels) != len(self.stem_strides) + 1:
                raise ValueError(
                    f"stem_channels ({len(self.stem_channels)}) must have one entry more than stem_strides "
                    f"({len(self.stem_strides)}): the first conv, then one per residual stage"
                )
            total_stride = 2 * math.prod(self.stem_strides)
            if total_stride != self.patch_size:
                raise ValueError(
                    f"the conv stem's total stride 2 * prod(stem_strides) = {total_stride} must equal patch_size "
                    f"{self.patch_size}"
                )
        if self.parallel_branch:
            n = len(self.parallel_channels)
            if not (
                len(self.parallel_strides) == len(self.parallel_t2b_kernels) == len(self.parallel_lateral_layers) == n
            ):
                raise ValueError(
                    "parallel_channels, parallel_strides, parallel_t2b_kernels and parallel_lateral_layers need one "
                    f"entry per branch stage, got {n}, {len(self.parallel_strides)}, "
                    f"{len(self.parallel_t2b_kernels)}, "
                    f"{len(self.parallel_lateral_layers)}"
                )
            first = 1 if self.early_specialization else 0
            for layer in self.parallel_lateral_layers:
                if not first <= layer < self.num_hidden_layers:
                    raise ValueError(
                        f"parallel lateral layer {layer} out of range [{first}, {self.num_hidden_layers}) "
                        "(an adapter runs just before a vision transformer block)"
                    )
            if sorted(set(self.parallel_lateral_layers)) != list(self.parallel_lateral_layers):
                raise ValueError(
                    f"parallel_lateral_layers must be strictly increasing, got {self.parallel_lateral_layers}"
                )
            size = self.image_size
            for k, (stride, kernel) in enumerate(zip(self.parallel_strides, self.parallel_t2b_kernels)):
                size = (size - 1) // stride + 1  # 3x3 conv, padding 1
                if size % kernel or size // kernel != self.grid_size:
                    raise ValueError(
                        f"parallel branch stage {k} gives a {size}x{size} map; with t2b kernel {kernel} it does not "
                        f"land on the {self.grid_size}x{self.grid_size} token grid"
                    )


__all__ = ["MSCLIP_PRESETS", "MSCLIPConfig", "SHAREABLE_SUBLAYERS"]
