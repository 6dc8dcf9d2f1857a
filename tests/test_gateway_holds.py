"""Holds survive a gateway restart: a car sent to a space before the restart keeps it."""

from __future__ import annotations

import json

import pytest
from gateway_support import Clocks, snapshot_all_free

from gateway.journal import Journal
from gateway.live import LiveGateway
from parking import topics
from parking.site import EXAMPLE_SITE, load_site

SITE = "xinyuan"


def test_open_holds_are_restored_after_a_restart(example_site, tmp_path):
    clocks = Clocks(1_800_000_000.0)
    sent: list[tuple[str, bytes]] = []

    def publish(topic, payload, qos, retain):
        sent.append((topic, payload))

    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    gw = clocks.gateway(example_site, journal, publish, hold_s=300)
    gw.publish_all()
    snapshot_all_free(gw, example_site, clocks.wall)
    gw.handle(
        topics.arrival(SITE, "north"),
        json.dumps({"class": "resident", "request_id": "r1"}).encode(),
    )
    first = json.loads(next(p for t, p in sent if t.endswith("/assignment")))["space"]
    assert first is not None
    journal.close()

    clocks.advance(5)  # restart 5 s later (within the buses' TTL), the car is still driving
    journal = Journal(db)
    gw2 = clocks.gateway(example_site, journal, publish, hold_s=300)
    assert gw2.core.holds.get(example_site.space_index[first]) == 1_800_000_000.0 + 300
    sent.clear()
    gw2.publish_all()
    gw2.handle(
        topics.arrival(SITE, "north"),
        json.dumps({"class": "resident", "request_id": "r2"}).encode(),
    )
    second = json.loads(next(p for t, p in sent if t.endswith("/assignment")))["space"]
    assert second not in (None, first)  # the next car is not sent to the held space
    clocks.advance(300)  # the hold expires: the space is offered again
    gw2.tick()
    assert example_site.space_index[first] not in gw2.core.holds
    journal.close()


class _Gate:
    """A gateway in-process on a journal file, with its own clocks and what it sent."""

    def __init__(self, site, db, now: float, hold_s: float = 300, **kw):
        self.site, self.db, self.hold_s, self.kw = site, db, hold_s, kw
        self.clock = [now]
        self.sent: list[tuple[str, bytes]] = []
        self.journal = Journal(db)
        self.gw = LiveGateway(
            site,
            self.journal,
            lambda t, p, q, r: self.sent.append((t, p)),
            hold_s=hold_s,
            clock=lambda: self.clock[0],
            mono=lambda: self.clock[0],
            **kw,
        )
        self.gw.publish_all()

    def restart(self, after_s: float) -> _Gate:
        self.journal.close()
        return _Gate(self.site, self.db, self.clock[0] + after_s, self.hold_s, **self.kw)

    def arrive(self, request_id: str, entrance: str = "north", cls: str = "resident"):
        mark = len(self.sent)
        body = {"class": cls, "request_id": request_id}
        self.gw.handle(topics.arrival(SITE, entrance), json.dumps(body).encode())
        answers = [json.loads(p) for t, p in self.sent[mark:] if t.endswith("/assignment")]
        assert len(answers) == 1
        return answers[0]

    def report(
        self, agent: str, source: str, seq: int, states: dict[str, str], ts: float | None = None
    ) -> None:
        now = self.clock[0] if ts is None else ts
        report = {
            "agent": agent,
            "source": source,
            "boot": "b",
            "seq": seq,
            "ts": now,
            "kind": "delta",
            "spaces": [{"space": s, "state": st, "since": now} for s, st in states.items()],
        }
        self.gw.handle(topics.edge_occupancy(SITE, agent), json.dumps(report).encode())

    def line(self, display: str, i: int) -> int:
        return int(self.gw.core.line_free[self.gw.layout.line_keys.index((display, i))])


