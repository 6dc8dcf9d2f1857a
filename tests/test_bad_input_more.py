"""Edge health, availability and report gaps through an in-process gateway
(gateway.live.LiveGateway on a real SQLite journal): what is not the agent's own, older
than known or not the contract's words is rejected (or left out), counted and never
stored; reports
that never arrived are counted and said."""

from __future__ import annotations

import json
import logging

import pytest
from gateway_support import Clocks, snapshot_all_free

from gateway.journal import Journal
from gateway.live import GAP_LOG_INTERVAL_S, LiveGateway
from parking import topics
from parking.payloads import (
    MAX_PAYLOAD_BYTES,
    CameraSpaceHealth,
    DetectorHealth,
    HealthReport,
    NodeHealth,
)

SITE = "xinyuan"
NOW = 1_800_000_000.0


@pytest.fixture
def clocks() -> Clocks:
    return Clocks(NOW)


@pytest.fixture
def gw(example_site, tmp_path, clocks):
    journal = Journal(tmp_path / "journal.sqlite")
    gateway = clocks.gateway(example_site, journal, lambda *a: None)
    gateway.publish_all()
    yield gateway
    journal.close()


def rejected_since(gw: LiveGateway, before: dict[str, int]) -> dict[str, int]:
    return {k: v - before.get(k, 0) for k, v in gw.rejections.counts.items() if v != before.get(k)}


def stored_health(gw: LiveGateway, agent: str) -> HealthReport | None:
    return next(a.health for a in gw.agents() if a.agent == agent)


def bus_health(*nodes: NodeHealth, ts: float = NOW, **change) -> HealthReport:
    return HealthReport(agent="serial-bus-g", source="bus-g", ts=ts, nodes=list(nodes), **change)


def node(address: int, *detectors: tuple[int, str | None]) -> NodeHealth:
    return NodeHealth(
        address=address,
        status="dead",
        detectors=[DetectorHealth(index=i, space=s, status="stuck") for i, s in detectors],
    )


def send_health(gw: LiveGateway, health: HealthReport) -> None:
    gw.handle(topics.edge_health(SITE, health.agent), health.model_dump_json().encode())


@pytest.mark.parametrize(
    ("sent", "reason", "kept"),
    [
        (bus_health(node(99)), "unknown_node", bus_health()),  # bus-g has nodes 1..7
        (bus_health(node(7, (32, None))), "unknown_detector", bus_health(node(7))),
        (bus_health(node(1, (0, "NO-SUCH-SPACE"))), "unknown_space", bus_health(node(1))),
        (bus_health(node(1, (0, "C-001"))), "foreign_space", bus_health(node(1))),  # camera's
        (bus_health(node(1, (0, "B1-E-001"))), "foreign_space", bus_health(node(1))),
        (bus_health(node(1, (0, "A-040"))), "foreign_space", bus_health(node(1))),  # node 2's
        # node 1's, but its detector 1: an agent whose site file wires the node otherwise
        (bus_health(node(1, (0, "A-002"))), "foreign_space", bus_health(node(1))),
        (
            bus_health(spaces=[CameraSpaceHealth(space="C-002", confidence=1.0)]),
            "foreign_space",
            bus_health(),
        ),
        (
            bus_health(node(1, (0, "A-001")), node(99)),
            "unknown_node",
            bus_health(node(1, (0, "A-001"))),  # its own node stays: its alerts are real
        ),
    ],
)
def test_what_a_bus_health_names_that_is_not_its_own_is_left_out_and_counted(
    gw, sent, reason, kept
):
    """A false "node 99 does not answer" or "detector (C-001) stuck" would send a
    technician to hardware that is not there: such parts are left out and counted. The
    rest is taken, so an agent whose site file differs still raises its real alerts."""
    good = bus_health(node(1, (0, "A-001"), (1, "A-002")), node(7, (31, None)), ts=NOW - 10)
    send_health(gw, good)
    assert stored_health(gw, "serial-bus-g") == good
    before = dict(gw.rejections.counts)
    send_health(gw, sent)
    assert rejected_since(gw, before) == {reason: 1}
    assert stored_health(gw, "serial-bus-g") == kept


