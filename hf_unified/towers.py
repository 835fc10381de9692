"""Image and text towers of a dual encoder: any transformers vision or text model, pooled to one vector.

The methods in this package put their own heads on top of standard transformers backbones (CLIP, ViT, Swin,
BERT, RoBERTa, ...). This module turns a tower config into a model and a tower output into one feature per
example, so that each method states *which* pooling it uses instead of re-implementing it.
"""

from __future__ import annotations

import torch
from transformers import AutoConfig, AutoModel, PreTrainedConfig, PreTrainedModel

TEXT_POOLING = ("eos", "cls", "mean")
IMAGE_POOLING = ("pooler", "cls", "mean")


def tower_config(config: PreTrainedConfig | dict, role: str) -> PreTrainedConfig:
    """Returns a config object for a tower given as a config or as a dict carrying ``model_type``.

    Raises:
        ValueError: the dict has no ``model_type`` or names a type transformers does not know.
    """
    if isinstance(config, PreTrainedConfig):
        return config
    if not isinstance(config, dict):
        raise ValueError(f"{role} must be a transformers config or a dict with a model_type, got {type(config)}")
    config = dict(config)
    model_type = config.pop("model_type", None)
    if model_type is None:
        raise ValueError(f"{role} given as a dict needs a 'model_type' (e.g. 'clip_vision_model', 'swin', 'bert')")
    try:
        return AutoConfig.for_model(model_type, **config)
    except ValueError as error:
        raise ValueError(f"{role}: unknown tower model_type {model_type!r}") from error


def check_tower_dicts(config: PreTrainedConfig) -> None:
    """Before sub-configs are built: a tower dict naming an unknown `model_type` gets a short, clear error."""
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    for role in ("vision_config", "text_config"):
        tower = getattr(config, role)
        if isinstance(tower, dict) and "model_type" in tower and tower["model_type"] not in CONFIG_MAPPING:
            raise ValueError(f"{role}: unknown tower model_type {tower['model_type']!r}")


def check_dual_encoder_fields(config: PreTrainedConfig) -> None:
    """After sub-configs are built: both towers have a width to project from, and the poolings exist."""
    for role in ("vision_config", "text_config"):
        if getattr(getattr(config, role), "hidden_size", None) is None:
            raise ValueError(f"{role} ({getattr(config, role).model_type}) has no hidden_size to project from")
    if config.text_pooling not in TEXT_POOLING:
        raise ValueError(f"text_pooling must be one of {TEXT_POOLING}, got {config.text_pooling!r}")
    if config.vision_pooling not in IMAGE_POOLING:
        raise ValueError(f"vision_pooling must be one of {IMAGE_POOLING}, got {config.vision_pooling!r}")
    if config.projection_dim <= 0:
        raise ValueError(f"projection_dim must be positive, got {config.projection_dim}")


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
