"""hf_unified.files: the one atomic writer (whole or absent, never half-written, normal permissions, nothing left
behind on an error, symbolic links written through) and the folder lock (one holder; dead holders taken over)."""

from __future__ import annotations

import errno
import importlib.util
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from hf_unified.files import FolderLock, FolderLockedError, StagedFolder, recover_folder, staging_folders, write_file
from hf_unified.files import atomic as atomic_module

ROOT = Path(__file__).resolve().parents[2]


def _names(folder: Path) -> list[str]:
    return sorted(path.name for path in folder.iterdir())


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture()
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def test_written_files_and_folders_get_the_umask_permissions_not_tempfiles(tmp_path, umask_022):
    write_file(tmp_path / "card.md", "hello")
    with StagedFolder(tmp_path / "model") as folder:
        (folder / "config.json").write_text("{}")
    assert (tmp_path / "card.md").read_text() == "hello"
    assert _mode(tmp_path / "card.md") == 0o644  # mkstemp's 0600 would hide a shared model from its group
    assert _mode(tmp_path / "model") == 0o755  # mkdtemp's 0700
    os.chmod(tmp_path / "card.md", 0o640)
    write_file(tmp_path / "card.md", b"again")
    assert _mode(tmp_path / "card.md") == 0o640  # a replaced file keeps its mode
    assert _names(tmp_path) == ["card.md", "model"]


@pytest.mark.parametrize("exchange", [True, False], ids=["renameat2", "two-renames"])
def test_a_folder_is_replaced_whole_and_an_error_leaves_the_old_one_and_nothing_else(tmp_path, monkeypatch, exchange):
    if not exchange:
        monkeypatch.setattr(atomic_module, "exchange", lambda first, second: False)
    target = tmp_path / "out"
    with StagedFolder(target) as folder:
        assert folder.name == "out" and folder.parent.name.startswith(".out.")  # same name: a card's title is right
        (folder / "old.txt").write_text("old")
    with StagedFolder(target) as folder:
        (folder / "new.txt").write_text("new")
    assert _names(target) == ["new.txt"] and _names(tmp_path) == ["out"]

    with pytest.raises(OSError, match="No space left"):
        with StagedFolder(target) as folder:
            (folder / "half.txt").write_text("half")
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _names(target) == ["new.txt"] and _names(tmp_path) == ["out"]  # no staging debris


def test_without_an_atomic_exchange_a_failed_or_killed_swap_never_loses_the_old_version(tmp_path, monkeypatch):
    """Without `renameat2` the old version is parked inside the staging folder for an instant: a failure of the second
    rename puts it back at once, and after a kill there `recover_folder` (run by the next trainer) does."""
    target = tmp_path / "out"
    with StagedFolder(target) as folder:
        (folder / "old.txt").write_text("old")
    monkeypatch.setattr(atomic_module, "exchange", lambda first, second: False)
    real_rename = os.rename

    def second_rename_fails(source, destination):
        if Path(source).parent.name.endswith(atomic_module.STAGING_SUFFIX) and Path(source).name == "out":
            raise OSError(errno.EIO, "Input/output error")
        return real_rename(source, destination)

    monkeypatch.setattr(os, "rename", second_rename_fails)
    with pytest.raises(OSError, match="Input/output error"):
        with StagedFolder(target) as folder:
            (folder / "new.txt").write_text("new")
    monkeypatch.setattr(os, "rename", real_rename)
    assert _names(target) == ["old.txt"] and _names(tmp_path) == ["out"]

    staged = StagedFolder(target)  # the state a SIGKILL between the two renames leaves:
    (staged.path / "new.txt").write_text("new")
    os.rename(target, staged.root / atomic_module.PARKED)
    assert not target.exists()
    recover_folder(target)
    assert _names(target) == ["old.txt"] and staging_folders(target) == [] and _names(tmp_path) == ["out"]


