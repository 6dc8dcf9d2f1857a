"""Zone occupancy over time, computed from journalled state changes (pure)."""

from __future__ import annotations

from collections.abc import Container, Iterable, Mapping
from dataclasses import dataclass

STATES = ("free", "occupied", "unknown", "closed")


@dataclass(frozen=True)
class Point:
    ts: float
    free: int
    occupied: int
    unknown: int
    closed: int

    @property
    def total(self) -> int:
        return self.free + self.occupied + self.unknown + self.closed


def sample_times(start: float, end: float, step: float) -> list[float]:
    n = int((end - start) // step) + 1
    return [start + i * step for i in range(n)]


def zone_series(
    zone_of: Mapping[str, str],
    initial: Mapping[str, str],
    changes: Iterable[tuple[float, str, str] | tuple[float, str, str, str | None]],
    times: list[float],
    *,
    zones: Iterable[str] | None = None,
    joining: Container[str] = (),
    blind: Iterable[tuple[float, float]] = (),
) -> dict[str, list[Point]]:
    """Counts per zone at each time in ``times`` (ascending).

    ``zone_of`` maps every space counted at ``times[0]`` to its zone then; ``initial`` is
    each space's state just before ``times[0]`` (a space missing from it is ``unknown``:
    silence is never free); ``changes`` are (ts, space, new) in time order, or (ts, space,
    new, zone) where ``zone`` is the space's zone as of that change (None: as before): a
    space counted elsewhere moves there, and a space of ``joining`` not counted yet starts
    being counted there. Other spaces and unknown state names are ignored. The series are
    those of ``zones`` (default: every zone of ``zone_of``), in that order. At a time in
    one of the ``blind`` intervals [start, end) (the gateway's own downtime: nothing was
    recorded) every space but the closed ones counts unknown.
    """
    gaps = sorted(blind)
    state: dict[str, str] = {}
    where: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    for space, zone in zone_of.items():
        s = initial.get(space, "unknown")
        s = s if s in STATES else "unknown"
        state[space] = s
        where[space] = zone
        counts.setdefault(zone, dict.fromkeys(STATES, 0))[s] += 1
    keys = list(counts) if zones is None else list(dict.fromkeys(zones))
    for zone in keys:
        counts.setdefault(zone, dict.fromkeys(STATES, 0))
    series: dict[str, list[Point]] = {zone: [] for zone in keys}
    it = iter(changes)
    pending = next(it, None)
    for t in times:
        while pending is not None and pending[0] <= t:
            space, new = pending[1], pending[2]
            to = pending[3] if len(pending) > 3 else None
            pending = next(it, None)
            if new not in STATES:
                continue
            here = where.get(space)
            if here is None:
                if to is None or space not in joining:
                    continue
                where[space] = to
                state[space] = new
                counts.setdefault(to, dict.fromkeys(STATES, 0))[new] += 1
            elif to is not None and to != here:
                counts[here][state[space]] -= 1
                where[space] = to
                state[space] = new
                counts.setdefault(to, dict.fromkeys(STATES, 0))[new] += 1
            elif state[space] != new:
                counts[here][state[space]] -= 1
                counts[here][new] += 1
                state[space] = new
        while gaps and gaps[0][1] <= t:  # ended by now (times ascend)
            gaps.pop(0)
        down = bool(gaps) and gaps[0][0] <= t
        for zone in keys:
            c = counts[zone]
            if down:
                seen = c["free"] + c["occupied"] + c["unknown"]
                series[zone].append(Point(t, 0, 0, seen, c["closed"]))
            else:
                series[zone].append(Point(t, c["free"], c["occupied"], c["unknown"], c["closed"]))
    return series
