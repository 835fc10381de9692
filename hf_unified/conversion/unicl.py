"""Convert an official UniCL checkpoint (microsoft/UniCL) into a `UniCLModel` folder.

```bash
python -m hf_unified.conversion.unicl --checkpoint in21k_yfcc14m.pth --output unicl-swin-tiny-in21k-yfcc14m \
    --preset swin-tiny
```

The official file is `{'model': state_dict, ...}` (K-LITE's UniCL files are raw state dicts keyed `visual.`, `text.`,
`vision_projection`; both are accepted). The architecture comes from the tensor shapes wherever they tell it (Swin
embed dim, depths, heads per stage, window, MLP ratio; text vocabulary, width, depth, context; projection dim). What
shapes cannot tell (text heads, LayerNorm eps, activations, image size when no shifted-window mask is stored) comes
from
flags, a `--config` JSON in the golden fixtures' format, or a `--preset` of the released models; a flag/preset value
that contradicts the shapes is an error.

Mapping onto transformers' towers:

- image encoder (original Swin code) -> `SwinModel`: `qkv` split into q/k/v, `relative_position_index` and the shifted
  window `attn_mask` buffers are checked against what `SwinModel` computes and dropped.
- text encoder (CLIP-style causal transformer, TF-style LN eps 1e-12, QuickGELU) -> `CLIPTextModel`: fused
  `in_proj` split into q/k/v; pooled at the first end-of-text token like the official `argmax` over input ids.
- `image_projection` / `text_projection` (`[in, out]`, applied as `x @ P`) -> `nn.Linear` weights `P.T`.
- `logit_scale` copied raw (log scale).
"""

from __future__ import annotations

import argparse
import copy
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch
from transformers import CLIPTextConfig, SwinConfig

from ..configuration_unicl import UniCLConfig
from ..modeling_unicl import UniCLModel
from ..processing_unicl import UniCLProcessor, unicl_image_processor
from .common import (
    ConversionError,
    ConvertedStateDict,
    OfficialStateDict,
    activation_name,
    build_clip_tokenizer,
    check_agrees,
    check_tokenizer_matches,
    first_given,
    load_converted_state_dict,
    load_official_checkpoint,
    nested_get,
    projection_to_linear_weight,
    read_config_json,
    split_fused_qkv,
    write_model_card,
)

# Values of the released checkpoints (configs/unicl_swin_{tiny,base}.yaml + config.py defaults). The Swin values are
# also read from the shapes and must agree; the text heads, eps and activations cannot be read from shapes.
_RELEASED_TEXT = {"heads": 8, "layer_norm_eps": 1e-12, "hidden_act": "quick_gelu", "width": 512, "layers": 12}
PRESETS: dict[str, dict[str, Any]] = {
    "swin-tiny": {
        "vision": {
            "image_size": 224,
            "embed_dim": 96,
            "depths": [2, 2, 6, 2],
            "num_heads": [3, 6, 12, 24],
            "window_size": 7,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "drop_path_rate": 0.2,
        },
        "text": _RELEASED_TEXT,
        "projection_dim": 512,
    },
    "swin-base": {
        "vision": {
            "image_size": 224,
            "embed_dim": 128,
            "depths": [2, 2, 18, 2],
            "num_heads": [4, 8, 16, 32],
            "window_size": 7,
            "layer_norm_eps": 1e-5,
            "hidden_act": "gelu",
            "drop_path_rate": 0.5,
        },
        "text": _RELEASED_TEXT,
        "projection_dim": 512,
    },
}

# Defaults used when neither a flag, --config nor --preset gives a value (the released models' values).
_DEFAULTS = {
    "image_size": 224,
    "vision_layer_norm_eps": 1e-5,
    "vision_hidden_act": "gelu",
    "text_layer_norm_eps": 1e-12,
    "text_hidden_act": "quick_gelu",
    "drop_path_rate": 0.1,
    "logit_scale_init_value": 1.0,
}
_IMAGE = "image_encoder."
_TEXT = "text_encoder."


