"""Convert an official MS-CLIP-S checkpoint (Hxyou/MSCLIP) into an `MSCLIPModel` folder.

```bash
python -m hf_unified.conversion.msclip --checkpoint b32-yfcc-msclips_ckpt.pth --output msclip-s-b32-yfcc --preset b32
```

The official file is a raw state dict (`torch.save(model.state_dict())`) in which every shared tensor appears twice,
under the vision name (`visual.transformer.resblocks.i.attn...`) and the text name (`transformer.resblocks.i.attn...`).
The converter checks each pair is equal and stores it once (`encoder.layers.i.attention` / `.mlp`), keeps the
LayerNorms per modality, splits the fused `in_proj` into q/k/v, transposes the `[in, out]` projections, and carries
every BatchNorm's statistics.

The shapes tell the width, depth, vocabulary, context, grid, projection dim, stem / branch channels, the adapters'
top-to-bottom kernels and (through the duplicated tensors) which blocks are shared. They cannot tell the strides, the
image size, the blocks the adapters run before, the head counts or the epsilons: those come from flags, a
`--config` JSON in the golden fixtures' format or a `--preset` (`b32`, `b16`); without any, the released layout whose
adapter kernels match the checkpoint is used.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..configuration_msclip import MSCLIPConfig
from ..modeling_msclip import MSCLIPModel
from ..processing_msclip import MSCLIPProcessor, msclip_image_processor
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

# Official layout (lib/models/clip_openai_pe_res_v1.py).
_VISUAL = "visual."
_STEM = "visual.transformer.resblocks.0."
_BRANCH = "visual.transformer.parallel_branch_v."
_ADAPTER = "visual.transformer.parallel_lateral_adapter."
_TEXT_BLOCKS = "transformer.resblocks."
_VISION_BLOCKS = "visual.transformer.resblocks."
_BATCH_NORM_TENSORS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
# What `CUSTOM.SHARE_MODULES: [attn.in_proj_weight, attn.in_proj_bias, attn.out_proj, mlp]` shares (8 tensors).
SHARED_TENSORS = (
    "attn.in_proj_weight",
    "attn.in_proj_bias",
    "attn.out_proj.weight",
    "attn.out_proj.bias",
    "mlp.c_fc.weight",
    "mlp.c_fc.bias",
    "mlp.c_proj.weight",
    "mlp.c_proj.bias",
)

# The released MS-CLIP-S checkpoints (experiments/model/b{32,16}-*-msclips.yaml): values shapes cannot tell, plus the
# adapter kernels (readable from shapes) that identify the layout.
PRESETS: dict[str, dict[str, Any]] = {
    "b32": {
        "image_size": 224,
        "stem_strides": [2, 2, 2, 2],
        "branch_strides": [2, 2, 2, 2, 2],
        "t2b_kernels": [16, 8, 4, 2, 1],
        "lateral_layers": [2, 4, 6, 8, 10],
        "text_heads": 12,
        "vision_heads": 12,
        "width": 768,
        "layers": 12,
    },
    "b16": {
        "image_size": 224,
        "stem_strides": [2, 2, 2, 1],
        "branch_strides": [2, 2, 2, 2, 1],
        "t2b_kernels": [8, 4, 2, 1, 1],
        "lateral_layers": [2, 4, 6, 8, 10],
        "text_heads": 12,
        "vision_heads": 12,
        "width": 768,
        "layers": 12,
    },
}
_DEFAULTS = {
    "layer_norm_eps": 1e-12,  # the official TF-style LayerNorm
    "batch_norm_eps": 1e-5,  # stem, branch stage 0, adapters
    "parallel_batch_norm_eps": 1e-6,  # branch ConvResBlocks (stages 1-4)
    "hidden_act": "quick_gelu",
    "logit_scale_init_value": 1.0,
}


def _count(keys: list[str], pattern: str) -> int:
    regex = re.compile(pattern)
    found = {int(m.group(1)) for k in keys if (m := regex.match(k))}
    if found and found != set(range(len(found))):
        raise ConversionError(f"non-consecutive indices for {pattern}: {sorted(found)}")
    return len(found)


def infer_architecture(official: OfficialStateDict) -> dict[str, Any]:
    """Everything the tensor shapes (and the duplicated shared tensors) say about an official MS-CLIP-S model.

    Raises:
        ConversionError: a tensor the architecture is read from is missing or has an impossible shape, or the
            checkpoint uses an option `MSCLIPModel` does not implement.
    """
    keys = official.keys()
    need = [
        "token_embedding.weight",
        "positional_embedding",
        "text_projection",
        f"{_VISUAL}proj",
        f"{_VISUAL}positional_embedding",
        f"{_VISUAL}class_embedding",
        f"{_STEM}conv1.weight",
        f"{_STEM}last_conv.weight",
    ]
    absent = [k for k in need if k not in official]
    if absent:
        raise ConversionError(
            "not an MS-CLIP-S checkpoint (early-conv stem + modality-shared transformer): missing " + ", ".join(absent)
        )
    vocab_size, width = official.shape("token_embedding.weight")
    context_length = official.shape("positional_embedding")[0]
    positions = official.shape(f"{_VISUAL}positional_embedding")[0]
    grid = math.isqrt(positions - 1)
    if grid * grid != positions - 1:
        raise ConversionError(f"{_VISUAL}positional_embedding has {positions} rows, not grid**2 + 1")
    text_layers = _count(keys, re.escape(_TEXT_BLOCKS) + r"(\d+)\.")
    vision_layers = _count(keys, re.escape(_VISION_BLOCKS) + r"(\d+)\.")
    if vision_layers != text_layers:
        raise ConversionError(f"{vision_layers} vision blocks (conv stem included) but {text_layers} text blocks")
    fc = official.shape(f"{_TEXT_BLOCKS}0.mlp.c_fc.weight")
    intermediate_size = fc[0] if fc else 4 * width

    conv1 = official.shape(f"{_STEM}conv1.weight")
    if conv1[-1] != 3:
        raise ConversionError(f"{_STEM}conv1.weight: first stem kernel {conv1[-1]} (only 3 is supported)")
    stem_channels = [conv1[0]]
    for stage in range(_count(keys, re.escape(f"{_STEM}resnet_stage.conv_") + r"(\d+)\.")):
        shape = official.shape(f"{_STEM}resnet_stage.conv_{stage}.conv1.weight")
        if shape is None:
            raise ConversionError(f"{_STEM}resnet_stage.conv_{stage}.conv1.weight missing")
        stem_channels.append(shape[0])

    branch_channels = []
    for stage in range(_count(keys, re.escape(_BRANCH) + r"(\d+)\.")):
        spatial_key = f"{_BRANCH}0.conv.weight" if stage == 0 else f"{_BRANCH}{stage}.resnet_stage.conv_0.conv2.weight"
        out_key = f"{_BRANCH}0.conv.weight" if stage == 0 else f"{_BRANCH}{stage}.resnet_stage.conv_0.conv3.weight"
        spatial, out = official.shape(spatial_key), official.shape(out_key)
        if spatial is None or out is None:
            raise ConversionError(f"parallel branch stage {stage}: {spatial_key} or {out_key} missing")
        if spatial[-1] != 3:
            raise ConversionError(f"{spatial_key}: branch kernel {spatial[-1]} (only 3, padding 1, is supported)")
        branch_channels.append(out[0])
    t2b_kernels = []
    for index in range(_count(keys, re.escape(_ADAPTER) + r"(\d+)\.")):
        shape = official.shape(f"{_ADAPTER}{index}.top2bottom_dw_conv.conv.weight")
        if shape is None:
            raise ConversionError(f"{_ADAPTER}{index}.top2bottom_dw_conv.conv.weight missing")
        t2b_kernels.append(shape[-1])

    # Shared blocks: the official state dict lists each shared tensor under both towers (one storage).
    shared_blocks = [
        block
        for block in range(1, text_layers)
        if all(
            f"{_VISION_BLOCKS}{block}.{name}" in official
            and f"{_TEXT_BLOCKS}{block}.{name}" in official
            and torch.equal(
                official.tensors[f"{_VISION_BLOCKS}{block}.{name}"], official.tensors[f"{_TEXT_BLOCKS}{block}.{name}"]
            )
            for name in SHARED_TENSORS
        )
    ]
    projection = official.shape(f"{_VISUAL}proj")
    if projection[1] != official.shape("text_projection")[1]:
        raise ConversionError(
            f"visual.proj {projection} and text_projection {official.shape('text_projection')} project to "
            "different sizes"
        )
    return {
        "vocab_size": vocab_size,
        "width": width,
        "context_length": context_length,
        "grid_size": grid,
        "layers": text_layers,
        "intermediate_size": intermediate_size,
        "stem_channels": stem_channels,
        "branch_channels": branch_channels,
        "t2b_kernels": t2b_kernels,
        "shared_blocks": shared_blocks,
        "projection_dim": projection[1],
    }


def _by_prefix(mapping: dict[str, Any] | None, name: str) -> Any:
    """The fixtures' JSON annotates some keys ("early_conv_stem (visual.transformer.resblocks.0, EarlyconvRes)")."""
    if not isinstance(mapping, dict):
        return None
    for key, value in mapping.items():
        if key == name or key.startswith(name + " "):
            return value
    return None


