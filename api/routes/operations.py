"""Arrivals and assignments, alerts, and the manager's actions (close/open a space, acknowledge)."""

from __future__ import annotations

import logging
import time
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.alerts import SEVERITY, AlertRecord, AlreadyAcknowledged
from api.auth import User
from api.deps import Ctx, LoggedIn, Manager, require_login, require_manager
from api.journal import EventRow
from api.live import alert_changed_event
from api.models import (
    AcknowledgeRequest,
    AlertOut,
    AlreadyAcknowledgedOut,
    ArrivalSummary,
    ClosedSpaceOut,
    ControlOut,
    ErrorOut,
    SpaceControlRequest,
    ZoneClosureOut,
    ZoneControlOut,
)
from api.routes import (
    MANAGER_ERRORS,
    VIEWER_ERRORS,
    invalid,
    not_found,
    parse_body,
    request_body_doc,
)
from gateway.readside import ControlUnavailable
from parking import closures
from parking.payloads import Assignment, LocalText

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/v1", tags=["operations"], dependencies=[Depends(require_login)],
    responses=VIEWER_ERRORS,
)  # fmt: skip
manager_router = APIRouter(
    prefix="/api/v1", tags=["operations"], dependencies=[Depends(require_manager)],
    responses=MANAGER_ERRORS,
)  # fmt: skip


def plates_for(user: User, items: list[Assignment]) -> list[Assignment]:
    """The assignments as ``user`` may see them: plates are personal data, for managers
    only (docs/privacy.md)."""
    if user.can_read_plates:
        return items
    return [a.model_copy(update={"plate": None}) if a.plate is not None else a for a in items]


