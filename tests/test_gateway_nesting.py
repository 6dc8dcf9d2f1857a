"""A deeply nested JSON payload under the size cap is refused like any bad JSON.

orjson before 3.9.15 parsed nesting without a limit (CVE-2024-27454): one message of
``[`` x 131,000 overflowed the MQTT thread's stack and killed the gateway, and the broker
redelivered it to every restart. Run in a real gateway process, so a crash fails this test
instead of taking pytest down, with 2 MB of stack per thread (as on a small edge box; 8 MB,
the usual default, was overflowed only just, depending on the path).
"""

from __future__ import annotations

import resource
import subprocess
import time

import pytest
from conftest import parkguide_cmd
from gateway_support import SITE_ID, Collector, Edge, site_variant, zone_topic

from parking import topics
from parking.payloads import MAX_PAYLOAD_BYTES
from parking.site import load_site

pytestmark = pytest.mark.timeout(90)

STACK_BYTES = 2 * 1024 * 1024
DEPTH = MAX_PAYLOAD_BYTES // 2 - 100
DEEP = b"[" * DEPTH + b"]" * DEPTH
DEEP_OBJECT = b'{"a":' * (MAX_PAYLOAD_BYTES // 6) + b"1" + b"}" * (MAX_PAYLOAD_BYTES // 6)


def small_stack() -> None:
    resource.setrlimit(resource.RLIMIT_STACK, (STACK_BYTES, STACK_BYTES))


def test_deeply_nested_json_is_refused_and_the_gateway_lives_on(
    mosquitto, tmp_path, subprocess_env
):
    assert len(DEEP) <= MAX_PAYLOAD_BYTES and len(DEEP_OBJECT) <= MAX_PAYLOAD_BYTES
    site_path = site_variant(tmp_path)
    site = load_site(site_path)
    cmd = parkguide_cmd(
        "gateway",
        "--site",
        str(site_path),
        "--broker",
        mosquitto.url,
        "--db",
        str(tmp_path / "journal.db"),
    )
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    log_path = tmp_path / "gateway.log"
    log = log_path.open("ab")
    proc = subprocess.Popen(
        cmd,
        env=subprocess_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        preexec_fn=small_stack,  # threads take their stack size from this limit
    )
    try:
        watch.wait_for(topics.gateway_availability(SITE_ID), lambda p: p == "online", timeout=30)
        g_spaces = site.spaces_of_source("bus-g")
        edge.send({s: "free" for s in g_spaces}, kind="snapshot")
        watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)

        targets = (
            topics.edge_occupancy(SITE_ID, "serial-bus-g"),
            topics.arrival(SITE_ID, "north"),
            topics.arrival_cancel(SITE_ID, "north"),
            topics.edge_health(SITE_ID, "serial-bus-g"),
            topics.space_control(SITE_ID, "A-001"),
        )
        for topic in targets:
            for payload in (DEEP, DEEP_OBJECT):
                edge.raw(topic, payload)
        # still there, and still reading: a good report after them is taken
        mark = watch.mark()
        edge.send({"A-005": "occupied"})
        watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1, after=mark, timeout=15)
        time.sleep(0.5)
        assert proc.poll() is None, log_path.read_text(errors="replace")[-2000:]
        said = log_path.read_text(errors="replace")
        assert "bad_json" in said
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        log.close()
        watch.stop()
        edge.stop()
