"""Occupancy scenarios: which spaces have a vehicle on them, as simulated time goes by.

Pure and seeded, shared by the bus simulator and the camera simulator so both
drive their spaces the same way. A scenario knows nothing about detectors or
pixels; it answers "is there a car on this space" and reports changes::

    sc = ResidentialScenario(["A-001", "A-002"], seed=7, start_minute=7 * 60, speed=60)
    state = sc.initial()                # {space: occupied}
    for space, occupied in sc.step(elapsed_s):   # real seconds since the start
        ...
    sc.set("A-001", True)               # a console `set` overrides the scenario

Simulated time advances ``speed`` times as fast as real time. The residential
scenario advances in fixed simulated ticks, so for one seed and speed the
sequence of changes does not depend on how often ``step`` is called.
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
from collections.abc import Iterable, Sequence
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np

MINUTES_PER_DAY = 24 * 60

# (minute of day, target occupancy): a residential community's day.
# Full at night, cars leave 07:00-09:30, low at midday, back 17:00-21:00.
RESIDENTIAL_CURVE: tuple[tuple[int, float], ...] = (
    (0, 0.92),
    (6 * 60 + 30, 0.90),
    (7 * 60, 0.86),
    (9 * 60 + 30, 0.42),
    (12 * 60, 0.38),
    (17 * 60, 0.45),
    (21 * 60, 0.88),
    (MINUTES_PER_DAY, 0.92),
)
# Random comings and goings per space per simulated minute, on top of the day's trend:
# a visitor, a parent on the school run, a car moved to the other row.
BACKGROUND_TURNOVER_PER_MIN = 1 / 240
TRACKING_PER_MIN = 1 / 30  # how fast a drift from the curve is corrected
TICK_S = 10.0  # simulated seconds per tick at low speeds
MAX_TICKS_PER_REAL_S = 10  # at high speeds a tick grows so the work per real second stays bounded

SCENARIOS = ("residential", "none")


def parse_hhmm(text: str) -> int:
    """'07:30' -> 450 (minute of day); ValueError with a clear message otherwise."""
    try:
        hh, mm = text.split(":")
        h, m = int(hh), int(mm)
    except ValueError:
        raise ValueError(f"time must be HH:MM, not {text!r}") from None
    if not (0 <= h < 24 and 0 <= m < 60):
        raise ValueError(f"time must be HH:MM within a day, not {text!r}")
    return h * 60 + m


def residential_target(minute: float) -> float:
    """Target occupancy (0..1) at a minute of the day, linear between the curve's points."""
    minute %= MINUTES_PER_DAY
    for (m0, p0), (m1, p1) in zip(RESIDENTIAL_CURVE, RESIDENTIAL_CURVE[1:], strict=False):
        if m0 <= minute <= m1:
            return p0 + (p1 - p0) * (minute - m0) / (m1 - m0)
    return RESIDENTIAL_CURVE[-1][1]


class Scenario:
    """Vehicle presence per space; the base class never changes anything by itself."""

    def __init__(self, space_ids: Sequence[str], seed: int = 0, speed: float = 1.0):
        if speed <= 0 or not math.isfinite(speed):
            raise ValueError(f"speed must be a positive number, not {speed}")
        self.space_ids = list(space_ids)
        self.index = {s: i for i, s in enumerate(self.space_ids)}
        self.speed = speed
        self.rng = np.random.default_rng(seed)
        self.occupied = np.zeros(len(self.space_ids), dtype=bool)

    def initial(self) -> dict[str, bool]:
        """Presence at the start, per space."""
        return {s: bool(self.occupied[i]) for i, s in enumerate(self.space_ids)}

    def step(self, elapsed_s: float) -> list[tuple[str, bool]]:
        """Changes up to ``elapsed_s`` real seconds after the start, in order."""
        return []

    def set(self, space: str, occupied: bool) -> None:
        """A console override: the scenario goes on from the new state."""
        self.occupied[self.index[space]] = occupied

    def occupancy(self) -> float:
        return float(self.occupied.mean()) if len(self.occupied) else 0.0


class FixedScenario(Scenario):
    """A seeded initial occupancy that changes only by command (commissioning, tests)."""

    def __init__(
        self,
        space_ids: Sequence[str],
        seed: int = 0,
        initial_occupancy: float = 0.5,
        speed: float = 1.0,
    ):
        super().__init__(space_ids, seed, speed)  # the clock runs on: its speed is checked too
        if not 0.0 <= initial_occupancy <= 1.0:
            raise ValueError(f"initial occupancy must be 0..1, not {initial_occupancy}")
        self.occupied = self.rng.random(len(self.space_ids)) < initial_occupancy


