# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""NGSI-LD output through the real app: unknown counts, consistent counts, content
negotiation, pagination, ProblemDetails errors and the Smart Data Models enums."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest
from api_support import GatewayHarness, client, harness, tokens, users  # noqa: F401

from parking import topics

ENTITIES = "/ngsi-ld/v1/entities"
SITE = "urn:ngsi-ld:OffStreetParking:xinyuan"
CORE = "https://uri.etsi.org/ngsi-ld/default-context/"
SITE_STATUS = {  # the SDM OffStreetParking status enum
    "almostFull", "closed", "closedAbnormal", "full", "fullAtEntrance", "open",
    "openingTimesInForce", "spacesAvailable",
}  # fmt: skip


def set_unknown(harness: GatewayHarness, zones: set[str] | None = None) -> None:
    """Every source reports the spaces of ``zones`` (all, when None) unknown, the rest free."""
    site = harness.site
    for source in [b.id for b in site.buses] + [c.id for c in site.cameras]:
        spaces = site.spaces_of_source(source)
        states = {
            s: "unknown" if zones is None or site.space(s).zone in zones else "free" for s in spaces
        }
        harness.report(source, states, kind="snapshot")


def entities(client, type_: str, **headers: str) -> list[dict]:
    r = client.get(ENTITIES, params={"type": type_, "limit": "1000"}, headers=headers)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_blind_site_says_no_counts_and_no_status(client, harness):
    set_unknown(harness)
    (lot,) = entities(client, "OffStreetParking")
    for key in ("availableSpotNumber", "occupancy", "status"):
        assert key not in lot, key  # absence says unknown: not "0 free" and "empty" at once
    assert lot["unknownSpotNumber"]["value"] == 342
    for group in entities(client, "ParkingGroup"):
        assert "availableSpotNumber" not in group and "occupiedSpotNumber" not in group
        assert group["unknownSpotNumber"]["value"] == group["totalSpotNumber"]["value"]


def test_a_blind_zone_is_left_out_as_its_sign_shows_it(client, harness):
    set_unknown(harness, {"A"})
    zones = {z["zone"]: z for z in client.get("/api/v1/zones").json()}
    assert zones["A"]["offered"] is None
    for group in entities(client, "ParkingGroup"):
        zone = group["id"].rsplit(":", 1)[1]
        if zones[zone]["offered"] is None:
            assert "availableSpotNumber" not in group, zone
        else:
            assert group["availableSpotNumber"]["value"] == zones[zone]["offered"], zone
    (lot,) = entities(client, "OffStreetParking")
    assert lot["status"]["value"] == ["spacesAvailable"]
    assert set(lot["status"]["value"]) <= SITE_STATUS
    groups = entities(client, "ParkingGroup")
    assert lot["availableSpotNumber"]["value"] == sum(
        g["availableSpotNumber"]["value"] for g in groups if "availableSpotNumber" in g
    )  # zone A's free spaces the signs do not count are not in the site's either


def test_a_site_with_a_blind_zone_is_not_called_full(client, harness):
    """Every seen space taken but zone A unseen: the site is not known to be full."""
    site = harness.site
    for source in [b.id for b in site.buses] + [c.id for c in site.cameras]:
        spaces = site.spaces_of_source(source)
        states = {s: "unknown" if site.space(s).zone == "A" else "occupied" for s in spaces}
        harness.report(source, states, kind="snapshot")
    (lot,) = entities(client, "OffStreetParking")
    assert lot["availableSpotNumber"]["value"] == 0 and "status" not in lot


def test_site_counts_are_what_the_groups_say_and_a_held_spot_stays_free(client, harness, tokens):
    harness.fill()
    harness.gateway.handle(
        topics.arrival(harness.site.id, "east"), b'{"class": "visitor", "plate": "HU-N0001"}'
    )
    zones = client.get("/api/v1/zones").json()
    assert sum(z["held"] for z in zones) >= 1  # a space is held for the car sent there
    groups = entities(client, "ParkingGroup")
    (lot,) = entities(client, "OffStreetParking")
    assert lot["availableSpotNumber"]["value"] == sum(
        g["availableSpotNumber"]["value"] for g in groups
    )
    held = next(
        s["space"]
        for s in client.get("/api/v1/spaces", headers=tokens["viewer"]).json()
        if s["held"]
    )
    spot = client.get(
        f"{ENTITIES}/urn:ngsi-ld:ParkingSpot:xinyuan:{held}", headers=tokens["viewer"]
    )
    assert spot.json()["status"]["value"] == "free"  # SDM has no "reserved"


def test_accept_chooses_json_ld_or_json_with_a_context_link(client):
    ld = client.get(f"{ENTITIES}/{SITE}", headers={"Accept": "application/ld+json"})
    assert ld.headers["content-type"] == "application/ld+json" and "@context" in ld.json()
    plain = client.get(f"{ENTITIES}/{SITE}", headers={"Accept": "application/json"})
    assert plain.status_code == 200 and plain.headers["content-type"] == "application/json"
    assert "@context" not in plain.json()
    assert 'rel="http://www.w3.org/ns/json-ld#context"' in plain.headers["link"]
    assert 'type="application/ld+json"' in plain.headers["link"]
    for accept in ("application/xml", "text/html", "application/ld+json;q=0"):
        r = client.get(f"{ENTITIES}/{SITE}", headers={"Accept": accept})
        assert r.status_code == 406, accept
        assert r.headers["content-type"] == "application/problem+json"


