# ruff: noqa: F811  (pytest fixtures imported from api_support are parameters here)
"""The dashboard under a steady flow of live events, in Debian's chromium (headless, via
Playwright, as test_dashboard_browser) against the app served by uvicorn on a real gateway
state and journal (api_support; no broker needed).

Defects (seen on an 8,000-space, 200-display site): every ``display`` event rebuilt every sign
(and every ``zone`` event every zone card), so a few changes a second froze the page while it
said "live"; and the Health table never refreshed while agents kept reporting, because each
``agent`` event put its reload off by another second (an agent gone offline still showed
"online · ok" over a minute later).
"""

from __future__ import annotations

import random
import threading
import time

import httpx
import pytest
from api_support import PASSWORD, harness, served, users  # noqa: F401
from playwright.sync_api import Browser, Page
from test_dashboard_browser import both as sign_text
from test_dashboard_browser import browser, signs_shown, wait_until, watch_errors  # noqa: F401

from parking import topics
from parking.payloads import HealthReport, NodeHealth

pytestmark = pytest.mark.timeout(120)

SIGN = "#signs .sign"


@pytest.fixture(scope="module")
def url(harness, users):
    harness.fill()
    with served(harness) as url:
        yield url


def open_page(browser: Browser, url: str, user: str | None = None) -> Page:
    page = browser.new_context(viewport={"width": 1280, "height": 900}, locale="en-GB").new_page()
    page.goto(url)
    page.wait_for_selector("#live.on")
    if user:
        page.fill("#login input[name=name]", user)
        page.fill("#login input[name=password]", PASSWORD)
        page.click("#login button[type=submit]")
        page.wait_for_selector('#map[data-loaded="true"]')
    page.wait_for_selector(f"{SIGN} .line .count")
    return page


def expected_signs(url: str) -> dict[str, list[tuple[str, str]]]:
    return {
        d["display"]: [
            (sign_text(ln["label"]), sign_text(ln["text"])) for ln in d["content"]["lines"]
        ]
        for d in httpx.get(f"{url}/api/v1/displays").json()
    }


def zones_shown(page: Page) -> dict[str, str]:
    return {
        z.get_attribute("data-zone"): z.locator("> .free").get_attribute("data-free")
        for z in page.locator("#zones .zone").all()
    }


def expected_zones(url: str) -> dict[str, str]:
    return {z["zone"]: str(z["free"]) for z in httpx.get(f"{url}/api/v1/zones").json()}


def marked(page: Page, selector: str, key: str) -> set[str]:
    """The ids of the elements still carrying the mark set on them earlier."""
    return {e.get_attribute(key) for e in page.locator(f"{selector}[data-mark]").all()}


def source_of(harness, space: str) -> str:
    return next(
        x.id
        for x in (*harness.site.buses, *harness.site.cameras)
        if space in harness.site.spaces_of_source(x.id)
    )


class Recorder:
    """The gateway's live events of some kinds, as the page's stream gets them."""

    def __init__(self, harness, kinds: set[str]):
        self.events: list[tuple[str, dict]] = []
        self._lock = threading.Lock()
        self._stop = harness.gateway.subscribe(self._on)
        self.kinds = kinds

    def _on(self, ev) -> None:
        if ev.kind in self.kinds:
            with self._lock:
                self.events.append((ev.kind, ev.data))

    def ids(self, kind: str, key: str) -> list[str]:
        with self._lock:
            return [d[key] for k, d in self.events if k == kind]

    def stop(self) -> None:
        self._stop()


