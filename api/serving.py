"""The HTTP protocol the API is served with: uvicorn's own, with a TCP option on a
connection while it serves a live stream, so that a stream whose reader stopped reading
frees its place.

A reader that stops reading (a frozen screen, a script holding slots) is invisible to the
server while the kernels take what is written: its receive buffer, then this side's send
buffer (up to ``tcp_wmem``'s 4 MB), before a write waits at all and the stream's send
timeout starts. At a busy site's 11 kB/s that was 7 minutes, on a quiet one days.
``TCP_USER_TIMEOUT`` (Linux) ends a connection whose written data stays unacknowledged, or
unsent because the peer's window is shut, for that long: such a stream ends within the
send timeout of its reader's buffer filling, however much this side could still buffer.
A reader whose kernel still takes the few keep-alive bytes cannot be told from one that
reads; the stream caps bound what those hold.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

from api.app import STREAM_PATH
from api.routes.stream import SEND_TIMEOUT_S

log = logging.getLogger(__name__)


def abort_unacknowledged(transport: asyncio.BaseTransport, after_s: float) -> None:
    """Have the kernel end the connection when what is written to it stays unacknowledged
    or unsent (the peer's window shut) for ``after_s``; 0: never, the kernel's default (a
    no-op where there is no such option)."""
    sock = transport.get_extra_info("socket")
    option = getattr(socket, "TCP_USER_TIMEOUT", None)
    if sock is None or option is None or sock.family not in (socket.AF_INET, socket.AF_INET6):
        return
    try:
        sock.setsockopt(socket.IPPROTO_TCP, option, int(after_s * 1000))
    except (OSError, ValueError) as exc:
        # a kernel without it (the send timeout alone, later), or a connection closed
        # already (uvloop's socket of a closed transport has no file descriptor: ValueError)
        log.debug("TCP_USER_TIMEOUT not set: %s", exc)


def is_live_stream(message: Any) -> bool:
    """Whether an ASGI response start begins a live stream (a refusal of one does not)."""
    if message["type"] != "http.response.start" or message["status"] != 200:
        return False
    headers = dict(message.get("headers") or [])
    return headers.get(b"content-type", b"").startswith(b"text/event-stream")


def http_protocol(after_s: float | None = None) -> type[asyncio.Protocol]:
    """uvicorn's ``auto`` HTTP protocol (httptools, else h11), a connection that carries a
    live stream ended by the kernel once data written to it waits ``after_s`` (None: the
    stream's send timeout); pass it as ``uvicorn.Config(http=)``."""
    base: Any = AutoHTTPProtocol
    wait_s = SEND_TIMEOUT_S if after_s is None else after_s

    class Protocol(base):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            app = self.app

            async def app_of_this_connection(scope: Any, receive: Any, send: Any) -> None:
                # only while a live stream is served: a CSV export whose reader pauses (a
                # download paused, a phone out of signal) for longer must go on where it
                # stopped, also on a connection that asked for a stream before (the page
                # asks why one was refused) or carried one that ended
                if scope["type"] != "http" or scope["path"] != STREAM_PATH:
                    await app(scope, receive, send)
                    return
                streaming = False

                def stream_ended() -> None:
                    nonlocal streaming
                    if streaming:
                        abort_unacknowledged(transport, 0)
                        streaming = False

                async def send_of_stream(message: Any) -> None:
                    nonlocal streaming
                    if is_live_stream(message):
                        abort_unacknowledged(transport, wait_s)
                        streaming = True
                    elif message["type"] == "http.response.body" and not message.get("more_body"):
                        stream_ended()  # before it is sent: that may start the next request
                    await send(message)

                try:
                    await app(scope, receive, send_of_stream)
                finally:
                    stream_ended()  # however it ended: the connection may carry others next

            self.app = app_of_this_connection

    return Protocol
