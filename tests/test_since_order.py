"""An agent's clock stepped back keeps its spaces known at a gateway that refuses an
observation older than what it knows (issue 3, "Bad input"): the agents never stamp a
change before its space's previous state, and bring back only a ``since`` the gateway
could not have taken (``edge.clocks``).

An agent's clock ran ahead, by less than the gateway's five minutes, and NTP stepped it
back: a car that parked after the step got a ``since`` earlier than the one the gateway
had stored from the fast clock. The gateway refused it as older than known, the space
went ``unknown`` at its TTL and stayed so, every snapshot repeating the refused time,
until the space changed again (hours, for a car parked overnight). And a clock two hours
ahead for ten seconds: the agents moved every ``since`` forward with the step and kept
them there on the step back, so the gateway refused the whole bus as ``from_the_future``
for two hours.

The real ``ReportGate`` and the real agents' time-keeping with injected clocks (the serial
agent's loop, the camera agent's frame logic, as ``tests/test_edge_clock_step.py`` drives
them).
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import pytest
from gateway_support import Clocks
from test_edge_clock_step import (
    BUS,
    CAMERA,
    SaysWhatItIsTold,
    bus_bits,
    camera_agent,
    frames,
    offline_publisher,
    serial_agent,
)

from gateway.ingest import AcceptedReport, Rejection, ReportGate, decode_report
from parking.payloads import OccupancyReport
from parking.site import EXAMPLE_SITE, load_site
from parking.states import SpaceState

SITE = load_site(EXAMPLE_SITE)
AGENT, SOURCE = "serial-bus-g", "bus-g"
OWN = SITE.spaces_of_source(SOURCE)
T = 1_800_000_000.0
FAST = 90.0
"""how far ahead the agent's clock ran"""
FREE, OCCUPIED, UNKNOWN = int(SpaceState.FREE), int(SpaceState.OCCUPIED), int(SpaceState.UNKNOWN)


def payload(
    spaces: dict[str, tuple[str, float]],
    *,
    boot: str = "b1",
    seq: int,
    ts: float,
    kind: str = "delta",
) -> bytes:
    body: dict[str, Any] = {
        "agent": AGENT,
        "source": SOURCE,
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "kind": kind,
        "spaces": [{"space": s, "state": st, "since": t} for s, (st, t) in spaces.items()],
    }
    return json.dumps(body).encode()


def verdict(gate: ReportGate, body: bytes, known: np.ndarray, now: float | None = T):
    """The gate's verdict, which the long way (pydantic, then ``check``) gives too."""
    got = gate.accept(AGENT, body, known, now=now)
    report = decode_report(AGENT, body)
    assert not isinstance(report, Rejection)
    long = gate.check(report, known, now)
    assert type(got) is type(long)
    if isinstance(got, AcceptedReport):
        assert isinstance(long, AcceptedReport)
        assert (got.seq, got.gap, got.rejected) == (long.seq, long.gap, long.rejected)
        for name in ("spaces", "states", "since", "stale"):
            np.testing.assert_array_equal(getattr(got, name), getattr(long, name), name)
    else:
        assert got == long
    return got


def following(boot: str = "b1", seq: int = 5) -> tuple[ReportGate, np.ndarray]:
    """A gate following ``AGENT``'s ``boot`` at ``seq`` (b0 replaced), whose spaces were
    last observed by the fast clock, at T + FAST."""
    gate = ReportGate(SITE)
    gate.restore(AGENT, boot, seq, retired=["b0"])
    known = np.zeros(len(SITE.spaces))
    known[gate.source_spaces(SOURCE)] = T + FAST
    return gate, known


# -- the gate: its rule stands ---------------------------------------------------------


@pytest.mark.parametrize("boot", ["b1", "b2"])  # the boot it follows, or a new one
def test_an_observation_older_than_known_is_still_refused(boot) -> None:
    """The agents adapt to the gateway's rule, not the other way round."""
    gate, known = following()
    a = OWN[0]
    body = payload({a: ("occupied", T + FAST - 30)}, boot=boot, seq=6, ts=T)
    acc = verdict(gate, body, known)
    if isinstance(acc, AcceptedReport):  # the boot it follows: the observation refused
        assert [r.reason for r in acc.rejected] == ["older_than_known"]
    else:  # a new boot whose report is older than what its source observed: whole
        assert acc.reason == "stale_boot"


