"""What a method trains with, read from its config and the Auto classes (never from a table of model types).

A model config says whether its loss takes class labels (`use_labels`) and whether it trains on augmented views
whose parameters condition the image embedding (`num_views`, `augmentation_aware`); the Auto mappings give its
model and processor classes. A new method therefore needs only its own files and its `AutoConfig` /
`AutoModel` / `AutoProcessor` registration.
"""

from __future__ import annotations

import torch
from transformers import PreTrainedConfig
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from transformers.models.auto.modeling_auto import MODEL_MAPPING
from transformers.models.auto.processing_auto import PROCESSOR_MAPPING

# Batch keys a model's forward may take; the others (texts, counters) stay with the trainer.
MODEL_INPUT_NAMES = ("input_ids", "attention_mask", "pixel_values", "labels", "augmentation_params")


def trains_with_labels(config: PreTrainedConfig) -> bool:
    """The loss takes `labels` (UniCL's label-aware targets; -1 marks an image-text pair)."""
    return bool(getattr(config, "use_labels", False))


def trains_with_views(config: PreTrainedConfig) -> bool:
    """Training images are several augmented views, each with its augmentation's parameter vector."""
    return getattr(config, "num_views", 1) > 1 or bool(
        getattr(config, "augmentation_aware", config.model_type == "uniclip")
    )


def num_views(config: PreTrainedConfig) -> int:
    return int(getattr(config, "num_views", 1))


def config_class(model_type: str) -> type[PreTrainedConfig]:
    """The registered config class of `model_type` (after `import hf_unified`)."""
    try:
        return CONFIG_MAPPING[model_type]
    except KeyError:
        registered = sorted(CONFIG_MAPPING._extra_content)
        raise ValueError(
            f"model_type {model_type!r} is not a registered model type; this package registers {registered}"
        ) from None


def model_class(config_or_type: PreTrainedConfig | str) -> type:
    """The `AutoModel` class of a config (or of a model type)."""
    config_type = config_class(config_or_type) if isinstance(config_or_type, str) else type(config_or_type)
    return MODEL_MAPPING[config_type]


def processor_class(config: PreTrainedConfig) -> type:
    """The `AutoProcessor` class of a config; every processor of the package has `default_image_processor`."""
    return PROCESSOR_MAPPING[type(config)]


def model_inputs(batch: dict, device: torch.device) -> dict:
    """The model's inputs of one collated batch, on `device`."""
    return {name: batch[name].to(device, non_blocking=True) for name in MODEL_INPUT_NAMES if name in batch}


__all__ = [
    "MODEL_INPUT_NAMES",
    "config_class",
    "model_class",
    "model_inputs",
    "num_views",
    "processor_class",
    "trains_with_labels",
    "trains_with_views",
]
