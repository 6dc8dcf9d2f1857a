"""The app's shared context and the FastAPI dependencies for who may do what.

Access rules (issue 5): zone counts and sign contents are public unless
``PARKGUIDE_PUBLIC_READ=false``; everything else needs a login; changing
anything needs the manager role; raw sensor data needs the technician role.
These dependencies sit on the routers, so they run before the route's own
query and body validation: without login a protected route answers 401 (or
403 for the wrong role), never a redirect and never a 422 first.
"""

from __future__ import annotations

import hmac
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Header, HTTPException, Request, status
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute

from api.alerts import AlertBook
from api.auth import LoginLimiter, Session, SessionSigner, User, UserStore
from api.disk_status import JournalDisk
from api.journal import JournalReader
from api.judging import ZoneJudging
from api.live import LiveHub
from api.outbox_status import OutboxStatusReader
from api.settings import ApiSettings
from api.sitecheck import SiteCheck
from gateway.readside import LiveView

SESSION_COOKIE = "parkguide_session"
"""the session cookie's name, before the site id (:func:`session_cookie`)"""


def session_cookie(site_id: str) -> str:
    """The session cookie of one site's dashboard. Cookies are not kept apart by port
    (RFC 6265 8.5): two sites' dashboards on one host shared one cookie, and logging in
    to one logged the manager out of the other. A site id's ``:`` (not allowed in a
    cookie name) becomes ``-``."""
    return f"{SESSION_COOKIE}_{re.sub(r'[^A-Za-z0-9_.-]', '-', site_id)}"


@dataclass
class ApiContext:
    view: LiveView
    settings: ApiSettings
    users: UserStore | None
    signer: SessionSigner
    limiter: LoginLimiter
    journal: JournalReader
    alerts: AlertBook
    hub: LiveHub
    site_map: Any = None  # the /site answer, built once: the site never changes
    site_check: SiteCheck | None = None  # is the gateway's site file ours? (None: not asked)
    cookie: str = SESSION_COOKIE  # the session cookie's name: session_cookie(site id)
    outbox_status: OutboxStatusReader | None = None  # the InfluxDB writer's, from the journal
    journal_disk: JournalDisk | None = None  # free space where the journal grows
    judging: ZoneJudging = field(default_factory=ZoneJudging)  # stand-alone API's actions


def get_ctx(request: Request) -> ApiContext:
    return request.app.state.ctx


Ctx = Annotated[ApiContext, Depends(get_ctx)]


def _bearer(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


def session_of(request: Request, ctx: Ctx) -> Session | None:
    """The request's valid session token (bearer or cookie), or None."""
    token = _bearer(request) or request.cookies.get(ctx.cookie)
    return ctx.signer.verify(token) if token else None


def current_user(request: Request, ctx: Ctx) -> User | None:
    """The logged-in user, or None (a bad, expired or ended session counts as no login)."""
    if ctx.users is None:
        return None
    session = session_of(request, ctx)
    return ctx.users.session_user(session) if session else None


OptionalUser = Annotated[User | None, Depends(current_user)]


def logged_in(user: User | None) -> User:
    """``user``, or 401 when there is none."""
    if user is None:
        raise HTTPException(
            status.HTTP_401_UNAUTHORIZED,
            "login required: POST /api/v1/auth/login, then send the session cookie or a bearer token",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return user


PAGE_USER_HEADER = "X-Parkguide-User"
"""The user a dashboard page shows, sent with its changes: one browser shares one session
cookie between its tabs, and a tab still showing alice acted as bob once he logged in in
another one (the journal named bob for alice's action)."""

PAGE_USER_409 = f"`{PAGE_USER_HEADER}` names another user than the session's (`detail` only)"
"""That 409, as each route's documented 409 names it among its others."""

SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})

PageUser = Annotated[
    str | None,
    Header(
        alias=PAGE_USER_HEADER,
        description="the user the page shows; when the session is another user's, 409 and "
        "nothing changes (left out: no check)",
    ),
]
"""The header documented on the routes that change something (:func:`require_login` checks
it on every one)."""


def require_login(request: Request, user: OptionalUser) -> User:
    user = logged_in(user)
    shown = request.headers.get(PAGE_USER_HEADER)
    if shown is not None and request.method not in SAFE_METHODS and shown != user.name:
        raise HTTPException(
            status.HTTP_409_CONFLICT,
            f"this browser is now logged in as {user.name}, not {shown[:64]}: reload the page"
            " (nothing changed)",
        )
    return user


LoggedIn = Annotated[User, Depends(require_login)]


def require_manager(user: LoggedIn) -> User:
    if not user.can_change:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"changing anything needs the manager role (you are {user.role})",
        )
    return user


def require_technician(user: LoggedIn) -> User:
    if not user.can_read_raw:
        raise HTTPException(
            status.HTTP_403_FORBIDDEN,
            f"raw sensor data needs the technician role (you are {user.role})",
        )
    return user


Manager = Annotated[User, Depends(require_manager)]
Technician = Annotated[User, Depends(require_technician)]


def public_or_login(ctx: Ctx, user: OptionalUser) -> User | None:
    """Zone counts and signs: public unless configured to need login."""
    if user is None and not ctx.settings.public_read:
        logged_in(None)
    return user


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route reads, its dependencies' included."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def single_valued_query(request: Request) -> None:
    """Refuse a declared query parameter given more than once (``?zone=A&zone=B``):
    every parameter of this API takes one value, and FastAPI would silently use the
    last. It sits after the access check on each router, so a protected route still
    answers 401 first; unknown parameters stay ignored, repeated or not."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _query_names(route.dependant)
    counts = Counter(k for k, _ in request.query_params.multi_items() if k in declared)
    repeated = sorted(k for k, n in counts.items() if n > 1)
    if repeated:
        raise RequestValidationError(
            [
                {
                    "type": "repeated",
                    "loc": ("query", k),
                    "msg": f"{k} given {counts[k]} times: this parameter takes one value",
                }
                for k in repeated
            ]
        )


def guarded(access: Any) -> list[Any]:
    """A router's dependencies: ``access`` first, then :func:`single_valued_query`."""
    return [Depends(access), Depends(single_valued_query)]


def metrics_access(request: Request, ctx: Ctx, user: OptionalUser) -> None:
    """/metrics: a logged-in user, or the scraper's bearer token from PARKGUIDE_METRICS_TOKEN."""
    if user is not None:
        return
    expected = ctx.settings.metrics_token
    token = _bearer(request)
    if expected and token and hmac.compare_digest(token, expected.get_secret_value()):
        return
    logged_in(None)
