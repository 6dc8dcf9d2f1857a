# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""What breaks reaches the operators: a dead gateway is an alert and a metric on the
stand-alone API, an agent of the site file that never connected is listed and alerted,
alerts and agents' wills are logged (a flapping agent's at most once a minute), and a node
answering unreliably ("slow": CRC errors, timeouts) is a warning."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path

import httpx
import paho.mqtt.client as mqtt
from api_support import (  # noqa: F401
    PASSWORD,
    GatewayHarness,
    client,
    harness,
    journal_with_users,
    settings,
    tokens,
    users,
)
from conftest import eventually, free_port, wait_port
from e2e_support import EXAMPLE_SITE, processes  # noqa: F401
from fastapi.testclient import TestClient
from gateway_support import Clocks

import api.alerts
import api.live
import gateway.live_read
from api.alerts import NEVER_SEEN_GRACE_S, Alert, AlertBook, derive_alerts
from api.app import create_app
from gateway.journal import Journal
from gateway.live import AVAILABILITY_LOG_INTERVAL_S
from gateway.readside import AgentStatus, LiveEvent
from parking import topics
from parking.payloads import DetectorHealth, HealthReport, NodeHealth
from parking.site import load_site

SITE = "xinyuan"
AGENTS = {"serial-bus-g", "serial-bus-b1", "camera-cam-c"}


def _wait(fn, timeout: float = 20.0):
    return eventually(fn, timeout)


def _metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


# -- 1. a dead gateway ---------------------------------------------------------------------------


def test_a_dead_gateway_is_a_critical_alert_a_metric_and_a_warning_on_the_standalone_api(
    processes, mosquitto, tmp_path
):
    """kill -9 of the gateway: its last will (retained ``offline``) raises the critical
    ``gateway_offline`` alert on `parkguide api`, /metrics says ``parkguide_gateway_up 0``
    and the log says so at WARNING (the view, and the alert book); back: cleared, INFO."""
    db = tmp_path / "journal.sqlite"
    site = ("--site", str(EXAMPLE_SITE))
    processes.add_user(db, "watch", "viewer", PASSWORD)
    gw_args = ("gateway", *site, "--broker", mosquitto.url, "--db", str(db))
    gateway = processes.start("gateway", *gw_args)
    port = free_port()
    api = processes.start(
        "api", "api", *site, "--broker", mosquitto.url, "--db", str(db),
        "--http", f"127.0.0.1:{port}",
        env={"PARKGUIDE_SESSION_SECRET": "s" * 40, "PARKGUIDE_ALERT_CHECK_S": "0.5",
             "PARKGUIDE_METRICS_TOKEN": "m" * 32},
    )  # fmt: skip
    wait_port(port, timeout=60)
    url = f"http://127.0.0.1:{port}"
    scrape = {"Authorization": "Bearer " + "m" * 32}
    login = httpx.post(f"{url}/api/v1/auth/login", json={"name": "watch", "password": PASSWORD})
    h = {"Authorization": f"Bearer {login.json()['token']}"}

    def up() -> float | None:
        return _metric(httpx.get(f"{url}/metrics", headers=scrape).text, "parkguide_gateway_up")

    def gateway_alerts() -> list[dict]:
        every = httpx.get(f"{url}/api/v1/alerts", headers=h).json()
        return [a for a in every if a["kind"] == "gateway_offline"]

    assert _wait(lambda: up() == 1.0, 60), processes.logs()
    assert gateway_alerts() == []

    gateway.kill9()  # the broker publishes its last will
    assert _wait(gateway_alerts), processes.logs()
    (alert,) = gateway_alerts()
    assert alert["id"] == f"gateway_offline:{SITE}" and alert["severity"] == "critical"
    assert "gateway" in alert["message"]["en"] and "offline" in alert["message"]["en"]
    assert "网关" in alert["message"]["zh"]
    text = httpx.get(f"{url}/metrics", headers=scrape).text
    assert _metric(text, "parkguide_gateway_up") == 0.0
    assert _metric(text, 'parkguide_alerts_open{severity="critical"}') >= 1
    log = Path(api.log_path)
    assert _wait(lambda: "WARNING api.alerts: alert raised (critical): the gateway" in
                 log.read_text()), api.log_tail()  # fmt: skip
    assert "WARNING api.mqttview: gateway is offline" in log.read_text()

    processes.start("gateway", *gw_args)  # back: cleared, and said at INFO
    assert _wait(lambda: up() == 1.0 and not gateway_alerts(), 60), processes.logs()
    assert _wait(lambda: "INFO api.alerts: alert cleared after" in log.read_text())
    assert "INFO api.mqttview: gateway is online" in log.read_text()


