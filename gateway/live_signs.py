"""What the gateway's engine publishes for drivers: each sign's content, rendered from the
core's line counts when they move (and again before it expires), and each zone's counts. A
part of :class:`gateway.live.LiveGateway`, apart because rendering and publishing come after
the state, the core and the journal have done their part, whatever changed them.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

from gateway.displays import RenderedLine
from gateway.live_types import _Sign
from gateway.state import FREE
from parking import topics


class LiveSigns:
    """A part of LiveGateway, sharing its state and lock: the signs and zone counts it publishes."""

    def _held_by_zone(self) -> dict[int, int]:
        """Free spaces held for arriving cars, per zone: for the views (the dashboard, in
        this process), not the wire (readers of zones/{zone} refuse keys they do not know)."""
        views = self.state.views
        zone, state = views.zone, views.state
        held: dict[int, int] = {}
        for s in self.core.held_spaces():
            if state[s] == FREE:
                z = zone[s]
                held[z] = held.get(z, 0) + 1
        return held

    def _publish_zones(self, zones: list[int] | range, now: float) -> None:
        zones = list(zones)
        if not zones:
            return
        # the views' events carry how many free spaces are held, so they also go when only
        # that moved (a hold began or ended); the retained topic goes when the counts do
        held = self._held_by_zone() if self._subscribers else {}
        for z, (u, f, o, c) in zip(zones, self.state.zone_counts[zones].tolist(), strict=True):
            key = (u, f, o, c)
            wire = self._zone_published.get(z) != key
            h = held.get(z, 0)
            told = self._subscribers and self._zone_told.get(z) != (key, h)
            if not (wire or told):
                continue
            if wire:
                self._zone_published[z] = key
                self._zone_ts[z] = now
            payload = (
                f'{{"zone":{self._zone_json[z]},"free":{f},"occupied":{o},"unknown":{u},'
                f'"closed":{c},"total":{u + f + o + c},"ts":{self._zone_ts[z]!r}}}'
            )
            if wire:
                self._send(
                    self._zone_topics[z], payload.encode(), topics.QOS_ZONE, topics.RETAIN_ZONE
                )
            if self._subscribers:
                self._zone_told[z] = (key, h)
                self._emit("zone", {**json.loads(payload), "held": h}, now)

    def _render(self, d: int) -> tuple[RenderedLine, ...]:
        core = self.core
        return self.renderer.lines(
            d, core.line_free, core.line_unknown, core.line_total, core.line_capacity
        )

    def _line_counts(self) -> tuple[list[int], list[int], list[int], list[int]]:
        """Per sign line: free, unknown, total (not closed) and capacity (closed or not)."""
        core = self.core
        return (
            core.line_free.tolist(),
            core.line_unknown.tolist(),
            core.line_total.tolist(),
            core.line_capacity,
        )

    def _snapshot_lines(self) -> None:
        self._line_seen = list(zip(*self._line_counts(), strict=True))

    def _changed_signs(self, now: float) -> list[_Sign]:
        """Signs whose rendered lines differ from what they show."""
        return list(self._iter_changed_signs(now))

    def _iter_changed_signs(self, now: float) -> Iterator[_Sign]:
        """The same, one sign at a time (only lines that moved are looked at): the caller
        may publish each before the next is rendered."""
        lf_l, lu_l, lt_l, cap_l = self._line_counts()  # once for every display
        # compared as lists: a dozen numpy calls cost more than this on a cold CPU, and a
        # site has hundreds of lines, not millions
        now_seen = list(zip(lf_l, lu_l, lt_l, cap_l, strict=True))
        seen, self._line_seen = self._line_seen, now_seen
        if now_seen == seen:
            return
        owner = self._line_owner
        moved = {owner[i] for i, (a, b) in enumerate(zip(now_seen, seen, strict=True)) if a != b}
        for d in sorted(moved):
            lines = self.renderer.lines(d, lf_l, lu_l, lt_l, cap_l)
            if lines != self._shown.get(d):  # cached lines: compared by identity
                yield self._sign(d, lines, now)

    def _refresh_displays(self, now: float) -> None:
        """Holds or policy windows moved: journal and publish the signs that changed."""
        signs = self._changed_signs(now)
        if not signs:
            return
        with self.journal.transaction():
            self._put_signs_now(signs)
        for sign in signs:
            self._publish_sign(sign, now)

    def _put_signs_now(self, signs: list[_Sign]) -> None:
        """Store signs inside the caller's transaction (before they are published); an older
        content of the same sign still waiting for the checkpoint must not overwrite them."""
        self.journal.put_signs(self._sign_rows(signs))
        for sign in signs:
            self._dirty_signs.pop(sign.display, None)

    def _sign(self, d: int, lines: tuple[RenderedLine, ...], now: float) -> _Sign:
        return _Sign(d, lines, now, self.renderer.payload(d, lines, now))

    def _sign_rows(self, signs: list[_Sign]) -> list[tuple[str, str, str, float]]:
        expires_s = self.site.display_settings.expires_s
        return [
            (
                self.site.displays[s.display].id,
                self._display_topics[s.display],
                s.payload.decode(),
                expires_s,
            )
            for s in signs
        ]

    def _publish_display(self, d: int, lines: tuple[RenderedLine, ...], now: float) -> None:
        """Publish a sign afresh (new ts and expiry)."""
        self._publish_sign(self._sign(d, lines, now), now)

    def _publish_sign(self, sign: _Sign, now: float) -> None:
        self._shown[sign.display] = sign.lines
        self._shown_ts[sign.display] = sign.ts
        self._shown_mono[sign.display] = self._mono()
        self._send(
            self._display_topics[sign.display],
            sign.payload,
            topics.QOS_DISPLAY,
            topics.RETAIN_DISPLAY,
        )
        self.sign_updates += 1
        if self._subscribers:
            content = self.renderer.content(sign.display, sign.lines, sign.ts)
            self._emit("display", content.model_dump(mode="json"), now)
