"""Policy windows: the shared office bays open to residents at 19:00 local time (site timezone)."""

from __future__ import annotations

import json
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
        spaces = example_site.spaces_of_source("bus-g")
        report = {
            "agent": "agent-g",
            "source": "bus-g",
            "boot": "b",
            "seq": 1,
            "ts": clock[0],
            "kind": "snapshot",
            "spaces": [{"space": s, "state": "free", "since": clock[0]} for s in spaces],
        }
        gw.handle(topics.edge_occupancy(SITE_ID, "agent-g"), json.dumps(report).encode())
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
