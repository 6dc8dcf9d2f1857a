"""The app factory: REST API, NGSI-LD, /metrics, live stream and the dashboard page.

``create_app(view)`` serves any ``gateway.readside.LiveView``: the gateway's
in-process live state (``parkguide gateway --http``) or the API's own view
from retained MQTT topics and the journal (``parkguide api``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from fastapi import FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import Headers, MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api import metrics, ngsi
from api.alerts import AlertBook
from api.auth import LoginLimiter, SessionSigner, UserStore
from api.deps import ApiContext, session_cookie
from api.disk_status import JournalDisk
from api.journal import JournalReader
from api.live import AlertMonitor, LiveHub
from api.outbox_status import OutboxStatusReader
from api.routes import (
    encodable,
    events,
    health,
    operations,
    public,
    session,
    short_input,
    site,
    stream,
)
from api.settings import ApiSettings
from api.sitecheck import SiteCheck
from gateway.readside import LiveView

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
MIN_SECRET_LENGTH = 32
PAGE_CSP = (
    # only our own script and styles; inline style attributes draw the zone bars
    "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
)
OTHER_CSP = "default-src 'none'; frame-ancestors 'none'"  # JSON, CSV, scripts: nothing to run
SECURITY_HEADERS = {
    "X-Frame-Options": "DENY",  # no clickjacking of the manager's buttons
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}
MAX_REQUEST_BODY = 16 * 1024
"""Bytes a request body may have: the largest real one (a login, or a manager's action with a
200-character reason, every character JSON-escaped) is under 2 KB; the manager's routes accept
at most ``api.routes.MAX_BODY_BYTES`` of it."""
UNSAFE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
GZIP_MIN_BYTES = 1000  # smaller answers gain little from compression
STREAM_PATH = "/api/v1/stream"


class CompressLarge:
    """gzip for responses of ``GZIP_MIN_BYTES`` or more to a client that accepts it (the site
    and spaces lists are megabytes on a 20,000-space site). Never the live stream: each event
    must leave as it comes, and not every Starlette the project allows leaves
    text/event-stream alone."""

    def __init__(self, app: ASGIApp):
        self.app = app
        self.gzip = GZipMiddleware(app, minimum_size=GZIP_MIN_BYTES)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == STREAM_PATH:
            await self.app(scope, receive, send)
        else:
            await self.gzip(scope, receive, send)


class SecurityHeaders:
    """Every response says it must not be framed and is what its type says: the page's CSP on
    HTML, ``OTHER_CSP`` on the rest. Set on the route alone, /static/index.html (the same
    dashboard, logged in) could be framed by another origin of the same site and its buttons
    clicked through. Pure ASGI: it only touches the response's start, so the live stream
    flows as before."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message.setdefault("headers", [])  # optional in ASGI
                headers = MutableHeaders(scope=message)
                html = headers.get("content-type", "").startswith("text/html")
                headers.setdefault("Content-Security-Policy", PAGE_CSP if html else OTHER_CSP)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, with_headers)


class AssetFiles(StaticFiles):
    """The page's script and styles; the page itself only at ``/`` (one address to guard)."""

    def lookup_path(self, path: str) -> tuple[str, os.stat_result | None]:
        if os.path.normpath(path).lower() == "index.html":
            return "", None  # 404
        return super().lookup_path(path)


