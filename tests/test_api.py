# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""REST API against a real gateway state (gateway.live.LiveGateway) on a real SQLite journal."""

from __future__ import annotations

import csv
import io
import logging
import re
import sqlite3
import time
from dataclasses import replace
from types import SimpleNamespace

import pytest
from api_support import PASSWORD, client, harness, settings, tokens, users  # noqa: F401
from fastapi.testclient import TestClient

from api.alerts import derive_alerts
from api.app import create_app
from api.history import sample_times, zone_series
from gateway.readside import AgentStatus, SpaceStatus
from parking import topics
from parking.payloads import DetectorHealth, HealthReport, NodeHealth

OCCUPIED = {"A-001", "A-002", "A-003", "B-010", "C-005", "B1-E-007", "B1-F-030"}


@pytest.fixture(scope="module", autouse=True)
def filled(harness):
    harness.fill(OCCUPIED)


def test_zones_are_public_and_match_the_gateway(client, harness):
    r = client.get("/api/v1/zones")
    assert r.status_code == 200
    zones = {z["zone"]: z for z in r.json()}
    assert set(zones) == {z.id for z in harness.site.zones}
    assert sum(z["total"] for z in zones.values()) == len(harness.site.spaces)
    for c in harness.gateway.zone_counts():
        z = zones[c.zone]
        for key in ("free", "occupied", "unknown", "closed", "total"):
            assert z[key] == getattr(c, key), (c.zone, key)
        assert z["name"]["en"] and z["name"]["zh"]
    assert zones["A"]["occupied"] == 3


def test_spaces_filter_by_zone_state_and_kind(client, tokens):
    h = tokens["viewer"]
    occupied = client.get("/api/v1/spaces", params={"state": "occupied"}, headers=h).json()
    assert {s["space"] for s in occupied} >= OCCUPIED
    a = client.get("/api/v1/spaces", params={"zone": "A", "state": "occupied"}, headers=h).json()
    assert {s["space"] for s in a} == {"A-001", "A-002", "A-003"}
    ev = client.get("/api/v1/spaces", params={"kind": "ev"}, headers=h).json()
    assert ev and all("ev" in s["kinds"] for s in ev)
    r = client.get("/api/v1/spaces", params={"zone": "Z"}, headers=h)
    assert r.status_code == 422 and "no zone 'Z'" in r.text
    r = client.get("/api/v1/spaces", params={"state": "parked"}, headers=h)
    assert r.status_code == 422 and "state" in r.text
    assert client.get("/api/v1/spaces/A-001", headers=h).json()["state"] == "occupied"
    assert client.get("/api/v1/spaces/NOPE", headers=h).status_code == 404
    r = client.get("/api/v1/spaces/" + "A" * 5000, headers=h)  # quoted back cut short
    assert r.status_code == 404 and len(r.json()["detail"]) < 300, len(r.text)
    assert r.json()["detail"] == f"no space {'A' * 200!r}… on this site"


def test_site_map_has_every_space_polygon(client, tokens, harness):
    site = client.get("/api/v1/site", headers=tokens["viewer"]).json()
    assert len(site["spaces"]) == len(harness.site.spaces) == 342
    assert all(len(s["polygon"]) == 4 for s in site["spaces"])
    assert {lv["id"] for lv in site["levels"]} == {"G", "B1"}
    for lv in site["levels"]:
        x0, y0, x1, y1 = lv["bounds"]
        assert x1 > x0 and y1 > y0
    # the time windows a manager needs to read a FULL sign over a zone with free bays
    assert site["timezone"] == "Asia/Shanghai"
    policies = {p["id"]: p for p in site["policies"]}
    assert policies["shared-night-residents"]["windows"] == ["19:00-08:00"]
    assert policies["shared-day-office"] == {
        "id": "shared-day-office", "kind": "shared", "classes": ["office"],
        "windows": ["08:00-19:00"],
    }  # fmt: skip
    classes = {c["id"]: c for c in site["vehicle_classes"]}
    assert "shared" in classes["resident"]["kinds"] and classes["accessible"]["prefer"]
    assert classes["visitor"]["avoid"] == ["ev"] and classes["resident"]["avoid"] == []


def test_displays_show_what_the_gateway_published(client, harness):
    out = {d["display"]: d for d in client.get("/api/v1/displays").json()}
    assert set(out) == {d.id for d in harness.site.displays}
    for name, content in harness.gateway.displays().items():
        assert out[name]["content"] == content.model_dump(mode="json")
        assert out[name]["expired"] is False


def test_events_paged_and_filtered(client, tokens, harness):
    h = tokens["viewer"]
    t0 = time.time()
    for state in ("occupied", "free", "occupied"):
        harness.report("bus-g", {"A-020": state})
    page1 = client.get("/api/v1/events", params={"space": "A-020", "limit": 2}, headers=h).json()
    assert [e["new"] for e in page1["items"]] == ["occupied", "free"]
    assert page1["next_before"] is not None
    page2 = client.get(
        "/api/v1/events",
        params={"space": "A-020", "limit": 2, "before": page1["next_before"]},
        headers=h,
    ).json()
    assert [e["new"] for e in page2["items"]][:2] == ["occupied", "free"]
    recent = client.get("/api/v1/events", params={"space": "A-020", "since": t0}, headers=h).json()
    assert len(recent["items"]) == 3 and recent["next_before"] is None
    assert all(e["zone"] == "A" and e["source"] == "bus-g" for e in recent["items"])
    zone_b = client.get("/api/v1/events", params={"zone": "B", "limit": 1000}, headers=h).json()
    assert zone_b["items"] and all(e["zone"] == "B" for e in zone_b["items"])
    bad = client.get("/api/v1/events", params={"since": 10, "until": 5}, headers=h)
    assert bad.status_code == 422 and "until must be after since" in bad.text
    assert client.get("/api/v1/events", params={"limit": 0}, headers=h).status_code == 422
    assert client.get("/api/v1/events", params={"since": "nan"}, headers=h).status_code == 422


