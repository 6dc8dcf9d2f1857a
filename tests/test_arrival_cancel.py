"""A gate cancels an arrival (entrances/{e}/cancel): the car's hold ends at once, on a real
mosquitto, across a kill -9 of the gateway, and the stand-alone API sees it too."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from conftest import eventually, parkguide_cmd
from e2e_support import processes  # noqa: F401  (a fixture)
from gateway_support import SITE_ID, Collector, Edge, display_topic, running_gateway, site_variant

from parking import topics
from parking.site import load_site
from parking.states import SpaceState

pytestmark = pytest.mark.timeout(120)
# the next car is sent to the best space, as the first; a car is seen in its held space
# once it stays there 1 s (the gateway's HOLD_SEEN_S is longer)
NO_CONGESTION = {"congestion_m": 0.0, "hold_seen_s": 1.0}


def _all_free(port: int, site) -> list[Edge]:
    """Every bus reports all its spaces free (snapshots); the edges, to stop."""
    edges = []
    for bus in site.buses:
        edge = Edge(port, bus.agent, bus.id)
        edge.send({s: "free" for s in site.spaces_of_source(bus.id)}, kind="snapshot")
        edges.append(edge)
    return edges


class Gate:
    """A gate controller on the broker: announces and cancels arrivals, reads the answers."""

    def __init__(self, port: int, watch: Collector):
        self.edge = Edge(port, "gate", "gate")  # only its publishing client is used
        self.watch = watch

    def arrive(self, request_id: str, entrance: str = "north", **extra) -> dict:
        mark = self.watch.mark()
        body = {"class": "resident", "request_id": request_id, **extra}
        self.edge.raw(topics.arrival(SITE_ID, entrance), json.dumps(body))
        return self.watch.wait_for(
            topics.assignment(SITE_ID, entrance),
            lambda a: a["request_id"] == request_id,
            after=mark,
            timeout=10,
        ).json()

    def cancel(self, request_id: str | None, entrance: str = "north", raw: bytes | None = None):
        """The gateway's answer: ("assignment", payload) or ("refusal", payload)."""
        mark = self.watch.mark()
        body = raw if raw is not None else json.dumps({"request_id": request_id}).encode()
        self.edge.raw(topics.arrival_cancel(SITE_ID, entrance), body)
        answers = (topics.assignment(SITE_ID, entrance), topics.arrival_refusal(SITE_ID, entrance))
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            for m in self.watch.since(mark):
                if m.topic in answers:
                    kind = "assignment" if m.topic == answers[0] else "refusal"
                    return kind, m.json()
            time.sleep(0.02)
        raise AssertionError(f"no answer to the cancel of {request_id!r}")

    def stop(self) -> None:
        self.edge.stop()


@contextmanager
def gate_scene(mosquitto, tmp_path, **options) -> Iterator[tuple]:
    """The example site's variant on a running gateway (``options`` for it), every bus
    reporting all free, a gate and a collector; (site, service, edges, gate, watch), once
    every sign is out. Stops them all after."""
    site_path = site_variant(tmp_path)
    site = load_site(site_path)
    watch = Collector(mosquitto.port)
    with running_gateway(site_path, mosquitto.url, tmp_path / "j.db", **options) as service:
        edges = _all_free(mosquitto.port, site)
        gate = Gate(mosquitto.port, watch)
        try:
            assert eventually(lambda: all(watch.latest(display_topic(d.id)) for d in site.displays))
            yield site, service, edges, gate, watch
        finally:
            gate.stop()
            for e in edges:
                e.stop()
            watch.stop()


def _counts(watch: Collector, site) -> dict[str, list]:
    return {d.id: [ln["count"] for ln in watch.latest(display_topic(d.id))["lines"]]
            for d in site.displays}  # fmt: skip


