"""``parkguide sim display``: every guidance sign of a site, drawn in the terminal.

It stands in for the sign controllers: it subscribes to
``displays/+/content`` and shows each sign as a driver would read it, Chinese
first, with its arrow. A sign whose content has expired (its gateway died or
lost the broker) goes blank — every line shows ``--`` — instead of showing a
count nobody vouches for. Once accepted, content is valid for its validity
(``expires - ts``, at most the site's ``expires_s``) from its arrival here, measured
on this machine's monotonic clock only: a sign controller whose clock differs from
the gateway's neither blanks live content (a clock ahead) nor keeps a dead gateway's
counts up (a clock behind). The wall clock only refuses content on arrival: stamped
more than ``FUTURE_TOLERANCE_S`` ahead of this clock, or past its ``expires`` by more
than that (an old retained message at connect); content expiring no later than its
``ts`` is refused too, and a clock that differs from the content's ``ts`` by more than
its validity is reported (check its NTP). ``--once`` prints the signs as plain text
and exits, ``--plain`` prints a sign as plain text whenever it changes. ``--display``
(an id or a glob, repeatable) shows only those signs; in the terminal, signs that do not
fit are not shown, and a line says how many are. The terminal is redrawn only when what
it shows changes: content, a sign's validity running out, the terminal's size.
"""

from __future__ import annotations

import argparse
import fnmatch
import io
import logging
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from parking import topics
from parking.broker import add_credential_arguments, broker_from_args
from parking.payloads import (
    ARROW_GLYPHS,
    FUTURE_TOLERANCE_S,
    MAX_PAYLOAD_BYTES,
    DisplayContent,
)
from parking.site import Site, SiteError, load_site

log = logging.getLogger(__name__)

ARROWS = ARROW_GLYPHS
BLANK = "--"
# Content whose ``ts`` is later than this machine's clock by more than FUTURE_TOLERANCE_S,
# or whose ``expires`` is earlier by more, is refused on arrival: the tolerance the gateway
# gives edge reports.
CLOCK_WARNING_INTERVAL_S = 3600.0
"""A sign's clock warning (content stale on arrival, a clock ahead or behind the
gateway's) is logged at most once per this many seconds per sign and kind."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--broker", required=True, help="MQTT broker, mqtt://HOST:PORT")
    add_credential_arguments(parser)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--once", action="store_true", help="print every sign once as plain text and exit"
    )
    mode.add_argument(
        "--plain", action="store_true", help="plain text: print a sign whenever it changes"
    )
    parser.add_argument(
        "--display",
        action="append",
        dest="displays",
        metavar="ID",
        help="show only this sign: its id, or a glob such as 'gate-*' (repeatable; "
        "default every sign of the site)",
    )
    parser.add_argument(
        "--wait",
        type=float,
        default=5.0,
        help="with --once or plain output: seconds to wait for every sign's content "
        "before a sign without any is shown blank (default 5)",
    )


@dataclass(frozen=True)
class SignLine:
    """One line as the driver sees it."""

    label: str
    arrow: str
    text: str


@dataclass(frozen=True)
class SignView:
    display: str
    title: str
    lines: tuple[SignLine, ...]
    blank: bool  # no content, or its content expired


def sign_view(site: Site, display: str, content: DisplayContent | None) -> SignView:
    """What a sign shows (pure): its content, or blank when it has none current (whether
    content is current is the caller's judgement: ``SignBoard`` judges it by its arrival
    on the monotonic clock, never by comparing ``expires`` with the wall clock)."""
    disp = next(d for d in site.displays if d.id == display)
    title = f"{disp.name.zh} {disp.name.en}"
    if content is None:
        lines = tuple(
            SignLine(f"{ln.label.zh} {ln.label.en}", ARROWS[ln.arrow], BLANK) for ln in disp.lines
        )
        return SignView(display, title, lines, blank=True)
    shown: list[SignLine] = []
    for ln in content.lines:
        text = ln.text.both()
        shown.append(SignLine(f"{ln.label.zh} {ln.label.en}", ARROWS[ln.arrow], text))
    return SignView(display, title, tuple(shown), blank=False)


def blank_note(view: SignView, login: str | None = None) -> str:
    """Why a sign reads blank: no current content, or, for a broker login other than the
    sign's own, perhaps none it may read (the shipped ACL lets a sign's login read only its
    own sign): an unreadable sign must not look like a dead gateway."""
    if login is None or login == view.display:
        return "blank: no current content"
    return f"blank: no current content (or login {login!r} may not read it)"


def plain(view: SignView, login: str | None = None) -> str:
    """Plain-text rendering, one sign per block: a header, then label, arrow and count;
    ``login`` is the broker user name the content was read as, if any."""
    head = f"[{view.display}] {view.title}" + (
        f"  ({blank_note(view, login)})" if view.blank else ""
    )
    width = max((_width(ln.label) for ln in view.lines), default=0)
    body = [
        f"  {ln.label}{' ' * (width - _width(ln.label))}  {ln.arrow}  {ln.text}"
        for ln in view.lines
    ]
    return "\n".join([head, *body])


def _width(text: str) -> int:
    """Terminal columns: CJK characters take two."""
    return sum(2 if ord(ch) > 0x2E80 else 1 for ch in text)


@dataclass(frozen=True)
class _Held:
    """A sign's content and until when, on this machine's monotonic clock, it may show."""

    content: DisplayContent
    valid_until: float  # arrival + min(expires - ts, the site's expires_s), monotonic


def choose_displays(site: Site, patterns: list[str] | None) -> tuple[str, ...]:
    """The ids of the site's signs that ``--display`` chose (each an id or a glob), in the
    site's order; every sign when none is given. ValueError names a pattern matching none."""
    ids = tuple(d.id for d in site.displays)
    if not patterns:
        return ids
    chosen: set[str] = set()
    for pattern in patterns:
        hits = {d for d in ids if d == pattern or fnmatch.fnmatchcase(d, pattern)}
        if not hits:
            known = ", ".join(ids[:20]) + (f", ... ({len(ids)} in all)" if len(ids) > 20 else "")
            raise ValueError(
                f"{pattern!r} matches no sign of site {site.id!r} (its signs: {known})"
            )
        chosen |= hits
    return tuple(d for d in ids if d in chosen)


