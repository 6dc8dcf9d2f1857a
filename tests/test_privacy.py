# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Licence plates are personal data (docs/privacy.md): kept --plate-keep-hours, shown to
managers only, never logged, erasable by value, and not stored at all when asked."""

from __future__ import annotations

import json
import logging
import sqlite3
import subprocess
import time

import pytest
from api_support import PASSWORD, client, harness, settings, tokens, users  # noqa: F401
from conftest import parkguide_cmd
from gateway_support import Clocks, Edge, running_gateway, site_variant, snapshot_all_free

from api.live import LiveEvent
from api.routes.stream import sse_message
from gateway.journal import Journal, forget_plate
from parking import topics
from parking.site import EXAMPLE_SITE, load_site

SITE = "xinyuan"
PLATE = "沪A12345"


def _arrive(gw, sent: list, plate: str = PLATE, request_id: str = "r1") -> dict:
    """An arrival at the north gate; the answer it got (``sent``: what ``gw`` published)."""
    body = {"class": "resident", "plate": plate, "request_id": request_id}
    gw.handle(topics.arrival(SITE, "north"), json.dumps(body).encode())
    return json.loads(next(p for t, p in reversed(sent) if t.endswith("/assignment")))


def _stored(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT plate, payload FROM assignments ORDER BY id").fetchall()


def test_plates_are_forgotten_after_the_hold_and_the_keep_and_erased_by_value(tmp_path):
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    rows = [
        ("沪A1", 100.0, 90.0),
        ("沪A2", None, 95.0),
        ("沪A1", 500.0, 99.0),
        ("粤B7", 100.0, 96.0),
    ]
    for plate, hold, ts in rows:
        body = json.dumps({"plate": plate, "space": "A-001"}, ensure_ascii=False)
        journal.add_assignment(ts, "north", "resident", "A-001", "A", hold, plate, None, body)
    # holds ended (or answers without a hold given) before 200: the one held until 500 stays
    assert journal.forget_plates(200.0) == 3
    kept = journal.conn.execute("SELECT plate, payload FROM assignments ORDER BY id").fetchall()
    assert [p for p, _ in kept] == [None, None, "沪A1", None]
    assert [json.loads(b)["plate"] for _, b in kept] == [None, None, "沪A1", None]
    assert journal.forget_plates(200.0) == 0
    journal.close()
    # by value, letters in any case, with the WAL emptied: the bytes are gone from the files
    conn = sqlite3.connect(db)
    assert forget_plate(conn, "沪a1") == 1
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()
    for f in tmp_path.iterdir():
        assert "沪A1".encode() not in f.read_bytes(), f.name  # secure_delete: overwritten


def test_a_gateway_told_not_to_keep_plates_echoes_them_and_stores_none(tmp_path):
    site = load_site(EXAMPLE_SITE)
    clocks = Clocks(1_800_000_000.0)
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    sent: list = []
    gw = clocks.gateway(site, journal, lambda t, p, q, r: sent.append((t, p)), journal_plates=False)
    gw.publish_all()
    snapshot_all_free(gw, site, clocks.wall)
    streamed = []  # what the API's live stream hears, managers' included
    gw.subscribe(lambda ev: streamed.append(ev.data) if ev.kind == "assignment" else None)
    answer = _arrive(gw, sent)
    assert answer["plate"] == PLATE  # the gate still knows which car the space is for
    assert answer["space"] is not None
    again = _arrive(gw, sent)  # the gate's retry: the same space, from the journal's answer
    assert again["space"] == answer["space"] and again["plate"] == PLATE
    assert [e["plate"] for e in streamed] == [None]
    assert [json.loads(body)["plate"] for _, body in journal.conn.execute(
        "SELECT plate, payload FROM assignments")] == [None]  # fmt: skip
    assert journal.conn.execute("SELECT plate FROM assignments").fetchall() == [(None,)]
    assert [a.plate for a in gw.assignments()] == [None]
    journal.close()


def test_only_managers_read_plates(client, tokens, harness):
    harness.fill()
    answer = _arrive(harness.gateway, harness.published, request_id="api-1")
    assert answer["plate"] == PLATE
    for role, shown in (("viewer", None), ("technician", None), ("manager", PLATE)):
        got = client.get("/api/v1/assignments", headers=tokens[role]).json()
        assert got[0]["plate"] == shown, role
        arrivals = client.get("/api/v1/arrivals", headers=tokens[role]).json()
        last = next(a["last"] for a in arrivals if a["entrance"] == "north")
        assert last["plate"] == shown, role
        me = client.get("/api/v1/auth/me", headers=tokens[role]).json()
        assert me["user"]["can_read_plates"] is (role == "manager")
    event = LiveEvent("assignment", {"space": "A-001", "plate": PLATE}, 1.0)

    def sent_plate(**audience) -> str | None:
        text = sse_message(event, **audience)
        return json.loads(text.split("data: ", 1)[1])["data"]["plate"]

    assert sent_plate(raw_allowed=True, plates_allowed=False) is None
    assert sent_plate(raw_allowed=False, plates_allowed=True) == PLATE


def test_a_refused_arrival_is_logged_without_its_plate(tmp_path, caplog):
    site = load_site(EXAMPLE_SITE)
    clocks = Clocks(1_800_000_000.0)
    journal = Journal(tmp_path / "journal.sqlite")
    gw = clocks.gateway(site, journal, lambda *a: None)
    caplog.set_level(logging.WARNING)
    for body in (
        {"class": "visiter", "plate": "粤C55555"},  # no such class
        {"class": "resident", "plate": "苏E1234567890123456"},  # too long: quoted in the reason
    ):
        gw.handle(topics.arrival(SITE, "north"), json.dumps(body, ensure_ascii=False).encode())
    assert gw.counters().rejected == {"unknown_class": 1, "invalid": 1}
    assert "粤C55555" not in caplog.text and "苏E1234567890123456" not in caplog.text
    assert caplog.text.count('"plate": "***"') == 2, caplog.text
    journal.close()


def test_forget_plate_command_erases_one_plate_and_refuses_bad_input(tmp_path):
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    for i, plate in enumerate((PLATE, "粤B7", PLATE)):
        body = json.dumps({"plate": plate}, ensure_ascii=False)
        journal.add_assignment(i, "north", "resident", None, None, None, plate, None, body)
    journal.close()

    def run(*args):
        return subprocess.run([*parkguide_cmd(), "journal", "forget-plate", *args],
                              capture_output=True, text=True, timeout=60)  # fmt: skip

    out = run(PLATE.lower(), "--db", str(db), "--json")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"plate": PLATE.lower(), "assignments": 2}
    assert [p for p, _ in _stored(db)] == [None, "粤B7", None]
    text = run("粤B7", "--db", str(db))
    assert text.returncode == 0 and "blanked in 1 assignment" in text.stdout
    assert "backups" in text.stdout  # what it cannot reach is said
    for args, why in (
        (("x" * 17, "--db", str(db)), "1-16 printable"),
        ((PLATE, "--db", str(tmp_path / "none.sqlite")), "no such journal"),
    ):
        bad = run(*args)
        assert bad.returncode == 2 and why in bad.stderr, bad.stderr
    assert [p for p, _ in _stored(db)] == [None, None, None]


@pytest.mark.timeout(60)
def test_the_running_gateway_forgets_plates_after_the_keep(
    tmp_path, mosquitto, monkeypatch, caplog
):
    import gateway.service as service_module

    monkeypatch.setattr(service_module, "PRUNE_IDLE_S", 0.1)
    db = tmp_path / "journal.sqlite"
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    site_path = site_variant(tmp_path)
    try:
        with running_gateway(
            site_path, mosquitto.url, db, hold_s=0.5, plate_keep_hours=0.5 / 3600
        ) as gw:
            edge.send({"A-003": "free"})
            gw.gateway.handle(
                topics.arrival(SITE, "north"),
                json.dumps({"class": "resident", "plate": PLATE}).encode(),
            )
            assert [a.plate for a in gw.gateway.assignments()] == [PLATE]
            deadline = time.monotonic() + 10
            while gw.plates_forgotten < 1 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gw.plates_forgotten == 1
            assert [a.plate for a in gw.gateway.assignments()] == [None]
            # it cannot be undone: said (a first start after an upgrade blanks many at once)
            said = [r for r in caplog.records if "blanking the licence plates" in r.message]
            assert [r.levelno for r in said] == [logging.WARNING]
            assert "0.000138889 h" in said[0].message and "--plate-keep-hours" in said[0].message
            with sqlite3.connect(db) as conn:  # the stand-alone API reads the keep here
                keep = conn.execute("SELECT value FROM meta WHERE key = 'plate_keep_s'").fetchone()
            assert float(keep[0]) == pytest.approx(0.5)
    finally:
        edge.stop()


def test_the_stand_alone_api_hides_what_the_journal_forgot(tmp_path):
    """It keeps recent answers in memory, heard on the broker: plates past the gateway's
    --plate-keep-hours are hidden, and an erasure reloads them from the journal."""
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig
    from parking.payloads import Assignment

    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    journal.set_meta("plate_keep_s", "3600.0")
    journal.close()
    now = time.time()
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", 1), str(db))
    view._load_journal()
    for plate, ts in (("粤B7", now - 7300), (PLATE, now)):  # held 180 s, 2 h ago; now
        answer = Assignment(entrance="north", vehicle_class="resident", space="A-001",
                            zone="A", hold_expires=ts + 180, plate=plate, ts=ts)  # fmt: skip
        body = answer.model_dump_json(by_alias=True)
        with sqlite3.connect(db) as conn:  # journaled before published, as the gateway does
            conn.execute("INSERT INTO assignments(ts, entrance, class, plate, payload)"
                         " VALUES (?, 'north', 'resident', ?, ?)", (ts, plate, body))  # fmt: skip
        view._handle(topics.assignment(SITE, "north"), body.encode(), False)
    assert [a.plate for a in view.assignments()] == [PLATE, None]
    with sqlite3.connect(db) as conn:
        assert forget_plate(conn, PLATE) == 1
    view._load_journal()  # its next look at the journal (every 5 s)
    assert [a.plate for a in view.assignments()] == [None, None]
    assert [a.ts for a in view.assignments()] == [now, now - 7300]  # the rest is kept
    # a gateway that keeps no plate: none in memory either, nor in the stream
    with sqlite3.connect(db) as conn:
        conn.execute("UPDATE meta SET value = '0.0' WHERE key = 'plate_keep_s'")
    view._load_journal()
    heard = []
    view.subscribe(lambda ev: heard.append(ev.data) if ev.kind == "assignment" else None)
    answer = Assignment(entrance="north", vehicle_class="resident", space="A-002", zone="A",
                        hold_expires=now + 180, plate="粤C1", ts=now + 1)  # fmt: skip
    view._handle(topics.assignment(SITE, "north"), answer.model_dump_json().encode(), False)
    assert [e["plate"] for e in heard] == [None]
    assert view.assignments()[0].plate is None


def test_an_erasure_a_reader_holds_back_says_so_and_does_not_stall_the_journal(
    tmp_path, monkeypatch
):
    """A backup or a long export reading the journal keeps the write-ahead log's old pages,
    with the plate: the command says to run it again, instead of waiting with the writer
    lock held (the gateway's commits would wait as long)."""
    from gateway import erasure

    monkeypatch.setattr(erasure, "CHECKPOINT_TRIES", 3)
    monkeypatch.setattr(erasure, "CHECKPOINT_PAUSE_S", 0.05)
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    body = json.dumps({"plate": PLATE}, ensure_ascii=False)
    journal.add_assignment(1.0, "north", "resident", None, None, None, PLATE, None, body)
    reader = sqlite3.connect(db, isolation_level=None)
    reader.execute("BEGIN")
    assert reader.execute("SELECT count(*) FROM assignments").fetchone() == (1,)
    started = time.monotonic()
    with pytest.raises(erasure.WalKept) as kept:
        erasure.erase(db, PLATE)
    assert kept.value.args == (1,)
    assert time.monotonic() - started < 2  # never the 5 s of a busy timeout
    # the journal was not held: the gateway's next commit goes through at once
    journal.add_assignment(2.0, "north", "resident", None, None, None, None, None, "{}")
    reader.execute("COMMIT")
    reader.close()
    assert erasure.erase(db, PLATE) == 0  # run again: blanked already, the WAL emptied now
    journal.close()
    for f in tmp_path.iterdir():
        assert PLATE.encode() not in f.read_bytes(), f.name


def test_forget_plate_run_again_says_the_plate_is_gone(tmp_path):
    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    out = subprocess.run([*parkguide_cmd(), "journal", "forget-plate", PLATE, "--db", str(db)],
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "is in no assignment" in out.stdout and "write-ahead log is emptied" in out.stdout
