"""A held space read occupied for a moment keeps its hold: the car is seen in it only once
the space stays occupied for the confirmation time (the core's ``hold_seen_s``). On a real
mosquitto with the real gateway: the next car is never sent to the first car's space while
another car manoeuvres over its detector."""

from __future__ import annotations

import time

import pytest
from conftest import eventually
from test_arrival_cancel import _counts, gate_scene

from parking.states import SpaceState

pytestmark = pytest.mark.timeout(120)
SEEN_S = 4.0  # the confirmation time for this test (the gateway's is HOLD_SEEN_S)


def test_a_space_occupied_for_a_moment_stays_held_until_its_car_is_seen(mosquitto, tmp_path):
    with gate_scene(
        mosquitto, tmp_path, core_options={"congestion_m": 0.0, "hold_seen_s": SEEN_S}
    ) as scene:
        site, service, edges, gate, watch = scene
        gw = service.gateway

        def reads(space: str, state: str) -> None:
            """Its bus reports ``state``; returns once the gateway took it."""
            (bus,) = [b for b in edges if space in site.spaces_of_source(b.source)]
            bus.send({space: state})
            code = SpaceState[state.upper()]
            assert eventually(lambda: gw.state.state[site.space_index[space]] == code, timeout=5)

        time.sleep(0.5)  # the signs settle on the snapshots
        before = _counts(watch, site)
        first = gate.arrive("g1-0001")
        space = first["space"]
        s = site.space_index[space]
        assert space is not None and s in gw.core.holds
        assert eventually(lambda: _counts(watch, site) != before)  # off the signs
        time.sleep(0.5)  # every sign counting it, not only the first one published
        held_counts = _counts(watch, site)

        # another car manoeuvres over its detector: occupied 2 s, then free again
        reads(space, "occupied")
        time.sleep(2.0)
        reads(space, "free")
        time.sleep(SEEN_S)  # past the confirmation time since it first read occupied
        assert s in gw.core.holds
        assert gw.journal.given("north", "g1-0001").released is None
        assert _counts(watch, site) == held_counts  # the signs never offered it
        second = gate.arrive("g1-0002")
        assert second["space"] not in (None, space)  # not two drivers to one bay

        # the second car's space reads occupied for a moment, and its gate cancels: the
        # car turned back at the barrier, so the hold ends although the space is occupied
        other = second["space"]
        reads(other, "occupied")
        kind, answer = gate.cancel("g1-0002")
        assert (kind, answer["cancelled"]) == ("assignment", True)
        assert site.space_index[other] not in gw.core.holds
        reads(other, "free")

        # the first car parks: occupied for the confirmation time, the car is seen
        reads(space, "occupied")
        time.sleep(SEEN_S / 2)
        assert s in gw.core.holds  # not yet
        assert eventually(lambda: s not in gw.core.holds, timeout=SEEN_S + 3)
        given = gw.journal.given("north", "g1-0001")
        assert given.released is not None  # journaled when it ended, for a restart
        assert gw.journal.open_holds(time.time()) == []
        assert gate.cancel("g1-0001")[1]["reason"] == "car_seen"

        # it leaves again: the space may be given to the next car
        reads(space, "free")
        assert gate.arrive("g1-0003")["space"] == space