def _batch_norm_eps_groups(by_module: dict[str, float] | None) -> tuple[float | None, float | None]:
    """Splits the fixtures' per-module BN eps into (stem + branch stage 0 + adapters, branch stages 1+), which is
    the granularity `MSCLIPConfig` has; a finer split is an error."""
    if not by_module:
        return None, None
    main, parallel = set(), set()
    for module, eps in by_module.items():
        match = re.match(re.escape(_BRANCH) + r"(\d+)\.", module)
        (parallel if match and int(match.group(1)) > 0 else main).add(float(eps))
    if len(main) > 1 or len(parallel) > 1:
        raise ConversionError(
            f"BatchNorm eps differ within a group (stem/adapters/branch stage 0: {sorted(main)}, branch stages 1+: "
            f"{sorted(parallel)}); MSCLIPConfig has one eps per group"
        )
    return (main.pop() if main else None), (parallel.pop() if parallel else None)


def _activation_in(description: str | None) -> str | None:
    """The activation named in the fixtures' MLP description ("c_fc (...) -> quick_gelu (...) -> c_proj")."""
    if not description:
        return None
    for name in ("quick_gelu", "gelu", "relu"):
        if name in str(description):
            return activation_name(name)
    return None


def _settings_from_config_json(config_json: dict[str, Any]) -> dict[str, Any]:
    """Values a fixtures-format JSON gives (`architecture` first, then `official_config`)."""
    architecture = config_json.get("architecture", {})
    vision = architecture.get("vision", {})
    text = architecture.get("text", {})
    sharing = architecture.get("sharing", {})
    custom = nested_get(config_json, "official_config", "CUSTOM", default={})
    spec = nested_get(config_json, "official_config", "MODEL", "SPEC", default={})
    stem = _by_prefix(vision, "early_conv_stem") or {}
    branch = _by_prefix(vision, "parallel_branch") or []
    adapters = _by_prefix(vision, "lateral_adapters") or {}
    tokenizer = config_json.get("tokenizer") or architecture.get("tokenizer") or {}
    preprocessing = config_json.get("preprocessing", {})
    for adapter in adapters.get("adapters", []):
        kernel, stride, padding = (adapter.get(k) for k in ("t2b_dw_kernel", "t2b_dw_stride", "t2b_dw_padding"))
        if (stride is not None and stride != kernel) or (padding not in (None, 0)):
            raise ConversionError(
                f"adapter {adapter.get('index')}: top-to-bottom conv kernel {kernel}, stride {stride}, padding "
                f"{padding}; only stride = kernel and padding 0 (the released layout) are supported"
            )
    unsupported = [
        f"parallel branch stage {b.get('stage')}: padding {b.get('padding')}"
        for b in branch
        if b.get("padding", 1) != 1
    ]
    first_conv = stem.get("conv1", {})
    if first_conv.get("stride", 2) != 2 or first_conv.get("padding", 1) != 1:
        unsupported.append(f"stem conv1 stride {first_conv.get('stride')} / padding {first_conv.get('padding')}")
    if unsupported:
        raise ConversionError(
            "MSCLIPModel implements 3x3 convolutions with padding 1 and a stride-2 first stem conv; --config has "
            + "; ".join(unsupported)
        )
    test_size = nested_get(config_json, "official_config", "TEST", "IMAGE_SIZE")
    batch_norm_eps, parallel_batch_norm_eps = _batch_norm_eps_groups(architecture.get("batchnorm_eps_by_module"))
    heads = sharing.get("heads_per_modality", {})
    return {
        "image_size": first_given(
            vision.get("image_size"), test_size[0] if isinstance(test_size, list) else test_size
        ),
        "stem_strides": first_given(stem.get("strides"), custom.get("EARLY_CONV_RES_STRIDES")),
        "branch_strides": first_given([s["stride"] for s in branch] or None, custom.get("PARALLEL_STRIDES")),
        "t2b_kernels": custom.get("PRALLEL_T2B_KERNELS"),
        "lateral_layers": first_given(
            adapters.get("applied_before_visual_blocks"), custom.get("PARALLEL_LATERAL_LAYER")
        ),
        "text_heads": first_given(heads.get("text"), text.get("heads"), nested_get(spec, "TEXT", "HEADS")),
        "vision_heads": first_given(heads.get("vision"), _by_prefix(vision, "heads")),
        "shared_blocks": sharing.get("shared_block_indices"),
        "width": first_given(vision.get("width"), nested_get(spec, "VISION", "WIDTH")),
        "layers": first_given(text.get("layers"), nested_get(spec, "TEXT", "LAYERS")),
        "layer_norm_eps": architecture.get("layer_norm_eps"),
        "hidden_act": _activation_in(architecture.get("mlp")),
        "batch_norm_eps": batch_norm_eps,
        "parallel_batch_norm_eps": parallel_batch_norm_eps,
        "logit_scale_init_value": architecture.get("logit_scale_init_value_official"),
        "bos_token_id": first_given(tokenizer.get("sot_token_id"), tokenizer.get("bos_token_id")),
        "eos_token_id": first_given(tokenizer.get("eot_token_id"), tokenizer.get("eos_token_id")),
        "pad_token_id": first_given(tokenizer.get("pad_id"), tokenizer.get("pad_token_id")),
        "crop_size": preprocessing.get("image_size"),
    }


