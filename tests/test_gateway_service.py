# ruff: noqa: F811  (pytest fixtures imported from gateway_support are parameters here)
"""The gateway against a real mosquitto: state, zone counts, signs, arrivals, bad input, control."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import time

import pytest
from gateway_support import (  # noqa: F401 (fixtures)
    SITE_ID,
    Collector,
    Edge,
    display_topic,
    edge_g,
    line_counts,
    running_gateway,
    site_variant,
    watch,
    zone_topic,
)

from parking import topics
from parking.payloads import CONTROL_MAX_AGE_S, MAX_PAYLOAD_BYTES
from parking.site import load_site
from parking.states import SpaceState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def site_path(tmp_path):
    return site_variant(tmp_path)


@pytest.fixture
def gw(site_path, mosquitto, tmp_path):
    with running_gateway(site_path, mosquitto.url, tmp_path / "journal.db") as service:
        yield service


def all_free(site, source: str) -> dict[str, str]:
    return {s: "free" for s in site.spaces_of_source(source)}


def events(db) -> int:
    """Changes committed: expanded into events, or still packed in pending_changes."""
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT (SELECT count(*) FROM events)"
            " + (SELECT coalesce(sum(json_array_length(changes)), 0) FROM pending_changes)"
        ).fetchone()[0]


def test_zone_counts_and_signs_are_retained_and_published_only_on_change(
    gw, watch, edge_g, mosquitto
):
    edge_g.send(all_free(gw.site, "bus-g"), kind="snapshot")
    watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    watch.wait_for(display_topic("gate-north"), lambda c: line_counts(c)[0] == 78)
    # a late subscriber gets the retained zone and sign
    late = Collector(mosquitto.port)
    try:
        zone_a = late.wait_for(zone_topic("A"))
        assert zone_a.retain
        assert {
            k: zone_a.json()[k] for k in ("zone", "free", "occupied", "unknown", "closed", "total")
        } == {
            "zone": "A",
            "free": 80,
            "occupied": 0,
            "unknown": 0,
            "closed": 0,
            "total": 80,
        }
        sign = late.wait_for(display_topic("gate-north"))
        assert sign.retain and line_counts(sign.json())[0] == 78
    finally:
        late.stop()

    # a report that changes nothing publishes nothing; a B change afterwards proves it was handled
    mark = watch.mark()
    edge_g.send({"A-003": "free", "A-004": "free"})
    edge_g.send({"B-001": "occupied"})
    watch.wait_for(zone_topic("B"), lambda z: z["occupied"] == 1)
    watch.wait_for(display_topic("gate-east"), lambda c: line_counts(c)[1] == 71)  # shows zone B
    changed = {m.topic for m in watch.since(mark)}
    assert zone_topic("A") not in changed
    assert display_topic("gate-north") not in changed  # shows A, C, B1: none changed

    # one change in A: zone A and the two signs counting A change, gate-east does not
    mark = watch.mark()
    edge_g.send({"A-003": "occupied"})
    watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1 and z["free"] == 79)
    watch.wait_for(display_topic("jct-n1"), lambda c: line_counts(c)[0] == 77)
    watch.wait_for(display_topic("gate-north"), lambda c: line_counts(c)[0] == 77)
    assert display_topic("gate-east") not in {m.topic for m in watch.since(mark)}


def test_bad_input_is_rejected_counted_and_changes_nothing(gw, watch, edge_g, tmp_path):
    site = gw.site
    edge_g.send(all_free(site, "bus-g"), kind="snapshot")
    watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    db = tmp_path / "journal.db"
    before_events = events(db)
    before_state = gw.gateway.state.state.copy()
    topic = topics.edge_occupancy(SITE_ID, "serial-bus-g")
    mark = watch.mark()

    edge_g.raw(topic, b"{not json")
    edge_g.raw(topic, edge_g.payload({"A-005": "free"}).replace(b'"seq": ', b'"seq": "x", "s": '))
    edge_g.raw(topic, edge_g.payload({"A-006": "parked"}))
    edge_g.raw(topic, edge_g.payload({"Z-999": "occupied"}))
    edge_g.raw(topic, edge_g.payload({"C-001": "occupied"}))  # camera's space, not bus-g's
    edge_g.raw(topic, edge_g.payload({"A-007": "occupied"}, since=1.0))  # older than known
    edge_g.raw(topic, b'{"pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}')
    edge_g.raw(topics.edge_occupancy(SITE_ID, "impostor"), edge_g.payload({"A-008": "occupied"}))
    edge_g.raw(topics.arrival(SITE_ID, "nowhere"), b'{"class": "resident"}')
    edge_g.raw(topics.arrival(SITE_ID, "north"), b'{"class": "spaceship"}')
    edge_g.raw(topics.space_control(SITE_ID, "Z-999"), b'{"action": "close", "by": "m", "ts": 1}')
    good = edge_g.payload({"A-005": "occupied"})
    edge_g.raw(topic, good)
    edge_g.raw(topic, good)  # replay
    watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1)
    time.sleep(0.3)

    rejected = gw.gateway.counters().rejected
    for reason in (
        "bad_json",
        "invalid",
        "unknown_space",
        "foreign_space",
        "older_than_known",
        "oversized",
        "agent_mismatch",
        "unknown_entrance",
        "unknown_class",
        "duplicate",
    ):
        assert rejected.get(reason, 0) >= 1, (reason, rejected)
    assert rejected["invalid"] >= 2
    after = gw.gateway.state.state
    idx = site.space_index
    changed = [site.spaces[i].id for i in (after != before_state).nonzero()[0]]
    assert changed == ["A-005"]  # only the one good report
    assert events(db) == before_events + 1
    assert not [m for m in watch.since(mark) if "/assignment" in m.topic]
    assert after[idx["A-007"]] == before_state[idx["A-007"]]


def test_silent_spaces_go_unknown_after_their_ttl(mosquitto, tmp_path, watch, edge_g):
    site_path = site_variant(tmp_path, ttl_s=1)
    with running_gateway(site_path, mosquitto.url, tmp_path / "j.db") as gw:
        edge_g.send(all_free(gw.site, "bus-g"), kind="snapshot")
        watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
        mark = watch.mark()
        watch.wait_for(zone_topic("A"), lambda z: z["unknown"] == 80, timeout=5, after=mark)
        watch.wait_for(
            display_topic("gate-north"), lambda c: c["lines"][0]["status"] == "fallback", after=mark
        )
        sign = watch.latest(display_topic("gate-north"))
        assert sign["lines"][0]["text"] == {"zh": "--", "en": "--"}


def test_agent_last_will_turns_its_spaces_unknown(gw, watch, mosquitto):
    site = gw.site
    snapshot = json.dumps(
        {
            "agent": "serial-bus-b1",
            "source": "bus-b1",
            "boot": "b",
            "seq": 1,
            "ts": time.time(),
            "kind": "snapshot",
            "spaces": [
                {"space": s, "state": "free", "since": time.time()}
                for s in site.spaces_of_source("bus-b1")
            ],
        }
    ).encode()
    will_topic = topics.edge_availability(SITE_ID, "serial-bus-b1")
    # a real client with a last will, killed without a clean disconnect
    pub = subprocess.Popen(
        [
            "mosquitto_pub",
            "-p",
            str(mosquitto.port),
            "-q",
            "1",
            "--will-topic",
            will_topic,
            "--will-payload",
            "offline",
            "--will-qos",
            "1",
            "--will-retain",
            "-t",
            topics.edge_occupancy(SITE_ID, "serial-bus-b1"),
            "-l",
        ],
        stdin=subprocess.PIPE,
    )
    try:
        pub.stdin.write(snapshot + b"\n")
        pub.stdin.flush()
        watch.wait_for(zone_topic("E"), lambda z: z["free"] == 60)
        watch.wait_for(display_topic("b1-ramp"), lambda c: c["lines"][0]["count"] == 58)
        mark = watch.mark()
        pub.kill()
        watch.wait_for(will_topic, lambda p: p == "offline", after=mark)
        watch.wait_for(zone_topic("E"), lambda z: z["unknown"] == 60, after=mark)
        watch.wait_for(zone_topic("F"), lambda z: z["unknown"] == 60, after=mark)
        watch.wait_for(
            display_topic("b1-ramp"), lambda c: c["lines"][0]["status"] == "fallback", after=mark
        )
    finally:
        pub.kill()
        pub.wait()
    agents = {a.agent: a for a in gw.gateway.agents()}
    assert agents["serial-bus-b1"].online is False


def test_snapshot_reconciles_after_a_gap(gw, watch, edge_g):
    site = gw.site
    edge_g.send(all_free(site, "bus-g"), kind="snapshot")
    watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    # reports 2..4 are lost; the snapshot after the gap lists all but A-001..A-002 (left out)
    edge_g.seq += 3
    snap = {s: "occupied" for s in site.spaces_of_source("bus-g") if s.startswith("A-")}
    snap.update({s: "free" for s in site.spaces_of_source("bus-g") if not s.startswith("A-")})
    del snap["A-001"], snap["A-002"]
    edge_g.send(snap, kind="snapshot")
    z = watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 78).json()
    assert (z["free"], z["unknown"]) == (0, 2)
    sign = watch.wait_for(display_topic("gate-north"), lambda c: c["lines"][0]["status"] == "full")
    assert sign.json()["lines"][0]["text"] == {"zh": "满", "en": "FULL"}


def test_full_and_fallback_signs(gw, watch, edge_g):
    site = gw.site
    edge_g.send(all_free(site, "bus-g"), kind="snapshot")
    watch.wait_for(display_topic("gate-east"), lambda c: c["lines"][1]["count"] == 72)
    zone_b = [s for s in site.spaces_of_source("bus-g") if s.startswith("B-")]
    edge_g.send({s: "occupied" for s in zone_b})
    east = watch.wait_for(display_topic("gate-east"), lambda c: c["lines"][1]["status"] == "full")
    assert east.json()["lines"][1]["text"] == {"zh": "满", "en": "FULL"}
    assert east.json()["lines"][1]["label"] == {"zh": "B区", "en": "Zone B"}
    assert east.json()["lines"][1]["arrow"] == "left"
    # 36 of 72 unknown is not "more than half": the count stays; 37 is
    edge_g.send({s: "unknown" for s in zone_b[:36]} | {zone_b[40]: "free"})
    watch.wait_for(display_topic("gate-east"), lambda c: c["lines"][1]["count"] == 1)
    mark = watch.mark()
    edge_g.send({zone_b[36]: "unknown"})
    fb = watch.wait_for(
        display_topic("gate-east"), lambda c: c["lines"][1]["status"] == "fallback", after=mark
    )
    assert fb.json()["lines"][1]["count"] is None


def test_signs_are_republished_before_they_expire(mosquitto, tmp_path, watch):
    site_path = site_variant(tmp_path, expires_s=2)
    with running_gateway(site_path, mosquitto.url, tmp_path / "j.db"):
        first = watch.wait_for(display_topic("gate-north"))
        second = watch.wait_for(
            display_topic("gate-north"), lambda c: c["ts"] > first.json()["ts"], timeout=4
        )
        a, b = first.json(), second.json()
        assert a["lines"] == b["lines"]
        assert b["expires"] == pytest.approx(b["ts"] + 2)
        assert b["ts"] < a["expires"]  # republished before the old content expired
        assert second.retain or second.at > first.at


def test_arrivals_get_distinct_held_spaces(gw, watch, edge_g, tmp_path):
    site = gw.site
    edge_g.send(all_free(site, "bus-g"), kind="snapshot")
    watch.wait_for(display_topic("gate-north"), lambda c: line_counts(c)[0] == 78)
    out = topics.assignment(SITE_ID, "north")
    t0 = time.time()
    edge_g.raw(
        topics.arrival(SITE_ID, "north"),
        b'{"class": "resident", "plate": "AB123", "request_id": "r1"}',
    )
    first = watch.wait_for(out, lambda a: a.get("request_id") == "r1").json()
    edge_g.raw(topics.arrival(SITE_ID, "north"), b'{"class": "resident", "request_id": "r2"}')
    second = watch.wait_for(out, lambda a: a.get("request_id") == "r2").json()
    assert first["space"] and second["space"] and first["space"] != second["space"]
    for a in (first, second):
        assert a["class"] == "resident" and a["entrance"] == "north"
        space = site.space(a["space"])
        assert a["zone"] == space.zone
        assert "resident" in space.kinds or "shared" in space.kinds
        assert a["route"][0] == "GN" and a["route"][-1] == space.access
        assert a["space"] in a["hint"]["en"] and a["space"] in a["hint"]["zh"]
        assert a["hold_expires"] == pytest.approx(a["ts"] + 180, abs=0.01)
        assert a["ts"] >= t0 - 1
    assert first["plate"] == "AB123"
    # held spaces are not counted on the signs
    held_in_a = sum(1 for a in (first, second) if a["zone"] == "A")
    if held_in_a:
        watch.wait_for(display_topic("gate-north"), lambda c: line_counts(c)[0] == 78 - held_in_a)
    with sqlite3.connect(tmp_path / "journal.db") as conn:
        rows = conn.execute("SELECT space FROM assignments ORDER BY id").fetchall()
    assert [r[0] for r in rows] == [first["space"], second["space"]]
    # the car is in its space: occupied at once, no longer a car on its way (`held`), the
    # hold kept until it has stood there for the confirmation time (HOLD_SEEN_S; a car
    # manoeuvring over it is not the car: its end is tests/test_hold_seen.py's)
    edge_g.send({first["space"]: "occupied"})
    watch.wait_for(zone_topic(first["zone"]), lambda z: z["occupied"] == 1)
    assert not any(s.held for s in gw.gateway.spaces() if s.space == first["space"])
    assert gw.gateway.site.space_index[first["space"]] in gw.gateway.core.holds


def test_manager_closes_and_opens_a_space(gw, watch, edge_g, tmp_path):
    edge_g.send(all_free(gw.site, "bus-g"), kind="snapshot")
    watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    body = json.dumps({"action": "close", "by": "wang", "reason": "repairs", "ts": time.time()})
    edge_g.raw(topics.space_control(SITE_ID, "A-010"), body)
    watch.wait_for(zone_topic("A"), lambda z: z["closed"] == 1 and z["free"] == 79)
    # the sensor still reports the space; it stays closed
    edge_g.send({"A-010": "occupied"})
    edge_g.send({"A-011": "occupied"})
    watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1)
    assert watch.latest(zone_topic("A"))["closed"] == 1
    gw.gateway.control_space("A-010", "open", "wang", None)
    # opened: it shows what the sensor said meanwhile
    watch.wait_for(zone_topic("A"), lambda z: z["closed"] == 0 and z["occupied"] == 2)
    want = [("free", "closed", "manager", "wang"), ("closed", "occupied", "manager", "wang")]

    def journaled() -> list[tuple]:
        # events are expanded by the checkpoint, a moment after the signs went out
        with sqlite3.connect(tmp_path / "journal.db") as conn:
            return conn.execute(
                "SELECT old, new, source, agent FROM events WHERE space='A-010' ORDER BY id"
            ).fetchall()[-2:]

    deadline = time.monotonic() + 5
    while journaled() != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert journaled() == want
    with pytest.raises(ValueError):
        gw.gateway.control_space("Z-999", "close", "wang", None)


def test_a_control_sent_long_ago_is_refused(gw, watch, edge_g):
    """A close queued while the gateway (or the broker) was away reaches it late: the manager
    was told nothing happened, so it is refused and counted, not applied as new."""
    edge_g.send(all_free(gw.site, "bus-g"), kind="snapshot")
    watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    sent = time.time() - CONTROL_MAX_AGE_S - 60
    body = json.dumps({"action": "close", "by": "wang", "reason": "late", "ts": sent})
    edge_g.raw(topics.space_control(SITE_ID, "A-010"), body)
    fresh = json.dumps({"action": "close", "by": "wang", "ts": time.time()})
    edge_g.raw(topics.space_control(SITE_ID, "A-011"), fresh)  # after the stale one: in order
    watch.wait_for(zone_topic("A"), lambda z: z["closed"] == 1)
    assert gw.gateway.counters().rejected.get("stale_control") == 1
    index = gw.site.space_index
    assert gw.gateway.state.state[index["A-010"]] == SpaceState.FREE
    assert gw.gateway.state.state[index["A-011"]] == SpaceState.CLOSED


def _all_free_on_the_broker(gw, mosquitto) -> None:
    """bus-g's agent reports every space free; zone A's count is on the broker."""
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    watch = Collector(mosquitto.port)
    try:
        edge.send(all_free(gw.site, "bus-g"), kind="snapshot")
        watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    finally:
        watch.stop()
        edge.stop()


def test_reconnects_after_a_broker_restart_and_republishes(gw, mosquitto, tmp_path):
    _all_free_on_the_broker(gw, mosquitto)
    mosquitto.stop()  # no persistence: every retained message is gone
    time.sleep(1.0)
    mosquitto.start()
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g", boot="boot-2")
    try:
        watch.wait_for(topics.gateway_availability(SITE_ID), lambda p: p == "online", timeout=40)
        # the signs and zones are back (retained), from the state kept across the outage
        watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80, timeout=10)
        watch.wait_for(display_topic("gate-north"), lambda c: line_counts(c)[0] == 78)
        # and reports flow again
        deadline = time.monotonic() + 20
        while not gw.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        edge.send({"A-020": "occupied"})
        watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1)
    finally:
        watch.stop()
        edge.stop()


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--hold-s", "0", "must be more than 0 and at most 86400 s"),
        ("--hold-s", "inf", "must be more than 0 and at most 86400 s"),
        ("--hold-s", "nan", "must be more than 0 and at most 86400 s"),
        ("--congestion-m", "nan", "must be 0 or more metres"),
        ("--congestion-halflife-s", "-5", "must be positive"),
        ("--outbox-max-rows", "0", "must be 1 or more"),
        ("--influx-bucket", "", "must not be empty"),
    ],
)
def test_a_bad_number_flag_is_a_clear_error(tmp_path, flag, value, says):
    """Refused at start, not on the first arrival (a hold of 0 s failed every arrival, an
    infinite one held its space for ever and answered nothing)."""
    r = subprocess.run(
        [sys.executable, "-m", "parkguide", "gateway", "--site", str(site_variant(tmp_path))]
        + ["--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "j.db"), flag, value]
        + (["--influx-url", "http://127.0.0.1:1"] if flag.startswith("--influx") else []),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2, r.stderr
    assert (f"{flag} {value}" if value else flag) in r.stderr and says in r.stderr
    assert "Traceback" not in r.stderr


def test_a_journal_that_refuses_a_write_stops_the_gateway_and_loses_nothing(
    site_path, mosquitto, tmp_path, watch
):
    """A full disk while a report is journaled: the gateway stops without acknowledging it
    (rather than showing a change the journal lacks), and its restart gets it again from
    the broker's session, journals it and shows it."""
    db = tmp_path / "journal.db"
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, db, client_id="gw-disk") as service:
            edge.send(all_free(service.site, "bus-g"), kind="snapshot")
            watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
            with service.gateway.lock:  # the disk is full: not one more page
                conn = service.journal.conn
                pages = conn.execute("PRAGMA page_count").fetchone()[0]
                conn.execute(f"PRAGMA max_page_count = {pages}")
            mark = watch.mark()
            edge.send(dict.fromkeys(service.site.spaces_of_source("bus-g"), "occupied"))
            assert service._stop.wait(10)
            assert "the journal refused a write" in service.fatal and "full" in service.fatal
        published = [m.json() for m in watch.since(mark) if m.topic == zone_topic("A")]
        assert not [z for z in published if z["occupied"]]  # nothing derived from it went out
        with running_gateway(site_path, mosquitto.url, db, client_id="gw-disk") as service:
            watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 80)
            assert service.fatal is None
        with sqlite3.connect(db) as conn:
            occupied = conn.execute("SELECT count(*) FROM events WHERE new = 'occupied'")
            assert occupied.fetchone()[0] == len(service.site.spaces_of_source("bus-g"))
    finally:
        edge.stop()


