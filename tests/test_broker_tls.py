"""MQTT over TLS with a private CA: ``--ca-file`` / ``PARKGUIDE_MQTT_CA_FILE`` on every
command, checked at start, and a TLS failure said as one (not as a broker that is down).
Real mosquitto with a TLS listener and a certificate from a CA made by the test."""

from __future__ import annotations

import logging
import os
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from parking import topics
from parking.broker import ENV_CA_FILE, BrokerConfig
from parking.site import Site, load_site
from tests.conftest import (
    BROKER_COMMANDS,
    EXAMPLE_SITE,
    cli_exit_code,
    command_argv,
    parkguide_cmd,
    tls_broker,
)


@pytest.fixture
def no_ca_env(monkeypatch):
    """Neither the system-wide override nor ours: only what a test gives is trusted."""
    monkeypatch.delenv(ENV_CA_FILE, raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)


def test_a_ca_file_is_checked_when_given_and_only_taken_for_tls(tmp_path, monkeypatch, no_ca_env):
    ca = tmp_path / "ca.pem"
    with pytest.raises(ValueError, match="mqtts://"):
        BrokerConfig.from_url("mqtt://broker.example", ca_file=str(tmp_path / "any.pem"))
    with pytest.raises(ValueError, match="no such file"):
        BrokerConfig.from_url("mqtts://broker.example", ca_file=str(ca))
    ca.write_text("not a certificate\n")
    with pytest.raises(ValueError, match="not a PEM certificate"):
        BrokerConfig.from_url("mqtts://broker.example", ca_file=str(ca))
    # from an env file shared with services on the box's plain listener: not used there
    monkeypatch.setenv(ENV_CA_FILE, str(tmp_path / "missing.pem"))
    assert BrokerConfig.from_url("mqtt://127.0.0.1:1883").ca_file is None
    with pytest.raises(ValueError, match="missing.pem: no such file"):
        BrokerConfig.from_url("mqtts://broker.example")


@pytest.mark.parametrize("command", BROKER_COMMANDS)
def test_every_command_refuses_a_ca_file_it_cannot_use(command, tmp_path, capsys, no_ca_env):
    """Said at start with exit 2, before anything is created, instead of a TLS failure
    retried forever."""
    argv = command_argv(command, tmp_path)
    bad = tmp_path / "ca.pem"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n")
    tls = ["--broker", "mqtts://127.0.0.1:1", "--ca-file", str(bad)]
    assert cli_exit_code([*argv, *tls]) == 2
    assert f"CA file {bad}: not a PEM certificate" in capsys.readouterr().err
    plain = ["--broker", "mqtt://127.0.0.1:1", "--ca-file", str(bad)]
    assert cli_exit_code([*argv, *plain]) == 2
    assert "--ca-file is for TLS: use mqtts://" in capsys.readouterr().err
    assert not (tmp_path / "j.db").exists()


def _gateway(
    tmp_path: Path, url: str, env: dict[str, str], *extra: str
) -> tuple[subprocess.Popen, Path]:
    path = tmp_path / f"gateway-{time.monotonic_ns()}.log"
    with open(path, "wb") as log:
        proc = subprocess.Popen(
            parkguide_cmd(
                "gateway",
                "--site",
                str(EXAMPLE_SITE),
                "--broker",
                url,
                "--db",
                str(tmp_path / "journal.db"),
                *extra,
            ),  # fmt: skip  # fmt: skip
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
        )
    return proc, path


def _wait_for_line(path: Path, needle: str, timeout: float = 20.0) -> str:
    deadline = time.monotonic() + timeout
    text = ""
    while time.monotonic() < deadline:
        text = path.read_text(errors="replace")
        if needle in text:
            return text
        time.sleep(0.1)
    raise AssertionError(f"{needle!r} not in {path.name}:\n{text[-3000:]}")


