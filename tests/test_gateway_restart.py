"""kill -9 and restart: the gateway resumes the same state and publishes consistent signs."""

from __future__ import annotations

import signal
import subprocess
import time

import pytest
from conftest import parkguide_cmd
from gateway_support import (
    SITE_ID,
    Collector,
    Edge,
    display_topic,
    site_variant,
    zone_topic,
)

from parking import topics
from parking.site import load_site

pytestmark = pytest.mark.timeout(90)
TTL_S = 8
RESTART_DEADLINE_S = 2.0


def start(cmd: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_kill9_restart_resumes_state_and_signs(mosquitto, tmp_path, subprocess_env):
    site_path = site_variant(tmp_path, ttl_s=TTL_S)
    site = load_site(site_path)
    db = tmp_path / "journal.db"
    cmd = parkguide_cmd(
        "gateway", "--site", str(site_path), "--broker", mosquitto.url, "--db", str(db)
    )
    watch = Collector(mosquitto.port)
    edge_g = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    edge_b1 = Edge(mosquitto.port, "serial-bus-b1", "bus-b1")
    log = (tmp_path / "gateway.log").open("ab")  # closed in the finally below
    procs: list[subprocess.Popen] = []
    try:
        procs.append(start(cmd, subprocess_env, log))
        watch.wait_for(topics.gateway_availability(SITE_ID), lambda p: p == "online", timeout=30)
        g_spaces = site.spaces_of_source("bus-g")
        b1_spaces = site.spaces_of_source("bus-b1")
        edge_g.send(
            {s: ("occupied" if i % 3 == 0 else "free") for i, s in enumerate(g_spaces)},
            kind="snapshot",
        )
        edge_b1.send(
            {s: ("occupied" if i % 2 == 0 else "free") for i, s in enumerate(b1_spaces)},
            kind="snapshot",
        )
        edge_g.send({"A-005": "occupied", "B-002": "unknown"})
        last = edge_g.send({"A-006": "occupied"})
        watch.wait_for(zone_topic("E"), lambda z: z["unknown"] == 0)
        watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 29)  # 27 + A-005 + A-006
        time.sleep(0.3)  # let every sign settle
        before_signs = {d.id: watch.latest(display_topic(d.id))["lines"] for d in site.displays}
        before_zones = {z.id: watch.latest(zone_topic(z.id)) for z in site.zones}

        mark = watch.mark()
        procs[0].send_signal(signal.SIGKILL)
        procs[0].wait(10)
        # its last will tells everyone the gateway is gone
        availability = topics.gateway_availability(SITE_ID)
        watch.wait_for(availability, lambda p: p == "offline", after=mark)
        mark = watch.mark()
        restarted_wall = time.time()
        t0 = time.monotonic()
        procs.append(start(cmd, subprocess_env, log))
        fresh = {}
        for d in site.displays:
            msg = watch.wait_for(
                display_topic(d.id),
                lambda c: c["ts"] >= restarted_wall,
                timeout=30,
                after=mark,
            )
            fresh[d.id] = msg
        took = max(m.at for m in fresh.values()) - t0
        watch.wait_for(availability, lambda p: p == "online", after=mark, timeout=30)
        assert {d: m.json()["lines"] for d, m in fresh.items()} == before_signs
        for z in site.zones:
            after = watch.wait_for(
                zone_topic(z.id), lambda c: c["ts"] >= restarted_wall, after=mark
            )
            keys = ("free", "occupied", "unknown", "closed", "total")
            assert {k: after.json()[k] for k in keys} == {k: before_zones[z.id][k] for k in keys}
        assert took <= RESTART_DEADLINE_S, f"consistent signs {took:.2f}s after the restart"

        # the last report replayed after the restart is a duplicate: nothing changes
        mark = watch.mark()
        edge_g.raw(
            topics.edge_occupancy(SITE_ID, "serial-bus-g"), last.replace(b'"occupied"', b'"free"')
        )
        edge_b1.send({b1_spaces[0]: "free"})
        watch.wait_for(
            zone_topic("E"), lambda z: z["free"] == before_zones["E"]["free"] + 1, after=mark
        )
        assert zone_topic("A") not in {m.topic for m in watch.since(mark)}

        # bus-g has been silent since before the restart: its spaces still go unknown on time
        watch.wait_for(zone_topic("A"), lambda z: z["unknown"] == 80, timeout=TTL_S + 5, after=mark)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        log.close()
        watch.stop()
        edge_g.stop()
        edge_b1.stop()