def test_the_gateway_alert_needs_the_broker():
    now = 1_000_000.0
    (alert,) = derive_alerts([], [], now, 3600, gateway_online=False, site=SITE)
    assert (alert.id, alert.severity) == (f"gateway_offline:{SITE}", "critical")
    zh, en = alert.message(72)
    assert en.startswith(f"the gateway (site {SITE}) is offline") and SITE in zh
    # without the broker the gateway's state is not known: that alert, not this one
    (lost,) = derive_alerts([], [], now, 3600, broker_up=False, gateway_online=False)
    assert lost.kind == "broker_lost"
    assert derive_alerts([], [], now, 3600, gateway_online=True) == []
    assert derive_alerts([], [], now, 3600, gateway_online=None) == []


class _View:
    """What the alert monitor asks of a stand-alone view, set by the test."""

    def __init__(self) -> None:
        self.site = load_site(EXAMPLE_SITE)
        self.agent_list: list[AgentStatus] = []
        self.gateway: bool | None = None

    def spaces(self):
        return []

    def recent_refusals(self):
        return {}

    def agents(self):
        return self.agent_list

    def broker_connected(self) -> bool:
        return True

    def broker_back_since(self):
        return time.time() - 3600  # connected long ago

    def gateway_online(self) -> bool | None:
        return self.gateway


def test_no_word_of_the_gateway_a_grace_after_connecting_is_a_gateway_alert(tmp_path):
    """No retained availability of the gateway at all (never started since the broker's
    last restart) is no gateway either, once the API has listened for a grace; and an
    acknowledged agent_never_seen episode is kept while a restarted API is within its grace."""
    view = _View()
    never = AgentStatus("serial-bus-g", False, None, None)
    view.agent_list = [never]
    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    monitor = api.live.AlertMonitor(view, book, api.live.LiveHub(view), 1.0, 3600)  # type: ignore[arg-type]
    assert monitor.check() == ([], [])  # just started: nothing known yet
    monitor._started -= NEVER_SEEN_GRACE_S
    monitor._listening_since -= NEVER_SEEN_GRACE_S
    raised, _ = monitor.check()
    assert {r.alert.id for r in raised} == {
        f"gateway_offline:{SITE}",
        "agent_never_seen:serial-bus-g",
    }
    book.acknowledge("agent_never_seen:serial-bus-g", "mgr", "unit ordered", time.time())
    view.gateway = True
    assert monitor.check()[1] == [f"gateway_offline:{SITE}"]

    restarted = AlertBook(str(tmp_path / "alerts.sqlite"))  # the API restarts
    again = api.live.AlertMonitor(view, restarted, api.live.LiveHub(view), 1.0, 3600)  # type: ignore[arg-type]
    again._started -= api.live.AGENT_REJOIN_S  # settled, but not yet a grace after listening
    assert again.check() == ([], [])
    (rec,) = restarted.current()
    assert (rec.alert.id, rec.acked_by) == ("agent_never_seen:serial-bus-g", "mgr")


# -- 2. an agent of the site file that never connected -----------------------------------------


