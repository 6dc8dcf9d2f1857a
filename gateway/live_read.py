"""The gateway engine's read side for the in-process API (``gateway.readside.LiveView``):
snapshots of zones, spaces, signs, agents, assignments and counters taken under the lock,
and the stream of live events. A part of :class:`gateway.live.LiveGateway`, apart because
it only reads what the rest of the engine writes.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from gateway.readside import AgentStatus, Counters, EntranceRefusals, LiveEvent, SpaceStatus
from parking.payloads import Assignment, DisplayContent, ZoneCounts
from parking.states import STATE_NAMES


class LiveRead:
    """A part of LiveGateway, sharing its state and lock: its read side (LiveView)."""

    def zone_counts(self) -> list[ZoneCounts]:
        now = self._clock()
        with self.lock:
            held = self._held_by_zone()
            return [
                # the time of the counts as published (the stand-alone API's, from the topic)
                ZoneCounts(
                    zone=z,
                    ts=self._zone_ts.get(i, now),
                    held=held.get(i, 0),
                    **self.state.zone_row(i),
                )
                for i, z in enumerate(self.state.zone_ids)
            ]

    def _on_their_way(self) -> np.ndarray:
        """bool[S], under the lock: spaces held for a car that may still be on its way. By
        the core's own time (the wall clock may have stepped), and not while the car is
        being seen in it (occupied, the hold ending ``hold_seen_s`` later): the stand-alone
        API's view says the same (api.mqttview)."""
        out = self.core.held_until > self.core.now
        seen = self.core.seen_since
        if seen:
            out[list(seen)] = False
        return out

    def spaces(self) -> list[SpaceStatus]:
        # only the arrays are copied under the lock: building one object per space (20,000 on
        # a big site) while holding it would keep reports waiting
        with self.lock:
            st = self.state
            held = self._on_their_way().tolist()
            states = st.state.tolist()
            since = st.since.tolist()
            last_seen = st.last_seen.tolist()
            obs_since = st.obs_since.tolist()
            bound = st.bound_source.tolist()
            sources = st.sources
        return [
            SpaceStatus(
                space=sp.id,
                zone=sp.zone,
                state=STATE_NAMES[states[s]],
                since=since[s],
                last_seen=last_seen[s] if last_seen[s] > 0 else None,
                source=sources[bound[s]] if bound[s] >= 0 else None,
                held=held[s],
                observed_since=obs_since[s] if obs_since[s] > 0 else None,
            )
            for s, sp in enumerate(self.site.spaces)
        ]

    def displays(self) -> dict[str, DisplayContent]:
        with self.lock:
            return {
                self.site.displays[d].id: self.renderer.content(d, lines, self._shown_ts[d])
                for d, lines in self._shown.items()
                if d in self._shown_ts
            }

    @property
    def broker_up(self) -> bool:
        return self._broker_up

    @broker_up.setter
    def broker_up(self, up: bool) -> None:
        # regained, or reached for the first time (a box rebooted: broker and agents too)
        if up and (not self._broker_up or self._broker_up_at is None):
            self._broker_up_at = self._clock()
        self._broker_up = up

    def broker_connected(self) -> bool:
        """The service's word on its MQTT connection (True in-process without one)."""
        return self._broker_up

    def broker_back_since(self) -> float | None:
        """Wall time the broker connection was last (re)gained (None: never, in-process)."""
        return self._broker_up_at if self._broker_up else None

    def agents(self) -> list[AgentStatus]:
        """Every agent of the site file: one never heard from (not in the journal either) is
        offline, with no ``last_seen`` and no health (``agent_never_seen``)."""
        with self.lock:
            names = set(self._online) | set(self._health) | set(self.state.agents)
            # an agent the site file no longer names (renamed, removed) is none of the
            # site's: the journal still knows it, but it is not offline for good
            names = {a for a in names if self.gate.is_site_agent(a)}
            names |= {b.agent for b in self.site.buses} | {c.agent for c in self.site.cameras}
            conflicts = self.boot_conflicts.recent(self._clock())
            return [
                AgentStatus(
                    agent=a,
                    online=self._online.get(a, False),
                    last_seen=self._agent_seen.get(a),
                    health=self._health.get(a),
                    boot_conflict=conflicts.get(a),
                )
                for a in sorted(names)
            ]

    def assignments(self, limit: int = 100) -> list[Assignment]:
        with self.lock:
            bodies = self.journal.recent_assignments(limit)
        return [Assignment.model_validate_json(b) for b in bodies]

    def outputs(self) -> tuple[int, int, int]:
        """Counts of what handling messages produced (state changes, signs published,
        assignments answered): equal before and after a batch that moved nothing."""
        return self.state_changes, self.sign_updates, self.answered

    def counters(self) -> Counters:
        with self.lock:
            c = Counters(
                accepted=self.accepted,
                rejected=dict(self.rejections.counts),
                state_changes=self.state_changes,
                sign_updates=self.sign_updates,
                repeated_arrivals=self.repeated_arrivals,
                reused_request_ids=self.reused_request_ids,
                refused_arrivals=dict(self.refused_arrivals),
                arrival_cancels=dict(self.arrival_cancels),
                unheld_arrivals=dict(self.desk.unheld),
                reports_missed=dict(self.reports_missed),
                seq_jumps=dict(self.seq_jumps),
                report_lag_s=self.current_lags(),
                latency_s=list(self._latency),
            )
        if self.outbox_stats is not None:
            stats = self.outbox_stats()
            c.outbox_depth = int(stats.get("depth", 0) or 0)
            c.outbox_dropped_cap = int(stats.get("dropped_cap", 0) or 0)
            c.outbox_dropped_rejected = int(stats.get("dropped_rejected", 0) or 0)
            c.outbox_written = int(stats.get("written", 0) or 0)
            c.outbox_auth_failed = int(stats.get("auth_failed", 0) or 0)
            c.outbox_error = stats.get("error") or None
        return c

    def subscribe(self, callback: Callable[[LiveEvent], None]) -> Callable[[], None]:
        with self.lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self.lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def recent_refusals(self) -> dict[str, EntranceRefusals]:
        return self.refusals.recent(self._clock())
