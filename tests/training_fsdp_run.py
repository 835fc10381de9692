"""`training/train.py` with the model sharded by FSDP2 on a gloo CPU device mesh: what the trainer runs under
`accelerate launch --config_file training/accelerate/fsdp.yaml` on GPUs, where accelerate can run it.

On a machine without a GPU accelerate prepares DDP for an FSDP configuration (and the trainer refuses that), so the
sharding is applied here, by `sharding.shard_model` on the same model the command line builds; the trainer then
trains it as sharded (engine, steps, clipping, sharded checkpoints and resume, evaluation in lockstep, the gathered
final save). Launch it as train.py is launched:

    accelerate launch --multi_gpu --num_processes 2 tests/training_fsdp_run.py --config ... [--output_dir ...]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str]) -> None:
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    from hf_unified.training.builders import build_trainer
    from hf_unified.training.engine import sharding
    from hf_unified.training.parsing import parse_arguments

    trainer = build_trainer(*parse_arguments(argv))  # initialises the gloo process group (accelerate)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    trainer.model = sharding.shard_model(trainer.model, mesh)
    trainer.train()


if __name__ == "__main__":
    main(sys.argv[1:])
