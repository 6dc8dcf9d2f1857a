"""Arrivals and assignments, alerts, and the manager's actions (close/open a space, acknowledge)."""

from __future__ import annotations

import logging
import time
from collections.abc import Collection
from datetime import datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from fastapi import APIRouter, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api.alerts import SEVERITY, AlertRecord, AlreadyAcknowledged
from api.auth import User
from api.deps import (
    PAGE_USER_409,
    Ctx,
    LoggedIn,
    Manager,
    PageUser,
    guarded,
    require_login,
    require_manager,
)
from api.journal import EventRow
from api.live import alert_changed_event
from api.models import (
    AcknowledgeRequest,
    AlertOut,
    AlreadyAcknowledgedOut,
    ArrivalSummary,
    ClosedSpaceOut,
    ClosureOut,
    ControlOut,
    ErrorOut,
    NotAsExpectedOut,
    SpaceControlRequest,
    ZoneClosureOut,
    ZoneControlOut,
)
from api.routes import (
    MANAGER_ERRORS,
    VIEWER_ERRORS,
    echo,
    invalid,
    not_found,
    parse_body,
    request_body_doc,
)
from api.routes.events import MAX_TS
from gateway.readside import (
    Closer,
    ControlUnavailable,
    Refused,
    SpaceBefore,
    ZoneBefore,
    expectation_fails,
    nothing_changes,
)
from parking import closures
from parking.payloads import Assignment, LocalText

log = logging.getLogger(__name__)

router = APIRouter(
    prefix="/api/v1", tags=["operations"], dependencies=guarded(require_login),
    responses=VIEWER_ERRORS,
)  # fmt: skip
manager_router = APIRouter(
    prefix="/api/v1", tags=["operations"], dependencies=guarded(require_manager),
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
        episodes=rec.episodes,
        cleared=rec.cleared,
    )


def alert_rows(ctx: Ctx) -> list[AlertOut]:
    return [alert_out(rec, ctx.settings.long_occupied_h) for rec in ctx.alerts.current()]


@router.get("/alerts")
def alerts(
    ctx: Ctx,
    kind: Annotated[str | None, Query(max_length=32, description="only this kind")] = None,
    cleared_since: Annotated[
        float | None,
        Query(
            ge=0,
            le=MAX_TS,
            allow_inf_nan=False,
            description="instead of the open alerts, those whose last episode cleared at or "
            "after this time (UNIX s), newest first, with `cleared` set",
        ),
    ] = None,
) -> list[AlertOut]:
    """Open alerts: agent offline, camera blind, node dead, detector stuck/flapping, long stays;
    with `cleared_since`, the alerts that cleared since then (an episode that came and went
    between two looks)."""
    if kind is not None and kind not in SEVERITY:
        invalid(("query", "kind"), f"no alert kind {kind!r}; kinds: {', '.join(SEVERITY)}", kind)
    if cleared_since is not None:
        hours = ctx.settings.long_occupied_h
        rows = [alert_out(rec, hours) for rec in ctx.alerts.cleared_since(cleared_since)]
    else:
        rows = alert_rows(ctx)
    return [a for a in rows if kind is None or a.kind == kind]


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
            # a client tells them apart by `acknowledged_by` being there
            "model": AlreadyAcknowledgedOut | ErrorOut,
            "description": "nothing changed: another manager acknowledged this episode first "
            "(who, when and their note, kept: `acknowledged_by`, `acknowledged_at`, `note`); or "
            f"{PAGE_USER_409}",
        }
    },
)
async def acknowledge(
    alert_id: str, request: Request, ctx: Ctx, user: Manager, page_user: PageUser = None
) -> AlertOut:
    """Acknowledge an open alert (manager), with an optional note; it stays listed until the
    condition clears, and carries over to an episode that begins within 24 h of that. The first acknowledgement of an episode holds: another manager's answers
    409 naming who acknowledged it, when, and their note; the same manager again answers 200,
    keeping the first time (a note given replaces theirs). Every open page is told (the
    `alert` event)."""
    body = await parse_body(request, AcknowledgeRequest)
    try:
        rec = await run_in_threadpool(
            ctx.alerts.acknowledge, alert_id, user.name, body.note, time.time()
        )
    except KeyError:
        not_found(f"no open alert {echo(alert_id)}")
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

