"""Fine-tuning controls: which tower and depth each parameter has, frozen towers and LiT, for any dual encoder.

Which parameters make up "the image tower" differs per model: UniCL and UniCLIP hold two transformers towers,
MS-CLIP one stack whose attention and MLP weights both modalities share. Rather than a list of names per model, the
roles are measured: one backward pass from `get_image_features` and one from `get_text_features` on a single
example show which parameters each modality's features depend on (both: shared; neither: the loss's own
parameters, such as the temperatures). The order in which the gradients arrive places each parameter relative to
the tower's blocks (the modules named in `model._no_split_modules` that sit in an `nn.ModuleList`, i.e. the
transformer layers), which gives the depths that layer-wise learning-rate decay needs:

    depth 0            everything before the first block (patch/token embeddings, pre-norm, a conv stem)
    depth i + 1        block i
    depth L + 1        everything after the last block: the tower's *head* (final norm, pooling, projection)

The loss's own parameters and the heads form the "head" group of `head_learning_rate`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

VISION, TEXT = "vision", "text"


@dataclass(frozen=True)
class ParameterRole:
    """Where one parameter sits.

    Args:
        towers: the modalities whose features depend on it (`{"vision", "text"}` when shared, empty for the loss's
            own parameters).
        depth: position in its tower, as in the module docstring.
        num_blocks: the number of blocks `L` of that tower.
    """

    towers: frozenset[str]
    depth: int = 0
    num_blocks: int = 0

    @property
    def is_head(self) -> bool:
        return not self.towers or self.depth == self.num_blocks + 1

    @property
    def is_shared(self) -> bool:
        """Both modalities' features depend on it (MS-CLIP's modality-shared sub-layers)."""
        return self.towers == {VISION, TEXT}


def example_inputs(processor) -> dict[str, dict[str, torch.Tensor]]:
    """One blank image and one short text as the processor prepares them, per modality."""
    size = processor.image_processor.crop_size or processor.image_processor.size
    height = size.get("height") or size.get("shortest_edge")
    width = size.get("width") or height
    image = processor.image_processor(images=[Image.new("RGB", (width, height))], return_tensors="pt")
    text = processor.tokenizer(["a photo."], return_tensors="pt")
    return {
        VISION: {"pixel_values": image["pixel_values"]},
        TEXT: {"input_ids": text["input_ids"], "attention_mask": text["attention_mask"]},
    }


def block_of_parameters(model: torch.nn.Module) -> dict[str, str]:
    """Parameter name -> name of its block, for the outermost `_no_split_modules` modules held in a ModuleList."""
    block_classes = set(getattr(model, "_no_split_modules", None) or ())
    in_list = {
        f"{name}.{index}" if name else str(index)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList)
        for index in range(len(module))
    }
    block_names = [
        name for name, module in model.named_modules() if type(module).__name__ in block_classes and name in in_list
    ]
    outermost = [name for name in block_names if not any(name.startswith(f"{other}.") for other in block_names)]
    owner = {}
    for block in outermost:
        for parameter_name, _ in model.get_submodule(block).named_parameters(prefix=block):
            owner[parameter_name] = block
    return owner


def _gradient_order(model: torch.nn.Module, features) -> dict[str, int]:
    """Parameter name -> rank at which its gradient arrived in one backward pass from `features().pooler_output`
    (0 = first, i.e. closest to the output); parameters the features do not depend on are absent."""
    order: dict[str, int] = {}

    def record(name: str):
        def hook(_) -> None:
            order.setdefault(name, len(order))

        return hook

    handles = [
        parameter.register_post_accumulate_grad_hook(record(name))
        for name, parameter in model.named_parameters()
        if parameter.requires_grad
    ]
    try:
        features().pooler_output.float().sum().backward()
    finally:
        for handle in handles:
            handle.remove()
        model.zero_grad(set_to_none=True)
    return order


def trace_parameter_roles(
    model: torch.nn.Module, inputs: dict[str, dict[str, torch.Tensor]]
) -> dict[str, ParameterRole]:
    """Measures every parameter's `ParameterRole` (see the module docstring).

    Args:
        model: a dual encoder with `get_image_features` / `get_text_features` (not yet wrapped for distribution).
        inputs: `example_inputs(processor)`.
    """
    device = next(model.parameters()).device
    features = {
        VISION: lambda: model.get_image_features(**{k: v.to(device) for k, v in inputs[VISION].items()}),
        TEXT: lambda: model.get_text_features(**{k: v.to(device) for k, v in inputs[TEXT].items()}),
    }
    block_of = block_of_parameters(model)
    was_training = model.training
    model.eval()  # no dropout: the pass must not consume random numbers
    with torch.enable_grad():
        orders = {tower: _gradient_order(model, run) for tower, run in features.items()}
    model.train(was_training)

    placements: dict[str, dict[str, tuple[int, int]]] = {}  # tower -> name -> (depth, num_blocks)
    for tower, order in orders.items():
        first_arrival: dict[str, int] = {}  # block -> earliest gradient (the block's output end)
        for name, rank in order.items():
            if name in block_of:
                first_arrival[block_of[name]] = min(rank, first_arrival.get(block_of[name], rank))
        # Blocks in forward order are the reverse of the order in which their gradients arrive.
        forward_blocks = sorted(first_arrival, key=first_arrival.get, reverse=True)
        index = {block: i for i, block in enumerate(forward_blocks)}
        count = len(forward_blocks)
        placements[tower] = {}
        for name, rank in order.items():
            if name in block_of:
                depth = index[block_of[name]] + 1
            else:  # after (count - blocks whose gradient arrived earlier) blocks in forward order
                after = count - sum(arrival < rank for arrival in first_arrival.values())
                depth = after if after < count else count + 1
            placements[tower][name] = (depth, count)

    roles = {}
    for name, _ in model.named_parameters():
        towers = frozenset(tower for tower in placements if name in placements[tower])
        depth, count = max((placements[tower][name] for tower in towers), default=(0, 0))
        roles[name] = ParameterRole(towers, depth, count)
    return roles


def freeze_parameters(model: torch.nn.Module, roles: dict[str, ParameterRole], args) -> list[str]:
    """Sets `requires_grad=False` as `args` asks (`freeze_vision_tower`, `freeze_text_tower`: embeddings and blocks;
    `lock_image_tower`: everything the image features depend on). Returns the names frozen."""
    frozen = []
    for name, parameter in model.named_parameters():
        role = roles[name]
        if (
            (args.lock_image_tower and VISION in role.towers)
            or (args.freeze_vision_tower and VISION in role.towers and not role.is_head)
            or (args.freeze_text_tower and TEXT in role.towers and not role.is_head)
        ):
            parameter.requires_grad_(False)
            frozen.append(name)
    return frozen


def frozen_subtrees(model: torch.nn.Module) -> list[torch.nn.Module]:
    """The largest submodules whose parameters are all frozen: they run in eval mode during training, so that
    dropout and normalisation statistics stay as in the pretrained tower (as LiT does)."""
    found: list[torch.nn.Module] = []

    def visit(module: torch.nn.Module) -> None:
        parameters = list(module.parameters())
        if parameters and not any(p.requires_grad for p in parameters):
            found.append(module)
            return
        for child in module.children():
            visit(child)

    for child in model.children():
        visit(child)
    return found


def describe_roles(roles: dict[str, ParameterRole], frozen: list[str]) -> str:
    """One line: parameters per tower, shared ones, heads, and how many were frozen."""
    count = lambda test: sum(1 for role in roles.values() if test(role))  # noqa: E731
    shared = count(lambda r: r.is_shared)
    return (
        f"parameters: {count(lambda r: r.towers == {VISION})} image-only, {count(lambda r: r.towers == {TEXT})} "
        f"text-only, {shared} shared, {count(lambda r: r.is_head)} in heads; frozen {len(frozen)}"
        + (f" (shared ones included: {sum(1 for n in frozen if roles[n].is_shared)})" if shared else "")
    )


__all__ = [
    "ParameterRole",
    "block_of_parameters",
    "describe_roles",
    "example_inputs",
    "freeze_parameters",
    "frozen_subtrees",
    "trace_parameter_roles",
]