def test_a_hold_on_a_space_unknown_at_the_restart_is_kept(example_site, tmp_path):
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    first = g.arrive("r1")["space"]
    g.gw.handle(topics.edge_availability(SITE, "serial-bus-g"), b"offline")  # bus-g's agent is gone
    assert g.gw.state.state[example_site.space_index[first]] == 0  # unknown
    g2 = g.restart(5)
    assert example_site.space_index[first] in g2.gw.core.holds
    snapshot_all_free(g2.gw, example_site, g2.clock[0])  # the agent is back: all free
    assert g2.arrive("r2")["space"] != first  # the first car is still on its way there


SEEN_S = {"hold_seen_s": 5.0}  # a car is seen in its held space once there 5 s (within TTLs)


def test_a_hold_ended_by_the_car_stays_ended_after_a_restart(example_site, tmp_path):
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0, core_options=SEEN_S)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    first = g.arrive("r1")["space"]
    g.clock[0] += 2
    g.report("serial-bus-g", "bus-g", 2, {first: "occupied"})  # the car parks
    g.clock[0] += 5
    g.gw.tick()  # it stayed 5 s: the car is seen, the hold ends
    g.clock[0] += 2
    g.report("serial-bus-g", "bus-g", 3, {first: "free"})  # and it leaves again
    assert example_site.space_index[first] not in g.gw.core.holds
    before = g.line("gate-north", 0)
    g2 = g.restart(1)
    assert g2.gw.core.holds == {}
    assert g2.line("gate-north", 0) == before
    assert g2.arrive("r2")["space"] == first  # offered again at once, as before the restart


def test_a_held_space_occupied_for_a_moment_at_a_restart_keeps_its_hold(example_site, tmp_path):
    """A restart while a held space reads occupied for less than the confirmation time
    (another car manoeuvring over it): the hold is restored, and its confirmation runs
    from when the space became occupied; one occupied for longer is not restored."""
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0, core_options=SEEN_S)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    first = g.arrive("r1")["space"]
    s = example_site.space_index[first]
    g.report("serial-bus-g", "bus-g", 2, {first: "occupied"})
    g.gw.flush_checkpoint()
    g2 = g.restart(2)
    assert s in g2.gw.core.holds
    assert g2.arrive("r2")["space"] != first
    g2.report("serial-bus-g", "bus-g", 3, {first: "free"})  # it drove off again: still held
    g2.clock[0] += 6
    g2.gw.tick()
    assert s in g2.gw.core.holds
    g2.report("serial-bus-g", "bus-g", 4, {first: "occupied"})  # the car itself
    g2.gw.flush_checkpoint()
    g3 = g2.restart(6)  # occupied for 6 s: seen, the hold ends
    assert s not in g3.gw.core.holds
    # journaled then: once the car has left, a next start does not bring the hold back
    assert g3.gw.journal.given("north", "r1").released is not None
    g3.report("serial-bus-g", "bus-g", 5, {first: "free"})
    g3.gw.flush_checkpoint()
    g4 = g3.restart(1)
    assert s not in g4.gw.core.holds


def test_a_car_seen_by_a_report_made_before_the_assignment_still_ends_its_hold(
    example_site, tmp_path
):
    """A report that waited in the broker (made before the car's assignment, handled after
    it) puts the car in its space: the hold ends, and stays ended after a restart, by the
    order things were handled, not by the clocks."""
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0, core_options=SEEN_S)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    g.clock[0] += 10
    first = g.arrive("r1")["space"]
    g.report("serial-bus-g", "bus-g", 2, {first: "occupied"}, ts=g.clock[0] - 5)
    g.clock[0] += 5
    g.gw.tick()
    assert g.gw.core.holds == {}
    g.report("serial-bus-g", "bus-g", 3, {first: "free"})  # and it left again
    g2 = g.restart(1)
    assert g2.gw.core.holds == {}


def test_an_arrival_sent_again_gets_the_same_assignment(example_site, tmp_path):
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    first = g.arrive("g1-0042")
    count = g.line("gate-north", 0)
    g.clock[0] += 3
    again = g.arrive("g1-0042")  # a QoS 1 redelivery or the gate's retry
    assert again == first
    assert len(g.gw.core.holds) == 1 and g.line("gate-north", 0) == count
    assert g.gw.counters().repeated_arrivals == 1
    assert g.arrive("g1-0042", entrance="east")["space"] != first["space"]  # another gate's id
    g2 = g.restart(1)
    assert g2.arrive("g1-0042") == first  # also after a restart
    g2.clock[0] += 300  # the hold time is over: the same id is a new car
    assert g2.arrive("g1-0042")["ts"] != first["ts"]


