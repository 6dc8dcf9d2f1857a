# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Alert episodes as a week of a real site showed them.

Defects: a flapping detector (15 episodes in 5 days) came back unacknowledged at every flap,
15 s after the manager acknowledged it ("technician ordered"); alerts that cleared by
themselves (a 180 s node_dead, a 42 s broker_lost) left no trace but the gateway's log; the
broker alert named the literal "mqtt" and no action; the node_dead alert named no spaces,
zone or action.
"""

from __future__ import annotations

import sqlite3
import time
from urllib.parse import quote

import httpx
import pytest
from api_support import (  # noqa: F401
    PASSWORD,
    ServerThread,
    client,
    harness,
    settings,
    tokens,
    users,
)
from conftest import free_port, wait_port
from e2e_support import processes  # noqa: F401
from playwright.sync_api import sync_playwright

import api.live
from api.alerts import ACK_CARRY_S, Alert, AlertBook, derive_alerts, node_places
from api.app import create_app
from api.auth import UserStore
from gateway.journal import Journal
from gateway.readside import AgentStatus
from parking import topics
from parking.payloads import DetectorHealth, HealthReport, NodeHealth
from parking.site import EXAMPLE_SITE, load_site

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--no-first-run"]

pytestmark = pytest.mark.timeout(120)

FLAP = Alert("detector_flapping:bus-g/1/9", "detector_flapping", "bus-g/1/9", None)
NOTE = "technician ordered for A-010"


@pytest.mark.parametrize("on_disk", [True, False])
def test_an_acknowledgement_carries_over_to_the_next_flap_within_a_day(tmp_path, on_disk):
    db = str(tmp_path / "alerts.sqlite") if on_disk else None
    book = AlertBook(db)
    t = 1_800_000_000.0
    book.update([FLAP], t)
    book.acknowledge(FLAP.id, "mgr", NOTE, t + 10)
    book.update([], t + 60)  # ok a while
    raised, _ = book.update([FLAP], t + 75)  # flaps again 15 s later: a new episode
    assert [(r.acked_by, r.acked_at, r.note, r.episodes) for r in raised] == [
        ("mgr", t + 10, NOTE, 2)
    ]
    (rec,) = book.current()
    assert (rec.since, rec.acked_by, rec.note, rec.episodes) == (t + 75, "mgr", NOTE, 2)
    # quiet for longer than the window: news again, acknowledged anew
    book.update([], t + 100)
    raised, _ = book.update([FLAP], t + 100 + ACK_CARRY_S + 1)
    assert [(r.acked_by, r.note, r.episodes) for r in raised] == [(None, None, 1)]
    if on_disk:  # another process (or a restart) reads the same from the table
        (rec,) = AlertBook(db).current()
        assert (rec.acked_by, rec.episodes) == (None, 1)


@pytest.mark.parametrize("on_disk", [True, False])
def test_an_alert_whose_id_covers_several_causes_asks_anew(tmp_path, on_disk):
    """Defect: the carry-over greyed out a new cause under the same id. ``bus_blind:bus-g``
    acknowledged "USB adapter replugged" for a lost port came back as "the port is open but
    no node answers" (a cut cable), shown acknowledged with the old note."""
    from api.alerts import ACK_CARRY_KINDS, SEVERITY

    assert set(SEVERITY) >= ACK_CARRY_KINDS
    db = str(tmp_path / "alerts.sqlite") if on_disk else None
    book = AlertBook(db)
    t = 1_800_000_000.0
    lost = Alert("bus_blind:bus-g", "bus_blind", "bus-g", None, {"port": "lost"})
    book.update([lost], t)
    book.acknowledge(lost.id, "li", "USB adapter replugged, cable tied down", t + 10)
    book.update([], t + 60)
    cut = Alert("bus_blind:bus-g", "bus_blind", "bus-g", None, {"port": "open"})
    raised, _ = book.update([cut], t + 75)
    assert [(r.acked_by, r.note, r.episodes) for r in raised] == [(None, None, 1)]
    if on_disk:
        (rec,) = AlertBook(db).current()
        assert (rec.acked_by, rec.note, rec.episodes) == (None, None, 1)


def test_another_process_carries_over_the_acknowledgement_from_the_table(tmp_path):
    """The process raising the new episode never saw the old one: the table carries it."""
    db = str(tmp_path / "alerts.sqlite")
    one = AlertBook(db)
    t = 1_800_000_000.0
    one.update([FLAP], t)
    one.acknowledge(FLAP.id, "mgr", NOTE, t + 1)
    one.update([], t + 2)
    two = AlertBook(db)  # started after it cleared
    raised, _ = two.update([FLAP], t + 20)
    assert [(r.acked_by, r.note, r.episodes) for r in raised] == [("mgr", NOTE, 2)]
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT acked_by, note, episodes FROM alerts").fetchall() == [
            ("mgr", NOTE, 2)
        ]


