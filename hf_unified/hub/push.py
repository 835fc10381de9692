"""Pushing a saved model folder to the Hugging Face Hub (or any Hub-compatible endpoint in `HF_ENDPOINT`).

`push_folder` uploads an explicit list of what a model repository needs (`plan_upload`), and nothing else:

- the weights: `model.safetensors`, or `model.safetensors.index.json` and the shards it lists;
- `config.json` (and `generation_config.json`) and the code files its `auto_map` loads (custom-code models);
- the processor, image-processor and tokenizer files transformers saves;
- the model card `README.md`, the widget images it shows (`widget/...`), the evaluation record `eval_results.json`
  (the card's numbers), a native export's `hf_unified_export.json`, and the Inference Endpoints `handler.py` and
  `requirements.txt`.

Everything else stays local, and the result lists it: the training log, `training_args.json` (it records the run's
local paths: output, data, checkpoint and logging folders; the card shows the settings that matter with local paths
left out), checkpoints, pickled weights, hidden files, lock files, stray notes or tracker settings. A listed name
that is a symbolic link is followed only while it stays inside the folder (a link to the chosen checkpoint's weights
is the folder's own file); one that leads out of the folder is refused before anything is sent. The record files
(configs, card, evaluation record) must not hold the home folder's or the model folder's absolute path.

The folder is checked before anything is sent: config, code files, weights (opened with the `safetensors` library as
the loader opens them: header, dtypes, shapes, offsets, file size), processor and tokenizer files; every problem is
one line naming the file. What the folder lacks for the Hub is rendered **into the upload only**: the model card
(with its widget images) when there is none, the Hub id in a card rendered before the id was known, and for
custom-code folders the Inference Endpoints `handler.py` and `requirements.txt`. One `HfApi.create_commit` sends the
files; only after it succeeded are the rendered files written into the folder, each atomically. So a push that fails
at any step leaves the folder byte-identical, and its `HubPushError` says the step, what exists on the Hub, and that
nothing local changed. Pushing the same folder again is harmless (unchanged files are skipped, no empty commit).
New repositories are private unless `private=False`. The token never appears in any message.

`check_can_push` runs the checks that need no upload (repo id, offline mode, a token): call it before a long
training run that ends in a push.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants, get_token
from huggingface_hub.utils import HFValidationError, validate_repo_id
from safetensors import SafetensorError, safe_open

from ..files import write_file
from .endpoint import HANDLER_FILE, REQUIREMENTS_FILE, endpoint_files
from .folder import code_files, is_custom_code, read_json
from .model_card import CARD_MARKER, EXPORT_INFO_FILE, HUB_ID_PLACEHOLDER, render_card_files
from .widget import WIDGET_DIR, resolve_endpoint

logger = logging.getLogger(__name__)

# What a model repository holds, by name. The weight shards an index lists, the code files `auto_map` loads and the
# widget images the card shows are added to these; nothing else in the folder is uploaded.
WEIGHTS_NAME = "model.safetensors"
WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
CONFIG_FILES = ("config.json", "generation_config.json")
PROCESSOR_FILES = ("processor_config.json", "preprocessor_config.json")
# The names transformers' tokenizers save (one of VOCABULARY_FILES holds the vocabulary).
VOCABULARY_FILES = (
    "tokenizer.json",
    "vocab.json",
    "vocab.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "tokenizer.model",
)
TOKENIZER_FILES = (
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "merges.txt",
    *VOCABULARY_FILES,
)
CARD_FILE = "README.md"
RECORD_FILES = ("eval_results.json", EXPORT_INFO_FILE)  # the card's evaluation numbers; a native export's record
ENDPOINT_FILES = (HANDLER_FILE, REQUIREMENTS_FILE)
MODEL_FILES = (*CONFIG_FILES, *PROCESSOR_FILES, *TOKENIZER_FILES, *RECORD_FILES, *ENDPOINT_FILES, CARD_FILE)
WIDGET_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp")
# The uploaded files that record the run or the folder (not vocabularies, code or weights): searched for local paths.
TEXT_RECORDS = (
    *CONFIG_FILES,
    *PROCESSOR_FILES,
    "tokenizer_config.json",
    "special_tokens_map.json",
    *RECORD_FILES,
    CARD_FILE,
)
# Weights that are never uploaded: pickle-based formats can run code when loaded.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
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
        left_local: the folder's top-level entries that were not uploaded (not part of a model repository).
    """

    repo_url: str
    commit_url: str
    revision: str
    files: list[str]
    rendered: list[str] = field(default_factory=list)
    written: list[str] = field(default_factory=list)
    local_error: str | None = None
    left_local: list[str] = field(default_factory=list)

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
        if self.left_local:
            lines.append(f"left local (not part of a model repository): {', '.join(self.left_local)}")
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


