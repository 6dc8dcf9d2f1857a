"""``parkguide sim display``: the signs as a driver reads them, from real retained MQTT content."""

from __future__ import annotations

import json
import logging
import queue
import subprocess
import threading
import time
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from conftest import parkguide_cmd
from gateway_support import Edge, display_topic, running_gateway, site_variant

from firmware_sim.display import FUTURE_TOLERANCE_S, SignBoard, plain, sign_view
from parking import topics
from parking.payloads import DisplayContent

pytestmark = pytest.mark.timeout(60)


def test_sim_display_once_shows_the_gateway_signs(mosquitto, tmp_path, subprocess_env):
    site_path = site_variant(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
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


def test_sim_display_shows_a_closed_zone_as_closed_not_full(mosquitto, tmp_path, subprocess_env):
    """A zone a manager closed is not full: its line reads 关闭 CLOSED (status full), a zone
    with every space taken still 满 FULL."""
    site_path = site_variant(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(site_path, mosquitto.url, tmp_path / "j.db") as gw:
            spaces = gw.site.spaces_of_source("bus-g")
            edge.send({s: "occupied" for s in spaces}, kind="snapshot")  # B full
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                shown = gw.gateway.displays().get("gate-east")
                if shown and shown.lines[1].status == "full":
                    break
                time.sleep(0.05)
            gw.gateway.control_zone("A", "close", "alice", "cleaning")
            north = gw.gateway.displays()["gate-north"].lines[0]
            assert (north.status, north.count, north.text.en) == ("full", 0, "CLOSED")
            out = subprocess.run(
                parkguide_cmd(
                    "sim",
                    "display",
                    "--site",
                    str(site_path),
                    "--broker",
                    mosquitto.url,
                    "--once",
                    "--display",
                    "gate-north",
                    "--display",
                    "gate-east",
                ),  # fmt: skip
                env=subprocess_env,
                capture_output=True,
                text=True,
                timeout=30,
            )
    finally:
        edge.stop()
    assert out.returncode == 0, out.stderr
    blocks = {b.splitlines()[0].split("]")[0][1:]: b for b in out.stdout.strip().split("\n\n")}
    north = blocks["gate-north"].splitlines()
    assert "A区 Zone A" in north[1] and north[1].rstrip().endswith("关闭 CLOSED")
    east = blocks["gate-east"].splitlines()
    assert "B区 Zone B" in east[2] and east[2].rstrip().endswith("满 FULL")


def test_a_sign_without_current_content_is_blank(example_site):
    """``sign_view`` draws what it is given: content, or blank for none (whether content is
    still current is the board's judgement, on its monotonic clock)."""
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
    live = sign_view(example_site, "gate-north", content)
    assert not live.blank and live.lines[0].text == "12" and live.lines[0].arrow == "→"
    dead = sign_view(example_site, "gate-north", None)
    assert dead.blank
    assert all(ln.text == "--" for ln in dead.lines)
    assert plain(dead).splitlines()[0].endswith("(blank: no current content)")
    # read as another sign's login: the broker may be what keeps it blank, not the gateway
    assert (
        plain(dead, "jct-w0")
        .splitlines()[0]
        .endswith("(blank: no current content (or login 'jct-w0' may not read it))")
    )
    assert plain(dead, "gate-north") == plain(dead)  # its own login reads it
    never = sign_view(example_site, "jct-w0", None)
    assert never.blank and [ln.arrow for ln in never.lines] == ["↓", "→"]


def test_the_board_clears_on_an_empty_message_and_refuses_another_signs_content(
    example_site,
):
    """An empty retained message clears a sign (MQTT's way to delete one); content that
    names another sign than its topic is bad content, counted, and changes nothing."""
    import json

    from firmware_sim.display import SignBoard
    from parking import topics

    board = SignBoard(example_site, wall=lambda: 1001.0)
    line = {"arrow": "right", "count": 12, "status": "ok"}
    line |= {"label": {"zh": "A区", "en": "Zone A"}, "text": {"zh": "12", "en": "12"}}
    body = {"display": "gate-north", "lines": [line], "ts": 1000.0, "expires": 1060.0}
    north = topics.display_content(example_site.id, "gate-north")
    east = topics.display_content(example_site.id, "gate-east")
    board.feed(north, json.dumps(body).encode())
    board.feed(east, json.dumps(body).encode())  # gate-north's content on gate-east
    views = {v.display: v for v in board.views()}
    assert not views["gate-north"].blank and views["gate-east"].blank
    assert board.rejected == 1
    board.feed(north, b"")
    assert all(v.blank for v in board.views()) and board.rejected == 1


def test_sim_display_blanks_the_signs_of_a_gateway_that_died(mosquitto, tmp_path, subprocess_env):
    """The gateway republishes every half validity (1 s of 2); once it stops, its last
    (retained) contents stay on the broker, and the sign goes blank at most their validity
    after the last one arrived (on the display's monotonic clock)."""
    site_path = site_variant(tmp_path, expires_s=2)
    proc = None
    shown_at = blank_at = stopped_at = None
    try:
        with running_gateway(site_path, mosquitto.url, tmp_path / "j.db"):
            proc, lines = _plain_display(site_path, mosquitto.url, subprocess_env)
            deadline = time.monotonic() + 15
            while shown_at is None and time.monotonic() < deadline:
                try:
                    line = lines.get(timeout=0.2)
                except queue.Empty:
                    continue
                if line.startswith("[gate-north]") and "blank" not in line:
                    shown_at = time.monotonic()
            assert shown_at is not None, "the gateway's content never showed"
            time.sleep(3)  # longer than the validity: the republished content keeps it up
        stopped_at = time.monotonic()
        deadline = stopped_at + 8
        while blank_at is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("[gate-north]") and "blank" in line:
                blank_at = time.monotonic()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(10)
    assert blank_at is not None, "a dead gateway's counts stay up"
    assert blank_at - stopped_at < 4


def test_sim_display_once_says_when_the_broker_cannot_be_reached(tmp_path, subprocess_env):
    """Blank signs must not hide a wrong or dead broker from the technician."""
    from conftest import free_port

    out = _run_once(site_variant(tmp_path), f"mqtt://127.0.0.1:{free_port()}", subprocess_env)
    assert out.returncode == 1
    assert "could not reach the broker" in out.stderr and "Traceback" not in out.stderr


def _content(display: str, ts: Any, expires: Any, count: Any = 3) -> dict[str, Any]:
    """A hand-made sign content, one line (``ts``, ``expires`` and ``count`` as given)."""
    line = {"label": {"zh": "A区", "en": "Zone A"}, "arrow": "right", "count": count}
    line |= {"status": "ok", "text": {"zh": "3", "en": "3"}}
    return {"display": display, "lines": [line], "ts": ts, "expires": expires}


def _retain(port: int, contents: dict[str, dict[str, Any]]) -> None:
    """Publish each sign's content retained, as a gateway does."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        for display, body in contents.items():
            info = client.publish(display_topic(display), json.dumps(body), qos=1, retain=True)
            info.wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()


def _run_once(site_path, broker_url: str, env, *extra: str) -> subprocess.CompletedProcess:
    """``sim display --once --wait 1`` (with ``extra`` flags), run to its end."""
    cmd = ["sim", "display", "--site", str(site_path), "--broker", broker_url]
    return subprocess.run(
        parkguide_cmd(*cmd, "--once", "--wait", "1", *extra),
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _once(site_path, mosquitto, env) -> tuple[dict[str, str], str]:
    """``sim display --once --wait 1``: each sign's block by display id, and stderr."""
    out = _run_once(site_path, mosquitto.url, env)
    assert out.returncode == 0, out.stderr
    blocks = {b.splitlines()[0].split("]")[0][1:]: b for b in out.stdout.strip().split("\n\n")}
    return blocks, out.stderr


def _blank(block: str) -> bool:
    return "blank" in block.splitlines()[0]


def test_sim_display_refuses_content_from_the_future(mosquitto, tmp_path, subprocess_env):
    """A gateway whose clock runs an hour ahead must not keep its counts up for an hour:
    content stamped more than FUTURE_TOLERANCE_S ahead of this clock is refused, and so is
    content that expires no later than its ts; both are reported."""
    now = time.time()
    _retain(
        mosquitto.port,
        {
            "gate-north": _content("gate-north", now + 3600, now + 3660),
            "gate-east": _content("gate-east", now + 60, now + 30),  # expires before its ts
            "jct-n1": _content("jct-n1", now, now + 60),  # sound content still shows
        },
    )
    blocks, stderr = _once(site_variant(tmp_path), mosquitto, subprocess_env)
    assert _blank(blocks["gate-north"]) and _blank(blocks["gate-east"])
    assert not _blank(blocks["jct-n1"]) and blocks["jct-n1"].splitlines()[1].endswith("3")
    assert "bad sign content" in stderr


def _plain_display(site_path, url: str, env) -> tuple[subprocess.Popen, queue.Queue[str]]:
    """``sim display --plain`` running, and the lines it prints as they come."""
    proc = subprocess.Popen(
        parkguide_cmd("sim", "display", "--site", str(site_path), "--broker", url, "--plain"),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(ln) for ln in proc.stdout], daemon=True).start()
    return proc, lines


def test_sim_display_blanks_content_after_its_validity_here_whatever_its_stamp(
    mosquitto, tmp_path, subprocess_env
):
    """Content from a gateway whose clock runs 2 min ahead (within the tolerance) says it
    is valid for 3 min more; the site's signs expire after 2 s, so it shows for 2 s after
    it arrived here, then the sign goes blank."""
    site_path = site_variant(tmp_path, expires_s=2)
    now = time.time()
    _retain(mosquitto.port, {"gate-north": _content("gate-north", now + 120, now + 180)})
    proc, lines = _plain_display(site_path, mosquitto.url, subprocess_env)
    shown_at = blank_at = None
    try:
        deadline = time.monotonic() + 8
        while blank_at is None and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("[gate-north]"):
                if "blank" not in line:
                    shown_at = time.monotonic()
                elif shown_at is not None:
                    blank_at = time.monotonic()
    finally:
        proc.terminate()
        proc.wait(10)
    assert shown_at is not None, "the content never showed"
    assert blank_at is not None, "the sign still shows content its gateway no longer vouches for"
    assert blank_at - shown_at < 4


def test_the_board_trusts_content_for_its_validity_from_arrival(example_site):
    """Valid until the earlier of ``expires`` and arrival + min(expires - ts, expires_s),
    on the local monotonic clock; ``ts`` up to FUTURE_TOLERANCE_S ahead is accepted."""
    clock = {"wall": 10_000.0, "mono": 50.0}
    board = SignBoard(example_site, wall=lambda: clock["wall"], mono=lambda: clock["mono"])
    north = topics.display_content(example_site.id, "gate-north")
    east = topics.display_content(example_site.id, "gate-east")
    ahead = 10_000.0 + FUTURE_TOLERANCE_S - 1
    board.feed(north, json.dumps(_content("gate-north", ahead, ahead + 600)).encode())  # 60 s
    board.feed(east, json.dumps(_content("gate-east", ahead, ahead + 5)).encode())  # 5 s
    assert board.rejected == 0
    views = {v.display: v for v in board.views()}
    assert not views["gate-north"].blank and not views["gate-east"].blank
    clock["mono"] += 5
    views = {v.display: v for v in board.views()}
    assert not views["gate-north"].blank and views["gate-east"].blank
    clock["mono"] += 55
    assert all(v.blank for v in board.views())
    too_far = 10_000.0 + FUTURE_TOLERANCE_S + 1
    board.feed(north, json.dumps(_content("gate-north", too_far, too_far + 60)).encode())
    assert board.rejected == 1 and all(v.blank for v in board.views())


def test_sim_display_once_exits_without_a_lost_broker_warning(mosquitto, tmp_path, subprocess_env):
    """--once disconnects on purpose: that is no lost broker."""
    _, stderr = _once(site_variant(tmp_path), mosquitto, subprocess_env)
    assert "lost the broker" not in stderr and "WARNING" not in stderr, stderr


def test_sim_display_refuses_loosely_typed_content(mosquitto, tmp_path, subprocess_env):
    """The wire contract's types are strict: a count or a time as a string is bad content."""
    now = time.time()
    _retain(
        mosquitto.port,
        {
            "gate-north": _content("gate-north", now, now + 60, count="3"),
            "gate-east": _content("gate-east", str(now), str(now + 60)),
            "jct-n1": _content("jct-n1", now, now + 60),
        },
    )
    blocks, stderr = _once(site_variant(tmp_path), mosquitto, subprocess_env)
    assert _blank(blocks["gate-north"]) and _blank(blocks["gate-east"])
    assert not _blank(blocks["jct-n1"])
    assert "bad sign content" in stderr


def test_sim_display_shows_content_with_keys_a_later_gateway_adds(
    mosquitto, tmp_path, subprocess_env
):
    """What the gateway publishes may grow within v1: a sign controller of this release
    shows content with keys it does not know (in the content, a line, a text) as before."""
    now = time.time()
    later = _content("gate-north", now, now + 60)
    later["brightness"] = 80
    later["lines"][0]["colour"] = "green"
    later["lines"][0]["text"]["ug"] = "3"
    _retain(mosquitto.port, {"gate-north": later})
    blocks, stderr = _once(site_variant(tmp_path), mosquitto, subprocess_env)
    assert not _blank(blocks["gate-north"]) and "3" in blocks["gate-north"], blocks
    assert "bad sign content" not in stderr


def test_plain_output_does_not_call_signs_blank_while_their_contents_arrive(
    example_site, mosquitto, tmp_path, subprocess_env
):
    """Every sign has current retained content: the plain log shows each with it, and
    none as blank first (the first content used to print every other sign as blank)."""
    now = time.time()
    ids = [d.id for d in example_site.displays]
    _retain(mosquitto.port, {d: _content(d, now, now + 600) for d in ids})
    proc, lines = _plain_display(
        site_variant(tmp_path, expires_s=600), mosquitto.url, subprocess_env
    )
    headers: list[str] = []
    try:
        deadline = time.monotonic() + 10
        while len(headers) < len(ids) and time.monotonic() < deadline:
            try:
                line = lines.get(timeout=0.2)
            except queue.Empty:
                continue
            if line.startswith("["):
                headers.append(line)
    finally:
        proc.terminate()
        proc.wait(10)
    assert len(headers) == len(ids), headers
    assert not [h for h in headers if "blank" in h], headers


GATEWAY_WALL = 1_795_852_800.0


@pytest.mark.parametrize("ahead", [0.0, 45.0, 61.0, 299.0, -120.0, -299.0])
def test_the_board_shows_content_across_republishes_whatever_the_clocks_differ(example_site, ahead):
    """The gateway republishes every 30 s content valid 60 s (the example site): a sign
    controller whose clock is ``ahead`` of the gateway's (behind when negative) by less
    than FUTURE_TOLERANCE_S shows it without a gap, and blanks 60 s after the last
    content arrived when the gateway stops: expiry is judged on the monotonic clock,
    the wall clock only refuses content on arrival."""
    clock = {"t": 0.0}  # seconds since the gateway's first publish, on both machines
    board = SignBoard(
        example_site,
        wall=lambda: GATEWAY_WALL + ahead + clock["t"],
        mono=lambda: 7_000.0 + clock["t"],
    )
    north = topics.display_content(example_site.id, "gate-north")
    gaps = []
    for tenth in range(2200):  # 220 s in 0.1 s steps
        clock["t"] = tenth / 10
        if tenth % 300 == 0 and tenth <= 1500:  # published at 0, 30, ... 150 s, then dead
            ts = GATEWAY_WALL + clock["t"]
            board.feed(north, json.dumps(_content("gate-north", ts, ts + 60)).encode())
        north_view = board.views()[0]
        assert north_view.display == "gate-north"
        if north_view.blank != (clock["t"] >= 210):  # 60 s after the last arrival
            gaps.append(clock["t"])
    assert not gaps, f"gate-north wrong at {gaps[:3]}... ({len(gaps)} steps)"
    assert board.rejected == 0 and board.stale == 0


def test_the_board_refuses_content_already_stale_when_it_arrives(example_site, caplog):
    """An old retained content at connect (stamped 10 min ago, valid 60 s: expired 540 s
    ago, more than FUTURE_TOLERANCE_S) is not shown, and said; content expired less
    than that ago cannot be told from a clock ahead, and shows for its validity."""
    caplog.set_level(logging.WARNING, logger="firmware_sim.display")
    clock = {"wall": GATEWAY_WALL, "mono": 100.0}
    board = SignBoard(example_site, wall=lambda: clock["wall"], mono=lambda: clock["mono"])
    north = topics.display_content(example_site.id, "gate-north")
    east = topics.display_content(example_site.id, "gate-east")
    old = GATEWAY_WALL - 600
    board.feed(north, json.dumps(_content("gate-north", old, old + 60)).encode())
    recent = GATEWAY_WALL - 300
    board.feed(east, json.dumps(_content("gate-east", recent, recent + 60)).encode())
    views = {v.display: v for v in board.views()}
    assert views["gate-north"].blank and not views["gate-east"].blank
    assert board.stale == 1 and board.rejected == 0
    said = [r.getMessage() for r in caplog.records]
    assert any("gate-north expired 540 s ago" in m and "NTP" in m for m in said), said
    clock["mono"] += 60
    assert all(v.blank for v in board.views())


def test_the_board_warns_of_a_skewed_clock_once_an_hour_per_sign(example_site, caplog):
    """Content that arrives past its expires, or stamped further from this clock than its
    validity, names the clock: shown all the same, said once an hour per sign."""
    caplog.set_level(logging.WARNING, logger="firmware_sim.display")
    clock = {"wall": GATEWAY_WALL + 61, "mono": 100.0}  # 61 s ahead of the gateway
    board = SignBoard(example_site, wall=lambda: clock["wall"], mono=lambda: clock["mono"])
    north = topics.display_content(example_site.id, "gate-north")
    east = topics.display_content(example_site.id, "gate-east")

    def publish(topic: str, display: str, gateway_wall: float) -> None:
        body = _content(display, gateway_wall, gateway_wall + 60)
        board.feed(topic, json.dumps(body).encode())

    def warnings() -> list[str]:
        return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]

    publish(north, "gate-north", GATEWAY_WALL)
    assert not board.views()[0].blank
    assert len(warnings()) == 1
    assert "gate-north" in warnings()[0]
    assert "clock is up to 61 s ahead of the gateway's" in warnings()[0]
    assert "check its NTP" in warnings()[0]
    for n in range(1, 100):  # republished every 30 s for ~50 min: no more said
        clock["wall"] += 30
        clock["mono"] += 30
        publish(north, "gate-north", GATEWAY_WALL + 30 * n)
        assert not board.views()[0].blank
    assert len(warnings()) == 1
    publish(east, "gate-east", clock["wall"] - 61)  # another sign says it too
    assert len(warnings()) == 2 and "gate-east" in warnings()[1]
    clock["wall"] += 3600
    clock["mono"] += 3600
    publish(north, "gate-north", clock["wall"] - 61)  # an hour on: said again
    assert len(warnings()) == 3 and "gate-north" in warnings()[2]

    caplog.clear()
    behind = SignBoard(example_site, wall=lambda: GATEWAY_WALL - 120, mono=lambda: 5.0)
    behind.feed(north, json.dumps(_content("gate-north", GATEWAY_WALL, GATEWAY_WALL + 60)).encode())
    assert not behind.views()[0].blank
    assert ["at least 120 s behind the gateway's" in m for m in warnings()] == [True]

    caplog.clear()
    close = SignBoard(example_site, wall=lambda: GATEWAY_WALL + 45, mono=lambda: 5.0)
    close.feed(north, json.dumps(_content("gate-north", GATEWAY_WALL, GATEWAY_WALL + 60)).encode())
    assert not close.views()[0].blank
    assert warnings() == []  # within the content's validity: nothing to say


