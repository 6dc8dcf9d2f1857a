"""Arrivals at the gates: which space a car is given, or why none.

:class:`ArrivalDesk` decides an answer over the allocation core: a space held for the car,
a space without a hold (the arrival is old, or its entrance has its cap of holds
outstanding), or no space and why (full, blind, closed to the class now, busy). It keeps
the holds each entrance has outstanding and counts what it answered without a hold; the
engine's part for arrivals (:mod:`gateway.live_arrivals`) journals the answer and publishes
it.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from gateway.allocation import AllocationCore
from gateway.displays import blind as sign_blind
from gateway.displays import unsure_full
from gateway.ingest import Rejection, how_long
from gateway.journal import GivenAnswer
from parking.payloads import (
    MAX_PAYLOAD_BYTES,
    Arrival,
    Assignment,
    LocalText,
    is_identifier,
)
from parking.site import Site

log = logging.getLogger(__name__)

NO_SPACE_FULL = LocalText(zh="车位已满", en="No space available")
NO_SPACE_UNKNOWN = LocalText(  # no space to give, but some the car may use are not seen now
    zh="暂时无法确认空位，请按引导屏行驶",
    en="Free spaces cannot be confirmed now: follow the signs",
)
NO_SPACE_NOT_NOW = LocalText(  # the class may use no space at this hour (a time window)
    zh="此入口当前没有对您的车辆类别开放的车位",
    en="No space reachable from this gate is open to your vehicle class now",
)
NO_SPACE_CLOSED = LocalText(  # every space the class may use now is closed (a manager's)
    zh="车位已关闭，请按引导屏行驶",
    en="The spaces for your vehicle class are closed now: follow the signs",
)
HOLD_ENDED = LocalText(  # the answer to a cancel: the space is given back
    zh="已取消预留车位",
    en="Space no longer held for this car",
)
NO_SPACE_BUSY = LocalText(  # the entrance has --max-holds-per-entrance holds outstanding
    zh="入口车辆较多，请按引导屏寻找空位",
    en="Many cars at this gate: follow the signs to a free space",
)
ARRIVAL_MAX_AGE_S = 60.0
"""An arrival stamped (``ts``) longer ago than this, by its gate's clock as the gateway has
learned it (:meth:`gateway.live_arrivals.LiveArrivals._arrival_age`), is answered without
holding a space."""
ARRIVAL_LIVE_AFTER_S = 10.0  # connected this long: an arrival is no backlog of the broker's
MAX_HOLD_S = 86400.0  # a hold is for a car on its way to a space: a day is far beyond it
CANCEL_REFUSALS = ("unknown_request", "already_cancelled", "not_held", "car_seen", "hold_expired")
"""Why a cancel changes nothing (entrances/{e}/refusal with ``cancel`` true), besides a
malformed one (invalid, bad_json, oversized) or an entrance the site lacks."""
HOLD_CANCELLED = "released"  # the cancels counter's result for one that ended a hold
UNHELD_LOG_INTERVAL_S = 60.0  # at most one warning per minute per reason for no hold
UNHELD_REASONS = ("late", "entrance_cap")


def readable_request_id(payload: bytes) -> str | None:
    """The ``request_id`` of an arrival refused as a whole, when it can still be read, so
    that its gate can match the refusal to the car; None otherwise (also for one over the
    size cap: it is not parsed, a gate login could send megabytes)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        doc = orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None
    rid = doc.get("request_id") if isinstance(doc, dict) else None
    return rid if isinstance(rid, str) and is_identifier(rid) else None


def same_car(given: Assignment, arrival: Arrival, *, plates_kept: bool) -> bool:
    """Whether ``arrival`` is the one ``given`` answered (sent again) rather than another
    car under the same request_id: the same class, and the same plate where the journal
    keeps plates (a retry repeats the message as it was)."""
    if given.vehicle_class != arrival.vehicle_class:
        return False
    return not plates_kept or given.plate == arrival.plate


