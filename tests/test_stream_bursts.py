# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""A burst of live events larger than a stream's queue: the stand-alone view emits a whole
0.25 s journal tail in one step, so thousands of space changes reach every stream at once.
A page reading as fast as it can must keep its stream (a space's newer state replaces the
one not yet sent), a page that never reads must still be dropped, and alerts are each sent."""

from __future__ import annotations

import asyncio
import json
import re
import socket
import threading
import time

import httpx
import pytest
from api_support import PASSWORD, ServerThread, harness, settings, users  # noqa: F401
from conftest import free_port

from api.app import create_app
from api.live import CLIENT_QUEUE, LiveHub
from gateway.readside import LiveEvent

BURST = 5000
SPACES = 300


class Stream:
    """Reads an SSE stream as fast as it can, in a thread; keeps every message and whether
    the server ended the stream."""

    def __init__(self, url: str, headers: dict[str, str]):
        self.messages: list[tuple[str, dict]] = []
        self.ended = False
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._hello = threading.Event()
        self.thread = threading.Thread(target=self._run, args=(url, headers), daemon=True)
        self.thread.start()
        assert self._hello.wait(10), "the stream did not open"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5.0, read=60.0)) as c,
                c.stream("GET", url, headers=headers) as r,
            ):
                assert r.status_code == 200
                kind = None
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event: "):
                        kind = line[7:]
                    elif line.startswith("data: ") and kind:
                        if kind == "hello":
                            self._hello.set()
                        with self._cond:
                            self.messages.append((kind, json.loads(line[6:])))
                            self._cond.notify_all()
        except httpx.HTTPError:
            if self._stop.is_set():
                return
        with self._cond:
            self.ended = True  # the server closed it: the page would reconnect and reload
            self._cond.notify_all()

    def wait(self, pred, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        with self._cond:
            while not pred(self.messages):
                left = deadline - time.monotonic()
                if left <= 0 or self.ended:
                    return
                self._cond.wait(min(left, 0.5))

    def close(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def server(harness, users):
    harness.fill()
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv:
        yield srv, app.state.ctx.hub


def _login(url: str) -> dict[str, str]:
    r = httpx.post(f"{url}/api/v1/auth/login", json={"name": "viewer", "password": PASSWORD})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['token']}"}


def _on_loop(hub: LiveHub, fn) -> None:
    """Run ``fn`` in one step on the app's event loop (nothing is sent to a stream meanwhile)."""
    assert hub.loop is not None
    done = threading.Event()

    def step() -> None:
        try:
            fn()
        finally:
            done.set()

    hub.loop.call_soon_threadsafe(step)
    assert done.wait(10)