def normalise_key_layout(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Renames K-LITE-style keys (`visual.`, `text.`, `vision_projection`) to the UniCL layout; others unchanged."""
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


def _count_indices(keys: list[str], pattern: str) -> int:
    """How many blocks a key family has: the distinct indices captured by `pattern`'s group, which must be 0..n-1."""
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    if found and found != set(range(len(found))):
        raise ConversionError(f"non-consecutive block indices for {pattern}: {sorted(found)}")
    return len(found)


def infer_architecture(official: OfficialStateDict) -> dict[str, Any]:
    """Everything the tensor shapes say about the model.

    Returns a dict with `vision` (patch_size, num_channels, embed_dim, depths, num_heads, window_size, mlp_ratio,
    qkv_bias, image_size or None), `text` (vocab_size, width, layers, intermediate_size, context_length) and
    `projection_dim`.

    Raises:
        ConversionError: a tensor the architecture is read from is missing or has an impossible shape, or the
            checkpoint uses a Swin option `SwinModel` has no equivalent for.
    """
    keys = official.keys()
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
        raise ConversionError("Swin without patch_norm is not supported: SwinModel always normalises patch embeddings")

    embed_dim, num_channels, patch_size, patch_size_w = official.shape(f"{_IMAGE}patch_embed.proj.weight")
    if patch_size != patch_size_w:
        raise ConversionError(f"non-square patch {patch_size}x{patch_size_w} is not supported")
    num_stages = _count_indices(keys, re.escape(_IMAGE) + r"layers\.(\d+)\.")
    depths = [_count_indices(keys, re.escape(f"{_IMAGE}layers.{s}.") + r"blocks\.(\d+)\.") for s in range(num_stages)]
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
                raise ConversionError(f"{prefix}attn.relative_position_bias_table has {table[0]} rows, not (2w-1)^2")
            windows.add((side + 1) // 2)
            heads.add(table[1])
            fc1 = official.shape(prefix + "mlp.fc1.weight")
            if fc1 is not None:
                mlp_ratios.add(fc1[0] / dim)
            mask = official.shape(prefix + "attn_mask")
            if mask is not None and image_size is None:
                window_area = mask[-1]
                resolution = math.isqrt(mask[0]) * math.isqrt(window_area)
                image_size = resolution * patch_size * 2**stage
        if len(heads) != 1:
            raise ConversionError(f"Swin stage {stage}: blocks disagree on the number of heads {sorted(heads)}")
        num_heads.append(heads.pop())
    if len(windows) != 1:
        raise ConversionError(
            f"Swin stages use different window sizes {sorted(windows)} (window clipped to a small stage resolution); "
            "SwinModel keeps one relative-position table size for all stages"
        )
    if len(mlp_ratios) > 1:
        raise ConversionError(f"Swin blocks use different MLP ratios {sorted(mlp_ratios)}")

    vocab_size, width = official.shape(f"{_TEXT}token_embedding.weight")
    context_length = official.shape(f"{_TEXT}positional_embedding")[0]
    text_layers = _count_indices(keys, re.escape(_TEXT) + r"resblocks\.(\d+)\.")
    fc = official.shape(f"{_TEXT}resblocks.0.mlp.c_fc.weight")
    intermediate_size = fc[0] if fc else 4 * width

    image_projection = official.shape("image_projection")
    text_projection = official.shape("text_projection")
    if image_projection[1] != text_projection[1]:
        raise ConversionError(
            f"image_projection {image_projection} and text_projection {text_projection} project to different sizes"
        )
    return {
        "vision": {
            "patch_size": patch_size,
            "num_channels": num_channels,
            "embed_dim": embed_dim,
            "depths": depths,
            "num_heads": num_heads,
            "window_size": windows.pop(),
            "mlp_ratio": mlp_ratios.pop() if mlp_ratios else 4.0,
            "qkv_bias": f"{_IMAGE}layers.0.blocks.0.attn.qkv.bias" in official,
            "image_size": image_size,
        },
        "text": {
            "vocab_size": vocab_size,
            "width": width,
            "layers": text_layers,
            "intermediate_size": intermediate_size,
            "context_length": context_length,
        },
        "projection_dim": image_projection[1],
    }


def _settings_from_config_json(config_json: dict[str, Any]) -> dict[str, Any]:
    """The values a fixtures-format JSON gives (its `architecture` section first, then `official_config`)."""
    image = nested_get(config_json, "architecture", "image_encoder", default={})
    text = nested_get(config_json, "architecture", "text_encoder", default={})
    swin = nested_get(config_json, "official_config", "MODEL", "IMAGE_ENCODER", "SWIN", default={})
    official_text = nested_get(config_json, "official_config", "MODEL", "TEXT_ENCODER", default={})
    tokenizer = nested_get(config_json, "architecture", "tokenizer") or nested_get(
        config_json, "tokenizer", default={}
    )
    preprocessing = config_json.get("preprocessing", {})
    causal = first_given(text.get("causal"), official_text.get("AUTOGRESSIVE"))
    if causal is False:
        raise ConversionError(
            "the --config text encoder is not causal (AUTOGRESSIVE false); CLIPTextModel always applies a causal mask"
        )
    return {
        "image_size": first_given(
            image.get("image_size"), nested_get(config_json, "official_config", "MODEL", "IMAGE_ENCODER", "IMG_SIZE")
        ),
        "embed_dim": first_given(image.get("embed_dim"), swin.get("EMBED_DIM")),
        "depths": first_given(image.get("depths"), swin.get("DEPTHS")),
        "num_heads": first_given(image.get("num_heads"), swin.get("NUM_HEADS")),
        "window_size": first_given(image.get("window_size"), swin.get("WINDOW_SIZE")),
        "vision_layer_norm_eps": image.get("layer_norm_eps"),
        "vision_hidden_act": activation_name(image.get("hidden_act")),
        "drop_path_rate": first_given(
            image.get("drop_path_rate"),
            nested_get(config_json, "official_config", "MODEL", "IMAGE_ENCODER", "DROP_PATH_RATE"),
        ),
        "text_heads": first_given(text.get("heads"), official_text.get("HEADS")),
        "text_layer_norm_eps": text.get("layer_norm_eps"),
        "text_hidden_act": activation_name(text.get("hidden_act")),
        "projection_dim": first_given(
            nested_get(config_json, "architecture", "projection_dim"),
            nested_get(config_json, "official_config", "MODEL", "DIM_PROJECTION"),
        ),
        "logit_scale_init_value": nested_get(config_json, "architecture", "logit_scale_init_value_official"),
        "bos_token_id": tokenizer.get("bos_token_id"),
        "eos_token_id": tokenizer.get("eos_token_id"),
        "pad_token_id": tokenizer.get("pad_token_id"),
        "resize_size": preprocessing.get("resize_size"),
        "crop_size": preprocessing.get("image_size"),
    }


def _settings_from_preset(preset: str | None) -> dict[str, Any]:
    if preset is None:
        return {}
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose from {sorted(PRESETS)}")
    values = PRESETS[preset]
    vision, text = values["vision"], values["text"]
    return {
        "image_size": vision["image_size"],
        "embed_dim": vision["embed_dim"],
        "depths": vision["depths"],
        "num_heads": vision["num_heads"],
        "window_size": vision["window_size"],
        "vision_layer_norm_eps": vision["layer_norm_eps"],
        "vision_hidden_act": vision["hidden_act"],
        "drop_path_rate": vision["drop_path_rate"],
        "text_heads": text["heads"],
        "text_width": text["width"],
        "text_layers": text["layers"],
        "text_layer_norm_eps": text["layer_norm_eps"],
        "text_hidden_act": text["hidden_act"],
        "projection_dim": values["projection_dim"],
    }


def resolve_settings(
    shapes: dict[str, Any], flags: dict[str, Any], config_json: dict[str, Any], preset: str | None
) -> dict[str, Any]:
    """Merges flags > --config > --preset > defaults, and checks every given value against the shapes."""
    sources = [
        ("a flag", flags),
        ("--config", _settings_from_config_json(config_json)),
        (f"--preset {preset}", _settings_from_preset(preset)),
    ]

    def pick(name: str) -> Any:
        return first_given(*(values.get(name) for _, values in sources), _DEFAULTS.get(name))

    vision, text = shapes["vision"], shapes["text"]
    for name, from_shapes in [
        ("embed_dim", vision["embed_dim"]),
        ("depths", vision["depths"]),
        ("num_heads", vision["num_heads"]),
        ("window_size", vision["window_size"]),
        ("image_size", vision["image_size"]),
        ("projection_dim", shapes["projection_dim"]),
        ("text_width", text["width"]),
        ("text_layers", text["layers"]),
    ]:
        for given_by, values in sources:
            check_agrees(name, from_shapes, values.get(name), given_by)

    text_heads = pick("text_heads")
    if text_heads is None:
        if text["width"] % 64:
            raise ValueError(
                f"the text width {text['width']} does not tell the number of text heads: "
                "pass --text-heads, a --config "
                "JSON or a --preset"
            )
        text_heads = text["width"] // 64  # the released models: width 512, 8 heads
    if text["width"] % text_heads:
        raise ConversionError(f"text width {text['width']} is not divisible by {text_heads} heads")
    for stage, heads in enumerate(vision["num_heads"]):
        dim = vision["embed_dim"] * 2**stage
        if dim % heads:
            raise ConversionError(f"Swin stage {stage}: dim {dim} is not divisible by {heads} heads")
    image_size = vision["image_size"] or pick("image_size")
    crop_size = pick("crop_size")
    if crop_size is not None and crop_size != image_size:
        raise ConversionError(f"--config preprocessing crops to {crop_size} px but the model takes {image_size} px")
    return {
        "image_size": image_size,
        "vision_layer_norm_eps": float(pick("vision_layer_norm_eps")),
        "vision_hidden_act": pick("vision_hidden_act"),
        "drop_path_rate": float(pick("drop_path_rate")),
        "text_heads": int(text_heads),
        "text_layer_norm_eps": float(pick("text_layer_norm_eps")),
        "text_hidden_act": pick("text_hidden_act"),
        "logit_scale_init_value": float(pick("logit_scale_init_value")),
        "bos_token_id": pick("bos_token_id"),
        "eos_token_id": pick("eos_token_id"),
        "pad_token_id": pick("pad_token_id"),
        "resize_size": pick("resize_size"),
    }


def build_unicl_config(shapes: dict[str, Any], settings: dict[str, Any]) -> UniCLConfig:
    """The [`UniCLConfig`] (SwinConfig + CLIPTextConfig) of the official model."""
    vision, text = shapes["vision"], shapes["text"]
    vocab_size = text["vocab_size"]
    # CLIP BPE: <|startoftext|> and <|endoftext|> are the last two ids, and UniCL pads with <|endoftext|>.
    eos_token_id = settings["eos_token_id"] if settings["eos_token_id"] is not None else vocab_size - 1
    bos_token_id = settings["bos_token_id"] if settings["bos_token_id"] is not None else vocab_size - 2
    pad_token_id = settings["pad_token_id"] if settings["pad_token_id"] is not None else eos_token_id
    vision_config = SwinConfig(
        image_size=settings["image_size"],
        patch_size=vision["patch_size"],
        num_channels=vision["num_channels"],
        embed_dim=vision["embed_dim"],
        depths=vision["depths"],
        num_heads=vision["num_heads"],
        window_size=vision["window_size"],
        mlp_ratio=vision["mlp_ratio"],
        qkv_bias=vision["qkv_bias"],
        hidden_act=settings["vision_hidden_act"],
        drop_path_rate=settings["drop_path_rate"],
        layer_norm_eps=settings["vision_layer_norm_eps"],
        use_absolute_embeddings=False,
    )
    text_config = CLIPTextConfig(
        vocab_size=vocab_size,
        hidden_size=text["width"],
        intermediate_size=text["intermediate_size"],
        num_hidden_layers=text["layers"],
        num_attention_heads=settings["text_heads"],
        max_position_embeddings=text["context_length"],
        hidden_act=settings["text_hidden_act"],
        layer_norm_eps=settings["text_layer_norm_eps"],
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        projection_dim=shapes["projection_dim"],
    )
    return UniCLConfig(
        vision_config=vision_config,
        text_config=text_config,
        projection_dim=shapes["projection_dim"],
        logit_scale_init_value=settings["logit_scale_init_value"],
        text_pooling="eos",
        vision_pooling="pooler",
    )


def _linear(
    converted: ConvertedStateDict, official: OfficialStateDict, source: str, target: str, bias: bool = True
) -> None:
    converted[f"{target}.weight"] = (official.take(f"{source}.weight"), f"{source}.weight")
    if bias:
        converted[f"{target}.bias"] = (official.take(f"{source}.bias"), f"{source}.bias")


def _fused_qkv(
    converted: ConvertedStateDict,
    official: OfficialStateDict,
    source: str,
    targets: tuple[str, str, str],
    bias: bool = True,
) -> None:
    """`source` is the fused weight key stem ('...qkv' with .weight/.bias, or '...in_proj' with _weight/_bias)."""
    suffixes = [(".weight", ".bias")] if source.endswith(".qkv") else [("_weight", "_bias")]
    weight_suffix, bias_suffix = suffixes[0]
    parts = [(weight_suffix, "weight")] + ([(bias_suffix, "bias")] if bias else [])
    for official_suffix, target_suffix in parts:
        key = source + official_suffix
        tensor = official.take(key)
        if tensor.numel() == 0:
            continue  # missing: reported by check_complete
        for target, piece in zip(targets, split_fused_qkv(tensor, key)):
            converted[f"{target}.{target_suffix}"] = (piece, f"{key} (third {targets.index(target) + 1} of 3)")


def convert_state_dict(official: OfficialStateDict, config: UniCLConfig) -> ConvertedStateDict:
    """Maps every official UniCL tensor onto `UniCLModel` parameter names (buffers are left for [`check_buffers`])."""
    converted = ConvertedStateDict()
    vision = config.vision_config
    v = "vision_model."
    _linear(converted, official, f"{_IMAGE}patch_embed.proj", f"{v}embeddings.patch_embeddings.projection")
    _linear(converted, official, f"{_IMAGE}patch_embed.norm", f"{v}embeddings.norm")
    for stage, depth in enumerate(vision.depths):
        for block in range(depth):
            src = f"{_IMAGE}layers.{stage}.blocks.{block}."
            dst = f"{v}encoder.layers.{stage}.blocks.{block}."
            _linear(converted, official, src + "norm1", dst + "layernorm_before")
            _fused_qkv(
                converted,
                official,
                src + "attn.qkv",
                (dst + "attention.q_proj", dst + "attention.k_proj", dst + "attention.v_proj"),
                bias=vision.qkv_bias,
            )
            _linear(converted, official, src + "attn.proj", dst + "attention.o_proj")
            table = src + "attn.relative_position_bias_table"
            target = dst + "attention.relative_position_bias.relative_position_bias_table"
            converted[target] = (official.take(table), table)
            _linear(converted, official, src + "norm2", dst + "layernorm_after")
            _linear(converted, official, src + "mlp.fc1", dst + "mlp.fc1")
            _linear(converted, official, src + "mlp.fc2", dst + "mlp.fc2")
        if stage < len(vision.depths) - 1:
            src = f"{_IMAGE}layers.{stage}.downsample."
            dst = f"{v}encoder.layers.{stage}.downsample."
            _linear(converted, official, src + "reduction", dst + "reduction", bias=False)
            _linear(converted, official, src + "norm", dst + "norm")
    _linear(converted, official, f"{_IMAGE}norm", f"{v}layernorm")

    t = "text_model."
    token = f"{_TEXT}token_embedding.weight"
    converted[f"{t}embeddings.token_embedding.weight"] = (official.take(token), token)
    position = f"{_TEXT}positional_embedding"
    converted[f"{t}embeddings.position_embedding.weight"] = (official.take(position), position)
    for layer in range(config.text_config.num_hidden_layers):
        src = f"{_TEXT}resblocks.{layer}."
        dst = f"{t}encoder.layers.{layer}."
        _fused_qkv(
            converted,
            official,
            src + "attn.in_proj",
            (dst + "self_attn.q_proj", dst + "self_attn.k_proj", dst + "self_attn.v_proj"),
        )
        _linear(converted, official, src + "attn.out_proj", dst + "self_attn.out_proj")
        _linear(converted, official, src + "ln_1", dst + "layer_norm1")
        _linear(converted, official, src + "mlp.c_fc", dst + "mlp.fc1")
        _linear(converted, official, src + "mlp.c_proj", dst + "mlp.fc2")
        _linear(converted, official, src + "ln_2", dst + "layer_norm2")
    _linear(converted, official, f"{_TEXT}ln_final", f"{t}final_layer_norm")

    projections = [("image_projection", "visual_projection.weight"), ("text_projection", "text_projection.weight")]
    for source, target in projections:
        matrix = official.take(source)
        if matrix.numel():
            converted[target] = (projection_to_linear_weight(matrix, source), f"{source} (transposed)")
    logit_scale = official.take("logit_scale")
    if logit_scale.numel():
        converted["logit_scale"] = (
            logit_scale.reshape(1),  # the model holds it as a 1-element tensor (FSDP)
            "logit_scale",
        )
    return converted


def check_buffers(official: OfficialStateDict, model: UniCLModel) -> None:
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
            index = official.drop_buffer(
                prefix + "attn.relative_position_index", "recomputed by SwinModel from window_size"
            )
            if index is not None:
                ours = layer.attention.relative_position_bias.relative_position_index
                flat = index.flatten()
                if tuple(flat.shape) != tuple(ours.shape) or not torch.equal(flat.to(ours.dtype), ours):
                    mismatched.append(prefix + "attn.relative_position_index")
            mask = official.drop_buffer(prefix + "attn_mask", "shifted-window mask, recomputed by SwinModel")
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


def convert_unicl_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    *,
    config_json: str | Path | None = None,
    preset: str | None = None,
    tokenizer_dir: str | Path | None = None,
    base_model: str | None = None,
    **flags: Any,
) -> Path:
    """Converts an official UniCL checkpoint into a `save_pretrained` folder (model, processor, model card).

    Args:
        checkpoint: the official `.pth` file.
        output: folder to write.
        config_json: a fixtures-format JSON with the values the shapes cannot tell.
        preset: `"swin-tiny"` or `"swin-base"` (the released models).
        tokenizer_dir: folder with the CLIP BPE `vocab.json` + `merges.txt`; default: open_clip's bundled vocabulary.
        base_model: Hub id recorded in the model card's `base_model`.
        **flags: overrides: `image_size`, `text_heads`, `text_layer_norm_eps`, `vision_layer_norm_eps`,
            `text_hidden_act`, `vision_hidden_act`, `drop_path_rate`.

    Returns:
        The output folder.

    Raises:
        ConversionError: unused, missing or wrongly shaped official tensors, or settings that contradict the shapes.
    """
    checkpoint = Path(checkpoint)
    official = OfficialStateDict(normalise_key_layout(load_official_checkpoint(checkpoint)), source=checkpoint.name)
    shapes = infer_architecture(official)
    settings = resolve_settings(shapes, flags, read_config_json(config_json), preset)
    config = build_unicl_config(shapes, settings)

    model = UniCLModel(config).eval()
    converted = convert_state_dict(official, config)
    check_buffers(official, model)
    official.check_complete()
    load_converted_state_dict(model, converted)

    text_config = config.text_config
    tokenizer = build_clip_tokenizer(
        tokenizer_dir, pad_token="<|endoftext|>", model_max_length=text_config.max_position_embeddings
    )
    check_tokenizer_matches(tokenizer, text_config.vocab_size, text_config.eos_token_id, text_config.bos_token_id)
    if tokenizer.pad_token_id != text_config.pad_token_id:
        raise ConversionError(
            f"tokenizer pads with id {tokenizer.pad_token_id}, but UniCL pads with end-of-text "
            f"{text_config.pad_token_id}"
        )
    image_size = settings["image_size"]
    image_processor = unicl_image_processor(image_size=image_size, resize_size=settings["resize_size"])
    processor = UniCLProcessor(image_processor=image_processor, tokenizer=tokenizer)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    swin = config.vision_config
    write_model_card(
        output,
        method="unicl",
        model_name=f"UniCL {output.name}",
        source_checkpoint=checkpoint.name,
        base_model=base_model,
        description=(
            "UniCL (Yang et al., CVPR 2022, microsoft/UniCL): a Swin image encoder "
            f"(embed dim {swin.embed_dim}, depths {list(swin.depths)}) and a causal text transformer "
            f"({text_config.num_hidden_layers} layers, width {text_config.hidden_size}) projected to "
            f"{config.projection_dim} dimensions. Preprocessing: bicubic resize to "
            f"{image_processor.size['shortest_edge']}, centre crop {image_size}, ImageNet mean/std."
        ),
        conversion_summary={
            "converted_from": f"microsoft/UniCL checkpoint {checkpoint.name}",
            "preset": preset or "none (shapes + --config / flags)",
            "text_heads": text_config.num_attention_heads,
            "text_layer_norm_eps": text_config.layer_norm_eps,
            "text_padding": "<|endoftext|> (pooled at the first end-of-text token)",
            "image_preprocessing": (
                f"bicubic resize {image_processor.size['shortest_edge']}, centre crop {image_size}, ImageNet mean/std"
            ),
        },
    )
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-unified-convert-unicl",
        description="Convert an official UniCL checkpoint (microsoft/UniCL or K-LITE) into a transformers folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="official .pth file ({'model': state_dict} or raw)")
    parser.add_argument("--output", required=True, help="folder to write (save_pretrained layout)")
    parser.add_argument(
        "--config", dest="config_json", help="JSON in the golden fixtures' format (architecture, preprocessing, ...)"
    )
    parser.add_argument("--preset", choices=sorted(PRESETS), help="values of the released models")
    parser.add_argument(
        "--tokenizer", dest="tokenizer_dir", help="folder with CLIP BPE vocab.json + merges.txt (default: open_clip's)"
    )
    parser.add_argument("--base-model", help="Hub id to record as base_model in the model card")
    parser.add_argument(
        "--image-size", type=int, help="input resolution (read from the shifted-window mask when stored)"
    )
    parser.add_argument("--text-heads", type=int, help="attention heads of the text transformer")
    parser.add_argument("--text-layer-norm-eps", type=float)
    parser.add_argument("--vision-layer-norm-eps", type=float)
    parser.add_argument("--text-hidden-act", choices=["quick_gelu", "gelu"])
    parser.add_argument("--vision-hidden-act", choices=["gelu", "quick_gelu"])
    parser.add_argument(
        "--drop-path-rate", type=float, help="Swin stochastic depth for fine-tuning (inactive in eval)"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    checkpoint, output = args.pop("checkpoint"), args.pop("output")
    try:
        folder = convert_unicl_checkpoint(checkpoint, output, **args)
    except (ConversionError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
