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
naming its `base_model`: `outputs/adapter.py`) into `output_dir/adapter/` and saves the merged model
(`merge_and_unload`) as the run's ordinary model folder (`outputs/model_folder.save_model_folder`); its checkpoints
hold only what trains (`engine/checkpoint.py`). `peft` is an optional extra: `pip install
"hf-unified[lora]"`.
"""

from __future__ import annotations

import re

import torch
from accelerate.utils import DistributedType

from ..hub.folder import is_local_path
from .finetuning import block_of_parameters
from .outputs.adapter import adapted_layers

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
    if distributed_type in (DistributedType.FSDP, DistributedType.DEEPSPEED):
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


def describe_trainable(model: torch.nn.Module) -> str:
    """One line: the adapted layers, the heads trained whole, and the trainable parameters and their share."""
    config = model.peft_config[model.active_adapter]
    adapted = adapted_layers(model)
    trainable, total = model.get_nb_trainable_parameters()
    heads = sorted(config.modules_to_save or ())
    return (
        f"LoRA rank {config.r} (alpha {config.lora_alpha:g}, dropout {config.lora_dropout:g}) on {adapted} linear "
        f"layers, heads trained whole: {', '.join(heads) or 'none'}; trainable parameters: {trainable:,} of "
        f"{total:,} ({100 * trainable / total:.2f}%)"
    )


__all__ = ["apply_lora", "default_targets", "describe_trainable", "is_lora_model"]