def test_a_request_id_reused_by_another_car_is_answered_anew(example_site, tmp_path, caplog):
    """A gate whose request counter restarted (rebooted) sends another car under an id it
    used minutes ago: that car gets a space of its own, not the first car's (two cars, one
    space), nor its plate; the repeat rule still holds for the first car's own retries."""
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])

    def arrive(cls: str, plate: str) -> dict:
        mark = len(g.sent)
        body = {"class": cls, "request_id": "g1-0100", "plate": plate}
        g.gw.handle(topics.arrival(SITE, "north"), json.dumps(body).encode())
        (answer,) = [json.loads(p) for t, p in g.sent[mark:] if t.endswith("/assignment")]
        return answer

    first = arrive("resident", "沪A11111")
    g.clock[0] += 20
    with caplog.at_level("WARNING", logger="gateway.live"):
        other = arrive("resident", "沪B22222")  # same class, another plate
    assert other["space"] not in (None, first["space"]) and other["plate"] == "沪B22222"
    assert "request_id 'g1-0100' for another car" in caplog.text
    accessible = arrive("accessible", "沪C33333")  # another class
    assert accessible["space"] not in (first["space"], other["space"])
    assert accessible["class"] == "accessible"
    assert len(g.gw.core.holds) == 3
    assert arrive("accessible", "沪C33333") == accessible  # its own retry: as before
    c = g.gw.counters()
    assert c.reused_request_ids == 2 and c.repeated_arrivals == 1


def test_arrivals_it_cannot_take_are_refused_to_their_gate_with_the_reason(example_site, tmp_path):
    """A gate whose arrival is refused was left waiting for an answer that never came, as
    if the gateway were down: it is now told why on entrances/{e}/refusal, with its
    request_id when that could be read. A plate reader's line end is no refusal."""
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])

    def send(body: bytes, entrance: str = "north") -> tuple[list[dict], list[dict]]:
        mark = len(g.sent)
        g.gw.handle(topics.arrival(SITE, entrance), body)
        got = [(t, json.loads(p)) for t, p in g.sent[mark:]]
        return (
            [p for t, p in got if t == topics.assignment(SITE, entrance)],
            [p for t, p in got if t == topics.arrival_refusal(SITE, entrance)],
        )

    read = {"class": "resident", "plate": "沪A12345\r\n", "request_id": "a1"}
    answers, refusals = send(json.dumps(read).encode())
    assert refusals == [] and answers[0]["plate"] == "沪A12345"  # the line end is dropped
    ms = json.dumps({"class": "resident", "ts": g.clock[0] * 1000, "request_id": "a2"})
    answers, (refusal,) = send(ms.encode())  # ts in milliseconds
    assert answers == [] and refusal["request_id"] == "a2" and refusal["reason"] == "invalid"
    assert refusal["detail"].startswith("ts:") and refusal["entrance"] == "north"
    answers, (refusal,) = send(b'{"class": "lorry", "request_id": "a3"}')
    assert answers == [] and (refusal["reason"], refusal["request_id"]) == ("unknown_class", "a3")
    assert refusal["detail"] == (
        "vehicle class 'lorry' is not one of the site's: "
        + ", ".join(c.id for c in example_site.vehicle_classes)
    )
    answers, (refusal,) = send(b"not json")
    assert answers == [] and refusal["reason"] == "bad_json" and refusal["request_id"] is None
    huge = json.dumps({"request_id": "a5", "class": "resident", "pad": "x" * 300_000})
    answers, (refusal,) = send(huge.encode())  # over the cap: not even parsed for its id
    assert (refusal["reason"], refusal["request_id"]) == ("oversized", None)
    answers, (refusal,) = send(b'{"class": "resident", "request_id": "a4"}', entrance="west")
    assert refusal["reason"] == "unknown_entrance" and refusal["request_id"] == "a4"
    assert g.gw.counters().refused_arrivals == {
        ("north", "invalid"): 1,
        ("north", "unknown_class"): 1,
        ("north", "bad_json"): 1,
        ("north", "oversized"): 1,
        ("?", "unknown_entrance"): 1,
    }
    assert len(g.gw.core.holds) == 1  # only the car whose arrival was taken