def test_events_csv_matches_the_journal(client, tokens, harness):
    r = client.get("/api/v1/events.csv", params={"zone": "A"}, headers=tokens["viewer"])
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/csv")
    assert 'attachment; filename="parkguide-events-xinyuan-' in r.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(r.text)))
    with sqlite3.connect(harness.db_path) as db:
        a_spaces = [s.id for s in harness.site.spaces if s.zone == "A"]
        n = db.execute(
            f"SELECT COUNT(*) FROM events WHERE space IN ({','.join('?' * len(a_spaces))})",
            a_spaces,
        ).fetchone()[0]
    assert len(rows) == n > 0
    assert {row["zone"] for row in rows} == {"A"}
    assert rows[0]["time_utc"].endswith("+00:00")
    # with a limit below the range's events, the file says it was cut short
    cut = client.get(
        "/api/v1/events.csv", params={"zone": "A", "limit": n - 1}, headers=tokens["viewer"]
    ).text.splitlines()
    assert len(cut) == 1 + (n - 1) + 1 and cut[-1].startswith("# truncated: more than")
    whole = client.get(
        "/api/v1/events.csv", params={"zone": "A", "limit": n}, headers=tokens["viewer"]
    ).text.splitlines()
    assert len(whole) == 1 + n and not whole[-1].startswith("#")


def test_history_follows_the_journal(client, tokens, harness):
    h = tokens["viewer"]
    start = time.time()
    time.sleep(1.1)  # the smallest step is 1 s: the change falls between two samples
    harness.report("bus-g", {f"B-0{n}": "occupied" for n in range(40, 46)})
    time.sleep(max(0.0, start + 2.05 - time.time()))
    r = client.get(
        "/api/v1/history",
        params={"zone": "B", "start": start, "end": start + 2, "step": 1},
        headers=h,
    )
    assert r.status_code == 200, r.text
    (series,) = r.json()["series"]
    first, last = series["points"][0], series["points"][-1]
    assert last["occupied"] - first["occupied"] == 6
    assert last["total"] == first["total"] == 72
    now = {z["zone"]: z for z in client.get("/api/v1/zones").json()}["B"]
    assert (last["free"], last["occupied"]) == (now["free"], now["occupied"])
    too_many = client.get(
        "/api/v1/history", params={"start": 0, "end": 86400 * 30, "step": 1}, headers=h
    )
    assert too_many.status_code == 422 and "at most" in too_many.text
    backwards = client.get("/api/v1/history", params={"start": 100, "end": 50}, headers=h)
    assert backwards.status_code == 422 and "end must be after start" in backwards.text