def test_the_standalone_api_lists_and_alerts_agents_never_seen(mosquitto, tmp_path, monkeypatch):
    """Only the camera's agent connects: the two serial agents of the site file are listed
    (online false, last_seen null, heard false, status never_seen), counted in
    parkguide_agents, and a grace after the API reached the broker each is a critical
    ``agent_never_seen`` alert; one that connects clears its own."""
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig

    monkeypatch.setattr(api.alerts, "NEVER_SEEN_GRACE_S", 1.5)
    monkeypatch.setattr(api.live, "NEVER_SEEN_GRACE_S", 1.5)
    monkeypatch.setattr(api.live, "AGENT_REJOIN_S", 1.0)  # settled at once after the start
    db = journal_with_users(tmp_path)
    edge = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-edge")
    edge.connect("127.0.0.1", mosquitto.port)
    edge.loop_start()
    now = time.time()
    health = HealthReport(agent="camera-cam-c", source="cam-c", ts=now, fps=5.0)
    for topic, body in (
        (topics.gateway_availability(SITE), b"online"),
        (topics.edge_availability(SITE, "camera-cam-c"), b"online"),
        (topics.edge_health(SITE, "camera-cam-c"), health.model_dump_json().encode()),
    ):
        edge.publish(topic, body, qos=1, retain=True).wait_for_publish(5)
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig.from_url(mosquitto.url), str(db))
    view.start()
    app = create_app(view, settings(alert_check_s=0.2), db_path=str(db))
    try:
        with TestClient(app) as c:
            r = c.post("/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            assert _wait(lambda: view.gateway_online() is True)
            agents = {a["agent"]: a for a in c.get("/api/v1/agents", headers=h).json()}
            assert set(agents) == AGENTS
            for name, bus in (("serial-bus-g", "bus-g"), ("serial-bus-b1", "bus-b1")):
                a = agents[name]
                assert (a["online"], a["last_seen"], a["heard"]) == (False, None, False)
                assert (a["status"], a["source"]) == ("never_seen", bus)
            assert agents["camera-cam-c"]["heard"] and agents["camera-cam-c"]["online"]
            metrics = c.get("/metrics", headers=h).text
            assert _metric(metrics, "parkguide_agents") == 3
            assert _metric(metrics, "parkguide_agents_online") == 1
            assert _metric(metrics, "parkguide_agents_never_seen") == 2

            def never_seen() -> set[str]:
                every = c.get("/api/v1/alerts", headers=h).json()
                return {a["id"] for a in every if a["kind"] == "agent_never_seen"}

            wanted = {"agent_never_seen:serial-bus-g", "agent_never_seen:serial-bus-b1"}
            assert _wait(lambda: never_seen() == wanted)
            alert = next(
                a
                for a in c.get("/api/v1/alerts", headers=h).json()
                if a["id"] == "agent_never_seen:serial-bus-g"
            )
            assert alert["severity"] == "critical"
            assert "serial-bus-g" in alert["message"]["en"] and "never" in alert["message"]["en"]
            # the unit is started after all: its alert clears, the other stays
            edge.publish(
                topics.edge_availability(SITE, "serial-bus-g"), b"online", qos=1, retain=True
            ).wait_for_publish(5)
            assert _wait(lambda: never_seen() == {"agent_never_seen:serial-bus-b1"})
    finally:
        view.stop()
        edge.loop_stop()
        edge.disconnect()


def test_the_gateway_lists_every_agent_of_the_site_file(example_site, tmp_path):
    """In process too: an agent never heard from is listed, offline with no last_seen; one
    whose will came (heard, then gone) is offline with a last_seen: agent_offline, not
    agent_never_seen, also after a restart; never seen only a grace after the start."""
    clocks = Clocks(1_000_000.0)
    journal = Journal(tmp_path / "journal.sqlite")
    gw = clocks.gateway(example_site, journal, lambda *a: None)
    listed = {a.agent: a for a in gw.agents()}
    assert set(listed) == AGENTS
    assert all(not a.online and a.last_seen is None and a.health is None for a in listed.values())
    gw.handle(topics.edge_availability(SITE, "camera-cam-c"), b"online")
    gw.handle(topics.edge_availability(SITE, "camera-cam-c"), b"offline")
    now = clocks.wall
    early = derive_alerts([], gw.agents(), now, 3600, listening_since=now - 10)
    assert {a.id for a in early} == {"agent_offline:camera-cam-c"}
    late = derive_alerts([], gw.agents(), now, 3600, listening_since=now - NEVER_SEEN_GRACE_S)
    assert {a.id for a in late} == {
        "agent_offline:camera-cam-c",
        "agent_never_seen:serial-bus-g",
        "agent_never_seen:serial-bus-b1",
    }
    journal.close()
    again = clocks.gateway(example_site, Journal(tmp_path / "journal.sqlite"), lambda *a: None)
    camera = next(a for a in again.agents() if a.agent == "camera-cam-c")
    assert camera.last_seen == now and not camera.online
    again.journal.close()


# -- 3. logging -----------------------------------------------------------------------------------

DEAD = Alert("node_dead:bus-b1/2", "node_dead", "bus-b1/2", None, {"agent": "serial-bus-b1"})
LONG = Alert("long_occupied:A-001", "long_occupied", "A-001", 0.0, {"zone": "A"})


def test_the_alert_book_logs_each_episode_once_when_it_opens_and_when_it_clears(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="api.alerts")
    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    now = time.time()
    book.update([DEAD, LONG], now, long_occupied_h=72)
    book.update([DEAD, LONG], now + 5, long_occupied_h=72)  # still open: nothing more
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "api.alerts"]
    assert lines == [
        (
            logging.WARNING,
            "alert raised (critical): node controller bus-b1/2 does not answer: check the node's"
            " power and bus cable [node_dead:bus-b1/2, subject bus-b1/2]",
        ),
        (
            logging.INFO,
            "alert raised (info): space A-001 occupied over 72 h "
            "[long_occupied:A-001, subject A-001]",
        ),
    ]
    caplog.clear()
    book.update([LONG], now + 30)
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == "api.alerts"]
    assert lines == [
        (
            logging.INFO,
            "alert cleared after 30 s: node controller bus-b1/2 does not answer: check the node's"
            " power and bus cable [node_dead:bus-b1/2, subject bus-b1/2]",
        )
    ]
    caplog.clear()
    AlertBook(str(tmp_path / "alerts.sqlite")).update([LONG], now + 40)  # a restart: no news
    assert [r for r in caplog.records if r.name == "api.alerts"] == []


