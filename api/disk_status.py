"""How much room the journal's disk has left, for the ``journal_disk_low`` alert and ``/metrics``.

A gateway whose journal cannot write stops (the signs blank: never a count from a dead
system), and on a quiet site that happens at the next change, however long the disk has
been nearly full. Measured here (``os.statvfs`` of the journal's folder, the disk the WAL and
the journal grow on) a manager is told days before: a warning below
``PARKGUIDE_JOURNAL_DISK_LOW_MB``, critical below a quarter of it, cleared once the free
space is a quarter above the limit again (a disk hovering at the limit would otherwise raise
and clear with every checkpoint).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from api.alerts import Alert, journal_disk_alert

log = logging.getLogger(__name__)

CRITICAL_SHARE = 0.25  # of the limit: below it the alert is critical
CLEAR_ABOVE = 1.25  # times the limit: an open alert clears above it


@dataclass(frozen=True)
class DiskSpace:
    free_bytes: int  # what an unprivileged process may still write (f_bavail)
    size_bytes: int


def disk_space(path: str | Path) -> DiskSpace | None:
    """The free and total bytes of the file system holding ``path`` (None: cannot tell)."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return DiskSpace(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize)


def disk_low(free_bytes: int, low_bytes: int, open_now: str | None) -> str | None:
    """The alert's level for this much free space (None: no alert); ``open_now``: the level
    open now, which holds until the free space is CLEAR_ABOVE its limit."""
    if low_bytes <= 0:
        return None
    for level, limit in (("critical", low_bytes * CRITICAL_SHARE), ("warning", low_bytes)):
        if free_bytes < limit or (open_now == level and free_bytes < limit * CLEAR_ABOVE):
            return level
    return None


class JournalDisk:
    """The journal's disk, read at most every ``refresh_s`` (statvfs is cheap; the API's
    /metrics and alert checks may come often)."""

    def __init__(self, db_path: str | None, low_mb: float, refresh_s: float = 2.0):
        self.folder = Path(db_path).resolve().parent if db_path else None
        self.low_bytes = int(low_mb * 1024 * 1024)
        self.refresh_s = refresh_s
        self._lock = threading.Lock()
        self._read_at = -float("inf")
        self._space: DiskSpace | None = None
        self._open: str | None = None  # the level open now

    def poll(self) -> DiskSpace | None:
        if self.folder is None:
            return None
        with self._lock:
            now = time.monotonic()
            if now - self._read_at >= self.refresh_s:
                self._read_at = now
                self._space = disk_space(self.folder)
            return self._space

    def alert(self) -> Alert | None:
        space = self.poll()
        if space is None:
            return None
        self._open = disk_low(space.free_bytes, self.low_bytes, self._open)
        if self._open is None:
            return None
        limit = self.low_bytes * (CRITICAL_SHARE if self._open == "critical" else 1.0)
        return journal_disk_alert(self._open, str(self.folder), limit)
