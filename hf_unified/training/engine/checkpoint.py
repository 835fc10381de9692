"""Resumable training state as JSON and safetensors only: nothing in a checkpoint is ever unpickled.

A checkpoint folder `checkpoint-<step>/` holds exactly these files (anything else makes resuming refuse):

    trainer_state.json                the step, the world size, the run's counters, this list of files
    model.safetensors                 the model's weights
    optimizer.safetensors             the optimizer's tensors (`state.<parameter index>.<name>`)
    optimizer.json                    its parameter groups and non-tensor state
    scheduler.json                    the learning-rate scheduler's `state_dict`
    scaler.json                       the fp16 gradient scaler's state (fp16 runs only)
    rng_state_rank<r>.safetensors     rank r's torch (CPU and CUDA) generator states
    rng_state_rank<r>.json            rank r's Python and NumPy generator states
    data_state_rank<r>.json           rank r's data-stream position and data counters

Writing goes to a staging folder beside the checkpoint and ends with one rename (`files.StagedFolder`); a failed
write (a full disk) leaves nothing behind. `trainer_state.json` also records the run that wrote the checkpoint (its id
and the settings that decide its trajectory, `runs.RunIdentity`): rotation deletes only the run's own checkpoints,
and a resume checks the settings.
Reading parses every file first (JSON with `json`, safetensors headers with `safetensors`) and applies nothing
until all of them are valid, so a damaged or foreign checkpoint is refused with one line and the run's state is
untouched. accelerate's `save_state` / `load_state` are not used: they pickle the registered scheduler
(`custom_checkpoint_0.pkl`) and the random states, and unpickle them on resume.

A LoRA run (`training/lora.py`) keeps its base weights frozen and as its start has them: its `model.safetensors`
holds only what training changes, the adapters, the heads and the buffers (`trainer_state.json` says so:
`"model_contents": "trainable"`), plus a SHA-256 of the frozen weights it was trained on; resuming loads them into
the rebuilt model after checking that its frozen weights hash the same (a start that changed, a Hub model updated
since, is refused).

Model and optimizer are saved from the main process when they are replicated (single process, DDP). A model
sharded with FSDP2 has no whole copy anywhere: every rank writes its own shards of the model and optimizer instead
of `model.safetensors` / `optimizer.*` (`sharded_state.write_sharded_state`: safetensors + a JSON layout per rank,
`sharded_state_rank<r>-of-<n>.{safetensors,json}`), and resuming reads them back into the same sharding
(`sharded_state.read_sharded_state`). `trainer_state.json` records which of the two a checkpoint holds; resuming with
the other engine is refused. DeepSpeed state is refused here with a clear error.
"""

from __future__ import annotations

import hashlib
import json
import random
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate.utils import DistributedType, broadcast_object_list
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, load_model, save_file, save_model

from ...files import StagedFolder
from . import sharded_state, sharding

FORMAT = "hf-unified-trainer-checkpoint"
FORMAT_VERSION = 1
TRAINER_STATE = "trainer_state.json"
SCHEDULER_FILE = "scheduler.json"
REPLICATED_FILES = ("model.safetensors", "optimizer.safetensors", "optimizer.json")
RANK_FILES = ("rng_state_rank{rank}.safetensors", "rng_state_rank{rank}.json", "data_state_rank{rank}.json")
SCALER_FILE = "scaler.json"


class CheckpointError(ValueError):
    """A checkpoint folder cannot be resumed from; the one-line message says which file and why."""


def checkpoint_files(world_size: int, with_scaler: bool, sharded: bool = False) -> list[str]:
    """Every file of a checkpoint of `world_size` processes: model and optimizer as one copy, or (`sharded`) as
    each rank's shards."""
    names = [TRAINER_STATE, SCHEDULER_FILE, *([SCALER_FILE] if with_scaler else [])]
    names += [] if sharded else list(REPLICATED_FILES)
    for rank in range(world_size):
        names += [pattern.format(rank=rank) for pattern in RANK_FILES]
        names += list(sharded_state.sharded_state_files(rank, world_size)) if sharded else []
    return names


TRAINABLE_CONTENTS = "trainable"  # `model_contents` of a checkpoint holding only what training changes (LoRA)


