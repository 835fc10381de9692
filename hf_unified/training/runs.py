"""One run per `output_dir`, and its own checkpoints: who may write the folder, and which run a checkpoint continues.

**Claiming the folder** (`claim_output_dir`, before anything is written, on the main process):

- `--export_clip` must not overlap `output_dir` (`hub.export.check_export_target`: it is not the folder, its parent
  or inside it, and an existing target is replaced only with `--overwrite_export_clip`);
- the run lock (`files.FolderLock`, `output_dir/run.lock`: host and pid of the holder) is taken: a second run on the
  folder is refused in one line; the lock of a holder known to be gone is taken over with a note;
- under the lock, a folder holding another run's work (checkpoints, a saved model) is refused unless the run resumes
  (`--resume_from_checkpoint`) or `--overwrite_output_dir` says to start over there; then the earlier run's
  checkpoints and its trained tokenizer are deleted (named on the console), and its model is replaced at the end.

**Which run a checkpoint belongs to.** Every checkpoint records its run (`RunIdentity`: an id, when it started, and the
settings that decide its trajectory: `trajectory_settings`). Rotation (`save_total_limit`) deletes only the run's own
checkpoints. A resume compares the checkpoint's settings with this run's (`setting_changes`): a difference in
anything that changes what is computed (model config, data, seed, batch and accumulation, objective, optimizer
betas, precision, ...) is refused, naming the run and the fields; the settings in `ADJUSTABLE_SETTINGS` (learning
rate, schedule, `max_steps`, weight decay, clipping, ...) may change with `--allow_setting_changes`, and are then
applied (`apply_new_hyperparameters`: the restored optimizer and schedule would otherwise keep the old values).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from accelerate.utils import broadcast_object_list

from ..files import FolderLock, FolderLockedError, real_path, recover_folder
from .engine import checkpoint as checkpoints
from .outputs import publish

# Arguments that decide what a run computes; the model's own config is compared too (`model_config.*`), so the
# arguments that only build it (model_type, objective, model_config) are not listed.
TRAJECTORY_ARGUMENTS = (
    # the starting point and the text
    "model_name_or_path",
    "init_from_clip",
    "vision_model_name_or_path",
    "text_model_name_or_path",
    "tokenizer_name_or_path",
    "tokenizer_vocab_size",
    "tokenizer_train_samples",
    "max_text_length",
    # the data and its order
    "train_data",
    "train_format",
    "train_split",
    "image_column",
    "text_column",
    "label_column",
    "train_probabilities",
    "class_names_file",
    "templates",
    "map_captions_to_labels",
    "label_vocabulary_file",
    "shuffle_buffer_size",
    "shuffle_input_shards",
    "stream_lanes",
    "seed",
    # the inputs
    "max_image_pixels",
    "max_aspect_ratio",
    "max_caption_chars",
    "image_size",
    "crop_scale_min",
    "horizontal_flip",
    "view_preset",
    "augmentation_kwargs",
    "views_on_device",
    "view_canvas_size",
    # the step
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "gradient_accumulation_mode",
    "mixed_precision",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "freeze_vision_tower",
    "freeze_text_tower",
    "lock_image_tower",
    "head_learning_rate",
    "layerwise_lr_decay",
    "patch_dropout_final_steps",
    "lora_rank",
    "lora_alpha",
    "lora_dropout",
    "lora_target_modules",
)
# Settings a resume may change with --allow_setting_changes: the optimizer and the schedule take them from here on.
ADJUSTABLE_SETTINGS = (
    "learning_rate",
    "lr_scheduler_type",
    "warmup_steps",
    "max_steps",
    "weight_decay",
    "logit_offset_learning_rate_multiplier",
    "shared_learning_rate",
    "shared_weight_decay",
    "max_grad_norm",
    "max_logit_scale",
)
# Model config entries that say nothing about the computation.
_CONFIG_NOISE = ("transformers_version", "_name_or_path", "architectures", "dtype", "torch_dtype")


class RunFolderError(ValueError):
    """`output_dir` cannot be used by this run; the one-line message says why and what to do."""


def _plain(value):
    """`value` as the JSON a checkpoint stores it (tuples as lists, non-finite floats as text), for comparison."""
    return json.loads(
        json.dumps(value, default=str),
        parse_constant=str,  # NaN / Infinity stay comparable text
    )


def _flatten(config: dict, prefix: str = "") -> dict:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict) and key not in ("id2label", "label2id"):
            flat.update(_flatten(value, f"{prefix}{key}."))
        elif not key.startswith("_") and key not in _CONFIG_NOISE:
            flat[f"{prefix}{key}"] = value
    return flat


def trajectory_settings(run_arguments: dict, train_args, model_config) -> dict:
    """The settings of a run that decide its trajectory: the `TRAJECTORY_ARGUMENTS` and `ADJUSTABLE_SETTINGS` of
    `train_args` (`TrainArguments`) and of `run_arguments` (all three argument classes, when the run has them), and
    every entry of the model's config (`model_config.<field>`, sub-configs dotted)."""
    names = TRAJECTORY_ARGUMENTS + ADJUSTABLE_SETTINGS
    settings = {name: run_arguments[name] for name in names if name in run_arguments}
    settings |= {name: getattr(train_args, name) for name in names if hasattr(train_args, name)}
    config = json.loads(model_config.to_json_string(use_diff=False))
    settings |= {f"model_config.{key}": value for key, value in _flatten(config).items()}
    return _plain(settings)


