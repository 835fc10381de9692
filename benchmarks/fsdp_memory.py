"""FSDP vs DDP: per-process memory of parameters, gradients and AdamW state for the base configs.

Measured on the meta device (no memory is allocated, shapes are real): each base config's model is built from its
YAML (`training/configs/*-base.yaml`), and for FSDP sharded by the trainer's own code
(`hf_unified.training.engine.sharding.shard_model`: one unit per `_no_split_modules` block, the rest in the root)
inside a process group of W ranks simulated in this one process (torch's fake process group, which answers collectives
without communicating; rank 0 is measured). AdamW takes one step on zero gradients so that its state exists; every
figure is the sum of the bytes of this rank's tensors: its local shards under FSDP, whole tensors under DDP.

Steady state is what stays allocated between steps (parameters, gradients after the step's reduction, optimizer
state). On top of it FSDP gathers one unit at a time: its parameters (and, in its backward, its unsharded gradients)
exist whole while it runs; the largest unit bounds that transient (with prefetching, the next unit's parameters are
gathered as well). Under gradient accumulation without synchronisation (`full_batch`, or `micro_batch` with
`gradient_accumulation_steps > 1`), FSDP keeps every unit's unsharded gradient until the last micro-batch: the
gradient column then is the DDP one. Float32 throughout (bf16 mixed precision halves the gathered copies only).

Usage:

    python benchmarks/fsdp_memory.py                          # the three base configs, W = 8 and 64
    python benchmarks/fsdp_memory.py --world-sizes 2 8 --smoke  # tiny models, seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import common  # noqa: F401  (puts the repository on sys.path)
import torch
import torch.distributed as dist
import yaml
from common import REPO_ROOT, describe_machine, markdown_table
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.tensor import DTensor
from transformers import AutoConfig, AutoModel

import hf_unified  # noqa: F401  (registers the model types with the Auto classes)
from hf_unified.training.engine import sharding

BASE_CONFIGS = ("unicl-base.yaml", "uniclip-base.yaml", "msclip-base.yaml")
SMOKE_OVERRIDES = {
    "unicl": {
        "vision_config": {"model_type": "swin", "embed_dim": 16, "depths": [1, 1], "num_heads": [2, 2]},
        "text_config": {"model_type": "clip_text_model", "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 600},
    },
    "uniclip": {
        "vision_config": {"model_type": "clip_vision_model", "hidden_size": 32, "intermediate_size": 64,
                          "num_hidden_layers": 2, "num_attention_heads": 2},
        "text_config": {"model_type": "clip_text_model", "hidden_size": 32, "intermediate_size": 64,
                        "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 600},
    },
    "msclip": {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 3, "vision_num_attention_heads": 2,
               "text_num_attention_heads": 2, "vocab_size": 600, "image_size": 32, "patch_size": 8,
               "stem_channels": [4, 8, 16], "stem_strides": [2, 2], "parallel_channels": [4, 8],
               "parallel_strides": [2, 2], "parallel_t2b_kernels": [4, 2], "parallel_lateral_layers": [1, 2]},
}  # fmt: skip


def meta_model(path: Path, smoke: bool) -> torch.nn.Module:
    """The config's model on the meta device (nothing allocated)."""
    values = yaml.safe_load(path.read_text())
    kwargs = dict(values["model_config"])
    if smoke:
        for key, override in SMOKE_OVERRIDES[values["model_type"]].items():
            kwargs[key] = {**kwargs[key], **override} if isinstance(override, dict) else override
    config = AutoConfig.for_model(values["model_type"], **kwargs)
    with torch.device("meta"):
        return AutoModel.from_config(config)


def tensor_bytes(tensor: torch.Tensor) -> int:
    local = tensor.to_local() if isinstance(tensor, DTensor) else tensor
    return local.numel() * local.element_size()


