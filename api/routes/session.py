"""Login, logout and who am I."""

from __future__ import annotations

import ipaddress
import logging
import math
import time
from urllib.parse import urlsplit

from fastapi import APIRouter, Depends, HTTPException, Request, Response, status

from api.auth import User, VerifierBusy
from api.deps import Ctx, OptionalUser, session_of, single_valued_query
from api.models import ErrorOut, LoginOut, LoginRequest, SessionOut, UserOut

log = logging.getLogger(__name__)
router = APIRouter(
    prefix="/api/v1/auth", tags=["session"], dependencies=[Depends(single_valued_query)]
)

VERIFY_WAIT_S = 2.0
"""How long a login waits for a password-check slot before it answers 503 (see
``api.auth.MAX_CONCURRENT_VERIFICATIONS``)."""


class _RateLimitedLog:
    """One warning a minute about refused logins, with how many there were (an attack must not
    flood the log)."""

    def __init__(self, every_s: float = 60.0):
        self.every_s = every_s
        self.last = -every_s
        self.count = 0

    def hit(self, name: str, client: str) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self.last >= self.every_s:
            log.warning(
                "login rate limit: refused %d attempt(s) in the last minute, latest for user %r "
                "from %s",
                self.count,
                name[:32],
                client,
            )
            self.last, self.count = now, 0


_rate_limited_log = _RateLimitedLog()

INSECURE_COOKIE_WARN_S = 60.0
"""At most one warning a minute that a Secure session cookie went to a page on plain HTTP."""
_insecure_cookie_warned = -INSECURE_COOKIE_WARN_S


def secure_cookie_dropped(secure: bool, scheme: str, origin: str | None) -> bool:
    """Whether the browser will throw the session cookie away: it is Secure, the request did not
    come over HTTPS (``scheme``, as uvicorn derived it from the proxy headers it trusts) and the
    page that sent it is on plain HTTP (its Origin; a TLS proxy that sends no
    X-Forwarded-Proto still shows https there). Browsers keep Secure cookies from localhost."""
    if not secure or scheme == "https" or origin is None:
        return False
    parts = urlsplit(origin)
    if parts.scheme != "http":
        return False
    host = parts.hostname or ""
    if host == "localhost" or host.endswith(".localhost"):
        return False
    try:
        return not ipaddress.ip_address(host).is_loopback
    except ValueError:
        return True


def _warn_secure_cookie_dropped(origin: str) -> None:
    """The browser says nothing to the server when it drops a cookie: the login answers 200
    and the next request is not logged in. Said here, once a minute."""
    global _insecure_cookie_warned
    now = time.monotonic()
    if now - _insecure_cookie_warned < INSECURE_COOKIE_WARN_S:
        return
    _insecure_cookie_warned = now
    log.warning(
        "a login from a page on plain HTTP (%s) got a Secure session cookie "
        "(PARKGUIDE_COOKIE_SECURE=true): the browser drops it, so the login does not hold. "
        "Reach the dashboard over HTTPS, or set PARKGUIDE_COOKIE_SECURE=auto",
        origin[:100],
    )


def user_out(user: User) -> UserOut:
    return UserOut(
        name=user.name,
        role=user.role,
        can_change=user.can_change,
        can_read_raw=user.can_read_raw,
        can_read_plates=user.can_read_plates,
    )


@router.post(
    "/login",
    responses={
        400: {"model": ErrorOut, "description": "the body is not readable JSON text"},
        401: {"model": ErrorOut, "description": "wrong user name or password"},
        403: {"model": ErrorOut, "description": "sent by a page of another origin"},
        413: {"model": ErrorOut, "description": "the body is too large"},
        429: {"model": ErrorOut, "description": "too many attempts; see Retry-After"},
        503: {"model": ErrorOut, "description": "too many logins at once; see Retry-After"},
    },
)
def login(body: LoginRequest, request: Request, response: Response, ctx: Ctx) -> LoginOut:
    """Check a user name and password; sets an HttpOnly session cookie and returns a bearer token."""
    client = request.client.host if request.client else "?"
    wait = ctx.limiter.check(body.name, client)
    if wait > 0:
        _rate_limited_log.hit(body.name, client)
        raise HTTPException(
            status.HTTP_429_TOO_MANY_REQUESTS,
            f"too many login attempts; try again in {math.ceil(wait)} s",
            headers={"Retry-After": str(math.ceil(wait))},
        )
    # check() holds one of this user's failures until we say how the attempt ended
    try:
        user = (
            ctx.users.authenticate(body.name, body.password, wait_s=VERIFY_WAIT_S)
            if ctx.users
            else None
        )
    except VerifierBusy:
        ctx.limiter.release(body.name, client)
        _rate_limited_log.hit(body.name, client)
        raise HTTPException(
            status.HTTP_503_SERVICE_UNAVAILABLE,
            "too many logins are being checked at once; try again in a second",
            headers={"Retry-After": "1"},
        ) from None
    except BaseException:
        ctx.limiter.release(body.name, client)
        raise
    if user is None:
        ctx.limiter.failed(body.name, client)
        log.info("failed login for %r from %s", body.name[:64], client)
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "wrong user name or password")
    ctx.limiter.succeeded(body.name, client)
    token, expires = ctx.signer.issue(
        user.name, ctx.settings.session_ttl_s, generation=user.generation
    )
    https = request.url.scheme == "https"  # as uvicorn derived it from trusted proxy headers
    secure = https if ctx.settings.cookie_secure == "auto" else ctx.settings.cookie_secure
    origin = request.headers.get("origin")
    if secure_cookie_dropped(secure, request.url.scheme, origin):
        _warn_secure_cookie_dropped(origin or "")
    response.set_cookie(
        ctx.cookie,
        token,
        max_age=int(ctx.settings.session_ttl_s),
        httponly=True,
        samesite="strict",
        secure=secure,
        path="/",
    )
    log.info("user %s (%s) logged in from %s", user.name, user.role, client)
    return LoginOut(**user_out(user).model_dump(), token=token, expires=expires)


@router.post(
    "/logout",
    status_code=204,
    response_model=None,  # FastAPI before 0.117 takes "-> None" for a body a 204 must not have
    responses={403: {"model": ErrorOut, "description": "sent by a page of another origin"}},
)
def logout(request: Request, response: Response, ctx: Ctx) -> None:
    """End this session: its token no longer counts anywhere (cookie or bearer), and the
    cookie is cleared."""
    session = session_of(request, ctx)
    if session is not None and ctx.users is not None:
        ctx.users.revoke(session)
    response.delete_cookie(ctx.cookie, path="/", httponly=True, samesite="strict")


@router.get("/me")
def me(user: OptionalUser, ctx: Ctx) -> SessionOut:
    """Who is logged in (null when nobody), and whether counts and signs are public."""
    site = ctx.view.site
    return SessionOut(
        user=user_out(user) if user else None,
        site=site.id,
        site_name=site.name,
        timezone=site.timezone,
        public_read=ctx.settings.public_read,
    )