def test_a_cancel_releases_the_hold_and_is_refused_when_it_changes_nothing(mosquitto, tmp_path):
    with gate_scene(mosquitto, tmp_path, core_options=NO_CONGESTION) as scene:
        site, service, edges, gate, watch = scene
        gw = service.gateway
        time.sleep(0.5)  # the signs settle on the snapshots
        before = _counts(watch, site)

        first = gate.arrive("g1-0001")
        space = first["space"]
        assert space is not None and first["hold_expires"] is not None
        assert eventually(lambda: _counts(watch, site) != before)  # off the signs while held
        assert site.space_index[space] in gw.core.holds
        zone = first["zone"]
        assert {z.zone: z.held for z in gw.zone_counts()}[zone] == 1  # the API's /zones

        kind, answer = gate.cancel("g1-0001")
        assert kind == "assignment"
        assert (answer["space"], answer["request_id"], answer["cancelled"]) == (
            space,
            "g1-0001",
            True,
        )
        assert answer["hold_expires"] is None and answer["route"] == []
        assert site.space_index[space] not in gw.core.holds
        assert {z.zone: z.held for z in gw.zone_counts()}[zone] == 0
        assert eventually(lambda: _counts(watch, site) == before)  # back on the signs
        # the next car may be sent there
        assert gate.arrive("g1-0002")["space"] == space

        # a QoS 1 redelivery of the cancel changes nothing: told it was cancelled
        kind, refusal = gate.cancel("g1-0001")
        assert (kind, refusal["reason"], refusal["cancel"]) == (
            "refusal",
            "already_cancelled",
            True,
        )
        assert refusal["request_id"] == "g1-0001"
        assert site.space_index[space] in gw.core.holds  # g1-0002's hold stands
        # another arrival at this gate sent again after the cancel: the same answer
        assert gate.arrive("g1-0001")["cancelled"] is True

        assert gate.cancel("nope")[1]["reason"] == "unknown_request"
        # g1-0002 was answered at north, not at east
        assert gate.cancel("g1-0002", entrance="east")[1]["reason"] == "unknown_request"
        assert site.space_index[space] in gw.core.holds
        late = gate.arrive("g1-0003", ts=time.time() - 3600)  # no hold for a late one
        assert late["hold_expires"] is None
        assert gate.cancel("g1-0003")[1]["reason"] == "not_held"

        parked = gate.arrive("g1-0004")["space"]
        (bus,) = [b for b in edges if parked in site.spaces_of_source(b.source)]
        bus.send({parked: "occupied"})  # the car parks: seen once there 1 s
        assert eventually(lambda: site.space_index[parked] not in gw.core.holds)
        assert gate.cancel("g1-0004")[1]["reason"] == "car_seen"

        assert gate.cancel(None, raw=b"{not json")[1]["reason"] == "bad_json"
        kind, refusal = gate.cancel(None, raw=b'{"request_id": "g1-0002", "class": "x"}')
        assert (refusal["reason"], refusal["request_id"]) == ("invalid", "g1-0002")
        assert gate.cancel("g1-0002", entrance="west")[1]["reason"] == "unknown_entrance"
        assert site.space_index[space] in gw.core.holds  # none of them touched it

        assert gw.counters().arrival_cancels == {
            ("north", "released"): 1,
            ("north", "already_cancelled"): 1,
            ("north", "unknown_request"): 1,
            ("east", "unknown_request"): 1,
            ("north", "not_held"): 1,
            ("north", "car_seen"): 1,
            ("north", "bad_json"): 1,
            ("north", "invalid"): 1,
            ("?", "unknown_entrance"): 1,
        }


def test_a_retained_cancel_is_refused_unanswered(mosquitto, tmp_path):
    """A cancel the broker kept (published with the retain flag) is an old message replayed
    at every connect, not a car leaving: refused as retained, no answer, the hold stays."""
    from gateway.journal import Journal

    db = tmp_path / "j.db"
    journal = Journal(db)
    now = time.time()
    answer = {"entrance": "north", "class": "resident", "space": "A-003", "zone": "A",
              "hold_expires": now + 300, "request_id": "g1-0001", "ts": now}  # fmt: skip
    with journal.transaction():
        journal.add_assignment(
            now, "north", "resident", "A-003", "A", now + 300, None, "g1-0001", json.dumps(answer)
        )
    journal.close()
    watch = Collector(mosquitto.port)
    gate = Gate(mosquitto.port, watch)
    cancel = topics.arrival_cancel(SITE_ID, "north")
    try:
        gate.edge.raw(cancel, json.dumps({"request_id": "g1-0001"}), retain=True)
        with running_gateway(site_variant(tmp_path), mosquitto.url, db) as service:
            gw = service.gateway
            held = load_site(site_variant(tmp_path)).space_index["A-003"]
            assert held in gw.core.holds  # restored from the journal
            assert eventually(lambda: gw.counters().rejected.get("retained", 0) == 1)
            time.sleep(0.3)
            answered = {
                topics.assignment(SITE_ID, "north"),
                topics.arrival_refusal(SITE_ID, "north"),
            }
            assert [m for m in watch.messages if m.topic in answered] == []
            assert held in gw.core.holds
            assert gw.counters().arrival_cancels == {}
    finally:
        gate.edge.raw(cancel, b"", retain=True)
        gate.stop()
        watch.stop()