def test_history_stops_at_now(client, tokens, harness):
    """A future end is not answered with the present repeated as if it were known."""
    h = tokens["viewer"]
    before = time.time()
    r = client.get(
        "/api/v1/history",
        params={"start": before - 60, "end": before + 3600, "step": 10},
        headers=h,
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert before <= body["end"] <= time.time()
    for series in body["series"]:
        assert series["points"] and series["points"][-1]["ts"] <= body["end"]
        assert len(series["points"]) == 7
    ahead = client.get(
        "/api/v1/history", params={"start": before + 600, "end": before + 3600}, headers=h
    )
    assert ahead.status_code == 422 and "start is in the future" in ahead.text


def test_history_starts_where_the_journal_still_has_it(client, tokens, harness):
    """After retention pruned the journal, a state before its cut cannot be told: the
    history starts at the cut (the response says so), and a window wholly before it is
    refused with the reason."""
    h = tokens["viewer"]
    now = time.time()
    cut = now - 3600
    with harness.journal.transaction():
        harness.journal.set_meta("history_from", repr(cut))
    try:
        r = client.get(
            "/api/v1/history", params={"start": now - 7200, "end": now, "step": 60}, headers=h
        )
        assert r.status_code == 200, r.text
        assert r.json()["start"] == cut
        gone = client.get(
            "/api/v1/history", params={"start": now - 9000, "end": now - 7200}, headers=h
        )
        assert gone.status_code == 422 and "--journal-keep-days" in gone.text
    finally:
        with harness.journal.transaction():
            harness.journal.conn.execute("DELETE FROM meta WHERE key = 'history_from'")


def test_history_shows_the_gateways_own_downtime_as_unknown(client, tokens, harness):
    """While the gateway was down nothing was recorded: the points in its outage count every
    space but the closed ones unknown (not the counts before it, as if known), and the
    response lists the outage; the points around it are the journal's."""
    h = tokens["viewer"]
    now = time.time()
    down, up = now - 250, now - 130  # the samples at now - 240 ... now - 140 fall in it
    params = {"zone": "A", "start": now - 300, "end": now, "step": 60}
    before = client.get("/api/v1/history", params=params, headers=h).json()
    assert before["outages"] == []
    with harness.journal.transaction():
        harness.journal.record_outage(down, up, False)
    try:
        r = client.get("/api/v1/history", params=params, headers=h)
    finally:
        with harness.journal.transaction():
            harness.journal.conn.execute("DELETE FROM outages")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["outages"] == [{"start": down, "end": up, "clean": False, "ongoing": False}]
    (was,), (series,) = before["series"], body["series"]
    for p, q in zip(was["points"], series["points"], strict=True):
        if down <= p["ts"] < up:
            assert (q["free"], q["occupied"], q["closed"]) == (0, 0, p["closed"])
            assert q["unknown"] == p["free"] + p["occupied"] + p["unknown"] > 0
        else:
            assert q == p
    assert sum(down <= p["ts"] < up for p in series["points"]) == 2


def test_manager_closes_and_opens_a_space(client, tokens, harness):
    h = tokens["manager"]
    before = {z["zone"]: z for z in client.get("/api/v1/zones").json()}["D"]
    r = client.post("/api/v1/spaces/D-004/close", json={"reason": "pothole"}, headers=h)
    assert r.status_code == 202, r.text
    assert r.json()["by"] == "manager"
    assert client.get("/api/v1/spaces/D-004", headers=h).json()["state"] == "closed"
    after = {z["zone"]: z for z in client.get("/api/v1/zones").json()}["D"]
    assert after["closed"] == before["closed"] + 1
    last = client.get("/api/v1/events", params={"space": "D-004", "limit": 1}, headers=h).json()
    assert last["items"][0]["new"] == "closed" and last["items"][0]["agent"] == "manager"
    assert last["items"][0]["reason"] == "pothole"  # the audit trail says why
    assert client.post("/api/v1/spaces/D-004/open", headers=h).status_code == 202
    assert client.get("/api/v1/spaces/D-004", headers=h).json()["state"] == "free"
    csv_text = client.get("/api/v1/events.csv", params={"space": "D-004"}, headers=h).text
    rows = list(csv.DictReader(io.StringIO(csv_text)))
    assert [(r["new"], r["reason"]) for r in rows[-2:]] == [("closed", "pothole"), ("free", "")]


def test_closing_a_closed_space_again_journals_the_new_reason(client, tokens, harness):
    """A manager who closes a closed space again with another reason (the pothole is now
    a burst pipe) leaves that reason in the audit; the state and the counts stay."""
    h = tokens["manager"]
    assert client.post("/api/v1/spaces/D-005/close", json={"reason": "pothole"}, headers=h)

    def counts() -> dict:  # with its ts: when the counts were published, i.e. changed
        return {z["zone"]: z for z in client.get("/api/v1/zones").json()}["D"]

    before = counts()
    again = client.post("/api/v1/spaces/D-005/close", json={"reason": "burst pipe"}, headers=h)
    assert again.status_code == 202, again.text
    assert counts() == before
    last = client.get("/api/v1/events", params={"space": "D-005", "limit": 2}, headers=h).json()
    assert [(e["old"], e["new"], e["reason"]) for e in last["items"]] == [
        ("closed", "closed", "burst pipe"),
        (last["items"][1]["old"], "closed", "pothole"),
    ]
    # without a reason, closing again changes nothing: 409 (the page says so), no event
    same = client.post("/api/v1/spaces/D-005/close", headers=h)
    assert same.status_code == 409, same.text
    assert same.json()["detail"].startswith("D-005 is already closed: nothing changed")
    newest = client.get("/api/v1/events", params={"space": "D-005", "limit": 1}, headers=h).json()
    assert newest["items"][0]["id"] == last["items"][0]["id"]
    assert client.post("/api/v1/spaces/D-005/open", headers=h).status_code == 202


def test_opening_a_space_that_is_not_closed_changes_nothing(client, tokens, harness):
    """Not 202 "opened", and no made-up free -> free event by the manager in the audit."""
    h = tokens["manager"]
    assert client.get("/api/v1/spaces/D-007", headers=h).json()["state"] != "closed"
    newest = client.get("/api/v1/events", params={"limit": 1}, headers=h).json()["items"]
    r = client.post("/api/v1/spaces/D-007/open", json={"reason": "repaired"}, headers=h)
    assert r.status_code == 409, r.text
    assert r.json()["detail"].startswith("D-007 is not closed")
    assert client.get("/api/v1/events", params={"limit": 1}, headers=h).json()["items"] == newest
    # the gateway itself refuses it too (a control over MQTT, or a race with another open)
    with pytest.raises(ValueError, match="D-007 is not closed"):
        harness.gateway.control_space("D-007", "open", "manager", "repaired")
    assert client.get("/api/v1/events", params={"limit": 1}, headers=h).json()["items"] == newest


def test_an_open_says_whose_closure_it_ended(client, tokens, harness):
    """Bob opening a space Alice closed is told it was hers and why; the answer of every
    action says what the space was before."""
    h = tokens["manager"]
    t0 = time.time()
    why = "wedding, until Sunday"
    closed = client.post("/api/v1/spaces/D-009/close", json={"reason": why}, headers=h).json()
    assert closed["was"] != "closed" and closed["closed_by"] is None
    opened = client.post("/api/v1/spaces/D-009/open", headers=h)
    assert opened.status_code == 202, opened.text
    body = opened.json()
    assert (body["was"], body["closed_by"], body["closed_reason"]) == ("closed", "manager", why)
    assert t0 - 1 <= body["closed_at"] <= time.time()


def test_closing_a_space_a_car_was_sent_to_says_so(client, tokens, harness):
    """A car assigned a space at the east gate is on its way; the manager closing that space
    is told (there is no calling the car back), and only then."""
    harness.fill()
    harness.gateway.handle(topics.arrival(harness.site.id, "east"), b'{"class": "visitor"}')
    (latest,) = client.get(
        "/api/v1/assignments", params={"entrance": "east", "limit": 1}, headers=tokens["viewer"]
    ).json()
    h = tokens["manager"]
    sent = client.post(f"/api/v1/spaces/{latest['space']}/close", headers=h)
    assert sent.status_code == 202 and sent.json()["held"] is True
    other = client.post("/api/v1/spaces/D-012/close", headers=h).json()
    assert other["held"] is False


def test_events_filter_by_source_and_by_and_a_blank_reason_is_none(client, tokens, harness):
    """The audit: the managers' actions alone (?source=manager, ?by=NAME); a reason of only
    spaces is no reason, and a reason is kept without the spaces around it."""
    h = tokens["manager"]
    harness.report("bus-g", {"A-060": "occupied"})  # a sensor's event, newer than any close
    blank = client.post("/api/v1/spaces/D-010/close", json={"reason": "   "}, headers=h)
    assert blank.status_code == 202 and blank.json()["reason"] is None
    padded = client.post("/api/v1/spaces/D-011/close", json={"reason": " paint "}, headers=h)
    assert padded.json()["reason"] == "paint"
    every = client.get("/api/v1/events", params={"limit": 1000}, headers=h).json()["items"]
    assert {e["source"] for e in every} > {"manager"}
    for params in ({"source": "manager"}, {"by": "manager"}):
        items = client.get("/api/v1/events", params=params, headers=h).json()["items"]
        assert items and {(e["source"], e["agent"]) for e in items} == {("manager", "manager")}
        assert [(e["space"], e["reason"]) for e in items[:2]] == [
            ("D-011", "paint"),
            ("D-010", None),
        ]
    bus = client.get("/api/v1/events", params={"source": "bus-g"}, headers=h).json()["items"]
    assert bus and {e["source"] for e in bus} == {"bus-g"}
    for path in ("/api/v1/events", "/api/v1/events.csv"):
        bad = client.get(path, params={"source": "managers"}, headers=h)
        assert bad.status_code == 422 and "no source 'managers'" in bad.text
    csv_text = client.get("/api/v1/events.csv", params={"source": "manager"}, headers=h).text
    assert {r["source"] for r in csv.DictReader(io.StringIO(csv_text.lstrip("\ufeff")))} == {
        "manager"
    }
    for space in ("D-010", "D-011"):
        assert client.post(f"/api/v1/spaces/{space}/open", headers=h).status_code == 202


def test_manager_actions_validate_their_input(client, tokens):
    h = tokens["manager"]
    assert client.post("/api/v1/spaces/NOPE/close", headers=h).status_code == 404
    r = client.post("/api/v1/spaces/" + "A" * 5000 + "/close", headers=h)
    assert r.status_code == 404 and len(r.text) < 300, len(r.text)
    r = client.post("/api/v1/zones/" + "Z" * 5000 + "/close", headers=h)
    assert r.status_code == 404 and len(r.text) < 300, len(r.text)
    long = client.post("/api/v1/spaces/A-030/close", json={"reason": "x" * 500}, headers=h)
    assert long.status_code == 422 and "reason" in long.text
    assert "at most 200 characters" in long.text, long.text  # not "200 items"
    garbage = client.post(
        "/api/v1/spaces/A-030/close",
        content=b"{not json",
        headers={**h, "content-type": "application/json"},
    )
    assert garbage.status_code == 422 and "json" in garbage.text.lower()
    extra = client.post("/api/v1/spaces/A-030/close", json={"why": "x"}, headers=h)
    assert extra.status_code == 422 and "why" in extra.text


@pytest.mark.parametrize(
    "bad",
    [b"NaN", b"Infinity", b"-Infinity", b"[NaN]", b'{"a": Infinity}', b"[1, -Infinity]"],
)
def test_non_finite_numbers_in_a_body_answer_422_not_500(client, tokens, bad):
    """Python's JSON reader takes NaN and Infinity; the 422 echoes the bad input, and JSON
    has no such number: it comes back as text, not as a response that cannot be encoded."""
    json_body = {"content-type": "application/json"}
    login = client.post(
        "/api/v1/auth/login", content=b'{"name": ' + bad + b', "password": "x"}', headers=json_body
    )
    assert login.status_code == 422, login.text
    assert login.json()["detail"][0]["loc"] == ["body", "name"]
    assert isinstance(login.json()["detail"][0]["input"], str)
    close = client.post(
        "/api/v1/spaces/A-030/close",
        content=b'{"reason": ' + bad + b"}",
        headers={**tokens["manager"], **json_body},
    )
    assert close.status_code == 422, close.text
    assert close.json()["detail"][0]["loc"][:2] == ["body", "reason"]
    assert client.get("/api/v1/spaces/A-030", headers=tokens["viewer"]).json()["state"] != "closed"


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\\ud800", "password": "x"}',
        b'{"name": "viewer", "password": "\\udfff"}',
        b'{"name": ["\\ud800"], "password": "x"}',
        b'{"name": "\\ud800"}',  # the whole body echoed as the missing password's input
    ],
)
def test_a_lone_surrogate_answers_422_not_500(client, tokens, body, caplog):
    """JSON's \\ud800 escape makes a str UTF-8 cannot encode: echoed into the 422, it made
    the response fail to encode, an anonymous 500 with a 6 KB traceback per request."""
    json_body = {"content-type": "application/json"}
    caplog.set_level(logging.ERROR)
    login = client.post("/api/v1/auth/login", content=body, headers=json_body)
    assert login.status_code == 422, login.text
    assert "\\ud800" not in login.text and "\\udfff" not in login.text
    for reason in (b'"\\ud800"', b'["\\ud800", 1]', b'"ok \\udfff ok"'):
        close = client.post(
            "/api/v1/spaces/A-030/close",
            content=b'{"reason": ' + reason + b"}",
            headers={**tokens["manager"], **json_body},
        )
        assert close.status_code == 422, close.text
    # a query parameter: %ED%A0%80 is the UTF-8-like encoding of U+D800
    events = client.get("/api/v1/events?since=%ED%A0%80&limit=%ED%A0%80", headers=tokens["viewer"])
    assert events.status_code == 422, events.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert client.get("/api/v1/spaces/A-030", headers=tokens["viewer"]).json()["state"] != "closed"