NOT_AS_EXPECTED: dict[int | str, dict[str, Any]] = {
    409: {
        # every 409 of these routes: most say only `detail`, the precondition's names the
        # current closure too (a client tells them apart by `closed` being there)
        "model": NotAsExpectedOut | ErrorOut,
        "description": "nothing changed: it would change nothing (`detail` only); with "
        "`expect_closed_by`, it is not closed by the manager the page showed (`detail` and "
        "the current closure: `closed`, `closed_by`, `closed_reason`, `closed_at`); the "
        f"gateway refused it or runs another site file; or {PAGE_USER_409}",
    }
}


def closure_out(c: Closer | None) -> ClosureOut | None:
    return None if c is None else ClosureOut(closed_by=c.by, closed_reason=c.reason, closed_at=c.at)


def closer_of(e: EventRow) -> Closer:
    return Closer(e.agent, e.note, e.ts, e.zone_closure)


def not_as_expected(exc: Refused) -> JSONResponse:
    """The 409 of an action whose ``expect_closed_by`` did not hold: the current closure
    (the page asks the manager what to do)."""
    c = exc.closer
    body = NotAsExpectedOut(
        detail=str(exc),
        closed=exc.closed,
        closed_by=c.by if c else None,
        closed_reason=c.reason if c else None,
        closed_at=c.at if c else None,
    )
    return JSONResponse(body.model_dump(), status_code=status.HTTP_409_CONFLICT)


def space_before(ctx: Ctx, space: str, action: str, body: SpaceControlRequest) -> SpaceBefore:
    """The space as the manager's action finds it, read from the journal now (stand-alone
    API: the gateway judges what it is sent no further); Refused like the gateway's own
    judgement. Called with the zone's turn held (:func:`space_judged_and_sent`); a window
    remains for an action another API process sends meanwhile."""
    ctx.view.settle([space], [ctx.view.site.space(space).zone])
    now = next((s for s in ctx.view.spaces() if s.space == space), None)
    was = "unknown" if now is None else now.state
    closes = (
        tuple(closer_of(e) for e in ctx.journal.closes_since_open(space)) if was == "closed" else ()
    )
    closer = closes[0] if closes else None
    why = expectation_fails(body.expectation(), closer, was == "closed")
    if why is not None:
        raise Refused(f"{space}: {why}: nothing changed", closer, True, was == "closed")
    site_closed = bool(ctx.view.site.space(space).closed)
    why = nothing_changes(space, action, was, body.reason, site_closed)
    if why is not None:
        raise Refused(why, closer)
    return SpaceBefore(was, now is not None and now.held, closes)


