"""Two or three managers acting at once, against the gateway's own API (a real uvicorn on a
real LiveGateway and journal) and the stand-alone API (a real gateway on mosquitto): what
each is told must be true, and a manager can say what they expect (``expect_closed_by``)."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import Any

import httpx
import paho.mqtt.client as mqtt
import pytest
from api_support import PASSWORD, GatewayHarness, ServerThread, journal_with_users, settings
from conftest import eventually, free_port
from gateway_support import running_gateway, site_variant

from api.app import create_app
from api.auth import UserStore
from api.deps import PAGE_USER_HEADER, SAFE_METHODS
from parking import topics
from parking.site import EXAMPLE_SITE, load_site

pytestmark = pytest.mark.timeout(90)

MANAGERS = ("alice", "bob", "carol")


def add_managers(db: Any) -> None:
    store = UserStore(str(db))
    for name in MANAGERS:
        store.add(name, "manager", PASSWORD)


def login(url: str, name: str) -> httpx.Client:
    c = httpx.Client(base_url=url, timeout=20)
    r = c.post("/api/v1/auth/login", json={"name": name, "password": PASSWORD})
    assert r.status_code == 200, r.text
    return c


def together(*calls: Callable[[], httpx.Response]) -> list[httpx.Response]:
    out: list[Any] = [None] * len(calls)

    def run(i: int) -> None:
        out[i] = calls[i]()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(calls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return out


@pytest.fixture(scope="module")
def own_api(tmp_path_factory):
    """The gateway's own API: (url, harness)."""
    h = GatewayHarness(load_site(EXAMPLE_SITE), tmp_path_factory.mktemp("own") / "j.sqlite")
    add_managers(h.db_path)
    h.fill()
    app = create_app(h.gateway, settings(), db_path=str(h.db_path))
    with ServerThread(app, free_port()) as srv:
        yield srv.url, h
    h.close()


def at_once_under_the_lock(h: GatewayHarness, *calls: Callable[[], httpx.Response]) -> list:
    """``calls`` started together while the gateway's lock is held, so that each reaches it
    before any is applied (what two managers clicking at once do)."""
    results: list = []
    with h.gateway.lock:
        t = threading.Thread(target=lambda: results.extend(together(*calls)))
        t.start()
        time.sleep(0.5)
    t.join(30)
    return results


def test_simultaneous_closes_on_the_gateways_own_api_are_told_the_truth(own_api):
    """The API read the space in one call and closed it in another: both closes without a
    reason were answered 202, and the close that replaced the other's was told "was free,
    closed_by null". Judged under the gateway's lock with the action now."""
    url, h = own_api
    alice, bob = login(url, "alice"), login(url, "bob")
    ra, rb = at_once_under_the_lock(
        h,
        lambda: alice.post("/api/v1/spaces/A-050/close"),
        lambda: bob.post("/api/v1/spaces/A-050/close"),
    )
    assert sorted([ra.status_code, rb.status_code]) == [202, 409], (ra.text, rb.text)
    (no,) = [r for r in (ra, rb) if r.status_code == 409]
    assert "already closed" in no.json()["detail"]

    ra, rb = at_once_under_the_lock(
        h,
        lambda: alice.post("/api/v1/spaces/A-051/close", json={"reason": "repainting"}),
        lambda: bob.post("/api/v1/spaces/A-051/close", json={"reason": "detector broken"}),
    )
    assert (ra.status_code, rb.status_code) == (202, 202), (ra.text, rb.text)
    first, second = sorted((ra.json(), rb.json()), key=lambda b: b["was"] == "closed")
    assert (first["was"], first["closed_by"]) == ("free", None)
    assert (second["was"], second["closed_by"]) == ("closed", first["by"])
    assert second["closed_reason"] == first["reason"]


