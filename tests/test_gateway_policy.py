"""Policy windows: the shared office bays open to residents at 19:00 local time (site timezone)."""

from __future__ import annotations

import json
import time
from datetime import datetime
from zoneinfo import ZoneInfo

import paho.mqtt.client as mqtt
import pytest
from gateway_support import SITE_ID, Collector, display_topic, line_counts

from gateway.journal import Journal
from gateway.live import LiveGateway, minute_of_day
from parking import topics

pytestmark = pytest.mark.timeout(60)
SHANGHAI = ZoneInfo("Asia/Shanghai")


def _bus_g_all_free(gw: LiveGateway, now: float) -> None:
    """A snapshot of bus-g (zones A, B and D): every space free."""
    spaces = gw.site.spaces_of_source("bus-g")
    report = {
        "agent": "serial-bus-g",
        "source": "bus-g",
        "boot": "b",
        "seq": 1,
        "ts": now,
        "kind": "snapshot",
        "spaces": [{"space": s, "state": "free", "since": now} for s in spaces],
    }
    gw.handle(topics.edge_occupancy(SITE_ID, "serial-bus-g"), json.dumps(report).encode())


def test_minute_of_day_is_local_to_the_site():
    t = datetime(2026, 11, 27, 19, 0, 30, tzinfo=SHANGHAI).timestamp()
    assert minute_of_day(t, SHANGHAI) == 19 * 60
    assert minute_of_day(t, ZoneInfo("UTC")) == 11 * 60


def test_shared_bays_count_for_residents_only_from_19_00(example_site, mosquitto, tmp_path):
    clock = [datetime(2026, 11, 27, 18, 59, 0, tzinfo=SHANGHAI).timestamp()]
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    watch = Collector(mosquitto.port)
    journal = Journal(tmp_path / "j.db")
    try:
        gw = LiveGateway(
            example_site,
            journal,
            lambda t, p, q, r: client.publish(t, p, qos=q, retain=r),
            clock=lambda: clock[0],
        )
        gw.publish_all()
        _bus_g_all_free(gw, clock[0])
        # 18:59: zone D (30 shared bays, all free) is the office's: full for residents
        sign = watch.wait_for(display_topic("jct-w0"), lambda c: c["lines"][1]["count"] == 72)
        assert sign.json()["lines"][0]["status"] == "full"
        clock[0] += 90  # 19:00:30 local
        gw.tick()
        opened = watch.wait_for(display_topic("jct-w0"), lambda c: line_counts(c)[0] == 30)
        assert opened.json()["lines"][0]["status"] == "ok"
        assert gw.core.best(0, list(gw.layout.classes).index("office")) == -1  # office: closed now
    finally:
        watch.stop()
        client.disconnect()
        client.loop_stop()
        journal.close()


def test_policy_clock_runs_a_simulated_day(example_site, tmp_path):
    """--policy-clock HH:MM@SPEED: the demo's accelerated day drives the windows, while
    every timestamp (journal, sign expiry) stays real."""
    from gateway.service import policy_clock

    real = [1_800_000_000.0]
    sim = policy_clock("18:58@60", "Asia/Shanghai", start=time.time())
    assert minute_of_day(sim(), SHANGHAI) == 18 * 60 + 58
    journal = Journal(tmp_path / "j.db")
    gw = LiveGateway(
        example_site, journal, lambda *a: None, clock=lambda: real[0], policy_clock=sim
    )
    resident, d1 = list(gw.layout.classes).index("resident"), example_site.space_index["D-001"]
    assert gw.minute == 18 * 60 + 58
    assert not gw.layout.eligibility(gw.minute)[resident, d1]
    for bad in ("7pm@60", "07:00@0", "25:00@2"):
        with pytest.raises(ValueError):
            policy_clock(bad, "Asia/Shanghai")
    journal.close()


def test_a_window_opens_on_its_minute(example_site, tmp_path):
    """Not up to ten seconds late: at 19:00:01 the signs count zone D for residents, and an
    arrival is judged by the minute it comes in, before any timer ran."""
    clock = [datetime(2026, 11, 27, 18, 59, 58, tzinfo=SHANGHAI).timestamp()]
    journal = Journal(tmp_path / "j.db")
    gw = LiveGateway(example_site, journal, lambda *a: None, clock=lambda: clock[0])
    _bus_g_all_free(gw, clock[0])
    gw.tick()
    d_line = gw.layout.line_keys.index(("jct-w0", 0))  # zone D for residents
    assert gw.core.line_free[d_line] == 0
    clock[0] += 3  # 19:00:01
    gw.tick()
    assert gw.core.line_free[d_line] == 30
    clock[0] += 60 * 60 * 13  # 08:00:01 next morning: an arrival before any tick
    arrival = {"class": "resident", "request_id": "r1"}
    gw.handle(topics.arrival(SITE_ID, "north"), json.dumps(arrival).encode())
    assert gw.minute == 8 * 60  # judged by the minute it came in
    journal.close()
