"""A gateway stopped longer than its sources' TTL: at the restart, the spaces of the sources
not heard since turn `unknown` (journal, history, InfluxDB outbox), once the broker's backlog
is in: an agent it kept reports of is brought up to date by them and never blinks unknown.
Not dated back to when the TTL ran out: docs/architecture.md, "Event times", says why. The
gateway's own downtime is recorded as such (an outage, from its clean stop or its last sign
of life to the restart): history shows it unknown, and InfluxDB's zone counts turn unknown
at its start."""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from contextlib import closing
from pathlib import Path

import influx_support
import pytest
from conftest import eventually
from gateway_support import (
    Clocks,
    Collector,
    Edge,
    running_gateway,
    site_variant,
    snapshot_all_free,
    zone_topic,
)

from api.history import zone_series
from api.journal import JournalReader
from gateway import outbox
from gateway.journal import Journal
from gateway.outbox import event_time_ns
from gateway.service import _OutboxHistory
from parking import topics
from parking.site import Site, load_site

pytestmark = pytest.mark.timeout(90)
victoria = influx_support.victoria
T0 = 1_800_000_000.0
BUS_TTL_S = 15
CAMERA_TTL_S = 120


def _camera_ttl_site(tmp_path: Path) -> Site:
    """The example site with cam-c's TTL longer than the buses'."""
    path = site_variant(tmp_path)
    text = path.read_text(encoding="utf-8")
    old = "id: cam-c\n    ttl_s: 15"
    assert old in text
    path.write_text(text.replace(old, f"id: cam-c\n    ttl_s: {CAMERA_TTL_S}"), encoding="utf-8")
    return load_site(path)


def _report(site: Site, source: str, agent: str, ts: float) -> tuple[str, bytes]:
    """``source``'s agent says every one of its spaces is free at ``ts``."""
    body = {
        "agent": agent,
        "source": source,
        "boot": "b",
        "seq": 1,
        "ts": ts,
        "kind": "snapshot",
        "spaces": [
            {"space": s, "state": "free", "since": ts} for s in site.spaces_of_source(source)
        ],
    }
    return topics.edge_occupancy(site.id, agent), json.dumps(body).encode()


def _zone_points(journal: Journal, zone: str) -> list[tuple[int, dict[str, int]]]:
    """(ts_ns, fields) of the outbox's zone_occupancy points of ``zone``, in id order."""
    out = []
    for line, ts in journal.conn.execute(
        "SELECT line, ts_ns FROM outbox WHERE measurement = 'zone_occupancy' ORDER BY id"
    ):
        if f",zone={zone} " in line:
            fields = line.split(" ")[1].split(",")
            out.append((ts, {k: int(v.rstrip("i")) for k, v in (f.split("=") for f in fields)}))
    return out


def _history(db: Path, site: Site, times: list[float]) -> dict[str, list[tuple[int, int]]]:
    """(free, unknown) per zone at ``times``, read from the journal as /history reads it."""
    site_zone = {s.id: s.zone for s in site.spaces}
    reader = JournalReader(str(db))
    at = reader.history_input(times[0], times[-1], site_zone)
    zone_of = dict(site_zone) if at.zones is None else at.zones
    blind = [(a, b) for a, b, _ in reader.outages(times[0], times[-1])]
    series = zone_series(zone_of, at.states, at.changes, times, joining=site_zone, blind=blind)
    return {z: [(p.free, p.unknown) for p in pts] for z, pts in series.items()}


