"""A residential day of vehicle movements for one site (pure, seeded).

Residents leave in the morning and come back in the evening, some run errands
at midday, a few come home from night shifts; visitors come mostly in the
afternoon and evening; the office next door fills its shared bays on working
days. The result is a list of ``Visit``s: a car that is parked at the start
(``arrive_s is None``) or arrives at a gate, and leaves at ``depart_s`` (or
stays). Times are seconds since the simulation start (``start_minute``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from parking.site import Site

DAY_S = 24 * 3600


@dataclass(frozen=True)
class Visit:
    id: int
    vehicle_class: str
    gate: str
    arrive_s: float | None
    depart_s: float | None
    home_zone: str | None
    """where the driver heads for when nobody guides them"""


@dataclass(frozen=True)
class TrafficMix:
    """How many cars of each kind a day has, relative to the site."""

    resident_fill: float = 0.985
    """resident cars per space residents may use at night"""
    commuter_share: float = 0.55
    errand_share: float = 0.25
    night_shift_share: float = 0.05
    ev_share: float = 0.05
    accessible_share: float = 0.02
    visitors_per_100_spaces: float = 32.0
    office_cars_per_shared_space: float = 1.07


# relative visitor arrival rate by hour of day
_VISITOR_PROFILE = {
    7: 0.3,
    8: 0.3,
    9: 1.0,
    10: 1.0,
    11: 1.0,
    12: 1.2,
    13: 1.2,
    14: 2.0,
    15: 2.0,
    16: 2.0,
    17: 1.2,
    18: 1.2,
    19: 1.5,
    20: 1.5,
    21: 0.4,
    22: 0.4,
}


def _clock(
    rng: random.Random, mean_min: float, sd_min: float, lo_min: float, hi_min: float
) -> float:
    return min(hi_min, max(lo_min, rng.gauss(mean_min, sd_min)))


def plan_day(
    site: Site, seed: int, start_minute: int = 7 * 60, mix: TrafficMix | None = None
) -> list[Visit]:
    """Every car movement of one day starting at ``start_minute`` (local time)."""
    mix = mix or TrafficMix()
    rng = random.Random(seed)
    kinds_of_zone: dict[str, set[str]] = {}
    zone_size: dict[str, int] = {}
    for s in site.spaces:
        kinds_of_zone.setdefault(s.zone, set()).update(s.kinds)
        zone_size[s.zone] = zone_size.get(s.zone, 0) + 1
    resident_kinds = next(
        (set(v.kinds) for v in site.vehicle_classes if v.id == "resident"), {"resident"}
    )
    night = (start_minute + 14 * 60) % 1440  # a time when night policies apply (e.g. 21:00)
    res_capacity = (
        sum(1 for s in site.spaces if site.eligible(s, "resident", night))
        if "resident" in {v.id for v in site.vehicle_classes}
        else 0
    )
    home_zones = [z for z, k in kinds_of_zone.items() if k & resident_kinds - {"shared"}]
    home_weights = [zone_size[z] for z in home_zones]
    ev_zones = [z for z, k in kinds_of_zone.items() if "ev" in k and z in home_zones] or home_zones
    gates = [e.id for e in site.entrances]

    def at(minute: float) -> float:
        """Seconds since the start for a local clock minute later today (or after midnight)."""
        return ((minute - start_minute) % 1440) * 60.0

    visits: list[Visit] = []

    def add(
        cls: str, gate: str, arrive: float | None, depart: float | None, zone: str | None
    ) -> None:
        visits.append(Visit(len(visits), cls, gate, arrive, depart, zone))

    classes = {v.id for v in site.vehicle_classes}
    n_res = int(round(mix.resident_fill * res_capacity))
    for _ in range(n_res):
        u = rng.random()
        cls = "resident"
        if u < mix.ev_share and "ev" in classes:
            cls = "ev"
        elif u < mix.ev_share + mix.accessible_share and "accessible" in classes:
            cls = "accessible"
        zone = rng.choice(ev_zones) if cls == "ev" else rng.choices(home_zones, home_weights)[0]
        gate = rng.choice(gates)
        r = rng.random()
        if r < mix.commuter_share:
            leave = at(_clock(rng, 8 * 60, 50, 6 * 60 + 30, 11 * 60))
            back = at(_clock(rng, 18 * 60 + 45, 75, 16 * 60, 23 * 60 + 30))
            add(cls, gate, None, leave, zone)
            add(cls, gate, back, None, zone)
        elif r < mix.commuter_share + mix.errand_share:
            leave = at(rng.uniform(9 * 60, 16 * 60))
            back = leave + rng.uniform(3600, 4 * 3600)
            add(cls, gate, None, leave, zone)
            add(cls, gate, back, None, zone)
        elif r < mix.commuter_share + mix.errand_share + mix.night_shift_share:
            add(cls, gate, at(rng.uniform(7 * 60, 9 * 60 + 30)), None, zone)
        else:
            add(cls, gate, None, None, zone)

    visitor_zone = next((z for z, k in kinds_of_zone.items() if "visitor" in k), None)
    total_rate = sum(_VISITOR_PROFILE.values())
    n_visitors = int(round(mix.visitors_per_100_spaces * len(site.spaces) / 100))
    hours, weights = list(_VISITOR_PROFILE), list(_VISITOR_PROFILE.values())
    for _ in range(n_visitors if "visitor" in classes else 0):
        hour = rng.choices(hours, weights)[0]
        arrive = at(hour * 60 + rng.uniform(0, 60))
        stay = min(5 * 3600, max(900, rng.lognormvariate(math.log(5400), 0.6)))
        cls = "accessible" if rng.random() < 0.05 and "accessible" in classes else "visitor"
        gate = gates[-1] if rng.random() < 0.65 else gates[0]
        add(cls, gate, arrive, arrive + stay, visitor_zone)
    del total_rate

    if "office" in classes:
        shared = sum(1 for s in site.spaces if "shared" in s.kinds)
        office_zone = next((z for z, k in kinds_of_zone.items() if "shared" in k), None)
        for _ in range(int(round(mix.office_cars_per_shared_space * shared))):
            arrive = at(_clock(rng, 8 * 60 + 45, 20, 8 * 60, 10 * 60))
            depart = at(_clock(rng, 18 * 60, 30, 17 * 60, 18 * 60 + 59))
            add("office", gates[-1], arrive, depart, office_zone)
    return visits
