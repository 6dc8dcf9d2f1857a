"""Zone occupancy over time, computed from journalled state changes (pure)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
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
    changes: Iterable[tuple[float, str, str]],
    times: list[float],
) -> dict[str, list[Point]]:
    """Counts per zone at each time in ``times`` (ascending).

    ``zone_of`` maps every space of the site to its zone; ``initial`` is each
    space's state just before ``times[0]`` (a space missing from it is
    ``unknown``: silence is never free); ``changes`` are (ts, space, new) in
    time order. Spaces not in the site and unknown state names are ignored.
    """
    state = {space: initial.get(space, "unknown") for space in zone_of}
    counts: dict[str, dict[str, int]] = {}
    for space, zone in zone_of.items():
        s = state[space] if state[space] in STATES else "unknown"
        state[space] = s
        counts.setdefault(zone, dict.fromkeys(STATES, 0))[s] += 1
    series: dict[str, list[Point]] = {zone: [] for zone in counts}
    it = iter(changes)
    pending = next(it, None)
    for t in times:
        while pending is not None and pending[0] <= t:
            _, space, new = pending
            in_zone = zone_of.get(space)
            if in_zone is not None and new in STATES and state[space] != new:
                counts[in_zone][state[space]] -= 1
                counts[in_zone][new] += 1
                state[space] = new
            pending = next(it, None)
        for zone, c in counts.items():
            series[zone].append(Point(t, c["free"], c["occupied"], c["unknown"], c["closed"]))
    return series
