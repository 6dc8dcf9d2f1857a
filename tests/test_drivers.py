"""Simulated drivers: the day's traffic, and guided vs unguided search on the real core."""

from __future__ import annotations

import json
import subprocess

import pytest

from firmware_sim.study import BANDS, DrivingModel, LaneMap, Study, compare
from firmware_sim.traffic import plan_day
from gateway.allocation import CoreLayout
from tests.conftest import EXAMPLE_SITE, parkguide_cmd


def test_day_plan_is_residential_and_seeded(example_site):
    a, b = plan_day(example_site, 7), plan_day(example_site, 7)
    assert a == b and a != plan_day(example_site, 8)
    hour = lambda t: (7 + t / 3600) % 24  # noqa: E731 (start 07:00)
    morning_out = sum(
        1 for v in a if v.arrive_s is None and v.depart_s is not None and 7 <= hour(v.depart_s) < 10
    )
    evening_in = sum(
        1
        for v in a
        if v.arrive_s is not None and v.vehicle_class != "visitor" and 16 <= hour(v.arrive_s) < 23
    )
    visitors_pm = sum(1 for v in a if v.vehicle_class == "visitor" and 12 <= hour(v.arrive_s) < 18)
    visitors_am = sum(1 for v in a if v.vehicle_class == "visitor" and 7 <= hour(v.arrive_s) < 12)
    assert morning_out > 100 and evening_in > 100 and visitors_pm > visitors_am
    assert {v.vehicle_class for v in a} >= {"resident", "visitor", "ev", "accessible", "office"}


def test_guided_run_never_double_parks_and_uses_the_core(example_site):
    layout = CoreLayout.from_site(example_site)
    lanes = LaneMap(example_site, layout)
    visits = plan_day(example_site, 11)
    study = Study(example_site, layout, visits, 7 * 60, True, 11, DrivingModel(), lanes)
    parked_spaces = []
    original = study._park

    def spy(t, vid, s, dist, secs, occ):
        assert study.state[s] == 1, f"driver {vid} parked in a bay that was not free"
        parked_spaces.append(s)
        original(t, vid, s, dist, secs, occ)

    study._park = spy
    outcomes = study.run()
    assert len(parked_spaces) == sum(o.parked for o in outcomes) > 200
    # the core agrees with the world at the end of the day
    assert (study.core.state == study.state).all()


def test_compare_cli_json():
    out = subprocess.run(
        parkguide_cmd(
            "sim", "drivers", "--site", str(EXAMPLE_SITE), "--compare", "--days", "1", "--seed", "2"
        ),
        capture_output=True,
        text=True,
        timeout=170,
        check=True,
    )
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    r = json.loads(lines[0])
    assert r["bench"] == "drivers"
    for mode in ("guided", "unguided"):
        assert set(r[mode]) >= {"mean_search_m", "p95_search_m", "mean_search_s", "failed"}
    assert r["reduction"] == round(
        1 - r["guided"]["mean_search_s"] / r["unguided"]["mean_search_s"], 3
    )
    assert set(r["by_occupancy"]) == set(BANDS)
    assert sum(b["drivers"] for b in r["by_occupancy"].values()) == r["drivers"]
    assert r["guided"]["parked"] + r["guided"]["failed"] == r["drivers"]


def test_guidance_helps_most_when_nearly_full(example_site):
    r = compare(example_site, [plan_day(example_site, 5)], 7 * 60, 5)
    full, low = r["by_occupancy"][">=95"], r["by_occupancy"]["<50"]
    assert full["drivers"] > 10
    assert full["unguided"]["mean_search_m"] > full["guided"]["mean_search_m"]
    assert full["reduction"] > (low["reduction"] or 0)
    assert r["guided"]["p95_search_m"] < r["unguided"]["p95_search_m"]


def test_live_drivers_refuse_a_speed_that_is_not_a_number(capsys):
    from parkguide.cli import main

    argv = ["sim", "drivers", "--site", str(EXAMPLE_SITE), "--live", "--broker", "mqtt://h:1"]
    for bad in ("nan", "-60", "0"):
        assert main([*argv, "--speed", bad]) == 2
        assert f"--speed {float(bad)}: must be a positive number" in capsys.readouterr().err


def _msg(topic: str, payload: bytes):
    return type("Msg", (), {"topic": topic, "payload": payload})()