def test_a_symlinked_target_is_written_through_and_the_link_kept(tmp_path):
    scratch = tmp_path / "scratch" / "run"
    scratch.mkdir(parents=True)
    (scratch / "old.txt").write_text("old")
    link = tmp_path / "run"
    link.symlink_to(scratch, target_is_directory=True)
    with StagedFolder(link) as folder:
        (folder / "new.txt").write_text("new")
    assert link.is_symlink() and _names(link) == ["new.txt"] and _names(scratch) == ["new.txt"]
    assert _names(tmp_path) == ["run", "scratch"] and _names(scratch.parent) == ["run"]


def test_write_file_error_leaves_the_old_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "log.jsonl"
    write_file(path, "old\n")

    def full(descriptor):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space left"):
        write_file(path, "new\n")
    assert path.read_text() == "old\n" and _names(tmp_path) == ["log.jsonl"]


# ----------------------------------------------------------------------------------------------------------------
# The lock

HOLDER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("lock", {path!r})
lock = importlib.util.module_from_spec(spec)
spec.loader.exec_module(lock)
held = lock.FolderLock({folder!r})
held.acquire()
print("locked", flush=True)
sys.stdin.read()  # hold it until the test closes stdin (or kills this process)
held.release()
"""


def _holder(folder: Path) -> subprocess.Popen:
    """Another process holding the lock of `folder` (the lock module loads alone: no torch to import)."""
    code = HOLDER.format(path=str(ROOT / "hf_unified" / "files" / "lock.py"), folder=str(folder))
    process = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert process.stdout.readline().strip() == "locked"
    return process


def test_a_live_holder_refuses_in_one_line_and_a_dead_ones_lock_is_taken_over(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(FolderLockedError) as refused:
            FolderLock(tmp_path).acquire()
        message = str(refused.value)
        assert f"pid {holder.pid} on host " in message and "in use by another run" in message and "\n" not in message
    finally:
        holder.kill()  # SIGKILL: the lock file stays behind, naming a process that no longer exists
        holder.wait()
    assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
    lock = FolderLock(tmp_path)
    note = lock.acquire()
    assert f"took over the stale lock {tmp_path / 'run.lock'} of pid {holder.pid}" in note
    assert "no longer exists" in note
    lock.release()
    assert _names(tmp_path) == []


def test_a_lock_held_in_this_process_refuses_a_second_holder_and_a_dropped_ones_is_taken_over(tmp_path):
    first = FolderLock(tmp_path)
    assert first.acquire() is None
    with pytest.raises(FolderLockedError, match=f"pid {os.getpid()}"):
        FolderLock(tmp_path).acquire()
    del first  # dropped without release (a trainer built in a notebook and thrown away)
    second = FolderLock(tmp_path)
    assert "this process, by a lock it no longer holds" in second.acquire()
    second.release()
    assert _names(tmp_path) == []


def test_a_requeued_slurm_job_takes_over_its_earlier_incarnations_lock(tmp_path, monkeypatch):
    (tmp_path / "run.lock").write_text(json.dumps({"host": "node-17", "pid": 4242, "slurm_job_id": "99"}))
    monkeypatch.setenv("SLURM_JOB_ID", "98")
    with pytest.raises(FolderLockedError, match="pid 4242 on host node-17"):  # another machine: cannot be checked
        FolderLock(tmp_path).acquire()
    monkeypatch.setenv("SLURM_JOB_ID", "99")
    lock = FolderLock(tmp_path)
    assert "an earlier run of this SLURM job (99)" in lock.acquire()
    lock.release()


def test_the_lock_module_imports_only_the_standard_library():
    for name in ("atomic.py", "lock.py"):
        spec = importlib.util.spec_from_file_location(f"probe_{name[:-3]}", ROOT / "hf_unified" / "files" / name)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)  # no hf_unified, torch or transformers import on the way
    text = "".join((ROOT / "hf_unified" / "files" / name).read_text() for name in ("atomic.py", "lock.py"))
    assert "import torch" not in text and "from hf_unified" not in text and "from .." not in text
