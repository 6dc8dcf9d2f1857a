"""One forged report with a new boot (a stolen agent login) shuts the real agent out: its
live reports are refused as ``stale_boot``. That is an ``agent_boot_conflict`` alert, on the
gateway's API and on a stand-alone one, and the agent's status is not ``ok`` while it lasts."""

from __future__ import annotations

import json
import time

import httpx
import paho.mqtt.client as mqtt
from api_support import PASSWORD
from conftest import free_port, wait_port
from e2e_support import EXAMPLE_SITE, processes  # noqa: F401
from gateway_support import Clocks

import api.live
from api.alerts import derive_alerts
from gateway.journal import Journal
from gateway.readside import (
    BOOT_CONFLICT_CLEAR_S,
    BOOT_CONFLICT_WINDOW_S,
    BOOT_CONFLICTS_KEY,
    BootConflictLog,
)
from parking import topics
from parking.site import load_site

SITE = "xinyuan"
AGENT = "serial-bus-g"
REAL, FORGED = "realboot0001", "evilboot0001"


def _report(boot: str, seq: int, ts: float, space: str = "A-010") -> bytes:
    body = {
        "v": 1,
        "agent": AGENT,
        "source": "bus-g",
        "boot": boot,
        "seq": seq,
        "ts": ts,
        "kind": "delta",
        "spaces": [{"space": space, "state": "occupied", "since": ts, "confidence": 1.0}],
    }
    return json.dumps(body).encode()


