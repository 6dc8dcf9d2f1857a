"""How the gateway's InfluxDB writer is doing, as it says in the journal.

The writer (``gateway.influx.InfluxWriter``) keeps its status in the journal's ``meta``
table, key ``outbox_status``, as JSON: its counts since the gateway started (points written,
writes refused for the token, for a missing bucket, points dropped as bad data, retries), the
current error, the latest error and its time, the last accepted write, and why and since when
points wait in the outbox (``failing``). It saves it when something changes (at most every
2 s) and every 30 s regardless. The API reads it here (one small query, at most every
``refresh_s``) for its ``/metrics`` (the same metric names as the gateway's own) and the
``influx_failing`` alert: critical while InfluxDB refuses the token, warning once writes
have failed for ``FAILING_AFTER_S`` for another reason, cleared by an accepted write.

A journal without the row (a gateway without ``--influx-url``, or one from before it) says
nothing: no metrics, no alert. Nor does a row not saved for ``STALE_AFTER_S`` (the gateway is
stopped, or runs without InfluxDB now): what it says is no longer known to be true.
"""

from __future__ import annotations

import json
import logging
import math
import sqlite3
import threading
import time
from dataclasses import dataclass
from typing import Any

from api.alerts import Alert, influx_failing_alert
from api.journal import JournalReader

log = logging.getLogger(__name__)

STATUS_KEY = "outbox_status"
"""The ``meta`` key the writer saves its status under (``gateway.outbox.STATUS_KEY``; not
imported: that module loads influxdb-client, half a second the API does not need)."""

FAILING_AFTER_S = 60.0
"""Writes failing for another reason than the token (unreachable, 5xx, no bucket) for this
long raise the warning: a short outage or a server restart is not an alert."""

STALE_AFTER_S = 150.0
"""A status not saved for this long is not the running writer's (it saves every 30 s)."""

AUTH = "auth"  # ``failing`` while the token is refused (401/403)


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _count(value: Any) -> int:
    number = _number(value)
    return int(number) if number is not None and number >= 0 else 0


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


@dataclass(frozen=True)
class OutboxStatus:
    """The writer's status row, parsed (counts are since the gateway started)."""

    url: str
    bucket: str
    updated: float
    written: int = 0
    auth_failed: int = 0
    not_found: int = 0
    dropped_4xx: int = 0
    retries: int = 0
    error: str | None = None  # the current error; None once a write is accepted
    last_error: str | None = None  # the latest error, kept after recovery
    last_error_at: float | None = None
    last_ok_at: float | None = None
    failing: str | None = None  # why points wait: auth, not_found, unreachable, server, ...
    failing_since: float | None = None

    @classmethod
    def parse(cls, text: str) -> OutboxStatus | None:
        """The row's JSON; None when it is not a status (nothing is made up from it)."""
        try:
            raw = json.loads(text)
        except ValueError:
            return None
        if not isinstance(raw, dict):
            return None
        updated = _number(raw.get("updated"))
        if updated is None:
            return None
        return cls(
            url=_text(raw.get("url")) or "?",
            bucket=_text(raw.get("bucket")) or "?",
            updated=updated,
            written=_count(raw.get("written")),
            auth_failed=_count(raw.get("auth_failed")),
            not_found=_count(raw.get("not_found")),
            dropped_4xx=_count(raw.get("dropped_4xx")),
            retries=_count(raw.get("retries")),
            error=_text(raw.get("error")),
            last_error=_text(raw.get("last_error")),
            last_error_at=_number(raw.get("last_error_at")),
            last_ok_at=_number(raw.get("last_ok_at")),
            failing=_text(raw.get("failing")),
            failing_since=_number(raw.get("failing_since")),
        )

    def alert(self, now: float, failing_after_s: float | None = None) -> Alert | None:
        """``influx_failing``: critical while the token is refused, warning once writes
        have failed for ``failing_after_s`` (default ``FAILING_AFTER_S``) for another reason;
        None while they go through."""
        if self.failing is None:
            return None
        if failing_after_s is None:
            failing_after_s = FAILING_AFTER_S
        since = self.failing_since if self.failing_since is not None else self.updated
        error = self.error or self.last_error or self.failing
        if self.failing == AUTH:
            return influx_failing_alert("token", self.url, self.bucket, error, since)
        if now - since >= failing_after_s:
            return influx_failing_alert("write", self.url, self.bucket, error, since)
        return None


class OutboxStatusReader:
    """Reads the writer's status from the journal, at most every ``refresh_s``.

    Thread-safe: the alert monitor polls from a worker thread, ``/metrics`` from the pool.
    """

    def __init__(
        self,
        journal: JournalReader,
        refresh_s: float = 2.0,
        stale_after_s: float = STALE_AFTER_S,
    ):
        self.journal = journal
        self.refresh_s = refresh_s
        self.stale_after_s = stale_after_s
        self._lock = threading.Lock()
        self._status: OutboxStatus | None = None
        self._read_at = -math.inf  # monotonic
        self._read_failed = False

    def poll(self) -> OutboxStatus | None:
        """The status (None: no writer status, or a stale one); read again when the last
        read is ``refresh_s`` old. A journal that cannot be read keeps the last answer."""
        with self._lock:
            if time.monotonic() - self._read_at < self.refresh_s:
                return self._fresh(self._status)
        try:
            status = self._read()
        except sqlite3.Error as exc:
            with self._lock:
                if not self._read_failed:
                    self._read_failed = True
                    log.warning(
                        "cannot read the InfluxDB writer's status from the journal %s: %s",
                        self.journal.db_path,
                        exc,
                    )
                return self._fresh(self._status)
        with self._lock:
            self._read_failed = False
            self._status, self._read_at = status, time.monotonic()
        return self._fresh(status)

    def _fresh(self, status: OutboxStatus | None) -> OutboxStatus | None:
        if status is None or time.time() - status.updated > self.stale_after_s:
            return None
        return status

    def _read(self) -> OutboxStatus | None:
        value = self.journal.meta(STATUS_KEY).get(STATUS_KEY)
        return OutboxStatus.parse(value) if value else None
