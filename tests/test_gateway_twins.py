"""Two gateways for one site on one broker (moving hosts, a restore rehearsed against the
production broker): the one that stops must not leave the running one's site "offline",
and two on one client id are named for what they are. Real mosquitto."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
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
    from gateway.service import GatewayService
    from parking.broker import BrokerConfig

    caplog.set_level(logging.INFO, logger="gateway.service")
    site_path = site_variant(tmp_path)
    with running_gateway(
        site_path, mosquitto.url, tmp_path / "a.sqlite", client_id="gw-twin"
    ) as first:
        # the twin: not waited for (the two knock each other off; either may never settle)
        twin = GatewayService(
            str(site_path),
            BrokerConfig.from_url(mosquitto.url),
            str(tmp_path / "b.sqlite"),
            client_id="gw-twin",
        )
        twin.start()
        try:
            deadline = time.monotonic() + 40
            while "another client is using client id" not in caplog.text:
                assert time.monotonic() < deadline, caplog.text[-2000:]
                time.sleep(0.1)
        finally:
            twin.stop()
        # and the reports the twin took are said to be its, not the broker's (gateway.live)
        contested = [g.gateway.session_contested_at for g in (first, twin)]
        assert any(t is not None for t in contested), contested
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


class Relay:
    """A TCP relay to the broker that can be cut (its connections dropped, new ones
    refused) and restored on the same port: a link down for a while."""

    def __init__(self, upstream: int):
        from conftest import free_port

        self.upstream, self.port = upstream, free_port()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        server = socket.socket()
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen()
        self._server = server
        threading.Thread(target=self._accept, args=(server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                down, _ = server.accept()
            except OSError:
                return
            up = socket.create_connection(("127.0.0.1", self.upstream))
            self._conns += [down, up]
            for a, b in ((down, up), (up, down)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(a: socket.socket, b: socket.socket) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        for s in (a, b):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        if self._server is not None:
            with contextlib.suppress(OSError):  # wakes the accept() blocked on it
                self._server.shutdown(socket.SHUT_RDWR)
            self._server.close()
        for s in self._conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        self._conns.clear()


@pytest.mark.timeout(60)
def test_its_own_will_after_a_long_outage_is_not_taken_for_another_gateway(
    tmp_path, mosquitto, caplog, monkeypatch
):
    """The link is down longer than the own-will window: the broker published the
    gateway's will meanwhile, queued in its session, delivered after it reconnects."""
    import gateway.service as service_module

    monkeypatch.setattr(service_module, "OWN_WILL_WINDOW_S", 3.0)
    caplog.set_level(logging.INFO, logger="gateway.service")
    relay = Relay(mosquitto.port)
    site_path = site_variant(tmp_path)
    url = f"mqtt://127.0.0.1:{relay.port}"
    with running_gateway(site_path, url, tmp_path / "a.sqlite", client_id="gw-a") as gw:
        time.sleep(3.5)  # past the window of its start
        relay.cut()
        deadline = time.monotonic() + 10
        while gw.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not gw.connected.is_set()
        time.sleep(4.0)  # longer than the window
        assert _retained_availability(mosquitto.port) == topics.OFFLINE  # its will
        relay.restore()
        assert gw.connected.wait(30)
        time.sleep(3.0)  # longer than it takes to confirm another gateway's offline
        assert _retained_availability(mosquitto.port) == topics.ONLINE
        assert gw.foreign_offline == 0
    assert "last will from before came through" in caplog.text
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not said, said
