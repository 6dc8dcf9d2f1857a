"""The gateway's journal: SQLite in WAL mode.

Every accepted state change (time, space, old, new, source, agent, boot, seq) is
committed before anything derived from it is published: one ``pending_changes``
row per report, its changes packed as JSON (one row and no index to write on the
report-to-sign path). The checkpoint, written after publishing, expands them into
``events`` (one row per change with the zone of its space then, from ``space_zones``:
what history and exports read) and ``agents``
((boot, seq), so replays are still refused after a restart), and writes
``spaces`` (current state per space) and ``signs`` (what every sign shows); the
meta key ``checkpoint_event`` is the last event those include. ``assignments``
keeps the holds given to arriving cars. ``space_zones`` is the site's zone of every space,
written at start (:meth:`Journal.put_space_zones`); ``zone_changes`` says after which event
a space moved, came or went, so history can tell which spaces' zones differ over time.

A restart expands what is pending, loads the checkpoint and replays the events
after it (:meth:`Journal.events_after`);
:func:`stored_signs` returns the signs only when no event is newer than them, so
a restarted gateway can republish consistent signs before it has loaded the site
and the allocation core.

Durability: ``journal_mode=WAL`` with ``synchronous=NORMAL`` commits by
appending to the WAL file without an fsync per commit. A committed transaction
is in the operating system's page cache, so it survives the gateway process
being killed (``kill -9``, a crash); only a power loss or kernel crash can lose
the last commits (SQLite docs, "WAL mode ... synchronous=NORMAL"). That is the
right trade here: an fsync per report would cap throughput at the disk's flush
rate, and after a power loss the edge agents' snapshots rebuild the state.
"""

from __future__ import annotations

import contextlib
import fcntl
import math
import os
import sqlite3
from collections.abc import Collection, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from parking.private import create_private

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS events(
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, space TEXT NOT NULL, old TEXT NOT NULL,
    new TEXT NOT NULL, source TEXT, agent TEXT, seq INTEGER, note TEXT, zone TEXT,
    zone_closure TEXT);
-- history and exports read months of events by time. No index of every event by space:
-- each index costs every change (~90 us a report when events were written on the path to
-- the signs); a space's events are found by scanning back from the newest.
CREATE INDEX IF NOT EXISTS events_ts ON events(ts);
-- managers' actions (few) by space: who closed a space, what a zone's closure still holds.
-- Partial: a sensor's event is not written to it (events are written by the checkpoint,
-- not on the path to the signs, and the WHERE is all a sensor's row costs)
CREATE INDEX IF NOT EXISTS events_manager ON events(space) WHERE source = 'manager';
CREATE TABLE IF NOT EXISTS spaces(
    space TEXT PRIMARY KEY, state TEXT NOT NULL, sensed TEXT NOT NULL, closed INTEGER NOT NULL,
    since REAL NOT NULL, obs_since REAL NOT NULL, last_seen REAL NOT NULL, agent TEXT)
    WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS agents(
    agent TEXT PRIMARY KEY, boot TEXT, seq INTEGER, online INTEGER NOT NULL,
    last_seen REAL NOT NULL);
-- boots an agent replaced (a late replay of one is refused after a restart too): the
-- old boot when a newer one takes its place, here and in expand_pending
CREATE TABLE IF NOT EXISTS retired_boots(
    agent TEXT NOT NULL, boot TEXT NOT NULL, ts REAL NOT NULL, PRIMARY KEY(agent, boot));
-- an upsert, not INSERT OR REPLACE: inside a trigger fired by an upsert (expand_pending)
-- SQLite applies the outer statement's ABORT, and a boot retired twice (replaced while
-- its successor was still pending) would fail every checkpoint and every start after it.
-- Made in Journal.__init__ (dropped and made again: older journals have the OR REPLACE one)
CREATE TABLE IF NOT EXISTS assignments(
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, entrance TEXT NOT NULL, class TEXT NOT NULL,
    space TEXT, zone TEXT, hold_expires REAL, plate TEXT, request_id TEXT,
    payload TEXT NOT NULL, released REAL, cancelled REAL);
-- open holds are the few newest rows: found by expiry (restart, a car seen in one)
CREATE INDEX IF NOT EXISTS assignments_expiry ON assignments(hold_expires);
-- a gate that sends an arrival again (QoS 1 redelivery, a retry) gets the same answer
CREATE INDEX IF NOT EXISTS assignments_request ON assignments(entrance, request_id)
    WHERE request_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
-- the report-to-sign path commits one row per report (or per gateway verdict): its
-- changes as JSON [[space, old, new(, source)], ...]; the checkpoint expands them into
-- events and the agents' sequences (expand_pending) and deletes them
CREATE TABLE IF NOT EXISTS pending_changes(
    id INTEGER PRIMARY KEY, ts REAL NOT NULL, source TEXT, agent TEXT, boot TEXT, seq INTEGER,
    changes TEXT NOT NULL);
