"""The gateway engine's side of the managers: a space or a whole zone closed or opened (over
MQTT or from the in-process API), judged under the lock, and the zone closures the journal
keeps. A part of :class:`gateway.live.LiveGateway`, apart because these rare, judged and
audited actions are a concern of their own, unlike the stream of reports.
"""

from __future__ import annotations

import logging
from collections.abc import Collection

import numpy as np

from gateway.ingest import Rejection, decode
from gateway.live_types import _Segment
from gateway.readside import (
    Closer,
    Expect,
    Refused,
    SpaceBefore,
    ZoneBefore,
    expectation_fails,
    nothing_changes,
)
from parking import closures
from parking.closures import ZONE_CLOSURES_KEY, ZoneClosure
from parking.payloads import CONTROL_MAX_AGE_S, SpaceControl
from parking.states import STATE_NAMES

# the engine's logger, whichever of its parts speaks: log settings and filters name it
log = logging.getLogger("gateway.live")


class LiveControls:
    """A part of LiveGateway, sharing its state and lock: the managers' closes and opens."""

    def _true_closures(self, stored: dict[str, ZoneClosure]) -> dict[str, ZoneClosure]:
        """The journal's zone closures, less the spaces the site file moved out of their
        zone (:meth:`_closures_in_site`) and those a manager acted on since without them
        (an earlier release run on this journal, a rollback: it journals the action but
        not the closure), rewritten when that took any out."""
        if not stored:
            return stored
        fitted = self._closures_in_site(stored)
        spaces = [s for c in fitted.values() for s in c.spaces]
        last = (
            self.journal.manager_events_since(min(c.ts for c in fitted.values()), spaces)
            if fitted
            else {}
        )
        true = closures.reconcile(fitted, last)
        if true != fitted:
            for zone, c in fitted.items():
                left = len(c.spaces) - len(true[zone].spaces) if zone in true else len(c.spaces)
                if left:
                    log.warning(
                        "zone %s's closure: %d of its %d spaces were opened or closed on their"
                        " own since it was made, without it (an earlier release ran on this"
                        " journal); they are no longer part of it%s",
                        zone,
                        left,
                        len(c.spaces),
                        "" if zone in true else ": the zone is no longer closed",
                    )
        if true != stored:
            with self.journal.transaction():
                self.journal.set_meta(ZONE_CLOSURES_KEY, closures.dump(true))
        return true

    def _closures_in_site(self, stored: dict[str, ZoneClosure]) -> dict[str, ZoneClosure]:
        """The closures as the site file has the zones now (parking.closures.in_site), each
        change logged (once: the caller journals the result)."""
        fitted = closures.in_site(stored, {sp.id: sp.zone for sp in self.site.spaces})
        for zone, c in stored.items():
            if zone not in self._zone_index:
                log.warning(
                    "zone %s's closure (by %s) is dropped: the site file no longer has zone"
                    " %s; the spaces it closed stay closed, each on its own, until a manager"
                    " opens them",
                    zone,
                    c.by,
                    zone,
                )
                continue
            gone = sorted(c.spaces - fitted[zone].spaces if zone in fitted else c.spaces)
            if gone:
                log.warning(
                    "zone %s's closure: %d of its %d spaces are in another zone of the site"
                    " file now, or no longer in it (%s); they stay closed, each on its own,"
                    " and opening zone %s leaves them%s",
                    zone,
                    len(gone),
                    len(c.spaces),
                    ", ".join(gone[:8]) + (f" and {len(gone) - 8} more" if len(gone) > 8 else ""),
                    zone,
                    "" if zone in fitted else ": the zone is no longer closed",
                )
        return fitted

    def _on_control(self, topic: str, ident: str, payload: bytes, zone: bool = False) -> None:
        """A manager's close or open of a space, or of a whole zone (``zone``)."""
        control = decode(SpaceControl, payload)
        if isinstance(control, Rejection):
            self._reject(control, topic, payload)
            return
        if zone and ident not in self._zone_index:
            why = f"no zone {ident!r} in site {self.site.id!r}"
            self._reject(Rejection("unknown_zone", why), topic, payload)
            return
        if not zone and ident not in self.site.space_index:
            why = f"no space {ident!r} in site {self.site.id!r}"
            self._reject(Rejection("unknown_space", why), topic, payload)
            return
        age = self._clock() - control.ts
        if age > CONTROL_MAX_AGE_S:
            # queued while the gateway or the broker was away: the manager was told nothing
            # happened, and may have decided otherwise since
            what = f"zone {ident}" if zone else ident
            why = f"{control.action} of {what} by {control.by} sent {age:.0f} s ago"
            self._reject(Rejection("stale_control", why), topic, payload)
            return
        apply = self.control_zone if zone else self.control_space
        try:
            apply(ident, control.action, control.by, control.reason)
        except ValueError as exc:
            self._reject(Rejection("nothing_to_do", str(exc)), topic, payload)

    judges_controls = True  # under the lock, with the action

    def control_unavailable(self) -> str | None:
        return None  # applied here, in the gateway itself

    def settle(
        self,
        spaces: Collection[str],
        zones: Collection[str] = (),
        within: float = 1.0,
        by: str | None = None,
    ) -> bool:
        return True  # controls are applied here before they are answered

    def _closes(self, space: str) -> tuple[Closer, ...]:
        """The managers' closes of a closed ``space`` since it was last open, newest first
        (under the lock: every manager's action is journaled before it is released)."""
        return tuple(
            Closer(by, reason, ts, zone)
            for ts, by, reason, zone in self.journal.closes_since_open(space)
        )

    def control_space(
        self, space: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> SpaceBefore:
        """Close or open a space, judged under the lock: Refused when it would change nothing
        (an open with a reason would journal a made-up free -> free event) or the manager's
        ``expect`` fails; else the space as it was found."""
        s = self.site.space_index.get(space)
        if s is None:
            raise ValueError(f"no space {space!r} in site {self.site.id!r}")
        if action not in ("close", "open"):
            raise ValueError(f"action must be 'close' or 'open', not {action!r}")
        now = self._clock()
        with self.lock:
            held = bool(self._on_their_way()[s])
            now = self._event_time(now)
            was = STATE_NAMES[int(self.state.state[s])]
            closes = self._closes(space) if was == "closed" else ()
            closer = closes[0] if closes else None
            why = expectation_fails(expect, closer, was == "closed")
            if why is not None:
                raise Refused(f"{space}: {why}: nothing changed", closer, True, was == "closed")
            why = nothing_changes(space, action, was, reason, bool(self.site.spaces[s].closed))
            if why is not None:
                raise Refused(why, closer)
            changes = self.state.control(s, action == "close", now)
            again: tuple[int, ...] = ()
            if not len(changes) and (reason or self.site.spaces[s].closed):
                # closing a closed space again (or opening an open one) changes nothing, but
                # its reason belongs in the audit, and so does a closure the site file makes
                # too (it stays the manager's when the file stops making it): an event with
                # the state it leaves alone
                again = (s,)
            # a manager acting on one space of a closed zone takes it out of the zone's
            # closure: opening the zone leaves it as this manager left it
            meta, after = None, self._zone_closures
            if closures.holding(after, space) is not None and (len(changes) or again):
                after = closures.without_space(after, space)
                meta = (ZONE_CLOSURES_KEY, closures.dump(after))
            segment = _Segment(changes, now, "manager", by, note=reason or None, again=again)
            self._commit_and_propagate([segment], now, meta=meta)
            self._zone_closures = after  # committed with the change
            # a manager's action is rare and looked for at once in the history: no waiting
            # for the idle-time checkpoint
            self.flush_checkpoint()
        if reason:
            done = "closed" if action == "close" else "opened"
            log.info("space %s %s by %s: %s", space, done, by, reason)
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
        return SpaceBefore(was, held, closes)

    def zone_closures(self) -> dict[str, ZoneClosure]:
        """The zones managers closed, each with the spaces its closure keeps closed."""
        with self.lock:
            return dict(self._zone_closures)

    def control_zone(
        self, zone: str, action: str, by: str, reason: str | None, expect: Expect | None = None
    ) -> ZoneBefore:
        """Close every space of ``zone`` that is not closed, or open those its closure
        closed (parking.closures): one journal transaction, the signs republished once
        after it. Refused when it would change nothing or the manager's ``expect`` fails;
        else the zone as it was found."""
        if zone not in self._zone_index:
            raise ValueError(f"no zone {zone!r} in site {self.site.id!r}")
        now = self._clock()
        index = self.site.space_index
        with self.lock:
            now = self._event_time(now)
            mine = self._zone_spaces[zone]
            closed = [sp for sp in mine if self.state.closed[index[sp]]]
            closure = self._zone_closures.get(zone)
            closer = None if closure is None else Closer(closure.by, closure.reason, closure.ts)
            why = expectation_fails(expect, closer, closure is not None)
            if why is not None:
                raise Refused(
                    f"zone {zone}: {why}: nothing changed", closer, True, closure is not None
                )
            p = closures.plan(action, mine, closed, closure, reason)
            if p.nothing:
                raise Refused(closures.nothing_to_do(zone, action, closure), closer)
            on_their_way = self._on_their_way()
            held = tuple(sp for sp in p.change if action == "close" and on_their_way[index[sp]])
            idx = np.array([index[sp] for sp in p.change], dtype=np.int64)
            changes = self.state.control_many(idx, action == "close", now)
            after = closures.after_zone(
                self._zone_closures, zone, action, by, reason or None, now, p
            )
            segment = _Segment(
                changes,
                now,
                "manager",
                by,
                note=reason or None,
                closure=zone,
                again=tuple(index[sp] for sp in p.again),
            )
            meta = (ZONE_CLOSURES_KEY, closures.dump(after))
            self._commit_and_propagate([segment], now, meta=meta)
            self._zone_closures = after  # committed with the changes
            self.flush_checkpoint()
        # the pages showing who closed the zone and why read it again (a new reason for a
        # closed zone moves no count, so no zone event would tell them)
        self._emit("closure", {"zone": zone}, now)
        log.info(
            "zone %s %s by %s (%d spaces%s)%s",
            zone,
            {"close": "closed", "open": "opened"}[action],
            by,
            len(p.change),
            f", {len(p.left)} closed on their own left closed" if p.left else "",
            f": {reason}" if reason else "",
        )
        return ZoneBefore(p, closer, held)
