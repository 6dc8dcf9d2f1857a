"""Server-sent events: live state changes, zone counts, sign contents and alerts.

The browser's EventSource reconnects by itself (``retry: 1000``); on every
(re)connect the page reloads its snapshot, so nothing missed during a gap
stays wrong. Anonymous clients (when counts and signs are public) get only
zone and display events. A logged-in client's session is checked again every
few seconds: once it has expired, ended (logout, user removed or replaced) or
its role changed, the stream ends, and the reconnect gets what is due now.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
import weakref
from collections import OrderedDict
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response, StreamingResponse

from api.auth import Session, User
from api.deps import Ctx, logged_in, public_or_login, session_of, single_valued_query
from api.live import PUBLIC_KINDS, StreamClient, UserStreamsFull
from api.models import ErrorOut
from api.routes import PUBLIC_ERRORS
from gateway.readside import LiveEvent

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/api/v1",
    tags=["live"],
    responses=PUBLIC_ERRORS,
    dependencies=[Depends(single_valued_query)],
)

HEARTBEAT_S = 15.0
BATCH_S = 0.1  # a stream sends at most this often: what came meanwhile goes in one chunk
SEND_TIMEOUT_S = 30.0  # a reader whose socket takes nothing for this long is let go
SESSION_CHECK_S = 5.0  # a logged-out, expired or demoted session's stream ends within this
STREAM_RETRY_S = 30  # Retry-After when the streams (or one user's) are at their cap
ENCODED_MAX = 4096  # events kept encoded (a burst's worth: every stream sends the same ones)
ENCODED_MAX_CHARS = 4_000_000  # and their texts at most this long in all (a health is ~14 kB)
_ENCODED: OrderedDict[tuple[int, bool, bool], tuple[weakref.ref[LiveEvent], str]] = OrderedDict()
_encoded_chars = 0
_AGENT_SUMMARY_KEYS = {"agent", "online", "last_seen", "status", "source"}


def _json_safe(value: Any) -> Any:
    if hasattr(value, "model_dump"):
        return value.model_dump(mode="json", by_alias=True)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_json_safe(v) for v in value]
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    return str(value)


def encoded(event: LiveEvent, raw_allowed: bool, plates_allowed: bool = False) -> str:
    """:func:`sse_message`, encoded once per event and audience however many streams send
    it (on the event loop only). A weak reference to the event is kept with its text: an id
    reused by a later event is never taken for it, and the cache does not keep the event's
    data alive (an agent's health event holds a bus's whole report, ~60 kB, and a viewer's
    text of it is a 100-byte summary)."""
    key = (id(event), raw_allowed, plates_allowed)
    hit = _ENCODED.get(key)
    if hit is not None and hit[0]() is event:
        return hit[1]
    global _encoded_chars
    text = sse_message(event, raw_allowed, plates_allowed)
    old = _ENCODED.pop(key, None)  # a dead event's, whose id this one reuses
    if old is not None:
        _encoded_chars -= len(old[1])
    _ENCODED[key] = (weakref.ref(event), text)
    _encoded_chars += len(text)
    while len(_ENCODED) > ENCODED_MAX or _encoded_chars > ENCODED_MAX_CHARS:
        _encoded_chars -= len(_ENCODED.popitem(last=False)[1][1])
    return text


def sse_message(event: LiveEvent, raw_allowed: bool, plates_allowed: bool = False) -> str:
    data = event.data
    if event.kind == "agent" and not raw_allowed:
        data = {k: v for k, v in data.items() if k in _AGENT_SUMMARY_KEYS}
    if event.kind == "assignment" and not plates_allowed and data.get("plate") is not None:
        data = {**data, "plate": None}  # personal data: managers only (docs/privacy.md)
    body = json.dumps({"kind": event.kind, "data": _json_safe(data), "ts": event.ts})
    return f"event: {event.kind}\ndata: {body}\n\n"


async def session_ended(ctx: Ctx, session: Session, user: User) -> str | None:
    """Why a stream's session no longer counts as it did at connect (None: it still does)."""
    if session.expires < time.time():
        return "its session expired"
    if ctx.users is None:
        return "nobody can log in"
    try:
        now = await run_in_threadpool(ctx.users.session_user, session)
    except sqlite3.Error as exc:
        return f"its session cannot be checked ({exc})"
    if now is None:
        return "its session ended"
    if now.role != user.role:
        return f"its user is now {now.role}"
    return None


