"""Holds survive a gateway restart: a car sent to a space before the restart keeps it."""

from __future__ import annotations

import json

from gateway.journal import Journal
from gateway.live import LiveGateway
from parking import topics

SITE = "xinyuan"


def _snapshot_all_free(gw: LiveGateway, site, now: float) -> None:
    for n, bus in enumerate(site.buses, start=1):
        spaces = site.spaces_of_source(bus.id)
        report = {
            "agent": f"a{n}",
            "source": bus.id,
            "boot": "b",
            "seq": 1,
            "ts": now,
            "kind": "snapshot",
            "spaces": [{"space": s, "state": "free", "since": now} for s in spaces],
        }
        gw.handle(topics.edge_occupancy(SITE, f"a{n}"), json.dumps(report).encode())


def test_open_holds_are_restored_after_a_restart(example_site, tmp_path):
    clock = [1_800_000_000.0]
    sent: list[tuple[str, bytes]] = []

    def publish(topic, payload, qos, retain):
        sent.append((topic, payload))

    db = tmp_path / "journal.sqlite"
    journal = Journal(db)
    gw = LiveGateway(example_site, journal, publish, hold_s=300, clock=lambda: clock[0])
    gw.publish_all()
    _snapshot_all_free(gw, example_site, clock[0])
    gw.handle(
        topics.arrival(SITE, "north"),
        json.dumps({"class": "resident", "request_id": "r1"}).encode(),
    )
    first = json.loads(next(p for t, p in sent if t.endswith("/assignment")))["space"]
    assert first is not None
    journal.close()

    clock[0] += 5  # restart 5 s later (within the buses' TTL), the car is still driving
    journal = Journal(db)
    gw2 = LiveGateway(example_site, journal, publish, hold_s=300, clock=lambda: clock[0])
    assert gw2.core.holds.get(example_site.space_index[first]) == 1_800_000_000.0 + 300
    sent.clear()
    gw2.publish_all()
    gw2.handle(
        topics.arrival(SITE, "north"),
        json.dumps({"class": "resident", "request_id": "r2"}).encode(),
    )
    second = json.loads(next(p for t, p in sent if t.endswith("/assignment")))["space"]
    assert second not in (None, first)  # the next car is not sent to the held space
    clock[0] += 300  # the hold expires: the space is offered again
    gw2.tick()
    assert example_site.space_index[first] not in gw2.core.holds
    journal.close()
