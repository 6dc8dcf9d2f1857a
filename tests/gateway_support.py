"""Helpers for the gateway tests: a recording MQTT subscriber, an edge publisher, site variants.

All of them talk to the real mosquitto of the ``mosquitto`` fixture.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from gateway.live import LiveGateway
from parking import topics

EXAMPLE_SITE = Path(__file__).resolve().parents[1] / "examples" / "site.yaml"
SITE_ID = "xinyuan"
_ids = itertools.count()


def site_variant(
    tmp_path: Path, ttl_s: float | None = None, expires_s: float | None = None
) -> Path:
    """The example site with shorter source TTLs and/or sign expiry, written to tmp_path."""
    text = EXAMPLE_SITE.read_text(encoding="utf-8")
    if ttl_s is not None:
        assert "ttl_s: 15" in text
        text = text.replace("ttl_s: 15", f"ttl_s: {ttl_s}")
    if expires_s is not None:
        assert "expires_s: 60" in text
        text = text.replace("expires_s: 60", f"expires_s: {expires_s}")
    path = tmp_path / f"site-{next(_ids)}.yaml"
    path.write_text(text, encoding="utf-8")
    return path


@dataclass(frozen=True)
class Message:
    topic: str
    payload: bytes
    retain: bool
    at: float  # time.monotonic() on arrival

    def json(self) -> Any:
        return json.loads(self.payload)


class Collector:
    """A real MQTT subscriber that records every message it gets."""

    def __init__(self, port: int, *filters: str):
        self.messages: list[Message] = []
        self._cond = threading.Condition()
        self._filters = filters or (f"{topics.PREFIX}/#",)
        self._subscribed = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"collector-{next(_ids)}"
        )
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self._subscribed.wait(5):
            raise TimeoutError("collector did not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        client.subscribe([(f, 1) for f in self._filters])

    def _on_message(self, client, userdata, msg):
        with self._cond:
            self.messages.append(Message(msg.topic, msg.payload, msg.retain, time.monotonic()))
            self._cond.notify_all()

    def wait_for(
        self,
        topic: str,
        predicate: Callable[[Any], bool] = lambda _: True,
        timeout: float = 5.0,
        after: int = 0,
    ) -> Message:
        """The first message on ``topic`` (from index ``after``, see :meth:`mark`) whose JSON
        satisfies ``predicate``."""
        deadline = time.monotonic() + timeout
        seen = after
        with self._cond:
            while True:
                for m in self.messages[seen:]:
                    if m.topic == topic and predicate(_loads(m.payload)):
                        return m
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0:
                    last = [m.payload[:300] for m in self.messages if m.topic == topic][-3:]
                    raise AssertionError(
                        f"no matching message on {topic} in {timeout}s; last: {last}"
                    )
                self._cond.wait(left)

    def on(self, topic: str) -> list[Message]:
        with self._cond:
            return [m for m in self.messages if m.topic == topic]

    def latest(self, topic: str) -> Any:
        msgs = self.on(topic)
        return msgs[-1].json() if msgs else None

    def mark(self) -> int:
        with self._cond:
            return len(self.messages)

    def since(self, mark: int, prefix: str = "") -> list[Message]:
        with self._cond:
            return [m for m in self.messages[mark:] if m.topic.startswith(prefix)]

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def _loads(payload: bytes) -> Any:
    try:
        return json.loads(payload)
    except ValueError:
        return payload.decode("utf-8", "replace")


class Edge:
    """Publishes occupancy reports as an edge agent would (QoS 1, seq-numbered)."""

    def __init__(self, port: int, agent: str, source: str, boot: str = "boot-1"):
        self.agent, self.source, self.boot = agent, source, boot
        self.seq = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"edge-{next(_ids)}")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def payload(
        self,
        spaces: dict[str, str],
        kind: str = "delta",
        seq: int | None = None,
        since: float | None = None,
    ) -> bytes:
        if seq is None:
            self.seq += 1
            seq = self.seq
        now = time.time()
        return json.dumps(
            {
                "agent": self.agent,
                "source": self.source,
                "boot": self.boot,
                "seq": seq,
                "ts": now,
                "kind": kind,
                "spaces": [
                    {"space": s, "state": st, "since": since if since is not None else now}
                    for s, st in spaces.items()
                ],
            }
        ).encode()

    def send(self, spaces: dict[str, str], kind: str = "delta", **kw: Any) -> bytes:
        body = self.payload(spaces, kind, **kw)
        self.raw(topics.edge_occupancy(SITE_ID, self.agent), body)
        return body

    def raw(self, topic: str, payload: bytes | str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def zone_topic(zone: str) -> str:
    return topics.zone(SITE_ID, zone)


def display_topic(display: str) -> str:
    return topics.display_content(SITE_ID, display)


def line_counts(content: Any) -> list[Any]:
    return [ln["count"] for ln in content["lines"]]


@contextmanager
def running_gateway(site_path: Path, broker_url: str, db: Path, **kw: Any) -> Iterator[Any]:
    """The gateway service in this process, connected; stopped afterwards whatever happens."""
    from gateway.service import GatewayService
    from parking.broker import BrokerConfig

    service = GatewayService(str(site_path), BrokerConfig.from_url(broker_url), str(db), **kw)
    service.start()
    try:
        if not service.connected.wait(10):
            raise TimeoutError("gateway did not connect")
        yield service
    finally:
        service.stop()


class Clocks:
    """A wall clock and a monotonic one: time passing moves both, an NTP step only the wall."""

    def __init__(self, wall: float):
        self.wall, self.mono = wall, 0.0

    def advance(self, seconds: float) -> None:
        self.wall += seconds
        self.mono += seconds

    def step(self, seconds: float) -> None:
        self.wall += seconds

    def gateway(self, site: Any, journal: Any, publish: Any, **kw: Any) -> LiveGateway:
        return LiveGateway(
            site, journal, publish, clock=lambda: self.wall, mono=lambda: self.mono, **kw
        )


def snapshot_all_free(gw: LiveGateway, site: Any, now: float, seq: int = 1) -> None:
    """Every bus of ``site`` reports all its spaces free at ``now`` (in-process; a later
    ``seq`` of the same boot after a gateway restart)."""
    for bus in site.buses:
        spaces = site.spaces_of_source(bus.id)
        report = {
            "agent": bus.agent,
            "source": bus.id,
            "boot": "b",
            "seq": seq,
            "ts": now,
            "kind": "snapshot",
            "spaces": [{"space": s, "state": "free", "since": now} for s in spaces],
        }
        gw.handle(topics.edge_occupancy(site.id, bus.agent), json.dumps(report).encode())


@pytest.fixture
def watch(mosquitto):
    """A Collector of everything on the test broker (import it into a test module)."""
    c = Collector(mosquitto.port)
    yield c
    c.stop()


@pytest.fixture
def edge_g(mosquitto):
    """The example site's bus-g agent, as the gateway hears it (import it as ``watch``)."""
    e = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    yield e
    e.stop()
