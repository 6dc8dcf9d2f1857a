"""``parkguide sim display``: the signs as a driver reads them, from real retained MQTT content."""

from __future__ import annotations

import subprocess
import time

import pytest
from conftest import parkguide_cmd
from gateway_support import Edge, running_gateway, site_variant

from firmware_sim.display import plain, sign_view
from parking.payloads import DisplayContent

pytestmark = pytest.mark.timeout(60)


def test_sim_display_once_shows_the_gateway_signs(mosquitto, tmp_path, subprocess_env):
    site_path = site_variant(tmp_path)
    edge = Edge(mosquitto.port, "agent-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, tmp_path / "j.db") as gw:
            spaces = gw.site.spaces_of_source("bus-g")
            # zone A: 3 free resident spaces; zone B full; zone C (camera) never heard: '--'
            states = {s: "occupied" for s in spaces}
            states.update({"A-010": "free", "A-011": "free", "A-012": "free"})
            edge.send(states, kind="snapshot")
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                shown = gw.gateway.displays().get("gate-north")
                if shown and shown.lines[0].count == 3:
                    break
                time.sleep(0.05)
            out = subprocess.run(
                parkguide_cmd(
                    "sim", "display", "--site", str(site_path), "--broker", mosquitto.url, "--once"
                ),
                env=subprocess_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
    finally:
        edge.stop()
    assert out.returncode == 0, out.stderr
    text = out.stdout
    blocks = {b.splitlines()[0].split("]")[0][1:]: b for b in text.strip().split("\n\n")}
    assert set(blocks) == {
        "gate-north",
        "gate-east",
        "jct-n1",
        "jct-r2",
        "jct-r1",
        "jct-w0",
        "b1-ramp",
    }
    north = blocks["gate-north"].splitlines()
    assert north[0].startswith("[gate-north] 北门 North gate")
    assert "blank" not in north[0]
    assert "A区 Zone A" in north[1] and "→" in north[1] and north[1].rstrip().endswith("3")
    assert "访客 Visitors" in north[2] and "↑" in north[2] and north[2].rstrip().endswith("--")
    east = blocks["gate-east"].splitlines()
    assert "B区 Zone B" in east[2] and "←" in east[2] and east[2].rstrip().endswith("满 FULL")


def test_expired_content_blanks_the_sign(example_site):
    body = {
        "display": "gate-north",
        "lines": [
            {
                "label": {"zh": "A区", "en": "Zone A"},
                "arrow": "right",
                "count": 12,
                "status": "ok",
                "text": {"zh": "12", "en": "12"},
            }
        ],
        "ts": 1000.0,
        "expires": 1060.0,
    }
    content = DisplayContent.model_validate(body)
    live = sign_view(example_site, "gate-north", content, now=1059.0)
    assert not live.blank and live.lines[0].text == "12" and live.lines[0].arrow == "→"
    dead = sign_view(example_site, "gate-north", content, now=1060.0)
    assert dead.blank
    assert all(ln.text == "--" for ln in dead.lines)
    assert "blank" in plain(dead).splitlines()[0]
    never = sign_view(example_site, "jct-w0", None, now=0.0)
    assert never.blank and [ln.arrow for ln in never.lines] == ["↓", "→"]


def test_the_board_clears_on_an_empty_message_and_refuses_another_signs_content(
    example_site,
):
    """An empty retained message clears a sign (MQTT's way to delete one); content that
    names another sign than its topic is bad content, counted, and changes nothing."""
    import json

    from firmware_sim.display import SignBoard
    from parking import topics

    board = SignBoard(example_site)
    line = {"arrow": "right", "count": 12, "status": "ok"}
    line |= {"label": {"zh": "A区", "en": "Zone A"}, "text": {"zh": "12", "en": "12"}}
    body = {"display": "gate-north", "lines": [line], "ts": 1000.0, "expires": 1060.0}
    north = topics.display_content(example_site.id, "gate-north")
    east = topics.display_content(example_site.id, "gate-east")
    board.feed(north, json.dumps(body).encode())
    board.feed(east, json.dumps(body).encode())  # gate-north's content on gate-east
    views = {v.display: v for v in board.views(1001.0)}
    assert not views["gate-north"].blank and views["gate-east"].blank
    assert board.rejected == 1
    board.feed(north, b"")
    assert all(v.blank for v in board.views(1001.0)) and board.rejected == 1


def test_sim_display_once_blanks_signs_whose_gateway_died(mosquitto, tmp_path, subprocess_env):
    site_path = site_variant(tmp_path, expires_s=1)
    with running_gateway(site_path, mosquitto.url, tmp_path / "j.db") as gw:
        deadline = time.monotonic() + 5
        while "gate-north" not in gw.gateway.displays() and time.monotonic() < deadline:
            time.sleep(0.05)
    # the gateway stopped; its last (retained) contents expire after 1 s
    time.sleep(1.2)
    out = subprocess.run(
        parkguide_cmd(
            "sim", "display", "--site", str(site_path), "--broker", mosquitto.url, "--once"
        ),
        env=subprocess_env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    headers = [b.splitlines()[0] for b in out.stdout.strip().split("\n\n")]
    assert len(headers) == 7 and all("blank" in h for h in headers)


def test_sim_display_once_says_when_the_broker_cannot_be_reached(tmp_path, subprocess_env):
    """Blank signs must not hide a wrong or dead broker from the technician."""
    from conftest import free_port

    out = subprocess.run(
        parkguide_cmd(
            "sim",
            "display",
            "--site",
            str(site_variant(tmp_path)),
            "--broker",
            f"mqtt://127.0.0.1:{free_port()}",
            "--once",
            "--wait",
            "1",
        ),  # fmt: skip
        capture_output=True,
        text=True,
        env=subprocess_env,
        timeout=30,
    )
    assert out.returncode == 1
    assert "could not reach the broker" in out.stderr and "Traceback" not in out.stderr
