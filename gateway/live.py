"""The gateway's engine and its in-process read side (``gateway.readside.LiveView``).

:class:`LiveGateway` turns incoming MQTT messages into journaled state changes,
allocation core updates, and the zone counts, sign contents and assignments to
publish. It does no network I/O itself: the service hands it a ``publish``
function and calls :meth:`LiveGateway.handle` from the MQTT thread and
:meth:`LiveGateway.tick` from a timer. One lock serialises all of it, so the
API thread can read consistent snapshots.

Order per message: validate -> apply to the state arrays -> commit the journal
transaction (events, current state, sequence, outbox) -> update the core ->
publish what changed. Nothing derived from a change leaves before its commit.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np

from gateway.allocation import AllocationCore, CoreLayout
from gateway.displays import LineLayout, content, render_lines
from gateway.ingest import (
    AcceptedReport,
    Rejection,
    RejectionLog,
    ReportGate,
    decode,
    decode_report,
)
from gateway.journal import History, Journal
from gateway.readside import AgentStatus, Counters, LiveEvent, SpaceStatus
from gateway.state import FREE, NO_CHANGES, Changes, LiveState
from parking import topics
from parking.payloads import (
    Arrival,
    Assignment,
    DisplayContent,
    DisplayLine,
    HealthReport,
    LocalText,
    SpaceControl,
    ZoneCounts,
)
from parking.site import Site
from parking.states import STATE_NAMES

log = logging.getLogger(__name__)

Publish = Callable[[str, bytes, int, bool], None]
"""publish(topic, payload, qos, retain)"""

MINUTE_CHECK_S = 10.0
ZONE_HISTORY_S = 10.0
LATENCY_KEEP = 1000


def minute_of_day(wall: float, tz: ZoneInfo) -> int:
    """Local minute of the day at UNIX time ``wall`` in the site's timezone."""
    t = datetime.fromtimestamp(wall, tz)
    return t.hour * 60 + t.minute


@dataclass(frozen=True)
class _Sign:
    """A sign's new content, rendered and serialised once."""

    display: int
    lines: list[DisplayLine]
    content: DisplayContent
    payload: bytes


