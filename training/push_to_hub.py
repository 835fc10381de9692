"""Push a saved hf-unified model folder to the Hugging Face Hub (or any Hub-compatible endpoint).

    python training/push_to_hub.py --folder outputs/unicl-tiny --repo_id my-org/unicl-tiny [--private]
        [--revision BRANCH] [--commit_message "..."]

The token comes from `HF_TOKEN` or `huggingface-cli login` (never from the command line, never printed); the endpoint
from `HF_ENDPOINT` (default https://huggingface.co). The folder is checked first (config.json with auto_map and its
code files, model.safetensors, processor and tokenizer files); a folder without README.md gets a rendered model card.
Only the model's top-level files are uploaded (no checkpoints, logs or pickles). Pushing again is harmless.

`training/train.py --push_to_hub --hub_model_id ORG/NAME` calls `push_folder` from here.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script from a source checkout: make `hf_unified` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from hf_unified.hub.push import HubPushError, IncompleteModelFolderError, PushResult, push_folder  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--folder", required=True, help="save_pretrained folder (model + processor)")
    parser.add_argument("--repo_id", required=True, help="Hub repository, ORG/NAME (created if missing)")
    parser.add_argument("--private", action="store_true", help="create the repository private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing; default main)")
    parser.add_argument("--commit_message", default=None, help="commit summary")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: PushResult = push_folder(
            args.folder, args.repo_id, private=args.private, revision=args.revision, commit_message=args.commit_message
        )
    except (HubPushError, IncompleteModelFolderError, ValueError) as error:
        print(f"push_to_hub: {error}", file=sys.stderr)
        return 1
    print(f"pushed {len(result.files)} files to {result.repo_url} ({result.revision}): {', '.join(result.files)}")
    print(f"commit: {result.commit_url}")
    return 0


__all__ = ["HubPushError", "IncompleteModelFolderError", "PushResult", "main", "push_folder"]

if __name__ == "__main__":
    sys.exit(main())
