"""Repeating log lines (an outage retried for hours) go out once per interval per key."""

from __future__ import annotations

import logging
import time

from parking.ratelog import RateLimitedLog


def test_one_line_per_key_per_interval_the_rest_at_debug(caplog):
    log = logging.getLogger("test.ratelog")
    caplog.set_level(logging.DEBUG, logger="test.ratelog")
    limited = RateLimitedLog(log, interval_s=0.2)
    assert limited("open", logging.WARNING, "cannot open %s", "cam")
    assert not limited("open", logging.WARNING, "cannot open %s", "cam")
    assert limited("read", logging.WARNING, "read failed")  # another key: its own line
    assert [(r.levelno, r.getMessage()) for r in caplog.records] == [
        (logging.WARNING, "cannot open cam"),
        (logging.DEBUG, "cannot open cam"),
        (logging.WARNING, "read failed"),
    ]
    time.sleep(0.25)
    assert limited("open", logging.WARNING, "cannot open %s", "cam")  # an interval later
    assert not limited("open", logging.WARNING, "cannot open %s", "cam")
    limited.reset_where(lambda key: key == "open")
    assert limited("open", logging.WARNING, "cannot open %s", "cam")  # news again after a reset
