"""How every long-running command stops: SIGTERM (systemd, the demo) or SIGINT (Ctrl-C)."""

from __future__ import annotations

import logging
import signal
import threading


def stop_event_on_signals(logger: logging.Logger) -> threading.Event:
    """An event SIGTERM and SIGINT set (said in ``logger``): a long-running command's loop
    ends on it and its ``finally`` blocks run (a last will, a retained offline health)."""
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        logger.info("signal %d: stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    return stop
