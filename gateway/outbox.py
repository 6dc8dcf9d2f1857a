"""The InfluxDB outbox: line-protocol points queued in the gateway's journal database.

The gateway appends a point in the same SQLite transaction that journals the state
change, so a point exists exactly when the change it describes was committed; the
InfluxDB writer (``gateway.influx``) drains the table in id order and deletes rows only
after the server accepted them. This module does no network I/O: it works on a
``sqlite3.Connection`` handed in and never commits (the caller owns the transaction).

Measurements (see docs/influxdb.md):

- ``space_state``   tags site, zone, space; fields state (string), occupied (integer 1/0)
- ``zone_occupancy`` tags site, zone; fields free, occupied, unknown, closed, total (integers)

The table is bounded by a row cap: when an append pushes it over the cap, the OLDEST
rows are deleted, counted in ``outbox_stats`` (key ``dropped_cap``) and reported in the
log, rate-limited ("outbox full: dropped N oldest points of events from T1 to T2").

The writer's status (its counts, the current error, the last accepted write) is kept in
the journal's ``meta`` table under ``STATUS_KEY``, as JSON (``save_status``): the
stand-alone API (``api.outbox_status``) reads it from there for its ``/metrics`` and the
``influx_failing`` alert (docs/influxdb.md, "Where a failing InfluxDB shows").
"""

from __future__ import annotations

import functools
import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from influxdb_client import Point

from parking.states import SpaceState

log = logging.getLogger(__name__)

SPACE_STATE = "space_state"
ZONE_OCCUPANCY = "zone_occupancy"
ZONE_COUNT_FIELDS: tuple[str, ...] = ("free", "occupied", "unknown", "closed", "total")

# About 140 bytes per row on disk for a typical space_state point (line ~95 bytes plus
# row overhead, measured): 2,000,000 rows is ~280 MB, days of history for a large site.
DEFAULT_MAX_ROWS = 2_000_000
DROPPED_CAP_KEY = "dropped_cap"

STATUS_KEY = "outbox_status"
"""``meta`` key of the InfluxDB writer's status (JSON); ``api.outbox_status`` reads it."""
STATUS_VERSION = 1
META_SCHEMA = "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL)"
"""The journal's own ``meta`` table (``gateway.journal``): the writer may start on a database
the journal has not opened yet."""

SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the writer's in-flight ids stay unique
    measurement TEXT    NOT NULL,
    line        TEXT    NOT NULL,                   -- one InfluxDB line protocol point, ns precision
    ts_ns       INTEGER NOT NULL,                   -- event time, not write time
    queued_at   REAL    NOT NULL                    -- wall time of the append, for outbox age
);
CREATE TABLE IF NOT EXISTS outbox_stats (
    key   TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);
