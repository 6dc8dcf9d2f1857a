"""The gateway's clocks: wall-clock steps, and what a restart says about its downtime."""

from __future__ import annotations

import json

import pytest
from gateway_support import Clocks, snapshot_all_free

from gateway.journal import Journal
from gateway.live import LiveGateway
from gateway.service import policy_clock
from parking import topics


def _signs(sent: list[tuple[str, bytes]]) -> dict[str, dict]:
    return {
        t.split("/")[-2]: json.loads(p)
        for t, p in sent
        if topics.is_display_content(t) and p  # an empty payload clears a retained sign
    }


def _settled_gateway(site, tmp_path) -> tuple[Clocks, LiveGateway, list[tuple[str, bytes]]]:
    """A gateway on fake clocks whose signs changed for the last time (the buses' TTL ran
    out 20 s after their snapshot), and what it publishes from now on."""
    clocks = Clocks(1_800_000_000.0)
    sent: list[tuple[str, bytes]] = []
    gw = clocks.gateway(
        site, Journal(tmp_path / "j.sqlite"), lambda t, p, q, r: sent.append((t, p))
    )
    gw.publish_all()
    snapshot_all_free(gw, site, clocks.wall)
    clocks.advance(20)
    gw.tick()
    sent.clear()
    return clocks, gw, sent


def test_signs_are_republished_on_time_after_the_wall_clock_steps_back(example_site, tmp_path):
    """NTP steps the clock back 200 s: each sign is still republished at half its expiry
    (30 s) of real time, stamped by the clock as it now reads, not 230 s later (its
    display would have blanked it after 60 s)."""
    clocks, gw, sent = _settled_gateway(example_site, tmp_path)
    clocks.step(-200)
    sent.clear()
    clocks.advance(1)
    gw.tick()  # content stamped later than the clock now reads: stamped afresh at once
    fresh = _signs(sent)
    assert set(fresh) == {d.id for d in example_site.displays}
    assert all(c["ts"] == clocks.wall for c in fresh.values())
    sent.clear()
    clocks.advance(29)
    gw.tick()
    assert _signs(sent) == {}  # not yet half of the 60 s since that refresh
    clocks.advance(1.5)
    gw.tick()
    again = _signs(sent)
    assert set(again) == {d.id for d in example_site.displays}
    assert all(c["expires"] == clocks.wall + 60 for c in again.values())


def test_signs_are_stamped_afresh_at_once_after_the_wall_clock_steps_forward(
    example_site, tmp_path
):
    """NTP steps the clock forward ten minutes (a box that booted with a stale clock): the
    signs' contents expired by the clock as it now reads are republished at the next tick,
    not half a validity later."""
    clocks, gw, sent = _settled_gateway(example_site, tmp_path)
    sent.clear()
    clocks.step(600)
    clocks.advance(0.5)
    gw.tick()
    fresh = _signs(sent)
    assert set(fresh) == {d.id for d in example_site.displays}
    assert all(c["expires"] == clocks.wall + 60 for c in fresh.values())


@pytest.mark.parametrize("speed", ["inf", "nan", "1e12", "0", "-5"])
def test_a_policy_clock_speed_out_of_range_is_refused_by_name(speed):
    with pytest.raises(ValueError, match="--policy-clock.*SPEED"):
        policy_clock(f"07:00@{speed}", "Asia/Shanghai")


def test_events_keep_their_time_order_when_this_hosts_clock_steps_back(
    example_site, tmp_path, caplog
):
    """NTP steps the gateway host's clock back two minutes: the events that follow were
    stamped before the ones just journaled (history reads the journal by time, a restart by
    id), and nothing said why. They now share the last time until the clock catches up, and
    the step is said once. A step back of an hour (a clock that ran an hour ahead): waiting
    for it would stamp an hour of events with one time; they take the clock's, said so."""
    clocks, gw, _sent = _settled_gateway(example_site, tmp_path)
    snapshot_all_free(gw, example_site, clocks.wall, seq=2)  # the buses' bays free again
    last = gw.journal.last_event_ts()
    assert last == clocks.wall
    clocks.step(-120)
    with caplog.at_level("WARNING", logger="gateway.live"):
        clocks.advance(20)
        gw.tick()  # their TTL runs out (monotonic): unknown, journaled now
    gw.flush_checkpoint()
    events = gw.journal.events_after(0)
    times = [e[1] for e in events]
    assert events[-1][4] == "unknown" and len(times) > len(example_site.spaces)
    assert times == sorted(times)
    assert times[-1] == last  # not two minutes before it
    said = [r.getMessage() for r in caplog.records if "host's clock stepped back" in r.getMessage()]
    assert len(said) == 1 and "120.0 s" in said[0]

    clocks.step(-3600)
    caplog.clear()
    with caplog.at_level("WARNING", logger="gateway.live"):
        clocks.advance(20)
        gw.tick()
        gw.control_space("A-001", "close", "boss", "resurfacing")
    gw.flush_checkpoint()
    assert gw.journal.last_event_ts() == clocks.wall  # the clock's time, not frozen
    assert "events carry its time, earlier than the last ones" in caplog.text


def test_a_gateway_started_with_its_clock_behind_journals_nothing_before_its_last_event(
    example_site, tmp_path, caplog
):
    """Restarted with the clock four minutes behind (not synchronised yet): a manager's close
    was journaled before the events before it. Days behind the journal (it ran with a clock
    days ahead), events take the clock's time, and the start says so."""
    clocks, gw, _sent = _settled_gateway(example_site, tmp_path)
    last = gw.journal.last_event_ts()
    gw.journal.close()
    behind = Clocks(clocks.wall - 240)
    again = behind.gateway(example_site, Journal(tmp_path / "j.sqlite"), lambda *a: None)
    again.control_space("A-001", "close", "boss", "resurfacing")
    again.flush_checkpoint()
    events = again.journal.events_after(0)
    assert events[-1][2] == "A-001" and events[-1][4] == "closed"
    times = [e[1] for e in events]
    assert times == sorted(times) and times[-1] == last
    again.journal.close()
    days = Clocks(clocks.wall - 2 * 86400)
    with caplog.at_level("WARNING", logger="gateway.live"):
        third = days.gateway(example_site, Journal(tmp_path / "j.sqlite"), lambda *a: None)
    assert "is 2 days ahead of this host's clock" in caplog.text
    third.control_space("A-002", "close", "boss", "resurfacing")
    third.flush_checkpoint()
    assert third.journal.last_event_ts() == days.wall