def test_sim_display_blanks_retained_content_past_its_expires_and_says_why(
    mosquitto, tmp_path, subprocess_env
):
    """Retained content past its expires here is not shown, whether a gateway clock 61 s
    behind this one stamped it or the gateway died (a broker restored after a power cut
    keeps both the content and the gateway's "online"): the log names both causes. Retained
    content still valid shows; content stamped 10 min ago is said as long expired."""
    now = time.time()
    _retain(
        mosquitto.port,
        {
            "gate-north": _content("gate-north", now - 61, now - 1),
            "jct-n1": _content("jct-n1", now - 45, now + 15),
            "gate-east": _content("gate-east", now - 600, now - 540),
        },
    )
    blocks, stderr = _once(site_variant(tmp_path), mosquitto, subprocess_env)
    assert _blank(blocks["gate-north"])
    assert not _blank(blocks["jct-n1"])
    assert _blank(blocks["gate-east"])
    assert "retained sign content on gate-north expired" in stderr, stderr
    assert "clock is ahead; check its NTP" in stderr, stderr
    assert "gate-east expired" in stderr, stderr


def test_the_gateways_last_will_blanks_every_sign_and_later_content_shows(example_site):
    """Content a dead gateway left retained looks valid for up to its validity (and up to
    the clock tolerance more) to a sign controller that connects then: the gateway's last
    will (retained ``offline``, delivered after the signs' retained content) blanks them;
    content that comes after it (a restarting gateway's) shows."""
    board = SignBoard(example_site, wall=lambda: 1001.0, mono=lambda: 50.0)
    north = topics.display_content(example_site.id, "gate-north")
    body = _content("gate-north", 1000.0, 1060.0)
    board.feed(north, json.dumps(body).encode())
    assert not {v.display: v for v in board.views()}["gate-north"].blank
    board.feed(topics.gateway_availability(example_site.id), b"offline")
    assert all(v.blank for v in board.views())
    board.feed(north, json.dumps(body).encode())
    assert not {v.display: v for v in board.views()}["gate-north"].blank
    board.feed(topics.gateway_availability(example_site.id), b"online")
    assert not {v.display: v for v in board.views()}["gate-north"].blank