def test_an_older_journal_gains_the_episode_count(tmp_path):
    db = tmp_path / "alerts.sqlite"
    with sqlite3.connect(db) as conn:
        conn.execute(
            "CREATE TABLE alerts (id TEXT PRIMARY KEY, kind TEXT NOT NULL, subject TEXT NOT "
            "NULL, since REAL NOT NULL, cleared REAL, acked_by TEXT, acked_at REAL, note TEXT)"
        )
        conn.execute(
            "INSERT INTO alerts VALUES (?, 'detector_flapping', 'bus-g/1/9', 1.0, NULL, "
            "'mgr', 2.0, 'x')",
            (FLAP.id,),
        )
    (rec,) = AlertBook(str(db)).current()
    assert (rec.acked_by, rec.episodes) == ("mgr", 1)


def _flapping(harness, status: str, index: int = 9, space: str = "A-010") -> None:
    detector = DetectorHealth(index=index, space=space, status=status, raw=500)
    health = HealthReport(
        agent="serial-bus-g",
        source="bus-g",
        ts=time.time(),
        status="degraded" if status != "ok" else "ok",
        nodes=[NodeHealth(address=1, status="ok", detectors=[detector])],
    )
    site = harness.site.id
    harness.gateway.handle(topics.edge_availability(site, "serial-bus-g"), b"online")
    harness.gateway.handle(
        topics.edge_health(site, "serial-bus-g"), health.model_dump_json().encode()
    )


def _wait(fn, timeout: float = 15.0):
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got or time.monotonic() > deadline:
            return got
        time.sleep(0.1)