def test_a_restart_turns_the_silent_sources_unknown_as_of_the_restart(example_site, tmp_path):
    """Stopped 60 s after the buses' and the camera's last reports: the buses' spaces turn
    unknown at the restart (journal, outbox point, history), with their zones' counts; the
    camera's TTL (120 s) has not run out, so its spaces stay free after it. The outage
    itself (from the last tick's sign of life) is unknown in history and in the outbox's
    zone counts, for every zone."""
    site = _camera_ttl_site(tmp_path)
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)

    def open_gateway():
        history = _OutboxHistory(site.id, None)
        journal = Journal(db, history)
        outbox.ensure_schema(journal.conn)
        return clocks.gateway(site, journal, lambda *a: None, history=history)

    gw = open_gateway()
    try:
        gw.publish_all()
        for bus in site.buses:
            gw.handle(*_report(site, bus.id, bus.agent, clocks.wall))
        clocks.advance(5)
        camera = site.cameras[0]
        gw.handle(*_report(site, camera.id, camera.agent, clocks.wall))
        clocks.advance(2)
        gw.tick()
        gw.flush_checkpoint()  # a stop's last checkpoint
    finally:
        gw.journal.close()
    clocks.advance(60)  # the outage: well past the buses' TTL, within the camera's
    restarted = clocks.wall
    gw = open_gateway()
    try:
        gw.flush_checkpoint()
        events = gw.journal.events_after(0)
        times = [e[1] for e in events]
        assert times == sorted(times)  # ids still in time order
        unknown = {(e[2], e[1]) for e in events if e[4] == "unknown"}
        bus_spaces = {s for b in site.buses for s in site.spaces_of_source(b.id)}
        assert unknown == {(s, restarted) for s in bus_spaces}

        zone_a = _zone_points(gw.journal, "A")
        at_restart = [f for ts, f in zone_a if ts == event_time_ns(restarted)]
        assert at_restart == [{"free": 0, "occupied": 0, "unknown": 80, "closed": 0, "total": 80}]
        down = T0 + 7  # the last tick journaled that it was running
        assert gw.journal.outages(0, restarted + 1) == [(down, restarted, False)]
        zone_c = _zone_points(gw.journal, "C")
        blind = {"free": 0, "occupied": 0, "unknown": 40, "closed": 0, "total": 40}
        assert (event_time_ns(down + 0.001), blind) in zone_c  # the outage's start
        assert all(f["unknown"] == 0 for ts, f in zone_c if ts >= event_time_ns(restarted))
    finally:
        gw.journal.close()
    samples = [T0 + 6, T0 + 40, restarted + 1]
    hist = _history(db, site, samples)
    assert hist["A"] == [(80, 0), (0, 80), (0, 80)]
    assert hist["C"] == [(40, 0), (0, 40), (40, 0)]


