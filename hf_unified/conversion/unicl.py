"""Convert an official UniCL checkpoint (microsoft/UniCL) into a `UniCLModel` folder.

```bash
python -m hf_unified.conversion.unicl --checkpoint in21k_yfcc14m.pth --output unicl-swin-tiny-in21k-yfcc14m \
    --preset swin-tiny
```

The official file is `{'model': state_dict, ...}` (K-LITE's UniCL files are raw state dicts keyed `visual.`, `text.`,
`vision_projection`; both are accepted). The architecture comes from the tensor shapes wherever they tell it (Swin
embed dim, depths, heads per stage, window, MLP ratio; text vocabulary, width, depth, context; projection dim). What
shapes cannot tell (text heads, LayerNorm eps, activations, image size when no shifted-window mask is stored) comes
from flags, a `--config` JSON in the golden fixtures' format, or a `--preset` of the released models.

Mapping onto transformers' towers:

- image encoder (original Swin code) -> `SwinModel`: `qkv` split into q/k/v, `relative_position_index` and the shifted
  window `attn_mask` buffers are checked against what `SwinModel` computes and dropped.
- text encoder (CLIP-style causal transformer, TF-style LN eps 1e-12, QuickGELU) -> `CLIPTextModel`: fused
  `in_proj` split into q/k/v; pooled at the first end-of-text token like the official `argmax` over input ids.
- `image_projection` / `text_projection` (`[in, out]`, applied as `x @ P`) -> `nn.Linear` weights `P.T`.
- `logit_scale` copied raw (log scale).
"""

from __future__ import annotations

import copy
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..configuration_unicl import UNICL_SWIN_TINY, UNICL_TEXT_TRANSFORMER, UniCLConfig
from ..modeling_unicl import UniCLModel
from ..processing_unicl import UniCLProcessor, unicl_image_processor
from .common import ConversionError, ConvertedStateDict, OfficialStateDict, activation_name, first_given, nested_get
from .converter import Converter, Flag

_IMAGE = "image_encoder."
_TEXT = "text_encoder."

# The released checkpoints (configs/unicl_swin_{tiny,base}.yaml): Swin-T or Swin-B and the 12-layer text transformer.
_SWIN_TINY_RELEASE = {"vision_config": UNICL_SWIN_TINY, "text_config": UNICL_TEXT_TRANSFORMER, "projection_dim": 512}
PRESETS: dict[str, dict[str, Any]] = {
    "swin-tiny": _SWIN_TINY_RELEASE,
    "swin-base": {
        **_SWIN_TINY_RELEASE,
        "vision_config": {
            **UNICL_SWIN_TINY,
            "embed_dim": 128,
            "depths": [2, 2, 18, 2],
            "num_heads": [4, 8, 16, 32],
            "drop_path_rate": 0.5,
        },
    },
}


