"""The shipped Mosquitto config and ACL: an agent cannot publish as another agent,
and the gateway can publish only its outputs. Real mosquitto, real passwords file."""

from __future__ import annotations

import os
import queue
import secrets
import shutil
import subprocess
import time
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from parking import topics
from tests.conftest import REPO, MosquittoBroker, require

DEPLOY = REPO / "deploy" / "mosquitto"
SITE = "xinyuan"


@pytest.fixture
def secured_broker(tmp_path: Path):
    require("mosquitto")
    passwd_bin = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
    users = {
        u: secrets.token_urlsafe(12) for u in ("gateway", "api", "serial-bus-g", "serial-bus-b1")
    }
    pwfile = tmp_path / "passwd"
    env = {f"PASS_{u.replace('-', '_')}": p for u, p in users.items()}
    subprocess.run(
        ["bash", str(DEPLOY / "make-passwords.sh"), str(pwfile), *users],
        env={"PATH": f"{Path(passwd_bin).parent}:/usr/bin:/bin", **env},
        check=True,
        capture_output=True,
    )
    conf = (DEPLOY / "parkguide.conf").read_text()
    body = []
    for line in conf.splitlines():
        key = line.split(" ", 1)[0]
        if key in {"listener", "persistence"}:
            continue  # the fixture sets its own free port, no persistence
        if key == "password_file":
            line = f"password_file {pwfile}"
        if key == "acl_file":
            line = f"acl_file {DEPLOY / 'parkguide.acl'}"
        body.append(line)
    if os.geteuid() == 0:
        body.append("user root")  # else mosquitto drops to 'mosquitto', who cannot read tmp_path
    broker = MosquittoBroker(tmp_path, extra_conf="\n".join(body) + "\n")
    broker.start()
    yield broker, users
    broker.stop()


def _client(broker: MosquittoBroker, user: str, password: str) -> mqtt.Client:
    c = mqtt.Client(
        mqtt.CallbackAPIVersion.VERSION2,
        client_id=f"t-{user}-{secrets.token_hex(3)}",
        protocol=mqtt.MQTTv5,
    )
    c.username_pw_set(user, password)
    connected: queue.Queue = queue.Queue()
    c.on_connect = lambda cl, ud, flags, rc, props: connected.put(rc)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    rc = connected.get(timeout=5)
    assert not rc.is_failure, f"{user} refused: {rc}"
    return c


def _publish_reason(c: mqtt.Client, topic: str, payload: bytes) -> int:
    acks: queue.Queue = queue.Queue()
    c.on_publish = lambda cl, ud, mid, rc, props: acks.put((mid, rc))
    info = c.publish(topic, payload, qos=1)
    mid, rc = acks.get(timeout=5)
    assert mid == info.mid
    return rc.value


def test_agent_cannot_publish_as_another_agent(secured_broker):
    broker, users = secured_broker
    gw = _client(broker, "gateway", users["gateway"])
    got: queue.Queue = queue.Queue()
    gw.on_message = lambda cl, ud, msg: got.put((msg.topic, msg.payload))
    gw.subscribe(f"{topics.PREFIX}/{SITE}/edge/#", qos=1)
    time.sleep(0.3)

    agent = _client(broker, "serial-bus-g", users["serial-bus-g"])
    own = topics.edge_occupancy(SITE, "serial-bus-g")
    spoof = topics.edge_occupancy(SITE, "serial-bus-b1")
    assert _publish_reason(agent, spoof, b'{"spoofed": true}') == 0x87  # Not authorized
    assert _publish_reason(agent, own, b'{"own": true}') == 0
    topic, payload = got.get(timeout=5)
    assert (topic, payload) == (own, b'{"own": true}')
    with pytest.raises(queue.Empty):
        got.get(timeout=0.5)  # the spoofed report never reached the gateway
    for c in (gw, agent):
        c.loop_stop()
        c.disconnect()


def test_gateway_writes_only_its_outputs_and_anonymous_is_refused(secured_broker):
    broker, users = secured_broker
    gw = _client(broker, "gateway", users["gateway"])
    # 0x10 "no matching subscribers" is still an accepted publish
    assert _publish_reason(gw, topics.display_content(SITE, "gate-north"), b"{}") in (0, 0x10)
    assert _publish_reason(gw, topics.edge_occupancy(SITE, "serial-bus-g"), b"{}") == 0x87
    assert _publish_reason(gw, topics.arrival(SITE, "north"), b"{}") == 0x87
    gw.loop_stop()
    gw.disconnect()

    anon = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    result: queue.Queue = queue.Queue()
    anon.on_connect = lambda cl, ud, flags, rc, props: result.put(rc)
    anon.connect("127.0.0.1", broker.port)
    anon.loop_start()
    rc = result.get(timeout=5)
    assert rc.is_failure
    anon.loop_stop()
    # a wrong password is refused too
    bad = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    bad.username_pw_set("serial-bus-g", "not-the-password")
    bad.on_connect = lambda cl, ud, flags, rc, props: result.put(rc)
    bad.connect("127.0.0.1", broker.port)
    bad.loop_start()
    assert result.get(timeout=5).is_failure
    bad.loop_stop()