def test_a_flapping_alert_does_not_flood_the_apis_log(tmp_path, caplog):
    """An agent going offline and back every few seconds: one raise (and its clear) a
    minute, the episodes in between counted, and its state said once it is quiet."""
    caplog.set_level(logging.INFO, logger="api.alerts")
    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    gone = Alert("agent_offline:camera-cam-c", "agent_offline", "camera-cam-c", None)
    t = time.time()
    for i in range(10):  # five episodes in 20 s
        book.update([gone] if i % 2 == 0 else [], t + 2 * i)
    said = [r.getMessage() for r in caplog.records if r.name == "api.alerts"]
    assert len(said) == 2
    assert said[0].startswith("alert raised (critical): edge agent camera-cam-c is offline")
    assert said[1].startswith("alert cleared after 2 s: edge agent camera-cam-c is offline")
    caplog.clear()
    book.update([], t + 61)  # quiet a minute after its last line: its state now, with the count
    (line,) = [r for r in caplog.records if r.name == "api.alerts"]
    assert (line.levelno, line.getMessage()) == (
        logging.INFO,
        "alert cleared: edge agent camera-cam-c is offline [agent_offline:camera-cam-c, "
        "subject camera-cam-c] (8 more raises and clears not logged: it flaps)",
    )
    caplog.clear()
    book.update([gone], t + 200)  # a new episode later: news again
    (line,) = [r for r in caplog.records if r.name == "api.alerts"]
    assert line.levelno == logging.WARNING and "(" + "critical)" in line.getMessage()