def _released_layout_for(shapes: dict[str, Any]) -> str | None:
    """The released preset whose adapter kernels and depth match the checkpoint (used when nothing is given)."""
    for name, values in PRESETS.items():
        if values["t2b_kernels"] == shapes["t2b_kernels"] and values["layers"] == shapes["layers"]:
            return name
    return None


def resolve_settings(
    shapes: dict[str, Any], flags: dict[str, Any], config_json: dict[str, Any], preset: str | None
) -> dict[str, Any]:
    """Merges flags > --config > --preset > defaults and checks every given value against the shapes."""
    from_json = _settings_from_config_json(config_json)
    if preset is None and not config_json:
        preset = _released_layout_for(shapes)
    if preset is not None and preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose from {sorted(PRESETS)}")
    sources = [("a flag", flags), ("--config", from_json), (f"--preset {preset}", PRESETS.get(preset, {}))]

    def pick(name: str) -> Any:
        return first_given(*(values.get(name) for _, values in sources), _DEFAULTS.get(name))

    for name in ("t2b_kernels", "width", "layers", "shared_blocks"):
        for given_by, values in sources:
            check_agrees(name, shapes[name], values.get(name), given_by)

    width, grid = shapes["width"], shapes["grid_size"]
    stem_strides = pick("stem_strides")
    branch_strides = pick("branch_strides")
    lateral_layers = pick("lateral_layers")
    missing = [
        n
        for n, v in [
            ("stem strides", stem_strides),
            ("branch strides", branch_strides),
            ("adapter layers", lateral_layers),
        ]
        if v is None
    ]
    if missing:
        raise ValueError(
            f"the checkpoint's shapes do not tell the {', '.join(missing)}: pass --preset b32|b16, a --config JSON or "
            "the matching flags"
        )
    patch_size = 2 * math.prod(stem_strides)  # conv1 (stride 2) then the residual stages
    image_size = pick("image_size") or grid * patch_size
    if image_size != grid * patch_size:
        raise ConversionError(
            f"image size {image_size} with stem strides {list(stem_strides)} (total stride {patch_size}) "
            "does not give "
            f"the checkpoint's {grid}x{grid} position grid"
        )
    crop_size = pick("crop_size")
    if crop_size is not None and crop_size != image_size:
        raise ConversionError(f"--config preprocessing crops to {crop_size} px but the model takes {image_size} px")
    if len(stem_strides) != len(shapes["stem_channels"]) - 1:
        raise ConversionError(
            f"{len(stem_strides)} stem strides for {len(shapes['stem_channels']) - 1} residual stem stages in the "
            "checkpoint"
        )
    for name, values in (("branch strides", branch_strides), ("adapter layers", lateral_layers)):
        if len(values) != len(shapes["branch_channels"]):
            raise ConversionError(
                f"{len(values)} {name} for {len(shapes['branch_channels'])} parallel-branch stages in the checkpoint"
            )
    # The official vision attention hard-codes width // 64 heads; the text head count is a config value.
    vision_heads = pick("vision_heads") or max(width // 64, 1)
    text_heads = pick("text_heads")
    if text_heads is None:
        if width % 64:
            raise ValueError(
                f"the width {width} does not tell the number of text heads: "
                "pass --text-heads, a --config or a --preset"
            )
        text_heads = width // 64
    return {
        "image_size": int(image_size),
        "patch_size": patch_size,
        "stem_strides": list(stem_strides),
        "branch_strides": list(branch_strides),
        "lateral_layers": list(lateral_layers),
        "vision_heads": int(vision_heads),
        "text_heads": int(text_heads),
        "layer_norm_eps": float(pick("layer_norm_eps")),
        "batch_norm_eps": float(pick("batch_norm_eps")),
        "parallel_batch_norm_eps": float(pick("parallel_batch_norm_eps")),
        "hidden_act": pick("hidden_act"),
        "logit_scale_init_value": float(pick("logit_scale_init_value")),
        "bos_token_id": pick("bos_token_id"),
        "eos_token_id": pick("eos_token_id"),
        "pad_token_id": pick("pad_token_id"),
        "preset": preset,
    }


def build_msclip_config(shapes: dict[str, Any], settings: dict[str, Any]) -> MSCLIPConfig:
    """The [`MSCLIPConfig`] of the official MS-CLIP-S model (attention + MLP shared, LayerNorms per modality)."""
    vocab_size = shapes["vocab_size"]
    eos = settings["eos_token_id"] if settings["eos_token_id"] is not None else vocab_size - 1
    bos = settings["bos_token_id"] if settings["bos_token_id"] is not None else vocab_size - 2
    pad = settings["pad_token_id"] if settings["pad_token_id"] is not None else 0
    vision_blocks = list(range(1, shapes["layers"]))
    shared = shapes["shared_blocks"]
    return MSCLIPConfig(
        vocab_size=vocab_size,
        max_position_embeddings=shapes["context_length"],
        hidden_size=shapes["width"],
        intermediate_size=shapes["intermediate_size"],
        num_hidden_layers=shapes["layers"],
        vision_num_attention_heads=settings["vision_heads"],
        text_num_attention_heads=settings["text_heads"],
        image_size=settings["image_size"],
        patch_size=settings["patch_size"],
        projection_dim=shapes["projection_dim"],
        hidden_act=settings["hidden_act"],
        layer_norm_eps=settings["layer_norm_eps"],
        logit_scale_init_value=settings["logit_scale_init_value"],
        shared_sublayers=["attention", "mlp"],
        shared_layers="all" if shared == vision_blocks else (shared or "none"),
        early_specialization=True,
        stem_channels=shapes["stem_channels"],
        stem_strides=settings["stem_strides"],
        parallel_branch=bool(shapes["branch_channels"]),
        parallel_channels=shapes["branch_channels"] or None,
        parallel_strides=settings["branch_strides"] or None,
        parallel_t2b_kernels=shapes["t2b_kernels"] or None,
        parallel_lateral_layers=settings["lateral_layers"] or None,
        batch_norm_eps=settings["batch_norm_eps"],
        parallel_batch_norm_eps=settings["parallel_batch_norm_eps"],
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def _copy(converted: ConvertedStateDict, official: OfficialStateDict, source: str, target: str) -> None:
    converted[target] = (official.take(source), source)


def _copy_all(converted, official, source: str, target: str, names: tuple[str, ...]) -> None:
    for name in names:
        _copy(converted, official, f"{source}.{name}", f"{target}.{name}")


def _batch_norm(converted, official, source: str, target: str) -> None:
    """All five BatchNorm tensors, running statistics included (eval mode depends on them)."""
    _copy_all(converted, official, source, target, _BATCH_NORM_TENSORS)


def _conv_norm(converted, official, conv: str, norm: str, target: str) -> None:
    _copy(converted, official, f"{conv}.weight", f"{target}.conv.weight")
    _batch_norm(converted, official, norm, f"{target}.norm")


def _take_shared(official: OfficialStateDict, block: int, name: str) -> tuple[torch.Tensor, str]:
    """A shared tensor: both official copies are consumed and must be equal; one is kept."""
    vision_key, text_key = f"{_VISION_BLOCKS}{block}.{name}", f"{_TEXT_BLOCKS}{block}.{name}"
    vision, text = official.take(vision_key), official.take(text_key)
    if vision.numel() and text.numel() and (vision.shape != text.shape or not torch.equal(vision, text)):
        raise ConversionError(f"block {block} is shared but {vision_key} and {text_key} differ")
    return vision, f"{vision_key} (= {text_key})"


def _block(converted, official, config: MSCLIPConfig, block: int) -> None:
    """Transformer block `block` of both towers; shared attention/MLP stored once."""
    prefixes = {"vision": f"{_VISION_BLOCKS}{block}.", "text": f"{_TEXT_BLOCKS}{block}."}
    modalities = ["text"] + (["vision"] if config.vision_has_block(block) else [])
    shared = config.shared_sublayers_of(block)
    target = f"encoder.layers.{block}."

    def place(sublayer: str, modality: str) -> str:
        kind = "layernorm" if sublayer.startswith("layer_norm") else sublayer
        return target + (sublayer if kind in shared else f"{modality}.{sublayer}")

    for modality in modalities:
        for name in SHARED_TENSORS:
            kind = "attention" if name.startswith("attn.") else "mlp"
            if kind in shared:
                if modality == "vision":
                    continue  # both official copies were consumed with the text side
                tensor, source = _take_shared(official, block, name)
            else:
                source = prefixes[modality] + name
                tensor = official.take(source)
            if name.startswith("attn.in_proj"):
                if not tensor.numel():
                    continue  # missing: reported by check_complete
                suffix = "weight" if name.endswith("weight") else "bias"
                for projection, piece in zip(("q_proj", "k_proj", "v_proj"), split_fused_qkv(tensor, source)):
                    target_key = f"{place('attention', modality)}.{projection}.{suffix}"
                    converted[target_key] = (piece, f"{source} ({projection})")
            elif name.startswith("attn.out_proj"):
                converted[f"{place('attention', modality)}.out_proj.{name.rsplit('.', 1)[1]}"] = (tensor, source)
            else:
                layer = "fc1" if ".c_fc." in name else "fc2"
                converted[f"{place('mlp', modality)}.{layer}.{name.rsplit('.', 1)[1]}"] = (tensor, source)
        for official_norm, norm in (("ln_1", "layer_norm1"), ("ln_2", "layer_norm2")):
            source = prefixes[modality] + official_norm
            _copy_all(converted, official, source, place(norm, modality), ("weight", "bias"))


def convert_state_dict(official: OfficialStateDict, config: MSCLIPConfig) -> ConvertedStateDict:
    """Maps every official MS-CLIP tensor onto `MSCLIPModel` parameter and buffer names."""
    converted = ConvertedStateDict()
    # The model holds the log temperature as a 1-element tensor (FSDP shards no 0-D parameters).
    converted["logit_scale"] = (official.take("logit_scale").reshape(1), "logit_scale")
    _copy(converted, official, "token_embedding.weight", "text_embeddings.token_embedding.weight")
    _copy(converted, official, "positional_embedding", "text_embeddings.position_embedding.weight")
    _copy_all(converted, official, "ln_final", "text_final_layer_norm", ("weight", "bias"))
    projections = (("text_projection", "text_projection.weight"), (f"{_VISUAL}proj", "visual_projection.weight"))
    for source, target in projections:
        matrix = official.take(source)
        if matrix.numel():
            converted[target] = (projection_to_linear_weight(matrix, source), f"{source} (transposed)")

    _copy(converted, official, f"{_VISUAL}class_embedding", "vision_embeddings.class_embedding")
    _copy(converted, official, f"{_VISUAL}positional_embedding", "vision_embeddings.position_embedding.weight")
    _copy_all(converted, official, f"{_VISUAL}ln_pre", "vision_pre_layernorm", ("weight", "bias"))
    _copy_all(converted, official, f"{_VISUAL}ln_post", "vision_post_layernorm", ("weight", "bias"))

    stem = "vision_embeddings.stem."
    _conv_norm(converted, official, f"{_STEM}conv1", f"{_STEM}bn1", stem + "first")
    for stage in range(len(config.stem_strides)):
        src = f"{_STEM}resnet_stage.conv_{stage}."
        _conv_norm(converted, official, src + "conv1", src + "bn1", f"{stem}stages.{stage}.main")
        _conv_norm(converted, official, src + "downsample.0", src + "downsample.1", f"{stem}stages.{stage}.shortcut")
    _copy(converted, official, f"{_STEM}last_conv.weight", stem + "last_conv.weight")

    if config.parallel_branch:
        branch = "vision_parallel_branch."
        _conv_norm(converted, official, f"{_BRANCH}0.conv", f"{_BRANCH}0.bn", branch + "stages.0.layer")
        for stage in range(1, len(config.parallel_strides)):
            src = f"{_BRANCH}{stage}.resnet_stage.conv_0."
            dst = f"{branch}stages.{stage}."
            for conv, norm, name in (
                ("conv1", "bn1", "reduce"),
                ("conv2", "bn2", "spatial"),
                ("conv3", "bn3", "expand"),
                ("residual_conv", "residual_bn", "shortcut"),
            ):
                _conv_norm(converted, official, src + conv, src + norm, dst + name)
        for index in range(len(config.parallel_t2b_kernels)):
            src = f"{_ADAPTER}{index}."
            dst = f"{branch}adapters.{index}."
            _conv_norm(
                converted,
                official,
                src + "top2bottom_dw_conv.conv",
                src + "top2bottom_dw_conv.bn",
                dst + "branch_depthwise",
            )
            _copy(converted, official, src + "top2bottom_pw_conv.conv.weight", dst + "branch_pointwise.weight")
            _conv_norm(
                converted, official, src + "bottom_dw_conv.conv", src + "bottom_dw_conv.bn", dst + "token_depthwise"
            )
            _copy_all(converted, official, src + "ln_adapt", dst + "layer_norm", ("weight", "bias"))

    for block in range(config.num_hidden_layers):
        _block(converted, official, config, block)
    return converted


def convert_msclip_checkpoint(
    checkpoint: str | Path,
    output: str | Path,
    *,
    config_json: str | Path | None = None,
    preset: str | None = None,
    tokenizer_dir: str | Path | None = None,
    base_model: str | None = None,
    **flags: Any,
) -> Path:
    """Converts an official MS-CLIP-S checkpoint into a `save_pretrained` folder (model, processor, model card).

    Args:
        checkpoint: the official `.pth` file (a raw state dict).
        output: folder to write.
        config_json: a fixtures-format JSON with the values the shapes cannot tell.
        preset: `"b32"` or `"b16"` (the released models); default: the released layout matching the checkpoint.
        tokenizer_dir: folder with the CLIP BPE `vocab.json` + `merges.txt`; default: open_clip's bundled vocabulary.
        base_model: Hub id recorded in the model card's `base_model`.
        **flags: overrides: `image_size`, `text_heads`, `vision_heads`, `stem_strides`, `branch_strides`,
            `lateral_layers`, `layer_norm_eps`.

    Raises:
        ConversionError: unused, missing, unequal-shared or wrongly shaped official tensors, or settings that
            contradict the shapes.
    """
    checkpoint = Path(checkpoint)
    official = OfficialStateDict(load_official_checkpoint(checkpoint), source=checkpoint.name)
    shapes = infer_architecture(official)
    settings = resolve_settings(shapes, flags, read_config_json(config_json), preset)
    try:
        config = build_msclip_config(shapes, settings)
    except ValueError as error:
        raise ConversionError(f"the inferred architecture is inconsistent: {error}") from error

    model = MSCLIPModel(config).eval()
    converted = convert_state_dict(official, config)
    official.check_complete()
    load_converted_state_dict(model, converted)

    tokenizer = build_clip_tokenizer(tokenizer_dir, pad_token="!", model_max_length=config.max_position_embeddings)
    check_tokenizer_matches(tokenizer, config.vocab_size, config.eos_token_id, config.bos_token_id)
    if tokenizer.pad_token_id != config.pad_token_id:
        raise ConversionError(
            f"tokenizer pads with id {tokenizer.pad_token_id}, but MS-CLIP pads with {config.pad_token_id}"
        )
    processor = MSCLIPProcessor(image_processor=msclip_image_processor(config.image_size), tokenizer=tokenizer)

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(output)
    processor.save_pretrained(output)
    write_model_card(
        output,
        method="msclip",
        model_name=f"MS-CLIP {output.name}",
        source_checkpoint=checkpoint.name,
        base_model=base_model,
        description=(
            "MS-CLIP-S (You et al., ECCV 2022, Hxyou/MSCLIP): one transformer whose attention and MLP are shared by "
            f"images and text ({config.num_hidden_layers} blocks, width {config.hidden_size}; blocks "
            f"{shapes['shared_blocks']} shared), early-conv stem, parallel CNN branch with lateral adapters, "
            f"{config.projection_dim}-d embeddings. Preprocessing: bicubic resize to {config.image_size}, centre "
            "crop, ImageNet mean/std. The official zero-shot evaluation scales logits by a fixed 100."
        ),
        conversion_summary={
            "converted_from": f"Hxyou/MSCLIP checkpoint {checkpoint.name}",
            "preset": settings["preset"] or "none (shapes + --config / flags)",
            "shared_blocks": shapes["shared_blocks"],
            "heads_vision_text": f"{config.vision_num_attention_heads} / {config.text_num_attention_heads}",
            "stem_strides": config.stem_strides,
            "parallel_strides": config.parallel_strides,
            "lateral_adapter_blocks": config.parallel_lateral_layers,
            "text_padding": "id 0 (pooled at the first end-of-text token)",
        },
    )
    return output


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hf-unified-convert-msclip",
        description="Convert an official MS-CLIP-S checkpoint (Hxyou/MSCLIP) into a transformers folder.",
    )
    parser.add_argument("--checkpoint", required=True, help="official .pth file (raw state dict)")
    parser.add_argument("--output", required=True, help="folder to write (save_pretrained layout)")
    parser.add_argument("--config", dest="config_json", help="JSON in the golden fixtures' format")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="values of the released models")
    parser.add_argument(
        "--tokenizer", dest="tokenizer_dir", help="folder with CLIP BPE vocab.json + merges.txt (default: open_clip's)"
    )
    parser.add_argument("--base-model", help="Hub id to record as base_model in the model card")
    parser.add_argument("--image-size", type=int)
    parser.add_argument("--text-heads", type=int, help="text attention heads (official TEXT.HEADS)")
    parser.add_argument("--vision-heads", type=int, help="vision attention heads (official: width // 64)")
    parser.add_argument("--stem-strides", type=int, nargs="+", help="EARLY_CONV_RES_STRIDES, e.g. 2 2 2 1")
    parser.add_argument("--branch-strides", type=int, nargs="+", help="PARALLEL_STRIDES, e.g. 2 2 2 2 1")
    parser.add_argument("--lateral-layers", type=int, nargs="+", help="PARALLEL_LATERAL_LAYER, e.g. 2 4 6 8 10")
    parser.add_argument("--layer-norm-eps", type=float)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = vars(build_parser().parse_args(argv))
    checkpoint, output = args.pop("checkpoint"), args.pop("output")
    try:
        folder = convert_msclip_checkpoint(checkpoint, output, **args)
    except (ConversionError, ValueError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {folder}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