@router.get("/assignments")
def assignments(
    ctx: Ctx,
    user: LoggedIn,
    entrance: Annotated[str | None, Query(max_length=64, description="only this gate")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> list[Assignment]:
    """Recent arrivals at the gates and the space each car was given, newest first (the
    plates to managers only)."""
    if entrance is not None and entrance not in {e.id for e in ctx.view.site.entrances}:
        invalid(("query", "entrance"), f"no entrance {entrance!r} on this site", entrance)
    items = ctx.view.assignments(limit=1000 if entrance else limit)
    items = sorted(items, key=lambda a: a.ts, reverse=True)
    if entrance:
        items = [a for a in items if a.entrance == entrance]
    return plates_for(user, items[:limit])


@router.get("/arrivals")
def arrivals(ctx: Ctx, user: LoggedIn) -> list[ArrivalSummary]:
    """Per gate: cars in the last hour, how many got no space, how many of them their gate
    cancelled, and the latest assignment (its plate to managers only). A cancel's answer
    is not a car."""
    now = time.time()
    recent = sorted(ctx.view.assignments(limit=1000), key=lambda a: a.ts, reverse=True)
    recent = plates_for(user, recent)
    out = []
    for e in ctx.view.site.entrances:
        mine = [a for a in recent if a.entrance == e.id]
        hour = [a for a in mine if a.ts >= now - 3600 and not a.cancelled]
        out.append(
            ArrivalSummary(
                entrance=e.id,
                name=e.name,
                last_hour=len(hour),
                unassigned_last_hour=sum(a.space is None for a in hour),
                cancelled_last_hour=sum(a.ts >= now - 3600 and a.cancelled for a in mine),
                last=mine[0] if mine else None,
            )
        )
    return out


def alert_out(rec: AlertRecord, long_occupied_h: float) -> AlertOut:
    zh, en = rec.alert.message(long_occupied_h)
    return AlertOut(
        id=rec.alert.id,
        kind=rec.alert.kind,
        subject=rec.alert.subject,
        severity=rec.alert.severity,
        since=rec.since,
        message=LocalText(zh=zh, en=en),
        details={k: (None if v is None else str(v)) for k, v in rec.alert.details.items()},
        acknowledged_by=rec.acked_by,
        acknowledged_at=rec.acked_at,
        note=rec.note,
    )


def alert_rows(ctx: Ctx) -> list[AlertOut]:
    return [alert_out(rec, ctx.settings.long_occupied_h) for rec in ctx.alerts.current()]


@router.get("/alerts")
def alerts(
    ctx: Ctx,
    kind: Annotated[str | None, Query(max_length=32, description="only this kind")] = None,
) -> list[AlertOut]:
    """Open alerts: agent offline, camera blind, node dead, detector stuck/flapping, long stays."""
    if kind is not None and kind not in SEVERITY:
        invalid(("query", "kind"), f"no alert kind {kind!r}; kinds: {', '.join(SEVERITY)}", kind)
    return [a for a in alert_rows(ctx) if kind is None or a.kind == kind]


def site_time(ctx: Ctx, ts: float) -> str:
    """A time as the site's wall clock, naming its zone (what the managers read)."""
    tz = ctx.view.site.timezone
    try:
        return f"{datetime.fromtimestamp(ts, ZoneInfo(tz)):%Y-%m-%d %H:%M:%S} ({tz})"
    except (KeyError, ValueError, OSError):  # not a zone this machine knows
        return f"{datetime.fromtimestamp(ts).astimezone():%Y-%m-%d %H:%M:%S %z}"


def already_acknowledged(ctx: Ctx, alert_id: str, first: AlertRecord) -> JSONResponse:
    by, at = first.acked_by or "?", first.acked_at or 0.0
    detail = f"alert {alert_id!r} was already acknowledged by {by} at {site_time(ctx, at)}"
    if first.note:
        detail += f", note: {first.note}"
    body = AlreadyAcknowledgedOut(
        detail=detail, acknowledged_by=by, acknowledged_at=at, note=first.note
    )
    return JSONResponse(body.model_dump(), status_code=status.HTTP_409_CONFLICT)


@manager_router.post(
    # :path: node and detector alert ids hold "/" (node_dead:bus-g/5), which the client
    # sends as %2F and the server decodes before routing
    "/alerts/{alert_id:path}/acknowledge",
    openapi_extra=request_body_doc(AcknowledgeRequest),
    responses={
        409: {
            "model": AlreadyAcknowledgedOut,
            "description": "another manager acknowledged this episode first: who, when and "
            "their note (kept)",
        }
    },
)
async def acknowledge(alert_id: str, request: Request, ctx: Ctx, user: Manager) -> AlertOut:
    """Acknowledge an open alert (manager), with an optional note; it stays listed until the
    condition clears. The first acknowledgement of an episode holds: another manager's answers
    409 naming who acknowledged it, when, and their note; the same manager again answers 200,
    keeping the first time (a note given replaces theirs). Every open page is told (the
    `alert` event)."""
    body = await parse_body(request, AcknowledgeRequest)
    try:
        rec = await run_in_threadpool(
            ctx.alerts.acknowledge, alert_id, user.name, body.note, time.time()
        )
    except KeyError:
        not_found(f"no open alert {alert_id!r}")
    except AlreadyAcknowledged as exc:
        first = exc.record
        log.info(
            "alert %s: acknowledgement by %s refused, %s acknowledged it first",
            alert_id,
            user.name,
            first.acked_by,
        )
        # this process may only now have read it (acknowledged through another process on
        # the same journal): its pages learn it at once rather than at the next check
        ctx.hub.publish(alert_changed_event(first, time.time()))
        return already_acknowledged(ctx, alert_id, first)  # type: ignore[return-value]
    log.info("alert %s acknowledged by %s", alert_id, user.name)
    ctx.hub.publish(alert_changed_event(rec, time.time()))  # on the event loop: every page
    return alert_out(rec, ctx.settings.long_occupied_h)


async def refuse_if_sites_differ(ctx: Ctx) -> None:
    """409 when the gateway runs another site file than this API (read now: it may have just
    restarted with it): a command for the gateway would be refused there, or applied to
    another space than the manager meant, while this answer said 202."""
    if ctx.site_check is None:
        return
    mismatch = await run_in_threadpool(ctx.site_check.check)
    if mismatch is not None:
        raise HTTPException(status.HTTP_409_CONFLICT, mismatch.refusal())


CONTROL_ERRORS: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorOut,
        "description": "nothing changed: the gateway is offline or the broker unreachable "
        "(stand-alone API); try again when it is back",
    }
}


ZONE_CONFIRM_S = 3.0
"""How long a zone action waits for the gateway to journal it before it is answered 504."""


def refuse_if_nothing_changes(space: str, action: str, was: str | None, reason: str | None) -> None:
    """409 for an action that would change nothing: opening a space that is not closed, or
    closing a closed one without a new reason (a new one replaces its reason). Answered 202,
    the page would say it was done; and an open with a reason journalled a made-up event."""
    if action == "open" and was != "closed":
        raise HTTPException(
            status.HTTP_409_CONFLICT, f"{space} is not closed (it is {was}): nothing changed"
        )
    if action == "close" and was == "closed" and not reason:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"{space} is already closed: nothing changed (give a reason to replace its reason)",
        )