@dataclass
class RunIdentity:
    """A training run: its id, when it started, the settings that decide its trajectory."""

    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    started: str = field(default_factory=lambda: time.strftime("%Y-%m-%d %H:%M:%S %z"))
    settings: dict = field(default_factory=dict)

    def state_dict(self) -> dict:
        digest = hashlib.sha256(json.dumps(self.settings, sort_keys=True).encode()).hexdigest()[:16]
        return {"id": self.id, "started": self.started, "fingerprint": digest, "settings": self.settings}

    @classmethod
    def from_checkpoint(cls, trainer_state: dict) -> RunIdentity | None:
        run = trainer_state.get("run")
        if not isinstance(run, dict) or not isinstance(run.get("settings"), dict):
            return None  # written before checkpoints recorded their run
        return cls(str(run.get("id")), str(run.get("started")), run["settings"])

    def describe(self) -> str:
        return f"run {self.id} (started {self.started})"


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:57] + "..."


def setting_changes(saved: dict, current: dict) -> dict[str, tuple]:
    """`{name: (saved value, current value)}` for every setting that differs (absent on one side: None)."""
    names = sorted(set(saved) | set(current))
    return {name: (saved.get(name), current.get(name)) for name in names if saved.get(name) != current.get(name)}


def describe_changes(changes: dict[str, tuple]) -> str:
    return ", ".join(f"{name} {_short(old)} -> {_short(new)}" for name, (old, new) in changes.items())


def check_resume(folder: Path, saved: RunIdentity | None, current: RunIdentity, allow_changes: bool) -> dict:
    """The settings a resume from checkpoint `folder` of run `saved` changes (to apply), or `CheckpointError`
    naming the run and the fields when it may not."""
    if saved is None:
        return {}  # an older checkpoint: nothing to compare (the trainer says so)
    changes = setting_changes(saved.settings, current.settings)
    fixed = {name: values for name, values in changes.items() if name not in ADJUSTABLE_SETTINGS}
    if fixed:
        raise checkpoints.CheckpointError(
            f"cannot resume from {folder}: it belongs to {saved.describe()}, whose settings differ from this run's: "
            f"{describe_changes(fixed)}; resume with that run's settings, or start a new run in another output_dir "
            "(or over it with --overwrite_output_dir)"
        )
    if changes and not allow_changes:
        raise checkpoints.CheckpointError(
            f"cannot resume from {folder} of {saved.describe()} with other settings: {describe_changes(changes)}; "
            "pass --allow_setting_changes to resume with them (they are then applied), or resume with the old values"
        )
    return changes


def optimizer_hyperparameters(optimizer) -> tuple[list[dict], list[float]]:
    """The freshly built optimizer's per-group settings (without its parameters) and their initial learning rates:
    what `apply_new_hyperparameters` puts back after a checkpoint overwrote them."""
    groups = [{k: v for k, v in group.items() if k != "params"} for group in optimizer.param_groups]
    return groups, [group.get("initial_lr", group["lr"]) for group in groups]


def apply_new_hyperparameters(optimizer, scheduler, fresh: tuple[list[dict], list[float]]) -> None:
    """After a resume: the groups take this run's settings (weight decay, learning-rate scales) and the schedule
    this run's peak rates, at the restored step. `load_state_dict` had put the checkpoint's back; the schedule's
    shape (`max_steps`, warmup, type) comes from the freshly built scheduler already."""
    groups, base_rates = fresh
    lambdas = getattr(scheduler, "lr_lambdas", None)
    if lambdas is None:
        raise checkpoints.CheckpointError(
            f"cannot apply new learning rates to a {type(scheduler).__name__} schedule on resume; resume with the old "
            "settings"
        )
    scheduler.base_lrs = list(base_rates)
    for group, settings, base, scale in zip(optimizer.param_groups, groups, base_rates, lambdas):
        group.update({k: v for k, v in settings.items() if k not in ("lr", "initial_lr")})
        group["initial_lr"] = base
        group["lr"] = base * scale(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]


