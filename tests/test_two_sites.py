"""Two gateways for two sites on one broker do not disturb each other (issue 6, item 5).

Gateway A runs the example community (``xinyuan``), gateway B the office
courtyard (``courtyard``); both are real ``parkguide gateway`` processes with
their own journals on one real mosquitto, with the API in-process (``--http``)
so their counters can be read from ``/metrics``. Edge reports are published as
a real edge agent publishes them (agent, source, boot, seq; a snapshot, then
deltas).
"""

from __future__ import annotations

import json
import re
import secrets
import sqlite3
import threading
import time
from contextlib import closing
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from conftest import free_port, wait_port
from e2e_support import EXAMPLE_SITE, SMALL_SITE, Processes, processes  # noqa: F401
from gateway_support import Collector, Edge

from parking import topics
from parking.site import Site, load_site

pytestmark = pytest.mark.timeout(120)

WAIT_S = 15.0  # how long to wait before calling something missing (diagnosis, not a deadline)
QUIET_S = 1.0  # after an answer, how long to listen for a second one that must not come
COUNT_KEYS = ("free", "occupied", "unknown", "closed", "total")
_SAMPLE = re.compile(r'^(?P<name>[a-z_]+)(?:\{reason="(?P<reason>[^"]*)"\})? (?P<value>\S+)$')


class SiteUnderTest:
    """One site: its model, its gateway process, its API port and its edge agents."""

    def __init__(self, path: Any, procs: Processes, broker_url: str, db: Any, token: str):
        self.site: Site = load_site(path)
        self.id = self.site.id
        self.http_port = free_port()
        self.token = token
        self.proc = procs.start(
            f"gateway-{self.id}",
            *("gateway", "--site", str(path), "--broker", broker_url, "--db", str(db)),
            *("--http", f"127.0.0.1:{self.http_port}"),
            env={"PARKGUIDE_METRICS_TOKEN": token},
        )

    def own_topics(self) -> set[str]:
        """The retained outputs this site's gateway must publish, and only these."""
        return (
            {topics.zone(self.id, z.id) for z in self.site.zones}
            | {topics.display_content(self.id, d.id) for d in self.site.displays}
            | {topics.gateway_availability(self.id)}
        )

    def metrics(self) -> dict[str, float]:
        """``/metrics`` of this gateway: reports accepted, and rejected per reason."""
        r = httpx.get(
            f"http://127.0.0.1:{self.http_port}/metrics",
            headers={"Authorization": f"Bearer {self.token}"},
            timeout=10,
        )
        r.raise_for_status()
        # which site the series are of: otherwise the two scrapes look alike
        assert f'parkguide_site_info{{site="{self.id}",' in r.text
        out: dict[str, float] = {}
        for line in r.text.splitlines():
            m = _SAMPLE.match(line)
            if m and m.group("name").startswith("parkguide_reports_"):
                key = m.group("name") + (f":{m.group('reason')}" if m.group("reason") else "")
                out[key] = float(m.group("value"))
        return out


def retained(port: int, prefix: str) -> dict[str, Any]:
    """Every retained message under ``prefix`` as a fresh subscriber gets it, by topic;
    zones as their counts, signs as their lines (their periodic ``ts``/``expires`` left out)."""
    got: dict[str, Any] = {}
    last = [time.monotonic()]
    subscribed = threading.Event()
    lock = threading.Lock()

    def on_message(client, userdata, msg):
        if not msg.retain:
            return
        with lock:
            got[msg.topic] = comparable(msg.topic, msg.payload)
            last[0] = time.monotonic()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    client.on_message = on_message
    client.on_connect = lambda c, *a: c.subscribe(f"{prefix}/#", qos=1)
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    try:
        assert subscribed.wait(5), "retained reader did not subscribe"
        last[0] = time.monotonic()
        while time.monotonic() - last[0] < 0.5:  # the broker sends them right after SUBACK
            time.sleep(0.05)
    finally:
        client.disconnect()
        client.loop_stop()
    with lock:
        return dict(got)


def comparable(topic: str, payload: bytes) -> Any:
    parsed = topics.parse(topic)
    kind = parsed.kind if parsed else ""
    if kind == "zones":
        zone = json.loads(payload)
        return {k: zone[k] for k in COUNT_KEYS}
    if kind == "displays/content":
        return json.loads(payload)["lines"]
    return payload.decode("utf-8", "replace")


