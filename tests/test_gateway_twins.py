"""Two gateways for one site on one broker (moving hosts, a restore rehearsed against the
production broker): the one that stops must not leave the running one's site "offline",
and two on one client id are named for what they are. Real mosquitto."""

from __future__ import annotations

import logging
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

    # an offline within this of connecting is taken for the gateway's own old last will
    monkeypatch.setattr(service_module, "SHORT_SESSION_S", 0.2)
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
