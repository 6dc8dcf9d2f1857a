"""The wire contract's two directions: what is sent to the gateway refuses unknown keys (a
typo is an error), what the gateway publishes is read with unknown keys ignored (a later
gateway may add one within v1 without blanking this release's readers)."""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from parking.payloads import (
    Arrival,
    Assignment,
    DisplayContent,
    HealthReport,
    OccupancyReport,
    SpaceControl,
    ZoneCounts,
    went_offline,
)

LINE = {"label": {"zh": "A区", "en": "Zone A"}, "arrow": "left", "count": 3, "status": "ok",
        "text": {"zh": "3", "en": "3"}}  # fmt: skip
ZONE = {"zone": "A", "free": 1, "occupied": 2, "unknown": 0, "closed": 0, "total": 3, "ts": 1.0}
CONTENT = {"display": "gate-north", "lines": [LINE], "ts": 1.0, "expires": 2.0}
ANSWER = {"entrance": "north", "class": "resident", "space": "A-001", "zone": "A",
          "hint": {"zh": "去", "en": "Go"}, "hold_expires": 9.0, "ts": 1.0}  # fmt: skip
REPORT = {"agent": "serial-bus-g", "source": "bus-g", "boot": "b1", "seq": 0, "ts": 1.0,
          "kind": "delta", "spaces": []}  # fmt: skip
HEALTH = {"agent": "serial-bus-g", "source": "bus-g", "ts": 1.0, "status": "ok"}
PUBLISHED = [(ZoneCounts, ZONE), (DisplayContent, CONTENT), (Assignment, ANSWER)]
SENT_TO_THE_GATEWAY = [
    (OccupancyReport, REPORT),
    (HealthReport, HEALTH),
    (Arrival, {"class": "resident"}),
    (SpaceControl, {"action": "close", "by": "li", "ts": 1.0}),
]


def _nested_keys_added(body: dict) -> dict:
    """``body`` with a key no release knows at the top and in every object inside it."""

    def add(x):
        if isinstance(x, dict):
            return {**{k: add(v) for k, v in x.items()}, "from_a_later_release": [1, "x"]}
        if isinstance(x, list):
            return [add(v) for v in x]
        return x

    return add(body)


@pytest.mark.parametrize(("model", "body"), PUBLISHED, ids=lambda x: getattr(x, "__name__", ""))
def test_what_the_gateway_publishes_is_read_with_later_keys_ignored(model, body):
    plain = model.model_validate_json(json.dumps(body), strict=True)
    later = model.model_validate_json(json.dumps(_nested_keys_added(body)), strict=True)
    assert later == plain
    assert "from_a_later_release" not in plain.model_dump_json()


@pytest.mark.parametrize(("model", "body"), PUBLISHED, ids=lambda x: getattr(x, "__name__", ""))
def test_what_the_gateway_publishes_still_refuses_wrong_types(model, body):
    """Ignoring a new key is not ignoring a known one gone wrong."""
    key = next(k for k, v in body.items() if isinstance(v, float))
    with pytest.raises(ValidationError):
        model.model_validate_json(json.dumps({**body, key: str(body[key])}), strict=True)


@pytest.mark.parametrize(
    ("model", "body"), SENT_TO_THE_GATEWAY, ids=lambda x: getattr(x, "__name__", "")
)
def test_what_is_sent_to_the_gateway_refuses_unknown_keys(model, body):
    model.model_validate_json(json.dumps(body), strict=True)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        model.model_validate_json(json.dumps({**body, "sapces": []}), strict=True)


def test_a_stopped_cameras_health_has_a_frame_rate_of_zero_a_bus_agents_none():
    """wire-contracts: the offline health's ``fps`` is 0. A camera stopped before its
    rate could be measured (a one-frame file) left ``null`` retained."""
    camera = HealthReport(
        agent="cam", source="cam-c", ts=1.0, fps=None, counters={"stream_up": 1, "frames": 1}
    )
    assert went_offline(camera).fps == 0.0
    assert went_offline(camera.model_copy(update={"fps": 9.5})).fps == 0.0
    bus = HealthReport(agent="bus", source="bus-g", ts=1.0, counters={"port_up": 1})
    assert went_offline(bus).fps is None