def test_alerts_from_health_and_availability_and_acknowledgement(client, tokens, harness):
    site = harness.site.id
    health = HealthReport(
        agent="serial-bus-b1",
        source="bus-b1",
        ts=time.time(),
        nodes=[
            NodeHealth(
                address=2,
                status="ok",
                errors={"crc": 3},
                detectors=[
                    DetectorHealth(index=4, space="B1-E-035", status="stuck", raw=812),
                    DetectorHealth(index=5, space="B1-E-036", status="ok", raw=100),
                ],
            )
        ],
    )
    harness.gateway.handle(
        topics.edge_health(site, "serial-bus-b1"), health.model_dump_json().encode()
    )
    harness.gateway.handle(topics.edge_availability(site, "camera-cam-c"), b"offline")
    wanted = {"detector_stuck:bus-b1/2/4", "agent_offline:camera-cam-c"}
    deadline = time.monotonic() + 10
    while True:
        alerts = {a["id"]: a for a in client.get("/api/v1/alerts", headers=tokens["viewer"]).json()}
        if wanted <= set(alerts) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert wanted <= set(alerts)
    assert alerts["agent_offline:camera-cam-c"]["severity"] == "critical"
    assert "camera-cam-c" in alerts["agent_offline:camera-cam-c"]["message"]["en"]
    assert alerts["detector_stuck:bus-b1/2/4"]["details"]["space"] == "B1-E-035"
    # the camera's spaces went unknown with its last will
    assert client.get("/api/v1/spaces/C-005", headers=tokens["viewer"]).json()["state"] == "unknown"

    aid = "agent_offline:camera-cam-c"
    url = f"/api/v1/alerts/{aid}/acknowledge"
    assert client.post(url, headers=tokens["viewer"]).status_code == 403
    r = client.post(url, json={"note": "power cut"}, headers=tokens["manager"])
    assert r.status_code == 200 and r.json()["acknowledged_by"] == "manager"
    assert (
        client.post("/api/v1/alerts/none/acknowledge", headers=tokens["manager"]).status_code == 404
    )
    with sqlite3.connect(harness.db_path) as db:
        row = db.execute("SELECT acked_by, note FROM alerts WHERE id = ?", (aid,)).fetchone()
    assert row == ("manager", "power cut")
    # a detector's alert id holds "/": sent as %2F, as the dashboard sends it
    stuck_url = "/api/v1/alerts/detector_stuck%3Abus-b1%2F2%2F4/acknowledge"
    assert client.post(stuck_url, headers=tokens["viewer"]).status_code == 403
    r = client.post(stuck_url, json={"note": "swapping it"}, headers=tokens["manager"])
    assert r.status_code == 200 and r.json()["id"] == "detector_stuck:bus-b1/2/4"

    # raw readings: technician only
    raw = client.get("/api/v1/detectors/raw", headers=tokens["technician"]).json()
    stuck = next(d for d in raw if d["space"] == "B1-E-035")
    assert stuck["raw"] == 812 and stuck["node_errors"] == {"crc": 3}
    plain = client.get("/api/v1/detectors", headers=tokens["viewer"]).json()
    assert "raw" not in plain[0]
    assert client.get("/api/v1/detectors/raw", headers=tokens["manager"]).status_code == 403
    # a bus filter: a typo is refused, not answered "no detectors"
    b1 = client.get("/api/v1/detectors", params={"source": "bus-b1"}, headers=tokens["viewer"])
    assert b1.status_code == 200 and {d["source"] for d in b1.json()} == {"bus-b1"}
    typo = client.get("/api/v1/detectors", params={"source": "bus-bl"}, headers=tokens["viewer"])
    assert typo.status_code == 422 and "bus-b1" in typo.text

    harness.gateway.handle(topics.edge_availability(site, "camera-cam-c"), b"online")
    harness.fill(OCCUPIED)  # the camera reports again