def test_live_drivers_take_only_this_sites_assignments(example_site, caplog):
    """amqtt (the demo's broker) hands a new client the retained messages of other
    clients' subscriptions: anything but an assignment of this site is ignored, quietly."""
    import logging

    from firmware_sim.drivers import LiveDrivers
    from parking import topics
    from parking.broker import BrokerConfig

    caplog.set_level(logging.WARNING, logger="firmware_sim.drivers")
    drivers = LiveDrivers(example_site, BrokerConfig.from_url("mqtt://127.0.0.1:1"), 420, 60, 1)
    site = example_site.id
    answer = json.dumps(
        {
            "entrance": "north",
            "class": "resident",
            "space": "A-001",
            "zone": "A",
            "route": [],
            "hold_expires": None,
            "request_id": "d0-1",
            "ts": 1.0,
        }
    ).encode()
    zone = json.dumps({"zone": "A", "free": 3, "occupied": 77, "unknown": 0, "total": 80}).encode()
    for topic, payload in (
        (topics.zone(site, "A"), zone),
        (topics.zone(site, "A"), answer),  # looks like an assignment, is not one
        (topics.arrival(site, "north"), answer),
        (topics.gateway_availability(site), b"online"),
        (topics.assignment("another-site", "north"), answer),
        ("other/thing", b"hello"),
    ):
        drivers._on_message(None, None, _msg(topic, payload))
    assert drivers.assignments.empty()
    assert caplog.records == []
    drivers._on_message(None, None, _msg(topics.assignment(site, "north"), answer))
    assert drivers.assignments.get_nowait().space == "A-001"


def test_live_drivers_write_each_set_line_at_once(example_site, monkeypatch):
    """One write per line, newline included: a log line from the MQTT thread (same file in
    the demo, unbuffered) cannot land inside it and spoil the command."""
    from firmware_sim.drivers import LiveDrivers
    from parking.broker import BrokerConfig

    writes: list[str] = []
    out = type("Out", (), {"write": lambda self, s: writes.append(s), "flush": lambda self: None})
    monkeypatch.setattr("sys.stdout", out())
    drivers = LiveDrivers(example_site, BrokerConfig.from_url("mqtt://127.0.0.1:1"), 420, 60, 1)
    drivers.say("A-001", True)
    drivers.say("A-002", False)
    assert writes == ["set A-001 occupied\n", "set A-002 free\n"]


def test_live_drivers_refuse_a_turn_back_share_outside_0_to_1(capsys):
    from parkguide.cli import main

    argv = ["sim", "drivers", "--site", str(EXAMPLE_SITE), "--live", "--broker", "mqtt://h:1"]
    for bad in ("nan", "-0.1", "1.5"):
        assert main([*argv, "--turn-back", bad]) == 2
        assert f"--turn-back {float(bad)}: must be from 0 to 1" in capsys.readouterr().err


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    ("hold_s", "share", "answer"),
    [(180.0, "0.5", "released"), (0.01, "1", "hold_expired")],  # the cancel comes too late
)
def test_live_drivers_who_turn_back_have_their_arrival_cancelled(
    mosquitto, tmp_path, subprocess_env, hold_s, share, answer
):
    """End to end: real mosquitto, the gateway, ``sim drivers --live``: drivers given a
    space turn back, their gate cancels, the gateway releases the hold (or says why not),
    and the simulator counts the answers as the gateway counts the cancels."""
    import signal
    import time

    from parking.site import load_site
    from tests.conftest import eventually
    from tests.gateway_support import Edge, running_gateway, site_variant

    site_path = site_variant(tmp_path, ttl_s=600)  # the one snapshot below holds for the test
    site = load_site(site_path)
    with running_gateway(site_path, mosquitto.url, tmp_path / "j.db", hold_s=hold_s) as service:
        gw = service.gateway
        edges = []
        for bus in site.buses:  # every space free: the drivers are given spaces
            edges.append(Edge(mosquitto.port, bus.agent, bus.id))
            edges[-1].send({s: "free" for s in site.spaces_of_source(bus.id)}, kind="snapshot")
        cmd = parkguide_cmd(
            "sim", "drivers", "--site", str(site_path), "--live", "--broker", mosquitto.url,
            "--start", "17:00", "--speed", "600", "--turn-back", share,
        )  # fmt: skip
        proc = subprocess.Popen(
            cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=subprocess_env
        )
        try:
            assert eventually(lambda: sum(gw.counters().arrival_cancels.values()) >= 4, 60)
            time.sleep(0.5)  # the last answers reach the simulator
        finally:
            proc.send_signal(signal.SIGINT)
            err = proc.communicate(timeout=30)[1]
            for e in edges:
                e.stop()
        by_gateway = gw.counters().arrival_cancels
    (line,) = [ln for ln in err.splitlines() if "drivers stopped: " in ln]
    stats = json.loads(line.split("drivers stopped: ", 1)[1])
    assert {result for _, result in by_gateway} == {answer}, by_gateway
    assert {gate for gate, _ in by_gateway} <= {e.id for e in site.entrances}
    answered = stats["cancelled"] if answer == "released" else stats["cancel_refused"]
    other = stats["cancel_refused"] if answer == "released" else stats["cancelled"]
    # the simulator waits at its stop for the answers to the cancels it sent
    assert 4 <= answered == sum(by_gateway.values()) <= stats["turned_back"]
    assert other == 0 and stats["cancel_unanswered"] == 0
    assert stats["assigned"] >= stats["turned_back"]
    if answer == "released":
        assert 0 < stats["turned_back"] < stats["assigned"]  # about half turn back
        assert "was refused" not in err
    else:
        assert stats["turned_back"] == stats["assigned"]
        assert "the cancel of d0-" in err and "refused: hold_expired" in err
