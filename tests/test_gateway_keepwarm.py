"""Keeping warm: between reports the gateway rehearses the read-only part of the report path
(LiveGateway.rehearse). A rehearsal must change nothing and send nothing, and the service
rehearses only while reports flow. Busy-polling: right after reports, the service polls its
socket for a bounded time instead of sleeping, and never on a quiet site."""

from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from gateway_support import Edge, running_gateway, site_variant

from gateway.journal import Journal
from gateway.live import LiveGateway
from parking import topics

T0 = 1_800_000_000.0


def _report(site_id: str, agent: str, bus: str, seq: int, states: dict[str, str], kind: str):
    return topics.edge_occupancy(site_id, agent), json.dumps(
        {
            "agent": agent,
            "source": bus,
            "boot": "b1",
            "seq": seq,
            "ts": T0 + seq,
            "kind": kind,
            "spaces": [{"space": s, "state": st, "since": T0 + seq} for s, st in states.items()],
        }
    ).encode()


def _observable(gw: LiveGateway) -> tuple:
    st = gw.state
    arrays = tuple(
        a.copy() for a in (st.state, st.sensed, st.since, st.obs_since, st.last_seen, st.agent)
    )
    lines = (gw.core.line_free.copy(), gw.core.line_unknown.copy(), gw.core.line_total.copy())
    journal = gw.journal.conn.execute(
        "SELECT (SELECT count(*) FROM events), (SELECT count(*) FROM pending_changes)"
    ).fetchone()
    return arrays, lines, journal, dict(gw._shown), gw.accepted, dict(gw.rejections.counts)


def _same(a: tuple, b: tuple) -> bool:
    (arr_a, lines_a, *rest_a), (arr_b, lines_b, *rest_b) = a, b
    return (
        all(np.array_equal(x, y) for x, y in zip(arr_a, arr_b, strict=True))
        and all(np.array_equal(x, y) for x, y in zip(lines_a, lines_b, strict=True))
        and rest_a == rest_b
    )


def test_a_rehearsal_changes_nothing_and_sends_nothing(example_site, tmp_path):
    sent: list[tuple[str, bytes]] = []
    gw = LiveGateway(
        example_site,
        Journal(tmp_path / "journal.db"),
        lambda t, p, q, r: sent.append((t, p)),
        clock=lambda: T0 + 100,
    )
    gw.publish_all()
    assert gw.rehearse() is False  # nothing to rehearse before the first report
    bus = example_site.buses[0].id
    spaces = example_site.spaces_of_source(bus)
    gw.handle(
        *_report(example_site.id, "serial-bus-g", bus, 1, dict.fromkeys(spaces, "free"), "snapshot")
    )
    gw.handle(*_report(example_site.id, "serial-bus-g", bus, 2, {spaces[0]: "occupied"}, "delta"))
    before, n_sent, seq = _observable(gw), len(sent), gw.gate.sequence("serial-bus-g")
    for _ in range(3):
        assert gw.rehearse() is True
    assert _same(_observable(gw), before)
    assert len(sent) == n_sent  # no sign, no zone count
    assert gw.gate.sequence("serial-bus-g") == seq == ("b1", 2)
    # the rehearsed "next" sequence number is still free for the real next report
    gw.handle(*_report(example_site.id, "serial-bus-g", bus, 3, {spaces[1]: "occupied"}, "delta"))
    assert gw.gate.sequence("serial-bus-g") == ("b1", 3)
    assert dict(gw.rejections.counts) == before[-1]  # accepted, not a duplicate
    assert (
        gw.state.state[example_site.space_index[spaces[1]]]
        != before[0][0][example_site.space_index[spaces[1]]]
    )