class ResidentialScenario(Scenario):
    """A residential day: spaces follow the day's occupancy curve, with random turnover.

    Per tick the expected net flow is the curve's change plus a pull back
    towards the curve (``TRACKING_PER_MIN``); it is spread over the free spaces
    (arrivals) or the occupied ones (departures), and every space also turns
    over at random (``BACKGROUND_TURNOVER_PER_MIN``) in proportion to the
    target, so the day has its rush hours and still never stands still.
    """

    def __init__(
        self,
        space_ids: Sequence[str],
        seed: int = 0,
        start_minute: float = 0.0,
        speed: float = 1.0,
    ):
        super().__init__(space_ids, seed, speed)
        self.start_minute = start_minute % MINUTES_PER_DAY
        self.tick_s = max(TICK_S, speed / MAX_TICKS_PER_REAL_S)
        self.sim_s = 0.0  # simulated seconds processed so far
        self.occupied = self.rng.random(len(self.space_ids)) < residential_target(start_minute)

    def minute_of_day(self, elapsed_s: float | None = None) -> float:
        """Simulated minute of day after ``elapsed_s`` real seconds (default: as far as stepped)."""
        sim_s = self.sim_s if elapsed_s is None else elapsed_s * self.speed
        return (self.start_minute + sim_s / 60.0) % MINUTES_PER_DAY

    def step(self, elapsed_s: float) -> list[tuple[str, bool]]:
        changes: list[tuple[str, bool]] = []
        target_s = elapsed_s * self.speed
        while self.sim_s + self.tick_s <= target_s:
            minute = self.minute_of_day() + self.tick_s / 120.0  # the tick's midpoint
            changes.extend(self._tick(minute, self.tick_s / 60.0))
            self.sim_s += self.tick_s
        return changes

    def _tick(self, minute: float, dt_min: float) -> Iterable[tuple[str, bool]]:
        p = residential_target(minute)
        trend = residential_target(minute + dt_min / 2) - residential_target(minute - dt_min / 2)
        x = self.occupancy()
        flow = trend + TRACKING_PER_MIN * dt_min * (p - x)
        background = 1.0 - math.exp(-BACKGROUND_TURNOVER_PER_MIN * dt_min)
        p_arrive = background * p + (flow / max(1.0 - x, 1e-3) if flow > 0 else 0.0)
        p_leave = background * (1.0 - p) + (-flow / max(x, 1e-3) if flow < 0 else 0.0)
        draw = self.rng.random(len(self.occupied))
        flip = np.where(self.occupied, draw < p_leave, draw < p_arrive)
        self.occupied ^= flip
        return [(self.space_ids[i], bool(self.occupied[i])) for i in np.flatnonzero(flip)]


def make_scenario(
    name: str,
    space_ids: Sequence[str],
    *,
    seed: int = 0,
    start_minute: float = 0.0,
    speed: float = 1.0,
    initial_occupancy: float = 0.5,
) -> Scenario:
    """The scenario named on a command line (``residential`` or ``none``)."""
    if name == "residential":
        return ResidentialScenario(space_ids, seed, start_minute, speed)
    if name == "none":
        return FixedScenario(space_ids, seed, initial_occupancy, speed)
    raise ValueError(f"unknown scenario {name!r} (choose from {', '.join(SCENARIOS)})")


def add_scenario_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every simulator driven by a scenario shares (bus, camera)."""
    parser.add_argument(
        "--scenario",
        choices=SCENARIOS,
        default="residential",
        help="residential: cars come and go over a residential day; none: only commands change them",
    )
    parser.add_argument(
        "--speed", type=float, default=1.0, help="simulated seconds per real second (default 1)"
    )
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--start",
        default=None,
        metavar="HH:MM",
        help="simulated time of day at the start (default: now at the site)",
    )
    parser.add_argument(
        "--initial-occupancy",
        type=float,
        default=0.5,
        help="fraction of spaces occupied at the start with --scenario none (default 0.5)",
    )


def start_minute(start: str | None, timezone: str) -> int:
    """--start HH:MM, or the site's local time now."""
    if start is not None:
        return parse_hhmm(start)
    try:
        now = dt.datetime.now(ZoneInfo(timezone))
    except ZoneInfoNotFoundError:
        now = dt.datetime.now()
    return now.hour * 60 + now.minute
