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
from transformers import BertConfig, CLIPTextConfig, CLIPVisionConfig, SwinConfig

from hf_unified import MSCLIPConfig, MSCLIPModel, UniCLConfig, UniCLIPConfig, UniCLIPModel, UniCLModel

IMAGE_SIZE, VOCAB, BOS, EOS, SEQUENCE = 32, 600, 598, 599, 8
KINDS = ("unicl", "uniclip", "msclip", "msclip-shared")
MSCLIP_TINY = dict(
    vocab_size=VOCAB,
    max_position_embeddings=32,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=3,
    vision_num_attention_heads=2,
    text_num_attention_heads=4,
    image_size=IMAGE_SIZE,
    patch_size=8,
    projection_dim=16,
    stem_channels=[4, 8, 16],
    stem_strides=[2, 2],
    parallel_channels=[4, 8],
    parallel_strides=[2, 2],
    parallel_t2b_kernels=[4, 2],
    parallel_lateral_layers=[1, 2],
    bos_token_id=BOS,
    eos_token_id=EOS,
    pad_token_id=0,
)


def _clip_towers(dropout: float) -> dict:
    return dict(
        vision_config=CLIPVisionConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=IMAGE_SIZE,
            patch_size=8,
            attention_dropout=dropout,
        ),
        text_config=CLIPTextConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            bos_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=EOS,
            attention_dropout=dropout,
        ),
    )


def build_model(kind: str, dropout: float = 0.0, seed: int = 0, clip_towers: bool = False) -> torch.nn.Module:
    """A tiny model of `kind` (one of `KINDS`) in training mode; `dropout` also sets Swin's drop-path rate.

    `clip_towers`: UniCL with CLIP towers instead of Swin + BERT (cheaper, for multi-step runs).
    """
    torch.manual_seed(seed)
    if kind == "unicl" and clip_towers:
        model = UniCLModel(UniCLConfig(**_clip_towers(dropout), projection_dim=16))
    elif kind == "unicl":
        vision = SwinConfig(
            image_size=IMAGE_SIZE,
            patch_size=4,
            embed_dim=8,
            depths=[1, 2],
            num_heads=[2, 2],
            window_size=4,
            drop_path_rate=dropout,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        text = BertConfig(
            vocab_size=VOCAB,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            max_position_embeddings=32,
            hidden_dropout_prob=dropout,
            attention_probs_dropout_prob=dropout,
        )
        config = UniCLConfig(vision_config=vision, text_config=text, text_pooling="cls", projection_dim=16)
        model = UniCLModel(config)
    elif kind == "uniclip":
        model = UniCLIPModel(UniCLIPConfig(**_clip_towers(dropout), projection_dim=16, augmentation_hidden_size=8))
    elif kind in ("msclip", "msclip-shared"):
        preset = "ms-clip-s" if kind == "msclip" else "shared"
        model = MSCLIPModel(MSCLIPConfig.from_preset(preset, **MSCLIP_TINY, attention_dropout=dropout))
    else:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    return model.train()


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