class SignBoard:
    """The latest content per sign, fed from MQTT (thread-safe).

    ``wall`` and ``mono`` are the clocks (``time.time`` and ``time.monotonic``; tests
    pass their own); ``ids`` the signs it holds and shows (default every sign of the site)."""

    def __init__(
        self,
        site: Site,
        wall: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
        ids: tuple[str, ...] | None = None,
    ):
        self.site = site
        self.ids = tuple(d.id for d in site.displays) if ids is None else tuple(ids)
        self.expires_s = site.display_settings.expires_s
        self._wall, self._mono = wall, mono
        self._content: dict[str, _Held] = {}
        self._lock = threading.Lock()
        self.changed = threading.Event()
        self.rejected = 0  # bad content: malformed, another sign's, stamped in the future
        self.stale = 0  # content refused as past its expires on arrival (by the wall clock)
        self._last_log = -1e9
        self._warned: dict[tuple[str, str], float] = {}  # (sign, kind) -> monotonic time

    def feed(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """One message; ``retained``: the broker's stored copy, sent at subscribe (MQTT's
        retain flag), not news of the moment."""
        if topic == topics.gateway_availability(self.site.id):
            if payload == b"offline":  # its last will: what the signs hold is nobody's now
                with self._lock:
                    had = bool(self._content)
                    self._content.clear()
                if had:
                    log.warning("the gateway is offline: every sign blank until it is back")
                self.changed.set()
            return
        parsed = topics.parse(topic)
        if parsed is None or parsed.kind != "displays/content" or parsed.ident not in self.ids:
            return
        if not payload:  # an empty retained message clears the sign (MQTT's way)
            with self._lock:
                self._content.pop(parsed.ident, None)
            self.changed.set()
            return
        try:
            if len(payload) > MAX_PAYLOAD_BYTES:
                raise ValueError(f"{len(payload)} bytes")
            # strict: the wire contract's types, no "12" for 12
            content = DisplayContent.model_validate_json(payload, strict=True)
            if content.display != parsed.ident:
                raise ValueError(f"content of sign {content.display!r} on {parsed.ident!r}")
            if content.expires <= content.ts:
                raise ValueError(f"expires {content.expires} is not later than ts {content.ts}")
            wall = self._wall()
            if content.ts > wall + FUTURE_TOLERANCE_S:
                raise ValueError(
                    f"ts {content.ts} is later than this clock's {wall:.3f} "
                    f"by more than {FUTURE_TOLERANCE_S:g} s (a gateway clock ahead, or "
                    f"this sign controller's behind: check its NTP)"
                )
        except (ValidationError, ValueError) as exc:
            self.rejected += 1
            now = self._mono()
            if now - self._last_log >= 60:
                self._last_log = now
                log.warning(
                    "bad sign content on %s (%d so far): %s; payload %r",
                    topic,
                    self.rejected,
                    str(exc)[:200],
                    payload[:200],
                )
            return
        display = parsed.ident
        stated = content.expires - content.ts  # the validity the content states
        # the wall clock judges content only here, on arrival: this clock minus the
        # gateway's stamp is the clocks' difference plus the time since it was stamped
        # (in transit, or retained on the broker)
        since = wall - content.ts
        if since - stated > FUTURE_TOLERANCE_S:
            self.stale += 1
            self._warn(
                display,
                "stale",
                "sign content on %s expired %.0f s ago by this clock: not shown (an old "
                "retained message of a gateway that stopped republishing, or this sign "
                "controller's clock is ahead of the gateway's by more than %g s; check its NTP)",
                display,
                since - stated,
                FUTURE_TOLERANCE_S,
            )
            return
        if since >= stated and retained:
            # the broker's stored copy, already past its expires: the gateway has not
            # republished it (stopped, or a broker restored from disk after a power cut,
            # whose retained "online" no last will ever replaced). Blank until live content
            # comes: a sign whose clock is ahead waits for the next refresh (half the
            # validity) rather than a dead gateway's counts showing for a full validity
            self.stale += 1
            self._warn(
                display,
                "stale",
                "retained sign content on %s expired %.0f s ago by this clock: not shown "
                "until the gateway publishes again (it stopped republishing, or this sign "
                "controller's clock is ahead; check its NTP)",
                display,
                since - stated,
            )
            return
        if since >= stated:
            self._warn(
                display,
                "ahead",
                "sign content on %s arrived %.0f s past its expires by this clock: this sign "
                "controller's clock is up to %.0f s ahead of the gateway's, check its NTP "
                "(unless the content is an old retained message); shown for its validity "
                "from its arrival",
                display,
                since - stated,
                since,
            )
        elif since < -stated:
            self._warn(
                display,
                "behind",
                "sign content on %s is stamped %.0f s after this clock: this sign "
                "controller's clock is at least %.0f s behind the gateway's; check its NTP",
                display,
                -since,
                -since,
            )
        valid_for = min(stated, self.expires_s)
        if retained:
            # the broker's copy has aged there: only what is left of its validity by this
            # clock (else a dead gateway's counts, restored by a broker after a power cut,
            # showed up to twice the validity after its last publication)
            valid_for = min(valid_for, stated - since)
        held = _Held(content, self._mono() + valid_for)
        with self._lock:
            self._content[display] = held
        self.changed.set()

    def _warn(self, display: str, kind: str, msg: str, *args: object) -> None:
        """``log.warning(msg, *args)``, at most once per CLOCK_WARNING_INTERVAL_S per sign
        and kind: a skewed clock would otherwise say so at every republish."""
        now = self._mono()
        last = self._warned.get((display, kind))
        if last is not None and now - last < CLOCK_WARNING_INTERVAL_S:
            return
        self._warned[(display, kind)] = now
        log.warning(msg, *args)

    def views(self) -> list[SignView]:
        """Every sign now: its content while within its validity from its arrival here
        (``_Held.valid_until``, on the monotonic clock), else blank. The wall clock plays
        no part: a clock ahead of the gateway's does not blank live content."""
        mono = self._mono()
        with self._lock:
            held = dict(self._content)
        out = []
        for d in self.ids:
            h = held.get(d)
            content = h.content if h is not None and mono < h.valid_until else None
            out.append(sign_view(self.site, d, content))
        return out

    def next_expiry(self) -> float | None:
        """When (monotonic) the next sign showing content goes blank; None if none shows."""
        now = self._mono()
        with self._lock:
            until = [h.valid_until for h in self._content.values() if h.valid_until > now]
        return min(until, default=None)

    def complete(self) -> bool:
        with self._lock:
            return all(d in self._content for d in self.ids)


def _panel(v: SignView, login: str | None = None):
    from rich.panel import Panel
    from rich.table import Table
    from rich.text import Text

    table = Table.grid(padding=(0, 2))
    table.add_column()
    table.add_column(justify="center")
    table.add_column(justify="right")
    for ln in v.lines:
        if v.blank:
            style = "dim"
        elif ln.text == BLANK:
            style = "yellow"
        elif "FULL" in ln.text or "CLOSED" in ln.text:
            style = "bold red"
        else:
            style = "bold green"
        table.add_row(Text(ln.label), Text(ln.arrow, style="bold"), Text(ln.text, style=style))
    subtitle = blank_note(v, login) if v.blank else None
    return Panel(
        table,
        title=f"{v.title}",
        subtitle=subtitle,
        border_style="dim" if v.blank else "cyan",
        expand=False,
    )


def rich_board(views: list[SignView], width: int, height: int, login: str | None = None):
    """The signs as rich panels in a grid for a terminal of ``width`` x ``height``: as many
    as fit in ``height - 1`` lines (the last line is the cursor's), in order, and when not
    all fit, one line that says how many are shown, instead of a silent ``...``.

    The grid's columns are as wide as its widest panel, so what fits is known from each
    panel's measured width and its height (its lines and two borders) without rendering
    the signs that are not shown (rendering 200 panels takes a second)."""
    from rich.console import Console, Group
    from rich.measure import Measurement
    from rich.table import Table
    from rich.text import Text

    panels = [_panel(v, login) for v in views]
    heights = [len(v.lines) + 2 for v in views]
    console = Console(
        width=width, height=height, file=io.StringIO(), color_system=None, legacy_windows=False
    )
    widths: list[int] = []

    def columns(n: int) -> int:
        return max(1, (width + 1) // (max(widths[:n]) + 1))

    def rows(n: int) -> int:
        cols = columns(n)
        return sum(max(heights[i : i + cols]) for i in range(0, n, cols))

    budget = max(height - 1, 1)
    shown = 0
    for panel in panels:
        widths.append(min(Measurement.get(console, console.options, panel).maximum, width))
        if rows(shown + 1) > budget:
            break
        shown += 1
    notice = None
    if shown < len(panels):
        while shown and rows(shown) > budget - 1:  # the notice takes a line
            shown -= 1
        notice = Text(
            f"showing {shown} of {len(panels)} signs; use --display to choose, or --plain",
            style="bold yellow",
            no_wrap=True,
            overflow="ellipsis",
        )
    grid = Table.grid(padding=(0, 1))
    cols = columns(shown) if shown else 1
    for _ in range(cols):
        grid.add_column()
    for i in range(0, shown, cols):
        grid.add_row(*panels[i : i + cols])
    return grid if notice is None else Group(grid, notice)


def live_loop(
    board: SignBoard,
    show: Callable[[list[SignView], tuple[int, int]], None],
    size: Callable[[], tuple[int, int]],
    mono: Callable[[], float] = time.monotonic,
    wait: Callable[[float], bool] | None = None,
    poll_s: float = 0.5,
) -> None:
    """Call ``show(views, size)`` whenever what the terminal shows would change: content
    arrived (``board.changed``), a sign's validity ran out (it wakes for the board's next
    expiry), the terminal's ``size()`` changed (checked every ``poll_s``); never otherwise.
    ``wait(timeout)`` waits for ``board.changed`` (its default); it runs until interrupted."""
    wait = board.changed.wait if wait is None else wait
    shown: list[SignView] | None = None
    shown_size: tuple[int, int] | None = None
    dirty = True
    while True:
        now_size = size()
        if dirty or now_size != shown_size:
            views = board.views()
            if views != shown or now_size != shown_size:
                show(views, now_size)
                shown, shown_size = views, now_size
        expiry = board.next_expiry()
        timeout = poll_s if expiry is None else min(poll_s, max(0.0, expiry - mono()))
        fired = wait(timeout)
        if fired:  # cleared only once seen: content fed after this is in the views below
            board.changed.clear()
        dirty = fired or (expiry is not None and mono() >= expiry)


AVAILABILITY_GRACE_S = 0.3
"""--once: how long after the availability subscription's SUBACK its retained message may
take to arrive (the broker sends it right after; the rest is this machine's scheduling)"""


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
    except SiteError as exc:
        print(f"site file refused:\n{exc}", file=sys.stderr)
        return 2
    try:
        chosen = choose_displays(site, args.displays)
    except ValueError as exc:
        print(f"--display: {exc}", file=sys.stderr)
        return 2
    try:
        broker = broker_from_args(args.broker, args)
    except ValueError as exc:
        print(f"--broker: {exc}", file=sys.stderr)
        return 2
    board = SignBoard(site, ids=chosen)
    if broker.username in {d.id for d in site.displays} and set(chosen) != {broker.username}:
        log.warning(
            "logged in as sign %s: the shipped ACL lets it read its own sign only, the others "
            "show blank; pass --display %s, or log in as api or signs to watch every sign",
            broker.username,
            broker.username,
        )
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
    broker.apply(client)

    connected = threading.Event()
    stopping = threading.Event()  # set before the deliberate disconnect: no warning then

    answered = threading.Event()  # a CONNACK came on this connection
    # --once: the gateway's retained availability comes after the signs' (its own
    # subscription, acknowledged after theirs); a last will there blanks them
    availability_mid = [-1]
    availability_acked = threading.Event()

    def on_connect(client, userdata, flags, reason_code, properties):
        answered.set()
        if reason_code.is_failure:
            log.error("broker %s refused the connection: %s", broker.url, reason_code)
            return
        connected.set()
        client.subscribe(topics.displays_all(site.id), qos=topics.QOS_DISPLAY)
        # a subscription of its own, after the signs': the broker sends the retained signs
        # first, so a dead gateway's last will blanks what it left behind (content sent
        # after it, by a restarting gateway, shows)
        _, mid = client.subscribe(topics.gateway_availability(site.id), qos=topics.QOS_AVAILABILITY)
        availability_mid[0] = mid

    def on_subscribe(client, userdata, mid, reason_codes, properties):
        if mid == availability_mid[0]:
            availability_acked.set()

    def on_connect_fail(client, userdata):
        # blank signs must not hide a wrong or dead broker from the technician (paho calls
        # this while handling the connect's error: exc_info has it)
        why = broker.why_unreachable(sys.exc_info()[1])
        log.warning("cannot reach the broker %s (%s); retrying", broker.url, why)

    def on_disconnect(client, userdata, flags, reason_code, properties):
        if not answered.is_set() and not stopping.is_set():  # e.g. plain MQTT to a TLS port
            log.warning("broker %s: %s; retrying", broker.url, broker.why_closed_early(reason_code))
        elif connected.is_set() and not stopping.is_set():
            log.warning("lost the broker %s (%s); reconnecting", broker.url, reason_code)
        answered.clear()

    def on_message(client, userdata, msg):
        try:
            board.feed(msg.topic, msg.payload, bool(msg.retain))
        except Exception:
            log.exception("sign content on %s could not be shown", msg.topic)

    client.on_connect = on_connect
    client.on_connect_fail = on_connect_fail
    client.on_subscribe = on_subscribe
    client.on_disconnect = on_disconnect
    client.on_message = on_message
    client.reconnect_delay_set(1, 30)
    client.connect_async(broker.host, broker.port, keepalive=30)
    client.loop_start()
    try:
        if args.once:
            deadline = time.monotonic() + args.wait
            while time.monotonic() < deadline and not (
                board.complete() and availability_acked.is_set()
            ):
                board.changed.wait(0.1)
                board.changed.clear()
            if availability_acked.is_set():
                time.sleep(AVAILABILITY_GRACE_S)  # its retained message follows the SUBACK
            if not connected.is_set():
                print(f"error: could not reach the broker {broker.url}", file=sys.stderr)
                return 1
            print("\n\n".join(plain(v, broker.username) for v in board.views()))
            return 0
        if args.plain or not sys.stdout.isatty():  # a pipe or a log file gets plain text
            shown: dict[str, SignView] = {}
            # the retained contents come one by one: a sign not heard of yet is not said
            # to be blank before --wait has passed (it would read as a dead sign in a log)
            grace_until = time.monotonic() + args.wait
            while True:
                board.changed.wait(0.5)
                board.changed.clear()
                for v in board.views():
                    if v.blank and v.display not in shown and time.monotonic() < grace_until:
                        continue
                    if shown.get(v.display) != v:
                        shown[v.display] = v
                        print(plain(v, broker.username), flush=True)
        from rich.live import Live

        with Live(auto_refresh=False) as live:

            def show(views: list[SignView], size: tuple[int, int]) -> None:
                live.update(rich_board(views, *size, login=broker.username), refresh=True)

            def size() -> tuple[int, int]:
                console_size = live.console.size
                return console_size.width, console_size.height

            live_loop(board, show, size)
    except KeyboardInterrupt:
        return 0
    finally:
        stopping.set()
        client.disconnect()
        client.loop_stop()
