"""Pushing a saved model folder to the Hugging Face Hub (or any Hub-compatible endpoint in `HF_ENDPOINT`).

`push_folder` checks that the folder is complete (config, its code files when it has an `auto_map`, safetensors
weights, processor files) before anything is sent. What the folder lacks for the Hub is rendered **into the upload
only**: the model card (`README.md`, with its widget images under `widget/`) when there is none, the Hub id in a card
rendered before the id was known, and for custom-code folders the Inference Endpoints `handler.py` and
`requirements.txt`. One `HfApi.create_commit` sends the folder's files and the rendered ones; only after it succeeded
are the rendered files written into the folder, each atomically (beside, then `os.replace`). So a push that fails at
any step leaves the folder byte-identical, and its `HubPushError` says the step, what exists on the Hub, and that
nothing local changed. Only the files a model needs are uploaded (no training checkpoints, logs or pickles); pushing
the same folder again is harmless (unchanged files are skipped, no empty commit). The token never appears in any
message.

`check_can_push` runs the checks that need no upload (repo id, offline mode, a token): call it before a long
training run that ends in a push.
"""

from __future__ import annotations

import json
import logging
import re
import struct
from dataclasses import dataclass, field
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id

from .endpoint import endpoint_files
from .folder import code_files, is_custom_code, write_atomic
from .model_card import CARD_MARKER, HUB_ID_PLACEHOLDER, render_card_files
from .widget import WIDGET_DIR, resolve_endpoint

logger = logging.getLogger(__name__)

# Top-level files of a model folder that go to the Hub. Everything else (checkpoint-*/ folders, logs, tensorboard
# events, pickled weights) stays local.
UPLOAD_PATTERNS = (
    "*.safetensors",
    "*.json",
    "*.jsonl",
    "*.py",
    "*.md",
    "*.txt",
    "*.model",
    "*.tiktoken",
    ".gitattributes",
)
# The model card's widget images (`widget/eval-0.png`), the only files below the top level that are uploaded.
WIDGET_PATTERNS = ("*.png", "*.jpg", "*.jpeg", "*.webp")
# Weights that must never be uploaded: pickle-based formats can run code when loaded.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")


class HubPushError(RuntimeError):
    """A push cannot start or failed; the message says which step, what exists on the Hub, and what changed
    locally (nothing)."""


class IncompleteModelFolderError(ValueError):
    """The folder lacks files a Hub model needs; the message lists every problem."""


@dataclass
class PushResult:
    """What a push did.

    Args:
        repo_url: the repository's URL.
        commit_url: the commit's URL (the previous head's when nothing changed).
        revision: the branch pushed to.
        files: every file of the upload, by path in the repository.
        rendered: the files of `files` rendered for the upload (card, widget images, endpoint handler).
        written: the rendered files written into the local folder afterwards.
        local_error: why writing them failed, if it did (the Hub copy is complete either way).
    """

    repo_url: str
    commit_url: str
    revision: str
    files: list[str]
    rendered: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    local_error: str | None = None

    def summary(self, folder: str | Path | None = None) -> str:
        lines = [f"pushed {len(self.files)} files to {self.repo_url} ({self.revision}): {', '.join(self.files)}"]
        lines.append(f"commit: {self.commit_url}")
        where = f" into {folder}" if folder else " into the local folder"
        if self.written:
            lines.append(f"rendered for the upload, then written{where}: {', '.join(self.written)}")
        if self.local_error:
            lines.append(f"could not write {', '.join(self.rendered)}{where}: {self.local_error}")
        if not self.rendered:
            lines.append("the folder was uploaded as it is (nothing rendered, nothing written locally)")
        return "\n".join(lines)