def test_health_and_availability_only_from_the_sites_agents(client, tokens, harness):
    """An agent's health names its own source, with a sane frame rate and a time that is
    not ahead; availability and health of an agent no source names are refused. None of
    them reaches the agents list or the metrics' agent table."""
    site = harness.site.id
    gw = harness.gateway
    now = time.time()
    good = HealthReport(agent="camera-cam-c", source="cam-c", ts=now, fps=5.0)

    def health(agent: str, **change) -> None:
        body = good.model_copy(update={"agent": agent, **change}).model_dump_json()
        gw.handle(topics.edge_health(site, agent), body.encode())

    before = dict(gw.rejections.counts)
    health("camera-cam-c", source="bus-g")  # another source's health
    health("camera-cam-c", source="bus-x")
    health("camera-cam-c", ts=now + 86400)
    health("ghost")
    gw.handle(topics.edge_availability(site, "x\u202eevil"), b"online")
    for fps in (b"-5.0", b"NaN"):
        gw.handle(
            topics.edge_health(site, "camera-cam-c"),
            good.model_dump_json().encode().replace(b'"fps":5.0', b'"fps":' + fps),
        )
    counts = {k: v - before.get(k, 0) for k, v in gw.rejections.counts.items()}
    assert counts == {
        "foreign_source": 1,
        "unknown_source": 1,
        "from_the_future": 1,
        "unknown_agent": 2,
        "invalid": 2,
    }, counts
    agents = {a["agent"] for a in client.get("/api/v1/agents", headers=tokens["viewer"]).json()}
    assert "ghost" not in agents and "x\u202eevil" not in agents


def test_arrivals_and_assignments(client, tokens, harness):
    harness.gateway.handle(
        topics.arrival(harness.site.id, "east"), b'{"class": "visitor", "plate": "HU-A1234"}'
    )
    items = client.get("/api/v1/assignments", params={"entrance": "east"}, headers=tokens["viewer"])
    latest = items.json()[0]
    assert latest["plate"] is None and latest["class"] == "visitor"  # a viewer: no plates
    managed = client.get("/api/v1/assignments", params={"entrance": "east"},
                         headers=tokens["manager"]).json()  # fmt: skip
    assert managed[0]["plate"] == "HU-A1234"
    assert latest["space"].startswith("C-")
    summary = {
        a["entrance"]: a for a in client.get("/api/v1/arrivals", headers=tokens["manager"]).json()
    }
    assert summary["east"]["last_hour"] >= 1 and summary["east"]["last"]["plate"] == "HU-A1234"
    bad = client.get("/api/v1/assignments", params={"entrance": "west"}, headers=tokens["viewer"])
    assert bad.status_code == 422 and "west" in bad.text


def test_metrics_exposition(client, tokens, harness):
    harness.gateway.handle(topics.edge_occupancy(harness.site.id, "serial-bus-g"), b"not json")
    r = client.get("/metrics", headers=tokens["viewer"])
    assert r.status_code == 200 and r.headers["content-type"].startswith(
        "text/plain; version=0.0.4"
    )
    lines = r.text.splitlines()
    c = harness.gateway.counters()
    assert f"parkguide_reports_accepted_total {c.accepted}" in lines
    assert (
        f'parkguide_reports_rejected_total{{reason="bad_json"}} {c.rejected["bad_json"]}' in lines
    )
    assert f"parkguide_state_changes_total {c.state_changes}" in lines
    assert f"parkguide_sign_updates_total {c.sign_updates}" in lines
    assert set(c.reports_missed) == {"serial-bus-g", "serial-bus-b1", "camera-cam-c"}
    for agent, n in c.reports_missed.items():  # gaps in each agent's seq numbers
        assert f'parkguide_reports_missed_total{{agent="{agent}"}} {n}' in lines
    assert "# TYPE parkguide_seq_jumps_total counter" in lines
    for agent, n in c.seq_jumps.items():
        assert f'parkguide_seq_jumps_total{{agent="{agent}"}} {n}' in lines
    assert "parkguide_outbox_depth 0" in lines
    online = sum(a.online for a in harness.gateway.agents())
    assert f"parkguide_agents_online {online}" in lines
    count = next(ln for ln in lines if ln.startswith("parkguide_end_to_end_latency_seconds_count"))
    inf = next(ln for ln in lines if 'latency_seconds_bucket{le="+Inf"}' in ln)
    assert count.split()[-1] == inf.split()[-1] == str(len(c.latency_s))
    # name{labels} value: label values may hold spaces (a site's name)
    sample = re.compile(r'[a-z_]+(\{([a-z_]+="([^"\\\n]|\\.)*",?)*\})? \S+')
    assert all(ln.startswith("#") or sample.fullmatch(ln) for ln in lines if ln)
    assert 'parkguide_site_info{site="xinyuan",name="Xinyuan Community"} 1' in lines
    assert not any(ln.startswith("parkguide_outbox_last_error_info") for ln in lines)


def test_metrics_say_when_influxdb_refuses_the_token(client, tokens, harness):
    """What the InfluxDB writer counts (here: a refused token) reaches the metrics."""
    before = harness.gateway.outbox_stats
    harness.gateway.outbox_stats = lambda: {
        "depth": 6,
        "dropped_cap": 4,
        "dropped_rejected": 1,
        "written": 2,
        "auth_failed": 3,
        "error": 'InfluxDB refused the token (401): "unauthorized access"',
    }
    try:
        lines = client.get("/metrics", headers=tokens["viewer"]).text.splitlines()
    finally:
        harness.gateway.outbox_stats = before
    assert "parkguide_outbox_depth 6" in lines
    assert 'parkguide_outbox_dropped_total{reason="cap"} 4' in lines
    assert 'parkguide_outbox_dropped_total{reason="rejected"} 1' in lines
    assert "parkguide_outbox_written_total 2" in lines
    assert "parkguide_outbox_auth_failures_total 3" in lines
    assert (
        'parkguide_outbox_last_error_info{error="InfluxDB refused the token (401):'
        ' \\"unauthorized access\\""} 1'
    ) in lines


