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

import math
import re
import sys
from pathlib import Path
from typing import Any

import torch

from ..configuration_msclip import MSCLIPConfig
from ..modeling_msclip import MSCLIPModel
from ..processing_msclip import MSCLIPProcessor, msclip_image_processor
from .common import ConversionError, ConvertedStateDict, OfficialStateDict, activation_name, first_given, nested_get
from .converter import Converter, Flag

# Official layout (lib/models/clip_openai_pe_res_v1.py).
_VISUAL = "visual."
_STEM = "visual.transformer.resblocks.0."
_BRANCH = "visual.transformer.parallel_branch_v."
_ADAPTER = "visual.transformer.parallel_lateral_adapter."
_BLOCKS = {"text": "transformer.resblocks.", "vision": "visual.transformer.resblocks."}
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
# Each official block tensor -> (sub-layer of `encoder.layers.i`, name under it; `{}` = q / k / v of a fused in_proj).
_BLOCK_TENSORS = {
    "attn.in_proj_weight": ("attention", "{}_proj.weight"),
    "attn.in_proj_bias": ("attention", "{}_proj.bias"),
    "attn.out_proj.weight": ("attention", "out_proj.weight"),
    "attn.out_proj.bias": ("attention", "out_proj.bias"),
    "mlp.c_fc.weight": ("mlp", "fc1.weight"),
    "mlp.c_fc.bias": ("mlp", "fc1.bias"),
    "mlp.c_proj.weight": ("mlp", "fc2.weight"),
    "mlp.c_proj.bias": ("mlp", "fc2.bias"),
    "ln_1.weight": ("layer_norm1", "weight"),
    "ln_1.bias": ("layer_norm1", "bias"),
    "ln_2.weight": ("layer_norm2", "weight"),
    "ln_2.bias": ("layer_norm2", "bias"),
}

# The released MS-CLIP-S checkpoints (experiments/model/b{32,16}-*-msclips.yaml): the values shapes cannot tell, and
# the width, depth and adapter kernels (read from the shapes) that identify the layout.
_B32_RELEASE = {
    "image_size": 224,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "vision_num_attention_heads": 12,
    "text_num_attention_heads": 12,
    "stem_strides": [2, 2, 2, 2],
    "parallel_strides": [2, 2, 2, 2, 2],
    "parallel_t2b_kernels": [16, 8, 4, 2, 1],
    "parallel_lateral_layers": [2, 4, 6, 8, 10],
}
PRESETS: dict[str, dict[str, Any]] = {
    "b32": _B32_RELEASE,
    "b16": {
        **_B32_RELEASE,
        "stem_strides": [2, 2, 2, 1],
        "parallel_strides": [2, 2, 2, 2, 1],
        "parallel_t2b_kernels": [8, 4, 2, 1, 1],
    },
}


