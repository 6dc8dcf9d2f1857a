"""The InfluxDB outbox and writer against a real VictoriaMetrics and an HTTP fault injector.

VictoriaMetrics is the real InfluxDB v2 write endpoint (points are read back through its
export API and compared with the outbox rows); the fault injector answers the codes
VictoriaMetrics never gives (401, 413, 429, 503, 400).
"""

from __future__ import annotations

import email.utils
import logging
import re
import sqlite3
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import influx_support
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from influx_support import Answer, Request, VictoriaMetrics, wait_for
from influxdb_client import Point, WritePrecision

from gateway import outbox
from gateway.influx import InfluxWriter, parse_retry_after
from parking.states import SpaceState

pytestmark = pytest.mark.timeout(60)

# the fixtures live in influx_support; naming them here makes pytest find them
victoria = influx_support.victoria
fault_injector = influx_support.fault_injector

SITE = "xinyuan"
TOKEN = "s3cret-token-0123456789"
# Writer settings for tests: short waits, small batches so several batches are in flight.
FAST = dict(
    batch_size=7,
    flush_interval_s=0.05,
    initial_backoff_s=0.05,
    max_backoff_s=0.3,
    request_timeout_s=5.0,
    drain_timeout_s=2.0,
)


# -- helpers ----------------------------------------------------------------------------


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[str, sqlite3.Connection]]:
    """A journal-like database in WAL mode with the outbox tables, and the gateway's connection."""
    path = str(tmp_path / "journal.sqlite")
    conn = sqlite3.connect(path)
    conn.execute("PRAGMA journal_mode=WAL")
    outbox.ensure_schema(conn)
    conn.commit()
    yield path, conn
    conn.close()


@pytest.fixture
def writers() -> Iterator[list[InfluxWriter]]:
    """Writers started by a test; stopped at teardown even if the test failed."""
    started: list[InfluxWriter] = []
    yield started
    for writer in started:
        writer.stop()


def start_writer(writers: list[InfluxWriter], path: str, url: str, **overrides) -> InfluxWriter:
    kwargs = {**FAST, **overrides}
    token = kwargs.pop("token", TOKEN)
    writer = InfluxWriter(path, url, "community", "parkguide", token, **kwargs)
    writer.start()
    writers.append(writer)
    return writer


def append_changes(
    conn: sqlite3.Connection, events: list[tuple[str, str, SpaceState, float]]
) -> None:
    """Journal-style: each change in its own committed transaction."""
    for zone, space, state, ts in events:
        with conn:
            outbox.append_space_state(conn, SITE, zone, space, state, ts)


