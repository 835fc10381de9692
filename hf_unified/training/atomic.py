"""Writing folders so that a crash or a kill never leaves a half-written one.

Everything is first written into a staging folder beside the target, flushed to disk, and then renamed into place.
A folder that already exists (the output folder of an earlier run, with its checkpoints and log) is replaced by
two renames, `target -> .target.previous` and `staging -> target`; a kill between the two leaves the previous
version whole under its hidden name, and `recover_folder` (run at the start of every training run) puts it back.
At no moment does the target hold a mix of old and new files.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def fsync_tree(folder: Path) -> None:
    """Flushes every file of `folder` and the folders themselves (so a rename afterwards publishes whole files)."""
    for root, _, files in os.walk(folder):
        for name in files:
            _fsync(Path(root) / name)
        _fsync(Path(root))


def staging_path(target: Path, label: str = "staging") -> Path:
    return target.with_name(f".{target.name}.{label}")


def previous_path(target: Path) -> Path:
    return target.with_name(f".{target.name}.previous")


def recover_folder(target: Path) -> None:
    """Completes or undoes an interrupted `commit_folder`: restores the previous version if the new one never
    arrived, and removes leftovers of a staging folder or of a finished replacement."""
    target, previous = Path(target), previous_path(Path(target))
    if previous.exists():
        if target.exists():
            shutil.rmtree(previous)
        else:
            os.rename(previous, target)
    if staging_path(target).exists():
        shutil.rmtree(staging_path(target))


def commit_folder(staging: Path, target: Path) -> None:
    """Publishes the complete folder `staging` as `target` (see the module docstring)."""
    staging, target = Path(staging), Path(target)
    fsync_tree(staging)
    if target.exists():
        previous = previous_path(target)
        if previous.exists():
            shutil.rmtree(previous)
        os.rename(target, previous)
        os.rename(staging, target)
        _fsync(target.parent)
        shutil.rmtree(previous)
    else:
        os.rename(staging, target)
        _fsync(target.parent)


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)  # the same bytes, no copy: nothing in them changes
    except OSError:
        shutil.copy2(source, destination)


def replace_folder(target: Path, write: Callable[[Path], None], keep: Callable[[Path], bool]) -> None:
    """Writes a new version of `target` atomically.

    Args:
        write: fills the (empty) staging folder with the new files.
        keep: selects the entries of the current `target` to carry over unchanged when the new version has no entry
            of that name (hard links where the file system allows, else copies: the new files are written first,
            so nothing ever writes through a link into the current version).
    """
    target = Path(target)
    staging = staging_path(target)
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir(parents=True)
    write(staging)
    for entry in sorted(target.iterdir()) if target.exists() else ():
        if keep(entry) and not (staging / entry.name).exists():
            if entry.is_dir():
                shutil.copytree(entry, staging / entry.name, copy_function=_link_or_copy)
            else:
                _link_or_copy(str(entry), str(staging / entry.name))
    commit_folder(staging, target)


def write_text(path: Path, text: str) -> None:
    """Replaces one file atomically (temporary file beside it, flushed, one rename)."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.tmp")
    with temporary.open("w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


__all__ = ["commit_folder", "fsync_tree", "recover_folder", "replace_folder", "staging_path", "write_text"]