"""


class OutboxCap:
    """The outbox's disk cap and the rate limit of its "outbox full" log line.

    Create one per gateway and pass it to every append, so the cap is one fact in one
    place and the dropped count since the last log line accumulates in one object.
    """

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS, log_interval_s: float = 60.0):
        if max_rows < 1:
            raise ValueError(f"outbox max_rows must be >= 1, got {max_rows}")
        self.max_rows = max_rows
        self.log_interval_s = log_interval_s
        self._lock = threading.Lock()
        self._unlogged = 0
        self._span: tuple[int, int] | None = None  # event times (ns) of the unlogged drops
        self._last_log = -float("inf")

    def report_dropped(self, count: int, span_ns: tuple[int, int] | None = None) -> None:
        """Count dropped rows (``span_ns``: the first and last of their event times) and log
        them, at most once per log interval."""
        with self._lock:
            self._unlogged += count
            if span_ns is not None:
                lo, hi = span_ns if self._span is None else self._span
                self._span = (min(lo, span_ns[0]), max(hi, span_ns[1]))
        self.log_pending()

    def log_pending(self, force: bool = False) -> None:
        """Log the drops not said yet, with their count, if the last line is an interval
        old (or at once with ``force``: the gateway stopping). Called from a timer too:
        the last drops of an outage are said even when no more follow."""
        with self._lock:
            now = time.monotonic()
            if not self._unlogged or (not force and now - self._last_log < self.log_interval_s):
                return
            dropped, self._unlogged, self._last_log = self._unlogged, 0, now
            span, self._span = self._span, None
        when = ""
        if span is not None:  # which stretch of history InfluxDB will lack
            lo, hi = (_iso(ns) for ns in span)
            when = f" of events from {lo} to {hi}" if lo != hi else f" of events at {lo}"
        log.warning(
            "outbox full: dropped %s oldest points%s (cap %s rows); InfluxDB will lack them. It "
            "has been unreachable or refusing writes for too long: raise the cap or fix the "
            "server (drops are counted in parkguide_outbox_dropped_total, said at most once "
            "a minute)",
            dropped,
            when,
            self.max_rows,
        )


DEFAULT_CAP = OutboxCap()


def _iso(ns: int) -> str:
    """An event time (ns since the epoch) as UTC ISO 8601, to the second."""
    return datetime.fromtimestamp(ns / 1e9, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def ensure_schema(conn: sqlite3.Connection) -> None:
    """Create the outbox tables if they do not exist (idempotent; commits nothing)."""
    # Statement by statement: executescript() would first COMMIT the caller's open transaction.
    for statement in SCHEMA.split(";"):
        if statement.strip():
            conn.execute(statement)


def event_time_ns(ts: float) -> int:
    """Event time in UNIX seconds -> integer nanoseconds.

    A float of ~1.8e9 seconds carries ~0.2 us of precision, and ``ts * 1e9`` can land a
    few hundred ns below the intended value (12.345 s -> 12.344999999 s, a different
    millisecond). Rounding to the microsecond first keeps the time the caller meant.
    """
    return round(ts * 1_000_000) * 1_000


def space_state_line(site: str, zone: str, space: str, state: SpaceState | str, ts: float) -> str:
    """Line protocol for one space state change."""
    return f"{_space_state_body(site, zone, space, _state_label(state))} {event_time_ns(ts)}"


def zone_occupancy_line(site: str, zone: str, counts: Mapping[str, int], ts: float) -> str:
    """Line protocol for one zone's counts (free, occupied, unknown, closed, total)."""
    missing = [name for name in ZONE_COUNT_FIELDS if name not in counts]
    if missing:
        raise ValueError(f"zone_occupancy for zone {zone!r} lacks counts {missing}")
    # int() so numpy integers are written as line-protocol integers ("12i"), not floats;
    # fields in name order, as Point writes them.
    fields = ",".join(f"{name}={int(counts[name])}i" for name in _ZONE_FIELDS_SORTED)
    return f"{_zone_key(site, zone)} {fields} {event_time_ns(ts)}"


# Building a Point costs ~50 us, a lot at thousands of changes per second. The escaped
# parts depend only on names (and, for space_state, on one of four states), so each is
# built once by Point and reused; test_influx checks the result equals Point's own line.
_ZONE_FIELDS_SORTED = tuple(sorted(ZONE_COUNT_FIELDS))


@functools.lru_cache(maxsize=1 << 16)
def _space_state_body(site: str, zone: str, space: str, label: str) -> str:
    # Point without a time: "measurement,tags fields", no timestamp
    return (
        Point(SPACE_STATE)
        .tag("site", site)
        .tag("zone", zone)
        .tag("space", space)
        .field("state", label)
        .field("occupied", 1 if label == SpaceState.OCCUPIED.label else 0)
        .to_line_protocol()
    )


@functools.lru_cache(maxsize=1 << 12)
def _zone_key(site: str, zone: str) -> str:
    # Point's line is "measurement,tags fields": with a known single field, the key is
    # what precedes it.
    probe = " free=0i"
    line = (
        Point(ZONE_OCCUPANCY)
        .tag("site", site)
        .tag("zone", zone)
        .field("free", 0)
        .to_line_protocol()
    )
    if not line.endswith(probe):
        raise RuntimeError(f"unexpected line protocol from influxdb-client's Point: {line!r}")
    return line[: -len(probe)]


SpaceChange = tuple[str, str, "SpaceState | str", float]  # (zone, space, new state, ts)
ZoneCounts = tuple[str, Mapping[str, int], float]  # (zone, counts, ts)


def append_space_state(
    conn: sqlite3.Connection,
    site: str,
    zone: str,
    space: str,
    state: SpaceState | str,
    ts: float,
    *,
    cap: OutboxCap = DEFAULT_CAP,
) -> None:
    """Queue a ``space_state`` point in the caller's transaction (no commit)."""
    append_space_states(conn, site, [(zone, space, state, ts)], cap=cap)


