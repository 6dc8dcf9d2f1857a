"""The journal: state-change events (paged, CSV export) and zone occupancy history (login)."""

from __future__ import annotations

import csv
import io
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Annotated
from zoneinfo import ZoneInfo

from fastapi import APIRouter, Query
from fastapi.responses import StreamingResponse

from api.deps import Ctx, guarded, require_login
from api.history import sample_times, zone_series
from api.journal import EventFilter, EventRow, event_zone
from api.models import EventOut, EventPage, HistoryOut, HistoryOutage, HistoryPoint, HistorySeries
from api.routes import VIEWER_ERRORS, invalid
from gateway.journal import ALIVE_JOURNAL_S

router = APIRouter(
    prefix="/api/v1",
    tags=["journal"],
    dependencies=guarded(require_login),
    responses=VIEWER_ERRORS,
)

MAX_TS = 4102444800.0  # 2100-01-01
Time = Annotated[
    float | None,
    Query(ge=0, le=MAX_TS, allow_inf_nan=False, description="UNIX seconds, UTC"),
]
SpaceQuery = Annotated[str | None, Query(max_length=64, description="only this space")]
ZoneQuery = Annotated[str | None, Query(max_length=64, description="only this zone")]


SourceQuery = Annotated[
    str | None,
    Query(max_length=64, description="only events of this source: manager, or a bus or camera"),
]
ByQuery = Annotated[
    str | None,
    Query(max_length=64, description="only events by this manager (user name) or agent"),
]
MANAGER_SOURCE = "manager"
"""The ``source`` of a manager's close or open (and of the site file's closures)."""


def event_filter(ctx: Ctx, space: str | None, zone: str | None, since: float | None,
                 until: float | None, source: str | None = None,
                 by: str | None = None) -> EventFilter:  # fmt: skip
    site = ctx.view.site
    sources = [MANAGER_SOURCE, *(b.id for b in site.buses), *(c.id for c in site.cameras)]
    if source is not None and source not in sources:
        invalid(("query", "source"), f"no source {source!r}; sources: {', '.join(sources)}", source)
    if space is not None and space not in site.space_index:
        invalid(("query", "space"), f"no space {space!r} on this site", space)
    if (
        zone is not None
        and zone not in {z.id for z in site.zones}
        and zone not in ctx.journal.zones_of_the_past()
    ):
        invalid(("query", "zone"), f"no zone {zone!r} on this site, nor in its history", zone)
    if since is not None and until is not None and until <= since:
        invalid(("query", "until"), "until must be after since", until)
    # the zone an event was journalled with (a space moved since keeps its old events there);
    # events from before the journal kept zones are in :func:`unzoned_zones`
    unzoned = unzoned_zones(ctx) if zone is not None else {}
    return EventFilter(
        spaces=None if space is None else (space,),
        since=since,
        until=until,
        zone=zone,
        zone_spaces=tuple(sorted(s for s, z in unzoned.items() if z == zone)),
        source=source,
        agent=by,
    )


def site_zones(ctx: Ctx) -> dict[str, str]:
    """Space -> zone of the current site."""
    return {s.id: s.zone for s in ctx.view.site.spaces}


def unzoned_zones(ctx: Ctx) -> dict[str, str]:
    """Space -> the zone of its events journalled without one (before the journal kept
    zones): its zone when the journal first did, for a space a site edit has moved or
    removed since; else the current site's."""
    return site_zones(ctx) | ctx.journal.zones_first_kept()


def event_out(ctx: Ctx, e: EventRow, site_zone: dict[str, str] | None = None) -> EventOut:
    """``site_zone``: :func:`unzoned_zones`, when the caller already has it."""
    zone = event_zone(e, unzoned_zones(ctx) if site_zone is None else site_zone)
    return EventOut(
        id=e.id, ts=e.ts, space=e.space, zone=zone, old=e.old, new=e.new,
        source=e.source, agent=e.agent, seq=e.seq, reason=e.note, zone_closure=e.zone_closure,
    )  # fmt: skip


