"""Tiny models of the three methods and synthetic micro-batches for the large-batch and sharding tests.

Every objective is covered: UniCL with labels (a Swin image tower with drop-path and a BERT text tower with
dropout), UniCLIP with two augmentation-aware views and duplicate-text masking, MS-CLIP-S (shared blocks, conv
stem and parallel branch with BatchNorm) and MS-CLIP's all-shared preset (no BatchNorm).
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist
from tiny_models import BOS, EOS, IMAGE_SIZE, tiny_config, tiny_text, tiny_vision

from hf_unified import MSCLIPModel, UniCLIPModel, UniCLModel

SEQUENCE = 8
KINDS = ("unicl", "uniclip", "msclip", "msclip-shared")


def _with_dropout(config, rate: float) -> None:
    """Sets every dropout and drop-path rate a tower's `config` has to `rate`."""
    for name in ("attention_dropout", "hidden_dropout_prob", "attention_probs_dropout_prob", "drop_path_rate"):
        if hasattr(config, name):
            setattr(config, name, rate)


def build_model(kind: str, dropout: float = 0.0, seed: int = 0, clip_towers: bool = False) -> torch.nn.Module:
    """The shared tiny model of `kind` (one of `KINDS`, `tiny_models`) in training mode, with `dropout` as every
    dropout and drop-path rate.

    UniCL runs a Swin image tower (drop-path) and a BERT text tower (hidden dropout), or with `clip_towers` the
    CLIP towers of the other kinds (BERT's pooler is unused, which DDP refuses).
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if kind.startswith("msclip"):
        preset = "ms-clip-s" if kind == "msclip" else "shared"
        config = tiny_config("msclip", preset=preset, attention_dropout=dropout)
    else:
        towers = {}
        if kind == "unicl" and not clip_towers:
            towers = dict(vision_config=tiny_vision("swin"), text_config=tiny_text("bert"), text_pooling="cls")
        config = tiny_config(kind, **towers)
        _with_dropout(config.vision_config, dropout)
        _with_dropout(config.text_config, dropout)
    torch.manual_seed(seed)
    model_class = {"unicl": UniCLModel, "uniclip": UniCLIPModel}.get(kind, MSCLIPModel)
    return model_class(config).train()


def micro_batches(config, count: int, size: int, seed: int = 0, dtype=torch.float32) -> list[dict]:
    """`count` micro-batches of `size` items with every input `config`'s objective uses: labels (some shared,
    some -1), multi-view pixel values with augmentation parameters, and texts that repeat across micro-batches (so
    that duplicate-text masking has to see the whole batch)."""
    generator = torch.Generator().manual_seed(seed)
    captions = torch.randint(0, BOS, (max(2, count * size // 2), SEQUENCE), generator=generator)
    batches = []
    for _ in range(count):
        rows = torch.randint(0, captions.shape[0], (size,), generator=generator)
        input_ids = captions[rows].clone()
        attention_mask = torch.ones_like(input_ids)
        lengths = 3 + rows % (SEQUENCE - 3)
        for row, length in enumerate(lengths.tolist()):
            input_ids[row, length - 1] = EOS
            input_ids[row, length:] = EOS
            attention_mask[row, length:] = 0
        if config.num_views > 1:
            shape = (size, config.num_views, 3, IMAGE_SIZE, IMAGE_SIZE)
        else:
            shape = (size, 3, IMAGE_SIZE, IMAGE_SIZE)
        batch = {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": torch.randn(shape, generator=generator, dtype=torch.float64).to(dtype),
        }
        if config.augmentation_aware:
            params = torch.rand((size, config.num_views, config.augmentation_param_dim), generator=generator)
            batch["augmentation_params"] = params.to(dtype)
        if config.use_labels:
            labels = torch.randint(0, 3, (size,), generator=generator)
            batch["labels"] = torch.where(torch.rand(size, generator=generator) < 0.4, -1, labels)
        batches.append(batch)
    return batches


def concatenate(batches: list[dict]) -> dict:
    """One batch holding all of `batches` (their texts have the same padded length)."""
    return {key: torch.cat([batch[key] for batch in batches]) for key in batches[0]}


def gradients(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter's gradient by name (zeros where there is none), as full tensors."""
    from torch.distributed.tensor import DTensor

    result = {}
    for name, parameter in model.named_parameters():
        grad = parameter.grad
        if grad is None:
            grad = torch.zeros_like(parameter)
        if isinstance(grad, DTensor):
            grad = grad.full_tensor()
        result[name] = grad.detach().clone()
    return result


def init_gloo(rank: int, world_size: int, folder: Path) -> None:
    """Joins a gloo process group through a file store in `folder` (no ports to race for)."""
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    torch.set_num_threads(1)
    store = Path(folder) / "store"
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world_size)