def test_ngsi_ld_entities(client, tokens, harness):
    site = client.get("/ngsi-ld/v1/entities", params={"type": "OffStreetParking"})
    assert site.status_code == 200 and site.headers["content-type"] == "application/ld+json"
    (lot,) = site.json()
    zones = client.get("/api/v1/zones").json()
    assert lot["totalSpotNumber"]["value"] == 342
    # free and not held for a car already sent there, as the signs and the groups count
    assert lot["availableSpotNumber"]["value"] == sum(z["offered"] for z in zones)
    assert lot["status"]["value"] == ["spacesAvailable"] and "@context" in lot
    groups = client.get("/ngsi-ld/v1/entities", params={"type": "ParkingGroup"}).json()
    assert {g["id"] for g in groups} == {
        f"urn:ngsi-ld:ParkingGroup:xinyuan:{z['zone']}" for z in zones
    }
    assert client.get("/ngsi-ld/v1/entities", params={"type": "ParkingSpot"}).status_code == 401
    spots = client.get(
        "/ngsi-ld/v1/entities",
        params={"type": "ParkingSpot", "limit": "1000"},
        headers=tokens["viewer"],
    ).json()
    assert len(spots) == 342
    a1 = next(s for s in spots if s["id"] == "urn:ngsi-ld:ParkingSpot:xinyuan:A-001")
    assert a1["status"]["value"] == "occupied"
    assert a1["refParkingGroup"]["object"] == "urn:ngsi-ld:ParkingGroup:xinyuan:A"
    assert a1["refParkingSite"]["object"] == "urn:ngsi-ld:OffStreetParking:xinyuan"
    one = client.get(
        "/ngsi-ld/v1/entities/urn:ngsi-ld:ParkingSpot:xinyuan:A-001", headers=tokens["viewer"]
    )
    assert one.json()["status"]["value"] == "occupied"
    assert client.get("/ngsi-ld/v1/entities/urn:x").status_code == 404
    bad = client.get("/ngsi-ld/v1/entities", params={"type": "Car"}, headers=tokens["viewer"])
    assert bad.status_code == 400 and "type must be one of" in bad.json()["detail"]


def test_openapi_is_served_without_cdn_pages_and_the_page_is(client):
    # FastAPI's /docs and /redoc load their scripts from a CDN (no integrity pinning) on the
    # origin of the managers' cookies: not served; any OpenAPI viewer shows /openapi.json
    for path in ("/docs", "/redoc", "/docs/oauth2-redirect"):
        r = client.get(path)
        assert r.status_code == 404, path
        assert "cdn.jsdelivr.net" not in r.text
    spec = client.get("/openapi.json").json()
    assert "/api/v1/zones" in spec["paths"] and "/ngsi-ld/v1/entities" in spec["paths"]
    page = client.get("/")
    assert page.status_code == 200 and 'id="map"' in page.text
    assert "frame-ancestors 'none'" in page.headers["content-security-policy"]
    assert client.get("/static/app.js").status_code == 200


def test_every_answer_forbids_framing_and_sniffing(client, tokens):
    """The page's headers were set on / alone: /static/index.html, the same dashboard logged
    in, could be framed by another origin of the same site and a space closed by two clicks.
    Every answer now says no framing and no sniffing; the page itself is only at /."""
    answers = {
        "page": client.get("/"),
        "script": client.get("/static/app.js"),
        "styles": client.get("/static/style.css"),
        "json": client.get("/api/v1/zones"),
        "404": client.get("/api/v1/spaces/NOPE", headers=tokens["viewer"]),
        "422": client.get("/api/v1/events?limit=-5", headers=tokens["viewer"]),
        "401": client.get("/api/v1/site"),
        "no page under /static": client.get("/static/index.html"),
        "nor in any other spelling": client.get("/static/./index.html"),
    }
    codes = {what: r.status_code for what, r in answers.items()}
    assert codes == {
        "page": 200, "script": 200, "styles": 200, "json": 200, "404": 404, "422": 422,
        "401": 401, "no page under /static": 404, "nor in any other spelling": 404,
    }  # fmt: skip
    for what, r in answers.items():
        assert r.headers["x-frame-options"] == "DENY", what
        assert r.headers["x-content-type-options"] == "nosniff", what
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"], what
        assert r.headers.get_list("content-security-policy") == [
            r.headers["content-security-policy"]
        ], what  # one policy, not the route's and the middleware's
    assert "script-src" not in answers["page"].headers["content-security-policy"]
    assert answers["page"].headers["content-security-policy"].startswith("default-src 'self'")
    assert answers["json"].headers["content-security-policy"].startswith("default-src 'none'")


def test_an_unexpected_fault_answers_500_with_the_same_headers(harness):
    """Starlette answers an unhandled exception outside every middleware: a bug's 500 went out
    as text without the security headers. It is JSON with them now (the traceback goes to the
    server's log, as before)."""
    app = create_app(harness.gateway, settings(), db_path=str(harness.db_path))

    class Broken(RuntimeError):
        pass

    def zone_counts():
        raise Broken("a bug in the view")

    with TestClient(app, raise_server_exceptions=False) as c:
        c.app.state.ctx.view = SimpleNamespace(zone_counts=zone_counts)
        r = c.get("/api/v1/zones")
    assert r.status_code == 500
    assert r.json() == {"detail": "internal error: the fault is in the API's log"}
    assert r.headers["x-frame-options"] == "DENY"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert r.headers["content-security-policy"] == "default-src 'none'; frame-ancestors 'none'"
    assert "a bug in the view" not in r.text  # no internals to the client


# -- pure logic --------------------------------------------------------------------------------


def test_zone_series_counts_changes_at_each_sample():
    zone_of = {"a1": "A", "a2": "A", "b1": "B"}
    series = zone_series(
        zone_of,
        {"a1": "free", "a2": "occupied"},  # b1 never journalled: unknown
        [
            (5.0, "a1", "occupied"),
            (15.0, "b1", "free"),
            (15.0, "x9", "free"),
            (25.0, "a2", "bogus"),
        ],
        sample_times(0.0, 20.0, 10.0),
    )
    assert [(p.ts, p.free, p.occupied, p.unknown) for p in series["A"]] == [
        (0.0, 1, 1, 0),
        (10.0, 0, 2, 0),
        (20.0, 0, 2, 0),
    ]
    assert [(p.free, p.unknown) for p in series["B"]] == [(0, 1), (0, 1), (1, 0)]


