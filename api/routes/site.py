"""The site map geometry and the spaces' live states (login)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Ctx, guarded, require_login
from api.models import (
    EntranceOut,
    LaneNodeOut,
    LevelOut,
    PolicyOut,
    SignInfo,
    SiteOut,
    SpaceGeometry,
    SpaceOut,
    StateName,
    VehicleClassOut,
    ZoneInfo,
)
from api.routes import VIEWER_ERRORS, echo, invalid, not_found
from parking.site import Site, format_window

router = APIRouter(
    prefix="/api/v1", tags=["site"], dependencies=guarded(require_login), responses=VIEWER_ERRORS
)


def site_out(site: Site) -> SiteOut:
    bounds: dict[str, list[float]] = {}

    def grow(level: str, x: float, y: float) -> None:
        b = bounds.setdefault(level, [x, y, x, y])
        b[0], b[1], b[2], b[3] = min(b[0], x), min(b[1], y), max(b[2], x), max(b[3], y)

    for s in site.spaces:
        for x, y in s.polygon:
            grow(s.level, x, y)
    for n in site.lane_nodes:
        grow(n.level, *n.at)
    for d in site.displays:
        grow(d.level, d.at[0], d.at[1])
    return SiteOut(
        id=site.id,
        name=site.name,
        timezone=site.timezone,
        levels=[
            LevelOut(
                id=lv.id, name=lv.name, kind=lv.kind, bounds=tuple(bounds.get(lv.id, [0, 0, 1, 1]))
            )
            for lv in site.levels
        ],
        zones=[ZoneInfo(id=z.id, name=z.name, level=z.level) for z in site.zones],
        spaces=[
            SpaceGeometry(
                id=s.id,
                zone=s.zone,
                level=s.level,
                kinds=sorted(s.kinds),
                polygon=[(round(x, 3), round(y, 3)) for x, y in s.polygon],
            )
            for s in site.spaces
        ],
        lane_nodes=[LaneNodeOut(id=n.id, level=n.level, at=n.at) for n in site.lane_nodes],
        lane_edges=[(e.a, e.b) for e in site.lane_edges],
        entrances=[EntranceOut(id=e.id, name=e.name, node=e.node) for e in site.entrances],
        displays=[
            SignInfo(
                id=d.id, name=d.name, level=d.level, at=(d.at[0], d.at[1]), entrance=d.entrance
            )
            for d in site.displays
        ],
        vehicle_classes=[
            VehicleClassOut(
                id=v.id,
                name=v.name,
                kinds=list(v.kinds),
                prefer=list(v.prefer),
                avoid=list(v.avoid),
            )
            for v in site.vehicle_classes
        ],
        # which kinds a class may use when: why a sign line over a zone can read FULL for
        # one class while its zone card counts free bays (open to another class now)
        policies=[
            PolicyOut(
                id=p.id,
                kind=p.kind,
                classes=sorted(p.classes),
                windows=[format_window(w) for w in p.windows],
            )
            for p in site.policies
        ],
    )


@router.get("/site")
def site(ctx: Ctx) -> SiteOut:
    """The map: levels, zones, every space's polygon, lanes, entrances and signs."""
    if ctx.site_map is None:
        ctx.site_map = site_out(ctx.view.site)
    return ctx.site_map


def space_rows(ctx: Ctx) -> list[SpaceOut]:
    site = ctx.view.site
    out = []
    for st in ctx.view.spaces():
        s = site.space(st.space)
        out.append(
            SpaceOut(
                space=st.space,
                zone=st.zone,
                level=s.level,
                kinds=sorted(s.kinds),
                state=st.state,
                since=st.since,
                last_seen=st.last_seen,
                source=st.source,
                held=st.held,
            )
        )
    return out


@router.get("/spaces")
def spaces(
    ctx: Ctx,
    zone: Annotated[str | None, Query(max_length=64, description="only this zone")] = None,
    state: Annotated[StateName | None, Query(description="only spaces in this state")] = None,
    kind: Annotated[
        str | None, Query(max_length=64, description="only spaces of this kind")
    ] = None,
    level: Annotated[str | None, Query(max_length=64, description="only this level")] = None,
) -> list[SpaceOut]:
    """Every space with its live state, filtered by zone, state, kind or level."""
    site = ctx.view.site
    if zone is not None and zone not in {z.id for z in site.zones}:
        invalid(("query", "zone"), f"no zone {zone!r} on this site", zone)
    if kind is not None and kind not in site.kinds:
        invalid(("query", "kind"), f"no space kind {kind!r}; kinds: {', '.join(site.kinds)}", kind)
    if level is not None and level not in {lv.id for lv in site.levels}:
        invalid(("query", "level"), f"no level {level!r} on this site", level)
    return [
        s
        for s in space_rows(ctx)
        if (zone is None or s.zone == zone)
        and (state is None or s.state == state)
        and (kind is None or kind in s.kinds)
        and (level is None or s.level == level)
    ]


@router.get("/spaces/{space}")
def space(space: str, ctx: Ctx) -> SpaceOut:
    """One space with its live state."""
    if space not in ctx.view.site.space_index:
        not_found(f"no space {echo(space)} on this site")
    for s in space_rows(ctx):
        if s.space == space:
            return s
    not_found(f"no live state for space {echo(space)}")
