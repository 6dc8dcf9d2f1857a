"""FIWARE Smart Data Models in NGSI-LD form, read-only, for city platforms.

``ParkingSpot`` per space, ``ParkingGroup`` per zone, ``OffStreetParking``
for the site, under ``/ngsi-ld/v1/entities`` (the NGSI-LD API's query and
retrieve operations). Spots need a login like the map; groups and the site
are counts, public like the zone counts. Geometry is in site metres, not
WGS84, so no ``location`` is given.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query
from fastapi.responses import JSONResponse

from api.auth import User
from api.deps import Ctx, public_or_login, require_login
from api.models import ErrorOut
from api.routes import invalid, not_found
from gateway.readside import LiveView

CONTEXT = [
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld",
    "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld",
]
MEDIA_TYPE = "application/ld+json"
TYPES = ("ParkingSpot", "ParkingGroup", "OffStreetParking")

router = APIRouter(
    prefix="/ngsi-ld/v1",
    tags=["ngsi-ld"],
    dependencies=[Depends(public_or_login)],
    responses={
        401: {"model": ErrorOut, "description": "login required (ParkingSpot, or not public)"},
        404: {"model": ErrorOut, "description": "no such entity"},
    },
)


def _iso(ts: float | None) -> str | None:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z") if ts else None


def _prop(value: Any, observed: float | None = None) -> dict[str, Any]:
    p: dict[str, Any] = {"type": "Property", "value": value}
    if observed:
        p["observedAt"] = _iso(observed)
    return p


def _rel(obj: str) -> dict[str, Any]:
    return {"type": "Relationship", "object": obj}


def site_urn(site: str) -> str:
    return f"urn:ngsi-ld:OffStreetParking:{site}"


def zone_urn(site: str, zone: str) -> str:
    return f"urn:ngsi-ld:ParkingGroup:{site}:{zone}"


def spot_urn(site: str, space: str) -> str:
    return f"urn:ngsi-ld:ParkingSpot:{site}:{space}"


def parking_spots(view: LiveView) -> list[dict[str, Any]]:
    site = view.site
    out = []
    for st in view.spaces():
        s = site.space(st.space)
        out.append(
            {
                "id": spot_urn(site.id, st.space),
                "type": "ParkingSpot",
                "name": _prop(st.space),
                "status": _prop(st.state, st.since),
                "category": _prop(["offStreet", *sorted(s.kinds)]),
                "refParkingSite": _rel(site_urn(site.id)),
                "refParkingGroup": _rel(zone_urn(site.id, st.zone)),
            }
        )
    return out


def parking_groups(view: LiveView) -> list[dict[str, Any]]:
    site = view.site
    counts = {c.zone: c for c in view.zone_counts()}
    out = []
    for z in site.zones:
        c = counts.get(z.id)
        total = c.total if c else len(site.zone_spaces(z.id))
        out.append(
            {
                "id": zone_urn(site.id, z.id),
                "type": "ParkingGroup",
                "name": _prop(z.name.en),
                "alternateName": _prop(z.name.zh),
                "category": _prop(["offStreet"]),
                "refParkingSite": _rel(site_urn(site.id)),
                "totalSpotNumber": _prop(total),
                # free and not held for a car the gateway sent there: what a driver can get
                "availableSpotNumber": _prop(c.free - c.held if c else 0, c.ts if c else None),
                "occupiedSpotNumber": _prop(c.occupied if c else 0, c.ts if c else None),
            }
        )
    return out


def off_street_parking(view: LiveView) -> dict[str, Any]:
    site = view.site
    zc = view.zone_counts()
    total = len(site.spaces)
    free = sum(c.free for c in zc)
    occupied = sum(c.occupied for c in zc)
    closed = sum(c.closed for c in zc)
    unknown = total - free - occupied - closed
    usable = total - closed - unknown
    if usable <= 0:
        status = "unknown" if unknown else "closed"
    else:
        status = "spacesAvailable" if free else "full"
    ts = max((c.ts for c in zc), default=None)
    return {
        "id": site_urn(site.id),
        "type": "OffStreetParking",
        "name": _prop(site.name.en),
        "alternateName": _prop(site.name.zh),
        "category": _prop(["forResidents", "forVisitors"]),
        "totalSpotNumber": _prop(total),
        "availableSpotNumber": _prop(free, ts),
        "occupancy": _prop(round(occupied / usable, 4) if usable > 0 else 0.0, ts),
        "status": _prop([status], ts),
        "refParkingGroup": _rel(zone_urn(site.id, site.zones[0].id))
        if len(site.zones) == 1
        else {"type": "Relationship", "object": [zone_urn(site.id, z.id) for z in site.zones]},
    }


def _ld(entities: list[dict[str, Any]] | dict[str, Any]) -> JSONResponse:
    if isinstance(entities, dict):
        return JSONResponse({**entities, "@context": CONTEXT}, media_type=MEDIA_TYPE)
    return JSONResponse([{**e, "@context": CONTEXT} for e in entities], media_type=MEDIA_TYPE)


def _int(name: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        invalid(("query", name), f"{name} must be a whole number", raw)
    if not lo <= value <= hi:
        invalid(("query", name), f"{name} must be between {lo} and {hi}", raw)
    return value


_ENTITIES_DOC = {200: {"content": {MEDIA_TYPE: {"schema": {}}}, "description": "NGSI-LD entities"}}


@router.get("/entities", responses=_ENTITIES_DOC)
def query_entities(
    ctx: Ctx,
    user: Annotated[User | None, Depends(public_or_login)],
    type: Annotated[str | None, Query(description=f"one of {', '.join(TYPES)}")] = None,
    limit: Annotated[str | None, Query(description="1-1000 (default 100)")] = None,
    offset: Annotated[str | None, Query(description=">= 0 (default 0)")] = None,
) -> JSONResponse:
    """Query entities by type (NGSI-LD ``GET /entities?type=``); ParkingSpot needs a login."""
    # parameters are checked here, after the access check, so a spot query without login is 401
    if type not in ("ParkingGroup", "OffStreetParking"):
        require_login(user)  # spots (or anything not plainly public) need a login
    if type is not None and type not in TYPES:
        invalid(("query", "type"), f"type must be one of {', '.join(TYPES)}", type)
    lim = _int("limit", limit, 100, 1, 1000)
    off = _int("offset", offset, 0, 0, 10_000_000)
    view = ctx.view
    entities: list[dict[str, Any]] = []
    if type in (None, "OffStreetParking"):
        entities.append(off_street_parking(view))
    if type in (None, "ParkingGroup"):
        entities.extend(parking_groups(view))
    if type in (None, "ParkingSpot"):
        entities.extend(parking_spots(view))
    return _ld(entities[off : off + lim])


@router.get("/entities/{entity_id}", responses=_ENTITIES_DOC)
def retrieve_entity(
    entity_id: str, ctx: Ctx, user: Annotated[User | None, Depends(public_or_login)]
) -> JSONResponse:
    """Retrieve one entity by its URN."""
    view = ctx.view
    sid = view.site.id
    if entity_id == site_urn(sid):
        return _ld(off_street_parking(view))
    if entity_id.startswith(f"urn:ngsi-ld:ParkingGroup:{sid}:"):
        for g in parking_groups(view):
            if g["id"] == entity_id:
                return _ld(g)
    if entity_id.startswith(f"urn:ngsi-ld:ParkingSpot:{sid}:"):
        require_login(user)
        space = entity_id.rsplit(":", 1)[1]
        if space in view.site.space_index:
            for e in parking_spots(view):
                if e["id"] == entity_id:
                    return _ld(e)
    not_found(f"no entity {entity_id!r}")