def test_a_query_says_how_many_and_where_the_next_page_is(client, tokens):
    h = tokens["viewer"]
    r = client.get(ENTITIES, params={"type": "ParkingSpot", "count": "true"}, headers=h)
    assert r.status_code == 200 and len(r.json()) == 100
    assert r.headers["ngsi-ld-results-count"] == "342"
    url, rel = r.headers["link"].split(";", 1)
    assert rel.strip() == 'rel="next"'
    nxt = urlsplit(url.strip("<> "))
    assert nxt.path == ENTITIES
    params = {k: v[0] for k, v in parse_qs(nxt.query).items()}
    assert params == {"type": "ParkingSpot", "count": "true", "offset": "100", "limit": "100"}
    page = client.get(ENTITIES, params=params, headers=h).json()
    assert page[0]["id"] != r.json()[0]["id"] and len(page) == 100
    last = client.get(ENTITIES, params={"type": "ParkingSpot", "offset": "300"}, headers=h)
    assert len(last.json()) == 42 and "link" not in last.headers


@pytest.mark.parametrize("param", ["q", "attrs", "options", "georel", "idPattern", "id"])
def test_parameters_not_implemented_are_refused(client, param):
    r = client.get(ENTITIES, params={"type": "ParkingGroup", param: "x"})
    assert r.status_code == 400 and param in r.json()["detail"]
    assert r.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"


def test_errors_are_problem_details(client):
    missing = client.get(f"{ENTITIES}/urn:x")
    assert missing.status_code == 404
    assert missing.headers["content-type"] == "application/problem+json"
    assert missing.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/ResourceNotFound"
    assert missing.json()["title"] and "urn:x" in missing.json()["detail"]
    bad = client.get(ENTITIES, params={"type": "ParkingGroup", "limit": "-5"})
    assert bad.status_code == 400 and bad.headers["content-type"] == "application/problem+json"
    assert bad.json()["type"] == "https://uri.etsi.org/ngsi-ld/errors/BadRequestData"
    login = client.get(ENTITIES, params={"type": "ParkingSpot"})
    assert login.status_code == 401 and login.headers["content-type"] == "application/problem+json"
    rest = client.get("/api/v1/spaces/NOPE")  # the REST API keeps its own error shape
    assert rest.headers["content-type"] == "application/json"


def test_an_expanded_type_is_the_short_name(client):
    # the SDM context does not map the type names: they expand by the core @vocab
    expanded = client.get(ENTITIES, params={"type": CORE + "ParkingGroup"})
    assert expanded.status_code == 200
    assert {g["type"] for g in expanded.json()} == {"ParkingGroup"}


def test_values_stay_within_the_smart_data_models_enums(client, tokens):
    spots = entities(client, "ParkingSpot", **tokens["viewer"])
    assert all(s["category"]["value"] == ["offStreet"] for s in spots)
    assert any("accessible" in s.get("spaceKinds", {}).get("value", []) for s in spots)
    (lot,) = entities(client, "OffStreetParking")
    assert "refParkingGroup" not in lot  # each group names the site instead


def test_a_closed_zone_adds_up_and_its_spots_say_closed(client, harness, tokens):
    """Zone C closed: its group said 0 available, 0 occupied, 0 unknown of its total, the
    closed spaces in no count; ``closedSpotNumber`` has them. Its spots are ``closed``, a
    value of the SDM ParkingSpot status enum."""
    harness.fill()
    h = tokens["manager"]
    r = client.post("/api/v1/zones/C/close", json={"reason": "market"}, headers=h)
    assert r.status_code == 202, r.text
    try:
        group = next(g for g in entities(client, "ParkingGroup") if g["id"].endswith(":C"))
        total = group["totalSpotNumber"]["value"]
        assert total > 0 and group["closedSpotNumber"]["value"] == total
        assert "observedAt" in group["closedSpotNumber"]
        counts = ("availableSpotNumber", "occupiedSpotNumber", "unknownSpotNumber")
        assert [group[k]["value"] for k in counts] == [0, 0, 0]
        for g in entities(client, "ParkingGroup"):  # every group adds up (none is held)
            parts = (*counts, "closedSpotNumber")
            assert sum(g[k]["value"] for k in parts) == g["totalSpotNumber"]["value"], g["id"]
        (lot,) = entities(client, "OffStreetParking")
        assert lot["closedSpotNumber"]["value"] == total
        spots = entities(client, "ParkingSpot", **tokens["viewer"])
        in_c = [s for s in spots if s["refParkingGroup"]["object"].endswith(":C")]
        assert len(in_c) == total and {s["status"]["value"] for s in in_c} == {"closed"}
        assert {s["status"]["value"] for s in spots} <= {"closed", "free", "occupied", "unknown"}
    finally:
        assert client.post("/api/v1/zones/C/open", headers=h).status_code == 202
