"""What the Hub tools read from a saved model folder: its config, its code files, which setting values name local
files (writes: `hf_unified.files`)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import", re.M)


def read_json(path: Path, what: str) -> dict | None:
    """The JSON object in `path`, or None when the file does not exist.

    Raises:
        ValueError: the file is not valid JSON or does not hold an object (the message names the file).
    """
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} ({what}) is not valid JSON: {error}") from error
    if not isinstance(data, dict):
        raise ValueError(f"{path} ({what}) must hold a JSON object, got {type(data).__name__}")
    return data


_GLOB = re.compile(r"[*?\[]")
_DRIVE = re.compile(r"^[A-Za-z]:[\\/]")


def is_local_path(value) -> bool:
    """Whether a setting's value names something on this machine (a file, a folder, a glob of shards) rather than a
    Hub id (`org/name`, `name`) or a plain word: absolute or home-relative paths (`/`, `~`, `C:\\`), relative
    ones (`./`, `../`), globs, paths of more than two parts, URLs, and whatever exists here.

    Such values are the user's directory layout (user names, projects, mounts): a model card or anything else
    published shows them as local instead (`hf_unified.hub.model_card`)."""
    if not isinstance(value, str) or not value:
        return False
    if value.startswith(("/", "~", ".", "\\")) or _DRIVE.match(value) or "\\" in value:
        return True
    if _GLOB.search(value) or value.count("/") > 1:  # a Hub id has at most one slash; URLs have more
        return True
    try:
        return os.path.exists(value)
    except (OSError, ValueError):  # a name too long for the file system, a NUL byte: not a path here
        return False


def auto_map_modules(auto_map: dict) -> set[str]:
    """Module names (`modeling_unicl`) that `config.json`'s `auto_map` points at in this repository."""
    modules = set()
    for value in auto_map.values():
        for entry in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(entry, str) and entry and "--" not in entry:  # "repo--module.Class": another repository
                modules.add(entry.rsplit(".", 1)[0])
    return modules


# Every saved file whose `auto_map` names code of the repository (the model's, the processor's, the tokenizer's).
AUTO_MAP_FILES = ("config.json", "processor_config.json", "preprocessor_config.json", "tokenizer_config.json")


def folder_auto_map(folder: Path) -> dict:
    """The `auto_map` entries of every config file of `folder` (`AUTO_MAP_FILES`), merged."""
    merged: dict = {}
    for name in AUTO_MAP_FILES:
        config = read_json(folder / name, "saved config") or {}
        merged |= {f"{name}:{key}": value for key, value in (config.get("auto_map") or {}).items()}
    return merged


def code_files(folder: Path, auto_map: dict | None = None) -> tuple[list[str], list[str]]:
    """The `.py` files transformers loads for `auto_map` (default: `folder_auto_map(folder)`): the modules it names
    and, recursively, their single-dot sibling imports (what `dynamic_module_utils.get_relative_imports` follows).

    Returns:
        `(present, missing)`: sorted file names found in `folder`, and those it lacks.
    """
    if auto_map is None:
        auto_map = folder_auto_map(folder)
    pending, seen, present, missing = auto_map_modules(auto_map), set(), [], []
    while pending:
        module = pending.pop()
        if module in seen:
            continue
        seen.add(module)
        if not module.isidentifier():  # "../../x": transformers loads only flat modules; never read outside
            missing.append(f"{module}.py")
            continue
        path = folder / f"{module}.py"
        if not path.is_file():
            missing.append(path.name)
            continue
        present.append(path.name)
        pending.update(_RELATIVE_IMPORT.findall(path.read_text()))
    return sorted(present), sorted(missing)


def is_custom_code(config: dict) -> bool:
    """Whether a saved config needs the repository's own code (`trust_remote_code`), i.e. has an `auto_map`."""
    return bool(config.get("auto_map"))


__all__ = [
    "AUTO_MAP_FILES",
    "auto_map_modules",
    "code_files",
    "folder_auto_map",
    "is_custom_code",
    "is_local_path",
    "read_json",
]
