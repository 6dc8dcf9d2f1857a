"""Edge agents and detectors with their health; raw readings and error counters for technicians."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import Ctx, guarded, require_login, require_technician
from api.models import (
    AgentOut,
    BootConflictOut,
    DetectorOut,
    DetectorRawOut,
    HealthOut,
    NodeSummary,
)
from api.routes import TECHNICIAN_ERRORS, VIEWER_ERRORS, echo, invalid, not_found

router = APIRouter(
    prefix="/api/v1",
    tags=["health"],
    dependencies=guarded(require_login),
    responses=VIEWER_ERRORS,
)
raw_router = APIRouter(
    prefix="/api/v1",
    tags=["health"],
    dependencies=guarded(require_technician),
    responses=TECHNICIAN_ERRORS,
)

_BAD_DETECTOR = {"stuck", "flapping", "dead", "fault"}


@router.get("/agents")
def agents(ctx: Ctx) -> list[AgentOut]:
    """Every edge agent of the site file: online or not, when last heard, its health in
    summary; one never heard from has ``heard`` false and status ``never_seen``; one whose
    live reports are refused for another boot under its id has status ``boot_conflict``."""
    out = []
    site = ctx.view.site
    sources = {b.agent: b.id for b in site.buses} | {c.agent: c.id for c in site.cameras}
    for a in ctx.view.agents():
        h = a.health
        heard = a.online or a.last_seen is not None or h is not None
        status = h.status if h else (None if heard else "never_seen")
        c = a.boot_conflict
        if c is not None:  # its health is its older boot's, refused too: not "ok"
            status = "boot_conflict"
        out.append(
            AgentOut(
                agent=a.agent,
                online=a.online,
                last_seen=a.last_seen,
                source=h.source if h else sources.get(a.agent),
                status=status,
                boot_conflict=(
                    BootConflictOut(
                        boot=c.boot,
                        refused_boot=c.refused_boot,
                        refused=c.refused,
                        since=c.since,
                        last=c.last,
                    )
                    if c is not None
                    else None
                ),
                heard=heard,
                health_ts=h.ts if h else None,
                nodes=[
                    NodeSummary(
                        address=n.address,
                        status=n.status,
                        detectors_ok=sum(d.status == "ok" for d in n.detectors),
                        detectors_bad=sum(d.status in _BAD_DETECTOR for d in n.detectors),
                    )
                    for n in (h.nodes if h else [])
                ],
                fps=h.fps if h else None,
            )
        )
    return out


def _detectors(ctx: Ctx, source: str | None, status: str | None) -> list[DetectorRawOut]:
    buses = [b.id for b in ctx.view.site.buses]
    if source is not None and source not in buses:  # a typo must not read "no faults"
        invalid(
            ("query", "source"),
            f"no bus {source!r} on this site; buses: {', '.join(buses)}",
            source,
        )
    out = []
    for a in ctx.view.agents():
        h = a.health
        if h is None or (source is not None and h.source != source):
            continue
        for n in h.nodes:
            for d in n.detectors:
                if status is not None and d.status != status:
                    continue
                out.append(
                    DetectorRawOut(
                        agent=a.agent, source=h.source, node=n.address, index=d.index,
                        space=d.space, status=d.status, battery=d.battery, raw=d.raw,
                        node_status=n.status, node_errors=dict(n.errors),
                        firmware=n.firmware, uptime_s=n.uptime_s,
                    )
                )  # fmt: skip
    return out


SourceQuery = Annotated[str | None, Query(max_length=64, description="only this bus")]
StatusQuery = Annotated[
    str | None,
    Query(pattern="^(ok|stuck|flapping|dead|fault|unknown)$", description="only this status"),
]


@router.get("/detectors")
def detectors(
    ctx: Ctx, source: SourceQuery = None, status: StatusQuery = None
) -> list[DetectorOut]:
    """Every ground detector's status and battery (raw readings: see /detectors/raw)."""
    return [
        DetectorOut(**d.model_dump(include=set(DetectorOut.model_fields)))
        for d in _detectors(ctx, source, status)
    ]


@raw_router.get("/detectors/raw")
def detectors_raw(
    ctx: Ctx, source: SourceQuery = None, status: StatusQuery = None
) -> list[DetectorRawOut]:
    """Raw detector readings and node error counters (technician)."""
    return _detectors(ctx, source, status)


@raw_router.get("/agents/{agent}/health")
def agent_health(agent: str, ctx: Ctx) -> HealthOut:
    """One agent's full health report as it published it: counters, nodes, raw readings."""
    for a in ctx.view.agents():
        if a.agent == agent:
            return HealthOut(agent=a.agent, online=a.online, health=a.health)
    not_found(f"no agent {echo(agent)} on this site")
