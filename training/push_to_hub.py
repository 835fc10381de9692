"""Push a saved hf-unified model folder to the Hugging Face Hub (or any Hub-compatible endpoint).

    python training/push_to_hub.py --folder outputs/unicl-tiny --repo_id my-org/unicl-tiny [--hub_private false]
        [--revision BRANCH] [--commit_message "..."] [--export-clip [--clip_repo_id my-org/unicl-tiny-clip]
        [--clip_dir DIR [--overwrite]]] [--space [--space_id my-org/unicl-tiny-demo]]

The token comes from `HF_TOKEN` or `hf auth login` (never from the command line, never printed); the endpoint from
`HF_ENDPOINT` (default https://huggingface.co). The folder is checked first (config.json with auto_map and its code
files, weights the loader can open, processor and tokenizer files). What it lacks for the Hub (the model card, its
widget images, the Inference Endpoints `handler.py` + `requirements.txt`) is rendered into the upload and written into
the folder only after the upload succeeded: a failed push leaves the folder byte-identical. Only what a model
repository needs is uploaded (`hf_unified.hub.push.plan_upload`: no logs, `training_args.json`, checkpoints, pickles,
hidden or stray files, nothing a link leads to outside the folder); what stayed local is listed. New repositories are
private unless `--hub_private false`. Pushing again is harmless.

`--export-clip` also exports the model to a native CLIPModel folder (`--clip_dir`, default `FOLDER-clip`, see
`hf_unified.hub.export`) and pushes it to `--clip_repo_id` (default `REPO_ID-clip`); a model whose graph is not CLIP's
is pushed alone and the reason is printed. An existing export folder is replaced only with `--overwrite`, and never
the model folder, a folder around or inside it, or one holding a training run or another model (checked before
anything is sent). `--space` then creates the Gradio demo Space (`hf_unified.hub.space`), running the native
export when there is one.

`training/train.py --push_to_hub --hub_model_id ORG/NAME` uses the same functions.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a source checkout: make `hf_unified` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_unified.hub.push import (  # noqa: E402
    HubPushError,
    IncompleteModelFolderError,
    PushResult,
    check_can_push,
    push_folder,
)


def _boolean(value: str) -> bool:
    words = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}
    if value.lower() not in words:
        raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")
    return words[value.lower()]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="save_pretrained folder (model + processor)")
    parser.add_argument("--repo_id", required=True, help="Hub repository, ORG/NAME (created if missing)")
    parser.add_argument(
        "--hub_private",
        type=_boolean,
        nargs="?",
        const=True,
        default=True,
        help="create new repositories private (default true; `--hub_private false` makes them public; an existing "
        "repository keeps its visibility)",
    )
    parser.add_argument("--private", dest="hub_private", action="store_true", help="same as --hub_private true")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--commit_message", default=None, help="commit summary")
    parser.add_argument(
        "--export-clip",
        "--export_clip",
        dest="export_clip",
        action="store_true",
        help="also export to a native CLIPModel (no custom code) and push it, when the graph allows",
    )
    parser.add_argument("--clip_repo_id", default=None, help="Hub repository of the export (default REPO_ID-clip)")
    parser.add_argument("--clip_dir", default=None, help="folder of the export (default FOLDER-clip)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --clip_dir")
    parser.add_argument("--space", action="store_true", help="also create the Gradio demo Space")
    parser.add_argument("--space_id", default=None, help="the Space, ORG/NAME (default REPO_ID-demo)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    clip_repo_id = args.clip_repo_id or f"{args.repo_id}-clip"
    try:
        # Every repository id, the token and the export folder are checked before the first upload.
        for repo_id in [args.repo_id] + [clip_repo_id] * args.export_clip + [args.space_id] * bool(args.space_id):
            check_can_push(repo_id)
        if args.export_clip and os.path.lexists(clip_dir(args)) and not args.overwrite:
            raise FileExistsError(
                f"--clip_dir {clip_dir(args)} exists: pass --overwrite to replace it, or choose another folder "
                "(nothing was sent)"
            )
        if args.export_clip:
            from hf_unified.hub.export import ExportTargetError, check_export_target

            try:
                check_export_target(clip_dir(args), args.folder, args.overwrite)
            except ExportTargetError as error:
                raise ExportTargetError(f"--clip_dir: {error} (nothing was sent)") from None
        result: PushResult = push_folder(
            args.folder,
            args.repo_id,
            private=args.hub_private,
            revision=args.revision,
            commit_message=args.commit_message,
        )
        print(result.summary(args.folder))
        native = export_and_push(args, clip_repo_id) if args.export_clip else None
        if args.space:
            from hf_unified.hub.space import push_space

            space = push_space(args.repo_id, args.space_id, native_model_id=native, private=args.hub_private)
            print(f"pushed the demo Space {space.repo_url} (running {native or args.repo_id})")
    except (HubPushError, IncompleteModelFolderError, ValueError, OSError) as error:
        print(f"push_to_hub: {error}", file=sys.stderr)
        return 1
    return 0


def clip_dir(args) -> Path:
    """The export's folder: `--clip_dir`, default `FOLDER-clip`."""
    return Path(args.clip_dir or f"{Path(args.folder).resolve()}-clip")


def export_and_push(args, clip_repo_id: str) -> str | None:
    """Exports the folder to a native CLIPModel and pushes it: its repo id, or None when the graph is not CLIP's."""
    from hf_unified.hub.export import NotExportableError, export_clip

    target = clip_dir(args)
    try:
        exported = export_clip(
            args.folder, target, overwrite=args.overwrite, repo_id=clip_repo_id, source_repo_id=args.repo_id
        )
    except NotExportableError as error:
        print(f"not exported to a native CLIPModel: {error}")
        return None
    print(exported.summary())
    result = push_folder(
        target, clip_repo_id, private=args.hub_private, revision=args.revision, commit_message=args.commit_message
    )
    print(result.summary(target))
    return clip_repo_id


__all__ = ["HubPushError", "IncompleteModelFolderError", "PushResult", "main", "push_folder"]

if __name__ == "__main__":
    sys.exit(main())
