"""The app factory: REST API, NGSI-LD, /metrics, live stream and the dashboard page.

``create_app(view)`` serves any ``gateway.readside.LiveView``: the gateway's
in-process live state (``parkguide gateway --http``) or the API's own view
from retained MQTT topics and the journal (``parkguide api``).
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles

from api import metrics, ngsi
from api.alerts import AlertBook
from api.auth import LoginLimiter, SessionSigner, UserStore
from api.deps import ApiContext
from api.journal import JournalReader
from api.live import AlertMonitor, LiveHub
from api.routes import events, health, operations, public, session, site, stream
from api.settings import ApiSettings
from gateway.readside import LiveView

log = logging.getLogger(__name__)
STATIC = Path(__file__).resolve().parent / "static"
MIN_SECRET_LENGTH = 32
PAGE_HEADERS = {
    "Cache-Control": "no-cache",
    # only our own script and styles; inline style attributes draw the zone bars
    "Content-Security-Policy": "default-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; form-action 'self'",
    "X-Frame-Options": "DENY",  # no clickjacking of the manager's buttons
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
}


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


def create_app(
    view: LiveView, settings: ApiSettings | None = None, db_path: str | None = None
) -> FastAPI:
    """Build the FastAPI app on a live view; ``db_path`` is the journal database (users live there)."""
    settings = settings or ApiSettings()
    if db_path is None:
        log.warning("no journal database given: nobody can log in, events and history are empty")
    hub = LiveHub(view)
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
        journal=JournalReader(db_path),
        alerts=AlertBook(db_path),
        hub=hub,
    )
    monitor = AlertMonitor(
        view, ctx.alerts, hub, settings.alert_check_s, settings.long_occupied_h * 3600
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
        docs_url="/docs",
        redoc_url=None,
        openapi_url="/openapi.json",
        redirect_slashes=False,  # never answer a protected path with a redirect
    )
    app.state.ctx = ctx

    @app.exception_handler(sqlite3.Error)
    async def journal_unavailable(request: Request, exc: sqlite3.Error) -> JSONResponse:
        # a fault (disk, lock held too long), not bad input: say so, and keep serving
        log.error("journal query failed on %s: %s", request.url.path, exc)
        return JSONResponse(
            {"detail": f"the journal database is not available right now ({exc})"},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    for module in (session, public, site, health, events, operations, stream):
        for name in ("router", "raw_router", "manager_router"):
            if hasattr(module, name):
                app.include_router(getattr(module, name))
    app.include_router(ngsi.router)
    app.include_router(metrics.router)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    @app.get("/", include_in_schema=False)
    def dashboard() -> FileResponse:
        return FileResponse(STATIC / "index.html", headers=PAGE_HEADERS)

    return app
