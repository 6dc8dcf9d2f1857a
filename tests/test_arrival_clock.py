"""An arrival's age is judged by its gate's own clock, learned from the gate's live arrivals.

A gate controller whose clock runs minutes behind the gateway's still gets holds (so the
next car is not sent to the same space); an arrival the broker kept while the gateway was
away, or one the gate itself sent late, is still answered without a hold.
"""

from __future__ import annotations

import json
import logging

import pytest
from gateway_support import Clocks, snapshot_all_free

from gateway.arrivals import ARRIVAL_LIVE_AFTER_S, ARRIVAL_MAX_AGE_S
from gateway.journal import Journal
from gateway.lag import LAG_FRESH_S
from gateway.live import LiveGateway
from parking import topics

SITE = "xinyuan"
HOLD_S = 180.0


class _Gate:
    """An in-process gateway with injected clocks, every space free, and what it sent."""

    def __init__(self, site, db, clocks: Clocks):
        self.clocks = clocks
        self.sent: list[tuple[str, bytes]] = []
        self.gw: LiveGateway = clocks.gateway(
            site, Journal(db), lambda t, p, q, r: self.sent.append((t, p)), hold_s=HOLD_S
        )
        self.gw.publish_all()
        snapshot_all_free(self.gw, site, clocks.wall)
        self.n = 0

    def connect(self) -> None:
        """The service's word: subscribed to the broker (again)."""
        self.gw.broker_up = True

    def disconnect(self) -> None:
        self.gw.broker_up = False

    def arrive(self, gate_skew: float, entrance: str = "north") -> dict:
        """A car at ``entrance`` stamped by a gate clock ``gate_skew`` s off the gateway's
        (negative: behind), 2 s apart from the last one."""
        self.clocks.advance(2)
        self.n += 1
        body = {"class": "resident", "request_id": f"r{self.n}", "ts": self.clocks.wall + gate_skew}
        mark = len(self.sent)
        self.gw.handle(topics.arrival(SITE, entrance), json.dumps(body).encode())
        (answer,) = [json.loads(p) for t, p in self.sent[mark:] if t.endswith("/assignment")]
        assert answer["ts"] == self.clocks.wall  # answered now, by the gateway's clock
        return answer


def _held(answer: dict) -> bool:
    if answer["hold_expires"] is None:
        return False
    assert answer["hold_expires"] == answer["ts"] + HOLD_S  # now + hold_s, as ever
    return True


def test_a_gate_whose_clock_runs_two_minutes_behind_gets_holds(example_site, tmp_path, caplog):
    """The defect: every arrival from a gate 120 s behind was answered without a hold, so
    consecutive cars were all sent to the same space. Judged by the gate's own clock,
    each car gets a space of its own, held; the technician is told once to fix the
    gate's clock."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 20)  # connected a while: arrivals now are live
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        answers = [g.arrive(-120.0) for _ in range(3)]
    spaces = [a["space"] for a in answers]
    assert all(spaces) and len(set(spaces)) == 3, spaces
    assert all(_held(a) for a in answers)
    assert len(g.gw.core.holds) == 3 and g.gw.desk.unheld["late"] == 0
    assert g.gw.gate_clock_offset("north") == pytest.approx(120.0, abs=0.01)
    warnings = [r.getMessage() for r in caplog.records if "clock is" in r.getMessage()]
    assert warnings == [
        "entrance north's clock is 120 s behind the gateway's; holds follow the arrival "
        "time (have the gate's NTP fixed)"
    ]
    assert g.gw.gate_clock_warnings == 1
    # once an hour per entrance, not at every car
    clocks.advance(1800)
    g.arrive(-120.0)
    assert g.gw.gate_clock_warnings == 1
    clocks.advance(1800)
    g.arrive(-120.0)
    assert g.gw.gate_clock_warnings == 2


def test_the_backlog_right_after_a_connect_is_not_held(example_site, tmp_path):
    """Arrivals the broker kept while the gateway was away come right after the connect:
    stamped 5 min ago, they are answered without a hold, as before, and teach nothing
    about the gate's clock (were they taken as its offset, the backlog would be held)."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()  # the first connect after a (re)start: the backlog follows at once
    old = [g.arrive(-300.0) for _ in range(2)]
    assert [a["hold_expires"] for a in old] == [None, None]
    assert all(a["space"] for a in old)
    assert g.gw.core.holds == {} and g.gw.desk.unheld["late"] == 2
    assert g.gw.gate_clock_offset("north") is None
    # handled before the service said it is connected (the broker sends the kept messages
    # before it answers the subscription): the same
    g.disconnect()
    clocks.advance(30)
    assert g.arrive(-300.0)["hold_expires"] is None
    g.connect()
    assert g.arrive(-300.0)["hold_expires"] is None
    assert g.gw.core.holds == {} and g.gw.gate_clock_offset("north") is None
    # once connected a while, a punctual car is held as ever
    clocks.advance(ARRIVAL_LIVE_AFTER_S)
    assert _held(g.arrive(-1.0))