def test_after_a_broker_outage_the_newest_signs_are_published_last(tmp_path, mosquitto):
    """Refreshes made while the broker was away are not queued and sent after the fresh
    contents (most already expired, the retained ts going backwards): every content a
    subscriber gets after the reconnect is newer than the one before, and live."""
    site = site_variant(tmp_path, expires_s=2.0)  # a refresh every second
    with running_gateway(site, mosquitto.url, tmp_path / "journal.db") as gw:
        _all_free_on_the_broker(gw, mosquitto)
        mosquitto.stop()
        time.sleep(5.0)  # about five refreshes of every sign while away
        assert gw.retained_skipped > 0
        mosquitto.start()
        watch = Collector(mosquitto.port)
        try:
            watch.wait_for(topics.gateway_availability(SITE_ID), lambda p: p == "online", 40)
            time.sleep(1.5)
            wall_minus_mono = time.time() - time.monotonic()
            for display in ("gate-north", "b1-ramp"):
                got = [(m.at + wall_minus_mono, m.json()) for m in watch.on(display_topic(display))]
                assert got, display
                stamps = [c["ts"] for _, c in got]
                assert stamps == sorted(stamps), (display, stamps)
                expired = [(at, c["expires"]) for at, c in got if c["expires"] < at]
                assert not expired, (display, expired)
        finally:
            watch.stop()