# ----------------------------------------------------------------------------------------------------------------
# Claiming output_dir


def _has_saved_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() or any(folder.glob("*.safetensors"))


def _resumes(args, folder: Path) -> bool:
    """Whether this run will continue from a checkpoint (rather than start anew in `folder`)."""
    spec = args.resume_from_checkpoint
    return bool(spec) and (spec != "latest" or bool(checkpoints.list_checkpoints(folder)))


def _other_work(args, folder: Path) -> str | None:
    """What of another run `folder` holds that a new run there would delete or replace (None: nothing)."""
    if _resumes(args, folder):
        return None
    found = checkpoints.list_checkpoints(folder)
    if found:
        owner = checkpoints.checkpoint_run_id(found[-1])
        whose = f"of run {owner}" if owner else "of an earlier run"
        return f"holds checkpoints {whose} ({', '.join(path.name for path in found)})"
    if _has_saved_model(folder):
        return "holds the model of an earlier run"
    return None


def _check_targets(args) -> None:
    """Refusals before anything is created: the export target, a file in the way."""
    folder = Path(args.output_dir)
    problem = publish.check_targets(args)
    if problem:
        raise RunFolderError(problem)
    if folder.exists() and not folder.is_dir():
        raise RunFolderError(f"output_dir {folder} exists and is not a folder")


def _check_other_work(args) -> None:
    """Under the lock: a folder holding another run's work needs --resume_from_checkpoint or --overwrite_output_dir."""
    folder = Path(args.output_dir)
    work = _other_work(args, folder)
    if work and not args.overwrite_output_dir:
        # Only checkpoints can be resumed; a saved model alone can be trained further from another output_dir.
        go_on = (
            "continue it with --resume_from_checkpoint latest"
            if checkpoints.list_checkpoints(folder)
            else f"train it further in another output_dir with --model_name_or_path {folder}"
        )
        raise RunFolderError(
            f"output_dir {folder} {work}: {go_on}, start over there with --overwrite_output_dir, or choose another "
            "output_dir"
        )


def _start_over(folder: Path, say) -> None:
    """--overwrite_output_dir: deletes what of the earlier run a new run would otherwise pick up (its checkpoints,
    which a later `latest` would resume, and its trained tokenizer); its model is replaced by the final save."""
    for path in [*checkpoints.list_checkpoints(folder), folder / "tokenizer"]:
        if path.is_dir():
            shutil.rmtree(path)
            say(f"--overwrite_output_dir: deleted {path} of the earlier run")


class RunFolder:
    """This run's hold on `output_dir`: claimed (checked, locked, recovered) by `claim`, freed by `release`."""

    def __init__(self, output_dir: str | Path):
        self.output_dir = Path(output_dir)
        self.lock = FolderLock(self.output_dir)

    def claim(self, args, say=print) -> None:
        """See the module docstring; main process only. Raises `RunFolderError` with one line."""
        folder = self.output_dir
        if not folder.exists():
            recover_folder(folder, remove_staging=False)  # a final save killed between its two renames
        _check_targets(args)
        real_path(folder).mkdir(parents=True, exist_ok=True)
        try:
            note = self.lock.acquire()
        except FolderLockedError as error:
            raise RunFolderError(str(error)) from None
        if note:
            say(note)
        try:
            recover_folder(folder)  # staging left by a killed save (only this run writes here now)
            _check_other_work(args)
            if args.overwrite_output_dir and not _resumes(args, folder):
                _start_over(folder, say)
        except BaseException:
            self.release()
            raise

    def release(self) -> None:
        self.lock.release()


def claim_output_dir(args, accelerator) -> RunFolder:
    """Claims `args.output_dir` for this run on the main process (`RunFolder.claim`); a refusal stops every rank
    with the same one-line `RunFolderError`."""
    run_folder = RunFolder(args.output_dir)
    message = [None]
    if accelerator.is_main_process:
        try:
            run_folder.claim(args, say=accelerator.print)
        except RunFolderError as error:
            message = [str(error)]
    if accelerator.num_processes > 1:
        message = broadcast_object_list(message)
    if message[0]:
        raise RunFolderError(message[0])
    return run_folder


__all__ = [
    "ADJUSTABLE_SETTINGS",
    "RunFolder",
    "RunFolderError",
    "RunIdentity",
    "TRAJECTORY_ARGUMENTS",
    "apply_new_hyperparameters",
    "check_resume",
    "claim_output_dir",
    "optimizer_hyperparameters",
    "setting_changes",
    "trajectory_settings",
]