def frozen_parameter_names(model: torch.nn.Module) -> set[str]:
    return {name for name, parameter in model.named_parameters() if not parameter.requires_grad}


def trainable_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's `state_dict` without its frozen parameters: the trainable ones and the buffers."""
    frozen = frozen_parameter_names(model)
    return {
        name: value.detach().cpu().contiguous() for name, value in model.state_dict().items() if name not in frozen
    }


def frozen_fingerprint(model: torch.nn.Module) -> str:
    """SHA-256 over the frozen parameters' names, dtypes, shapes and bytes (in name order)."""
    digest = hashlib.sha256()
    parameters = dict(model.named_parameters())
    for name in sorted(frozen_parameter_names(model)):
        tensor = parameters[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _engine_name(sharded: bool) -> str:
    return "a sharded (FSDP2) run" if sharded else "a replicated (single-process or DDP) run"


# ----------------------------------------------------------------------------------------------------------------
# State <-> files


def _write_json(path: Path, value) -> None:
    try:
        text = json.dumps(value, indent=1, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"cannot write {path.name}: the state is not plain JSON ({error})") from None
    path.write_text(text, encoding="utf-8")


def optimizer_files(state_dict: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """`optimizer.state_dict()` -> (tensors for safetensors, the rest as JSON)."""
    tensors, other = {}, {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"state.{index}.{key}"] = value.detach().cpu().contiguous()
            else:
                other.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "state": other}


def optimizer_state_dict(tensors: dict[str, torch.Tensor], meta: dict, current_groups: list[dict]) -> dict:
    """The inverse of `optimizer_files`; list values become tuples where the current groups hold tuples (betas)."""
    state: dict[int, dict] = {}
    for key, tensor in tensors.items():
        _, index, name = key.split(".", 2)
        state.setdefault(int(index), {})[name] = tensor
    for index, values in meta["state"].items():
        state.setdefault(int(index), {}).update(values)
    groups = []
    for saved, current in zip(meta["param_groups"], current_groups):
        groups.append(
            {k: tuple(v) if isinstance(current.get(k), tuple) and isinstance(v, list) else v for k, v in saved.items()}
        )
    return {"state": state, "param_groups": groups}


def rng_files() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's generator states: torch (CPU, every initialised CUDA device), Python, NumPy."""
    tensors = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        tensors.update({f"cuda.{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss = random.getstate()
    numpy_state = np.random.get_state(legacy=False)
    numpy_state["state"]["key"] = numpy_state["state"]["key"].tolist()
    return tensors, {"python": [version, list(internal), gauss], "numpy": numpy_state}


def set_rng_state(tensors: dict[str, torch.Tensor], meta: dict) -> None:
    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[f"cuda.{i}"] for i in range(len(tensors) - 1)]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    version, internal, gauss = meta["python"]
    random.setstate((version, tuple(internal), gauss))
    numpy_state = dict(meta["numpy"])
    numpy_state["state"] = {**numpy_state["state"], "key": np.asarray(numpy_state["state"]["key"], dtype=np.uint32)}
    np.random.set_state(numpy_state)


# ----------------------------------------------------------------------------------------------------------------
# Writing


def _check_engine(accelerator) -> None:
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        raise CheckpointError(
            "checkpoints of DeepSpeed training are not supported by this writer: train without --save_steps, or "
            "shard with FSDP2 (training/accelerate/fsdp.yaml), whose checkpoints it writes"
        )


def _torch_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside accelerate's `AcceleratedOptimizer` (torch's distributed state-dict helpers
    step and inspect it directly)."""
    return getattr(optimizer, "optimizer", optimizer)


def write_checkpoint(
    output_dir: Path,
    step: int,
    *,
    accelerator,
    model: torch.nn.Module,
    optimizer,
    scheduler,
    trainer_state: dict,
    rank_state: dict,
    keep: int = 0,
    trainable_only: bool = False,
) -> Path:
    """Writes `output_dir/checkpoint-<step>` atomically (every rank writes its own files; collective).

    Args:
        model: the unwrapped model (an FSDP2 model writes its shards from every rank).
        trainer_state: JSON-able run state shared by the ranks (counters, the run: `{"run": {"id": ...}}`), written
            by the main process.
        rank_state: JSON-able state of this rank (data-stream position, data counters).
        keep: checkpoints of this run to keep, the newest (0 = all); other runs' checkpoints are never deleted.
        trainable_only: save only the trainable parameters and the buffers, with a hash of the frozen parameters,
            which the run's start gives back (a LoRA run: see the module docstring).
    """
    _check_engine(accelerator)
    sharded = sharding.is_fsdp2(model)
    final = Path(output_dir) / f"checkpoint-{step}"
    staged = StagedFolder(final) if accelerator.is_main_process else None
    temporary = [staged.path if staged else None]
    if accelerator.num_processes > 1:
        temporary = broadcast_object_list(temporary)
    temporary = Path(temporary[0])
    try:
        rank = accelerator.process_index
        tensors, meta = rng_files()
        save_file(tensors, temporary / f"rng_state_rank{rank}.safetensors")
        _write_json(temporary / f"rng_state_rank{rank}.json", meta)
        _write_json(temporary / f"data_state_rank{rank}.json", rank_state)
        if sharded:  # a collective: every rank writes its own shards
            sharded_state.write_sharded_state(temporary, model, _torch_optimizer(optimizer))
        contents = {}
        if accelerator.is_main_process:
            if not sharded and trainable_only:  # the frozen base comes from the run's start
                save_file(trainable_state(model), temporary / "model.safetensors", metadata={"format": "pt"})
                contents = {"model_contents": TRAINABLE_CONTENTS, "frozen_sha256": frozen_fingerprint(model)}
            elif not sharded:
                save_model(model, str(temporary / "model.safetensors"), metadata={"format": "pt"})
            if not sharded:
                tensors, meta = optimizer_files(optimizer.state_dict())
                save_file(tensors, temporary / "optimizer.safetensors")
                _write_json(temporary / "optimizer.json", meta)
            _write_json(temporary / SCHEDULER_FILE, scheduler.state_dict())
            if accelerator.scaler is not None:
                _write_json(temporary / SCALER_FILE, accelerator.scaler.state_dict())
            files = checkpoint_files(accelerator.num_processes, accelerator.scaler is not None, sharded)
            header = {"format": FORMAT, "version": FORMAT_VERSION, "step": step}
            _write_json(
                temporary / TRAINER_STATE,
                {
                    **header,
                    "world_size": accelerator.num_processes,
                    "sharded": sharded,
                    "files": files,
                    **contents,
                    **trainer_state,
                },
            )
        accelerator.wait_for_everyone()
        if staged is not None:
            staged.commit()
    except BaseException:
        if staged is not None:
            staged.discard()  # a full disk leaves no half-written checkpoint behind
        raise
    if accelerator.is_main_process and keep > 0:
        run_id = (trainer_state.get("run") or {}).get("id")
        for old in [path for path in list_checkpoints(output_dir) if checkpoint_run_id(path) == run_id][:-keep]:
            shutil.rmtree(old)
    accelerator.wait_for_everyone()
    return final


# ----------------------------------------------------------------------------------------------------------------
# Reading


def list_checkpoints(output_dir: Path) -> list[Path]:
    """`checkpoint-<step>` folders of `output_dir`, oldest first."""
    found = [
        (int(path.name.split("-", 1)[1]), path)
        for path in Path(output_dir).glob("checkpoint-*")
        if path.is_dir() and path.name.split("-", 1)[1].isdigit()
    ]
    return [path for _, path in sorted(found)]


def checkpoint_run_id(folder: Path) -> str | None:
    """The id of the run that wrote checkpoint `folder` (None: unreadable, or written before runs had ids)."""
    try:
        state = json.loads((Path(folder) / TRAINER_STATE).read_text(encoding="utf-8"))
        return str(state["run"]["id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_checkpoint(output_dir: Path, spec: str) -> Path | None:
    """A checkpoint folder, or with `spec="latest"` the newest one of `output_dir` (None if there is none)."""
    if spec != "latest":
        path = Path(spec)
        if not path.is_dir():
            raise CheckpointError(f"resume_from_checkpoint: {spec} is not a checkpoint folder")
        return path
    checkpoints = list_checkpoints(output_dir)
    return checkpoints[-1] if checkpoints else None


def _read_json(folder: Path, name: str) -> dict:
    path = folder / name
    try:
        value = json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"cannot resume from {folder}: {name} is not a JSON file ({error})") from None
    if not isinstance(value, dict):
        raise CheckpointError(f"cannot resume from {folder}: {name} must hold a JSON object")
    return value


def _safetensors_keys(folder: Path, name: str) -> list[str]:
    try:
        with safe_open(str(folder / name), framework="pt") as handle:
            return list(handle.keys())
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot resume from {folder}: {name} is not a safetensors file ({error})") from None


def _load_tensors(folder: Path, name: str) -> dict[str, torch.Tensor]:
    try:
        return load_file(str(folder / name))
    except (SafetensorError, OSError) as error:
        raise CheckpointError(f"cannot resume from {folder}: {name} is not a safetensors file ({error})") from None


@dataclass
class Checkpoint:
    """A validated checkpoint: every file parsed, nothing applied yet (`restore` does). A sharded one's model and
    optimizer state (`optimizer_tensors` / `optimizer_meta` are None) is read and checked against the model by
    `restore`, before anything is applied."""

    folder: Path
    step: int
    trainer_state: dict
    rank_state: dict
    sharded: bool
    optimizer_tensors: dict[str, torch.Tensor] | None
    optimizer_meta: dict | None
    scheduler_state: dict
    scaler_state: dict | None
    rng_tensors: dict[str, torch.Tensor]
    rng_meta: dict


def read_checkpoint(folder: Path, rank: int, world_size: int, sharded: bool = False) -> Checkpoint:
    """Parses and checks every file of `folder` for this rank of a run of `world_size` processes whose model is
    `sharded` (FSDP2) or not; raises `CheckpointError` (one line) on anything that is not what this trainer
    writes for such a run."""
    folder = Path(folder)
    if not (folder / TRAINER_STATE).is_file():
        raise CheckpointError(
            f"cannot resume from {folder}: it has no {TRAINER_STATE} (not a checkpoint of this trainer)"
        )
    state = _read_json(folder, TRAINER_STATE)
    if state.get("format") != FORMAT or state.get("version") != FORMAT_VERSION:
        raise CheckpointError(
            f"cannot resume from {folder}: {TRAINER_STATE} is not a {FORMAT} version {FORMAT_VERSION} state"
        )
    if state.get("world_size") != world_size:
        raise CheckpointError(
            f"cannot resume from {folder}: it was written by {state.get('world_size')} processes, this run has "
            f"{world_size} (resume with the number of processes it was saved with)"
        )
    if bool(state.get("sharded", False)) != sharded:
        raise CheckpointError(
            f"cannot resume from {folder}: it was written by {_engine_name(bool(state.get('sharded')))}, this run is "
            f"{_engine_name(sharded)} (resume with the engine it was saved with)"
        )
    expected = checkpoint_files(world_size, with_scaler=(folder / SCALER_FILE).exists(), sharded=sharded)
    present = sorted(path.name for path in folder.iterdir())
    foreign = sorted(set(present) - set(expected))
    if foreign:
        raise CheckpointError(
            f"cannot resume from {folder}: it holds {foreign}, which this trainer never writes (its checkpoints are "
            "JSON and safetensors files only, never unpickled); remove them or resume from another checkpoint"
        )
    missing = sorted(set(expected) - set(present))
    if missing or sorted(state.get("files", [])) != sorted(expected):
        raise CheckpointError(
            f"cannot resume from {folder}: incomplete checkpoint (missing {missing or state.get('files')})"
        )
    for name in expected:
        if name.endswith(".json") and name != TRAINER_STATE:
            _read_json(folder, name)
    model_file = sharded_state.sharded_state_files(rank, world_size)[0] if sharded else "model.safetensors"
    _safetensors_keys(folder, model_file)
    scaler = _read_json(folder, SCALER_FILE) if (folder / SCALER_FILE).exists() else None
    checkpoint = Checkpoint(
        folder=folder,
        step=int(state["step"]),
        trainer_state=state,
        rank_state=_read_json(folder, f"data_state_rank{rank}.json"),
        sharded=sharded,
        optimizer_tensors=None if sharded else _load_tensors(folder, "optimizer.safetensors"),
        optimizer_meta=None if sharded else _read_json(folder, "optimizer.json"),
        scheduler_state=_read_json(folder, SCHEDULER_FILE),
        scaler_state=scaler,
        rng_tensors=_load_tensors(folder, f"rng_state_rank{rank}.safetensors"),
        rng_meta=_read_json(folder, f"rng_state_rank{rank}.json"),
    )
    for key, needed in (("param_groups", checkpoint.optimizer_meta), ("python", checkpoint.rng_meta)):
        if needed is not None and key not in needed:
            raise CheckpointError(f"cannot resume from {folder}: a state file lacks {key!r}")
    return checkpoint


def restore(checkpoint: Checkpoint, *, accelerator, model: torch.nn.Module, optimizer, scheduler) -> None:
    """Applies a `read_checkpoint` result: weights, optimizer, schedule, gradient scaler and generator states.

    Args:
        model: the unwrapped model.
    """
    _check_engine(accelerator)
    if checkpoint.sharded:
        _restore_shards(checkpoint.folder, model, optimizer)
    else:
        _restore_replicated(checkpoint, accelerator.device, model, optimizer)
    scheduler.load_state_dict(checkpoint.scheduler_state)
    if checkpoint.scaler_state is not None and accelerator.scaler is not None:
        accelerator.scaler.load_state_dict(checkpoint.scaler_state)
    set_rng_state(checkpoint.rng_tensors, checkpoint.rng_meta)


def _restore_replicated(checkpoint: Checkpoint, device, model: torch.nn.Module, optimizer) -> None:
    folder = checkpoint.folder
    saved_sizes = [len(group["params"]) for group in checkpoint.optimizer_meta["param_groups"]]
    current_sizes = [len(group["params"]) for group in optimizer.param_groups]
    if saved_sizes != current_sizes:
        raise CheckpointError(
            f"cannot resume from {folder}: its optimizer has parameter groups of sizes {saved_sizes}, this run's "
            f"{current_sizes} (resume with the same model and fine-tuning settings)"
        )
    try:
        if checkpoint.trainer_state.get("model_contents") == TRAINABLE_CONTENTS:
            _restore_trainable(checkpoint, model)
        else:
            load_model(model, str(folder / "model.safetensors"), strict=True, device=str(device))
    except (RuntimeError, SafetensorError) as error:
        reason = " ".join(str(error).split())[:300]
        raise CheckpointError(
            f"cannot resume from {folder}: model.safetensors does not fit this model ({reason})"
        ) from None
    optimizer.load_state_dict(
        optimizer_state_dict(checkpoint.optimizer_tensors, checkpoint.optimizer_meta, optimizer.param_groups)
    )


def _restore_trainable(checkpoint: Checkpoint, model: torch.nn.Module) -> None:
    """A LoRA checkpoint's trainable weights and buffers, into a model whose frozen weights are those it was trained
    on (checked by their hash) and whose trainable ones are the ones it holds."""
    folder = checkpoint.folder
    state = _load_tensors(folder, "model.safetensors")
    expected = set(model.state_dict()) - frozen_parameter_names(model)
    if set(state) != expected:
        extra, lacking = sorted(set(state) - expected)[:3], sorted(expected - set(state))[:3]
        raise CheckpointError(
            f"cannot resume from {folder}: its trainable weights are not this model's (it holds {extra} this model "
            f"does not train, lacks {lacking}); resume with the LoRA settings it was written with"
        )
    if frozen_fingerprint(model) != checkpoint.trainer_state.get("frozen_sha256"):
        raise CheckpointError(
            f"cannot resume from {folder}: the frozen base weights of this run differ from those the checkpoint was "
            "trained on (the starting model changed since, e.g. a new revision of a Hub model); resume from the "
            "same starting model"
        )
    model.load_state_dict(state, strict=False)


def _restore_shards(folder: Path, model: torch.nn.Module, optimizer) -> None:
    """This rank's shards, checked against the model and optimizer before they are applied (a collective)."""
    try:
        sharded_state.read_sharded_state(folder, model, _torch_optimizer(optimizer))
    except ValueError as error:
        raise CheckpointError(f"cannot resume from {folder}: {error}") from None


__all__ = [
    "Checkpoint",
    "CheckpointError",
    "FORMAT",
    "checkpoint_files",
    "checkpoint_run_id",
    "find_checkpoint",
    "list_checkpoints",
    "read_checkpoint",
    "restore",
    "write_checkpoint",
]
