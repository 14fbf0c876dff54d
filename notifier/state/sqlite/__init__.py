"""The SQLite engine: one file, one daemon (a lock file), the embedded default."""

from .backend import SQLiteState
from .file import location_problem, lock_holder, lock_path
from .status import status_path

__all__ = ["SQLiteState", "location_problem", "lock_holder", "lock_path", "status_path"]