class BodyLimit:
    """Refuses request bodies over ``max_bytes`` with 413 before they are held in memory: at once
    for a declared Content-Length, and as soon as a streamed (chunked) body passes the limit."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_REQUEST_BODY):
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> StarletteHTTPException:
        return StarletteHTTPException(
            413,
            f"the request body is over {self.max_bytes} bytes",
            headers={"Connection": "close"},
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_bytes:
            exc = self._too_large()
            await JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)(
                scope, receive, send
            )
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # an HTTPException: the route's body reading passes it on to the handler
                    raise self._too_large()
            return message

        async def watched_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, watched_send)
        except StarletteHTTPException as exc:
            if started or exc.status_code != 413:
                raise
            await JSONResponse({"detail": exc.detail}, exc.status_code, exc.headers)(
                scope, receive, send
            )


def _host_port(netloc: str) -> str:
    netloc = netloc.strip().lower()
    for default in (":80", ":443"):
        if netloc.endswith(default):
            return netloc[: -len(default)]
    return netloc


def cross_origin(headers: Headers) -> str | None:
    """Why a browser request comes from a page of another origin (None: it does not, or it says
    nothing, like scripts and curl). Sec-Fetch-Site tells same-site pages of another origin
    (evil.example.com vs dash.example.com) from our own; Origin is compared with Host (netloc
    only: behind a TLS proxy the scheme differs but the Host header is kept)."""
    fetch_site = headers.get("sec-fetch-site")
    if fetch_site is not None and fetch_site.lower() not in ("same-origin", "none"):
        return f"Sec-Fetch-Site is {fetch_site[:32]!r}"
    origin = headers.get("origin")
    if origin is not None:
        netloc = urlsplit(origin).netloc if origin != "null" else ""
        if not netloc or _host_port(netloc) != _host_port(headers.get("host", "")):
            return f"Origin {origin[:100]!r} is not this host"
    return None


def _bearer(headers: Headers) -> bool:
    scheme, _, value = headers.get("authorization", "").partition(" ")
    return scheme.lower() == "bearer" and bool(value.strip())


class SameOriginGuard:
    """Refuses (403) a changing request (POST, PUT, PATCH, DELETE) that a browser sent from a
    page of another origin, unless it carries a bearer token (which no browser adds by itself;
    a page of another origin cannot without a CORS preflight, which this app never allows).
    SameSite=Strict alone does not do it: another origin of the same site still sends the
    cookie."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] in UNSAFE_METHODS:
            headers = Headers(scope=scope)
            reason = None if _bearer(headers) else cross_origin(headers)
            if reason is not None:
                client = scope.get("client")
                log.info(
                    "refused %s %s from %s: %s",
                    scope["method"],
                    scope["path"][:100],
                    client[0] if client else "?",
                    reason,
                )
                response = JSONResponse(
                    {"detail": f"refused: a page of another origin sent this request ({reason})"},
                    403,
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def session_secret(settings: ApiSettings) -> bytes:
    """The configured secret, or a random one with a warning that sessions end at restart."""
    if settings.session_secret is not None:
        value = settings.session_secret.get_secret_value()
        if len(value) < MIN_SECRET_LENGTH:
            log.warning(
                "PARKGUIDE_SESSION_SECRET is shorter than %d characters; use a longer random one",
                MIN_SECRET_LENGTH,
            )
        return value.encode("utf-8")
    log.warning(
        "PARKGUIDE_SESSION_SECRET is not set: using a random secret, so every login ends "
        "when this service restarts"
    )
    return secrets.token_bytes(32)


def check_metrics_token(settings: ApiSettings) -> None:
    """Warn of a metrics token short enough to guess (it is compared as it is)."""
    token = settings.metrics_token
    if token is not None and len(token.get_secret_value()) < MIN_SECRET_LENGTH:
        log.warning(
            "PARKGUIDE_METRICS_TOKEN is shorter than %d characters; use a longer random one",
            MIN_SECRET_LENGTH,
        )


def create_app(
    view: LiveView,
    settings: ApiSettings | None = None,
    db_path: str | None = None,
    broker: str = "mqtt",
) -> FastAPI:
    """Build the FastAPI app on a live view; ``db_path`` is the journal database (users live
    there); ``broker`` the MQTT broker's ``host:port`` (the ``broker_lost`` alert names it)."""
    settings = settings or ApiSettings()
    check_metrics_token(settings)
    if db_path is None:
        log.warning("no journal database given: nobody can log in, events and history are empty")
    hub = LiveHub(view)
    journal = JournalReader(db_path)
    ctx = ApiContext(
        view=view,
        settings=settings,
        users=UserStore(db_path) if db_path else None,
        signer=SessionSigner(session_secret(settings)),
        limiter=LoginLimiter(
            settings.login_max_failures_per_user,
            settings.login_max_attempts_per_client,
            settings.login_window_s,
        ),
        journal=journal,
        alerts=AlertBook(db_path),
        hub=hub,
        # the gateway journals its site file's digest: an API started with another one
        # would show what the gateway does not have and send commands it cannot act on
        site_check=SiteCheck(view.site, journal, refresh_s=min(2.0, settings.alert_check_s)),
        cookie=session_cookie(view.site.id),
        # the gateway's InfluxDB writer says how it does in the journal: a stand-alone API
        # has no other way to know (its /metrics and the influx_failing alert)
        outbox_status=OutboxStatusReader(journal, refresh_s=min(2.0, settings.alert_check_s)),
        # a full disk stops the gateway: said days before, not at the write that fails
        journal_disk=JournalDisk(
            db_path, settings.journal_disk_low_mb, refresh_s=min(2.0, settings.alert_check_s)
        ),
    )
    monitor = AlertMonitor(
        view,
        ctx.alerts,
        hub,
        settings.alert_check_s,
        settings.long_occupied_h * 3600,
        site_check=ctx.site_check,
        outbox_status=ctx.outbox_status,
        journal_disk=ctx.journal_disk,
        broker=broker,
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        hub.start(asyncio.get_running_loop())
        monitor.start()
        try:
            yield
        finally:
            await monitor.stop()
            hub.stop()

    app = FastAPI(
        title="parkguide",
        summary="Live parking state, signs, history and health of one community",
        version="1",
        lifespan=lifespan,
        # no /docs or /redoc: FastAPI's pages load their scripts from a CDN, on the origin where
        # the managers' cookies live; any OpenAPI viewer can show /openapi.json instead
        docs_url=None,
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # never answer a protected path with a redirect
    )
    app.state.ctx = ctx
    app.add_middleware(CompressLarge)
    app.add_middleware(BodyLimit, max_bytes=MAX_REQUEST_BODY)
    app.add_middleware(SameOriginGuard)  # refused before anything is read
    app.add_middleware(SecurityHeaders)  # the outermost: on the 403 and 413 answers too

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        # FastAPI's own handler echoes every bad input whole (a 300 MB name came back whole)
        errors: list[Any] = [
            {**e, "input": short_input(e["input"])} if isinstance(e, dict) and "input" in e else e
            for e in exc.errors()
        ]
        errors = [
            {**e, "msg": encodable(e["msg"])} if isinstance(e, dict) and "msg" in e else e
            for e in errors
        ]
        return JSONResponse({"detail": jsonable_encoder(errors)}, status_code=422)

    @app.exception_handler(sqlite3.Error)
    async def journal_unavailable(request: Request, exc: sqlite3.Error) -> JSONResponse:
        # a fault (disk, lock held too long), not bad input: say so, and keep serving
        log.error("journal query failed on %s: %s", request.url.path, exc)
        return JSONResponse(
            {"detail": f"the journal database is not available right now ({exc})"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.exception_handler(Exception)
    async def unexpected_fault(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers an unhandled exception outside every middleware: without this, a
        # bug's 500 went out without the security headers and as text; the traceback still
        # goes to the server's log (Starlette raises it on after this answer is sent)
        return JSONResponse(
            {"detail": "internal error: the fault is in the API's log"},
            status_code=500,
            headers={**SECURITY_HEADERS, "Content-Security-Policy": OTHER_CSP},
        )

    for module in (session, public, site, health, events, operations, stream):
        for name in ("router", "raw_router", "manager_router"):
            if hasattr(module, name):
                app.include_router(getattr(module, name))
    app.include_router(ngsi.router)
    app.include_router(metrics.router)
    app.mount("/static", AssetFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers={"Cache-Control": "no-cache"})

    return app
