"""FSDP2 for the dual encoders: sharding a model, serving its forward methods and evaluating it sharded.

[`shard_model`] applies `torch.distributed.fsdp.fully_shard` to one unit per block class the model names in
`_no_split_modules` (transformer blocks; MS-CLIP's `MSCLIPEncoderLayer` holds a block's shared and modality-specific
sub-layers, so a shared block is one unit) and one root unit for the rest (embeddings that are not blocks, heads,
temperatures). The trainer calls it before `accelerator.prepare` on GPUs, which then finds an FSDP module and leaves
it as it is; CPU tests call the same function on a gloo CPU device mesh. accelerate's own FSDP2 preparation is not
used because it fails on these models (measured, accelerate 1.15): it calls `get_input_embeddings()`, which
transformers' dual encoders do not implement (`NotImplementedError` for UniCL and UniCLIP), and it wraps the input
embedding in its own unit after the block class containing it (`MSCLIPTextEmbeddings`, `BertEmbeddings`) already
manages it, which FSDP2 rejects. [`register_forward_methods`] makes `get_image_features`, `get_text_features`
(zero-shot evaluation) and `contrastive_loss` (exact large-batch accumulation) FSDP forward methods, so that they
see unsharded parameters. Evaluating a sharded model: every rank must run it equally often ([`lockstep`]: ranks'
shares of an evaluation set differ by up to a batch) and with the same buffers ([`synchronize_buffers`]: BatchNorm
statistics differ between ranks after training, under DDP too). [`full_state_dict`] gathers the whole model on rank
0 for `save_pretrained`.

Which engine a launch really set up is `launch.check_engine`; the sharded state beside checkpoints is
`sharded_state`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

FORWARD_METHODS = ("get_image_features", "get_text_features", "contrastive_loss")
_END = object()
_REGISTERED = "_hf_unified_fsdp_forward_methods"


def full_tensor(value: torch.Tensor) -> torch.Tensor:
    """The whole value of a `DTensor` (a sharded parameter, a gradient norm of sharded gradients; a collective), or
    `value` itself."""
    from torch.distributed.tensor import DTensor

    return value.full_tensor() if isinstance(value, DTensor) else value


@contextlib.contextmanager
def replicated_writes(model: nn.Module) -> Iterator[None]:
    """Lets plain tensors be written into the sharded parameters of an FSDP2 `model` (`parameter.copy_(value)`):
    in the block a plain tensor counts as a replicated `DTensor`, so every rank keeps its own shard of the value
    (torch's `implicit_replication`). Nothing changes for other models.

    Every unit is resharded first: after a forward pass without backward FSDP keeps the root's parameters gathered,
    and a value written into the gathered copy would be dropped at the next reshard.
    """
    if not is_fsdp2(model):
        yield
        return
    from torch.distributed.fsdp import FSDPModule
    from torch.distributed.tensor.experimental import implicit_replication

    for module in model.modules():
        if isinstance(module, FSDPModule):
            module.reshard()
    with implicit_replication():
        yield


def prepare_for_engine(accelerator, model: nn.Module, optimizer: torch.optim.Optimizer):
    """`accelerator.prepare(model, optimizer)`, except for a model its caller sharded with FSDP2 under an accelerate
    state that is not FSDP2 (a gloo CPU mesh; a mesh of one's own): accelerate would wrap it in DDP, which refuses
    its `DTensor` parameters, so it stays as sharded and only the optimizer is prepared. Returns both."""
    if is_fsdp2(model) and not getattr(accelerator, "is_fsdp2", False):
        return model, accelerator.prepare(optimizer)
    return accelerator.prepare(model, optimizer)


# ----------------------------------------------------------------------------------------------------------------
# FSDP2


def is_fsdp2(model: nn.Module) -> bool:
    """Whether `model` was sharded with `fully_shard` (FSDP2), by accelerate or by [`shard_model`]."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def gradient_sync(model: nn.Module, accelerator, enabled: bool):
    """Gradients are synchronised between processes in the backward passes of this block only if `enabled`.

    `accelerator.no_sync(model)` when disabled, and for an FSDP2 model that accelerate did not shard itself (a CPU
    run on a gloo device mesh, where accelerate's state is DDP) what accelerate does for FSDP2 models:
    `set_requires_gradient_sync(False)`.
    """
    if enabled:
        yield
    elif is_fsdp2(model) and not getattr(accelerator, "is_fsdp2", False):
        model.set_requires_gradient_sync(False)
        try:
            yield
        finally:
            model.set_requires_gradient_sync(True)
    else:
        with accelerator.no_sync(model):
            yield


def register_forward_methods(model: nn.Module) -> None:
    """Makes `FORWARD_METHODS` of an FSDP2 root module run with its parameters unsharded (pre/post-forward hooks,
    `torch.distributed.fsdp.register_fsdp_forward_method`). Idempotent; a no-op for other models."""
    from torch.distributed.fsdp import register_fsdp_forward_method

    if not is_fsdp2(model) or getattr(model, _REGISTERED, False):
        return
    for name in FORWARD_METHODS:
        if hasattr(model, name):
            register_fsdp_forward_method(model, name)
    setattr(model, _REGISTERED, True)


def synchronize_buffers(model: nn.Module) -> None:
    """Gives every rank rank 0's buffers (BatchNorm running statistics). A collective; a no-op in one process.

    Ranks end a training step with different running statistics: FSDP never synchronises buffers, and DDP
    broadcasts rank 0's at the start of each forward pass, after which every rank's BatchNorm updates them with its
    own batch. A model in training mode never reads them, evaluation does (MS-CLIP's BatchNorm): call this before
    evaluating, so that every rank evaluates the model that is saved (rank 0's buffers, `full_state_dict`).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        return
    with torch.no_grad():
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)


def lockstep(batches: Iterable, device: torch.device | str) -> Iterator[tuple[object, bool]]:
    """Yields `(batch, True)` for each of this rank's batches, then `(its last batch, False)` until every rank has
    run out. A sharded model runs collectives in each forward pass, so every rank must call it equally often
    (evaluation: ranks' shares of an evaluation set differ by up to one batch); the outputs of the repeated
    batches are to be discarded. One process: every batch, once.

    Raises `ValueError` on a rank that has no batch at all while others have some (it has nothing to repeat).
    """
    if not (dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1):
        yield from ((batch, True) for batch in batches)
        return
    iterator, last, exhausted = iter(batches), None, False
    while True:
        batch = None if exhausted else next(iterator, _END)
        exhausted = exhausted or batch is _END
        running = torch.tensor([0 if exhausted else 1], device=device)
        dist.all_reduce(running)
        if running.item() == 0:
            return
        if not exhausted:
            last = batch
            yield batch, True
        elif last is None:
            raise ValueError(
                f"rank {dist.get_rank()} has no batch while other ranks still run the sharded model: give every rank "
                "at least one batch"
            )
        else:
            yield last, False


def block_classes(model: nn.Module) -> set[type]:
    """The classes of `model`'s submodules that `model._no_split_modules` names.

    transformers gathers `_no_split_modules` from the towers' class attributes, which list every block class a tower
    class may hold (`CLIPTextModel` names `CLIPVisionEmbeddings`), so names no submodule has are passed over; a model
    in which none of them is present raises `ValueError` (it would be one unit, gathered whole).
    """
    names = set(getattr(model, "_no_split_modules", None) or [])
    classes = {type(module) for module in model.modules() if type(module).__name__ in names}
    if not classes:
        raise ValueError(
            f"{type(model).__name__}._no_split_modules ({sorted(names)}) names no class of its submodules: FSDP "
            "would gather the whole model at once; name the transformer block classes there"
        )
    return classes


def check_shardable(model: nn.Module) -> None:
    """Raises `ValueError` naming every 0-D parameter (FSDP shards along the first dimension and refuses scalars)."""
    scalars = [name for name, parameter in model.named_parameters() if parameter.ndim == 0]
    if scalars:
        raise ValueError(
            f"FSDP cannot shard 0-D parameters: {scalars}; store them with shape (1,) (the models of this package "
            "do, and load old 0-D checkpoints into that shape)"
        )


def fsdp_kwargs(accelerator) -> dict:
    """`fully_shard` keyword arguments from accelerate's FSDP plugin (reshard after forward, mixed precision,
    CPU offload), so that [`shard_model`] honours the launch configuration."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, OffloadPolicy

    plugin = accelerator.state.fsdp_plugin
    kwargs = {"reshard_after_forward": plugin.reshard_after_forward}
    if isinstance(plugin.mixed_precision_policy, MixedPrecisionPolicy):
        kwargs["mp_policy"] = plugin.mixed_precision_policy
    if isinstance(plugin.cpu_offload, OffloadPolicy):
        kwargs["offload_policy"] = plugin.cpu_offload
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None:
        kwargs["mesh"] = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    return kwargs


def shard_model(model: nn.Module, mesh=None, **kwargs) -> nn.Module:
    """Shards `model` in place with FSDP2: one unit per module of a `_no_split_modules` class (innermost first),
    then the root; registers [`FORWARD_METHODS`]. Returns the model (its class is now FSDP's subclass).

    Args:
        model (`nn.Module`): the dual encoder, on the device of `mesh` or on the CPU / meta device.
        mesh (`DeviceMesh`, *optional*): the data-parallel mesh; default: all processes on the default device.
        **kwargs: further `fully_shard` arguments (`reshard_after_forward`, `mp_policy`, `offload_policy`), e.g.
            [`fsdp_kwargs`] of an FSDP accelerator.
    """
    from torch.distributed.fsdp import fully_shard

    if is_fsdp2(model):
        register_forward_methods(model)
        return model
    check_shardable(model)
    classes = tuple(block_classes(model))
    if mesh is not None:
        kwargs["mesh"] = mesh
    root_kwargs = {k: v for k, v in kwargs.items() if k != "reshard_after_forward"}  # the root: FSDP's own choice
    for module in reversed(list(model.modules())):  # children before parents, as fully_shard requires
        if module is not model and isinstance(module, classes):
            fully_shard(module, **kwargs)
    fully_shard(model, **root_kwargs)
    register_forward_methods(model)
    return model


def shard_for_engine(model: nn.Module, accelerator) -> nn.Module:
    """What the trainer calls before `accelerator.prepare`: [`shard_model`] with the launch's FSDP settings when
    accelerate runs FSDP2 (which then leaves the sharded model as it is), else `model` unchanged."""
    if not getattr(accelerator, "is_fsdp2", False):
        return model
    return shard_model(model, **fsdp_kwargs(accelerator))


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state on the CPU of rank 0 (`{}` on other ranks), for `save_pretrained(state_dict=...)`.
    A collective: every rank calls it. Plain models return their own `state_dict()`."""
    if not is_fsdp2(model):
        return model.state_dict()
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def unsharded_model(model: nn.Module, state_dict: dict[str, torch.Tensor]) -> nn.Module:
    """A plain instance of `model`'s own class holding `state_dict` (the [`full_state_dict`] of rank 0), for
    `save_pretrained`; `model` itself when it is not sharded.

    Saving the FSDP2 module would record FSDP's generated class (`FSDP<Name>`, a subclass of the model's class and
    of `FSDPModule`) and copy torch's FSDP sources into the folder as the model's custom code. The copy is built on
    the meta device and takes the tensors of `state_dict` (no second copy of the weights).
    """
    from torch.distributed.fsdp import FSDPModule

    if not is_fsdp2(model):
        return model
    own_class = next(cls for cls in type(model).__mro__ if not issubclass(cls, FSDPModule))
    with torch.device("meta"):
        plain = own_class(model.config)
    plain.load_state_dict(state_dict, assign=True)
    return plain.train(model.training)


__all__ = [
    "FORWARD_METHODS",
    "block_classes",
    "check_shardable",
    "fsdp_kwargs",
    "full_state_dict",
    "full_tensor",
    "gradient_sync",
    "is_fsdp2",
    "lockstep",
    "prepare_for_engine",
    "register_forward_methods",
    "replicated_writes",
    "shard_for_engine",
    "shard_model",
    "synchronize_buffers",
    "unsharded_model",
]
