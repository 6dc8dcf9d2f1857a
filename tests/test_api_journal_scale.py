# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""The API's journal reads on a large journal: reads bounded by time find their window by the
``events_ts`` index (not a walk over every event), and the CSV export reads in short pages,
so a slow download holds no read snapshot that would keep the gateway's WAL from resetting."""

from __future__ import annotations

import csv
import io
import json
import random
import sqlite3
import time
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

from api_support import client, harness, tokens, users  # noqa: F401

import api.journal
from api.journal import EVENT_COLUMNS, EXPORT_PAGE, EventFilter, EventRow, JournalReader
from gateway.journal import Journal

SPACES = [f"{z}-{i:03d}" for z in "ABC" for i in range(1, 41)]
STATES = ("free", "occupied", "unknown", "closed")
T0 = 1_700_000_000.0


class Writer:
    """Appends events to a real gateway journal the gateway's way: a packed row of changes
    per report (:meth:`Journal.add_changes`), expanded into events (``expand_pending``)."""

    def __init__(self, journal: Journal, seed: int = 7):
        self.journal = journal
        self.rng = random.Random(seed)
        self.state = dict.fromkeys(SPACES, "unknown")
        self.ts = T0
        self.seq = 0

    def add(self, n: int, *, step: float = 1.0, per_report: int = 5) -> None:
        """``n`` events, ``per_report`` a report, reports ``step`` seconds apart."""
        with self.journal.transaction():
            for k in range(0, n, per_report):
                changes = []
                for space in self.rng.sample(SPACES, min(per_report, n - k)):
                    new = self.rng.choice([s for s in STATES if s != self.state[space]])
                    changes.append([space, self.state[space], new])
                    self.state[space] = new
                self.journal.add_changes(
                    self.ts, "bus-g", "agent-g", "boot", self.seq, json.dumps(changes)
                )
                self.ts += step
                self.seq += 1
            self.journal.expand_pending()