# The safetensors library's reasons for refusing a file, in words that say what is wrong with it.
_SAFETENSORS_REASONS = (
    (
        "incomplete metadata, file not fully covered",
        "its size is not the size its header describes (truncated or damaged)",
    ),
    ("header too small", "it is too short to hold a safetensors header (empty or truncated)"),
    ("header too large", "its header length is impossible (not a safetensors file)"),
    (
        "invalid shape, data type, or offset",
        "a tensor's byte range does not match its shape and dtype, or lies past the end of the file",
    ),
)


def _safetensors_reason(error: Exception) -> str:
    text = (str(error).splitlines() or [type(error).__name__])[0].removeprefix("Error while deserializing header: ")
    for raw, plain in _SAFETENSORS_REASONS:
        if raw in text:
            return plain
    if match := re.search(r"unknown variant `([^`]*)`, expected one of", text):
        return f"its header names the unknown dtype {match.group(1)!r}"
    if text.startswith("invalid offset for tensor"):
        return f"{text} (its bytes overlap another tensor's or leave a gap)"
    return text


def safetensors_problem(path: Path, name: str) -> tuple[str | None, set[str]]:
    """Opens a weights file as transformers' loader does (`safetensors.safe_open` and a slice of every tensor), so
    the `safetensors` library checks the header, the dtypes, shapes and offsets, and the file size.

    Returns:
        `(problem, names)`: one line naming the file and what is wrong with it (None when it loads), and the names
        of the tensors it holds.
    """
    try:
        with safe_open(path, framework="pt") as weights:
            names = set(weights.keys())
            for tensor in names:
                weights.get_slice(tensor)
    except (SafetensorError, OSError, ValueError) as error:
        return f"{name} cannot be loaded: {_safetensors_reason(error)}", set()
    if not names:
        return f"{name} holds no tensors", set()
    return None, names


@dataclass
class UploadPlan:
    """What a push of a folder sends.

    Args:
        files: path in the repository -> the real path of a regular file inside the folder.
        refused: names on the list that cannot be sent -> why, in one line (a link out of the folder, a broken link,
            not a regular file).
        left_local: the folder's top-level entries that are not uploaded (folders end with `/`).
    """

    files: dict[str, Path] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)
    left_local: list[str] = field(default_factory=list)

    def add(self, root: Path, name: str) -> None:
        """Puts `root/name` on the list if it exists, is a regular file, and stays inside `root` (a resolved path)
        through every symbolic link on the way."""
        path = root / name
        if not os.path.lexists(path):
            return
        real = Path(os.path.realpath(path))
        if not real.is_relative_to(root):
            self.refused[name] = (
                f"{name} is a symbolic link to {real}, outside the folder: a push never follows a link out of the "
                "folder (copy the file in if it belongs to the model)"
            )
        elif not real.exists():
            self.refused[name] = f"{name} is a broken symbolic link (to {real})"
        elif not stat.S_ISREG(real.stat().st_mode):
            self.refused[name] = f"{name} is not a regular file"
        else:
            self.files[name] = real


def _is_file_name(name) -> bool:
    """A name of a file directly in the folder (no folders, no `..`, not hidden)."""
    return isinstance(name, str) and name == Path(name).name and not name.startswith(".")


def _weight_map(path: Path) -> tuple[dict[str, str] | None, str | None]:
    """The `weight_map` of a weight index (tensor name -> shard file), or None and one line saying what is wrong."""
    try:
        index = read_json(path, "weight index")
    except ValueError as error:  # invalid JSON, not an object, not UTF-8
        return None, f"{WEIGHTS_INDEX_NAME} is not a valid weight index ({str(error).splitlines()[0]})"
    weight_map = index.get("weight_map")
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        return None, f"{WEIGHTS_INDEX_NAME} has no weight_map of tensor names to shard files"
    return weight_map, None


