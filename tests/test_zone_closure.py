# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""Closing and opening a whole zone: the gateway against a real mosquitto (one control
message, one journal transaction, the signs once and reading CLOSED), and the API's
endpoints on a real gateway state and journal."""

from __future__ import annotations

import json
import sqlite3
import time

import pytest
from api_support import PASSWORD, client, harness, settings, tokens, users  # noqa: F401
from fastapi.testclient import TestClient
from gateway_support import (  # noqa: F401 (fixtures)
    SITE_ID,
    Collector,
    Edge,
    display_topic,
    edge_g,
    running_gateway,
    site_variant,
    watch,
    zone_topic,
)

from api.app import create_app
from parking import closures, topics
from parking.states import SpaceState

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def gw(mosquitto, tmp_path):
    with running_gateway(site_variant(tmp_path), mosquitto.url, tmp_path / "journal.db") as s:
        yield s


def control(action: str, by: str = "alice", reason: str | None = None, ts: float | None = None):
    body = {"action": action, "by": by, "ts": time.time() if ts is None else ts}
    if reason is not None:
        body["reason"] = reason
    return json.dumps(body)


def zone_a_line(content: dict) -> dict:
    return content["lines"][0]  # gate-north's first line counts zone A


def zone_a_events(db) -> list[tuple]:
    with sqlite3.connect(db) as conn:
        return conn.execute(
            "SELECT space, old, new, source, agent, note, zone_closure FROM events"
            " WHERE source = 'manager' ORDER BY id"
        ).fetchall()


def wait_for(predicate, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_closing_a_zone_is_one_transaction_and_one_sign_update(gw, watch, edge_g, tmp_path):
    """500 spaces were 500 messages, transactions and sign updates counting down: now one
    of each, the sign reading CLOSED (status still full), and opening reopens what the
    zone's closure closed only, leaving a space closed on its own closed."""
    db = tmp_path / "journal.db"
    edge_g.send({s: "free" for s in gw.site.spaces_of_source("bus-g")}, kind="snapshot")
    watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    edge_g.raw(topics.space_control(SITE_ID, "A-010"), control("close", "bob", "pothole"))
    watch.wait_for(zone_topic("A"), lambda z: z["closed"] == 1)
    counted = zone_a_line(watch.latest(display_topic("gate-north")))["count"]
    signs = watch.mark()
    edge_g.raw(topics.zone_control(SITE_ID, "A"), control("close", "alice", "cleaning"))
    watch.wait_for(zone_topic("A"), lambda z: z["closed"] == 80, after=signs)
    time.sleep(0.3)  # anything sent later would show up now
    north = [m.json() for m in watch.since(signs, display_topic("gate-north"))]
    assert len(north) == 1, north  # once, after the commit: no count-down
    line = zone_a_line(north[0])
    assert line["status"] == "full" and line["count"] == 0
    assert line["text"] == {"zh": "关闭", "en": "CLOSED"}
    # the other lines of the sign still count (zone C is unknown: no camera)
    assert north[0]["lines"][1]["text"]["en"] != "CLOSED"
    jct = watch.latest(display_topic("jct-n1"))
    assert zone_a_line(jct)["text"]["en"] == "CLOSED"

    wait_for(lambda: len(zone_a_events(db)) == 80)
    rows = zone_a_events(db)
    assert rows[0] == ("A-010", "free", "closed", "manager", "bob", "pothole", None)
    assert {r[0] for r in rows[1:]} == {s.id for s in gw.site.spaces if s.zone == "A"} - {"A-010"}
    assert {r[1:] for r in rows[1:]} == {("free", "closed", "manager", "alice", "cleaning", "A")}
    with sqlite3.connect(db) as conn:  # the 79 changes were one committed row (transaction)
        # one packed row of changes: every event has its time
        assert conn.execute(
            "SELECT count(*), count(DISTINCT ts) FROM events WHERE zone_closure = 'A'"
        ).fetchone() == (79, 1)
        meta = conn.execute("SELECT value FROM meta WHERE key = ?", (closures.ZONE_CLOSURES_KEY,))
        closure = closures.load(meta.fetchone()[0])["A"]
    assert (closure.by, closure.reason, len(closure.spaces)) == ("alice", "cleaning", 79)
    assert "A-010" not in closure.spaces

    # a space the zone closed, opened on its own and closed again: it leaves the closure
    gw.gateway.control_space("A-020", "open", "carol", None)
    gw.gateway.control_space("A-020", "close", "carol", "paint")
    shown = watch.wait_for(display_topic("gate-north"), lambda c: zone_a_line(c)["count"] == 1)
    after = watch.messages.index(shown)
    watch.wait_for(display_topic("gate-north"), lambda c: zone_a_line(c)["count"] == 0, after=after)
    signs = watch.mark()
    edge_g.raw(topics.zone_control(SITE_ID, "A"), control("open", "alice"))
    watch.wait_for(zone_topic("A"), lambda z: z["closed"] == 2, after=signs)
    time.sleep(0.3)
    north = [m.json() for m in watch.since(signs, display_topic("gate-north"))]
    assert len(north) == 1 and zone_a_line(north[0])["count"] == counted - 1  # A-020 closed
    index = gw.site.space_index
    assert gw.gateway.state.state[index["A-010"]] == SpaceState.CLOSED  # bob's, before
    assert gw.gateway.state.state[index["A-020"]] == SpaceState.CLOSED  # carol's, after
    assert gw.gateway.zone_closures() == {}
    wait_for(lambda: len(zone_a_events(db)) == 80 + 2 + 78)
    opened = zone_a_events(db)[-78:]
    assert {r[1:] for r in opened} == {("closed", "free", "manager", "alice", None, "A")}
    # nothing left to open: refused and counted, nothing journaled
    edge_g.raw(topics.zone_control(SITE_ID, "A"), control("open", "alice"))
    wait_for(lambda: gw.gateway.counters().rejected.get("nothing_to_do") == 1)
    assert len(zone_a_events(db)) == 160
    with pytest.raises(ValueError, match="zone A is not closed"):
        gw.gateway.control_zone("A", "open", "alice", None)