def test_a_space_closed_in_the_site_file_can_be_opened(tmp_path):
    row = "{ids: A-003..A-040, zone: A, kinds: [resident],"
    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    assert row in text
    path = tmp_path / "site.yaml"
    path.write_text(text.replace(row, row + " closed: true,"), encoding="utf-8")
    site = load_site(path)  # the row of A-040, the nearest resident bay from the north gate
    g = _Gate(site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, site, g.clock[0])
    shut = g.line("gate-north", 0)
    assert g.arrive("r1")["space"] != "A-040"
    g.gw.control_space("A-040", "open", "manager-li", "repaired")
    # the sign, the zone counts and the next assignment all see it open
    assert g.line("gate-north", 0) == shut  # r1's hold took one, A-040 came back
    assert g.gw.zone_counts()[0].closed == 37
    assert g.arrive("r2")["space"] == "A-040"


@pytest.mark.parametrize(
    "body",
    [
        {"vehicle_class": "resident"},  # the wire key is "class"
        {"class": "resident", "plate": "AB\n123"},
        {"class": "resident", "plate": "AB\u202e321"},  # right-to-left override
    ],
)
def test_an_arrival_outside_the_contract_is_refused(example_site, tmp_path, body):
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    mark = len(g.sent)
    g.gw.handle(topics.arrival(SITE, "north"), json.dumps(body).encode())
    assert not [t for t, _ in g.sent[mark:] if t.endswith("/assignment")]
    assert g.gw.core.holds == {}
    assert g.gw.counters().rejected == {"invalid": 1}
    ok = {"class": "resident", "plate": "沪AD12345"}
    g.gw.handle(topics.arrival(SITE, "north"), json.dumps(ok).encode())
    assert [json.loads(p)["plate"] for t, p in g.sent[mark:] if t.endswith("/assignment")] == [
        "沪AD12345"
    ]


@pytest.mark.parametrize("plate", ["", "   "])
def test_an_arrival_whose_gate_read_no_plate_gets_a_space(example_site, tmp_path, plate):
    """A blank plate (a camera that read none) is no plate: the car still gets a space."""
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    mark = len(g.sent)
    g.gw.handle(
        topics.arrival(SITE, "north"), json.dumps({"class": "resident", "plate": plate}).encode()
    )
    sent = [json.loads(p) for t, p in g.sent[mark:] if t.endswith("/assignment")]
    assert len(sent) == 1 and sent[0]["space"] and sent[0].get("plate") is None
    assert g.gw.counters().rejected == {}


def test_a_journal_from_before_released_holds_opens_with_its_holds(tmp_path):
    import sqlite3

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # the assignments table as it was
        conn.execute(
            "CREATE TABLE assignments(id INTEGER PRIMARY KEY, ts REAL NOT NULL, entrance TEXT"
            " NOT NULL, class TEXT NOT NULL, space TEXT, zone TEXT, hold_expires REAL,"
            " plate TEXT, request_id TEXT, payload TEXT NOT NULL)"
        )
        conn.execute(
            "INSERT INTO assignments(ts, entrance, class, space, zone, hold_expires, payload)"
            " VALUES (100, 'north', 'resident', 'A-040', 'A', 400, '{}')"
        )
    journal = Journal(db)
    assert journal.open_holds(200) == [("A-040", 400.0, "north")]
    journal.release_holds(["A-040"], 250)
    assert journal.open_holds(260) == []
    journal.close()