def test_a_waiting_report_cuts_a_rehearsal_short(example_site, tmp_path):
    """The rehearsal asks between its steps whether a message is waiting and stops there:
    a report waits for one step (one sign rendered), never for the whole rehearsal."""
    gw = LiveGateway(
        example_site, Journal(tmp_path / "journal.db"), lambda *a: None, clock=lambda: T0 + 100
    )
    gw.publish_all()
    bus = example_site.buses[0].id
    spaces = example_site.spaces_of_source(bus)
    gw.handle(
        *_report(example_site.id, "serial-bus-g", bus, 1, dict.fromkeys(spaces, "free"), "snapshot")
    )
    assert len(spaces) > 64 and gw.rehearse() is False  # a big snapshot is not rehearsed
    gw.handle(*_report(example_site.id, "serial-bus-g", bus, 2, {spaces[0]: "occupied"}, "delta"))
    rendered: list[int] = []
    payload = gw.renderer.payload
    gw.renderer.payload = lambda d, *a: rendered.append(d) or payload(d, *a)  # type: ignore[method-assign]
    n_displays = len(example_site.displays)
    assert n_displays >= 3
    asked: list[int] = []
    assert gw.rehearse(lambda: asked.append(1) or False) is True  # never interrupted
    assert rendered == list(range(n_displays)) and len(asked) == 1 + n_displays
    rendered.clear()
    asked.clear()
    before = _observable(gw)
    assert gw.rehearse(lambda: asked.append(1) or len(asked) >= 3) is True
    assert rendered == [0]  # accepted, one sign rendered, then the report came
    assert len(asked) == 3
    assert _same(_observable(gw), before)
    rendered.clear()
    assert gw.rehearse(lambda: True) is True  # a report already waiting after the accept
    assert rendered == []


@pytest.mark.timeout(60)
def test_the_service_rehearses_only_while_reports_flow(tmp_path, mosquitto, monkeypatch):
    import gateway.service as service_module

    monkeypatch.setattr(service_module, "KEEP_WARM_FOR_S", 0.3)
    site_path = site_variant(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, tmp_path / "j.db", keep_warm_ms=3.0) as gw:
            time.sleep(0.4)
            assert gw.rehearsals == 0  # no report yet: nothing rehearsed, no CPU spent
            spaces = gw.site.spaces_of_source("bus-g")
            for i in range(5):
                edge.send({spaces[i % len(spaces)]: "occupied" if i % 2 else "free"})
                time.sleep(0.05)
            deadline = time.monotonic() + 5
            while gw.gateway.accepted < 5 and time.monotonic() < deadline:
                time.sleep(0.01)
            assert gw.gateway.accepted == 5
            time.sleep(0.05)
            assert gw.rehearsals > 10  # every 3 ms of idle time between reports
            time.sleep(0.6)  # quiet for longer than KEEP_WARM_FOR_S: it stops
            settled = gw.rehearsals
            time.sleep(0.3)
            assert gw.rehearsals == settled
        with running_gateway(site_path, mosquitto.url, tmp_path / "j2.db", keep_warm_ms=0) as gw:
            for i in range(3):
                edge.send({spaces[i]: "occupied"})
            deadline = time.monotonic() + 5
            while gw.gateway.accepted < 3 and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.1)
            assert gw.gateway.accepted == 3 and gw.rehearsals == 0  # turned off
    finally:
        edge.stop()


def _accepted(gw, n: int) -> None:
    deadline = time.monotonic() + 5
    while gw.gateway.accepted < n and time.monotonic() < deadline:
        time.sleep(0.01)
    assert gw.gateway.accepted == n