def plan_upload(folder: str | Path, card: str | None = None) -> UploadPlan:
    """The explicit list of what a push of `folder` uploads (see the module docstring), nothing read but the config
    files (for `auto_map`), the weight index (for its shards) and the card (for its widget images).

    Args:
        folder: the model folder (a symbolic link to it is fine: the list is of its real contents).
        card: the card the upload will carry, if it is rendered for it (default: the folder's `README.md`).
    """
    root = Path(folder).resolve()
    plan = UploadPlan()
    for name in MODEL_FILES:
        plan.add(root, name)
    plan.add(root, WEIGHTS_NAME)  # with an index too: the check refuses a folder holding both
    plan.add(root, WEIGHTS_INDEX_NAME)
    if WEIGHTS_INDEX_NAME in plan.files:
        weight_map, _ = _weight_map(plan.files[WEIGHTS_INDEX_NAME])
        for shard in sorted(set((weight_map or {}).values())):
            if _is_file_name(shard):
                plan.add(root, shard)
    try:
        present = code_files(root)[0]
    except ValueError:  # a config file that is not JSON: `check_model_folder` says which
        present = []
    for name in present:
        plan.add(root, name)

    if card is None and CARD_FILE in plan.files:
        card = plan.files[CARD_FILE].read_text(errors="replace")
    widget = root / WIDGET_DIR
    if card and widget.is_dir():
        for entry in sorted(widget.iterdir()):
            if entry.suffix.lower() in WIDGET_EXTENSIONS and f"{WIDGET_DIR}/{entry.name}" in card:
                plan.add(root, f"{WIDGET_DIR}/{entry.name}")

    sent = {name.split("/")[0] for name in [*plan.files, *plan.refused]}
    plan.left_local = sorted(f"{e.name}/" if e.is_dir() else e.name for e in root.iterdir() if e.name not in sent)
    return plan


def upload_files(folder: Path) -> list[str]:
    """The files of `folder` that a push uploads, by path in the repository, sorted."""
    return sorted(plan_upload(folder).files)


def _local_path_patterns(folder: Path) -> list[tuple[str, re.Pattern]]:
    """`(path, pattern)` for the absolute paths a published file must not hold: the home folder's and the model
    folder's (as given and resolved), each as written and as JSON escapes it, matched as whole path components."""
    paths = {str(folder.absolute()), str(folder.resolve())}
    try:
        paths |= {str(Path.home()), str(Path.home().resolve())}
    except RuntimeError:  # no home folder known
        pass
    patterns = []
    for path in sorted(paths, key=len, reverse=True):
        if len(Path(path).parts) < 2:  # "/" itself
            continue
        for form in dict.fromkeys((path, json.dumps(path)[1:-1])):
            patterns.append((path, re.compile(r"(?<![\w.-])" + re.escape(form) + r"(?![\w-]|\.\w)")))
    return patterns


def _local_path_problems(folder: Path, contents: Mapping[str, bytes]) -> list[str]:
    patterns = _local_path_patterns(folder)
    problems = []
    for name, data in contents.items():
        text = data.decode("utf-8", errors="replace")
        for path, pattern in patterns:
            if pattern.search(text):
                hint = " (a card hf-unified rendered: delete README.md and push again)" if name == CARD_FILE else ""
                problems.append(f"{name} holds the local path {path}, which would be published: edit it out{hint}")
                break
    return problems


def _is_builtin_model_type(model_type: str) -> bool:
    # The names transformers ships (CONFIG_MAPPING itself also holds the types registered at run time, like ours).
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES

    return model_type in CONFIG_MAPPING_NAMES


def check_model_folder(folder: str | Path, require_readme: bool = True, provided: tuple[str, ...] = ()) -> list[str]:
    """Raises `IncompleteModelFolderError` listing everything that keeps a folder from being pushed, one line each:
    missing files, weights the loader would refuse, links out of the folder, local paths in the files published.

    A folder of a model type transformers does not ship needs an `auto_map` and its code files (Hub custom code);
    a built-in type (a native `clip` export) needs neither.

    Args:
        folder: the `save_pretrained` folder.
        require_readme: whether `README.md` must be there.
        provided: names the push renders into the upload (they count as present).

    Returns:
        The folder's files that would be uploaded.
    """
    return sorted(_check_folder(Path(folder), require_readme, dict.fromkeys(provided)).files)


