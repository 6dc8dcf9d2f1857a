"""Debouncing and per-space state on a bus: pure logic, no I/O."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge.debounce import BusTracker, Debouncer, DebounceSettings
from parking.registers import DetectorStatus
from parking.site import Bus, NodeController
from parking.states import SpaceState

HOLD = 0.5

# a poll stream: (seconds since the previous poll, reading)
polls = st.lists(
    st.tuples(st.floats(min_value=0.001, max_value=0.4), st.booleans()), min_size=1, max_size=200
)


def small_bus() -> Bus:
    return Bus(
        "bus-t",
        115200,
        "E",
        15.0,
        (
            NodeController(1, 4, ("S-1", "S-2", None, "S-4")),
            NodeController(2, 2, ("S-5", "S-6")),
        ),
    )


@given(polls)
def test_debounced_value_only_takes_readings_that_held(stream: list[tuple[float, bool]]) -> None:
    d = Debouncer(HOLD)
    now, history = 0.0, []
    for dt, reading in stream:
        now += dt
        history.append((now, reading))
        before = d.value
        changed = d.feed(reading, now)
        assert changed == (d.value != before)
        if changed:
            # every poll from when the new value was first seen until now read that value,
            # the poll just before it read something else, and it lasted at least the hold time
            run = [r for t, r in history if t >= d.since]
            assert all(r == d.value for r in run)
            assert now - d.since >= HOLD - 1e-9
            earlier = [r for t, r in history if t < d.since]
            assert not earlier or earlier[-1] != d.value


@given(
    st.booleans(),
    st.lists(st.integers(min_value=1, max_value=4), min_size=1, max_size=30),
)
def test_glitches_shorter_than_the_hold_never_count(steady: bool, glitches: list[int]) -> None:
    """A steady detector with short flips (fewer polls than the hold time) never changes."""
    d = Debouncer(HOLD)
    now, dt = 0.0, 0.1  # 4 polls of a glitch span 0.3 s < HOLD
    for _ in range(10):
        now += dt
        d.feed(steady, now)
    assert d.value is steady
    for n in glitches:
        for _ in range(n):
            now += dt
            assert not d.feed(not steady, now)
        now += dt
        assert not d.feed(steady, now)
        assert d.value is steady


@given(st.just(0.0) | st.floats(min_value=0.001, max_value=2.0), st.booleans())
def test_a_reading_that_holds_is_taken(hold: float, reading: bool) -> None:
    d = Debouncer(hold)
    assert d.feed(reading, 10.0) == (hold == 0.0)
    d.feed(reading, 10.0 + hold)
    assert d.value is reading and d.since == 10.0


def settle(tracker: BusTracker, address: int, bits: list[bool], now: float) -> float:
    tracker.poll_ok(address, bits, now)
    tracker.poll_ok(address, bits, now + HOLD)
    return now + HOLD


def test_spaces_start_unknown_and_take_held_readings() -> None:
    t = BusTracker(small_bus(), DebounceSettings(hold_s=HOLD), start=0.0)
    assert {c.space: c.state for c in t.snapshot()} == dict.fromkeys(
        ["S-1", "S-2", "S-4", "S-5", "S-6"], SpaceState.UNKNOWN
    )
    assert t.poll_ok(1, [True, False, True, False], 0.1) == []
    changes = t.poll_ok(1, [True, False, True, False], 0.6)
    assert [(c.space, c.state, c.since) for c in changes] == [
        ("S-1", SpaceState.OCCUPIED, 0.1),
        ("S-2", SpaceState.FREE, 0.1),
        ("S-4", SpaceState.FREE, 0.1),
    ]
    assert t.state("S-5")[0] == SpaceState.UNKNOWN


def test_readings_older_than_the_ttl_are_forgotten_not_told_as_fresh() -> None:
    """The agent stopped (SIGSTOP, a paused VM) longer than the bus's ttl_s: what its
    nodes said before proves nothing; their spaces are unknown until a new reading holds."""
    t = BusTracker(small_bus(), DebounceSettings(hold_s=HOLD), start=0.0)
    settle(t, 1, [True, False, True, False], 0.0)
    settle(t, 2, [True, True], 0.0)
    assert t.expire(15.0) == []  # within the TTL (15 s): kept
    changes = t.expire(20.0, only=2)
    assert {(c.space, c.state) for c in changes} == {
        ("S-5", SpaceState.UNKNOWN),
        ("S-6", SpaceState.UNKNOWN),
    }
    assert t.state("S-1")[0] == SpaceState.OCCUPIED  # node 1 not asked about
    # node 1 answers after the gap: the new bits must hold again, the old ones are gone
    changes = t.poll_ok(1, [False, False, True, False], 20.0)
    assert {c.space: c.state for c in changes} == {
        "S-1": SpaceState.UNKNOWN,
        "S-2": SpaceState.UNKNOWN,
        "S-4": SpaceState.UNKNOWN,
    }
    changes = t.poll_ok(1, [False, False, True, False], 20.0 + HOLD)
    assert {c.space: c.state for c in changes} == {
        "S-1": SpaceState.FREE,
        "S-2": SpaceState.FREE,
        "S-4": SpaceState.FREE,
    }
    assert t.expire(21.0) == []  # node 2 already forgotten: nothing more to say


def test_node_down_needs_failures_and_time_then_recovers_through_debounce() -> None:
    s = DebounceSettings(hold_s=HOLD, node_timeout_s=1.5, node_max_failures=3)
    t = BusTracker(small_bus(), s, start=0.0)
    now = settle(t, 2, [True, False], 0.0)
    # many failures in quick succession: not yet down (a short burst of noise)
    for i in range(10):
        assert t.poll_failed(2, now + 0.01 * (i + 1)) == []
    # three failures but less than the timeout after the last answer: still not down
    assert not t.node_down(2)
    changes = t.poll_failed(2, now + 1.6)
    assert {(c.space, c.state) for c in changes} == {
        ("S-5", SpaceState.UNKNOWN),
        ("S-6", SpaceState.UNKNOWN),
    }
    assert t.node_down(2)
    # the other node is untouched
    assert t.state("S-1")[0] == SpaceState.UNKNOWN and not t.node_down(1)
    # back: the reading must hold again before it counts
    assert t.poll_ok(2, [True, False], now + 2.0) == []
    assert not t.node_down(2)
    changes = t.poll_ok(2, [True, False], now + 2.0 + HOLD)
    assert {(c.space, c.state) for c in changes} == {
        ("S-5", SpaceState.OCCUPIED),
        ("S-6", SpaceState.FREE),
    }


def test_a_node_answering_an_exception_is_unknown_but_never_down() -> None:
    """A node that answers its poll with a Modbus exception (the site file gives it more
    detectors than it has) is on the bus: its spaces are unknown, the node is not down."""
    s = DebounceSettings(hold_s=HOLD, node_timeout_s=0.0, node_max_failures=1)
    t = BusTracker(small_bus(), s, start=0.0)
    now = settle(t, 2, [True, False], 0.0)
    changes = t.poll_refused(2, 2, now + 0.1)
    assert {(c.space, c.state) for c in changes} == {
        ("S-5", SpaceState.UNKNOWN),
        ("S-6", SpaceState.UNKNOWN),
    }
    for i in range(10):
        assert t.poll_refused(2, 2, now + 1.0 + i) == []
    assert not t.node_down(2) and t.node_exception(2) == 2
    # answered with bits again: the reading must hold again before it counts
    assert t.poll_ok(2, [True, False], now + 20.0) == []
    assert t.node_exception(2) is None
    changes = t.poll_ok(2, [True, False], now + 20.0 + HOLD)
    assert {(c.space, c.state) for c in changes} == {
        ("S-5", SpaceState.OCCUPIED),
        ("S-6", SpaceState.FREE),
    }


@pytest.mark.parametrize(
    "status",
    [
        DetectorStatus.STUCK,
        DetectorStatus.FLAPPING,
        DetectorStatus.DEAD,
        DetectorStatus.FAULT,
        99,
    ],
)
def test_faulted_detector_is_unknown_at_once_and_recovers(status: int) -> None:
    t = BusTracker(small_bus(), DebounceSettings(hold_s=HOLD), start=0.0)
    now = settle(t, 1, [True, True, False, False], 0.0)
    changes = t.detector_status(1, [0, int(status), 0, 0], now + 0.01)
    assert [(c.space, c.state) for c in changes] == [("S-2", SpaceState.UNKNOWN)]
    # readings keep being debounced while it is faulted
    now = settle(t, 1, [True, False, False, False], now + 0.1)
    assert t.state("S-2")[0] == SpaceState.UNKNOWN
    changes = t.detector_status(1, [0, 0, 0, 0], now + 0.1)
    assert [(c.space, c.state) for c in changes] == [("S-2", SpaceState.FREE)]


def test_after_a_fault_the_space_comes_back_with_a_reading_taken_after_it() -> None:
    """Once cleared, the space's `since` is newer than the `unknown` the fault published
    (the gateway refused the old one as older than known: the space stayed unknown)."""
    t = BusTracker(small_bus(), DebounceSettings(hold_s=HOLD), start=0.0)
    now = settle(t, 1, [True, True, False, False], 0.0)
    (went,) = t.detector_status(1, [0, int(DetectorStatus.STUCK), 0, 0], now + 1.0)
    assert went.state == SpaceState.UNKNOWN
    now = settle(t, 1, [True, True, False, False], now + 2.0)  # the same car all along
    (back,) = t.detector_status(1, [0, 0, 0, 0], now + 0.1)
    assert back.state == SpaceState.OCCUPIED and back.since >= went.since


def test_would_settle_says_whether_a_poll_would_publish_a_change() -> None:
    t = BusTracker(small_bus(), DebounceSettings(hold_s=HOLD), start=0.0)
    now = settle(t, 1, [True, False, False, False], 0.0)
    assert not t.would_settle(1, [True, False, False, False], now + 0.1)
    assert not t.would_settle(1, [False, False, False, False], now + 0.1)  # not held yet
    t.poll_ok(1, [False, False, False, False], now + 0.1)
    assert t.would_settle(1, [False, False, False, False], now + 0.1 + HOLD)
    assert not t.would_settle(1, [True, False, True, False], now + 0.1 + HOLD)  # S-3: no space


@settings(max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.floats(min_value=0.005, max_value=0.3),
            st.booleans(),  # poll answered?
        ),
        min_size=1,
        max_size=300,
    )
)
def test_lost_polls_never_make_a_transition_while_the_node_answers_in_time(
    events: list[tuple[float, bool]],
) -> None:
    """Noise (failed polls) between answers closer than the timeout: no transition at all."""
    s = DebounceSettings(hold_s=HOLD, node_timeout_s=1.5, node_max_failures=3)
    t = BusTracker(small_bus(), s, start=0.0)
    bits = [True, False, True, True]
    now = settle(t, 1, bits, 0.0)
    before = t.snapshot()
    last_ok = now
    for dt, answered in events:
        now += dt
        if now - last_ok > 1.4:  # the node answers at least this often
            answered = True
        if answered:
            assert t.poll_ok(1, bits, now) == []
            last_ok = now
        else:
            assert t.poll_failed(1, now) == []
    assert t.snapshot() == before


def test_invalid_settings_and_short_reads_are_refused() -> None:
    with pytest.raises(ValueError):
        DebounceSettings(hold_s=-1)
    with pytest.raises(ValueError):
        DebounceSettings(node_max_failures=0)
    t = BusTracker(small_bus(), start=0.0)
    with pytest.raises(ValueError):
        t.poll_ok(1, [True], 0.1)


def test_a_change_after_the_clock_is_stepped_carries_the_right_wall_time() -> None:
    """A box that boots with its clock an hour behind, then NTP steps it: changes after
    the step carry true times, and so do the states that began before it (a `since` fixed
    from the start was refused by the gateway as older than known); without a step a
    change keeps one wall time in every report that carries it."""
    from edge.debounce import SpaceChange
    from edge.serial_agent import SerialAgent

    mono, wall = [100.0], [1_800_000_000.0 - 3600]
    agent = SerialAgent(
        "site", small_bus(), "serial-bus-t", None, None, DebounceSettings(hold_s=HOLD),
        clock=lambda: mono[0], wall=lambda: wall[0],
    )  # fmt: skip
    before = SpaceChange("S-1", SpaceState.OCCUPIED, 99.0)
    (first,) = agent.observations([before])
    mono[0] += 10.0
    wall[0] += 10.0 + 3600  # NTP steps the clock
    (again,) = agent.observations([before])  # e.g. in a snapshot
    assert again.since == first.since + 3600
    (after,) = agent.observations([SpaceChange("S-2", SpaceState.FREE, 109.5)])
    assert after.since == wall[0] - 0.5