def test_a_zone_closure_survives_a_restart(mosquitto, tmp_path, watch, edge_g):
    """The closure's record is in the journal: a restarted gateway opens what it closed."""
    site, db = site_variant(tmp_path), tmp_path / "journal.db"
    with running_gateway(site, mosquitto.url, db) as s:
        edge_g.send({x: "free" for x in s.site.spaces_of_source("bus-g")}, kind="snapshot")
        watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
        s.gateway.control_space("A-001", "close", "bob", None)
        s.gateway.control_zone("A", "close", "alice", "snow")
    with running_gateway(site, mosquitto.url, db) as s:
        assert set(s.gateway.zone_closures()) == {"A"}
        s.gateway.control_zone("A", "open", "alice", None)
        closed = s.gateway.state.state == SpaceState.CLOSED
        assert [s.site.spaces[i].id for i in closed.nonzero()[0]] == ["A-001"]


def test_a_closure_forgets_the_spaces_an_earlier_release_acted_on(
    mosquitto, tmp_path, watch, edge_g
):
    """A rollback: the previous release, run on this journal, opens A-002 and opens and
    closes A-003 on their own; it journals the actions but knows nothing of closures. The
    upgraded gateway takes them out of zone A's closure: opening the zone leaves A-003
    closed, as its manager left it (it reopened it: the contract says a space closed on its
    own stays closed), and a closure whose every space was opened is over."""
    from gateway.journal import Journal

    site, db = site_variant(tmp_path), tmp_path / "journal.db"
    with running_gateway(site, mosquitto.url, db) as s:
        edge_g.send({x: "free" for x in s.site.spaces_of_source("bus-g")}, kind="snapshot")
        watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
        s.gateway.control_zone("A", "close", "alice", "snow")
        s.gateway.control_zone("B", "close", "alice", "paint")
        zone_b = sorted(s.gateway.zone_closures()["B"].spaces)
    journal = Journal(db)  # as the previous release journals a manager's action
    ts = time.time() + 1
    for space, old, new in [("A-002", "closed", "free"), ("A-003", "closed", "free"),
                            ("A-003", "free", "closed")] + [(b, "closed", "free") for b in zone_b]:  # fmt: skip
        with journal.transaction():
            journal.add_changes(ts, "manager", "bob", None, None, json.dumps([[space, old, new]]))
            journal.expand_pending()
        ts += 0.01
    journal.close()
    with running_gateway(site, mosquitto.url, db) as s:
        kept = s.gateway.zone_closures()
        assert set(kept) == {"A"} and {"A-002", "A-003"}.isdisjoint(kept["A"].spaces)
        assert len(kept["A"].spaces) == 78  # 80, less the two
        s.gateway.control_zone("A", "open", "alice", None)
        closed = s.gateway.state.state == SpaceState.CLOSED
        assert [s.site.spaces[i].id for i in closed.nonzero()[0]] == ["A-003"]
    with sqlite3.connect(db) as conn:  # the record was rewritten at the start
        stored = conn.execute("SELECT value FROM meta WHERE key = ?", (closures.ZONE_CLOSURES_KEY,))
        assert closures.load(stored.fetchone()[0]) == {}


