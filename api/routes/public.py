"""Zone counts and sign contents: public by default (residents' phones)."""

from __future__ import annotations

import time

from fastapi import APIRouter

from api.deps import Ctx, guarded, public_or_login
from api.models import DisplayOut, ZoneOut
from api.routes import PUBLIC_ERRORS
from gateway.displays import zone_offered

router = APIRouter(
    prefix="/api/v1",
    tags=["public"],
    dependencies=guarded(public_or_login),
    responses=PUBLIC_ERRORS,
)


def zone_rows(ctx: Ctx) -> list[ZoneOut]:
    site = ctx.view.site
    counts = {c.zone: c for c in ctx.view.zone_counts()}
    totals: dict[str, int] = {}
    for s in site.spaces:
        totals[s.zone] = totals.get(s.zone, 0) + 1
    fraction = site.display_settings.fallback_unknown_fraction
    full = site.display_settings.full_unknown_fraction
    out = []
    for z in site.zones:
        c = counts.get(z.id)
        if c is None:  # nothing heard yet: every space unknown, never free
            total = totals.get(z.id, 0)
            out.append(
                ZoneOut(
                    zone=z.id, name=z.name, level=z.level, free=0, occupied=0, unknown=total,
                    closed=0, total=total, offered=None if total else 0, ts=None,
                )
            )  # fmt: skip
        else:
            shown = zone_offered(c.free, c.held, c.unknown, c.closed, c.total, fraction, full)
            out.append(
                ZoneOut(
                    zone=z.id, name=z.name, level=z.level, free=c.free, occupied=c.occupied,
                    unknown=c.unknown, closed=c.closed, total=c.total, held=c.held,
                    offered=shown, ts=c.ts,
                )
            )  # fmt: skip
    return out


@router.get("/zones")
def zones(ctx: Ctx) -> list[ZoneOut]:
    """Every zone with its free, occupied, unknown and closed counts."""
    return zone_rows(ctx)


@router.get("/displays")
def displays(ctx: Ctx) -> list[DisplayOut]:
    """Every sign with the content it was last told to show."""
    contents = ctx.view.displays()
    now = time.time()
    out = []
    for d in ctx.view.site.displays:
        c = contents.get(d.id)
        out.append(
            DisplayOut(
                display=d.id,
                name=d.name,
                level=d.level,
                entrance=d.entrance,
                content=c,
                expired=c is None or c.expires < now,
            )
        )
    return out