def state_before(ctx: Ctx, space: str) -> tuple[str | None, bool, EventRow | None]:
    """The space as the manager's action finds it: its state, whether it is held for a car
    sent to it (a manager closing it is told the car may be on its way: there is no way to
    call it back), and, when closed, the close that closed it (another manager opening it
    is told whose closure it ends)."""
    ctx.view.settle([space], [ctx.view.site.space(space).zone])
    now = next((s for s in ctx.view.spaces() if s.space == space), None)
    was = None if now is None else now.state
    held = now is not None and now.held
    return was, held, ctx.journal.closure(space) if was == "closed" else None


async def _control(
    space: str, action: str, request: Request, ctx: Ctx, user: Manager
) -> ControlOut:
    body = await parse_body(request, SpaceControlRequest)
    try:
        await refuse_if_sites_differ(ctx)
    except HTTPException:
        log.info("refused %s %s by %s: not the gateway's site file", action, space[:64], user.name)
        raise
    if space not in ctx.view.site.space_index:
        not_found(f"no space {space!r} on this site")
    try:
        why = ctx.view.control_unavailable()
        if why is not None:
            raise ControlUnavailable(why)
        was, held, closure = await run_in_threadpool(state_before, ctx, space)
        refuse_if_nothing_changes(space, action, was, body.reason)
        # the gateway journals it under its lock: keep the event loop free meanwhile
        await run_in_threadpool(ctx.view.control_space, space, action, user.name, body.reason)
    except ControlUnavailable as exc:
        log.info("refused %s %s by %s: %s", action, space, user.name, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except (ValueError, KeyError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the gateway refused: {exc}") from None
    log.info("space %s %s by %s (%s)", space, action, user.name, body.reason or "no reason given")
    if closure is not None and action == "open":
        log.info(
            "space %s: the closure opened was %s's (%s)%s",
            space,
            closure.agent,
            closure.note,
            f", with zone {closure.zone_closure}" if closure.zone_closure else "",
        )
    return ControlOut(
        space=space,
        action=action,
        by=user.name,
        reason=body.reason,
        ts=time.time(),
        was=was,
        held=held,
        closed_by=closure.agent if closure else None,
        closed_reason=closure.note if closure else None,
        closed_at=closure.ts if closure else None,
        closed_with_zone=closure.zone_closure if closure else None,
    )


@manager_router.post(
    "/spaces/{space}/close",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses=CONTROL_ERRORS,
)
async def close_space(space: str, request: Request, ctx: Ctx, user: Manager) -> ControlOut:
    """Close a space (repairs, reserved): it counts as closed on every sign (manager)."""
    return await _control(space, "close", request, ctx, user)


@manager_router.post(
    "/spaces/{space}/open",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses=CONTROL_ERRORS,
)
async def open_space(space: str, request: Request, ctx: Ctx, user: Manager) -> ControlOut:
    """Open a closed space again (manager)."""
    return await _control(space, "open", request, ctx, user)


def stored_closures(ctx: Ctx) -> dict[str, closures.ZoneClosure]:
    """The zone closures the gateway committed to its journal (parking.closures)."""
    return closures.load(
        ctx.journal.meta(closures.ZONE_CLOSURES_KEY).get(closures.ZONE_CLOSURES_KEY)
    )


@router.get("/zones/closures")
def zone_closures(ctx: Ctx) -> list[ZoneClosureOut]:
    """The zones managers closed: who, why, since when, and how many spaces each closure
    keeps closed (a zone not listed is not closed, whatever its spaces say)."""
    return [
        ZoneClosureOut(
            zone=c.zone,
            closed_by=c.by,
            closed_reason=c.reason,
            closed_at=c.ts,
            spaces=len(c.spaces),
        )  # fmt: skip
        for c in stored_closures(ctx).values()
    ]


def closed_space(space: str, c: EventRow | None) -> ClosedSpaceOut:
    """A closed space and the manager's close ``c`` that keeps it so (none: the site file's)."""
    return ClosedSpaceOut(
        space=space,
        closed_by=c.agent if c else None,
        closed_reason=c.note if c else None,
        closed_at=c.ts if c else None,
        closed_with_zone=c.zone_closure if c else None,
    )


def zone_before(
    ctx: Ctx, zone: str, action: str, reason: str | None
) -> tuple[closures.ZonePlan, closures.ZoneClosure | None, list[str], list[ClosedSpaceOut]]:
    """The zone as the manager's action finds it: what the action changes (the plan the
    gateway makes too), the zone's closure, the spaces it closes that are held for cars,
    and the closed spaces it leaves with who closed them."""
    mine = [sp.id for sp in ctx.view.site.spaces if sp.zone == zone]
    ctx.view.settle(mine, [zone])
    now = {s.space: s for s in ctx.view.spaces()}
    closure = stored_closures(ctx).get(zone)
    # a closure's spaces are closed (the gateway takes out any opened since), whatever a
    # stand-alone view that has not yet read the journal's newest events says
    held_shut = closure.spaces if closure is not None else frozenset()
    closed = [sp for sp in mine if sp in held_shut or (sp in now and now[sp].state == "closed")]
    p = closures.plan(action, mine, closed, closure, reason)
    held = [sp for sp in p.change if sp in now and now[sp].held] if action == "close" else []
    closes = ctx.journal.closures(p.left) if not p.nothing else {}
    left = [closed_space(sp, closes.get(sp)) for sp in p.left] if not p.nothing else []
    return p, closure, held, left


async def _zone_control(
    zone: str, action: str, request: Request, ctx: Ctx, user: Manager
) -> ZoneControlOut:
    body = await parse_body(request, SpaceControlRequest)
    try:
        await refuse_if_sites_differ(ctx)
    except HTTPException:
        log.info(
            "refused %s zone %s by %s: not the gateway's site file", action, zone[:64], user.name
        )
        raise
    if zone not in {z.id for z in ctx.view.site.zones}:
        not_found(f"no zone {zone!r} on this site")
    try:
        why = ctx.view.control_unavailable()
        if why is not None:
            raise ControlUnavailable(why)
        p, closure, held, left = await run_in_threadpool(
            zone_before, ctx, zone, action, body.reason
        )
        if p.nothing:
            detail = closures.nothing_to_do(zone, action, closure)
            raise HTTPException(status.HTTP_409_CONFLICT, f"{detail}: nothing changed")
        # the gateway journals it under its lock: keep the event loop free meanwhile
        await run_in_threadpool(ctx.view.control_zone, zone, action, user.name, body.reason)
        # sent is not done: a broker whose ACL drops it (README, Upgrading) or a gateway of
        # an earlier release takes it silently, and the page would say "closed"
        if not await run_in_threadpool(ctx.view.settle, (), (zone,), ZONE_CONFIRM_S):
            log.error(
                "zone %s %s by %s: the gateway did not journal it within %.0f s; a broker ACL"
                " without control/zones/+ for this API (README, Upgrading, step 7), or a"
                " gateway of an earlier release",
                zone,
                action,
                user.name,
                ZONE_CONFIRM_S,
            )
            raise HTTPException(
                status.HTTP_504_GATEWAY_TIMEOUT,
                f"the gateway did not confirm closing or opening zone {zone} within"
                f" {ZONE_CONFIRM_S:.0f} s: it may not have changed; the API's log says why",
            )
    except ControlUnavailable as exc:
        log.info("refused %s zone %s by %s: %s", action, zone, user.name, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except (ValueError, KeyError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the gateway refused: {exc}") from None
    log.info(
        "zone %s %s by %s (%s): %d spaces, %d left closed",
        zone,
        action,
        user.name,
        body.reason or "no reason given",
        len(p.change),
        len(left),
    )
    return ZoneControlOut(
        zone=zone,
        action=action,  # type: ignore[arg-type]
        by=user.name,
        reason=body.reason,
        ts=time.time(),
        spaces=list(p.change),
        reasoned_again=list(p.again),
        held=held,
        left_closed=left,
    )


@manager_router.post(
    "/zones/{zone}/close",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses=CONTROL_ERRORS,
)
async def close_zone(zone: str, request: Request, ctx: Ctx, user: Manager) -> ZoneControlOut:
    """Close every space of a zone that is not closed (cleaning, snow, an event), in one
    action journalled as one (manager). Its signs read CLOSED where every space they count is
    closed. Closing a closed zone again with a reason replaces its reason; 409 when nothing
    would change."""
    return await _zone_control(zone, "close", request, ctx, user)


@manager_router.post(
    "/zones/{zone}/open",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses=CONTROL_ERRORS,
)
async def open_zone(zone: str, request: Request, ctx: Ctx, user: Manager) -> ZoneControlOut:
    """Open the spaces a zone's closure closed, still closed by it (manager); spaces closed
    on their own stay closed (``left_closed`` says by whom). 409 when the zone is not closed."""
    return await _zone_control(zone, "open", request, ctx, user)