@pytest.mark.parametrize(
    ("space", "node_address", "reason"),
    [("A-001", None, "foreign_space"), ("Z-999", None, "unknown_space"), (None, 1, "unknown_node")],
)
def test_a_camera_health_names_only_its_own_spaces(gw, space, node_address, reason):
    good = HealthReport(
        agent="camera-cam-c",
        source="cam-c",
        ts=NOW - 10,
        fps=5.0,
        spaces=[CameraSpaceHealth(space="C-001", confidence=0.9)],
    )
    send_health(gw, good)
    assert stored_health(gw, "camera-cam-c") == good
    change: dict = {"ts": NOW, "status": "degraded"}
    if space is not None:
        change["spaces"] = [CameraSpaceHealth(space=space, confidence=0.1)]
    if node_address is not None:
        change["nodes"] = [NodeHealth(address=node_address, status="dead")]
    before = dict(gw.rejections.counts)
    send_health(gw, good.model_copy(update=change))
    assert rejected_since(gw, before) == {reason: 1}
    stored = stored_health(gw, "camera-cam-c")
    assert stored.status == "degraded" and stored.nodes == []
    assert [s.space for s in stored.spaces] == ([] if space is not None else ["C-001"])


def test_an_older_health_does_not_replace_a_newer_one(gw):
    """Health is QoS 0 and retained: one that arrives late (a stale "blind") would raise a
    false critical alert over a newer "ok". The same one again (a reconnect) is fine."""
    newer = HealthReport(agent="camera-cam-c", source="cam-c", ts=NOW, status="ok", fps=5.0)
    older = newer.model_copy(update={"ts": NOW - 3600, "status": "blind", "fps": 0.0})
    send_health(gw, newer)
    before = dict(gw.rejections.counts)
    send_health(gw, older)
    assert rejected_since(gw, before) == {"older_than_known": 1}
    assert stored_health(gw, "camera-cam-c") == newer
    send_health(gw, newer)  # the retained one again, at a reconnect
    assert rejected_since(gw, before) == {"older_than_known": 1}
    later = newer.model_copy(update={"ts": NOW + 5, "status": "degraded"})
    send_health(gw, later)
    assert stored_health(gw, "camera-cam-c") == later


def test_health_of_one_boot_is_taken_in_order_after_the_agents_clock_stepped_back(gw):
    """NTP steps the edge box's clock back ten minutes: its next health (a node now dead)
    has an earlier ts than the last, but the same boot and a later seq. It is taken: by ts
    the dashboard would show the dead node ok, with no alert, for ten minutes. One of an
    earlier seq (a broker restarted from an old copy of the retained one) is not."""
    ok = bus_health(node(1), ts=NOW, boot="b1", seq=7).model_copy(
        update={"nodes": [NodeHealth(address=1, status="ok")]}
    )
    dead = bus_health(node(1), ts=NOW - 600, boot="b1", seq=8)
    send_health(gw, ok)
    before = dict(gw.rejections.counts)
    send_health(gw, dead)
    assert rejected_since(gw, before) == {}
    assert stored_health(gw, "serial-bus-g") == dead
    send_health(gw, ok)  # seq 7 again, after 8
    assert rejected_since(gw, before) == {"older_than_known": 1}
    assert stored_health(gw, "serial-bus-g") == dead
    send_health(gw, dead)  # the retained one again, at a reconnect
    assert rejected_since(gw, before) == {"older_than_known": 1}


