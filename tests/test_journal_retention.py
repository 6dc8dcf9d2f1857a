"""The journal forgets history older than --journal-keep-days (events, ended assignments
and their plates), in small steps, and never what a restart replays; replaced boots stay."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from gateway_support import Edge, running_gateway, site_variant

from gateway.journal import Journal

DAY = 86400.0
NOW = 1_800_000_000.0


def _count(db, table: str) -> int:
    conn = sqlite3.connect(str(db))
    try:
        return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    finally:
        conn.close()


def _events(journal: Journal, ts: float, n: int, seq0: int) -> None:
    with journal.transaction():
        for i in range(n):
            change = json.dumps([["A-001", "free", "occupied"]])
            journal.add_changes(ts + i, "bus-g", "serial-bus-g", "b1", seq0 + i, change)
        journal.expand_pending()


def test_prune_forgets_old_history_in_steps_and_keeps_what_a_restart_needs(tmp_path):
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    _events(journal, NOW - 400 * DAY, 450, 1)  # a year and more ago
    _events(journal, NOW - 10 * DAY, 5, 1000)  # recent
    journal.mark_checkpoint(journal.last_event_id() - 2)
    _events(journal, NOW - 500 * DAY, 3, 2000)  # after the checkpoint (a clock set back)
    with journal.transaction():
        for i, (ts, until) in enumerate(
            [(NOW - 400 * DAY, NOW - 400 * DAY + 180), (NOW - 1, NOW + 179)]
        ):
            journal.add_assignment(ts, "north", "resident", "A-002", "A", until, "沪A12345",
                                   f"r{i}", "{}")  # fmt: skip
        journal.conn.execute("INSERT INTO retired_boots VALUES ('serial-bus-g', 'old', ?)",
                             (NOW - 400 * DAY,))  # fmt: skip
        journal.conn.execute("INSERT INTO retired_boots VALUES ('serial-bus-g', 'b0', ?)",
                             (NOW - 5,))  # fmt: skip
    before = NOW - 366 * DAY
    steps = []
    while n := journal.prune(before, rows=200):
        steps.append(n)
    assert steps[0] == 200 + 1 and len(steps) == 3  # 450 old events in steps of 200
    events = journal.conn.execute("SELECT ts FROM events ORDER BY id").fetchall()
    # the recent five, and the three after the checkpoint however old they look
    assert [t for (t,) in events] == [NOW - 10 * DAY + i for i in range(5)] + [
        NOW - 500 * DAY + i for i in range(3)
    ]
    plates = journal.conn.execute("SELECT request_id FROM assignments").fetchall()
    assert plates == [("r1",)]  # the open hold stays; the year-old one went with its plate
    # a replaced boot is remembered for good: a late message of one forgotten would be
    # taken for a new boot and retire the agent's live one
    assert journal.retired_boots() == {"serial-bus-g": ["old", "b0"]}
    assert journal.history_from() == before
    journal.close()


@pytest.mark.timeout(60)
def test_the_running_gateway_prunes_in_quiet_moments(tmp_path, mosquitto, monkeypatch, caplog):
    import logging

    import gateway.service as service_module

    caplog.set_level(logging.INFO, logger="gateway.service")

    monkeypatch.setattr(service_module, "PRUNE_IDLE_S", 0.1)
    monkeypatch.setattr(service_module, "PRUNE_BUSY_S", 0.05)
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    _events(journal, time.time() - 3 * DAY, 300, 1)
    journal.mark_checkpoint(journal.last_event_id())
    journal.close()
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    site_path = site_variant(tmp_path)
    try:
        with running_gateway(site_path, mosquitto.url, db, journal_keep_days=2) as gw:
            edge.send({"A-003": "occupied"})
            deadline = time.monotonic() + 10
            while gw.pruned < 300 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gw.pruned == 300
            assert gw.gateway.accepted == 1
            # forgetting cannot be undone: it is said, once, with the flag that controls it
            said = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(said) == 1, caplog.text
            assert "forgetting journal history" in said[0].getMessage()
            assert "older than 2 days" in said[0].getMessage()
            assert "--journal-keep-days" in said[0].getMessage()
            while "journal rows older than" not in caplog.text and time.monotonic() < deadline:
                time.sleep(0.05)  # said by the next step, which finds nothing left
            assert "journal rows older than 2 days" in caplog.text  # how many, at the end
    finally:
        edge.stop()
    assert _count(db, "events") == 1  # the new report's change, nothing older than 2 days


def test_a_negative_keep_is_refused(tmp_path):
    import subprocess
    import sys

    from tests.conftest import EXAMPLE_SITE

    out = subprocess.run(
        [sys.executable, "-m", "parkguide", "gateway", "--site", str(EXAMPLE_SITE),
         "--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "j.db"),
         "--journal-keep-days", "-1"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 2 and "--journal-keep-days" in out.stderr


def test_prune_keeps_the_newest_event_so_ids_never_go_back(tmp_path):
    """A site quiet for longer than the window: every event is old. The newest stays, or
    the next event would get an id below the checkpoint mark and a restart would skip it."""
    journal = Journal(tmp_path / "journal.sqlite")
    _events(journal, NOW - 400 * DAY, 5, 1)
    mark = journal.last_event_id()
    journal.mark_checkpoint(mark)
    while journal.prune(NOW - DAY):
        pass
    assert journal.last_event_id() == mark
    _events(journal, NOW, 1, 100)
    assert journal.last_event_id() > mark
    assert [e[0] for e in journal.events_after(mark)] == [mark + 1]
    journal.close()


def test_a_clock_stepped_far_ahead_does_not_forget_the_history(tmp_path, mosquitto, monkeypatch):
    """A gateway started with its clock more than the kept window ahead forgot every event
    for good (and /history stayed refused for a year after the clock was put right).
    Pruning goes by the wall clock only when an agent's report agrees with it; otherwise no
    further than the journal's newest event and the monotonic time since vouch for."""
    import gateway.service as service_module

    monkeypatch.setattr(service_module, "PRUNE_IDLE_S", 0.05)
    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    _events(journal, time.time() - 400 * DAY - 30 * DAY, 50, 1)  # a month older: forgettable
    _events(journal, time.time() - 400 * DAY, 50, 100)  # as seen by a clock 400 days ahead
    # a space last heard then: the start journals its TTL verdict (unknown) by the clock now
    old = time.time() - 400 * DAY
    with journal.transaction():
        journal.put_spaces([("A-001", "occupied", "occupied", 0, old, old, old, "serial-bus-g")])
    journal.mark_checkpoint(journal.last_event_id())
    journal.close()
    with running_gateway(site_variant(tmp_path), mosquitto.url, db, journal_keep_days=7) as gw:
        deadline = time.monotonic() + 5
        while gw.pruned < 50 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.3)  # more prune steps: none may go further
        assert gw.pruned == 50  # the month-older ones only: 7 days before the newest event
    assert _count(db, "events") == 51  # and the verdict of the start