def test_derive_alerts_rules():
    now = 1_000_000.0
    spaces = [
        SpaceStatus("s1", "A", "occupied", now - 73 * 3600, now, "bus"),
        SpaceStatus("s2", "A", "occupied", now - 71 * 3600, now, "bus"),
        SpaceStatus("s3", "A", "free", now - 100 * 3600, now, "bus"),
        # back from a short outage of its agent: the same car, seen since 80 h ago
        SpaceStatus("s4", "A", "occupied", now - 60, now, "bus", observed_since=now - 80 * 3600),
    ]
    blind = HealthReport(agent="cam", source="cam-c", ts=now, status="blind")
    flappy = HealthReport(
        agent="bus", source="bus-g", ts=now,
        nodes=[
            NodeHealth(address=1, status="ok", detectors=[DetectorHealth(index=0, status="flapping")]),
            NodeHealth(address=2, status="dead", detectors=[DetectorHealth(index=0, status="stuck")]),
        ],
    )  # fmt: skip
    agents = [
        AgentStatus("cam", True, now, blind),
        AgentStatus("bus", True, now, flappy),
        AgentStatus("gone", False, now - 50, flappy),  # offline: its stale health says nothing
    ]
    ids = {a.id for a in derive_alerts(spaces, agents, now, 72 * 3600)}
    assert ids == {
        "long_occupied:s1",
        "long_occupied:s4",
        "camera_blind:cam-c",
        "detector_flapping:bus-g/1/0",
        "node_dead:bus-g/2",
        "agent_offline:gone",
    }


def test_a_blind_bus_is_one_bus_alert_naming_the_port_not_a_camera_or_every_node():
    """A bus whose nodes all went quiet is a bus problem (the adapter, the cable): one
    `bus_blind` alert, not `camera ... is blind` and not one `node_dead` per node. Camera
    alerts are as before."""
    now = 1_000_000.0
    dead = [NodeHealth(address=a, status="dead", detectors=[DetectorHealth(index=0, status="unknown")])
            for a in (1, 2, 3, 4)]  # fmt: skip
    cut = HealthReport(agent="serial-bus-b1", source="bus-b1", ts=now, status="blind",
                       nodes=dead, counters={"port_up": 1})  # fmt: skip
    unplugged = HealthReport(agent="serial-bus-g", source="bus-g", ts=now, status="blind",
                             nodes=[NodeHealth(address=1, status="unknown")],
                             counters={"port_up": 0})  # fmt: skip
    camera = HealthReport(agent="camera-cam-c", source="cam-c", ts=now, status="blind", fps=0.0)
    agents = [AgentStatus(h.agent, True, now, h) for h in (cut, unplugged, camera)]
    alerts = {a.id: a for a in derive_alerts([], agents, now, 72 * 3600)}
    assert set(alerts) == {"bus_blind:bus-b1", "bus_blind:bus-g", "camera_blind:cam-c"}
    assert alerts["bus_blind:bus-b1"].severity == "critical"
    assert alerts["bus_blind:bus-b1"].message(72)[1] == (
        "bus bus-b1: the serial port is open but no node answers (cable or node power?)"
    )
    assert alerts["bus_blind:bus-g"].message(72)[1] == (
        "bus bus-g: its serial port is lost (USB/RS-485 adapter unplugged?): no node answers"
    )
    assert alerts["camera_blind:cam-c"].message(72)[1] == "camera cam-c is blind"


def test_a_blind_cameras_alert_says_why_from_its_health():
    """The camera's health names the fault: the manager reads what to look at (a camera
    knocked askew is not a dirty lens); an unknown reason reads as before."""
    now = 1_000_000.0
    said = {}
    for fault in ("moved", "other_view", "replayed", "stream_lost", "black", "from-a-newer-agent"):
        health = HealthReport(agent="camera-cam-c", source="cam-c", ts=now, status="blind",
                              fault=fault)  # fmt: skip
        (alert,) = derive_alerts([], [AgentStatus(health.agent, True, now, health)], now, 3600)
        said[fault] = alert.message(72)
    assert (
        said["moved"][1]
        == "camera cam-c is blind: its view moved (knocked or turned?): set it back"
    )
    assert said["moved"][0].startswith("摄像头 cam-c 看不见:视角已移动")
    assert "another PTZ preset" in said["other_view"][1]
    assert "a recording played again" in said["replayed"][1]
    assert "no stream from it" in said["stream_lost"][1] and "black" in said["black"][1]
    assert said["from-a-newer-agent"][1] == "camera cam-c is blind"


def test_a_node_answering_an_exception_is_a_node_error_alert():
    now = 1_000_000.0
    refusing = NodeHealth(address=1, status="unknown", errors={"crc": 0, "exception": 2})
    health = HealthReport(agent="serial-bus-b1", source="bus-b1", ts=now, status="degraded",
                          nodes=[refusing, NodeHealth(address=2, status="ok")])  # fmt: skip
    (alert,) = derive_alerts([], [AgentStatus(health.agent, True, now, health)], now, 3600)
    assert (alert.id, alert.severity) == ("node_error:bus-b1/1", "critical")
    zh, en = alert.message(72)
    assert en == (
        "node controller bus-b1/1 answers exception 2 (illegal data address): "
        "check the site file's detectors against the node"
    )
    assert "异常 2" in zh
    # after a restart the alert comes back from the journal without its details
    assert replace(alert, details={}).message(72)[1] == (
        "node controller bus-b1/1 answers with a Modbus exception"
    )


@pytest.mark.parametrize(
    ("db", "env", "says"),
    [
        ("/nonexistent/dir/j.db", {}, "cannot open the journal"),
        ("j.db", {"PARKGUIDE_SESSION_TTL_S": "10"}, "PARKGUIDE_SESSION_TTL_S: Input should be"),
    ],
)
def test_the_api_refuses_a_bad_journal_or_setting_in_one_line(tmp_path, db, env, says):
    import os
    import subprocess
    import sys

    from conftest import EXAMPLE_SITE, free_port

    r = subprocess.run(
        [sys.executable, "-m", "parkguide", "api", "--site", str(EXAMPLE_SITE)]
        + ["--broker", "mqtt://127.0.0.1:1", "--db", str(tmp_path / db)]
        + ["--http", f"127.0.0.1:{free_port()}"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **env},
    )
    assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr


