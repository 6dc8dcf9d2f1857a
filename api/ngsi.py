"""FIWARE Smart Data Models in NGSI-LD form, read-only, for city platforms.

``ParkingSpot`` per space, ``ParkingGroup`` per zone, ``OffStreetParking``
for the site, under ``/ngsi-ld/v1/entities`` (the NGSI-LD API's query and
retrieve operations, ETSI GS CIM 009). Spots need a login like the map; groups
and the site are counts, public like the zone counts. Geometry is in site
metres, not WGS84, so no ``location`` is given. Counts the signs would show as
``--`` are left out (NGSI-LD has no null: absence says unknown).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Query, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from starlette.exceptions import HTTPException

from api.auth import User
from api.deps import Ctx, guarded, logged_in, public_or_login
from gateway.displays import blind, zone_offered
from gateway.readside import LiveView
from parking.payloads import ZoneCounts

SDM_CONTEXT = (
    "https://raw.githubusercontent.com/smart-data-models/dataModel.Parking/master/context.jsonld"
)
CONTEXT = [SDM_CONTEXT, "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context.jsonld"]
# for application/json: the core context is always implied, so the link names only the SDM one
CONTEXT_LINK = (
    f'<{SDM_CONTEXT}>; rel="http://www.w3.org/ns/json-ld#context"; type="application/ld+json"'
)
LD_JSON = "application/ld+json"
JSON = "application/json"
PROBLEM_JSON = "application/problem+json"
TYPES = ("ParkingSpot", "ParkingGroup", "OffStreetParking")
# the SDM context does not map the type names, so they expand by the core context's @vocab
DEFAULT_VOCAB = "https://uri.etsi.org/ngsi-ld/default-context/"
QUERY_PARAMS = frozenset({"type", "limit", "offset", "count"})
ERRORS = "https://uri.etsi.org/ngsi-ld/errors/"


def _problem(status: int, kind: str | None, title: str, detail: str) -> JSONResponse:
    """An RFC 7807 ProblemDetails body, typed with the NGSI-LD error URIs where one fits."""
    body = {"type": ERRORS + kind if kind else "about:blank", "title": title, "detail": detail}
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON)


class BadRequestData(Exception):
    """A query parameter the NGSI-LD API refuses (400 BadRequestData)."""


def bad_request(detail: str) -> NoReturn:
    raise BadRequestData(detail)


_TITLES = {401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 406: "Not Acceptable"}


class NgsiRoute(APIRoute):
    """Answers errors as NGSI-LD ProblemDetails; the REST API keeps its own error shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            try:
                return await handler(request)
            except BadRequestData as exc:
                return _problem(400, "BadRequestData", "Bad request data", str(exc))
            except RequestValidationError as exc:
                detail = "; ".join(str(e.get("msg", e)) for e in exc.errors())
                return _problem(400, "BadRequestData", "Bad request data", detail)
            except HTTPException as exc:
                kind = "ResourceNotFound" if exc.status_code == 404 else None
                title = _TITLES.get(exc.status_code, "Error")
                problem = _problem(exc.status_code, kind, title, str(exc.detail))
                problem.headers.update(exc.headers or {})
                return problem

        return route


def _problem_doc(description: str) -> dict[str, Any]:
    return {"content": {PROBLEM_JSON: {"schema": {}}}, "description": description}