@router.get("/events")
def events(
    ctx: Ctx,
    space: SpaceQuery = None,
    zone: ZoneQuery = None,
    since: Time = None,
    until: Time = None,
    before: Annotated[int | None, Query(ge=1, le=2**62, description="page: ids below this")] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    source: SourceQuery = None,
    by: ByQuery = None,
) -> EventPage:
    """State changes, newest first, filtered by space, zone, time [since, until), source
    (``manager``: the managers' closes and opens) and who (``by``: a user or an agent)."""
    flt = event_filter(ctx, space, zone, since, until, source, by)
    rows = ctx.journal.events(flt, before_id=before, limit=limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    site_zone = unzoned_zones(ctx)
    return EventPage(
        items=[event_out(ctx, e, site_zone) for e in rows],
        next_before=rows[-1].id if more and rows else None,
    )


CSV_COLUMNS = [
    "id", "time_utc", "time_local", "ts", "space", "zone", "old", "new", "source", "agent",
    "seq", "reason", "zone_closure",
]  # fmt: skip
"""``time_local`` is the event's time in the site's time zone (``site.timezone``), with its
offset: the days a residents' committee reads the export by, as the dashboard's filters."""
CSV_BOM = "\ufeff"
"""Written before the header: without it, Excel on a Chinese Windows opens a .csv in the
ANSI code page (GBK), and a manager's Chinese close reason turns into mojibake."""


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "＝", "＋", "－", "＠")
"""A cell starting with one of these (after any blanks) a spreadsheet may run as a formula
(CSV injection): a tab or CR in front, or a full-width sign, is read past too."""


def _cell(value: object) -> object:
    if isinstance(value, str) and (
        value[:1] in FORMULA_STARTS or value.lstrip(" \t\r\n")[:1] in FORMULA_STARTS
    ):
        return "'" + value
    return value


def csv_lines(
    ctx: Ctx, flt: EventFilter, limit: int | None, after: int | None = None
) -> Iterator[str]:
    """The export's lines; with ``limit``, a last line says when it cut the export short
    (a file that silently lacks the newest events would be taken as the whole month) and
    the ``after`` that resumes it. ``ts`` is the stored float as Python writes it back
    (it reads back to the same number: ``since=`` a row's ``ts`` includes that row), the
    times are to the microsecond (the instant ``ts`` rounds to)."""
    buf = io.StringIO()
    buf.write(CSV_BOM)
    writer = csv.writer(buf)
    writer.writerow(CSV_COLUMNS)
    site_zone = unzoned_zones(ctx)
    local_tz = ZoneInfo(ctx.view.site.timezone)  # validated by the site file's schema
    last = after
    rows = ctx.journal.iter_events(flt, sys.maxsize if limit is None else limit + 1, after_id=after)
    for n, e in enumerate(rows):
        if n == limit:
            writer.writerow(
                # no comma: the line stays one bare cell
                [f"# truncated: more than {limit} events in this range; resume with "
                 f"after={last} and the same filters; or ask for a shorter range or a higher "
                 "limit"]
            )  # fmt: skip
            break
        last = e.id
        out = event_out(ctx, e, site_zone)
        when = datetime.fromtimestamp(e.ts, UTC)
        writer.writerow(
            [_cell(v) for v in (out.id, when.isoformat(timespec="microseconds"),
                                when.astimezone(local_tz).isoformat(timespec="microseconds"),
                                repr(float(out.ts)), out.space, out.zone, out.old, out.new,
                                out.source, out.agent, out.seq, out.reason,
                                out.zone_closure)]
        )  # fmt: skip
        if n % 500 == 0 or buf.tell() > 65536:
            yield buf.getvalue()
            buf.seek(0)
            buf.truncate()
    yield buf.getvalue()


@router.get(
    "/events.csv",
    responses={
        200: {
            "content": {"text/csv": {"schema": {"type": "string"}}},
            "description": "events, oldest first",
        }
    },
)
def events_csv(
    ctx: Ctx,
    space: SpaceQuery = None,
    zone: ZoneQuery = None,
    since: Time = None,
    until: Time = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
    source: SourceQuery = None,
    by: ByQuery = None,
    after: Annotated[
        int | None, Query(ge=0, le=2**62, description="resume: events with ids above this")
    ] = None,
) -> StreamingResponse:
    """Export state changes as CSV (e.g. a month for the residents' committee): all of the
    range, or at most ``limit`` events and then a last line saying it was cut short and the
    ``after`` (the last id written) that resumes it."""
    flt = event_filter(ctx, space, zone, since, until, source, by)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    site = ctx.view.site.id.replace(":", "-")  # ":" is not allowed in Windows file names
    return StreamingResponse(
        csv_lines(ctx, flt, limit, after),
        media_type="text/csv; charset=utf-8",
        # the site in the name: two communities' exports look alike once downloaded
        headers={
            "Content-Disposition": (f'attachment; filename="parkguide-events-{site}-{stamp}.csv"')
        },
    )


