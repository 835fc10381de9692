"""The `Accelerator` a run trains with.

Which engine it really is, and what the trainer refuses, is `sharding.check_engine` / `sharding.describe_engine`
(accelerate silently prepares DDP for an FSDP configuration on a machine without a GPU).
"""

from __future__ import annotations

import torch
from accelerate import Accelerator


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


__all__ = ["build_accelerator"]