def cancel_refused(
    given: GivenAnswer | None,
    request_id: str,
    *,
    now: float,
    holding: bool,
    occupied: bool,
) -> Rejection | None:
    """Why a cancel of ``request_id`` changes nothing, or None when it ends a hold.

    ``given`` is the last answer journaled at the cancel's entrance under that id (None:
    none, also when the id was answered at another entrance only); ``holding`` whether the
    gateway's core still holds its space for it; ``occupied`` whether that space is seen
    occupied now. The journal decides what it can (it survives a restart); the core has
    the last word on a hold it says is open (its clock ended it, or a car was seen in the
    space while the hold was not restored after a restart)."""
    if given is None:
        return Rejection(
            "unknown_request",
            f"no arrival answered at this entrance under request_id {request_id!r}",
        )
    if given.cancelled is not None:
        return Rejection(
            "already_cancelled", f"cancelled {how_long(max(0.0, now - given.cancelled))} ago"
        )
    if given.space is None or given.hold_expires is None:
        return Rejection(
            "not_held",
            "its answer held no space (no space given, or given without a hold: a late"
            " arrival, or the entrance's cap of holds)",
        )
    seen_ago = f"a car was seen in space {given.space}"
    if given.released is not None:
        ago = how_long(max(0.0, now - given.released))
        return Rejection("car_seen", f"{seen_ago} {ago} ago: that ended its hold")
    if given.hold_expires <= now or (not holding and not occupied):
        ago = how_long(max(0.0, now - given.hold_expires))
        return Rejection("hold_expired", f"its hold on {given.space} expired {ago} ago")
    if not holding:
        return Rejection("car_seen", f"{seen_ago}: that ended its hold")
    return None


@dataclass(frozen=True)
class Answer:
    """What the desk decided: the assignment, the space's index (-1: none) and whether the
    space is held for the car."""

    assignment: Assignment
    space: int
    held: bool