def space_judged_and_sent(
    ctx: Ctx, space: str, action: str, user: User, body: SpaceControlRequest
) -> SpaceBefore:
    """Judge a manager's action on the journal and send it (stand-alone API), its zone's
    turn held throughout: another action of this process on the space waits, then settles
    on this one's event (two at once were both judged before either was sent)."""
    with ctx.judging.zone(ctx.view.site.space(space).zone):
        before = space_before(ctx, space, action, body)
        ctx.view.control_space(space, action, user.name, body.reason)
    return before


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
        not_found(f"no space {echo(space)} on this site")
    try:
        why = ctx.view.control_unavailable()
        if why is not None:
            raise ControlUnavailable(why)
        # the gateway itself judges it under its lock with the action and answers how it
        # found the space; a stand-alone API judges it on the journal just before sending
        before = (
            await run_in_threadpool(
                ctx.view.control_space, space, action, user.name, body.reason, body.expectation()
            )
            if ctx.view.judges_controls
            else None
        )
        if before is None:
            before = await run_in_threadpool(space_judged_and_sent, ctx, space, action, user, body)
    except ControlUnavailable as exc:
        log.info("refused %s %s by %s: %s", action, space, user.name, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except Refused as exc:
        log.info("refused %s %s by %s: %s", action, space, user.name, exc)
        if not exc.expected:
            raise HTTPException(status.HTTP_409_CONFLICT, str(exc)) from None
        return not_as_expected(exc)  # type: ignore[return-value]
    except (ValueError, KeyError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the gateway refused: {exc}") from None
    log.info("space %s %s by %s (%s)", space, action, user.name, body.reason or "no reason given")
    closure = before.closes[0] if before.closes else None
    if closure is not None:
        log.info(
            "space %s: the closure %s was %s's (%s)%s%s",
            space,
            "opened" if action == "open" else "taken over",
            closure.by,
            closure.reason,
            f", with zone {closure.zone}" if closure.zone else "",
            f", over {len(before.closes) - 1} earlier closes" if len(before.closes) > 1 else "",
        )
    return ControlOut(
        space=space,
        action=action,
        by=user.name,
        reason=body.reason,
        ts=time.time(),
        was=before.state,
        held=before.held,
        closed_by=closure.by if closure else None,
        closed_reason=closure.reason if closure else None,
        closed_at=closure.at if closure else None,
        closed_with_zone=closure.zone if closure else None,
        earlier_closes=[closure_out(c) for c in before.closes[1:]],
    )


@manager_router.post(
    "/spaces/{space}/close",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses={**CONTROL_ERRORS, **NOT_AS_EXPECTED},
)
async def close_space(
    space: str, request: Request, ctx: Ctx, user: Manager, page_user: PageUser = None
) -> ControlOut:
    """Close a space (repairs, reserved): it counts as closed on every sign (manager)."""
    return await _control(space, "close", request, ctx, user)


@manager_router.post(
    "/spaces/{space}/open",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses={**CONTROL_ERRORS, **NOT_AS_EXPECTED},
)
async def open_space(
    space: str, request: Request, ctx: Ctx, user: Manager, page_user: PageUser = None
) -> ControlOut:
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
    ctx: Ctx, zone: str, action: str, body: SpaceControlRequest
) -> tuple[ZoneBefore, int]:
    """The zone as the manager's action finds it, read from the journal now (stand-alone
    API): what the action changes (the plan the gateway makes too), the zone's closure and
    the spaces it closes that are held for cars; Refused like the gateway's own judgement.
    Also the journal's newest event id then (what happened to the zone since explains an
    action that never showed)."""
    mine = [sp.id for sp in ctx.view.site.spaces if sp.zone == zone]
    ctx.view.settle(mine, [zone])
    mark = ctx.journal.last_event_id()
    now = {s.space: s for s in ctx.view.spaces()}
    closure = stored_closures(ctx).get(zone)
    closer = None if closure is None else Closer(closure.by, closure.reason, closure.ts)
    why = expectation_fails(body.expectation(), closer, closure is not None)
    if why is not None:
        raise Refused(f"zone {zone}: {why}: nothing changed", closer, True, closure is not None)
    # a closure's spaces are closed (the gateway takes out any opened since), whatever a
    # stand-alone view that has not yet read the journal's newest events says
    held_shut = closure.spaces if closure is not None else frozenset()
    closed = [sp for sp in mine if sp in held_shut or (sp in now and now[sp].state == "closed")]
    p = closures.plan(action, mine, closed, closure, body.reason)
    if p.nothing:
        raise Refused(closures.nothing_to_do(zone, action, closure), closer)
    held = [sp for sp in p.change if sp in now and now[sp].held] if action == "close" else []
    return ZoneBefore(p, closer, tuple(held)), mark


def zone_judged_and_sent(
    ctx: Ctx, zone: str, action: str, user: User, body: SpaceControlRequest
) -> tuple[ZoneBefore, int]:
    """:func:`zone_before` and the send, the zone's turn held throughout (as
    :func:`space_judged_and_sent`)."""
    with ctx.judging.zone(zone):
        before = zone_before(ctx, zone, action, body)
        ctx.view.control_zone(zone, action, user.name, body.reason)
    return before


def left_closed(ctx: Ctx, left: Collection[str]) -> list[ClosedSpaceOut]:
    """The closed spaces a zone action left, with who closed them."""
    closes = ctx.journal.closures(left) if left else {}
    return [closed_space(sp, closes.get(sp)) for sp in left]


def unconfirmed(ctx: Ctx, zone: str, action: str, user: User, mark: int) -> HTTPException:
    """The answer to a zone action the gateway never journaled: 409 when another manager's
    action on the zone since ``mark`` explains it (the gateway found nothing left to do),
    else 504 (a broker ACL dropping it, a gateway of an earlier release)."""
    others = ctx.journal.zone_actions_after(mark, zone, user.name)
    if others:
        said = "; ".join(
            f"{e.agent} {'closed' if e.new == 'closed' else 'opened'} zone {zone}"
            f"{f' ({e.note})' if e.note else ''} at {site_time(ctx, e.ts)}"
            for e in others
        )
        log.info(
            "zone %s %s by %s: not journaled, another manager acted first: %s",
            zone,
            action,
            user.name,
            said,
        )
        return HTTPException(
            status.HTTP_409_CONFLICT,
            f"{said} just before: nothing changed (reload the zone and decide again)",
        )
    log.error(
        "zone %s %s by %s: the gateway did not journal it within %.0f s; a broker ACL"
        " without control/zones/+ for this API (README, Upgrading, step 7), or a"
        " gateway of an earlier release",
        zone,
        action,
        user.name,
        ZONE_CONFIRM_S,
    )
    return HTTPException(
        status.HTTP_504_GATEWAY_TIMEOUT,
        f"the gateway did not confirm closing or opening zone {zone} within"
        f" {ZONE_CONFIRM_S:.0f} s: it may not have changed; the API's log says why",
    )


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
        not_found(f"no zone {echo(zone)} on this site")
    try:
        why = ctx.view.control_unavailable()
        if why is not None:
            raise ControlUnavailable(why)
        # the gateway itself judges it under its lock with the action; a stand-alone API
        # judges it on the journal, sends it, and waits for this manager's events of it
        before = (
            await run_in_threadpool(
                ctx.view.control_zone, zone, action, user.name, body.reason, body.expectation()
            )
            if ctx.view.judges_controls
            else None
        )
        if before is None:
            before, mark = await run_in_threadpool(
                zone_judged_and_sent, ctx, zone, action, user, body
            )
            # sent is not done: a broker whose ACL drops it (README, Upgrading), a gateway
            # of an earlier release, or another manager's action first (the gateway finds
            # nothing to do) takes it silently, and the page would say "closed"
            if not await run_in_threadpool(ctx.view.settle, (), (zone,), ZONE_CONFIRM_S, user.name):
                raise await run_in_threadpool(unconfirmed, ctx, zone, action, user, mark)
        p = before.plan
        left = await run_in_threadpool(left_closed, ctx, p.left)
    except ControlUnavailable as exc:
        log.info("refused %s zone %s by %s: %s", action, zone, user.name, exc)
        raise HTTPException(status.HTTP_503_SERVICE_UNAVAILABLE, str(exc)) from None
    except Refused as exc:
        log.info("refused %s zone %s by %s: %s", action, zone, user.name, exc)
        if not exc.expected:
            raise HTTPException(status.HTTP_409_CONFLICT, f"{exc}: nothing changed") from None
        return not_as_expected(exc)  # type: ignore[return-value]
    except (ValueError, KeyError) as exc:
        raise HTTPException(status.HTTP_409_CONFLICT, f"the gateway refused: {exc}") from None
    log.info(
        "zone %s %s by %s (%s): %d spaces, %d left closed%s",
        zone,
        action,
        user.name,
        body.reason or "no reason given",
        len(p.change),
        len(left),
        f"; the closure was {before.closure.by}'s ({before.closure.reason})"
        if before.closure
        else "",
    )
    return ZoneControlOut(
        zone=zone,
        action=action,  # type: ignore[arg-type]
        by=user.name,
        reason=body.reason,
        ts=time.time(),
        spaces=list(p.change),
        reasoned_again=list(p.again),
        held=list(before.held),
        left_closed=left,
        closure_was=closure_out(before.closure),
    )


@manager_router.post(
    "/zones/{zone}/close",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses={**CONTROL_ERRORS, **NOT_AS_EXPECTED},
)
async def close_zone(
    zone: str, request: Request, ctx: Ctx, user: Manager, page_user: PageUser = None
) -> ZoneControlOut:
    """Close every space of a zone that is not closed (cleaning, snow, an event), in one
    action journalled as one (manager). Its signs read CLOSED where every space they count is
    closed. Closing a closed zone again with a reason replaces its reason; 409 when nothing
    would change."""
    return await _zone_control(zone, "close", request, ctx, user)


@manager_router.post(
    "/zones/{zone}/open",
    status_code=202,
    openapi_extra=request_body_doc(SpaceControlRequest),
    responses={**CONTROL_ERRORS, **NOT_AS_EXPECTED},
)
async def open_zone(
    zone: str, request: Request, ctx: Ctx, user: Manager, page_user: PageUser = None
) -> ZoneControlOut:
    """Open the spaces a zone's closure closed, still closed by it (manager); spaces closed
    on their own stay closed (``left_closed`` says by whom). 409 when the zone is not closed."""
    return await _zone_control(zone, "open", request, ctx, user)