def test_a_reconnect_keeps_what_was_learned_of_a_gate_clock(example_site, tmp_path):
    """A short broker outage: the gate 120 s behind is still judged by its clock, so what
    it queued for a few seconds is held, and what waited 5 min is not."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 5)
    assert _held(g.arrive(-120.0))
    g.disconnect()
    clocks.advance(5)
    g.connect()
    assert _held(g.arrive(-120.0 - 5.0))  # kept 5 s by the broker
    assert g.arrive(-120.0 - 300.0)["hold_expires"] is None  # kept 5 min
    assert len(g.gw.core.holds) == 2


def test_an_arrival_a_gate_sends_late_is_still_old_by_its_clock(example_site, tmp_path):
    """A gate whose clock is known to run 120 s behind sends an arrival 5 min after it saw
    the car (its own queue): that car has left the gate, no hold. The next punctual one
    is held again."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 5)
    assert _held(g.arrive(-120.0))
    late = g.arrive(-120.0 - 300.0)
    assert late["space"] and late["hold_expires"] is None
    assert g.gw.desk.unheld["late"] == 1 and len(g.gw.core.holds) == 1
    assert g.gw.gate_clock_offset("north") == pytest.approx(
        120.0, abs=0.01
    )  # the late one did not move it
    # just inside the rule: 120 + 60 s
    assert _held(g.arrive(-120.0 - ARRIVAL_MAX_AGE_S + 1))
    assert g.arrive(-120.0 - ARRIVAL_MAX_AGE_S - 1)["hold_expires"] is None
    assert _held(g.arrive(-120.0))
    assert len(g.gw.core.holds) == 3


def test_a_gate_whose_clock_runs_ahead_gets_holds(example_site, tmp_path, caplog):
    """30 s ahead: holds as ever, consecutive cars to different spaces, and nothing to
    tell a technician (within a minute)."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 5)
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        answers = [g.arrive(30.0) for _ in range(3)]
    assert all(_held(a) for a in answers)
    assert len({a["space"] for a in answers}) == 3
    assert g.gw.gate_clock_offset("north") == pytest.approx(-30.0, abs=0.01)
    assert g.gw.gate_clock_warnings == 0
    assert not [r for r in caplog.records if "clock is" in r.getMessage()]


def test_a_gate_clock_put_right_is_followed_at_once(example_site, tmp_path):
    """The gate's NTP is fixed (120 s behind, then right): the least recent delay is the
    new offset at once, so an arrival 90 s late by the right clock is no longer held.
    Offsets are per entrance; one learned ten minutes ago is forgotten."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 5)
    assert _held(g.arrive(-120.0))
    assert _held(g.arrive(0.0))  # fixed
    assert g.gw.gate_clock_offset("north") == pytest.approx(0.0, abs=0.01)
    assert g.arrive(-90.0)["hold_expires"] is None
    assert g.gw.gate_clock_offset("east") is None
    assert g.arrive(-90.0, entrance="east")["hold_expires"] is not None  # its first: learned
    clocks.advance(601)
    assert g.gw.gate_clock_offset("north") is None
    assert g.gw.gate_clock_offset("east") is None