def test_a_space_keeps_the_sensors_time_through_a_short_outage(example_site, tmp_path):
    """What the manager's long-parked alert reads: the car's time by the sensor, which an
    agent's restart (unknown, then occupied again) does not start again."""
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    parked = g.clock[0] - 80 * 3600
    g.report("serial-bus-g", "bus-g", 1, {"A-001": "occupied"}, ts=parked)
    g.gw.handle(topics.edge_availability(SITE, "serial-bus-g"), b"offline")
    g.clock[0] += 30
    g.report("serial-bus-g", "bus-g", 2, {"A-001": "occupied"}, ts=parked)  # the same car, again
    a1 = next(s for s in g.gw.spaces() if s.space == "A-001")
    assert a1.state == "occupied" and a1.since == g.clock[0]  # the gateway's state: anew
    assert a1.observed_since == parked


def _burst(gw: LiveGateway, sent: list, clocks: Clocks, n: int, tag: str) -> list[str]:
    got = []
    for i in range(n):
        sent.clear()
        clocks.advance(0.5)
        gw.handle(
            topics.arrival(SITE, "north"),
            json.dumps({"class": "resident", "request_id": f"{tag}{i}"}).encode(),
        )
        got.append(json.loads(next(p for t, p in sent if t.endswith("/assignment")))["space"])
    return got


def _burst_after_a_step(site, db, step_s: float) -> tuple[list[str], bool, bool]:
    """One car, then the wall clock steps by ``step_s``, then ten cars; 59 s and 61 s later
    the first car's 60 s hold should still hold, then have ended. Returns the ten spaces
    and whether it did both."""
    clocks = Clocks(1_800_000_000.0)
    sent: list[tuple[str, bytes]] = []
    gw = clocks.gateway(
        site,
        Journal(db),
        lambda topic, payload, qos, retain: sent.append((topic, payload)),
        hold_s=60,
    )
    gw.publish_all()
    snapshot_all_free(gw, site, clocks.wall)
    first = _burst(gw, sent, clocks, 1, "a")[0]
    clocks.step(step_s)
    burst = _burst(gw, sent, clocks, 10, "b")
    clocks.advance(59 - 5)  # the burst took 5 s
    gw.tick()
    kept = site.space_index[first] in gw.core.holds
    clocks.advance(2)
    gw.tick()
    return burst, kept, site.space_index[first] not in gw.core.holds


def test_a_wall_clock_stepped_back_neither_stops_spreading_nor_keeps_holds(example_site, tmp_path):
    """NTP steps the clock back an hour: a burst of arrivals is still spread over aisles
    as without the step (congestion judged an hour old would be none: every car to the
    nearest aisle), and a hold taken before the step still ends after its hold time,
    not an hour later."""
    steady, kept, released = _burst_after_a_step(example_site, tmp_path / "a.sqlite", 0.0)
    assert kept and released
    stepped, kept, released = _burst_after_a_step(example_site, tmp_path / "b.sqlite", -3600.0)
    assert stepped == steady
    assert kept and released
    assert len({example_site.space(s).access for s in steady}) >= 3  # spread over aisles


def test_a_wall_clock_stepped_forward_ends_no_hold_early(example_site, tmp_path):
    """NTP steps the clock forward ten minutes (a box that booted with a stale clock): a
    hold given before the step still lasts its 60 s of real time, so the next car is not
    sent to the same space, and the burst after it is spread as without the step."""
    steady, _, _ = _burst_after_a_step(example_site, tmp_path / "a.sqlite", 0.0)
    stepped, kept, released = _burst_after_a_step(example_site, tmp_path / "b.sqlite", 600.0)
    assert kept, "the step ended the hold: the next car goes to the same space"
    assert released
    assert stepped == steady


def test_a_hold_ended_before_a_restart_stays_ended_whatever_the_clock_did(example_site, tmp_path):
    """A hold runs out while the wall clock has stepped back an hour: the running core
    ends it on time, and a restart must not hold the space again for that hour (the
    stored expiry is in the wall time before the step)."""
    clocks = Clocks(1_800_000_000.0)
    db = tmp_path / "journal.sqlite"
    gw = clocks.gateway(example_site, Journal(db), lambda *a: None, hold_s=180)
    gw.publish_all()
    snapshot_all_free(gw, example_site, clocks.wall)
    gw.handle(
        topics.arrival(SITE, "north"), json.dumps({"class": "resident", "request_id": "r"}).encode()
    )
    assert len(gw.core.holds) == 1
    clocks.advance(10)
    clocks.step(-3600)  # NTP steps the clock back an hour
    gw.tick()
    clocks.advance(200)  # 210 s after the hold began: it has run out
    gw.tick()
    assert gw.core.holds == {}
    gw.flush_checkpoint()
    gw.journal.close()
    clocks.advance(5)
    again = clocks.gateway(example_site, Journal(db), lambda *a: None, hold_s=180)
    assert again.core.holds == {}
    again.journal.close()