def test_the_gateway_trusts_a_private_ca_given_by_flag_and_says_when_it_does_not(
    tmp_path, subprocess_env, no_ca_env
):
    broker = tls_broker(tmp_path)
    env = {k: v for k, v in subprocess_env.items() if k not in (ENV_CA_FILE, "SSL_CERT_FILE")}
    url = f"mqtts://127.0.0.1:{broker.port}"
    site = load_site(EXAMPLE_SITE)
    seen: dict[str, bytes] = {}
    watcher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    watcher.tls_set(ca_certs=str(tmp_path / "ca.crt"))
    watcher.on_message = lambda c, u, m: seen.__setitem__(m.topic, m.payload)
    watcher.connect("127.0.0.1", broker.port)
    watcher.subscribe(topics.gateway_availability(site.id), 1)
    watcher.loop_start()
    untrusting = trusting = None
    try:
        # without the CA: the log says the certificate is not trusted and what to do
        untrusting, log_path = _gateway(tmp_path, url, env)
        text = _wait_for_line(log_path, "TLS certificate is not trusted")
        assert "--ca-file or $PARKGUIDE_MQTT_CA_FILE" in text, text
        assert topics.gateway_availability(site.id) not in seen
        untrusting.terminate()
        untrusting.wait(10)
        # with it: online
        trusting, _ = _gateway(tmp_path, url, env, "--ca-file", str(tmp_path / "ca.crt"))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if seen.get(topics.gateway_availability(site.id)) == topics.ONLINE.encode():
                break
            time.sleep(0.1)
        assert seen.get(topics.gateway_availability(site.id)) == topics.ONLINE.encode()
    finally:
        for proc in (untrusting, trusting):
            if proc is not None and proc.poll() is None:
                proc.terminate()
                proc.wait(10)
        watcher.loop_stop()
        watcher.disconnect()
        broker.stop()


@contextmanager
def _view_and_agent(site: Site, broker: BrokerConfig, tmp_path: Path) -> Iterator[tuple]:
    """The API's MQTT view and an edge agent's publisher on ``broker``, stopped after."""
    from api.mqttview import MqttLiveView
    from edge.publisher import ReportPublisher

    bus = site.buses[0]
    view = MqttLiveView(site, broker, str(tmp_path / "journal.db"))
    pub = ReportPublisher(broker, site.id, bus.agent, bus.id, spool_dir=tmp_path / "spool")
    view.start()
    pub.start()
    try:
        yield view, pub
    finally:
        view.stop()
        pub.stop(flush_timeout_s=1)


def _said(caplog, needle: str, times: int, timeout: float = 15.0) -> list[logging.LogRecord]:
    """Log records with ``needle``, once there are ``times`` of them (or the time is up)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [r for r in caplog.records if needle in r.getMessage()]
        if len(found) >= times:
            return found
        time.sleep(0.1)
    return [r for r in caplog.records if needle in r.getMessage()]


def test_the_api_and_an_agent_say_why_a_tls_broker_is_unreachable(
    tmp_path, example_site, caplog, no_ca_env
):
    """The API's view and an edge agent's publisher: a certificate not trusted is told
    apart from a broker that is down; with the CA both connect."""
    broker = tls_broker(tmp_path)
    ca = str(tmp_path / "ca.crt")
    caplog.set_level(logging.WARNING)
    untrusted = BrokerConfig.from_url(f"mqtts://127.0.0.1:{broker.port}")
    trusted = BrokerConfig.from_url(f"mqtts://127.0.0.1:{broker.port}", ca_file=ca)
    try:
        with _view_and_agent(example_site, untrusted, tmp_path) as (view, pub):
            said = {r.name for r in _said(caplog, "TLS certificate is not trusted", 2)}
            assert said == {"api.mqttview", "edge.publisher"}, caplog.text
            assert not view.connected.is_set() and not pub.connected
        with _view_and_agent(example_site, trusted, tmp_path) as (view, pub):
            assert view.connected.wait(15)
            deadline = time.monotonic() + 15
            while not pub.connected and time.monotonic() < deadline:
                time.sleep(0.05)
            assert pub.connected
    finally:
        broker.stop()


def test_a_plain_listener_given_as_tls_is_named(mosquitto, no_ca_env):
    """mqtts:// to the plain port: the broker closes the TLS hello, and the message asks
    whether that port is the TLS listener."""
    config = BrokerConfig.from_url(f"mqtts://127.0.0.1:{mosquitto.port}")
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    config.apply(client)
    with pytest.raises(OSError) as failed:
        client.connect(config.host, config.port)
    assert f"is port {mosquitto.port} the broker's TLS listener?" in config.why_unreachable(
        failed.value
    )


def test_plain_mqtt_to_the_tls_port_is_named_not_taken_for_an_outage(
    tmp_path, example_site, caplog, subprocess_env, no_ca_env
):
    """The TLS listener hangs up on a plain CONNECT without answering: the gateway, the
    API's view and an agent say so and ask whether it is a TLS port, instead of "lost
    the broker" at every retry (the gateway) or nothing at all (the agent, the API)."""
    broker = tls_broker(tmp_path)
    hint = f"is port {broker.port} a TLS listener (then use mqtts://)?"
    plain = BrokerConfig.from_url(f"mqtt://127.0.0.1:{broker.port}")
    caplog.set_level(logging.WARNING)
    gateway, log_path = _gateway(tmp_path, plain.url, subprocess_env)
    try:
        with _view_and_agent(example_site, plain, tmp_path):
            text = _wait_for_line(log_path, hint)
            assert "lost the MQTT broker" not in text, text
            said = {r.name for r in _said(caplog, hint, 2)}
            assert said == {"api.mqttview", "edge.publisher"}, caplog.text
    finally:
        gateway.terminate()
        gateway.wait(10)
        broker.stop()