def test_retained_reports_and_controls_are_refused_at_start(site_path, mosquitto, tmp_path):
    """Reports, arrivals and controls are never retained by the contract: one the broker
    kept (a misconfigured edge, a hand-made test) is an old message replayed at every
    connect, not news. Refused and counted; live ones go on as usual."""
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        body = edge.payload({"A-010": "occupied"}, "delta", since=time.time() - 7200)
        edge.raw(topics.edge_occupancy(SITE_ID, "serial-bus-g"), body, retain=True)
        close = json.dumps({"action": "close", "by": "someone", "ts": time.time()})
        edge.raw(topics.space_control(SITE_ID, "A-011"), close, retain=True)
        with running_gateway(site_path, mosquitto.url, tmp_path / "journal.db") as gw:
            deadline = time.monotonic() + 10
            while gw.gateway.rejections.counts.get("retained", 0) < 2:
                assert time.monotonic() < deadline, gw.gateway.rejections.counts
                time.sleep(0.05)
            state = gw.gateway.state
            index = gw.site.space_index
            assert state.state[index["A-010"]] == SpaceState.UNKNOWN
            assert state.state[index["A-011"]] == SpaceState.UNKNOWN  # not closed
            assert gw.gateway.accepted == 0
            edge.send({"A-012": "occupied"})
            while gw.gateway.accepted == 0:
                assert time.monotonic() < deadline + 5
                time.sleep(0.05)
            assert state.state[index["A-012"]] == SpaceState.OCCUPIED
    finally:
        edge.stop()