def append_space_states(
    conn: sqlite3.Connection,
    site: str,
    changes: Iterable[SpaceChange],
    *,
    cap: OutboxCap = DEFAULT_CAP,
) -> None:
    """Queue ``space_state`` points for a batch of changes in one statement (no commit).

    The same rows as ``append_space_state`` per change, cheaper for a report of many.
    """
    queued_at = time.time()
    rows = [
        (SPACE_STATE, space_state_line(site, zone, space, state, ts), event_time_ns(ts), queued_at)
        for zone, space, state, ts in changes
    ]
    _insert(conn, rows, cap)


def append_zone_occupancy(
    conn: sqlite3.Connection,
    site: str,
    zone: str,
    counts: Mapping[str, int],
    ts: float,
    *,
    cap: OutboxCap = DEFAULT_CAP,
) -> None:
    """Queue a ``zone_occupancy`` point in the caller's transaction (no commit)."""
    append_zone_occupancies(conn, site, [(zone, counts, ts)], cap=cap)


def append_zone_occupancies(
    conn: sqlite3.Connection,
    site: str,
    zones: Iterable[ZoneCounts],
    *,
    cap: OutboxCap = DEFAULT_CAP,
) -> None:
    """Queue ``zone_occupancy`` points for several zones in one statement (no commit)."""
    queued_at = time.time()
    rows = [
        (ZONE_OCCUPANCY, zone_occupancy_line(site, zone, counts, ts), event_time_ns(ts), queued_at)
        for zone, counts, ts in zones
    ]
    _insert(conn, rows, cap)


def _insert(
    conn: sqlite3.Connection, rows: list[tuple[str, str, int, float]], cap: OutboxCap
) -> None:
    if not rows:
        return
    conn.executemany(
        "INSERT INTO outbox (measurement, line, ts_ns, queued_at) VALUES (?, ?, ?, ?)", rows
    )
    _enforce_cap(conn, cap)


def _enforce_cap(conn: sqlite3.Connection, cap: OutboxCap) -> None:
    # min/max of the rowid are two index lookups; count(*) would scan the table on every
    # append. Rows leave only from the front (the writer drains in id order), so the id
    # span is the row count; with a transient hole it overestimates and trims a little early.
    # (Two subqueries: SQLite uses the index for a lone min() or max(), not for both at once.)
    first, last = conn.execute(
        "SELECT (SELECT min(id) FROM outbox), (SELECT max(id) FROM outbox)"
    ).fetchone()
    if first is None or last - first + 1 <= cap.max_rows:
        return
    excess = last - first + 1 - cap.max_rows
    span = conn.execute(
        "SELECT min(ts_ns), max(ts_ns) FROM outbox WHERE id < ?", (first + excess,)
    ).fetchone()
    dropped = conn.execute("DELETE FROM outbox WHERE id < ?", (first + excess,)).rowcount
    if dropped > 0:
        conn.execute(
            "INSERT INTO outbox_stats (key, value) VALUES (?, ?) "
            "ON CONFLICT(key) DO UPDATE SET value = value + excluded.value",
            (DROPPED_CAP_KEY, dropped),
        )
        cap.report_dropped(dropped, None if span[0] is None else (span[0], span[1]))


def save_status(conn: sqlite3.Connection, status: Mapping[str, Any]) -> None:
    """Write the writer's status as the ``meta`` row ``STATUS_KEY`` (creating the table if
    needed); commits only if ``conn`` is in autocommit mode, as the writer's is."""
    conn.execute(META_SCHEMA)
    conn.execute(
        "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
        (STATUS_KEY, json.dumps(dict(status), separators=(",", ":"), ensure_ascii=False)),
    )


def load_status(conn: sqlite3.Connection) -> dict[str, Any] | None:
    """The writer's status as last saved; None without one (no writer ever ran here)."""
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (STATUS_KEY,)).fetchone()
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            return None
        raise
    if row is None:
        return None
    value = json.loads(row[0])
    return value if isinstance(value, dict) else None


def dropped_by_cap(conn: sqlite3.Connection) -> int:
    """Total points the cap has dropped over the database's life."""
    row = conn.execute(
        "SELECT value FROM outbox_stats WHERE key = ?", (DROPPED_CAP_KEY,)
    ).fetchone()
    return int(row[0]) if row else 0


def depth(conn: sqlite3.Connection) -> int:
    """Points waiting in the outbox."""
    return int(conn.execute("SELECT count(*) FROM outbox").fetchone()[0])


def _state_label(state: SpaceState | str) -> str:
    if isinstance(state, SpaceState):
        return state.label
    return SpaceState.parse(state).label