def _check_folder(folder: Path, require_readme: bool, rendered: Mapping[str, bytes | None]) -> UploadPlan:
    """`check_model_folder` with the rendered files' contents (None: present, contents unknown); returns the plan."""
    if not folder.is_dir():
        raise IncompleteModelFolderError(f"{folder} is not a folder")
    card = rendered.get(CARD_FILE)
    plan = plan_upload(folder, card.decode(errors="replace") if card else None)
    problems = list(plan.refused.values())
    files = set(plan.files) | set(rendered)

    def missing(name: str, problem: str) -> None:
        if name not in plan.refused:  # a refused file is named once, with its own reason
            problems.append(problem)

    config = None
    if "config.json" not in files:
        missing("config.json", "config.json is missing (save the model with save_pretrained)")
    elif "config.json" in plan.files:
        try:
            config = read_json(plan.files["config.json"], "model config")
        except ValueError as error:
            problems.append(f"config.json is not a valid config ({str(error).splitlines()[0]})")
    if config is not None:
        model_type = config.get("model_type")
        if not model_type or not isinstance(model_type, str):
            problems.append("config.json has no model_type")
        elif not _is_builtin_model_type(model_type):
            auto_map = config.get("auto_map")
            if not isinstance(auto_map, dict) or "AutoModel" not in auto_map or "AutoConfig" not in auto_map:
                problems.append(
                    "config.json's auto_map lacks AutoConfig/AutoModel entries, so the Hub copy would not load with "
                    "trust_remote_code=True (save the model with an hf_unified model class)"
                )
            try:
                absent = code_files(folder)[1]
            except ValueError as error:
                problems.append(str(error).splitlines()[0])
                absent = []
            for name in absent:
                missing(name, f"code file {name} (needed by auto_map / relative imports) is missing")

    problems += _weights_problems(plan)

    present = files | set(plan.refused)  # a refused file is named once, with its own reason
    if not present.intersection(PROCESSOR_FILES):
        problems.append("processor_config.json (or preprocessor_config.json) is missing: save the processor too")
    if "tokenizer_config.json" not in present or not present.intersection(VOCABULARY_FILES):
        problems.append("tokenizer files are missing (tokenizer_config.json plus tokenizer.json or vocab files)")
    if require_readme and CARD_FILE not in files:
        missing(CARD_FILE, "README.md (the model card) is missing")

    records = {name: data for name, data in rendered.items() if name in TEXT_RECORDS and data is not None}
    records |= {
        name: plan.files[name].read_bytes() for name in TEXT_RECORDS if name in plan.files and name not in rendered
    }
    problems += _local_path_problems(folder, records)

    if problems:
        raise IncompleteModelFolderError(
            f"{folder} is not ready to push:\n" + "\n".join(f"- {problem}" for problem in problems)
        )
    return plan


def _weights_problems(plan: UploadPlan) -> list[str]:
    """The weights' problems: missing, both layouts at once, an index naming files outside the folder, shards that
    do not load or lack the tensors the index puts there."""
    if WEIGHTS_INDEX_NAME in plan.refused or WEIGHTS_NAME in plan.refused:
        return []  # named with their reason already
    if WEIGHTS_INDEX_NAME not in plan.files:
        if WEIGHTS_NAME not in plan.files:
            return ["model.safetensors (or model.safetensors.index.json with its shards) is missing"]
        return [problem] if (problem := safetensors_problem(plan.files[WEIGHTS_NAME], WEIGHTS_NAME)[0]) else []
    weight_map, problem = _weight_map(plan.files[WEIGHTS_INDEX_NAME])
    if problem:
        return [problem]
    if WEIGHTS_NAME in plan.files and WEIGHTS_NAME not in weight_map.values():
        return [
            f"both {WEIGHTS_NAME} and {WEIGHTS_INDEX_NAME} are here, and transformers would load {WEIGHTS_NAME} "
            "alone: remove the stale one"
        ]
    by_shard: dict[str, list[str]] = {}
    for tensor, shard in weight_map.items():
        by_shard.setdefault(shard, []).append(tensor)
    problems = []
    for shard, tensors in sorted(by_shard.items()):
        if not _is_file_name(shard):
            problems.append(f"{WEIGHTS_INDEX_NAME} lists the shard {shard!r}, which is not a file of this folder")
        elif shard in plan.refused:
            continue
        elif shard not in plan.files:
            problems.append(f"weight shard {shard} listed in {WEIGHTS_INDEX_NAME} is missing")
        else:
            problem, held = safetensors_problem(plan.files[shard], shard)
            absent = sorted(set(tensors) - held)
            if problem:
                problems.append(problem)
            elif absent:
                problems.append(
                    f"{shard} lacks {len(absent)} of the tensors {WEIGHTS_INDEX_NAME} puts there (first: {absent[0]})"
                )
    return problems


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
    """`text` without the token, anything shaped like a Hub token, or credentials written into a URL."""
    if token:
        text = text.replace(token, "***")
    text = re.sub(r"(?<=://)[^/@\s]+@", "***@", text)
    return re.sub(r"hf_[A-Za-z0-9]{30,}", "hf_***", text)


