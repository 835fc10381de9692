"""AdamW parameter groups and the learning-rate schedule.

Weight decay applies to weight matrices only: not to norms, biases, embedding tables or temperatures (as in CLIP
and open_clip). With the fine-tuning controls each group also carries its learning rate: the towers train at
`learning_rate`, scaled by `layerwise_lr_decay ** (L + 1 - depth)` for a parameter at `depth` of a tower of `L`
blocks (BEiT's layer-wise decay: the heads at full rate, the embeddings at `decay ** (L + 1)`), and the heads (see
`finetuning.ParameterRole.is_head`) at `head_learning_rate`. Every group records its `lr_scale` (its learning rate
over `learning_rate`), so the logged rate is the schedule's base value whatever the groups.

MS-CLIP's modality-shared parameters (`finetuning.ParameterRole.is_shared`: the sub-layers of its stack that both
modalities run, as traced) form their own groups, as the official code's (`TRAIN.LR_SHARE`, `TRAIN.WD_SHARE`): their
base rate is `shared_learning_rate` (None: `learning_rate`, the official B/32 setting; B/16 used 1.6e-3) and their
matrices decay by `shared_weight_decay` (official 0.2, while the rest had 0.05); their norms and biases never decay.
The rules compose in this order: a head's rate is `head_learning_rate` whatever else; a tower parameter's is its base
rate (`shared_learning_rate` for a shared one, else `learning_rate`) times its layer-wise factor
`layerwise_lr_decay ** (L + 1 - depth)` (a shared block has the same factor in either modality's stack, MS-CLIP's
early specialization included); the offsets then take their multiplier. Towers-only models have no shared
parameter, hence no such group. Without traced roles (`roles=None`: LoRA, whose adapters train at `learning_rate`)
nothing is known to be shared.

The learnt log temperatures (`logit_scale`, one per domain pair for UniCLIP) train at the towers' rate, as CLIP's
and open_clip's do. UniCLIP's per-domain-pair offsets (`OFFSET_PARAMETERS`: `logit_offset`, also SigLIP's shared
offset) form their own group, at `logit_offset_learning_rate_multiplier` times the rate they would have otherwise.
The default, 1 (the towers' rate), was chosen on the validation splits of `benchmarks/comparison.py` (the
`uniclip-choices` study, `benchmarks/comparison.md`): against 10x it lifted UniCLIP's zero-shot on shapes from 54.9 to
61.3 and left digits level. The first-batch calibration (`calibrate_logit_offsets`) already starts each offset near
its pair's typical similarity, so the offsets need not travel far. An earlier version trained the log-scales and the
offsets at 10x: with near-duplicate views the image-image scale then ran to CLIP's clamp (100) within ~200 steps.
The group stays whatever the multiplier, so a checkpoint's optimizer layout does not depend on it.

The AdamW kernel is `adam_implementation`: `auto` takes torch's fused kernel on the devices that have one (CUDA, CPU,
MPS, XPU) and the multi-tensor (`foreach`) one elsewhere; `fused`, `foreach` and `for-loop` (one parameter at a time)
force one. They compute the same update (to float rounding). On CPU the fused kernel is one vectorised pass per
tensor, where `foreach` falls back to a loop of elementwise ops: `benchmarks/end_to_end.py` measured 1.5x the
end-to-end training samples/s of `foreach` at its tower dims (the 49408 x 128 token embedding dominates the update).
"""

from __future__ import annotations

import math
import re

import torch
from transformers import get_scheduler

from .arguments import ADAM_IMPLEMENTATIONS, ADAM_KERNELS
from .finetuning import ParameterRole

_NO_DECAY_MODULES = (torch.nn.LayerNorm, torch.nn.Embedding, torch.nn.GroupNorm, torch.nn.modules.batchnorm._BatchNorm)
_NO_DECAY_NAMES = re.compile(r"(logit_scale|logit_offset|logit_bias|temperature|position_embedding|class_embedding)")
# Parameter names (the last component) of the similarity's offsets, which train in their own group.
OFFSET_PARAMETERS = ("logit_offset",)


def no_weight_decay_names(model: torch.nn.Module) -> set[str]:
    """Parameters without weight decay: 0/1-d tensors, norms, embedding tables and temperatures."""
    names = set()
    for module_name, module in model.named_modules():
        if isinstance(module, _NO_DECAY_MODULES) or "norm" in type(module).__name__.lower():
            names.update(f"{module_name}.{n}" if module_name else n for n, _ in module.named_parameters(recurse=False))
    for name, parameter in model.named_parameters():
        owner = name.split(".")[-2] if "." in name else name
        if parameter.ndim < 2 or "embed" in owner or _NO_DECAY_NAMES.search(name):
            names.add(name)
    return names


def is_offset_parameter(name: str) -> bool:
    return name.split(".")[-1] in OFFSET_PARAMETERS


def is_shared_parameter(role: ParameterRole | None) -> bool:
    """Whether a parameter of this role trains in the shared group (unknown without roles: not)."""
    return role is not None and role.is_shared