def wait_until(check, timeout: float = WAIT_S, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not met in {timeout}s")
        time.sleep(0.1)


def test_two_sites_on_one_broker(mosquitto, tmp_path, processes: Processes) -> None:  # noqa: F811
    token = secrets.token_urlsafe(24)
    a = SiteUnderTest(EXAMPLE_SITE, processes, mosquitto.url, tmp_path / "a.sqlite", token)
    b = SiteUnderTest(SMALL_SITE, processes, mosquitto.url, tmp_path / "b.sqlite", token)
    assert (a.id, b.id) == ("xinyuan", "courtyard")
    # B's spaces do not exist at A: a report naming them on A's topics is foreign there
    assert not set(b.site.space_index) & set(a.site.space_index)
    watch = Collector(mosquitto.port, f"{topics.PREFIX}/#")
    edges: list[Edge] = []
    try:
        for s in (a, b):
            watch.wait_for(
                topics.gateway_availability(s.id), lambda p: p == topics.ONLINE, timeout=60
            )
            wait_port(s.http_port, timeout=30)

        # every source of each site reports a snapshot, as its agent does on connect
        agents: dict[tuple[str, str], Edge] = {}
        for s in (a, b):
            for source, agent in [(x.id, x.agent) for x in (*s.site.buses, *s.site.cameras)]:
                edge = Edge(mosquitto.port, agent, source, boot=secrets.token_hex(4))
                edges.append(edge)
                agents[s.id, source] = edge
                spaces = s.site.spaces_of_source(source)
                states = {sp: ("occupied" if i % 3 == 0 else "free") for i, sp in enumerate(spaces)}
                edge.raw(
                    topics.edge_occupancy(s.id, edge.agent), edge.payload(states, kind="snapshot")
                )
        for s in (a, b):
            for z in s.site.zones:
                watch.wait_for(topics.zone(s.id, z.id), lambda c: c["unknown"] == 0)

        # each gateway's retained outputs sit under its own site's prefix, and nothing else
        both = a.own_topics() | b.own_topics()
        outputs = {
            m.topic
            for m in watch.since(0)
            if (p := topics.parse(m.topic)) and p.kind in ("zones", "displays/content")
        }
        assert outputs == both - {topics.gateway_availability(s.id) for s in (a, b)}
        before_a = retained(mosquitto.port, topics.site_prefix(a.id))
        before_b = retained(mosquitto.port, topics.site_prefix(b.id))
        assert set(before_a) == a.own_topics(), sorted(set(before_a) ^ a.own_topics())
        assert set(before_b) == b.own_topics(), sorted(set(before_b) ^ b.own_topics())
        assert set(retained(mosquitto.port, topics.PREFIX)) == both

        # a car leaves A-001 at site A: A's zone A changes, B's retained topics do not
        edge_g = agents[a.id, "bus-g"]
        a001_free = before_a[topics.zone(a.id, "A")]["free"] + 1
        edge_g.raw(topics.edge_occupancy(a.id, edge_g.agent), edge_g.payload({"A-001": "free"}))
        watch.wait_for(topics.zone(a.id, "A"), lambda c: c["free"] == a001_free)
        assert retained(mosquitto.port, topics.site_prefix(b.id)) == before_b
        before_a = retained(mosquitto.port, topics.site_prefix(a.id))
        assert before_a[topics.zone(a.id, "A")]["free"] == a001_free

        # a car parks on P-002 at site B (a free space in the snapshot): A is untouched
        edge_1 = agents[b.id, "bus-1"]
        p_free = before_b[topics.zone(b.id, "P")]["free"] - 1
        edge_1.raw(topics.edge_occupancy(b.id, edge_1.agent), edge_1.payload({"P-002": "occupied"}))
        watch.wait_for(topics.zone(b.id, "P"), lambda c: c["free"] == p_free)
        assert retained(mosquitto.port, topics.site_prefix(a.id)) == before_a
        before_b = retained(mosquitto.port, topics.site_prefix(b.id))

        # a report on A's topic naming B's space: A rejects it (counted, no state change),
        # B never sees it (it subscribes to its own site only)
        metrics_a, metrics_b = a.metrics(), b.metrics()
        edge_g.raw(topics.edge_occupancy(a.id, edge_g.agent), edge_g.payload({"P-003": "occupied"}))
        # ... and one claiming B's bus as its source
        edge_g.source = "bus-1"
        try:
            stray = edge_g.payload({"P-004": "occupied"})
        finally:
            edge_g.source = "bus-g"
        edge_g.raw(topics.edge_occupancy(a.id, edge_g.agent), stray)
        key = "parkguide_reports_rejected_total:"
        wait_until(
            lambda: (
                a.metrics().get(key + "unknown_space", 0)
                == metrics_a.get(key + "unknown_space", 0) + 1
                and a.metrics().get(key + "unknown_source", 0)
                == metrics_a.get(key + "unknown_source", 0) + 1
            ),
            what="gateway A counting the foreign space and the foreign source",
        )
        time.sleep(QUIET_S)  # anything the two reports would wrongly cause has happened by now
        assert retained(mosquitto.port, topics.site_prefix(a.id)) == before_a
        assert retained(mosquitto.port, topics.site_prefix(b.id)) == before_b
        assert b.metrics() == metrics_b

        # a car arrives at B's gate: B assigns a free staff space, A says nothing
        mark = watch.mark()
        metrics_a = a.metrics()
        edge_1.raw(topics.arrival(b.id, "main"), '{"class": "staff", "request_id": "two-sites-1"}')
        got = watch.wait_for(
            topics.assignment(b.id, "main"), lambda c: c["request_id"] == "two-sites-1"
        ).json()
        assert got["entrance"] == "main" and got["class"] == "staff"
        assert b.site.space(got["space"]).zone == "P", got
        # the held space leaves B's sign count; A's retained topics stay as they were
        watch.wait_for(
            topics.display_content(b.id, "main-gate"),
            lambda c: c["lines"][0]["count"] == p_free - 1,
            after=mark,
        )
        time.sleep(QUIET_S)
        answers = [m for m in watch.since(mark) if m.topic.endswith("/assignment")]
        assert [m.topic for m in answers] == [topics.assignment(b.id, "main")]
        assert retained(mosquitto.port, topics.site_prefix(a.id)) == before_a
        assert a.metrics() == metrics_a

        # each journal holds its own site only: A never journaled B's spaces or its arrival
        for s, db in ((a, tmp_path / "a.sqlite"), (b, tmp_path / "b.sqlite")):
            with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
                journaled = {row[0] for row in conn.execute("SELECT space FROM events")}
                journaled |= {row[0] for row in conn.execute("SELECT space FROM spaces")}
                requests = [row[0] for row in conn.execute("SELECT request_id FROM assignments")]
            assert journaled and journaled <= set(s.site.space_index), s.id
            assert requests == (["two-sites-1"] if s is b else []), s.id
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n{processes.logs()}") from None
    finally:
        watch.stop()
        for edge in edges:
            edge.stop()