def test_the_gateway_logs_an_agents_will_and_return_at_most_once_a_minute(
    example_site, tmp_path, caplog
):
    """kill -9 of an agent: its will is a WARNING, its return an INFO; a flapping agent
    gets one line a minute, the changes in between counted (and its state once the minute
    is over, so the log does not end on a state long gone)."""
    caplog.set_level(logging.DEBUG, logger="gateway.live")
    clocks = Clocks(1_000_000.0)
    journal = Journal(tmp_path / "journal.sqlite")
    gw = clocks.gateway(example_site, journal, lambda *a: None)
    agent = topics.edge_availability(SITE, "camera-cam-c")

    def said() -> list[tuple[int, str]]:
        out = [
            (r.levelno, r.getMessage())
            for r in caplog.records
            if r.name == "gateway.live" and r.levelno >= logging.INFO and "edge agent" in r.msg
        ]
        caplog.clear()
        return out

    gw.handle(agent, b"online")
    assert said() == [(logging.INFO, "edge agent camera-cam-c is online")]
    gw.handle(agent, b"online")  # the same again (retained, on a reconnect): no news
    assert said() == []
    clocks.advance(AVAILABILITY_LOG_INTERVAL_S)
    gw.handle(agent, b"offline")
    ((level, text),) = said()
    assert level == logging.WARNING and text.startswith("edge agent camera-cam-c is offline")
    clocks.advance(2)
    gw.handle(agent, b"online")  # back after a logged offline: said at once
    assert said() == [(logging.INFO, "edge agent camera-cam-c is online")]
    for i in range(5):  # it flaps: within the minute, nothing more at INFO or above
        clocks.advance(2)
        gw.handle(agent, b"offline" if i % 2 == 0 else b"online")
    gw.handle(agent, b"offline")  # the same as the last: not a change
    assert said() == []
    clocks.advance(AVAILABILITY_LOG_INTERVAL_S)
    gw.tick()
    assert said() == [
        (
            logging.WARNING,
            "edge agent camera-cam-c is offline (its last will: stopped, crashed, or cut off "
            "from the broker); its spaces are unknown until it is back "
            "(5 more changes in the last 70 s not logged: it flaps)",
        )
    ]
    gw.tick()  # said once
    assert said() == []
    journal.close()


def test_agent_back_after_a_broker_restart_is_said_at_once(example_site, tmp_path, caplog):
    """A broker restart (the agent's will, then its return 25 s later) is no flapping: the
    return is logged at once and without "it flaps"; a change or two not logged within the
    minute are counted without calling it flapping."""
    caplog.set_level(logging.DEBUG, logger="gateway.live")
    clocks = Clocks(1_000_000.0)
    journal = Journal(tmp_path / "journal.sqlite")
    gw = clocks.gateway(example_site, journal, lambda *a: None)
    agent = topics.edge_availability(SITE, "camera-cam-c")

    def said() -> list[str]:
        out = [
            r.getMessage()
            for r in caplog.records
            if r.name == "gateway.live" and r.levelno >= logging.INFO and "edge agent" in r.msg
        ]
        caplog.clear()
        return out

    gw.handle(agent, b"online")
    clocks.advance(AVAILABILITY_LOG_INTERVAL_S)
    gw.handle(agent, b"offline")
    assert len(said()) == 2
    clocks.advance(25)
    gw.handle(agent, b"online")
    assert said() == ["edge agent camera-cam-c is online"]
    clocks.advance(5)
    gw.handle(agent, b"offline")  # within the minute of the last line: counted
    assert said() == []
    clocks.advance(AVAILABILITY_LOG_INTERVAL_S)
    gw.tick()
    (text,) = said()
    assert text.endswith("(1 more change in the last 65 s not logged)"), text
    journal.close()


# -- 4. a node answering unreliably ---------------------------------------------------------------


def _bus_health(now: float, *nodes: NodeHealth, status: str = "degraded") -> HealthReport:
    return HealthReport(
        agent="serial-bus-b1", source="bus-b1", ts=now, status=status, nodes=list(nodes)
    )


