"""Pushing a saved model folder to the Hugging Face Hub (or any Hub-compatible endpoint in `HF_ENDPOINT`).

`push_folder` checks that the folder is complete (config with `auto_map` and its code files, safetensors weights,
processor files, README.md) before anything is sent, renders a model card when the folder has none, then runs
`HfApi.create_repo(exist_ok=True)` and `HfApi.upload_folder`. Only the top-level files a model needs are uploaded
(no training checkpoints, logs or pickles). Pushing the same folder again is harmless (unchanged files are skipped).
A failure raises `HubPushError` naming the step that failed; the local folder is left as it was, and the token never
appears in any message.
"""

from __future__ import annotations

import json
import logging
import os
import re
import struct
from dataclasses import dataclass
from fnmatch import fnmatch
from pathlib import Path

from huggingface_hub import HfApi, constants

from .model_card import CARD_MARKER, HUB_ID_PLACEHOLDER, write_model_card

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
# Weights that must never be uploaded: pickle-based formats can run code when loaded.
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl", "*.pickle")
TOKENIZER_FILES = ("tokenizer.json", "vocab.json", "vocab.txt", "spiece.model", "sentencepiece.bpe.model")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
_REPO_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*/[A-Za-z0-9][A-Za-z0-9_.-]*$")
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.M)


class HubPushError(RuntimeError):
    """A push failed; the message says which step and why. The local folder is unchanged."""


class IncompleteModelFolderError(ValueError):
    """The folder lacks files a Hub model needs; the message lists every problem."""


@dataclass
class PushResult:
    repo_url: str
    commit_url: str
    revision: str
    files: list[str]


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
    """The top-level files of `folder` that a push uploads, sorted."""
    return sorted(
        path.name
        for path in folder.iterdir()
        if path.is_file() and any(fnmatch(path.name, pattern) for pattern in UPLOAD_PATTERNS)
    )


def check_model_folder(folder: str | Path, require_readme: bool = True) -> list[str]:
    """Raises `IncompleteModelFolderError` listing everything missing from a pushable folder.

    Returns the files that would be uploaded.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise IncompleteModelFolderError(f"{folder} is not a folder")
    problems = []
    files = set(upload_files(folder))

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
        auto_map = config.get("auto_map") or {}
        if "AutoModel" not in auto_map or "AutoConfig" not in auto_map:
            problems.append(
                "config.json's auto_map lacks AutoConfig/AutoModel entries, so the Hub copy would not load with "
                "trust_remote_code=True (save the model with an hf_unified model class)"
            )
        problems += _code_file_problems(folder, auto_map)

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
    return sorted(files)


def _code_file_problems(folder: Path, auto_map: dict) -> list[str]:
    """Every module named in auto_map, and every sibling module those import, must be in the folder."""
    modules = set()
    for value in auto_map.values():
        for entry in value if isinstance(value, (list, tuple)) else [value]:
            if entry and "--" not in entry:  # "repo--module.Class" points at another repo
                modules.add(entry.rsplit(".", 1)[0])
    problems, seen = [], set()
    while modules:
        module = modules.pop()
        if module in seen:
            continue
        seen.add(module)
        path = folder / f"{module}.py"
        if not path.is_file():
            problems.append(f"code file {module}.py (needed by auto_map / relative imports) is missing")
            continue
        modules.update(_RELATIVE_IMPORT.findall(path.read_text()))
    return problems


def _resolve_endpoint(endpoint: str | None) -> str:
    # huggingface_hub reads HF_ENDPOINT once at import; read it again so that a value set later is honoured.
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _scrub(text: str, token: str | None) -> str:
    if token:
        text = text.replace(token, "***")
    return re.sub(r"hf_[A-Za-z0-9]{30,}", "hf_***", text)


def _fill_hub_id(readme: Path, repo_id: str) -> None:
    """Our cards are rendered with a placeholder Hub id when the id is not known yet; put the real one in."""
    text = readme.read_text()
    if CARD_MARKER in text and HUB_ID_PLACEHOLDER in text:
        readme.write_text(text.replace(HUB_ID_PLACEHOLDER, repo_id))


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
        folder: a `save_pretrained` folder of an hf_unified model plus its processor.
        repo_id: `"org/name"`; created if missing (an existing repo is fine).
        private: create the repo private (an existing repo keeps its visibility).
        revision: branch to push to (created from main if missing); default main.
        commit_message: default "Upload {model_type} model with hf-unified".
        token: Hub token; default `HF_TOKEN` or the saved login. Never printed.
        endpoint: Hub URL; default `HF_ENDPOINT` read now, else huggingface.co.

    Before anything is sent the folder's README.md is completed: rendered when missing, and the Hub-id placeholder
    of a card rendered before the id was known is replaced by `repo_id`. Nothing else in the folder is ever written.

    Returns:
        A `PushResult` with the repo URL, the commit URL, the revision and the uploaded file names.

    Raises:
        ValueError: a malformed `repo_id`.
        IncompleteModelFolderError: the folder lacks something the Hub model needs (nothing was sent).
        HubPushError: a Hub request failed; the message names the step. The local folder is unchanged.
    """
    folder = Path(folder)
    if not _REPO_ID.match(repo_id or ""):
        raise ValueError(f"repo_id must look like 'org/name', got {repo_id!r}")
    endpoint = _resolve_endpoint(endpoint)

    check_model_folder(folder, require_readme=False)  # an incomplete folder is refused before anything is written
    if constants.is_offline_mode():
        raise HubPushError("HF_HUB_OFFLINE is set: unset it to push (nothing was sent or written)")
    readme = folder / "README.md"
    if not readme.is_file():
        write_model_card(folder, repo_id=repo_id)
    else:
        _fill_hub_id(readme, repo_id)
    files = check_model_folder(folder)

    model_type = json.loads((folder / "config.json").read_text()).get("model_type", "model")
    api = HfApi(endpoint=endpoint, token=token)
    step = "create the repository"
    try:
        repo_url = api.create_repo(repo_id, repo_type="model", private=private, exist_ok=True)
        if revision and revision != constants.DEFAULT_REVISION:
            step = f"create branch {revision!r}"
            api.create_branch(repo_id, branch=revision, repo_type="model", exist_ok=True)
        step = "upload the files"
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=folder,
            repo_type="model",
            revision=revision,
            commit_message=commit_message or f"Upload {model_type} model with hf-unified",
            allow_patterns=files,
        )
    except Exception as error:  # every failure becomes one clear, token-free message
        detail = _scrub(f"{type(error).__name__}: {error}", token or _saved_token())
        raise HubPushError(
            f"pushing {folder} to {repo_id} at {endpoint} failed while trying to {step}: {detail}\n"
            f"The local folder is unchanged; fix the cause and run the push again (re-pushing is harmless)."
        ) from None
    return PushResult(str(repo_url), str(commit.commit_url), revision or constants.DEFAULT_REVISION, files)


def _saved_token() -> str | None:
    try:
        from huggingface_hub import get_token

        return get_token()
    except Exception:  # no token available is fine here: there is nothing to hide
        return None


__all__ = [
    "HubPushError",
    "IncompleteModelFolderError",
    "PushResult",
    "check_model_folder",
    "push_folder",
    "upload_files",
]
