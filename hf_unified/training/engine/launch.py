"""The `Accelerator` a run trains with, and which engine the launch really set up.

accelerate reads the launch configuration (`accelerate launch --config_file training/accelerate/fsdp.yaml ...`) from
the environment, and on a machine without a GPU silently ignores an FSDP config (`Accelerator(cpu=True)` under
`distributed_type: FSDP` prepares a `DistributedDataParallel`): a CPU run that "works" proves nothing.
[`check_engine`] says which engine runs and refuses what the trainer cannot honour.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn

from .sharding import is_fsdp2
from .steps import StepStrategy


class EngineError(ValueError):
    """The launch asks for an engine or a combination this trainer cannot honour; the message says what to do."""


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
    accelerator, step: StepStrategy | None = None, environ: dict | None = None, model: nn.Module | None = None
) -> str:
    """Returns [`describe_engine`], or raises [`EngineError`] when the run would not be what was asked for.

    `step` is the step strategy the run uses (`steps.build_step`; None: plain accumulation), whose
    `deepspeed_unsupported` says whether it can run under DeepSpeed.

    A `model` already sharded with FSDP2 by its caller (its own device mesh; the CPU tests' gloo mesh) under an
    accelerate state that is not FSDP is described as such: `FSDP2 over 2 shards (sharded by the caller), DDP, ...`
    (`sharding.prepare_for_engine` keeps its sharding).

    Refused: an FSDP or DeepSpeed launch that accelerate did not set up (no GPU: it falls back to DDP silently);
    FSDP version 1 (flat parameters: the temperatures and the `get_*_features` calls of evaluation cannot be
    served outside `forward`); an accelerate auto-wrap policy (`sharding.shard_model` wraps); accelerate's FSDP
    activation checkpointing (it would wrap blocks after `sharding.shard_model` sharded them: use
    `--gradient_checkpointing`); DeepSpeed with a step strategy that cannot run under it (`full_batch`: DeepSpeed
    counts backward passes as its own accumulation steps and ZeRO-3 partitions the temperatures outside `forward`).
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
    unsupported = getattr(step, "deepspeed_unsupported", None)
    if actual == DistributedType.DEEPSPEED and unsupported:
        name = getattr(step, "name", type(step).__name__)
        raise EngineError(
            f"gradient_accumulation_mode {name} is not supported with DeepSpeed ({unsupported}): use micro_batch, or "
            f"shard with FSDP (training/accelerate/fsdp.yaml), which runs {name}"
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


def build_accelerator(args) -> Accelerator:
    """The `Accelerator` of `TrainArguments`: bf16 on GPUs and fp32 on CPUs under `mixed_precision: auto`, the CPU
    (gloo between processes) on a machine without an accelerator or with `use_cpu`."""
    has_accelerator = torch.cuda.is_available() or torch.backends.mps.is_available()
    mixed_precision = args.mixed_precision
    if mixed_precision == "auto":
        mixed_precision = "bf16" if torch.cuda.is_available() and not args.use_cpu else "no"
    return Accelerator(
        cpu=args.use_cpu or not has_accelerator,
        mixed_precision=mixed_precision,
        log_with=args.report_to or None,
        project_dir=str(args.output_dir),
        dynamo_backend="inductor" if args.torch_compile else "no",
    )


__all__ = ["EngineError", "build_accelerator", "check_engine", "describe_engine", "requested_engine"]