class MSCLIPConverter(Converter):
    method = "msclip"
    source = "Hxyou/MSCLIP"
    description = "Convert an official MS-CLIP-S checkpoint (Hxyou/MSCLIP) into a transformers folder."
    checkpoint_help = "official .pth file (raw state dict)"
    model_class = MSCLIPModel
    processor_class = MSCLIPProcessor
    presets = PRESETS
    defaults = {
        "layer_norm_eps": 1e-12,  # the official TF-style LayerNorm
        "batch_norm_eps": 1e-5,  # stem, branch stage 0, adapters
        "parallel_batch_norm_eps": 1e-6,  # branch ConvResBlocks (stages 1-4)
        "hidden_act": "quick_gelu",
        "logit_scale_init_value": 1.0,
        "pad_token_id": 0,  # the official tokenizer pads with zeros
    }
    flags = (
        Flag("--image-size", "image_size"),
        Flag("--text-heads", "text_num_attention_heads", "text attention heads (official TEXT.HEADS)"),
        Flag("--vision-heads", "vision_num_attention_heads", "vision attention heads (official: width // 64)"),
        Flag("--stem-strides", "stem_strides", "EARLY_CONV_RES_STRIDES, e.g. 2 2 2 1", nargs="+"),
        Flag("--branch-strides", "parallel_strides", "PARALLEL_STRIDES, e.g. 2 2 2 2 1", nargs="+"),
        Flag("--lateral-layers", "parallel_lateral_layers", "PARALLEL_LATERAL_LAYER, e.g. 2 4 6 8 10", nargs="+"),
        Flag("--layer-norm-eps", "layer_norm_eps", type=float),
    )
    pad_token = "!"  # id 0 of the CLIP BPE

    def infer_shapes(self, official: OfficialStateDict) -> dict[str, Any]:
        """The shapes, and the duplicated shared tensors, of an official MS-CLIP-S model.

        Raises:
            ConversionError: a tensor the architecture is read from is missing or has an impossible shape, or the
                checkpoint uses an option `MSCLIPModel` does not implement.
        """
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
                "not an MS-CLIP-S checkpoint (early-conv stem + modality-shared transformer): missing "
                + ", ".join(absent)
            )
        vocab_size, width = official.shape("token_embedding.weight")
        positions = official.shape(f"{_VISUAL}positional_embedding")[0]
        grid = math.isqrt(positions - 1)
        if grid * grid != positions - 1:
            raise ConversionError(f"{_VISUAL}positional_embedding has {positions} rows, not grid**2 + 1")
        layers = {
            modality: official.count_blocks(re.escape(prefix) + r"(\d+)\.") for modality, prefix in _BLOCKS.items()
        }
        if layers["vision"] != layers["text"]:
            raise ConversionError(
                f"{layers['vision']} vision blocks (conv stem included) but {layers['text']} text blocks"
            )
        fc = official.shape(f"{_BLOCKS['text']}0.mlp.c_fc.weight")

        conv1 = official.shape(f"{_STEM}conv1.weight")
        if conv1[-1] != 3:
            raise ConversionError(f"{_STEM}conv1.weight: first stem kernel {conv1[-1]} (only 3 is supported)")
        stem_channels = [conv1[0]]
        for stage in range(official.count_blocks(re.escape(f"{_STEM}resnet_stage.conv_") + r"(\d+)\.")):
            shape = official.shape(f"{_STEM}resnet_stage.conv_{stage}.conv1.weight")
            if shape is None:
                raise ConversionError(f"{_STEM}resnet_stage.conv_{stage}.conv1.weight missing")
            stem_channels.append(shape[0])

        branch_channels = []
        for stage in range(official.count_blocks(re.escape(_BRANCH) + r"(\d+)\.")):
            if stage == 0:  # conv-bn-relu
                spatial_key = out_key = f"{_BRANCH}0.conv.weight"
            else:  # a bottleneck: 1x1 reduce, 3x3 spatial, 1x1 expand
                bottleneck = f"{_BRANCH}{stage}.resnet_stage.conv_0."
                spatial_key, out_key = bottleneck + "conv2.weight", bottleneck + "conv3.weight"
            spatial, out = official.shape(spatial_key), official.shape(out_key)
            if spatial is None or out is None:
                raise ConversionError(f"parallel branch stage {stage}: {spatial_key} or {out_key} missing")
            if spatial[-1] != 3:
                raise ConversionError(f"{spatial_key}: branch kernel {spatial[-1]} (only 3, padding 1, is supported)")
            branch_channels.append(out[0])
        t2b_kernels = []
        for index in range(official.count_blocks(re.escape(_ADAPTER) + r"(\d+)\.")):
            shape = official.shape(f"{_ADAPTER}{index}.top2bottom_dw_conv.conv.weight")
            if shape is None:
                raise ConversionError(f"{_ADAPTER}{index}.top2bottom_dw_conv.conv.weight missing")
            t2b_kernels.append(shape[-1])

        projection, text_projection = official.shape(f"{_VISUAL}proj"), official.shape("text_projection")
        if projection[1] != text_projection[1]:
            raise ConversionError(
                f"visual.proj {projection} and text_projection {text_projection} project to different sizes"
            )
        return {
            "vocab_size": vocab_size,
            "hidden_size": width,
            "max_position_embeddings": official.shape("positional_embedding")[0],
            "num_hidden_layers": layers["text"],
            "intermediate_size": fc[0] if fc else None,
            "projection_dim": projection[1],
            "early_specialization": True,  # vision block 0 is the conv stem, text block 0 is text-only
            "shared_sublayers": ["attention", "mlp"],  # SHARED_TENSORS; LayerNorms stay per modality
            "stem_channels": stem_channels,
            "parallel_branch": bool(branch_channels),
            "parallel_channels": branch_channels or None,
            "parallel_t2b_kernels": t2b_kernels or None,
            "checkpoint.grid_size": grid,
            "checkpoint.shared_blocks": [block for block in range(1, layers["text"]) if _is_shared(official, block)],
        }

    def fields_from_config_json(self, config_json: dict[str, Any]) -> dict[str, Any]:
        """Its `architecture` section first, then `official_config`.

        Raises:
            ConversionError: the JSON describes convolutions `MSCLIPModel` does not implement, or BatchNorm eps
                finer-grained than its two groups.
        """
        architecture = config_json.get("architecture", {})
        vision, text = architecture.get("vision", {}), architecture.get("text", {})
        sharing = architecture.get("sharing", {})
        custom = nested_get(config_json, "official_config", "CUSTOM", default={})
        spec = nested_get(config_json, "official_config", "MODEL", "SPEC", default={})
        stem = _by_prefix(vision, "early_conv_stem") or {}
        branch = _by_prefix(vision, "parallel_branch") or []
        adapters = _by_prefix(vision, "lateral_adapters") or {}
        tokenizer = config_json.get("tokenizer") or architecture.get("tokenizer") or {}
        _check_supported_convolutions(stem, branch, adapters)
        test_size = nested_get(config_json, "official_config", "TEST", "IMAGE_SIZE")
        batch_norm_eps, parallel_batch_norm_eps = _batch_norm_eps_groups(architecture.get("batchnorm_eps_by_module"))
        heads = sharing.get("heads_per_modality", {})
        return {
            "image_size": first_given(
                vision.get("image_size"), test_size[0] if isinstance(test_size, list) else test_size
            ),
            "hidden_size": first_given(vision.get("width"), nested_get(spec, "VISION", "WIDTH")),
            "num_hidden_layers": first_given(text.get("layers"), nested_get(spec, "TEXT", "LAYERS")),
            "vocab_size": first_given(text.get("vocab_size"), nested_get(spec, "TEXT", "VOCAB_SIZE")),
            "max_position_embeddings": first_given(
                text.get("context_length"), nested_get(spec, "TEXT", "CONTEXT_LENGTH")
            ),
            "projection_dim": first_given(_by_prefix(architecture, "embed_dim"), spec.get("EMBED_DIM")),
            "text_num_attention_heads": first_given(
                heads.get("text"), text.get("heads"), nested_get(spec, "TEXT", "HEADS")
            ),
            "vision_num_attention_heads": first_given(heads.get("vision"), _by_prefix(vision, "heads")),
            "stem_strides": first_given(stem.get("strides"), custom.get("EARLY_CONV_RES_STRIDES")),
            "parallel_strides": first_given([s["stride"] for s in branch] or None, custom.get("PARALLEL_STRIDES")),
            "parallel_t2b_kernels": custom.get("PRALLEL_T2B_KERNELS"),
            "parallel_lateral_layers": first_given(
                adapters.get("applied_before_visual_blocks"), custom.get("PARALLEL_LATERAL_LAYER")
            ),
            "layer_norm_eps": architecture.get("layer_norm_eps"),
            "hidden_act": _activation_in(architecture.get("mlp")),
            "batch_norm_eps": batch_norm_eps,
            "parallel_batch_norm_eps": parallel_batch_norm_eps,
            "logit_scale_init_value": architecture.get("logit_scale_init_value_official"),
            "bos_token_id": first_given(tokenizer.get("sot_token_id"), tokenizer.get("bos_token_id")),
            "eos_token_id": first_given(tokenizer.get("eot_token_id"), tokenizer.get("eos_token_id")),
            "pad_token_id": first_given(tokenizer.get("pad_id"), tokenizer.get("pad_token_id")),
            "processor.crop_size": config_json.get("preprocessing", {}).get("image_size"),
            "checkpoint.grid_size": vision.get("grid_size"),
            "checkpoint.shared_blocks": sharing.get("shared_block_indices"),
        }

    def complete_fields(self, fields: dict[str, Any]) -> None:
        super().complete_fields(fields)
        width, branch = fields["hidden_size"], fields["parallel_branch"]
        fields.setdefault("vision_num_attention_heads", max(width // 64, 1))  # hard-coded width // 64 officially
        if "text_num_attention_heads" not in fields and width % 64 == 0:
            fields["text_num_attention_heads"] = width // 64
        parallel = ("parallel_strides", "parallel_lateral_layers")
        self.require(fields, "stem_strides", *(parallel if branch else ()), "text_num_attention_heads")

        stem_strides, grid = fields["stem_strides"], fields["checkpoint.grid_size"]
        fields["patch_size"] = patch_size = 2 * math.prod(stem_strides)  # conv1 (stride 2), then the residual stages
        image_size = fields.setdefault("image_size", grid * patch_size)
        if image_size != grid * patch_size:
            raise ConversionError(
                f"image size {image_size} with stem strides {list(stem_strides)} (total stride {patch_size}) does not "
                f"give the checkpoint's {grid}x{grid} position grid"
            )
        stages = len(fields["stem_channels"]) - 1
        if len(stem_strides) != stages:
            raise ConversionError(
                f"{len(stem_strides)} stem strides for {stages} residual stem stages in the checkpoint"
            )
        if branch:
            for name in parallel:
                if len(fields[name]) != len(fields["parallel_channels"]):
                    raise ConversionError(
                        f"{len(fields[name])} {name} for {len(fields['parallel_channels'])} parallel-branch stages in "
                        "the checkpoint"
                    )
        else:
            for name in (*parallel, "parallel_channels", "parallel_t2b_kernels"):
                fields.pop(name, None)
        shared = list(fields["checkpoint.shared_blocks"])
        vision_blocks = list(range(1, fields["num_hidden_layers"]))
        fields["shared_layers"] = "all" if shared == vision_blocks else (shared or "none")

    def map_keys(self, official: OfficialStateDict, config: MSCLIPConfig) -> ConvertedStateDict:
        """Every official MS-CLIP tensor under `MSCLIPModel` parameter and buffer names."""
        converted = ConvertedStateDict(official)
        converted.copy_scalar("logit_scale", "logit_scale")
        converted.copy("token_embedding.weight", "text_embeddings.token_embedding.weight")
        converted.copy("positional_embedding", "text_embeddings.position_embedding.weight")
        converted.copy_module("ln_final", "text_final_layer_norm")
        converted.transpose_projection("text_projection", "text_projection.weight")
        converted.transpose_projection(f"{_VISUAL}proj", "visual_projection.weight")

        converted.copy(f"{_VISUAL}class_embedding", "vision_embeddings.class_embedding")
        converted.copy(f"{_VISUAL}positional_embedding", "vision_embeddings.position_embedding.weight")
        converted.copy_module(f"{_VISUAL}ln_pre", "vision_pre_layernorm")
        converted.copy_module(f"{_VISUAL}ln_post", "vision_post_layernorm")

        stem = "vision_embeddings.stem."
        _conv_norm(converted, f"{_STEM}conv1", f"{_STEM}bn1", stem + "first")
        for stage in range(len(config.stem_strides)):
            src = f"{_STEM}resnet_stage.conv_{stage}."
            _conv_norm(converted, src + "conv1", src + "bn1", f"{stem}stages.{stage}.main")
            _conv_norm(converted, src + "downsample.0", src + "downsample.1", f"{stem}stages.{stage}.shortcut")
        converted.copy(f"{_STEM}last_conv.weight", stem + "last_conv.weight")

        if config.parallel_branch:
            branch = "vision_parallel_branch."
            _conv_norm(converted, f"{_BRANCH}0.conv", f"{_BRANCH}0.bn", branch + "stages.0.layer")
            for stage in range(1, len(config.parallel_strides)):
                src, dst = f"{_BRANCH}{stage}.resnet_stage.conv_0.", f"{branch}stages.{stage}."
                for conv, norm, name in (
                    ("conv1", "bn1", "reduce"),
                    ("conv2", "bn2", "spatial"),
                    ("conv3", "bn3", "expand"),
                    ("residual_conv", "residual_bn", "shortcut"),
                ):
                    _conv_norm(converted, src + conv, src + norm, dst + name)
            for index in range(len(config.parallel_t2b_kernels)):
                src, dst = f"{_ADAPTER}{index}.", f"{branch}adapters.{index}."
                _conv_norm(
                    converted, src + "top2bottom_dw_conv.conv", src + "top2bottom_dw_conv.bn", dst + "branch_depthwise"
                )
                converted.copy(src + "top2bottom_pw_conv.conv.weight", dst + "branch_pointwise.weight")
                _conv_norm(converted, src + "bottom_dw_conv.conv", src + "bottom_dw_conv.bn", dst + "token_depthwise")
                converted.copy_module(src + "ln_adapt", dst + "layer_norm")

        for block in range(config.num_hidden_layers):
            _map_block(converted, config, block)
        return converted

    def image_processor(self, fields: dict[str, Any]):
        return msclip_image_processor(fields["image_size"])

    def card_summary(self, config: MSCLIPConfig, image_processor) -> dict[str, Any]:
        return {
            "shared_blocks": [block for block in range(config.num_hidden_layers) if config.layer_is_shared(block)],
            "heads_vision_text": f"{config.vision_num_attention_heads} / {config.text_num_attention_heads}",
            "stem_strides": config.stem_strides,
            "parallel_strides": config.parallel_strides,
            "lateral_adapter_blocks": config.parallel_lateral_layers,
            "text_padding": "id 0 (pooled at the first end-of-text token)",
        }


def _is_shared(official: OfficialStateDict, block: int) -> bool:
    """The official state dict lists each shared tensor under both towers (one storage)."""
    keys = [(f"{_BLOCKS['vision']}{block}.{name}", f"{_BLOCKS['text']}{block}.{name}") for name in SHARED_TENSORS]
    return all(
        vision in official and text in official and torch.equal(official.tensors[vision], official.tensors[text])
        for vision, text in keys
    )


def _map_block(converted: ConvertedStateDict, config: MSCLIPConfig, block: int) -> None:
    """Block `block` of both towers. A shared sub-layer is stored once, from the text copy, after checking that the
    vision copy (also consumed) is equal."""
    shared = config.shared_sublayers_of(block)
    modalities = ["text"] + (["vision"] if config.vision_has_block(block) else [])
    for modality in modalities:
        for name, (sublayer, target_name) in _BLOCK_TENSORS.items():
            source = f"{_BLOCKS[modality]}{block}.{name}"
            is_shared = ("layernorm" if sublayer.startswith("layer_norm") else sublayer) in shared
            if is_shared and modality == "vision":
                _take_equal_copy(converted.official, source, f"{_BLOCKS['text']}{block}.{name}", block)
                continue
            target = f"encoder.layers.{block}." + (sublayer if is_shared else f"{modality}.{sublayer}")
            if "{}" in target_name:
                converted.split_qkv(source, [f"{target}.{target_name.format(part)}" for part in "qkv"])
            else:
                converted.copy(source, f"{target}.{target_name}")


def _take_equal_copy(official: OfficialStateDict, key: str, kept_key: str, block: int) -> None:
    copy, kept = official.take(key), official.tensors.get(kept_key)
    if copy.numel() and kept is not None and (copy.shape != kept.shape or not torch.equal(copy, kept)):
        raise ConversionError(f"block {block} is shared but {key} and {kept_key} differ")


def _conv_norm(converted: ConvertedStateDict, conv: str, norm: str, target: str) -> None:
    """A bias-free convolution and its BatchNorm, running statistics included (eval mode depends on them)."""
    converted.copy(f"{conv}.weight", f"{target}.conv.weight")
    converted.copy_module(norm, f"{target}.norm", _BATCH_NORM_TENSORS)


def _by_prefix(mapping: dict[str, Any] | None, name: str) -> Any:
    """The fixtures' JSON annotates some keys ("early_conv_stem (visual.transformer.resblocks.0, EarlyconvRes)")."""
    if not isinstance(mapping, dict):
        return None
    for key, value in mapping.items():
        if key == name or key.startswith(name + " "):
            return value
    return None


def _check_supported_convolutions(stem: dict, branch: list, adapters: dict) -> None:
    """`MSCLIPModel` implements the released layout: 3x3 convolutions with padding 1, a stride-2 first stem conv,
    adapters whose top-to-bottom conv has stride = kernel and padding 0."""
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


CONVERTER = MSCLIPConverter()


def convert_msclip_checkpoint(checkpoint: str | Path, output: str | Path, **kwargs: Any) -> Path:
    """Converts an official MS-CLIP-S checkpoint into a `save_pretrained` folder (model, processor, model card).

    Takes the arguments of [`Converter.convert`]: `config_json`, `preset` (`"b32"`, `"b16"`; default: the released
    layout matching the checkpoint), `tokenizer_dir`, `base_model`, `overwrite`, and the flags `image_size`,
    `text_heads`, `vision_heads`, `stem_strides`, `branch_strides`, `lateral_layers`, `layer_norm_eps`.
    """
    return CONVERTER.convert(checkpoint, output, **kwargs)


def main(argv: list[str] | None = None) -> int:
    """`hf-unified-convert-msclip`: exit code 0, 1 with one error line, or 2 for a usage error."""
    return CONVERTER.main(argv)


if __name__ == "__main__":
    sys.exit(main())
