"""Zone closures (pure): which spaces closing or opening a zone changes, and which it leaves.

A manager closes a whole zone (a level for cleaning, snow, an event) in one action. The
closure remembers the spaces it closed; opening the zone reopens only those, still closed
by it. A space closed on its own (before or after) stays closed, and a space the closure
closed that a manager then opens or closes on its own leaves the closure. A closure whose
spaces have all left it is gone: the zone is not closed any more.

The gateway keeps the closures in its journal's meta table (:data:`ZONE_CLOSURES_KEY`,
written in the transaction of the changes), so a restart and the stand-alone API read
the same record.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

ZONE_CLOSURES_KEY = "zone_closures"
"""Journal meta key: the open zone closures as JSON, {zone: {by, reason, ts, spaces}}."""


@dataclass(frozen=True)
class ZoneClosure:
    """A zone closed by a manager: who, why, when, and the spaces it keeps closed."""

    zone: str
    by: str
    reason: str | None
    ts: float
    spaces: frozenset[str]


def load(text: str | None) -> dict[str, ZoneClosure]:
    """The closures from their meta value (None or empty: none)."""
    if not text:
        return {}
    raw = json.loads(text)
    return {
        z: ZoneClosure(z, c["by"], c.get("reason"), float(c["ts"]), frozenset(c["spaces"]))
        for z, c in raw.items()
    }


def dump(closures: Mapping[str, ZoneClosure]) -> str:
    return json.dumps(
        {
            z: {"by": c.by, "reason": c.reason, "ts": c.ts, "spaces": sorted(c.spaces)}
            for z, c in sorted(closures.items())
        },
        ensure_ascii=False,
    )


@dataclass(frozen=True)
class ZonePlan:
    """What closing or opening a zone does: ``change`` the spaces it closes or opens,
    ``again`` the spaces its closure already holds that a close with a new reason journals
    again (their state unchanged), ``left`` the zone's closed spaces it leaves alone."""

    change: tuple[str, ...]
    again: tuple[str, ...]
    left: tuple[str, ...]

    @property
    def nothing(self) -> bool:
        return not (self.change or self.again)


def plan(
    action: str,
    zone_spaces: Iterable[str],
    closed: Iterable[str],
    closure: ZoneClosure | None,
    reason: str | None,
) -> ZonePlan:
    """Closing or opening a zone whose spaces are ``zone_spaces`` (site order), of which
    ``closed`` are closed now, under its ``closure`` if it is closed."""
    mine = closure.spaces if closure is not None else frozenset()
    shut = set(closed)
    spaces = list(zone_spaces)
    if action == "close":
        change = tuple(s for s in spaces if s not in shut)
        again = tuple(s for s in spaces if s in mine and s in shut) if reason else ()
        left = tuple(s for s in spaces if s in shut and s not in mine)
        return ZonePlan(change, again, left)
    if action == "open":
        change = tuple(s for s in spaces if s in mine and s in shut)
        left = tuple(s for s in spaces if s in shut and s not in mine)
        return ZonePlan(change, (), left)
    raise ValueError(f"action must be 'close' or 'open', not {action!r}")


def nothing_to_do(zone: str, action: str, closure: ZoneClosure | None) -> str:
    """Why a zone action that changes nothing is refused (``p.nothing``)."""
    if action == "open":
        return f"zone {zone} is not closed"
    if closure is not None:
        return f"zone {zone} is already closed (give a reason to replace its reason)"
    return f"every space of zone {zone} is already closed"


def after_zone(
    closures: Mapping[str, ZoneClosure],
    zone: str,
    action: str,
    by: str,
    reason: str | None,
    ts: float,
    p: ZonePlan,
) -> dict[str, ZoneClosure]:
    """The closures after ``p`` is applied: a close adds the spaces it closed to the
    zone's closure (a new reason replaces the old), an open ends it."""
    out = dict(closures)
    if action == "open":
        out.pop(zone, None)
        return out
    old = closures.get(zone)
    spaces = frozenset(p.change) | (old.spaces if old is not None else frozenset())
    if not spaces:
        return out
    if old is not None:
        reason, by, ts = (reason, by, ts) if reason else (old.reason, old.by, old.ts)
    out[zone] = ZoneClosure(zone, by, reason, ts, spaces)
    return out


def reconcile(
    closures: Mapping[str, ZoneClosure], last: Mapping[str, tuple[str, str | None]]
) -> dict[str, ZoneClosure]:
    """The closures kept true to the journal: ``last`` is the newest manager's event of
    each closure's spaces since it was made (new state, zone closure). A space whose newest
    is not a close with its zone (an earlier release, run on this journal after a rollback,
    opened or closed it on its own without telling the closure) leaves the closure."""
    out: dict[str, ZoneClosure] = {}
    for zone, c in closures.items():
        keep = frozenset(s for s in c.spaces if last.get(s, ("closed", zone)) == ("closed", zone))
        if keep:
            out[zone] = ZoneClosure(c.zone, c.by, c.reason, c.ts, keep)
    return out


def in_site(
    closures: Mapping[str, ZoneClosure], zone_of: Mapping[str, str]
) -> dict[str, ZoneClosure]:
    """The closures kept true to the site file: ``zone_of`` is each space's zone in it now.
    A space the file moved to another zone (or dropped) leaves its old zone's closure: it
    stays closed (a closed space does not open by itself), on its own, so opening the old
    zone does not reopen a space of another. A closure left with no spaces, as one of a
    zone the file no longer has, is gone."""
    out: dict[str, ZoneClosure] = {}
    for zone, c in closures.items():
        keep = frozenset(s for s in c.spaces if zone_of.get(s) == zone)
        if keep:
            out[zone] = ZoneClosure(c.zone, c.by, c.reason, c.ts, keep)
    return out


def holding(closures: Mapping[str, ZoneClosure], space: str) -> ZoneClosure | None:
    """The zone closure that keeps ``space`` closed, if any."""
    return next((c for c in closures.values() if space in c.spaces), None)


def without_space(closures: Mapping[str, ZoneClosure], space: str) -> dict[str, ZoneClosure]:
    """The closures after a manager opens or closes ``space`` on its own: it leaves the
    closure that held it (which ends when it held nothing else)."""
    out = dict(closures)
    c = holding(closures, space)
    if c is not None:
        rest = c.spaces - {space}
        if rest:
            out[c.zone] = ZoneClosure(c.zone, c.by, c.reason, c.ts, rest)
        else:
            del out[c.zone]
    return out
