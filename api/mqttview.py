"""A ``LiveView`` for the stand-alone API: retained MQTT topics plus the gateway's journal.

Zone counts, sign contents, agent availability and health come from the
retained topics the gateway and the edge agents publish; space states come
from the journal (the ``spaces`` table at start, then the ``events`` table
tailed every ``poll_s``); assignments from the journal and the assignment
topic. Closing or opening a space publishes ``SpaceControl`` on the control
topic for the gateway to act on. While the gateway's last will says it is
offline, every space and zone reads ``unknown`` (but the closed spaces: a manager's
closures stand): silence is never free.
"""

from __future__ import annotations

import logging
import math
import secrets
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Collection
from typing import Any

import paho.mqtt.client as mqtt
from pydantic import ValidationError

from api.journal import GatewayTables
from gateway.allocation import HOLD_SEEN_S
from gateway.ingest import ReportGate, without_plates
from gateway.journal import PLATE_KEEP_KEY, PLATES_FORGOTTEN_KEY
from gateway.readside import (
    BOOT_CONFLICTS_KEY,
    AgentStatus,
    ControlUnavailable,
    Counters,
    EntranceRefusals,
    Expect,
    LiveEvent,
    RefusalLog,
    SpaceStatus,
    parse_boot_conflicts,
)
from parking import topics
from parking.broker import BrokerConfig, is_keepalive_timeout, refusal_hint
from parking.payloads import (
    CONTROL_MAX_AGE_S,
    MAX_PAYLOAD_BYTES,
    ArrivalRefusal,
    Assignment,
    DisplayContent,
    HealthReport,
    SpaceControl,
    ZoneCounts,
)
from parking.site import Site
from parking.states import STATE_NAMES

log = logging.getLogger(__name__)

REFRESH_SPACES_S = 5.0
LOG_EVERY_S = 60.0
SIGNS_STALE_GRACE_S = 10.0
"""the gateway counts as silent after the site's sign validity and this long without live
sign content (it republishes every sign at half the validity)"""


def _blind_counts(zone: str, total: int, ts: float, closed: int = 0) -> ZoneCounts:
    """A zone's counts while the view cannot see the gateway (or it has not reported the
    zone yet): every space unknown but the closed ones (a manager's closure stands, as in
    the gateway's own view), stamped when that began."""
    return ZoneCounts(
        zone=zone, free=0, occupied=0, unknown=total - closed, closed=closed, total=total, ts=ts
    )


GATEWAY_CLOCK_SAY_S = 60.0
"""This host's clock this far from the gateway's (as its live signs say) is logged once."""

SETTLE_S = 1.0
"""How long a manager's next action on a space waits for the gateway to journal the one this
API sent for it just before (the gateway applies it within milliseconds, but the journal is
read only every ``poll_s``: an open right after a close was judged on the state before)."""