def test_states_at_reads_back_from_now_and_agrees_with_the_whole_journal(tmp_path):
    """The chart's starting states come from the events after its start (and the checkpoint),
    not from a scan of every event before it: the same answer, for any time and checkpoint."""
    import random

    from api.journal import JournalReader
    from gateway.journal import Journal

    rng = random.Random(7)
    journal = Journal(tmp_path / "j.sqlite")
    spaces = [f"A-{i:03d}" for i in range(1, 21)]
    state = dict.fromkeys(spaces, "unknown")
    events = []  # (ts, space, old, new)
    for k in range(400):
        space = rng.choice(spaces)
        new = rng.choice(
            [s for s in ("free", "occupied", "unknown", "closed") if s != state[space]]
        )
        events.append((1000.0 + k, space, state[space], new))
        state[space] = new
    mark = 250  # the checkpoint: the spaces table as of event 250
    sql = "INSERT INTO events(ts, space, old, new, source, agent, seq) VALUES (?,?,?,?,?,?,?)"
    with journal.transaction() as conn:
        conn.executemany(sql, [(*e, "bus-g", "a", None) for e in events])
        at_mark: dict[str, str] = {}
        for _, space, _, new in events[:mark]:
            at_mark[space] = new
        journal.put_spaces([(s, st, st, 0, 0.0, 0.0, 0.0, "a") for s, st in at_mark.items()])
        journal.mark_checkpoint(mark)
    journal.close()
    reader = JournalReader(str(tmp_path / "j.sqlite"))
    for t in (999.0, 1000.0, 1123.5, 1249.0, 1250.0, 1399.0, 1500.0):
        whole: dict[str, str] = {}
        for ts, space, old, new in events:  # the whole journal, the plain way
            if ts <= t:
                whole[space] = new
            else:
                whole.setdefault(space, old)
        assert reader.states_at(t) == whole, t


def test_a_journal_from_before_reasons_is_read_and_then_migrated(tmp_path):
    from api.journal import EventFilter, JournalReader
    from gateway.journal import Journal

    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:  # the events table as it was
        conn.execute(
            "CREATE TABLE events(id INTEGER PRIMARY KEY, ts REAL NOT NULL, space TEXT NOT NULL,"
            " old TEXT NOT NULL, new TEXT NOT NULL, source TEXT, agent TEXT, seq INTEGER)"
        )
        conn.execute(
            "INSERT INTO events(ts, space, old, new) VALUES (1, 'A-001', 'free', 'closed')"
        )
    reader = JournalReader(str(db))
    (before,) = reader.events(EventFilter(), limit=10)  # read only: the reader adds nothing
    assert (before.space, before.new, before.note) == ("A-001", "closed", None)
    Journal(db).close()  # the gateway opens it: the column is added
    with sqlite3.connect(db) as conn:
        assert "note" in {r[1] for r in conn.execute("PRAGMA table_info(events)")}
    assert reader.events(EventFilter(), limit=10) == [before]


def test_without_the_broker_one_alert_says_so_and_none_blames_the_agents():
    """A broker stopped sends every agent's last will though they are alive and spooling:
    while the broker is lost, the dashboard says that, not "agent ... is offline"."""
    now = 1_000_000.0
    blind = HealthReport(agent="camera-cam-c", source="cam-c", ts=now, status="blind", fps=0.0)
    agents = [
        AgentStatus("serial-bus-g", False, now - 5, None),
        AgentStatus("camera-cam-c", True, now, blind),
    ]
    with_broker = {a.id for a in derive_alerts([], agents, now, 3600)}
    assert with_broker == {"agent_offline:serial-bus-g", "camera_blind:cam-c"}
    # an agent that cannot write its spool says so in its health: a warning names it
    full = HealthReport(
        agent="serial-bus-g", source="bus-g", ts=now, status="degraded", counters={"spool_full": 1}
    )
    spooling = [AgentStatus("serial-bus-g", True, now, full)]
    (spool,) = derive_alerts([], spooling, now, 3600)
    assert spool.id == "spool_full:serial-bus-g" and spool.severity == "warning"
    assert "spool" in spool.message(72)[1]
    (lost,) = derive_alerts([], agents, now, 3600, broker_up=False)
    assert lost.id == "broker_lost:mqtt" and lost.severity == "critical"
    assert "not reachable" in lost.message(72)[1]
    # back: the wills are retained, the agents reconnect within their backoff (30 s at
    # most); until then an agent offline is no alert, and after, it is
    back = now - 10
    rejoining = {a.id for a in derive_alerts([], agents, now, 3600, broker_back_since=back)}
    assert rejoining == {"camera_blind:cam-c"}
    later = derive_alerts([], agents, now + 30, 3600, broker_back_since=back)
    assert {a.id for a in later} == with_broker


def test_the_gateway_says_when_it_has_lost_the_broker(tmp_path):
    """The in-process API's view follows the gateway's MQTT connection (the alert above)."""
    from conftest import MosquittoBroker
    from gateway_support import running_gateway, site_variant

    broker = MosquittoBroker(tmp_path)
    broker.start()
    try:
        with running_gateway(site_variant(tmp_path), broker.url, tmp_path / "j.db") as gw:
            assert gw.gateway.broker_connected()
            # its first connect counts as the broker's return too (a box rebooted: the
            # agents come back when their backoff ends, not at once)
            assert gw.gateway.broker_back_since() is not None
            broker.stop()
            deadline = time.monotonic() + 10
            while gw.gateway.broker_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert not gw.gateway.broker_connected()
            broker.start()
            deadline = time.monotonic() + 20
            while not gw.gateway.broker_connected() and time.monotonic() < deadline:
                time.sleep(0.05)
            assert gw.gateway.broker_connected()
            back = gw.gateway.broker_back_since()  # when: the agents' alerts wait on it
            assert back is not None and abs(time.time() - back) < 20
    finally:
        broker.stop()


def test_a_parameter_given_twice_is_refused_not_the_last_one_taken(client, tokens):
    """``?zone=A&zone=B`` took only B (FastAPI keeps the last): a manager exporting two
    zones got one without a word. Now a 422 names the parameter, after the login check."""
    for path in ("/api/v1/events.csv", "/api/v1/events", "/api/v1/spaces"):
        r = client.get(f"{path}?zone=A&zone=B", headers=tokens["viewer"])
        assert r.status_code == 422, (path, r.text)
        assert r.json()["detail"][0]["loc"] == ["query", "zone"]
        assert "one value" in r.json()["detail"][0]["msg"]
        assert client.get(f"{path}?zone=A", headers=tokens["viewer"]).status_code == 200
    assert client.get("/api/v1/events?zone=A&zone=B").status_code == 401
    one = client.get("/api/v1/events?limit=5&zone=A", headers=tokens["viewer"])
    assert one.status_code == 200
    # a parameter the route does not read stays ignored, repeated or not
    assert client.get("/api/v1/events?x=1&x=2", headers=tokens["viewer"]).status_code == 200
    ngsi = client.get(
        "/ngsi-ld/v1/entities?type=ParkingSpot&limit=1&limit=2", headers=tokens["viewer"]
    )
    assert ngsi.status_code == 400 and ngsi.json()["type"].endswith("BadRequestData"), ngsi.text
    assert "limit" in ngsi.json()["detail"]