def test_a_close_over_another_managers_closure_needs_their_name(own_api):
    """bob closed B-030 "detector broken"; alice, from an older page, closed it "repainting":
    bob's reason vanished and carol, opening it, was told only alice's. A page now sends the
    closer it shows, and a close over another's is refused with theirs until confirmed."""
    url, _ = own_api
    alice, bob, carol = (login(url, n) for n in MANAGERS)
    r = bob.post("/api/v1/spaces/B-030/close", json={"reason": "detector broken"})
    assert r.status_code == 202, r.text
    r = alice.post(
        "/api/v1/spaces/B-030/close", json={"reason": "repainting", "expect_closed_by": None}
    )
    assert r.status_code == 409, r.text
    body = r.json()
    assert (body["closed"], body["closed_by"], body["closed_reason"]) == (
        True,
        "bob",
        "detector broken",
    )
    assert body["closed_at"] > 0
    assert alice.get("/api/v1/spaces/B-030").json()["state"] == "closed"
    ev = alice.get("/api/v1/events", params={"space": "B-030", "limit": 5}).json()["items"]
    assert [e["agent"] for e in ev if e["source"] == "manager"] == ["bob"]  # nothing changed
    # confirmed: "close anyway with your reason", naming bob
    r = alice.post(
        "/api/v1/spaces/B-030/close", json={"reason": "repainting", "expect_closed_by": "bob"}
    )
    assert (r.status_code, r.json()["closed_by"]) == (202, "bob"), r.text
    # an open with a stale page: refused, naming alice
    r = carol.post("/api/v1/spaces/B-030/open", json={"expect_closed_by": "bob"})
    assert (r.status_code, r.json()["closed_by"]) == (409, "alice"), r.text
    r = carol.post("/api/v1/spaces/B-030/open", json={"expect_closed_by": "alice"})
    assert r.status_code == 202, r.text
    out = r.json()
    assert (out["closed_by"], out["closed_reason"]) == ("alice", "repainting")
    assert [(c["closed_by"], c["closed_reason"]) for c in out["earlier_closes"]] == [
        ("bob", "detector broken")
    ]
    # "I believe it is closed by carol" of an open space: refused as not closed
    r = carol.post("/api/v1/spaces/B-030/close", json={"expect_closed_by": "carol"})
    assert (r.status_code, r.json()["closed"]) == (409, False), r.text
    # no precondition (scripts): as before
    assert bob.post("/api/v1/spaces/B-030/close").status_code == 202


def test_zone_answers_say_whose_closure_they_ended_or_re_reasoned(own_api):
    url, _ = own_api
    alice, bob, carol = (login(url, n) for n in MANAGERS)
    r = bob.post("/api/v1/zones/C/close", json={"reason": "wet paint"})
    assert (r.status_code, r.json()["closure_was"]) == (202, None), r.text
    r = alice.post("/api/v1/zones/C/close", json={"reason": "market", "expect_closed_by": None})
    assert (r.status_code, r.json()["closed_by"]) == (409, "bob"), r.text
    r = alice.post("/api/v1/zones/C/close", json={"reason": "market", "expect_closed_by": "bob"})
    assert r.status_code == 202, r.text
    assert r.json()["closure_was"]["closed_by"] == "bob"
    assert r.json()["closure_was"]["closed_reason"] == "wet paint"
    r = carol.post("/api/v1/zones/C/open")
    assert r.status_code == 202, r.text
    assert r.json()["closure_was"]["closed_by"] == "alice"
    assert r.json()["closure_was"]["closed_reason"] == "market"
    r = carol.post("/api/v1/zones/C/open")
    assert r.status_code == 409 and "not closed" in r.json()["detail"], r.text


def test_a_page_of_another_user_in_the_same_browser_is_refused(own_api):
    """alice's tab acted under bob's login once bob logged in in another tab of the same
    browser (one cookie jar): the journal named bob for alice's action."""
    url, h = own_api
    browser = login(url, "alice")
    r = browser.post("/api/v1/auth/login", json={"name": "bob", "password": PASSWORD})
    assert r.status_code == 200
    r = browser.post(
        "/api/v1/spaces/B-031/close",
        json={"reason": "alice's"},
        headers={"X-Parkguide-User": "alice"},
    )
    assert r.status_code == 409, r.text
    assert "now logged in as bob" in r.json()["detail"]
    assert browser.get("/api/v1/spaces/B-031").json()["state"] != "closed"
    r = browser.post(
        "/api/v1/spaces/B-031/close", json={"reason": "bob's"}, headers={"X-Parkguide-User": "bob"}
    )
    assert r.status_code == 202, r.text
    assert browser.post("/api/v1/spaces/B-031/open").status_code == 202  # no header: no check