def training_state_bytes(model: torch.nn.Module) -> dict[str, int]:
    """This rank's parameter, gradient and AdamW-state bytes (one AdamW step on zero gradients)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)
    optimizer.step()
    return {
        "parameters": sum(tensor_bytes(p) for p in model.parameters()),
        "gradients": sum(tensor_bytes(p.grad) for p in model.parameters()),
        "optimizer": sum(tensor_bytes(v) for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)),
    }


def largest_unit(model: torch.nn.Module) -> tuple[str, int]:
    """(name, unsharded parameter bytes) of the FSDP unit that gathers the most."""
    units = [(name, module) for name, module in model.named_modules() if sharding.is_fsdp2(module)]
    owner = {}
    for name, unit in units:  # pre-order: a nested unit overwrites its parent's claim on its parameters
        for parameter in unit.parameters():
            owner[id(parameter)] = name
    sizes: dict[str, int] = {}
    for parameter in model.parameters():
        sizes[owner[id(parameter)]] = sizes.get(owner[id(parameter)], 0) + parameter.numel() * parameter.element_size()
    name = max(sizes, key=sizes.get)
    return name or "(root)", sizes[name]


def measure(path: Path, world_size: int, smoke: bool) -> dict:
    model = meta_model(path, smoke)
    count = sum(parameter.numel() for parameter in model.parameters())
    ddp = training_state_bytes(model)
    dist.init_process_group("fake", store=_fake_store(), rank=0, world_size=world_size)
    try:
        model = sharding.shard_model(meta_model(path, smoke), init_device_mesh("cpu", (world_size,)))
        fsdp = training_state_bytes(model)
        unit_name, unit_bytes = largest_unit(model)
        units = sum(1 for module in model.modules() if sharding.is_fsdp2(module))
    finally:
        dist.destroy_process_group()
    return {
        "parameter_count": count,
        "ddp": ddp,
        "fsdp": fsdp,
        "largest_unit": (unit_name, unit_bytes),
        "units": units,
    }


def _fake_store():
    from torch.testing._internal.distributed.fake_pg import FakeStore  # registers the "fake" backend

    return FakeStore()


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--configs", nargs="+", default=list(BASE_CONFIGS), help="files in training/configs")
    parser.add_argument("--world-sizes", type=int, nargs="+", default=[8, 64])
    parser.add_argument("--smoke", action="store_true", help="tiny versions of the configs")
    return parser.parse_args(argv)


def main(argv=None) -> list[dict]:
    args = parse_args(argv)
    print(f"machine: {describe_machine()} (meta device: shapes only)")

    def mib(value: int) -> str:
        return f"{value / 2**20:,.0f}" if value >= 2**20 else f"{value / 2**20:.2f}"

    results, rows = [], []
    for name in args.configs:
        path = REPO_ROOT / "training" / "configs" / name
        for world_size in args.world_sizes:
            result = {"config": name, "world_size": world_size, **measure(path, world_size, args.smoke)}
            results.append(result)
            ddp, fsdp = result["ddp"], result["fsdp"]
            unit_name, unit_bytes = result["largest_unit"]
            ddp_total, fsdp_total = sum(ddp.values()), sum(fsdp.values())
            rows.append(
                [
                    name.removesuffix(".yaml"),
                    world_size,
                    f"{result['parameter_count'] / 1e6:.1f}M",
                    " / ".join(mib(ddp[k]) for k in ("parameters", "gradients", "optimizer")),
                    mib(ddp_total),
                    " / ".join(mib(fsdp[k]) for k in ("parameters", "gradients", "optimizer")),
                    mib(fsdp_total),
                    f"{ddp_total / fsdp_total:.1f}x",
                    f"{result['units']}; {unit_name}: {mib(unit_bytes)}",
                    mib(fsdp_total + 2 * unit_bytes),
                ]
            )
            print(f"  {name} W={world_size}: DDP {mib(ddp_total)} MiB, FSDP {mib(fsdp_total)} MiB", flush=True)
    print("\n### per-process fp32 training state, DDP vs FSDP2 full shard (rank 0 of W; MiB)")
    print(
        markdown_table(
            [
                "config",
                "W",
                "parameters",
                "DDP params / grads / AdamW",
                "DDP total",
                "FSDP params / grads / AdamW",
                "FSDP total",
                "saving",
                "FSDP units; largest (gathered whole)",
                "FSDP peak (total + largest unit's params and grads)",
            ],
            rows,
        )
    )
    return results


if __name__ == "__main__":
    main()
