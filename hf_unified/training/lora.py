"""LoRA fine-tuning through `peft`: low-rank adapters on the towers' linear layers, every base weight frozen.

    model = apply_lora(model, args, base_model="org/uniclip-base")   # a peft `PeftModel` around the dual encoder
    print(describe_trainable(model))                                 # trainable parameters and their share

Which layers are adapted by default is read from the model, not listed per method: every `nn.Linear` inside the
towers' blocks (the outermost `_no_split_modules` modules held in a `ModuleList`, as `finetuning` finds them), given
to peft as one regular expression over module names. So UniCL and UniCLIP adapt their CLIP or Swin / ViT / BERT
towers' attention and MLP matrices, and MS-CLIP its single stack, whose modality-shared sub-layers are one module
each and are adapted once (both modalities then run through the same adapter). The heads, the linear layers outside
any block (the projections, UniCLIP's augmentation encoder: fresh in a two-backbone start), train whole as peft's
`modules_to_save`, as the heads do under `freeze_*_tower`. The temperatures and UniCLIP's logit offsets stay as the
start has them.

At the end of a run the trainer writes the adapter (`adapter_config.json`, `adapter_model.safetensors` and a card
naming its `base_model`) into `output_dir/adapter/` and saves the merged model (`merge_and_unload`) as the run's
ordinary model folder (`outputs/model_folder.save_model_folder`). `peft` is an optional extra: `pip install
"hf-unified[lora]"`.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from ..hub.folder import is_local_path
from .finetuning import block_of_parameters

ADAPTER_DIR = "adapter"
INSTALL_HINT = 'pip install "hf-unified[lora]"'


def _peft():
    try:
        import peft
    except ImportError:
        raise ImportError(f"--lora_rank needs the peft library: {INSTALL_HINT}") from None
    return peft


def is_lora_model(model: torch.nn.Module) -> bool:
    """Whether `model` is a peft model (without importing peft)."""
    return hasattr(model, "peft_config") and hasattr(model, "merge_and_unload")


def default_targets(model: torch.nn.Module) -> tuple[str, list[str]]:
    """The layers LoRA adapts in `model` and the heads that train whole (see the module docstring).

    Returns:
        `(target_modules, modules_to_save)`: a regular expression matching exactly the names of the linear layers
        inside the towers' blocks (peft applies `re.fullmatch` to module names), and the names of the model's
        direct children that hold a linear layer but no block.
    """
    blocks = sorted(set(block_of_parameters(model).values()))
    if not blocks:
        raise ValueError(
            f"{type(model).__name__} has no transformer blocks that LoRA could adapt by default (no "
            "_no_split_modules module in a ModuleList): name the layers with --lora_target_modules"
        )
    linear = [name for name, module in model.named_modules() if isinstance(module, torch.nn.Linear)]
    inside = [name for name in linear if any(name.startswith(f"{block}.") for block in blocks)]
    block_lists = sorted({block.rsplit(".", 1)[0] for block in blocks})  # "vision_model.encoder.layers", ...
    leaves = sorted({name.rsplit(".", 1)[-1] for name in inside})
    pattern = rf"(?:{'|'.join(map(re.escape, block_lists))})\.\d+\.(?:.+\.)?(?:{'|'.join(map(re.escape, leaves))})"
    matched = [name for name, _ in model.named_modules() if re.fullmatch(pattern, name)]
    if matched != inside:  # a leaf name shared with a non-linear module: name each layer instead
        pattern = "|".join(map(re.escape, inside))
    heads = [
        name
        for name, child in model.named_children()
        if not any(block == name or block.startswith(f"{name}.") for block in blocks)
        and any(isinstance(module, torch.nn.Linear) for module in child.modules())
    ]
    return pattern, heads


def apply_lora(model: torch.nn.Module, args, base_model: str | None = None, distributed_type=None) -> torch.nn.Module:
    """`model` wrapped by `peft.get_peft_model` with the LoRA settings of `args` (`TrainArguments`): only the
    adapters and the heads train.

    Args:
        model: a dual encoder of the package, not yet wrapped for distribution.
        args: `lora_rank`, `lora_alpha` (default 2 x rank), `lora_dropout`, `lora_target_modules` (peft's
            `target_modules`: names matched as suffixes; default `default_targets`).
        base_model: the checkpoint the run started from; recorded as the adapter's `base_model_name_or_path` when
            it is a Hub id (a local path is never published).
        distributed_type: the accelerator's; LoRA runs replicated (one process, DDP), not sharded.
    """
    if str(distributed_type).split(".")[-1] in ("FSDP", "DEEPSPEED"):
        raise ValueError(
            f"--lora_rank under {distributed_type}: LoRA runs are not sharded here (the adapters are a small share of "
            "the model); launch with DDP or one process (training/accelerate/ddp.yaml)"
        )
    peft = _peft()
    pattern, heads = default_targets(model)
    targets = list(args.lora_target_modules) if args.lora_target_modules else pattern
    config = peft.LoraConfig(
        r=args.lora_rank,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_rank,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        modules_to_save=heads or None,
    )
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as error:
        raise ValueError(
            f"--lora_target_modules {args.lora_target_modules}: {' '.join(str(error).split())[:300]} (names are "
            f"matched as suffixes of module names, e.g. q_proj v_proj; leave the flag out for every linear layer "
            f"of the towers' blocks)"
        ) from None
    hub_id = base_model if base_model and not is_local_path(base_model) else None
    wrapped.peft_config[wrapped.active_adapter].base_model_name_or_path = hub_id
    return wrapped


def _adapted_layers(model: torch.nn.Module) -> int:
    from peft.tuners.lora import LoraLayer

    return sum(1 for module in model.modules() if isinstance(module, LoraLayer))


def describe_trainable(model: torch.nn.Module) -> str:
    """One line: the adapted layers, the heads trained whole, and the trainable parameters and their share."""
    config = model.peft_config[model.active_adapter]
    adapted = _adapted_layers(model)
    trainable, total = model.get_nb_trainable_parameters()
    heads = sorted(config.modules_to_save or ())
    return (
        f"LoRA rank {config.r} (alpha {config.lora_alpha:g}, dropout {config.lora_dropout:g}) on {adapted} linear "
        f"layers, heads trained whole: {', '.join(heads) or 'none'}; trainable parameters: {trainable:,} of "
        f"{total:,} ({100 * trainable / total:.2f}%)"
    )


ADAPTER_CARD = """
# {name}: a LoRA adapter

A [PEFT](https://github.com/huggingface/peft) LoRA adapter of a {model_type} dual encoder trained with
[hf-unified](https://github.com/hf-unified/hf-unified): rank {rank}, alpha {alpha:g}, on {count} linear layers;
the heads ({heads}) are stored whole. The same run saved the merged model (base + adapter folded into its weights)
as an ordinary model folder.

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
        count=_adapted_layers(model),
        heads=", ".join(sorted(config.modules_to_save or ())) or "none",
        base=base or "<the model this run started from>",
        base_line=f"[{base}](https://huggingface.co/{base})" if base else "a local model folder (not recorded)",
    )
    ModelCard(f"---\n{data.to_yaml()}\n---\n{text}").save(folder / "README.md")


__all__ = [
    "ADAPTER_DIR",
    "apply_lora",
    "default_targets",
    "describe_trainable",
    "is_lora_model",
    "save_adapter",
]