def test_a_refused_login_is_said_once_as_a_refusal(tmp_path, subprocess_env, no_ca_env):
    """A refusal (wrong password) is a CONNACK, not an early hang-up: no TLS hint."""
    from tests.conftest import MosquittoBroker

    pw = tmp_path / "passwd"
    pw.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pw), "gateway", "right"], check=True)
    broker = MosquittoBroker(
        tmp_path,
        extra_conf=("user root\n" if os.geteuid() == 0 else "")
        + f"allow_anonymous false\npassword_file {pw}\n",
    )
    broker.start()
    env = {
        **subprocess_env,
        "PARKGUIDE_MQTT_USERNAME": "gateway",
        "PARKGUIDE_MQTT_PASSWORD": "wrong",
    }
    gateway, log_path = _gateway(tmp_path, broker.url, env)
    try:
        text = _wait_for_line(log_path, "refused the connection")
        time.sleep(1.0)
        text = log_path.read_text()
        assert "TLS listener" not in text and "before accepting it" not in text, text
    finally:
        gateway.terminate()
        gateway.wait(10)
        broker.stop()


def test_a_keepalive_timeout_is_said_once_and_not_taken_for_tls(
    mosquitto, tmp_path, example_site, caplog, no_ca_env
):
    """paho reports a keepalive timeout twice: the gateway logged it twice, and the API
    read the second as a hang-up before CONNACK and asked whether the port was TLS. A
    broker that takes the TCP connection but never answers (hung, or behind a proxy that
    cannot reach it) is said as such."""
    from api.mqttview import MqttLiveView
    from tests.gateway_support import running_gateway, site_variant

    plain = BrokerConfig.from_url(f"mqtt://127.0.0.1:{mosquitto.port}")
    assert "did not answer within the keepalive" in plain.why_closed_early("Keep alive timeout")
    assert "TLS listener" in plain.why_closed_early("Unspecified error")
    caplog.set_level(logging.WARNING)
    view = MqttLiveView(example_site, plain, str(tmp_path / "view.db"))  # never connected
    for _ in range(2):
        view._on_disconnect(None, None, None, "Keep alive timeout", None)
    said = [r.getMessage() for r in caplog.records if r.name == "api.mqttview"]
    assert len(said) == 1 and "did not answer within the keepalive" in said[0], said
    caplog.clear()
    with running_gateway(site_variant(tmp_path), mosquitto.url, tmp_path / "j.db") as gw:
        for _ in range(2):
            gw._on_disconnect(None, None, None, "Keep alive timeout", None)
        lost = [r.getMessage() for r in caplog.records if "lost the MQTT broker" in r.getMessage()]
        assert len(lost) == 1 and "Keep alive timeout" in lost[0], lost
        assert "TLS" not in caplog.text