def learning_rate_scale(name: str, role: ParameterRole | None, args) -> float:
    """The learning rate of parameter `name` over `args.learning_rate` (see the module docstring for the rule)."""
    if role is None:
        scale = 1.0
    elif role.is_head:
        scale = 1.0 if args.head_learning_rate is None else args.head_learning_rate / args.learning_rate
    else:
        shared_rate = args.shared_learning_rate if role.is_shared else None
        base = 1.0 if shared_rate is None else shared_rate / args.learning_rate
        scale = base * args.layerwise_lr_decay ** (role.num_blocks + 1 - role.depth)
    return scale * args.logit_offset_learning_rate_multiplier if is_offset_parameter(name) else scale


def parameter_groups(model: torch.nn.Module, args, roles: dict[str, ParameterRole] | None = None) -> list[dict]:
    """AdamW groups of the trainable parameters, one per (learning rate, weight decay), with the similarity offsets
    and the modality-shared parameters in groups of their own, in parameter order. Each group records its
    `lr_scale` and whether it is an `offset` group and a `shared` group (kept apart even when their values equal
    the others', so that a checkpoint's optimizer layout does not change with the settings).

    Args:
        args: `TrainArguments` (`learning_rate`, `weight_decay`, `head_learning_rate`, `layerwise_lr_decay`,
            `logit_offset_learning_rate_multiplier`, `shared_learning_rate`, `shared_weight_decay`).
        roles: `finetuning.trace_parameter_roles(...)`; None gives every other parameter `learning_rate` and
            `weight_decay` (nothing is known to be shared).
    """
    no_decay = no_weight_decay_names(model)
    groups: dict[tuple[float, float, bool, bool], dict] = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        role = None if roles is None else roles[name]
        scale = learning_rate_scale(name, role, args)
        shared = is_shared_parameter(role)
        decay = 0.0 if name in no_decay else args.shared_weight_decay if shared else args.weight_decay
        offset = is_offset_parameter(name)
        group = groups.setdefault(
            (scale, decay, offset, shared),
            {
                "params": [],
                "weight_decay": decay,
                "lr": args.learning_rate * scale,
                "lr_scale": scale,
                "offset": offset,
                "shared": shared,
            },
        )
        group["params"].append(parameter)
    if not groups:
        raise ValueError("no parameter is trainable: check freeze_vision_tower / freeze_text_tower / lock_image_tower")
    return list(groups.values())


# Device types with a fused AdamW kernel in torch >= 2.5.
FUSED_ADAM_DEVICES = ("cuda", "cpu", "mps", "xpu")


def adam_kernel(implementation: str, device: torch.device | str) -> dict:
    """`torch.optim.AdamW` keyword arguments of `adam_implementation` for parameters on `device`."""
    if implementation == "auto":
        implementation = "fused" if torch.device(device).type in FUSED_ADAM_DEVICES else "foreach"
    if implementation not in ADAM_KERNELS:
        raise ValueError(f"adam_implementation must be one of {list(ADAM_IMPLEMENTATIONS)}, got {implementation!r}")
    return dict(ADAM_KERNELS[implementation])


def build_optimizer(
    model: torch.nn.Module, args, roles: dict[str, ParameterRole] | None = None, device: torch.device | str = "cpu"
) -> torch.optim.AdamW:
    """AdamW over `parameter_groups`, with the kernel `args.adam_implementation` picks for `device` (where the
    parameters train)."""
    return torch.optim.AdamW(
        parameter_groups(model, args, roles),
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        **adam_kernel(args.adam_implementation, device),
    )


def build_scheduler(optimizer, args):
    """transformers' `get_scheduler` (warmup + `lr_scheduler_type`), stepped once per optimizer step by the trainer
    (not by accelerate, which would step it once per process)."""
    return get_scheduler(
        args.lr_scheduler_type, optimizer, num_warmup_steps=args.warmup_steps, num_training_steps=args.max_steps
    )


def base_learning_rate(optimizer) -> float:
    """The schedule's current value of `learning_rate` (a group's rate over its `lr_scale`)."""
    group = optimizer.param_groups[0]
    return group["lr"] / group.get("lr_scale", 1.0)


def clamp_logit_scale(model: torch.nn.Module, maximum: float) -> None:
    """CLIP's clamp of every learnt log temperature (`logit_scale`, any shape) to `ln(maximum)` after each step."""
    if maximum <= 0:
        return
    bound = math.log(maximum)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.split(".")[-1] == "logit_scale":
                parameter.clamp_(max=bound)


__all__ = [
    "OFFSET_PARAMETERS",
    "adam_kernel",
    "base_learning_rate",
    "build_optimizer",
    "build_scheduler",
    "clamp_logit_scale",
    "is_offset_parameter",
    "is_shared_parameter",
    "learning_rate_scale",
    "no_weight_decay_names",
    "parameter_groups",
]
