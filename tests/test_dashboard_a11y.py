# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""The dashboard by keyboard, by screen reader, on a phone and without colour, in Debian's
chromium (headless, via Playwright, as test_dashboard_browser) against the app served by
uvicorn on a real gateway state and journal (api_support; no broker needed).

Defects: the map was the only way to a space and no keyboard or screen reader could use it
(bays neither focusable nor named, the map an image); on a phone a tapped bay's panel opened
below the map, out of sight; the Reason typed for one space went with the next space's
action; the map told states by colour alone (free and occupied alike under deuteranopia);
the history chart was an unnamed image, its lines told apart by colour only, its text 5 px on
a phone and its range buttons not saying which was on; white text on the free, unknown and
live chips and the grey "--" of a zone card were below the contrast minimums; nothing told a
screen reader the page had stopped being live, and after a keyboard login focus was on BODY.
"""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest
from api_support import PASSWORD, ServerThread, harness, served, settings, users  # noqa: F401
from conftest import free_port
from playwright.sync_api import Browser, Page
from test_dashboard_browser import browser, wait_until, watch_errors  # noqa: F401

from api.app import create_app

pytestmark = pytest.mark.timeout(150)

OCCUPIED = {"A-002", "A-004", "B-001", "B1-E-001"}
PHONE = {"width": 360, "height": 740}
DESKTOP = {"width": 1280, "height": 900}

# WCAG 2 contrast ratio of an element's text on the first opaque background behind it
CONTRAST = r"""(sel) => {
  const e = document.querySelector(sel);
  if (!e) return null;
  const parse = (c) => { const m = c.match(/[\d.]+/g).map(Number); return [m[0], m[1], m[2], m.length > 3 ? m[3] : 1]; };
  const lum = ([r, g, b]) => { const f = (v) => { v /= 255; return v <= 0.03928 ? v / 12.92 : ((v + 0.055) / 1.055) ** 2.4; };
    return 0.2126 * f(r) + 0.7152 * f(g) + 0.0722 * f(b); };
  let b = e, bg = [255, 255, 255, 1];
  while (b) { const c = parse(getComputedStyle(b).backgroundColor); if (c[3] > 0.5) { bg = c; break; } b = b.parentElement; }
  const cs = getComputedStyle(e);
  const L1 = lum(parse(cs.color)), L2 = lum(bg);
  return { ratio: (Math.max(L1, L2) + 0.05) / (Math.min(L1, L2) + 0.05), size: parseFloat(cs.fontSize),
    weight: Number(cs.fontWeight) };
}"""


@pytest.fixture(scope="module")
def url(harness, users):
    # the buses report (some spaces occupied); the camera does not: zone C is all unknown
    for source in ("bus-g", "bus-b1"):
        spaces = harness.site.spaces_of_source(source)
        harness.report(
            source,
            {s: ("occupied" if s in OCCUPIED else "free") for s in spaces},
            kind="snapshot",
        )
    with served(harness) as url:
        yield url


def open_page(
    browser: Browser, url: str, user: str = "manager", viewport=DESKTOP, locale="en-GB", **ctx
) -> Page:
    page = browser.new_context(viewport=viewport, locale=locale, **ctx).new_page()
    page.goto(url)
    page.wait_for_selector("#live.on")
    if user:
        page.fill("#login input[name=name]", user)
        page.fill("#login input[name=password]", PASSWORD)
        page.click("#login button[type=submit]")
        page.wait_for_selector('#map[data-loaded="true"]')
    return page


def focused(page: Page, attr: str = "id") -> str | None:
    return page.evaluate(
        f"document.activeElement === document.body ? 'BODY' : "
        f"document.activeElement.getAttribute({attr!r})"
    )


def label_of(page: Page, space: str) -> str | None:
    return page.get_attribute(f'[data-space="{space}"]', "aria-label")


def test_a_space_is_reached_named_and_opened_by_keyboard(browser, url, harness):
    page = open_page(browser, url)
    errors = watch_errors(page)
    # each level's map is a named group of buttons, not an image
    assert page.get_attribute('#map svg[data-level="G"]', "role") == "group"
    assert page.get_attribute('#map svg[data-level="G"]', "aria-label") == "map: Ground"
    bays = page.locator("#map polygon[data-space]")
    assert bays.count() == len(harness.site.spaces)
    roles = page.evaluate(
        "[...document.querySelectorAll('#map polygon')].map(p => [p.getAttribute('role'), "
        "p.tabIndex >= -1 && p.hasAttribute('tabindex'), p.getAttribute('aria-label')])"
    )
    assert all(r == "button" and f for r, f, _ in roles), roles[:3]
    pattern = re.compile(r"[A-Z0-9-]+, (free|occupied|unknown|closed)")
    assert all(pattern.fullmatch(name or "") for _, _, name in roles), roles[:3]
    assert label_of(page, "A-001") == "A-001, free"
    assert label_of(page, "A-002") == "A-002, occupied"
    assert label_of(page, "C-001") == "C-001, unknown"

    # Tab from the control before the map: the map's first space (one stop per level)
    page.focus("#space-find button[type=submit]")
    page.keyboard.press("Tab")
    assert focused(page, "data-space") == "A-001"
    page.keyboard.press("Tab")
    assert focused(page, "data-space") == "B1-E-001"  # the next level's map, not A-002
    page.keyboard.press("Shift+Tab")
    page.keyboard.press("ArrowRight")  # the next space in the row
    assert focused(page, "data-space") == "A-002"
    page.keyboard.press("Enter")
    wait_until(lambda: page.text_content("#sp-id") == "A-002", 5000, "A-002's panel")
    assert page.is_visible("#space-panel")
    assert focused(page) == "sp-heading"
    assert "occupied" in (page.text_content("#sp-state") or "")
    # Escape: back on the map where it was; Space opens a space too
    page.keyboard.press("Escape")
    assert focused(page, "data-space") == "A-002"
    page.keyboard.press("ArrowLeft")
    page.keyboard.press(" ")
    wait_until(lambda: page.text_content("#sp-id") == "A-001", 5000, "A-001's panel")
    assert focused(page) == "sp-heading"
    # Shift+Tab back into the level lands on the space last used there
    page.focus("#space-find button[type=submit]")
    page.keyboard.press("Tab")
    assert focused(page, "data-space") == "A-001"

    # the name follows the state
    harness.report("bus-g", {"A-003": "occupied"})
    wait_until(lambda: label_of(page, "A-003") == "A-003, occupied", 5000, "A-003 renamed")
    harness.report("bus-g", {"A-003": "free"})
    wait_until(lambda: label_of(page, "A-003") == "A-003, free", 5000, "A-003 free again")

    # in Chinese: the names and the map's in Chinese too
    page.click("#lang")
    wait_until(lambda: label_of(page, "A-001") == "A-001，空闲", 5000, "the Chinese name")
    assert page.get_attribute('#map svg[data-level="G"]', "aria-label") == "地图：地面"
    assert page.text_content("#space-find button") == "查看"
    assert "方向键" in (page.text_content("#map-hint") or "")
    assert not errors, errors
    page.context.close()


def test_a_space_is_opened_by_its_id_without_the_map(browser, url):
    page = open_page(browser, url, user="viewer")
    errors = watch_errors(page)
    options = page.evaluate("[...document.querySelectorAll('#space-ids option')].length")
    assert options == page.locator("#map polygon").count()
    page.fill("#find-space", "b-001")  # as typed, in lower case
    page.press("#find-space", "Enter")
    wait_until(lambda: page.text_content("#sp-id") == "B-001", 5000, "B-001's panel")
    assert focused(page) == "sp-heading"
    assert page.text_content("#find-msg") == ""
    page.fill("#find-space", "Z-999")
    page.click("#space-find button[type=submit]")
    assert page.text_content("#find-msg") == 'no space "Z-999" on this site'
    assert page.text_content("#sp-id") == "B-001"  # still the last one found
    page.click("#lang")
    page.click("#space-find button[type=submit]")
    assert page.text_content("#find-msg") == "本场地没有车位“Z-999”"
    assert not errors, errors
    page.context.close()


def test_a_tapped_space_opens_its_panel_in_view_on_a_phone(browser, url):
    page = open_page(browser, url, viewport=PHONE, has_touch=True, is_mobile=True)
    errors = watch_errors(page)
    bay = page.locator('[data-space="A-010"]')
    bay.scroll_into_view_if_needed()
    box = bay.bounding_box()
    assert box and box["width"] < 10  # a few pixels wide: why the rest matters
    page.touchscreen.tap(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    wait_until(lambda: page.text_content("#sp-id") == "A-010", 5000, "A-010's panel")
    assert focused(page) == "sp-heading"
    head = page.locator("#sp-heading").bounding_box()
    assert head and head["y"] >= 0 and head["y"] + head["height"] <= PHONE["height"], head
    panel = page.locator("#space-panel").bounding_box()
    assert panel and panel["y"] + panel["height"] <= PHONE["height"] + 1, panel

    # a tap just beside a space (in the aisle) still opens it
    bay = page.locator('[data-space="A-020"]')
    bay.scroll_into_view_if_needed()
    box = bay.bounding_box()
    assert box
    x = box["x"] + box["width"] / 2
    spot = None
    for y in (box["y"] - 5, box["y"] + box["height"] + 5):  # above or below: the aisle side
        hit = page.evaluate(
            "([x, y]) => { const e = document.elementFromPoint(x, y); "
            "return e && (e.tagName === 'svg' || e.classList.contains('lane')); }",
            [x, y],
        )
        if hit:
            spot = y
            break
    assert spot is not None, box
    page.touchscreen.tap(x, spot)
    wait_until(lambda: page.text_content("#sp-id") == "A-020", 5000, "A-020's panel by a near tap")
    head = page.locator("#sp-heading").bounding_box()
    assert head and head["y"] >= 0 and head["y"] + head["height"] <= PHONE["height"], head
    assert not errors, errors
    page.context.close()


def last_event(url: str, page: Page, space: str) -> dict:
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    r = httpx.get(f"{url}/api/v1/events", params={"space": space, "limit": 1}, cookies=cookies)
    return r.json()["items"][0]


def test_a_reason_goes_with_its_own_action_only(browser, url):
    page = open_page(browser, url)
    errors = watch_errors(page)
    page.click('[data-space="B-010"]')
    page.fill("#sp-reason", "oil spill, cleaners booked")
    page.click("#sp-close")
    wait_until(lambda: "closed" in (page.text_content("#sp-msg") or ""), 5000, "closed")
    assert page.input_value("#sp-reason") == ""  # sent with that close; not kept for the next
    assert last_event(url, page, "B-010")["reason"] == "oil spill, cleaners booked"

    page.fill("#sp-reason", "typed, then another space chosen")
    page.click('[data-space="B-020"]')
    wait_until(lambda: page.text_content("#sp-id") == "B-020", 5000, "B-020's panel")
    assert page.input_value("#sp-reason") == ""
    page.click("#sp-close")
    wait_until(lambda: "closed" in (page.text_content("#sp-msg") or ""), 5000, "B-020 closed")
    assert not last_event(url, page, "B-020").get("reason")

    for space in ("B-010", "B-020"):  # as they were
        page.click(f'[data-space="{space}"]')
        wait_until(lambda s=space: page.text_content("#sp-id") == s, 5000, space)
        page.click("#sp-open")
        wait_until(lambda: "opened" in (page.text_content("#sp-msg") or ""), 5000, "opened")
    assert not errors, errors
    page.context.close()


def test_states_are_told_apart_without_colour(browser, url):
    page = open_page(browser, url)
    errors = watch_errors(page)
    page.click('[data-space="B-030"]')
    page.click("#sp-close")
    wait_until(
        lambda: page.get_attribute('[data-space="B-030"]', "data-state") == "closed", 5000, "closed"
    )
    fills = page.evaluate(
        "Object.fromEntries(['free', 'occupied', 'unknown', 'closed'].map(s => [s, "
        "getComputedStyle(document.querySelector(`#map polygon[data-state=${s}]`)).fill]))"
    )
    # occupied, unknown and closed are patterns (stripes, dots, cross-hatch) over their colour
    for state in ("occupied", "unknown", "closed"):
        assert fills[state].startswith("url("), fills
        assert f"pat-{state}" in fills[state], fills
        pat = page.locator(f"#pat-{state}")
        assert pat.count() == 1 and pat.locator(".pat-ink").count() >= 1
    assert fills["free"].startswith("rgb"), fills  # free: plain
    # the legend shows each state as the map draws it
    legend = page.evaluate(
        "Object.fromEntries(['free', 'occupied', 'unknown', 'closed'].map(s => [s, "
        "getComputedStyle(document.querySelector(`.legend .swatch [data-state=${s}]`)).fill]))"
    )
    assert legend == fills, (legend, fills)
    page.click("#sp-open")
    wait_until(lambda: "opened" in (page.text_content("#sp-msg") or ""), 5000, "opened")
    assert not errors, errors
    page.context.close()


def history(hours: int = 24) -> dict:
    end = time.time()
    step = 900
    start = end - hours * 3600

    def points(base: int) -> list[dict]:
        return [
            {"ts": start + i * step, "free": 80 - (base + i % 10), "occupied": base + i % 10,
             "unknown": 0, "closed": 0, "total": 80}
            for i in range(hours * 4 + 1)
        ]  # fmt: skip

    series = [
        {"zone": "A", "name": {"zh": "A区", "en": "Zone A"}, "points": points(40)},
        {"zone": "B", "name": {"zh": "B区", "en": "Zone B"}, "points": points(20)},
    ]
    return {"start": start, "end": end, "step": step, "series": series}


def test_the_chart_is_named_keyed_without_colour_and_readable_on_a_phone(browser, url):
    page = browser.new_context(viewport=PHONE, locale="en-GB").new_page()
    errors = watch_errors(page)
    page.route("**/api/v1/history?*", lambda route: route.fulfill(json=history()))
    page.goto(url)
    page.fill("#login input[name=name]", "viewer")
    page.fill("#login input[name=password]", PASSWORD)
    page.click("#login button[type=submit]")
    page.wait_for_selector('#chart polyline[data-zone="B"]', state="attached")
    last = [40 + 96 % 10, 20 + 96 % 10]  # the newest point's occupied, of 80
    label = page.get_attribute("#chart svg", "aria-label") or ""
    assert label == (
        f"occupancy, last 24 h: Zone A {int(100 * last[0] / 80 + 0.5)}%, "
        f"Zone B {int(100 * last[1] / 80 + 0.5)}%"
    ), label
    # the lines differ by their dashes too, and the legend shows each line's
    dashes = [
        page.evaluate(
            f"getComputedStyle(document.querySelector('#chart polyline[data-zone=\"{z}\"]'))"
            ".strokeDasharray"
        )
        for z in "AB"
    ]
    keys = [
        page.evaluate(
            f"getComputedStyle(document.querySelector('.chart-legend [data-zone=\"{z}\"] line'))"
            ".strokeDasharray"
        )
        for z in "AB"
    ]
    assert dashes[0] != dashes[1] and keys == dashes, (dashes, keys)
    # its text at least 11 px on a 360 px screen
    sizes = page.evaluate(
        "[...document.querySelectorAll('#chart svg text')].map(t => "
        "t.getScreenCTM().a * parseFloat(getComputedStyle(t).fontSize))"
    )
    assert sizes and min(sizes) >= 10.99, sizes
    assert page.evaluate("document.documentElement.scrollWidth") <= PHONE["width"]

    # the range buttons say which is on, and look it
    buttons = page.locator("[data-range]")
    pressed = lambda: [b.get_attribute("aria-pressed") for b in buttons.all()]  # noqa: E731
    assert pressed() == ["true", "false"]
    look = lambda: [  # noqa: E731
        b.evaluate("e => getComputedStyle(e).backgroundColor") for b in buttons.all()
    ]
    on, off = look()
    assert on != off
    page.route("**/api/v1/history?*", lambda route: route.fulfill(json=history(7 * 24)))
    buttons.nth(1).click()
    assert pressed() == ["false", "true"]
    assert look() == [off, on]
    wait_until(
        lambda: "last 7 days" in (page.get_attribute("#chart svg", "aria-label") or ""),
        5000,
        "the week's summary",
    )
    page.click("#lang")
    wait_until(
        lambda: (page.get_attribute("#chart svg", "aria-label") or "").startswith(
            "占用率，最近7天：A区 "
        ),
        5000,
        "the summary in Chinese",
    )
    assert not errors, errors
    page.context.close()


def test_text_on_state_colours_has_enough_contrast(browser, url):
    page = open_page(browser, url)
    errors = watch_errors(page)
    page.wait_for_selector("#zones .zone .free.unknown")  # zone C: nothing known, "--"
    page.click('[data-space="A-001"]')  # a panel with a "free" chip
    wait_until(lambda: page.text_content("#sp-id") == "A-001", 5000, "A-001's panel")
    small = [
        ".legend .chip.free",
        ".legend .chip.occupied",
        ".legend .chip.unknown",
        ".legend .chip.closed",
        "#live.on",
        "#sp-state.chip.free",
    ]
    for sel in small:
        c = page.evaluate(CONTRAST, sel)
        assert c and c["ratio"] >= 4.5, (sel, c)
    c = page.evaluate(CONTRAST, "#zones .zone .free.unknown")  # large: 32 px bold
    assert c and c["size"] >= 24 and c["ratio"] >= 4.5, c
    for sel in ("#zones .zone .free:not(.unknown):not(.none)",):
        c = page.evaluate(CONTRAST, sel)
        assert c and c["ratio"] >= 3, (sel, c)
    assert not errors, errors
    page.context.close()


NOT_LIVE = re.compile(r"not live since \d\d:\d\d:\d\d")


def test_keyboard_login_focus_and_the_live_region(browser, url, harness):
    # a server of its own, to stop and start again (the stream lost, then back)
    port = free_port()
    app = lambda: create_app(harness.gateway, settings(), db_path=str(harness.db_path))  # noqa: E731
    server = ServerThread(app(), port).__enter__()
    ctx = browser.new_context(viewport=DESKTOP, locale="en-GB")
    page = ctx.new_page()
    errors = watch_errors(page)
    page.goto(server.url)
    page.wait_for_selector("#live.on")
    page.focus("#login input[name=name]")
    page.keyboard.type("manager")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    page.wait_for_selector('#map[data-loaded="true"]')
    wait_until(lambda: focused(page) != "BODY", 5000, "focus somewhere")
    assert focused(page) == "main-heading"

    region = "#announce"
    assert page.get_attribute(region, "aria-live") == "polite"
    assert page.text_content(region) == ""  # nothing said on the way in
    server.__exit__(None, None, None)  # the stream is lost, and stays lost
    page.wait_for_selector("#live.off", timeout=5000)
    assert page.text_content(region) == ""  # a blip is not news
    wait_until(
        lambda: NOT_LIVE.fullmatch(page.text_content(region) or ""), 10000, "'not live' said"
    )
    server = ServerThread(app(), port).__enter__()
    try:
        page.wait_for_selector("#live.on", timeout=15000)
        wait_until(lambda: page.text_content(region) == "live again", 10000, "'live again' said")
    finally:
        server.__exit__(None, None, None)
        ctx.close()
    assert not errors, errors


def test_logout_by_keyboard_leaves_focus_on_the_login(browser, url):
    page = open_page(browser, url)
    errors = watch_errors(page)

    # logged out with the keyboard: focus on the login form's heading
    page.focus("#logout")
    page.keyboard.press("Enter")
    page.wait_for_selector("#login-box:not([hidden])")
    wait_until(lambda: focused(page) == "login-heading", 5000, "focus on the login")
    assert not errors, errors
    page.context.close()


def test_zone_counts_are_said_at_most_every_30_s(browser, url, harness):
    ctx = browser.new_context(viewport=DESKTOP, locale="zh-CN")
    ctx.clock.install(time=time.time())
    ctx.clock.resume()
    page = ctx.new_page()
    errors = watch_errors(page)
    page.goto(url)
    page.wait_for_selector("#live.on")
    page.wait_for_selector('#zones .zone[data-zone="A"]')
    region = "#announce"
    free_a = {z["zone"]: z["free"] for z in httpx.get(f"{url}/api/v1/zones").json()}["A"]
    harness.report("bus-g", {"A-005": "occupied"})
    shown = f'#zones .zone[data-zone="A"] > .free[data-free="{free_a - 1}"]'
    page.wait_for_selector(shown)
    assert page.text_content(region) == ""  # not at once: one summary per 30 s at most
    harness.report("bus-g", {"A-006": "occupied"})  # another change within the 30 s
    page.wait_for_selector(f'#zones .zone[data-zone="A"] > .free[data-free="{free_a - 2}"]')
    ctx.clock.fast_forward("00:31")
    wait_until(lambda: page.text_content(region) == f"空位：A区 {free_a - 2}", 5000, "a summary")
    harness.report("bus-g", {"A-005": "free", "A-006": "free"})
    page.wait_for_selector(f'#zones .zone[data-zone="A"] > .free[data-free="{free_a}"]')
    time.sleep(0.5)
    assert page.text_content(region) == f"空位：A区 {free_a - 2}"  # not yet
    ctx.clock.fast_forward("00:31")
    wait_until(lambda: page.text_content(region) == f"空位：A区 {free_a}", 5000, "the next one")
    assert not errors, errors
    ctx.close()


def test_a_zone_card_says_what_the_signs_say(browser, url, harness):
    """A space held for a car just sent to it is not offered (the card said 3 free while the
    gate's sign said FULL), and "--" follows the site's fallback share of the spaces counted,
    as the signs do (half unknown is still a count on a sign; the card showed "--")."""
    from parking import topics

    page = open_page(browser, url, user=None)
    errors = watch_errors(page)
    card = '#zones .zone[data-zone="A"] > .free'
    page.wait_for_selector(card)
    zone_a = {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}["A"]
    free_a = zone_a["free"]
    assert zone_a["held"] == 0
    body = b'{"class": "resident", "request_id": "card-1"}'
    harness.gateway.handle(topics.arrival(harness.site.id, "north"), body)
    page.wait_for_selector(f'{card}[data-free="{free_a - 1}"]')
    zone_a = {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}["A"]
    assert (zone_a["free"], zone_a["held"], zone_a["offered"]) == (free_a, 1, free_a - 1)
    assert "held for an arriving car 1" in page.text_content('#zones .zone[data-zone="A"] .sub')
    (held,) = harness.gateway.core.holds
    space = harness.site.spaces[held].id
    harness.report("bus-g", {space: "occupied"})  # the car parks: no longer held, occupied
    page.wait_for_selector(f'{card}[data-free="{free_a - 1}"]')
    zone_a = {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}["A"]
    assert (zone_a["free"], zone_a["held"]) == (free_a - 1, 0)
    # exactly half of zone A unknown: the sign's line still counts (fraction 0.5, "more than")
    zone_spaces = [s.id for s in harness.site.spaces if s.zone == "A"]
    half = [s for s in zone_spaces if s not in OCCUPIED and s != space][: len(zone_spaces) // 2]
    harness.report("bus-g", dict.fromkeys(half, "unknown"))
    page.wait_for_function(
        f"() => document.querySelector('{card}').textContent !== '--'"
        f" && document.querySelector('{card}').dataset.free === String({free_a - 1 - len(half)})"
    )
    harness.report("bus-g", {**dict.fromkeys(half, "free"), space: "free"})  # as before
    # the car stood in it a moment only (under HOLD_SEEN_S): still held for its car, not
    # offered, until its gate cancels the arrival
    page.wait_for_function(
        f"() => document.querySelector('{card}').dataset.free === String({free_a - 1})"
    )
    zone_a = {z["zone"]: z for z in httpx.get(f"{url}/api/v1/zones").json()}["A"]
    assert (zone_a["free"], zone_a["held"]) == (free_a, 1)
    cancel = json.dumps({"request_id": "card-1", "ts": time.time()}).encode()
    harness.gateway.handle(topics.arrival_cancel(harness.site.id, "north"), cancel)
    page.wait_for_selector(f'{card}[data-free="{free_a}"]')
    assert not errors, errors
    page.context.close()


def test_an_agent_never_heard_is_said_never_seen_not_offline(browser, url):
    """The camera agent of the site file never connected (a unit not started, wrong broker
    credentials): the health table says so, in both languages, rather than "offline"."""
    for locale, want in (("en-GB", "never seen"), ("zh-CN", "从未连接")):
        page = open_page(browser, url, locale=locale)
        row = page.locator("#agents tbody tr", has_text="camera-cam-c")
        row.wait_for()
        assert row.locator("td").nth(1).text_content() == want
        page.context.close()