class LiveGateway:
    """State, journal, allocation core and sign contents of one site."""

    def __init__(
        self,
        site: Site,
        journal: Journal,
        publish: Publish,
        *,
        hold_s: float = 180.0,
        core_options: dict[str, float] | None = None,
        history: History | None = None,
        clock: Callable[[], float] = time.time,
        mono: Callable[[], float] = time.monotonic,
    ):
        self.site = site
        self.journal = journal
        self._publish = publish
        self.hold_s = hold_s
        self.history = history
        self._clock = clock
        self._mono = mono
        self.lock = threading.RLock()
        self.tz = ZoneInfo(site.timezone)
        self.state = LiveState(site)
        self.gate = ReportGate(site)
        self.rejections = RejectionLog(mono)
        self.layout = CoreLayout.from_site(site)
        now = clock()
        self.minute = minute_of_day(now, self.tz)
        self.core = AllocationCore(self.layout, self.minute, **(core_options or {}))
        self.lines = LineLayout.from_site(site)
        self._entrance = {e: i for i, e in enumerate(self.layout.entrances)}
        self._class = {c: i for i, c in enumerate(self.layout.classes)}
        self._zone_name = {z.id: z.name for z in site.zones}
        n_lines = len(self.lines.line_display)
        self._lf = np.full(n_lines, -1, dtype=np.int64)
        self._lu = np.full(n_lines, -1, dtype=np.int64)
        self._lt = np.full(n_lines, -1, dtype=np.int64)
        self._shown: dict[int, list[DisplayLine]] = {}
        self._contents: dict[int, DisplayContent] = {}
        self._zone_published: dict[int, tuple[int, ...]] = {}
        self._online: dict[str, bool] = {}
        self._agent_seen: dict[str, float] = {}
        self._health: dict[str, HealthReport] = {}
        self._subscribers: list[Callable[[LiveEvent], None]] = []
        self._latency: deque[float] = deque(maxlen=LATENCY_KEEP)
        self.accepted = 0
        self.state_changes = 0
        self.sign_updates = 0
        self.outbox_stats: Callable[[], dict[str, Any]] | None = None
        self._next_minute_check = 0.0
        self._next_zone_history = 0.0
        self._live = False  # nothing is sent before the first publish_all (connected)
        self.resume()

    # -- startup -----------------------------------------------------------------------------
    def resume(self) -> None:
        """Load the journal's current state, sequences and open holds."""
        now, mono = self._clock(), self._mono()
        stored_agents = {a.agent: a for a in self.journal.agents()}
        for a in stored_agents.values():
            if a.boot is not None and a.seq is not None:
                self.gate.restore(a.agent, a.boot, a.seq)
            self._online[a.agent] = a.online
            self._agent_seen[a.agent] = a.last_seen
        index = self.site.space_index
        codes = {name: i for i, name in enumerate(STATE_NAMES)}
        loaded = 0
        for (
            space,
            _state,
            sensed,
            closed,
            since,
            obs_since,
            last_seen,
            agent,
        ) in self.journal.spaces():
            s = index.get(space)
            if s is None:  # the site file dropped this space
                continue
            heard = stored_agents[agent].last_seen if agent in stored_agents else 0.0
            self.state.restore(
                s,
                codes[sensed],
                bool(closed),
                since,
                obs_since,
                max(last_seen, heard),
                agent,
                now,
                mono,
            )
            loaded += 1
        self.state.finish_restore()
        self.core.update_many(
            np.arange(len(self.site.spaces), dtype=np.int64), self.state.state.copy(), now
        )
        holds = [
            (index[sp], until)
            for sp, until in self.journal.open_holds(now)
            if sp in index and self.state.state[index[sp]] == FREE
        ]
        if holds:
            for s, until in holds:
                self.core.held_until[s] = until
            self.core.recompute()
        log.info(
            "resumed %d spaces, %d agents, %d holds from %s",
            loaded,
            len(stored_agents),
            len(holds),
            self.journal.path,
        )
        with self.lock:
            self._snapshot_lines()
            for d in range(len(self.site.displays)):
                self._shown[d] = self._render(d)
            self._commit_and_propagate(self.state.expire(now, mono), now, source=None)
            # the signs as of now, so a restart can show them before it has loaded everything
            signs = [self._sign(d, self._shown[d], now) for d in range(len(self.site.displays))]
            with self.journal.transaction():
                self.journal.put_signs(self._sign_rows(signs))
            for sign in signs:
                self._contents[sign.display] = sign.content

    # -- entry points ------------------------------------------------------------------------
    def handle(self, topic: str, payload: bytes) -> None:
        """One MQTT message; never raises for bad input (rejected and counted instead)."""
        t0 = time.perf_counter()
        parsed = topics.parse(topic)
        if parsed is None or parsed.site != self.site.id:
            self._reject(Rejection("unknown_topic", topic), topic, payload)
            return
        kind = parsed.kind
        if kind == "edge/occupancy":
            self._on_report(topic, parsed.ident, payload, t0)
        elif kind == "edge/availability":
            self._on_availability(topic, parsed.ident, payload)
        elif kind == "edge/health":
            self._on_health(topic, parsed.ident, payload)
        elif kind == "entrances/arrival":
            self._on_arrival(topic, parsed.ident, payload)
        elif kind == "control/spaces":
            self._on_control(topic, parsed.ident, payload)

    def tick(self) -> None:
        """Timers: TTL expiry, hold expiry, sign refresh, policy minute, zone history."""
        now, mono = self._clock(), self._mono()
        with self.lock:
            self._commit_and_propagate(self.state.expire(now, mono), now, source=None)
            if self.core.expire_holds(now):
                self._refresh_displays(now)
            if mono >= self._next_minute_check:
                self._next_minute_check = mono + MINUTE_CHECK_S
                minute = minute_of_day(now, self.tz)
                if minute != self.minute:
                    self.minute = minute
                    if self.core.set_minute(minute):
                        self._refresh_displays(now)
            half = self.site.display_settings.expires_s / 2
            for d, c in list(self._contents.items()):
                if now >= c.ts + half:
                    self._publish_display(d, self._shown[d], now)
            if self.history is not None and mono >= self._next_zone_history:
                self._next_zone_history = mono + ZONE_HISTORY_S
                with self.journal.transaction() as conn:
                    self.history.zone_occupancies(
                        conn,
                        [
                            (zone, self.state.zone_row(z), now)
                            for z, zone in enumerate(self.state.zone_ids)
                        ],
                    )

    def publish_all(self) -> None:
        """(Re)connected: publish every zone and sign afresh (the broker may have lost them)."""
        now = self._clock()
        with self.lock:
            self._live = True
            self._zone_published.clear()
            self._publish_zones(range(len(self.state.zone_ids)), now)
            for d in range(len(self.site.displays)):
                self._publish_display(d, self._shown[d], now)

    # -- message kinds -----------------------------------------------------------------------
    def _on_report(self, topic: str, agent: str, payload: bytes, t0: float) -> None:
        report = decode_report(agent, payload)
        if isinstance(report, Rejection):
            self._reject(report, topic, payload)
            return
        with self.lock:
            acc = self.gate.check(report, self.state.obs_since)
            if isinstance(acc, Rejection):
                self._reject(acc, topic, payload)
                return
            for r in acc.rejected:
                self._reject(r, topic, payload)
            now, mono = self._clock(), self._mono()
            changes = self.state.observe(acc.spaces, acc.states, acc.since, agent, now, mono)
            if not acc.gap:
                self.state.touch(self.gate.source_spaces(acc.source), now, mono)
            self._online[agent] = True
            self._agent_seen[agent] = now
            self._commit_and_propagate(changes, now, source=acc.source, report=acc)
            self.gate.commit(acc)
            self.accepted += 1
            self._latency.append(time.perf_counter() - t0)

    def _on_availability(self, topic: str, agent: str, payload: bytes) -> None:
        text = payload.decode("utf-8", "replace").strip()
        if text not in (topics.ONLINE, topics.OFFLINE):
            self._reject(
                Rejection("invalid", "availability must be online or offline"), topic, payload
            )
            return
        online = text == topics.ONLINE
        now = self._clock()
        with self.lock:
            self._online[agent] = online
            changes = NO_CHANGES if online else self.state.agent_offline(agent, now)
            self._commit_and_propagate(changes, now, source=None, agent_state=(agent, online))
        self._emit("agent", {"agent": agent, "online": online}, now)

    def _on_health(self, topic: str, agent: str, payload: bytes) -> None:
        health = decode(HealthReport, payload)
        if isinstance(health, Rejection):
            self._reject(health, topic, payload)
            return
        if health.agent != agent:
            self._reject(Rejection("agent_mismatch", f"health of {health.agent!r}"), topic, payload)
            return
        with self.lock:
            self._health[agent] = health
        self._emit("agent", {"agent": agent, "health": health.model_dump(mode="json")}, health.ts)

    def _on_control(self, topic: str, space: str, payload: bytes) -> None:
        control = decode(SpaceControl, payload)
        if isinstance(control, Rejection):
            self._reject(control, topic, payload)
            return
        try:
            self.control_space(space, control.action, control.by, control.reason)
        except ValueError as exc:
            self._reject(Rejection("unknown_space", str(exc)), topic, payload)

    def _on_arrival(self, topic: str, entrance: str, payload: bytes) -> None:
        arrival = decode(Arrival, payload)
        if isinstance(arrival, Rejection):
            self._reject(arrival, topic, payload)
            return
        e = self._entrance.get(entrance)
        if e is None:
            self._reject(Rejection("unknown_entrance", f"entrance {entrance!r}"), topic, payload)
            return
        c = self._class.get(arrival.vehicle_class)
        if c is None:
            self._reject(
                Rejection("unknown_class", f"vehicle class {arrival.vehicle_class!r}"),
                topic,
                payload,
            )
            return
        with self.lock:
            now = self._clock()
            s = self.core.assign(e, c, now, self.hold_s)
            if s >= 0:
                space = self.site.spaces[s]
                zone_name = self._zone_name[space.zone]
                assignment = Assignment(
                    entrance=entrance,
                    vehicle_class=arrival.vehicle_class,
                    space=space.id,
                    zone=space.zone,
                    route=self.core.route(e, s),
                    hint=LocalText(
                        zh=f"请前往{zone_name.zh} {space.id} 车位",
                        en=f"Go to {zone_name.en}, space {space.id}",
                    ),
                    hold_expires=now + self.hold_s,
                    plate=arrival.plate,
                    request_id=arrival.request_id,
                    ts=now,
                )
            else:
                assignment = Assignment(
                    entrance=entrance,
                    vehicle_class=arrival.vehicle_class,
                    space=None,
                    zone=None,
                    hint=LocalText(zh="车位已满", en="No space available"),
                    hold_expires=None,
                    plate=arrival.plate,
                    request_id=arrival.request_id,
                    ts=now,
                )
            body = assignment.model_dump_json(by_alias=True)
            signs = self._changed_signs(now)  # the hold takes the space off the signs
            with self.journal.transaction():
                self.journal.put_signs(self._sign_rows(signs))
                self.journal.add_assignment(
                    now,
                    entrance,
                    arrival.vehicle_class,
                    assignment.space,
                    assignment.zone,
                    assignment.hold_expires,
                    arrival.plate,
                    arrival.request_id,
                    body,
                )
            self._send(
                topics.assignment(self.site.id, entrance),
                body.encode(),
                topics.QOS_ASSIGNMENT,
                topics.RETAIN_ASSIGNMENT,
            )
            for sign in signs:
                self._publish_sign(sign, now)
        self._emit("assignment", json.loads(body), now)

    # -- the pipeline ------------------------------------------------------------------------
    def _commit_and_propagate(
        self,
        changes: Changes,
        now: float,
        *,
        source: str | None,
        report: AcceptedReport | None = None,
        agent_state: tuple[str, bool] | None = None,
        by: str | None = None,
    ) -> None:
        """Update the core, journal the changes and the signs they change (one transaction),
        then publish."""
        if len(changes):
            self.core.update_many(changes.spaces, changes.new, now)
        signs = self._changed_signs(now) if len(changes) else []
        if len(changes.touched) or report is not None or agent_state is not None or signs:
            self._journal(changes, now, source, report, agent_state, by, signs)
        if len(changes) == 0:
            return
        self.state_changes += len(changes)
        self._publish_zones(changes.zones.tolist(), now)
        for sign in signs:
            self._publish_sign(sign, now)
        if self._subscribers:
            ids = self.state.space_ids
            for s, new in zip(changes.spaces.tolist(), changes.new.tolist(), strict=True):
                self._emit("space", {"space": ids[s], "state": STATE_NAMES[new]}, now)

    def _journal(
        self,
        changes: Changes,
        now: float,
        source: str | None,
        report: AcceptedReport | None,
        agent_state: tuple[str, bool] | None,
        by: str | None,
        signs: list[_Sign],
    ) -> None:
        st = self.state
        ids, names = st.space_ids, STATE_NAMES
        agent = by if by is not None else (report.agent if report else None)
        seq = report.seq if report else None
        spaces = changes.spaces.tolist()
        with self.journal.transaction() as conn:
            if spaces:
                if source is None and by is None:  # the gateway's own verdict (TTL, last will)
                    src = [
                        st.sources[i] if i >= 0 else None for i in st.bound_source[spaces].tolist()
                    ]
                else:
                    src = [source] * len(spaces)
                self.journal.add_events(
                    (now, ids[s], names[o], names[n], src[k], agent, seq)
                    for k, (s, o, n) in enumerate(
                        zip(spaces, changes.old.tolist(), changes.new.tolist(), strict=True)
                    )
                )
            touched = changes.touched.tolist()
            if touched:
                self.journal.put_spaces(
                    (
                        ids[s],
                        names[st.state[s]],
                        names[st.sensed[s]],
                        int(st.closed[s]),
                        float(st.since[s]),
                        float(st.obs_since[s]),
                        float(st.last_seen[s]),
                        st.agent_of(s),
                    )
                    for s in touched
                )
            if signs:
                self.journal.put_signs(self._sign_rows(signs))
            if report is not None:
                self.journal.put_agent(report.agent, report.boot, report.seq, True, now)
            if agent_state is not None:
                self.journal.put_agent(agent_state[0], None, None, agent_state[1], now)
            if self.history is not None and spaces:
                zone_of, zone_ids = st.zone, st.zone_ids
                self.history.space_states(
                    conn,
                    [
                        (zone_ids[zone_of[s]], ids[s], names[n], now)
                        for s, n in zip(spaces, changes.new.tolist(), strict=True)
                    ],
                )
                self.history.zone_occupancies(
                    conn, [(zone_ids[z], st.zone_row(z), now) for z in changes.zones.tolist()]
                )

    def _send(self, topic: str, payload: bytes, qos: int, retain: bool) -> None:
        if self._live:
            self._publish(topic, payload, qos, retain)

    def _publish_zones(self, zones: Any, now: float) -> None:
        for z in zones:
            row = self.state.zone_row(z)
            key = tuple(row.values())
            if self._zone_published.get(z) == key:
                continue
            self._zone_published[z] = key
            zone_id = self.state.zone_ids[z]
            msg = ZoneCounts(zone=zone_id, ts=now, **row)
            self._send(
                topics.zone(self.site.id, zone_id),
                msg.model_dump_json().encode(),
                topics.QOS_ZONE,
                topics.RETAIN_ZONE,
            )
            self._emit("zone", msg.model_dump(mode="json"), now)

    def _render(self, d: int) -> list[DisplayLine]:
        return render_lines(
            self.site,
            self.lines,
            d,
            self.core.line_free,
            self.core.line_unknown,
            self.core.line_total,
        )

    def _snapshot_lines(self) -> None:
        self._lf[:] = self.core.line_free
        self._lu[:] = self.core.line_unknown
        self._lt[:] = self.core.line_total

    def _changed_signs(self, now: float) -> list[_Sign]:
        """Signs whose rendered lines differ from what they show (only lines that moved are
        looked at)."""
        lf, lu, lt = self.core.line_free, self.core.line_unknown, self.core.line_total
        moved = np.flatnonzero((lf != self._lf) | (lu != self._lu) | (lt != self._lt))
        if len(moved) == 0:
            return []
        self._lf[moved] = lf[moved]
        self._lu[moved] = lu[moved]
        self._lt[moved] = lt[moved]
        out = []
        for d in self.lines.displays_of(moved):
            lines = self._render(d)
            if lines != self._shown.get(d):
                out.append(self._sign(d, lines, now))
        return out

    def _refresh_displays(self, now: float) -> None:
        """Holds or policy windows moved: journal and publish the signs that changed."""
        signs = self._changed_signs(now)
        if not signs:
            return
        with self.journal.transaction():
            self.journal.put_signs(self._sign_rows(signs))
        for sign in signs:
            self._publish_sign(sign, now)

    def _sign(self, d: int, lines: list[DisplayLine], now: float) -> _Sign:
        c = content(self.site, d, lines, now)
        return _Sign(d, lines, c, c.model_dump_json().encode())

    def _sign_rows(self, signs: list[_Sign]) -> list[tuple[str, str, str, float]]:
        expires_s = self.site.display_settings.expires_s
        return [
            (
                s.content.display,
                topics.display_content(self.site.id, s.content.display),
                s.payload.decode(),
                expires_s,
            )
            for s in signs
        ]

    def _publish_display(self, d: int, lines: list[DisplayLine], now: float) -> None:
        """Publish a sign afresh (new ts and expiry)."""
        self._publish_sign(self._sign(d, lines, now), now)

    def _publish_sign(self, sign: _Sign, now: float) -> None:
        self._shown[sign.display] = sign.lines
        self._contents[sign.display] = sign.content
        self._send(
            topics.display_content(self.site.id, sign.content.display),
            sign.payload,
            topics.QOS_DISPLAY,
            topics.RETAIN_DISPLAY,
        )
        self.sign_updates += 1
        if self._subscribers:
            self._emit("display", sign.content.model_dump(mode="json"), now)

    # -- rejections and events ---------------------------------------------------------------
    def _reject(self, rejection: Rejection, topic: str, payload: bytes | None) -> None:
        with self.lock:
            self.rejections.reject(rejection, topic, payload)

    def _emit(self, kind: str, data: dict[str, Any], ts: float) -> None:
        if not self._subscribers:
            return
        event = LiveEvent(kind, data, ts)
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:  # a subscriber's bug must not stop the gateway
                log.exception("live event subscriber failed")

    # -- LiveView ----------------------------------------------------------------------------
    def zone_counts(self) -> list[ZoneCounts]:
        now = self._clock()
        with self.lock:
            return [
                ZoneCounts(zone=z, ts=now, **self.state.zone_row(i))
                for i, z in enumerate(self.state.zone_ids)
            ]

    def spaces(self) -> list[SpaceStatus]:
        now = self._clock()
        with self.lock:
            st = self.state
            held = self.core.held_until > now
            out = []
            for s, sp in enumerate(self.site.spaces):
                src = int(st.bound_source[s])
                out.append(
                    SpaceStatus(
                        space=sp.id,
                        zone=sp.zone,
                        state=STATE_NAMES[st.state[s]],
                        since=float(st.since[s]),
                        last_seen=float(st.last_seen[s]) if st.last_seen[s] > 0 else None,
                        source=st.sources[src] if src >= 0 else None,
                        held=bool(held[s]),
                    )
                )
            return out

    def displays(self) -> dict[str, DisplayContent]:
        with self.lock:
            return {c.display: c for c in self._contents.values()}

    def agents(self) -> list[AgentStatus]:
        with self.lock:
            names = set(self._online) | set(self._health) | set(self.state.agents)
            return [
                AgentStatus(
                    agent=a,
                    online=self._online.get(a, False),
                    last_seen=self._agent_seen.get(a),
                    health=self._health.get(a),
                )
                for a in sorted(names)
            ]

    def assignments(self, limit: int = 100) -> list[Assignment]:
        with self.lock:
            bodies = self.journal.recent_assignments(limit)
        return [Assignment.model_validate_json(b) for b in bodies]

    def counters(self) -> Counters:
        with self.lock:
            c = Counters(
                accepted=self.accepted,
                rejected=dict(self.rejections.counts),
                state_changes=self.state_changes,
                sign_updates=self.sign_updates,
                latency_s=list(self._latency),
            )
        if self.outbox_stats is not None:
            stats = self.outbox_stats()
            c.outbox_depth = int(stats.get("depth", stats.get("outbox_depth", 0)) or 0)
            c.outbox_dropped = int(stats.get("dropped", stats.get("outbox_dropped", 0)) or 0)
        return c

    def subscribe(self, callback: Callable[[LiveEvent], None]) -> Callable[[], None]:
        with self.lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self.lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def control_space(self, space: str, action: str, by: str, reason: str | None) -> None:
        s = self.site.space_index.get(space)
        if s is None:
            raise ValueError(f"no space {space!r} in site {self.site.id!r}")
        if action not in ("close", "open"):
            raise ValueError(f"action must be 'close' or 'open', not {action!r}")
        now = self._clock()
        with self.lock:
            changes = self.state.control(s, action == "close", now)
            self._commit_and_propagate(changes, now, source="manager", by=by)
        if reason:
            log.info("space %s %sd by %s: %s", space, action, by, reason)
        self._emit(
            "space",
            {
                "space": space,
                "state": STATE_NAMES[int(self.state.state[s])],
                "action": action,
                "by": by,
                "reason": reason,
            },
            now,
        )
