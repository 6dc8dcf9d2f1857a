"""The gateway with ``--influx-url``: every journaled change reaches InfluxDB (victoria-metrics)."""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import influx_support
import pytest
from gateway_support import Collector, Edge, running_gateway, site_variant, zone_topic

from gateway.outbox import event_time_ns
from parking import topics

SITE = "xinyuan"

pytestmark = pytest.mark.timeout(90)
victoria = influx_support.victoria


@contextmanager
def gateway_to(victoria, mosquitto, tmp_path) -> Iterator[tuple[Any, Edge, Collector]]:
    """A gateway writing to ``victoria``, with bus-g's edge agent (all free) and a watcher."""
    influx = {"url": victoria.url, "org": "parkguide", "bucket": "parkguide", "token": "t0k3n"}
    watch = Collector(mosquitto.port)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    db = tmp_path / "journal.db"
    try:
        with running_gateway(site_variant(tmp_path), mosquitto.url, db, influx=influx) as gw:
            edge.send({s: "free" for s in gw.site.spaces_of_source("bus-g")}, kind="snapshot")
            watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
            yield gw, edge, watch
    finally:
        watch.stop()
        edge.stop()


def test_journaled_changes_are_written_to_influxdb(mosquitto, victoria, tmp_path):
    db = tmp_path / "journal.db"
    with gateway_to(victoria, mosquitto, tmp_path) as (gw, edge, watch):
        # one at a time: VictoriaMetrics keeps milliseconds, two changes of a space in the
        # same millisecond would share a timestamp there (InfluxDB keeps nanoseconds)
        edge.send({"A-003": "occupied", "A-004": "occupied"})
        watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 2)
        edge.send({"A-003": "free"})
        watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1 and z["free"] == 79)
        deadline = time.monotonic() + 20
        series: dict[str, list[tuple[int, int]]] = {}
        while time.monotonic() < deadline:
            series = {
                item["metric"]["space"]: list(
                    zip(item["timestamps"], [int(v) for v in item["values"]], strict=True)
                )
                for item in victoria.export('space_state_occupied{site="xinyuan"}')
            }
            if len(series.get("A-003", [])) == 3:
                break
            time.sleep(0.3)
        stats = gw.writer.stats()
    with sqlite3.connect(db) as conn:
        events = conn.execute("SELECT ts, space, new FROM events ORDER BY id").fetchall()
    expected: dict[str, list[tuple[int, int]]] = {}
    for ts, space, new in events:
        ms = event_time_ns(ts) // 1_000_000  # VictoriaMetrics keeps milliseconds
        expected.setdefault(space, []).append((ms, int(new == "occupied")))
    # every journaled change, with the event's own time (to the millisecond) and value
    assert (
        series["A-003"]
        == expected["A-003"]
        == [
            (expected["A-003"][0][0], 0),
            (expected["A-003"][1][0], 1),
            (expected["A-003"][2][0], 0),
        ]
    )
    assert series == expected
    assert stats["written"] >= len(events)
    zone_a = victoria.export('zone_occupancy_occupied{site="xinyuan",zone="A"}')
    assert zone_a and 1 in [int(v) for v in zone_a[0]["values"]]


def test_zone_occupancy_goes_to_the_outbox_every_10_s_and_on_change(example_site, tmp_path):
    from gateway import outbox
    from gateway.journal import Journal
    from gateway.live import LiveGateway
    from gateway.service import _OutboxHistory

    mono = [1000.0]
    history = _OutboxHistory(example_site.id, None)
    journal = Journal(tmp_path / "j.db", history)
    outbox.ensure_schema(journal.conn)

    def zone_points() -> int:
        q = "SELECT count(*) FROM outbox WHERE measurement='zone_occupancy'"
        return journal.conn.execute(q).fetchone()[0]

    try:
        gw = LiveGateway(
            example_site, journal, lambda *a: None, history=history, mono=lambda: mono[0]
        )
        gw.tick()  # the first tick writes every zone
        n_zones = len(example_site.zones)
        assert zone_points() == n_zones
        mono[0] += 5
        gw.tick()
        assert zone_points() == n_zones  # not again within 10 s
        gw.control_space("A-001", "close", "wang", None)  # a change: its zone at once
        assert zone_points() == n_zones + 1
        mono[0] += 6
        gw.tick()
        assert zone_points() == 2 * n_zones + 1
    finally:
        journal.close()