def test_a_gateway_stopped_past_the_ttl_shows_the_outage_as_unknown_in_influxdb(
    mosquitto, victoria, tmp_path
):
    """The real service, broker and VictoriaMetrics: a clean stop 1 s after bus-g's snapshot,
    restarted 8 s later with a TTL of 4 s: bus-g's spaces are journaled unknown at the
    restart, and VictoriaMetrics has zone A's unknown count of that moment."""
    ttl = 4
    influx = {"url": victoria.url, "org": "parkguide", "bucket": "parkguide", "token": "t0k3n"}
    site_path = site_variant(tmp_path, ttl_s=ttl)
    db = tmp_path / "journal.db"
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, db, influx=influx) as gw:
            site = gw.site
            edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
            watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
        stopped = time.time()
        with closing(sqlite3.connect(db)) as conn:  # the snapshot's changes: when it was heard
            (heard,) = conn.execute("SELECT max(ts) FROM events WHERE new = 'free'").fetchone()
        assert stopped < heard + ttl, "stopped after the TTL ran out: the test proves nothing"
        time.sleep(2 * ttl)
        restarting = time.time()
        with running_gateway(site_path, mosquitto.url, db, influx=influx) as gw:
            deadline = time.monotonic() + 20
            points: list[tuple[int, int]] = []
            while time.monotonic() < deadline:
                found = victoria.export('zone_occupancy_unknown{site="xinyuan",zone="A"}')
                points = [
                    (t, int(v))
                    for item in found
                    for t, v in zip(item["timestamps"], item["values"], strict=True)
                ]
                if any(t >= restarting * 1000 and v == 80 for t, v in points):
                    break
                time.sleep(0.3)
            with gw.gateway.lock:  # the verdicts follow the broker's (empty) backlog
                events = gw.journal.events_after(0)
    finally:
        watch.stop()
        edge.stop()
    (at,) = {e[1] for e in events if e[4] == "unknown" and e[2].startswith("A-")}
    assert restarting <= at < restarting + 10
    assert (event_time_ns(at) // 1_000_000, 80) in points
    # the downtime: from the clean stop to the restart, and zone A unknown from its start
    ((down, up, clean),) = JournalReader(str(db)).outages(0, time.time())
    assert heard < down <= stopped and at - 2 < up <= at and clean
    assert (event_time_ns(down + 0.001) // 1_000_000, 80) in points
    samples = [heard, down - 0.001, down + 0.5, at + 0.5]
    hist = _history(db, load_site(site_path), samples)["A"]
    assert hist == [(80, 0), (80, 0), (0, 80), (0, 80)]


def _seq(service, agent: str) -> int:
    known = service.gateway.gate.sequence(agent)
    return -1 if known is None else known[1]


def test_a_restart_takes_what_the_broker_kept_as_heard_not_as_an_outage(mosquitto, tmp_path):
    """The gateway stopped for twice the TTL while bus-g went on reporting: the broker kept
    those reports for it, so bus-g was never silent. The restart must not date an outage
    from the last report the journal has (a review saw 7 s of unknown in the history of an
    agent that never stopped); it takes the backlog first."""
    ttl = 3
    site_path = site_variant(tmp_path, ttl_s=ttl)
    db = tmp_path / "journal.db"
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, db) as gw:
            spaces = gw.site.spaces_of_source("bus-g")
            edge.send({s: "free" for s in spaces}, kind="snapshot")
            watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
        stopped = time.monotonic()
        while time.monotonic() < stopped + 2 * ttl:  # the agent goes on, the broker keeps it
            edge.send({s: "free" for s in spaces}, kind="snapshot")
            time.sleep(0.5)
        with closing(sqlite3.connect(db)) as conn:
            (seq_before,) = conn.execute(
                "SELECT seq FROM agents WHERE agent = 'serial-bus-g'"
            ).fetchone()
        with running_gateway(site_path, mosquitto.url, db) as gw:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and _seq(gw, "serial-bus-g") <= seq_before:
                time.sleep(0.1)
            time.sleep(1.0)  # a tick or two after the backlog
            with gw.gateway.lock:
                events = gw.journal.events_after(0)
            taken = _seq(gw, "serial-bus-g")
    finally:
        watch.stop()
        edge.stop()
    assert taken > seq_before, "the backlog never came: the test proves nothing"
    assert [e for e in events if e[4] == "unknown" and e[2] in set(spaces)] == []


def _stopped_with_buses_silent(site: Site, db: Path, clocks: Clocks, outage_s: float) -> None:
    """Every bus reports all free at T0, the gateway stops cleanly at T0 + 2, and the clocks
    move on ``outage_s``."""
    gw = clocks.gateway(site, Journal(db), lambda *a: None)
    try:
        for bus in site.buses:
            gw.handle(*_report(site, bus.id, bus.agent, clocks.wall))
        clocks.advance(2)
        gw.tick()
        gw.journal_quiet(force=True)
        gw.flush_checkpoint()
    finally:
        gw.journal.close()
    clocks.advance(outage_s)


def _unknown_times(gw, spaces: set[str]) -> set[float]:
    return {e[1] for e in gw.journal.events_after(0) if e[4] == "unknown" and e[2] in spaces}


@pytest.mark.parametrize("kept", [True, False], ids=["kept by the broker", "not"])
def test_the_start_verdicts_spare_the_agents_the_broker_kept_messages_of(
    example_site, tmp_path, kept
):
    """bus-g's last report was at T0, the gateway restarted at T0 + 62. An agent whose
    reports the broker kept for it meanwhile gets no verdict: its backlog, handled next,
    brings it up to date (before, its spaces blinked unknown and back in the history, and a
    dated verdict put a false outage there); one it kept nothing of turns unknown now."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    _stopped_with_buses_silent(example_site, db, clocks, 60)
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None, defer_start_verdicts=True)
    try:
        assert gw.start_verdicts_due
        assert _unknown_times(gw, set(example_site.spaces_of_source("bus-g"))) == set()
        gw.start_verdicts({"serial-bus-g"} if kept else set())
        gw.flush_checkpoint()
        got = _unknown_times(gw, set(example_site.spaces_of_source("bus-g")))
        others = _unknown_times(gw, set(example_site.spaces_of_source("bus-b1")))
    finally:
        gw.journal.close()
    assert got == (set() if kept else {clocks.wall})
    assert others == {clocks.wall}


def test_nothing_is_derived_while_the_start_verdicts_wait(example_site, tmp_path):
    """Between the start and its verdicts the timer writes no zone point and publishes
    nothing: a 10 s zone point then said a silent source's spaces were free (a review found
    one in the outbox, dated after the outage it hid)."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    _stopped_with_buses_silent(example_site, db, clocks, 60)
    published: list[str] = []
    history = _OutboxHistory(example_site.id, None)
    journal = Journal(db, history)
    outbox.ensure_schema(journal.conn)
    gw = clocks.gateway(
        example_site,
        journal,
        lambda topic, *a: published.append(topic),
        history=history,
        defer_start_verdicts=True,
    )
    # the start's one point: the outage's, all unknown, at its start
    ((ts, blind),) = _zone_points(journal, "A")[-1:]
    assert blind["unknown"] == 80 and ts < event_time_ns(clocks.wall - 59)
    before = len(_zone_points(journal, "A"))
    try:
        clocks.advance(1)
        gw.tick()
        gw.flush_checkpoint()
        assert published == [] and len(_zone_points(journal, "A")) == before
        gw.start_verdicts()
        gw.flush_checkpoint()
        points = _zone_points(journal, "A")[before:]
    finally:
        journal.close()
    assert points and all(f["unknown"] == 80 for _, f in points), points