def test_a_slow_node_is_a_node_unreliable_warning_unless_dead_or_the_bus_is_blind():
    now = 1_000_000.0
    slow = NodeHealth(address=3, status="slow", errors={"crc": 40, "timeouts": 7},
                      detectors=[DetectorHealth(index=0, status="ok")])  # fmt: skip
    dead = NodeHealth(address=2, status="dead")
    h = _bus_health(now, slow, dead, NodeHealth(address=1, status="ok"))
    alerts = {a.id: a for a in derive_alerts([], [AgentStatus(h.agent, True, now, h)], now, 3600)}
    assert set(alerts) == {"node_unreliable:bus-b1/3", "node_dead:bus-b1/2"}
    unreliable = alerts["node_unreliable:bus-b1/3"]
    assert unreliable.severity == "warning"
    zh, en = unreliable.message(72)
    assert en == (
        "node controller bus-b1/3 answers unreliably (CRC errors, timeouts): "
        "check wiring and termination"
    )
    assert zh.startswith("节点 bus-b1/3 通信不稳定")
    # a blind bus is one bus alert, not one per node, whatever the nodes say
    blind = _bus_health(now, slow, dead, status="blind")
    ids = {a.id for a in derive_alerts([], [AgentStatus(h.agent, True, now, blind)], now, 3600)}
    assert ids == {"bus_blind:bus-b1"}
    # an offline agent's stale health says nothing
    assert {a.kind for a in derive_alerts([], [AgentStatus(h.agent, False, now, h)], now, 3600)} \
        == {"agent_offline"}  # fmt: skip


def test_a_slow_node_reaches_the_alerts_and_clears_and_unseen_agents_are_listed(
    client, tokens, harness, monkeypatch
):
    """Through the gateway's own API (in process): before any agent is heard, /agents lists
    every agent of the site file as never seen; a node reported "slow" is a warning that
    clears when it is "ok" again."""
    agents = {a["agent"]: a for a in client.get("/api/v1/agents", headers=tokens["viewer"]).json()}
    assert set(agents) == AGENTS
    assert all(not a["heard"] and a["status"] == "never_seen" for a in agents.values())
    metrics = client.get("/metrics", headers=tokens["viewer"]).text
    assert _metric(metrics, "parkguide_gateway_up") == 1  # the gateway's own API: it is up
    assert _metric(metrics, "parkguide_agents") == 3

    def send(status: str) -> None:
        h = _bus_health(time.time(), NodeHealth(address=3, status=status))
        harness.gateway.handle(
            topics.edge_health(SITE, "serial-bus-b1"), h.model_dump_json().encode()
        )

    def unreliable() -> list[dict]:
        every = client.get("/api/v1/alerts", headers=tokens["viewer"]).json()
        return [a for a in every if a["kind"] == "node_unreliable"]

    harness.gateway.handle(topics.edge_availability(SITE, "serial-bus-b1"), b"online")
    send("slow")
    assert _wait(unreliable, 10)
    (alert,) = unreliable()
    assert (alert["id"], alert["severity"]) == ("node_unreliable:bus-b1/3", "warning")
    # where the node is, from the site file (B1-F-001…B1-F-030 hang on node 3)
    assert alert["details"] == {
        "agent": "serial-bus-b1", "spaces": "B1-F-001…B1-F-030", "space_count": "30",
        "zones": "F",
    }  # fmt: skip
    assert (
        "bus-b1/3 (30 spaces: B1-F-001…B1-F-030, zone F) answers unreliably"
        in alert["message"]["en"]
    )
    monkeypatch.setattr(api.live, "AGENT_REJOIN_S", 0.0)  # the API just started: settled now
    send("ok")
    assert _wait(lambda: not unreliable(), 10)
    heard = {a["agent"]: a for a in client.get("/api/v1/agents", headers=tokens["viewer"]).json()}
    assert heard["serial-bus-b1"]["heard"] and heard["serial-bus-b1"]["status"] == "degraded"


