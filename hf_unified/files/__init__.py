"""Files and folders written safely: atomic writes (`atomic`) and one writer per folder (`lock`).

The core of the package's file handling, imported by every subpackage (hub, conversion, training); it imports only
the standard library.
"""

from .atomic import StagedFolder, carry_over, real_path, recover_folder, staging_folders, write_file
from .lock import LOCK_NAME, FolderLock, FolderLockedError

__all__ = [
    "FolderLock",
    "FolderLockedError",
    "LOCK_NAME",
    "StagedFolder",
    "carry_over",
    "real_path",
    "recover_folder",
    "staging_folders",
    "write_file",
]