def test_a_new_client_id_takes_over_the_old_sessions_reports(site_path, mosquitto, tmp_path):
    """A password change (or an upgrade from a release whose id had no digest) gives the
    gateway another client id: the reports the broker queued under the old one while no
    gateway ran are taken and journaled, nothing counts as missed, and the old session is
    deleted (the broker would queue every report for it for good)."""
    import paho.mqtt.client as mqtt

    from gateway.journal import Journal
    from gateway.service import CLIENT_ID_KEY

    db = tmp_path / "journal.db"
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, db, client_id="gw-before") as gw:
            edge.send({"A-001": "occupied"})
            deadline = time.monotonic() + 5
            while gw.gateway.accepted < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        for space in ("A-002", "A-003", "A-004"):  # no gateway: queued for gw-before
            edge.send({space: "occupied"})
        time.sleep(0.3)
        with running_gateway(site_path, mosquitto.url, db, client_id="gw-after") as gw:
            deadline = time.monotonic() + 10
            while gw._previous_client_id is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gw.taken_over >= 3
            states = {s.space: s.state for s in gw.gateway.spaces()}
            assert [states[s] for s in ("A-001", "A-002", "A-003", "A-004")] == ["occupied"] * 4
            assert not any(gw.gateway.counters().reports_missed.values())
            edge.send({"A-005": "occupied"})  # after the take-over: the new session only
            deadline = time.monotonic() + 5
            while gw.gateway.accepted < 4 and time.monotonic() < deadline:
                time.sleep(0.02)
            assert gw.gateway.accepted == 4
    finally:
        edge.stop()
    journal = Journal(db)
    try:
        assert journal.meta(CLIENT_ID_KEY) == "gw-after"
    finally:
        journal.close()
    # the broker kept no session for the old id
    answer: dict = {}
    probe = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2, client_id="gw-before", clean_session=False
    )
    probe.on_connect = lambda c, u, flags, rc, p: answer.update(present=flags.session_present)
    probe.connect("127.0.0.1", mosquitto.port)
    deadline = time.monotonic() + 5
    while "present" not in answer and time.monotonic() < deadline:
        probe.loop(0.05)
    probe.disconnect()
    assert answer == {"present": False}