def test_a_replayed_last_will_does_not_make_a_long_dead_agent_recent(example_site, tmp_path):
    """The broker replays an agent's retained last will at every gateway (re)connect: it is
    not the agent heard now, so its last_seen stays when it was last heard."""
    from gateway_support import Clocks

    from gateway.journal import Journal
    from parking import topics as t

    clocks = Clocks(1_800_000_000.0)
    gw = clocks.gateway(example_site, Journal(tmp_path / "j.sqlite"), lambda *a: None)
    agent = "serial-bus-g"
    gw.handle(t.edge_availability(example_site.id, agent), b"online")
    clocks.advance(3 * 86400)  # it died days ago; its will is replayed now
    gw.handle(t.edge_availability(example_site.id, agent), b"offline")
    (status,) = [a for a in gw.agents() if a.agent == agent]
    assert status.last_seen == 1_800_000_000.0 and not status.online


# -- 5. a big site: agents' health does not hold up reports --------------------------------------


def test_agent_events_derive_agent_alerts_without_listing_the_spaces(tmp_path):
    """Defect (20,000 spaces): every agent event listed every space to re-derive alerts (with
    the gateway's lock held), so signs lagged whenever an agent sent health. Agent events now
    re-derive the agents' alerts; the spaces' (a long stay) are kept from the periodic check."""
    h = GatewayHarness(load_site(EXAMPLE_SITE), tmp_path / "journal.sqlite")
    parked = h.site.spaces[0].id
    h.fill(occupied=[parked])
    listed = []
    real_spaces = h.gateway.spaces
    h.gateway.spaces = lambda: listed.append(1) or real_spaces()  # type: ignore[method-assign]
    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    hub = api.live.LiveHub(h.gateway)
    monitor = api.live.AlertMonitor(h.gateway, book, hub, 60.0, 0.001)  # type: ignore[arg-type]
    dead = _bus_health(time.time(), NodeHealth(address=2, status="dead"))

    def open_ids() -> set[str]:
        return {r.alert.id for r in book.current()}

    async def run() -> None:
        monitor.start()
        try:
            for _ in range(100):  # the first check: the long stay raised
                if f"long_occupied:{parked}" in open_ids():
                    break
                await asyncio.sleep(0.05)
            h.gateway.handle(topics.edge_health(SITE, dead.agent), dead.model_dump_json().encode())
            for _ in range(5):  # agents report: each event wakes the monitor
                hub.publish(LiveEvent("agent", {"agent": dead.agent}, time.time()))
                await asyncio.sleep(0.3)
        finally:
            await monitor.stop()

    try:
        asyncio.run(run())
        ids = open_ids()
        assert f"node_dead:{dead.source}/2" in ids, ids  # the agent event was acted on
        assert f"long_occupied:{parked}" in ids, ids  # and the long stay kept meanwhile
        assert len(listed) == 1, len(listed)  # the spaces listed on the periodic check only
    finally:
        h.close()


def test_listing_the_spaces_builds_them_outside_the_gateways_lock(tmp_path, monkeypatch):
    """Reports wait on the gateway's lock: listing 20,000 spaces must not build their objects
    while holding it (only the arrays are copied under it)."""
    h = GatewayHarness(load_site(EXAMPLE_SITE), tmp_path / "journal.sqlite")
    h.fill(occupied=[h.site.spaces[0].id])
    built_locked = []
    real = gateway.live_read.SpaceStatus

    def space_status(**kw):
        built_locked.append(h.gateway.lock._is_owned())  # type: ignore[attr-defined]
        return real(**kw)

    monkeypatch.setattr(gateway.live_read, "SpaceStatus", space_status)
    try:
        spaces = h.gateway.spaces()
        assert len(spaces) == len(h.site.spaces) == len(built_locked)
        assert not any(built_locked)
        first = spaces[0]
        assert (first.state, first.source is not None, first.held) == ("occupied", True, False)
        assert isinstance(first.since, float) and isinstance(first.held, bool)
    finally:
        h.close()


