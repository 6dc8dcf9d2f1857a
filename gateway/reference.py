"""Plain-Python reference of the allocation rules (``gateway.allocation``'s docstring).

The straightforward implementation: lists and dicts, its own Dijkstra (heapq),
answers computed by scanning. The property test checks the vectorized,
incremental core against it; the benchmark times its full recompute.
It takes the same tables as ``CoreLayout.from_arrays``.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterable, Sequence
from typing import Any

from parking.site import Site, in_window
from parking.states import SpaceState

FREE = int(SpaceState.FREE)
OCCUPIED = int(SpaceState.OCCUPIED)
CLOSED = int(SpaceState.CLOSED)
UNKNOWN = int(SpaceState.UNKNOWN)


class ReferenceAllocator:
    """Same rules and API as ``AllocationCore``, straightforward code."""

    def __init__(
        self,
        *,
        n_nodes: int,
        edges: Sequence[tuple[int, int, float, bool]],
        entrance_nodes: Sequence[int],
        space_node: Sequence[int],
        access_distance: Sequence[float],
        space_zone: Sequence[int],
        space_kinds: Sequence[Iterable[int]],
        class_kinds: Sequence[Iterable[int]],
        policies: Sequence[tuple[int, Iterable[int], Sequence[tuple[int, int]]]] = (),
        line_zones: Sequence[Iterable[int]] = (),
        line_class: Sequence[int | None] = (),
        closed: Sequence[bool] | None = None,
        class_prefer: Sequence[Iterable[int]] = (),
        class_avoid: Sequence[Iterable[int]] = (),
        n_zones: int | None = None,
        minute_of_day: int = 0,
        congestion_m: float = 20.0,
        congestion_halflife_s: float = 60.0,
        congestion_floor: float = 0.01,
        hold_seen_s: float = 30.0,
        **_names: object,
    ):
        self.n_spaces = len(space_node)
        self.n_entrances = len(entrance_nodes)
        self.n_classes = len(class_kinds)
        self.space_zone = [int(z) for z in space_zone]
        self.space_kinds = [set(k) for k in space_kinds]
        self.class_kinds = [set(k) for k in class_kinds]
        # kinds a class is sent to first (only those it may use at all count)
        self.class_prefer: list[set[int]] = [set() for _ in self.class_kinds]
        for c, kinds in enumerate(class_prefer):
            self.class_prefer[c] = set(kinds) & self.class_kinds[c]
        # kinds of space a class is sent to last (any kind, its own or not)
        self.class_avoid: list[set[int]] = [set() for _ in self.class_kinds]
        for c, kinds in enumerate(class_avoid):
            self.class_avoid[c] = set(kinds)
        self.policies = [
            (int(k), set(c), [(int(w[0]), int(w[1])) for w in ws]) for k, c, ws in policies
        ]
        self.line_zones = [list(z) for z in line_zones]
        self.line_class = list(line_class)
        self.closed = [bool(c) for c in closed] if closed is not None else [False] * self.n_spaces
        if n_zones is None:
            n_zones = 1 + max(self.space_zone + [z for zs in self.line_zones for z in zs] + [-1])
        self.n_zones = n_zones
        self.aisle = [int(n) for n in space_node]  # congestion group = access node (-1 none)
        self.congestion_m = congestion_m
        self.halflife = congestion_halflife_s
        self.floor = congestion_floor
        # driving cost: Dijkstra from every entrance, plus the access distance
        adj: dict[int, list[tuple[int, float]]] = {}
        for a, b, length, oneway in edges:
            if a == b:
                continue
            adj.setdefault(a, []).append((b, float(length)))
            if not oneway:
                adj.setdefault(b, []).append((a, float(length)))
        self.cost: list[list[float]] = []
        for start in entrance_nodes:
            dist = self._dijkstra(adj, start)
            row = []
            for s in range(self.n_spaces):
                node = space_node[s]
                if node < 0 or node not in dist:
                    row.append(math.inf)
                else:
                    row.append(dist[node] + float(access_distance[s]))
            self.cost.append(row)
        # a space no entrance reaches is no use to any class (with no entrance: all count)
        self.reachable = [
            not self.cost or any(row[s] != math.inf for row in self.cost)
            for s in range(self.n_spaces)
        ]
        self.zone_spaces: list[list[int]] = [[] for _ in range(n_zones)]
        for s, z in enumerate(self.space_zone):
            self.zone_spaces[z].append(s)
        self.state = [UNKNOWN] * self.n_spaces
        self.held: dict[int, float] = {}
        self.hold_seen_s = hold_seen_s
        self.seen: dict[int, float] = {}  # held and occupied -> since when
        self.congestion: dict[int, tuple[float, float]] = {}
        self.now = -math.inf
        self.set_minute(minute_of_day)

    @classmethod
    def from_site(cls, site: Site, minute_of_day: int, **kwargs: Any) -> ReferenceAllocator:
        from gateway.allocation import CoreLayout  # only for the site's index tables

        return cls(**CoreLayout.site_tables(site), minute_of_day=minute_of_day, **kwargs)

    @staticmethod
    def _dijkstra(adj: dict[int, list[tuple[int, float]]], start: int) -> dict[int, float]:
        dist = {start: 0.0}
        heap = [(0.0, start)]
        while heap:
            d, u = heapq.heappop(heap)
            if d > dist.get(u, math.inf):
                continue
            for v, w in adj.get(u, ()):
                nd = d + w
                if nd < dist.get(v, math.inf):
                    dist[v] = nd
                    heapq.heappush(heap, (nd, v))
        return dist

    # -- rules ---------------------------------------------------------------------
    def _eligible(self, c: int, s: int, kinds: set[int] | None = None) -> bool:
        """Class c may use space s now (by one of ``kinds`` only, when given); never a space
        no entrance reaches."""
        if not self.reachable[s]:
            return False
        for k in self.space_kinds[s]:
            if k not in (self.class_kinds[c] if kinds is None else kinds):
                continue
            allowed = True
            for pk, pclasses, windows in self.policies:
                if (
                    pk == k
                    and c in pclasses
                    and not any(in_window(self.minute, w) for w in windows)
                ):
                    allowed = False
            if allowed:
                return True
        return False

    def set_minute(self, minute_of_day: int) -> None:
        self.minute = minute_of_day
        self.eligible = [
            [self._eligible(c, s) for s in range(self.n_spaces)] for c in range(self.n_classes)
        ]
        self.preferred = [
            [self._eligible(c, s, self.class_prefer[c]) for s in range(self.n_spaces)]
            for c in range(self.n_classes)
        ]

    def _tiers(self, c: int, candidates: list[int]) -> list[list[int]]:
        """The class's candidates in the order asked: of a preferred kind and no avoided
        kind, then with no avoided kind, then all (a tier may be empty)."""
        plain = [s for s in candidates if not self.space_kinds[s] & self.class_avoid[c]]
        return [[s for s in plain if self.preferred[c][s]], plain, candidates]

    def _available(self, s: int) -> bool:
        return self.state[s] == FREE and not self.closed[s] and s not in self.held

    def _congestion(self, aisle: int) -> float:
        if aisle not in self.congestion:
            return 0.0
        v, t = self.congestion[aisle]
        value = v * 2.0 ** (-(self.now - t) / self.halflife)
        return value if value >= self.floor else 0.0

    def _advance(self, now: float) -> None:
        self.now = max(self.now, now)

    # -- events --------------------------------------------------------------------
    def update(self, space: int, state: int, now: float) -> None:
        self._advance(now)
        old = self.state[space]
        self.state[space] = state
        if space in self.held and state != old:
            if state == OCCUPIED:
                self.seen.setdefault(space, self.now)  # the car's confirmation starts
            else:
                self.seen.pop(space, None)  # it drove off again: still held

    def assign(self, entrance: int, vehicle_class: int, now: float, hold_s: float) -> int:
        self._advance(now)
        now = self.now  # the latest time seen: an earlier one (a clock step) is not a rewind
        s = self.best(entrance, vehicle_class)
        if s < 0:
            return -1
        self.held[s] = now + hold_s
        a = self.aisle[s]
        if a in self.congestion:
            v, t = self.congestion[a]
            v = v * 2.0 ** (-(now - t) / self.halflife) + 1.0
        else:
            v = 1.0
        self.congestion[a] = (v, now)
        return s

    def hold(self, space: int, until: float, now: float, seen_since: float | None = None) -> None:
        self._advance(now)
        self.held[space] = until
        self.seen.pop(space, None)
        if self.state[space] == OCCUPIED:
            self.seen[space] = self.now if seen_since is None else seen_since

    def sense_held(self, space: int, occupied: bool, now: float) -> None:
        self._advance(now)
        if space in self.held and occupied:
            self.seen.setdefault(space, self.now)
        elif not occupied:
            self.seen.pop(space, None)

    def release(self, space: int) -> bool:
        self.seen.pop(space, None)
        return self.held.pop(space, None) is not None

    def expire_holds(self, now: float) -> list[int]:
        """Holds past their expiry, or whose space stayed occupied for ``hold_seen_s``."""
        self._advance(now)
        done = []
        for s, until in self.held.items():
            since = self.seen.get(s)
            if until <= self.now or (since is not None and since + self.hold_seen_s <= self.now):
                done.append(s)
        done.sort()
        for s in done:
            del self.held[s]
            self.seen.pop(s, None)
        return done

    # -- answers -------------------------------------------------------------------
    def _best_among(self, entrance: int, candidates: Iterable[int]) -> int:
        best = None
        costs = self.cost[entrance]
        for s in candidates:
            c = costs[s]
            if c == math.inf:
                continue
            key = (c + self.congestion_m * self._congestion(self.aisle[s]), c, s)
            if best is None or key < best:
                best = key
        return -1 if best is None else best[2]

    def _first_of(self, entrance: int, tiers: list[list[int]]) -> int:
        """The best candidate of the first tier that has one."""
        for candidates in tiers:
            s = self._best_among(entrance, candidates)
            if s >= 0:
                return s
        return -1

    def best(self, entrance: int, vehicle_class: int) -> int:
        """The best candidate of the class's first tier that has one (preferred kinds and no
        avoided kind, then no avoided kind, then all)."""
        elig = self.eligible[vehicle_class]
        candidates = [s for s in range(self.n_spaces) if elig[s] and self._available(s)]
        return self._first_of(entrance, self._tiers(vehicle_class, candidates))

    def _usable(self, line: int, s: int) -> bool:
        """The line's class (any class, for a line without one) may use space s now."""
        c = self.line_class[line]
        if c is None:
            return any(self.eligible[k][s] for k in range(self.n_classes))
        return self.eligible[c][s]

    def _effective(self, s: int) -> int:
        return CLOSED if self.closed[s] else self.state[s]

    def recompute(self) -> dict[str, list]:
        """Every answer from scratch: best per pair, line counts, zone counts."""
        candidates = [
            [s for s in range(self.n_spaces) if self.eligible[c][s] and self._available(s)]
            for c in range(self.n_classes)
        ]
        tiers = [self._tiers(c, candidates[c]) for c in range(self.n_classes)]
        best = [
            [self._first_of(e, tiers[c]) for c in range(self.n_classes)]
            for e in range(self.n_entrances)
        ]
        line_free, line_unknown, line_total = [], [], []
        for li, zones in enumerate(self.line_zones):
            free = unknown = total = 0
            for z in zones:
                for s in self.zone_spaces[z]:
                    if not self._usable(li, s):
                        continue  # the line's class may not use it now
                    eff = self._effective(s)
                    if eff != CLOSED:
                        total += 1
                    if eff == UNKNOWN:
                        unknown += 1
                    if self._available(s):
                        free += 1
            line_free.append(free)
            line_unknown.append(unknown)
            line_total.append(total)
        zone_counts = [[0, 0, 0, 0] for _ in range(self.n_zones)]
        for s in range(self.n_spaces):
            zone_counts[self.space_zone[s]][self._effective(s)] += 1
        return {
            "best": best,
            "line_free": line_free,
            "line_unknown": line_unknown,
            "line_total": line_total,
            "zone_counts": zone_counts,
        }
