"""Log lines that repeat (an outage retried for hours, a flood of bad input) at most once
per interval per key; the repeats go to DEBUG, so a debug log still has every one."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class RateLimitedLog:
    """At most one line per key per ``interval_s`` at its level; the first always goes out."""

    def __init__(self, logger: logging.Logger, interval_s: float = 60.0):
        self.logger = logger
        self.interval_s = interval_s
        self._last: dict[str, float] = {}

    def __call__(self, key: str, level: int, msg: str, *args: Any, exc_info: bool = False) -> bool:
        """Log ``msg`` at ``level`` unless ``key`` was logged within the interval (then at
        DEBUG); True if it went out at ``level``."""
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self.logger.debug(msg, *args, exc_info=exc_info)
            return False
        self._last[key] = now
        self.logger.log(level, msg, *args, exc_info=exc_info)
        return True

    def reset_where(self, matches: Callable[[str], bool]) -> None:
        """The next line of these keys is news again (e.g. after a recovery)."""
        for key in [k for k in self._last if matches(k)]:
            del self._last[key]