def check_can_push(repo_id: str, token: str | None = None) -> None:
    """Checks what a push needs before any upload: a well-formed `org/name` repo id, online mode, a token.

    Call it before a training run that ends with a push, so that a missing token fails in a second, not after
    the run. The token is never printed.

    Args:
        repo_id: the Hub repository, `"org/name"`.
        token: the token to use; default `HF_TOKEN` or the saved login.

    Raises:
        ValueError: `repo_id` is malformed (the message says the expected form).
        HubPushError: offline mode is on, or no token is available.
    """
    if not isinstance(repo_id, str) or not _REPO_ID.match(repo_id):
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"repo_id {repo_id!r} is not a valid Hub id: {error}") from None
    if constants.is_offline_mode():
        raise HubPushError("HF_HUB_OFFLINE is set: unset it to push (nothing was sent or written)")
    if not (token or get_token()):
        raise HubPushError(
            "no Hub token: set HF_TOKEN or run `hf auth login` (a token with write access) before pushing"
        )


def _safetensors_problem(path: Path) -> str | None:
    """Checks the header parses and the data section has exactly the length the header says (catches truncation)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as handle:
            (length,) = struct.unpack("<Q", handle.read(8))
            if length <= 0 or 8 + length > size:
                return f"{path.name} is not a safetensors file (bad header length)"
            header = json.loads(handle.read(length))
    except (OSError, struct.error, json.JSONDecodeError, UnicodeDecodeError) as error:
        return f"{path.name} is not a readable safetensors file ({error})"
    ends = [entry["data_offsets"][1] for key, entry in header.items() if key != "__metadata__"]
    if not ends:
        return f"{path.name} holds no tensors"
    if 8 + length + max(ends) != size:
        described = 8 + length + max(ends)
        return f"{path.name} is truncated or corrupt: its header describes {described} bytes, the file has {size}"
    return None


def upload_files(folder: Path) -> list[str]:
    """The files of `folder` that a push uploads, by path in the repository, sorted."""
    files = [
        path.name
        for path in folder.iterdir()
        if path.is_file() and any(fnmatch(path.name, pattern) for pattern in UPLOAD_PATTERNS)
    ]
    widget = folder / WIDGET_DIR
    if widget.is_dir():
        files += [
            f"{WIDGET_DIR}/{path.name}"
            for path in widget.iterdir()
            if path.is_file() and any(fnmatch(path.name.lower(), pattern) for pattern in WIDGET_PATTERNS)
        ]
    return sorted(files)


def _is_builtin_model_type(model_type: str) -> bool:
    # The names transformers ships (CONFIG_MAPPING itself also holds the types registered at run time, like ours).
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def check_model_folder(folder: str | Path, require_readme: bool = True, provided: tuple[str, ...] = ()) -> list[str]:
    """Raises `IncompleteModelFolderError` listing everything missing from a pushable folder.

    A folder of a model type transformers does not ship needs an `auto_map` and its code files (Hub custom code);
    a built-in type (a native `clip` export) needs neither.

    Args:
        folder: the `save_pretrained` folder.
        require_readme: whether `README.md` must be there.
        provided: names the push renders into the upload (they count as present).

    Returns:
        The folder's files that would be uploaded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IncompleteModelFolderError(f"{folder} is not a folder")
    problems = []
    on_disk = upload_files(folder)
    files = set(on_disk) | set(provided)

    config = None
    if "config.json" not in files:
        problems.append("config.json is missing (save the model with save_pretrained)")
    else:
        try:
            config = json.loads((folder / "config.json").read_text())
        except json.JSONDecodeError as error:
            problems.append(f"config.json is not valid JSON ({error})")
    if config is not None:
        if not config.get("model_type"):
            problems.append("config.json has no model_type")
        elif not _is_builtin_model_type(config["model_type"]):
            auto_map = config.get("auto_map") or {}
            if "AutoModel" not in auto_map or "AutoConfig" not in auto_map:
                problems.append(
                    "config.json's auto_map lacks AutoConfig/AutoModel entries, so the Hub copy would not load with "
                    "trust_remote_code=True (save the model with an hf_unified model class)"
                )
            problems += [
                f"code file {name} (needed by auto_map / relative imports) is missing"
                for name in code_files(folder)[1]
            ]

    index_name = "model.safetensors.index.json"
    if index_name in files:
        try:
            shards = sorted(set(json.loads((folder / index_name).read_text())["weight_map"].values()))
        except (json.JSONDecodeError, KeyError) as error:
            problems.append(f"{index_name} is not a valid weight index ({error})")
            shards = []
        for shard in shards:
            if shard not in files:
                problems.append(f"weight shard {shard} listed in {index_name} is missing")
            elif (problem := _safetensors_problem(folder / shard)) is not None:
                problems.append(problem)
    elif "model.safetensors" in files:
        if (problem := _safetensors_problem(folder / "model.safetensors")) is not None:
            problems.append(problem)
    else:
        problems.append("model.safetensors (or model.safetensors.index.json with its shards) is missing")

    pickles = sorted(
        p.name for p in folder.iterdir() if p.is_file() and any(fnmatch(p.name, x) for x in PICKLE_PATTERNS)
    )
    if pickles:
        logger.warning("not uploading pickle-based files (use safetensors): %s", ", ".join(pickles))

    if not files.intersection(PROCESSOR_FILES):
        problems.append("processor_config.json (or preprocessor_config.json) is missing: save the processor too")
    if "tokenizer_config.json" not in files or not files.intersection(TOKENIZER_FILES):
        problems.append("tokenizer files are missing (tokenizer_config.json plus tokenizer.json or vocab files)")
    if require_readme and "README.md" not in files:
        problems.append("README.md (the model card) is missing")

    if problems:
        raise IncompleteModelFolderError(
            f"{folder} is not ready to push:\n" + "\n".join(f"- {problem}" for problem in problems)
        )
    return on_disk