def test_standalone_zone_action_is_confirmed_only_by_its_managers_events(
    mosquitto, tmp_path, caplog
):
    """alice and bob closed zone B at once (alice without a reason: the gateway finds nothing
    left to do) through the stand-alone API: bob's events were
    taken as alice's confirmation (202 "72 spaces closed" for the close the gateway refused),
    or, when they came later, the 504 blamed the broker's ACL. Now: 409 naming bob."""
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig

    site = load_site(EXAMPLE_SITE)
    db = journal_with_users(tmp_path)
    add_managers(db)
    with running_gateway(site_variant(tmp_path), mosquitto.url, db) as gw:
        view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
        view.start()
        app = create_app(view, settings(), db_path=str(db))
        try:
            with ServerThread(app, free_port()) as srv:
                alice = login(srv.url, "alice")
                assert eventually(lambda: view.control_unavailable() is None)
                bob_close = json.dumps(
                    {"action": "close", "by": "bob", "reason": "snow", "ts": time.time()}
                )

                pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
                pub.connect("127.0.0.1", mosquitto.port)
                pub.loop_start()
                results: list = []
                with gw.gateway.lock:  # both reach the gateway before either is applied
                    pub.publish(
                        topics.zone_control(site.id, "B"), bob_close, qos=1
                    ).wait_for_publish()
                    time.sleep(0.3)
                    t = threading.Thread(
                        target=lambda: results.append(alice.post("/api/v1/zones/B/close"))
                    )
                    with caplog.at_level(logging.INFO, logger="api.routes.operations"):
                        t.start()
                        time.sleep(0.8)
                with caplog.at_level(logging.INFO, logger="api.routes.operations"):
                    t.join(30)
                pub.loop_stop()
                pub.disconnect()
                (r,) = results
                assert r.status_code == 409, r.text
                assert "bob closed zone B (snow)" in r.json()["detail"], r.text
                assert "nothing changed" in r.json()["detail"]
                errors = [x for x in caplog.records if x.levelno >= logging.ERROR]
                assert not errors, [x.getMessage() for x in errors]
                # the precondition there too, judged on the journal read at the request
                r = alice.post("/api/v1/zones/B/open", json={"expect_closed_by": "alice"})
                assert (r.status_code, r.json()["closed_by"]) == (409, "bob"), r.text
                r = alice.post("/api/v1/zones/B/open", json={"expect_closed_by": "bob"})
                assert r.status_code == 202, r.text
                assert r.json()["closure_was"]["closed_by"] == "bob"
        finally:
            view.stop()


def test_simultaneous_actions_through_one_standalone_api_are_told_the_truth(mosquitto, tmp_path):
    """alice and bob closed one space (or zone) at once through one stand-alone API: both
    requests read the journal before either was sent, and both were told 202 "was free" (or
    ``closure_was`` null) while the gateway applied one. Now the second is judged on the state
    the first left."""
    from api.mqttview import MqttLiveView
    from parking.broker import BrokerConfig

    site = load_site(EXAMPLE_SITE)
    db = journal_with_users(tmp_path)
    add_managers(db)
    with running_gateway(site_variant(tmp_path), mosquitto.url, db):
        view = MqttLiveView(site, BrokerConfig.from_url(mosquitto.url), str(db))
        view.start()
        app = create_app(view, settings(), db_path=str(db))
        try:
            with ServerThread(app, free_port()) as srv:
                alice, bob = login(srv.url, "alice"), login(srv.url, "bob")
                assert eventually(lambda: view.control_unavailable() is None)

                def at_once(*calls: Callable[[], httpx.Response]) -> list:
                    """Both requests wait to read the journal, so that each reaches it
                    before either is sent (what two managers clicking at once do)."""
                    results: list = []
                    with view._journal_lock:
                        t = threading.Thread(target=lambda: results.extend(together(*calls)))
                        t.start()
                        time.sleep(0.5)
                    t.join(30)
                    return results

                ra, rb = at_once(
                    lambda: alice.post("/api/v1/spaces/A-060/close"),
                    lambda: bob.post("/api/v1/spaces/A-060/close"),
                )
                assert sorted([ra.status_code, rb.status_code]) == [202, 409], (ra.text, rb.text)
                (no,) = [r for r in (ra, rb) if r.status_code == 409]
                assert "already closed" in no.json()["detail"]

                ra, rb = at_once(
                    lambda: alice.post("/api/v1/spaces/A-061/close", json={"reason": "paint"}),
                    lambda: bob.post("/api/v1/spaces/A-061/close", json={"reason": "broken"}),
                )
                assert (ra.status_code, rb.status_code) == (202, 202), (ra.text, rb.text)
                first, second = sorted((ra.json(), rb.json()), key=lambda b: b["was"] == "closed")
                assert first["was"] != "closed" and first["closed_by"] is None, first
                assert (second["was"], second["closed_by"]) == ("closed", first["by"])

                ra, rb = at_once(
                    lambda: alice.post("/api/v1/zones/D/close", json={"reason": "snow"}),
                    lambda: bob.post("/api/v1/zones/D/close", json={"reason": "event"}),
                )
                assert (ra.status_code, rb.status_code) == (202, 202), (ra.text, rb.text)
                was = sorted((r.json()["closure_was"] or {}).get("closed_by", "") for r in (ra, rb))
                assert was[0] == "" and was[1] in ("alice", "bob"), (ra.text, rb.text)
        finally:
            view.stop()


