"""One writer per folder: a lock file that names its holder (host, process id, start time, scheduler job).

    lock = FolderLock(output_dir)
    note = lock.acquire()    # FolderLockedError (one line) when a live process holds it
    ...
    lock.release()

The lock is a file created with `O_CREAT | O_EXCL`, which is atomic on local and network file systems (NFS v3+,
Lustre, GPFS), unlike `flock`, which network file systems may not share between machines. A lock is stale, and is
taken over with a note saying so, when its holder is known to be gone:

- on this host, no process has its pid (or the process with that pid started at another time: a reused pid);
- it was held by this process, by a lock object that no longer exists or holds it (a trainer built in a notebook and
  dropped, a run in this process that ended badly);
- it was held by the same SLURM job (a requeued job: SLURM ended the earlier incarnation before starting this one).

A holder on another host cannot be checked from here: the lock is refused with the host, pid and the file to delete
once that run is known to be gone. Taking over renames the stale file away first, so two processes taking over the
same stale lock cannot both win.
"""

from __future__ import annotations

import atexit
import json
import os
import socket
import time
import uuid
import weakref
from pathlib import Path

LOCK_NAME = "run.lock"
# The locks this process holds, by resolved lock-file path; an entry leaves with its lock object.
_HELD_HERE: weakref.WeakValueDictionary[str, FolderLock] = weakref.WeakValueDictionary()


class FolderLockedError(RuntimeError):
    """Another live process holds the folder's lock; the one-line message names it."""


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, Linux), or None where that cannot be read."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 of `man 5 proc`, counted after the command name


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _read(path: Path) -> dict | None:
    try:
        holder = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def describe_holder(holder: dict) -> str:
    job = f", SLURM job {holder['slurm_job_id']}" if holder.get("slurm_job_id") else ""
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')}{job})"


class FolderLock:
    """The lock of `folder` (`folder/run.lock`); see the module docstring."""

    def __init__(self, folder: str | Path, name: str = LOCK_NAME):
        self.path = Path(folder) / name
        self.token: str | None = None
        self._key = os.path.realpath(self.path)  # how this process's held locks are recorded

    @property
    def held(self) -> bool:
        return self.token is not None

    def _me(self) -> dict:
        return {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "process_start": _process_start(os.getpid()),
            "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
            "since": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "token": uuid.uuid4().hex,
        }

    def _stale_reason(self, holder: dict) -> str | None:
        """Why `holder` is known to be gone, or None when it may be alive."""
        job = os.environ.get("SLURM_JOB_ID")
        if job and holder.get("slurm_job_id") == job:
            return f"an earlier run of this SLURM job ({job}), which SLURM ended before requeueing it"
        if holder.get("host") != socket.gethostname():
            return None
        pid = holder.get("pid")
        if not isinstance(pid, int):
            return None
        if pid == os.getpid():
            if self._key in _HELD_HERE:
                return None
            return "this process, by a lock it no longer holds (dropped without release)"
        if not _alive(pid):
            return "a process that no longer exists"
        started = holder.get("process_start")
        if started is not None and _process_start(pid) not in (None, started):
            return "a process that no longer exists (its pid now belongs to another process)"
        return None

    def _create(self, me: dict) -> bool:
        try:
            descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(me, handle)
            handle.flush()
            os.fsync(handle.fileno())
        return True

    def _take_over(self, holder: dict) -> bool:
        """Moves the stale lock `holder` away; False when another process changed the lock file meanwhile."""
        aside = self.path.with_name(f".{self.path.name}.stale-{uuid.uuid4().hex[:8]}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return False  # someone else took it over first
        if _read(aside) != holder:  # a new holder's lock was moved: give it back
            try:
                os.link(aside, self.path)
            except FileExistsError:
                pass
            aside.unlink(missing_ok=True)
            return False
        aside.unlink(missing_ok=True)
        return True

    def acquire(self) -> str | None:
        """Takes the lock; returns a note when a stale lock was taken over (None otherwise).

        Raises:
            FolderLockedError: a live (or uncheckable) process holds it.
        """
        if self.held:
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = self._me()
        note = None
        for _ in range(5):
            if self._create(me):
                self.token = me["token"]
                _HELD_HERE[self._key] = self
                return note
            holder = _read(self.path)
            if holder is None:
                raise FolderLockedError(
                    f"{self.path.parent} is locked by {self.path}, which cannot be read (being written by another "
                    f"run, or damaged): if no run uses this folder, delete {self.path}"
                )
            reason = self._stale_reason(holder)
            if reason is None:
                raise FolderLockedError(
                    f"{self.path.parent} is in use by another run: {describe_holder(holder)}; wait for it to end or "
                    f"use another folder (if that run is gone, delete {self.path})"
                )
            if self._take_over(holder):
                note = f"took over the stale lock {self.path} of {describe_holder(holder)}: {reason}"
        raise FolderLockedError(f"{self.path.parent}: could not take its lock {self.path} (other runs competing)")

    def release(self) -> None:
        """Removes the lock file if it is still this holder's."""
        if not self.held:
            return
        holder = _read(self.path)
        if holder is not None and holder.get("token") == self.token:
            self.path.unlink(missing_ok=True)
        _HELD_HERE.pop(self._key, None)
        self.token = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


@atexit.register
def _release_at_exit() -> None:
    """A process that ends normally frees what it still holds (a kill leaves a lock the next holder takes over)."""
    for lock in list(_HELD_HERE.values()):
        lock.release()


__all__ = ["FolderLock", "FolderLockedError", "LOCK_NAME", "describe_holder"]
