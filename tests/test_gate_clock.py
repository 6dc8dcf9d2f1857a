"""Each entrance's learned clock offset (gateway.gate_clock), as pure logic."""

import json

import pytest

from gateway.gate_clock import GATE_OFFSET_WINDOW_S, GateClocks


def test_the_least_delay_of_live_arrivals_is_the_offset_and_a_backlog_teaches_nothing():
    clocks = GateClocks()
    assert clocks.age("north", 121.0, mono=0.0, learn=True) == (
        0.0,
        "entrance north's clock is 121 s behind the gateway's; holds follow the arrival "
        "time (have the gate's NTP fixed)",
    )
    assert clocks.age("north", 120.0, mono=1.0, learn=True)[0] == 0.0
    age, warning = clocks.age("north", 180.0, mono=2.0, learn=True)  # sent late
    assert age == 60.0 and warning is None  # said once an hour per entrance
    assert clocks.offset("north", 2.0) == 120.0
    # read from a broker's backlog: judged, not learned from
    assert clocks.age("east", 300.0, mono=3.0, learn=False) == (300.0, None)
    assert clocks.offset("east", 3.0) is None
    assert clocks.offset("north", 2.0 + GATE_OFFSET_WINDOW_S + 0.1) is None  # all too old


def test_a_gate_ahead_never_makes_an_arrival_older():
    clocks = GateClocks()
    assert clocks.age("north", -30.0, mono=0.0, learn=True) == (-30.0, None)
    assert clocks.age("north", 0.5, mono=1.0, learn=True) == (0.5, None)  # put right


def test_a_gate_clock_stepped_back_is_learned_anew_from_two_late_arrivals_that_agree():
    """A gate rebooted with a flat clock battery stamps its cars in the year 2000: the
    offset learned before (kept ten minutes) made every car late, given a space without a
    hold, and so the same space to the next car. Two late live arrivals whose delays agree
    are a step of its clock: from the second on, holds again."""
    clocks = GateClocks()
    assert clocks.age("north", 0.4, mono=0.0, learn=True)[0] == 0.0  # a right clock
    step = 849_897_301.0  # now less 2000-01-01
    assert clocks.age("north", step, mono=20.0, learn=True)[0] > 60  # late: no hold
    assert clocks.age("north", step + 0.3, mono=45.0, learn=True)[0] == 0.0  # learned anew
    assert clocks.offset("north", 45.0) == step + 0.3
    assert clocks.age("north", step + 0.2, mono=70.0, learn=True)[0] == 0.0
    # put right again (NTP): its lower delay is the offset at once, as before
    assert clocks.age("north", 0.5, mono=90.0, learn=True)[0] == 0.0


def test_late_arrivals_that_do_not_agree_teach_nothing():
    """Arrivals a gate queued while its link was down come late, each by another delay:
    judged late, the right offset kept."""
    clocks = GateClocks()
    clocks.age("north", 0.4, mono=0.0, learn=True)
    for i, queued_for in enumerate((300.0, 240.0, 170.0, 95.0)):  # cars 70 s apart
        assert clocks.age("north", queued_for, mono=10.0 + i, learn=True)[0] > 60
    assert clocks.offset("north", 14.0) == 0.4


def test_a_gates_queue_flushed_at_once_teaches_no_new_offset():
    """A gate back after an outage sends the arrivals it queued, at once: their delays
    agree as well as a stepped clock's (two cars a few seconds apart, or a retry), and
    relearning from them held spaces for cars the signs had sent minutes before."""
    clocks = GateClocks()
    clocks.age("north", 0.4, mono=0.0, learn=True)
    ages = [
        clocks.age("north", delay, mono=100.0 + i * 0.01, learn=True)[0]
        for i, delay in enumerate((240.0, 236.0, 200.0, 160.0, 120.0, 80.0))
    ]
    assert all(age > 60 for age in ages), ages
    assert clocks.offset("north", 101.0) == 0.4


def test_offsets_journaled_before_a_restart_count_as_one_live_arrival_each():
    clocks = GateClocks()
    clocks.age("north", 120.0, mono=50.0, learn=True)
    assert clocks.unsaved
    stored = clocks.to_save(wall=1_000_000.0, mono=60.0)
    assert not clocks.unsaved
    assert json.loads(stored) == {"north": [120.0, 999_990.0]}
    after = GateClocks()
    after.restore(stored, {"north", "east"}, wall=1_000_100.0, mono=5.0)
    assert after.offset("north", 5.0) == 120.0
    gone = GateClocks()
    gone.restore(stored, {"east"}, wall=1_000_100.0, mono=5.0)  # entrance removed
    assert gone.offset("north", 5.0) is None
    for garbage in ("[1, 2]", '{"north": 3}', '{"north": [1, null]}', "not json"):
        with pytest.raises(ValueError):
            GateClocks().restore(garbage, {"north"}, wall=0.0, mono=0.0)
