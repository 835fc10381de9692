"""A run's publishing steps: what `--push_to_hub` and `--export_clip` need is checked before anything is written or
trained, and done after the final save.

- `check_targets(args)`: the export folder (`--export_clip`: never `output_dir`, a folder around or inside it, or one
  holding another run; an existing one only with `--overwrite_export_clip`), checked when `output_dir` is claimed,
  before anything is created (`runs.claim_output_dir`);
- `preflight(args, model)`: the Hub target (token, offline mode, repo id) and whether the model can be exported as a
  `CLIPModel`, checked before training (the trainer runs it on the main process and stops every rank on a refusal);
- `publish(output_dir, args)`: after the final save, the push of the saved folder (`hub.push_folder`, private unless
  `--hub_private false`), or with `--push_adapter` of a LoRA run's `adapter/` (`push_adapter`), and the export
  (`hub.export.export_clip`); returns what to print.

Only training code calls the Hub code (`hf_unified.hub`); the Hub code never imports training.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from huggingface_hub import HfApi

from ...hub import export, push
from ...hub.widget import resolve_endpoint
from .adapter import ADAPTER_DIR


def check_targets(args) -> str | None:
    """What is wrong with the `--export_clip` folder of `TrainArguments`, as one line naming the flag (None when
    nothing is): an export there could destroy what it must not."""
    if not args.export_clip:
        return None
    try:
        export.check_export_target(
            args.export_clip, Path(args.output_dir), args.overwrite_export_clip, flag="--overwrite_export_clip"
        )
    except (ValueError, OSError) as error:
        return f"--export_clip: {error}"
    return None


def preflight(args, model: torch.nn.Module) -> str | None:
    """What would fail after training, as one line (None when nothing would): the Hub target of `--push_to_hub` and
    whether `model` can be exported as a `CLIPModel` for `--export_clip`."""
    if args.push_to_hub:
        try:
            push.check_can_push(args.hub_model_id)
        except Exception as error:  # noqa: BLE001 - any refusal becomes the run's one-line error
            return f"--push_to_hub {args.hub_model_id}: {error}"
    if args.export_clip:
        problems = export.export_problems(model)
        if problems:
            return f"--export_clip: this model cannot be exported as a CLIPModel: {'; '.join(problems)}"
    return None


ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", "README.md")


def push_adapter(folder: Path, repo_id: str, *, private: bool = True) -> push.PushResult:
    """Pushes a LoRA run's adapter folder (`adapter.save_adapter`: its config, weights and card naming `base_model`)
    to `repo_id`: exactly `ADAPTER_FILES`, each a regular file inside the folder (never a link), the weights opened
    as the loader opens them and the config parsed before anything is sent (`hub.push.commit_files`: one commit,
    a failure names its step and leaves the folder unchanged)."""
    push.check_can_push(repo_id)
    problems = []
    for name in ADAPTER_FILES:
        path = folder / name
        if path.is_symlink() or not path.is_file():
            problems.append(f"{name} is missing or not a regular file")
    if not problems:
        problem, _ = push.safetensors_problem(folder / "adapter_model.safetensors", "adapter_model.safetensors")
        problems += [problem] if problem else []
        try:
            json.loads((folder / "adapter_config.json").read_text(encoding="utf-8"))["peft_type"]
        except (ValueError, KeyError, TypeError) as error:
            problems.append(f"adapter_config.json is not a PEFT adapter config ({type(error).__name__}: {error})")
    if problems:
        raise push.IncompleteModelFolderError(f"{folder} cannot be pushed as an adapter: {'; '.join(problems)}")
    endpoint = resolve_endpoint()
    repo_url, commit = push.commit_files(
        HfApi(endpoint=endpoint),
        repo_id,
        {name: folder / name for name in ADAPTER_FILES},
        private=private,
        commit_message="Upload LoRA adapter with hf-unified",
        what=str(folder),
    )
    return push.PushResult(str(repo_url), str(commit.commit_url), "main", sorted(ADAPTER_FILES))


def publish(output_dir: str | Path, args) -> list[str]:
    """Pushes the saved `output_dir` (`--push_to_hub`) and exports it as a `CLIPModel` (`--export_clip`); returns a
    line for each step done. Main process only, after the final save."""
    done = []
    if args.push_to_hub and getattr(args, "push_adapter", False):
        result = push_adapter(Path(output_dir) / ADAPTER_DIR, args.hub_model_id, private=args.hub_private)
        done.append(f"pushed the LoRA adapter ({len(result.files)} files) to {result.repo_url}")
    elif args.push_to_hub:
        result = push.push_folder(output_dir, args.hub_model_id, private=args.hub_private)
        done.append(f"pushed {len(result.files)} files to {result.repo_url}")
    if args.export_clip:
        export.export_clip(output_dir, args.export_clip, overwrite=args.overwrite_export_clip)
        done.append(f"exported a transformers CLIPModel folder to {args.export_clip}")
    return done


__all__ = ["ADAPTER_FILES", "check_targets", "preflight", "publish", "push_adapter"]