def _wait(fn, timeout: float = 30.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        got = fn()
        if got:
            return got
        time.sleep(0.2)
    return fn()


def test_a_forged_boot_that_shuts_the_agent_out_is_a_critical_alert_on_both_apis(
    processes,  # noqa: F811
    mosquitto,
    tmp_path,
):
    """Real gateway (with its API) and a stand-alone API on one journal and broker: the real
    agent reports, one report of a forged boot is taken, and the real agent's next reports
    are refused. Both APIs raise ``agent_boot_conflict:serial-bus-g`` naming both boots,
    and /agents says ``boot_conflict``, not ``ok``."""
    db = tmp_path / "journal.sqlite"
    site = ("--site", str(EXAMPLE_SITE))
    processes.add_user(db, "watch", "viewer", PASSWORD)
    env = {"PARKGUIDE_SESSION_SECRET": "s" * 40, "PARKGUIDE_ALERT_CHECK_S": "0.5"}
    gw_port, api_port = free_port(), free_port()
    processes.start("gateway", "gateway", *site, "--broker", mosquitto.url, "--db", str(db),
                    "--http", f"127.0.0.1:{gw_port}", env=env)  # fmt: skip
    wait_port(gw_port, timeout=60)
    processes.start("api", "api", *site, "--broker", mosquitto.url, "--db", str(db),
                    "--http", f"127.0.0.1:{api_port}", env=env)  # fmt: skip
    wait_port(api_port, timeout=60)
    heads = {}
    for port in (gw_port, api_port):
        url = f"http://127.0.0.1:{port}"
        login = httpx.post(f"{url}/api/v1/auth/login", json={"name": "watch", "password": PASSWORD})
        heads[url] = {"Authorization": f"Bearer {login.json()['token']}"}

    edge = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-real-agent")
    edge.connect("127.0.0.1", mosquitto.port)
    edge.loop_start()
    topic = topics.edge_occupancy(SITE, AGENT)
    try:
        edge.publish(topics.edge_availability(SITE, AGENT), b"online", qos=1, retain=True)
        edge.publish(topic, _report(REAL, 1, time.time()), qos=1).wait_for_publish(5)
        time.sleep(0.5)
        # the attacker, with the agent's login: one report of a new boot
        edge.publish(topic, _report(FORGED, 1, time.time()), qos=1).wait_for_publish(5)
        time.sleep(0.5)
        for seq in range(2, 6):  # the real agent goes on: refused as stale_boot
            edge.publish(topic, _report(REAL, seq, time.time()), qos=1).wait_for_publish(5)
            time.sleep(0.3)

        for url, h in heads.items():

            def conflict(url=url, h=h) -> list[dict]:
                every = httpx.get(f"{url}/api/v1/alerts", headers=h).json()
                return [a for a in every if a["kind"] == "agent_boot_conflict"]

            found = _wait(conflict)
            assert found, (url, processes.logs())
            (alert,) = found
            assert alert["id"] == f"agent_boot_conflict:{AGENT}"
            assert alert["severity"] == "critical"
            en = alert["message"]["en"]
            assert REAL in en and FORGED in en and "password" in en, en
            assert REAL in alert["message"]["zh"]
            agents = {a["agent"]: a for a in httpx.get(f"{url}/api/v1/agents", headers=h).json()}
            a = agents[AGENT]
            assert a["status"] == "boot_conflict", a
            assert a["boot_conflict"]["boot"] == FORGED
            assert a["boot_conflict"]["refused_boot"] == REAL
            assert a["boot_conflict"]["refused"] >= 3
            assert agents["serial-bus-b1"]["boot_conflict"] is None
        assert "may be stolen" in processes.logs()
    finally:
        edge.loop_stop()
        edge.disconnect()


def test_the_conflict_ends_once_the_refusals_stop_and_a_replay_is_no_conflict(
    example_site, tmp_path
):
    """In process, with the gateway's clocks: raised by the third live refusal within the
    window, named to a stand-alone view through the journal, and ended (in both) once no
    refusal came for BOOT_CONFLICT_CLEAR_S. A replay of the old boot (stamped long ago)
    is refused but no conflict."""
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig

    clocks = Clocks(time.time())
    journal = Journal(tmp_path / "journal.sqlite")
    gw = clocks.gateway(example_site, journal, lambda *a: None)
    topic = topics.edge_occupancy(SITE, AGENT)
    gw.handle(topic, _report(REAL, 1, clocks.wall))
    clocks.advance(1)
    gw.handle(topic, _report(FORGED, 1, clocks.wall))
    clocks.advance(1)
    replay = _report(REAL, 40, clocks.wall - 3600, space="A-011")
    for _ in range(3):  # a replay of the old boot: refused, not live, no conflict
        gw.handle(topic, replay)
    assert gw.rejections.counts.get("stale_boot") == 3
    assert all(a.boot_conflict is None for a in gw.agents())
    for seq in (2, 3):
        gw.handle(topic, _report(REAL, seq, clocks.wall))
        clocks.advance(1)
    assert all(a.boot_conflict is None for a in gw.agents())  # two are not yet a conflict
    gw.handle(topic, _report(REAL, 4, clocks.wall))
    (shut,) = [a for a in gw.agents() if a.boot_conflict is not None]
    assert shut.agent == AGENT and shut.boot_conflict.refused_boot == REAL
    alerts = derive_alerts([], gw.agents(), clocks.wall, 3600)
    (alert,) = [a for a in alerts if a.kind == "agent_boot_conflict"]
    assert alert.severity == "critical" and alert.details == {"boot": FORGED, "refused_boot": REAL}

    # the stand-alone view reads it from the journal
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", 1), str(journal.path))
    view._load_journal()
    view.gateway_clock_offset = clocks.wall - time.time()
    (seen,) = [a for a in view.agents() if a.boot_conflict is not None]
    assert seen.agent == AGENT and seen.boot_conflict.boot == FORGED

    # the real agent was restarted (or stopped): no more refusals; ended in both views
    clocks.advance(BOOT_CONFLICT_CLEAR_S + 60)
    assert all(a.boot_conflict is None for a in gw.agents())
    assert not [a for a in derive_alerts([], gw.agents(), clocks.wall, 3600)
                if a.kind == "agent_boot_conflict"]  # fmt: skip
    view.gateway_clock_offset = clocks.wall - time.time()
    assert all(a.boot_conflict is None for a in view.agents())
    assert journal.meta(BOOT_CONFLICTS_KEY)
    journal.close()


def test_refusals_spread_wider_than_the_window_are_no_conflict():
    log = BootConflictLog()
    step = BOOT_CONFLICT_WINDOW_S / 2 + 1
    for i in range(3):
        assert not log.note(AGENT, REAL, FORGED, 1000.0 + i * step)
    assert log.recent(1000.0 + 3 * step) == {}
    assert log.note(AGENT, REAL, FORGED, 1000.0 + 2 * step + 1)  # third within the window
    assert log.recent(1000.0 + 3 * step)[AGENT].refused == 3


def test_the_alert_monitor_of_the_gateway_raises_it(example_site, tmp_path):
    """The managers' dashboard on the gateway: the alert is in the book, with its message."""
    from api.alerts import AlertBook

    clocks = Clocks(time.time())
    journal = Journal(tmp_path / "journal.sqlite")
    gw = clocks.gateway(example_site, journal, lambda *a: None)
    topic = topics.edge_occupancy(SITE, AGENT)
    gw.handle(topic, _report(REAL, 1, clocks.wall))
    gw.handle(topic, _report(FORGED, 1, clocks.wall + 0.5))
    for seq in (2, 3, 4):
        gw.handle(topic, _report(REAL, seq, clocks.wall + 1))
    book = AlertBook(str(tmp_path / "alerts.sqlite"))
    monitor = api.live.AlertMonitor(gw, book, api.live.LiveHub(gw), 1.0, 3600)  # type: ignore[arg-type]
    monitor._started -= api.live.AGENT_REJOIN_S
    raised, _ = monitor.check()
    ids = {r.alert.id for r in raised}
    assert f"agent_boot_conflict:{AGENT}" in ids, ids
    journal.close()