def commit_files(
    api: HfApi,
    repo_id: str,
    files: dict[str, Path | bytes],
    *,
    repo_type: str = "model",
    private: bool = True,
    revision: str | None = None,
    commit_message: str,
    token: str | None = None,
    what: str,
    local_note: str = "",
    space_sdk: str | None = None,
):
    """Creates the repository if needed (and the branch), then commits `files` (path in repo -> local file or bytes)
    in one commit. Returns `(repo_url, CommitInfo)`. A repository created here is private unless `private=False`.

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
        message = (
            f"pushing {what} to {repo_id} at {api.endpoint} failed while trying to {step}: {_describe(error)}\n"
            f"On the Hub: {remote}. The local folder is unchanged{local_note}; fix the cause and run the push again "
            "(re-pushing is harmless)."
        )
        raise HubPushError(_scrub(message, token or _saved_token())) from None
    return repo_url, commit


def push_folder(
    folder: str | Path,
    repo_id: str,
    *,
    private: bool = True,
    revision: str | None = None,
    commit_message: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
) -> PushResult:
    """Pushes a saved model folder to `repo_id` on the Hub at `endpoint` (default: `HF_ENDPOINT`).

    Args:
        folder: a `save_pretrained` folder of an hf_unified model plus its processor (or of its native CLIP export).
        repo_id: `"org/name"`; created if missing (an existing repo is fine).
        private: create the repo private (the default; an existing repo keeps its visibility).
        revision: branch to push to (created from main if missing); default main.
        commit_message: default "Upload {model_type} model with hf-unified".
        token: Hub token; default `HF_TOKEN` or the saved login. Never printed.
        endpoint: Hub URL; default `HF_ENDPOINT` read now, else huggingface.co.

    Only the files of `plan_upload` are sent (the result lists what stayed local). What the folder lacks for the
    Hub (card, widget images, endpoint handler; see `render_missing_files`) is rendered into the upload; after the
    commit succeeded those files are written into the folder atomically. Nothing in the folder changes before
    that, whatever fails.

    Returns:
        A `PushResult` saying what was uploaded, rendered and written (`result.summary()` for a message).

    Raises:
        ValueError: a malformed `repo_id`.
        IncompleteModelFolderError: the folder lacks something the Hub model needs, holds weights the loader would
            refuse, links a listed file out of the folder, or publishes a local path (nothing was sent).
        HubPushError: offline mode, no token, or a failed Hub request; the message names the step. The local folder
            is unchanged.
    """
    folder = Path(folder)
    check_can_push(repo_id, token)
    endpoint = resolve_endpoint(endpoint)
    _check_folder(folder, False, {})  # an incomplete or unsafe folder is refused before anything is rendered
    rendered = render_missing_files(folder, repo_id, endpoint)
    plan = _check_folder(folder, True, rendered)
    # The real paths: what is sent is what was checked, whatever link is changed afterwards.
    uploads: dict[str, Path | bytes] = {name: path for name, path in plan.files.items() if name not in rendered}
    uploads |= rendered
    if pickles := [name for name in plan.left_local if name.endswith(PICKLE_SUFFIXES)]:
        logger.warning("not uploading pickle-based files (use safetensors): %s", ", ".join(pickles))

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
    result.left_local = plan.left_local
    try:
        for name, data in sorted(rendered.items()):
            write_file(folder / name, data)
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
    "UploadPlan",
    "check_can_push",
    "check_model_folder",
    "commit_files",
    "plan_upload",
    "push_folder",
    "render_missing_files",
    "safetensors_problem",
    "upload_files",
]