def test_a_managers_event_while_the_start_verdicts_wait_keeps_the_time_order(
    example_site, tmp_path
):
    """A manager closes a closed space again with a new reason (an event, no change of
    state) through the gateway's own API while the start's verdicts wait: the journal keeps
    its time order (a review saw a dated verdict journaled after it, 46 s before it)."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None)
    try:
        for bus in example_site.buses:
            gw.handle(*_report(example_site, bus.id, bus.agent, clocks.wall))
        gw.control_space("A-001", "close", "wang", "detector broken")
        clocks.advance(2)
        gw.flush_checkpoint()
    finally:
        gw.journal.close()
    clocks.advance(60)
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None, defer_start_verdicts=True)
    try:
        gw.control_space("A-001", "close", "li", "still broken, parts ordered")
        gw.start_verdicts()
        gw.flush_checkpoint()
        events = gw.journal.events_after(0)
    finally:
        gw.journal.close()
    times = [e[1] for e in events]
    assert times == sorted(times), events[-3:]
    assert {e[1] for e in events if e[4] == "unknown"} == {clocks.wall}


@pytest.mark.parametrize("clean", [True, False], ids=["clean stop", "crash"])
def test_a_gap_in_a_quiet_agents_seq_after_a_crash_is_not_blamed_on_the_broker(
    example_site, tmp_path, caplog, clean
):
    """A quiet agent's seq is journaled every QUIET_JOURNAL_S: after a crash the journal is
    behind what the run had taken, and the next report's seq leaves a gap. That gap is
    said (INFO) and not counted as reports the broker dropped (a review saw "983 of reports
    ... never arrived (the broker dropped them ...)" after every kill -9). After a clean stop
    the journal has every seq, and a gap is the broker's loss: warned and counted."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None)
    try:
        for seq in range(1, 6):
            snapshot_all_free(gw, example_site, clocks.wall, seq=seq)
            clocks.advance(1)
        if clean:
            gw.journal_clean_stop()
        gw.flush_checkpoint()
    finally:
        gw.journal.close()
    clocks.advance(5)
    caplog.set_level(logging.INFO, logger="gateway.live")
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None)
    try:
        snapshot_all_free(gw, example_site, clocks.wall, seq=8)  # 6 and 7: never sent
        missed = gw.counters().reports_missed
    finally:
        gw.journal.close()
    warned = [r for r in caplog.records if "never arrived" in r.getMessage()]
    explained = [r for r in caplog.records if "without a clean stop" in r.getMessage()]
    if clean:  # 6..7 dropped by the broker
        assert missed.get("serial-bus-g") == 2 and len(warned) == len(example_site.buses)
        assert explained == []
    else:  # taken by the crashed run or lost: it cannot tell which
        assert not any(missed.values()) and warned == []
        assert len(explained) == len(example_site.buses)
        assert "reports 6..7 are not in the journal" in explained[0].getMessage()


