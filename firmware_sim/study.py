"""What guidance buys: the same day of arrivals with and without it (pure simulation).

Guided drivers get a space from the gateway's allocation core itself
(``gateway.allocation``) at the gate and drive the lane graph's shortest path
to it. Unguided drivers do what people do without signs: head for the zone
they know (residents their home zone, visitors the visitor bays, office staff
the office bays), take the first free bay they may use that they pass, and
when their zone is full cruise on to the nearest aisle they have not yet
looked down, looping again after they have seen them all, until they give up.
Both kinds see exactly the same occupancy, arrivals and departures.

Search is measured from the gate to the bay: metres driven, and seconds at a
cruising speed plus a delay per junction. A driver turned away (the signs say
full, or an unguided driver who gave up) counts as failed and not in the
means.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np

from firmware_sim.traffic import Visit
from gateway.allocation import AllocationCore, CoreLayout
from parking.site import Site
from parking.states import SpaceState

FREE, OCCUPIED = int(SpaceState.FREE), int(SpaceState.OCCUPIED)
BANDS = ("<50", "50-80", "80-95", ">=95")


@dataclass(frozen=True)
class DrivingModel:
    speed_mps: float = 3.0  # about 11 km/h on community lanes
    junction_delay_s: float = 2.0  # slowing, looking, turning at each junction
    give_up_m: float = 2500.0  # unguided drivers leave after this much searching
    hold_s: float = 600.0


@dataclass
class Outcome:
    visit: int
    guided: bool
    parked: bool
    search_m: float
    search_s: float
    occupancy: float  # share of the spaces this driver may use that were taken at arrival


def band(occupancy: float) -> str:
    if occupancy < 0.5:
        return "<50"
    if occupancy < 0.8:
        return "50-80"
    if occupancy < 0.95:
        return "80-95"
    return ">=95"


@dataclass(order=True)
class _Event:
    t: float
    seq: int
    kind: str = field(compare=False)
    data: tuple = field(compare=False)


class LaneMap:
    """The lane graph for cruising: neighbours, edge lengths, spaces seen from each node."""

    def __init__(self, site: Site, layout: CoreLayout):
        self.node_index = {n: i for i, n in enumerate(layout.node_ids)}
        n = len(layout.node_ids)
        self.adj: list[list[tuple[int, float]]] = [[] for _ in range(n)]
        for e in site.lane_edges:
            a, b = self.node_index[e.a], self.node_index[e.b]
            self.adj[a].append((b, e.length))
            if not e.oneway:
                self.adj[b].append((a, e.length))
        self.spaces_at: list[list[int]] = [[] for _ in range(n)]
        for s in site.spaces:
            if s.access:
                self.spaces_at[self.node_index[s.access]].append(s.index)
        for lst in self.spaces_at:
            lst.sort(key=lambda i: site.spaces[i].access_distance)
        self.access_distance = np.array([s.access_distance for s in site.spaces])
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import dijkstra

        rows, cols, w = [], [], []
        for a, nbrs in enumerate(self.adj):
            for b, length in nbrs:
                rows.append(a)
                cols.append(b)
                w.append(length)
        graph = csr_matrix((w, (rows, cols)), shape=(n, n))
        self.dist, self.pred = dijkstra(graph, directed=True, return_predecessors=True)

    def path(self, a: int, b: int) -> list[int]:
        if a == b:
            return [a]
        if not math.isfinite(self.dist[a, b]):
            return []
        out = [b]
        while out[-1] != a:
            out.append(int(self.pred[a, out[-1]]))
        return out[::-1]


class Study:
    """One run of a day, guided or not."""

    def __init__(
        self,
        site: Site,
        layout: CoreLayout,
        visits: list[Visit],
        start_minute: int,
        guided: bool,
        seed: int,
        model: DrivingModel,
        lanes: LaneMap,
    ):
        self.site, self.layout, self.visits, self.guided = site, layout, visits, guided
        self.start_minute = start_minute
        self.model = model
        self.lanes = lanes
        self.rng = random.Random(seed)
        self.state = np.full(len(site.spaces), FREE, dtype=np.int8)
        self.parked_at: dict[int, int] = {}  # visit -> space
        self.core = AllocationCore(layout, start_minute) if guided else None
        self._elig_cache: dict[int, np.ndarray] = {}
        self.class_index = {c: i for i, c in enumerate(layout.classes)}
        self.entrance_index = {e: i for i, e in enumerate(layout.entrances)}
        self.outcomes: list[Outcome] = []
        self.events: list[_Event] = []
        self._seq = 0

    # -- helpers -------------------------------------------------------------------
    def minute(self, t: float) -> int:
        return int(self.start_minute + t // 60) % 1440

    def eligibility(self, t: float) -> np.ndarray:
        m = self.minute(t)
        if m not in self._elig_cache:
            self._elig_cache[m] = self.layout.eligibility(m)
        return self._elig_cache[m]

    def push(self, t: float, kind: str, *data) -> None:
        self._seq += 1
        heapq.heappush(self.events, _Event(t, self._seq, kind, data))

    def set_state(self, space: int, state: int, t: float) -> None:
        self.state[space] = state
        if self.core is not None:
            m = self.minute(t)
            if m != self.core.minute:
                self.core.set_minute(m)
            self.core.update(space, state, t)

    def occupancy_for(self, cls: int, t: float) -> float:
        elig = self.eligibility(t)[cls]
        n = int(elig.sum())
        if n == 0:
            return 1.0
        taken = (self.state[elig] != FREE).sum()
        if self.core is not None:
            taken += int(((self.core.held_until > t) & elig & (self.state == FREE)).sum())
        return float(taken) / n

    # -- the run -------------------------------------------------------------------
    def run(self) -> list[Outcome]:
        elig0 = self.eligibility(0.0)
        free = [s for s in range(len(self.site.spaces))]
        self.rng.shuffle(free)
        taken: set[int] = set()
        for v in self.visits:  # cars parked at the start, near home when they can be
            if v.arrive_s is None:
                cls = self.class_index[v.vehicle_class]
                pick = next(
                    (
                        s
                        for s in free
                        if s not in taken
                        and elig0[cls, s]
                        and self.site.spaces[s].zone == v.home_zone
                    ),
                    None,
                )
                if pick is None:
                    pick = next((s for s in free if s not in taken and elig0[cls, s]), None)
                if pick is None:
                    continue
                taken.add(pick)
                self.parked_at[v.id] = pick
                if v.depart_s is not None:
                    self.push(v.depart_s, "depart", v.id)
            else:
                self.push(v.arrive_s, "arrive", v.id)
        for s in range(len(self.site.spaces)):
            self.set_state(s, OCCUPIED if s in taken else FREE, 0.0)
        while self.events:
            ev = heapq.heappop(self.events)
            getattr(self, f"_on_{ev.kind}")(ev.t, *ev.data)
        return self.outcomes

    def _on_depart(self, t: float, vid: int) -> None:
        s = self.parked_at.pop(vid, None)
        if s is not None:
            self.set_state(s, FREE, t)

    def _on_arrive(self, t: float, vid: int) -> None:
        v = self.visits[vid]
        cls = self.class_index[v.vehicle_class]
        occ = self.occupancy_for(cls, t)
        gate_node = self.lanes.node_index[
            next(e.node for e in self.site.entrances if e.id == v.gate)
        ]
        if self.core is not None:
            m = self.minute(t)
            if m != self.core.minute:
                self.core.set_minute(m)
            self.core.expire_holds(t)
            e = self.entrance_index[v.gate]
            s = self.core.assign(e, cls, t, self.model.hold_s)
            if s < 0:  # the signs say full: residents come in and look anyway
                self._on_cruise(t, vid, gate_node, 0.0, 0.0, occ, frozenset(), 0)
                return
            route = self.core.route(e, s)
            dist = float(self.layout.cost[e, s])
            secs = dist / self.model.speed_mps + self.model.junction_delay_s * max(
                0, len(route) - 1
            )
            self.push(t + secs, "reach", vid, s, dist, secs, occ, gate_node)
        else:
            self._on_cruise(t, vid, gate_node, 0.0, 0.0, occ, frozenset(), 0)

    def _on_reach(
        self, t: float, vid: int, s: int, dist: float, secs: float, occ: float, gate_node: int
    ) -> None:
        """A guided driver reaches the assigned bay."""
        if self.state[s] == FREE:
            self._park(t, vid, s, dist, secs, occ)
            return
        # taken after all (cannot happen while holds last longer than the drive): look around
        node = self.lanes.node_index[self.site.spaces[s].access]
        self._on_cruise(t, vid, node, dist, secs, occ, frozenset(), 0)

    def _park(self, t: float, vid: int, s: int, dist: float, secs: float, occ: float) -> None:
        v = self.visits[vid]
        self.parked_at[vid] = s
        self.set_state(s, OCCUPIED, t)
        self.outcomes.append(Outcome(vid, self.guided, True, dist, secs, occ))
        if v.depart_s is not None:
            self.push(max(v.depart_s, t + 60), "depart", vid)

    def _on_cruise(
        self,
        t: float,
        vid: int,
        node: int,
        dist: float,
        secs: float,
        occ: float,
        seen: frozenset[int],
        loops: int,
    ) -> None:
        """An unguided driver at ``node``: park if a bay here is free and allowed, else drive on."""
        v = self.visits[vid]
        cls = self.class_index[v.vehicle_class]
        elig = self.eligibility(t)[cls]
        for s in self.lanes.spaces_at[node]:
            if self.state[s] == FREE and elig[s]:
                extra = float(self.lanes.access_distance[s])
                self._park(t, vid, s, dist + extra, secs + extra / self.model.speed_mps, occ)
                return
        seen = seen | {node}
        if dist >= self.model.give_up_m:
            self.outcomes.append(Outcome(vid, False, False, dist, secs, occ))
            return
        target = self._next_target(node, v, elig, seen)
        if target is None:  # looked everywhere: go round again
            seen, loops = frozenset({node}), loops + 1
            target = self._next_target(node, v, elig, seen)
            if target is None or loops > 3:
                self.outcomes.append(Outcome(vid, False, False, dist, secs, occ))
                return
        path = self.lanes.path(node, target)
        nxt = path[1]
        length = next(w for b, w in self.lanes.adj[node] if b == nxt)
        step_s = length / self.model.speed_mps + self.model.junction_delay_s
        self.push(t + step_s, "cruise", vid, nxt, dist + length, secs + step_s, occ, seen, loops)

    def _next_target(
        self, node: int, v: Visit, elig: np.ndarray, seen: frozenset[int]
    ) -> int | None:
        """Where an unguided driver heads next: an unseen aisle of their zone, nearest first;
        once their zone is seen, the nearest unseen aisle with bays they may use."""
        home, other = [], []
        for n, spaces in enumerate(self.lanes.spaces_at):
            if n in seen or not spaces or not math.isfinite(self.lanes.dist[node, n]):
                continue
            if not any(elig[s] for s in spaces):
                continue
            (
                home if any(self.site.spaces[s].zone == v.home_zone for s in spaces) else other
            ).append(n)
        pool = home or other
        if not pool:
            return None
        return min(pool, key=lambda n: (self.lanes.dist[node, n], n))


def _summary(outcomes: Iterable[Outcome]) -> dict:
    outs = list(outcomes)
    parked = [o for o in outs if o.parked]
    m = np.array([o.search_m for o in parked]) if parked else np.zeros(0)
    s = np.array([o.search_s for o in parked]) if parked else np.zeros(0)
    return {
        "mean_search_m": round(float(m.mean()), 1) if len(m) else None,
        "p95_search_m": round(float(np.percentile(m, 95)), 1) if len(m) else None,
        "mean_search_s": round(float(s.mean()), 1) if len(s) else None,
        "failed": len(outs) - len(parked),
        "parked": len(parked),
    }


def _reduction(g: dict, u: dict) -> float | None:
    if not g["mean_search_s"] or not u["mean_search_s"]:
        return None
    return round(1.0 - g["mean_search_s"] / u["mean_search_s"], 3)


def compare(
    site: Site,
    visits_by_day: list[list[Visit]],
    start_minute: int,
    seed: int,
    model: DrivingModel | None = None,
) -> dict:
    """Run every day guided and unguided; the figures of ``parkguide sim drivers --compare``."""
    model = model or DrivingModel()
    layout = CoreLayout.from_site(site)
    lanes = LaneMap(site, layout)
    guided: list[Outcome] = []
    unguided: list[Outcome] = []
    for day, visits in enumerate(visits_by_day):
        g = Study(site, layout, visits, start_minute, True, seed + day, model, lanes).run()
        u = Study(site, layout, visits, start_minute, False, seed + day, model, lanes).run()
        # an arrival's band is the occupancy the guided run saw at that arrival; the
        # unguided run's arrival of the same visit goes in the same band
        seen_by_guided = {o.visit: o.occupancy for o in g}
        for o in u:
            o.occupancy = seen_by_guided.get(o.visit, o.occupancy)
        guided += g
        unguided += u
    gs, us = _summary(guided), _summary(unguided)
    result = {
        "bench": "drivers",
        "drivers": len(guided),
        "guided": gs,
        "unguided": us,
        "reduction": _reduction(gs, us),
        "by_occupancy": {},
    }
    for b in BANDS:
        gb = [o for o in guided if band(o.occupancy) == b]
        ub = [o for o in unguided if band(o.occupancy) == b]
        gsb, usb = _summary(gb), _summary(ub)
        result["by_occupancy"][b] = {
            "drivers": len(gb),
            "guided": gsb,
            "unguided": usb,
            "reduction": _reduction(gsb, usb),
        }
    result["model"] = {
        "speed_mps": model.speed_mps,
        "junction_delay_s": model.junction_delay_s,
        "give_up_m": model.give_up_m,
        "days": len(visits_by_day),
        "seed": seed,
    }
    return result
