"""Sharded training state as safetensors + JSON, one pair of files per rank, beside the checkpoints.

A model sharded with FSDP2 has no whole copy anywhere: every rank writes its own shards of the model and optimizer
state with safetensors, and their layout as JSON ([`write_sharded_state`], [`read_sharded_state`]); nothing is
pickled (torch's distributed checkpoint writer pickles its metadata). `checkpoint.py` stages and publishes the folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

SHARDED_FORMAT = "hf-unified-sharded-state"
SHARDED_FORMAT_VERSION = 1


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


__all__ = ["SHARDED_FORMAT", "read_sharded_state", "sharded_state_files", "write_sharded_state"]