class UniCLConverter(Converter):
    method = "unicl"
    source = "microsoft/UniCL"
    description = "Convert an official UniCL checkpoint (microsoft/UniCL or K-LITE) into a transformers folder."
    checkpoint_help = "official .pth file ({'model': state_dict} or raw)"
    model_class = UniCLModel
    processor_class = UniCLProcessor
    presets = PRESETS
    defaults = {
        "vision_config": {
            "model_type": "swin",
            "image_size": 224,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "drop_path_rate": 0.1,
        },
        "text_config": {"model_type": "clip_text_model", "layer_norm_eps": 1e-12, "hidden_act": "quick_gelu"},
        "logit_scale_init_value": 1.0,
        "text_pooling": "eos",  # the official argmax over input ids: the first end-of-text token (the largest id)
        "vision_pooling": "pooler",  # SwinModel's pooler (final LayerNorm, mean over tokens) = forward_features
    }
    flags = (
        Flag("--image-size", "vision_config.image_size", "input resolution (read from the shifted-window mask)"),
        Flag("--text-heads", "text_config.num_attention_heads", "attention heads of the text transformer"),
        Flag("--text-layer-norm-eps", "text_config.layer_norm_eps", type=float),
        Flag("--vision-layer-norm-eps", "vision_config.layer_norm_eps", type=float),
        Flag("--text-hidden-act", "text_config.hidden_act", type=str, choices=("quick_gelu", "gelu")),
        Flag("--vision-hidden-act", "vision_config.hidden_act", type=str, choices=("gelu", "quick_gelu")),
        Flag("--drop-path-rate", "vision_config.drop_path_rate", "Swin stochastic depth (inactive in eval)", float),
    )
    text_prefix = "text_config."
    pad_token = "<|endoftext|>"

    def rename_keys(self, state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Renames K-LITE-style keys (`visual.`, `text.`, `vision_projection`) to the UniCL layout."""
        renamed = {}
        for key, tensor in state_dict.items():
            new = key
            if key.startswith("visual."):
                new = _IMAGE + key[len("visual.") :]
            elif key.startswith("text."):
                new = _TEXT + key[len("text.") :]
            elif key == "vision_projection":
                new = "image_projection"
            if new in renamed:
                raise ConversionError(f"checkpoint has both {new} and a K-LITE-style alias of it ({key})")
            renamed[new] = tensor
        return renamed

    def infer_shapes(self, official: OfficialStateDict) -> dict[str, Any]:
        """Raises:
        ConversionError: a tensor the architecture is read from is missing or has an impossible shape, or the
            checkpoint uses a Swin option `SwinModel` has no equivalent for.
        """
        need = [
            f"{_IMAGE}patch_embed.proj.weight",
            f"{_TEXT}token_embedding.weight",
            f"{_TEXT}positional_embedding",
            "image_projection",
            "text_projection",
        ]
        absent = [k for k in need if k not in official]
        if absent:
            raise ConversionError(
                "not a UniCL checkpoint (Swin image encoder + text transformer): missing " + ", ".join(absent)
            )
        if f"{_IMAGE}absolute_pos_embed" in official:
            raise ConversionError("Swin with an absolute position embedding (APE) is not supported by SwinModel")
        if f"{_IMAGE}patch_embed.norm.weight" not in official:
            raise ConversionError(
                "Swin without patch_norm is not supported: SwinModel always normalises patch embeddings"
            )

        embed_dim, num_channels, patch_size, patch_size_w = official.shape(f"{_IMAGE}patch_embed.proj.weight")
        if patch_size != patch_size_w:
            raise ConversionError(f"non-square patch {patch_size}x{patch_size_w} is not supported")
        num_stages = official.count_blocks(re.escape(_IMAGE) + r"layers\.(\d+)\.")
        depths = [
            official.count_blocks(re.escape(f"{_IMAGE}layers.{stage}.") + r"blocks\.(\d+)\.")
            for stage in range(num_stages)
        ]
        num_heads, windows, mlp_ratios = [], set(), set()
        image_size = None
        for stage, depth in enumerate(depths):
            dim = embed_dim * 2**stage
            heads = set()
            for block in range(depth):
                prefix = f"{_IMAGE}layers.{stage}.blocks.{block}."
                table = official.shape(prefix + "attn.relative_position_bias_table")
                if table is None or len(table) != 2:
                    raise ConversionError(f"{prefix}attn.relative_position_bias_table missing or not 2-D: {table}")
                side = math.isqrt(table[0])
                if side * side != table[0] or side % 2 == 0:
                    raise ConversionError(
                        f"{prefix}attn.relative_position_bias_table has {table[0]} rows, not (2w-1)^2"
                    )
                windows.add((side + 1) // 2)
                heads.add(table[1])
                fc1 = official.shape(prefix + "mlp.fc1.weight")
                if fc1 is not None:
                    mlp_ratios.add(fc1[0] / dim)
                mask = official.shape(prefix + "attn_mask")  # [windows, window area, window area], shifted blocks
                if mask is not None and image_size is None:
                    image_size = math.isqrt(mask[0]) * math.isqrt(mask[-1]) * patch_size * 2**stage
            if len(heads) != 1:
                raise ConversionError(f"Swin stage {stage}: blocks disagree on the number of heads {sorted(heads)}")
            num_heads.append(heads.pop())
        if len(windows) != 1:
            raise ConversionError(
                f"Swin stages use different window sizes {sorted(windows)} (window clipped to a small stage "
                "resolution); SwinModel keeps one relative-position table size for all stages"
            )
        if len(mlp_ratios) > 1:
            raise ConversionError(f"Swin blocks use different MLP ratios {sorted(mlp_ratios)}")

        vocab_size, width = official.shape(f"{_TEXT}token_embedding.weight")
        fc = official.shape(f"{_TEXT}resblocks.0.mlp.c_fc.weight")
        image_projection, text_projection = official.shape("image_projection"), official.shape("text_projection")
        if image_projection[1] != text_projection[1]:
            raise ConversionError(
                f"image_projection {image_projection} and text_projection {text_projection} project to different sizes"
            )
        return {
            "vision_config": {
                "patch_size": patch_size,
                "num_channels": num_channels,
                "embed_dim": embed_dim,
                "depths": depths,
                "num_heads": num_heads,
                "window_size": windows.pop(),
                "mlp_ratio": mlp_ratios.pop() if mlp_ratios else None,
                "qkv_bias": f"{_IMAGE}layers.0.blocks.0.attn.qkv.bias" in official,
                "image_size": image_size,
                "use_absolute_embeddings": False,
            },
            "text_config": {
                "vocab_size": vocab_size,
                "hidden_size": width,
                "num_hidden_layers": official.count_blocks(re.escape(_TEXT) + r"resblocks\.(\d+)\."),
                "intermediate_size": fc[0] if fc else None,
                "max_position_embeddings": official.shape(f"{_TEXT}positional_embedding")[0],
            },
            "projection_dim": image_projection[1],
        }

    def fields_from_config_json(self, config_json: dict[str, Any]) -> dict[str, Any]:
        """Its `architecture` section first, then `official_config`."""
        image = nested_get(config_json, "architecture", "image_encoder", default={})
        text = nested_get(config_json, "architecture", "text_encoder", default={})
        official_image = nested_get(config_json, "official_config", "MODEL", "IMAGE_ENCODER", default={})
        swin = official_image.get("SWIN", {})
        official_text = nested_get(config_json, "official_config", "MODEL", "TEXT_ENCODER", default={})
        tokenizer = nested_get(config_json, "architecture", "tokenizer") or config_json.get("tokenizer", {})
        preprocessing = config_json.get("preprocessing", {})
        if first_given(text.get("causal"), official_text.get("AUTOGRESSIVE")) is False:
            raise ConversionError(
                "the --config text encoder is not causal (AUTOGRESSIVE false); CLIPTextModel always applies a causal "
                "mask"
            )
        return {
            "vision_config.image_size": first_given(image.get("image_size"), official_image.get("IMG_SIZE")),
            "vision_config.patch_size": first_given(image.get("patch_size"), swin.get("PATCH_SIZE")),
            "vision_config.embed_dim": first_given(image.get("embed_dim"), swin.get("EMBED_DIM")),
            "vision_config.depths": first_given(image.get("depths"), swin.get("DEPTHS")),
            "vision_config.num_heads": first_given(image.get("num_heads"), swin.get("NUM_HEADS")),
            "vision_config.window_size": first_given(image.get("window_size"), swin.get("WINDOW_SIZE")),
            "vision_config.mlp_ratio": first_given(image.get("mlp_ratio"), swin.get("MLP_RATIO")),
            "vision_config.layer_norm_eps": image.get("layer_norm_eps"),
            "vision_config.hidden_act": activation_name(image.get("hidden_act")),
            "vision_config.drop_path_rate": first_given(
                image.get("drop_path_rate"), official_image.get("DROP_PATH_RATE")
            ),
            "text_config.vocab_size": text.get("vocab_size"),
            "text_config.hidden_size": first_given(text.get("width"), official_text.get("WIDTH")),
            "text_config.num_hidden_layers": first_given(text.get("layers"), official_text.get("LAYERS")),
            "text_config.num_attention_heads": first_given(text.get("heads"), official_text.get("HEADS")),
            "text_config.max_position_embeddings": first_given(
                text.get("context_length"), official_text.get("CONTEXT_LENGTH")
            ),
            "text_config.layer_norm_eps": text.get("layer_norm_eps"),
            "text_config.hidden_act": activation_name(text.get("hidden_act")),
            "text_config.bos_token_id": tokenizer.get("bos_token_id"),
            "text_config.eos_token_id": tokenizer.get("eos_token_id"),
            "text_config.pad_token_id": tokenizer.get("pad_token_id"),
            "projection_dim": first_given(
                nested_get(config_json, "architecture", "projection_dim"),
                nested_get(config_json, "official_config", "MODEL", "DIM_PROJECTION"),
            ),
            "logit_scale_init_value": nested_get(config_json, "architecture", "logit_scale_init_value_official"),
            "processor.resize_size": preprocessing.get("resize_size"),
            "processor.crop_size": preprocessing.get("image_size"),
        }

    def complete_fields(self, fields: dict[str, Any]) -> None:
        super().complete_fields(fields)
        fields.setdefault("text_config.pad_token_id", fields["text_config.eos_token_id"])  # pads with <|endoftext|>
        fields["text_config.projection_dim"] = fields["projection_dim"]
        width = fields["text_config.hidden_size"]
        if "text_config.num_attention_heads" not in fields and width % 64 == 0:
            fields["text_config.num_attention_heads"] = width // 64  # the released models: width 512, 8 heads
        self.require(fields, "text_config.num_attention_heads")
        if width % fields["text_config.num_attention_heads"]:
            raise ConversionError(
                f"text width {width} is not divisible by {fields['text_config.num_attention_heads']} heads"
            )
        for stage, heads in enumerate(fields["vision_config.num_heads"]):
            dim = fields["vision_config.embed_dim"] * 2**stage
            if dim % heads:
                raise ConversionError(f"Swin stage {stage}: dim {dim} is not divisible by {heads} heads")

    def map_keys(self, official: OfficialStateDict, config: UniCLConfig) -> ConvertedStateDict:
        """Every official UniCL tensor under `UniCLModel` parameter names (buffers are left for `check_buffers`)."""
        converted = ConvertedStateDict(official)
        vision, v = config.vision_config, "vision_model."
        converted.copy_module(f"{_IMAGE}patch_embed.proj", f"{v}embeddings.patch_embeddings.projection")
        converted.copy_module(f"{_IMAGE}patch_embed.norm", f"{v}embeddings.norm")
        qkv_parts = ("weight", "bias") if vision.qkv_bias else ("weight",)
        for stage, depth in enumerate(vision.depths):
            for block in range(depth):
                src = f"{_IMAGE}layers.{stage}.blocks.{block}."
                dst = f"{v}encoder.layers.{stage}.blocks.{block}."
                converted.copy_module(src + "norm1", dst + "layernorm_before")
                for part in qkv_parts:
                    converted.split_qkv(
                        f"{src}attn.qkv.{part}", [f"{dst}attention.{name}_proj.{part}" for name in "qkv"]
                    )
                converted.copy_module(src + "attn.proj", dst + "attention.o_proj")
                converted.copy(
                    src + "attn.relative_position_bias_table",
                    dst + "attention.relative_position_bias.relative_position_bias_table",
                )
                converted.copy_module(src + "norm2", dst + "layernorm_after")
                converted.copy_module(src + "mlp.fc1", dst + "mlp.fc1")
                converted.copy_module(src + "mlp.fc2", dst + "mlp.fc2")
            if stage < len(vision.depths) - 1:
                src, dst = f"{_IMAGE}layers.{stage}.downsample.", f"{v}encoder.layers.{stage}.downsample."
                converted.copy_module(src + "reduction", dst + "reduction", names=("weight",))
                converted.copy_module(src + "norm", dst + "norm")
        converted.copy_module(f"{_IMAGE}norm", f"{v}layernorm")

        t = "text_model."
        converted.copy(f"{_TEXT}token_embedding.weight", f"{t}embeddings.token_embedding.weight")
        converted.copy(f"{_TEXT}positional_embedding", f"{t}embeddings.position_embedding.weight")
        for layer in range(config.text_config.num_hidden_layers):
            src, dst = f"{_TEXT}resblocks.{layer}.", f"{t}encoder.layers.{layer}."
            for part in ("weight", "bias"):
                converted.split_qkv(
                    f"{src}attn.in_proj_{part}", [f"{dst}self_attn.{name}_proj.{part}" for name in "qkv"]
                )
            converted.copy_module(src + "attn.out_proj", dst + "self_attn.out_proj")
            converted.copy_module(src + "ln_1", dst + "layer_norm1")
            converted.copy_module(src + "mlp.c_fc", dst + "mlp.fc1")
            converted.copy_module(src + "mlp.c_proj", dst + "mlp.fc2")
            converted.copy_module(src + "ln_2", dst + "layer_norm2")
        converted.copy_module(f"{_TEXT}ln_final", f"{t}final_layer_norm")

        converted.transpose_projection("image_projection", "visual_projection.weight")
        converted.transpose_projection("text_projection", "text_projection.weight")
        converted.copy_scalar("logit_scale", "logit_scale")
        return converted

    def check_buffers(self, official: OfficialStateDict, model: UniCLModel) -> None:
        """Accounts for the Swin buffers that are functions of the config, after checking that they equal what
        `SwinModel` computes (a mismatch means the window, shift or image size was inferred wrongly)."""
        vision = model.config.vision_config
        grid = vision.image_size // vision.patch_size
        mismatched = []
        for stage, depth in enumerate(vision.depths):
            resolution = grid // 2**stage
            for block in range(depth):
                prefix = f"{_IMAGE}layers.{stage}.blocks.{block}."
                layer = model.vision_model.encoder.layers[stage].blocks[block]
                index = official.drop_buffer(prefix + "attn.relative_position_index")
                if index is not None:
                    ours = layer.attention.relative_position_bias.relative_position_index
                    flat = index.flatten()
                    if tuple(flat.shape) != tuple(ours.shape) or not torch.equal(flat.to(ours.dtype), ours):
                        mismatched.append(prefix + "attn.relative_position_index")
                mask = official.drop_buffer(prefix + "attn_mask")
                if mask is not None:
                    # A shallow copy: set_shift_and_window_size clips window/shift on the copy's attributes only.
                    probe = copy.copy(layer)
                    probe.set_shift_and_window_size((resolution, resolution))
                    ours = probe.get_attn_mask(resolution, resolution, mask.dtype, mask.device)
                    if ours is None or ours.shape != mask.shape or not torch.equal(ours, mask):
                        mismatched.append(prefix + "attn_mask")
        if mismatched:
            raise ConversionError(
                "buffers differ from what SwinModel computes for this configuration (image size, window or shift "
                "wrong?):\n  " + "\n  ".join(mismatched)
            )

    def image_processor(self, fields: dict[str, Any]):
        return unicl_image_processor(fields["vision_config.image_size"], fields.get("processor.resize_size"))

    def card_summary(self, config: UniCLConfig, image_processor) -> dict[str, Any]:
        text = config.text_config
        return {
            "text_heads": text.num_attention_heads,
            "text_layer_norm_eps": text.layer_norm_eps,
            "text_padding": "<|endoftext|> (pooled at the first end-of-text token)",
            "image_preprocessing": (
                f"bicubic resize {image_processor.size['shortest_edge']}, centre crop "
                f"{image_processor.crop_size['height']}, ImageNet mean/std"
            ),
        }


CONVERTER = UniCLConverter()


def convert_unicl_checkpoint(checkpoint: str | Path, output: str | Path, **kwargs: Any) -> Path:
    """Converts an official UniCL checkpoint into a `save_pretrained` folder (model, processor, model card).

    Takes the arguments of [`Converter.convert`]: `config_json`, `preset` (`"swin-tiny"`, `"swin-base"`),
    `tokenizer_dir`, `base_model`, `overwrite`, and the flags `image_size`, `text_heads`, `text_layer_norm_eps`,
    `vision_layer_norm_eps`, `text_hidden_act`, `vision_hidden_act`, `drop_path_rate`.
    """
    return CONVERTER.convert(checkpoint, output, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """`hf-unified-convert-unicl`: exit code 0, 1 with one error line, or 2 for a usage error."""
    return CONVERTER.main(argv)


if __name__ == "__main__":
    sys.exit(main())