def render_missing_files(folder: Path, repo_id: str, endpoint: str | None = None) -> dict[str, bytes]:
    """What the push adds to the folder's files, by path in the repository (nothing is written here).

    - no `README.md`: the rendered card and its widget images;
    - a card of ours still carrying the Hub-id placeholder: that card with `repo_id` put in;
    - a custom-code folder without `handler.py` / `requirements.txt`: the Inference Endpoints files.
    """
    rendered: dict[str, bytes] = {}
    readme = folder / "README.md"
    if not readme.is_file():
        rendered |= render_card_files(folder, repo_id=repo_id, endpoint=endpoint)
    else:
        text = readme.read_text()
        if CARD_MARKER in text and HUB_ID_PLACEHOLDER in text:
            rendered["README.md"] = text.replace(HUB_ID_PLACEHOLDER, repo_id).encode()
    if is_custom_code(json.loads((folder / "config.json").read_text())):
        rendered |= {name: data for name, data in endpoint_files().items() if not (folder / name).is_file()}
    return rendered


def _describe(error: BaseException) -> str:
    """`Type: message`, followed by the errors it was raised from (huggingface_hub wraps HTTP errors of uploads)."""
    parts, seen = [], set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        parts.append(f"{type(error).__name__}: {error}")
        error = error.__cause__ or error.__context__
    return " <- ".join(parts)


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{30,}", "hf_***", text)


