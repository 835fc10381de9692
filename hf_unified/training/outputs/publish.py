"""A run's publishing steps: what `--push_to_hub` and `--export_clip` need is checked before anything is written or
trained, and done after the final save.

- `check_targets(args)`: the export folder (`--export_clip`: never `output_dir`, a folder around or inside it, or one
  holding another run; an existing one only with `--overwrite_export_clip`), checked when `output_dir` is claimed,
  before anything is created (`runs.claim_output_dir`);
- `preflight(args, model)`: the Hub target (token, offline mode, repo id) and whether the model can be exported as a
  `CLIPModel`, checked before training (the trainer runs it on the main process and stops every rank on a refusal);
- `publish(output_dir, args)`: after the final save, the push of the saved folder (`hub.push_folder`, private unless
  `--hub_private false`) and the export (`hub.export.export_clip`); returns what to print.

Only training code calls the Hub code (`hf_unified.hub`); the Hub code never imports training.
"""

from __future__ import annotations

from pathlib import Path

import torch

from ...hub import export, push


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


def publish(output_dir: str | Path, args) -> list[str]:
    """Pushes the saved `output_dir` (`--push_to_hub`) and exports it as a `CLIPModel` (`--export_clip`); returns a
    line for each step done. Main process only, after the final save."""
    done = []
    if args.push_to_hub:
        result = push.push_folder(output_dir, args.hub_model_id, private=args.hub_private)
        done.append(f"pushed {len(result.files)} files to {result.repo_url}")
    if args.export_clip:
        export.export_clip(output_dir, args.export_clip, overwrite=args.overwrite_export_clip)
        done.append(f"exported a transformers CLIPModel folder to {args.export_clip}")
    return done


__all__ = ["check_targets", "preflight", "publish"]
