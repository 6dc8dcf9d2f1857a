# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Live updates over server-sent events from a real uvicorn server, and the stand-alone
``parkguide api`` process (retained MQTT topics + the gateway's journal) against a real
``parkguide gateway`` on mosquitto."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from datetime import datetime

import httpx
import paho.mqtt.client as mqtt
import pytest
from api_support import (  # noqa: F401
    PASSWORD,
    GatewayHarness,
    ServerThread,
    harness,
    settings,
    users,
)
from conftest import eventually, free_port, wait_port
from e2e_support import EXAMPLE_SITE, processes  # noqa: F401

from api.app import create_app
from parking import topics
from parking.payloads import OccupancyReport, SpaceObservation

LIVE_DEADLINE_S = 1.0  # issue 5: the page updates within 1 s of a change


class StreamReader:
    """Reads an SSE stream in a thread; every event is kept as (kind, message, received)."""

    def __init__(self, url: str, headers: dict[str, str] | None = None):
        self.events: list[tuple[str, dict, float]] = []
        self.status: int | None = None
        self.encoding: str | None = None  # the response's Content-Encoding
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._ready = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, headers or {}), daemon=True)
        self.thread.start()
        assert self._ready.wait(10), "the stream did not open"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5.0, read=30.0)) as c,
                c.stream("GET", url, headers=headers) as r,
            ):
                self.status = r.status_code
                self.encoding = r.headers.get("content-encoding")
                self._ready.set()
                kind = None
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind:
                        with self._cond:
                            self.events.append((kind, json.loads(line[6:]), time.monotonic()))
                            self._cond.notify_all()
        except httpx.HTTPError:
            if not self._stop.is_set():
                raise

    def mark(self) -> int:
        with self._cond:
            return len(self.events)

    def wait_for(self, kind: str, pred, timeout: float, after: int = 0) -> tuple[dict, float]:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for k, msg, at in self.events[after:]:
                    if k == kind and pred(msg.get("data", {})):
                        return msg, at
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no {kind} event within {timeout} s: {self.events[-5:]}")
                self._cond.wait(left)

    def kinds_after(self, mark: int) -> list[str]:
        with self._cond:
            return [k for k, _, _ in self.events[mark:]]

    def close(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def server(harness, users):
    harness.fill({"A-001"})
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv:
        yield srv


def test_stream_pushes_state_changes_within_a_second(server, harness):
    r = httpx.post(f"{server.url}/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
    viewer = StreamReader(
        f"{server.url}/api/v1/stream", {"Authorization": f"Bearer {r.json()['token']}"}
    )
    anonymous = StreamReader(f"{server.url}/api/v1/stream")
    try:
        assert viewer.status == anonymous.status == 200
        viewer.wait_for("hello", lambda d: True, 5)
        anonymous.wait_for("hello", lambda d: True, 5)
        t0 = time.monotonic()
        harness.report("bus-g", {"A-050": "occupied"})
        msg, at = viewer.wait_for("space", lambda d: d.get("space") == "A-050", 5)
        assert msg["data"]["state"] == "occupied"
        assert at - t0 <= LIVE_DEADLINE_S
        viewer.wait_for("zone", lambda d: d.get("zone") == "A", 5)
        viewer.wait_for("display", lambda d: d.get("display") == "gate-north", 5)
        zone, _ = anonymous.wait_for("zone", lambda d: d.get("zone") == "A", 5)
        assert zone["data"]["occupied"] == 2
        anonymous.wait_for("display", lambda d: d.get("display") == "gate-north", 5)
        # anonymous listeners get counts and signs, never single spaces
        assert "space" not in anonymous.kinds_after(0)
    finally:
        viewer.close()
        anonymous.close()


def test_large_answers_are_gzipped_but_the_stream_is_not_held_back(server, harness):
    """The site and spaces lists are megabytes on a big site: gzip when the client accepts it.
    The live stream stays as it is, each event sent as it comes."""
    r = httpx.post(f"{server.url}/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
    auth = {"Authorization": f"Bearer {r.json()['token']}"}
    for path in ("/api/v1/site", "/api/v1/spaces"):
        plain = httpx.get(f"{server.url}{path}", headers={**auth, "Accept-Encoding": "identity"})
        packed = httpx.get(f"{server.url}{path}", headers={**auth, "Accept-Encoding": "gzip"})
        assert plain.headers.get("content-encoding") is None
        assert packed.headers["content-encoding"] == "gzip", path
        assert int(packed.headers["content-length"]) < len(plain.content) / 3, path
        assert packed.json() == plain.json()
    small = httpx.get(
        f"{server.url}/api/v1/spaces/A-001", headers={**auth, "Accept-Encoding": "gzip"}
    )
    assert len(small.content) < 1000 and small.headers.get("content-encoding") is None

    stream = StreamReader(f"{server.url}/api/v1/stream", {**auth, "Accept-Encoding": "gzip"})
    try:
        assert (stream.status, stream.encoding) == (200, None)
        stream.wait_for("hello", lambda d: True, 5)
        t0 = time.monotonic()
        harness.report("bus-g", {"A-051": "occupied"})  # one small event: nothing to fill a buffer
        _, at = stream.wait_for("space", lambda d: d.get("space") == "A-051", 5)
        assert at - t0 <= LIVE_DEADLINE_S
    finally:
        stream.close()


def test_streams_are_capped_and_logins_keep_their_share(harness, users):
    """Anonymous pages cannot use up the process: beyond the public cap a new stream is
    answered 503 with Retry-After, while a logged-in user still gets one up to the total cap;
    a closed stream frees its place."""
    app = create_app(
        harness.gateway,
        settings(max_public_streams=2, max_streams=3),
        db_path=str(harness.db_path),
    )
    with ServerThread(app, free_port()) as srv:
        url = f"{srv.url}/api/v1/stream"
        public = [StreamReader(url), StreamReader(url)]
        try:
            for r in public:
                r.wait_for("hello", lambda d: True, 5)
            third = httpx.get(url, timeout=5)
            assert third.status_code == 503 and third.headers["retry-after"] == "30"
            login = httpx.post(
                f"{srv.url}/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD}
            )
            bearer = {"Authorization": f"Bearer {login.json()['token']}"}
            viewer = StreamReader(url, bearer)
            public.append(viewer)
            assert viewer.status == 200
            viewer.wait_for("hello", lambda d: True, 5)
            assert httpx.get(url, headers=bearer, timeout=5).status_code == 503  # 3 in all
            public.pop(0).close()
            deadline = time.monotonic() + 20  # the server notices at its next keep-alive
            again = StreamReader(url)
            while again.status != 200 and time.monotonic() < deadline:
                again.close()
                time.sleep(0.5)
                again = StreamReader(url)
            public.append(again)
            assert again.status == 200
        finally:
            for r in public:
                r.close()


class _Held:
    """A stream opened and read up to its hello (when answered 200), then left open;
    :meth:`close` hangs up. (Its line iterator is kept: dropping it closes the stream.)"""

    def __init__(self, c: httpx.Client, url: str, headers: dict[str, str]):
        self.response = r = c.send(c.build_request("GET", url, headers=headers), stream=True)
        self.lines = r.iter_lines()
        if r.status_code == 200:
            assert next(self.lines) == "retry: 1000" and next(self.lines) == "event: hello"
        else:
            r.read()

    def close(self) -> None:
        self.response.close()


def test_one_login_cannot_take_every_stream(harness, users):
    """One login (a stolen session, a script reconnecting in a loop) took every slot of the
    stream cap and locked every other manager out: beyond ``streams_per_user`` a user's new
    stream is answered 429 naming the cap, while another user still gets one; a stream
    closed frees its place at once, and /metrics counts the refusals."""
    app = create_app(harness.gateway, settings(streams_per_user=2), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv, httpx.Client(timeout=10) as c:
        url = f"{srv.url}/api/v1/stream"

        def bearer(name: str) -> dict[str, str]:
            r = c.post(f"{srv.url}/api/v1/auth/login", json={"name": name, "password": PASSWORD})
            return {"Authorization": f"Bearer {r.json()['token']}"}

        viewer, manager = bearer("viewer"), bearer("manager")
        other_session = bearer("viewer")  # the cap is the user's, whichever session
        hub = app.state.ctx.hub
        streams = [_Held(c, url, viewer), _Held(c, url, other_session)]
        try:
            assert [s.response.status_code for s in streams] == [200, 200]
            over = _Held(c, url, viewer).response
            assert over.status_code == 429
            assert over.headers["retry-after"] == "30"
            assert "already has 2 live streams open" in over.json()["detail"]
            assert "PARKGUIDE_STREAMS_PER_USER" in over.json()["detail"]
            streams.append(_Held(c, url, manager))
            assert streams[-1].response.status_code == 200  # another user is not locked out
            metrics = c.get(f"{srv.url}/metrics", headers=manager).text
            assert 'parkguide_streams_refused_total{cap="per_user"} 1' in metrics
            assert "parkguide_stream_clients 3" in metrics
            streams.pop(0).close()
            assert eventually(lambda: hub.streams_of("viewer") == 1, timeout=5)
            again = _Held(c, url, viewer)
            streams.append(again)
            assert again.response.status_code == 200
            assert hub.streams_of("viewer") == 2
        finally:
            for s in streams:
                s.close()
        assert eventually(lambda: not hub.clients, timeout=5)  # each hang-up freed its place


def _refused_per_user(metrics: str) -> int:
    return int(metrics.split('parkguide_streams_refused_total{cap="per_user"} ')[1].split()[0])


def test_refusals_at_a_logins_cap_are_logged_once_a_minute_and_each_counted(harness, users, caplog):
    """Every stream refused at a login's cap logged a line: any viewer asking again and
    again flooded the log. One line a minute per login (the rest at DEBUG); /metrics still
    counts each."""
    caplog.set_level(logging.DEBUG, logger="api")  # wherever it is said
    app = create_app(harness.gateway, settings(streams_per_user=1), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv, httpx.Client(timeout=10) as c:
        url = f"{srv.url}/api/v1/stream"
        tokens = {}
        for name in ("viewer", "manager"):
            r = c.post(f"{srv.url}/api/v1/auth/login", json={"name": name, "password": PASSWORD})
            tokens[name] = {"Authorization": f"Bearer {r.json()['token']}"}
        held = [_Held(c, url, tokens["viewer"]), _Held(c, url, tokens["manager"])]
        try:
            assert [h.response.status_code for h in held] == [200, 200]
            for _ in range(50):
                assert c.get(url, headers=tokens["viewer"]).status_code == 429
            assert c.get(url, headers=tokens["manager"]).status_code == 429
            metrics = c.get(f"{srv.url}/metrics", headers=tokens["manager"]).text
        finally:
            for h in held:
                h.close()
    assert _refused_per_user(metrics) == 51
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    refusals = [m for m in said if " refused: " in m]
    assert [m.split(" refused")[0] for m in refusals] == [
        "live stream of viewer",
        "live stream of manager",  # each login its own line
    ], refusals
    assert "1 open, the most one login may have" in refusals[0]
    debug = [r for r in caplog.records if r.levelno == logging.DEBUG and " refused: " in r.msg]
    assert len(debug) == 49  # a debug log still has every one


def test_a_probe_answers_the_refusal_a_stream_would_get_without_counting_it(harness, users):
    """The dashboard asks why its stream was refused (EventSource cannot read the answer):
    asked as a stream, each retry over a cap was refused and counted twice. A probe
    (``?probe=true``) answers the refusal a stream would get now, not counted, or 204, and
    opens no stream."""
    app = create_app(harness.gateway, settings(streams_per_user=1), db_path=str(harness.db_path))
    hub = app.state.ctx.hub
    with ServerThread(app, free_port()) as srv, httpx.Client(timeout=10) as c:
        url = f"{srv.url}/api/v1/stream"
        r = c.post(f"{srv.url}/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
        viewer = {"Authorization": f"Bearer {r.json()['token']}"}
        free = c.get(url, params={"probe": "true"}, headers=viewer)
        assert free.status_code == 204 and not free.content
        assert hub.streams_of("viewer") == 0  # no stream opened
        held = _Held(c, url, viewer)
        try:
            assert c.get(url, headers=viewer).status_code == 429  # the page's stream
            why = c.get(url, params={"probe": "true"}, headers=viewer)  # and its question
            assert why.status_code == 429 and why.headers["retry-after"] == "30"
            assert "already has 1 live streams open" in why.json()["detail"]
            metrics = c.get(f"{srv.url}/metrics", headers=viewer).text
            assert _refused_per_user(metrics) == 1
            assert hub.streams_of("viewer") == 1
        finally:
            held.close()


def test_stream_needs_login_when_counts_are_private(harness, users):
    app = create_app(harness.gateway, settings(public_read=False), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv:
        r = httpx.get(f"{srv.url}/api/v1/stream", timeout=5)
        assert r.status_code == 401


def _report(client: mqtt.Client, boot: str, seq: int, states: dict[str, str], kind: str) -> None:
    now = time.time()
    report = OccupancyReport(
        agent="serial-bus-g", source="bus-g", boot=boot, seq=seq, ts=now, kind=kind,
        spaces=[SpaceObservation(space=s, state=st, since=now) for s, st in states.items()],
    )  # fmt: skip
    client.publish(
        topics.edge_occupancy("xinyuan", "serial-bus-g"), report.model_dump_json(), qos=1
    ).wait_for_publish(5)


def _wait(fn, timeout: float = 15.0):
    return eventually(fn, timeout)


def test_standalone_api_process(processes, mosquitto, tmp_path):
    """`parkguide api` beside `parkguide gateway`: live states, manager actions over MQTT to the
    gateway, and every space unknown once the gateway's last will says it is gone."""
    db = tmp_path / "journal.sqlite"
    site = ("--site", str(EXAMPLE_SITE))
    processes.add_user(db, "boss", "manager", PASSWORD)
    gateway = processes.start(
        "gateway", "gateway", *site, "--broker", mosquitto.url, "--db", str(db)
    )
    port = free_port()
    processes.start(
        "api", "api", *site, "--broker", mosquitto.url, "--db", str(db),
        "--http", f"127.0.0.1:{port}", env={"PARKGUIDE_SESSION_SECRET": "s" * 40},
    )  # fmt: skip
    wait_port(port, timeout=60)
    url = f"http://127.0.0.1:{port}"
    edge = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="test-edge")
    gateway_online = threading.Event()
    availability = topics.gateway_availability("xinyuan")

    def on_message(client, userdata, msg):
        if msg.topic == availability and msg.payload.decode() == topics.ONLINE:
            gateway_online.set()

    edge.on_message = on_message
    edge.connect("127.0.0.1", mosquitto.port)
    edge.loop_start()
    try:
        # the API may be up before the gateway has subscribed: a report sent earlier is lost
        edge.subscribe(availability, qos=1)
        assert gateway_online.wait(30), processes.logs()
        boot = uuid.uuid4().hex[:8]
        from parking.site import load_site

        bus = load_site(EXAMPLE_SITE).spaces_of_source("bus-g")
        _report(edge, boot, 0, {s: "free" for s in bus}, "snapshot")
        _report(edge, boot, 1, {"B-007": "occupied"}, "delta")
        login = httpx.post(f"{url}/api/v1/auth/login", json={"name": "boss", "password": PASSWORD})
        h = {"Authorization": f"Bearer {login.json()['token']}"}

        def space(sid: str) -> str:
            return httpx.get(f"{url}/api/v1/spaces/{sid}", headers=h).json()["state"]

        assert _wait(lambda: space("B-007") == "occupied"), processes.logs()
        zones = {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}
        assert _wait(
            lambda: (
                {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}["B"]["occupied"]
                == 1
            )
        )
        assert zones["C"]["unknown"] == 40  # no camera: unknown, never free

        r = httpx.post(f"{url}/api/v1/spaces/B-020/close", json={"reason": "paint"}, headers=h)
        assert r.status_code == 202
        assert _wait(lambda: space("B-020") == "closed"), processes.logs()
        events = httpx.get(f"{url}/api/v1/events", params={"space": "B-020"}, headers=h).json()
        assert events["items"][0]["agent"] == "boss"
        # a close and at once an open: the open is judged on the state the close left (the
        # API waits for the gateway to journal what it sent), not refused as "not closed"
        assert httpx.post(f"{url}/api/v1/spaces/B-021/close", headers=h).status_code == 202
        r = httpx.post(f"{url}/api/v1/spaces/B-021/open", headers=h)
        assert (r.status_code, r.json().get("was")) == (202, "closed"), r.text
        assert _wait(lambda: space("B-021") == "free"), processes.logs()
        # a whole zone over MQTT (control/zones): B-020, closed on its own, stays closed
        r = httpx.post(f"{url}/api/v1/zones/B/close", json={"reason": "snow"}, headers=h)
        assert r.status_code == 202, r.text
        assert len(r.json()["spaces"]) == 71
        assert [x["space"] for x in r.json()["left_closed"]] == ["B-020"]
        assert r.json()["left_closed"][0]["closed_reason"] == "paint"

        def zone_b() -> dict:
            return {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}["B"]

        assert _wait(lambda: zone_b()["closed"] == 72), processes.logs()
        r = httpx.post(f"{url}/api/v1/zones/B/open", headers=h)
        assert r.status_code == 202, r.text
        assert len(r.json()["spaces"]) == 71
        assert _wait(lambda: zone_b()["closed"] == 1), processes.logs()
        assert space("B-020") == "closed"
        # the gateway's no-op, once its open is in the journal: 409
        assert _wait(lambda: httpx.post(f"{url}/api/v1/zones/B/open", headers=h).status_code == 409)

        # a zone closed and at once one of its spaces opened, then the zone: each judged on
        # the state the one before left (the API waits for the journal to show what it sent)
        r = httpx.post(f"{url}/api/v1/zones/C/close", json={"reason": "market"}, headers=h)
        assert r.status_code == 202, r.text
        r = httpx.post(f"{url}/api/v1/spaces/C-001/open", headers=h)
        assert (r.status_code, r.json().get("closed_with_zone")) == (202, "C"), r.text
        r = httpx.post(f"{url}/api/v1/zones/C/open", headers=h)
        assert r.status_code == 202, r.text
        assert len(r.json()["spaces"]) == 39 and "C-001" not in r.json()["spaces"], r.text

        metrics = httpx.get(f"{url}/metrics", headers=h).text.splitlines()
        # the gateway's own counts are in the gateway's /metrics: absent here, not a false 0
        assert not [m for m in metrics if m.startswith("parkguide_reports_accepted_total")]
        assert 'parkguide_outbox_dropped_total{reason="cap"} 0' in metrics

        gateway.kill9()  # the broker publishes its last will
        assert _wait(lambda: space("B-007") == "unknown"), processes.logs()
        zones = {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}
        # B-020 stays closed (the manager's, as the gateway's own view and its InfluxDB
        # outage points keep it); every other space of B is unknown
        b = zones["B"]
        assert (b["unknown"], b["closed"], b["free"]) == (b["total"] - 1, 1, 0), b
        assert space("B-020") == "closed"
        # a manager's action now would wait at the broker for the gateway's return: refused
        r = httpx.post(f"{url}/api/v1/spaces/B-020/open", json={"reason": "done"}, headers=h)
        assert r.status_code == 503, r.text
        assert "nothing changed: the gateway is offline" in r.json()["detail"]
        r = httpx.post(f"{url}/api/v1/zones/B/close", json={"reason": "snow"}, headers=h)
        assert r.status_code == 503, r.text
        assert "nothing changed: the gateway is offline" in r.json()["detail"]
    finally:
        edge.loop_stop()
        edge.disconnect()


def test_a_standalone_view_goes_blind_when_the_broker_dies(mosquitto, tmp_path):
    """A broker killed outright delivers no last will: the view itself must stop showing
    the last counts as live (silence is never free), and come back when the broker does.
    An assignment sent again for a repeated arrival is one car, not two."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from gateway.readside import ControlUnavailable
    from parking.broker import BrokerConfig
    from parking.payloads import Assignment, LocalText, ZoneCounts
    from parking.site import load_site

    site = load_site(EXAMPLE_SITE)
    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    zone_a = ZoneCounts(zone="A", free=80, occupied=0, unknown=0, closed=0, total=80, ts=1.0)
    hint = LocalText(zh="请前往", en="Go to A-040")
    assignment = Assignment(
        **{"class": "resident"},
        entrance="north",
        space="A-040",
        zone="A",
        hint=hint,
        ts=2.0,
        hold_expires=4_000_000_000.0,
    )

    def gateway_says() -> mqtt.Client:
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        c.connect("127.0.0.1", mosquitto.port)
        c.loop_start()
        c.publish(topics.gateway_availability("xinyuan"), "online", qos=1, retain=True)
        c.publish(topics.zone("xinyuan", "A"), zone_a.model_dump_json(), qos=1, retain=True)
        for _ in range(2):
            c.publish(
                topics.assignment("xinyuan", "north"), assignment.model_dump_json(by_alias=True), 1
            ).wait_for_publish(5)
        return c

    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
    view.start()
    try:
        assert view.connected.wait(10)
        gateway = gateway_says()

        def a() -> ZoneCounts:
            return next(z for z in view.zone_counts() if z.zone == "A")

        assert _wait(lambda: a().free == 80 and len(view.assignments()) == 1)
        gateway.loop_stop()
        mosquitto.proc.kill()  # no clean shutdown, no last will
        mosquitto.proc.wait(10)
        assert _wait(lambda: a().unknown == 80 and a().free == 0)
        # paho would queue a manager's action and send it on reconnect, however late
        with pytest.raises(ControlUnavailable, match="cannot reach the MQTT broker"):
            view.control_space("A-001", "close", "li", None)
        assert {s.state for s in view.spaces() if s.zone == "A"} == {"unknown"}
        mosquitto.start()  # the gateway reconnects and publishes afresh
        assert view.connected.wait(30)
        gateway_says().loop_stop()
        assert _wait(lambda: a().free == 80)
    finally:
        view.stop()


def test_a_standalone_view_applies_events_the_checkpoint_has_not_reached(tmp_path):
    """The gateway journals events up to ~1 s before its checkpoint writes the spaces table:
    the view applies them on top (none skipped), and tells the live stream what a refresh
    moved."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from parking.broker import BrokerConfig
    from parking.site import load_site

    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    row = ("A-001", "free", "free", 0, 10.0, 10.0, 10.0, "serial-bus-g")
    event = "INSERT INTO events(ts, space, old, new, source, agent, seq) VALUES (?,?,?,?,?,?,?)"
    with journal.transaction() as conn:
        journal.put_spaces([row])
        conn.execute(event, (10.0, "A-001", "unknown", "free", "bus-g", "serial-bus-g", 1))
        journal.mark_checkpoint(1)
        conn.execute(event, (20.0, "A-001", "free", "occupied", "bus-g", "serial-bus-g", 2))
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", free_port()), str(db))
    heard: list[tuple[str, str]] = []  # (space, state) of the live stream's space events
    view.subscribe(lambda ev: heard.append((ev.data.get("space"), ev.data.get("state"))))
    view.start()
    try:
        states = {s.space: s for s in view.spaces()}
        assert view._state["A-001"] == ("occupied", 20.0)  # the event after the checkpoint
        # shown unknown (no broker in this test) since the view went blind, not since 20
        assert states["A-001"].state == "unknown" and states["A-001"].since > 20.0
        with journal.transaction():  # the gateway's next checkpoint: a manager closed it
            journal.put_spaces([("A-001", "closed", "occupied", 1, 30.0, 20.0, 20.0, None)])
        journal.conn.execute(event, (30.0, "A-001", "occupied", "closed", "manager", "li", None))
        with journal.transaction():
            journal.mark_checkpoint(3)
        view._load_journal()  # the periodic refresh
        assert view._state["A-001"][0] == "closed"
        assert [space for space, _ in heard] == ["A-001"]  # unknown: no broker in this test
    finally:
        view.stop()
        journal.close()


def test_a_standalone_view_takes_availability_and_health_as_the_gateway_does(tmp_path):
    """The API's own view refuses what the gateway refuses: an 'offline' padded with spaces
    is not the will, and an older health report does not replace a newer one (its alerts
    would be stale)."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from parking.broker import BrokerConfig
    from parking.site import load_site

    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", free_port()), str(db))
    agent = "serial-bus-g"
    view._handle(topics.edge_availability("xinyuan", agent), b"online")
    view._handle(topics.edge_availability("xinyuan", agent), b"offline  ")
    assert view._online[agent] is True
    # an agent the site does not name: its will would be a critical alert forever
    view._handle(topics.edge_availability("xinyuan", "intruder"), b"offline")
    assert "intruder" not in {a.agent for a in view.agents()}
    assert view.counters().rejected == {"invalid": 1, "unknown_agent": 1}
    now = time.time()

    def health(ts: float, status: str) -> bytes:
        return json.dumps(
            {"agent": agent, "source": "bus-g", "ts": ts, "status": status, "nodes": []}
        ).encode()

    view._handle(topics.edge_health("xinyuan", agent), health(now, "ok"))
    view._handle(topics.edge_health("xinyuan", agent), health(now - 3600, "blind"))
    assert view._health[agent].status == "ok"
    assert view.counters().rejected == {"invalid": 1, "older_than_known": 1, "unknown_agent": 1}
    # a node bus-g does not have: left out (its "does not answer" would be a false alert)
    body = json.loads(health(now + 1, "degraded"))
    body["nodes"] = [{"address": 99, "status": "dead"}, {"address": 1, "status": "dead"}]
    view._handle(topics.edge_health("xinyuan", agent), json.dumps(body).encode())
    assert [n.address for n in view._health[agent].nodes] == [1]
    assert view.counters().rejected["unknown_node"] == 1
    # one boot's health after its clock stepped back ten minutes: taken in its order
    stepped = json.loads(health(now + 2, "ok")) | {"boot": "b1", "seq": 1}
    view._handle(topics.edge_health("xinyuan", agent), json.dumps(stepped).encode())
    stepped |= {"seq": 2, "ts": now - 600, "status": "blind"}
    view._handle(topics.edge_health("xinyuan", agent), json.dumps(stepped).encode())
    assert view._health[agent].status == "blind"
    assert view.counters().rejected["older_than_known"] == 1
    # the agent restarts (a new boot) after its clock stepped back: the view hears no
    # reports to tell the boots apart, and took the old run's health as newer by its ts
    restarted = stepped | {"boot": "b2", "seq": 1, "ts": now - 900, "status": "degraded"}
    view._handle(topics.edge_health("xinyuan", agent), json.dumps(restarted).encode())
    assert view._health[agent].status == "degraded"
    assert view.counters().rejected["older_than_known"] == 1
    # garbage on the gateway's availability is not its word: refused, nothing changes (it
    # raised a critical gateway_offline with every space unknown)
    view._handle(topics.gateway_availability("xinyuan"), b"online")
    view._handle(topics.gateway_availability("xinyuan"), b"[[[[")
    assert view.gateway_online() is True
    assert view.counters().rejected["invalid"] >= 1
    # the gateway's last will: the live stream's zone cards go unknown too, not only the map
    heard: list = []
    view.subscribe(heard.append)
    view._handle(topics.gateway_availability("xinyuan"), b"offline")
    zones = {ev.data["zone"]: ev.data for ev in heard if ev.kind == "zone"}
    assert set(zones) == {z.id for z in view.site.zones}
    assert all(z["unknown"] == z["total"] > 0 and z["free"] == 0 for z in zones.values())


def test_a_standalone_view_lists_the_journals_assignments_from_its_start(tmp_path):
    """The recent assignments come from the journal at start (and from the topic after)."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from parking.broker import BrokerConfig
    from parking.site import load_site

    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    with journal.transaction() as conn:
        for i, space in enumerate(["A-001", "A-002", "A-003"]):
            body = json.dumps(
                {"entrance": "north", "class": "resident", "space": space, "zone": "A",
                 "route": ["north", "A"], "hold_expires": 1000.0 + i, "ts": 100.0 + i}
            )  # fmt: skip
            conn.execute(
                "INSERT INTO assignments(ts, entrance, class, space, zone, hold_expires,"
                " payload) VALUES (?,?,?,?,?,?,?)",
                (100.0 + i, "north", "resident", space, "A", 1000.0 + i, body),
            )
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", free_port()), str(db))
    view.start()
    try:
        assert [a.space for a in view.assignments(10)] == ["A-003", "A-002", "A-001"]
    finally:
        view.stop()
        journal.close()


def _view_of_a_live_gateway(tmp_path):
    """A stand-alone view on an empty journal, told the broker and the gateway are up (no
    broker: messages are handed to it as they would arrive)."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from parking.broker import BrokerConfig
    from parking.site import load_site

    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", free_port()), str(db))
    view.connected.set()
    view._handle(topics.gateway_availability("xinyuan"), b"online")
    return view


def test_a_standalone_view_counts_the_holds_of_the_assignments_it_sees(tmp_path):
    """zones/{zone} does not say how many free spaces are held (a reader of an earlier
    release would refuse the key): the stand-alone view counts them from the assignments,
    for /zones and the stream, until the car parks or the hold runs out."""
    from gateway.allocation import HOLD_SEEN_S

    view = _view_of_a_live_gateway(tmp_path)
    now = time.time()
    counts = {"zone": "A", "free": 10, "occupied": 70, "unknown": 0, "closed": 0, "total": 80}
    view._handle(topics.zone("xinyuan", "A"), json.dumps({**counts, "ts": now}).encode())
    view._state["A-003"] = ("free", now)
    heard: list = []
    view.subscribe(heard.append)
    answer = {
        "entrance": "north", "class": "resident", "space": "A-003", "zone": "A",
        "route": [], "hint": {"zh": "去A-003", "en": "Go to A-003"}, "hold_expires": now + 60,
        "plate": None, "request_id": "r1", "ts": now,
    }  # fmt: skip
    view._handle(topics.assignment("xinyuan", "north"), json.dumps(answer).encode())
    (zone_a,) = [ev.data for ev in heard if ev.kind == "zone"]
    assert (zone_a["free"], zone_a["held"]) == (10, 1)
    assert {z.zone: z.held for z in view.zone_counts()}["A"] == 1
    view._state["A-003"] = ("unknown", now)  # its bus restarted: the hold stays, uncounted
    assert {z.zone: z.held for z in view.zone_counts()}["A"] == 0
    view._state["A-003"] = ("free", now)
    assert {z.zone: z.held for z in view.zone_counts()}["A"] == 1
    view._state["A-003"] = ("occupied", now)  # another car over its detector, for a moment
    assert {z.zone: z.held for z in view.zone_counts()}["A"] == 0
    view._state["A-003"] = ("free", now)  # free again: still held, as the gateway's
    assert {z.zone: z.held for z in view.zone_counts()}["A"] == 1
    view._state["A-003"] = ("occupied", now - HOLD_SEEN_S)  # the car parked, and stayed
    assert {z.zone: z.held for z in view.zone_counts()}["A"] == 0
    view._state["A-003"] = ("free", now)  # and left: no longer held
    assert {z.zone: z.held for z in view.zone_counts()}["A"] == 0

    # a view started after the hold was given takes it from the journal's assignments
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from parking.broker import BrokerConfig

    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    with journal.transaction():
        journal.add_assignment(now, "north", "resident", "A-004", "A", now + 60, None, "r2",
                               json.dumps({**answer, "space": "A-004", "request_id": "r2"}))  # fmt: skip
    journal.close()
    later = MqttLiveView(view.site, BrokerConfig("127.0.0.1", free_port()), str(db))
    later.connected.set()
    later._handle(topics.gateway_availability("xinyuan"), b"online")
    later._handle(topics.zone("xinyuan", "A"), json.dumps({**counts, "ts": now}).encode())
    later._load_journal()
    later._state["A-004"] = ("free", now)
    assert {z.zone: z.held for z in later.zone_counts()}["A"] == 1


def test_a_zone_message_that_comes_while_the_view_is_blind_is_not_streamed_as_current(
    tmp_path,
):
    """A retained zones/{zone} while the gateway is offline (a reconnect hands the stored
    copies over, the availability may come after them) holds counts of before the outage:
    the stream's zone card must stay unknown, as /zones does, and take them once back."""
    view = _view_of_a_live_gateway(tmp_path)
    view._handle(topics.gateway_availability("xinyuan"), b"offline")
    heard: list = []
    view.subscribe(heard.append)
    now = time.time()
    counts = {"zone": "A", "free": 10, "occupied": 70, "unknown": 0, "closed": 0, "total": 80}
    view._handle(
        topics.zone("xinyuan", "A"), json.dumps({**counts, "ts": now - 600}).encode(), True
    )
    (zone_a,) = [ev.data for ev in heard if ev.kind == "zone"]
    assert (zone_a["free"], zone_a["occupied"], zone_a["unknown"]) == (0, 0, 80)
    assert zone_a["ts"] >= now - 5  # since it went blind, not the counts' old time
    assert {z.zone: z.unknown for z in view.zone_counts()}["A"] == 80
    heard.clear()
    view._handle(topics.gateway_availability("xinyuan"), b"online")
    view._handle(topics.zone("xinyuan", "A"), json.dumps({**counts, "ts": now}).encode())
    zone_a = [ev.data for ev in heard if ev.kind == "zone" and ev.data["zone"] == "A"][-1]
    assert (zone_a["free"], zone_a["unknown"]) == (10, 0)


def test_a_standalone_view_tells_the_stream_when_a_hold_runs_out(tmp_path):
    """No message says a hold ran out: the view's own loop tells the live stream's zone card
    (once), else it offers one space fewer until the zone next changes. Readers of this
    release take a zone count with a key they do not know (a later gateway's)."""
    view = _view_of_a_live_gateway(tmp_path)
    now = time.time()
    counts = {"zone": "A", "free": 10, "occupied": 70, "unknown": 0, "closed": 0, "total": 80,
              "ts": now, "a_later_key": {"x": 1}}  # fmt: skip
    view._handle(topics.zone("xinyuan", "A"), json.dumps(counts).encode())
    view._state["A-003"] = ("free", now)
    answer = {
        "entrance": "north", "class": "resident", "space": "A-003", "zone": "A",
        "route": [], "hold_expires": now + 5, "ts": now, "later": True,
    }  # fmt: skip
    view._handle(topics.assignment("xinyuan", "north"), json.dumps(answer).encode())
    assert view.counters().rejected == {}
    heard: list = []
    view.subscribe(heard.append)
    view._tell_expired_holds(now + 1)  # still held: nothing to tell
    assert heard == []
    view._tell_expired_holds(now + 6)
    (zone_a,) = [ev.data for ev in heard if ev.kind == "zone"]
    assert (zone_a["zone"], zone_a["free"], zone_a["held"]) == ("A", 10, 0)
    view._tell_expired_holds(now + 7)  # told once
    assert len(heard) == 1


def test_a_broker_restored_after_a_power_cut_does_not_make_a_dead_gateway_look_live(
    mosquitto, tmp_path, caplog, monkeypatch
):
    """kill -9 of everything at once (a power cut): the broker restores from disk the
    gateway's retained "online", its zone counts and its signs, and no last will ever
    fires. The stand-alone API showed confident counts, the gateway up and no alert,
    for good. No live sign content for a validity and a grace (the stored copies sent at
    subscribe do not count) now means a silent gateway: every zone unknown,
    gateway_online False, said in the log; live content brings it back. Judged on this
    host's monotonic clock: the content's stamps are the gateway's clock."""
    import api.mqttview
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig
    from parking.site import load_site
    from tests.gateway_support import site_variant

    monkeypatch.setattr(api.mqttview, "SIGNS_STALE_GRACE_S", 0.5)
    site = load_site(site_variant(tmp_path, expires_s=2))
    zone, sign = site.zones[0].id, site.displays[0].id
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    cut = time.time() + 600  # stamped by a gateway clock ahead: still "valid" by ours

    def content(ts: float) -> bytes:
        line = {"label": {"zh": "A区", "en": "Zone A"}, "arrow": "right", "count": 12,
                "status": "ok", "text": {"zh": "12", "en": "12"}}  # fmt: skip
        return json.dumps({"display": sign, "ts": ts, "expires": ts + 60, "lines": [line]}).encode()

    counts = {"zone": zone, "free": 45, "occupied": 30, "unknown": 0, "closed": 0, "total": 75}
    for topic, payload in (
        (topics.zone(site.id, zone), json.dumps({**counts, "ts": cut}).encode()),
        (topics.display_content(site.id, sign), content(cut)),
        (topics.gateway_availability(site.id), topics.ONLINE.encode()),
        (topics.edge_availability(site.id, site.buses[0].agent), topics.ONLINE.encode()),
    ):
        pub.publish(topic, payload, qos=1, retain=True).wait_for_publish(5)
    caplog.set_level("INFO", logger="api.mqttview")
    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(tmp_path / "j.db"))
    view.start()
    try:
        assert view.connected.wait(10)
        assert eventually(lambda: view._displays.get(sign) is not None, timeout=10)
        assert view.gateway_online() is True  # within a validity of connecting
        assert eventually(lambda: view.gateway_online() is False, timeout=10)
        # the agent's stored "online" is no sign of life: its last_seen is not made "now"
        agent = next(a for a in view.agents() if a.agent == site.buses[0].agent)
        assert agent.last_seen is None
        shown = next(z for z in view.zone_counts() if z.zone == zone)
        assert (shown.free, shown.unknown) == (0, shown.total)
        # unknown as of when the signs ran out: a validity and a grace after connecting
        ran_out = view.broker_back_since() + 2 + 0.5
        assert abs(shown.ts - ran_out) < 0.2, (shown.ts, ran_out)
        assert eventually(lambda: "no sign content came from it" in caplog.text, timeout=5)
        # the gateway is back, its clock 10 min behind ours (its content "expired" by our
        # clock): its live content makes the counts count again, and keeps them counting
        for _ in range(5):
            stamped = time.time() - 600
            pub.publish(topics.display_content(site.id, sign), content(stamped), 1, True)
            assert eventually(lambda: view.gateway_online() is True, timeout=10)
            time.sleep(1.0)  # the site's signs are valid 2 s: republished every 1 s
        assert "the gateway publishes again" in caplog.text
        assert next(z for z in view.zone_counts() if z.zone == zone).free == 45
    finally:
        view.stop()
        pub.loop_stop()
        pub.disconnect()


def test_sign_pictures_blank_while_the_stand_alone_view_is_blind(mosquitto, tmp_path):
    """The gateway's last will blanks the real signs at once; the dashboard's pictures of
    them (/displays) kept the old counts until the content's own expiry, up to a minute
    later, while its zone cards already said unknown."""
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig
    from parking.site import load_site

    site = load_site(EXAMPLE_SITE)
    sign = site.displays[0].id
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    pub.connect("127.0.0.1", mosquitto.port)
    pub.loop_start()
    now = time.time()
    line = {"label": {"zh": "A区", "en": "Zone A"}, "arrow": "right", "count": 12,
            "status": "ok", "text": {"zh": "12", "en": "12"}}  # fmt: skip
    content = {"display": sign, "ts": now, "expires": now + 60, "lines": [line]}
    pub.publish(
        topics.display_content(site.id, sign), json.dumps(content), 1, True
    ).wait_for_publish(5)
    pub.publish(topics.gateway_availability(site.id), topics.ONLINE, 1, True).wait_for_publish(5)
    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(tmp_path / "j.db"))
    view.start()
    try:
        assert eventually(lambda: sign in view.displays() and view.gateway_online(), timeout=10)
        pub.publish(topics.gateway_availability(site.id), topics.OFFLINE, 1, True)  # last will
        assert eventually(lambda: view.gateway_online() is False, timeout=10)
        assert view.displays() == {}
    finally:
        view.stop()
        pub.loop_stop()
        pub.disconnect()


def test_a_standalone_api_stamps_requests_by_the_gateways_clock(mosquitto, tmp_path):
    """The API's host clock 400 s behind the gateway's: its close was stamped 400 s old by
    the gateway's clock, refused as stale (stale_control), and the page said "closed". It
    is stamped by the gateway's clock, as the gateway's live signs tell it."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from parking.broker import BrokerConfig
    from parking.payloads import DisplayContent
    from parking.site import load_site

    site = load_site(EXAMPLE_SITE)
    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    controls: list[dict] = []
    gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    gateway.on_message = lambda _c, _u, m: controls.append(json.loads(m.payload))
    gateway.connect("127.0.0.1", mosquitto.port)
    gateway.subscribe(topics.space_control_all(site.id), qos=1)
    gateway.loop_start()
    gateway.publish(topics.gateway_availability(site.id), "online", qos=1, retain=True)
    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
    view.start()
    try:
        deadline = time.monotonic() + 10
        while view.control_unavailable() is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        ahead = time.time() + 400  # the gateway's clock
        sign = DisplayContent(display="gate-north", lines=[], ts=ahead, expires=ahead + 60)
        gateway.publish(topics.display_content(site.id, "gate-north"), sign.model_dump_json(), 1)
        while view.gateway_clock_offset < 300 and time.monotonic() < deadline:
            time.sleep(0.05)
        view.control_space("A-001", "close", "boss", "paint")
        while not controls and time.monotonic() < deadline:
            time.sleep(0.05)
        (sent,) = controls
        assert abs(sent["ts"] - (time.time() + 400)) < 5, sent
    finally:
        view.stop()
        gateway.loop_stop()
        gateway.disconnect()


def test_a_zone_action_no_gateway_takes_is_not_answered_done(mosquitto, tmp_path):
    """A gateway of an earlier release (or a broker ACL without control/zones/+, README
    Upgrading step 7) takes a zone action silently: the stand-alone API answered 202 and the
    page said "29 spaces closed". It now waits for the journal to show it, and says 504."""
    from api_support import journal_with_users
    from fastapi.testclient import TestClient

    import api.routes.operations
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig
    from parking.payloads import DisplayContent
    from parking.site import load_site

    site = load_site(EXAMPLE_SITE)
    db = journal_with_users(tmp_path)
    old = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)  # online, signs live, journals nothing
    old.connect("127.0.0.1", mosquitto.port)
    old.loop_start()
    old.publish(topics.gateway_availability(site.id), "online", qos=1, retain=True)
    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
    view.start()
    app = create_app(view, settings(), db_path=str(db))
    try:
        with TestClient(app) as c:
            r = c.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
            h = {"Authorization": f"Bearer {r.json()['token']}"}
            now = time.time()
            sign = DisplayContent(display="gate-north", lines=[], ts=now, expires=now + 60)
            old.publish(topics.display_content(site.id, "gate-north"), sign.model_dump_json(), 1)
            assert eventually(lambda: view.control_unavailable() is None)
            t0 = time.monotonic()
            r = c.post("/api/v1/zones/B/close", json={"reason": "snow"}, headers=h)
            assert r.status_code == 504, r.text
            assert "did not confirm" in r.json()["detail"]
            assert time.monotonic() - t0 >= api.routes.operations.ZONE_CONFIRM_S - 0.1
    finally:
        view.stop()
        old.loop_stop()
        old.disconnect()


def test_a_blind_view_stamps_its_unknown_counts_with_when_it_went_blind(mosquitto, tmp_path):
    """The gateway's last will: /zones (and NGSI's observedAt) said every space unknown as
    of the last counts' time, a moment they were all known; now as of when the view learnt
    the gateway is gone, the same at every reading. A space shown unknown is so since
    then too. Back online, the gateway's own time again."""
    from api.mqttview import MqttLiveView
    from api.ngsi import parking_groups, parking_spots
    from parking.broker import BrokerConfig
    from parking.payloads import ZoneCounts
    from parking.site import load_site

    site = load_site(EXAMPLE_SITE)
    db = tmp_path / "journal.sqlite"
    journaled = GatewayHarness(site, db)  # the gateway's journal: A-001 occupied
    journaled.fill({"A-001"})
    journaled.close()
    counted = time.time() - 30  # the gateway's last counts, all known
    zone_a = ZoneCounts(zone="A", free=80, occupied=0, unknown=0, closed=0, total=80, ts=counted)
    gateway = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    gateway.will_set(topics.gateway_availability(site.id), topics.OFFLINE, qos=1, retain=True)
    gateway.connect("127.0.0.1", mosquitto.port, keepalive=60)
    gateway.loop_start()
    gateway.publish(topics.gateway_availability(site.id), topics.ONLINE, qos=1, retain=True)
    gateway.publish(topics.zone(site.id, "A"), zone_a.model_dump_json(), 1, True).wait_for_publish(
        5
    )
    view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
    view.start()
    try:

        def a() -> ZoneCounts:
            return next(z for z in view.zone_counts() if z.zone == "A")

        assert _wait(lambda: a().free == 80)
        assert a().ts == counted
        assert next(s for s in view.spaces() if s.space == "A-001").state == "occupied"
        gone = time.time()
        gateway.loop_stop()
        gateway.socket().close()  # dropped, not disconnected: the broker sends the will
        assert _wait(lambda: view.gateway_online() is False)
        learnt = time.time()
        blind = a()
        assert blind.unknown == 80 and gone <= blind.ts <= learnt, (gone, blind.ts, learnt)
        time.sleep(0.3)
        assert a().ts == blind.ts  # the time it went blind, not each reading's
        group = next(g for g in parking_groups(view) if g["id"].endswith(":A"))
        assert group["unknownSpotNumber"]["value"] == 80
        observed = datetime.fromisoformat(group["unknownSpotNumber"]["observedAt"])
        assert abs(observed.timestamp() - blind.ts) < 0.001
        space = next(s for s in view.spaces() if s.space == "A-001")
        assert space.state == "unknown" and space.since == blind.ts
        spot = next(s for s in parking_spots(view) if s["id"].endswith(":A-001"))
        assert spot["status"]["value"] == "unknown"

        back = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        back.connect("127.0.0.1", mosquitto.port)
        back.loop_start()
        again = ZoneCounts(zone="A", free=79, occupied=1, unknown=0, closed=0, total=80,
                           ts=time.time())  # fmt: skip
        back.publish(topics.gateway_availability(site.id), topics.ONLINE, 1, True)
        back.publish(topics.zone(site.id, "A"), again.model_dump_json(), 1, True).wait_for_publish(
            5
        )
        assert _wait(lambda: a().free == 79)
        assert a().ts == again.ts
        back.loop_stop()
        back.disconnect()
    finally:
        view.stop()


def test_a_standalone_view_blind_from_its_start_counts_the_journals_closures(tmp_path):
    """Started with the gateway offline and no zone message heard, the zones counted no
    closed space while /spaces showed the journal's closures (34 closed against 0)."""
    from api.mqttview import MqttLiveView
    from gateway.journal import Journal
    from parking.broker import BrokerConfig
    from parking.site import load_site

    db = tmp_path / "journal.sqlite"
    Journal(db).close()
    view = MqttLiveView(load_site(EXAMPLE_SITE), BrokerConfig("127.0.0.1", free_port()), str(db))
    with view._lock:  # what the journal's spaces table says at start
        for space in ("A-001", "A-002"):
            view._set_state(space, "closed", time.time() - 60)
    view._handle(topics.gateway_availability("xinyuan"), b"offline")
    zones = {z.zone: z for z in view.zone_counts()}
    a = zones["A"]
    assert (a.closed, a.unknown, a.free, a.occupied) == (2, a.total - 2, 0, 0), a
    assert all(z.closed == 0 and z.unknown == z.total for k, z in zones.items() if k != "A")
    states = {s.space: s.state for s in view.spaces()}
    assert states["A-001"] == states["A-002"] == "closed" and states["A-003"] == "unknown"