router = APIRouter(
    prefix="/ngsi-ld/v1",
    tags=["ngsi-ld"],
    dependencies=guarded(public_or_login),
    route_class=NgsiRoute,
    responses={
        400: _problem_doc("BadRequestData: a bad or unsupported query parameter"),
        401: _problem_doc("login required (ParkingSpot, or not public)"),
        404: _problem_doc("ResourceNotFound: no such entity"),
        406: _problem_doc("the Accept header allows neither JSON-LD nor JSON"),
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
        spot: dict[str, Any] = {
            "id": spot_urn(site.id, st.space),
            "type": "ParkingSpot",
            "name": _prop(st.space),
            # a held space stays "free" (SDM has no reserved state); its group leaves it out
            "status": _prop(st.state, st.since),
            "category": _prop(["offStreet"]),  # the SDM enum has only onStreet/offStreet
            "refParkingSite": _rel(site_urn(site.id)),
            "refParkingGroup": _rel(zone_urn(site.id, st.zone)),
        }
        if s.kinds:
            spot["spaceKinds"] = _prop(sorted(s.kinds))  # extension: the site's space kinds
        out.append(spot)
    return out


def _zone_counts(view: LiveView) -> list[ZoneCounts]:
    """Every zone's counts; a zone not heard from yet has every space unknown (as /zones)."""
    counts = {c.zone: c for c in view.zone_counts()}
    site = view.site
    out = []
    for z in site.zones:
        c = counts.get(z.id)
        if c is None:
            total = len(site.zone_spaces(z.id))
            c = ZoneCounts(
                zone=z.id, free=0, occupied=0, unknown=total, closed=0, total=total, ts=0
            )
        out.append(c)
    return out


def parking_groups(view: LiveView) -> list[dict[str, Any]]:
    site = view.site
    fraction = site.display_settings.fallback_unknown_fraction
    full = site.display_settings.full_unknown_fraction
    out = []
    for z, c in zip(site.zones, _zone_counts(view), strict=True):
        ts = c.ts or None
        group: dict[str, Any] = {
            "id": zone_urn(site.id, z.id),
            "type": "ParkingGroup",
            "name": _prop(z.name.en),
            "alternateName": _prop(z.name.zh),
            "category": _prop(["offStreet"]),
            "refParkingSite": _rel(site_urn(site.id)),
            "totalSpotNumber": _prop(c.total),
            "unknownSpotNumber": _prop(c.unknown, ts),  # extension: why counts may be absent
            # extension: the closed spaces, in no SDM count (available, occupied: 0 when all are)
            "closedSpotNumber": _prop(c.closed, ts),
        }
        # what a sign over the zone shows (free, not held for a car sent there), or nothing
        offered = zone_offered(c.free, c.held, c.unknown, c.closed, c.total, fraction, full)
        if offered is not None:
            group["availableSpotNumber"] = _prop(offered, ts)
            group["occupiedSpotNumber"] = _prop(c.occupied, ts)
        out.append(group)
    return out


def off_street_parking(view: LiveView) -> dict[str, Any]:
    site = view.site
    zc = _zone_counts(view)
    total = len(site.spaces)
    occupied = sum(c.occupied for c in zc)
    closed = sum(c.closed for c in zc)
    unknown = sum(c.unknown for c in zc)
    # the groups' availableSpotNumber summed: what a sign over each zone shows; a zone
    # whose count is left out (blind) adds nothing, and the site is then not known full
    fraction = site.display_settings.fallback_unknown_fraction
    full = site.display_settings.full_unknown_fraction
    offered = [
        zone_offered(c.free, c.held, c.unknown, c.closed, c.total, fraction, full) for c in zc
    ]
    available = sum(n for n in offered if n is not None)
    some_blind = any(n is None for n in offered)
    ts = max((c.ts for c in zc), default=0) or None
    lot: dict[str, Any] = {
        "id": site_urn(site.id),
        "type": "OffStreetParking",
        "name": _prop(site.name.en),
        "alternateName": _prop(site.name.zh),
        "category": _prop(["forResidents", "forVisitors"]),
        "totalSpotNumber": _prop(total),
        "unknownSpotNumber": _prop(unknown, ts),  # extension: why counts may be absent
        "closedSpotNumber": _prop(closed, ts),  # extension, as the groups'
    }
    usable = total - closed
    if usable <= 0:
        lot["status"] = _prop(["closed"], ts)
    elif not blind(unknown, usable, fraction):
        known = usable - unknown
        lot["availableSpotNumber"] = _prop(available, ts)
        lot["occupancy"] = _prop(round(occupied / known, 4) if known > 0 else 0.0, ts)
        if available or not some_blind:  # full only if no zone is left unseen
            lot["status"] = _prop(["spacesAvailable" if available else "full"], ts)
    # blind: no counts and no status (the SDM status enum has no "unknown")
    return lot


def _media_type(accept: str | None) -> str:
    """The answer's media type from Accept: JSON-LD, unless JSON is preferred.

    A missing Accept, ``*/*`` and ``application/*`` get JSON-LD (what this API has always
    served; the spec's default would be plain JSON); raises 406 when neither is allowed.
    """
    if not accept or not accept.strip():
        return LD_JSON
    best: tuple[float, int] | None = None
    chosen = ""
    for item in accept.split(","):
        media, *params = (p.strip() for p in item.split(";"))
        q = 1.0
        for p in params:
            name, _, value = p.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = media.lower()
        if q <= 0 or media not in (LD_JSON, JSON, "application/*", "*/*"):
            continue
        offer = JSON if media == JSON else LD_JSON
        rank = (q, 1 if media in (LD_JSON, JSON) else 0)  # an exact type beats a wildcard
        if best is None or rank > best:
            best, chosen = rank, offer
    if not chosen:
        raise HTTPException(406, f"Accept allows neither {LD_JSON} nor {JSON}: {accept[:200]}")
    return chosen


def _answer(
    entities: list[dict[str, Any]] | dict[str, Any],
    media: str,
    links: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """JSON-LD carries @context in each entity; plain JSON names it in a Link header."""
    if media == LD_JSON:
        body: Any = (
            {**entities, "@context": CONTEXT}
            if isinstance(entities, dict)
            else [{**e, "@context": CONTEXT} for e in entities]
        )
    else:
        body, links = entities, (CONTEXT_LINK, *links)
    out = {**(headers or {})}
    if links:
        out["Link"] = ", ".join(links)
    return JSONResponse(body, media_type=media, headers=out)


def _int(name: str, raw: str | None, default: int, lo: int, hi: int) -> int:
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        bad_request(f"{name} must be a whole number, not {raw[:40]!r}")
    if not lo <= value <= hi:
        bad_request(f"{name} must be between {lo} and {hi}")
    return value


def _unsupported(request: Request, allowed: frozenset[str]) -> None:
    """Refuse what is not implemented rather than ignore it (q, attrs, options, geo...)."""
    extra = sorted(set(request.query_params) - allowed)
    if extra:
        bad_request(f"not supported here: {', '.join(name[:40] for name in extra[:10])}")


def _types(raw: str | None) -> set[str] | None:
    """The requested types (comma-separated, short or expanded by the default vocabulary)."""
    if raw is None:
        return None
    names = set()
    for name in (t.strip() for t in raw.split(",")):
        short = name.removeprefix(DEFAULT_VOCAB)
        if short not in TYPES:
            bad_request(f"type must be one of {', '.join(TYPES)}, not {name[:80]!r}")
        names.add(short)
    return names


_ENTITIES_DOC = {
    200: {
        "content": {LD_JSON: {"schema": {}}, JSON: {"schema": {}}},
        "description": "NGSI-LD entities",
    }
}


@router.get("/entities", responses=_ENTITIES_DOC)
def query_entities(
    request: Request,
    ctx: Ctx,
    user: Annotated[User | None, Depends(public_or_login)],
    type: Annotated[str | None, Query(description=f"{', '.join(TYPES)}; comma-separated")] = None,
    limit: Annotated[str | None, Query(description="1-1000 (default 100)")] = None,
    offset: Annotated[str | None, Query(description=">= 0 (default 0)")] = None,
    count: Annotated[
        str | None, Query(description="true: the total in NGSI-LD-Results-Count")
    ] = None,
) -> JSONResponse:
    """Query entities by type (NGSI-LD ``GET /entities?type=``); ParkingSpot needs a login."""
    # parameters are checked here, after the access check, so a spot query without login is 401
    named = {t.strip().removeprefix(DEFAULT_VOCAB) for t in type.split(",")} if type else None
    if named is None or not named <= {"ParkingGroup", "OffStreetParking"}:
        logged_in(user)  # spots (or anything not plainly public) need a login
    kinds = _types(type)
    _unsupported(request, QUERY_PARAMS)
    media = _media_type(request.headers.get("accept"))
    lim = _int("limit", limit, 100, 1, 1000)
    off = _int("offset", offset, 0, 0, 10_000_000)
    if count not in (None, "true", "false"):
        bad_request("count must be true or false")
    view = ctx.view
    entities: list[dict[str, Any]] = []
    if kinds is None or "OffStreetParking" in kinds:
        entities.append(off_street_parking(view))
    if kinds is None or "ParkingGroup" in kinds:
        entities.extend(parking_groups(view))
    if kinds is None or "ParkingSpot" in kinds:
        entities.extend(parking_spots(view))
    links = []
    if off + lim < len(entities):  # more remain: say where, as the spec's pagination does
        params = {**request.query_params, "offset": str(off + lim), "limit": str(lim)}
        links.append(f'<{request.url.path}?{urlencode(params)}>; rel="next"')
    headers = {"NGSI-LD-Results-Count": str(len(entities))} if count == "true" else None
    return _answer(entities[off : off + lim], media, tuple(links), headers)


@router.get("/entities/{entity_id}", responses=_ENTITIES_DOC)
def retrieve_entity(
    request: Request,
    entity_id: str,
    ctx: Ctx,
    user: Annotated[User | None, Depends(public_or_login)],
) -> JSONResponse:
    """Retrieve one entity by its URN."""
    view = ctx.view
    sid = view.site.id
    if entity_id.startswith(f"urn:ngsi-ld:ParkingSpot:{sid}:"):
        logged_in(user)
    _unsupported(request, frozenset())
    media = _media_type(request.headers.get("accept"))
    if entity_id == site_urn(sid):
        return _answer(off_street_parking(view), media)
    if entity_id.startswith(f"urn:ngsi-ld:ParkingGroup:{sid}:"):
        for g in parking_groups(view):
            if g["id"] == entity_id:
                return _answer(g, media)
    if entity_id.startswith(f"urn:ngsi-ld:ParkingSpot:{sid}:"):
        space = entity_id.rsplit(":", 1)[1]
        if space in view.site.space_index:
            for e in parking_spots(view):
                if e["id"] == entity_id:
                    return _answer(e, media)
    raise HTTPException(404, f"no entity {entity_id[:200]!r}")