class ArrivalDesk:
    """Answers arrivals over ``core`` for ``site``; holds last ``hold_s``."""

    def __init__(
        self,
        site: Site,
        core: AllocationCore,
        *,
        hold_s: float,
        max_holds_per_entrance: int,
        blind_fraction: float,
        mono: Callable[[], float],
    ):
        if not (math.isfinite(hold_s) and 0 < hold_s <= MAX_HOLD_S):
            raise ValueError(f"--hold-s {hold_s}: must be more than 0 and at most {MAX_HOLD_S:g} s")
        if max_holds_per_entrance < 1:
            raise ValueError(f"--max-holds-per-entrance {max_holds_per_entrance}: at least 1")
        self.site = site
        self.core = core
        self.hold_s = hold_s
        self.max_holds_per_entrance = max_holds_per_entrance
        self._blind_fraction = blind_fraction  # as the signs judge a line (gateway.displays)
        self._full_fraction = site.display_settings.full_unknown_fraction  # ... and "full"
        self._mono = mono
        self._zone_name = {z.id: z.name for z in site.zones}
        # entrance -> {space: the core's held_until of the hold given there}: the holds it has
        # outstanding (one ended, or taken over by another hold, no longer matches)
        self._holds: dict[str, dict[int, float]] = {}
        # answered without a hold, by why: "late" (stamped over ARRIVAL_MAX_AGE_S ago) or
        # "entrance_cap" (max_holds_per_entrance outstanding there)
        self.unheld: dict[str, int] = dict.fromkeys(UNHELD_REASONS, 0)
        self._unheld_logged = dict.fromkeys(UNHELD_REASONS, -math.inf)  # monotonic

    def note_hold(self, entrance: str, space: int) -> None:
        """The hold the core now has on ``space`` was given at ``entrance``."""
        self._holds.setdefault(entrance, {})[space] = float(self.core.held_until[space])

    def holding(self, entrance: str, space: int, core_now: float) -> bool:
        """Whether the hold given at ``entrance`` on ``space`` is still open in the core
        (not expired at ``core_now``, no car seen in the space, not taken over)."""
        until = self._holds.get(entrance, {}).get(space)
        return until is not None and until > core_now and self.core.held_until[space] == until

    def release(self, entrance: str, space: int) -> None:
        """End the hold given at ``entrance`` on ``space`` (its gate cancelled the arrival)."""
        self._holds.get(entrance, {}).pop(space, None)
        self.core.release(space)

    def outstanding(self, entrance: str, core_now: float) -> int:
        """Holds given at ``entrance`` that have not ended (expired, a car seen in the space,
        or taken over by a later hold) at the core's time ``core_now``."""
        held = self._holds.get(entrance)
        if not held:
            return 0
        until_of = self.core.held_until
        for space, until in list(held.items()):
            if until <= core_now or until_of[space] != until:
                del held[space]
        return len(held)

    def answer(
        self,
        entrance: str,
        e: int,
        c: int,
        arrival: Arrival,
        *,
        age: float,
        now: float,
        core_now: float,
    ) -> Answer:
        """The answer to ``arrival`` at entrance ``e`` (``entrance``) for class ``c``, the car
        seen ``age`` seconds ago by its gate's clock; ``now`` is the wall time, ``core_now``
        the core's. A held space is taken in the core; the caller journals and publishes."""
        unheld = self._unheld_reason(entrance, age, core_now)
        if unheld == "entrance_cap":
            s = -1  # a space given unheld would be given to every car after it too
        elif unheld is not None:
            s = self.core.best(e, c)
        else:
            s = self.core.assign(e, c, core_now, self.hold_s)
        if s < 0:
            hint = NO_SPACE_BUSY if unheld == "entrance_cap" else self._why_none(e, c)
            assignment = Assignment(
                entrance=entrance,
                vehicle_class=arrival.vehicle_class,
                space=None,
                zone=None,
                hint=hint,
                hold_expires=None,
                plate=arrival.plate,
                request_id=arrival.request_id,
                ts=now,
            )
            return Answer(assignment, -1, False)
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
            hold_expires=None if unheld is not None else now + self.hold_s,
            plate=arrival.plate,
            request_id=arrival.request_id,
            ts=now,
        )
        return Answer(assignment, s, unheld is None)

    def _unheld_reason(self, entrance: str, age: float, core_now: float) -> str | None:
        """Why the car gets no hold (counted and warned once a minute), or None.

        "late": stamped long ago by its gate's clock (queued while the gateway was away, or
        sent late by the gate): that car has left the gate, and a hold would take a free
        space off the signs for ``hold_s``. "entrance_cap": the entrance has its cap of
        holds outstanding."""
        if age > ARRIVAL_MAX_AGE_S:
            unheld = "late"
            why = (
                f"stamped {age:.0f} s ago by its gate's clock (queued while the gateway"
                " was away, or sent late by the gate)"
            )
        elif self.outstanding(entrance, core_now) >= self.max_holds_per_entrance:
            unheld = "entrance_cap"
            why = (
                f"with {self.max_holds_per_entrance} holds outstanding there"
                " (--max-holds-per-entrance: a burst, or a gate sending arrivals it"
                " should not), sent by the signs"
            )
        else:
            return None
        self.unheld[unheld] += 1
        mono = self._mono()
        if mono >= self._unheld_logged[unheld] + UNHELD_LOG_INTERVAL_S:
            self._unheld_logged[unheld] = mono
            log.warning(
                "arrival at %s %s: no space held for it (%d so far)",
                entrance,
                why,
                self.unheld[unheld],
            )
        return unheld

    def _why_none(self, e: int, c: int) -> LocalText:
        """Why there is no space to give: blind, when in some zone too much of what the
        class may use is unknown (a camera or bus is down), judged zone by zone as the signs
        judge a line, so the gate agrees with a sign showing "--" for that zone (a blind
        gate never tells drivers it is full; nor while more than the signs'
        ``full_unknown_fraction`` of a zone is unknown); closed to the class at this hour (a time
        window), or every space it may use now closed by a manager (its signs read CLOSED),
        which are not "full" either; or full."""
        unknown, counted, usable = self.core.unknown_eligible(e, c)
        blind = any(
            sign_blind(u, n, self._blind_fraction) or unsure_full(u, n, self._full_fraction)
            for u, n in zip(unknown.tolist(), counted.tolist(), strict=True)
        )
        if blind:
            return NO_SPACE_UNKNOWN
        if usable == 0:
            return NO_SPACE_NOT_NOW
        return NO_SPACE_CLOSED if not counted.any() else NO_SPACE_FULL
