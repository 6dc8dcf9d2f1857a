"""Files only the service's own user may read (the journal holds password hashes and plates)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path


def create_private(path: str | Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (an existing file keeps its mode:
    an operator may have chosen another). SQLite makes the journal's -wal and -shm files
    with the database file's mode, so they are private too."""
    # any other failure (no such directory, no permission) is SQLite's to report, in the
    # words the callers already turn into a one-line error
    with contextlib.suppress(OSError):
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def open_to_others(path: str | Path) -> int | None:
    """The permission bits of ``path`` when any local user may read or write it (None when
    not, or when it does not exist). Its group is left out: a group an operator gives
    access (a backup account) is a choice."""
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    return mode if mode & 0o006 else None