def test_a_gate_clock_that_ran_ahead_and_is_put_right_still_gets_holds(example_site, tmp_path):
    """The samples of a gate 120 s ahead stayed the smallest delay after its clock was
    fixed: every rightly stamped arrival then looked 120 s old and got no hold, and the
    next cars were sent to one space. A gate ahead never makes an arrival older."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 5)
    assert _held(g.arrive(120.0)) and _held(g.arrive(120.0))
    answers = [g.arrive(0.0) for _ in range(3)]  # its NTP fixed
    assert all(_held(a) for a in answers)
    assert len({a["space"] for a in answers}) == 3


def test_a_restart_keeps_what_was_learned_of_a_gate_clock(example_site, tmp_path):
    """The gate 120 s behind, learnt before a restart: the backlog right after it (a car
    that waited 5 s in the broker) is judged by the gate's clock and held; one that waited
    5 min is not. (Offsets were kept in memory only: every backlog arrival of such a gate
    went unheld until it was learnt again.)"""
    db = tmp_path / "j.sqlite"
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, db, clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 5)
    assert _held(g.arrive(-120.0))
    g.gw.tick()  # journaled off the answer's path
    g.gw.journal.close()
    clocks.advance(60)  # down a minute; a new process has a monotonic clock of its own
    clocks.mono = 0.0
    g = _Gate(example_site, db, clocks)
    g.n = 100  # new request ids (an id seen before is answered from the journal)
    snapshot_all_free(g.gw, example_site, clocks.wall, seq=2)  # the buses' next report
    assert g.gw.gate_clock_offset("north") == pytest.approx(120.0, abs=0.01)
    g.connect()  # the backlog follows at once
    assert _held(g.arrive(-120.0 - 5.0))
    assert g.arrive(-120.0 - 300.0)["hold_expires"] is None
    assert g.gw.gate_clock_offset("east") is None  # nothing learnt of that one
    g.gw.journal.close()
    # learnt longer ago than the offsets are trusted: relearnt from live arrivals
    clocks.advance(700)
    clocks.mono = 0.0
    g = _Gate(example_site, db, clocks)
    assert g.gw.gate_clock_offset("north") is None


def _report(site, seq: int, ts: float, spaces: dict[str, str]) -> tuple[str, bytes, float]:
    import time

    body = {"agent": "serial-bus-g", "source": "bus-g", "boot": "b", "seq": seq, "ts": ts,
            "kind": "delta", "spaces": [{"space": s, "state": st, "since": ts}
                                        for s, st in spaces.items()]}  # fmt: skip
    return (
        topics.edge_occupancy(site.id, "serial-bus-g"),
        json.dumps(body).encode(),
        time.perf_counter(),
    )


def test_a_gateway_behind_its_reports_says_so_and_holds_no_space_for_a_stale_arrival(
    example_site, tmp_path, caplog
):
    """Overload: reports (and arrivals among them) queued at the broker for a minute. The
    gateway told nobody (its latency metric starts at receipt), and it learned the
    backlog as the gate's clock offset, so minute-old arrivals still held a space for
    three minutes. The lag behind the agents' own stamps is now measured (against the
    delay of a report read with nothing else waiting), said in the log and /metrics, and
    arrivals read while behind teach nothing about the gate's clock."""
    clocks = Clocks(1_800_000_000.0)
    g = _Gate(example_site, tmp_path / "j.sqlite", clocks)
    g.connect()
    clocks.advance(ARRIVAL_LIVE_AFTER_S + 90)  # the reports below come after the snapshot
    spaces = example_site.spaces_of_source("bus-g")
    # caught up: read alone, 0.3 s after it was sent (transit, or the agent's clock)
    g.gw.handle_batch([_report(example_site, 2, clocks.wall - 0.3, {spaces[0]: "occupied"})])
    assert g.gw.behind_s() == 0.0
    # a backlog: a batch of reports sent 65 s ago, and a car announced with them
    sent = clocks.wall - 65
    arrival = {"class": "resident", "request_id": "late-1", "ts": sent}
    batch = [_report(example_site, 3 + i, sent + i * 0.01, {spaces[1 + i]: "occupied"})
             for i in range(5)]  # fmt: skip
    batch.append((topics.arrival(SITE, "north"), json.dumps(arrival).encode(), batch[0][2]))
    mark = len(g.sent)
    with caplog.at_level(logging.INFO, logger="gateway.live"):
        g.gw.handle_batch(batch)
        assert g.gw.behind_s() == pytest.approx(64.7, abs=0.1)
        (answer,) = [json.loads(p) for t, p in g.sent[mark:] if t.endswith("/assignment")]
        assert answer["hold_expires"] is None and g.gw.desk.unheld["late"] == 1
        assert g.gw.gate_clock_offset("north") is None  # nothing learned from it
        g.gw.tick()
        assert "the gateway is 65 s behind agent serial-bus-g's reports" in caplog.text
        assert g.gw.counters().report_lag_s["serial-bus-g"] == pytest.approx(64.7, abs=0.1)
        assert g.gw.rejections.counts == {}
        # drained: the next report is read alone again
        g.gw.handle_batch([_report(example_site, 8, clocks.wall - 0.3, {spaces[9]: "occupied"})])
        assert g.gw.behind_s() == 0.0
        g.gw.tick()
        assert "the gateway has caught up with its agents' reports" in caplog.text
    # an agent's lag from a backlog is not kept once it stops reporting (offline, silent):
    # a stale one kept the gateway "behind" for good, and no gate offset was learned again
    g.gw.handle_batch(
        batch[:3] + [_report(example_site, 20, clocks.wall - 65, {spaces[30]: "free"})]
    )
    assert g.gw.behind_s() > 60
    clocks.advance(LAG_FRESH_S + 1)
    assert g.gw.behind_s() == 0.0 and g.gw.counters().report_lag_s["serial-bus-g"] == 0.0
    g.gw.handle_batch(
        batch[:3] + [_report(example_site, 21, clocks.wall - 65, {spaces[31]: "free"})]
    )
    assert g.gw.behind_s() > 60
    g.gw.handle(topics.edge_availability(SITE, "serial-bus-g"), b"offline")  # its last will
    assert g.gw.behind_s() == 0.0
