# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Events keep the zone of their time: a space moved to another zone (site file edit and a
restart) keeps its earlier events in the zone it was in then, in the event list, the CSV
export and the zone history, as the zone counts published then had it. Journals from
before the gateway kept zones read as before: every event in the current site's zone."""

from __future__ import annotations

import csv
import io
import json
import re
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from api_support import PASSWORD, harness, settings, user_template  # noqa: F401
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import UserStore
from api.journal import JournalReader
from gateway.journal import Journal

T0 = 1_700_000_000.0
MOVED = "A-001"  # in zone B before the site file moved it to A
ADDED = "A-002"  # not in the site before that edit


def site_map(harness) -> dict[str, str]:
    return {s.id: s.zone for s in harness.site.spaces}


def old_map(harness) -> dict[str, str]:
    """The zones the gateway ran with before the edit."""
    zones = site_map(harness)
    zones[MOVED] = "B"
    del zones[ADDED]
    return zones


class Feed:
    """Reports journalled the gateway's way: a packed row per report, expanded into events."""

    def __init__(self, journal: Journal):
        self.journal = journal
        self.seq = 0

    def report(self, ts: float, *changes: tuple[str, str, str], expand: bool = True) -> None:
        with self.journal.transaction():
            self.journal.add_changes(
                ts,
                "bus-g",
                "serial-bus-g",
                "boot",
                self.seq,
                json.dumps([list(c) for c in changes]),
            )
            self.seq += 1
            if expand:
                self.journal.expand_pending()


def moved_journal(harness, path: Path) -> Journal:
    """A-001 in zone B until a restart between T0+100 and T0+200 put it in A; A-002 came
    with that restart."""
    journal = Journal(path)
    feed = Feed(journal)
    journal.put_space_zones(old_map(harness))
    feed.report(
        T0,
        (MOVED, "unknown", "free"),
        ("A-003", "unknown", "free"),
        ("B-001", "unknown", "occupied"),
    )
    feed.report(T0 + 100, (MOVED, "free", "occupied"))
    journal.put_space_zones(site_map(harness))  # the restart with the edited site file
    feed.report(T0 + 200, (MOVED, "occupied", "free"), (ADDED, "unknown", "occupied"))
    feed.report(T0 + 300, (ADDED, "occupied", "free"))
    return journal


