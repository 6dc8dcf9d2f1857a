"""Helpers for the edge agent tests: a recording MQTT subscriber and a persistent broker."""

from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from conftest import MosquittoBroker

# mosquitto started as root drops to its own user, which cannot enter pytest's 0700 tmp
# dirs to read a password file or write its store; a test broker keeps the test's user
# (the option has no effect when the tests do not run as root)
KEEP_USER = "user root\n" if os.geteuid() == 0 else ""


def persistent_broker(tmp: Path) -> MosquittoBroker:
    """A mosquitto that keeps sessions and queued messages across stop()/start().

    A subscriber with a persistent session then misses nothing while the broker
    is down, so an outage test checks the publisher and not a race between the
    two clients reconnecting.
    """
    store = tmp / "mosquitto-store"
    store.mkdir(exist_ok=True)
    return MosquittoBroker(
        tmp,
        extra_conf=(
            "allow_anonymous true\n"
            f"{KEEP_USER}"
            "persistence true\n"
            f"persistence_location {store}/\n"
            "max_queued_messages 100000\n"
        ),
    )


class Recorder:
    """A real paho subscriber that records (topic, payload, retain) as they arrive."""

    def __init__(self, url_port: int, topic: str, *, persistent_id: str | None = None):
        self.messages: list[tuple[str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=persistent_id or "",
            clean_session=persistent_id is None,
        )
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(0.05, 0.2)
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self.subscribed.set()
        self.client.connect("127.0.0.1", url_port, keepalive=10)
        self.client.loop_start()
        if not self.subscribed.wait(10):
            raise TimeoutError("subscriber did not subscribe")

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self.topic, qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.messages.append((msg.topic, msg.payload, bool(msg.retain)))
            self.cond.notify_all()

    def wait_for(self, pred: Callable[[list[tuple[str, bytes, bool]]], bool], timeout: float):
        deadline = time.monotonic() + timeout
        with self.cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"condition not met in {timeout}s; got {self.summary()}")
                self.cond.wait(left)
            return list(self.messages)

    def summary(self) -> str:
        return "; ".join(f"{t} {p[:120]!r}" for t, p, _ in self.messages[-8:])

    def json_on(self, suffix: str) -> list[dict[str, Any]]:
        with self.cond:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith(suffix)]

    def texts_on(self, suffix: str) -> list[str]:
        with self.cond:
            return [p.decode() for t, p, _ in self.messages if t.endswith(suffix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def dedupe_reports(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Drop QoS 1 repeats (same boot and seq), keeping the first arrival, as the gateway does."""
    seen: set[tuple[str, int]] = set()
    out = []
    for r in reports:
        key = (r["boot"], r["seq"])
        if key not in seen:
            seen.add(key)
            out.append(r)
    return out


def assert_in_order(reports: list[dict[str, Any]]) -> None:
    """Per boot: seq counts up by one from 0 with no gap; boots do not interleave."""
    boots: list[str] = []
    last: dict[str, int] = {}
    for r in reports:
        b = r["boot"]
        if b not in last:
            assert r["seq"] == 0, f"boot {b} starts at seq {r['seq']}"
            boots.append(b)
        else:
            assert boots[-1] == b, f"boot {b} resumed after {boots[-1]} began"
            assert r["seq"] == last[b] + 1, f"boot {b}: seq {r['seq']} after {last[b]}"
        last[b] = r["seq"]