async def _events(request: Request, ctx: Ctx, client: StreamClient, user: User | None,
                  session: Session | None) -> AsyncIterator[str]:  # fmt: skip
    raw_allowed = bool(user and user.can_read_raw)
    plates_allowed = bool(user and user.can_read_plates)
    clock = time.monotonic
    beat_at = clock() + HEARTBEAT_S
    check_at = clock() + SESSION_CHECK_S if session is not None else float("inf")
    try:
        yield "retry: 1000\nevent: hello\ndata: {}\n\n"
        while True:
            now = clock()
            if now >= check_at and user is not None and session is not None:
                why = await session_ended(ctx, session, user)
                if why is not None:  # the page reconnects, with what is due now
                    log.info("live stream of %s ended: %s", user.name, why)
                    return
                check_at = now + SESSION_CHECK_S
            if now >= beat_at:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                beat_at = now + HEARTBEAT_S
            try:
                events = await asyncio.wait_for(
                    client.take(), max(0.01, min(beat_at, check_at) - now)
                )
            except TimeoutError:
                continue
            if events is None:  # overflowed or shutting down: the page reconnects
                return
            # one write for all of them (a write per event per stream was most of the cost
            # of many open dashboards), and the next a moment later at the soonest
            yield "".join(encoded(e, raw_allowed, plates_allowed) for e in events)
            await asyncio.sleep(BATCH_S)
    finally:
        ctx.hub.disconnect(client)


class _StuckReader(Exception):
    pass


class LiveStreamResponse(StreamingResponse):
    """A stream whose reader takes nothing for ``SEND_TIMEOUT_S`` (a phone asleep or gone
    without closing, a frozen screen: its socket's buffers full) is ended, and its place
    freed: otherwise it waits on that write for ever, holding a slot of the stream cap.
    The buffers take megabytes before a write waits: on Linux the connection's own
    ``TCP_USER_TIMEOUT`` (``api.serving``) ends it sooner."""

    def __init__(self, content: AsyncIterator[str], client: StreamClient, ctx: Ctx, **kw: Any):
        super().__init__(content, **kw)
        self._client, self._ctx = client, ctx

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:  # however it ended, even before its first event ran the generator's own
            self._ctx.hub.disconnect(self._client)

    async def stream_response(self, send: Any) -> None:
        async def bounded(message: Any) -> None:
            try:
                await asyncio.wait_for(send(message), SEND_TIMEOUT_S)
            except TimeoutError:
                raise _StuckReader from None

        try:
            await super().stream_response(bounded)
        except _StuckReader:
            log.info("a live stream took nothing for %.0f s: ended", SEND_TIMEOUT_S)
            self._ctx.hub.disconnect(self._client)
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def refused(cap: str, per_user: int | None) -> HTTPException:
    """The answer to a new stream refused at ``cap`` (:meth:`LiveHub.refusal`)."""
    headers = {"Retry-After": str(STREAM_RETRY_S)}
    if cap == "per_user":
        return HTTPException(
            429,
            f"this user already has {per_user} live streams open, the most one login may have"
            " (PARKGUIDE_STREAMS_PER_USER): close a dashboard tab or screen, or try again"
            " shortly",
            headers=headers,
        )
    # the dashboard tries again after Retry-After, and so does a phone
    return HTTPException(503, "too many live streams open; try again shortly", headers=headers)


@router.get(
    "/stream",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "server-sent events",
        },
        204: {"description": "probe=true: a stream would be opened now (none is)"},
        429: {
            "model": ErrorOut,
            "description": "this user has PARKGUIDE_STREAMS_PER_USER streams open already; "
            "see Retry-After",
        },
        503: {"model": ErrorOut, "description": "too many streams open; see Retry-After"},
    },
)
async def stream(
    request: Request,
    ctx: Ctx,
    user: Annotated[User | None, Depends(public_or_login)],
    probe: Annotated[
        bool,
        Query(
            description="only ask whether a stream would be opened now (EventSource cannot"
            " read why it was refused): the refusal it would get, not counted again, or 204;"
            " no stream is opened"
        ),
    ] = False,
) -> Response:
    """Live events: `space`, `zone`, `display`, `agent`, `assignment`, `alert` (JSON data)."""
    session = session_of(request, ctx) if user else None
    if user is not None and session is None:  # expired since the access check, just now
        logged_in(None)
    caps = (ctx.settings.max_public_streams, ctx.settings.max_streams)
    per_user = ctx.settings.streams_per_user
    name = user.name if user else None
    if probe:  # the page's question after its stream was refused: that refusal was counted
        cap = ctx.hub.refusal(public=user is None, caps=caps, user=name, per_user=per_user)
        if cap is not None:
            raise refused(cap, per_user)
        return Response(status_code=204)
    try:
        client = ctx.hub.connect(
            None if user else PUBLIC_KINDS,
            public=user is None,
            caps=caps,
            user=name,
            per_user=per_user,
        )
    except UserStreamsFull:
        raise refused("per_user", per_user) from None
    if client is None:
        raise refused("all", per_user)  # or "public": the same answer
    return LiveStreamResponse(
        _events(request, ctx, client, user, session),
        client,
        ctx,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
