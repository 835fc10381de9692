"""Sharded training: which engine runs, FSDP2 for the dual encoders, and sharded state as safetensors + JSON.

**The engine.** accelerate reads the launch configuration (`accelerate launch --config_file
training/accelerate/fsdp.yaml ...`) from the environment, and on a machine without a GPU silently ignores an FSDP
config (`Accelerator(cpu=True)` under `distributed_type: FSDP` prepares a `DistributedDataParallel`): a CPU run that
"works" proves nothing. [`check_engine`] says which engine runs and refuses what the trainer cannot honour.

**FSDP2.** [`shard_model`] applies `torch.distributed.fsdp.fully_shard` to one unit per block class the model names
in `_no_split_modules` (transformer blocks; MS-CLIP's `MSCLIPEncoderLayer` holds a block's shared and
modality-specific sub-layers, so a shared block is one unit) and one root unit for the rest (embeddings that are not
blocks, heads, temperatures). The trainer calls it before `accelerator.prepare` on GPUs, which then finds an FSDP
module and leaves it as it is; CPU tests call the same function on a gloo CPU device mesh. accelerate's own
FSDP2 preparation is not used because it fails on these models (measured, accelerate 1.15): it calls
`get_input_embeddings()`, which transformers' dual encoders do not implement (`NotImplementedError` for UniCL and
UniCLIP), and it wraps the input embedding in its own unit after the block class containing it
(`MSCLIPTextEmbeddings`, `BertEmbeddings`) already manages it, which FSDP2 rejects. [`register_forward_methods`]
makes `get_image_features`, `get_text_features` (zero-shot evaluation) and `contrastive_loss` (exact large-batch
accumulation) FSDP forward methods, so that they see unsharded parameters. Evaluating a sharded model: every rank
must run it equally often ([`lockstep`]: ranks' shares of an evaluation set differ by up to a batch) and with the
same buffers ([`synchronize_buffers`]: BatchNorm statistics differ between ranks after training, under DDP too).

**Sharded state.** Every rank writes its own shards of the model and optimizer state with safetensors, and their
layout as JSON ([`write_sharded_state`], [`read_sharded_state`]); nothing is pickled (torch's distributed checkpoint
writer pickles its metadata). [`full_state_dict`] gathers the whole model on rank 0 for `save_pretrained`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

FORWARD_METHODS = ("get_image_features", "get_text_features", "contrastive_loss")
_END = object()
SHARDED_FORMAT = "hf-unified-sharded-state"
SHARDED_FORMAT_VERSION = 1
_REGISTERED = "_hf_unified_fsdp_forward_methods"


class EngineError(ValueError):
    """The launch asks for an engine or a combination this trainer cannot honour; the message says what to do."""


# ----------------------------------------------------------------------------------------------------------------
# Which engine runs


def requested_engine(environ: dict | None = None) -> str | None:
    """The engine the launch configuration asks for, as accelerate passes it to the processes: `"FSDP"`,
    `"DEEPSPEED"` or None (DDP / single process)."""
    environ = os.environ if environ is None else environ
    for variable, engine in (("ACCELERATE_USE_FSDP", "FSDP"), ("ACCELERATE_USE_DEEPSPEED", "DEEPSPEED")):
        if str(environ.get(variable, "false")).lower() in ("1", "true", "yes"):
            return engine
    return None


def describe_engine(accelerator) -> str:
    """One line: the engine, the processes (and machines), the backend and the device, e.g.
    `DDP, 2 processes (gloo, cpu)` or `FSDP2, 16 processes on 2 machines (nccl, cuda:0), bf16 mixed precision`."""
    from accelerate.utils import DistributedType

    state = accelerator.state
    kind = state.distributed_type
    if kind == DistributedType.FSDP:
        name = f"FSDP{state.fsdp_plugin.fsdp_version}"
    elif kind == DistributedType.DEEPSPEED:
        name = f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    elif kind in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        name = "DDP"
    elif kind == DistributedType.NO:
        name = "single process"
    else:
        name = kind.value
    processes = f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
    machines = int(os.environ.get("ACCELERATE_NUM_MACHINES") or os.environ.get("NNODES") or 1)
    nodes = f" on {machines} machines" if machines > 1 else ""
    backend = f"{state.backend}, " if state.backend else ""
    precision = f", {accelerator.mixed_precision} mixed precision" if accelerator.mixed_precision != "no" else ""
    return f"{name}{processes}{nodes} ({backend}{accelerator.device}){precision}"


def check_engine(
    accelerator, gradient_accumulation_mode: str = "micro_batch", environ: dict | None = None, model=None
) -> str:
    """Returns [`describe_engine`], or raises [`EngineError`] when the run would not be what was asked for.

    A `model` already sharded with FSDP2 by its caller (its own device mesh; the CPU tests' gloo mesh) under an
    accelerate state that is not FSDP is described as such: `FSDP2 over 2 shards (sharded by the caller), DDP, ...`
    ([`prepare_for_engine`] keeps its sharding).

    Refused: an FSDP or DeepSpeed launch that accelerate did not set up (no GPU: it falls back to DDP silently);
    FSDP version 1 (flat parameters: the temperatures and the `get_*_features` calls of evaluation cannot be
    served outside `forward`); an accelerate auto-wrap policy ([`shard_model`] wraps); accelerate's FSDP activation
    checkpointing (it would wrap blocks after
    [`shard_model`] sharded them: use `--gradient_checkpointing`); DeepSpeed with `full_batch` accumulation
    (DeepSpeed counts backward passes as its own accumulation steps and ZeRO-3 partitions the temperatures outside
    `forward`).
    """
    from accelerate.utils import DistributedType

    requested = requested_engine(environ)
    actual = accelerator.distributed_type
    description = describe_engine(accelerator)
    wanted = {"FSDP": DistributedType.FSDP, "DEEPSPEED": DistributedType.DEEPSPEED}.get(requested)
    if wanted is not None and actual != wanted:
        raise EngineError(
            f"the launch configuration asks for {requested} (ACCELERATE_USE_{requested}=true) but accelerate set up "
            f"{description}: accelerate falls back to DDP without telling where {requested} cannot run (no GPU). "
            "Launch with a DDP configuration on this machine (`accelerate launch --multi_gpu --num_processes N`, "
            f"which trains over gloo on CPUs), or run the {requested} configuration on GPUs"
        )
    if actual == DistributedType.FSDP:
        plugin = accelerator.state.fsdp_plugin
        if plugin.fsdp_version != 2:
            raise EngineError(
                f"FSDP version {plugin.fsdp_version} is not supported: set `fsdp_version: 2` in the fsdp_config of "
                "the accelerate configuration (see training/accelerate/fsdp.yaml); FSDP1's flat parameters cannot "
                "serve the temperatures and get_*_features outside forward"
            )
        if plugin.auto_wrap_policy is not None:
            raise EngineError(
                "set `fsdp_auto_wrap_policy: NO_WRAP` in the fsdp_config (see training/accelerate/fsdp.yaml): the "
                "trainer shards one unit per block class itself (sharding.shard_model), and accelerate's auto-wrap "
                "cannot find these models' block classes (it looks for every class `_no_split_modules` lists, and "
                "for the unprefixed names of blocks already sharded)"
            )
        if plugin.activation_checkpointing:
            raise EngineError(
                "fsdp_activation_checkpointing: true is not supported (accelerate would apply it after the model is "
                "sharded); set it to false and pass --gradient_checkpointing instead"
            )
    if actual == DistributedType.DEEPSPEED and gradient_accumulation_mode == "full_batch":
        raise EngineError(
            "gradient_accumulation_mode full_batch is not supported with DeepSpeed (it counts backward passes as its "
            "own accumulation steps, and ZeRO-3 partitions the temperatures outside forward): use micro_batch, or "
            "shard with FSDP (training/accelerate/fsdp.yaml), which runs full_batch"
        )
    if model is not None and is_fsdp2(model) and actual != DistributedType.FSDP:
        if actual == DistributedType.DEEPSPEED:
            raise EngineError(
                "the model is sharded with FSDP2 but the launch configuration runs DeepSpeed: launch with "
                "training/accelerate/fsdp.yaml (or a DDP configuration) instead"
            )
        shards = dist.get_world_size() if dist.is_initialized() else 1
        description = f"FSDP2 over {shards} shards (sharded by the caller), {description}"
    return description


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


# ----------------------------------------------------------------------------------------------------------------
# Sharded state: safetensors shards + JSON layout, one pair of files per rank


def sharded_state_files(rank: int, world_size: int) -> tuple[str, str]:
    """File names of rank `rank`'s shards: `(tensors, layout)`."""
    stem = f"sharded_state_rank{rank:05d}-of-{world_size:05d}"
    return f"{stem}.safetensors", f"{stem}.json"


def _local(value: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    local = value.to_local() if isinstance(value, DTensor) else value
    return local.detach().to("cpu").contiguous()


def _to_json(value):
    if isinstance(value, tuple):
        return {"tuple": [_to_json(v) for v in value]}
    if isinstance(value, list):
        return [_to_json(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_json(v) for k, v in value.items()}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"a {type(value).__name__} in the optimizer's state is not plain JSON")


def _from_json(value):
    if isinstance(value, dict):
        if set(value) == {"tuple"}:
            return tuple(_from_json(v) for v in value["tuple"])
        return {k: _from_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_from_json(v) for v in value]
    return value


def write_sharded_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Writes this rank's shards of `model` (parameters and buffers) and `optimizer` into `folder`.

    A collective (every rank calls it, with its own rank's files as the result). The caller stages the folder and
    publishes it with one rename once every rank has written (the trainer's checkpoint writer does).

    Files: [`sharded_state_files`]; the safetensors file holds `model.<name>` and `optimizer.<name>.<state key>`
    local shards, the JSON file the world size, each tensor's global shape and the optimizer's parameter groups
    and non-tensor state, keyed by parameter name.
    """
    from torch.distributed.checkpoint.state_dict import get_state_dict

    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    model_state, optimizer_state = get_state_dict(model, optimizers=[] if optimizer is None else optimizer)
    tensors, shapes, optimizer_meta = {}, {}, {}
    for name, value in model_state.items():
        tensors[f"model.{name}"], shapes[f"model.{name}"] = _local(value), list(value.shape)
    if optimizer is not None:
        for name, values in optimizer_state["state"].items():
            for key, value in values.items():
                if torch.is_tensor(value):
                    tensors[f"optimizer.{name}.{key}"] = _local(value)
                    shapes[f"optimizer.{name}.{key}"] = list(value.shape)
                else:
                    optimizer_meta.setdefault(name, {})[key] = _to_json(value)
    layout = {
        "format": SHARDED_FORMAT,
        "format_version": SHARDED_FORMAT_VERSION,
        "rank": rank,
        "world_size": world_size,
        "global_shapes": shapes,
        "optimizer": None
        if optimizer is None
        else {"param_groups": _to_json(optimizer_state["param_groups"]), "state": optimizer_meta},
    }
    tensor_file, layout_file = sharded_state_files(rank, world_size)
    folder = Path(folder)
    save_file(tensors, str(folder / tensor_file), metadata={"format": SHARDED_FORMAT})
    (folder / layout_file).write_text(json.dumps(layout, indent=1, allow_nan=False), encoding="utf-8")


def _read_layout(folder: Path, rank: int, world_size: int) -> tuple[dict, Path]:
    tensor_file, layout_file = sharded_state_files(rank, world_size)
    layout_path, tensor_path = folder / layout_file, folder / tensor_file
    if not layout_path.is_file():
        saved = sorted(p.name for p in folder.glob("sharded_state_rank*.json"))
        hint = f"it holds {saved[:4]}" if saved else "it holds no sharded state"
        raise ValueError(
            f"{folder} has no {layout_file} for rank {rank} of {world_size} ({hint}): resume with the number of "
            "processes the checkpoint was saved with"
        )
    try:
        layout = json.loads(layout_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{layout_path} is not valid JSON ({error})") from None
    if layout.get("format") != SHARDED_FORMAT or layout.get("world_size") != world_size:
        raise ValueError(
            f"{layout_path} is not a {SHARDED_FORMAT} file of {world_size} ranks (format {layout.get('format')!r}, "
            f"world_size {layout.get('world_size')!r})"
        )
    if not tensor_path.is_file():
        raise ValueError(f"{folder} has {layout_file} but not {tensor_file}")
    return layout, tensor_path


def read_sharded_state(folder: Path, model: nn.Module, optimizer: torch.optim.Optimizer | None = None) -> None:
    """Loads the shards [`write_sharded_state`] wrote into the same sharding (world size) of `model` and
    `optimizer`. Every file is read and checked against the model before anything is applied; a missing,
    foreign or mismatched file raises `ValueError` naming it."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict
    from torch.distributed.tensor import DTensor

    folder = Path(folder)
    rank, world_size = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    layout, tensor_path = _read_layout(folder, rank, world_size)
    if optimizer is None and layout["optimizer"] is not None:
        raise ValueError(f"{folder} holds optimizer state: pass the optimizer to resume it")
    if optimizer is not None and layout["optimizer"] is None:
        raise ValueError(f"{folder} holds no optimizer state (it was written without an optimizer)")
    current_model, current_optimizer = get_state_dict(model, optimizers=[] if optimizer is None else optimizer)
    shapes = layout["global_shapes"]

    def rebuild(key: str, local: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        if list(like.shape) != shapes.get(key):
            raise ValueError(
                f"{tensor_path.name}: {key} has shape {shapes.get(key)}, the model's is {list(like.shape)}"
            )
        if isinstance(like, DTensor):
            if local.shape != like.to_local().shape:
                raise ValueError(
                    f"{tensor_path.name}: the local shard of {key} has shape {list(local.shape)}, this rank's is "
                    f"{list(like.to_local().shape)} (a different sharding)"
                )
            local = local.to(device=like.to_local().device, dtype=like.dtype)
            return DTensor.from_local(local, like.device_mesh, like.placements, shape=like.shape, stride=like.stride())
        return local.to(device=like.device, dtype=like.dtype)

    try:
        with safe_open(str(tensor_path), framework="pt") as handle:
            saved = {key: handle.get_tensor(key) for key in handle.keys()}
    except (OSError, SafetensorError) as error:
        raise ValueError(f"{tensor_path} is not a readable safetensors file ({error})") from None
    expected = {f"model.{name}" for name in current_model}
    found = {key for key in saved if key.startswith("model.")}
    if expected != found:
        raise ValueError(
            f"{tensor_path.name} does not match the model: missing {sorted(expected - found)[:5]}, "
            f"unexpected {sorted(found - expected)[:5]}"
        )
    model_state = {
        name: rebuild(f"model.{name}", saved[f"model.{name}"], like) for name, like in current_model.items()
    }
    optimizer_state = None
    if optimizer is not None:
        meta = layout["optimizer"]
        groups = _from_json(meta["param_groups"])
        if [sorted(g["params"]) for g in groups] != [sorted(g["params"]) for g in current_optimizer["param_groups"]]:
            raise ValueError(f"{folder}: the optimizer's parameter groups differ from the saved ones")
        state: dict[str, dict] = {name: dict(_from_json(values)) for name, values in meta["state"].items()}
        for key, local in saved.items():
            if not key.startswith("optimizer."):
                continue
            name, state_key = key[len("optimizer.") :].rsplit(".", 1)
            if name not in current_model:
                raise ValueError(f"{tensor_path.name}: optimizer state of {name}, which the model does not have")
            # Moments are sharded like their parameter; scalars (the step count) are plain on every rank.
            like = current_optimizer["state"].get(name, {}).get(state_key)
            if like is None:
                parameter = current_model[name]
                like = parameter if shapes[key] == list(parameter.shape) else local
            state.setdefault(name, {})[state_key] = rebuild(key, local, like)
        optimizer_state = {"state": state, "param_groups": groups}
    set_state_dict(
        model,
        optimizers=[] if optimizer is None else optimizer,
        model_state_dict=model_state,
        optim_state_dict=optimizer_state or {},
        options=StateDictOptions(strict=True),
    )


__all__ = [
    "FORWARD_METHODS",
    "EngineError",
    "block_classes",
    "check_engine",
    "check_shardable",
    "describe_engine",
    "fsdp_kwargs",
    "full_state_dict",
    "full_tensor",
    "gradient_sync",
    "is_fsdp2",
    "lockstep",
    "prepare_for_engine",
    "read_sharded_state",
    "register_forward_methods",
    "replicated_writes",
    "requested_engine",
    "shard_for_engine",
    "shard_model",
    "synchronize_buffers",
    "sharded_state_files",
    "unsharded_model",
    "write_sharded_state",
]