def test_a_blind_gate_does_not_tell_drivers_it_is_full(example_site, tmp_path):
    """No space to give while the visitors' row is unknown (its camera is down) is not
    "full": the answer says the spaces cannot be confirmed. Seen full, it says full."""
    from gateway.arrivals import NO_SPACE_FULL, NO_SPACE_UNKNOWN

    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])  # the buses; camera cam-c unheard
    blind = g.arrive("v1", cls="visitor")
    assert blind["space"] is None
    assert blind["hint"] == NO_SPACE_UNKNOWN.model_dump() != NO_SPACE_FULL.model_dump()
    row = example_site.spaces_of_source("cam-c")
    g.report("camera-cam-c", "cam-c", 1, dict.fromkeys(row, "occupied"))
    full = g.arrive("v2", cls="visitor")
    assert full["space"] is None and full["hint"] == NO_SPACE_FULL.model_dump()
    # as the signs judge a line: one unknown among occupied ones is still full (the sign
    # says FULL); more than a tenth of them unknown (full_unknown_fraction) may hide free
    # spaces, so neither the sign (--) nor the gate says full; more than half is blind
    g.report("camera-cam-c", "cam-c", 2, {row[0]: "unknown"})
    assert g.arrive("v3", cls="visitor")["hint"] == NO_SPACE_FULL.model_dump()
    assert example_site.display_settings.full_unknown_fraction == 0.1
    g.report("camera-cam-c", "cam-c", 3, dict.fromkeys(row[: len(row) // 10 + 1], "unknown"))
    assert g.arrive("v4", cls="visitor")["hint"] == NO_SPACE_UNKNOWN.model_dump()
    g.report("camera-cam-c", "cam-c", 4, dict.fromkeys(row[: len(row) // 2 + 1], "unknown"))
    assert g.arrive("v5", cls="visitor")["hint"] == NO_SPACE_UNKNOWN.model_dump()


def test_an_arrival_queued_while_the_gateway_was_away_is_not_held(example_site, tmp_path):
    """The broker keeps arrivals for an absent gateway: held at its restart minutes later,
    each would keep a space for a car long gone and the sign would read FULL over free
    spaces. Stamped over a minute before its gate's usual delay (a gate whose clock is
    wrong is learned: tests/test_arrival_clock.py), an arrival is answered but nothing is
    held; a fresh one is held as ever."""
    from gateway.arrivals import ARRIVAL_MAX_AGE_S

    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)
    snapshot_all_free(g.gw, example_site, g.clock[0])
    before = g.line("gate-north", 0)
    mark = len(g.sent)
    old = {"class": "resident", "request_id": "r-old", "ts": g.clock[0] - ARRIVAL_MAX_AGE_S - 1}
    g.gw.handle(topics.arrival(SITE, "north"), json.dumps(old).encode())
    (answer,) = [json.loads(p) for t, p in g.sent[mark:] if t.endswith("/assignment")]
    assert answer["space"] and answer["hold_expires"] is None
    assert g.gw.core.holds == {} and g.line("gate-north", 0) == before
    assert g.gw.desk.unheld["late"] == 1 and g.gw.counters().rejected == {}
    fresh = {"class": "resident", "request_id": "r-new", "ts": g.clock[0] - 2}
    g.gw.handle(topics.arrival(SITE, "north"), json.dumps(fresh).encode())
    assert len(g.gw.core.holds) == 1 and g.line("gate-north", 0) == before - 1


def test_a_gate_is_blind_when_one_zone_the_class_may_use_is(example_site, tmp_path):
    """Zones A and B full, the basement's bus never heard (zones E and F unknown): the
    basement line of the gate's sign shows "--", so the gate does not say "full" to a
    resident either, though the basement is under half of the residents' bays (the gate
    used to pool every zone into one share)."""
    from gateway.arrivals import NO_SPACE_FULL, NO_SPACE_UNKNOWN

    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)  # 16:00 in Shanghai
    bus = example_site.spaces_of_source("bus-g")
    g.report("serial-bus-g", "bus-g", 1, dict.fromkeys(bus, "occupied"))
    resident = [s for s in example_site.spaces if example_site.eligible(s, "resident", 16 * 60)]
    unknown = [s for s in resident if s.zone in ("E", "F")]
    assert 0 < len(unknown) < 0.5 * len(resident)  # the pooled share was under the line
    answer = g.arrive("r1", cls="resident")
    assert answer["space"] is None
    assert answer["hint"] == NO_SPACE_UNKNOWN.model_dump() != NO_SPACE_FULL.model_dump()
    # the basement seen full too: full
    g.report(
        "serial-bus-b1",
        "bus-b1",
        1,
        dict.fromkeys(example_site.spaces_of_source("bus-b1"), "occupied"),
    )
    assert g.arrive("r2", cls="resident")["hint"] == NO_SPACE_FULL.model_dump()


def test_a_class_with_no_space_open_at_this_hour_is_not_told_full(example_site, tmp_path):
    """The office's bays (zone D) are theirs 08:00-19:00 only: at 20:00 an office car is
    told nothing is open to it now, not that the car park is full (zone D is empty)."""
    from gateway.arrivals import NO_SPACE_FULL, NO_SPACE_NOT_NOW

    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0 + 4 * 3600)  # 20:00
    snapshot_all_free(g.gw, example_site, g.clock[0])
    answer = g.arrive("o1", entrance="north", cls="office")
    assert answer["space"] is None
    assert answer["hint"] == NO_SPACE_NOT_NOW.model_dump() != NO_SPACE_FULL.model_dump()
    assert g.arrive("r1", cls="resident")["space"] is not None  # the residents' bays are


def test_a_class_whose_spaces_a_manager_closed_is_told_closed_not_full(example_site, tmp_path):
    """Zone D closed for cleaning at 16:00, the office's hours: an office car is told its
    spaces are closed, as the signs over zone D say (关闭 CLOSED), not that they are taken."""
    from gateway.arrivals import NO_SPACE_CLOSED, NO_SPACE_FULL

    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0)  # 16:00
    snapshot_all_free(g.gw, example_site, g.clock[0])
    g.gw.control_zone("D", "close", "li", "cleaning")
    answer = g.arrive("o1", entrance="north", cls="office")
    assert answer["space"] is None
    assert answer["hint"] == NO_SPACE_CLOSED.model_dump() != NO_SPACE_FULL.model_dump()
    g.gw.control_zone("D", "open", "li", None)
    assert g.arrive("o2", entrance="north", cls="office")["space"] is not None


def test_zone_counts_say_how_many_free_spaces_are_held(example_site, tmp_path):
    """The views (the dashboard's stream, /zones) learn how many free spaces of a zone are
    held for cars sent there (the signs do not offer them): when a hold begins, when the
    car parks and when it ends. The retained zones/{zone} stays as it was: a reader of an
    earlier release refuses a key it does not know."""
    g = _Gate(example_site, tmp_path / "j.sqlite", 1_800_000_000.0, hold_s=60)
    told: list[dict] = []
    g.gw.subscribe(lambda e: told.append(e.data) if e.kind == "zone" else None)
    snapshot_all_free(g.gw, example_site, g.clock[0])

    def zone_a() -> dict:
        return [d for d in told if d["zone"] == "A"][-1]

    def wire_a() -> dict:
        return [json.loads(p) for t, p in g.sent if t == topics.zone(SITE, "A")][-1]

    assert zone_a()["held"] == 0
    wired = len(g.sent)
    first = g.arrive("r1")["space"]
    second = g.arrive("r2")["space"]
    assert {example_site.space(first).zone, example_site.space(second).zone} == {"A"}
    assert (zone_a()["held"], zone_a()["free"]) == (2, 80)  # still free, but held
    assert not [t for t, _ in g.sent[wired:] if t == topics.zone(SITE, "A")]  # nothing new
    assert "held" not in wire_a()
    g.report("serial-bus-g", "bus-g", 2, {first: "occupied"})  # the first car parks
    assert (zone_a()["held"], zone_a()["occupied"]) == (1, 1)
    assert wire_a()["occupied"] == 1 and "held" not in wire_a()
    assert {z.zone: z.held for z in g.gw.zone_counts()}["A"] == 1
    g.clock[0] += 61
    g.gw.tick()  # the second hold runs out
    assert zone_a()["held"] == 0
    assert {z.zone: z.held for z in g.gw.zone_counts()}["A"] == 0


def test_spaces_no_entrance_reaches_are_not_on_the_signs(tmp_path, caplog):
    """The basement's ramp entered as a one-way edge the wrong way (up, not down): no gate
    reaches zones E and F. The gateway says so in its log at start, and the gate's
    "Basement B1" line does not count those bays (it said 58 free while every resident
    at the gate was turned away); the zone counts still show what the sensors say."""
    import logging

    from parking.site import parse_site

    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    ramp = "    - {from: R1, to: K1, length: 45}    # ramp"
    assert ramp in text
    site = parse_site(
        text.replace(ramp, "    - {from: K1, to: R1, length: 45, oneway: true}"), "s.yaml"
    )
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        g = _Gate(site, tmp_path / "j.sqlite", 1_800_000_000.0)
    assert "spaces cannot be reached from any entrance" in caplog.text
    snapshot_all_free(g.gw, site, g.clock[0])
    lines = g.gw.displays()["gate-north"].lines
    assert [line.count for line in lines][2] == 0  # the basement line
    assert lines[0].count and lines[0].count > 0  # zone A, reached, counted as before
    zones = {z.zone: z for z in g.gw.zone_counts()}
    assert zones["E"].free == zones["E"].total > 0


def test_a_gate_flooding_arrivals_cannot_hold_every_space(example_site, tmp_path, caplog):
    """A gate controller sending arrival after arrival (broken, or its login stolen) held a
    space for each: the signs read FULL over free spaces. Past --max-holds-per-entrance
    holds outstanding at an entrance, an arrival gets no space, only the signs (a space
    given without a hold would go to every car after it too), counted and logged once a
    minute; a hold that ends makes room again, and a restart counts the entrance's holds
    from the journal."""
    caplog.set_level("WARNING", logger="gateway.live")
    g = _Gate(
        example_site,
        tmp_path / "j.sqlite",
        1_800_000_000.0,
        max_holds_per_entrance=3,
        core_options=SEEN_S,
    )
    snapshot_all_free(g.gw, example_site, g.clock[0])
    answers = [g.arrive(f"r{i}") for i in range(5)]
    assert [a["space"] is not None for a in answers] == [True, True, True, False, False]
    assert all(a["hold_expires"] is not None for a in answers[:3])
    assert answers[3]["hint"]["en"] == "Many cars at this gate: follow the signs to a free space"
    assert len(g.gw.core.holds) == 3
    assert g.gw.counters().unheld_arrivals == {"late": 0, "entrance_cap": 2}
    assert len([r for r in caplog.records if "--max-holds-per-entrance" in r.getMessage()]) == 1
    assert g.arrive("e1", entrance="east")["hold_expires"] is not None  # per entrance
    # the first car parks: once seen there, its hold ends, and the entrance may hold one more
    parked = answers[0]["space"]
    bus = example_site.bindings[parked].source
    agent = next(b.agent for b in example_site.buses if b.id == bus)
    g.report(agent, bus, 2, {parked: "occupied"})
    g.clock[0] += 5
    g.gw.tick()
    assert example_site.space_index[parked] not in g.gw.core.holds
    assert g.arrive("r5")["hold_expires"] is not None
    assert g.arrive("r6")["space"] is None
    g.journal.close()
    again = _Gate(example_site, g.db, g.clock[0] + 5, max_holds_per_entrance=3)
    assert again.arrive("r7")["space"] is None  # north's three holds were restored
    assert again.arrive("e2", entrance="east")["hold_expires"] is not None
