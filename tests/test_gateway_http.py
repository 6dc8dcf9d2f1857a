"""``parkguide gateway --http``: the API served in-process from the gateway's live state."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest
from conftest import free_port, parkguide_cmd, wait_port
from gateway_support import Collector, Edge, site_variant, zone_topic

pytestmark = pytest.mark.timeout(90)


def get(url: str):
    with urllib.request.urlopen(url, timeout=10) as resp:
        return json.loads(resp.read())


def test_http_serves_the_live_state_while_mqtt_flows(mosquitto, tmp_path, subprocess_env):
    site_path = site_variant(tmp_path)
    port = free_port()
    cmd = parkguide_cmd(
        "gateway",
        "--site",
        str(site_path),
        "--broker",
        mosquitto.url,
        "--db",
        str(tmp_path / "journal.db"),
        "--http",
        f"127.0.0.1:{port}",
    )
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    with (tmp_path / "gw.log").open("wb") as log:
        proc = subprocess.Popen(cmd, env=subprocess_env, stdout=log, stderr=subprocess.STDOUT)
        try:
            wait_port(port, timeout=40)
            watch.wait_for("parkguide/v1/xinyuan/gateway/availability", lambda p: p == "online")
            spaces = [f"A-{i:03d}" for i in range(1, 81)]
            edge.send(
                {s: ("occupied" if s <= "A-010" else "free") for s in spaces}, kind="snapshot"
            )
            watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 10)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                zones = {z["zone"]: z for z in get(f"http://127.0.0.1:{port}/api/v1/zones")}
                if zones["A"]["occupied"] == 10:
                    break
                time.sleep(0.1)
            assert (zones["A"]["free"], zones["A"]["occupied"], zones["A"]["unknown"]) == (
                70,
                10,
                0,
            )
            assert zones["B"]["unknown"] == zones["B"]["total"] == 72  # never heard: unknown
            signs = get(f"http://127.0.0.1:{port}/api/v1/displays")
            north = next(d for d in signs if d["display"] == "gate-north")
            assert not north["expired"]
            # 78 resident spaces, 8 of them occupied (A-001..A-002 are accessible bays)
            assert north["content"]["lines"][0]["count"] == 70
            assert north["content"] == watch.latest(
                "parkguide/v1/xinyuan/displays/gate-north/content"
            )
        finally:
            proc.terminate()
            proc.wait(15)
            watch.stop()
            edge.stop()
    assert proc.returncode == 0


def test_http_on_a_taken_port_fails_clearly(mosquitto, tmp_path, subprocess_env):
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        out = subprocess.run(
            parkguide_cmd(
                "gateway",
                "--site",
                str(site_variant(tmp_path)),
                "--broker",
                mosquitto.url,
                "--db",
                str(tmp_path / "j.db"),
                "--http",
                f"127.0.0.1:{port}",
            ),
            env=subprocess_env,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert out.returncode == 1
    assert "did not start" in out.stderr
