"""The allocation core: best free space per (entrance, vehicle class), display line counts.

Pure numpy + scipy, no I/O and no wall clock (times are passed in as floats).
The rules (``docs/allocation.md``; ``gateway.reference`` implements the same in
plain Python):

- eligible(c, s): some kind k of space s is one of class c's kinds and every
  policy on (k, c) has a window containing the current local minute; and some
  entrance reaches s over the lanes.
- candidate(c, s): state FREE, not closed (by state or by the site), not held,
  eligible(c, s).
- a hold ends at its expiry, or once its space has stayed OCCUPIED for
  ``hold_seen_s`` (the car is seen in it): both at ``expire_holds(now)``. A held
  space that reads occupied for a moment and then free again (another car
  manoeuvring over the detector) is still held.
- score(e, s) = cost[e, s] + congestion_m * congestion(aisle[s]); best(e, c)
  is the candidate with the lowest (score, cost, index) and a finite cost, of
  the first of these tiers that has one: (1) the spaces of the class's preferred
  kinds (``prefer``: a kind k of the space is preferred by c and usable by c now)
  that carry none of its avoided kinds (``avoid``), (2) all its candidates that
  carry no avoided kind, (3) all its candidates. An accessible car goes to a free
  accessible bay before a nearer resident one; a visitor to a charger bay that is
  also a visitor bay only when no plain visitor bay is free. Tier 1 is asked only
  when the class prefers some but not all of its kinds, tier 2 only when it avoids
  some kind (otherwise each equals the next). (Inside, each asked tier is one more
  class, eligible for its kinds and not for a space with an avoided kind; best(e, c)
  asks them first.)
  congestion(a) = v * 2 ** (-(now - t) / halflife), counted as 0 below
  ``CONGESTION_FLOOR``; an assignment into aisle a sets v to the decayed value
  + 1 and t to its time. ``now`` is the latest time passed to the core.
- a display line counts the candidates in its zones for its vehicle class
  (for any class when it has none); its unknown and total (for the fallback) count
  the spaces in its zones that class may use now, unknown and not closed.

Data structures (why it is incremental; details in ``docs/allocation.md``):
driving cost becomes a rank per entrance, so "lowest cost, then lowest index"
is one integer comparison. Spaces are stored by aisle in driving order (the
same from every entrance, since an aisle's spaces share its lane node), so an
aisle's best space for a class is its first candidate of that class. Leaves
(aisle x class x entrance ranks), blocks of aisles and one global row form a
two-level minimum: a change moves at most one aisle's first candidates, then
its block and the global row only if it held their minimum. Line counts move
by +-1 through a zone -> lines table. Congested aisles are parked outside the
two-level minimum and scored explicitly at query time (there are only as many
as recent assignments).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from parking.site import Site, in_window
from parking.states import SpaceState

UNKNOWN = int(SpaceState.UNKNOWN)
FREE = int(SpaceState.FREE)
OCCUPIED = int(SpaceState.OCCUPIED)
CLOSED = int(SpaceState.CLOSED)
N_STATES = len(SpaceState)

DEFAULT_CONGESTION_M = 20.0
"""Metres of extra driving one recent assignment adds to its aisle: a car or two
already heading down an aisle sends the next one to a neighbouring aisle."""
DEFAULT_CONGESTION_HALFLIFE_S = 60.0
"""About the time a car needs from the gate to its space."""
CONGESTION_FLOOR = 0.01
"""Decayed congestion below this counts as none (the aisle leaves the slow path)."""

HOLD_SEEN_S = 30.0
"""Seconds a held space must stay occupied before its car counts as seen in it and the
hold ends. A detector reads a car manoeuvring over it, or one pulling in and out to
re-park, for a few seconds (a three-point re-park in a tight bay takes 15-20 s); a parked
car stays for minutes. Waiting longer costs little: an occupied space is not offered
anyway, and a hold runs out at its expiry (180 s by default) whatever happens."""

PRUNE_EVERY_S = 5.0
"""Event-time interval between sweeps of decayed aisles out of the congested set."""
BATCH_MIN = 64
"""With lazy minima, update_many takes more changes than this in one vectorized step
(below it, one update() per change is cheaper: a few microseconds each; at 50 changes the
two cost the same on a warm CPU, and the per-change path 30 % less after a 5 ms pause)."""

NONE = np.iinfo(np.int32).max
"""Rank sentinel: no candidate."""

PolicySpec = tuple[int, Iterable[int], Sequence[tuple[int, int]]]
"""(kind index, class indices, windows as (start, end) minutes of day)."""
EdgeSpec = tuple[int, int, float, bool]
"""(from node, to node, length in metres, one-way)."""


def congestion_value(v: float, t: float, now: float, halflife_s: float) -> float:
    """Decayed congestion of an aisle last bumped to ``v`` at ``t`` (raw, no floor)."""
    return v * 2.0 ** (-(now - t) / halflife_s)


def lane_distances(
    n_nodes: int, edges: Iterable[tuple[int, int, float, bool]], entrance_nodes: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Shortest driving distance and predecessor from every entrance node to every lane
    node, float64[E, N] and int32[E, N] (Dijkstra, ``scipy.sparse.csgraph``)."""
    # imported here: a gateway restarting with cached distances skips scipy's import (~0.7 s)
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import dijkstra

    n_e = len(entrance_nodes)
    # lane graph: directed, parallel edges keep the shortest
    best_len: dict[tuple[int, int], float] = {}
    for a, b, length, oneway in edges:
        if a == b:
            continue
        pairs = [(a, b)] if oneway else [(a, b), (b, a)]
        for p in pairs:
            if p not in best_len or length < best_len[p]:
                best_len[p] = float(length)
    if best_len:
        keys = np.array(list(best_len.keys()), dtype=np.int64)
        graph = csr_matrix(
            (np.array(list(best_len.values())), (keys[:, 0], keys[:, 1])),
            shape=(n_nodes, n_nodes),
        )
    else:
        graph = csr_matrix((n_nodes, n_nodes))
    ent = np.asarray(entrance_nodes, dtype=np.int32).reshape(n_e)
    if n_e and n_nodes:
        dist, pred = dijkstra(graph, directed=True, indices=ent, return_predecessors=True)
        return dist, pred.astype(np.int32)
    return np.full((n_e, n_nodes), np.inf), np.full((n_e, n_nodes), -9999, dtype=np.int32)