def _metric(text: str, line_start: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(line_start + " "):
            return float(line.split()[-1])
    return None


def test_a_flapping_detector_through_the_api(client, tokens, harness, monkeypatch):
    """The gateway's API (the stand-alone one has the same book and routes): acknowledged
    once, the next flap is listed acknowledged with its note and 2 episodes; a cleared one is
    listed by ``cleared_since``; /metrics counts the episodes raised per kind."""
    # the app just started: agent alerts are kept open while its view settles
    monkeypatch.setattr(api.live, "AGENT_REJOIN_S", 0.0)
    aid = FLAP.id
    viewer, manager = tokens["viewer"], tokens["manager"]

    def listed(**params) -> dict:
        rows = client.get("/api/v1/alerts", params=params, headers=viewer).json()
        return {a["id"]: a for a in rows}

    def raised_total() -> float | None:
        text = client.get("/metrics", headers=viewer).text
        return _metric(text, 'parkguide_alerts_raised_total{kind="detector_flapping"}')

    before = raised_total()
    assert before is not None
    t0 = time.time()
    _flapping(harness, "flapping")
    assert _wait(lambda: aid in listed())
    first = listed()[aid]
    assert first["acknowledged_by"] is None and first["episodes"] == 1
    assert first["cleared"] is None
    assert "check or replace the detector" in first["message"]["en"]
    assert "更换检测器" in first["message"]["zh"]
    r = client.post(
        f"/api/v1/alerts/{quote(aid, safe='')}/acknowledge", json={"note": NOTE}, headers=manager
    )
    assert r.status_code == 200, r.text

    _flapping(harness, "ok")
    assert _wait(lambda: aid not in listed())
    gone = listed(cleared_since=t0)
    assert aid in gone, gone
    assert gone[aid]["cleared"] >= gone[aid]["since"] >= t0 - 1
    assert (gone[aid]["acknowledged_by"], gone[aid]["note"]) == ("manager", NOTE)
    assert gone[aid]["details"]["space"] == "A-010"  # this process saw it: details kept
    assert aid not in listed(cleared_since=time.time() + 1)
    assert aid in listed(cleared_since=t0, kind="detector_flapping")
    assert (
        client.get("/api/v1/alerts", params={"cleared_since": -1}, headers=viewer).status_code
        == 422
    )

    _flapping(harness, "flapping")  # back: the acknowledgement holds
    assert _wait(lambda: aid in listed())
    again = listed()[aid]
    assert (again["acknowledged_by"], again["note"], again["episodes"]) == ("manager", NOTE, 2)
    assert aid not in listed(cleared_since=t0)  # open again: not "cleared"
    assert raised_total() == before + 2
    _flapping(harness, "ok")
    assert _wait(lambda: aid not in listed())


def test_the_dashboard_lists_what_cleared_and_how_often_it_came(harness, users, monkeypatch):
    """In a real browser: an alert that cleared by itself is listed under "cleared in the
    last 24 h" with who had acknowledged it; back, it shows its episode count and the
    acknowledgement (no button), in English and Chinese."""
    monkeypatch.setattr(api.live, "AGENT_REJOIN_S", 0.0)
    aid = "detector_flapping:bus-g/1/8"
    app = create_app(harness.gateway, settings(alert_check_s=0.3), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv, httpx.Client(base_url=srv.url) as http:
        r = http.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
        token = {"Authorization": f"Bearer {r.json()['token']}"}
        http.cookies.clear()

        def open_ids() -> set[str]:
            return {a["id"] for a in http.get("/api/v1/alerts", headers=token).json()}

        _flapping(harness, "flapping", 8, "A-009")
        assert _wait(lambda: aid in open_ids())
        url = f"/api/v1/alerts/{quote(aid, safe='')}/acknowledge"
        assert http.post(url, json={"note": NOTE}, headers=token).status_code == 200
        _flapping(harness, "ok", 8, "A-009")
        assert _wait(lambda: aid not in open_ids())
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(locale="en-GB")
                errors: list[str] = []
                page.on("pageerror", lambda e: errors.append(str(e)))
                page.goto(srv.url)
                page.fill("#login input[name=name]", "manager")
                page.fill("#login input[name=password]", PASSWORD)
                page.click("#login button[type=submit]")
                page.wait_for_selector("#alerts-cleared-box:not([hidden])", timeout=10000)
                page.click("#alerts-cleared-box summary")
                item = page.locator(f'#alerts-cleared li[data-alert="{aid}"]')
                text = item.inner_text()
                assert "bus-g/1/8 (A-009) is flapping" in text and "cleared" in text, text
                assert "manager" in text and NOTE in text, text

                _flapping(harness, "flapping", 8, "A-009")  # back within the day
                shown = page.locator(f'#alerts li[data-alert="{aid}"]')
                shown.wait_for(timeout=10000)
                page.wait_for_selector(f'#alerts li[data-alert="{aid}"] .episodes')
                text = shown.inner_text()
                assert "episode 2 in a row" in text and "manager" in text, text
                assert shown.locator("button.ack").count() == 0
                page.click("#lang")
                assert _wait(lambda: "第 2 次" in shown.inner_text(), 5)
                assert page.text_content("#alerts-cleared-box summary") == "最近24小时已恢复"
                assert not errors, errors
            finally:
                browser.close()
        _flapping(harness, "ok", 8, "A-009")
        assert _wait(lambda: aid not in open_ids())


def test_a_dead_node_names_its_spaces_zone_and_what_to_do():
    site = load_site(EXAMPLE_SITE)
    places = node_places(site)
    assert places["bus-b1/3"] == {
        "spaces": "B1-F-001…B1-F-030",
        "space_count": "30",
        "zones": "F",
    }
    now = time.time()
    health = HealthReport(
        agent="serial-bus-b1",
        source="bus-b1",
        ts=now,
        status="degraded",
        nodes=[NodeHealth(address=3, status="dead")],
    )
    agents = [AgentStatus("serial-bus-b1", True, now, health)]
    (alert,) = derive_alerts((), agents, now, 3600, places=places)
    assert alert.id == "node_dead:bus-b1/3"
    assert alert.details == {"agent": "serial-bus-b1", **places["bus-b1/3"]}
    zh, en = alert.message(72)
    assert en == (
        "node controller bus-b1/3 does not answer: its 30 spaces (B1-F-001…B1-F-030, zone F)"
        " turn unknown; check the node's power and bus cable"
    )
    assert "30 个车位" in zh and "B1-F-001…B1-F-030" in zh and "区域 F" in zh and "电源" in zh
    # without the site's word (a row read back after a restart): the action still
    zh, en = Alert(alert.id, "node_dead", "bus-b1/3", None).message(72)
    assert en.endswith("check the node's power and bus cable") and "电源" in zh


def test_an_erring_or_unreliable_node_is_named_by_its_spaces_too():
    """A technician sent to node bus-b1/3 for a Modbus exception or for CRC errors needs to
    find it as much as for a dead one: the site file says which bays hang on it."""
    site = load_site(EXAMPLE_SITE)
    places = node_places(site)
    now = time.time()
    health = HealthReport(
        agent="serial-bus-b1",
        source="bus-b1",
        ts=now,
        status="degraded",
        nodes=[
            NodeHealth(address=3, status="ok", errors={"exception": 2}),
            NodeHealth(address=2, status="slow", errors={"crc": 40}),
        ],
    )
    agents = [AgentStatus("serial-bus-b1", True, now, health)]
    alerts = {a.kind: a for a in derive_alerts((), agents, now, 3600, places=places)}
    assert set(alerts) == {"node_error", "node_unreliable"}
    erring, slow = alerts["node_error"], alerts["node_unreliable"]
    assert erring.details == {"agent": "serial-bus-b1", "exception": 2, **places["bus-b1/3"]}
    zh, en = erring.message(72)
    assert en.startswith(
        "node controller bus-b1/3 (30 spaces: B1-F-001…B1-F-030, zone F) answers exception 2"
    ), en
    assert zh.startswith("节点 bus-b1/3(30 个车位:B1-F-001…B1-F-030,区域 F) 回应异常 2"), zh
    zh, en = slow.message(72)
    assert en == (
        f"node controller bus-b1/2 (30 spaces: {places['bus-b1/2']['spaces']}, zone"
        f" {places['bus-b1/2']['zones']}) answers unreliably (CRC errors, timeouts): check"
        " wiring and termination"
    ), en
    assert places["bus-b1/2"]["spaces"] in zh and "通信不稳定" in zh
    # read back after a restart (no details): the plain text, as before
    assert (
        Alert(slow.id, "node_unreliable", "bus-b1/2", None)
        .message(72)[1]
        .startswith("node controller bus-b1/2 answers unreliably")
    )


def test_the_broker_alert_names_the_broker_and_what_to_do(tmp_path):
    view = _View()
    view.up = False
    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    monitor = api.live.AlertMonitor(
        view, book, api.live.LiveHub(view), 1.0, 3600, broker="10.0.0.5:1883"
    )  # type: ignore[arg-type]
    (rec,), _ = monitor.check()
    # the id stays: one broker per process, and an episode open across a restart is kept
    assert rec.alert.id == "broker_lost:mqtt" and rec.alert.subject == "10.0.0.5:1883"
    zh, en = rec.alert.message(72)
    assert en == (
        "the MQTT broker 10.0.0.5:1883 is not reachable, or refuses this service's login:"
        " agents and spaces are unknown until it is; check the broker service and its log,"
        " and the login in this service's environment file"
    )
    assert "10.0.0.5:1883" in zh and "请检查代理服务及其日志" in zh


def test_the_standalone_api_names_the_broker_it_cannot_reach(processes, tmp_path):
    """`parkguide api` with its broker down: broker_lost says which broker (the gateway's
    API is given its own the same way, gateway.cli)."""
    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    UserStore(str(db)).add("watch", "viewer", PASSWORD)
    dead = free_port()  # nothing listens there
    port = free_port()
    api_proc = processes.start(
        "api", "api", "--site", str(EXAMPLE_SITE), "--broker", f"mqtt://127.0.0.1:{dead}",
        "--db", str(db), "--http", f"127.0.0.1:{port}",
        env={"PARKGUIDE_SESSION_SECRET": "s" * 40, "PARKGUIDE_ALERT_CHECK_S": "0.5"},
    )  # fmt: skip
    wait_port(port, timeout=60)
    url = f"http://127.0.0.1:{port}"
    login = httpx.post(f"{url}/api/v1/auth/login", json={"name": "watch", "password": PASSWORD})
    h = {"Authorization": f"Bearer {login.json()['token']}"}

    def lost() -> list[dict]:
        alerts = httpx.get(f"{url}/api/v1/alerts", headers=h).json()
        return [a for a in alerts if a["kind"] == "broker_lost"]

    assert _wait(lost, 20), api_proc.log_tail()
    (alert,) = lost()
    assert alert["id"] == "broker_lost:mqtt" and alert["subject"] == f"127.0.0.1:{dead}"
    assert f"the MQTT broker 127.0.0.1:{dead} is not reachable" in alert["message"]["en"]
    assert "the login in this service's environment file" in alert["message"]["en"]
    assert "check the broker service and its log" in alert["message"]["en"]


class _View:
    def __init__(self) -> None:
        self.site = load_site(EXAMPLE_SITE)
        self.up = True

    def spaces(self):
        return []

    def recent_refusals(self):
        return {}

    def agents(self):
        return []

    def broker_connected(self) -> bool:
        return self.up

    def broker_back_since(self):
        return None