class MqttLiveView:
    """Live state rebuilt from the broker's retained topics and the journal."""

    def __init__(
        self,
        site: Site,
        broker: BrokerConfig,
        db_path: str,
        *,
        poll_s: float = 0.25,
        client_id: str | None = None,
    ):
        self.site = site
        self.broker = broker
        self.tables = GatewayTables(db_path)
        self._gate = ReportGate(site)  # health is taken as the gateway takes it
        # every agent the site file names: listed (and alerted) even if never heard from
        self._site_agents = frozenset(
            [b.agent for b in site.buses] + [c.agent for c in site.cameras]
        )
        self.poll_s = poll_s
        self._lock = threading.RLock()
        self._zones: dict[str, ZoneCounts] = {}
        self._displays: dict[str, DisplayContent] = {}
        self._online: dict[str, bool] = {}
        self._seen: dict[str, float] = {}
        self._health: dict[str, HealthReport] = {}
        self._assignments: deque[Assignment] = deque(maxlen=1000)
        # the gateway's --plate-keep-hours (s) and its erasure mark (journal meta): plates
        # the journal no longer has are not shown from memory either (docs/privacy.md)
        self._plate_keep_s: float | None = None
        self._plates_forgotten: str | None = None
        self._holds: dict[str, float] = {}  # space -> hold expiry, from the assignments seen
        self._held_said: dict[str, int] = {}  # zone -> the held count the stream was last told
        self._state: dict[str, tuple[str, float]] = {}  # space -> (state, since)
        self._last_seen: dict[str, float | None] = {}
        self._observed_since: dict[str, float | None] = {}  # as of the last checkpoint
        self._last_event = 0
        self._journal_lock = threading.Lock()  # one reader of the journal at a time
        # (manager, space) -> monotonic time their control of it was sent, until the journal
        # shows that manager's event of it: another manager's event is not its confirmation
        self._sent: dict[tuple[str, str], float] = {}
        self._sent_zones: dict[tuple[str, str], float] = {}  # the same, for a zone's control
        self._gateway_online: bool | None = None
        # wall time the view went blind (:meth:`_blind_since`), None while it sees
        self._blind_at: float | None = None
        self._stale_said = False  # _check_signs_fresh said the gateway went silent
        self._connected_mono: float | None = None  # monotonic time of the last (re)connect
        self._live_sign_mono = -math.inf  # monotonic arrival of the last live sign content
        # the gateway's clock minus this host's, from the live signs it stamps as it sends
        # them: a manager's request is stamped by the gateway's clock, which judges its age
        self.gateway_clock_offset = 0.0
        self.refusals = RefusalLog()  # arrivals the gateway refused, recently
        self._boot_conflicts: str | None = None  # the gateway's, as journaled (JSON)
        self._offset_said = False
        self._ever_connected = False
        self._refused = False  # the broker's last CONNACK was a refusal
        self._last_disconnect = ("", -math.inf)  # (reason, monotonic time) of the last one
        self._subscribers: list[Callable[[LiveEvent], None]] = []
        self._sign_updates = 0
        self._rejected: dict[str, int] = {}
        self._last_log: dict[str, float] = {}
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        self.connected = threading.Event()
        self._connected_at: float | None = None  # wall time of the last (re)connect
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id or f"parkguide-api-{site.id}-{secrets.token_hex(8)}",
        )
        broker.apply(self.client)
        self.client.reconnect_delay_set(0.5, 30)
        self.client.on_connect = self._on_connect
        self.client.on_connect_fail = self._on_connect_fail
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    # -- lifecycle -----------------------------------------------------------------------------
    def start(self) -> None:
        self._load_journal()
        self.client.connect_async(self.broker.host, self.broker.port, keepalive=15)
        self.client.loop_start()
        self._poller = threading.Thread(target=self._poll_loop, name="journal-tail", daemon=True)
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()
        self.client.disconnect()
        self.client.loop_stop()
        if self._poller:
            self._poller.join(5)

    # -- MQTT ----------------------------------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        try:
            if reason_code.is_failure:
                self._refused = True  # said here; the hang-up that follows is not news
                log.error(
                    "MQTT broker %s refused the connection: %s%s",
                    self.broker.url,
                    reason_code,
                    refusal_hint(str(reason_code), self.broker),
                )
                return
            site = self.site.id
            prefix = topics.site_prefix(site)
            client.subscribe(
                [
                    (topics.zones_all(site), topics.QOS_ZONE),
                    (topics.displays_all(site), topics.QOS_DISPLAY),
                    (f"{prefix}/edge/+/availability", topics.QOS_AVAILABILITY),
                    (f"{prefix}/edge/+/health", topics.QOS_HEALTH),
                    (topics.assignments_all(site), topics.QOS_ASSIGNMENT),
                    (topics.refusals_all(site), topics.QOS_REFUSAL),
                    (topics.gateway_availability(site), topics.QOS_AVAILABILITY),
                ]
            )
            lost = self._ever_connected
            self._ever_connected = True
            if not self.connected.is_set():
                self._connected_at = time.time()
                self._connected_mono = time.monotonic()
            self.connected.set()
            log.info("connected to %s", self.broker.url)
            if lost:
                self._emit_gateway_state()
        except Exception:
            log.exception("on_connect failed")

    def _on_connect_fail(self, client, userdata) -> None:
        # paho calls this while handling the connect's error (exc_info has it): a TLS
        # certificate not trusted must not read as a broker that is merely down
        self._say_unreachable(self.broker.why_unreachable(sys.exc_info()[1]))

    def _say_unreachable(self, why: str) -> None:
        with self._lock:
            now = time.monotonic()
            if now - self._last_log.get("connect", -LOG_EVERY_S) < LOG_EVERY_S:
                return
            self._last_log["connect"] = now
        log.warning("cannot reach the MQTT broker %s (%s); retrying", self.broker.url, why)

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was = self.connected.is_set()
        self.connected.clear()
        with self._lock:
            self._blind_since(time.time())
        said = (str(reason_code), time.monotonic())
        last, self._last_disconnect = self._last_disconnect, said
        if last[0] == said[0] and said[1] - last[1] < 1.0 and is_keepalive_timeout(reason_code):
            return  # paho reports a keepalive timeout twice in a row: said once
        if not was and not self._stop.is_set() and not self._refused:
            self._say_unreachable(self.broker.why_closed_early(reason_code))  # no CONNACK
            return
        self._refused = False
        if not self._stop.is_set():
            log.warning("lost the MQTT broker %s (%s); reconnecting", self.broker.url, reason_code)
            if was:  # a broker killed sends no last will: blind is blind, say so
                self._emit_gateway_state()

    def broker_connected(self) -> bool:
        return self.connected.is_set()

    def broker_back_since(self) -> float | None:
        """Wall time this view last (re)connected to the broker (None: not connected)."""
        return self._connected_at if self.connected.is_set() else None

    def gateway_online(self) -> bool | None:
        """The gateway's retained availability as heard (None: not heard yet), and False
        while it says ``online`` but has let its signs expire (:meth:`_signs_stale`)."""
        with self._lock:
            if self._gateway_online and self._signs_stale():
                return False
            return self._gateway_online

    def _signs_stale(self) -> bool:
        """The gateway says ``online`` but publishes nothing: no live sign content (sent as
        it was published, not the broker's stored copy) for a validity and a grace, since
        the last one or since we connected. It republishes every sign at half the
        validity. A broker restored from disk after a power cut keeps the gateway's
        retained ``online``, counts and signs, and no last will ever replaces them; their
        stored copies come at subscribe and never count as live. Judged on this host's
        monotonic clock only: the gateway's stamps are another host's clock."""
        run_out = self._signs_run_out()
        return run_out is not None and time.monotonic() > run_out

    def _signs_run_out(self) -> float | None:
        """Monotonic time the gateway's signs run out unless it publishes (None: never)."""
        if not self.site.displays or self._connected_mono is None:
            return None
        since = max(self._connected_mono, self._live_sign_mono)
        return since + self.site.display_settings.expires_s + SIGNS_STALE_GRACE_S

    def _blind(self) -> bool:
        """No word from the gateway can reach us: every count and state shows unknown."""
        return self._gateway_online is False or not self.connected.is_set() or self._signs_stale()

    def _blind_since(self, now: float) -> float | None:
        """Under the lock: the wall time the view went blind, kept while it stays so; None
        while it sees. The blind counts are stamped with it, not with the last counts' time
        (when they were all known) nor with each reading's. It is when the view learnt the
        gateway is offline or lost the broker (noted then), or when the gateway's signs ran
        out (:meth:`_signs_stale`: a time no message marks)."""
        if not self._blind():
            self._blind_at = None
        elif self._blind_at is None:
            run_out = self._signs_run_out()
            stale = run_out is not None and time.monotonic() > run_out
            self._blind_at = now - (time.monotonic() - run_out) if stale else now
        return self._blind_at

    def _check_signs_fresh(self) -> None:
        """From the poll loop: a gateway whose signs ran out (no message says so) blanks
        the view, and one that publishes again brings it back."""
        with self._lock:
            stale = self._gateway_online is True and self._signs_stale()
            changed = stale != self._stale_said
            self._stale_said = stale
        if not changed:
            return
        if stale:
            log.warning(
                "the gateway's availability says online but no sign content came from it for"
                " %.0f s, and it republishes every sign within %.0f s (it stopped, or the"
                " broker restored its retained state after a power cut): every space and"
                " zone shows unknown until it publishes again",
                self.site.display_settings.expires_s + SIGNS_STALE_GRACE_S,
                self.site.display_settings.expires_s / 2,
            )
        else:
            log.info("the gateway publishes again")
        self._emit_gateway_state()

    def _emit_gateway_state(self) -> None:
        """The gateway (or the broker) went away or came back: the live stream gets what the
        view now says of every space and zone (all unknown while it is away: the public zone
        cards must not keep the last counts)."""
        now = time.time()
        self._emit("gateway", {"online": not self._blind()}, now)
        for s in self.spaces():
            self._emit("space", {"space": s.space, "state": s.state}, now)
        for z in self.zone_counts():
            self._emit("zone", z.model_dump(mode="json"), now)

    def _reject(self, reason: str, topic: str, payload: bytes, detail: str) -> None:
        with self._lock:
            self._rejected[reason] = self._rejected.get(reason, 0) + 1
            now = time.monotonic()
            if now - self._last_log.get(reason, -LOG_EVERY_S) < LOG_EVERY_S:
                return
            self._last_log[reason] = now
        shown, detail = without_plates(payload[:120].decode("utf-8", "replace"), detail)
        log.warning("ignored %s on %s: %s (payload %r)", reason, topic, detail, shown)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self._handle(msg.topic, msg.payload, bool(msg.retain))
        except Exception:
            log.exception("handling a message on %s failed", msg.topic)

    def _handle(self, topic: str, payload: bytes, retained: bool = False) -> None:
        """One message; ``retained``: the broker's stored copy, sent at subscribe."""
        parsed = topics.parse(topic)
        if parsed is None or parsed.site != self.site.id:
            return
        if len(payload) > MAX_PAYLOAD_BYTES:
            self._reject("too_large", topic, payload, f"{len(payload)} bytes")
            return
        kind, ident = parsed.kind, parsed.ident
        now = time.time()
        try:
            if kind == "zones":
                if not payload:  # retained message cleared
                    return
                zc = ZoneCounts.model_validate_json(payload)
                with self._lock:
                    self._zones[zc.zone] = zc
                    blind_at = self._blind_since(now)
                    # a retained copy while blind (a reconnect, before the availability) is
                    # not what the zone shows now: the stream is told the blind counts
                    zc = (
                        self._zone_said(zc, now)
                        if blind_at is None
                        else _blind_counts(zc.zone, zc.total, blind_at, zc.closed)
                    )
                self._emit("zone", zc.model_dump(mode="json"), now)
            elif kind == "displays/content":
                if not payload:
                    return
                dc = DisplayContent.model_validate_json(payload)
                with self._lock:
                    self._displays[dc.display] = dc
                    if not retained:  # published now, not the broker's stored copy
                        self._live_sign_mono = time.monotonic()
                        self._note_gateway_clock(dc.ts - now)
                    self._sign_updates += 1
                self._emit("display", dc.model_dump(mode="json"), now)
            elif kind == "edge/availability":
                if not self._gate.is_site_agent(ident):  # as the gateway: not an agent of ours
                    self._reject("unknown_agent", topic, payload, f"{ident} is no site agent")
                    return
                text = payload.decode("utf-8", "replace")  # exactly, as the gateway takes it
                if text not in (topics.ONLINE, topics.OFFLINE):
                    self._reject(
                        "invalid", topic, payload, "availability must be online or offline"
                    )
                    return
                with self._lock:
                    self._online[ident] = text == topics.ONLINE
                    if not retained:  # a stored copy (maybe restored after a power cut)
                        self._seen[ident] = now  # is no sign of life now
                self._emit("agent", {"agent": ident, "online": text == topics.ONLINE}, now)
            elif kind == "edge/health":
                if not payload:
                    return
                if not self._gate.is_site_agent(ident):
                    self._reject("unknown_agent", topic, payload, f"{ident} is no site agent")
                    return
                wall = time.time()
                taken, left_out = self._gate.take_health(
                    ident, HealthReport.model_validate_json(payload), wall
                )
                for why in left_out:  # parts naming what is not its source's: false alerts
                    self._reject(why.reason, topic, payload, why.detail)
                if taken is None:
                    return
                h = taken
                with self._lock:  # as the gateway: in arrival order within one agent boot
                    problem = self._gate.health_problem(self._health.get(ident), h, wall)
                    if problem is None:
                        self._health[ident] = h
                if problem is not None:
                    self._reject(problem.reason, topic, payload, problem.detail)
                    return
                self._emit("agent", {"agent": ident, "health": h.model_dump(mode="json")}, h.ts)
            elif kind == "entrances/assignment":
                a = Assignment.model_validate_json(payload)
                if self._plate_keep_s == 0 and a.plate is not None:  # the gateway keeps none
                    a = a.model_copy(update={"plate": None})
                with self._lock:
                    if a in self._assignments:  # sent again for a repeated arrival
                        return
                    self._assignments.appendleft(a)
                    held = None
                    if a.space and a.zone and (a.cancelled or a.hold_expires is not None):
                        if a.cancelled:  # its gate took the arrival back: the hold ended
                            self._holds.pop(a.space, None)
                        else:
                            self._holds[a.space] = a.hold_expires
                        c = self._zones.get(a.zone)
                        if c is not None and not self._blind():
                            held = self._zone_said(c, now)
                self._emit("assignment", a.model_dump(mode="json", by_alias=True), now)
                if held is not None:  # the zone offers one space fewer (or more: cancelled)
                    self._emit("zone", held.model_dump(mode="json"), now)
            elif kind == "entrances/refusal":
                r = ArrivalRefusal.model_validate_json(payload)
                # not one the broker kept from before; nor a refused cancel (a resent or late
                # one is normal for a gate: cars there are given spaces), as the gateway judges
                if not retained and not r.cancel:
                    named = {e.id for e in self.site.entrances}
                    entrance = r.entrance if r.entrance in named else "?"
                    self.refusals.note(entrance, r.reason, r.detail, r.ts)
            elif kind == "gateway/availability":
                text = payload.decode("utf-8", "replace")
                if text not in (topics.ONLINE, topics.OFFLINE, ""):  # "": the retained one cleared
                    # not the gateway's word: counted, and what it said before stands (it
                    # raised a critical gateway_offline with every space unknown)
                    self._reject(
                        "invalid", topic, payload, "availability must be online or offline"
                    )
                    return
                online = text == topics.ONLINE
                with self._lock:
                    changed = self._gateway_online != online
                    self._gateway_online = online
                    self._blind_since(now)
                if changed:
                    if online:
                        log.info("gateway is online")
                    else:  # its last will (or a clean stop): the signs blank, spaces unknown
                        log.warning(
                            "gateway is offline (its availability says so): every space and "
                            "zone shows unknown until it is back"
                        )
                    self._emit_gateway_state()
        except (ValidationError, ValueError) as exc:
            self._reject("invalid", topic, payload, str(exc).splitlines()[0])

    # -- the journal ---------------------------------------------------------------------------
    def _load_journal(self) -> None:
        rows, mark = self.tables.stored_spaces()
        # the events journaled after the checkpoint those rows are from: applied on top, so
        # no change is skipped (the gateway writes the checkpoint up to ~1 s after them)
        later = self.tables.events_after(mark)
        changed = []
        with self._lock:
            shown = {space: state for space, (state, _) in self._state.items()}
            for r in rows:
                if r.space in self.site.space_index and r.state in STATE_NAMES:
                    self._set_state(r.space, r.state, r.since)
                    self._last_seen[r.space] = r.last_seen
                    self._observed_since[r.space] = r.observed_since
            for e in later:
                if e.space in self.site.space_index and e.new in STATE_NAMES:
                    self._set_state(e.space, e.new, e.ts)
            self._last_event = later[-1].id if later else mark
            for space, (state, since) in self._state.items():
                if shown.get(space, state) != state:
                    changed.append((space, state, since))
        for space, state, since in changed:  # the live stream hears what the refresh moved
            self._emit("space", {"space": space, "state": self._shown_state(state)}, since)
        meta = self.tables.meta(PLATE_KEEP_KEY, PLATES_FORGOTTEN_KEY, BOOT_CONFLICTS_KEY)
        self._boot_conflicts = meta.get(BOOT_CONFLICTS_KEY)
        keep = meta.get(PLATE_KEEP_KEY)
        self._plate_keep_s = float(keep) if keep is not None else None
        forgotten = meta.get(PLATES_FORGOTTEN_KEY)
        if forgotten != self._plates_forgotten and self._plates_forgotten is not None:
            with self._lock:  # a plate erased (parkguide journal forget-plate): reloaded
                self._assignments.clear()
        self._plates_forgotten = forgotten or "0"
        if not self._assignments:  # at start: the journal's, newest first
            recent = []
            for body in self.tables.recent_assignments(1000):
                try:
                    recent.append(Assignment.model_validate_json(body))
                except ValidationError:
                    continue
            with self._lock:
                if not self._assignments:  # unless the topic brought newer ones meanwhile
                    self._assignments.extend(recent)
                    now = time.time()
                    ended: set[str] = set()  # spaces whose hold a later cancel ended
                    for a in recent:  # the holds still open (the zones' held counts)
                        if not a.space or a.space in ended:
                            continue
                        if a.cancelled:
                            ended.add(a.space)
                        elif a.hold_expires is not None and a.hold_expires > now:
                            self._holds.setdefault(a.space, a.hold_expires)

    def _poll_loop(self) -> None:
        next_refresh = time.monotonic() + REFRESH_SPACES_S
        while not self._stop.wait(self.poll_s):
            try:
                with self._journal_lock:
                    self._tail()
                self._tell_expired_holds(time.time())
                self._check_signs_fresh()
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + REFRESH_SPACES_S
                    with self._journal_lock:
                        self._load_journal()
            except Exception:
                log.exception("reading the journal failed; retrying")

    def _tail(self) -> None:
        rows = self.tables.events_after(self._last_event)
        if not rows:
            return
        changed = []
        zones: dict[str, float] = {}  # zone actions journaled: zone -> time
        with self._lock:
            for e in rows:
                self._last_event = e.id
                if e.source == "manager" and e.agent is not None:
                    self._sent.pop((e.agent, e.space), None)  # the gateway has journaled it
                    if e.zone_closure is not None:
                        self._sent_zones.pop((e.agent, e.zone_closure), None)
                if e.zone_closure is not None:
                    zones[e.zone_closure] = e.ts
                if e.space in self.site.space_index and e.new in STATE_NAMES:
                    self._set_state(e.space, e.new, e.ts)
                    changed.append(e)
        for e in changed:
            self._emit("space", {"space": e.space, "state": self._shown_state(e.new)}, e.ts)
        for zone, ts in zones.items():  # as the gateway's own view tells its pages
            self._emit("closure", {"zone": zone}, ts)

    def _shown_state(self, state: str) -> str:
        return "unknown" if self._blind() and state != "closed" else state

    # -- events --------------------------------------------------------------------------------
    def _emit(self, kind: str, data: dict[str, Any], ts: float) -> None:
        event = LiveEvent(kind, data, ts)
        with self._lock:
            subscribers = list(self._subscribers)
        for cb in subscribers:
            try:
                cb(event)
            except Exception:
                log.exception("live event subscriber failed")

    def _zone_said(self, counts: ZoneCounts, now: float, held: int | None = None) -> ZoneCounts:
        """``counts`` with its held spaces, as the live stream is told them (under the lock)."""
        if held is None:
            held = self._held_by_zone(now).get(counts.zone, 0)
        self._held_said[counts.zone] = held
        return counts.model_copy(update={"held": held})

    def _tell_expired_holds(self, now: float) -> None:
        """A hold that runs out comes with no message: the stream's zone cards are told here
        (else a card offers one space fewer until its zone next changes)."""
        with self._lock:
            if self._blind() or not self._held_said:
                return
            held = self._held_by_zone(now)
            told = [
                self._zone_said(c, now, held.get(zone, 0))
                for zone, said in list(self._held_said.items())
                if (c := self._zones.get(zone)) is not None and held.get(zone, 0) != said
            ]
        for counts in told:
            self._emit("zone", counts.model_dump(mode="json"), now)

    def _set_state(self, space: str, state: str, since: float) -> None:
        """A space's state (under the lock); a held space that leaves ``occupied`` after
        being so for HOLD_SEEN_S had its car seen in it: the gateway ended that hold."""
        was = self._state.get(space)
        if (
            was is not None
            and was[0] == "occupied"
            and state != "occupied"
            and since - was[1] >= HOLD_SEEN_S
        ):
            self._holds.pop(space, None)
        self._state[space] = (state, since)

    def _held_by_zone(self, now: float) -> dict[str, int]:
        """Free spaces held for a car the gateway sent there, per zone, as the assignments
        seen say (zones/{zone} does not carry them: readers of releases before this one
        refuse keys they do not know); one pass over the holds. A hold ends as the
        gateway's does: at its expiry, or once its space stayed occupied for HOLD_SEEN_S (the
        car parked; occupied for a moment and free again, it is still held); while its space
        is unknown, occupied or closed it stays, but is not counted."""
        held: dict[str, int] = {}
        for space, until in list(self._holds.items()):
            state, since = self._state.get(space, ("unknown", 0.0))
            if until <= now or (state == "occupied" and since + HOLD_SEEN_S <= now):
                del self._holds[space]
            elif state == "free":
                zone = self.site.space(space).zone
                held[zone] = held.get(zone, 0) + 1
        return held

    # -- LiveView ------------------------------------------------------------------------------
    def zone_counts(self) -> list[ZoneCounts]:
        now = time.time()
        with self._lock:
            blind_at = self._blind_since(now)
            held = self._held_by_zone(now)
            closed: dict[str, int] | None = None
            out = []
            for z in self.site.zones:
                c = self._zones.get(z.id)
                if c is not None and blind_at is None:
                    out.append(c.model_copy(update={"held": held.get(z.id, 0)}))
                    continue
                total = c.total if c else len(self.site.zone_spaces(z.id))
                ts = now if blind_at is None else blind_at
                if closed is None:  # the closures the journal shows (as /spaces does)
                    closed = self._closed_by_zone()
                out.append(_blind_counts(z.id, total, ts, closed.get(z.id, 0)))
            return out

    def _closed_by_zone(self) -> dict[str, int]:
        """Under the lock: closed spaces per zone, from the journal's states."""
        closed: dict[str, int] = {}
        for sp in self.site.spaces:
            if self._state.get(sp.id, ("unknown",))[0] == "closed":
                closed[sp.zone] = closed.get(sp.zone, 0) + 1
        return closed

    def spaces(self) -> list[SpaceStatus]:
        now = time.time()
        with self._lock:
            blind_at = self._blind_since(now)
            held = {space for space, until in self._holds.items() if until > now}
            out = []
            for sp in self.site.spaces:
                state, since = self._state.get(sp.id, ("unknown", 0.0))
                shown, shown_since = state, since
                if blind_at is not None and state not in ("unknown", "closed"):
                    # unknown since it went blind; a closure is the manager's, not a reading
                    shown, shown_since = "unknown", blind_at
                binding = self.site.bindings.get(sp.id)
                out.append(
                    SpaceStatus(
                        space=sp.id,
                        zone=sp.zone,
                        state=shown,
                        since=shown_since,
                        last_seen=self._last_seen.get(sp.id),
                        source=binding.source if binding else None,
                        # not while a car is in it (being seen: gateway.live_read's _on_their_way)
                        held=sp.id in held and state != "occupied",
                        observed_since=self._observed_since.get(sp.id),
                    )
                )
            return out

    def displays(self) -> dict[str, DisplayContent]:
        """What the signs were last told to show; nothing while the view is blind (the
        gateway's last will, silent, or no broker): the signs blank then, and so do
        their pictures on the dashboard."""
        with self._lock:
            return {} if self._blind() else dict(self._displays)

    def agents(self) -> list[AgentStatus]:
        """Every agent of the site file, and any other heard (none: they are refused). One
        never heard from is offline with no ``last_seen`` and no health."""
        # ended a while after their last refusal, by the gateway's clock
        now = time.time() + self.gateway_clock_offset
        conflicts = parse_boot_conflicts(self._boot_conflicts, now)
        with self._lock:
            names = sorted(self._site_agents | set(self._online) | set(self._health))
            return [
                AgentStatus(
                    agent=a,
                    online=self._online.get(a, False),
                    last_seen=max(
                        (
                            t
                            for t in (
                                self._seen.get(a),
                                self._health[a].ts if a in self._health else None,
                            )
                            if t is not None
                        ),
                        default=None,
                    ),  # fmt: skip
                    health=self._health.get(a),
                    boot_conflict=conflicts.get(a),
                )
                for a in names
            ]

    def assignments(self, limit: int = 100) -> list[Assignment]:
        with self._lock:
            items = list(self._assignments)[:limit]
        keep = self._plate_keep_s
        if keep is None:
            return items
        now = time.time()
        return [
            a.model_copy(update={"plate": None})
            if a.plate is not None and (keep == 0 or (a.hold_expires or a.ts) + keep < now)
            else a
            for a in items
        ]

    def counters(self) -> Counters:
        """What a stand-alone API can know: its own counts; the gateway's are in its /metrics."""
        with self._lock:
            return Counters(
                rejected=dict(self._rejected),
                state_changes=self._last_event,
                sign_updates=self._sign_updates,
                outbox_depth=self.tables.outbox_depth(),
                outbox_dropped_cap=self.tables.outbox_dropped_by_cap(),
                gateway_counts=False,
            )

    def subscribe(self, callback: Callable[[LiveEvent], None]) -> Callable[[], None]:
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def _note_gateway_clock(self, offset: float) -> None:
        """Keep the gateway's clock offset (called under the lock); say once when this
        host's clock is far off: its requests would otherwise be refused as stale (a clock
        behind) or taken as newer than they are."""
        self.gateway_clock_offset = offset
        if abs(offset) > GATEWAY_CLOCK_SAY_S and not self._offset_said:
            self._offset_said = True
            log.warning(
                "this host's clock is %.0f s %s the gateway's: managers' requests are stamped by"
                " the gateway's clock; synchronise this host (NTP)",
                abs(offset),
                "behind" if offset > 0 else "ahead of",
            )

    def recent_refusals(self) -> dict[str, EntranceRefusals]:
        return self.refusals.recent(time.time() + self.gateway_clock_offset)

    judges_controls = False  # the caller judges on the journal, then this sends it

    def control_unavailable(self) -> str | None:
        """Why a manager's action cannot reach the gateway now: sent anyway, it would wait
        at the broker (or in this process) and be applied whenever the gateway is back,
        long after the manager was told it was done."""
        if not self.connected.is_set():
            return (
                f"nothing changed: this API cannot reach the MQTT broker {self.broker.url};"
                " try again when it is back"
            )
        if self.gateway_online() is not True:
            return (
                "nothing changed: the gateway is offline (its last will stands, or it has"
                " gone silent); try again when it is back"
            )
        return None

    def control_space(
        self, space: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> None:
        """Ask the gateway to close or open a space (QoS 1; the gateway journals it). Judged
        by the caller beforehand, ``expect`` too (the gateway is not told it)."""
        if space not in self.site.space_index:
            raise ValueError(f"no space {space!r} in site {self.site.id!r}")
        topic = topics.space_control(self.site.id, space)
        self._send_noted(self._sent, (by, space), topic, action, by, reason, "space")

    def settle(
        self,
        spaces: Collection[str],
        zones: Collection[str] = (),
        within: float = SETTLE_S,
        by: str | None = None,
    ) -> bool:
        """Read the journal's newest events now, and if this API sent a control for one of
        ``spaces`` or ``zones`` within ``within`` (``by``'s only, when given) that the
        journal does not show yet, wait for it (at most until ``within`` after the send):
        the next action is judged on the state the last one left. False when one never
        showed (the gateway refused it, or never had it)."""
        shown = True
        spaces, zones = set(spaces), set(zones)
        while True:
            with self._journal_lock:
                self._tail()
            with self._lock:
                waiting = False
                for sent, keys in ((self._sent, spaces), (self._sent_zones, zones)):
                    for key in [k for k in sent if k[1] in keys and by in (None, k[0])]:
                        if time.monotonic() - sent[key] >= within:
                            del sent[key]  # refused, or journaled no event: go on
                            shown = False
                        else:
                            waiting = True
            if not waiting or self._stop.wait(0.02):
                return shown

    def control_zone(
        self, zone: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> None:
        """Ask the gateway to close or open a whole zone (QoS 1; the gateway journals it);
        judged like :meth:`control_space`."""
        if zone not in {z.id for z in self.site.zones}:
            raise ValueError(f"no zone {zone!r} in site {self.site.id!r}")
        topic = topics.zone_control(self.site.id, zone)
        self._send_noted(self._sent_zones, (by, zone), topic, action, by, reason, "zone")

    def _send_noted(
        self,
        sent: dict[tuple[str, str], float],
        key: tuple[str, str],
        topic: str,
        action: str,
        by: str,
        reason: str | None,
        what: str,
    ) -> None:
        """Send a control, noted as awaiting its journal event in ``sent`` before the send
        (the poll thread may tail its event before the send returns), unless it failed."""
        with self._lock:
            sent[key] = time.monotonic()
        try:
            self._send_control(topic, action, by, reason, what)
        except Exception:
            with self._lock:
                sent.pop(key, None)
            raise

    def _send_control(
        self, topic: str, action: str, by: str, reason: str | None, what: str
    ) -> None:
        why = self.control_unavailable()
        if why is not None:
            raise ControlUnavailable(why)
        ts = time.time() + self.gateway_clock_offset
        msg = SpaceControl(action=action, by=by, reason=reason, ts=ts)  # type: ignore[arg-type]
        info = self.client.publish(
            topic,
            msg.model_dump_json().encode(),
            qos=topics.QOS_CONTROL,
            retain=topics.RETAIN_CONTROL,
        )
        if info.rc == mqtt.MQTT_ERR_NO_CONN:
            # lost between the check and the send: paho keeps it and sends it on reconnect,
            # where the gateway refuses it once it is CONTROL_MAX_AGE_S old
            raise ControlUnavailable(
                f"the connection to the MQTT broker {self.broker.url} was lost as this was"
                f" sent: it is applied only if the broker is back within"
                f" {CONTROL_MAX_AGE_S:.0f} s; check the {what} then"
            )
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise ValueError(
                f"could not send the request to the gateway ({mqtt.error_string(info.rc)})"
            )