def _run_and_stop(site: Site, db: Path, clocks: Clocks, *, run_s: float, clean: bool) -> None:
    """The gateway starts, hears every bus, ticks each second for ``run_s`` and stops: cleanly
    (journal_clean_stop, as the service does) or as in a crash (nothing more written)."""
    gw = clocks.gateway(site, Journal(db), lambda *a: None)
    try:
        for bus in site.buses:
            gw.handle(*_report(site, bus.id, bus.agent, clocks.wall))
        for _ in range(int(run_s)):
            clocks.advance(1)
            gw.tick()
        gw.flush_checkpoint()
        if clean:
            gw.journal_clean_stop()
    finally:
        gw.journal.close()


def _edited_and_restarted(
    site: Site, db: Path, *, run_s: float, clean: bool, sql: str, params: tuple, down_s: float
) -> tuple[Clocks, list[tuple[float, float, bool]]]:
    """A run from T0 (:func:`_run_and_stop`), the stopped journal edited by ``sql`` (what a
    clock or a tool left in it), a restart ``down_s`` later: its outages."""
    clocks = Clocks(T0)
    _run_and_stop(site, db, clocks, run_s=run_s, clean=clean)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute(sql, params)
    clocks.advance(down_s)
    return clocks, _outages_at_restart(site, db, clocks)


def _outages_at_restart(site: Site, db: Path, clocks: Clocks) -> list[tuple[float, float, bool]]:
    gw = clocks.gateway(site, Journal(db), lambda *a: None)
    try:
        return gw.journal.outages(0, clocks.wall + 1)
    finally:
        gw.journal.close()