def ongoing_outage(ctx: Ctx, end: float) -> tuple[float, float, bool] | None:
    """The gateway down now, as a stand-alone API tells: its availability says offline (or
    its signs ran out) and the journal has no sign of life of it for longer than the
    shortest TTL (and than it journals one, after a crash): (since, ``end``, clean)."""
    heard = getattr(ctx.view, "gateway_online", None)
    if not callable(heard) or heard() is not False:
        return None  # running, not known, or the gateway's own process
    now = time.time()  # the journal's signs of life up to now, whatever window is asked
    since, clean = ctx.journal.down_since(now)
    floor = ctx.view.site.shortest_ttl_s()
    if since is None or now - since < (floor if clean else max(floor, 1.5 * ALIVE_JOURNAL_S)):
        return None
    return since, end, clean


@router.get("/history")
def history(
    ctx: Ctx,
    zone: ZoneQuery = None,
    start: Time = None,
    end: Time = None,
    step: Annotated[
        float | None, Query(ge=1, le=31 * 86400, allow_inf_nan=False, description="seconds")
    ] = None,
) -> HistoryOut:
    """Occupancy per zone over [start, end] every step seconds (default: the last 24 h); an
    end in the future stops at now, and a start before the history the journal keeps
    (--journal-keep-days) at its beginning (the response's ``start`` and ``end`` say so)."""
    site = ctx.view.site
    if zone is not None and zone not in {z.id for z in site.zones}:
        invalid(("query", "zone"), f"no zone {zone!r} on this site", zone)
    now = time.time()
    if start is not None and start >= now:
        invalid(("query", "start"), "start is in the future: there is no history yet", start)
    # history stops now: points after it would repeat the present as if it were known
    end = now if end is None else min(end, now)
    start = end - 86400 if start is None else start
    kept = ctx.journal.history_from()
    if kept is not None and start < kept:
        if end <= kept:
            invalid(
                ("query", "end"),
                f"the journal keeps history from {kept:.0f} on (--journal-keep-days)",
                end,
            )
        start = kept  # what was pruned cannot be told apart from "no change"
    if end <= start:
        invalid(("query", "end"), "end must be after start", end)
    limit = ctx.settings.max_history_points
    step = step or max(1.0, (end - start) / 288)
    if (end - start) / step + 1 > limit:
        invalid(
            ("query", "step"),
            f"{int((end - start) / step) + 1} points asked for; at most {limit} "
            f"(use a step of at least {(end - start) / (limit - 1):.0f} s)",
            step,
        )
    # each space counts in the zone its latest event names (a space moved since counted in
    # its old zone until then), from its first event on; the current site's zones for a
    # journal that never kept zones
    site_zone = site_zones(ctx)
    at_start = ctx.journal.history_input(start, end, site_zone, unzoned_zones(ctx))
    initial = at_start.states
    zone_of = dict(site_zone) if at_start.zones is None else at_start.zones
    for s in site.spaces:  # closed in the site file and never journalled: closed
        if s.closed and s.id not in initial:
            initial[s.id] = "closed"
            zone_of.setdefault(s.id, s.zone)
    times = sample_times(start, end, step)
    shown = dict.fromkeys(s.zone for s in site.spaces if zone is None or s.zone == zone)
    # the gateway's own downtime: nothing was recorded then, whatever the counts before it
    outages = [(a, b, c, False) for a, b, c in ctx.journal.outages(start, end)]
    down = ongoing_outage(ctx, end)
    if down is not None and down[0] < end:
        outages.append((*down, True))
    series = zone_series(
        zone_of,
        initial,
        at_start.changes,
        times,
        zones=shown,
        joining=site_zone,
        blind=[(a, b) for a, b, _, _ in outages],
    )
    names = {z.id: z.name for z in site.zones}
    return HistoryOut(
        start=start,
        end=end,
        step=step,
        outages=[HistoryOutage(start=a, end=b, clean=c, ongoing=o) for a, b, c, o in outages],
        series=[
            HistorySeries(
                zone=z,
                name=names[z],
                points=[
                    HistoryPoint(
                        ts=p.ts,
                        free=p.free,
                        occupied=p.occupied,
                        unknown=p.unknown,
                        closed=p.closed,
                        total=p.total,
                    )
                    for p in pts
                ],  # fmt: skip
            )
            for z, pts in series.items()
        ],
    )