def test_an_acknowledged_battery_alert_survives_a_warm_day(tmp_path):
    """Through the monitor: at 20 % the alert opens and is acknowledged ("battery ordered");
    at 21 % (a warm afternoon) it stays open with its acknowledgement; replaced, it ends."""
    view = _View()
    view.gateway = True

    def health(battery: int) -> None:
        detector = DetectorHealth(index=4, space="B1-E-005", status="ok", battery=battery)
        h = _bus_health(time.time(), NodeHealth(address=1, status="ok", detectors=[detector]))
        view.agent_list = [AgentStatus(h.agent, True, time.time(), h)]

    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    monitor = api.live.AlertMonitor(view, book, api.live.LiveHub(view), 1.0, 3600)  # type: ignore[arg-type]
    monitor._started -= api.live.AGENT_REJOIN_S
    aid = "battery_low:bus-b1/1/4"
    health(20)
    raised, _ = monitor.check()
    assert [r.alert.id for r in raised] == [aid]
    book.acknowledge(aid, "mgr", "battery ordered", time.time())
    health(21)
    assert monitor.check() == ([], [])
    (rec,) = book.current()
    assert (rec.alert.id, rec.acked_by, rec.note) == (aid, "mgr", "battery ordered")
    health(95)
    assert monitor.check()[1] == [aid]


def test_a_gate_whose_arrivals_are_refused_is_an_alert(tmp_path):
    """A gate controller sending its time in milliseconds: every arrival refused, every car
    at that gate unguided, and only the gate was told why (a counter on /metrics). The
    managers now get a warning naming the entrance and the reason, from the gateway's own
    view and from a stand-alone API's, which hears the refusals."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from gateway.readside import REFUSALS_WINDOW_S, RefusalLog
    from parking.broker import BrokerConfig

    h = GatewayHarness(load_site(EXAMPLE_SITE), tmp_path / "journal.sqlite")
    try:
        bad = b'{"class": "resident", "ts": 1796500000000}'
        h.gateway.handle(topics.arrival(SITE, "north"), bad)
        book = AlertBook(str(tmp_path / "alerts.sqlite"))
        monitor = api.live.AlertMonitor(h.gateway, book, api.live.LiveHub(h.gateway), 1.0, 3600)  # type: ignore[arg-type]
        monitor._started -= api.live.AGENT_REJOIN_S
        raised, _ = monitor.check()
        (alert,) = [r.alert for r in raised if r.alert.kind == "arrivals_refused"]
        assert alert.id == "arrivals_refused:north" and alert.severity == "warning"
        zh, en = alert.message(72)
        reason = alert.details["reason"]
        assert en.startswith(f"arrivals at entrance north are refused by the gateway ({reason})")
        assert "north" in zh and reason in zh
    finally:
        h.close()
    # the window: recent ones count, none for REFUSALS_WINDOW_S ends it
    log = RefusalLog()
    log.note("east", "schema", "ts: too large", 1000.0)
    assert log.recent(1000.0 + REFUSALS_WINDOW_S - 1)["east"].count == 1
    assert log.recent(1000.0 + REFUSALS_WINDOW_S + 1) == {}
    # a stand-alone view: from the refusal topic (not the broker's retained copies); an
    # entrance the site file does not name is "?"
    db = tmp_path / "standalone.sqlite"
    Journal(db).close()
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", 1), str(db))
    body = {"entrance": "east", "reason": "schema", "detail": "ts", "ts": time.time()}
    view._handle(topics.arrival_refusal(SITE, "east"), json.dumps(body).encode())
    stray = body | {"entrance": "west"}
    view._handle(topics.arrival_refusal(SITE, "west"), json.dumps(stray).encode())
    old = body | {"entrance": "north"}
    view._handle(topics.arrival_refusal(SITE, "north"), json.dumps(old).encode(), retained=True)
    assert sorted(view.recent_refusals()) == ["?", "east"]


def test_a_managers_action_is_logged_as_opened_or_closed(example_site, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="gateway.live")
    clocks = Clocks(1_000_000.0)
    journal = Journal(tmp_path / "journal.sqlite")
    gw = clocks.gateway(example_site, journal, lambda *a: None)
    space = example_site.spaces[0].id
    gw.control_space(space, "close", "mgr", "paint")
    gw.control_space(space, "open", "mgr", "done")
    lines = [r.getMessage() for r in caplog.records if r.msg.startswith("space ")]
    assert lines == [f"space {space} closed by mgr: paint", f"space {space} opened by mgr: done"]
    journal.close()
