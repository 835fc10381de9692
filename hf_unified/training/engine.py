"""The distributed engine: the `Accelerator` a run trains with, what it really is, and configs it cannot honour.

accelerate reads its launch configuration (`accelerate launch --config_file training/accelerate/fsdp.yaml ...`)
from the environment. On a machine without a GPU it silently ignores an FSDP config (`Accelerator(cpu=True)` under
`distributed_type: FSDP` prepares a `DistributedDataParallel`), so a CPU run that "works" proves nothing. The
trainer therefore prints the engine it runs and refuses a requested FSDP or DeepSpeed engine that did not come up.
"""

from __future__ import annotations

import os

import torch
from accelerate import Accelerator
from accelerate.utils import DistributedType

_REQUESTED = {"ACCELERATE_USE_FSDP": DistributedType.FSDP, "ACCELERATE_USE_DEEPSPEED": DistributedType.DEEPSPEED}


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


def describe_engine(accelerator: Accelerator) -> str:
    """One line: the engine, the processes, the backend and the device, e.g. `DDP, 2 processes (gloo, cpu)`."""
    state = accelerator.state
    kind = state.distributed_type
    if kind == DistributedType.FSDP:
        name = f"FSDP{getattr(state.fsdp_plugin, 'fsdp_version', '')}"
    elif kind == DistributedType.DEEPSPEED:
        name = f"DeepSpeed ZeRO-{state.deepspeed_plugin.zero_stage}"
    elif kind in (DistributedType.MULTI_CPU, DistributedType.MULTI_GPU):
        name = "DDP"
    else:
        name = "single process" if kind == DistributedType.NO else kind.value
    processes = f", {accelerator.num_processes} processes" if accelerator.num_processes > 1 else ""
    machines = int(os.environ.get("ACCELERATE_NUM_MACHINES", os.environ.get("NNODES", 1)) or 1)
    nodes = f" on {machines} machines" if machines > 1 else ""
    backend = f"{state.backend}, " if state.backend else ""
    precision = f", {accelerator.mixed_precision} mixed precision" if accelerator.mixed_precision != "no" else ""
    return f"{name}{processes}{nodes} ({backend}{accelerator.device}){precision}"


def check_engine(accelerator: Accelerator) -> None:
    """Raises `ValueError` when the launch asked for FSDP or DeepSpeed and accelerate set up something else."""
    for variable, wanted in _REQUESTED.items():
        if os.environ.get(variable, "false").lower() in ("1", "true") and accelerator.distributed_type != wanted:
            raise ValueError(
                f"the launch configuration asks for {wanted.value} ({variable}=true) but accelerate set up "
                f"{describe_engine(accelerator)}; {wanted.value} needs GPUs here: launch with a DDP config "
                "(training/accelerate/ddp.yaml) on this machine"
            )


__all__ = ["build_accelerator", "check_engine", "describe_engine"]
