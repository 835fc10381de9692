"""Writing files and folders so that a crash, a kill or a full disk never leaves a half-written one.

One protocol for everything the package writes (model folders, checkpoints, exports, conversions, tokenizers, model
cards, logs): the new content is written under a hidden name in the target's own folder (the same file system, so the
last step is a rename), flushed to disk, and published by one rename.

- `write_file(path, data)`: one file. A temporary file beside it is written, flushed and `os.replace`d over `path`: a
  reader sees the old file or the new one, never a part.
- `StagedFolder(target)`: a folder. The new version is written into `<parent>/.<name>.<random>.partial/<name>` (the
  same name as the target, so whatever a writer derives from the folder's name, such as a model card's title, is
  right), flushed, and published: renamed into place when `target` is absent, or exchanged with the old version in one
  atomic `renameat2(RENAME_EXCHANGE)` where the system has it (Linux on local file systems); elsewhere the old version
  is first parked inside the staging folder, and `recover_folder` puts it back after a kill between the two renames.
  The staging folder (holding the old version after an exchange) is then deleted. On an error nothing is published,
  the staging folder is removed and `target` is as it was.
- A `target` that is a symbolic link to a folder (an output folder on a scratch disk) is written through: the folder
  it points to is replaced, the link is kept.
- Files and folders get the permissions a plain `open()` / `mkdir()` would give (the umask), or those of the version
  they replace: `tempfile` creates its files 0600 and its folders 0700, which would hide a shared model from a group.
  What libraries write into a staged folder is widened to the umask too when it is published (safetensors writes its
  weights 0600), never narrowed.

This module imports only the standard library, so every subpackage (hub, conversion, training) can use it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path

STAGING_SUFFIX = ".partial"  # hidden staging folders are named `.<target name>.<random>.partial`
PARKED = "previous"  # inside a staging folder: the old version, between the two renames of a replacement

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; restored at once
    os.umask(mask)
    return mask


def _mode(existing: Path, default: int) -> int:
    """The permission bits for a new version of `existing`: its own, else `default` under the umask."""
    try:
        return stat.S_IMODE(os.stat(existing).st_mode)
    except FileNotFoundError:
        return default & ~_umask()


def _fsync(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _fsync_folder(path: Path) -> None:
    """Flushes a folder's entries; a file system that cannot sync folders (some network and FUSE ones) is let be."""
    try:
        _fsync(path)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF):
            raise


def _widen_to_umask(path: Path, default: int) -> None:
    """Adds the permission bits a plain `open()` / `mkdir()` would give (`default` under the umask) to a file or
    folder a library created narrower (safetensors writes its files 0600); bits it has are kept (never narrowed)."""
    mode = stat.S_IMODE(os.lstat(path).st_mode)
    wanted = mode | (default & ~_umask())
    if wanted != mode:
        os.chmod(path, wanted)


def _honour_umask(folder: Path) -> None:
    """Gives every folder and file of a staged tree at least the umask's permissions, so that a saved model is
    readable like any other (a serving container running as another user). Links are not followed, and files with
    other hard links (carried over from the version being replaced) keep their modes: they are not new."""
    for root, _, files in os.walk(folder):
        _widen_to_umask(Path(root), 0o777)
        for name in files:
            path = Path(root) / name
            info = os.lstat(path)
            if stat.S_ISREG(info.st_mode) and info.st_nlink == 1:
                _widen_to_umask(path, 0o666)


def fsync_tree(folder: Path) -> None:
    """Flushes every file of `folder` and the folders themselves (a rename afterwards publishes whole files)."""
    for root, _, files in os.walk(folder):
        for name in files:
            if not os.path.islink(os.path.join(root, name)):
                _fsync(Path(root) / name)
        _fsync_folder(Path(root))


def real_path(path: str | Path) -> Path:
    """`path` with every symbolic link resolved (also when the last parts do not exist yet)."""
    return Path(os.path.realpath(path))


def write_file(path: str | Path, data: bytes | str) -> None:
    """Replaces the file `path` atomically with `data` (text is written as UTF-8).

    The bytes go to a temporary file beside `path` (with `path`'s mode, or the umask's), are flushed to disk and
    replace `path` in one `os.replace`; on an error the temporary file is removed and `path` is unchanged.
    """
    path = Path(path)
    if isinstance(data, str):
        data = data.encode("utf-8")
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(descriptor, _mode(path, 0o666))
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def _libc_renameat2():
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):  # not glibc / musl on Linux
        return None
    function.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return function


_renameat2 = _libc_renameat2()