def test_a_cancel_after_the_hold_expired_is_refused(mosquitto, tmp_path):
    with gate_scene(mosquitto, tmp_path, hold_s=1.0) as scene:
        site, service, edges, gate, watch = scene
        space = gate.arrive("g1-0001")["space"]
        assert eventually(lambda: site.space_index[space] not in service.gateway.core.holds)
        kind, refusal = gate.cancel("g1-0001")
        assert (kind, refusal["reason"]) == ("refusal", "hold_expired")


def test_a_car_seen_in_a_held_space_of_a_closed_zone_ends_its_hold(mosquitto, tmp_path):
    """The space's public state stays closed whatever its sensor says, but a car seen in it
    is the car the hold waited for: the hold ends as in an open zone (no longer counted
    against its entrance's cap; a cancel is told the car was seen)."""
    with gate_scene(
        mosquitto, tmp_path, core_options=NO_CONGESTION, max_holds_per_entrance=1
    ) as scene:
        site, service, edges, gate, watch = scene
        gw = service.gateway
        first = gate.arrive("g1-0001")
        space, zone = first["space"], first["zone"]
        s = site.space_index[space]
        assert first["hold_expires"] is not None and s in gw.core.holds
        close = {"action": "close", "by": "alice", "reason": "cleaning", "ts": time.time()}
        gate.edge.raw(topics.zone_control(SITE_ID, zone), json.dumps(close))
        assert eventually(lambda: gw.state.closed[s])
        assert s in gw.core.holds  # the car is on its way: closing keeps its space
        # the entrance's one hold is outstanding: the next car gets no hold
        assert gate.arrive("g1-0002")["hold_expires"] is None

        (bus,) = [b for b in edges if space in site.spaces_of_source(b.source)]
        bus.send({space: "occupied"})
        assert eventually(lambda: s not in gw.core.holds, timeout=5)
        assert gw.state.state[s] == SpaceState.CLOSED  # still closed
        assert gate.cancel("g1-0001")[1]["reason"] == "car_seen"
        assert gate.arrive("g1-0003")["hold_expires"] is not None  # the cap is free


def _gateway(cmd: list[str], env: dict[str, str], log) -> subprocess.Popen:
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def test_cancels_survive_a_kill_9_of_the_gateway(mosquitto, tmp_path, subprocess_env):
    """A hold given before a kill -9 is found by a cancel after the restart; a hold a cancel
    released before it stays released."""
    site_path = site_variant(tmp_path, ttl_s=60)
    site = load_site(site_path)
    db = tmp_path / "journal.db"
    cmd = parkguide_cmd(
        "gateway", "--site", str(site_path), "--broker", mosquitto.url, "--db", str(db),
        "--congestion-m", "0", "--hold-s", "300",
    )  # fmt: skip
    watch = Collector(mosquitto.port)
    gate = Gate(mosquitto.port, watch)
    edges: list[Edge] = []
    log = (tmp_path / "gateway.log").open("ab")
    procs: list[subprocess.Popen] = []
    online = topics.gateway_availability(SITE_ID)
    try:
        procs.append(_gateway(cmd, subprocess_env, log))
        watch.wait_for(online, lambda p: p == "online", timeout=30)
        edges = _all_free(mosquitto.port, site)
        assert eventually(lambda: all(watch.latest(display_topic(d.id)) for d in site.displays))
        first = gate.arrive("g1-0001")["space"]
        second = gate.arrive("g1-0002")["space"]
        assert None not in (first, second) and first != second
        assert gate.cancel("g1-0001")[0] == "assignment"

        for _ in range(2):
            mark = watch.mark()
            procs[-1].send_signal(signal.SIGKILL)
            procs[-1].wait(10)
            watch.wait_for(online, lambda p: p == "offline", after=mark, timeout=10)
            mark = watch.mark()
            procs.append(_gateway(cmd, subprocess_env, log))
            watch.wait_for(online, lambda p: p == "online", after=mark, timeout=30)
        # released before the restarts: the next car gets it; g1-0002's is still held
        assert gate.arrive("g1-0003")["space"] == first
        kind, answer = gate.cancel("g1-0002")
        assert (kind, answer["space"], answer["cancelled"]) == ("assignment", second, True)
        assert gate.arrive("g1-0004")["space"] == second  # released after the restart
        assert gate.cancel("g1-0002")[1]["reason"] == "already_cancelled"
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(10)
        log.close()
        gate.stop()
        for e in edges:
            e.stop()
        watch.stop()