def commit_files(
    api: HfApi,
    repo_id: str,
    files: dict[str, Path | bytes],
    *,
    repo_type: str = "model",
    private: bool = False,
    revision: str | None = None,
    commit_message: str,
    token: str | None = None,
    what: str,
    local_note: str = "",
    space_sdk: str | None = None,
):
    """Creates the repository if needed (and the branch), then commits `files` (path in repo -> local file or bytes)
    in one commit. Returns `(repo_url, CommitInfo)`.

    Raises:
        HubPushError: naming the step that failed and what exists on the Hub; `what` says what was being pushed,
            `local_note` is added to the sentence saying that the local folder is unchanged.
    """
    step, remote = "create the repository", "nothing was sent"
    try:
        repo_url = api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True, space_sdk=space_sdk)
        remote = f"the {repo_type} repository {repo_id} exists on the Hub, but no commit was made"
        if revision and revision != constants.DEFAULT_REVISION:
            step = f"create branch {revision!r}"
            api.create_branch(repo_id, branch=revision, repo_type=repo_type, exist_ok=True)
        step = "upload the files"
        operations = [
            CommitOperationAdd(path_in_repo=path, path_or_fileobj=source if isinstance(source, bytes) else str(source))
            for path, source in sorted(files.items())
        ]
        commit = api.create_commit(
            repo_id, operations, repo_type=repo_type, revision=revision, commit_message=commit_message
        )
    except Exception as error:  # every failure becomes one clear, token-free message
        detail = _scrub(_describe(error), token or _saved_token())
        raise HubPushError(
            f"pushing {what} to {repo_id} at {api.endpoint} failed while trying to {step}: {detail}\n"
            f"On the Hub: {remote}. The local folder is unchanged{local_note}; fix the cause and run the push again "
            "(re-pushing is harmless)."
        ) from None
    return repo_url, commit


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Pushes a saved model folder to `repo_id` on the Hub at `endpoint` (default: `HF_ENDPOINT`).

    Args:
        folder: a `save_pretrained` folder of an hf_unified model plus its processor (or of its native CLIP export).
        repo_id: `"org/name"`; created if missing (an existing repo is fine).
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to push to (created from main if missing); default main.
        commit_message: default "Upload {model_type} model with hf-unified".
        token: Hub token; default `HF_TOKEN` or the saved login. Never printed.
        endpoint: Hub URL; default `HF_ENDPOINT` read now, else huggingface.co.

    What the folder lacks for the Hub (card, widget images, endpoint handler; see `render_missing_files`) is
    rendered into the upload; after the commit succeeded those files are written into the folder atomically.
    Nothing in the folder changes before that, whatever fails.

    Returns:
        A `PushResult` saying what was uploaded, rendered and written (`result.summary()` for a message).

    Raises:
        ValueError: a malformed `repo_id`.
        IncompleteModelFolderError: the folder lacks something the Hub model needs (nothing was sent).
        HubPushError: offline mode, no token, or a failed Hub request; the message names the step. The local folder
            is unchanged.
    """
    folder = Path(folder)
    check_can_push(repo_id, token)
    endpoint = resolve_endpoint(endpoint)
    check_model_folder(folder, require_readme=False)  # an incomplete folder is refused before anything is rendered
    rendered = render_missing_files(folder, repo_id, endpoint)
    on_disk = check_model_folder(folder, provided=tuple(rendered))
    uploads: dict[str, Path | bytes] = {name: folder / name for name in on_disk if name not in rendered}
    uploads |= rendered

    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "model")
    repo_url, commit = commit_files(
        HfApi(endpoint=endpoint, token=token),
        repo_id,
        uploads,
        private=private,
        revision=revision,
        commit_message=commit_message or f"Upload {model_type} model with hf-unified",
        token=token,
        what=str(folder),
        local_note=f" ({', '.join(sorted(rendered))} rendered for this upload only, not written)" if rendered else "",
    )
    revision = revision or constants.DEFAULT_REVISION
    result = PushResult(str(repo_url), str(commit.commit_url), revision, sorted(uploads), sorted(rendered))
    try:
        for name, data in sorted(rendered.items()):
            write_atomic(folder / name, data)
            result.written.append(name)
    except OSError as error:
        result.local_error = f"{type(error).__name__}: {error}"
        logger.warning("the push succeeded, but writing the rendered files into %s failed: %s", folder, error)
    return result


def _saved_token() -> str | None:
    try:
        return get_token()
    except Exception:  # no token available is fine here: there is nothing to hide
        return None


__all__ = [
    "HubPushError",
    "IncompleteModelFolderError",
    "PushResult",
    "check_can_push",
    "check_model_folder",
    "commit_files",
    "push_folder",
    "render_missing_files",
    "upload_files",
]