def test_a_take_over_answers_each_arrival_once_and_lets_timers_run(site_path, mosquitto, tmp_path):
    """While a long backlog under the old client id is taken over, arrivals without a
    request_id keep coming and so do reports: each arrival is answered once (the old
    session is unsubscribed first, so only the new one carries them), the take-over ends,
    and the gateway's timers (sign refresh) run meanwhile."""
    import threading

    db = tmp_path / "journal.db"
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    watch = Collector(mosquitto.port, topics.assignment(SITE_ID, "north"))
    try:
        with running_gateway(site_path, mosquitto.url, db, client_id="gw-before") as gw:
            edge.send(all_free(load_site(site_path), "bus-g"), kind="snapshot")
            deadline = time.monotonic() + 5
            while gw.gateway.accepted < 1 and time.monotonic() < deadline:
                time.sleep(0.02)
        for i in range(800):  # the backlog (the test broker queues 1000 at most)
            edge.send({f"A-0{i % 40 + 10:02d}": ("occupied", "free")[i % 2]})
        stop = threading.Event()
        sent = [0]

        def arrivals() -> None:  # a car every 50 ms, none with a request_id
            while not stop.is_set():
                edge.raw(topics.arrival(SITE_ID, "north"), b'{"class": "resident"}')
                sent[0] += 1
                time.sleep(0.05)

        with running_gateway(site_path, mosquitto.url, db, client_id="gw-after") as gw:
            # (an arrival in the few milliseconds between this session's subscription and
            # the old one's unsubscription reaches both: the residual overlap)
            deadline = time.monotonic() + 10
            while gw.taken_over == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            cars = threading.Thread(target=arrivals)
            cars.start()
            deadline = time.monotonic() + 30
            while gw._previous_client_id is not None and time.monotonic() < deadline:
                time.sleep(0.05)
            stop.set()
            cars.join()
            assert gw._previous_client_id is None, "the take-over never ended"
            assert gw.taken_over >= 800
            deadline = time.monotonic() + 10
            while len(watch.on(topics.assignment(SITE_ID, "north"))) < sent[0]:
                if time.monotonic() > deadline:
                    break
                time.sleep(0.05)
            time.sleep(0.5)  # a second answer to any of them would come now
            answers = watch.on(topics.assignment(SITE_ID, "north"))
            assert len(answers) == sent[0] > 0
    finally:
        edge.stop()
        watch.stop()


