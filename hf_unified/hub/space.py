"""A Gradio demo Space for a pushed model: zero-shot classification of any uploaded image with comma-separated labels.

    python -m hf_unified.hub.space ORG/MODEL [--space_id ORG/MODEL-demo] [--native_model_id ORG/MODEL-clip]
        [--hub_private false]

The Space repository (`repo_type="space"`) holds `app.py` (this subpackage's `space_app.py`, byte for byte), the
files it serves through, byte for byte too: `handler.py` (the Inference Endpoints handler, which reads and bounds each
request) and `image_processing.py` (bounded decoding), `space_config.json` (which model, whether it needs
`trust_remote_code`), `requirements.txt` (hf-unified's runtime requirements; gradio comes with the Space's SDK) and a
README whose metadata links the model page to the Space (`models:`). The app runs the native CLIP export when there is
one (`--native_model_id`, or a model repository without `auto_map`), and the model's own code otherwise. Gradio is
needed only to run the app, not to push it (`pip install hf-unified[space]` to try it locally). A new Space is
created private, as a model repository is (`hub.push`): `--hub_private false` makes it public (an existing Space keeps
its visibility).
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import sys
from pathlib import Path

from huggingface_hub import HfApi, ModelCard, SpaceCardData, hf_hub_download
from transformers.hf_argparser import string_to_bool

from .. import image_processing
from ..files import write_file
from .endpoint import HANDLER_FILE, handler_source, runtime_requirements
from .folder import is_custom_code, read_json
from .push import HubPushError, PushResult, check_can_push, commit_files
from .widget import resolve_endpoint

APP_FILE = "app.py"
IMAGE_PROCESSING_FILE = "image_processing.py"
CONFIG_FILE = "space_config.json"
DEFAULT_LABELS = "a photo of a cat, a photo of a dog, a photo of a car"


def _model_file(model_id: str, filename: str, endpoint: str | None) -> Path | None:
    """`filename` of a local model folder or a Hub model repository, or None when it has none."""
    if Path(model_id).is_dir():
        path = Path(model_id) / filename
        return path if path.is_file() else None
    try:
        return Path(hf_hub_download(model_id, filename, endpoint=resolve_endpoint(endpoint)))
    except Exception as error:  # EntryNotFound and friends: the file is optional; a missing repo fails below
        if filename == "config.json":
            raise HubPushError(f"cannot read {model_id}'s config.json from the Hub: {error}") from None
        return None


def needs_remote_code(model_id: str, endpoint: str | None = None) -> bool:
    """Whether the model (a Hub id or a local folder) needs its repository's code: its config has an `auto_map`."""
    path = _model_file(model_id, "config.json", endpoint)
    if path is None:
        raise HubPushError(f"{model_id} has no config.json: give a saved model folder or a pushed model's Hub id")
    return is_custom_code(read_json(path, "model config"))


def example_labels(model_id: str, endpoint: str | None = None) -> str:
    """The candidate labels of the model card's first widget example (chosen for the model's data), or a default."""
    readme = _model_file(model_id, "README.md", endpoint)
    widget = ModelCard.load(readme).data.to_dict().get("widget") if readme else None
    return widget[0].get("candidate_labels", DEFAULT_LABELS) if widget else DEFAULT_LABELS


def space_files(
    model_id: str,
    *,
    trust_remote_code: bool,
    labels: str = DEFAULT_LABELS,
    linked_models: list[str] | None = None,
    title: str | None = None,
) -> dict[str, bytes]:
    """The files of the Space, by path: `app.py`, `handler.py`, `image_processing.py`, `space_config.json`,
    `requirements.txt`, `README.md`.

    Args:
        model_id: the model the app runs (a Hub id; a local folder works for trying the app).
        trust_remote_code: whether that model needs its repository's code.
        labels: the labels the app's text box starts with.
        linked_models: the Hub ids of the README's `models:` metadata (default: `[model_id]`).
        title: the Space's title.
    """
    title = title or f"{model_id.split('/')[-1]} zero-shot demo"
    config = {
        "model_id": model_id,
        "trust_remote_code": trust_remote_code,
        "example_labels": labels,
        "title": title,
        "description": "Upload an image and give comma-separated labels; scores are the zero-shot pipeline's "
        f"for [{model_id}](https://huggingface.co/{model_id}).",
    }
    try:
        sdk_version = importlib.metadata.version("gradio")
    except importlib.metadata.PackageNotFoundError:
        sdk_version = None  # the Hub then uses its default gradio
    card_data = SpaceCardData(
        title=title,
        sdk="gradio",
        sdk_version=sdk_version,
        app_file=APP_FILE,
        models=linked_models or [model_id],
        tags=["zero-shot-image-classification", "hf-unified"],
    )
    code = "custom code of the model repository" if trust_remote_code else "a native transformers CLIPModel"
    readme = (
        f"---\n{card_data.to_yaml()}\n---\n\n# {title}\n\nZero-shot image classification with "
        f"[{model_id}](https://huggingface.co/{model_id}) ({code}), made with hf-unified's "
        "`python -m hf_unified.hub.space`.\n"
    )
    requirements = "".join(f"{line}\n" for line in runtime_requirements())
    return {
        APP_FILE: Path(__file__).with_name("space_app.py").read_bytes(),
        HANDLER_FILE: handler_source(),
        IMAGE_PROCESSING_FILE: Path(image_processing.__file__).read_bytes(),
        CONFIG_FILE: (json.dumps(config, indent=2) + "\n").encode(),
        "requirements.txt": requirements.encode(),
        "README.md": readme.encode(),
    }


