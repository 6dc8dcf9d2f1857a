"""`parkguide api --site A.yaml` beside a gateway started with B.yaml (same broker, same
journal): the gateway journals its site file's digest (meta ``site_digest``, ``site_id``);
the API compares it with its own, says so once in its log, keeps a critical
``site_mismatch`` alert open while they differ, and refuses (409) the commands it would send
the gateway, which would be refused there (``unknown_space``) or applied to another space.

The stand-alone API's own view (``api.mqttview.MqttLiveView``) on a real mosquitto and a
journal made by the real ``gateway.journal.Journal``; a listener on the broker tells whether a
command reached the control topic."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from api_support import PASSWORD, settings, user_template
from fastapi.testclient import TestClient

from api.app import create_app
from api.auth import UserStore
from api.mqttview import MqttLiveView
from gateway.journal import Journal
from parking import topics
from parking.broker import BrokerConfig
from parking.site import EXAMPLE_SITE, Site, load_site

REPO = Path(__file__).resolve().parent.parent
OTHER_SITE = REPO / "examples" / "small-site.yaml"  # another community: site "courtyard"
LOGGER = "api.sitecheck"


def edited_copy(tmp_path: Path) -> Site:
    """B.yaml: the example site with one more zone (a leftover the API's file lacks), under
    the same site id."""
    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    zone = "  - {id: R, level: G, name: {zh: R区, en: Zone R}}\n"
    path = tmp_path / "B.yaml"
    path.write_text(text.replace("zones:\n", "zones:\n" + zone, 1), encoding="utf-8")
    return load_site(path)


class Control:
    """Listens on the broker to the site's space control topic, as the gateway does, and
    says it is online (the API sends no command to a gateway it does not hear)."""

    def __init__(self, broker_port: int, site: str):
        self.received: list[str] = []
        self._subscribed = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-control")
        self.client.on_message = lambda c, u, msg: self.received.append(msg.topic)
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", broker_port)
        self.client.loop_start()
        self.client.subscribe(topics.space_control_all(site), qos=1)
        assert self._subscribed.wait(10)
        online = topics.gateway_availability(site)
        self.client.publish(online, topics.ONLINE, qos=1, retain=True).wait_for_publish(5)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def journal(tmp_path) -> Iterator[Journal]:
    """The gateway's journal (the real Journal), with a manager who can log in."""
    db = tmp_path / "journal.sqlite"
    j = Journal(db)
    UserStore(str(db))
    with sqlite3.connect(db) as conn:
        conn.execute("ATTACH DATABASE ? AS template", (str(user_template()),))
        conn.execute("INSERT OR REPLACE INTO users SELECT * FROM template.users")
    yield j
    j.close()


def gateway_started_with(journal: Journal, site: Site) -> None:
    """What the gateway writes into its journal at every start."""
    journal.set_meta("site_digest", site.digest)
    journal.set_meta("site_id", site.id)


class Api:
    """The stand-alone API on the example site (A.yaml), as ``parkguide api`` runs it."""

    def __init__(self, journal: Journal, mosquitto, **overrides):
        self.site = load_site(EXAMPLE_SITE)
        self.view = MqttLiveView(self.site, BrokerConfig.from_url(mosquitto.url), str(journal.path))
        self.app = create_app(self.view, settings(**overrides), db_path=str(journal.path))
        self.control = Control(mosquitto.port, self.site.id)

    def __enter__(self) -> Api:
        self.view.start()
        assert self.view.connected.wait(10)
        assert wait_for(lambda: self.view.gateway_online())
        self.client = TestClient(self.app).__enter__()
        r = self.client.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
        assert r.status_code == 200, r.text
        self.client.cookies.clear()
        self.h = {"Authorization": f"Bearer {r.json()['token']}"}
        return self

    def __exit__(self, *exc) -> None:
        self.client.__exit__(None, None, None)
        self.view.stop()
        self.control.close()

    def alerts(self) -> list[dict]:
        r = self.client.get("/api/v1/alerts", params={"kind": "site_mismatch"}, headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()

    def close(self, space: str):
        return self.client.post(
            f"/api/v1/spaces/{space}/close", json={"reason": "paint"}, headers=self.h
        )


def wait_for(fn, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


def warnings(caplog) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == LOGGER and r.levelno == logging.WARNING and "mismatch" in r.getMessage()
    ]


def test_an_api_beside_a_gateway_of_another_site_file_says_so_and_refuses_commands(
    journal, mosquitto, caplog
):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    other = load_site(OTHER_SITE)
    gateway_started_with(journal, other)
    with Api(journal, mosquitto) as api:
        alerts = wait_for(api.alerts)
        assert [a["kind"] for a in alerts] == ["site_mismatch"]
        alert = alerts[0]
        assert alert["severity"] == "critical"
        assert alert["details"]["api_site"] == "xinyuan"
        assert alert["details"]["gateway_site"] == "courtyard"
        assert alert["details"]["gateway_digest"] == other.digest[:12]
        assert "xinyuan" in alert["message"]["en"] and "courtyard" in alert["message"]["en"]
        assert "start the API with the gateway's site file" in alert["message"]["en"]
        # listed with the other alerts, as the dashboard loads them
        every = api.client.get("/api/v1/alerts", headers=api.h).json()
        assert alert["id"] in {a["id"] for a in every}

        r = api.close("A-001")
        assert r.status_code == 409, r.text
        detail = r.json()["detail"]
        assert "'xinyuan'" in detail and "'courtyard'" in detail
        assert "start the API with the gateway's site file" in detail
        assert api.client.post("/api/v1/spaces/A-001/open", headers=api.h).status_code == 409
        # reads keep working
        assert api.client.get("/api/v1/spaces/A-001", headers=api.h).status_code == 200
        assert api.client.get("/api/v1/zones").status_code == 200
        time.sleep(0.5)
        assert api.control.received == []  # nothing went to the gateway

        said = warnings(caplog)
        assert len(said) == 1, said
        assert "'xinyuan'" in said[0] and "'courtyard'" in said[0]
        assert "start the API with the gateway's site file" in said[0]
        # two site ids: not a matter of releases
        assert "release" not in detail + alert["message"]["en"] + said[0]


def test_the_same_site_file_raises_nothing_and_commands_go_to_the_gateway(
    journal, mosquitto, caplog
):
    caplog.set_level(logging.WARNING, logger=LOGGER)
    gateway_started_with(journal, load_site(EXAMPLE_SITE))  # the same content: one digest
    with Api(journal, mosquitto, alert_check_s=0.2) as api:
        time.sleep(0.6)  # a few checks
        assert api.alerts() == []
        r = api.close("A-001")
        assert r.status_code == 202, r.text
        assert wait_for(lambda: topics.space_control("xinyuan", "A-001") in api.control.received)
    assert warnings(caplog) == []


def test_a_journal_without_the_digest_is_not_compared(journal, mosquitto, caplog):
    """A gateway from before the digest row: nothing to compare, nothing said."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    with Api(journal, mosquitto, alert_check_s=0.2) as api:
        time.sleep(0.6)
        assert api.alerts() == []
        assert api.close("A-001").status_code == 202
    assert warnings(caplog) == []


def test_a_gateway_restarted_with_another_file_is_noticed_while_the_api_runs(
    journal, mosquitto, caplog, tmp_path
):
    """Same site id, another content (B.yaml has a zone A.yaml lacks): the digest tells."""
    caplog.set_level(logging.WARNING, logger=LOGGER)
    gateway_started_with(journal, load_site(EXAMPLE_SITE))
    with Api(journal, mosquitto, alert_check_s=0.2) as api:
        assert api.alerts() == []
        assert api.close("A-002").status_code == 202

        edited = edited_copy(tmp_path)
        assert edited.id == "xinyuan" and edited.digest != api.site.digest
        gateway_started_with(journal, edited)  # the gateway restarts with B.yaml
        alerts = wait_for(api.alerts)
        assert [a["id"] for a in alerts] == ["site_mismatch:xinyuan"]
        assert alerts[0]["details"]["gateway_digest"] == edited.digest[:12]
        r = api.close("A-002")
        assert r.status_code == 409 and edited.digest[:12] in r.json()["detail"]
        assert len(warnings(caplog)) == 1
        # one site id: the file was edited, or one of them runs another release
        assert "or another release of parkguide" in r.json()["detail"]
        assert "another release of parkguide" in alerts[0]["message"]["en"]
        assert "版本" in alerts[0]["message"]["zh"]
        assert "another release of parkguide" in warnings(caplog)[0]

        gateway_started_with(journal, load_site(EXAMPLE_SITE))  # and back with A.yaml
        assert wait_for(lambda: api.alerts() == [])
        assert api.close("A-002").status_code == 202
        said = warnings(caplog)
        assert len(said) == 2, said
        assert "over" in said[1]
    with sqlite3.connect(journal.path) as db:  # the episode is kept, ended
        rows = db.execute(
            "SELECT cleared FROM alerts WHERE id = 'site_mismatch:xinyuan'"
        ).fetchall()
    assert len(rows) == 1 and rows[0][0] is not None