def test_health_of_a_replaced_boot_is_refused_and_of_the_current_one_taken(gw, caplog):
    """Across boots the gateway knows from the agent's reports which boot is live: a late
    health of a replaced boot is refused, whatever its ts, saying how far behind it is; the
    live boot's is taken even stamped earlier than the last (its clock was behind)."""
    gw.gate.restore("serial-bus-g", "b2", 3, retired=["b1"])
    first = bus_health(ts=NOW, boot="b2", seq=1)
    send_health(gw, first)
    before = dict(gw.rejections.counts)
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        send_health(gw, bus_health(node(1), ts=NOW - 7200, boot="b1", seq=99))
    assert rejected_since(gw, before) == {"stale_boot": 1}
    assert "2.0 h behind the gateway's" in caplog.text
    assert stored_health(gw, "serial-bus-g") == first
    stored = gw._health["serial-bus-g"]
    gw._health["serial-bus-g"] = stored.model_copy(update={"boot": "b1"})  # of the old boot
    behind = bus_health(node(1), ts=NOW - 60, boot="b2", seq=2)
    send_health(gw, behind)
    assert rejected_since(gw, before) == {"stale_boot": 1}
    assert stored_health(gw, "serial-bus-g") == behind


def bus_g_states(gw: LiveGateway) -> set[str]:
    return {s.state for s in gw.spaces() if s.source == "bus-g"}


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"offline" + b" " * (300 * 1024), "oversized"),
        (b"offline" + b" " * (MAX_PAYLOAD_BYTES - 7), "invalid"),  # at the cap, padded
        (b" offline\n", "invalid"),
        (b"OFFLINE", "invalid"),
        (b'"offline"', "invalid"),
        (b"", "invalid"),
    ],
    ids=["over-the-cap", "padded-to-the-cap", "whitespace", "upper-case", "json-string", "empty"],
)
def test_availability_is_exactly_online_or_offline(gw, example_site, payload, reason):
    """Not the last will: refused, counted, and the agent's spaces stay as they are."""
    snapshot_all_free(gw, example_site, NOW)
    assert bus_g_states(gw) == {"free"}
    before = dict(gw.rejections.counts)
    gw.handle(topics.edge_availability(SITE, "serial-bus-g"), payload)
    assert rejected_since(gw, before) == {reason: 1}
    assert bus_g_states(gw) == {"free"}
    gw.handle(topics.edge_availability(SITE, "serial-bus-g"), topics.OFFLINE.encode())
    assert bus_g_states(gw) == {"unknown"}  # the real will still works


def delta(
    seq: int, boot: str = "b", space: str = "A-001", state: str = "occupied", ts: float = NOW
) -> bytes:
    body = {
        "agent": "serial-bus-g",
        "source": "bus-g",
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "kind": "delta",
        "spaces": [{"space": space, "state": state, "since": NOW}],
    }
    return json.dumps(body).encode()


def test_reports_that_never_arrived_are_counted_and_said_once_a_minute(
    gw, example_site, clocks, caplog
):
    snapshot_all_free(gw, example_site, NOW)  # seq 1 of boot "b" from every bus
    occupancy = topics.edge_occupancy(SITE, "serial-bus-g")
    assert gw.counters().reports_missed == {
        "camera-cam-c": 0,
        "serial-bus-b1": 0,
        "serial-bus-g": 0,
    }
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        gw.handle(occupancy, delta(5))  # 2, 3 and 4 never came
        gw.handle(occupancy, delta(6, state="free"))  # no gap
        gw.handle(occupancy, delta(9))  # 7 and 8: counted, not said again within the minute
    assert gw.counters().reports_missed["serial-bus-g"] == 5
    said = [r.getMessage() for r in caplog.records if "never arrived" in r.getMessage()]
    assert said == [
        "agent serial-bus-g boot b: 3 of reports 2..4 never arrived (the broker dropped them: a "
        "broker restart, or its queue limits max_queued_messages / max_queued_bytes, the "
        "gateway away or not keeping up); the next snapshot reconciles the state (3 missed "
        "from this agent so far)"
    ]
    caplog.clear()
    clocks.advance(GAP_LOG_INTERVAL_S + 1)
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        gw.handle(occupancy, delta(11, state="free"))
        gw.handle(occupancy, delta(0, boot="b2"))  # a new boot starts afresh: no gap
    said = [r.getMessage() for r in caplog.records if "never arrived" in r.getMessage()]
    assert len(said) == 1 and "reports 10..10" in said[0] and "(6 missed" in said[0]
    assert gw.counters().reports_missed == {
        "camera-cam-c": 0,
        "serial-bus-b1": 0,
        "serial-bus-g": 6,
    }
    assert gw.accepted == 2 + 5  # every one of them was taken (and the two buses' snapshots)


