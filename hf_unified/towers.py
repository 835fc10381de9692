"""Image and text towers of a dual encoder: any transformers vision or text model, pooled to one vector.

The methods in this package put their own heads on top of standard transformers backbones (CLIP, ViT, Swin,
BERT, RoBERTa, ...). This module turns a tower config into a model and a tower output into one feature per
example, so that each method states *which* pooling it uses instead of re-implementing it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

from .config_checks import (
    DEPTH_FIX,
    MAX_LAYERS,
    check_activation,
    check_finite,
    check_float,
    check_int,
    check_parameter_count,
    check_patch_grid,
    check_rate,
    is_int,
    refuse,
    transformer_parameters,
)
from .patch_dropout import PatchDropout

TEXT_POOLING = ("eos", "cls", "mean")
IMAGE_POOLING = ("pooler", "cls", "mean")

# Size fields of transformers tower configs (CLIP, ViT, Swin, BERT, RoBERTa, ...): positive integers when present.
TOWER_SIZE_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_channels",
    "vocab_size",
    "max_position_embeddings",
    "embed_dim",
    "window_size",
    "projection_dim",
    "encoder_stride",
)

# Image towers that take patch dropout: their embeddings module (by class name) returns the class token and the
# patches with positions already added, and nothing after it depends on the token count. The value is that class
# and the number of leading tokens always kept.
PATCH_DROPOUT_TOWERS = {"clip_vision_model": ("CLIPVisionEmbeddings", 1), "vit": ("ViTEmbeddings", 1)}
# Why the others cannot drop patches, for the error.
PATCH_DROPOUT_REFUSALS = {
    "swin": "Swin attends within windows of the full patch grid and merges neighbouring patches between stages",
}


def tower_config(config: PreTrainedConfig | dict, role: str) -> PreTrainedConfig:
    """Returns a config object for a tower given as a config or as a dict carrying ``model_type``.

    Raises:
        ValueError: the dict has no ``model_type``, names a type transformers does not know, or holds an absurd value
            ([`check_tower_values`]).
    """
    if isinstance(config, PreTrainedConfig):
        return config
    if not isinstance(config, dict):
        raise ValueError(f"{role} must be a transformers config or a dict with a model_type, got {type(config)}")
    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{role} given as a dict needs a 'model_type' (e.g. 'clip_vision_model', 'swin', 'bert')")
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:
        raise ValueError(f"{role}: unknown tower model_type {model_type!r}")
    check_tower_values({**_config_defaults(CONFIG_MAPPING[model_type]), **config, "model_type": model_type}, role)
    return AutoConfig.for_model(model_type, **config)


def _config_defaults(config_class: type) -> dict:
    """The field defaults of a transformers config class (a dataclass in transformers 5)."""
    if not dataclasses.is_dataclass(config_class):
        return {}
    return {f.name: f.default for f in dataclasses.fields(config_class) if f.default is not dataclasses.MISSING}


def check_tower_dicts(config: PreTrainedConfig) -> None:
    """Before sub-configs are built: a tower dict naming an unknown `model_type` gets a short, clear error, and its
    values (over its class's defaults) pass [`check_tower_values`] before transformers' own validation divides by
    them."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for role in ("vision_config", "text_config"):
        tower = getattr(config, role)
        if not isinstance(tower, dict):
            continue
        spec = (getattr(config, "sub_configs_defaults", None) or {}).get(role)
        model_type = tower.get("model_type", getattr(spec, "model_type", None))
        if model_type not in CONFIG_MAPPING:
            raise ValueError(f"{role}: unknown tower model_type {model_type!r}")
        check_tower_values({**_config_defaults(CONFIG_MAPPING[model_type]), **tower, "model_type": model_type}, role)


def check_tower_values(values: Mapping, role: str) -> int:
    """Refuses, in one line, an absurd value of a transformers tower config given as its fields (`to_dict()`):
    non-finite numbers, non-positive epsilons, dropout rates outside `[0, 1)`, unknown activations, non-positive sizes,
    more than `MAX_LAYERS` blocks, heads that do not divide the width, a patch size that does not divide the image
    size, more than `MAX_PARAMETERS` parameters (`config_checks`). Returns the tower's parameter estimate."""

    def field(name: str) -> str:
        return f"{role}.{name}"

    check_finite(role, dict(values))
    for name, value in values.items():
        if value is None or isinstance(value, bool):
            continue
        if name.endswith("_eps"):
            check_float(field(name), value, 0.0, exclusive=(True, False), fix="give a small positive epsilon (1e-5)")
        elif "dropout" in name or "drop_path" in name:
            check_rate(field(name), value)
        elif name.endswith("_act") and (isinstance(value, str) or not callable(value)):  # hidden_act, pooler_act
            check_activation(field(name), value)
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    model_type = values.get("model_type")
    defaults = _config_defaults(CONFIG_MAPPING[model_type]) if model_type in CONFIG_MAPPING else {}

    def size_fix(name: str) -> str:
        default = defaults.get(name)
        return f"{model_type}'s default is {default}" if default is not None else "give a positive size"

    sizes = {}
    for name in TOWER_SIZE_FIELDS:
        if values.get(name) is not None:
            sizes[name] = check_int(field(name), values[name], fix=size_fix(name))
    if "num_hidden_layers" in sizes:
        check_int(field("num_hidden_layers"), sizes["num_hidden_layers"], 1, MAX_LAYERS, DEPTH_FIX)
    width, heads = sizes.get("hidden_size"), sizes.get("num_attention_heads")
    if width is not None and heads is not None and width % heads:
        raise refuse(
            field("num_attention_heads"),
            f"a divisor of hidden_size {width}",
            heads,
            "each head takes hidden_size / num_attention_heads channels (CLIP: 64); change either",
        )
    estimate = _hierarchical_parameters(values, role)
    image_tokens = 0
    if values.get("image_size") is not None and values.get("patch_size") is not None:
        image_tokens = check_patch_grid(f"{role}.", values["image_size"], values["patch_size"])
    if estimate is None and width is not None and "num_hidden_layers" in sizes:
        intermediate = sizes.get("intermediate_size", 4 * width)
        positions = sizes.get("vocab_size", 0) + sizes.get("max_position_embeddings", 0) + image_tokens
        patch_size = values.get("patch_size") if is_int(values.get("patch_size")) else 0
        stem = sizes.get("num_channels", 0) * patch_size**2
        estimate = transformer_parameters(sizes["num_hidden_layers"], width, intermediate) + (positions + stem) * width
    check_parameter_count(role, estimate or 0, "reduce its num_hidden_layers / hidden_size / intermediate_size")
    return estimate or 0


def _hierarchical_parameters(values: Mapping, role: str) -> int | None:
    """Checks the per-stage fields of a hierarchical tower (Swin: `depths`, `num_heads`, `embed_dim` doubling per
    stage) and returns its parameter estimate; None for other towers."""
    depths, stage_heads, embed_dim = values.get("depths"), values.get("num_heads"), values.get("embed_dim")
    if depths is None or stage_heads is None or embed_dim is None:
        return None
    for name, stages in (("depths", depths), ("num_heads", stage_heads)):
        if not isinstance(stages, (list, tuple)) or not stages:
            raise refuse(f"{role}.{name}", "a list with one integer per stage", stages, "e.g. [2, 2, 6, 2] (Swin-T)")
        for index, value in enumerate(stages):
            check_int(f"{role}.{name}[{index}]", value, fix="every stage needs at least one block and one head")
    if len(depths) != len(stage_heads):
        raise refuse(f"{role}.num_heads", f"one entry per stage of depths {list(depths)}", stage_heads, "match them")
    if sum(depths) > MAX_LAYERS:
        raise refuse(f"{role}.depths", f"at most {MAX_LAYERS} blocks in all", depths, DEPTH_FIX)
    mlp_ratio = check_float(f"{role}.mlp_ratio", values.get("mlp_ratio", 4.0), 0.0, exclusive=(True, False))
    window = values.get("window_size", 7)
    estimate = 0
    for stage, (depth, heads) in enumerate(zip(depths, stage_heads)):
        width = embed_dim * 2**stage
        if width % heads:
            raise refuse(
                f"{role}.num_heads[{stage}]",
                f"a divisor of stage {stage}'s width embed_dim * 2**{stage} = {width}",
                heads,
                "change num_heads or embed_dim",
            )
        estimate += depth * (int((4 + 2 * mlp_ratio) * width * width) + heads * (2 * window - 1) ** 2)
    return estimate


def check_dual_encoder_fields(config: PreTrainedConfig) -> None:
    """After sub-configs are built: both towers pass [`check_tower_values`] and have a width to project from, the
    whole model stays under `MAX_PARAMETERS`, the poolings exist, and patch dropout has a tower that takes it."""
    estimate = 0
    for role in ("vision_config", "text_config"):
        tower = getattr(config, role)
        estimate += check_tower_values(tower.to_dict(), role)
        if getattr(tower, "hidden_size", None) is None:
            raise ValueError(f"{role} ({tower.model_type}) has no hidden_size to project from")
        estimate += tower.hidden_size * config.projection_dim
    check_parameter_count("vision_config + text_config", estimate, "reduce the towers' sizes")
    if config.text_pooling not in TEXT_POOLING:
        raise ValueError(f"text_pooling must be one of {TEXT_POOLING}, got {config.text_pooling!r}")
    if config.vision_pooling not in IMAGE_POOLING:
        raise ValueError(f"vision_pooling must be one of {IMAGE_POOLING}, got {config.vision_pooling!r}")
    if config.projection_dim <= 0:
        raise ValueError(f"projection_dim must be positive, got {config.projection_dim}")
    if config.patch_dropout:
        patch_dropout_prefix_tokens(config.vision_config, config.patch_dropout)


def patch_dropout_prefix_tokens(vision_config: PreTrainedConfig, patch_dropout: float) -> int:
    """The number of leading tokens (class token) an image tower of `vision_config` always keeps under patch dropout.

    Raises:
        ValueError: the tower cannot leave patches out (`PATCH_DROPOUT_TOWERS` lists those that can).
    """
    model_type = vision_config.model_type
    if model_type in PATCH_DROPOUT_TOWERS:
        return PATCH_DROPOUT_TOWERS[model_type][1]
    reason = PATCH_DROPOUT_REFUSALS.get(
        model_type, "its embeddings are not a class token followed by position-embedded patches"
    )
    raise ValueError(
        f"patch_dropout={patch_dropout} needs an image tower that can leave patches out "
        f"({', '.join(PATCH_DROPOUT_TOWERS)}), got vision_config of type {model_type!r}: {reason}; "
        "set patch_dropout=0 or use one of those towers"
    )


def attach_patch_dropout(tower: PreTrainedModel, patch_dropout: PatchDropout) -> None:
    """Runs `patch_dropout` on the output of `tower`'s embeddings module, through a forward hook (PyTorch's documented
    way to replace a module's output): the tower's code and parameter names stay transformers' own, so checkpoints,
    exports and PEFT see the same model, and in eval mode the hook returns the tokens unchanged."""
    class_name = PATCH_DROPOUT_TOWERS[tower.config.model_type][0]
    embeddings = [module for module in tower.modules() if type(module).__name__ == class_name]
    if len(embeddings) != 1:
        raise RuntimeError(
            f"expected one {class_name} in the {tower.config.model_type} tower, found {len(embeddings)}"
        )
    embeddings[0].register_forward_hook(patch_dropout.hook)


def tower_kwargs(config: PreTrainedConfig, uses_pooler: bool) -> dict:
    """Constructor arguments of the tower class for `config`: no pooling layer when the dual encoder does not read
    `pooler_output` (BERT's and ViT's dense + tanh poolers would be parameters without gradient, which
    DistributedDataParallel refuses, and weights that do nothing)."""
    import inspect

    from transformers.models.auto.modeling_auto import MODEL_MAPPING

    tower_class = MODEL_MAPPING.get(type(config), None)
    if tower_class is not None and not uses_pooler:
        if "add_pooling_layer" in inspect.signature(tower_class.__init__).parameters:
            return {"add_pooling_layer": False}
    return {}


def build_tower(config: PreTrainedConfig, uses_pooler: bool = True) -> PreTrainedModel:
    """Builds a randomly initialised tower with ``AutoModel.from_config`` (the model's own class and init);
    `uses_pooler=False` leaves out a pooling layer nobody reads ([`tower_kwargs`])."""
    return AutoModel.from_config(config, **tower_kwargs(config, uses_pooler))


def eos_positions(
    input_ids: torch.Tensor, attention_mask: torch.Tensor | None, eos_token_id: int | None
) -> torch.Tensor:
    """Index of the first end-of-text token of each row, whatever the padding id.

    Rows without an end-of-text token (truncated text) fall back to their last attended token.

    Args:
        input_ids: ``[B, L]`` token ids.
        attention_mask: ``[B, L]`` 1 on real tokens, or None (all tokens real).
        eos_token_id: id of the end-of-text token, or None to use the last attended token.

    Returns:
        ``[B]`` positions.
    """
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    last_attended = attention_mask.sum(dim=1).clamp_min(1) - 1
    if eos_token_id is None:
        return last_attended
    is_eos = (input_ids == eos_token_id) & attention_mask.bool()
    first_eos = is_eos.int().argmax(dim=1)
    return torch.where(is_eos.any(dim=1), first_eos, last_attended)


def pool_text(
    last_hidden_state: torch.Tensor,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    pooling: str,
    eos_token_id: int | None = None,
) -> torch.Tensor:
    """Pools text-tower tokens to one vector per text.

    Args:
        last_hidden_state: ``[B, L, H]`` (after the tower's final norm).
        input_ids: ``[B, L]``.
        attention_mask: ``[B, L]`` or None.
        pooling: ``"eos"`` (first end-of-text token, CLIP-style causal towers), ``"cls"`` (first token, BERT-style)
            or ``"mean"`` (mean over attended tokens).
        eos_token_id: end-of-text id for ``"eos"``.

    Returns:
        ``[B, H]``.
    """
    if pooling == "eos":
        positions = eos_positions(input_ids, attention_mask, eos_token_id)
        return last_hidden_state[torch.arange(last_hidden_state.shape[0], device=positions.device), positions]
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        if attention_mask is None:
            return last_hidden_state.mean(dim=1)
        weights = attention_mask.to(last_hidden_state.dtype).unsqueeze(-1)
        return (last_hidden_state * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1)
    raise ValueError(f"text pooling must be one of {TEXT_POOLING}, got {pooling!r}")


def pool_image(last_hidden_state: torch.Tensor, pooler_output: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """Pools image-tower outputs to one vector per image.

    Args:
        last_hidden_state: ``[B, N, H]`` tokens (or ``[B, H, h, w]`` feature maps for convolutional towers).
        pooler_output: ``[B, H]`` the tower's own pooled output (Swin: final norm + average; CLIP: normed CLS).
        pooling: ``"pooler"``, ``"cls"`` (first token) or ``"mean"`` (mean over tokens / positions).

    Returns:
        ``[B, H]``.
    """
    if pooling == "pooler":
        if pooler_output is None:
            raise ValueError("vision_pooling='pooler' needs a tower with a pooler_output; use 'cls' or 'mean'")
        return pooler_output.flatten(1)
    if pooling == "cls":
        return last_hidden_state[:, 0]
    if pooling == "mean":
        if last_hidden_state.ndim == 4:
            return last_hidden_state.mean(dim=(2, 3))
        return last_hidden_state.mean(dim=1)
    raise ValueError(f"vision pooling must be one of {IMAGE_POOLING}, got {pooling!r}")


def text_tower_inputs(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None,
    position_ids: torch.Tensor | None = None,
    token_type_ids: torch.Tensor | None = None,
) -> dict[str, torch.Tensor]:
    """Keyword arguments for a text tower, leaving out what was not given (CLIP text takes no token_type_ids)."""
    inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
    if position_ids is not None:
        inputs["position_ids"] = position_ids
    if token_type_ids is not None:
        inputs["token_type_ids"] = token_type_ids
    return inputs