def test_every_409_of_a_close_or_open_validates_against_the_documented_one(own_api):
    """/openapi.json documented the close/open 409 as the precondition's (``closed``,
    ``closed_by``... required) while most 409s answer only ``detail``, and did not name the
    ``X-Parkguide-User`` header."""
    import jsonschema

    url, _ = own_api
    alice, bob = login(url, "alice"), login(url, "bob")
    doc = httpx.get(f"{url}/openapi.json").json()
    for path in (
        "/api/v1/spaces/{space}/close",
        "/api/v1/spaces/{space}/open",
        "/api/v1/zones/{zone}/close",
        "/api/v1/zones/{zone}/open",
    ):
        op = doc["paths"][path]["post"]
        (header,) = [p for p in op["parameters"] if p["in"] == "header"]
        assert (header["name"], header["required"]) == ("X-Parkguide-User", False)

    def documented(path: str) -> dict:
        return doc["paths"][path]["post"]["responses"]["409"]["content"]["application/json"][
            "schema"
        ]

    schema = documented("/api/v1/spaces/{space}/open")
    assert schema["anyOf"] == documented("/api/v1/zones/{zone}/close")["anyOf"]
    schema = {**schema, "components": doc["components"]}

    assert bob.post("/api/v1/spaces/B-040/close", json={"reason": "cones"}).status_code == 202
    answers = {
        "no-op": alice.post("/api/v1/spaces/B-041/open"),
        "precondition": alice.post("/api/v1/spaces/B-040/open", json={"expect_closed_by": "x"}),
        "zone no-op": alice.post("/api/v1/zones/E/open"),
        "another user": alice.post(
            "/api/v1/spaces/B-040/open", headers={"X-Parkguide-User": "carol"}
        ),
    }
    for what, r in answers.items():
        assert r.status_code == 409, (what, r.text)
        jsonschema.Draft202012Validator(schema).validate(r.json())
    assert answers["precondition"].json()["closed_by"] == "bob"
    assert bob.post("/api/v1/spaces/B-040/open").status_code == 202


def test_every_state_changing_route_documents_the_409_of_another_users_page(own_api):
    """Every route that changes something checks ``X-Parkguide-User`` (409 when the session
    is another user's) and must name the header and that 409 in /openapi.json: the
    acknowledgement documented only its "already acknowledged" 409, whose required fields a
    ``detail``-only answer lacks, and did not name the header. Every POST, PUT, PATCH and
    DELETE of the document is sent by a manager whose page shows another user."""
    import jsonschema

    url, _ = own_api
    doc = httpx.get(f"{url}/openapi.json").json()
    alice = login(url, "alice")
    checked = []
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            if method.upper() in SAFE_METHODS:
                continue
            names = {p["name"] for p in op.get("parameters", []) if p["in"] == "header"}
            concrete = re.sub(r"\{[^}]+\}", "x", path)
            r = alice.request(method, concrete, headers={PAGE_USER_HEADER: "carol"})
            if r.status_code != 409:
                # login and logout take no session to check: neither names the header
                assert PAGE_USER_HEADER not in names, (method, path, r.status_code, r.text)
                if alice.get("/api/v1/auth/me").json()["user"] is None:  # that was the logout
                    alice = login(url, "alice")
                continue
            checked.append(path)
            assert "not carol" in r.json()["detail"], (path, r.text)
            assert PAGE_USER_HEADER in names, (method, path)
            documented = op["responses"]["409"]
            assert PAGE_USER_HEADER in documented["description"], (method, path)
            schema = documented["content"]["application/json"]["schema"]
            jsonschema.Draft202012Validator({**schema, "components": doc["components"]}).validate(
                r.json()
            )
    assert "/api/v1/alerts/{alert_id}/acknowledge" in checked
    assert "/api/v1/zones/{zone}/close" in checked
