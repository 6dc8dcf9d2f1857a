"""Fan-out of the gateway's live events to dashboard streams, and the alert monitor.

The ``LiveView`` calls back from any thread; the hub moves each event onto the event
loop into one log shared by every stream, where a newer state of a space, zone, sign or
agent supersedes the one before. Each stream only keeps its place in the log and takes
everything new in one go when it wakes, so publishing costs the same however many
dashboards are open (a per-stream queue cost every event once per stream, in the
gateway's own process when the API is embedded). The log is bounded: superseded events
are compacted away, and a stream left more than ``CLIENT_QUEUE`` distinct events behind
(beyond one per id of the site) is ended (its page reconnects and reloads), so one slow
phone never holds up the others or grows memory without bound.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import logging
import math
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from api.alerts import (
    AGENT_KINDS,
    AGENT_REJOIN_S,
    NEVER_SEEN_GRACE_S,
    Alert,
    AlertBook,
    AlertRecord,
    derive_alerts,
    long_occupied_alerts,
    node_places,
)
from api.disk_status import JournalDisk
from api.outbox_status import OutboxStatusReader
from api.sitecheck import SiteCheck
from gateway.displays import zone_offered
from gateway.readside import LiveEvent, LiveView
from parking.ratelog import RateLimitedLog

log = logging.getLogger(__name__)

CLIENT_QUEUE = 1000  # distinct events a stream may have waiting (see StreamClient)
PENDING_MAX = 100_000
PUBLIC_KINDS = frozenset({"zone", "display"})
REFUSAL_LOG_EVERY_S = 60.0  # a login refused at its stream cap is logged at most this often
COALESCED = {"space": "space", "zone": "zone", "display": "display", "agent": "agent"}


def alert_changed_event(rec: AlertRecord, now: float) -> LiveEvent:
    """The ``alert`` event for an open alert acknowledged (here, or through another API
    process on the same journal), or whose row another process started again: every open
    page reloads its alerts and shows who acknowledged it, when, and their note."""
    return LiveEvent(
        "alert",
        {
            "id": rec.alert.id,
            "kind": rec.alert.kind,
            "acknowledged": rec.acked_by is not None,
            "acknowledged_by": rec.acked_by,
            "acknowledged_at": rec.acked_at,
            "note": rec.note,
        },
        now,
    )


def coalesce_key(event: LiveEvent) -> tuple[str, str] | None:
    """What a later event of the same state replaces in a client's queue: a space, zone or
    sign's latest state is all a page needs (an agent's availability and its health apart);
    None for events each of which must be sent (alerts, assignments, the gateway's)."""
    field = COALESCED.get(event.kind)
    ident = event.data.get(field) if field is not None else None
    if not isinstance(ident, str):
        return None
    if event.kind == "agent":
        return ("agent/health" if "health" in event.data else "agent", ident)
    return (event.kind, ident)


class UserStreamsFull(Exception):
    """A user already has as many live streams open as one login may."""

    def __init__(self, cap: int):
        super().__init__(f"{cap} live streams open for this user")
        self.cap = cap


class StreamClient:
    """One stream's place in the hub's log, and the kinds of events it gets.

    :meth:`take` answers every event published since the last take that is still the
    latest of its space, zone, sign or agent (others: each), in the order of their latest
    states; None once the stream has ended (too far behind, or shutting down)."""

    def __init__(self, hub: LiveHub, kinds: frozenset[str] | None, cap: int):
        self.hub = hub
        self.kinds = kinds  # None: every kind
        self.cap = cap  # distinct events it may be behind before its stream ends
        self.public = False  # opened without a login
        self.user: str | None = None  # the login it was opened with
        self.overflowed = False  # ended: too far behind, or shutting down
        self.position = hub.last_seq  # the last event it has taken (none before it came)
        self._wake = asyncio.Event()

    def _wanted(self, event: LiveEvent) -> bool:
        return self.kinds is None or event.kind in self.kinds

    def waiting(self) -> list[LiveEvent]:
        """The events :meth:`take` would answer now (without taking them)."""
        if self.overflowed:
            return []
        return [e for e in self.hub.since(self.position) if self._wanted(e)]

    def pending(self) -> int:
        """How many distinct events wait to be sent."""
        return len(self.waiting())

    async def take(self) -> list[LiveEvent] | None:
        """Everything new for this stream, waiting until there is some."""
        while True:
            if self.overflowed:
                return None
            events = self.waiting()
            self.position = self.hub.last_seq
            if events:
                return events
            self._wake.clear()
            await self._wake.wait()

    async def get(self) -> LiveEvent | None:
        """The oldest waiting event alone (what :meth:`take` answers first)."""
        while True:
            if self.overflowed:
                return None
            for seq, event in self.hub.entries_since(self.position):
                self.position = seq
                if self._wanted(event):
                    return event
            self._wake.clear()
            await self._wake.wait()

    def wake(self) -> None:
        self._wake.set()

    def end(self) -> None:
        """End this stream (:meth:`take` answers None); the page reconnects and reloads."""
        self.overflowed = True
        self._wake.set()


class LiveHub:
    """Subscribes once to the view and keeps the log every stream client reads."""

    def __init__(self, view: LiveView):
        self.view = view
        self._fraction = view.site.display_settings.fallback_unknown_fraction
        self._full_fraction = view.site.display_settings.full_unknown_fraction
        # room for one event per space, zone, sign and agent on top: a view that loses or
        # regains the gateway sends every space at once, which must not end every stream
        site = view.site
        ids = len(site.spaces) + len(site.zones) + len(site.displays)
        ids += 2 * (len(site.buses) + len(site.cameras))  # availability and health
        self.queue_cap = CLIENT_QUEUE + ids
        self.clients: set[StreamClient] = set()
        self._public = 0  # of them without a login
        self._of_user: Counter[str] = Counter()  # of them per login
        self.refused: Counter[str] = Counter()  # new streams refused, by the cap reached
        self._refusals = RateLimitedLog(log, REFUSAL_LOG_EVERY_S)
        self.loop: asyncio.AbstractEventLoop | None = None
        self._unsubscribe: Callable[[], None] | None = None
        self._listeners: list[Callable[[LiveEvent], None]] = []
        self._pending: deque[LiveEvent] = deque()
        self._pending_lock = threading.Lock()
        self._scheduled = False
        self._lost = False
        # the log: [seq, coalescing key or None, event], oldest first; the latest seq of
        # each key (an entry older than its key's latest is superseded) and its entry
        self._log: list[list[Any]] = []
        self._latest: dict[object, int] = {}
        self._latest_entry: dict[object, list[Any]] = {}
        self.last_seq = 0
        self.dropped_to = 0  # events up to this seq that were not superseded are gone

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._unsubscribe = self.view.subscribe(self._from_view)

    def stop(self) -> None:
        if self._unsubscribe:
            try:
                self._unsubscribe()
            except Exception:  # the view is going away anyway
                log.exception("unsubscribing from the live view failed")
            self._unsubscribe = None
        for c in list(self.clients):
            c.end()

    def add_listener(self, fn: Callable[[LiveEvent], None]) -> None:
        """Called on the event loop for every event (the alert monitor listens here)."""
        self._listeners.append(fn)

    def _from_view(self, event: LiveEvent) -> None:
        """From the view's thread: queue the event; one loop wake-up drains a whole burst."""
        loop = self.loop
        if loop is None or loop.is_closed():
            return
        with self._pending_lock:
            if len(self._pending) >= PENDING_MAX:  # the loop is stuck: clients must reload
                self._pending.clear()
                self._lost = True
            self._pending.append(event)
            if self._scheduled:
                return
            self._scheduled = True
        # the loop may close between the check and the call: we are shutting down then
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._pending_lock:
            events = list(self._pending)
            self._pending.clear()
            self._scheduled = False
            lost, self._lost = self._lost, False
        if lost:
            log.warning("live events piled up beyond %d; every stream reloads", PENDING_MAX)
            for c in list(self.clients):
                c.end()
        for event in events:
            self.publish(event, wake=False)
        self._wake_all()  # once for the whole burst

    def publish(self, event: LiveEvent, wake: bool = True) -> None:
        """Deliver an event to every client and listener (on the event loop); a zone's
        counts go with what a sign over it would show (``offered``, as ``/zones``)."""
        if event.kind == "zone" and "free" in event.data:
            d = event.data
            shown = zone_offered(
                d["free"],
                d.get("held", 0),
                d["unknown"],
                d["closed"],
                d["total"],
                self._fraction,
                self._full_fraction,
            )
            event = dataclasses.replace(event, data={**d, "offered": shown})
        for fn in self._listeners:
            try:
                fn(event)
            except Exception:
                log.exception("live event listener failed on %s", event.kind)
        self.last_seq += 1
        key = coalesce_key(event)
        entry = [self.last_seq, key, event]
        self._log.append(entry)
        if key is not None:
            old = self._latest_entry.get(key)
            if old is not None:
                # superseded: never sent again, so its data goes now, not at the next
                # compaction (an agent's health, every 5 s, is a bus's whole report: ~60 kB)
                old[2] = None
            self._latest_entry[key] = entry
            self._latest[key] = self.last_seq
        if len(self._log) > 2 * self.queue_cap:
            self._compact()
        if wake:
            self._wake_all()

    def _wake_all(self) -> None:
        for c in self.clients:
            c.wake()

    def _compact(self) -> None:
        """Drop superseded entries; beyond the cap, the oldest (ending the streams that had
        not taken them: they would miss them)."""
        latest = self._latest
        self._log = [e for e in self._log if e[1] is None or latest.get(e[1]) == e[0]]
        over = len(self._log) - self.queue_cap
        if over <= 0:
            return
        self.dropped_to = self._log[over - 1][0]
        del self._log[:over]
        for c in list(self.clients):
            if c.position < self.dropped_to and not c.overflowed:
                c.end()  # too far behind: the page reconnects and reloads everything

    def entries_since(self, position: int) -> list[tuple[int, LiveEvent]]:
        """(seq, event) after ``position`` that are still the latest of their id."""
        log_ = self._log
        i = bisect.bisect_right(log_, position, key=lambda e: e[0])
        latest = self._latest
        return [(q, e) for q, k, e in log_[i:] if k is None or latest.get(k) == q]

    def since(self, position: int) -> list[LiveEvent]:
        return [e for _, e in self.entries_since(position)]

    def connect(
        self,
        kinds: frozenset[str] | None,
        public: bool = False,
        caps: tuple[int, int] | None = None,
        user: str | None = None,
        per_user: int | None = None,
    ) -> StreamClient | None:
        """A new stream client; None when ``caps`` (most public streams, most streams) are
        reached (a public one counts against both). :class:`UserStreamsFull` when ``user``
        already has ``per_user`` open: one login (or a script reconnecting in a loop with
        it) cannot take every slot and lock every other manager out."""
        cap = self.refusal(public, caps, user, per_user)
        if cap is not None:
            self.refused[cap] += 1
            if cap != "per_user":
                return None
            # any login can ask again and again: a line a minute, the metric counts each
            self._refusals(
                f"per_user:{user}",
                logging.INFO,
                "live stream of %s refused: %d open, the most one login may have (said at most"
                " once a minute; parkguide_streams_refused_total counts each)",
                user,
                per_user,
            )
            raise UserStreamsFull(per_user)
        c = StreamClient(self, kinds, self.queue_cap)
        c.public, c.user = public, user
        self.clients.add(c)
        self._public += public
        if user is not None:
            self._of_user[user] += 1
        return c

    def refusal(
        self,
        public: bool = False,
        caps: tuple[int, int] | None = None,
        user: str | None = None,
        per_user: int | None = None,
    ) -> str | None:
        """The cap a new stream (as :meth:`connect` takes it) would be refused at now:
        ``per_user``, ``all`` or ``public``; None when it would be opened."""
        if per_user is not None and user is not None and self._of_user[user] >= per_user:
            return "per_user"
        if caps is not None:
            max_public, max_all = caps
            if len(self.clients) >= max_all:
                return "all"
            if public and self._public >= max_public:
                return "public"
        return None

    def streams_of(self, user: str) -> int:
        """How many streams ``user`` has open."""
        return self._of_user[user]

    def disconnect(self, client: StreamClient) -> None:
        """Free the client's place (once, however often it is called) and end it."""
        if client in self.clients:
            self.clients.discard(client)
            self._public -= client.public
            if client.user is not None:
                self._of_user[client.user] -= 1
                if self._of_user[client.user] <= 0:
                    del self._of_user[client.user]
        client.end()


class AlertMonitor:
    """Re-derives alerts on agent events and every few seconds, with the site file check
    (``api.sitecheck``), the InfluxDB writer's status (``api.outbox_status``) and the journal's
    disk (``api.disk_status``); publishes
    raised/cleared ones, and those whose row another API process on the same journal changed
    (acknowledged them: ``AlertBook.take_changed``)."""

    def __init__(
        self,
        view: LiveView,
        book: AlertBook,
        hub: LiveHub,
        interval_s: float,
        long_occupied_s: float,
        site_check: SiteCheck | None = None,
        outbox_status: OutboxStatusReader | None = None,
        journal_disk: JournalDisk | None = None,
        broker: str = "mqtt",
    ):
        self.view, self.book, self.hub = view, book, hub
        self.broker = broker  # host:port, named by broker_lost
        self.places = node_places(view.site)  # the spaces each node serves, for node_dead
        self.journal_disk = journal_disk  # free space where the journal grows
        self.site_check = site_check  # the gateway's site file against ours
        self.outbox_status = outbox_status  # the gateway's InfluxDB writer, from the journal
        self._started = time.time()
        self._listening_since: float | None = None  # started and first reached the broker
        self.interval_s = interval_s
        self.long_occupied_s = long_occupied_s
        self._wake = asyncio.Event()
        # the space-based alerts of the last periodic check: agent events re-derive only the
        # agents' alerts (listing every space takes a while on a big site)
        self._space_alerts: list[Alert] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.hub.add_listener(self._on_event)
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _on_event(self, event: LiveEvent) -> None:
        # agents change health and availability rarely; space changes can come thousands a
        # second, and the only alert they end (a long stay) can wait for the periodic check
        if event.kind in ("agent", "gateway"):  # "gateway": its last will, or its return
            self._wake.set()

    def check(self, spaces: bool = True) -> tuple[list[Any], list[str]]:
        """Derive every alert and update the book; ``spaces`` False reuses the space-based
        alerts of the last check instead of listing every space again."""
        now = time.time()
        broker_up = self.view.broker_connected()
        back = self.view.broker_back_since()
        if broker_up and self._listening_since is None:
            # every agent could be heard once this process had started and reached the
            # broker: one not heard from a grace later was never started (or cannot connect)
            self._listening_since = max(self._started, back) if back is not None else now
        # a stand-alone view hears the gateway's availability (its last will); the gateway's
        # own view has no such thing: it is the gateway
        heard = getattr(self.view, "gateway_online", None)
        gateway_online = heard() if callable(heard) else None
        if (
            callable(heard)
            and gateway_online is None
            and self._listening_since is not None
            and now - self._listening_since >= NEVER_SEEN_GRACE_S
        ):
            gateway_online = False  # no availability at all a grace after connecting: none runs
        if spaces:
            self._space_alerts = long_occupied_alerts(self.view.spaces(), now, self.long_occupied_s)
        alerts = derive_alerts(
            (),
            self.view.agents(),
            now,
            self.long_occupied_s,
            broker_up=broker_up,
            broker_back_since=back,
            gateway_online=gateway_online,
            site=self.view.site.id,
            listening_since=self._listening_since,
            open_ids={r.alert.id for r in self.book.current()},
            refusals=self.view.recent_refusals(),
            broker=self.broker,
            places=self.places,
        )
        alerts += self._space_alerts
        status = self.outbox_status.poll() if self.outbox_status is not None else None
        influx = status.alert(now) if status is not None else None
        if influx is not None:
            alerts.insert(0, influx)
        disk = self.journal_disk.alert() if self.journal_disk is not None else None
        if disk is not None:
            alerts.insert(0, disk)
        mismatch = self.site_check.poll() if self.site_check is not None else None
        if mismatch is not None:
            alerts.insert(0, mismatch.alert())
        # just started, broker lost, or just back: what the view knows of the agents is
        # not complete (retained health and wills are on their way), so an open episode
        # is kept, with its acknowledgement, rather than ended and raised again as new
        settling = (
            not broker_up
            or now - self._started < AGENT_REJOIN_S
            or (back is not None and now - back < AGENT_REJOIN_S)
        )
        keep = AGENT_KINDS if settling else frozenset()
        if self._listening_since is None or now - self._listening_since < NEVER_SEEN_GRACE_S:
            # not decided yet whether an agent was never seen: an open episode stays
            keep |= {"agent_never_seen"}
        return self.book.update(
            alerts, now, keep_open=keep, long_occupied_h=self.long_occupied_s / 3600
        )

    async def _run(self) -> None:
        spaces_checked = -math.inf  # monotonic time of the last check of the spaces
        while True:
            try:
                # the spaces on the periodic tick only, however often agents wake us
                spaces = time.monotonic() - spaces_checked >= self.interval_s
                if spaces:
                    spaces_checked = time.monotonic()
                raised, cleared = await asyncio.to_thread(self.check, spaces)
                changed = await asyncio.to_thread(self.book.take_changed)
                now = time.time()
                for rec in raised:
                    self.hub.publish(
                        LiveEvent(
                            "alert",
                            {"id": rec.alert.id, "kind": rec.alert.kind, "raised": True},
                            now,
                        )
                    )
                for aid in cleared:
                    self.hub.publish(LiveEvent("alert", {"id": aid, "cleared": True}, now))
                for rec in changed:
                    self.hub.publish(alert_changed_event(rec, now))
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("deriving alerts failed")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.interval_s)
            self._wake.clear()
            await asyncio.sleep(0.2)  # coalesce a burst of events into one check