@dataclass(frozen=True, eq=False)
class CoreLayout:
    """Everything about a site the core needs, as arrays; built once per site load.

    Index conventions: space index = position in ``site.spaces``; entrances,
    classes, zones, kinds, lane nodes and display lines in site order.
    """

    cost: np.ndarray
    """float64[E, S]: driving metres entrance -> space (lane graph + access distance); inf unreachable"""
    aisle: np.ndarray
    """int32[S]: congestion group = the space's access lane node, numbered 0..A-1"""
    aisle_node: np.ndarray
    """int32[A]: lane node of each aisle (-1: spaces without an access node)"""
    zone: np.ndarray
    """int32[S]"""
    space_node: np.ndarray
    """int32[S]: access lane node of each space (-1 none)"""
    closed: np.ndarray
    """bool[S]: closed in the site file (never a candidate, counted CLOSED)"""
    space_kinds: np.ndarray
    """bool[S, K]"""
    class_kinds: np.ndarray
    """bool[C, K]"""
    class_avoid: np.ndarray
    """bool[C, K]: a space carrying kind k is not eligible for class c (set on the classes of
    tiers only: the site's own classes avoid nothing, they are the last tier)"""
    policies: tuple[tuple[int, np.ndarray, tuple[tuple[int, int], ...]], ...]
    """(kind, bool[C] classes restricted, windows)"""
    line_zones: np.ndarray
    """bool[L, Z]"""
    line_class: np.ndarray
    """int32[L]: vehicle class counted by the line, -1 = any class"""
    predecessors: np.ndarray
    """int32[E, N]: shortest-path tree of each entrance over the lane graph (-9999 none)"""
    entrance_node: np.ndarray
    """int32[E]"""
    node_ids: tuple[str, ...]
    entrances: tuple[str, ...]
    classes: tuple[str, ...]
    zones: tuple[str, ...]
    kinds: tuple[str, ...]
    space_ids: tuple[str, ...]
    line_keys: tuple[tuple[str, int], ...]
    """(display id, line index) of every display line, in site order"""
    ask_first: np.ndarray = None  # type: ignore[assignment]
    """int32[C]: the class asked before class c (its next tier: preferred kinds, or no
    avoided kind), -1 none; always after c"""
    public_classes: int = -1
    """the site's classes come first; the classes of their tiers after them"""
    # derived (see __post_init__)
    order: np.ndarray = None  # type: ignore[assignment]
    """int32[E, S]: spaces of each entrance sorted by (cost, index)"""
    rank: np.ndarray = None  # type: ignore[assignment]
    """int32[E, S]: inverse of ``order``; NONE where unreachable"""
    kindset: np.ndarray = None  # type: ignore[assignment]
    """int32[S]: id of the space's kind combination (same kinds -> same eligibility)"""
    kindset_kinds: np.ndarray = None  # type: ignore[assignment]
    """bool[G, K]"""
    kindset_avoided: np.ndarray = None  # type: ignore[assignment]
    """bool[G, C]: the kind combination carries a kind the class avoids"""
    slot_space: np.ndarray = None  # type: ignore[assignment]
    """int32[S]: spaces in storage order (by aisle, then driving order within the aisle)"""
    space_slot: np.ndarray = None  # type: ignore[assignment]
    """int32[S]: inverse of slot_space"""
    aisle_ptr: np.ndarray = None  # type: ignore[assignment]
    """int64[A + 1]: slots of aisle a are aisle_ptr[a]:aisle_ptr[a + 1]"""
    aisle_uniform: np.ndarray = None  # type: ignore[assignment]
    """bool[A]: slot order within the aisle is the (cost, index) order from every entrance
    (spaces of an aisle share their lane node, so this holds unless float rounding of
    node distance + access distance reorders two of them for some entrance)"""
    slot_rank: np.ndarray = None  # type: ignore[assignment]
    """int32[S + 1, E]: rank in slot order, rows contiguous per aisle; row S is all NONE"""
    rank_cost: np.ndarray = None  # type: ignore[assignment]
    """float64[E, S + 1]: cost of the space at each rank (inf past the reachable ones and
    at column S, where a NONE rank is clipped to)"""
    slot_kindset: np.ndarray = None  # type: ignore[assignment]
    """int32[S]: kindset in slot order"""
    slot_index: np.ndarray = None  # type: ignore[assignment]
    """int32[S]: 0..S-1"""
    slot_aisle_kindset: np.ndarray = None  # type: ignore[assignment]
    """intp[S]: aisle * G + kindset in slot order (key of the first-candidate search)"""
    any_closed: bool = False
    zone_x4: np.ndarray = None  # type: ignore[assignment]
    """intp[S]: zone * 4 (bincount key with the state code)"""
    zone_kindset: np.ndarray = None  # type: ignore[assignment]
    """intp[S]: zone * G + kindset (bincount key)"""
    zone_lines_ptr: np.ndarray = None  # type: ignore[assignment]
    zone_lines: np.ndarray = None  # type: ignore[assignment]
    """lines counting zone z: zone_lines[zone_lines_ptr[z]:zone_lines_ptr[z + 1]]"""
    zone_lines_col: np.ndarray = None  # type: ignore[assignment]
    """class column of each of those lines (C = any class)"""

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.ask_first is None:
            set_(self, "ask_first", np.full(len(self.classes), -1, dtype=np.int32))
        if self.public_classes < 0:
            set_(self, "public_classes", len(self.classes))
        n_e, n_s = self.cost.shape
        order = np.argsort(self.cost, axis=1, kind="stable").astype(np.int32)
        rank = np.empty((n_e, n_s), dtype=np.int32)
        rows = np.arange(n_e)[:, None]
        rank[rows, order] = np.arange(n_s, dtype=np.int32)[None, :]
        rank[~np.isfinite(self.cost)] = NONE
        set_(self, "order", order)
        set_(self, "rank", rank)
        rank_cost = np.full((n_e, n_s + 1), np.inf)
        rank_cost[:, :n_s] = np.take_along_axis(self.cost, order, axis=1)
        set_(self, "rank_cost", rank_cost)
        # kind combinations
        if n_s:
            uniq, kindset = np.unique(self.space_kinds, axis=0, return_inverse=True)
        else:
            uniq, kindset = np.zeros((0, len(self.kinds)), bool), np.zeros(0, np.int64)
        kindset = kindset.reshape(-1).astype(np.int32)
        set_(self, "kindset", kindset)
        set_(self, "kindset_kinds", uniq.astype(bool))
        avoided = (uniq.astype(np.int32) @ self.class_avoid.T.astype(np.int32)) > 0
        set_(self, "kindset_avoided", avoided)
        # within an aisle, order spaces as the first entrance that reaches them drives
        # to them (the same for every entrance except after float rounding; checked below)
        reach = np.isfinite(self.cost)
        first_e = reach.argmax(axis=0) if n_e else np.zeros(n_s, np.int64)
        within = rank[first_e, np.arange(n_s)] if n_e else np.zeros(n_s, np.int32)
        slot_space = np.lexsort((np.arange(n_s), within, self.aisle)).astype(np.int32)
        space_slot = np.empty(n_s, dtype=np.int32)
        space_slot[slot_space] = np.arange(n_s, dtype=np.int32)
        set_(self, "slot_space", slot_space)
        set_(self, "space_slot", space_slot)
        n_a = len(self.aisle_node)
        counts = np.bincount(self.aisle, minlength=n_a)
        aisle_ptr = np.zeros(n_a + 1, dtype=np.int64)
        np.cumsum(counts, out=aisle_ptr[1:])
        set_(self, "aisle_ptr", aisle_ptr)
        slot_rank = np.full((n_s + 1, n_e), NONE, dtype=np.int32)
        slot_rank[:n_s] = rank[:, slot_space].T
        a_sorted = self.aisle[slot_space]
        same = a_sorted[1:] == a_sorted[:-1]
        r0, r1 = slot_rank[: n_s - 1], slot_rank[1:n_s]
        in_order = ((r1 > r0) | ((r0 == NONE) & (r1 == NONE))).all(axis=1)
        uniform = np.ones(n_a, dtype=bool)
        uniform[a_sorted[1:][same & ~in_order]] = False
        set_(self, "aisle_uniform", uniform)
        set_(self, "slot_rank", slot_rank)
        set_(self, "slot_kindset", kindset[slot_space].astype(np.int32))
        set_(self, "slot_index", np.arange(n_s, dtype=np.int32))
        set_(self, "zone_x4", self.zone.astype(np.intp) * 4)
        set_(self, "any_closed", bool(self.closed.any()))
        set_(
            self,
            "slot_aisle_kindset",
            a_sorted.astype(np.intp) * len(uniq) + kindset[slot_space],
        )
        set_(self, "zone_kindset", self.zone.astype(np.intp) * len(uniq) + kindset)
        # zone -> lines, with the class column each line counts
        n_c = len(self.classes)
        zl: list[list[int]] = [[] for _ in self.zones]
        for li in range(self.line_zones.shape[0]):
            for z in np.flatnonzero(self.line_zones[li]):
                zl[int(z)].append(li)
        ptr = np.zeros(len(self.zones) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in zl], out=ptr[1:])
        lines = np.array([li for x in zl for li in x], dtype=np.int64)
        cls = self.line_class[lines] if len(lines) else np.zeros(0, np.int32)
        set_(self, "zone_lines_ptr", ptr)
        set_(self, "zone_lines", lines)
        set_(self, "zone_lines_col", np.where(cls < 0, n_c, cls).astype(np.int64))

    # -- sizes -----------------------------------------------------------------
    @property
    def n_spaces(self) -> int:
        return self.cost.shape[1]

    @property
    def n_entrances(self) -> int:
        return self.cost.shape[0]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    @property
    def n_aisles(self) -> int:
        return len(self.aisle_node)

    @property
    def n_lines(self) -> int:
        return self.line_zones.shape[0]

    @property
    def lines(self) -> tuple[tuple[str, int, np.ndarray, int | None], ...]:
        """Display lines in site order: (display id, line index, bool[Z] zones, class or None)."""
        return tuple(
            (d, li, self.line_zones[i], None if self.line_class[i] < 0 else int(self.line_class[i]))
            for i, (d, li) in enumerate(self.line_keys)
        )

    # -- rules -----------------------------------------------------------------
    def kind_open(self, minute_of_day: int) -> np.ndarray:
        """bool[C, K]: class c may use kind k at this minute (its policies allow it)."""
        open_ = np.ones_like(self.class_kinds)
        for kind, classes, windows in self.policies:
            if not any(in_window(minute_of_day, w) for w in windows):
                open_[classes, kind] = False
        return open_

    def kindset_eligibility(self, minute_of_day: int) -> np.ndarray:
        """bool[G, C]: eligibility of every kind combination."""
        usable = (self.class_kinds & self.kind_open(minute_of_day)).astype(np.int32)
        return ((self.kindset_kinds.astype(np.int32) @ usable.T) > 0) & ~self.kindset_avoided

    def eligibility(self, minute_of_day: int) -> np.ndarray:
        """bool[C, S]: kinds + time-window policies (local minute of day); not state or closure."""
        return self.kindset_eligibility(minute_of_day)[self.kindset].T.copy()

    # -- constructors ----------------------------------------------------------
    @classmethod
    def from_arrays(
        cls,
        *,
        n_nodes: int,
        edges: Sequence[EdgeSpec],
        entrance_nodes: Sequence[int],
        space_node: Sequence[int],
        access_distance: Sequence[float],
        space_zone: Sequence[int],
        space_kinds: Sequence[Iterable[int]],
        class_kinds: Sequence[Iterable[int]],
        policies: Sequence[PolicySpec] = (),
        line_zones: Sequence[Iterable[int]] = (),
        line_class: Sequence[int | None] = (),
        closed: Sequence[bool] | None = None,
        class_prefer: Sequence[Iterable[int]] = (),
        class_avoid: Sequence[Iterable[int]] = (),
        n_zones: int | None = None,
        n_kinds: int | None = None,
        node_ids: Sequence[str] | None = None,
        entrances: Sequence[str] | None = None,
        classes: Sequence[str] | None = None,
        zones: Sequence[str] | None = None,
        kinds: Sequence[str] | None = None,
        space_ids: Sequence[str] | None = None,
        line_keys: Sequence[tuple[str, int]] | None = None,
        distances: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> CoreLayout:
        """A layout from plain index tables (random sites in tests, synthetic benchmarks);
        ``class_prefer``: per class, the kinds it is sent to first (none when shorter);
        ``class_avoid``: per class, the kinds of space it is sent to last (likewise);
        ``distances``: :func:`lane_distances` of the same graph, when already known."""
        n_s = len(space_node)
        n_e = len(entrance_nodes)
        kind_lists = [list(k) for k in space_kinds]
        class_kinds = [list(k) for k in class_kinds]
        n_public = len(class_kinds)
        class_names = list(classes or (f"c{i}" for i in range(n_public)))
        # each tier asked before a class's own candidates becomes a class of its own (its
        # kinds, minus spaces with an avoided kind, under the same policies), after the
        # site's classes; best() asks the tiers in order, the class itself last
        ask_first = [-1] * n_public
        avoid_lists: list[list[int]] = [[] for _ in range(n_public)]
        policy_rows = [(k, list(pc), w) for k, pc, w in policies]
        prefers, avoids = list(class_prefer)[:n_public], list(class_avoid)[:n_public]
        for c in range(n_public):
            own = set(class_kinds[c])
            kinds_first = set(prefers[c]) & own if c < len(prefers) else set()
            avoid = sorted(set(avoids[c])) if c < len(avoids) else []
            tiers = []  # in asking order; a tier equal to the next is left out
            if kinds_first and kinds_first != own:
                tiers.append((sorted(kinds_first), "preferred"))
            if avoid:
                tiers.append((sorted(own), "avoiding"))
            asks = c
            for tier_kinds, name in reversed(tiers):  # the tier asked just before c first
                tier = len(class_kinds)
                ask_first[asks] = tier
                ask_first.append(-1)
                class_kinds.append(tier_kinds)
                avoid_lists.append(avoid)
                class_names.append(f"{class_names[c]}/{name}")
                for _, pcls, _ in policy_rows:
                    if c in pcls:
                        pcls.append(tier)
                asks = tier
        n_c = len(class_kinds)
        if n_kinds is None:
            n_kinds = 1 + max(
                [k for ks in kind_lists + class_kinds + avoid_lists for k in ks]
                + [p[0] for p in policies]
                + [-1]
            )
        zone_arr = np.asarray(space_zone, dtype=np.int32).reshape(n_s)
        line_zones = [list(z) for z in line_zones]
        if n_zones is None:
            n_zones = 1 + max(
                [int(zone_arr.max()) if n_s else -1] + [z for zs in line_zones for z in zs] + [-1]
            )
        ent = np.asarray(entrance_nodes, dtype=np.int32).reshape(n_e)
        if distances is None:
            distances = lane_distances(n_nodes, edges, entrance_nodes)
        dist, pred = distances
        if dist.shape != (n_e, n_nodes) or pred.shape != (n_e, n_nodes):
            raise ValueError("lane distances do not match the lane graph's shape")
        node = np.asarray(space_node, dtype=np.int32).reshape(n_s)
        acc = np.asarray(access_distance, dtype=np.float64).reshape(n_s)
        cost = np.full((n_e, n_s), np.inf)
        has = node >= 0
        cost[:, has] = dist[:, node[has]] + acc[has][None, :]
        # aisles: one per access node in use (plus one for spaces without)
        aisle_key = np.where(has, node, n_nodes)
        used, aisle = np.unique(aisle_key, return_inverse=True)
        aisle_node = np.where(used == n_nodes, -1, used).astype(np.int32)
        sk = np.zeros((n_s, n_kinds), dtype=bool)
        # one assignment for all spaces (one per space took ~20 ms of a restart at 20,000)
        sk[
            np.repeat(np.arange(n_s), [len(ks) for ks in kind_lists]),
            np.fromiter((k for ks in kind_lists for k in ks), dtype=np.intp),
        ] = True
        if n_e:
            # a space no entrance reaches (a missing or reversed one-way edge) is no use to
            # any class: never a candidate, and the signs do not count it
            sk[~np.isfinite(cost).any(axis=0)] = False
        ck = np.zeros((n_c, n_kinds), dtype=bool)
        for c, class_ks in enumerate(class_kinds):
            ck[c, list(class_ks)] = True
        ca = np.zeros((n_c, n_kinds), dtype=bool)
        for c, avoid in enumerate(avoid_lists):
            ca[c, avoid] = True
        pol = []
        for kind, pcls, windows in policy_rows:
            mask = np.zeros(n_c, dtype=bool)
            mask[list(pcls)] = True
            pol.append((int(kind), mask, tuple((int(a), int(b)) for a, b in windows)))
        lz = np.zeros((len(line_zones), n_zones), dtype=bool)
        for li, zs in enumerate(line_zones):
            lz[li, list(zs)] = True
        lc = np.array([-1 if c is None else c for c in line_class], dtype=np.int32).reshape(
            len(line_zones)
        )
        closed_arr = np.zeros(n_s, dtype=bool) if closed is None else np.asarray(closed, dtype=bool)
        return cls(
            cost=cost,
            aisle=aisle.reshape(-1).astype(np.int32),
            aisle_node=aisle_node,
            zone=zone_arr,
            space_node=node,
            closed=closed_arr.reshape(n_s),
            space_kinds=sk,
            class_kinds=ck,
            class_avoid=ca,
            policies=tuple(pol),
            line_zones=lz,
            line_class=lc,
            predecessors=np.asarray(pred, dtype=np.int32).reshape(n_e, n_nodes),
            entrance_node=ent,
            node_ids=tuple(node_ids or (f"n{i}" for i in range(n_nodes))),
            entrances=tuple(entrances or (f"e{i}" for i in range(n_e))),
            classes=tuple(class_names),
            zones=tuple(zones or (f"z{i}" for i in range(n_zones))),
            kinds=tuple(kinds or (f"k{i}" for i in range(n_kinds))),
            space_ids=tuple(space_ids or (f"s{i}" for i in range(n_s))),
            line_keys=tuple(line_keys or (("d", i) for i in range(len(line_zones)))),
            ask_first=np.array(ask_first, dtype=np.int32),
            public_classes=n_public,
        )

    @staticmethod
    def site_tables(site: Site) -> dict:
        """The ``from_arrays`` keyword arguments describing ``site`` (shared with the reference)."""
        nodes = {n.id: i for i, n in enumerate(site.lane_nodes)}
        zones = {z.id: i for i, z in enumerate(site.zones)}
        kinds = {k: i for i, k in enumerate(site.kinds)}
        classes = {c.id: i for i, c in enumerate(site.vehicle_classes)}
        line_zones, line_class, line_keys = [], [], []
        for d in site.displays:
            for li, line in enumerate(d.lines):
                line_zones.append([zones[z] for z in line.zones])
                line_class.append(
                    None if line.vehicle_class is None else classes[line.vehicle_class]
                )
                line_keys.append((d.id, li))
        return {
            "n_nodes": len(nodes),
            "edges": [(nodes[e.a], nodes[e.b], e.length, e.oneway) for e in site.lane_edges],
            "entrance_nodes": [nodes[e.node] for e in site.entrances],
            "space_node": [nodes.get(s.access, -1) for s in site.spaces],
            "access_distance": [s.access_distance for s in site.spaces],
            "space_zone": [zones[s.zone] for s in site.spaces],
            "space_kinds": [sorted(kinds[k] for k in s.kinds) for s in site.spaces],
            "class_kinds": [[kinds[k] for k in c.kinds] for c in site.vehicle_classes],
            "class_prefer": [[kinds[k] for k in c.prefer] for c in site.vehicle_classes],
            "class_avoid": [[kinds[k] for k in c.avoid] for c in site.vehicle_classes],
            "policies": [
                (kinds[p.kind], [classes[c] for c in sorted(p.classes)], p.windows)
                for p in site.policies
            ],
            "line_zones": line_zones,
            "line_class": line_class,
            "closed": [s.closed for s in site.spaces],
            "n_zones": len(zones),
            "n_kinds": len(kinds),
            "node_ids": [n.id for n in site.lane_nodes],
            "entrances": [e.id for e in site.entrances],
            "classes": [c.id for c in site.vehicle_classes],
            "zones": [z.id for z in site.zones],
            "kinds": list(site.kinds),
            "space_ids": [s.id for s in site.spaces],
            "line_keys": line_keys,
        }

    @classmethod
    def from_site(
        cls, site: Site, distances: tuple[np.ndarray, np.ndarray] | None = None
    ) -> CoreLayout:
        """Lane graph -> driving costs (Dijkstra from every entrance), once per site load."""
        return cls.from_arrays(**cls.site_tables(site), distances=distances)

    @staticmethod
    def synthetic_tables(
        n_spaces: int,
        n_entrances: int = 16,
        n_classes: int = 8,
        n_lines: int = 200,
        seed: int = 0,
    ) -> dict:
        """``from_arrays`` arguments of a realistic synthetic site.

        A grid of aisles (20-40 spaces each, both sides of one lane node), zones of
        about ten aisles (a few hundred spaces), a few one-way streets, entrances on
        the edge of the grid, kinds and policies like a residential site (shared
        bays by time of day, loading bays in the morning, visitor bays by day).
        """
        rng = np.random.default_rng(seed)
        sizes: list[int] = []
        while sum(sizes) < n_spaces:
            sizes.append(int(rng.integers(20, 41)))
        sizes[-1] -= sum(sizes) - n_spaces
        if sizes[-1] <= 0:
            sizes.pop()
        n_aisles = len(sizes)
        width = max(1, math.ceil(math.sqrt(n_aisles)))
        height = math.ceil(n_aisles / width)
        n_grid = width * height
        edges: list[EdgeSpec] = []
        for y in range(height):
            for x in range(width):
                i = y * width + x
                if x + 1 < width:
                    edges.append((i, i + 1, float(rng.uniform(40, 70)), bool(y % 4 == 1)))
                if y + 1 < height:
                    edges.append((i, i + width, float(rng.uniform(15, 30)), bool(x % 5 == 3)))
        # entrances: extra nodes joined to the grid's edge
        border = [x for x in range(width)] + [(height - 1) * width + x for x in range(width)]
        border += [y * width for y in range(height)] + [
            y * width + width - 1 for y in range(height)
        ]
        entrance_nodes = []
        for e in range(n_entrances):
            g = border[int(rng.integers(len(border)))]
            node = n_grid + e
            edges.append((node, g, float(rng.uniform(10, 50)), False))
            entrance_nodes.append(node)
        # kinds: resident, visitor, ev, accessible, shared, loading, motorcycle, staff
        n_kinds = 8
        class_kinds = [
            [0, 4],  # resident: resident + shared
            [1],  # visitor
            [2, 0, 4],  # ev
            [3, 0, 4, 1],  # accessible
            [4],  # office: shared
            [5],  # delivery: loading
            [6],  # motorcycle
            [7, 1],  # staff
        ][:n_classes]
        while len(class_kinds) < n_classes:
            class_kinds.append([int(rng.integers(n_kinds))])
        policies: list[PolicySpec] = [
            (4, [c for c in (0, 2, 3) if c < n_classes], [(19 * 60, 8 * 60)]),
            (4, [c for c in (4,) if c < n_classes], [(8 * 60, 19 * 60)]),
            (5, [c for c in (5,) if c < n_classes], [(7 * 60, 10 * 60), (14 * 60, 16 * 60)]),
            (1, [c for c in (1,) if c < n_classes], [(8 * 60, 22 * 60)]),
        ]
        policies = [p for p in policies if list(p[1])]
        aisle_kind_choices = np.array([0, 0, 0, 0, 1, 4, 2, 5, 6, 7])
        space_node, access_distance, space_zone, space_kinds = [], [], [], []
        for a, size in enumerate(sizes):
            z = a // 10
            main = int(aisle_kind_choices[rng.integers(len(aisle_kind_choices))])
            for j in range(size):
                space_node.append(a)
                access_distance.append(3.0 + 2.5 * (j // 2))
                space_zone.append(z)
                if j < 2 and main == 0:
                    space_kinds.append([3])  # accessible bays at the aisle head
                elif j % 7 == 3 and main == 0:
                    space_kinds.append([2, 0])  # EV charger in a resident row
                else:
                    space_kinds.append([main])
        n_zones = max(space_zone) + 1 if space_zone else 1
        line_zones, line_class = [], []
        for _ in range(n_lines):
            z0 = int(rng.integers(n_zones))
            zs = sorted({min(n_zones - 1, z0 + int(d)) for d in range(int(rng.integers(1, 4)))})
            line_zones.append(zs)
            line_class.append(None if rng.random() < 0.2 else int(rng.integers(n_classes)))
        return {
            "n_nodes": n_grid + n_entrances,
            "edges": edges,
            "entrance_nodes": entrance_nodes,
            "space_node": space_node,
            "access_distance": access_distance,
            "space_zone": space_zone,
            "space_kinds": space_kinds,
            "class_kinds": class_kinds,
            "policies": policies,
            "line_zones": line_zones,
            "line_class": line_class,
            "n_zones": n_zones,
            "n_kinds": n_kinds,
        }

    @classmethod
    def synthetic(
        cls,
        n_spaces: int,
        n_entrances: int = 16,
        n_classes: int = 8,
        n_lines: int = 200,
        seed: int = 0,
    ) -> CoreLayout:
        """A realistic synthetic site (see ``synthetic_tables``) for benchmarks and tests."""
        return cls.from_arrays(
            **cls.synthetic_tables(n_spaces, n_entrances, n_classes, n_lines, seed)
        )


class AllocationCore:
    """Live candidates, best space per (entrance, class) and display line counts.

    Pair columns are ordered class-major (``p = c * E + e``) so that the columns of
    one class are a contiguous slice: a change usually moves one class's columns.
    """

    def __init__(
        self,
        layout: CoreLayout,
        minute_of_day: int,
        congestion_m: float = DEFAULT_CONGESTION_M,
        congestion_halflife_s: float = DEFAULT_CONGESTION_HALFLIFE_S,
        hold_seen_s: float = HOLD_SEEN_S,
    ):
        if congestion_halflife_s <= 0:
            raise ValueError("congestion_halflife_s must be positive")
        if not (math.isfinite(hold_seen_s) and hold_seen_s >= 0):
            raise ValueError("hold_seen_s must be a finite number of seconds, 0 or more")
        self.hold_seen_s = float(hold_seen_s)
        self.layout = layout
        self.congestion_m = float(congestion_m)
        self.congestion_halflife_s = float(congestion_halflife_s)
        n_s, n_e, n_c, n_a = layout.n_spaces, layout.n_entrances, layout.n_classes, layout.n_aisles
        self._n_c, self._n_e, self._n_s = n_c, n_e, n_s
        # per class, the classes best() asks in turn: its tiers, then itself
        first = layout.ask_first.tolist()
        self._asks: list[tuple[int, ...]] = []
        for c in range(n_c):
            chain = [c]
            while first[chain[-1]] >= 0:
                chain.append(first[chain[-1]])
            self._asks.append(tuple(reversed(chain)))
        self._n_p = n_e * n_c
        self.state = np.zeros(n_s, dtype=np.int8)
        self.held_until = np.zeros(n_s, dtype=np.float64)
        self._holds: dict[int, float] = {}
        # held space -> when it became occupied (the car is seen once it stays so for
        # hold_seen_s); only held spaces that are occupied now are in it
        self._seen: dict[int, float] = {}
        self.now = -math.inf
        self.minute = int(minute_of_day)
        self._cong: dict[int, tuple[float, float]] = {}  # aisle -> (v, t)
        # congested ("active") aisles are kept out of the two-level min: their leaf
        # rows are NONE and their true minima are parked in a small stack, scored
        # explicitly by best()
        self._active: dict[int, int] = {}  # aisle -> row in self._parked
        self._active_arr = np.zeros(0, dtype=np.int64)
        self._parked = np.zeros((0, n_c, n_e), dtype=np.int32)
        self._cong_v = np.zeros(n_a)
        self._cong_t = np.zeros(n_a)
        self._pruned_at = -math.inf
        # lazy minima: changes move the counts at once and the best-space minima only when
        # asked (best, assign) or settled; slot -> space of candidacies not yet applied
        self.lazy_minima = False
        self.batch_min = BATCH_MIN
        self._unsettled: dict[int, int] = {}
        # two-level min over aisles: blocks of w aisles, then all blocks
        # (half the square root: a raised leaf rescans its block of w aisles, and only
        # when that block held the global minimum the nb blocks)
        self._w = max(1, math.ceil(math.sqrt(n_a) / 2))
        self._nb = max(1, math.ceil(n_a / self._w))
        # plain-Python copies of the static per-space facts the update path reads
        # (a list index is several times cheaper than a numpy scalar index)
        self._slot_of = layout.space_slot.tolist()
        self._aisle_of = layout.aisle.tolist()
        self._zone_of = layout.zone.tolist()
        self._closed_of = layout.closed.tolist()
        self._kindset_of_slot = layout.slot_kindset.tolist()
        self._uniform = layout.aisle_uniform.tolist()
        self._aisle_hi = layout.aisle_ptr[1:].tolist()
        ptr, lines, cols = layout.zone_lines_ptr, layout.zone_lines, layout.zone_lines_col
        self._zone_lines = [
            list(
                zip(
                    lines[ptr[z] : ptr[z + 1]].tolist(),
                    cols[ptr[z] : ptr[z + 1]].tolist(),
                    strict=True,
                )
            )
            for z in range(len(layout.zones))
        ]
        self._zone_kindset_of = layout.zone_kindset.tolist()
        self._line_cols = np.where(layout.line_class < 0, n_c, layout.line_class)
        # the (line, zone) pairs of the sign lines, for vectorized per-line sums: a line
        # counts a few zones, so summing pairs beats a dense lines x zones product ~8x
        self._pair_line = layout.zone_lines
        self._pair_zone = np.repeat(np.arange(len(layout.zones)), np.diff(layout.zone_lines_ptr))
        self._pair_col = layout.zone_lines_col
        # bool[G, C+1] as the counting columns below, with every time window open: the
        # spaces a line's class may ever use, for telling "closed now" from "full"
        ever = (layout.kindset_kinds.astype(np.int32) @ layout.class_kinds.T.astype(np.int32)) > 0
        ever &= ~layout.kindset_avoided
        self._kindset_ext_ever = np.concatenate([ever, ever.any(axis=1, keepdims=True)], axis=1)
        self._set_eligibility(layout.kindset_eligibility(self.minute))
        self.recompute()

    def _set_eligibility(self, kindset_elig: np.ndarray) -> None:
        self._kindset_elig = kindset_elig
        ext = np.concatenate([kindset_elig, kindset_elig.any(axis=1, keepdims=True)], axis=1)
        self._kindset_ext = ext
        self._g_ext = [tuple(row) for row in ext.tolist()]  # per kindset: counted by class col
        self._g_classes = [tuple(np.flatnonzero(row).tolist()) for row in kindset_elig]
        # per (zone, kindset): the sign lines that count such a space now, so a change
        # walks only its own lines (the update path's inner loop)
        self._zg_lines = [
            tuple(line for line, col in self._zone_lines[z] if g_ext[col])
            for z in range(len(self._zone_lines))
            for g_ext in self._g_ext
        ]

    # -- full recompute ----------------------------------------------------------
    def recompute(self) -> None:
        """Rebuild every derived structure from ``state``, ``held_until`` and the congestion."""
        self._unsettled = {}
        lo = self.layout
        n_c, n_a, n_s = self._n_c, lo.n_aisles, self._n_s
        eff = np.where(lo.closed, CLOSED, self.state) if lo.any_closed else self.state
        avail = eff == FREE
        if self._holds:
            avail[list(self._holds)] = False
        avail_slot = np.take(avail, lo.slot_space)
        # a bytearray: the update path reads and writes single flags (cheap in Python);
        # _avail_np is a numpy view of the same bytes
        self._avail_py = bytearray(avail_slot.view(np.uint8).tobytes())
        self._avail_np = np.frombuffer(self._avail_py, dtype=np.bool_)
        # per aisle and class: the first candidate slot in the aisle's driving order.
        # Slots are in driving order within an aisle, so the first available slot of
        # each (aisle, kind combination) is its lowest slot; a class takes the lowest
        # over the combinations it may use.
        n_g = len(lo.kindset_kinds)
        idx = np.flatnonzero(avail_slot)
        # the first of each key by a stable sort (np.unique with return_index does the
        # same, with more passes over the array)
        keyed = np.take(lo.slot_aisle_kindset, idx)
        order = np.argsort(keyed, kind="stable")
        keyed = keyed[order]
        head = np.empty(len(keyed), dtype=np.bool_)
        head[:1] = True
        np.not_equal(keyed[1:], keyed[:-1], out=head[1:])
        first_flat = np.full(n_a * n_g, n_s, dtype=np.int32)
        first_flat[keyed[head]] = idx[order[head]]
        first_g = first_flat.reshape(n_a, n_g)
        first = np.full((n_a, n_c), n_s, dtype=np.int32)
        for g in range(n_g):
            cls = self._g_classes[g]
            if cls:
                first[:, cls] = np.minimum(first[:, cls], first_g[:, g : g + 1])
        # aisle minima, leaves, blocks and the global row are class-major
        # (C, aisles, E): the columns one class moves are contiguous
        n_e, nb, w = self._n_e, self._nb, self._w
        # leaf rows = ranks of the first candidates; padding rows point at the NONE row
        first_pad = np.full((nb * w, n_c), n_s, dtype=np.int32)
        first_pad[:n_a] = first
        self._leaf = np.take(lo.slot_rank, first_pad.T, axis=0)  # (C, rows, E)
        self._first_np = first
        self._first_rows: dict[int, list[int]] = {}  # plain-Python rows, made on first use
        for a in np.flatnonzero(~lo.aisle_uniform).tolist():
            self._leaf[:, a, :] = self._scan_aisle(a)
        act = self._active_arr  # congested aisles keep their order and parked rows
        self._parked = np.ascontiguousarray(self._leaf[:, act, :].transpose(1, 0, 2))
        self._leaf[:, act, :] = NONE
        # block minima by a loop over the block width: elementwise minimum of whole
        # (C, blocks, E) slabs is much faster than a reduction over a middle axis
        leaf4 = self._leaf.reshape(n_c, nb, w, n_e)
        self._block = leaf4[:, :, 0, :].copy()
        for i in range(1, w):
            np.minimum(self._block, leaf4[:, :, i, :], out=self._block)
        self._glob3 = self._block.min(axis=1)  # (C, E)
        self._glob = self._glob3.reshape(-1)  # view, p = c * E + e
        # counts, all from one pass over the spaces: (zone, kind combination, state)
        n_z = len(lo.zones)
        n_g = len(lo.kindset_kinds)
        zgs = np.bincount(lo.zone_kindset * N_STATES + eff, minlength=n_z * n_g * N_STATES).reshape(
            n_z, n_g, N_STATES
        )
        self._zone_counts = zgs.sum(axis=1).astype(np.int64)
        free_zg = zgs[:, :, FREE]
        if self._holds:  # held spaces are free but not candidates
            held = np.fromiter(self._holds, dtype=np.intp, count=len(self._holds))
            held = held[eff[held] == FREE]
            free_zg = free_zg - np.bincount(lo.zone_kindset[held], minlength=n_z * n_g).reshape(
                n_z, n_g
            )
        ext = self._kindset_ext
        pz, pc = self._pair_zone, self._pair_col

        def per_line(per_zg: np.ndarray) -> np.ndarray:  # (Z, G) -> one count per sign line
            return self._per_line(np.rint(per_zg @ ext).astype(np.int64)[pz, pc])

        self.line_free = per_line(free_zg)
        # unknown and total over the spaces the line's class may use now (a charger line
        # is blind when its chargers are, whatever the rest of the zone says)
        self.line_unknown = per_line(zgs[:, :, UNKNOWN])
        self.line_total = per_line(zgs.sum(axis=2) - zgs[:, :, CLOSED])
        # every space the line's class may use at some time of day, closed or not: a line
        # with some but none open now (a manager closed them, or its hours are over) is a
        # closed one (its sign reads CLOSED, not FULL). It moves only with the site file:
        # kept as a list for the sign path
        ever = self._kindset_ext_ever
        self.line_capacity: list[int] = self._per_line(
            np.rint(zgs.sum(axis=2) @ ever).astype(np.int64)[pz, pc]
        ).tolist()
        self._make_views()

    def _per_line(self, per_pair: np.ndarray) -> np.ndarray:
        """Sum a value given per (line, zone) pair into one per sign line."""
        return np.bincount(
            self._pair_line, weights=per_pair, minlength=len(self._line_cols)
        ).astype(np.int64)

    _VIEWS = ("_state_v", "_zc_v", "_lf_v", "_lu_v", "_lt_v")

    def __getstate__(self) -> dict[str, Any]:  # copy and pickle: views are made again
        return {k: v for k, v in self.__dict__.items() if k not in self._VIEWS}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._make_views()

    def _make_views(self) -> None:
        """Flat memoryviews of the arrays one change writes item by item (an item through a
        memoryview costs a fraction of a numpy scalar index); made again whenever recompute
        replaces the arrays. Everything else keeps using the arrays themselves."""
        self._state_v: Any = self.state.data
        self._zc_v: Any = self._zone_counts.reshape(-1).data  # z * N_STATES + state
        self._lf_v: Any = self.line_free.data
        self._lu_v: Any = self.line_unknown.data
        self._lt_v: Any = self.line_total.data

    # -- time ------------------------------------------------------------------
    def set_minute(self, minute_of_day: int) -> bool:
        """Re-evaluate eligibility; True (and a full recompute) if it changed."""
        self.minute = int(minute_of_day)
        ke = self.layout.kindset_eligibility(self.minute)
        if np.array_equal(ke, self._kindset_elig):
            return False
        self._set_eligibility(ke)
        self.recompute()
        return True

    def congestion(self, aisle: int) -> float:
        """Congestion of an aisle now, as scored (0 below the floor)."""
        vt = self._cong.get(aisle)
        if vt is None:
            return 0.0
        v = congestion_value(vt[0], vt[1], self.now, self.congestion_halflife_s)
        return v if v >= CONGESTION_FLOOR else 0.0

    # -- state changes -------------------------------------------------------------
    def update(self, space: int, state: int, now: float) -> None:
        """One space changed state (a held space occupied starts its car's confirmation,
        one no longer occupied stops it)."""
        if now > self.now:
            self.now = float(now)
        state = int(state)
        if not UNKNOWN <= state <= CLOSED:
            raise ValueError(f"space state code {state} is not one of 0..3 (SpaceState)")
        if not 0 <= space < self._n_s:
            raise IndexError(f"space index {space} out of range")
        self._apply(int(space), state)

    def _apply(self, space: int, state: int) -> None:
        """One checked change (plain ints): the state, a held space's confirmation, the
        counts."""
        old = self._state_v[space]
        if old == state:
            return
        self._state_v[space] = state
        if space in self._holds:
            if state == OCCUPIED:  # (a closed space's sensor may have started it)
                self._seen.setdefault(space, self.now)
            else:
                self._seen.pop(space, None)
        self._refresh(space, old, state)

    def _track_seen(self, spaces: np.ndarray, states: np.ndarray) -> None:
        """A batch's changes of held spaces, in order as one _apply() each, for their
        confirmation (before the batch writes the states)."""
        held = np.fromiter(self._holds, dtype=np.int64, count=len(self._holds))
        mine = np.flatnonzero(np.isin(spaces, held))
        if not len(mine):
            return
        now, seen = self.now, self._seen
        was: dict[int, int] = {}
        for s, st in zip(spaces[mine].tolist(), states[mine].tolist(), strict=True):
            old = was.get(s, self._state_v[s])
            was[s] = st
            if st == old:
                continue
            if st == OCCUPIED:
                seen.setdefault(s, now)
            else:
                seen.pop(s, None)

    def update_many(
        self, spaces: Sequence[int] | np.ndarray, states: Sequence[int] | np.ndarray, now: float
    ) -> None:
        """Several changes at one time (in order; later entries win)."""
        spaces = np.asarray(spaces, dtype=np.int64).reshape(-1)
        states = np.asarray(states, dtype=np.int64).reshape(-1)
        if len(spaces) != len(states):
            raise ValueError("spaces and states differ in length")
        # checked whole before anything changes; on lists: a few numpy reductions cost
        # more than the changes themselves after a quiet spell
        space_l, state_l = spaces.tolist(), states.tolist()
        if state_l and not (min(state_l) >= UNKNOWN and max(state_l) <= CLOSED):
            raise ValueError("space state codes must be 0..3 (SpaceState)")
        if space_l and not (min(space_l) >= 0 and max(space_l) < self._n_s):
            raise IndexError("space index out of range")
        # lazy minima make a change cheap (counts only): a recompute pays off later
        if len(spaces) * (2 if self.lazy_minima else 8) > self._n_s:
            # a large batch (start-up, snapshot): one vectorized recompute is cheaper
            if now > self.now:
                self.now = float(now)
            if self._holds:
                self._track_seen(spaces, states)
            # the last entry for a space wins
            rev_unique, rev_first = np.unique(spaces[::-1], return_index=True)
            self.state[rev_unique] = states[::-1][rev_first]
            self.recompute()
            return
        if self.lazy_minima and len(spaces) > self.batch_min:
            self._update_batch(spaces, states, now)
            return
        if now > self.now:
            self.now = float(now)
        apply = self._apply  # checked whole above: no per-change checks
        for s, st in zip(space_l, state_l, strict=True):
            apply(s, st)

    def _update_batch(self, spaces: np.ndarray, states: np.ndarray, now: float) -> None:
        """Lazy minima: a batch of changes moves the counts in a few vectorized steps (the
        same result as one update() per change) and leaves the candidacies pending."""
        if now > self.now:
            self.now = float(now)
        lo = self.layout
        if len(set(spaces.tolist())) == len(spaces):
            sp, new = spaces, states.astype(np.int8)
        else:  # the last entry for a space wins
            sp, first = np.unique(spaces[::-1], return_index=True)
            new = states[::-1][first].astype(np.int8)
        if self._holds:
            self._track_seen(spaces, states)
        old = self.state[sp]
        self.state[sp] = new
        closed = lo.closed[sp]
        old_eff = np.where(closed, CLOSED, old)
        new_eff = np.where(closed, CLOSED, new)
        n_z = len(lo.zones)
        zx4 = lo.zone_x4[sp]
        dz = (
            np.bincount(zx4 + new_eff, minlength=n_z * 4)
            - np.bincount(zx4 + old_eff, minlength=n_z * 4)
        ).reshape(n_z, 4)
        if dz.any():
            self._zone_counts += dz
        # the lines move even when every zone's totals cancel out: an unknown charger and a
        # known ordinary space of the same zone trading states move the charger line only
        pz, pc = self._pair_zone, self._pair_col
        du = (new_eff == UNKNOWN).astype(np.int64) - (old_eff == UNKNOWN)
        if du.any():
            moved = du != 0
            self.line_unknown += self._per_line(self._per_zone_col_of(sp, moved, du)[pz, pc])
        dt = (old_eff == CLOSED).astype(np.int64) - (new_eff == CLOSED)
        if dt.any():  # closed spaces are not counted
            moved = dt != 0
            self.line_total += self._per_line(self._per_zone_col_of(sp, moved, dt)[pz, pc])
        slots = lo.space_slot[sp]
        avail = (new_eff == FREE) & (self.held_until[sp] == 0.0)
        flip = avail != self._avail_np[slots]
        if not flip.any():
            return
        slots, sp, avail = slots[flip], sp[flip], avail[flip]
        self._avail_np[slots] = avail
        n_g = len(lo.kindset_kinds)
        dzg = np.bincount(
            lo.zone_kindset[sp], weights=np.where(avail, 1.0, -1.0), minlength=n_z * n_g
        ).reshape(n_z, n_g)
        per_zone = np.rint(dzg @ self._kindset_ext).astype(np.int64)  # (Z, C + 1)
        self.line_free += self._per_line(per_zone[self._pair_zone, self._pair_col])
        g_classes, kind_of = self._g_classes, self._kindset_of_slot
        for p, s in zip(slots.tolist(), sp.tolist(), strict=True):
            if g_classes[kind_of[p]]:
                self._unsettled[p] = s

    def _per_zone_col_of(self, sp: np.ndarray, mask: np.ndarray, delta: np.ndarray) -> np.ndarray:
        """:meth:`_per_zone_col` of ``delta`` over the spaces ``sp[mask]``."""
        lo = self.layout
        n_z, n_g = len(lo.zones), len(lo.kindset_kinds)
        per_kindset = np.bincount(
            lo.zone_kindset[sp[mask]], weights=delta[mask], minlength=n_z * n_g
        ).reshape(n_z, n_g)
        return np.rint(per_kindset @ self._kindset_ext).astype(np.int64)

    def _refresh(self, s: int, old_state: int, new_state: int) -> None:
        """Space s changed state and/or hold: move the counts, and the minima (at once, or
        at :meth:`settle` with ``lazy_minima``)."""
        if self._closed_of[s]:
            old_state = new_state = CLOSED
        lines = self._zg_lines[self._zone_kindset_of[s]]
        if old_state != new_state:
            zc = self._zc_v
            z4 = self._zone_of[s] * N_STATES
            zc[z4 + old_state] -= 1
            zc[z4 + new_state] += 1
            du = (new_state == UNKNOWN) - (old_state == UNKNOWN)
            if du:
                lu = self._lu_v
                for line in lines:
                    lu[line] += du
            dt = (old_state == CLOSED) - (new_state == CLOSED)
            if dt:  # closed spaces are not counted
                lt = self._lt_v
                for line in lines:
                    lt[line] += dt
        p = self._slot_of[s]
        avail = new_state == FREE and s not in self._holds
        if avail == self._avail_py[p]:
            return
        self._avail_py[p] = avail
        lf = self._lf_v
        if avail:
            for line in lines:
                lf[line] += 1
        else:
            for line in lines:
                lf[line] -= 1
        g = self._kindset_of_slot[p]
        if not self._g_classes[g]:
            return
        if self.lazy_minima:
            self._unsettled[p] = s
            return
        self._move_minima(s, p, avail)

    @property
    def unsettled(self) -> int:
        """Candidacies that lazy minima left pending (:meth:`settle` applies them)."""
        return len(self._unsettled)

    def settle(self) -> None:
        """Apply the candidacies that lazy minima left pending, by their final value: first
        the slots that left (the aisles rescan with the final flags), then those that came
        (minima only go down), which gives the same minima as applying them one by one."""
        if not self._unsettled:
            return
        if len(self._unsettled) * 8 > self._n_s:
            self.recompute()  # many pending: one vectorized rebuild is cheaper
            return
        pending, self._unsettled = self._unsettled, {}
        avail = self._avail_py
        for p, s in pending.items():
            if not avail[p]:
                self._move_minima(s, p, False)
        for p, s in pending.items():
            if avail[p]:
                self._move_minima(s, p, True)

    def _move_minima(self, s: int, p: int, avail: bool) -> None:
        """Slot p (space s) became a candidate (``avail``) or stopped being one: move the
        aisle's first candidates and the two-level minima."""
        classes = self._g_classes[self._kindset_of_slot[p]]
        a = self._aisle_of[s]
        if not self._uniform[a]:
            self._refresh_general(a, p, avail)
            return
        first = self._first_rows.get(a)
        if first is None:
            first = self._first_rows[a] = self._first_np[a].tolist()
        if avail:
            changed = [c for c in classes if p < first[c]]
            if changed:
                for c in changed:
                    first[c] = p
                self._move_classes(a, changed, lowered=True)
            return
        changed = [c for c in classes if first[c] == p]
        if not changed:
            return
        # the aisle's first candidate for these classes left: look further down the aisle
        avail_py, kind_of, g_classes = self._avail_py, self._kindset_of_slot, self._g_classes
        hi = self._aisle_hi[a]
        for c in changed:
            q = p + 1
            while q < hi and not (avail_py[q] and c in g_classes[kind_of[q]]):
                q += 1
            first[c] = q if q < hi else self._n_s
        self._move_classes(a, changed, lowered=False)

    def _move_classes(self, a: int, classes: list[int], lowered: bool) -> None:
        """The first candidate of uniform aisle a changed for ``classes``: move its columns."""
        w = self._w
        first = self._first_rows[a]
        b = a // w
        slot_rank = self.layout.slot_rank
        i = self._active.get(a)
        if i is not None:
            self._parked[i, classes] = slot_rank[[first[c] for c in classes]]
            return
        if len(classes) > 1:
            # several classes at once (a space usually serves several): fancy-indexed
            # rows cost the same few numpy calls whatever their number
            news = slot_rank[[first[c] for c in classes]]  # (k, E)
            if lowered:
                self._leaf[classes, a] = news
                blk = self._block[classes, b]
                if (news < blk).any():
                    self._block[classes, b] = np.minimum(blk, news)
                    self._glob3[classes] = np.minimum(self._glob3[classes], news)
                return
            hit = (self._leaf[classes, a] == self._block[classes, b]).any(axis=1)
            self._leaf[classes, a] = news
            for c, h in zip(classes, hit.tolist(), strict=True):
                if h:
                    self._raise_block(c, b)
            return
        c = classes[0]
        new = slot_rank[first[c]]
        leaf = self._leaf[c]
        blk = self._block[c, b]
        if lowered:
            leaf[a] = new
            if (new < blk).any():
                np.minimum(blk, new, out=blk)
                np.minimum(self._glob3[c], new, out=self._glob3[c])
            return
        # raised: the block (and the global row) only move if this aisle held their minimum
        held_min = (leaf[a] == blk).any()
        leaf[a] = new
        if held_min:
            self._raise_block(c, b)

    def _raise_block(self, c: int, b: int) -> None:
        """A leaf of block b went up for class c: recompute the block, and the global row if needed."""
        w = self._w
        blk = self._block[c, b]
        glob = self._glob3[c]
        was_glob = (blk == glob).any()
        blk[:] = self._leaf[c, b * w : (b + 1) * w].min(axis=0)
        if was_glob:
            glob[:] = self._block[c].min(axis=0)

    def _refresh_general(self, a: int, p: int, avail: bool) -> None:
        """Slot p of a non-uniform aisle a changed candidacy: per-pair minima."""
        elig = self._kindset_elig[self._kindset_of_slot[p]]
        vals = np.where(elig[:, None], self.layout.slot_rank[p][None, :], NONE)  # (C, E)
        i = self._active.get(a)
        row = self._leaf[:, a, :] if i is None else self._parked[i]
        if avail:
            np.minimum(row, vals, out=row)
            if i is None:
                blk = self._block[:, a // self._w, :]
                np.minimum(blk, vals, out=blk)
                np.minimum(self._glob3, vals, out=self._glob3)
            return
        if not ((row == vals) & (vals != NONE)).any():
            return
        if i is None:
            self._set_leaf(a, self._scan_aisle(a))
        else:
            row[:] = self._scan_aisle(a)

    def _scan_aisle(self, a: int) -> np.ndarray:
        """Aisle a's lowest candidate rank for every pair, from its slots: (C, E)."""
        lo = self.layout
        lo_, hi_ = int(lo.aisle_ptr[a]), int(lo.aisle_ptr[a + 1])
        cand = self._kindset_elig[lo.slot_kindset[lo_:hi_]] & self._avail_np[lo_:hi_, None]
        return np.where(cand[:, :, None], lo.slot_rank[lo_:hi_, None, :], NONE).min(axis=0)

    def _set_leaf(self, a: int, new: np.ndarray) -> None:
        """Aisle a's leaf became ``new``; refresh its block and the global minimum."""
        b, w = a // self._w, self._w
        block = self._block[:, b, :]
        leaf = self._leaf[:, a, :]
        raised_min = ((leaf == block) & (new > leaf)).any()
        leaf[...] = new
        if not raised_min:
            # nothing this aisle held as its block's minimum went up: minima only go down
            np.minimum(block, new, out=block)
            np.minimum(self._glob3, new, out=self._glob3)
            return
        old_block = block.copy()
        block[...] = self._leaf[:, b * w : (b + 1) * w, :].min(axis=1)
        if ((old_block == self._glob3) & (block > old_block)).any():
            self._glob3[...] = self._block.min(axis=1)
        else:
            np.minimum(self._glob3, block, out=self._glob3)

    # -- holds and congestion ----------------------------------------------------------
    def assign(self, entrance: int, vehicle_class: int, now: float, hold_s: float) -> int:
        """Best space for an arriving car, held for it until seen (``hold_seen_s``) or
        ``now + hold_s``; -1 if none."""
        if hold_s <= 0:
            raise ValueError("hold_s must be positive")
        if now > self.now:
            self.now = float(now)
        now = self.now  # the latest time seen: an earlier one (a clock step) is not a rewind
        s = self.best(entrance, vehicle_class)
        if s < 0:
            return -1
        until = now + float(hold_s)
        self.held_until[s] = until
        self._holds[s] = until
        st = int(self.state[s])
        self._refresh(s, st, st)
        self.settle()
        a = self._aisle_of[s]
        vt = self._cong.get(a)
        v = 1.0 if vt is None else congestion_value(*vt, now, self.congestion_halflife_s) + 1.0
        self._cong[a] = (v, float(now))
        self._cong_v[a] = v
        self._cong_t[a] = float(now)
        if a not in self._active and self.congestion_m != 0:
            self._activate(a)
        return s

    def unknown_eligible(
        self, entrance: int, vehicle_class: int
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(unknown[Z], counted[Z], usable): per zone, of the spaces ``vehicle_class`` may use
        now (kind, time window) reachable from ``entrance`` and not closed, how many are
        unknown, out of how many; and how many it may use now at all, closed ones included.
        When :meth:`assign` finds nothing and some zone has too many of these unknown (as a
        sign judges its line), the car park is not known to be full, only not seen; when
        ``usable`` is 0, nothing is open to the class at this hour."""
        lo = self.layout
        usable = self._kindset_elig[lo.kindset, vehicle_class] & np.isfinite(lo.cost[entrance])
        counted = usable & ~lo.closed & (self.state != CLOSED)
        n_z = len(lo.zones)
        unknown = np.bincount(lo.zone[counted & (self.state == UNKNOWN)], minlength=n_z)
        return unknown, np.bincount(lo.zone[counted], minlength=n_z), int(np.count_nonzero(usable))

    def hold(self, space: int, until: float, now: float, seen_since: float | None = None) -> None:
        """Hold ``space`` until ``until`` (e.g. a hold restored from the journal after a
        restart); no congestion is added. Released like any hold; if the space is occupied,
        its car's confirmation runs from ``seen_since`` (default: the core's now)."""
        if not 0 <= space < self._n_s:
            raise IndexError(f"space index {space} out of range")
        if not until > 0:
            raise ValueError("a hold must end at a positive time")
        if now > self.now:
            self.now = float(now)
        s = int(space)
        self.held_until[s] = float(until)
        self._holds[s] = float(until)
        st = int(self.state[s])
        if st == OCCUPIED:
            self._seen[s] = self.now if seen_since is None else float(seen_since)
        else:
            self._seen.pop(s, None)
        self._refresh(s, st, st)

    def sense_held(self, space: int, occupied: bool, now: float) -> None:
        """A car is (``occupied``) or is no longer sensed in held ``space`` whose state says
        otherwise (a closed space stays CLOSED whatever its sensor says): its confirmation
        starts now unless running, or stops. Nothing for a space not held."""
        if now > self.now:
            self.now = float(now)
        s = int(space)
        if s not in self._holds:
            return
        if occupied:
            self._seen.setdefault(s, self.now)
        else:
            self._seen.pop(s, None)

    def expire_holds(self, now: float) -> list[int]:
        """Release holds that expired at or before ``now``, or whose space stayed occupied for
        ``hold_seen_s`` by then (the car is seen in it); returns those spaces (ascending)."""
        if now > self.now:
            self.now = float(now)
        now = self.now
        ended = {s for s, until in self._holds.items() if until <= now}
        if self._seen:
            seen_s = self.hold_seen_s
            ended.update(s for s, t in self._seen.items() if t + seen_s <= now)
        done = sorted(ended)
        for s in done:
            del self._holds[s]
            self._seen.pop(s, None)
            self.held_until[s] = 0.0
            st = int(self.state[s])
            self._refresh(s, st, st)
        return done

    def release(self, space: int) -> bool:
        """End the hold on ``space`` now (the car will not come: its gate cancelled); False
        when it had none. The congestion its assignment added stays and decays as usual."""
        s = int(space)
        if self._holds.pop(s, None) is None:
            return False
        self._seen.pop(s, None)
        self.held_until[s] = 0.0
        st = int(self.state[s])
        self._refresh(s, st, st)
        return True

    def _prune_active(self) -> None:
        """Aisles whose congestion decayed below the floor go back into the two-level min.

        Vectorized and with a margin: an aisle leaves only when its congestion is
        clearly below the floor, so the exact (scalar) score agrees that it is 0.
        """
        if self.now < self._pruned_at + PRUNE_EVERY_S:
            # the active set may hold aisles whose congestion is already below the
            # floor for a while: they are scored exactly (as 0), only more slowly
            return
        self._pruned_at = self.now
        act = self._active_arr
        value = self._cong_v[act] * np.exp2(
            -(self.now - self._cong_t[act]) / self.congestion_halflife_s
        )
        gone = np.flatnonzero(value < CONGESTION_FLOOR * (1 - 1e-9))
        if not len(gone):
            return
        for i in gone.tolist():
            self._set_leaf(int(act[i]), self._parked[i].copy())
        self._active_arr = np.delete(act, gone)
        self._parked = np.delete(self._parked, gone, axis=0)
        self._active = dict(
            zip(self._active_arr.tolist(), range(len(self._active_arr)), strict=True)
        )

    def _activate(self, a: int) -> None:
        """Aisle a became congested: park its minima, take it out of the two-level min."""
        self._active[a] = len(self._active_arr)
        self._active_arr = np.append(self._active_arr, a)
        self._parked = np.concatenate([self._parked, self._leaf[None, :, a, :]])
        self._set_leaf(a, np.full((self._n_c, self._n_e), NONE, dtype=np.int32))

    # -- queries -------------------------------------------------------------------
    def best(self, entrance: int, vehicle_class: int) -> int:
        """Lowest (score, cost, index) candidate for this entrance and class, of its first
        tier that has one (preferred kinds, then no avoided kind, then all); -1 if none."""
        self.settle()
        if self._active:
            self._prune_active()  # may move aisles back into the global minimum
        for c in self._asks[vehicle_class]:
            s = self._best_of(entrance, c)
            if s >= 0:
                return s
        return -1

    def _best_of(self, entrance: int, vehicle_class: int) -> int:
        """best() among all candidates of a class (of the layout's, tiers included)."""
        lo = self.layout
        p = vehicle_class * self._n_e + entrance
        r = int(self._glob[p])
        order = lo.order[entrance]
        cost = lo.cost[entrance]
        best: tuple[float, float, int] | None = None
        if r != NONE:
            s = int(order[r])
            c = float(cost[s])
            best = (c, c, s)
        if not self._active:
            return -1 if best is None else best[2]
        # congested aisles: a score is never below its cost, so only aisles whose
        # best cost is within the best uncongested score can win
        act = self._active_arr
        ranks = self._parked[:, vehicle_class, entrance]
        live = ranks != NONE
        act, ranks = act[live], ranks[live]
        spaces = order[ranks]
        costs = cost[spaces]
        if best is not None:
            near = costs <= best[0]
            act, spaces, costs = act[near], spaces[near], costs[near]
        for a, s, c in zip(act.tolist(), spaces.tolist(), costs.tolist(), strict=True):
            key = (c + self.congestion_m * self.congestion(a), c, s)
            if best is None or key < best:
                best = key
        return -1 if best is None else best[2]

    def best_all(self) -> np.ndarray:
        """int[E, C]: best() of every pair of an entrance and a site class (-1 where none),
        all at once."""
        self.settle()
        if self._active:
            self._prune_active()
        lo = self.layout
        n_e, n_s = self._n_e, self._n_s
        ents = np.arange(n_e)
        # ranks (C, E); NONE clipped to n_s, the column of rank_cost that is inf
        rank = np.minimum(self._glob.reshape(self._n_c, n_e), n_s)
        if self._active:
            # congested aisles, each with its first candidate beside the uncongested
            # minimum, compared as best() does: (score, cost, index) is (score, rank),
            # since ranks follow (cost, index) from each entrance; the same float
            # operations as best(), so the same ties
            act = self._active_arr
            now, half = self.now, self.congestion_halflife_s
            raw = [  # congestion() of each, without a call per aisle: the same expression
                v * 2.0 ** (-(now - t) / half)
                for v, t in zip(self._cong_v[act].tolist(), self._cong_t[act].tolist(), strict=True)
            ]
            cong = np.array([x if x >= CONGESTION_FLOOR else 0.0 for x in raw])
            ranks = np.concatenate([rank[None], np.minimum(self._parked, n_s)])  # (1+A, C, E)
            score = lo.rank_cost[ents, ranks]
            score[1:] += self.congestion_m * cong[:, None, None]
            rank = np.where(score == score.min(axis=0), ranks, n_s).min(axis=0)
        none = rank == n_s
        out = lo.order[ents, np.where(none, 0, rank)].astype(np.int64)
        out[none] = -1
        first = lo.ask_first
        # a tier answers before the class that asks it; tiers come after the class that
        # asks them, so from the last class down each tier is final when its asker reads it
        for c in np.flatnonzero(first >= 0)[::-1].tolist():
            out[c] = np.where(out[first[c]] >= 0, out[first[c]], out[c])
        return out[: lo.public_classes].T.copy()

    def congestion_state(self) -> dict[int, tuple[float, float]]:
        """Lane node of each aisle ever assigned into -> (value, time of last assignment)."""
        return {int(self.layout.aisle_node[a]): vt for a, vt in self._cong.items()}

    def zone_counts(self) -> np.ndarray:
        """int[Z, 4]: spaces per zone by state code (site-closed spaces count as CLOSED)."""
        return self._zone_counts.copy()

    def route(self, entrance: int, space: int) -> list[str]:
        """Lane node ids from the entrance to the space's access node ([] if unreachable)."""
        lo = self.layout
        node = int(lo.space_node[space])
        start = int(lo.entrance_node[entrance])
        if node < 0 or not np.isfinite(lo.cost[entrance, space]):
            return []
        pred = lo.predecessors[entrance]
        path = [node]
        while path[-1] != start:
            prev = int(pred[path[-1]])
            if prev < 0:
                return []
            path.append(prev)
        return [lo.node_ids[n] for n in reversed(path)]

    @property
    def holds(self) -> dict[int, float]:
        """Held spaces -> hold expiry."""
        return dict(self._holds)

    @property
    def seen_since(self) -> dict[int, float]:
        """Held spaces occupied now -> since when (their holds end ``hold_seen_s`` later)."""
        return dict(self._seen)

    def held_spaces(self) -> Iterable[int]:
        """The held spaces (a view, not a copy: do not change holds while iterating)."""
        return self._holds.keys()

    @property
    def has_holds(self) -> bool:
        return bool(self._holds)