def test_zone_controls_that_cannot_apply_are_refused_and_counted(gw, watch, edge_g):
    edge_g.send({s: "free" for s in gw.site.spaces_of_source("bus-g")}, kind="snapshot")
    watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
    edge_g.raw(topics.zone_control(SITE_ID, "Z9"), control("close"))
    edge_g.raw(topics.zone_control(SITE_ID, "A"), control("close", ts=time.time() - 3600))
    edge_g.raw(topics.zone_control(SITE_ID, "A"), b'{"action": "shut", "by": "x", "ts": 1}')
    edge_g.raw(topics.zone_control(SITE_ID, "D"), control("close"))  # after them: in order
    watch.wait_for(zone_topic("D"), lambda z: z["closed"] == 30)
    rejected = gw.gateway.counters().rejected
    for reason in ("unknown_zone", "stale_control", "invalid"):
        assert rejected.get(reason) == 1, (reason, rejected)
    assert watch.latest(zone_topic("A"))["closed"] == 0
    # closed again without a reason: nothing to do; with one, the new reason is journaled
    with pytest.raises(ValueError, match="already closed"):
        gw.gateway.control_zone("D", "close", "bob", None)
    gw.gateway.control_zone("D", "close", "bob", "event")
    assert gw.gateway.zone_closures()["D"].reason == "event"


# --- the API ------------------------------------------------------------------------------


def test_a_manager_closes_and_opens_a_zone(client, tokens, harness):
    harness.fill()
    h = tokens["manager"]
    zone_d = [s.id for s in harness.site.spaces if s.zone == "D"]
    assert client.post(f"/api/v1/spaces/{zone_d[0]}/close", json={"reason": "pothole"}, headers=h)
    before = len(harness.published)
    r = client.post("/api/v1/zones/D/close", json={"reason": "cleaning"}, headers=h)
    assert r.status_code == 202, r.text
    body = r.json()
    assert body["spaces"] == zone_d[1:] and body["by"] == "manager"
    (left,) = body["left_closed"]
    assert (left["space"], left["closed_by"], left["closed_reason"]) == (
        zone_d[0], "manager", "pothole",
    )  # fmt: skip
    zones = {z["zone"]: z for z in client.get("/api/v1/zones").json()}
    assert zones["D"]["closed"] == 30
    (shut,) = client.get("/api/v1/zones/closures", headers=tokens["viewer"]).json()
    assert (shut["zone"], shut["closed_by"], shut["closed_reason"], shut["spaces"]) == (
        "D", "manager", "cleaning", 29,
    )  # fmt: skip
    signs = [t for t, _ in harness.published[before:] if topics.is_display_content(t)]
    assert len(signs) == len(set(signs))  # each sign once, not counting down
    lines = {
        ln["label"]["en"]: ln
        for d in client.get("/api/v1/displays").json()
        if d["display"] == "jct-r1"
        for ln in d["content"]["lines"]
    }
    assert lines["Zone D Shared"]["text"]["en"] == "CLOSED"
    assert lines["Zone D Shared"]["status"] == "full"
    ev = client.get("/api/v1/events", params={"space": zone_d[5], "limit": 1}, headers=h).json()
    assert ev["items"][0]["zone_closure"] == "D" and ev["items"][0]["reason"] == "cleaning"
    # the same close again: 409 without a reason, the new reason with one
    again = client.post("/api/v1/zones/D/close", headers=h)
    assert again.status_code == 409 and "already closed" in again.json()["detail"]
    snow = client.post("/api/v1/zones/D/close", json={"reason": "snow"}, headers=h).json()
    assert snow["spaces"] == [] and snow["reasoned_again"] == zone_d[1:]
    # one space opened on its own is told it was closed with the zone, by whom
    one = client.post(f"/api/v1/spaces/{zone_d[3]}/open", headers=h).json()
    assert (one["closed_with_zone"], one["closed_by"], one["closed_reason"]) == (
        "D", "manager", "snow",
    )  # fmt: skip
    opened = client.post("/api/v1/zones/D/open", headers=h)
    assert opened.status_code == 202, opened.text
    assert opened.json()["spaces"] == [s for s in zone_d[1:] if s != zone_d[3]]
    assert [x["space"] for x in opened.json()["left_closed"]] == [zone_d[0]]
    assert {z["zone"]: z for z in client.get("/api/v1/zones").json()}["D"]["closed"] == 1
    assert client.get("/api/v1/zones/closures", headers=h).json() == []
    nothing = client.post("/api/v1/zones/D/open", headers=h)
    assert nothing.status_code == 409 and "zone D is not closed" in nothing.json()["detail"]
    assert client.post("/api/v1/zones/Q/close", headers=h).status_code == 404
    assert client.post(f"/api/v1/spaces/{zone_d[0]}/open", headers=h).status_code == 202