def test_a_seq_jump_too_wide_to_be_lost_reports_is_counted_apart(gw, example_site, clocks, caplog):
    """One report numbered 2**62 is not 2**62 reports the broker dropped (the counter
    would break every rate and alert on it): a jump of the agent's numbering, said and
    counted apart; an ordinary gap after it is still counted as missed."""
    snapshot_all_free(gw, example_site, NOW)  # seq 1 of boot "b" from every bus
    occupancy = topics.edge_occupancy(SITE, "serial-bus-g")
    clocks.advance(10.0)
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        gw.handle(occupancy, delta(2**62, ts=NOW + 10))
    assert gw.counters().reports_missed["serial-bus-g"] == 0
    assert gw.counters().seq_jumps == {"serial-bus-g": 1}
    said = [r.getMessage() for r in caplog.records if "jumped" in r.getMessage()]
    assert len(said) == 1 and f"from 1 to {2**62}" in said[0]
    clocks.advance(1.0)
    gw.handle(occupancy, delta(2**62 + 4, state="free", ts=NOW + 11))  # 3 never came
    assert gw.counters().reports_missed["serial-bus-g"] == 3
    assert gw.counters().seq_jumps == {"serial-bus-g": 1}
    # a wide gap after a long silence is plausible: counted as missed
    clocks.advance(3600.0)
    gw.handle(occupancy, delta(2**62 + 4 + 100_001, ts=NOW + 3611))
    assert gw.counters().reports_missed["serial-bus-g"] == 3 + 100_000
    assert gw.accepted == 2 + 3


def test_reports_missed_while_another_client_held_the_session_are_said_to_be_its(
    gw, example_site, clocks, caplog
):
    """A second gateway on the same client id takes the first one's queued reports: the
    first one's gap warning named the broker's queue limits. After the service saw its
    session taken over, the gap is said to be that client's; ten minutes on, the broker's."""
    from gateway.live import CONTESTED_GAP_S

    snapshot_all_free(gw, example_site, NOW)
    occupancy = topics.edge_occupancy(SITE, "serial-bus-g")
    gw.note_session_contested()
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        gw.handle(occupancy, delta(5))
    said = [r.getMessage() for r in caplog.records if "never arrived" in r.getMessage()]
    assert len(said) == 1 and "another client using this gateway's client id" in said[0]
    assert "broker dropped" not in said[0]
    caplog.clear()
    clocks.advance(CONTESTED_GAP_S + 1)
    with caplog.at_level(logging.WARNING, logger="gateway.live"):
        gw.handle(occupancy, delta(7, state="free"))
    said = [r.getMessage() for r in caplog.records if "never arrived" in r.getMessage()]
    assert len(said) == 1 and "broker dropped them" in said[0]
    assert gw.counters().reports_missed["serial-bus-g"] == 4


def test_reports_refused_whole_are_not_counted_as_never_arrived(gw, example_site, caplog):
    """A gateway whose clock is hours behind refuses reports as from the future; when one is
    taken again, the seqs it refused arrived: not the broker's loss, not counted as missed."""
    snapshot_all_free(gw, example_site, NOW)  # seq 1 of boot "b"
    occupancy = topics.edge_occupancy(SITE, "serial-bus-g")
    with caplog.at_level(logging.INFO, logger="gateway.live"):
        for seq in (2, 3, 4):
            gw.handle(occupancy, delta(seq, ts=NOW + 3 * 3600))
        gw.handle(occupancy, delta(6))  # 5 never came
    assert gw.rejections.counts == {"from_the_future": 3}
    assert gw.counters().reports_missed["serial-bus-g"] == 1
    said = [r.getMessage() for r in caplog.records if "reports 2..5" in r.getMessage()]
    assert len(said) == 2
    assert "3 of reports 2..5 arrived and were refused" in said[0]
    assert "1 of reports 2..5 never arrived" in said[1]
