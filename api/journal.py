"""Read-only access to the gateway's journal (SQLite, WAL): events and assignments.

The gateway owns these tables and writes them; the API only reads, over
read-only connections opened per request, so a slow dashboard query never
blocks the gateway's commits. A journal that does not exist yet, or lacks a
table, reads as empty.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("id", "ts", "space", "old", "new", "source", "agent", "seq", "note")

EXPORT_PAGE = 2000
"""Events per page of :meth:`JournalReader.iter_events`: each page is its own short read, so
no read transaction lasts as long as a slow download (it would stop the gateway's WAL
checkpoints from resetting the WAL, which then grows for as long as the client takes)."""

LIST_PROBE = 50_000
"""Newest ids :meth:`JournalReader.events` walks before it reads a time window by index."""


@dataclass(frozen=True)
class EventRow:
    id: int
    ts: float
    space: str
    old: str | None
    new: str
    source: str | None
    agent: str | None
    seq: int | None
    note: str | None = None  # a manager's reason for a close or open


@dataclass(frozen=True)
class EventFilter:
    spaces: tuple[str, ...] | None = None  # None: every space
    since: float | None = None
    until: float | None = None

    def where(self) -> tuple[str, list[object]]:
        clauses: list[str] = []
        params: list[object] = []
        if self.spaces is not None:
            clauses.append(f"space IN ({','.join('?' * len(self.spaces))})")
            params.extend(self.spaces)
        if self.since is not None:
            clauses.append("ts >= ?")
            params.append(self.since)
        if self.until is not None:
            clauses.append("ts < ?")
            params.append(self.until)
        return (" AND ".join(clauses) or "1"), params

    @property
    def timed(self) -> bool:
        """A time bound is given: the ``events_ts`` index finds the window."""
        return self.since is not None or self.until is not None


class JournalReader:
    """Queries on the gateway's ``events`` and ``assignments`` tables."""

    def __init__(self, db_path: str | None):
        self.db_path = db_path
        self._has_note = False  # events.note seen: it never goes away, stop asking
        self._has_ts_index = False  # events_ts seen: likewise

    def connect(self) -> sqlite3.Connection | None:
        """A read-only connection, or None when there is no journal yet."""
        if not self.db_path or not Path(self.db_path).exists():
            return None
        uri = Path(self.db_path).resolve().as_uri() + "?mode=ro"
        db = sqlite3.connect(uri, uri=True, timeout=5.0, check_same_thread=False)
        db.execute("PRAGMA busy_timeout = 5000")
        return db

    def _query(self, sql: str, params: list[object] | tuple[object, ...] = ()) -> list[tuple]:
        db = self.connect()
        if db is None:
            return []
        try:
            return db.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return []
            raise
        finally:
            db.close()

    def events(
        self, flt: EventFilter, *, before_id: int | None = None, limit: int = 100
    ) -> list[EventRow]:
        """Newest first; ``before_id`` pages towards older events."""
        where, params = flt.where()
        if before_id is not None:
            where += " AND id < ?"
            params.append(before_id)
        columns = self._event_columns()
        if flt.timed:
            # Most lists are the newest of many events in the window, found by walking back
            # a few newest ids; when that finds ``limit`` of them they are the answer (any
            # other match has a smaller id), else the window is read by its index.
            rows = self._query(
                f"SELECT {columns} FROM events NOT INDEXED WHERE {where}"
                " AND id > (SELECT max(id) FROM events WHERE id < ?) - ?"
                " ORDER BY id DESC LIMIT ?",
                [*params, before_id if before_id is not None else 2**63 - 1, LIST_PROBE, limit],
            )
            if len(rows) == limit:
                return [EventRow(*r) for r in rows]
        # Without the hint SQLite walks every id down from the newest to avoid a sort, the
        # whole journal when a window holds fewer than ``limit`` matching events.
        rows = self._query(
            f"SELECT {columns} FROM events{self._by_ts(flt)} WHERE {where}"
            " ORDER BY id DESC LIMIT ?",
            [*params, limit],
        )
        return [EventRow(*r) for r in rows]

    def iter_events(
        self, flt: EventFilter, limit: int, *, page: int | None = None
    ) -> Iterator[EventRow]:
        """Oldest first, read ``page`` (default :data:`EXPORT_PAGE`) events at a time (for the
        CSV export).

        The events are those of the journal when the export starts: the window's ids are
        read first (by the ``events_ts`` index when a time bound is given), and each page
        walks on from the last id to the window's last in a read of its own. Events are
        appended (only retention deletes, and only the oldest), so the pages together are
        what one read would have given, without a snapshot held open while the client
        downloads.
        """
        page = page or EXPORT_PAGE
        columns = self._event_columns()
        window, window_params = EventFilter(since=flt.since, until=flt.until).where()
        if flt.timed:
            span = self._query(
                f"SELECT min(id), max(id) FROM events{self._by_ts(flt)} WHERE {window}",
                window_params,
            )
        else:  # each of min and max alone is one lookup; together they would scan
            span = self._query("SELECT (SELECT min(id) FROM events), (SELECT max(id) FROM events)")
        if not span or span[0][0] is None:
            return
        first, last = span[0]
        where, params = flt.where()
        after = first - 1
        while limit > 0:
            want = min(page, limit)
            # fetched whole (_query): the read ends before the rows go to the client;
            # NOT INDEXED keeps each page a walk along the ids, not a read of the window
            rows = self._query(
                f"SELECT {columns} FROM events NOT INDEXED WHERE {where}"
                " AND id > ? AND id <= ? ORDER BY id LIMIT ?",
                [*params, after, last, want],
            )
            for r in rows:
                yield EventRow(*r)
            if len(rows) < want:
                return
            limit -= want
            after = rows[-1][0]

    def stored_spaces(self) -> tuple[list[StoredSpace], int]:
        """The ``spaces`` table and the id of the last event it includes, read together:
        the gateway's checkpoint writes both at once, and journals events before it, so
        the events after that id are still to be applied."""
        db = self.connect()
        if db is None:
            return [], 0
        try:
            db.execute("BEGIN")  # one read snapshot for both
            rows = db.execute(
                "SELECT space, state, since, last_seen, agent, obs_since FROM spaces"
            ).fetchall()
            mark = db.execute("SELECT value FROM meta WHERE key = 'checkpoint_event'").fetchone()
            db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            if "no such table" in str(exc):
                return [], 0
            raise
        finally:
            db.close()
        spaces = [StoredSpace(r[0], r[1], r[2], r[3] or None, r[4], r[5] or None) for r in rows]
        return spaces, int(mark[0]) if mark else 0

    def states_at(self, ts: float) -> dict[str, str]:
        """Each space's state as journalled at time ``ts`` (a space without one is absent).

        Read back from now: a space's first event after ``ts`` says what it was before it
        (its ``old``); a space without one is as the checkpointed ``spaces`` table and the
        events after that checkpoint leave it. Only events after ``ts`` and the checkpoint
        are read, so the last day's chart on a journal of years reads a day of events (the
        events table has no index by space, by design: the report path writes it)."""
        rows, mark = self.stored_spaces()
        state = {r.space: r.state for r in rows}
        for _, space, new in self._query(
            "SELECT id, space, new FROM events WHERE id > ? ORDER BY id", (mark,)
        ):
            state[space] = new
        before: dict[str, str] = {}
        for space, old in self._query(
            f"SELECT space, old FROM events{self._by_ts()} WHERE ts > ? ORDER BY id", (ts,)
        ):
            before.setdefault(space, old)
        state.update(before)
        return state

    def history_from(self) -> float | None:
        """Wall time before which the gateway pruned its history (--journal-keep-days), or
        None: a state at an earlier time cannot be told from what is left."""
        rows = self._query("SELECT value FROM meta WHERE key = 'history_from'")
        return float(rows[0][0]) if rows else None

    def changes_between(self, start: float, end: float) -> list[tuple[float, str, str]]:
        """(ts, space, new) with start < ts <= end, in journal order."""
        return self._query(
            f"SELECT ts, space, new FROM events{self._by_ts()} WHERE ts > ? AND ts <= ?"
            " ORDER BY id",
            (start, end),
        )

    def events_after(self, after_id: int, limit: int = 10000) -> list[EventRow]:
        """Events with id > after_id, oldest first (for tailing the journal)."""
        rows = self._query(
            f"SELECT {self._event_columns()} FROM events WHERE id > ? ORDER BY id LIMIT ?",
            (after_id, limit),
        )
        return [EventRow(*r) for r in rows]

    def last_event_id(self) -> int:
        rows = self._query("SELECT MAX(id) FROM events")
        return int(rows[0][0] or 0) if rows else 0

    def _event_columns(self) -> str:
        """EVENT_COLUMNS as a select list; a journal from before ``note`` gives NULL (the
        gateway adds the column when it opens the journal, this reader never writes)."""
        if self._has_note or "note" in self.table_columns("events"):
            self._has_note = True  # the journal tail asks 4 times a second
            return ", ".join(EVENT_COLUMNS)
        return ", ".join(EVENT_COLUMNS[:-1]) + ", NULL AS note"

    def _by_ts(self, flt: EventFilter | None = None) -> str:
        """`` INDEXED BY events_ts`` for a read bounded by time (none when ``flt`` has no time
        bound, or the journal no index). Ordered by id, SQLite would rather walk every id
        than sort a window it guesses is a quarter of the table: with one bound it scans the
        whole journal for an hour of events."""
        if flt is not None and not flt.timed:
            return ""
        if not self._has_ts_index:
            self._has_ts_index = bool(
                self._query(
                    "SELECT 1 FROM sqlite_master WHERE type = 'index' AND name = 'events_ts'"
                )
            )
        return " INDEXED BY events_ts" if self._has_ts_index else ""

    def table_columns(self, table: str) -> list[str]:
        return [r[1] for r in self._query(f"PRAGMA table_info({table})")]

    def count(self, table: str) -> int | None:
        """Rows in a table, or None when it does not exist."""
        if not self.table_columns(table):
            return None
        return int(self._query(f"SELECT COUNT(*) FROM {table}")[0][0])


@dataclass(frozen=True)
class StoredSpace:
    space: str
    state: str
    since: float
    last_seen: float | None
    agent: str | None
    observed_since: float | None = None


class GatewayTables(JournalReader):
    """What the stand-alone API reads of the gateway's own tables (``spaces``, ``assignments``,
    ``outbox``): current state, recent assignments, outbox depth."""

    def recent_assignments(self, limit: int) -> list[str]:
        """Assignment payloads (JSON), newest first."""
        return [
            r[0]
            for r in self._query(
                "SELECT payload FROM assignments ORDER BY id DESC LIMIT ?", (limit,)
            )
        ]

    def outbox_depth(self) -> int:
        return self.count("outbox") or 0

    def outbox_dropped_by_cap(self) -> int:
        """Points the outbox's disk cap dropped, over the journal's life (0 without one)."""
        if not self.table_columns("outbox_stats"):
            return 0
        rows = self._query("SELECT value FROM outbox_stats WHERE key = 'dropped_cap'")
        return int(rows[0][0]) if rows else 0
