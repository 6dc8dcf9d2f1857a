"""Allocation core on the example site: nearest space, eligibility, holds, congestion, routes, counts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gateway.allocation import (
    CLOSED,
    FREE,
    HOLD_SEEN_S,
    OCCUPIED,
    UNKNOWN,
    AllocationCore,
    CoreLayout,
)
from gateway.displays import SignRenderer
from gateway.reference import ReferenceAllocator

NOON = 12 * 60
EVENING = 20 * 60


@pytest.fixture
def layout(example_site):
    return CoreLayout.from_site(example_site)


def all_free(layout: CoreLayout, minute: int = NOON, **kwargs) -> AllocationCore:
    core = AllocationCore(layout, minute, **kwargs)
    core.update_many(np.arange(layout.n_spaces), np.full(layout.n_spaces, FREE), 0.0)
    return core


def ids(layout: CoreLayout, spaces) -> list[str]:
    return [layout.space_ids[s] for s in spaces]


def cls(layout: CoreLayout, name: str) -> int:
    return layout.classes.index(name)


def ent(layout: CoreLayout, name: str) -> int:
    return layout.entrances.index(name)


def test_nearest_free_eligible_space_from_each_gate(example_site, layout):
    core = all_free(layout)
    for e, entrance in enumerate(layout.entrances):
        for c, vc in enumerate(example_site.vehicle_classes):
            eligible = [
                s.index for s in example_site.spaces if example_site.eligible(s, vc.id, NOON)
            ]
            kinds = [set(example_site.spaces[i].kinds) for i in range(len(example_site.spaces))]
            plain = [i for i in eligible if not kinds[i] & set(vc.avoid)]
            preferred = [i for i in plain if kinds[i] & set(vc.prefer)]
            nearest = lambda i, e=e: (layout.cost[e, i], i)  # noqa: E731
            want = min(preferred or plain or eligible, key=nearest) if eligible else -1
            assert core.best(e, c) == want, (entrance, vc.id)


def test_an_ev_that_need_not_charge_leaves_the_charger_to_the_car_that_must(example_site, layout):
    """A rush-hour review: with only charger C-037 and resident bay B-071 free, an EV from
    the east gate was sent to the nearer charger and the next car that must charge got no
    space. The example site now has the EV class prefer resident and shared bays."""
    core = all_free(layout, minute=EVENING)
    free = {"C-037", "B-071"}
    taken = [s.index for s in example_site.spaces if s.id not in free]
    core.update_many(np.array(taken), np.full(len(taken), OCCUPIED), 1.0)
    east = ent(layout, "east")
    ev, charging = cls(layout, "ev"), cls(layout, "charging")
    assert (
        layout.cost[east, example_site.space("C-037").index]
        < (layout.cost[east, example_site.space("B-071").index])
    )  # the charger is the nearer one: what made it the EV's before
    assert ids(layout, [core.assign(east, ev, 2.0, 120.0)]) == ["B-071"]
    assert ids(layout, [core.assign(east, charging, 3.0, 120.0)]) == ["C-037"]
    # with no resident or shared bay free, an EV may still take a charger
    core = all_free(layout, minute=EVENING)
    core.update_many(np.array(taken), np.full(len(taken), OCCUPIED), 1.0)
    core.update_many(np.array([example_site.space("B-071").index]), np.array([OCCUPIED]), 1.5)
    assert ids(layout, [core.assign(east, ev, 2.0, 120.0)]) == ["C-037"]


def test_an_accessible_car_goes_to_an_accessible_bay_however_far(example_site, layout):
    """The site prefers accessible bays for the accessible class: taken by the north
    gate, the next ones are the basement's by the lift, not the resident bay next door;
    with every accessible bay taken, the nearest bay the class may use."""
    core = all_free(layout)
    north, accessible = ent(layout, "north"), cls(layout, "accessible")
    resident = cls(layout, "resident")
    assert ids(layout, [core.assign(north, accessible, 1.0, 120.0) for _ in range(2)]) == [
        "A-001",
        "A-002",
    ]
    nearest_other = core.best(north, resident)
    assert example_site.spaces[nearest_other].zone == "A"  # a resident bay by the gate is free
    got = ids(layout, [core.assign(north, accessible, 2.0, 120.0) for _ in range(2)])
    assert sorted(got) == ["B1-E-001", "B1-E-002"]
    got = core.assign(north, accessible, 3.0, 120.0)
    assert "accessible" not in example_site.spaces[got].kinds
    assert example_site.spaces[got].zone == "A"
    # the preference is the site's: the class's own best, by any kind, is not changed
    assert layout.classes[: layout.public_classes] == tuple(
        c.id for c in example_site.vehicle_classes
    )
    # and what a driver would expect on the plan
    north, east = ent(layout, "north"), ent(layout, "east")
    resident, visitor = cls(layout, "resident"), cls(layout, "visitor")
    assert example_site.spaces[core.best(north, resident)].zone == "A"  # right past the gate
    assert example_site.spaces[core.best(east, visitor)].zone == "C"  # along the main road
    assert example_site.spaces[core.best(north, visitor)].zone == "C"


def test_a_visitor_leaves_the_charger_bays_to_the_cars_that_must_charge(example_site, layout):
    """Zone C's east end: C-036..C-040 are visitor bays with a charger. With the plain bays
    at that end taken, a visitor from the east gate was sent to the nearer charger bay and
    the next car that must charge found none; the site has the visitor class avoid ``ev``."""
    taken = [example_site.space(f"C-0{n}").index for n in range(16, 21)]
    east, visitor, charging = ent(layout, "east"), cls(layout, "visitor"), cls(layout, "charging")
    core = all_free(layout, minute=EVENING)
    core.update_many(np.array(taken), np.full(len(taken), OCCUPIED), 1.0)
    plain = core.assign(east, visitor, 2.0, 120.0)
    assert "ev" not in example_site.spaces[plain].kinds
    assert ids(layout, [core.assign(east, charging, 3.0, 120.0)]) == ["C-040"]
    assert layout.cost[east, example_site.space("C-040").index] < layout.cost[east, plain]
    # the same site without the avoid list: the visitor took the charger bay
    tables = CoreLayout.site_tables(example_site)
    tables["class_avoid"] = []
    before = all_free(CoreLayout.from_arrays(**tables), minute=EVENING)
    before.update_many(np.array(taken), np.full(len(taken), OCCUPIED), 1.0)
    assert ids(layout, [before.assign(east, visitor, 2.0, 120.0)]) == ["C-040"]


def avoid_site(class_avoid=([1], [])) -> CoreLayout:
    """One aisle 10 m from the gate: a visitor bay with a charger 1 m along it (space 0), a
    plain visitor bay 6 m along (1), a charger-only bay 9 m along (2). Classes: visitor
    (kind 0, avoids kind 1 = ev), charging (kind 1). Lines: visitor, charging."""
    return CoreLayout.from_arrays(
        n_nodes=2,
        edges=[(0, 1, 10.0, False)],
        entrance_nodes=[0],
        space_node=[1, 1, 1],
        access_distance=[1.0, 6.0, 9.0],
        space_zone=[0, 0, 0],
        space_kinds=[[0, 1], [0], [1]],
        class_kinds=[[0], [1]],
        class_avoid=class_avoid,
        line_zones=[[0], [0]],
        line_class=[0, 1],
        classes=["visitor", "charging"],
    )


def test_a_class_is_sent_to_a_space_of_an_avoided_kind_only_when_no_other_is_free():
    layout = avoid_site()
    core = all_free(layout, congestion_m=0.0)
    assert core.best(0, 0) == 1  # the plain bay, 5 m farther than the charger bay
    assert core.best(0, 1) == 0  # the charger bay nearest to a car that must charge
    assert core.best_all().tolist() == [[1, 0]]
    # the avoided bay is still one the visitor may use: the signs count it
    assert core.line_free.tolist() == [2, 2]
    # with the plain bay taken, the charger bay is the visitor's
    core.update(1, OCCUPIED, 1.0)
    assert core.best(0, 0) == 0 and core.best_all().tolist() == [[0, 0]]
    assert core.line_free.tolist() == [1, 2]
    # freed again, the plain bay is the visitor's best once more
    core.update(1, FREE, 2.0)
    assert core.best(0, 0) == 1 and core.best_all().tolist() == [[1, 0]]
    # assignments: the plain bay first, then the charger bay, then none
    assert [core.assign(0, 0, 3.0, 60.0) for _ in range(3)] == [1, 0, -1]
    # a hold on the plain bay ends: it is the best again (not the charger bay the visitor
    # got meanwhile, nor the charging class's)
    core.release(1)
    core.release(0)
    assert core.best(0, 0) == 1 and core.best(0, 1) == 0
    # without the avoid list, the nearer charger bay is the visitor's
    assert all_free(avoid_site(class_avoid=()), congestion_m=0.0).best(0, 0) == 0


def test_avoided_spaces_are_asked_after_preferred_ones_and_both_before_the_rest():
    """Tiers: (1) a preferred kind and no avoided kind, (2) no avoided kind, (3) all."""
    tables = dict(
        n_nodes=2,
        edges=[(0, 1, 10.0, False)],
        entrance_nodes=[0],
        space_node=[1, 1, 1, 1],
        access_distance=[1.0, 2.0, 3.0, 4.0],
        space_zone=[0, 0, 0, 0],
        # 0: resident + ev charger, 1: accessible + ev, 2: resident, 3: accessible
        space_kinds=[[0, 2], [1, 2], [0], [1]],
        class_kinds=[[0, 1]],
        class_prefer=[[1]],
        class_avoid=[[2]],
    )
    layout = CoreLayout.from_arrays(**tables)
    assert layout.classes == ("c0", "c0/avoiding", "c0/preferred")
    core = all_free(layout, congestion_m=0.0)
    ref = ReferenceAllocator(**tables, minute_of_day=NOON, congestion_m=0.0)
    for s in range(4):
        ref.update(s, FREE, 0.0)
    got = []
    for t in range(5):
        s = core.assign(0, 0, 1.0 + t, 60.0)
        assert s == ref.assign(0, 0, 1.0 + t, 60.0)
        got.append(s)
    assert got == [3, 2, 0, 1, -1]


def test_costs_follow_the_lane_graph(example_site, layout):
    # north gate GN(100,130) -> N1(100,100): 30 m, then the access distance of A-040
    a040 = example_site.space("A-040")
    assert a040.access == "N1"
    assert layout.cost[ent(layout, "north"), a040.index] == pytest.approx(30 + a040.access_distance)
    # the basement is only reached over the 45 m ramp R1 -> K1
    e001 = example_site.space("B1-E-001")
    via = 30 + 40 + 50 + 45 + math.dist((50, 50), (0, 50))  # GN-N1-R2-R1-K1-K0
    assert e001.access == "K0"
    assert layout.cost[ent(layout, "north"), e001.index] == pytest.approx(
        via + e001.access_distance
    )


def test_route_is_a_valid_lane_path(example_site, layout):
    core = all_free(layout)
    allowed = {}
    for edge in example_site.lane_edges:
        allowed[(edge.a, edge.b)] = edge.length
        if not edge.oneway:
            allowed[(edge.b, edge.a)] = edge.length
    for e, entrance in enumerate(example_site.entrances):
        for space in example_site.spaces:
            route = core.route(e, space.index)
            assert route[0] == entrance.node
            assert route[-1] == space.access
            length = sum(allowed[(a, b)] for a, b in zip(route, route[1:], strict=False))
            assert length + space.access_distance == pytest.approx(layout.cost[e, space.index])


def test_visitor_never_gets_a_resident_space(example_site, layout):
    core = all_free(layout)
    visitor = cls(layout, "visitor")
    got = []
    for i in range(100):
        s = core.assign(i % 2, visitor, float(i), 600.0)
        if s < 0:
            break
        got.append(s)
    visitor_spaces = {s.index for s in example_site.spaces if "visitor" in s.kinds}
    assert set(got) == visitor_spaces  # every visitor bay once, nothing else
    assert len(got) == len(visitor_spaces)
    assert core.assign(0, visitor, 200.0, 600.0) == -1


def test_shared_spaces_only_at_night_for_residents(example_site, layout):
    d_spaces = {s.index for s in example_site.spaces if s.zone == "D"}
    core = AllocationCore(layout, NOON, congestion_m=0.0)
    states = np.full(layout.n_spaces, OCCUPIED)
    states[list(d_spaces)] = FREE
    core.update_many(np.arange(layout.n_spaces), states, 0.0)
    resident, office = cls(layout, "resident"), cls(layout, "office")
    for e in range(layout.n_entrances):
        assert core.best(e, resident) == -1  # only D is free, and D is the office's by day
        assert core.best(e, office) in d_spaces
    assert core.assign(0, resident, 1.0, 60.0) == -1
    assert core.set_minute(EVENING) is True
    for e in range(layout.n_entrances):
        assert core.best(e, resident) in d_spaces
        assert core.best(e, office) == -1
    assert core.set_minute(EVENING + 30) is False  # same eligibility: nothing recomputed
    assert core.assign(0, resident, 2.0, 60.0) in d_spaces


def test_consecutive_arrivals_get_different_spaces(layout):
    core = all_free(layout, congestion_m=0.0)  # holds alone must keep them apart
    north, resident = ent(layout, "north"), cls(layout, "resident")
    first = core.assign(north, resident, 10.0, 120.0)
    second = core.assign(north, resident, 10.0, 120.0)
    assert first >= 0 and second >= 0 and first != second
    assert core.held_until[first] == 130.0
    assert core.best(north, resident) not in (first, second)


def test_last_space_is_not_given_twice(layout):
    core = AllocationCore(layout, NOON)
    core.update(5, FREE, 1.0)  # A-006, a resident bay; everything else unknown
    resident = cls(layout, "resident")
    assert core.assign(0, resident, 2.0, 60.0) == 5
    assert core.assign(1, resident, 2.5, 60.0) == -1


def test_hold_expiry_releases_the_space(layout):
    core = all_free(layout, congestion_m=0.0)
    north, resident = ent(layout, "north"), cls(layout, "resident")
    s = core.assign(north, resident, 100.0, 60.0)
    assert core.best(north, resident) != s
    assert core.expire_holds(159.0) == []
    assert core.best(north, resident) != s
    assert core.expire_holds(160.0) == [s]
    assert core.held_until[s] == 0
    assert core.best(north, resident) == s


def test_car_seen_in_the_held_space_clears_the_hold(layout):
    core = all_free(layout, congestion_m=0.0)
    north, resident = ent(layout, "north"), cls(layout, "resident")
    s = core.assign(north, resident, 100.0, 60.0)
    core.update(s, FREE, 101.0)  # a sensor repeating "free" before the car arrives: still held
    assert s in core.holds
    core.update(s, OCCUPIED, 130.0)
    assert s in core.holds  # seen, not yet confirmed
    assert core.expire_holds(130.0 + HOLD_SEEN_S - 0.5) == []
    assert core.expire_holds(130.0 + HOLD_SEEN_S) == [s]  # occupied for HOLD_SEEN_S
    assert s not in core.holds and core.held_until[s] == 0
    assert core.expire_holds(1000.0) == []
    core.update(s, FREE, 1100.0)  # the car leaves again
    assert core.best(north, resident) == s


def test_held_space_occupied_for_a_moment_keeps_its_hold(layout):
    """Another car manoeuvring over the detector (occupied 2 s, then free): the space is
    still held, and the next car is not sent there."""
    for batch in (False, True):
        core = all_free(layout, congestion_m=0.0, hold_seen_s=10.0)
        north, resident = ent(layout, "north"), cls(layout, "resident")
        s = core.assign(north, resident, 100.0, 60.0)
        for t, state in ((110.0, OCCUPIED), (112.0, FREE)):
            if batch:
                core.update_many([s], [state], t)
            else:
                core.update(s, state, t)
            assert core.expire_holds(t) == []
        assert core.expire_holds(125.0) == []  # 13 s after it first read occupied
        assert s in core.holds and core.best(north, resident) != s
        core.update(s, OCCUPIED, 130.0)  # the car itself
        assert core.expire_holds(139.0) == []
        assert core.expire_holds(140.0) == [s]
        core.update(s, FREE, 150.0)  # it left again: offered again
        assert core.best(north, resident) == s


def test_hold_confirmation_never_outlasts_the_hold(layout):
    core = all_free(layout, congestion_m=0.0)
    north, resident = ent(layout, "north"), cls(layout, "resident")
    s = core.assign(north, resident, 100.0, 60.0)
    core.update(s, OCCUPIED, 155.0)
    assert core.expire_holds(160.0) == [s]  # expired before its car was confirmed


def test_burst_is_spread_over_aisles_sparse_arrivals_stay_near(example_site, layout):
    north, resident = ent(layout, "north"), cls(layout, "resident")
    burst = all_free(layout)
    got = [burst.assign(north, resident, 1000.0, 300.0) for _ in range(10)]
    aisles = {example_site.spaces[s].access for s in got}
    assert len(set(got)) == 10
    assert len(aisles) >= 3, ids(layout, got)
    # without the congestion term the same burst piles into the nearest aisle
    piled = all_free(layout, congestion_m=0.0)
    got0 = [piled.assign(north, resident, 1000.0, 300.0) for _ in range(10)]
    assert len({example_site.spaces[s].access for s in got0}) == 1
    # sparse arrivals (one every 15 minutes, each car parks) always take the nearest
    sparse = all_free(layout)
    nearest = all_free(layout, congestion_m=0.0)
    for i in range(10):
        now = 1000.0 + 900.0 * i
        s = sparse.assign(north, resident, now, 300.0)
        assert s == nearest.best(north, resident)
        sparse.update(s, OCCUPIED, now + 60.0)
        nearest.update(s, OCCUPIED, now + 60.0)
        assert example_site.spaces[s].access == "N1"


def test_display_line_counts_match_a_hand_count(example_site, layout):
    core = AllocationCore(layout, NOON)
    st = {s.id: OCCUPIED for s in example_site.spaces}
    # zone A: A-001..A-010 free (A-001, A-002 are accessible bays), A-011..A-015 unknown
    for i in range(1, 11):
        st[f"A-{i:03d}"] = FREE
    for i in range(11, 16):
        st[f"A-{i:03d}"] = UNKNOWN
    # zone C: C-001..C-004 free visitor bays, C-036 free (ev + visitor), C-040 closed
    for sid in ("C-001", "C-002", "C-003", "C-004", "C-036"):
        st[sid] = FREE
    st["C-040"] = CLOSED
    # basement: E-001 (accessible), E-010, F-001 (ev), F-020 free; F-050 unknown
    for sid in ("B1-E-001", "B1-E-010", "B1-F-001", "B1-F-020"):
        st[sid] = FREE
    st["B1-F-050"] = UNKNOWN
    core.update_many([example_site.space_index[s] for s in st], list(st.values()), 0.0)
    line = {key: i for i, key in enumerate(layout.line_keys)}
    free = lambda d, li: int(core.line_free[line[(d, li)]])  # noqa: E731
    assert free("gate-north", 0) == 8  # A for residents: A-003..A-010
    assert free("gate-north", 1) == 5  # C for visitors: C-001..C-004, C-036
    assert free("gate-north", 2) == 2  # E+F for residents: B1-E-010, B1-F-020
    assert free("b1-ramp", 0) == 1  # E residents: B1-E-010
    assert free("b1-ramp", 2) == 1  # F chargers: B1-F-001 (not the resident B1-F-020)
    assert free("jct-r1", 1) == 0  # D for residents at noon
    # unknown and total over the spaces the line's class may use
    assert int(core.line_unknown[line[("gate-north", 0)]]) == 5
    assert int(core.line_total[line[("gate-north", 0)]]) == 78  # not the 2 accessible bays
    assert int(core.line_total[line[("gate-north", 1)]]) == 39  # C-040 closed
    assert int(core.line_unknown[line[("gate-north", 2)]]) == 1
    assert int(core.line_total[line[("b1-ramp", 2)]]) == 10  # the chargers of zone F
    assert int(core.line_unknown[line[("b1-ramp", 2)]]) == 0
    assert int(core.line_total[line[("jct-r1", 1)]]) == 0  # D is the office's at noon
    zones = {z.id: i for i, z in enumerate(example_site.zones)}
    assert core.zone_counts()[zones["A"]].tolist() == [5, 10, 65, 0]
    assert core.zone_counts()[zones["C"]].tolist() == [0, 5, 34, 1]
    # a held space is not counted; the car parking in it keeps it uncounted
    s = core.assign(ent(layout, "north"), cls(layout, "visitor"), 10.0, 60.0)
    assert example_site.spaces[s].zone == "C"
    assert free("gate-north", 1) == 4
    core.update(s, OCCUPIED, 20.0)
    assert free("gate-north", 1) == 4
    # in the evening residents may use D: its line counts the free D bays
    core.update(example_site.space_index["D-003"], FREE, 30.0)
    assert free("jct-r1", 1) == 0
    core.set_minute(EVENING)
    assert free("jct-r1", 1) == 1


def test_incremental_matches_reference_on_the_example_site(example_site, layout):
    core = AllocationCore(layout, NOON)
    ref = ReferenceAllocator.from_site(example_site, NOON)
    rng = np.random.default_rng(7)
    now = 0.0
    for step in range(400):
        now += float(rng.choice([0.0, 1.0, 30.0]))
        r = rng.random()
        if r < 0.7:
            s, x = int(rng.integers(layout.n_spaces)), int(rng.choice([0, 1, 1, 1, 2, 3]))
            core.update(s, x, now)
            ref.update(s, x, now)
        elif r < 0.9:
            e, c = int(rng.integers(layout.n_entrances)), int(rng.integers(layout.public_classes))
            assert core.assign(e, c, now, 90.0) == ref.assign(e, c, now, 90.0)
        elif r < 0.97:
            assert core.expire_holds(now) == ref.expire_holds(now)
        else:
            m = int(rng.integers(1440))
            core.set_minute(m)
            ref.set_minute(m)
        want = ref.recompute()
        assert core.best_all().tolist() == want["best"], step
        assert core.line_free.tolist() == want["line_free"], step


def test_aisle_whose_order_differs_by_entrance_uses_the_general_path():
    # node 0 is 1.0 m from the aisle node 2, node 3 only 0.25 m: 1.0 + 1e-16 rounds to
    # 1.0 but 0.25 + 1e-16 does not, so the two spaces tie (-> lower index) from one
    # entrance and are ordered by access distance from the other
    tables = dict(
        n_nodes=4,
        edges=[(0, 2, 1.0, False), (3, 2, 0.25, False)],
        entrance_nodes=[0, 3],
        space_node=[2, 2, 2],
        access_distance=[1e-16, 0.0, 5.0],
        space_zone=[0, 0, 0],
        space_kinds=[[0], [0], [0]],
        class_kinds=[[0]],
        line_zones=[[0]],
        line_class=[0],
    )
    layout = CoreLayout.from_arrays(**tables)
    assert not layout.aisle_uniform.all()
    core = AllocationCore(layout, NOON, congestion_m=0.0)
    ref = ReferenceAllocator(**tables, minute_of_day=NOON, congestion_m=0.0)
    core.update_many([0, 1, 2], [FREE, FREE, FREE], 0.0)
    for s in (0, 1, 2):
        ref.update(s, FREE, 0.0)
    assert core.best_all().tolist() == [[0], [1]] == ref.recompute()["best"]
    for s, x in [(0, OCCUPIED), (1, OCCUPIED), (0, FREE), (2, OCCUPIED), (1, FREE), (0, CLOSED)]:
        core.update(s, x, 1.0)
        ref.update(s, x, 1.0)
        want = ref.recompute()
        assert core.best_all().tolist() == want["best"]
        assert core.line_free.tolist() == want["line_free"]


def test_synthetic_layout_is_realistic():
    layout = CoreLayout.synthetic(5000, seed=3)
    assert layout.cost.shape == (16, 5000)
    assert layout.n_classes == 8 and layout.n_lines == 200
    sizes = np.bincount(layout.aisle)
    assert sizes.min() >= 1 and sizes[:-1].min() >= 20 and sizes.max() <= 40
    zone_sizes = np.bincount(layout.zone)
    assert 150 <= np.median(zone_sizes) <= 400
    assert np.isfinite(layout.cost).mean() > 0.95


def test_bad_input_is_refused_without_a_state_change(layout):
    core = all_free(layout)
    before = (core.state.copy(), core.line_free.copy(), core.best_all().copy())
    with pytest.raises(ValueError):
        core.update(3, 7, 1.0)
    with pytest.raises(ValueError):
        core.update_many([1, 2], [FREE, 9], 1.0)
    with pytest.raises(IndexError):
        core.update_many([1, layout.n_spaces], [FREE, FREE], 1.0)
    with pytest.raises(IndexError):
        core.update(-1, FREE, 1.0)
    with pytest.raises(ValueError):
        core.assign(0, 0, 1.0, 0.0)
    np.testing.assert_array_equal(core.state, before[0])
    np.testing.assert_array_equal(core.line_free, before[1])
    np.testing.assert_array_equal(core.best_all(), before[2])


def test_layout_lines_follow_the_site(example_site, layout):
    lines = layout.lines
    assert len(lines) == sum(len(d.lines) for d in example_site.displays)
    display, index, zones, vc = lines[0]
    assert (display, index) == ("gate-north", 0)
    assert [layout.zones[z] for z in np.flatnonzero(zones)] == ["A"]
    assert layout.classes[vc] == "resident"


def test_a_hold_restored_after_a_restart_excludes_the_space(layout):
    core = all_free(layout, congestion_m=0.0)
    north, resident = ent(layout, "north"), cls(layout, "resident")
    s = core.best(north, resident)
    free_before = core.line_free.copy()
    core.hold(s, 500.0, 400.0)
    assert core.best(north, resident) != s
    assert s in core.holds and core.held_until[s] == 500.0
    assert (core.line_free <= free_before).all() and (core.line_free < free_before).any()
    assert core.expire_holds(500.0) == [s]
    assert core.best(north, resident) == s
    np.testing.assert_array_equal(core.line_free, free_before)


def test_a_line_is_blind_when_the_spaces_it_counts_are(example_site, layout):
    """The charger line of the B1 ramp counts F-001..F-010 of zone F's 60 spaces. Chargers
    unknown: `--`, not `满 FULL` (half the zone is known, none of the chargers). The rest of
    the zone unknown, the chargers known: their count."""
    core = AllocationCore(layout, NOON)
    line = {key: i for i, key in enumerate(layout.line_keys)}
    charging = line[("b1-ramp", 2)]
    renderer = SignRenderer(example_site)
    zone_f = [s for s in example_site.spaces if s.zone == "F"]

    def shown(states: dict[str, int]) -> str:
        core.update_many([example_site.space_index[s] for s in states], list(states.values()), 0.0)
        free, unknown, total = (
            int(a[charging]) for a in (core.line_free, core.line_unknown, core.line_total)
        )
        return renderer.line(charging, free, unknown, total).line.text.en

    chargers = {s.id for s in zone_f if "ev" in s.kinds}
    assert len(chargers) == 10
    blind = {s.id: UNKNOWN if s.id in chargers else OCCUPIED for s in zone_f}
    assert shown(blind) == "--"
    seen = {s.id: FREE if s.id in chargers else UNKNOWN for s in zone_f}
    assert shown(seen) == "10"


def test_a_large_batch_moves_a_class_line_when_zone_totals_cancel_out():
    """The gateway's lazy batch path: an unknown charger and a free ordinary space trading
    states (and 64 more changes that cancel out) leave every zone's totals as they were,
    but the charger line's unknown count must still move."""
    n = 200
    tables = dict(
        n_nodes=1,
        edges=[],
        entrance_nodes=[0],
        space_node=[0] * n,
        access_distance=[float(i) for i in range(n)],
        space_zone=[0] * n,
        space_kinds=[[0]] + [[1]] * (n - 1),  # space 0: kind 0 (class 0 only)
        class_kinds=[[0], [1]],
        line_zones=[[0], [0]],
        line_class=[0, 1],
    )
    core = AllocationCore(CoreLayout.from_arrays(**tables), 600)
    core.lazy_minima = True  # as the gateway runs it
    ref = ReferenceAllocator(**tables, minute_of_day=600)
    start = [0] + [1] * 40 + [2] * (n - 41)
    core.update_many(list(range(n)), start, 0.0)
    for s, x in enumerate(start):
        ref.update(s, x, 0.0)
    spaces = [0, 1] + list(range(2, 34)) + list(range(100, 132))
    states = [1, 0] + [2] * 32 + [1] * 32
    assert len(spaces) > core.batch_min and len(spaces) * 2 <= n  # the batch path
    core.update_many(spaces, states, 1.0)
    for s, x in zip(spaces, states, strict=True):
        ref.update(s, x, 1.0)
    want = ref.recompute()
    assert core.line_unknown.tolist() == want["line_unknown"] == [0, 1]
    assert core.line_total.tolist() == want["line_total"]
    assert core.line_free.tolist() == want["line_free"]


def test_a_line_whose_spaces_are_outside_their_hours_reads_closed_not_full(example_site, layout):
    """Zone D (shared office spaces) is the residents' from 19:00 to 08:00: by day its
    residents' line has nothing to count, and a driver reading FULL would think it taken."""
    from gateway.displays import LineLayout, render_lines

    d = next(i for i, disp in enumerate(example_site.displays) if disp.id == "jct-r1")
    lines = LineLayout.from_site(example_site)
    for minute, text in ((NOON, ("关闭", "CLOSED")), (EVENING, None)):
        core = all_free(layout, minute)
        args = (core.line_free, core.line_unknown, core.line_total, core.line_capacity)
        shared = render_lines(example_site, lines, d, *args)[1]
        assert shared.label.en == "Zone D Shared"
        if text is None:  # open to residents: its count, all of zone D free
            assert shared.status == "ok" and shared.count and shared.count > 0
        else:
            assert (shared.status, shared.count, (shared.text.zh, shared.text.en)) == (
                "full",
                0,
                text,
            )
        # the other line of that sign counts basement spaces open at any hour
        assert render_lines(example_site, lines, d, *args)[0].status == "ok"