def test_a_failing_journal_disk_is_named_with_what_to_do():
    """A worn SD card remounted read-only stopped the gateway, and every restart failed
    with a bare "[Errno 30] Read-only file system": the operator is told it is the disk,
    what the signs do meanwhile and where to go."""
    import errno
    import sqlite3

    from gateway.service import journal_disk_hint

    read_only = journal_disk_hint(OSError(errno.EROFS, "Read-only file system"))
    assert "read-only" in read_only and "A failing disk" in read_only
    assert "fallback" in read_only
    assert "wearing out" in journal_disk_hint(sqlite3.OperationalError("disk I/O error"))
    assert "read-only" in journal_disk_hint(
        sqlite3.OperationalError("attempt to write a readonly database")
    )
    assert journal_disk_hint(sqlite3.OperationalError("database or disk is full")) == ""


def test_a_quiet_agent_moves_its_journal_row_rarely_and_a_clean_stop_writes_the_newest(
    site_path, mosquitto, edge_g, watch, tmp_path
):
    """Snapshots that change nothing every 0.2 s for 3 s are one or two journal commits,
    not one each (every commit cost a WAL write, a WAL checkpoint and three fsyncs: ~555
    MB a day on an edge box's SD card for a site where nothing changed); a report that
    changes something is journaled with its seq before its sign; a clean stop writes the
    newest seq and last_seen."""
    from conftest import eventually

    db = tmp_path / "journal.db"
    agent = "serial-bus-g"

    def journaled() -> tuple[int, float]:  # the agent's seq and last_seen, expanded or not
        with sqlite3.connect(db) as conn:
            row = conn.execute(
                "SELECT max(seq), max(last_seen) FROM (SELECT seq, last_seen FROM agents"
                " WHERE agent = ? UNION ALL SELECT seq, ts FROM pending_changes WHERE agent = ?)",
                (agent, agent),
            ).fetchone()
        return row[0], row[1]

    with running_gateway(site_path, mosquitto.url, db) as service:
        gw = service.gateway
        free = all_free(service.site, "bus-g")
        since = time.time()
        edge_g.send(free, kind="snapshot", since=since)
        watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
        assert eventually(lambda: not gw.changes_pending())
        updates: list[str] = []
        with gw.lock:
            service.journal.conn.set_trace_callback(
                lambda sql: updates.append(sql) if sql.startswith("UPDATE agents") else None
            )
        for _ in range(15):
            edge_g.send(free, kind="snapshot", since=since)
            time.sleep(0.2)
        assert eventually(lambda: gw.gate.sequence(agent) == ("boot-1", edge_g.seq))
        with gw.lock:
            service.journal.conn.set_trace_callback(None)
        assert 1 <= len(updates) <= 2, updates

        changed = time.time()
        edge_g.send({"A-003": "occupied"}, since=changed)
        watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1)
        assert journaled()[0] == edge_g.seq  # committed before the zone count went out

        assert eventually(lambda: not gw.changes_pending())
        edge_g.send({"A-003": "occupied"}, since=changed)  # quiet again: held
        edge_g.send({"A-003": "occupied"}, since=changed)
        assert eventually(lambda: gw.gate.sequence(agent) == ("boot-1", edge_g.seq))
        last = time.time()
        assert journaled()[0] < edge_g.seq  # held in memory
    assert journaled()[0] == edge_g.seq
    assert journaled()[1] >= last - 1.0


def test_a_clean_stop_is_logged(site_path, mosquitto, tmp_path, caplog):
    """SIGTERM says so and the end says "stopped": a clean stop is told from a crash."""
    import logging
    import signal

    caplog.set_level(logging.INFO, logger="gateway.service")
    with running_gateway(site_path, mosquitto.url, tmp_path / "journal.db") as service:
        service.request_stop(signal.SIGTERM, None)  # as the handler is called
    lines = [r.getMessage() for r in caplog.records if r.name == "gateway.service"]
    assert "stopping (signal SIGTERM)" in lines
    assert lines[-1] == "stopped"
