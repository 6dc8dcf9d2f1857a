"""Decoding and checking edge reports (gateway.ingest, pure) and the rejection log."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from gateway.ingest import (
    FUTURE_TOLERANCE_S,
    AcceptedReport,
    Rejection,
    RejectionLog,
    ReportGate,
    decode,
    decode_report,
)
from parking.payloads import (
    MAX_PAYLOAD_BYTES,
    CameraSpaceHealth,
    DetectorHealth,
    HealthReport,
    NodeHealth,
)
from parking.states import SpaceState


def report(
    spaces: list[tuple[str, str]] | list[tuple[str, str, float]],
    *,
    agent: str = "serial-bus-g",
    source: str = "bus-g",
    boot: str = "b1",
    seq: int = 1,
    kind: str = "delta",
    ts: float = 1000.0,
) -> bytes:
    obs = []
    for item in spaces:
        since = item[2] if len(item) > 2 else ts
        obs.append({"space": item[0], "state": item[1], "since": since})
    body = {
        "agent": agent,
        "source": source,
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "spaces": obs,
    }
    return json.dumps(body).encode()


@pytest.fixture
def gate(example_site):
    return ReportGate(example_site)


@pytest.fixture
def since(example_site):
    return np.zeros(len(example_site.spaces))


def accept(gate: ReportGate, payload: bytes, since: np.ndarray, agent: str = "serial-bus-g"):
    decoded = decode_report(agent, payload)
    assert not isinstance(decoded, Rejection), decoded
    result = gate.check(decoded, since)
    if isinstance(result, AcceptedReport):
        gate.commit(result)
    return result


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"not json {", "bad_json"),
        (b"", "bad_json"),
        (b'{"agent": "serial-bus-g"}', "invalid"),
        (report([("A-001", "free")]).replace(b'"seq": 1', b'"seq": "one"'), "invalid"),
        (report([("A-001", "parked")]), "invalid"),
        (report([("A-001", "free")]).replace(b'"ts": 1000.0', b'"ts": -5'), "invalid"),
        (report([("A-001", "free")])[:-1] + b', "extra": 1}', "invalid"),
        (report([("A-001", "free")], agent="someone-else"), "agent_mismatch"),
        (b"[" + b" " * MAX_PAYLOAD_BYTES + b"]", "oversized"),
    ],
)
def test_bad_payloads_are_rejected_with_a_reason(payload, reason):
    result = decode_report("serial-bus-g", payload)
    assert isinstance(result, Rejection)
    assert result.reason == reason


def test_good_delta_is_accepted(gate, since, example_site):
    result = accept(gate, report([("A-001", "occupied"), ("B-010", "free")]), since)
    assert isinstance(result, AcceptedReport)
    idx = example_site.space_index
    assert sorted(result.spaces.tolist()) == sorted([idx["A-001"], idx["B-010"]])
    by_space = dict(zip(result.spaces.tolist(), result.states.tolist(), strict=True))
    assert by_space[idx["A-001"]] == SpaceState.OCCUPIED
    assert by_space[idx["B-010"]] == SpaceState.FREE
    assert not result.gap and not result.rejected


def test_unknown_source_rejects_the_report(gate, since):
    decoded = decode_report("serial-bus-g", report([("A-001", "free")], source="bus-x"))
    result = gate.check(decoded, since)
    assert isinstance(result, Rejection) and result.reason == "unknown_source"


def test_another_agent_may_not_report_for_a_source(gate, since):
    """Under the shipped ACL a camera's MQTT user can publish only under its own id, but
    its payload could still name bus-g as its source: refused, on both paths."""
    payload = report([("A-001", "occupied")], agent="camera-cam-c")
    result = gate.accept("camera-cam-c", payload, since, now=1000.0)
    assert isinstance(result, Rejection) and result.reason == "foreign_source"
    assert "its reports come from 'serial-bus-g'" in result.detail
    decoded = decode_report("camera-cam-c", payload)
    assert gate.check(decoded, since).reason == "foreign_source"
    # not even an empty delta (it would keep bus-g's spaces alive against their TTL)
    empty = report([], agent="camera-cam-c")
    assert gate.accept("camera-cam-c", empty, since, now=1000.0).reason == "foreign_source"


def test_unknown_and_foreign_spaces_are_dropped_and_named(gate, since, example_site):
    # C-001 is watched by cam-c, not bus-g; Z-999 does not exist
    result = accept(gate, report([("Z-999", "free"), ("C-001", "free"), ("A-002", "free")]), since)
    assert isinstance(result, AcceptedReport)
    assert result.spaces.tolist() == [example_site.space_index["A-002"]]
    assert sorted(r.reason for r in result.rejected) == ["foreign_space", "unknown_space"]


def test_replay_and_duplicate_are_rejected(gate, since):
    assert isinstance(accept(gate, report([("A-001", "free")], seq=5), since), AcceptedReport)
    for seq in (5, 4, 0):
        again = gate.check(
            decode_report("serial-bus-g", report([("A-001", "occupied")], seq=seq)), since
        )
        assert isinstance(again, Rejection) and again.reason == "duplicate"
    nxt = accept(gate, report([("A-001", "occupied")], seq=6), since)
    assert isinstance(nxt, AcceptedReport) and not nxt.gap


def test_gap_is_noticed(gate, since):
    accept(gate, report([("A-001", "free")], seq=1), since)
    later = accept(gate, report([("A-001", "occupied")], seq=3), since)
    assert isinstance(later, AcceptedReport) and later.gap


def test_new_boot_resets_the_sequence_and_old_boot_is_refused(gate, since):
    accept(gate, report([("A-001", "free")], boot="b1", seq=100), since)
    fresh = accept(gate, report([("A-001", "occupied")], boot="b2", seq=0), since)
    assert isinstance(fresh, AcceptedReport)
    late = gate.check(
        decode_report("serial-bus-g", report([("A-001", "free")], boot="b1", seq=101)), since
    )
    assert isinstance(late, Rejection) and late.reason == "stale_boot"


def test_a_replaced_boot_still_reporting_is_named_as_a_twin(gate, since):
    """A test run beside the service under the same id: with a broker password each has its
    own client id, so nothing else says two agents run. The older boot's reports are still
    refused, and a live one (stamped now) says why; a late one from a backlog does not."""
    accept(gate, report([("A-001", "free")], boot="b1", seq=100, ts=1000.0), since)
    accept(gate, report([("A-001", "occupied")], boot="b2", seq=0, ts=1001.0), since)
    live = gate.check(
        decode_report("serial-bus-g", report([("A-001", "free")], boot="b1", seq=101, ts=1010.0)),
        since,
        now=1012.0,
    )
    assert isinstance(live, Rejection) and live.reason == "stale_boot"
    assert "two agents with id serial-bus-g running" in live.detail and "b2" in live.detail
    late = gate.check(
        decode_report("serial-bus-g", report([("A-001", "free")], boot="b1", seq=102, ts=1010.0)),
        since,
        now=1010.0 + 3600,
    )
    assert isinstance(late, Rejection) and late.reason == "stale_boot"
    assert "two agents" not in late.detail


def test_a_stale_message_of_an_unknown_boot_does_not_shut_the_live_boot_out(
    gate, since, example_site
):
    """A report of a boot never seen, older than what the live boot observed (a replay, a
    copy of an old message), is refused: the live boot goes on. A new boot whose report is
    not older (the agent restarted) replaces it as before."""
    week = 7 * 86400.0
    accept(gate, report([("A-001", "free")], boot="b1", seq=1, ts=10 * week), since)
    since[example_site.space_index["A-001"]] = 10 * week  # what the live boot observed
    old = report([("A-002", "occupied")], boot="6f1c2a9e0b1c", seq=42, ts=9 * week)
    refused = gate.accept("serial-bus-g", old, since)
    assert isinstance(refused, Rejection) and refused.reason == "stale_boot"
    assert "older" in refused.detail
    goes_on = accept(gate, report([("A-001", "occupied")], boot="b1", seq=2, ts=10 * week), since)
    assert isinstance(goes_on, AcceptedReport) and not goes_on.gap
    restarted = report([("A-001", "free")], boot="b2", seq=0, ts=10 * week + 30)
    assert isinstance(accept(gate, restarted, since), AcceptedReport)


def test_a_new_boot_with_nothing_accepted_does_not_shut_the_live_boot_out(
    gate, since, example_site
):
    """A message of a boot never seen whose every observation is refused (a space that does
    not exist, one of another source), or that has none, is refused whole: it used to
    retire the live boot, and every later report of the running agent was refused as
    stale_boot until it restarted. A restart's report with a good observation still
    replaces the boot."""
    accept(gate, report([("A-001", "free")], boot="b1", seq=1), since)
    for spaces, reason in (
        ([("ZZ-1", "occupied")], "unknown_space"),
        ([("C-001", "occupied")], "foreign_space"),
        ([], "stale_boot"),
    ):
        stray = report(spaces, boot="aaaaaaaaaaab", seq=1)
        refused = gate.accept("serial-bus-g", stray, since)
        assert isinstance(refused, Rejection) and refused.reason == reason, refused
        assert "would replace boot b1" in refused.detail
        stray_snapshot = report(spaces, boot="aaaaaaaaaaac", seq=1, kind="snapshot")
        assert isinstance(gate.accept("serial-bus-g", stray_snapshot, since), Rejection)
    goes_on = accept(gate, report([("A-001", "occupied")], boot="b1", seq=2), since)
    assert isinstance(goes_on, AcceptedReport) and not goes_on.gap
    restarted = accept(gate, report([("ZZ-1", "free"), ("A-002", "free")], boot="b2"), since)
    assert isinstance(restarted, AcceptedReport)
    assert [r.reason for r in restarted.rejected] == ["unknown_space"]


def test_restored_sequence_refuses_replays_after_restart(example_site, since):
    gate = ReportGate(example_site)
    gate.restore("serial-bus-g", "b1", 7)
    again = gate.check(decode_report("serial-bus-g", report([("A-001", "free")], seq=7)), since)
    assert isinstance(again, Rejection) and again.reason == "duplicate"


def test_older_than_known_observation_is_dropped(gate, since, example_site):
    a1 = example_site.space_index["A-001"]
    since[a1] = 2000.0
    result = accept(gate, report([("A-001", "free", 1500.0), ("A-002", "free", 1500.0)]), since)
    assert isinstance(result, AcceptedReport)
    assert a1 not in result.spaces.tolist()
    assert [r.reason for r in result.rejected] == ["older_than_known"]


def test_snapshot_turns_the_spaces_it_leaves_out_unknown(gate, since, example_site):
    bus_spaces = example_site.spaces_of_source("bus-g")
    listed = bus_spaces[:-3]
    result = accept(gate, report([(s, "free") for s in listed], kind="snapshot"), since)
    assert isinstance(result, AcceptedReport)
    states = dict(zip(result.spaces.tolist(), result.states.tolist(), strict=True))
    assert len(states) == len(bus_spaces)
    idx = example_site.space_index
    assert all(states[idx[s]] == SpaceState.UNKNOWN for s in bus_spaces[-3:])
    assert all(states[idx[s]] == SpaceState.FREE for s in listed)


def test_a_snapshot_listing_a_space_older_than_known_leaves_it_as_it_is(gate, since, example_site):
    """The stale observation is refused, and the space is not "left out" of the snapshot
    either: it keeps what the newer observation said."""
    bus_spaces = example_site.spaces_of_source("bus-g")
    a1 = example_site.space_index[bus_spaces[0]]
    since[a1] = 2000.0
    result = accept(gate, report([(s, "free", 1500.0) for s in bus_spaces], kind="snapshot"), since)
    assert isinstance(result, AcceptedReport)
    assert [r.reason for r in result.rejected] == ["older_than_known"]
    assert a1 not in result.spaces.tolist()  # neither free nor unknown: unchanged
    assert len(result.spaces) == len(bus_spaces) - 1
    assert SpaceState.UNKNOWN not in result.states.tolist()


def test_restored_retired_boots_refuse_a_late_replay(example_site, since):
    gate = ReportGate(example_site)
    gate.restore("serial-bus-g", "b3", 4, retired=["b1", "b2", "b3"])  # its own boot is not retired
    old = gate.check(
        decode_report("serial-bus-g", report([("A-001", "free")], boot="b2", seq=9)), since
    )
    assert isinstance(old, Rejection) and old.reason == "stale_boot"
    now = gate.check(
        decode_report("serial-bus-g", report([("A-001", "free")], boot="b3", seq=5)), since
    )
    assert isinstance(now, AcceptedReport)


def test_times_from_the_future_are_refused(gate, example_site):
    """An edge whose clock runs ahead would lock its spaces (every true observation after
    it would look older): a report or observation later than the gateway's clock plus
    FUTURE_TOLERANCE_S is refused; without a clock nothing is checked."""
    now = 1000.0
    since = np.zeros(len(example_site.spaces))
    ahead = now + FUTURE_TOLERANCE_S + 1
    whole = gate.accept("serial-bus-g", report([("A-001", "free")], ts=ahead), since, now=now)
    assert isinstance(whole, Rejection) and whole.reason == "from_the_future"
    bus_spaces = example_site.spaces_of_source("bus-g")
    body = report(
        [(bus_spaces[0], "occupied", ahead)] + [(s, "free", now) for s in bus_spaces[1:]],
        kind="snapshot",
        ts=now,
    )
    part = gate.accept("serial-bus-g", body, since, now=now)
    assert isinstance(part, AcceptedReport)
    assert [r.reason for r in part.rejected] == ["from_the_future"]
    first = example_site.space_index[bus_spaces[0]]
    assert first not in part.spaces.tolist()  # listed, refused, left as it is: not unknown
    assert len(part.spaces) == len(bus_spaces) - 1
    near = gate.accept("serial-bus-g", report([("A-001", "free")], ts=now + 60), since, now=now)
    assert isinstance(near, AcceptedReport)  # a clock a minute ahead is within tolerance
    fresh = ReportGate(example_site)
    assert isinstance(
        fresh.accept("serial-bus-g", report([("A-001", "free")], ts=ahead), since), AcceptedReport
    )


def test_rejection_log_counts_every_one_and_logs_once_per_reason_per_interval(caplog):
    now = [0.0]
    rlog = RejectionLog(clock=lambda: now[0], interval_s=60, max_payload=20)
    big = b"x" * 500
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        for _ in range(5):
            rlog.reject(Rejection("bad_json", "no"), "t", big)
        rlog.reject(Rejection("duplicate", "seq"), "t", b"{}")
        now[0] = 61.0
        rlog.reject(Rejection("bad_json", "no"), "t", big)
    assert rlog.counts == {"bad_json": 6, "duplicate": 1}
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert all("x" * 21 not in line for line in lines)  # payload cut short
    assert "x" * 20 + "..." in lines[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="gateway.ingest"):
        rlog.reject(Rejection("bad_topic", "no"), "edge/" + "a" * 5000 + "/occupancy", b"{}")
    (line,) = [r.getMessage() for r in caplog.records]
    assert "a" * 21 not in line and len(line) < 400  # a long topic is cut short too


def test_same_since_rounded_differently_is_not_older(gate, since, example_site):
    a1 = example_site.space_index["A-001"]
    since[a1] = 1795777727.013279  # seen as 6 decimals in one message ...
    result = accept(
        gate, report([("A-001", "occupied", 1795777727.0132787)]), since
    )  # ... full here
    assert isinstance(result, AcceptedReport)
    assert result.spaces.tolist() == [a1] and not result.rejected


def test_a_space_listed_twice_takes_its_later_entry(gate, since, example_site):
    result = accept(
        gate, report([("A-001", "occupied"), ("A-002", "free"), ("A-001", "free")]), since
    )
    assert isinstance(result, AcceptedReport)
    got = dict(zip(result.spaces.tolist(), result.states.tolist(), strict=True))
    idx = example_site.space_index
    assert got == {idx["A-001"]: SpaceState.FREE, idx["A-002"]: SpaceState.FREE}


@pytest.mark.parametrize("version", [b"true", b"1.0", b'"1"', b"2"])
def test_a_version_that_is_not_the_integer_1_is_invalid(gate, since, version):
    """Types are strict (docs/wire-contracts.md): "v": true or 1.0 is not version 1, on
    the column-wise path, the pydantic one, and in a health report."""
    body = report([("A-001", "occupied")])[:-1] + b', "v": ' + version + b"}"
    result = gate.accept("serial-bus-g", body, since, now=1000.0)
    assert isinstance(result, Rejection) and result.reason == "invalid", result
    slow = decode_report("serial-bus-g", body)
    assert isinstance(slow, Rejection) and slow.reason == "invalid"
    assert "v" in slow.detail
    health = b'{"v": ' + version + b', "agent": "serial-bus-g", "source": "bus-g", "ts": 1000.0}'
    refused = decode(HealthReport, health)
    assert isinstance(refused, Rejection) and refused.reason == "invalid"
    assert isinstance(
        gate.accept("serial-bus-g", body.replace(version, b"1"), since), AcceptedReport
    )
    assert isinstance(decode(HealthReport, health.replace(version, b"1")), HealthReport)


def test_closed_is_the_managers_state_not_an_edges_observation(gate, since):
    """An edge saying "closed" would close a space that the manager's "open" could not
    open again: the report is invalid, on both paths; the other states are taken."""
    body = report([("A-001", "closed"), ("A-002", "free")])
    result = gate.accept("serial-bus-g", body, since, now=1000.0)
    assert isinstance(result, Rejection) and result.reason == "invalid", result
    slow = decode_report("serial-bus-g", body)
    assert isinstance(slow, Rejection) and slow.reason == "invalid"
    assert "spaces.0.state" in slow.detail
    fine = report([("A-001", "free"), ("A-002", "occupied"), ("A-003", "unknown")])
    assert isinstance(gate.accept("serial-bus-g", fine, since, now=1000.0), AcceptedReport)


def test_a_health_naming_only_its_own_nodes_detectors_and_spaces_passes(gate, example_site):
    """What the agents send (every node and detector of the bus, as the site gives them;
    every space of the camera) is their own: nothing of it is refused."""
    for bus in example_site.buses:
        nodes = [
            NodeHealth(
                address=n.address,
                status="ok",
                detectors=[
                    DetectorHealth(index=i, space=s, status="ok") for i, s in enumerate(n.spaces)
                ],
            )
            for n in bus.nodes
        ]
        health = HealthReport(agent=bus.agent, source=bus.id, ts=1000.0, nodes=nodes)
        assert gate.own_health(health) == (health, [])
    for cam in example_site.cameras:
        spaces = [CameraSpaceHealth(space=s, confidence=1.0) for s in cam.polygons]
        health = HealthReport(agent=cam.agent, source=cam.id, ts=1000.0, fps=5.0, spaces=spaces)
        assert gate.own_health(health) == (health, [])


def test_a_report_far_ahead_says_by_how_much_and_that_the_gateways_clock_may_be_wrong(
    gate, example_site
):
    """A gateway booted with its clock three hours behind refuses every report: its log
    says how far ahead they are, and that its own clock may be the one that is wrong."""
    now = 1_800_000_000.0
    since = np.zeros(len(example_site.spaces))
    ahead = now + 3 * 3600
    whole = gate.accept("serial-bus-g", report([("A-001", "free")], ts=ahead), since, now=now)
    assert isinstance(whole, Rejection) and whole.reason == "from_the_future"
    assert "3.0 h ahead of the gateway's clock" in whole.detail
    assert "the gateway's own clock is behind" in whole.detail
    part = gate.accept("serial-bus-g", report([("A-001", "free", ahead)], ts=now), since, now=now)
    assert isinstance(part, AcceptedReport) and "3.0 h ahead" in part.rejected[0].detail


def test_a_refusal_for_an_old_time_says_how_far_behind_the_gateways_clock_it_is(
    gate, since, example_site
):
    """An agent whose clock reads 1970 (no RTC, no NTP) is refused as a stale boot or its
    observations as older than known: the log says its clock is 56 years behind."""
    now = 1_800_000_000.0
    accept(gate, report([("A-001", "free")], boot="b1", seq=1, ts=now - 10), since)
    since[example_site.space_index["A-001"]] = now - 10
    stale = gate.accept(
        "serial-bus-g", report([("A-001", "free")], boot="b0", ts=1e6), since, now=now
    )
    assert isinstance(stale, Rejection) and stale.reason == "stale_boot"
    assert (
        "serial-bus-g's clock is 57 years behind the gateway's: not synchronised?" in stale.detail
    )
    older = gate.accept(
        "serial-bus-g", report([("A-001", "occupied", 1e6)], seq=2, ts=now - 7200), since, now=now
    )
    assert isinstance(older, AcceptedReport)
    (why,) = older.rejected
    assert why.reason == "older_than_known" and "2.0 h behind the gateway's" in why.detail
    fresh = gate.accept(
        "serial-bus-g", report([("A-001", "occupied", 1e6)], seq=3, ts=now), since, now=now
    )
    assert isinstance(fresh, AcceptedReport)
    assert "behind" not in fresh.rejected[0].detail  # its clock is right: the since is old
