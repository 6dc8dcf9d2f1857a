# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""A login whose session cookie the browser refuses, in Debian's chromium (headless, via
Playwright, as test_dashboard_browser) against the app served by uvicorn over plain HTTP with
``PARKGUIDE_COOKIE_SECURE=true`` (api_support).

Defect: the API logged "user manager (manager) logged in" and answered 200, chromium dropped
the Secure cookie that came over plain HTTP, and the page stayed on its login form without a
word, after a reload too. The page now says why; the API warns (once a minute) in its log.

Chromium keeps Secure cookies from localhost and 127.0.0.1, so the page is opened under a
name (``parkguide.test``) that chromium's own resolver maps to 127.0.0.1.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
from api_support import PASSWORD, harness, served, users  # noqa: F401
from playwright.sync_api import Browser
from test_dashboard_browser import chromium, wait_until, watch_errors

from api.routes import session
from api.routes.session import secure_cookie_dropped

pytestmark = pytest.mark.timeout(150)

HOST = "parkguide.test"
WARNING = "PARKGUIDE_COOKIE_SECURE=true"


@pytest.fixture(scope="module")
def url(harness, users) -> Iterator[str]:
    harness.fill()
    with served(harness, cookie_secure=True) as url:
        yield url.replace("127.0.0.1", HOST)


@pytest.fixture(scope="module")
def named_browser() -> Iterator[Browser]:
    with chromium(f"--host-resolver-rules=MAP {HOST} 127.0.0.1") as b:
        yield b


def test_a_refused_session_cookie_is_said_on_the_page_and_in_the_log(
    named_browser, url, monkeypatch, caplog
):
    # as in a fresh process (another test's login may have warned within the minute)
    monkeypatch.setattr(session, "_insecure_cookie_warned", float("-inf"), raising=False)
    caplog.set_level(logging.INFO, logger="api.routes.session")
    context = named_browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB")
    page = context.new_page()
    errors = watch_errors(page)
    page.goto(url)
    assert not page.evaluate("window.isSecureContext")  # else chromium would keep the cookie

    def log_in() -> str:
        page.wait_for_selector("#login-box:not([hidden])")
        page.fill("#login input[name=name]", "manager")
        page.fill("#login input[name=password]", PASSWORD)
        page.click("#login button[type=submit]")
        wait_until(lambda: page.text_content("#login-msg"), 5000, "the login's message")
        return page.text_content("#login-msg") or ""

    msg = log_in()
    assert msg == (
        "Logged in, but the browser refused the session cookie: with "
        "PARKGUIDE_COOKIE_SECURE=true the dashboard must be opened over HTTPS."
    )
    assert context.cookies() == []
    assert page.is_visible("#login-box") and not page.is_visible("#who")
    # the same in Chinese, after a reload; the API's warning is not repeated within the minute
    page.click("#lang")
    page.reload()
    msg = log_in()
    assert "浏览器拒收了会话 Cookie" in msg and "HTTPS" in msg, msg
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and WARNING in r.message]
    assert len(warnings) == 1, [r.message for r in caplog.records]
    assert f"http://{HOST}:" in warnings[0].message
    assert sum("logged in" in r.message for r in caplog.records) == 2
    assert errors == []
    context.close()


def test_which_secure_cookies_the_browser_drops():
    assert secure_cookie_dropped(True, "http", "http://parkguide.test:8000")
    assert secure_cookie_dropped(True, "http", "http://192.0.2.2:8000")
    # over HTTPS, as uvicorn saw it or as the page says (a TLS proxy without X-Forwarded-Proto)
    assert not secure_cookie_dropped(True, "https", "http://parkguide.test")
    assert not secure_cookie_dropped(True, "http", "https://parkguide.example.org")
    # browsers keep Secure cookies from localhost; not Secure; no Origin (a script, curl)
    for origin in ("http://localhost:8000", "http://127.0.0.1:8000", "http://[::1]:8000"):
        assert not secure_cookie_dropped(True, "http", origin)
    assert not secure_cookie_dropped(False, "http", "http://parkguide.test")
    assert not secure_cookie_dropped(True, "http", None)