def test_the_standalone_api_sees_a_cancelled_hold_end(
    processes,  # noqa: F811
    mosquitto,
    tmp_path,
):
    """`parkguide api` beside `parkguide gateway`: /zones counts the hold while it is open
    and not once the gate cancelled it; so does an API started after the cancel. A cancel
    refused (sent again, or for an id nobody knows) is no refused arrival to alert managers
    about, and /arrivals counts the car once, as cancelled."""
    import httpx
    from api_support import PASSWORD
    from conftest import free_port, wait_port

    db = tmp_path / "journal.sqlite"
    site_path = site_variant(tmp_path)
    site = load_site(site_path)
    args = ("--site", str(site_path), "--broker", mosquitto.url, "--db", str(db))
    processes.add_user(db, "li", "manager", PASSWORD)
    watch = Collector(mosquitto.port)
    processes.start("gateway", "gateway", *args, "--congestion-m", "0")
    watch.wait_for(topics.gateway_availability(SITE_ID), lambda p: p == "online", timeout=30)
    port = free_port()
    secret = {"PARKGUIDE_SESSION_SECRET": "s" * 40, "PARKGUIDE_ALERT_CHECK_S": "0.2"}
    processes.start("api", "api", *args, "--http", f"127.0.0.1:{port}", env=secret)
    wait_port(port, timeout=60)
    url = f"http://127.0.0.1:{port}/api/v1/zones"
    edges = _all_free(mosquitto.port, site)
    gate = Gate(mosquitto.port, watch)

    def zone(z: str) -> dict:
        return {c["zone"]: c for c in httpx.get(url).json()}[z]

    try:
        assert eventually(lambda: all(watch.latest(display_topic(d.id)) for d in site.displays))
        given = gate.arrive("g1-0001")
        z = given["zone"]
        assert eventually(lambda: zone(z)["held"] == 1), processes.logs()
        offered = zone(z)["offered"]
        assert gate.cancel("g1-0001")[0] == "assignment"
        assert eventually(lambda: zone(z)["held"] == 0), processes.logs()
        assert zone(z)["offered"] == offered + 1
        assert gate.cancel("g1-0001")[1]["reason"] == "already_cancelled"
        assert gate.cancel("g1-typo")[1]["reason"] == "unknown_request"
        api = url.rsplit("/", 1)[0]
        login = httpx.post(f"{api}/auth/login", json={"name": "li", "password": PASSWORD})
        h = {"Authorization": f"Bearer {login.json()['token']}"}
        time.sleep(1.0)  # the alert monitor's next looks (every 0.2 s here)
        alerts = httpx.get(f"{api}/alerts", headers=h).json()
        assert not [a for a in alerts if a["kind"] == "arrivals_refused"], alerts
        north = {a["entrance"]: a for a in httpx.get(f"{api}/arrivals", headers=h).json()}["north"]
        assert (north["last_hour"], north["cancelled_last_hour"]) == (1, 1), north
    finally:
        gate.stop()
        for e in edges:
            e.stop()
        watch.stop()

    # an API started after the cancel reads the journal's answers: the hold is over
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig

    later = MqttLiveView(site, BrokerConfig("127.0.0.1", free_port()), str(db))
    later.connected.set()
    later._handle(topics.gateway_availability(SITE_ID), b"online")
    later._load_journal()
    later._state[given["space"]] = ("free", time.time())
    assert later._holds == {}
    assert given["space"] not in {s.space for s in later.spaces() if s.held}
