"""Server-sent events: live state changes, zone counts, sign contents and alerts.

The browser's EventSource reconnects by itself (``retry: 1000``); on every
(re)connect the page reloads its snapshot, so nothing missed during a gap
stays wrong. Anonymous clients (when counts and signs are public) get only
zone and display events.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import StreamingResponse

from api.auth import User
from api.deps import Ctx, public_or_login
from api.live import PUBLIC_KINDS, StreamClient
from api.routes import PUBLIC_ERRORS
from gateway.readside import LiveEvent

log = logging.getLogger(__name__)
router = APIRouter(prefix="/api/v1", tags=["live"], responses=PUBLIC_ERRORS)

HEARTBEAT_S = 15.0
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


def sse_message(event: LiveEvent, raw_allowed: bool) -> str:
    data = event.data
    if event.kind == "agent" and not raw_allowed:
        data = {k: v for k, v in data.items() if k in _AGENT_SUMMARY_KEYS}
    body = json.dumps({"kind": event.kind, "data": _json_safe(data), "ts": event.ts})
    return f"event: {event.kind}\ndata: {body}\n\n"


async def _events(request: Request, ctx: Ctx, client: StreamClient, user: User | None
                  ) -> AsyncIterator[str]:  # fmt: skip
    raw_allowed = bool(user and user.can_read_raw)
    try:
        yield "retry: 1000\nevent: hello\ndata: {}\n\n"
        while True:
            try:
                event = await asyncio.wait_for(client.queue.get(), HEARTBEAT_S)
            except TimeoutError:
                if await request.is_disconnected():
                    return
                yield ": keep-alive\n\n"
                continue
            if event is None:  # overflowed or shutting down: the page reconnects
                return
            yield sse_message(event, raw_allowed)
    finally:
        ctx.hub.disconnect(client)


@router.get(
    "/stream",
    responses={
        200: {
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
            "description": "server-sent events",
        }
    },
)
async def stream(
    request: Request, ctx: Ctx, user: Annotated[User | None, Depends(public_or_login)]
) -> StreamingResponse:
    """Live events: `space`, `zone`, `display`, `agent`, `assignment`, `alert` (JSON data)."""
    client = ctx.hub.connect(None if user else PUBLIC_KINDS)
    return StreamingResponse(
        _events(request, ctx, client, user),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
