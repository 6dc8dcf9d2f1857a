# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Two managers acknowledging one alert, and several API processes on one journal.

Defects: a second acknowledgement silently replaced the first (its name, time and note); an
acknowledgement was not pushed on the live stream, so other managers' pages kept offering
the button; and each API process kept the open alerts in memory, read from the journal at
start only, so an acknowledgement made through one never showed through another.

The first acknowledgement of an episode holds: another manager's answers 409 naming who,
when and their note; the same manager again answers 200, keeping the first time (a note
given replaces theirs, none keeps it).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from urllib.parse import quote

import httpx
import jsonschema
import pytest
from api_support import (  # noqa: F401
    PASSWORD,
    ServerThread,
    client,
    harness,
    settings,
    tokens,
    users,
)
from conftest import free_port

from api.alerts import Alert, AlertBook
from api.app import create_app
from parking import topics

pytestmark = pytest.mark.timeout(120)

NOTE = "已通知维修工 张师傅 14:00 到场"


class Stream:
    """An SSE stream read in a thread: (event name, data) of every message."""

    def __init__(self, url: str, token: str):
        self.events: list[tuple[str, dict]] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._open = threading.Event()
        headers = {"Authorization": f"Bearer {token}"}
        threading.Thread(target=self._run, args=(url, headers), daemon=True).start()
        assert self._open.wait(10), "the stream did not open"

    def _run(self, url: str, headers: dict[str, str]) -> None:
        try:
            with (
                httpx.Client(timeout=httpx.Timeout(5.0, read=30.0)) as c,
                c.stream("GET", url, headers=headers) as r,
            ):
                assert r.status_code == 200
                self._open.set()
                name = None
                for line in r.iter_lines():
                    if self._stop.is_set():
                        return
                    if line.startswith("event: "):
                        name = line[7:]
                    elif line.startswith("data: ") and name:
                        with self._cond:
                            self.events.append((name, json.loads(line[6:]).get("data", {})))
                            self._cond.notify_all()
        except httpx.HTTPError:
            if not self._stop.is_set():
                raise

    def wait_for(self, name: str, pred, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for n, data in self.events:
                    if n == name and pred(data):
                        return data
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no such {name} event in {timeout} s: {self.events[-5:]}")
                self._cond.wait(left)

    def close(self) -> None:
        self._stop.set()


@pytest.fixture(scope="module")
def second_manager(users) -> str:
    users.add("manager2", "manager", PASSWORD)
    return "manager2"


def login(http, name: str) -> dict[str, str]:
    """A bearer header for the user (the client keeps no cookie: each call says who)."""
    r = http.post("/api/v1/auth/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    http.cookies.clear()
    return {"Authorization": f"Bearer {r.json()['token']}"}


def offline(harness, agent: str) -> str:
    harness.gateway.handle(topics.edge_availability(harness.site.id, agent), b"offline")
    return f"agent_offline:{agent}"


def wait_alert(http, headers: dict[str, str], aid: str) -> dict:
    deadline = time.monotonic() + 15
    while True:
        alerts = {a["id"]: a for a in http.get("/api/v1/alerts", headers=headers).json()}
        if aid in alerts:
            return alerts[aid]
        assert time.monotonic() < deadline, f"{aid} never listed: {sorted(alerts)}"
        time.sleep(0.1)


def ack_url(aid: str) -> str:
    return f"/api/v1/alerts/{quote(aid, safe='')}/acknowledge"


def row(harness, aid: str) -> tuple:
    with sqlite3.connect(harness.db_path) as db:
        return db.execute(
            "SELECT acked_by, acked_at, note FROM alerts WHERE id = ?", (aid,)
        ).fetchone()


def test_a_second_manager_is_refused_and_the_first_acknowledgement_kept(
    client, tokens, harness, second_manager
):
    aid = offline(harness, "serial-bus-g")
    wait_alert(client, tokens["viewer"], aid)
    first = client.post(ack_url(aid), json={"note": NOTE}, headers=tokens["manager"])
    assert first.status_code == 200, first.text
    at = first.json()["acknowledged_at"]
    assert first.json()["acknowledged_by"] == "manager" and first.json()["note"] == NOTE

    other = login(client, second_manager)
    second = client.post(ack_url(aid), json={"note": "I'll go"}, headers=other)
    assert second.status_code == 409, second.text
    body = second.json()
    assert body["acknowledged_by"] == "manager" and body["acknowledged_at"] == at
    doc = client.get("/openapi.json").json()  # and it is the 409 documented there
    op = doc["paths"]["/api/v1/alerts/{alert_id}/acknowledge"]["post"]
    schema = op["responses"]["409"]["content"]["application/json"]["schema"]
    jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(body)
    assert body["note"] == NOTE
    # the detail says who and when, in the site's time, and their note
    assert "already acknowledged by manager" in body["detail"]
    assert "(Asia/Shanghai)" in body["detail"] and NOTE in body["detail"]
    assert row(harness, aid) == ("manager", at, NOTE)
    listed = wait_alert(client, tokens["viewer"], aid)
    assert (listed["acknowledged_by"], listed["acknowledged_at"], listed["note"]) == (
        "manager",
        at,
        NOTE,
    )

    # the same manager again: 200, the first time kept; no note keeps theirs, one replaces it
    again = client.post(ack_url(aid), headers=tokens["manager"])
    assert again.status_code == 200, again.text
    assert (again.json()["acknowledged_at"], again.json()["note"]) == (at, NOTE)
    fixed = client.post(ack_url(aid), json={"note": "张师傅 15:00 到场"}, headers=tokens["manager"])
    assert fixed.status_code == 200
    assert (fixed.json()["acknowledged_at"], fixed.json()["note"]) == (at, "张师傅 15:00 到场")
    assert row(harness, aid) == ("manager", at, "张师傅 15:00 到场")
    harness.gateway.handle(topics.edge_availability(harness.site.id, "serial-bus-g"), b"online")


def test_another_process_raising_the_alert_keeps_its_acknowledgement(tmp_path):
    """The second process derives the same alert a moment later: its raise wrote the row
    anew (INSERT OR REPLACE), wiping the acknowledgement made meanwhile."""
    db = str(tmp_path / "alerts.sqlite")
    one, two = AlertBook(db), AlertBook(db)  # both started before the alert
    dead = Alert("node_dead:bus-b1/2", "node_dead", "bus-b1/2", None)
    now = time.time()
    one.update([dead], now)
    one.acknowledge(dead.id, "alice", NOTE, now + 1)
    two.update([dead], now + 2)
    (rec,) = two.current()
    assert (rec.acked_by, rec.acked_at, rec.note, rec.since) == ("alice", now + 1, NOTE, now)
    (rec,) = one.current()
    assert (rec.acked_by, rec.note) == ("alice", NOTE)
    # one sees it clear and then come back: a new episode (its acknowledgement carried over,
    # api.alerts.ACK_CARRY_S); two, which still has the old one open, does not end the new
    # one when it sees it clear too
    one.update([], now + 3)
    one.update([dead], now + 4)
    two.update([], now + 5)
    (rec,) = one.current()
    assert (rec.since, rec.acked_by, rec.note, rec.episodes) == (now + 4, "alice", NOTE, 2)


def test_an_acknowledgement_is_pushed_on_the_live_stream(harness, users):
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv, httpx.Client(base_url=srv.url) as http:
        manager = login(http, "manager")
        aid = offline(harness, "camera-cam-c")
        wait_alert(http, manager, aid)
        stream = Stream(f"{srv.url}/api/v1/stream", login(http, "viewer")["Authorization"][7:])
        try:
            stream.wait_for("hello", lambda d: True, 5)
            t0 = time.monotonic()
            r = http.post(ack_url(aid), json={"note": NOTE}, headers=manager)
            assert r.status_code == 200, r.text
            data = stream.wait_for("alert", lambda d: d.get("acknowledged_by") == "manager", 5)
            assert time.monotonic() - t0 < 2
            assert data["id"] == aid and data["note"] == NOTE and data["acknowledged"] is True
        finally:
            stream.close()
    harness.gateway.handle(topics.edge_availability(harness.site.id, "camera-cam-c"), b"online")


def test_two_api_processes_on_one_journal_agree(harness, users, second_manager):
    """Stand-alone API processes behind one proxy: an acknowledgement made through API 1
    shows through API 2 (listed at once, pushed to its pages within its check interval),
    and a manager on API 2 cannot acknowledge it over the first."""
    db = str(harness.db_path)
    one = create_app(harness.gateway, settings(alert_check_s=0.3), db_path=db)
    two = create_app(harness.gateway, settings(alert_check_s=0.3), db_path=db)
    with (
        ServerThread(one, free_port()) as api1,
        ServerThread(two, free_port()) as api2,
        httpx.Client(base_url=api1.url) as http1,
        httpx.Client(base_url=api2.url) as http2,
    ):
        alice, bob = login(http1, "manager"), login(http2, second_manager)
        aid = offline(harness, "serial-bus-b1")
        wait_alert(http1, alice, aid)
        assert wait_alert(http2, bob, aid)["acknowledged_by"] is None
        bobs_page = Stream(f"{api2.url}/api/v1/stream", bob["Authorization"][7:])
        try:
            bobs_page.wait_for("hello", lambda d: True, 5)
            r = http1.post(ack_url(aid), json={"note": NOTE}, headers=alice)
            assert r.status_code == 200, r.text
            at = r.json()["acknowledged_at"]
            listed = wait_alert(http2, bob, aid)
            assert (listed["acknowledged_by"], listed["acknowledged_at"], listed["note"]) == (
                "manager",
                at,
                NOTE,
            )
            pushed = bobs_page.wait_for(
                "alert", lambda d: d.get("id") == aid and d.get("acknowledged_by") == "manager", 5
            )
            assert pushed["note"] == NOTE
            refused = http2.post(ack_url(aid), json={"note": "mine"}, headers=bob)
            assert refused.status_code == 409, refused.text
            assert refused.json()["acknowledged_by"] == "manager"
            assert row(harness, aid) == ("manager", at, NOTE)
        finally:
            bobs_page.close()
    harness.gateway.handle(topics.edge_availability(harness.site.id, "serial-bus-b1"), b"online")
