"""Occupancy scenarios: seeded, shaped like a residential day, scaled by speed."""

from __future__ import annotations

import pytest

from firmware_sim.scenario import (
    FixedScenario,
    ResidentialScenario,
    make_scenario,
    parse_hhmm,
    residential_target,
)

SPACES = [f"S-{i:03d}" for i in range(400)]


def run_day(seed: int, speed: float = 600.0) -> dict[int, float]:
    """Occupancy at each simulated hour of one day starting at midnight."""
    sc = ResidentialScenario(SPACES, seed=seed, start_minute=0, speed=speed)
    out = {}
    for hour in range(24):
        sc.step(hour * 3600 / speed)
        out[hour] = sc.occupancy()
    return out


def test_residential_day_shape():
    day = run_day(seed=1)
    night = (day[2] + day[3] + day[4]) / 3
    midday = (day[12] + day[13] + day[14]) / 3
    assert night > 0.8
    assert midday < 0.55
    assert night - midday > 0.3
    assert day[6] > day[10]  # the morning empties the rows
    assert day[22] > day[16]  # the evening fills them


def test_target_curve():
    assert residential_target(3 * 60) > 0.85
    assert residential_target(13 * 60) < 0.45
    assert residential_target(0) == residential_target(24 * 60)


def test_seeded_and_independent_of_step_cadence():
    a = ResidentialScenario(SPACES, seed=7, start_minute=7 * 60, speed=60)
    b = ResidentialScenario(SPACES, seed=7, start_minute=7 * 60, speed=60)
    assert a.initial() == b.initial()
    changes_a = a.step(300.0)
    changes_b = []
    for k in range(1, 3001):  # every 0.1 s instead of once
        changes_b += b.step(k * 0.1)
    assert changes_a == changes_b and changes_a
    c = ResidentialScenario(SPACES, seed=8, start_minute=7 * 60, speed=60)
    assert c.initial() != a.initial() or c.step(300.0) != changes_a


def test_speed_scales_simulated_time():
    fast = ResidentialScenario(SPACES, seed=3, start_minute=8 * 60, speed=60)
    slow = ResidentialScenario(SPACES, seed=3, start_minute=8 * 60, speed=30)
    assert fast.step(100.0) == slow.step(200.0)  # 100 simulated minutes each
    assert fast.minute_of_day() == pytest.approx(8 * 60 + 100)
    assert slow.minute_of_day(100.0) == pytest.approx(8 * 60 + 50)
    with pytest.raises(ValueError, match="speed"):
        ResidentialScenario(SPACES, speed=0)
    for bad in (float("nan"), float("inf"), -60.0):  # the fixed scenario's clock runs too
        with pytest.raises(ValueError, match="speed"):
            make_scenario("none", SPACES, speed=bad)


def test_departures_in_the_morning_arrivals_in_the_evening():
    morning = ResidentialScenario(SPACES, seed=5, start_minute=7 * 60, speed=60)
    changes = morning.step(150 * 60 / 60)  # 07:00-09:30
    leaving = sum(1 for _, occ in changes if not occ)
    assert leaving > 2 * (len(changes) - leaving)
    evening = ResidentialScenario(SPACES, seed=5, start_minute=17 * 60, speed=60)
    changes = evening.step(240 * 60 / 60)  # 17:00-21:00
    arriving = sum(1 for _, occ in changes if occ)
    assert arriving > 2 * (len(changes) - arriving)


def test_override_is_kept():
    sc = ResidentialScenario(SPACES, seed=2, start_minute=12 * 60)
    sc.set("S-000", True)
    assert sc.initial()["S-000"] is True


def test_fixed_scenario_changes_only_by_command():
    sc = make_scenario("none", SPACES, seed=4, initial_occupancy=0.25)
    assert isinstance(sc, FixedScenario)
    frac = sum(sc.initial().values()) / len(SPACES)
    assert 0.15 < frac < 0.35
    assert sc.step(1e6) == []
    assert make_scenario("none", SPACES, seed=4, initial_occupancy=0.25).initial() == sc.initial()
    assert sum(make_scenario("none", SPACES, initial_occupancy=1.0).initial().values()) == 400
    with pytest.raises(ValueError, match="0..1"):
        make_scenario("none", SPACES, initial_occupancy=1.5)
    with pytest.raises(ValueError, match="unknown scenario"):
        make_scenario("rush", SPACES)


@pytest.mark.parametrize(("text", "minute"), [("00:00", 0), ("07:30", 450), ("23:59", 1439)])
def test_parse_hhmm(text, minute):
    assert parse_hhmm(text) == minute


@pytest.mark.parametrize("text", ["24:00", "7", "07:60", "ab:cd", ""])
def test_parse_hhmm_refuses(text):
    with pytest.raises(ValueError, match="HH:MM"):
        parse_hhmm(text)