# -- the agents' time-keeping, with the real gate ----------------------------------------


class Gate:
    """The real ReportGate taking every report an agent made, in order, on the gateway's
    (true) clock; the since of each space kept as ``LiveState.observe`` keeps it."""

    def __init__(self):
        self.gate = ReportGate(SITE)
        self.obs_since = np.zeros(len(SITE.spaces), dtype=np.float64)
        self.state = np.zeros(len(SITE.spaces), dtype=np.int8)
        self.refused: list[str] = []  # reasons, whole reports and observations alike

    def take(self, reports: list[OccupancyReport], now: float) -> list[AcceptedReport]:
        taken = []
        for report in reports:
            body = report.model_dump_json().encode()
            acc = self.gate.accept(report.agent, body, self.obs_since, now=now)
            if isinstance(acc, Rejection):
                self.refused.append(acc.reason)
                continue
            self.refused += [r.reason for r in acc.rejected]
            self.obs_since[acc.spaces] = np.minimum(acc.since, now)
            self.state[acc.spaces] = acc.states
            self.gate.commit(acc)
            taken.append(acc)
        return taken


def test_serial_agent_ninety_seconds_ahead_stepped_back_a_car_parks_and_stays_known(
    tmp_path,
) -> None:
    """The reviewer's first case (``repro_agent_step_back.sh``), with the real agent loop."""
    clocks = Clocks(T + FAST)  # the monotonic clock reads 0 at T
    gate = Gate()
    bits = bus_bits(7)
    bits[1][0] = False  # the bay of node 1, detector 0 is free
    bay = SITE.space_index[BUS.node(1).spaces[0]]
    with offline_publisher(tmp_path, BUS.agent, BUS.id, lambda: clocks.wall) as (pub, made):
        agent, line = serial_agent(clocks, pub, bits)

        def snapshot() -> list[AcceptedReport]:
            pub.report("snapshot", agent.observations(agent.tracker.snapshot()))
            taken = gate.take(made, now=T + clocks.mono)
            made.clear()
            return taken

        line.run_for(agent, 3.0)
        stamped = [acc.since[acc.spaces == bay] for acc in snapshot()]
        assert gate.refused == [] and gate.state[bay] == FREE
        fast_since = float(np.concatenate(stamped).max())  # the agent's own stamp
        assert fast_since > T + FAST  # by the fast clock
        assert gate.obs_since[bay] <= T + clocks.mono  # kept no later than it was taken
        line.run_for(agent, 30.0)
        clocks.step(-FAST)  # NTP
        line.run_for(agent, 1.0)
        gate.take(made, now=T + clocks.mono)  # the snapshot the step asked for
        made.clear()
        bits[1][0] = True  # a car parks
        parked = clocks.wall
        line.run_for(agent, 2.0)
        (delta,) = made
        (taken,) = gate.take(made, now=T + clocks.mono)
        made.clear()
        assert [(o.state, o.since >= parked) for o in delta.spaces] == [("occupied", True)]
        # by the corrected clock it would be earlier than the free state's (fast) since:
        # stamped as that instead, within the gateway's tolerance of the true time
        assert fast_since <= delta.spaces[0].since < parked + 300
        assert gate.refused == []  # it used to be refused: older than known
        assert gate.state[bay] == OCCUPIED and len(taken.stale) == 0
        assert gate.obs_since[bay] == min(delta.spaces[0].since, T + clocks.mono)
        for _ in range(6):  # a snapshot every 5 s (a third of the TTL), for two TTLs
            line.run_for(agent, 5.0)
            (snap,) = snapshot()
            i = snap.spaces.tolist().index(bay)
            assert snap.states[i] == OCCUPIED and bay not in snap.stale.tolist()
        assert gate.refused == []
        # what the agent says: the car's since by the corrected clock
        (told,) = [
            o.since
            for o in agent.observations(agent.tracker.snapshot())
            if o.space == BUS.node(1).spaces[0]
        ]
        assert told == delta.spaces[0].since


