"""Two gateways for one site on one broker (moving hosts, a restore rehearsed against the
production broker): the one that stops must not leave the running one's site "offline",
and two on one client id are named for what they are. Real mosquitto."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
import time

import paho.mqtt.client as mqtt
import pytest
from gateway_support import running_gateway, site_variant

from parking import topics

SITE = "xinyuan"


def _retained_availability(port: int) -> str | None:
    """What a subscriber arriving now is told of the gateway (its retained availability)."""
    got: list[bytes] = []
    done = threading.Event()
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)

    def on_message(client, userdata, msg):
        got.append(msg.payload)
        done.set()

    c.on_message = on_message
    c.on_connect = lambda cl, *a: cl.subscribe(topics.gateway_availability(SITE), 1)
    c.connect("127.0.0.1", port)
    c.loop_start()
    try:
        done.wait(3)
    finally:
        c.disconnect()
        c.loop_stop()
    return got[0].decode() if got else None


@pytest.mark.timeout(60)
def test_another_gateway_stopping_does_not_leave_the_site_offline(
    tmp_path, mosquitto, caplog, monkeypatch
):
    import gateway.service as service_module

    # an offline this soon after a start may be the gateway's own will from a run before
    monkeypatch.setattr(service_module, "OWN_WILL_WINDOW_S", 0.2)
    caplog.set_level(logging.INFO, logger="gateway.service")
    site_path = site_variant(tmp_path)
    # each with its own client id (with a password each journal draws its own suffix)
    with running_gateway(site_path, mosquitto.url, tmp_path / "a.sqlite", client_id="gw-a") as gw:
        assert _retained_availability(mosquitto.port) == topics.ONLINE
        time.sleep(0.3)
        # a second gateway of the site (its own journal) comes and stops cleanly
        with running_gateway(site_path, mosquitto.url, tmp_path / "b.sqlite", client_id="gw-b"):
            pass
        deadline = time.monotonic() + 5
        while gw.foreign_offline < 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert gw.foreign_offline == 1
        time.sleep(0.3)  # its online, published again, reaches the broker
        assert _retained_availability(mosquitto.port) == topics.ONLINE
        said = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
        assert len(said) == 1 and "two gateways for one site" in said[0], said
    # its own clean stop still says offline, and is not taken for another's
    assert _retained_availability(mosquitto.port) == topics.OFFLINE


@pytest.mark.timeout(90)
def test_two_gateways_on_one_client_id_are_named(tmp_path, mosquitto, caplog):
    caplog.set_level(logging.INFO, logger="gateway.service")
    site_path = site_variant(tmp_path)
    with (
        running_gateway(site_path, mosquitto.url, tmp_path / "a.sqlite", client_id="gw-twin"),
        running_gateway(site_path, mosquitto.url, tmp_path / "b.sqlite", client_id="gw-twin"),
    ):
        deadline = time.monotonic() + 40
        while "another client is using client id" not in caplog.text:
            assert time.monotonic() < deadline, caplog.text[-2000:]
            time.sleep(0.1)
    assert "gw-twin" in caplog.text and "a copy of this journal" in caplog.text


@pytest.mark.timeout(60)
def test_its_own_last_will_is_not_taken_for_another_gateway(tmp_path, mosquitto, caplog):
    """A broker restart (it sends every connected client's will as it stops, this gateway's
    too) and a restart of the gateway after kill -9 (its will comes after it is back)."""
    caplog.set_level(logging.INFO, logger="gateway.service")
    site_path = site_variant(tmp_path)
    with running_gateway(site_path, mosquitto.url, tmp_path / "a.sqlite", client_id="gw-a") as gw:
        mosquitto.stop()
        mosquitto.start()
        assert gw.connected.wait(20)
        time.sleep(3)  # longer than it takes to confirm another gateway's offline
        assert _retained_availability(mosquitto.port) == topics.ONLINE
        assert gw.foreign_offline == 0
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not said, said


@pytest.mark.timeout(60)
def test_a_refused_login_is_not_taken_for_a_twin(tmp_path, caplog):
    """A wrong password: the broker refuses each connection at once; that is said as a
    refusal, not as another client on the same id."""
    from tests.conftest import MosquittoBroker

    passwd = tmp_path / "passwd"
    passwd.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(passwd), "gateway", "right-password"],
                   check=True)  # fmt: skip
    broker = MosquittoBroker(
        tmp_path,
        extra_conf=("user root\n" if os.geteuid() == 0 else "")  # it reads tmp_path
        + f"allow_anonymous false\npassword_file {passwd}\n",
    )
    broker.start()
    caplog.set_level(logging.INFO, logger="gateway.service")
    from gateway.service import GatewayService
    from parking.broker import BrokerConfig

    config = BrokerConfig("127.0.0.1", broker.port, username="gateway", password="wrong")
    service = GatewayService(str(site_variant(tmp_path)), config, str(tmp_path / "w.sqlite"))
    service.start()
    try:
        deadline = time.monotonic() + 20
        while caplog.text.count("refused the connection") < 4:
            assert time.monotonic() < deadline, caplog.text[-2000:]
            time.sleep(0.1)
    finally:
        service.stop()
        broker.stop()
    assert "another client is using client id" not in caplog.text