@contextmanager
def api_on(harness, path: Path) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The real app (the module's gateway as its live view) reading the journal at ``path``,
    and a viewer's authorization header."""
    UserStore(str(path))
    with closing(sqlite3.connect(path)) as db, db:
        db.execute("ATTACH DATABASE ? AS template", (str(user_template()),))
        db.execute("INSERT OR REPLACE INTO users SELECT * FROM template.users")
    app = create_app(harness.gateway, settings(), db_path=str(path))
    with TestClient(app) as client:
        r = client.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
        assert r.status_code == 200, r.text
        client.cookies.clear()
        yield client, {"Authorization": f"Bearer {r.json()['token']}"}


def listed(client, h, **query) -> list[tuple[float, str, str | None]]:
    r = client.get("/api/v1/events", params={"limit": 1000, **query}, headers=h)
    assert r.status_code == 200, r.text
    return sorted((e["ts"], e["space"], e["zone"]) for e in r.json()["items"])


def exported(client, h, **query) -> list[tuple[float, str, str]]:
    r = client.get("/api/v1/events.csv", params=query, headers=h)
    assert r.status_code == 200, r.text
    rows = csv.DictReader(io.StringIO(r.text))
    return sorted((float(row["ts"]), row["space"], row["zone"]) for row in rows)


def counts(client, h, start: float, end: float, step: float, **query) -> dict[str, list]:
    """Per zone: (total, free, occupied, unknown) at each point."""
    r = client.get(
        "/api/v1/history", params={"start": start, "end": end, "step": step, **query}, headers=h
    )
    assert r.status_code == 200, r.text
    return {
        s["zone"]: [(p["total"], p["free"], p["occupied"], p["unknown"]) for p in s["points"]]
        for s in r.json()["series"]
    }


def test_expand_pending_stamps_each_event_with_its_zone_then(harness, tmp_path):
    journal = moved_journal(harness, tmp_path / "journal.sqlite")
    rows = journal.conn.execute("SELECT ts, space, zone FROM events ORDER BY id").fetchall()
    assert rows == [
        (T0, MOVED, "B"),
        (T0, "A-003", "A"),
        (T0, "B-001", "B"),
        (T0 + 100, MOVED, "B"),
        (T0 + 200, MOVED, "A"),
        (T0 + 200, ADDED, "A"),
        (T0 + 300, ADDED, "A"),
    ]
    assert journal.space_zones() == site_map(harness)  # replaced whole
    # what the restart changed, after the last event before it
    assert journal.conn.execute(
        "SELECT event, space, old, new FROM zone_changes ORDER BY space"
    ).fetchall() == [(4, MOVED, "B", "A"), (4, ADDED, None, "A")]
    # a space the site does not have gets none; changes still pending when the zones change
    # (committed before a restart) keep the zones they were reported under
    feed = Feed(journal)
    feed.report(T0 + 400, ("X-999", "unknown", "free"), (MOVED, "free", "occupied"), expand=False)
    journal.put_space_zones({**site_map(harness), MOVED: "C"})
    feed.report(T0 + 500, (MOVED, "occupied", "free"))
    assert journal.conn.execute("SELECT space, zone FROM events WHERE id > 7").fetchall() == [
        ("X-999", None),
        (MOVED, "A"),
        (MOVED, "C"),
    ]
    with journal.transaction():  # in the caller's transaction too
        journal.put_space_zones({"A-001": "A"})
    assert journal.space_zones() == {"A-001": "A"}
    journal.close()


def test_events_and_export_give_each_event_the_zone_of_its_time(harness, tmp_path):
    path = tmp_path / "journal.sqlite"
    moved_journal(harness, path).close()
    with api_on(harness, path) as (client, h):
        in_b = [(T0, MOVED, "B"), (T0, "B-001", "B"), (T0 + 100, MOVED, "B")]
        in_a = [
            (T0, "A-003", "A"),
            (T0 + 200, MOVED, "A"),
            (T0 + 200, ADDED, "A"),
            (T0 + 300, ADDED, "A"),
        ]
        assert listed(client, h, zone="B") == in_b
        assert listed(client, h, zone="A") == in_a
        assert listed(client, h, space=MOVED) == [
            (T0, MOVED, "B"),
            (T0 + 100, MOVED, "B"),
            (T0 + 200, MOVED, "A"),
        ]
        assert listed(client, h, zone="B", space=MOVED) == [
            (T0, MOVED, "B"),
            (T0 + 100, MOVED, "B"),
        ]
        assert listed(client, h, zone="A", since=T0 + 50, until=T0 + 250) == in_a[1:3]
        assert exported(client, h, zone="B") == in_b
        assert exported(client, h, zone="A") == in_a
        assert exported(client, h) == sorted(in_a + in_b)


def test_history_counts_each_space_in_the_zone_of_the_time(harness, tmp_path):
    path = tmp_path / "journal.sqlite"
    moved_journal(harness, path).close()
    with api_on(harness, path) as (client, h):
        # (total, free, occupied, unknown) at T0-50, T0+50, ..., T0+350. Every space of the
        # first site map counts from the start (never heard: unknown, as in live /zones);
        # A-001 in B until it moved back at T0+200; A-002, added later, from its first event
        want = {
            "A": [(78, 0, 0, 78), (78, 1, 0, 77), (78, 1, 0, 77), (80, 2, 1, 77), (80, 3, 0, 77)],
            "B": [(73, 0, 0, 73), (73, 1, 1, 71), (73, 0, 2, 71), (72, 0, 1, 71), (72, 0, 1, 71)],
            "C": [(40, 0, 0, 40)] * 5,  # nothing journalled there: all unknown
        }
        got = counts(client, h, T0 - 50, T0 + 350, 100)
        assert {z: got[z] for z in want} == want
        assert set(got) == {z.id for z in harness.site.zones}
        for k in [*range(4), *reversed(range(4))]:  # every start, with what it learnt
            start = T0 - 50 + 100 * k
            again = counts(client, h, start, T0 + 350, 100, zone="A")
            assert again == {"A": want["A"][k:]}, start
            again = counts(client, h, start, T0 + 350, 100, zone="B")
            assert again == {"B": want["B"][k:]}, start
        # the same answers from a reader that has learnt nothing yet
        with api_on(harness, path) as (fresh, h2):
            assert counts(fresh, h2, T0 + 150, T0 + 250, 100, zone="B") == {"B": want["B"][2:4]}
            assert counts(fresh, h2, T0 + 250, T0 + 350, 100, zone="A") == {"A": want["A"][3:]}


def test_history_reads_back_only_as_far_as_it_must(harness, tmp_path):
    """The spaces whose zone or existence the events after the start do not tell are looked
    for before it, along the ids, and the walk stops once they are found."""
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    journal.put_space_zones(old_map(harness))
    feed = Feed(journal)
    others = [s for s in site_map(harness) if s not in (MOVED, ADDED)][:40]
    feed.report(T0 - 10, (MOVED, "unknown", "occupied"))
    for k in range(300):  # a long stretch of other spaces' events
        feed.report(
            T0 + k, *((s, "free", "occupied") if k % 2 else (s, "occupied", "free") for s in others)
        )
    journal.put_space_zones(site_map(harness))
    feed.report(T0 + 400, (MOVED, "occupied", "free"), (ADDED, "unknown", "free"))
    journal.close()

    statements: list[str] = []

    class Recording(JournalReader):
        def connect(self):
            db = super().connect()
            if db is not None:
                db.set_trace_callback(statements.append)
            return db

    reader = Recording(str(path))
    at = reader.history_input(T0 + 350, T0 + 450, site_map(harness))
    assert at.zones is not None
    assert at.zones[MOVED] == "B" and ADDED not in at.zones and at.states[MOVED] == "occupied"
    assert all(at.zones[s] == site_map(harness)[s] for s in others)
    with closing(sqlite3.connect(path)) as db:
        plans = [
            line
            for sql in statements
            if sql.startswith("SELECT") and " FROM events" in sql
            for (*_, line) in db.execute("EXPLAIN QUERY PLAN " + sql)
        ]
        total = db.execute("SELECT count(*) FROM events").fetchone()[0]
    assert plans and not [x for x in plans if x.startswith("SCAN events")], plans
    # asked again, it walks no further than what it learnt: A-001's event, A-002's first
    statements.clear()
    assert reader.history_input(T0 + 350, T0 + 450, site_map(harness)) == at
    walks = [
        (int(lo), int(hi))
        for sql in statements
        if "json_each" in sql
        for lo, hi in re.findall(r"id > (\d+) AND id <= (\d+)", sql)
    ]
    assert walks and sum(hi - lo for lo, hi in walks) <= 2, walks  # the events after it
    assert total > 12000


def test_a_journal_from_before_zones_reads_in_the_current_sites_zones(harness, tmp_path):
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    feed = Feed(journal)
    feed.report(T0, (MOVED, "unknown", "free"), ("B-001", "unknown", "occupied"))
    journal.close()
    with closing(sqlite3.connect(path)) as db, db:  # the schema of the release before
        db.execute("ALTER TABLE events DROP COLUMN zone")
        db.execute("DROP TABLE space_zones")
        db.execute("DROP TABLE zone_changes")
    with api_on(harness, path) as (client, h):
        assert listed(client, h, zone="A") == [(T0, MOVED, "A")]
        assert listed(client, h, zone="B") == [(T0, "B-001", "B")]
        assert exported(client, h) == [(T0, MOVED, "A"), (T0, "B-001", "B")]
        # every space of the site from the start, as before (silence is unknown)
        got = counts(client, h, T0 - 50, T0 + 50, 100)
        assert got["A"] == [(80, 0, 0, 80), (80, 1, 0, 79)]
        assert got["B"] == [(72, 0, 0, 72), (72, 0, 1, 71)]

    # the gateway opens it: the column comes, the older events keep no zone
    journal = Journal(path)
    columns = [r[1] for r in journal.conn.execute("PRAGMA table_info(events)")]
    assert "zone" in columns
    journal.put_space_zones(old_map(harness))  # the zones it ran with: A-001 in B
    Feed(journal).report(T0 + 100, (MOVED, "free", "occupied"), ("A-003", "unknown", "free"))
    journal.close()
    with api_on(harness, path) as (client, h):
        assert listed(client, h, space=MOVED) == [(T0, MOVED, "A"), (T0 + 100, MOVED, "B")]
        assert exported(client, h, zone="B") == [(T0, "B-001", "B"), (T0 + 100, MOVED, "B")]
        got = counts(client, h, T0 - 50, T0 + 150, 100)
        # stored zones now: a space counts where its latest event says (A-001 in B from
        # T0+100), the spaces never heard in their site zone, unknown
        assert got["A"] == [(80, 0, 0, 80), (80, 1, 0, 79), (79, 1, 0, 78)]
        assert got["B"] == [(72, 0, 0, 72), (72, 0, 1, 71), (73, 0, 2, 71)]


def test_events_from_before_zones_stay_in_the_zone_of_the_upgrade_after_a_move(harness, tmp_path):
    """A journal from before zones, upgraded while A-001 was in zone B; a later site edit
    moves it to A. Its events from before the upgrade (no zone stored) stay in B, where
    the zone map the journal first kept had it, not in the zone it moved to."""
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    Feed(journal).report(T0, (MOVED, "unknown", "free"), ("B-001", "unknown", "occupied"))
    journal.close()
    with closing(sqlite3.connect(path)) as db, db:  # the schema of the release before
        db.execute("ALTER TABLE events DROP COLUMN zone")
        db.execute("DROP TABLE space_zones")
        db.execute("DROP TABLE zone_changes")
    journal = Journal(path)  # the upgrade: the site file then had A-001 in B
    journal.put_space_zones(old_map(harness))
    feed = Feed(journal)
    feed.seq = 1
    feed.report(T0 + 100, (MOVED, "free", "occupied"))
    journal.put_space_zones(old_map(harness) | {"B-002": "Q"})  # a zone Q for a while
    feed.report(T0 + 150, ("B-002", "unknown", "occupied"))
    journal.put_space_zones(site_map(harness))  # the edit: A-001 moves to A, Q is gone
    feed.report(T0 + 200, (MOVED, "occupied", "free"))
    journal.close()
    with api_on(harness, path) as (client, h):
        assert listed(client, h, space=MOVED) == [
            (T0, MOVED, "B"),
            (T0 + 100, MOVED, "B"),
            (T0 + 200, MOVED, "A"),
        ]
        assert listed(client, h, zone="B") == [
            (T0, MOVED, "B"),
            (T0, "B-001", "B"),
            (T0 + 100, MOVED, "B"),
        ]
        assert listed(client, h, zone="A") == [(T0 + 200, MOVED, "A")]
        assert exported(client, h, space=MOVED) == [
            (T0, MOVED, "B"),
            (T0 + 100, MOVED, "B"),
            (T0 + 200, MOVED, "A"),
        ]
        # a zone the site no longer has: its events can still be listed by it
        assert listed(client, h, zone="Q") == [(T0 + 150, "B-002", "Q")]
        assert client.get("/api/v1/events", params={"zone": "Z9"}, headers=h).status_code == 422
        # history: free in B from T0, occupied there at T0+100, free in A from T0+200
        got = counts(client, h, T0 + 50, T0 + 250, 100)
        assert [p[1:3] for p in got["B"]] == [(1, 1), (0, 2), (0, 1)]
        assert [p[1:3] for p in got["A"]] == [(0, 0), (0, 0), (1, 0)]


def test_drop_signs_forgets_the_displays_the_site_no_longer_has(tmp_path):
    journal = Journal(tmp_path / "journal.sqlite")
    with journal.transaction():
        journal.put_signs(
            [(d, f"parkguide/v1/x/displays/{d}/content", "{}", 60.0) for d in ("d1", "d2", "d3")]
        )
    with journal.transaction():
        assert sorted(journal.drop_signs(["d1", "d3", "d9"])) == ["d2"]
    assert [r[0] for r in journal.conn.execute("SELECT display FROM signs ORDER BY 1")] == [
        "d1",
        "d3",
    ]
    with journal.transaction():
        assert journal.drop_signs(iter(["d1", "d3"])) == []
        assert journal.drop_signs(d for d in ["d3"]) == ["d1"]
    assert [r[0] for r in journal.conn.execute("SELECT display FROM signs")] == ["d3"]
    journal.close()