@pytest.mark.parametrize("kind", ["serial", "camera"])
def test_two_hours_ahead_for_ten_seconds_then_back_the_next_snapshot_is_taken(
    tmp_path, kind
) -> None:
    """The reviewer's second case (``repro_agent_transient_forward.sh``): the times moved
    forward with the step stayed there after the step back, two hours ahead of the
    gateway, which refused every space as from the future for two hours."""
    clocks = Clocks(T)
    gate = Gate()
    ahead = 7200.0
    agent_id, source = (BUS.agent, BUS.id) if kind == "serial" else (CAMERA.agent, CAMERA.id)
    with offline_publisher(tmp_path, agent_id, source, lambda: clocks.wall) as (pub, made):
        if kind == "serial":
            agent, line = serial_agent(clocks, pub, bus_bits(8))

            def run(seconds: float) -> None:
                line.run_for(agent, seconds)

            def every_space() -> list:
                return agent.observations(agent.tracker.snapshot())
        else:
            truth = np.random.default_rng(8).random(len(CAMERA.polygons)) < 0.5
            cam = camera_agent(clocks, pub, SaysWhatItIsTold(truth))

            def run(seconds: float) -> None:
                frames(cam, clocks, seconds)

            def every_space() -> list:
                return cam.observations(range(len(CAMERA.polygons)))

        run(3.0)
        pub.report("snapshot", every_space())
        gate.take(made, now=T + clocks.mono)
        made.clear()
        assert gate.refused == []
        spaces = gate.gate.source_spaces(source)
        assert UNKNOWN not in gate.state[spaces].tolist()
        clocks.step(ahead)
        run(10.0)
        gate.take(made, now=T + clocks.mono)  # all refused: two hours ahead
        made.clear()
        assert gate.refused and set(gate.refused) == {"from_the_future"}
        gate.refused.clear()
        clocks.step(-ahead)
        run(0.5)
        at_once = [r.kind for r in made]
        pub.report("snapshot", every_space())  # the next snapshot, whenever it comes
        reports = list(made)
    taken = gate.take(reports, now=T + clocks.mono)
    assert gate.refused == []  # it used to be from_the_future, for two hours
    assert len(taken) == len(reports)
    assert UNKNOWN not in gate.state[spaces].tolist()
    assert all(o.since <= r.ts for r in reports for o in r.spaces)
    assert "snapshot" in at_once  # at once: asked for by the step back


# -- between two runs: the clock corrected while the agent was stopped -----------------------


def test_a_run_after_a_fast_clock_was_corrected_is_taken_at_once() -> None:
    """The agent's box ran 250 s ahead (within the gateway's five minutes), then NTP put it
    right at a reboot. The new run's reports were refused whole as a stale boot for about
    three minutes (older than what the old run observed), then space by space as older
    than known until each space changed again: a bus blind for minutes, some spaces for
    hours, with no alert. The gateway keeps no ``since`` later than when it took it."""
    from gateway.state import LiveState

    fast = 250.0
    gate, state = ReportGate(SITE), LiveState(SITE)

    def take(body: bytes, now: float) -> AcceptedReport:
        acc = gate.accept(AGENT, body, state.obs_since, now=now)
        assert isinstance(acc, AcceptedReport), acc
        assert not acc.rejected, acc.rejected
        state.observe(acc.spaces, acc.states, acc.since, AGENT, now, now)
        gate.commit(acc)
        return acc

    # the first run, on the fast clock: every space observed "at" T + 250
    first = {s: ("occupied" if i % 2 else "free", T + fast) for i, s in enumerate(OWN)}
    take(payload(first, boot="b1", seq=0, ts=T + fast, kind="snapshot"), T)
    assert state.obs_since[gate.source_spaces(SOURCE)].max() <= T  # never beyond the take
    # stopped, the clock corrected, started again 30 s later: the same cars, its own start
    again = {s: (st, T + 30) for s, (st, _) in first.items()}
    acc = take(payload(again, boot="b2", seq=0, ts=T + 30, kind="snapshot"), T + 30)
    assert len(acc.spaces) == len(OWN)
    known = state.sensed[gate.source_spaces(SOURCE)]
    assert UNKNOWN not in known.tolist()
    # a car parks a minute later: taken too, not older than known
    parked = OWN[0]
    change = {parked: ("occupied" if first[parked][0] == "free" else "free", T + 90)}
    take(payload(change, boot="b2", seq=1, ts=T + 90), T + 90)
