"""A LoRA run's adapter folder: what `PeftModel.save_pretrained` writes, and a card naming the `base_model`.

`output_dir/adapter/` holds `adapter_config.json`, `adapter_model.safetensors` and `README.md`; with the base the
run started from, `PeftModel.from_pretrained(base, output_dir/adapter)` gives the outputs of the merged model saved
beside it (`model_folder.save_model_folder` writes both in one atomic save; `publish.push_adapter` pushes it).
"""

from __future__ import annotations

from pathlib import Path

import torch

ADAPTER_DIR = "adapter"


def adapted_layers(model: torch.nn.Module) -> int:
    """How many modules of a peft model carry a LoRA adapter."""
    from peft.tuners.lora import LoraLayer

    return sum(1 for module in model.modules() if isinstance(module, LoraLayer))


ADAPTER_CARD = """
# {name}: a LoRA adapter

A [PEFT](https://github.com/huggingface/peft) LoRA adapter of a {model_type} dual encoder trained with hf-unified:
rank {rank}, alpha {alpha:g}, on {count} linear layers; the heads ({heads}) are stored whole. The same run saved
the merged model (base + adapter folded into its weights) as an ordinary model folder.

```python
import hf_unified  # registers the model classes
from peft import PeftModel
from transformers import AutoModel

base = AutoModel.from_pretrained({base!r})
model = PeftModel.from_pretrained(base, "path/or/id/of/this/adapter")
merged = model.merge_and_unload()  # the outputs of the merged model this run saved
```

Base model: {base_line}.
"""


def save_adapter(model: torch.nn.Module, folder: Path, name: str) -> None:
    """Writes `model`'s adapter into `folder` (`PeftModel.save_pretrained`: `adapter_config.json`,
    `adapter_model.safetensors`) and its card `README.md`, whose `base_model` is the recorded Hub id (none for a
    local start: its path is not published)."""
    from huggingface_hub import ModelCard, ModelCardData

    config = model.peft_config[model.active_adapter]
    base = config.base_model_name_or_path  # the Hub id `apply_lora` recorded, or None
    model.save_pretrained(folder, safe_serialization=True, save_embedding_layers=False)  # none adapted; no Hub look-up
    if config.base_model_name_or_path != base:  # peft filled in the model's own name: a local path, never published
        config.base_model_name_or_path = base
        saved = type(config).from_pretrained(folder)
        saved.base_model_name_or_path = base
        saved.save_pretrained(folder)
    data = ModelCardData(
        base_model=base,
        library_name="peft",
        tags=sorted({"lora", "hf-unified", "zero-shot-image-classification", model.config.model_type}),
    )
    text = ADAPTER_CARD.format(
        name=name,
        model_type=model.config.model_type,
        rank=config.r,
        alpha=config.lora_alpha,
        count=adapted_layers(model),
        heads=", ".join(sorted(config.modules_to_save or ())) or "none",
        base=base or "<the model this run started from>",
        base_line=f"[{base}](https://huggingface.co/{base})" if base else "a local model folder (not recorded)",
    )
    ModelCard(f"---\n{data.to_yaml()}\n---\n{text}").save(folder / "README.md")


__all__ = ["ADAPTER_DIR", "adapted_layers", "save_adapter"]