-- derived data worth keeping across restarts (the lane graph's driving distances)
CREATE TABLE IF NOT EXISTS cache(key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS signs(
    display TEXT PRIMARY KEY, topic TEXT NOT NULL, content TEXT NOT NULL,
    expires_s REAL NOT NULL);
-- the site's zone of every space (put_space_zones, at start): expand_pending stamps each event
-- with it, so history and exports keep the zone of the time after a space moves
CREATE TABLE IF NOT EXISTS space_zones(space TEXT PRIMARY KEY, zone TEXT NOT NULL) WITHOUT ROWID;
-- what put_space_zones changed: events after ``event`` (an events id) have ``space`` in zone
-- ``new`` (NULL: the site dropped it), those before in ``old`` (NULL: it was not in the site)
CREATE TABLE IF NOT EXISTS zone_changes(
    event INTEGER NOT NULL, space TEXT NOT NULL, old TEXT, new TEXT);
-- the gateway's own downtime, [start, end) in wall time, recorded at the start after it
-- (record_outage): history renders it unknown. ``clean``: the run before stopped cleanly
CREATE TABLE IF NOT EXISTS outages(
    start REAL NOT NULL, end REAL NOT NULL, clean INTEGER NOT NULL);
"""

BOOT_RETIRED_TRIGGER = """
CREATE TRIGGER agents_boot_retired AFTER UPDATE OF boot ON agents
    WHEN old.boot IS NOT NULL AND old.boot IS NOT new.boot
    BEGIN INSERT INTO retired_boots VALUES (old.agent, old.boot, new.last_seen)
        ON CONFLICT(agent, boot) DO UPDATE SET ts = excluded.ts; END"""

PLATE_INDEXES = (
    "CREATE INDEX IF NOT EXISTS assignments_plate ON assignments(plate) WHERE plate IS NOT NULL",
    "CREATE INDEX IF NOT EXISTS assignments_plate_due"
    " ON assignments(coalesce(hold_expires, ts)) WHERE plate IS NOT NULL",
)
"""The plates still kept, by value (an erasure) and by when they are due to be forgotten
(the oldest first, in steps of milliseconds even on a year of plates kept by an older
release)."""
_NO_PLATE = "plate = NULL, payload = json_set(payload, '$.plate', NULL)"

WAL_SIZE_LIMIT_BYTES = 64 * 1024 * 1024
"""The WAL file is cut back to this size when a checkpoint lets writing start over at its
beginning (SQLite's journal_size_limit)."""

PRUNE_STEP_ROWS = 200
"""Rows of each table one prune step deletes: a few milliseconds, taken in a quiet moment."""

PLATE_KEEP_KEY = "plate_keep_s"
"""meta key: how long after its hold the gateway keeps an arrival's plate (``--plate-keep-hours``
in seconds), so the stand-alone API hides what the journal no longer has."""

PLATES_FORGOTTEN_KEY = "plates_forgotten"
"""meta key: bumped by :func:`forget_plate`, so an API holding recent assignments in memory
reloads them from the journal."""

BACKUP_TAKEN_KEY = "backup_taken"
"""meta key: set in a copy by ``parkguide journal backup`` (wall time of the copy); a
gateway started on it knows it is a restore, says so, and removes the key."""

HISTORY_FROM_KEY = "history_from"
"""meta key: wall time before which :meth:`Journal.prune` forgot the history."""

ALIVE_KEY = "alive_at"
"""meta key: wall time the running gateway last said it was running (every ALIVE_JOURNAL_S):
after a crash, where its downtime began (:func:`down_since`)."""
ALIVE_JOURNAL_S = 60.0
"""The running gateway journals ALIVE_KEY when it journaled no other sign of life (a change,
a quiet agent's last_seen) for this long, and with every 10 s InfluxDB zone point (whose
time the outage's unknown points must come after): a crash's downtime starts at most this
early (30 s while agents report, 10 s with InfluxDB), and a journal without a sign of life
for longer has no gateway running on it."""

HEARD_AHEAD_S = 5.0
"""How far ahead of the clock an agent's journaled last_seen may be and still be believed."""

CLEAN_STOP_KEY = "clean_stop"
"""meta key: the wall time of a clean stop (older releases wrote "1"), once it journaled
every agent's newest quiet report; cleared at each start. Without it the last run ended in
a crash, and a quiet agent's seq may be up to ``gateway.live_journal.QUIET_JOURNAL_S`` behind what
that run had taken."""

CHECKPOINT_KEY = "checkpoint_event"
"""meta key: id of the last event the ``spaces`` and ``signs`` tables include."""

SpaceRow = tuple[str, str, str, int, float, float, float, str | None]
"""(space, state, sensed, closed, since, obs_since, last_seen, agent)"""


OUTAGES_SQL = "SELECT start, end, clean FROM outages WHERE end > ? AND start < ? ORDER BY start"
"""The recorded outages that overlap [?, ?], oldest first."""


def down_since(conn: sqlite3.Connection, now: float) -> tuple[float | None, bool]:
    """Where the gateway's downtime began, were it not running at ``now``: (the time of its
    clean stop, True) or, after a crash, (its last sign of life in the journal: its newest
    event or assignment, the last time it journaled hearing an agent, or ``alive_at``,
    False); None for an empty journal. A clean stop of an older release (``clean_stop``
    "1", no time) counts from its last sign of life. All of these are the gateway's own
    clock; one after ``now`` is left out (a clock that ran ahead, since corrected: an
    agent's ``last_seen`` keeps its maximum)."""
    row = conn.execute(
        "SELECT (SELECT value FROM meta WHERE key = :clean),"
        " max(coalesce((SELECT ts FROM events WHERE ts <= :now ORDER BY ts DESC LIMIT 1),"
        " -1e300),"
        " coalesce((SELECT ts FROM assignments WHERE id = (SELECT max(id) FROM assignments)"
        " AND ts <= :now), -1e300),"
        " coalesce((SELECT max(last_seen) FROM agents WHERE last_seen <= :now), -1e300),"
        " coalesce((SELECT v FROM (SELECT CAST(value AS REAL) AS v FROM meta"
        " WHERE key = :alive) WHERE v <= :now), -1e300))",
        {"clean": CLEAN_STOP_KEY, "alive": ALIVE_KEY, "now": now},
    ).fetchone()
    stopped, alive = row
    clean = stopped is not None
    when = _wall_time(stopped) if clean else None
    if when is not None and when > now:  # stopped by a clock ahead of this one
        when = None
    if when is None and alive is not None and alive > -1e300:
        when = float(alive)
    return when, clean


def _wall_time(value: str | None) -> float | None:
    """A journaled wall time, or None (not a time: an older release's clean stop "1")."""
    try:
        ts = float(value) if value is not None else None
    except ValueError:
        return None
    return ts if ts is not None and ts > 1e9 and math.isfinite(ts) else None


class History(Protocol):
    """Where history points go inside the journal's transaction (the InfluxDB outbox)."""

    def space_states(
        self, conn: sqlite3.Connection, changes: list[tuple[str, str, str, float]]
    ) -> None:
        """(zone, space, state name, ts) per change."""
        ...

    def zone_occupancies(
        self, conn: sqlite3.Connection, zones: list[tuple[str, dict[str, int], float]]
    ) -> None:
        """(zone, counts, ts) per zone; counts has free, occupied, unknown, closed, total."""
        ...


@dataclass(frozen=True)
class GivenAnswer:
    """The last assignment answered at an entrance under a request_id, as journaled."""

    id: int
    space: str | None
    hold_expires: float | None
    released: float | None  # its hold ended early: a car seen in the space, or cancelled
    cancelled: float | None  # when its gate cancelled it (this row or the answer it ended)
    payload: str


@dataclass(frozen=True)
class StoredAgent:
    agent: str
    boot: str | None
    seq: int | None
    online: bool
    last_seen: float


class JournalInUse(Exception):
    """Another gateway has this journal open (:func:`lock_journal`)."""


@contextmanager
def lock_journal(path: str | Path) -> Iterator[None]:
    """Hold ``PATH.lock`` exclusively while the block runs: one gateway per journal. Two
    gateways on one journal (a second site's unit copied without changing ``--db``) would
    interleave their events, take each other's broker session and clear each other's
    retained signs. The lock goes with the process (``kill -9`` too): no stale lock file
    to remove after a crash. Raises :class:`JournalInUse` naming the holder's pid."""
    real = Path(path).resolve()  # a symlink to the journal is the same journal
    lock_path = real.with_name(real.name + ".lock")
    create_private(lock_path)
    _same_owner_as_journal(lock_path, real)
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except PermissionError:  # another user's lock file: flock needs no write access
        fd = os.open(lock_path, os.O_RDONLY)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            raise JournalInUse(f"another gateway (pid {holder}) has it open") from None
        with contextlib.suppress(OSError):  # the holder's pid, for the refusal's message
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # releases the lock


def _same_owner_as_journal(lock_path: Path, journal: Path) -> None:
    """A lock file made by root (a one-off run as root) goes to the journal's owner, as
    SQLite does with its -wal and -shm files, so the service's user can still take it."""
    if os.geteuid() != 0:
        return
    # on failure, opening the lock file says what is wrong, in the caller's words
    with contextlib.suppress(OSError):
        owner = journal.stat() if journal.exists() else journal.parent.stat()
        mine = lock_path.stat()
        if mine.st_uid == 0 and (mine.st_uid, mine.st_gid) != (owner.st_uid, owner.st_gid):
            os.chown(lock_path, owner.st_uid, owner.st_gid)


def peek_meta(path: str | Path, keys: Iterable[str]) -> dict[str, str]:
    """Meta values of a journal, read without creating or changing it (nothing for a new
    journal, or one that cannot be read: :class:`Journal` then says what is wrong)."""
    if not Path(path).exists():
        return {}
    try:
        conn = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return {}
    try:
        return {
            key: str(row[0])
            for key in keys
            if (row := conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
            and row[0]
        }
    except sqlite3.Error:  # no meta table yet
        return {}
    finally:
        conn.close()


def forget_plate(conn: sqlite3.Connection, plate: str) -> int:
    """Blank one plate (ASCII letters in any case) everywhere in the journal ``conn`` opens;
    how many assignments had it. Bumps PLATES_FORGOTTEN_KEY so APIs holding recent
    assignments in memory reload them."""
    with conn:
        for index in PLATE_INDEXES:  # a journal no gateway of this release has opened yet
            conn.execute(index)
        n = conn.execute(
            f"UPDATE assignments SET {_NO_PLATE} WHERE id IN (SELECT id FROM assignments"
            " INDEXED BY assignments_plate WHERE plate IS NOT NULL AND upper(plate) = upper(?))",
            (plate,),
        ).rowcount
        conn.execute(
            "INSERT INTO meta(key, value) VALUES (?, '1') ON CONFLICT(key) DO UPDATE"
            " SET value = CAST(value AS INTEGER) + 1",
            (PLATES_FORGOTTEN_KEY,),
        )
    return n


class Journal:
    """One SQLite connection, used under the gateway's lock from one thread at a time."""

    def __init__(self, path: str | Path, history: History | None = None):
        self.path = Path(path)
        create_private(self.path)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, check_same_thread=False)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        # a burst (agents' spooled backlogs after an outage) outruns the checkpoint and grows
        # the WAL to hundreds of MB; without a limit it keeps that size on disk for good
        self.conn.execute(f"PRAGMA journal_size_limit={WAL_SIZE_LIMIT_BYTES}")
        self.conn.execute("PRAGMA busy_timeout=5000")
        # deleted rows (plates, password hashes) are overwritten, not left in free pages
        # that a copy of the file would carry (Debian builds SQLite so; others may not)
        self.conn.execute("PRAGMA secure_delete=ON")
        self.conn.executescript(SCHEMA)
        for index in PLATE_INDEXES:
            self.conn.execute(index)
        with self.transaction():
            self.conn.execute("DROP TRIGGER IF EXISTS agents_boot_retired")
            self.conn.execute(BOOT_RETIRED_TRIGGER)
        # columns added since the first release, for journals made before them
        for table, column in (
            ("assignments", "released REAL"),
            ("assignments", "cancelled REAL"),  # when its gate cancelled the arrival
            ("events", "note TEXT"),
            ("events", "zone TEXT"),  # NULL in older rows: readers use the site's zone then
            ("events", "zone_closure TEXT"),  # a manager's change made by closing a zone
        ):
            columns = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}
            if column.split()[0] not in columns:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column}")
        self.history = history
        self._checkpointer: sqlite3.Connection | None = None

    def close(self) -> None:
        self.conn.close()
        if self._checkpointer is not None:
            self._checkpointer.close()
            self._checkpointer = None

    def manual_checkpoints(self) -> None:
        """Stop checkpointing inside commits; the caller then calls :meth:`checkpoint` from a
        background thread every second or so.

        A checkpoint fsyncs the database file: done inside a commit it stalls whichever
        report happens to trigger it.
        """
        self.conn.execute("PRAGMA wal_autocheckpoint=0")

    def checkpoint(self) -> None:
        """Copy the WAL into the database (PASSIVE: never blocks the writer), on a
        connection of its own."""
        if self._checkpointer is None:
            self._checkpointer = sqlite3.connect(
                str(self.path), isolation_level=None, check_same_thread=False, timeout=5
            )
        self._checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """BEGIN ... COMMIT; rolled back (and re-raised) on any error."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @contextmanager
    def _transaction_unless_in_one(self) -> Iterator[sqlite3.Connection]:
        """The caller's transaction if one is open, else one of its own."""
        if self.conn.in_transaction:
            yield self.conn
        else:
            with self.transaction() as conn:
                yield conn

    # -- writes (inside transaction()) -------------------------------------------------------
    def add_changes(
        self,
        ts: float,
        source: str | None,
        agent: str | None,
        boot: str | None,
        seq: int | None,
        changes_json: str,
    ) -> None:
        """One report's (or verdict's) changes, committed before anything derived is
        published: JSON [[space, old, new], ...], a 4th item overriding ``source`` (null:
        keep it), a 5th a note (a manager's reason), a 6th the zone whose closure or
        opening made it.
        Outside :meth:`transaction` the statement commits by itself (autocommit)."""
        self.conn.execute(
            "INSERT INTO pending_changes(ts, source, agent, boot, seq, changes)"
            " VALUES (?,?,?,?,?,?)",
            (ts, source, agent, boot, seq, changes_json),
        )

    def expand_pending(self, limit: int | None = None) -> bool:
        """Inside a transaction: turn the oldest pending change rows (all, or ``limit``) into
        ``events`` (in order) and the agents' latest (boot, seq); True when none is left.
        Each event gets its space's zone from ``space_zones`` (NULL for a space not there),
        one primary-key lookup per change."""
        if limit is None:
            where, params = "", ()
        else:
            where = " WHERE id <= (SELECT max(id) FROM (SELECT id FROM pending_changes ORDER BY id LIMIT ?))"
            params = (limit,)
        self.conn.execute(
            "INSERT INTO events(ts, space, old, new, source, agent, seq, note, zone, zone_closure)"
            " SELECT b.ts, json_extract(j.value, '$[0]'), json_extract(j.value, '$[1]'),"
            " json_extract(j.value, '$[2]'), coalesce(json_extract(j.value, '$[3]'), b.source),"
            " b.agent, b.seq, json_extract(j.value, '$[4]'), z.zone, json_extract(j.value, '$[5]')"
            f" FROM (SELECT * FROM pending_changes{where}) b, json_each(b.changes) j"
            " LEFT JOIN space_zones z ON z.space = json_extract(j.value, '$[0]')"
            " ORDER BY b.id, j.key",
            params,
        )
        # a boot followed by another within these rows never reached the agents table
        upto = self.conn.execute(
            f"SELECT max(id) FROM (SELECT id FROM pending_changes{where})", params
        ).fetchone()[0]
        if upto is not None:
            # the rows expanded now, one pass in Python; of the later ones (a backlog that
            # stepped expansion leaves), only each agent's boots, in SQL
            later: dict[str, set[str]] = {}
            for agent, boot in self.conn.execute(
                "SELECT DISTINCT agent, boot FROM pending_changes"
                " WHERE id > ? AND boot IS NOT NULL",
                (upto,),
            ):
                later.setdefault(agent, set()).add(boot)
            rows = self.conn.execute(
                "SELECT id, agent, boot, ts FROM pending_changes"
                " WHERE id <= ? AND boot IS NOT NULL ORDER BY id",
                (upto,),
            ).fetchall()
            self.conn.executemany(
                "INSERT OR REPLACE INTO retired_boots(agent, boot, ts) VALUES (?,?,?)",
                _boots_followed(rows, later),
            )
        # online is left alone: an availability message may have come after the report
        self.conn.execute(
            "INSERT INTO agents(agent, boot, seq, online, last_seen)"
            " SELECT agent, boot, seq, 1, ts FROM pending_changes WHERE id IN"
            f" (SELECT max(id) FROM (SELECT * FROM pending_changes{where})"
            " WHERE boot IS NOT NULL GROUP BY agent)"
            " ON CONFLICT(agent) DO UPDATE SET boot=excluded.boot, seq=excluded.seq,"
            " last_seen=max(last_seen, excluded.last_seen)",
            params,
        )
        self.conn.execute(f"DELETE FROM pending_changes{where}", params)
        return not self.conn.execute("SELECT EXISTS(SELECT 1 FROM pending_changes)").fetchone()[0]

    def put_space_zones(self, zones: Mapping[str, str]) -> None:
        """Make ``space_zones`` the site's zone of every space (space id -> zone id), replacing
        all it held: the events expanded from now on carry these zones.

        Runs in the caller's transaction when there is one, else in one of its own. When it
        changes a map already there (a space moved to another zone, came or went), the
        changes still pending are expanded first, with the zones they were reported under,
        and each difference goes to ``zone_changes`` with the last event before it. The
        first map of a journal is no change: events before it have no zone (NULL), which
        readers take as the site's zone."""
        new = {str(space): str(zone) for space, zone in zones.items()}
        with self._transaction_unless_in_one():
            old = dict(self.conn.execute("SELECT space, zone FROM space_zones").fetchall())
            if old == new:
                return
            if old:
                self.expand_pending()
                mark = self.last_event_id()
                self.conn.executemany(
                    "INSERT INTO zone_changes(event, space, old, new) VALUES (?,?,?,?)",
                    [
                        (mark, space, old.get(space), new.get(space))
                        for space in sorted(old.keys() | new.keys())
                        if old.get(space) != new.get(space)
                    ],
                )
            self.conn.execute("DELETE FROM space_zones")
            self.conn.executemany(
                "INSERT INTO space_zones(space, zone) VALUES (?,?)", sorted(new.items())
            )

    def space_zones(self) -> dict[str, str]:
        return dict(self.conn.execute("SELECT space, zone FROM space_zones").fetchall())

    def put_spaces(self, rows: Iterable[SpaceRow]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO spaces(space, state, sensed, closed, since, obs_since,"
            " last_seen, agent) VALUES (?,?,?,?,?,?,?,?)",
            rows,
        )

    def note_quiet_reports(self, items: list[T], rows: list[tuple[Any, ...]]) -> list[T]:
        """Move the sequence and last_seen of agents whose reports changed nothing, in one
        statement each; ``rows`` (agent, boot, seq, ts) go with ``items``. Returns the items
        whose agent row was not there with that boot (to be journaled as change rows)."""
        left = []
        with self._transaction_unless_in_one():
            for item, (agent, boot, seq, ts) in zip(items, rows, strict=True):
                cur = self.conn.execute(
                    "UPDATE agents SET seq = ?, last_seen = max(last_seen, ?)"
                    " WHERE agent = ? AND boot = ? AND seq < ?",
                    (seq, ts, agent, boot, seq),
                )
                if cur.rowcount == 0:
                    left.append(item)
        return left

    def put_agent(
        self, agent: str, boot: str | None, seq: int | None, online: bool, last_seen: float
    ) -> None:
        self.conn.execute(
            "INSERT INTO agents(agent, boot, seq, online, last_seen) VALUES (?,?,?,?,?)"
            " ON CONFLICT(agent) DO UPDATE SET boot=coalesce(excluded.boot, boot),"
            " seq=coalesce(excluded.seq, seq), online=excluded.online,"
            " last_seen=max(last_seen, excluded.last_seen)",
            (agent, boot, seq, int(online), last_seen),
        )

    def add_assignment(
        self,
        ts: float,
        entrance: str,
        vehicle_class: str,
        space: str | None,
        zone: str | None,
        hold_expires: float | None,
        plate: str | None,
        request_id: str | None,
        payload: str,
        cancelled: float | None = None,
    ) -> None:
        """One answer at a gate; ``cancelled`` (its time) for the answer to a cancel."""
        self.conn.execute(
            "INSERT INTO assignments(ts, entrance, class, space, zone, hold_expires, plate,"
            " request_id, payload, cancelled) VALUES (?,?,?,?,?,?,?,?,?,?)",
            (
                ts,
                entrance,
                vehicle_class,
                space,
                zone,
                hold_expires,
                plate,
                request_id,
                payload,
                cancelled,
            ),
        )

    def given(self, entrance: str, request_id: str) -> GivenAnswer | None:
        """The last answer given at ``entrance`` under ``request_id`` (any age), or None."""
        row = self.conn.execute(
            "SELECT id, space, hold_expires, released, cancelled, payload FROM assignments"
            " WHERE entrance = ? AND request_id = ? ORDER BY id DESC LIMIT 1",
            (entrance, request_id),
        ).fetchone()
        return None if row is None else GivenAnswer(*row)

    def cancel_hold(self, answer_id: int, ts: float) -> None:
        """The hold of assignment ``answer_id`` ended at ``ts``: its gate cancelled it (the
        row keeps the hold it gave, for the audit)."""
        self.conn.execute(
            "UPDATE assignments SET released = ?, cancelled = ? WHERE id = ?",
            (ts, ts, answer_id),
        )

    def answered(self, entrance: str, request_id: str, since: float) -> str | None:
        """The assignment payload given at ``entrance`` to ``request_id`` at or after
        ``since``, or None."""
        row = self.conn.execute(
            "SELECT payload FROM assignments WHERE entrance = ? AND request_id = ? AND ts >= ?"
            " ORDER BY id DESC LIMIT 1",
            (entrance, request_id, since),
        ).fetchone()
        return None if row is None else row[0]

    def put_signs(self, rows: Iterable[tuple[str, str, str, float]]) -> None:
        """(display, topic, content JSON, expires_s): what each sign shows, for a fast restart."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO signs(display, topic, content, expires_s) VALUES (?,?,?,?)",
            rows,
        )

    def set_meta(self, key: str, value: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def cached(self, key: str) -> bytes | None:
        row = self.conn.execute("SELECT value FROM cache WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def put_cache(self, key: str, value: bytes) -> None:
        """Keep derived data under ``key`` (a hash of its inputs); older keys are dropped."""
        with self.transaction():
            self.conn.execute("DELETE FROM cache WHERE key LIKE ?", (key.split(":")[0] + ":%",))
            self.conn.execute("INSERT INTO cache(key, value) VALUES (?, ?)", (key, value))

    # -- reads ---------------------------------------------------------------------------
    def meta(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def spaces(self) -> list[SpaceRow]:
        return self.conn.execute(
            "SELECT space, state, sensed, closed, since, obs_since, last_seen, agent FROM spaces"
        ).fetchall()

    def agents(self) -> list[StoredAgent]:
        rows = self.conn.execute("SELECT agent, boot, seq, online, last_seen FROM agents")
        return [StoredAgent(a, b, s, bool(o), ls) for a, b, s, o, ls in rows]

    def retired_boots(self) -> dict[str, list[str]]:
        """Per agent, every boot it replaced, oldest first."""
        out: dict[str, list[str]] = {}
        for agent, boot in self.conn.execute(
            "SELECT agent, boot FROM retired_boots ORDER BY agent, ts, rowid"
        ):
            out.setdefault(agent, []).append(boot)
        return out

    def prune(self, before: float, rows: int = PRUNE_STEP_ROWS) -> int:
        """Forget history older than ``before`` (wall time), at most ``rows`` rows of each
        table in one transaction: events, and assignments whose hold has ended (their
        plates with them). Returns how many rows went; 0 when nothing is left to forget.
        Events after the checkpoint are never touched (a restart replays them); freed
        pages are reused, so the file stops growing at the size of the window kept.
        Replaced boots are kept for good (a row per agent restart): a message of a boot
        forgotten would be taken for a new boot and retire the agent's live one."""
        mark = self.checkpoint_event() or 0
        with self.transaction() as conn:
            # never the newest event: ids are rowids, and an emptied table would hand out
            # ids below the checkpoint mark again (a restart would skip those events)
            n = conn.execute(
                "DELETE FROM events WHERE id IN (SELECT id FROM events INDEXED BY events_ts"
                " WHERE ts < ? AND id <= ? AND id < (SELECT max(id) FROM events)"
                " ORDER BY ts LIMIT ?)",
                (before, mark, rows),
            ).rowcount
            # the oldest rows by id only (no index on ts: a look at a year of assignments
            # with nothing to forget would read them all, under the gateway's lock)
            n += conn.execute(
                "DELETE FROM assignments WHERE id IN (SELECT id FROM (SELECT id, ts,"
                " hold_expires FROM assignments ORDER BY id LIMIT ?)"
                " WHERE ts < ? AND (hold_expires IS NULL OR hold_expires < ?))",
                (rows, before, before),
            ).rowcount
            conn.execute("DELETE FROM outages WHERE end < ?", (before,))
            if n:  # readers of history must not take the gap for "no change"
                kept = self.meta(HISTORY_FROM_KEY)
                if kept is None or float(kept) < before:
                    self.set_meta(HISTORY_FROM_KEY, repr(before))
        return n

    def forget_plates(self, before: float, rows: int = PRUNE_STEP_ROWS) -> int:
        """Blank the plates (column and payload) of at most ``rows`` assignments whose hold
        ended (or, without a hold, which were answered) before ``before``; how many."""
        with self.transaction() as conn:
            return conn.execute(
                f"UPDATE assignments SET {_NO_PLATE} WHERE id IN (SELECT id FROM assignments"
                " INDEXED BY assignments_plate_due WHERE plate IS NOT NULL"
                " AND coalesce(hold_expires, ts) < ? ORDER BY coalesce(hold_expires, ts)"
                " LIMIT ?)",
                (before, rows),
            ).rowcount

    def record_outage(self, start: float, end: float, clean: bool) -> None:
        """The gateway was down over [start, end) (in the caller's transaction)."""
        self.conn.execute(
            "INSERT INTO outages(start, end, clean) VALUES (?,?,?)", (start, end, int(clean))
        )

    def clamp_heard_ahead(self, now: float) -> int:
        """Agents' last_seen further ahead of ``now`` than HEARD_AHEAD_S (a clock that ran
        ahead, since corrected: it keeps its maximum) become ``now``, as a start reads them
        anyway (heard now); how many."""
        with self.transaction() as conn:
            return conn.execute(
                "UPDATE agents SET last_seen = ? WHERE last_seen > ?", (now, now + HEARD_AHEAD_S)
            ).rowcount

    def outages(self, start: float, end: float) -> list[tuple[float, float, bool]]:
        """(start, end, clean) of the recorded outages that overlap [start, end], oldest
        first."""
        return [(a, b, bool(c)) for a, b, c in self.conn.execute(OUTAGES_SQL, (start, end))]

    def down_since(self, now: float) -> tuple[float | None, bool]:
        """:func:`down_since` of this journal."""
        return down_since(self.conn, now)

    def history_from(self) -> float | None:
        """Events before this wall time were pruned (None: nothing was)."""
        kept = self.meta(HISTORY_FROM_KEY)
        return None if kept is None else float(kept)

    def open_holds(self, now: float) -> list[tuple[str, float, str]]:
        """(space, hold_expires, entrance) of assignments whose hold has not expired at
        ``now`` and was not ended by a car seen in the space (:meth:`release_holds`); the
        latest per space (SQLite takes the bare column from the row of the max)."""
        return self.conn.execute(
            "SELECT space, max(hold_expires), entrance FROM assignments"
            " WHERE space IS NOT NULL AND hold_expires > ? AND released IS NULL"
            " GROUP BY space",
            (now,),
        ).fetchall()

    def release_holds(self, spaces: Iterable[str], ts: float) -> None:
        """These held spaces' holds ended (a car was seen in the space, or the hold ran
        out): also for a restart. Journaled with what ended them, in processing order,
        whatever the clocks say."""
        self.conn.executemany(
            "UPDATE assignments SET released = ?"
            " WHERE space = ? AND released IS NULL AND hold_expires > ?",
            [(ts, space, ts) for space in spaces],
        )

    def recent_assignments(self, limit: int) -> list[str]:
        """Assignment payloads (JSON), newest first."""
        rows = self.conn.execute(
            "SELECT payload FROM assignments ORDER BY id DESC LIMIT ?", (limit,)
        )
        return [r[0] for r in rows]

    def last_event_ts(self) -> float:
        """The time of the newest event (-inf: none); events are in time order by id."""
        row = self.conn.execute("SELECT ts FROM events ORDER BY id DESC LIMIT 1").fetchone()
        return -math.inf if row is None else float(row[0])

    def manager_events_since(
        self, ts: float, spaces: Collection[str]
    ) -> dict[str, tuple[str, str | None]]:
        """The newest manager's event of each of ``spaces`` at or after ``ts`` (by the
        ``events_manager`` index: managers' actions only, however many events there are):
        its new state and the zone closure it came with."""
        wanted, out = set(spaces), {}
        rows = self.conn.execute(
            "SELECT space, new, zone_closure FROM events INDEXED BY events_manager"
            " WHERE source = 'manager' AND ts >= ? ORDER BY id",
            (ts,),
        )
        for space, new, zone_closure in rows:
            if space in wanted:
                out[space] = (new, zone_closure)
        return out

    def closes_since_open(
        self, space: str
    ) -> list[tuple[float, str | None, str | None, str | None]]:
        """The managers' closes of ``space`` since a manager last opened it, newest first
        (ts, by, reason, zone closure): the first keeps it closed. By the ``events_manager``
        index; a manager's event is journaled (expanded) before their action is answered."""
        out = []
        rows = self.conn.execute(
            "SELECT ts, agent, note, zone_closure, new FROM events INDEXED BY events_manager"
            " WHERE source = 'manager' AND space = ? ORDER BY id DESC",
            (space,),
        )
        for ts, agent, note, zone_closure, new in rows:
            if new != "closed":
                break
            out.append((ts, agent, note, zone_closure))
        return out

    def last_event_id(self) -> int:
        return self.conn.execute("SELECT coalesce(max(id), 0) FROM events").fetchone()[0]

    def checkpoint_event(self) -> int | None:
        """The last event the ``spaces`` and ``signs`` tables include (None: never marked)."""
        mark = self.meta(CHECKPOINT_KEY)
        return None if mark is None else int(mark)

    def mark_checkpoint(self, event_id: int) -> None:
        self.set_meta(CHECKPOINT_KEY, str(event_id))

    def events_after(self, event_id: int) -> list[tuple[Any, ...]]:
        """Events newer than ``event_id``, oldest first (id, ts, space, old, new, source, agent,
        seq): what a restart replays over the checkpoint."""
        return self.conn.execute(
            "SELECT id, ts, space, old, new, source, agent, seq FROM events WHERE id > ?"
            " ORDER BY id",
            (event_id,),
        ).fetchall()

    def events(self, limit: int = 1000) -> list[tuple[Any, ...]]:
        """The newest events, newest first (id, ts, space, old, new, source, agent, seq)."""
        return self.conn.execute(
            "SELECT id, ts, space, old, new, source, agent, seq FROM events ORDER BY id DESC LIMIT ?",
            (limit,),
        ).fetchall()

    # -- a site file that changed (gateway.site_changes) --------------------------------------
    def drop_spaces(self, keep: Iterable[str]) -> int:
        """Inside a transaction: forget the current state of spaces not in ``keep`` (the site
        file dropped them; their events stay); how many."""
        keep = set(keep)
        gone = [(s,) for (s,) in self.conn.execute("SELECT space FROM spaces") if s not in keep]
        self.conn.executemany("DELETE FROM spaces WHERE space = ?", gone)
        return len(gone)

    def drop_signs(self, keep: Iterable[str]) -> list[str]:
        """Forget the contents of displays not in ``keep`` (the site file dropped them: not
        republished at a start any more); the ids forgotten."""
        keep = set(keep)
        gone = [d for (d,) in self.conn.execute("SELECT display FROM signs") if d not in keep]
        self.conn.executemany("DELETE FROM signs WHERE display = ?", [(d,) for d in gone])
        return gone

    def closed_by_manager(self, spaces: Iterable[str], besides: str) -> set[str]:
        """Those of ``spaces`` whose latest manager event (one not journaled as ``besides``)
        closed them. One pass over the events: called at a start, for the few spaces a site
        file stopped closing."""
        wanted = sorted(set(spaces))
        if not wanted:
            return set()
        marks = ",".join("?" * len(wanted))
        rows = self.conn.execute(
            "SELECT space, new FROM events WHERE id IN (SELECT max(id) FROM events"
            f" WHERE source = 'manager' AND agent IS NOT ? AND space IN ({marks})"
            " GROUP BY space)",
            (besides, *wanted),
        ).fetchall()
        return {space for space, new in rows if new == "closed"}


def _boots_followed(
    rows: list[tuple[int, str, str, float]], later: dict[str, set[str]]
) -> list[tuple[str, str, float]]:
    """(agent, boot, ts) of every boot of ``rows`` (pending rows in id order) that a later
    row of the same agent replaces with another boot, among ``rows`` or the rows after them
    (``later``: per agent, their boots); ts is the newest of its rows that such a row
    follows. One pass from the newest row back (a SQL EXISTS per row was quadratic: seconds
    for a crash's backlog of a few thousand reports)."""
    after_of = {agent: set(boots) for agent, boots in later.items()}
    out: dict[tuple[str, str], float] = {}
    for _, agent, boot, ts in reversed(rows):
        after = after_of.setdefault(agent, set())
        if len(after) > 1 or (after and boot not in after):
            key = (agent, boot)
            out[key] = max(out.get(key, ts), ts)
        after.add(boot)
    return [(agent, boot, ts) for (agent, boot), ts in out.items()]


def stored_signs(
    path: str | Path, now: float | None = None, ttl_s: float | None = None
) -> list[tuple[str, str, float]]:
    """(topic, content JSON, expires_s) of every sign in the journal at ``path``; [] if none,
    or if changes were committed after the signs were checkpointed (they may be behind).
    With ``now``, only the signs that would still be showing had the gateway not stopped,
    each with what is left of its validity (its expiry counted from the last report heard)
    in place of ``expires_s``: an older content is not shown again, even for the moment
    before TTLs catch up. With ``ttl_s`` (the site's shortest source TTL) not past it
    either: by then the spaces it counts would have turned unknown had the gateway run,
    so its counts are no longer vouched for.

    Light on purpose (sqlite3 only): the restart path calls it before anything heavy loads.
    """
    if not Path(path).exists():
        return []
    conn = sqlite3.connect(str(path), timeout=5)
    try:
        # changes not expanded into the checkpoint yet; a report's row without changes ('[]',
        # journaled for its sequence: every snapshot that finds nothing new) moves nothing
        pending = "SELECT EXISTS(SELECT 1 FROM pending_changes WHERE changes <> '[]')"
        if conn.execute(pending).fetchone()[0]:
            return []
        last = conn.execute("SELECT max(id) FROM events").fetchone()[0]
        mark = conn.execute("SELECT value FROM meta WHERE key=?", (CHECKPOINT_KEY,)).fetchone()
        if last is not None and mark is not None and int(mark[0]) < last:
            return []
        rows = conn.execute("SELECT topic, content, expires_s FROM signs").fetchall()
        heard = conn.execute("SELECT max(last_seen) FROM agents").fetchone()[0]
        if now is None or heard is None:
            return rows
        if heard > now + HEARD_AHEAD_S:
            # heard "later" than now: a clock that ran ahead, since corrected (last_seen
            # keeps its maximum). When it was really last heard is not known: no fast path
            return []
        # what is left of each sign's validity since the last report: a gateway that keeps
        # failing at start must not keep refreshing a count nobody vouches for any more
        age = now - heard
        return [(t, c, min(e, ttl_s or e) - age) for t, c, e in rows if age < min(e, ttl_s or e)]
    except sqlite3.Error:
        return []
    finally:
        conn.close()