def make_journal(path: Path, n: int) -> tuple[Journal, Writer]:
    """A journal of ``n`` events whose clock was once stepped back a minute (as NTP may do):
    time and id order then differ, and the reads must still keep id order."""
    journal = Journal(path)
    writer = Writer(journal)
    writer.add(n // 2)
    writer.ts -= 60.0
    writer.add(n - n // 2)
    return journal, writer


def one_read(path: Path, flt: EventFilter, limit: int) -> list[EventRow]:
    """What the export read before paging: one statement, oldest first."""
    where, params = flt.where()
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {where} ORDER BY id LIMIT ?",
            [*params, limit],
        ).fetchall()
    return [EventRow(*r) for r in rows]


def one_list(path: Path, flt: EventFilter, before_id: int | None, limit: int) -> list[EventRow]:
    """What the event list read before: newest first, one statement."""
    where, params = flt.where()
    if before_id is not None:
        where += " AND id < ?"
        params.append(before_id)
    with closing(sqlite3.connect(path)) as db:
        rows = db.execute(
            f"SELECT {', '.join(EVENT_COLUMNS)} FROM events WHERE {where} ORDER BY id DESC LIMIT ?",
            [*params, limit],
        ).fetchall()
    return [EventRow(*r) for r in rows]


class RecordingReader(JournalReader):
    """A JournalReader that keeps every statement it runs (with its parameters bound)."""

    def __init__(self, db_path: str):
        super().__init__(db_path)
        self.statements: list[str] = []

    def connect(self) -> sqlite3.Connection | None:
        db = super().connect()
        if db is not None:
            db.set_trace_callback(self.statements.append)
        return db


def plan(path: Path, sql: str) -> list[str]:
    with closing(sqlite3.connect(path)) as db:
        return [row[3] for row in db.execute("EXPLAIN QUERY PLAN " + sql)]


def event_plans(reader: RecordingReader, path: Path, call: Callable[[], object]) -> list[str]:
    """The query plan lines of the reads of ``events`` that ``call`` makes."""
    reader.statements.clear()
    call()
    reads = [s for s in reader.statements if s.startswith("SELECT") and " FROM events" in s]
    assert reads
    return [line for sql in reads for line in plan(path, sql)]


def test_time_bounded_reads_search_the_ts_index(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal, writer = make_journal(path, 6000)
    journal.close()
    since = writer.ts - 100  # the last 500 events (5 a second)
    # the defect: ordered by id with only a start time, SQLite walks every event
    assert plan(path, f"SELECT space, old FROM events WHERE ts > {since} ORDER BY id") == [
        "SCAN events"
    ]
    reader = RecordingReader(str(path))
    reads = {
        "states_at": lambda: reader.states_at(since),
        "changes_between": lambda: reader.changes_between(since, writer.ts),
        "list, window under a page": lambda: reader.events(EventFilter(since=since), limit=1000),
        "list, one space": lambda: reader.events(EventFilter(spaces=("A-001",), since=since)),
        "list, since and until": lambda: reader.events(
            EventFilter(since=since - 150, until=since), limit=1000
        ),
        "export": lambda: list(reader.iter_events(EventFilter(since=since), 10**6)),
        "export, one space": lambda: list(
            reader.iter_events(EventFilter(spaces=("A-001",), since=since), 10**6)
        ),
    }
    for name, call in reads.items():
        lines = event_plans(reader, path, call)
        assert not [x for x in lines if x.startswith("SCAN events")], (name, lines)
        assert [
            x for x in lines if x.startswith("SEARCH events USING") and "INDEX events_ts" in x
        ], (
            name,
            lines,
        )
    # a full page of the newest events is found by walking back the newest ids, a search too
    lines = event_plans(reader, path, lambda: reader.events(EventFilter(since=since), limit=10))
    assert lines and not [x for x in lines if x.startswith("SCAN events")], lines


def test_a_journal_without_the_ts_index_is_still_read(tmp_path):
    """The hint is only given where the index is: a hand-made events table reads as before."""
    path = tmp_path / "bare.sqlite"
    with closing(sqlite3.connect(path)) as db, db:
        db.execute(
            "CREATE TABLE events(id INTEGER PRIMARY KEY, ts REAL NOT NULL, space TEXT NOT NULL,"
            " old TEXT NOT NULL, new TEXT NOT NULL, source TEXT, agent TEXT, seq INTEGER,"
            " note TEXT)"
        )
        db.executemany(
            "INSERT INTO events(ts, space, old, new) VALUES (?, ?, 'free', 'occupied')",
            [(T0 + k, SPACES[k % len(SPACES)]) for k in range(300)],
        )
    reader = JournalReader(str(path))
    flt = EventFilter(since=T0 + 100)
    assert list(reader.iter_events(flt, 1000, page=7)) == one_read(path, flt, 1000)
    assert reader.events(flt, limit=500) == one_list(path, flt, None, 500)
    before = {SPACES[k % len(SPACES)]: "free" for k in range(251, 300)}
    assert reader.states_at(T0 + 250) == {**dict.fromkeys(SPACES, "occupied"), **before}


FILTERS = [
    EventFilter(),
    EventFilter(spaces=("A-001", "B-017", "C-040")),
    EventFilter(since=T0 + 1000),
    EventFilter(until=T0 + 700),
    EventFilter(since=T0 + 500, until=T0 + 900),  # across the clock's step back
    EventFilter(spaces=tuple(s for s in SPACES if s.startswith("B")), since=T0 + 300),
    EventFilter(since=T0 + 10**6),  # nothing
]


def test_the_paged_export_gives_the_rows_one_read_gave(tmp_path):
    path = tmp_path / "journal.sqlite"
    journal, _ = make_journal(path, 3 * EXPORT_PAGE + 500)
    journal.close()
    reader = JournalReader(str(path))
    assert len(one_read(path, EventFilter(), 10**6)) > 3 * EXPORT_PAGE
    for flt in FILTERS:
        for limit in (10**6, 2 * EXPORT_PAGE, 2 * EXPORT_PAGE + 1, 1):
            assert list(reader.iter_events(flt, limit)) == one_read(path, flt, limit), (flt, limit)
        assert list(reader.iter_events(flt, 1000, page=37)) == one_read(path, flt, 1000), flt
    assert list(JournalReader(str(tmp_path / "none.sqlite")).iter_events(EventFilter(), 10)) == []


def test_the_event_list_gives_the_rows_one_read_gave(tmp_path, monkeypatch):
    path = tmp_path / "journal.sqlite"
    journal, _ = make_journal(path, 4000)
    journal.close()
    reader = JournalReader(str(path))
    newest = one_read(path, EventFilter(), 10**6)[-1].id
    for probe in (api.journal.LIST_PROBE, 50):  # the walk back finds the page, or falls short
        monkeypatch.setattr(api.journal, "LIST_PROBE", probe)
        for flt in FILTERS:
            for before in (None, newest, newest - 1500, 40, 1):
                for limit in (1, 26, 1001):
                    got = reader.events(flt, before_id=before, limit=limit)
                    assert got == one_list(path, flt, before, limit), (probe, flt, before, limit)


def test_a_slow_export_holds_no_read_snapshot(tmp_path):
    """While a client downloads slowly, the gateway keeps journalling and checkpointing:
    between pages the export holds no snapshot, so a PASSIVE checkpoint copies every frame
    (and the gateway's next commit can start the WAL over)."""
    path = tmp_path / "journal.sqlite"
    journal, writer = make_journal(path, 4 * EXPORT_PAGE)
    journal.manual_checkpoints()  # as the gateway runs it: checkpoints from its own thread
    flt = EventFilter(since=T0 + 10)
    expected = one_read(path, flt, 10**6)  # the journal as the export starts
    checkpointer = sqlite3.connect(path, isolation_level=None)

    def checkpoint() -> tuple[int, int, int]:
        busy, log, done = checkpointer.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        return busy, log, done

    # the check sees a snapshot held open, as the single read of the whole export held it
    held = sqlite3.connect(path)
    cursor = held.execute("SELECT * FROM events ORDER BY id")
    cursor.fetchmany(1000)
    writer.add(200)
    busy, log, done = checkpoint()
    assert log > 0 and done < log
    cursor.close()
    held.close()
    expected = one_read(path, flt, 10**6)  # with those 200

    rows = JournalReader(str(path)).iter_events(flt, 10**6)
    got = [next(rows) for _ in range(EXPORT_PAGE + EXPORT_PAGE // 2)]  # into the second page
    for _ in range(3):
        writer.add(200)  # the gateway goes on journalling reports
        time.sleep(0.05)  # the client is slow
        busy, log, done = checkpoint()
        assert log > 0 and done == log, (busy, log, done)
        got += [next(rows) for _ in range(EXPORT_PAGE // 2)]
    got += list(rows)
    checkpointer.close()
    journal.close()
    # what one read at the start would have given: the events journalled meanwhile are not in it
    assert got == expected


def test_the_csv_export_pages_through_the_api(client, tokens, harness, monkeypatch):
    """The route streams the paged export: every page's rows, filters applied, in id order."""
    monkeypatch.setattr(api.journal, "EXPORT_PAGE", 25)
    t0 = time.time()
    for n in range(3):
        harness.fill({s.id for s in harness.site.spaces[n::2]})
    harness.gateway.flush_checkpoint()
    zone_a = [s.id for s in harness.site.spaces if s.zone == "A"]
    with closing(sqlite3.connect(harness.db_path)) as db:
        marks = [r[0] for r in db.execute("SELECT ts FROM events WHERE ts >= ? ORDER BY id", (t0,))]
    until = marks[len(marks) // 2] + 1e-6
    cases = [
        ({"zone": "A", "since": t0}, f"space IN ({','.join('?' * len(zone_a))}) AND ts >= ?",
         [*zone_a, t0]),
        ({"since": t0, "until": until}, "ts >= ? AND ts < ?", [t0, until]),
        ({"space": "A-001"}, "space = ?", ["A-001"]),
    ]  # fmt: skip
    sizes = []
    for query, where, params in cases:
        r = client.get("/api/v1/events.csv", params=query, headers=tokens["viewer"])
        assert r.status_code == 200, r.text
        # utf-8-sig: the export starts with a BOM (for Excel), which r.text keeps
        text = r.content.decode("utf-8-sig")
        ids = [int(row["id"]) for row in csv.DictReader(io.StringIO(text))]
        with closing(sqlite3.connect(harness.db_path)) as db:
            want = [
                i for (i,) in db.execute(f"SELECT id FROM events WHERE {where} ORDER BY id", params)
            ]
        assert ids == want, query
        sizes.append(len(ids))
    assert min(sizes) > 0 and sizes[0] > 2 * 25  # the zone's export took several pages


def test_the_closes_of_many_spaces_are_one_walk_that_finds_each_newest(tmp_path):
    """A zone action names who closed each of the zone's spaces closed on their own: one
    walk back for them all (one per space took seconds each on millions of events), each
    space's newest manager's close, none for a space closed by no manager."""
    path = tmp_path / "journal.sqlite"
    journal, writer = make_journal(path, 2000)
    for space, who in (("A-001", "li"), ("B-002", "wang"), ("A-001", "zhao")):
        with journal.transaction():
            journal.add_changes(
                writer.ts, "manager", who, None, None, json.dumps([[space, "free", "closed"]])
            )
            journal.expand_pending()
        writer.add(50)  # sensors' events after each close
    journal.close()
    reader = JournalReader(str(path))
    wanted = ["A-001", "B-002", "C-003"]
    got = reader.closures(wanted)
    assert {s: e.agent for s, e in got.items()} == {"A-001": "zhao", "B-002": "wang"}
    for space in wanted:  # the same as the one-space read
        assert got.get(space) == reader.closure(space)
    assert reader.closures([]) == {}
    assert JournalReader(str(tmp_path / "none.sqlite")).closures(wanted) == {}
