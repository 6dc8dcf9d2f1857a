# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""A manager closes and opens a whole zone from the dashboard's zone cards, in Debian's
chromium (headless, via Playwright) against the app served by uvicorn on a real gateway state
and journal (api_support, as test_dashboard_zh): the card says who closed it and why, the
answer says which spaces stayed closed and whose they are, the sign reads CLOSED, and the
events list says the changes came with the zone."""

from __future__ import annotations

import pytest
from api_support import PASSWORD, harness, served, users  # noqa: F401
from playwright.sync_api import Browser, Page
from test_dashboard_browser import browser, wait_until, watch_errors  # noqa: F401

pytestmark = pytest.mark.timeout(150)


@pytest.fixture(scope="module")
def url(harness, users):
    harness.fill()
    with served(harness) as url:
        yield url


def page_as(browser: Browser, url: str, user: str) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB").new_page()
    page.goto(url)
    page.fill("#login input[name=name]", user)
    page.fill("#login input[name=password]", PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_selector('#map[data-loaded="true"]')
    return page


def text(page: Page, selector: str) -> str:
    return page.text_content(selector) or ""


def test_a_manager_closes_and_opens_a_zone_from_its_card(browser, url, harness):
    harness.gateway.control_space("D-002", "close", "bob", "pothole")
    page = page_as(browser, url, "manager")
    errors = watch_errors(page)
    card = page.locator('#zones .zone[data-zone="D"]')
    card.locator("button.zone-act").click()
    assert page.is_visible("#zone-panel")
    assert "Zone D" in text(page, "#zn-id")
    page.fill("#zn-reason", "cleaning")
    page.click("#zn-close")
    wait_until(lambda: "spaces closed" in text(page, "#zn-msg"), 5000, "the close's answer")
    msg = text(page, "#zn-msg")
    assert msg.startswith("Zone D Shared: 29 spaces closed"), msg
    assert "still closed (closed on their own): D-002 (bob: pothole)" in msg
    wait_until(
        lambda: "zone closed by manager: cleaning" in (card.text_content() or ""),
        5000,
        "the card's closure",
    )
    # every space of D closed (D-002 on its own): the card says so, as the signs do
    wait_until(lambda: card.locator("div.free").text_content() == "CLOSED", 5000, "card CLOSED")
    sign = page.locator('#signs .sign[data-display="jct-r1"]')
    wait_until(lambda: "关闭 CLOSED" in (sign.text_content() or ""), 5000, "the sign's CLOSED")
    page.click("#event-filter button[type=submit]")
    wait_until(lambda: "with Zone D Shared" in text(page, "#events tbody"), 5000, "the events")

    # a viewer sees the closure, but no way to change it
    viewer = page_as(browser, url, "viewer")
    vcard = viewer.locator('#zones .zone[data-zone="D"]')
    wait_until(lambda: "zone closed by manager" in (vcard.text_content() or ""), 5000, "viewer")
    assert vcard.locator("button.zone-act").count() == 0
    # another manager gives the closure a new reason: no count moves, the cards follow
    harness.gateway.control_zone("D", "close", "bob", "snow until 18:00")
    for c in (vcard, card):
        wait_until(
            lambda c=c: "zone closed by bob: snow until 18:00" in (c.text_content() or ""),
            5000,
            "the new reason",
        )
    viewer.context.close()

    page.click("#zn-open")
    wait_until(lambda: "spaces opened" in text(page, "#zn-msg"), 5000, "the open's answer")
    assert text(page, "#zn-msg").startswith("Zone D Shared: 29 spaces opened")
    wait_until(lambda: "zone closed by" not in (card.text_content() or ""), 5000, "card cleared")
    page.click("#zn-open")  # again: nothing to open, said as the server says it
    wait_until(lambda: "zone D is not closed" in text(page, "#zn-msg"), 5000, "the 409")
    assert not errors, errors
    page.context.close()
    harness.gateway.control_space("D-002", "open", "bob", None)


def test_no_anyway_button_that_can_only_fail(browser, url, harness):
    """A 409 of an open whose zone is no longer closed offered "Open anyway" (a second no-op
    409), and one of a close of a closed zone without a reason "Close anyway" (a reason-less
    close: 409 again). Now the open says there is nothing to do, and the close waits for a
    reason before its button does anything."""
    page = page_as(browser, url, "manager")
    errors = watch_errors(page)
    page.locator('#zones .zone[data-zone="E"]').locator("button.zone-act").click()
    # the page believes bob closed it; someone opened it meanwhile
    page.evaluate('controlZone("open", "bob")')
    wait_until(lambda: "nothing to do" in text(page, "#zn-msg"), 5000, "the open's 409")
    assert "is already open: nothing to do" in text(page, "#zn-msg")
    assert page.locator("#zn-msg button.anyway").count() == 0

    harness.gateway.control_zone("E", "close", "bob", "snow")
    page.fill("#zn-reason", "")
    page.evaluate('controlZone("close", null)')  # the page believed it open
    wait_until(lambda: "closed by bob" in text(page, "#zn-msg"), 5000, "the close's 409")
    assert "type your reason, then close anyway" in text(page, "#zn-msg")
    go = page.locator("#zn-msg button.anyway")
    assert go.is_disabled()
    page.fill("#zn-reason", "market")
    assert go.is_enabled()
    go.click()
    wait_until(lambda: "closed by bob" not in text(page, "#zn-msg"), 5000, "the close's answer")
    assert harness.gateway.control_zone("E", "open", "manager", None).closure.reason == "market"
    assert not errors, errors