def test_a_sign_event_redraws_that_sign_only(browser, url, harness):
    page = open_page(browser, url)
    errors = watch_errors(page)
    assert page.locator(SIGN).count() == len(harness.site.displays)
    # every sign and zone card drawn now is marked; a re-created one has no mark
    page.evaluate(
        "document.querySelectorAll('#signs .sign, #zones .zone')"
        ".forEach(e => e.setAttribute('data-mark', '1'))"
    )
    free = [s.space for s in harness.gateway.spaces() if s.state == "free"]
    rec = Recorder(harness, {"display", "zone"})
    try:
        # a space whose change moves some signs but not all of them
        for space in free:
            harness.report(source_of(harness, space), {space: "occupied"})
            changed = set(rec.ids("display", "display"))
            if changed:
                break
        assert changed and len(changed) < len(harness.site.displays), changed
        zones = set(rec.ids("zone", "zone"))
    finally:
        rec.stop()
    want = expected_signs(url)
    wait_until(lambda: signs_shown(page) == want, 5000, "the changed signs drawn")
    wait_until(lambda: zones_shown(page) == expected_zones(url), 5000, "the zone's count drawn")
    kept = marked(page, SIGN, "data-display")
    assert kept == set(want) - changed, (kept, changed)  # untouched signs: the same elements
    kept_zones = marked(page, "#zones .zone", "data-zone")
    assert kept_zones == set(expected_zones(url)) - zones, (kept_zones, zones)
    assert not errors, errors
    page.context.close()


def test_many_sign_events_keep_the_page_responsive_and_right(browser, url, harness):
    page = open_page(browser, url)
    errors = watch_errors(page)
    # count the sign elements taken off the page (a full rebuild takes them all each time)
    page.evaluate(
        "window.__removed = 0; new MutationObserver(ms => { for (const m of ms) "
        "for (const n of m.removedNodes) if (n.classList && n.classList.contains('sign')) "
        "window.__removed++; }).observe(document.querySelector('#signs'), {childList: true})"
    )
    spaces = [s.space for s in harness.gateway.spaces()]
    sources = {s: source_of(harness, s) for s in spaces}
    rnd = random.Random(7)
    rec = Recorder(harness, {"display"})
    done = threading.Event()

    def flood() -> None:  # ~150 changes a second for 3 s, each moving several signs
        try:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                space = rnd.choice(spaces)
                harness.report(sources[space], {space: rnd.choice(["free", "occupied"])})
                time.sleep(1 / 150)
        finally:
            done.set()

    worker = threading.Thread(target=flood, daemon=True)
    worker.start()
    slowest = 0.0
    try:
        while not done.is_set():  # the page answers promptly all along
            t0 = time.monotonic()
            page.evaluate("document.querySelectorAll('#signs .sign').length")
            slowest = max(slowest, time.monotonic() - t0)
            time.sleep(0.05)
        worker.join(5)
    finally:
        rec.stop()
    sent = len(rec.ids("display", "display"))
    assert sent >= 50, sent  # the flood did move the signs
    want = expected_signs(url)
    wait_until(lambda: signs_shown(page) == want, 5000, "every sign as the server has it")
    wait_until(lambda: zones_shown(page) == expected_zones(url), 5000, "every zone's count")
    assert page.get_attribute("#live", "class") == "live on"
    assert slowest < 0.5, slowest
    removed = page.evaluate("window.__removed")
    # at most one redraw per event for its own sign (fewer: events within a frame coalesce);
    # a rebuild of all of them would take len(displays) per event
    assert 0 < removed <= sent, (removed, sent)

    # the language switched: every sign drawn again, still right, names in English <-> Chinese
    name = page.text_content(f"{SIGN} .sname")
    page.click("#lang")
    wait_until(lambda: page.text_content(f"{SIGN} .sname") != name, 5000, "the sign's name")
    assert signs_shown(page) == expected_signs(url)
    assert not errors, errors
    page.context.close()


def health(agent: str, source: str) -> bytes:
    node = NodeHealth(address=1, status="ok")
    report = HealthReport(agent=agent, source=source, ts=time.time(), nodes=[node])
    return report.model_dump_json().encode()