def exchange(first: Path, second: Path) -> bool:
    """Swaps two existing paths in one atomic step (`renameat2(RENAME_EXCHANGE)`); False where the system or the file
    system cannot (then nothing happened)."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(first), _AT_FDCWD, os.fsencode(second), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV):
        return False
    raise OSError(code, os.strerror(code), str(first), None, str(second))


class StagedFolder:
    """A new version of the folder `target`, written aside and published at once (see the module docstring).

        with StagedFolder(output) as folder:   # an empty folder named like `output`
            model.save_pretrained(folder)      # published when the block ends; removed if it raises

    Or step by step: `.path`, then `commit()` or `discard()`, or `keep_as(name)` to leave what was written under a
    visible name beside the target.
    """

    def __init__(self, target: str | Path):
        self.target = real_path(target)
        if self.target.exists() and not self.target.is_dir():
            raise FileExistsError(f"{target} exists and is not a folder")
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.root = Path(
            tempfile.mkdtemp(prefix=f".{self.target.name}.", suffix=STAGING_SUFFIX, dir=self.target.parent)
        )
        self.path = self.root / self.target.name
        try:
            self.path.mkdir()
            os.chmod(self.path, _mode(self.target, 0o777))
        except BaseException:
            self.discard()
            raise

    def __enter__(self) -> Path:
        return self.path

    def __exit__(self, kind, error, traceback) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()

    def commit(self) -> None:
        """Publishes the staged folder as `target` (replacing an existing version) and removes the staging folder."""
        try:
            _honour_umask(self.path)
            fsync_tree(self.path)
            if self.target.is_dir():
                if not exchange(self.path, self.target):
                    parked = self.root / PARKED
                    os.rename(self.target, parked)
                    try:
                        os.rename(self.path, self.target)
                    except BaseException:
                        os.rename(parked, self.target)
                        raise
            elif os.path.lexists(self.target):
                raise FileExistsError(f"{self.target} exists and is not a folder")
            else:
                os.rename(self.path, self.target)
            _fsync_folder(self.target.parent)
        except BaseException:
            self.discard()
            raise
        self.discard()  # now the old version, if there was one

    def discard(self) -> None:
        """Removes the staging folder and everything in it."""
        shutil.rmtree(self.root, ignore_errors=True)

    def keep_as(self, name: str) -> Path:
        """Moves what was written so far to `<target's folder>/<name>` (a visible folder that no recovery deletes)
        and removes the staging folder; returns the new path."""
        kept = self.target.parent / name
        os.rename(self.path, kept)
        self.discard()
        return kept


def _link_or_copy(source: str, destination: str) -> None:
    try:
        os.link(source, destination)  # the same bytes, no copy: nothing ever writes into them
    except OSError:
        shutil.copy2(source, destination)


def carry_over(source: Path, staging: Path, keep: Callable[[Path], bool]) -> None:
    """Copies the entries of `source` selected by `keep` into `staging` where it has no entry of that name (hard
    links where the file system allows, else copies; symbolic links stay links)."""
    source = Path(source)
    for entry in sorted(source.iterdir()) if source.is_dir() else ():
        destination = staging / entry.name
        if not keep(entry) or os.path.lexists(destination):
            continue
        if entry.is_symlink():
            os.symlink(os.readlink(entry), destination)
        elif entry.is_dir():
            shutil.copytree(entry, destination, symlinks=True, copy_function=_link_or_copy)
        else:
            _link_or_copy(str(entry), str(destination))


def staging_folders(target: str | Path) -> list[Path]:
    """The staging folders a `StagedFolder(target)` may have left behind (a killed process)."""
    target = real_path(target)
    prefix = f".{target.name}."
    if not target.parent.is_dir():
        return []
    return sorted(
        entry
        for entry in target.parent.iterdir()
        if entry.name.startswith(prefix) and entry.name.endswith(STAGING_SUFFIX) and entry.is_dir()
    )


def recover_folder(target: str | Path, remove_staging: bool = True) -> None:
    """Undoes what a killed `StagedFolder(target)` left: puts the parked old version back when the new one never
    arrived, and (`remove_staging`) deletes staging folders. Only for a target no other process is writing (the
    trainer holds its run lock): another writer's staging folder would be deleted too."""
    target = real_path(target)
    for root in staging_folders(target):
        parked = root / PARKED
        if parked.is_dir() and not os.path.lexists(target):
            os.rename(parked, target)
        if remove_staging:
            shutil.rmtree(root, ignore_errors=True)


__all__ = [
    "StagedFolder",
    "carry_over",
    "exchange",
    "fsync_tree",
    "real_path",
    "recover_folder",
    "staging_folders",
    "write_file",
]