def test_a_crash_is_recorded_from_the_gateways_last_sign_of_life(example_site, tmp_path):
    """Killed 9 s after its last ``alive_at`` (written 60 s after its last other sign of life
    in the journal: the TTL's verdict on the buses at T0+16), restarted 100 s later: the
    outage runs from that mark to the restart, and says it was no clean stop."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    _run_and_stop(example_site, db, clocks, run_s=85, clean=False)  # alive_at at T0+1, +76
    clocks.advance(100)
    assert _outages_at_restart(example_site, db, clocks) == [(T0 + 76, clocks.wall, False)]


def test_a_clean_stop_is_recorded_from_the_stop(example_site, tmp_path):
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    _run_and_stop(example_site, db, clocks, run_s=30, clean=True)
    stopped = clocks.wall
    clocks.advance(40)
    assert _outages_at_restart(example_site, db, clocks) == [(stopped, clocks.wall, True)]


def test_a_restart_within_the_shortest_ttl_is_no_outage(example_site, tmp_path):
    """Down 10 s where every source's TTL is 15 s: nothing the record knew went stale, so
    nothing is recorded (an upgrade's restart is not a hole in the history)."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None)
    gw.journal.close()
    assert gw.outage_min_s == 15.0  # the example site's TTLs
    _run_and_stop(example_site, db, clocks, run_s=5, clean=True)
    clocks.advance(10)
    assert _outages_at_restart(example_site, db, clocks) == []


def test_a_wall_clock_stepped_back_while_down_records_no_outage(example_site, tmp_path):
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    _run_and_stop(example_site, db, clocks, run_s=5, clean=True)
    clocks.advance(100)
    clocks.step(-3600)
    assert _outages_at_restart(example_site, db, clocks) == []


def test_an_older_releases_clean_stop_is_recorded_from_the_last_sign_of_life(
    example_site, tmp_path
):
    """An older release wrote clean_stop "1", without a time: the outage starts at the
    journal's last sign of life (the TTL's verdict on the buses), and is said clean."""
    clocks, outages = _edited_and_restarted(
        example_site, tmp_path / "j.sqlite", run_s=70, clean=False,  # verdict at T0+16
        sql="INSERT INTO meta(key, value) VALUES ('clean_stop', '1')", params=(), down_s=50,
    )  # fmt: skip
    assert outages == [(T0 + 16, clocks.wall, True)]


def test_retention_forgets_outages_with_the_history_they_were_in(tmp_path):
    journal = Journal(tmp_path / "j.sqlite")
    try:
        with journal.transaction():
            journal.record_outage(T0, T0 + 100, False)
            journal.record_outage(T0 + 500, T0 + 600, True)
        journal.prune(T0 + 200)
        assert journal.outages(0, T0 + 1000) == [(T0 + 500, T0 + 600, True)]
        assert journal.outages(T0 + 600, T0 + 1000) == []  # [start, end): ended by then
    finally:
        journal.close()


def test_a_standalone_api_shows_a_gateway_down_now_as_an_ongoing_outage(mosquitto, tmp_path):
    """The real gateway, broker and a stand-alone API on the same journal: while the gateway
    runs, /history lists no outage; stopped (cleanly, TTL 4 s), the answer's last points are
    unknown from its stop on and the outage is listed as ongoing once it is longer than the
    TTL (shorter, the record has lost nothing yet)."""
    from api_support import PASSWORD, journal_with_users, settings
    from fastapi.testclient import TestClient

    from api.app import create_app
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig

    ttl = 4
    site_path = site_variant(tmp_path, ttl_s=ttl)
    site = load_site(site_path)
    db = journal_with_users(tmp_path)
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
    try:
        with running_gateway(site_path, mosquitto.url, db):
            edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
            watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
            view.start()
            with TestClient(create_app(view, settings(), db_path=str(db))) as client:
                login = {"name": "viewer", "password": PASSWORD}
                r = client.post("/api/v1/auth/login", json=login)
                h = {"Authorization": f"Bearer {r.json()['token']}"}
                t0 = time.time()
                running = client.get("/api/v1/history", params={"zone": "A"}, headers=h).json()
                assert running["outages"] == []
        stopped = time.time()
        with TestClient(create_app(view, settings(), db_path=str(db))) as client:
            assert eventually(lambda: view.gateway_online() is False)
            soon = client.get("/api/v1/history", params={"zone": "A"}, headers=h).json()
            if time.time() < stopped + ttl - 0.5:  # within the TTL: nothing lost yet
                assert soon["outages"] == []
            time.sleep(max(0.0, stopped + ttl + 0.5 - time.time()))
            params = {"zone": "A", "start": t0 - 1, "step": 1}
            body = client.get("/api/v1/history", params=params, headers=h).json()
    finally:
        view.stop()
        watch.stop()
        edge.stop()
    ((outage),) = body["outages"]
    assert outage["ongoing"] and outage["clean"] and outage["end"] == body["end"]
    assert t0 < outage["start"] <= stopped
    points = body["series"][0]["points"]
    assert [p["free"] for p in points if p["ts"] < outage["start"]][-1] == 80
    after = [p for p in points if p["ts"] >= outage["start"]]
    assert after and all(p["unknown"] == 80 and p["free"] == 0 for p in after)


def test_a_crash_on_a_site_whose_agents_keep_reporting_starts_at_their_last_journaled_report(
    example_site, tmp_path
):
    """Agents repeat snapshots that change nothing (a quiet site): their seq and last_seen
    are journaled every 30 s, which tells a crash's start closer than the minute's mark."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None)
    try:
        bus = example_site.buses[0]
        for seq in range(1, 101):  # T0 .. T0+99, one a second
            body = json.loads(_report(example_site, bus.id, bus.agent, clocks.wall)[1])
            body["seq"] = seq
            for space in body["spaces"]:  # free since the first: nothing new
                space["since"] = T0
            gw.handle(topics.edge_occupancy(example_site.id, bus.agent), json.dumps(body).encode())
            gw.tick()
            clocks.advance(1)
        gw.flush_checkpoint()
        # the agent's rows were sign enough: no commit of alive_at of its own on a quiet site
        assert gw.journal.meta("alive_at") is None
    finally:
        gw.journal.close()  # a crash: nothing more written
    clocks.advance(100)
    ((start, _, clean),) = _outages_at_restart(example_site, db, clocks)
    # the first quiet report (T0+1) is journaled, then one each 30 s: T0+31, +61, +91
    assert start == T0 + 91 and not clean


def test_a_crashs_unknown_points_come_after_every_point_the_run_wrote(example_site, tmp_path):
    """With InfluxDB, the 10 s zone points are newer than the journal's events: the outage's
    unknown points were written before the last of them, so InfluxDB showed unknown while
    the gateway still ran and the old counts through the real downtime (a review saw it)."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    history = _OutboxHistory(example_site.id, None)
    journal = Journal(db, history)
    outbox.ensure_schema(journal.conn)
    gw = clocks.gateway(example_site, journal, lambda *a: None, history=history)
    try:
        for bus in example_site.buses:
            gw.handle(*_report(example_site, bus.id, bus.agent, clocks.wall))
        for _ in range(25):  # zone points at T0+1, +11, +21; nothing else after the TTL's
            clocks.advance(1)
            gw.tick()
        gw.flush_checkpoint()
    finally:
        journal.close()  # killed at T0+25
    clocks.advance(60)
    journal = Journal(db, history)
    try:
        before = [ts for ts, _ in _zone_points(journal, "A")]
        clocks.gateway(example_site, journal, lambda *a: None, history=history)
        ((start, _, _),) = journal.outages(0, clocks.wall + 1)
        new = [(ts, f) for ts, f in _zone_points(journal, "A")][len(before) :]
    finally:
        journal.close()
    assert max(before) == event_time_ns(T0 + 21) and start == T0 + 21
    assert new[0] == (event_time_ns(T0 + 21.001), {**new[0][1], "free": 0, "occupied": 0})
    assert new[0][0] > max(before)


def test_an_agents_last_seen_in_the_future_does_not_hide_a_crash(example_site, tmp_path):
    """A clock that ran a day ahead and was corrected leaves an agent's last_seen a day
    ahead (it keeps its maximum): the outage was then never recorded, and nothing said so."""
    clocks, outages = _edited_and_restarted(
        example_site, tmp_path / "j.sqlite", run_s=25, clean=False,  # verdict at T0+16
        sql="UPDATE agents SET last_seen = last_seen + 86400", params=(), down_s=60,
    )  # fmt: skip
    assert outages == [(T0 + 16, clocks.wall, False)]


def test_a_restored_backups_outage_starts_at_the_copys_last_sign_of_life(example_site, tmp_path):
    """A copy of a running gateway's journal: its record ends at its last sign of life (the
    TTL's verdict at T0+16), before the copy was taken (T0+24); a journal with none at all
    would start at the copy's time."""
    clocks, outages = _edited_and_restarted(
        example_site, tmp_path / "j.sqlite", run_s=25, clean=False,  # verdict at T0+16
        sql="INSERT INTO meta(key, value) VALUES ('backup_taken', ?)",  # as a backup marks it
        params=(repr(T0 + 24),), down_s=3600,
    )  # fmt: skip
    assert outages == [(T0 + 16, clocks.wall, False)]


def test_a_clock_that_ran_ahead_does_not_stretch_the_next_crash(example_site, tmp_path):
    """Agents' last_seen a day ahead: the start takes them as heard now, so their quiet rows
    are signs of life again. Before, the running gateway took those rows for signs while
    the restart left them out (in the future), and a 3 s crash 80 s later was recorded
    from its start, 83 s long."""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(T0)
    _run_and_stop(example_site, db, clocks, run_s=5, clean=True)
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.execute("UPDATE agents SET last_seen = last_seen + 86400")
    clocks.advance(20)
    started = clocks.wall
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None)
    try:
        assert {a.last_seen for a in gw.journal.agents()} <= {started}
        bus = example_site.buses[0]
        for seq in range(2, 82):  # quiet snapshots, one a second
            body = json.loads(_report(example_site, bus.id, bus.agent, clocks.wall)[1])
            body["seq"] = seq
            for space in body["spaces"]:
                space["since"] = T0
            gw.handle(topics.edge_occupancy(example_site.id, bus.agent), json.dumps(body).encode())
            gw.tick()
            clocks.advance(1)
        gw.flush_checkpoint()
    finally:
        gw.journal.close()  # killed
    crashed = clocks.wall
    clocks.advance(3)
    outages = _outages_at_restart(example_site, db, clocks)
    assert outages[0][0] == T0 + 5 and outages[0][2]  # the clean stop's, before the clock fix
    (start, end, clean) = outages[-1]
    assert crashed - 31 <= start < crashed and end == clocks.wall and not clean


