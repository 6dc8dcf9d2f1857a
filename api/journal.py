"""Read-only access to the gateway's journal (SQLite, WAL): events and assignments.

The gateway owns these tables and writes them; the API only reads, over
read-only connections opened per request, so a slow dashboard query never
blocks the gateway's commits. A journal that does not exist yet, or lacks a
table, reads as empty.

Zones: the gateway stamps each event with its space's zone of the time (``events.zone``).
Events journalled before it did (NULL, or a journal without the column) take their space's
zone when the journal first kept zones if a site edit has moved it since
(:meth:`JournalReader.zones_first_kept`), else the current site's: :func:`event_zone`.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from gateway.journal import OUTAGES_SQL, down_since

log = logging.getLogger(__name__)

EVENT_COLUMNS = ("id", "ts", "space", "old", "new", "source", "agent", "seq", "note")
"""The columns every journal's events have (``note`` was added by ALTER TABLE in older ones);
the reads add the stored zone and zone closure after them (:attr:`EventRow.zone`)."""

EXPORT_PAGE = 2000
"""Events per page of :meth:`JournalReader.iter_events`: each page is its own short read, so
no read transaction lasts as long as a slow download (it would stop the gateway's WAL
checkpoints from resetting the WAL, which then grows for as long as the client takes)."""

LIST_PROBE = 50_000
"""Newest ids :meth:`JournalReader.events` walks before it reads a time window by index."""

WALK_FIRST, WALK_MAX = 4096, 262_144
"""Ids the first and the largest step of the walk back for spaces' latest events reads
(:meth:`JournalReader.latest_before`): each step is a short read of its own."""

SURE_STATES = ("free", "occupied")
"""A first change after a time that leaves one of these was preceded by an event (a space
starts ``unknown``, or ``closed`` by its site file, without one)."""


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
    zone: str | None = None  # as journalled; None: from before the gateway stored it
    zone_closure: str | None = None  # the zone whose closing (or opening) made this change


def event_zone(e: EventRow, site_zone: Mapping[str, str]) -> str | None:
    """The zone of an event: the one journalled with it, else (older events) the zone the
    current site gives its space (None: the site has no such space)."""
    return e.zone if e.zone is not None else site_zone.get(e.space)


@dataclass(frozen=True)
class EventFilter:
    spaces: tuple[str, ...] | None = None  # None: every space
    since: float | None = None
    until: float | None = None
    # events of this zone (:func:`event_zone`); ``zone_spaces`` are the current site's spaces
    # of it, for the events journalled without a zone
    zone: str | None = None
    zone_spaces: tuple[str, ...] = ()
    source: str | None = None  # "manager", or a bus or camera id
    agent: str | None = None  # the reporting agent, or the manager's user name

    def where(self, stored_zones: bool = True) -> tuple[str, list[object]]:
        """SQL condition and its parameters; ``stored_zones``: the events table has a zone
        column (without one, every event is in its space's zone of the current site)."""
        clauses: list[str] = []
        params: list[object] = []
        if self.spaces is not None:
            clauses.append(f"space IN ({','.join('?' * len(self.spaces))})")
            params.extend(self.spaces)
        if self.zone is not None:
            in_site = f"space IN ({','.join('?' * len(self.zone_spaces))})"
            if stored_zones:
                clauses.append(f"(zone = ? OR (zone IS NULL AND {in_site}))")
                params.append(self.zone)
            else:
                clauses.append(in_site)
            params.extend(self.zone_spaces)
        for column, value in (("source", self.source), ("agent", self.agent)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
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
        self._has_zone = False  # events.zone seen: likewise
        self._has_zone_closure = False  # events.zone_closure seen: likewise
        self._has_ts_index = False  # events_ts seen: likewise
        # history's knowledge of the journal, kept between requests (events are only ever
        # appended; retention forgets the oldest, which changes none of these facts):
        self._top = 0  # the newest event id seen
        self._zoned_to = 0  # events up to this id were looked at for a stored zone
        self._zoned = False  # one had one
        # (id, ts, zone, upto): a space's latest event up to id ``upto``
        self._latest: dict[str, tuple[int, float, str | None, int]] = {}
        self._first: dict[str, tuple[int, float]] = {}  # a space's first event
        self._clear: dict[str, int] = {}  # a space has no event up to this id

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
        columns = self._event_columns()
        where, params = flt.where(self._has_zone)
        if before_id is not None:
            where += " AND id < ?"
            params.append(before_id)
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
        self,
        flt: EventFilter,
        limit: int,
        *,
        after_id: int | None = None,
        page: int | None = None,
    ) -> Iterator[EventRow]:
        """Oldest first (by id), from the event after ``after_id`` on, read ``page`` (default
        :data:`EXPORT_PAGE`) events at a time (for the CSV export).

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
        where, params = flt.where(self._has_zone)
        after = first - 1 if after_id is None else max(first - 1, after_id)
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

    def outages(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        """(start, end, clean) of the gateway's own recorded downtimes that overlap
        [start, end], oldest first (none in a journal of a release before them)."""
        rows = self._query(OUTAGES_SQL, (start, end))
        return [(float(a), float(b), bool(c)) for a, b, c in rows]

    def down_since(self, now: float) -> tuple[float | None, bool]:
        """Where the gateway's downtime began, were it not running now (its clean stop, or
        its last sign of life in the journal), and whether it stopped cleanly."""
        db = self.connect()
        if db is None:
            return None, False
        try:
            return down_since(db, now)
        except sqlite3.OperationalError as exc:  # a journal not made by a gateway yet
            if "no such table" in str(exc):
                return None, False
            raise
        finally:
            db.close()

    def history_input(
        self,
        start: float,
        end: float,
        site_zone: Mapping[str, str],
        unzoned: Mapping[str, str] | None = None,
    ) -> HistoryInput:
        """What zone history over [start, end] is computed from: the state and zone of each
        space at ``start``, and the changes after it with the zone each names.

        A space counts, at a time, in the zone its latest event at or before that time names
        (:func:`event_zone`, with ``unzoned`` for the events journalled without a zone;
        ``site_zone`` when not given), and nowhere when it has no such event (it did not exist yet);
        only spaces of ``site_zone`` (space -> zone, the current site) are looked at. A
        journal without any stored zone is read as before: every space of the site in its
        zone from the start (``zones`` None).

        The states are :meth:`states_at`'s, read the same way (the events after ``start``, by
        index); those events also tell most spaces' zone and existence at ``start``: a space
        whose zone never changed (``zone_changes``, and the zones of these events) is in its
        site zone, and one whose first change after ``start`` leaves it free or occupied, or
        whose checkpointed state began by then, had an event (one with no checkpointed state
        change and no event since had none). Only the rest (a space that was unknown or
        closed then, or moved; any, in a journal never checkpointed) is looked for before
        ``start`` (:meth:`latest_before`), and what is found is kept for the next request."""
        self._event_columns()  # learns whether the events have a zone column
        unzoned = site_zone if unzoned is None else unzoned
        top = self.last_event_id()
        if top < self._top:
            self._forget()  # ids never go back (retention keeps the newest): another journal
        self._top = top
        rows, mark = self.stored_spaces()
        state = {r.space: r.state for r in rows}
        began = {r.space: r.since for r in rows}
        zone_column = "zone" if self._has_zone else "NULL"
        sure: set[str] = set()  # spaces with an event at or before start, from what is read
        for ts, space, new in self._query(
            "SELECT ts, space, new FROM events WHERE id > ? ORDER BY id", (mark,)
        ):
            state[space] = new
            if ts <= start:
                sure.add(space)
        first_after: dict[str, tuple[int, float, str, str | None]] = {}
        changes: list[tuple[float, str, str, str | None]] = []
        moved: set[str] = set()  # spaces whose events name another zone than the site's
        for id_, ts, space, old, new, zone in self._query(
            f"SELECT id, ts, space, old, new, {zone_column} FROM events{self._by_ts()}"
            " WHERE ts > ? ORDER BY id",
            (start,),
        ):
            here = zone if zone is not None else unzoned.get(space)
            if space not in first_after:
                first_after[space] = (id_, ts, old, here)
                state[space] = old
            if ts <= end:
                changes.append((ts, space, new, here))
            if here != site_zone.get(space):
                moved.add(space)
        if not self._has_zone or not self._stored_zones(top):
            return HistoryInput(state, None, changes)
        floors: dict[str, int] = {}  # a space that came into the site: no event at or below
        named: dict[str, set[str]] = {}
        for event, space, old, new in self._query(
            "SELECT event, space, old, new FROM zone_changes ORDER BY rowid"
        ):
            floors.setdefault(space, 0 if old is not None else event)
            named.setdefault(space, set()).update(z for z in (old, new) if z is not None)
        moved.update(space for space, zs in named.items() if len(zs) > 1)
        zones: dict[str, str] = {}
        need: dict[str, int] = {}  # space -> an id none of its events to look for is at or below
        for space, site in site_zone.items():
            after = first_after.get(space)
            first = self._first.get(space)
            if first is not None and first[1] > start:
                if not floors.get(space) and after is not None:  # in the site, not heard yet
                    zones[space] = after[3] or site
                continue  # its first event came later
            since = began.get(space)
            if (
                first is not None
                or space in sure
                or (after is not None and after[2] in SURE_STATES)
                or (after is None and since is not None and 0.0 < since <= start)
            ):
                sure.add(space)
                if space not in moved:
                    zones[space] = site
                    continue
            elif after is None and mark > 0 and not since:
                # no state change checkpointed, none journalled since: never heard. A space
                # of the first site map is the site's (unknown: silence is never free); one
                # the site file added later counts from its first event
                if not floors.get(space):
                    zones[space] = site
                continue
            latest = self._latest.get(space)
            if latest is not None and latest[1] <= start:
                need[space] = latest[3]  # that event, or a later one at or before start
            elif first is not None:
                need[space] = first[0] - 1
            else:
                need[space] = max(floors.get(space, 0), self._clear.get(space, 0))
        found = self.latest_before(start, need, top)
        for space, floor in need.items():
            hit = found.get(space)
            latest = self._latest.get(space)
            if hit is None and latest is not None and latest[1] <= start and latest[3] == floor:
                hit = latest[:3]
            if hit is not None:
                zones[space] = (
                    hit[2] if hit[2] is not None else unzoned.get(space, site_zone[space])
                )
                # none later at or before start, and those after start begin at first_after
                after = first_after.get(space)
                upto = top if after is None else max(hit[0], after[0] - 1)
                if latest is None or latest[3] <= upto:
                    self._latest[space] = (*hit, upto)
            elif space in sure:  # its events then were forgotten (retention)
                after = first_after.get(space)
                zones[space] = (after[3] or site_zone[space]) if after else site_zone[space]
            # none at or before start, nor at or below the floor: it did not exist yet
            elif space in first_after:
                self._first.setdefault(space, first_after[space][:2])
                if not floors.get(space):  # in the site from the start, not heard until then
                    zones[space] = first_after[space][3] or site_zone[space]
            else:
                self._clear[space] = top  # no event at all up to top
                if not floors.get(space):  # never heard, in the site from the start: unknown
                    zones[space] = site_zone[space]
        return HistoryInput(state, zones, changes)

    def latest_before(
        self, ts: float, floors: Mapping[str, int], top: int | None = None
    ) -> dict[str, tuple[int, float, str | None]]:
        """(id, ts, stored zone) of the latest event at or before ``ts`` of each space of
        ``floors`` that has one with an id above its floor (space -> id) and not above
        ``top`` (default: the newest event).

        Walks back from ``top`` along the ids, in steps of :data:`WALK_FIRST` ids
        doubling up to :data:`WALK_MAX` (each a short read of its own); a space drops out of
        the walk when its event is found or the walk passes its floor, and the walk ends
        when none is left: as far back as the least recently changed space asked for."""
        left = dict(floors)
        found: dict[str, tuple[int, float, str | None]] = {}
        zone = "zone" if self._has_zone else "NULL"
        hi = (self.last_event_id() if top is None else top) if left else 0
        step = WALK_FIRST
        while left:
            lo = max(hi - step, min(left.values()))
            if lo >= hi:
                break
            for id_, space, t, z in self._query(
                f"SELECT id, space, ts, {zone} FROM events NOT INDEXED"
                " WHERE id > ? AND id <= ? AND ts <= ?"
                " AND space IN (SELECT value FROM json_each(?)) ORDER BY id DESC",
                (lo, hi, ts, json.dumps(sorted(left))),
            ):
                if space in left:
                    found[space] = (id_, t, z)
                    del left[space]
            left = {space: floor for space, floor in left.items() if floor < lo}
            hi, step = lo, min(2 * step, WALK_MAX)
        return found

    def _stored_zones(self, top: int) -> bool:
        """Some event up to id ``top`` has a stored zone (the newest are looked at first, and
        the events looked at once are not looked at again)."""
        if not self._zoned and top > self._zoned_to:
            self._zoned = bool(
                self._query(
                    "SELECT 1 FROM events NOT INDEXED WHERE id > ? AND id <= ?"
                    " AND zone IS NOT NULL ORDER BY id DESC LIMIT 1",
                    (self._zoned_to, top),
                )
            )
            self._zoned_to = top
        return self._zoned

    def _forget(self) -> None:
        self._top, self._zoned_to, self._zoned = 0, 0, False
        self._latest.clear()
        self._first.clear()
        self._clear.clear()

    def zones_first_kept(self) -> dict[str, str]:
        """Space -> its zone in the first zone map the journal kept, for every space a site
        edit has moved or removed since (``zone_changes``): the zone of its events from
        before the journal kept zones (those have none)."""
        first: dict[str, str | None] = {}
        for space, old in self._query("SELECT space, old FROM zone_changes ORDER BY rowid"):
            first.setdefault(space, old)
        return {space: zone for space, zone in first.items() if zone is not None}

    def zones_of_the_past(self) -> set[str]:
        """Zones a site edit has moved spaces out of or into (``zone_changes``): the events
        of a zone the site no longer has can still be asked for by it."""
        return {
            zone
            for (zone,) in self._query(
                "SELECT old FROM zone_changes WHERE old IS NOT NULL"
                " UNION SELECT new FROM zone_changes WHERE new IS NOT NULL"
            )
        }

    def meta(self, *keys: str) -> dict[str, str]:
        """The gateway's ``meta`` rows of ``keys`` that exist (none without a journal)."""
        marks = ",".join("?" * len(keys))
        return dict(self._query(f"SELECT key, value FROM meta WHERE key IN ({marks})", keys))

    def history_from(self) -> float | None:
        """Wall time before which the gateway pruned its history (--journal-keep-days), or
        None: a state at an earlier time cannot be told from what is left."""
        kept = self.meta("history_from").get("history_from")
        return float(kept) if kept is not None else None

    def changes_between(self, start: float, end: float) -> list[tuple[float, str, str]]:
        """(ts, space, new) with start < ts <= end, in journal order."""
        return self._query(
            f"SELECT ts, space, new FROM events{self._by_ts()} WHERE ts > ? AND ts <= ?"
            " ORDER BY id",
            (start, end),
        )

    def closure(self, space: str) -> EventRow | None:
        """The newest manager's close of ``space`` (a close repeated with a new reason is
        the newest): who closed a closed space, when and why. Walks back from the newest
        event (there is no index by space), as far as that close."""
        rows = self._query(
            f"SELECT {self._event_columns()} FROM events WHERE space = ? AND source = 'manager'"
            " AND new = 'closed' ORDER BY id DESC LIMIT 1",
            (space,),
        )
        return EventRow(*rows[0]) if rows else None

    def closes_since_open(self, space: str, limit: int = 50) -> list[EventRow]:
        """The managers' closes of ``space`` since a manager last opened it, newest first
        (the first keeps it closed; the rest were taken over by it). At most ``limit``."""
        rows = self._query(
            f"SELECT {self._event_columns()} FROM events WHERE space = ? AND source = 'manager'"
            " ORDER BY id DESC LIMIT ?",
            (space, limit),
        )
        out = []
        for row in rows:
            e = EventRow(*row)
            if e.new != "closed":
                break
            out.append(e)
        return out

    def zone_actions_after(self, after_id: int, zone: str, besides: str) -> list[EventRow]:
        """The managers' events of ``zone``'s closing or opening after event ``after_id``
        that were not ``besides``'s, one per action (its first), oldest first: what explains
        ``besides``'s action on the zone that never showed."""
        out: list[EventRow] = []
        for e in self.events_after(after_id):
            if e.source != "manager" or e.zone_closure != zone or e.agent == besides:
                continue
            if out and out[-1].agent == e.agent and out[-1].ts == e.ts:
                continue  # the same action's other spaces
            out.append(e)
        return out

    def closures(self, spaces: Collection[str]) -> dict[str, EventRow]:
        """:meth:`closure` of many spaces in one walk back from the newest event, which stops
        at the oldest of their closes (a zone's spaces closed on their own: one walk per
        space took seconds each on a journal of millions of events)."""
        wanted = set(spaces)
        found: dict[str, EventRow] = {}
        db = self.connect() if wanted else None
        if db is None:
            return found
        try:
            rows = db.execute(
                f"SELECT {self._event_columns()} FROM events WHERE source = 'manager'"
                " AND new = 'closed' ORDER BY id DESC"
            )
            for row in rows:  # read lazily: only as far back as the oldest close wanted
                e = EventRow(*row)
                if e.space in wanted and e.space not in found:
                    found[e.space] = e
                    if len(found) == len(wanted):
                        break
        except sqlite3.OperationalError as exc:
            if "no such table" not in str(exc):
                raise
        finally:
            db.close()
        return found

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
        """EVENT_COLUMNS and ``zone`` as a select list; a journal from before ``note`` or
        ``zone`` gives NULL (the gateway adds the columns when it opens the journal, this
        reader never writes)."""
        if not (self._has_note and self._has_zone and self._has_zone_closure):
            # the journal tail asks 4 times a second: only until every column is seen
            columns = self.table_columns("events")
            self._has_note = self._has_note or "note" in columns
            self._has_zone = self._has_zone or "zone" in columns
            self._has_zone_closure = self._has_zone_closure or "zone_closure" in columns
        note = "note" if self._has_note else "NULL AS note"
        zone = "zone" if self._has_zone else "NULL AS zone"
        closure = "zone_closure" if self._has_zone_closure else "NULL AS zone_closure"
        return ", ".join(EVENT_COLUMNS[:-1]) + f", {note}, {zone}, {closure}"

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
class HistoryInput:
    """:meth:`JournalReader.history_input`'s answer."""

    states: dict[str, str]  # each space's state at the start (as JournalReader.states_at)
    zones: dict[str, str] | None  # zone at the start of each space that existed then
    changes: list[tuple[float, str, str, str | None]]  # (ts, space, new, zone) in journal order


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