def changes(
    count: int, start: float, step: float = 1.237
) -> list[tuple[str, str, SpaceState, float]]:
    """Alternating occupied/free changes over five spaces, with millisecond-exact times."""
    spaces = [
        ("A", "A-001"),
        ("A", "A-002"),
        ("B1", "B1-A-017"),
        ("B1", "B1-A-018"),
        ("A", "A-003"),
    ]
    events = []
    for i in range(count):
        zone, space = spaces[i % len(spaces)]
        state = SpaceState.OCCUPIED if (i // len(spaces)) % 2 == 0 else SpaceState.FREE
        events.append((zone, space, state, round(start + i * step, 3)))
    return events


def outbox_rows(conn: sqlite3.Connection) -> list[tuple[str, int]]:
    return conn.execute("SELECT line, ts_ns FROM outbox ORDER BY id").fetchall()


def expected_series(rows: list[tuple[str, int]]) -> dict[str, list[tuple[int, int]]]:
    """space -> [(ms, occupied)] from outbox rows, as VictoriaMetrics must hold them."""
    series: dict[str, list[tuple[int, int]]] = {}
    for line, ts_ns in rows:
        space = re.search(r",space=([^, ]+)", line).group(1)
        occupied = int(re.search(r"\boccupied=(\d+)i", line).group(1))
        series.setdefault(space, []).append((ts_ns // 1_000_000, occupied))
    return series


def exported_series(vm: VictoriaMetrics) -> dict[str, list[tuple[int, int]]]:
    series: dict[str, list[tuple[int, int]]] = {}
    for item in vm.export(f'space_state_occupied{{site="{SITE}"}}'):
        pairs = list(zip(item["timestamps"], item["values"], strict=True))
        series[item["metric"]["space"]] = [(int(t), int(v)) for t, v in pairs]
    return series


# -- pure parts: line protocol, event time, Retry-After --------------------------------


def test_space_state_line_escapes_tags_and_keeps_event_time():
    line = outbox.space_state_line("old town, east", "B1 A", "B1=17", SpaceState.OCCUPIED, 12.345)
    assert line == (
        r"space_state,site=old\ town\,\ east,space=B1\=17,zone=B1\ A "
        r'occupied=1i,state="occupied" 12345000000'
    )
    assert outbox.space_state_line("s", "z", "x", "free", 1.0).endswith(
        'occupied=0i,state="free" 1000000000'
    )


names = st.text(min_size=1, max_size=12)


@settings(max_examples=200, deadline=None)
@given(names, names, names, st.sampled_from(list(SpaceState)), st.integers(0, 4_000_000_000_000))
def test_space_state_line_is_points_own_line(site, zone, space, state, ts_ms):
    """The cached escaping gives exactly the line influxdb-client's Point gives."""
    ts = ts_ms / 1000
    point = (
        Point("space_state")
        .tag("site", site)
        .tag("zone", zone)
        .tag("space", space)
        .field("state", state.label)
        .field("occupied", int(state == SpaceState.OCCUPIED))
        .time(outbox.event_time_ns(ts), WritePrecision.NS)
    )
    assert outbox.space_state_line(site, zone, space, state, ts) == point.to_line_protocol()


@settings(max_examples=200, deadline=None)
@given(names, names, st.lists(st.integers(0, 100_000), min_size=5, max_size=5))
def test_zone_occupancy_line_is_points_own_line(site, zone, values):
    counts = dict(zip(outbox.ZONE_COUNT_FIELDS, values, strict=True))
    point = Point("zone_occupancy").tag("site", site).tag("zone", zone)
    for name, value in counts.items():
        point = point.field(name, value)
    point = point.time(outbox.event_time_ns(7.5), WritePrecision.NS)
    assert outbox.zone_occupancy_line(site, zone, counts, 7.5) == point.to_line_protocol()


def test_event_time_is_the_millisecond_meant():
    # 1795775048.123 * 1e9 in floats is ...122999808 ns: a different millisecond.
    assert outbox.event_time_ns(1795775048.123) == 1795775048_123_000_000
    assert outbox.event_time_ns(12.345) == 12_345_000_000


def test_zone_occupancy_line_has_integer_counts():
    import numpy as np

    counts = {"free": np.int64(12), "occupied": 30, "unknown": 1, "closed": 0, "total": 43}
    line = outbox.zone_occupancy_line(SITE, "A", counts, 100.5)
    assert line == (
        "zone_occupancy,site=xinyuan,zone=A "
        "closed=0i,free=12i,occupied=30i,total=43i,unknown=1i 100500000000"
    )
    with pytest.raises(ValueError, match="lacks counts"):
        outbox.zone_occupancy_line(SITE, "A", {"free": 1}, 1.0)


def test_retry_after_seconds_and_http_date():
    assert parse_retry_after("1") == 1.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(None) is None
    assert parse_retry_after("soon") is None
    now = 1_800_000_000.0
    in_30s = email.utils.formatdate(now + 30, usegmt=True)
    assert parse_retry_after(in_30s, now=now) == pytest.approx(30.0, abs=1.0)
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_writer_refuses_a_url_it_cannot_write_to(tmp_path):
    for url in ("influx:8086", "ftp://influx", "not a url"):
        with pytest.raises(ValueError, match="http://host:8086"):
            InfluxWriter(str(tmp_path / "j.sqlite"), url, "o", "b", TOKEN)


# -- the outbox in SQLite ---------------------------------------------------------------


def test_append_belongs_to_the_callers_transaction(db):
    _, conn = db
    with conn:
        outbox.append_space_state(conn, SITE, "A", "A-001", SpaceState.OCCUPIED, 10.0)
    conn.execute("BEGIN")
    outbox.append_space_state(conn, SITE, "A", "A-002", SpaceState.OCCUPIED, 11.0)
    counts = {"free": 1, "occupied": 1, "unknown": 0, "closed": 0, "total": 2}
    outbox.append_zone_occupancy(conn, SITE, "A", counts, 11.0)
    conn.rollback()  # the change was not journaled: neither may its points be
    assert [line for line, _ in outbox_rows(conn)] == [
        outbox.space_state_line(SITE, "A", "A-001", SpaceState.OCCUPIED, 10.0)
    ]


def test_batch_appends_queue_the_same_rows_as_single_appends(db):
    _, conn = db
    events = changes(6, start=500.0)
    counts = {"free": 3, "occupied": 1, "unknown": 0, "closed": 0, "total": 4}
    with conn:
        for zone, space, state, ts in events:
            outbox.append_space_state(conn, SITE, zone, space, state, ts)
        outbox.append_zone_occupancy(conn, SITE, "A", counts, 510.0)
        outbox.append_zone_occupancy(conn, SITE, "B1", counts, 510.0)
    singles = outbox_rows(conn)
    with conn:
        conn.execute("DELETE FROM outbox")
        outbox.append_space_states(conn, SITE, events)
        outbox.append_zone_occupancies(conn, SITE, [("A", counts, 510.0), ("B1", counts, 510.0)])
    assert outbox_rows(conn) == singles
    assert len(singles) == 8


def test_disk_cap_drops_the_oldest_counts_and_says_so(db, caplog):
    path, conn = db
    cap = outbox.OutboxCap(max_rows=5)
    events = changes(12, start=1_000.0)
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    for zone, space, state, ts in events:
        with conn:
            outbox.append_space_state(conn, SITE, zone, space, state, ts, cap=cap)
    kept = [ts for _, ts in outbox_rows(conn)]
    assert kept == [outbox.event_time_ns(e[3]) for e in events[-5:]]
    assert outbox.dropped_by_cap(conn) == 7
    full = [r for r in caplog.records if "outbox full: dropped" in r.getMessage()]
    assert len(full) == 1, "the cap's log line is rate-limited"
    assert "dropped 1 oldest points" in full[0].getMessage()
    # which stretch of history InfluxDB will lack: the first point's event time
    first = datetime.fromtimestamp(events[0][3], tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    assert f"of events at {first}" in full[0].getMessage()
    # the six said later (the timer, or a stop) span their first and last event times
    caplog.clear()
    cap.log_pending(force=True)
    (later,) = [r.getMessage() for r in caplog.records if "outbox full" in r.getMessage()]
    lo, hi = (
        datetime.fromtimestamp(events[i][3], tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ") for i in (1, 6)
    )
    assert "dropped 6 oldest points" in later and f"of events from {lo} to {hi}" in later
    stats = InfluxWriter(path, "http://127.0.0.1:9", "o", "b", TOKEN).stats()
    assert stats["dropped_cap"] == 7
    assert stats["outbox_depth"] == 5


# -- real VictoriaMetrics ---------------------------------------------------------------


def test_points_read_back_from_victoria_metrics_match_the_outbox(db, victoria, writers):
    path, conn = db
    start = int(time.time()) - 600  # recent past: inside any retention
    events = changes(40, start=start)
    append_changes(conn, events)
    zone_counts = [
        {"free": 10 - i, "occupied": 5 + i, "unknown": i % 2, "closed": 1, "total": 16 + i % 2}
        for i in range(4)
    ]
    with conn:
        for i, counts in enumerate(zone_counts):
            outbox.append_zone_occupancy(conn, SITE, "A", counts, start + 0.5 + 10 * i)
    rows = outbox_rows(conn)
    assert len(rows) == 44

    writer = start_writer(writers, path, victoria.url)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 20, "the outbox to drain")

    space_rows = [r for r in rows if r[0].startswith("space_state,")]
    expected = expected_series(space_rows)
    assert exported_series(victoria) == expected
    # and the outbox held what the events said, at the millisecond of each event
    assert sorted(ms for s in expected.values() for ms, _ in s) == [
        round(e[3] * 1000) for e in events
    ]
    for name in outbox.ZONE_COUNT_FIELDS:
        [series] = victoria.export(f'zone_occupancy_{name}{{site="{SITE}",zone="A"}}')
        assert series["values"] == [c[name] for c in zone_counts]
        assert series["timestamps"] == [(start + 10 * i) * 1000 + 500 for i in range(4)]
    stats = writer.stats()
    assert stats["written"] == 44
    assert stats["dropped_4xx"] == stats["auth_failed"] == stats["dropped_cap"] == 0


def test_outage_keeps_every_point_and_drains_in_order(db, tmp_path, writers):
    path, conn = db
    vm = VictoriaMetrics(tmp_path)
    try:
        vm.start()
        writer = start_writer(writers, path, vm.url)
        start = int(time.time()) - 600
        events = changes(30, start=start)
        append_changes(conn, events[:10])
        expected = outbox_rows(conn)
        wait_for(lambda: writer.stats()["outbox_depth"] == 0, 15, "the first points to drain")

        vm.stop()
        append_changes(conn, events[10:])
        expected += outbox_rows(conn)
        before = writer.stats()["retries"]
        wait_for(lambda: writer.stats()["retries"] >= before + 3, 15, "failed writes to be retried")
        stats = writer.stats()
        assert stats["outbox_depth"] == 20, "the outage must keep every point"
        assert stats["written"] == 10
        assert stats["last_error"]

        vm.start()
        wait_for(
            lambda: writer.stats()["outbox_depth"] == 0, 15, "the outbox to drain after the outage"
        )
        assert writer.stats()["written"] == 30
        # exactly the points queued, each once (VictoriaMetrics keeps duplicates), in order
        assert exported_series(vm) == expected_series(expected)
    finally:
        vm.stop()


def test_stop_drains_what_is_queued(db, victoria, writers):
    path, conn = db
    # a flush interval far beyond the test: only stop()'s drain can write these points
    writer = start_writer(writers, path, victoria.url, flush_interval_s=600.0)
    time.sleep(0.3)  # let the writer find the outbox empty and go to sleep
    append_changes(conn, changes(12, start=int(time.time()) - 300))
    expected = expected_series(outbox_rows(conn))
    writer.stop()
    assert outbox.depth(conn) == 0
    assert exported_series(victoria) == expected


def test_stop_leaves_unwritten_points_for_the_next_start(db, tmp_path, writers):
    path, conn = db
    vm = VictoriaMetrics(tmp_path)  # never started: everything must wait
    writer = start_writer(writers, path, vm.url)
    append_changes(conn, changes(5, start=time.time() - 60))
    wait_for(lambda: writer.stats()["retries"] >= 1, 10, "a failed write")
    began = time.monotonic()
    writer.stop()
    assert time.monotonic() - began < FAST["drain_timeout_s"] + 2
    assert outbox.depth(conn) == 5


# -- the fault injector: answers VictoriaMetrics never gives -----------------------------


@pytest.mark.parametrize("status", [401, 403])
def test_refused_token_keeps_points_logs_once_and_a_fixed_token_drains(
    db, fault_injector, writers, caplog, status
):
    path, conn = db
    good = "Token right-token-abc"

    def policy(request: Request, index: int) -> Answer:
        if request.authorization != good:
            return Answer(status, body='{"code":"unauthorized","message":"unauthorized access"}')
        return Answer(204)

    server = fault_injector(policy)
    caplog.set_level(logging.DEBUG)
    append_changes(conn, changes(6, start=time.time() - 60))
    queued = [line for line, _ in outbox_rows(conn)]
    writer = start_writer(writers, path, server.url, token=TOKEN)
    wait_for(lambda: writer.stats()["auth_failed"] >= 4, 10, "refused writes to be retried")
    stats = writer.stats()
    assert stats["outbox_depth"] == 6 and stats["written"] == 0 and stats["dropped_4xx"] == 0
    assert str(status) in stats["last_error"]
    refused = [r for r in caplog.records if "refused the token" in r.getMessage()]
    assert [r.levelno for r in refused][0] == logging.ERROR
    assert [r.levelno for r in refused][1:] == [logging.DEBUG] * (len(refused) - 1)  # repeats
    assert "INFLUX_TOKEN" in refused[0].getMessage()
    writer.stop()
    assert TOKEN not in caplog.text
    assert server.requests[0].authorization == f"Token {TOKEN}"  # it was sent, only not logged

    fixed = start_writer(writers, path, server.url, token="right-token-abc")
    wait_for(lambda: fixed.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    assert server.accepted_lines() == queued


def test_a_server_that_echoes_the_token_does_not_put_it_in_the_log(
    db, fault_injector, writers, caplog
):
    """A proxy answering 401 with the request's headers in its body: the writer logged that
    body ("Server said: ...") with the token in it, and kept it as the status's last error."""
    path, conn = db

    def policy(request: Request, index: int) -> Answer:
        return Answer(401, body=f'{{"message": "bad header: {request.authorization}"}}')

    server = fault_injector(policy)
    caplog.set_level(logging.DEBUG)
    append_changes(conn, changes(2, start=time.time() - 60))
    writer = start_writer(writers, path, server.url, token=TOKEN)
    wait_for(lambda: writer.stats()["auth_failed"] >= 2, 10, "refused writes")
    assert TOKEN not in writer.stats()["last_error"]
    writer.stop()
    said = [r.getMessage() for r in caplog.records if "refused the token" in r.getMessage()]
    assert said and "bad header: Token ***" in said[0]
    assert TOKEN not in caplog.text


def test_missing_bucket_keeps_points_until_it_exists(db, fault_injector, writers, caplog):
    path, conn = db
    missing = Answer(404, body='{"code":"not found","message":"bucket \\"parkguide\\" not found"}')
    server = fault_injector(lambda r, i: missing if i < 3 else Answer(204))
    caplog.set_level(logging.WARNING, logger="gateway.influx")
    append_changes(conn, changes(4, start=time.time() - 60))
    queued = [line for line, _ in outbox_rows(conn)]
    writer = start_writer(writers, path, server.url)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    assert server.accepted_lines() == queued
    stats = writer.stats()
    assert stats["not_found"] == 3 and stats["dropped_4xx"] == 0
    assert sum("has no bucket 'parkguide'" in r.getMessage() for r in caplog.records) == 1


def test_413_splits_batches_until_the_server_takes_them(db, fault_injector, writers):
    path, conn = db
    server = fault_injector(lambda r, i: Answer(413 if len(r.lines) >= 3 else 204))
    append_changes(conn, changes(16, start=time.time() - 60))
    queued = [line for line, _ in outbox_rows(conn)]
    writer = start_writer(writers, path, server.url, batch_size=16)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    assert server.accepted_lines() == queued, "every point, once, in order"
    assert any(r.status == 413 for r in server.requests)
    assert all(len(r.lines) < 3 for r in server.requests if r.status == 204)
    assert writer.stats()["dropped_4xx"] == 0


def test_a_single_point_still_too_large_is_dropped_and_counted(db, fault_injector, writers):
    path, conn = db

    def policy(request: Request, index: int) -> Answer:
        too_big = len(request.lines) >= 4 or any("space=A-002" in line for line in request.lines)
        return Answer(413 if too_big else 204)

    server = fault_injector(policy)
    append_changes(conn, changes(5, start=time.time() - 60))
    queued = [line for line, _ in outbox_rows(conn)]
    writer = start_writer(writers, path, server.url)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    assert server.accepted_lines() == [line for line in queued if "space=A-002" not in line]
    assert writer.stats()["dropped_4xx"] == 1


def test_429_waits_for_retry_after(db, fault_injector, writers):
    path, conn = db
    server = fault_injector(
        lambda r, i: (
            Answer(429, {"Retry-After": "1"}, '{"code":"too many requests"}')
            if i == 0
            else Answer(204)
        )
    )
    append_changes(conn, changes(3, start=time.time() - 60))
    queued = [line for line, _ in outbox_rows(conn)]
    # a 0.05 s backoff: only Retry-After can make the writer wait a second
    writer = start_writer(writers, path, server.url)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    first, second = server.requests[:2]
    assert first.status == 429 and second.status == 204
    assert second.at - first.at >= 0.9
    assert server.accepted_lines() == queued
    assert writer.stats()["retries"] == 1


def test_503_is_retried_until_it_succeeds(db, fault_injector, writers):
    path, conn = db
    server = fault_injector(lambda r, i: Answer(503, body="overloaded") if i < 2 else Answer(204))
    append_changes(conn, changes(4, start=time.time() - 60))
    queued = [line for line, _ in outbox_rows(conn)]
    writer = start_writer(writers, path, server.url)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    assert [r.status for r in server.requests] == [503, 503, 204]
    assert server.accepted_lines() == queued
    stats = writer.stats()
    assert stats["retries"] == 2 and stats["dropped_4xx"] == 0 and stats["written"] == 4


def test_400_drops_the_batch_counts_it_and_moves_on(db, fault_injector, writers, caplog):
    path, conn = db
    server = fault_injector(
        lambda r, i: (
            Answer(400, body='{"code":"invalid","message":"unable to parse"}')
            if i == 0
            else Answer(204)
        )
    )
    caplog.set_level(logging.WARNING, logger="gateway.influx")
    events = changes(5, start=time.time() - 60)
    append_changes(conn, events[:3])
    writer = start_writer(writers, path, server.url)
    wait_for(lambda: writer.stats()["dropped_4xx"] == 3, 10, "the bad batch to be dropped")
    assert outbox.depth(conn) == 0
    append_changes(conn, events[3:])
    queued = [line for line, _ in outbox_rows(conn)]
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the next points to drain")
    assert server.accepted_lines() == queued
    assert writer.stats()["written"] == 2
    assert any(
        "rejected 3 points" in r.getMessage() and "unable to parse" in r.getMessage()
        for r in caplog.records
    )


@pytest.mark.parametrize("retry_after", ["0", "-5", "Wed, 21 Oct 2015 07:28:00 GMT"])
def test_a_retry_after_of_nothing_still_waits_a_backoff_step(
    db, fault_injector, writers, retry_after
):
    """ "Retry now" from a server answering 503 must not become a request every millisecond."""
    path, conn = db
    server = fault_injector(lambda r, i: Answer(503, {"Retry-After": retry_after}))
    append_changes(conn, changes(3, start=time.time() - 60))
    writer = start_writer(writers, path, server.url, initial_backoff_s=0.2)
    time.sleep(1.0)
    writer.stop()
    assert 2 <= len(server.requests) <= 6  # about one per 0.2 s; without the floor: hundreds
    assert outbox.depth(conn) == 3


def test_a_batch_limit_cut_by_413_grows_back(db, fault_injector, writers):
    """One point too large for the server must not leave every later batch at one point."""
    path, conn = db
    append_changes(conn, changes(4, start=time.time() - 600))
    big = next(line for line, _ in outbox_rows(conn) if "space=A-002" in line)
    server = fault_injector(lambda r, i: Answer(413 if big in r.lines else 204))
    writer = start_writer(writers, path, server.url, batch_size=8)
    wait_for(lambda: writer.stats()["dropped_4xx"] == 1, 10, "the big point to be dropped")
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    for _ in range(24):  # later points, written as they come: enough writes to regrow
        append_changes(conn, changes(1, start=time.time() - 300))
        wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "a point to go")
    sent = len(server.requests)
    with conn:  # all eight at once (one commit each, the writer may wake between them)
        for zone, space, state, ts in changes(8, start=time.time() - 200):
            outbox.append_space_state(conn, SITE, zone, space, state, ts)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the backlog to drain")
    assert len(server.requests) - sent == 1  # eight points, one request again


def test_a_redirect_is_logged_and_the_error_clears_when_writes_work(
    db, fault_injector, writers, caplog
):
    path, conn = db
    moved = Answer(308, {"Location": "https://influx.example:8086/api/v2/write"})
    server = fault_injector(lambda r, i: moved if i < 2 else Answer(204))
    caplog.set_level(logging.INFO, logger="gateway.influx")
    append_changes(conn, changes(3, start=time.time() - 60))
    writer = start_writer(writers, path, server.url)
    wait_for(lambda: writer.stats()["outbox_depth"] == 0, 10, "the outbox to drain")
    said = [r for r in caplog.records if "308" in r.getMessage()]
    assert said and said[0].levelno == logging.ERROR
    assert "https://influx.example:8086" in said[0].getMessage()
    assert writer.stats()["last_error"] is None  # /metrics shows no error once writes work
    assert any("accepts writes again" in r.getMessage() for r in caplog.records)


def test_the_last_drops_of_an_outage_are_said(db, caplog):
    """Drops after the first line of an interval are said once the interval is over, even
    when no more drops come to trigger it."""
    path, conn = db
    caplog.set_level(logging.WARNING, logger="gateway.outbox")
    cap = outbox.OutboxCap(max_rows=3, log_interval_s=0.2)
    for i in range(6):
        outbox.append_space_state(conn, "xinyuan", "A", f"A-{i:03d}", "free", 1e9 + i, cap=cap)
    said = [r.getMessage() for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(said) == 1 and "dropped 1 oldest" in said[0]
    time.sleep(0.25)
    cap.log_pending()
    said = [r.getMessage() for r in caplog.records if "outbox full" in r.getMessage()]
    assert len(said) == 2 and "dropped 2 oldest" in said[1]
    cap.log_pending()  # nothing new: nothing said
    assert sum("outbox full" in r.getMessage() for r in caplog.records) == 2