def _burst(harness) -> tuple[list[LiveEvent], dict[str, str]]:
    """5,000 space events over 300 spaces, and each space's state after the last of them."""
    spaces = sorted(harness.site.space_index)[:SPACES]
    events, latest = [], {}
    now = time.time()
    for i in range(BURST):
        space = spaces[i % SPACES]
        state = ("free", "occupied", "closed")[(i * 7 + i // SPACES) % 3]
        events.append(LiveEvent("space", {"space": space, "state": state}, now + i * 1e-4))
        latest[space] = state
    return events, latest


def _still_reads(hub: LiveHub, reading: Stream) -> None:
    """The stream that reads carries on: an event published now reaches it."""
    _on_loop(hub, lambda: hub.publish(LiveEvent("alert", {"id": "after"}, 0)))
    reading.wait(lambda m: any(d.get("data", {}).get("id") == "after" for _, d in m), 15)
    assert not reading.ended
    assert any(d.get("data", {}).get("id") == "after" for _, d in reading.messages)


def _alert(n: int) -> LiveEvent:
    return LiveEvent("alert", {"id": "agent_offline:bus-g", "kind": "agent_offline", "n": n}, 0)


def _emit_through_view(harness, events: list[LiveEvent]) -> None:
    """As the live view emits a tail: every subscriber (the hub) hears each event."""
    for e in events:
        harness.gateway._emit(e.kind, e.data, e.ts)


def test_a_reading_stream_keeps_up_with_a_burst_and_ends_with_the_latest_states(server, harness):
    srv, hub = server
    stream = Stream(f"{srv.url}/api/v1/stream", _login(srv.url))
    try:
        events, latest = _burst(harness)
        _on_loop(hub, lambda: _emit_through_view(harness, events))
        _on_loop(hub, lambda: hub.publish(LiveEvent("alert", {"id": "marker"}, 0)))

        def shown(messages) -> dict[str, str]:
            out = {}
            for kind, msg in messages:
                if kind == "space":
                    out[msg["data"]["space"]] = msg["data"]["state"]
            return out

        stream.wait(lambda m: any(k == "alert" and d["data"]["id"] == "marker" for k, d in m), 30)
        assert not stream.ended, "a stream reading as fast as it can was dropped by a burst"
        assert [k for k, _ in stream.messages].count("hello") == 1
        assert shown(stream.messages) == latest
        # a burst takes one place per space: at most one message each (plus any the loop
        # sent before the whole burst was in)
        spaces = [m["data"]["space"] for k, m in stream.messages if k == "space"]
        assert len(spaces) < 2 * SPACES
    finally:
        stream.close()


def test_alerts_in_a_burst_are_each_sent_in_order(server, harness):
    srv, hub = server
    stream = Stream(f"{srv.url}/api/v1/stream", _login(srv.url))
    try:
        events, latest = _burst(harness)

        def burst() -> None:
            for i, chunk in enumerate(range(0, BURST, 250)):
                hub.publish(_alert(i))
                for e in events[chunk : chunk + 250]:
                    hub.publish(e)
            hub.publish(_alert(BURST // 250))

        _on_loop(hub, burst)
        want = list(range(BURST // 250 + 1))

        def alerts(messages) -> list[int]:
            return [d["data"]["n"] for k, d in messages if k == "alert" and "n" in d["data"]]

        stream.wait(lambda m: alerts(m) == want, 30)
        assert not stream.ended, "a stream reading as fast as it can was dropped by a burst"
        assert alerts(stream.messages) == want
    finally:
        stream.close()


def test_a_stream_that_never_reads_is_bounded_and_dropped(server, harness):
    srv, hub = server
    loop = hub.loop
    assert loop is not None
    events, _ = _burst(harness)

    async def scenario() -> tuple[int, int, bool, LiveEvent | None, list[LiveEvent | None]]:
        stuck = hub.connect(None)
        first = hub.connect(None)
        assert stuck is not None and first is not None
        try:
            # space A, an alert, space A again: the newer A supersedes the first, and
            # events go in the order of their latest states
            hub.publish(LiveEvent("space", {"space": "A-001", "state": "free"}, 1))
            hub.publish(_alert(0))
            hub.publish(LiveEvent("space", {"space": "A-001", "state": "occupied"}, 2))
            order = [await first.get(), await first.get()]
            for e in events:
                hub.publish(e)
            after_spaces = stuck.pending()  # one place per space, however many changes
            for n in range(2 * stuck.cap):  # each alert is kept: more than it may hold
                hub.publish(_alert(n))
            return after_spaces, stuck.pending(), stuck.overflowed, await stuck.get(), order
        finally:
            hub.disconnect(stuck)
            hub.disconnect(first)

    after_spaces, at_end, dropped, got, order = asyncio.run_coroutine_threadsafe(
        scenario(), loop
    ).result(10)
    # one for each space (A-001's still where it first stood), and the alert
    assert after_spaces == len({e.data["space"] for e in events} | {"A-001"}) + 1
    assert dropped and at_end == 0 and got is None  # ended, and its events let go
    assert [(e.kind, e.data.get("state")) for e in order if e is not None] == [
        ("alert", None),
        ("space", "occupied"),
    ]


def test_every_space_at_once_fits_beside_the_cap(example_site):
    """A view that loses or regains the gateway sends every space's state at once: on a
    site of more than 1,000 spaces that ended every stream. The cap is per client and on
    top of one place for each id of the site."""

    class View:
        site = example_site

    hub = LiveHub(View())  # type: ignore[arg-type]
    ids = len(example_site.spaces) + len(example_site.zones) + len(example_site.displays)
    assert hub.queue_cap >= CLIENT_QUEUE + ids


def test_a_stream_whose_reader_takes_nothing_is_let_go(server, harness, monkeypatch):
    """A phone asleep or gone without closing: its socket's buffers fill and the server's
    write waits. Within the send timeout the stream ends and its place is free (400 such
    once locked every dashboard out with 503s); a reading stream carries on."""
    import api.routes.stream as stream_route

    monkeypatch.setattr(stream_route, "SEND_TIMEOUT_S", 1.0)
    srv, hub = server
    headers = _login(srv.url)
    reading = Stream(f"{srv.url}/api/v1/stream", headers)
    before = len(hub.clients)
    sleeper = socket.socket()
    sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    try:
        sleeper.connect(("127.0.0.1", int(srv.url.rsplit(":", 1)[1])))
        sleeper.sendall(
            f"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
        )
        assert b"200" in sleeper.recv(64)  # then it reads no more
        deadline = time.monotonic() + 5
        while len(hub.clients) < before + 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert len(hub.clients) == before + 1
        note = "x" * 10_000
        for n in range(40):  # ~8 MB for it to take: more than any socket buffers
            _on_loop(hub, lambda n=n: [hub.publish(LiveEvent(
                "alert", {"id": f"a{n}-{k}", "kind": "note", "note": note}, 0))
                for k in range(20)])  # fmt: skip
            time.sleep(0.05)
        deadline = time.monotonic() + 15
        while len(hub.clients) > before and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(hub.clients) == before, "a stream nobody reads still holds its place"
        _still_reads(hub, reading)
    finally:
        sleeper.close()
        reading.close()


def test_superseded_health_and_encoded_events_are_not_kept_alive(example_site):
    """An agent's health event carries its bus's whole report (~60 kB as objects) and comes
    every 5 s: the hub's log kept superseded ones until it compacted, and the encode cache
    kept every event it encoded, so a dashboard left open grew the gateway by ~250 MB."""
    import gc
    import weakref

    from api.routes.stream import encoded

    class View:
        site = example_site

    hub = LiveHub(View())  # type: ignore[arg-type]
    stream = hub.connect(None)
    assert stream is not None
    health = {"agent": "serial-bus-g", "health": {"nodes": [{"x": "y" * 100}] * 200}}
    refs = []
    for n in range(50):
        event = LiveEvent("agent", {**health, "n": n}, float(n))
        refs.append(weakref.ref(event))
        hub.publish(event, wake=False)
        for raw in (True, False):  # as a technician's stream and a viewer's encode it
            encoded(event, raw)
        del event
    gc.collect()
    assert [r() is not None for r in refs] == [False] * 49 + [True]  # the latest only
    assert [e.data["n"] for e in hub.since(0)] == [49]  # and it is still sent
    hub.disconnect(stream)


def test_a_stream_unread_while_the_buffers_still_take_it_is_let_go(harness, users, monkeypatch):
    """A reader that stops reading while events flow: its kernel's receive buffer fills,
    then this side's send buffer (up to 4 MB) took every write, so no write waited and the
    send timeout never started: at 11 kB/s of events the stream kept its place 7 minutes, on
    a quiet site days. The connection's TCP_USER_TIMEOUT ends it once written data has
    waited that long (here 2 s; the send timeout put out of reach), and a reading stream
    carries on."""
    import api.routes.stream as stream_route

    monkeypatch.setattr(stream_route, "SEND_TIMEOUT_S", 600.0)
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with ServerThread(app, free_port(), unacknowledged_s=2.0) as srv:
        hub = app.state.ctx.hub
        headers = _login(srv.url)
        reading = Stream(f"{srv.url}/api/v1/stream", headers)
        sleeper = socket.socket()
        sleeper.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        note = "x" * 1000
        try:
            sleeper.connect(("127.0.0.1", srv.port))
            sleeper.sendall(
                f"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
            )
            assert b"200" in sleeper.recv(64)  # then it reads no more
            deadline = time.monotonic() + 5
            while len(hub.clients) < 2 and time.monotonic() < deadline:
                time.sleep(0.05)
            assert len(hub.clients) == 2
            t0 = time.monotonic()
            n = 0
            while len(hub.clients) > 1 and time.monotonic() - t0 < 20:
                n += 1  # ~20 kB/s: 400 kB in 20 s, a tenth of what the send buffer takes
                _on_loop(hub, lambda n=n: hub.publish(LiveEvent(
                    "alert", {"id": f"u{n}", "kind": "note", "note": note}, 0)))  # fmt: skip
                time.sleep(0.05)
            freed_after = time.monotonic() - t0
            assert len(hub.clients) == 1, "a stream nobody reads still holds its place"
            assert freed_after < 10, freed_after
            _still_reads(hub, reading)
        finally:
            sleeper.close()
            reading.close()


def _response(sock: socket.socket) -> bytes:
    """One whole HTTP response read from ``sock`` (a keep-alive connection: nothing more)."""
    got = b""
    while b"\r\n\r\n" not in got:
        got += sock.recv(65536)
    head, body = got.split(b"\r\n\r\n", 1)
    length = re.search(rb"(?im)^content-length: *(\d+)", head)
    while not (body.endswith(b"0\r\n\r\n") if length is None else len(body) >= int(length[1])):
        chunk = sock.recv(65536)
        assert chunk, "the connection closed part-way"
        body += chunk
    return got


def _paused_export(reader: socket.socket, headers: dict[str, str]) -> bytes:
    """The events export asked for on ``reader`` (a 4 kB receive buffer), its reading paused
    5 s after the first 2 kB, then read to its end: the body that came."""
    reader.sendall(
        f"GET /api/v1/events.csv HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
        f"Authorization: {headers['Authorization']}\r\n\r\n".encode()
    )
    got = reader.recv(2048)
    assert b" 200 " in got.split(b"\r\n", 1)[0]
    time.sleep(5)  # its window shut, the rest waits on this side
    reader.settimeout(10)
    while chunk := reader.recv(65536):
        got += chunk
    return got.split(b"\r\n\r\n", 1)[1]


def _small_window() -> socket.socket:
    reader = socket.socket()
    reader.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    return reader


def test_an_export_whose_reader_pauses_longer_goes_on_where_it_stopped(harness, users):
    """Only a live stream's connection is ended by the kernel when what was written waits:
    a CSV export whose reader pauses (a download paused, a phone out of signal) for longer
    than that (here 2 s) gets the rest of the file when it reads again."""
    harness.fill()
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with ServerThread(app, free_port(), unacknowledged_s=2.0) as srv:
        headers = _login(srv.url)
        whole = httpx.get(f"{srv.url}/api/v1/events.csv", headers=headers)
        assert whole.status_code == 200 and len(whole.content) > 30_000  # more than buffers
        with _small_window() as reader:
            reader.connect(("127.0.0.1", srv.port))
            body = _paused_export(reader, headers)
    assert body.endswith(b"0\r\n\r\n"), body[-40:]  # the last chunk: the whole export came
    assert len(body) > len(whole.content)


def test_a_paused_export_after_a_refused_stream_on_its_connection_goes_on(harness, users):
    """A refused stream (401 here; the page asks again why its stream was refused, on a
    connection it reuses) left the connection ended by the kernel when written data waited:
    a paused CSV export on it after that was reset after 5 kB. Only a stream served counts."""
    harness.fill()
    app = create_app(harness.gateway, settings(public_read=False), db_path=str(harness.db_path))
    with ServerThread(app, free_port(), unacknowledged_s=2.0) as srv:
        headers = _login(srv.url)
        with _small_window() as reader:
            reader.connect(("127.0.0.1", srv.port))
            reader.sendall(b"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n\r\n")
            assert b" 401 " in _response(reader).split(b"\r\n", 1)[0]
            body = _paused_export(reader, headers)
    assert body.endswith(b"0\r\n\r\n"), body[-40:]


def test_a_paused_export_after_a_stream_ended_on_its_connection_goes_on(
    harness, users, monkeypatch
):
    """A live stream the server ends (here: its session ended) leaves its connection to
    the next request as it was before the stream: a paused export on it gets it all."""
    import api.routes.stream as stream_route

    monkeypatch.setattr(stream_route, "SESSION_CHECK_S", 0.2)
    harness.fill()
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with ServerThread(app, free_port(), unacknowledged_s=2.0) as srv:
        streamed, exporting = _login(srv.url), _login(srv.url)
        with _small_window() as reader:
            reader.connect(("127.0.0.1", srv.port))
            reader.sendall(
                f"GET /api/v1/stream HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: {streamed['Authorization']}\r\n\r\n".encode()
            )
            stream = reader.recv(64)
            assert b" 200 " in stream
            httpx.post(f"{srv.url}/api/v1/auth/logout", headers=streamed).raise_for_status()
            reader.settimeout(10)
            while not stream.endswith(b"0\r\n\r\n"):  # ended, the connection kept open
                chunk = reader.recv(65536)
                assert chunk, "the stream's connection closed"
                stream += chunk
            assert b"event: hello" in stream
            body = _paused_export(reader, exporting)
    assert body.endswith(b"0\r\n\r\n"), body[-40:]


def test_a_stream_on_a_connection_already_closed_ends_quietly_under_uvloop():
    """uvicorn[standard] serves on uvloop, whose closed transport's socket has no file
    descriptor: setting its TCP_USER_TIMEOUT raised ValueError, and every stream a reader
    closed logged an ERROR "Exception in ASGI application" with a traceback."""
    uvloop = pytest.importorskip("uvloop", reason="uvloop (uvicorn[standard]) not installed")
    from api.serving import abort_unacknowledged

    async def closed_transport_then_abort() -> None:
        loop = asyncio.get_running_loop()
        made: asyncio.Future = loop.create_future()

        class Server(asyncio.Protocol):
            def connection_made(self, transport: asyncio.BaseTransport) -> None:
                made.set_result(transport)

        server = await loop.create_server(Server, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        client, _ = await loop.create_connection(asyncio.Protocol, "127.0.0.1", port)
        transport = await made
        abort_unacknowledged(transport, 5.0)  # the stream's start
        transport.close()
        await asyncio.sleep(0.05)
        abort_unacknowledged(transport, 0)  # the stream's end after the reader left
        client.close()
        server.close()

    uvloop.run(closed_transport_then_abort())