def write_local_space(model_folder: str | Path, folder: str | Path) -> Path:
    """Writes the Space's files for a local model folder into `folder` (a new or empty one), to run the app on this
    machine: `cd FOLDER && python app.py` (gradio serves on http://127.0.0.1:7860). Nothing is pushed.

    Raises:
        HubPushError: `model_folder` holds no config.json.
        FileExistsError: `folder` exists and is not empty.
    """
    model_folder, folder = Path(model_folder).absolute(), Path(folder).absolute()
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"{folder} exists and is not an empty folder: give a new one for the Space's files")
    files = space_files(
        str(model_folder),
        trust_remote_code=needs_remote_code(str(model_folder)),
        labels=example_labels(str(model_folder)),
    )
    for name, data in files.items():
        write_file(folder / name, data)
    return folder


def push_space(
    model_id: str,
    space_id: str | None = None,
    *,
    native_model_id: str | None = None,
    private: bool = True,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Creates (or updates) the demo Space of a pushed model.

    Args:
        model_id: the hf-unified model on the Hub.
        space_id: the Space, `"org/name"`; default `"{model_id}-demo"`.
        native_model_id: its native CLIPModel export, if pushed: the app then runs that (no custom code).
        private: create the Space private (the default; an existing Space keeps its visibility).
        token: Hub token; default `HF_TOKEN` or the saved login. Never printed.
        endpoint: Hub URL; default `HF_ENDPOINT`, else huggingface.co.

    Raises:
        ValueError: a malformed id.
        HubPushError: offline, no token, the model's config cannot be read, or a Hub request failed.
    """
    space_id = space_id or f"{model_id}-demo"
    check_can_push(space_id, token)
    endpoint = resolve_endpoint(endpoint)
    served = native_model_id or model_id
    files = space_files(
        served,
        trust_remote_code=needs_remote_code(served, endpoint),
        labels=example_labels(model_id, endpoint),
        linked_models=sorted({model_id, served}),
    )
    api = HfApi(endpoint=endpoint, token=token)
    repo_url, commit = commit_files(
        api,
        space_id,
        files,
        repo_type="space",
        private=private,
        commit_message=f"Demo Space for {served} (hf-unified)",
        token=token,
        what=f"the demo Space of {served}",
        space_sdk="gradio",
    )
    return PushResult(str(repo_url), str(commit.commit_url), "main", sorted(files), sorted(files))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m hf_unified.hub.space", description="Create a Gradio demo Space for a pushed hf-unified model."
    )
    parser.add_argument("model_id", help="the model on the Hub, ORG/NAME (with --local: a saved model folder)")
    parser.add_argument(
        "--local",
        metavar="FOLDER",
        default=None,
        help="write the Space's files for a local model folder into FOLDER instead of pushing, to run it here: "
        "cd FOLDER && python app.py",
    )
    parser.add_argument("--space_id", default=None, help="the Space, ORG/NAME (default: MODEL_ID-demo)")
    parser.add_argument("--native_model_id", default=None, help="its native CLIP export on the Hub, if pushed")
    parser.add_argument(
        "--hub_private",
        type=string_to_bool,
        nargs="?",
        const=True,
        default=True,
        help="create a new Space private (default true; `--hub_private false` makes it public; an existing Space "
        "keeps its visibility)",
    )
    parser.add_argument("--private", dest="hub_private", action="store_true", help="same as --hub_private true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.local is not None:
        try:
            folder = write_local_space(args.model_id, args.local)
        except (HubPushError, OSError) as error:
            print(f"hf_unified.hub.space: {error}", file=sys.stderr)
            return 1
        print(f"wrote the Space's files to {folder}; run it with: cd {folder} && python app.py")
        return 0
    try:
        result = push_space(
            args.model_id, args.space_id, native_model_id=args.native_model_id, private=args.hub_private
        )
    except (HubPushError, ValueError) as error:
        print(f"hf_unified.hub.space: {error}", file=sys.stderr)
        return 1
    print(f"pushed the Space {result.repo_url}: {', '.join(result.files)}\ncommit: {result.commit_url}")
    return 0


__all__ = ["needs_remote_code", "push_space", "space_files", "write_local_space"]

if __name__ == "__main__":
    sys.exit(main())
