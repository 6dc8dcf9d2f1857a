# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""The dashboard over a stream cap, in Debian's chromium (headless, via Playwright, as
test_dashboard_browser) against the app served by uvicorn on a real gateway state and journal
(api_support; no broker needed), the login's other streams held by raw HTTP clients.

Defect: a login with PARKGUIDE_STREAMS_PER_USER streams open (9 lobby screens sharing one
viewer login) got a dashboard saying only "reconnecting", for ever: the reason was in the 429's
body, which EventSource cannot read, and the page ignored its ``Retry-After``, starting again
(the session and the stream: a burst of API calls) every 2 s. Then each of its tries was
refused twice, the stream's and its look at why (a second stream asked for), and counted twice
in parkguide_streams_refused_total.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest
from api_support import PASSWORD, ServerThread, harness, settings, users  # noqa: F401
from conftest import eventually, free_port
from playwright.sync_api import Browser, Page
from test_api_live import _Held
from test_dashboard_browser import browser, wait_until, watch_errors  # noqa: F401

from api.app import create_app
from api.routes import stream as stream_route

pytestmark = pytest.mark.timeout(150)

CAP = 2
RETRY_S = 8  # the server's Retry-After here (30 in the product): the page must wait it out


@pytest.fixture
def served_capped(harness, users, monkeypatch):
    """The app with ``CAP`` streams per login and a short Retry-After: (url, hub)."""
    monkeypatch.setattr(stream_route, "STREAM_RETRY_S", RETRY_S)
    harness.fill()
    app = create_app(harness.gateway, settings(streams_per_user=CAP), db_path=str(harness.db_path))
    with ServerThread(app, free_port()) as srv:
        yield srv.url, app.state.ctx.hub


def held_streams(url: str, c: httpx.Client, user: str, n: int) -> list[_Held]:
    """``n`` live streams of ``user`` opened and left open (another session each)."""
    held = []
    for _ in range(n):
        r = c.post(f"{url}/api/v1/auth/login", json={"name": user, "password": PASSWORD})
        held.append(
            _Held(c, f"{url}/api/v1/stream", {"Authorization": f"Bearer {r.json()['token']}"})
        )
        assert held[-1].response.status_code == 200
    return held


def open_logged_in(browser: Browser, url: str, locale: str, log: list[tuple[float, str]]) -> Page:
    """A page logged in as the viewer, its requests to the API logged (time, path)."""
    page = browser.new_context(viewport={"width": 1280, "height": 900}, locale=locale).new_page()
    page.on(
        "request",
        lambda r: "/api/" in r.url and log.append((time.monotonic(), r.url.split("?")[0])),
    )
    page.goto(url)
    page.wait_for_selector("#live.on")  # the anonymous stream: counts are public
    page.fill("#login input[name=name]", "viewer")
    page.fill("#login input[name=password]", PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_selector("#who:not([hidden])")
    return page


def stale_note(page: Page) -> str:
    return page.locator("#signs-box .stale-note").text_content() or ""


def seconds_left(text: str) -> int:
    """The seconds to the next try that a refusal's text shows (en or zh)."""
    found = re.search(r"trying again in (\d+) s|(\d+) 秒后再试", text)
    assert found, text
    return int(found[1] or found[2])


def test_the_page_says_why_it_is_over_the_cap_and_waits_retry_after(browser, served_capped):
    url, hub = served_capped
    en_log: list[tuple[float, str]] = []
    zh_log: list[tuple[float, str]] = []
    with httpx.Client(timeout=10) as c:
        held = held_streams(url, c, "viewer", CAP)
        try:
            en = open_logged_in(browser, url, "en-GB", en_log)
            zh = open_logged_in(browser, url, "zh-CN", zh_log)
            errors = watch_errors(en) + watch_errors(zh)
            refused_at = time.monotonic()

            # the badge says why at once (in full in its title); the stale note once stale
            wait_until(lambda: en.text_content("#live") == "too many open", 5000, "the en badge")
            wait_until(lambda: zh.text_content("#live") == "连接已满", 5000, "the zh badge")
            title = en.get_attribute("#live", "title") or ""
            assert "this login has the most live connections" in title
            assert "close a dashboard tab or screen" in title
            # the wait shown counts down to the try, each second (not drawn once and left)
            before = [seconds_left(p.get_attribute("#live", "title") or "") for p in (en, zh)]
            assert all(0 < s <= RETRY_S for s in before), before
            en.wait_for_timeout(2100)
            after = [seconds_left(p.get_attribute("#live", "title") or "") for p in (en, zh)]
            assert all(a < b for a, b in zip(after, before, strict=True)), (before, after)
            wait_until(lambda: "close a dashboard tab or screen" in stale_note(en), 8000, "en note")
            assert stale_note(en).startswith("not live since ")
            assert 0 <= seconds_left(stale_note(en)) < RETRY_S
            wait_until(lambda: "请关闭一个看板标签页或屏幕" in stale_note(zh), 8000, "zh note")
            assert stale_note(zh).startswith("非实时：自 ")

            # no retry before Retry-After: one refused stream and the one look at why
            while time.monotonic() < refused_at + RETRY_S - 1.5:
                en.wait_for_timeout(100)  # Playwright hands on the requests while it waits only
            for log in (en_log, zh_log):
                login = min(at for at, path in log if path.endswith("/auth/login"))
                first = min(at for at, path in log if at > login and path.endswith("/stream"))
                # each page's own wait, from its own refusal (the en page was refused before
                # the zh page opened: a second or more apart on a loaded machine)
                until = first + RETRY_S - 1.5
                since = [path for at, path in log if first <= at < until]
                assert since.count(f"{url}/api/v1/stream") == 2, since
                # nothing else (no session or snapshot reloads per try)
                assert len(since) == 2, since
            assert hub.streams_of("viewer") == CAP
            # one refusal per page's try: the look at why (the same path, ?probe=true) is a
            # probe, not counted again. On a loaded machine the en page, refused a second or
            # more before the zh page opened, may have made its next try by now: count the
            # tries (each followed by its probe), not 2
            tries = 0
            for log in (en_log, zh_log):
                login = min(at for at, path in log if path.endswith("/auth/login"))
                first = min(at for at, path in log if at > login and path.endswith("/stream"))
                asked = sum(at >= first and path == f"{url}/api/v1/stream" for at, path in log)
                tries += (asked + 1) // 2
            assert tries >= 2 and hub.refused["per_user"] == tries

            # a place freed: the page goes live again at its next try, with its reason gone
            held.pop().close()
            held.pop().close()
            for page in (en, zh):
                wait_until(lambda p=page: p.get_attribute("#live", "class") == "live on",
                           (RETRY_S + 8) * 1000, "live again")  # fmt: skip
            wait_until(lambda: en.locator("#signs-box .stale-note").is_hidden(), 10000, "no note")
            assert en.text_content("#live") == "live" and not en.get_attribute("#live", "title")
            assert zh.text_content("#live") == "实时"
            assert eventually(lambda: hub.streams_of("viewer") == 2, timeout=5)

            # the look at why holds no place, even when a place is free (a probe opens none)
            zh.context.close()
            assert eventually(lambda: hub.streams_of("viewer") == 1, timeout=5)
            assert en.evaluate("streamRefusal().then((r) => r.status)") == 204
            assert eventually(lambda: hub.streams_of("viewer") == 1, timeout=5)
            en.wait_for_timeout(500)
            assert hub.streams_of("viewer") == 1
            assert not errors
        finally:
            for s in held:
                s.close()