@pytest.mark.timeout(60)
def test_the_service_busy_polls_only_for_its_window_after_reports(tmp_path, mosquitto):
    site_path = site_variant(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(
            site_path, mosquitto.url, tmp_path / "j.db", keep_warm_ms=0, busy_poll_ms=100
        ) as gw:
            time.sleep(0.3)
            assert gw.busy_polled_s == 0  # no report yet: no CPU spent
            spaces = gw.site.spaces_of_source("bus-g")
            edge.send({spaces[0]: "occupied"})
            _accepted(gw, 1)
            time.sleep(0.4)
            polled = gw.busy_polled_s
            # most of the 100 ms window (less what the checkpoint and the acks took), and
            # never longer than the window
            assert 0.03 < polled <= 0.11
            time.sleep(0.3)
            assert gw.busy_polled_s == polled  # quiet: it stopped
            edge.send({spaces[1]: "occupied"})
            _accepted(gw, 2)
            time.sleep(0.3)
            assert 0.06 < gw.busy_polled_s <= 0.22  # a new window after the new report
        with running_gateway(
            site_path, mosquitto.url, tmp_path / "j2.db", keep_warm_ms=0, busy_poll_ms=0
        ) as gw:
            edge.send({spaces[2]: "occupied"})
            _accepted(gw, 1)
            time.sleep(0.2)
            assert gw.busy_polled_s == 0  # turned off
    finally:
        edge.stop()


@pytest.mark.timeout(60)
def test_busy_polling_is_off_under_real_time_scheduling(tmp_path, mosquitto, monkeypatch, caplog):
    # a real-time thread that never sleeps would starve every normal task on its CPU
    import os

    monkeypatch.setattr(os, "sched_getscheduler", lambda pid: os.SCHED_FIFO)
    site_path = site_variant(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with (
            caplog.at_level("INFO", logger="gateway.service"),
            running_gateway(
                site_path, mosquitto.url, tmp_path / "j.db", keep_warm_ms=0, busy_poll_ms=100
            ) as gw,
        ):
            spaces = gw.site.spaces_of_source("bus-g")
            edge.send({spaces[0]: "occupied"})
            _accepted(gw, 1)
            time.sleep(0.2)
            assert gw.busy_polled_s == 0
        assert "real-time scheduling: busy-polling turned off" in caplog.text
    finally:
        edge.stop()


@pytest.mark.parametrize("flag", ["--keep-warm-ms", "--busy-poll-ms"])
def test_a_negative_idle_option_is_refused(tmp_path, flag):
    site_path = site_variant(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "parkguide", "gateway", "--site", str(site_path)]
        + ["--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / "j.db")]
        + [flag, "-1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert f"{flag} -1" in r.stderr and "must be 0 (off) or more" in r.stderr
    assert not (tmp_path / "j.db").exists()  # refused before anything was opened


@pytest.mark.timeout(60)
def test_reports_that_change_nothing_neither_keep_warm_nor_busy_poll(tmp_path, mosquitto):
    """A large quiet site: dozens of agents repeat their snapshots every few seconds and
    nothing changes. Keeping warm and busy-polling follow changes, not reports (they kept
    a 5,000-space site's gateway at 43 % of a core doing nothing)."""
    site_path = site_variant(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(
            site_path, mosquitto.url, tmp_path / "j.db", keep_warm_ms=3.0, busy_poll_ms=100
        ) as gw:
            spaces = gw.site.spaces_of_source("bus-g")
            since = time.time() - 60
            edge.send(dict.fromkeys(spaces, "free"), kind="snapshot", since=since)
            _accepted(gw, 1)
            time.sleep(0.5)  # the first snapshot changed the spaces: windows open, then close
            rehearsals, polled = gw.rehearsals, gw.busy_polled_s
            for n in range(2, 7):
                edge.send(dict.fromkeys(spaces, "free"), kind="snapshot", since=since)
                _accepted(gw, n)
                time.sleep(0.05)
            time.sleep(0.3)
            assert gw.gateway.state_changes == len(spaces)  # the repeats changed nothing
            assert gw.rehearsals == rehearsals
            assert gw.busy_polled_s == polled
            edge.send({spaces[0]: "occupied"})  # a change: both come back
            _accepted(gw, 7)
            time.sleep(0.2)
            assert gw.rehearsals > rehearsals and gw.busy_polled_s > polled
    finally:
        edge.stop()