def test_zone_actions_are_for_logged_in_managers_from_our_own_pages(client, tokens, harness):
    for role, code in (("viewer", 403), ("technician", 403)):
        r = client.post("/api/v1/zones/C/close", headers=tokens[role])
        assert r.status_code == code, (role, r.text)
    client.cookies.clear()
    assert client.post("/api/v1/zones/C/close").status_code == 401
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))
    with TestClient(app, base_url="http://dash.example.com") as c:
        r = c.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
        assert r.status_code == 200
        evil = {"Origin": "http://evil.example.com", "content-type": "application/json"}
        r = c.post("/api/v1/zones/C/close", headers=evil)
        assert r.status_code == 403 and "another origin" in r.json()["detail"]
    assert not harness.gateway.zone_closures()


def test_what_a_zone_action_changes():
    """The rules the gateway applies and the API answers by (parking.closures, pure)."""
    zone = ["B-1", "B-2", "B-3"]
    p = closures.plan("close", zone, ["B-2"], None, "snow")
    assert (p.change, p.again, p.left) == (("B-1", "B-3"), (), ("B-2",))
    shut = closures.after_zone({}, "B", "close", "alice", "snow", 1.0, p)
    assert shut["B"].spaces == {"B-1", "B-3"}
    # every space closed on its own: nothing to close; the closed zone again: a new reason
    assert closures.plan("close", zone, zone, None, "x").nothing
    again = closures.plan("close", zone, zone, shut["B"], "ice")
    assert (again.change, again.again) == ((), ("B-1", "B-3"))
    assert closures.after_zone(shut, "B", "close", "bob", "ice", 2.0, again)["B"].reason == "ice"
    assert closures.plan("close", zone, zone, shut["B"], None).nothing
    # a space opened on its own leaves the closure; the last one ends it
    one = closures.without_space(shut, "B-1")
    assert one["B"].spaces == {"B-3"} and closures.without_space(one, "B-3") == {}
    opened = closures.plan("open", zone, ["B-2", "B-3"], one["B"], None)
    assert (opened.change, opened.left) == (("B-3",), ("B-2",))
    assert closures.plan("open", zone, ["B-2"], None, None).nothing
    assert closures.load(closures.dump(shut)) == shut


def test_a_closure_follows_the_site_files_zones():
    """parking.closures.in_site (pure): a space in another zone now leaves the closure, a
    closure of a zone the file dropped is gone."""
    b = closures.ZoneClosure("B", "alice", "snow", 1.0, frozenset({"B-1", "B-2"}))
    x = closures.ZoneClosure("X", "bob", None, 2.0, frozenset({"X-1"}))
    zone_of = {"B-1": "B", "B-2": "C", "X-1": "C"}
    assert closures.in_site({"B": b, "X": x}, zone_of) == {
        "B": closures.ZoneClosure("B", "alice", "snow", 1.0, frozenset({"B-1"}))
    }
    assert closures.in_site({"B": b}, {"B-1": "B", "B-2": "B"}) == {"B": b}