def test_sim_display_started_after_the_gateway_died_shows_nothing(
    mosquitto, tmp_path, subprocess_env
):
    now = time.time()
    _retain(mosquitto.port, {"gate-north": _content("gate-north", now - 20, now + 40)})
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    topic = topics.gateway_availability("xinyuan")
    client.publish(topic, b"offline", qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()
    blocks, stderr = _once(site_variant(tmp_path), mosquitto, subprocess_env)
    assert _blank(blocks["gate-north"]), blocks["gate-north"]
    assert "the gateway is offline" in stderr


def test_sim_display_once_shows_only_the_chosen_signs(mosquitto, tmp_path, subprocess_env):
    """``--display`` takes an id or a glob, repeatable; the signs keep the site's order."""
    now = time.time()
    _retain(mosquitto.port, {"jct-n1": _content("jct-n1", now, now + 60)})
    site, url = site_variant(tmp_path), mosquitto.url
    out = _run_once(site, url, subprocess_env, "--display", "jct-n1", "--display", "gate-*")
    assert out.returncode == 0, out.stderr
    blocks = [b.splitlines()[0].split("]")[0][1:] for b in out.stdout.strip().split("\n\n")]
    assert blocks == ["gate-north", "gate-east", "jct-n1"]
    assert "blank" not in out.stdout.split("[jct-n1]")[1].splitlines()[0]


def test_sim_display_refuses_a_display_matching_no_sign(tmp_path, subprocess_env):
    """A typo must not show an empty board: exit 2, naming the pattern (before any broker)."""
    from conftest import free_port

    for pattern in ("gate-nort", "lift-*"):
        broker = f"mqtt://127.0.0.1:{free_port()}"
        extra = ("--display", "gate-north", "--display", pattern)
        out = _run_once(site_variant(tmp_path), broker, subprocess_env, *extra)
        assert out.returncode == 2, out.stderr
        assert f"--display: {pattern!r} matches no sign" in out.stderr
        assert "gate-north" in out.stderr  # the signs there are
        assert "Traceback" not in out.stderr


def _screen(renderable, width: int, height: int) -> list[str]:
    import io

    from rich.console import Console

    console = Console(width=width, height=height, file=io.StringIO(), color_system=None)
    console.print(renderable)
    return console.file.getvalue().splitlines()


def test_the_terminal_board_says_how_many_signs_it_shows_when_not_all_fit(example_site):
    from firmware_sim.display import rich_board

    views = SignBoard(example_site).views()
    assert len(views) == 7
    lines = _screen(rich_board(views, 80, 12), 80, 12)
    assert len(lines) <= 11  # the last line is the cursor's: nothing scrolls away
    assert "..." not in "\n".join(lines)
    notice = lines[-1]
    assert notice.startswith("showing ") and " of 7 signs; use --display to choose" in notice
    shown = int(notice.split()[1])
    assert 0 < shown < 7
    assert sum(line.count("╭") for line in lines) == shown  # it says what it shows
    # a terminal large enough shows every sign, and no notice
    lines = _screen(rich_board(views, 200, 60), 200, 60)
    assert sum(line.count("╭") for line in lines) == 7
    assert not any(line.startswith("showing ") for line in lines)


class _StopLoop(Exception):
    pass


def test_the_terminal_is_redrawn_only_when_what_it_shows_changes(example_site):
    """Nothing changing, nothing is redrawn (a republish of the same counts included);
    a sign whose validity runs out is redrawn blank on time; a resize redraws."""
    from firmware_sim.display import live_loop

    clock = [500.0]
    board = SignBoard(example_site, wall=lambda: 1001.0, mono=lambda: clock[0])
    north = topics.display_content(example_site.id, "gate-north")
    board.feed(north, json.dumps(_content("gate-north", 1000.0, 1030.0)).encode())  # 30 s
    shows: list[tuple[float, bool, tuple[int, int]]] = []
    size = [(80, 24)]
    waits = [0]

    def show(views, at_size):
        shows.append((clock[0], {v.display: v for v in views}["gate-north"].blank, at_size))

    def wait(timeout: float) -> bool:
        assert timeout >= 0
        waits[0] += 1
        if waits[0] == 20:  # the gateway republishes the same counts
            board.feed(north, json.dumps(_content("gate-north", 1000.0, 1030.0)).encode())
        if waits[0] == 200:
            size[0] = (100, 30)
        if waits[0] == 220:
            raise _StopLoop
        clock[0] += timeout
        return board.changed.is_set()

    with pytest.raises(_StopLoop):
        live_loop(board, show, lambda: size[0], mono=lambda: clock[0], wait=wait)
    assert shows[0] == (500.0, False, (80, 24))
    # the republish at 509.5 s holds it for 30 s more: blank at 539.5, not a poll later
    assert len(shows) == 3, shows
    assert shows[1][1] is True and shows[1][0] == pytest.approx(539.5)
    assert shows[2][2] == (100, 30)


def test_retained_content_past_its_expires_is_not_shown(example_site, caplog):
    """After a power cut the broker restores the signs' retained content and the gateway's
    retained "online" (no last will fired): content expired a minute ago, sent at subscribe,
    showed the dead gateway's counts for a full validity. Retained and past its expires, it
    is not shown now; the same content live (a clock ahead) still is, and so is retained
    content still valid."""
    caplog.set_level(logging.WARNING, logger="firmware_sim.display")
    clock = {"wall": GATEWAY_WALL, "mono": 100.0}
    board = SignBoard(example_site, wall=lambda: clock["wall"], mono=lambda: clock["mono"])
    north = topics.display_content(example_site.id, "gate-north")
    east = topics.display_content(example_site.id, "gate-east")
    stamped = GATEWAY_WALL - 90  # valid 60 s: expired 30 s ago
    expired = json.dumps(_content("gate-north", stamped, stamped + 60)).encode()
    board.feed(topics.gateway_availability(example_site.id), b"online", retained=True)
    board.feed(north, expired, retained=True)
    fresh = GATEWAY_WALL - 10
    board.feed(east, json.dumps(_content("gate-east", fresh, fresh + 60)).encode(), retained=True)
    views = {v.display: v for v in board.views()}
    assert views["gate-north"].blank and not views["gate-east"].blank
    assert board.stale == 1
    assert any("retained sign content on gate-north expired 30 s ago" in r.getMessage()
               for r in caplog.records)  # fmt: skip
    board.feed(north, expired)  # the same, live: this clock may be ahead, shown
    assert not {v.display: v for v in board.views()}["gate-north"].blank


def test_retained_content_is_shown_only_for_what_is_left_of_its_validity(example_site):
    """Retained content 52 s into its 60 s (a dead gateway's last counts, restored by the
    broker after a power cut, sent at a sign's reconnect) showed for 60 s from its arrival,
    51 s past its expires; it now blanks at its expires. Live content keeps its full
    validity from its arrival (a clock behind does not shorten it)."""
    clock = {"wall": GATEWAY_WALL, "mono": 100.0}
    board = SignBoard(example_site, wall=lambda: clock["wall"], mono=lambda: clock["mono"])
    north = topics.display_content(example_site.id, "gate-north")
    east = topics.display_content(example_site.id, "gate-east")
    stamped = GATEWAY_WALL - 52
    board.feed(north, json.dumps(_content("gate-north", stamped, stamped + 60)).encode(),
               retained=True)  # fmt: skip
    board.feed(east, json.dumps(_content("gate-east", stamped, stamped + 60)).encode())

    def blank() -> dict[str, bool]:
        return {
            v.display: v.blank for v in board.views() if v.display in ("gate-north", "gate-east")
        }

    assert blank() == {"gate-north": False, "gate-east": False}
    clock["mono"] += 8.5  # past its expires by the wall clock
    assert blank() == {"gate-north": True, "gate-east": False}
    clock["mono"] += 52  # 60.5 s after arrival: the live one's validity is up too
    assert blank() == {"gate-north": True, "gate-east": True}


def test_sim_display_once_waits_for_the_gateways_last_will(mosquitto, tmp_path, subprocess_env):
    """`--once` printed as soon as every sign had content, before the gateway's retained
    availability (its own subscription, answered after the signs') said `offline`: a
    technician checking the signs during an outage read counts the real signs had
    blanked. Every sign's content is valid here; the last will blanks them all."""
    from parking.site import EXAMPLE_SITE, load_site

    site = load_site(EXAMPLE_SITE)
    now = time.time()
    _retain(mosquitto.port, {d.id: _content(d.id, now, now + 60) for d in site.displays})
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.connect("127.0.0.1", mosquitto.port)
    client.loop_start()
    try:
        client.publish(
            topics.gateway_availability(site.id), topics.OFFLINE, qos=1, retain=True
        ).wait_for_publish(5)
    finally:
        client.disconnect()
        client.loop_stop()
    for _ in range(3):  # it raced: the signs' retained copies come first every time
        blocks, stderr = _once(EXAMPLE_SITE, mosquitto, subprocess_env)
        assert all(_blank(b) for b in blocks.values()), blocks