def test_health_table_follows_agents_while_they_keep_reporting(browser, url, harness):
    site = harness.site.id
    agents = {x.agent: x.id for x in (*harness.site.buses, *harness.site.cameras)}
    for agent, source in agents.items():
        harness.gateway.handle(topics.edge_availability(site, agent), b"online")
        harness.gateway.handle(topics.edge_health(site, agent), health(agent, source))
    page = open_page(browser, url, "technician")
    errors = watch_errors(page)
    victim = sorted(agents)[0]
    row = page.locator("#agents tbody tr", has_text=victim)
    status = lambda: row.locator("td").nth(1).text_content()  # noqa: E731
    wait_until(lambda: status() == "online · ok", 5000, f"{victim} online")

    gone_at: list[float] = []
    done = threading.Event()

    def report() -> None:  # every agent's health every 200 ms for 3 s; the victim leaves
        try:
            end = time.monotonic() + 3
            while time.monotonic() < end:
                for agent, source in agents.items():
                    if agent != victim or not gone_at:
                        harness.gateway.handle(
                            topics.edge_health(site, agent), health(agent, source)
                        )
                if not gone_at and time.monotonic() > end - 2.6:
                    harness.gateway.handle(topics.edge_availability(site, victim), b"offline")
                    gone_at.append(time.monotonic())
                time.sleep(0.2)
        finally:
            done.set()

    worker = threading.Thread(target=report, daemon=True)
    worker.start()
    try:
        wait_until(lambda: bool(gone_at), 2000, "the victim gone")
        wait_until(lambda: status() == "offline", 2000, f"{victim} shown offline")
        took = time.monotonic() - gone_at[0]
        assert not done.is_set(), "shown only once the agents had stopped reporting"
    finally:
        worker.join(5)
        harness.gateway.handle(topics.edge_availability(site, victim), b"online")
    assert took < 2, took
    assert not errors, errors
    page.context.close()


# Counts the page's DOM searches (querySelector and querySelectorAll, on the document and on
# any element) from now on, in window.__searches.
COUNT_SEARCHES = """() => {
  window.__searches = 0;
  for (const proto of [Document.prototype, Element.prototype])
    for (const name of ["querySelector", "querySelectorAll"]) {
      const real = proto[name];
      proto[name] = function (...args) { window.__searches++; return real.apply(this, args); };
    }
}"""


def test_painting_the_map_does_not_search_the_page_per_space(browser, url, harness):
    """Defect (20,000 spaces): each space's polygon was found by a search of the page, so
    loading the map took N searches of N polygons and froze the browser for 9-17 s."""
    spaces = harness.gateway.spaces()
    assert len(spaces) >= 20, len(spaces)  # enough that a search per space would show
    page = open_page(browser, url, "manager")
    errors = watch_errors(page)
    page.evaluate(COUNT_SEARCHES)
    # every space unknown on the page, then the map reloaded as after a gateway restart
    page.evaluate(
        "for (const p of document.querySelectorAll('#map polygon[data-space]'))"
        " p.setAttribute('data-state', 'unknown'); window.__searches = 0"
    )
    assert page.evaluate("loadMap()") is True
    searches = page.evaluate("window.__searches")
    assert searches < 5, searches  # a few for the page's parts, none per space
    shown = page.evaluate(
        "Object.fromEntries([...document.querySelectorAll('#map polygon[data-space]')]"
        ".map(p => [p.dataset.space, p.dataset.state]))"
    )
    assert shown == {s.space: s.state for s in spaces}

    # a space opened, then Escape from its panel: back to that space, still without a search
    target = spaces[len(spaces) // 2].space
    page.click(f'#map polygon[data-space="{target}"]', force=True)
    page.keyboard.press("Escape")
    focused = page.evaluate("document.activeElement.dataset.space")
    assert focused == target
    selected = page.locator("#map polygon.selected")
    assert selected.count() == 1 and selected.get_attribute("data-space") == target
    assert not errors, errors
    page.context.close()