def test_a_restored_backup_of_a_stopped_gateway_starts_at_its_stop(example_site, tmp_path):
    clocks, outages = _edited_and_restarted(
        example_site, tmp_path / "j.sqlite", run_s=5, clean=True,
        sql="INSERT INTO meta(key, value) VALUES ('backup_taken', ?)",  # copied 30 s after
        params=(repr(T0 + 35),), down_s=100,
    )  # fmt: skip
    assert outages == [(T0 + 5, clocks.wall, True)]


def test_a_clean_stop_stamped_by_a_clock_ahead_counts_from_the_last_sign_of_life(tmp_path):
    from gateway.journal import down_since

    journal = Journal(tmp_path / "j.sqlite")
    try:
        journal.set_meta("alive_at", repr(T0))
        journal.set_meta("clean_stop", repr(T0 + 3600))
        assert down_since(journal.conn, T0 + 60) == (T0, True)
        assert down_since(journal.conn, T0 + 7200) == (T0 + 3600, True)
    finally:
        journal.close()


def test_a_past_window_of_a_standalone_api_shows_no_outage_the_gateway_ran_through(
    mosquitto, tmp_path, monkeypatch
):
    """A crash, and a stand-alone API asked for a window before it: the gateway ran through
    that window, so no outage is in it (a review saw one made up from the window's end
    back to its last event before it); the window up to now has the ongoing one."""
    from api_support import PASSWORD, journal_with_users, settings
    from fastapi.testclient import TestClient

    import api.routes.events as events_route
    from api.app import create_app
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig

    monkeypatch.setattr(events_route, "ALIVE_JOURNAL_S", 2.0)  # 3 s without a sign: down
    ttl = 4
    site_path = site_variant(tmp_path, ttl_s=ttl)
    site = load_site(site_path)
    db = journal_with_users(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    watch = Collector(mosquitto.port)
    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
    try:
        with running_gateway(site_path, mosquitto.url, db):
            t0 = time.time()
            edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
            watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
            time.sleep(10)  # running: its last event (the TTL verdict) long before t_mid
            t_mid = time.time()
            edge.send({s: "free" for s in site.spaces_of_source("bus-g")}, kind="snapshot")
            time.sleep(1)
        with closing(sqlite3.connect(db)) as conn, conn:  # a crash leaves no clean stop
            conn.execute("DELETE FROM meta WHERE key = 'clean_stop'")
        view.start()
        with TestClient(create_app(view, settings(), db_path=str(db))) as client:
            r = client.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            assert eventually(lambda: view.gateway_online() is False)
            time.sleep(ttl + 0.5)
            past = {"zone": "A", "start": t0 - 1, "end": t_mid, "step": 1}
            before = client.get("/api/v1/history", params=past, headers=h).json()
            now = client.get("/api/v1/history", params={"zone": "A"}, headers=h).json()
    finally:
        view.stop()
        watch.stop()
        edge.stop()
    assert before["outages"] == []
    ((outage),) = now["outages"]
    assert outage["ongoing"] and not outage["clean"] and outage["start"] >= t_mid