def test_a_backlog_handled_as_one_batch_records_every_zone_count_once(example_site, tmp_path):
    """Reports that queued up are journaled and published as one batch: the history still
    gets one zone_occupancy point per count the zone went through (not one copy of the
    final count per report), each at the time its report was taken, in order."""
    from gateway import outbox
    from gateway.journal import Journal
    from gateway.live import LiveGateway
    from gateway.service import _OutboxHistory

    clock = [1_800_000_000.0]
    history = _OutboxHistory(example_site.id, None)
    journal = Journal(tmp_path / "j.db", history)
    outbox.ensure_schema(journal.conn)
    try:

        def taken() -> float:
            clock[0] += 0.01  # each report is taken a little later than the one before
            return clock[0]

        gw = LiveGateway(example_site, journal, lambda *a: None, history=history, clock=taken)
        spaces = example_site.spaces_of_source("bus-g")

        def report(seq, states, kind="delta"):
            body = {
                "agent": "serial-bus-g",
                "source": "bus-g",
                "boot": "b",
                "seq": seq,
                "ts": clock[0],
            }
            body["kind"] = kind
            t = clock[0]
            body["spaces"] = [{"space": s, "state": v, "since": t} for s, v in states.items()]
            return (topics.edge_occupancy(SITE, "serial-bus-g"), json.dumps(body).encode(), 0.0)

        gw.handle_batch([report(1, dict.fromkeys(spaces, "free"), "snapshot")])
        backlog = [report(2 + i, {f"A-00{3 + i}": "occupied"}) for i in range(3)]
        backlog.append(report(5, {"A-003": "free", "A-004": "free"}))
        backlog.append(report(6, {"B-001": "occupied", "B-002": "free"}))  # zone A unchanged
        gw.handle_batch(backlog)
        gw.flush_checkpoint()
        events = [
            ts for (ts,) in journal.conn.execute("SELECT ts FROM events WHERE seq >= 2 ORDER BY id")
        ]
        assert events == sorted(events) and len(set(events)) == 5  # report 5: two, one time
        zone_a = [
            (int(line.split("occupied=")[1].split("i")[0]), ts)
            for line, ts in journal.conn.execute(
                "SELECT line, ts_ns FROM outbox WHERE measurement = 'zone_occupancy'"
                " AND line LIKE '%zone=A %' ORDER BY id"
            )
        ]
        assert [n for n, _ in zone_a] == [0, 1, 2, 3, 1]
        assert [t for _, t in zone_a] == sorted(t for _, t in zone_a)
        assert len({t for _, t in zone_a}) == 5
    finally:
        journal.close()


def test_a_clean_stop_writes_the_last_changes_to_influxdb(mosquitto, victoria, tmp_path):
    """The last checkpoint (where the newest points enter the outbox) is written before the
    writer's final drain, so they reach InfluxDB now, not at some next start."""
    db = tmp_path / "journal.db"
    with gateway_to(victoria, mosquitto, tmp_path) as (_, edge, watch):
        edge.send({"A-007": "occupied"})
        watch.wait_for(zone_topic("A"), lambda z: z["occupied"] == 1)
    # stopped at once: the change was journaled, its point not yet in the outbox
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM outbox").fetchone()[0] == 0
    values: list[int] = []
    deadline = time.monotonic() + 10  # VictoriaMetrics makes new points readable in a moment
    while len(values) < 2 and time.monotonic() < deadline:
        found = victoria.export('space_state_occupied{site="xinyuan",space="A-007"}')
        values = [int(v) for v in found[0]["values"]] if found else []
        time.sleep(0.2)
    assert values == [0, 1]


def test_a_stop_says_the_points_the_outbox_cap_dropped_since_its_last_line(
    mosquitto, tmp_path, caplog
):
    """InfluxDB unreachable and a small cap: the drops of the last minute are said when the
    gateway stops, not lost with the process (the log says every point dropped)."""
    import logging
    import re

    from parkguide.ports import free_port

    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    influx = {
        "url": f"http://127.0.0.1:{free_port()}",  # nobody listens: every write fails
        "org": "parkguide",
        "bucket": "parkguide",
        "token": "t0k3n",
    }
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    watch = Collector(mosquitto.port)
    db = tmp_path / "journal.db"
    try:
        with running_gateway(
            site_variant(tmp_path), mosquitto.url, db, influx=influx, outbox_max_rows=20
        ) as gw:
            spaces = gw.site.spaces_of_source("bus-g")
            edge.send({s: "free" for s in spaces}, kind="snapshot")
            watch.wait_for(zone_topic("A"), lambda z: z["free"] == 80)
            for i in range(3):  # checkpoints between them: the first line, then drops unsaid
                edge.send({s: "occupied" if i % 2 == 0 else "free" for s in spaces[:30]})
                watch.wait_for(
                    zone_topic("A"), lambda z, i=i: z["occupied"] == (30 if i % 2 == 0 else 0)
                )
                time.sleep(0.7)
    finally:
        watch.stop()
        edge.stop()
    with sqlite3.connect(db) as conn:
        dropped = conn.execute(
            "SELECT value FROM outbox_stats WHERE key = 'dropped_cap'"
        ).fetchone()[0]
    said = sum(
        int(m.group(1))
        for r in caplog.records
        if (m := re.search(r"outbox full: dropped (\d+) oldest", r.getMessage()))
    )
    assert int(dropped) > 0
    assert said == int(dropped)
