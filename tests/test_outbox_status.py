"""The shipped deployment: the gateway without ``--http`` and the API as its own process on
the same journal. The gateway's InfluxDB writer keeps its status in the journal (``meta``
row ``outbox_status``); the stand-alone API shows it in its ``/metrics`` under the names
the gateway's own ``/metrics`` uses, and raises ``influx_failing``: critical while InfluxDB
refuses the token, cleared when a write is accepted again.

Real parts: the gateway service (``gateway.service.GatewayService``) on a real mosquitto,
its real writer against the HTTP fault injector of ``influx_support`` (a stand-in for an
InfluxDB answering 401, then 204), and the real API app on its own MQTT view
(``api.mqttview.MqttLiveView``), as ``parkguide api`` runs it."""

from __future__ import annotations

import json
import re
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import influx_support
import pytest
from api_support import PASSWORD, journal_with_users, settings
from fastapi.testclient import TestClient
from gateway_support import Edge, running_gateway
from influx_support import Answer, Request

from api import outbox_status as status_module
from api.app import create_app
from api.mqttview import MqttLiveView
from api.outbox_status import OutboxStatus, OutboxStatusReader
from gateway import outbox
from gateway.influx import InfluxWriter
from gateway.journal import Journal
from parking.broker import BrokerConfig
from parking.site import EXAMPLE_SITE, load_site

pytestmark = pytest.mark.timeout(120)

fault_injector = influx_support.fault_injector

TOKEN = "wrong-token-0123456789"
REFUSED = Answer(401, body='{"code":"unauthorized","message":"unauthorized access"}')
# the writer's settings for tests: short waits, its status saved often
FAST = dict(
    flush_interval_s=0.1,
    initial_backoff_s=0.05,
    max_backoff_s=0.3,
    request_timeout_s=5.0,
    drain_timeout_s=2.0,
    status_interval_s=0.2,
)
WRITER_FAMILIES = {
    "parkguide_outbox_dropped_total",
    "parkguide_outbox_written_total",
    "parkguide_outbox_auth_failures_total",
    "parkguide_outbox_last_error_info",
    "parkguide_outbox_retries_total",
    "parkguide_outbox_not_found_total",
    "parkguide_outbox_last_success_timestamp_seconds",
    "parkguide_outbox_last_error_timestamp_seconds",
    "parkguide_outbox_failing_since_timestamp_seconds",
}


def wait_for(fn: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.1)


def status_row(db: Path) -> dict[str, Any] | None:
    with sqlite3.connect(db) as conn:
        return outbox.load_status(conn)


class Api:
    """The API as its own process runs it: its own MQTT view, the gateway's journal."""

    def __init__(self, db: Path, mosquitto, view: Any = None):
        self.own_view = view is None
        self.view = view or MqttLiveView(
            load_site(EXAMPLE_SITE), BrokerConfig.from_url(mosquitto.url), str(db)
        )
        self.app = create_app(self.view, settings(alert_check_s=0.3), db_path=str(db))

    def __enter__(self) -> Api:
        if self.own_view:
            self.view.start()
            assert self.view.connected.wait(10)
        self.client = TestClient(self.app).__enter__()
        r = self.client.post("/api/v1/auth/login", json={"name": "manager", "password": PASSWORD})
        assert r.status_code == 200, r.text
        self.client.cookies.clear()
        self.h = {"Authorization": f"Bearer {r.json()['token']}"}
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.__exit__(None, None, None)
        if self.own_view:
            self.view.stop()

    def alerts(self, kind: str | None = None) -> list[dict]:
        params = {"kind": kind} if kind else {}
        r = self.client.get("/api/v1/alerts", params=params, headers=self.h)
        assert r.status_code == 200, r.text
        return r.json()

    def metrics(self) -> list[str]:
        r = self.client.get("/metrics", headers=self.h)
        assert r.status_code == 200, r.text
        return r.text.splitlines()


def sample(lines: list[str], name: str) -> float | None:
    """The value of an unlabelled sample, None when absent."""
    for line in lines:
        if line.startswith(f"{name} "):
            return float(line.split()[1])
    return None


def families(lines: list[str], prefix: str = "parkguide_outbox_") -> set[str]:
    return {m.group(1) for ln in lines if (m := re.match(rf"# TYPE ({prefix}\S+) ", ln))}


@contextmanager
def shipped(tmp_path: Path, mosquitto, influx: dict[str, Any] | None) -> Iterator[tuple[Any, Api]]:
    """The gateway (no --http) and the stand-alone API on one journal, with bus-g's agent
    reporting every space free (state changes: points for the outbox)."""
    db = journal_with_users(tmp_path)
    edge = Edge(mosquitto.port, "serial-bus-g", "bus-g")
    try:
        with running_gateway(EXAMPLE_SITE, mosquitto.url, db, influx=influx) as gw:
            edge.send({s: "free" for s in gw.site.spaces_of_source("bus-g")}, kind="snapshot")
            with Api(db, mosquitto) as api:
                yield gw, api
    finally:
        edge.stop()


def test_a_refused_token_shows_in_the_stand_alone_apis_metrics_and_alert(
    tmp_path, mosquitto, fault_injector
):
    accept = threading.Event()  # the token is fixed (here: the server takes it again)

    def policy(request: Request, index: int) -> Answer:
        return Answer(204) if accept.is_set() else REFUSED

    server = fault_injector(policy)
    influx = {"url": server.url, "org": "community", "bucket": "parkguide", "token": TOKEN}
    with shipped(tmp_path, mosquitto, {**influx, **FAST}) as (gw, api):
        db = gw.journal.path
        # the writer says so in the journal
        row = wait_for(
            lambda: (r := status_row(db)) and r["auth_failed"] >= 2 and r,
            "the status row to count refused writes",
        )
        assert row["failing"] == "auth" and row["written"] == 0
        assert "HTTP 401" in row["error"] and row["url"] == server.url
        assert TOKEN not in json.dumps(row)

        # the API: a critical alert naming the error and what to do
        alerts = wait_for(lambda: api.alerts("influx_failing"), "the influx_failing alert")
        assert [(a["id"], a["severity"]) for a in alerts] == [("influx_failing:token", "critical")]
        alert = alerts[0]
        assert "HTTP 401" in alert["details"]["error"]
        assert alert["details"]["url"] == server.url
        assert "INFLUX_TOKEN" in alert["message"]["en"] and server.url in alert["message"]["en"]
        assert "INFLUX_TOKEN" in alert["message"]["zh"]
        assert alert["since"] <= time.time()

        # ... and its /metrics: the refusals and the error, under the gateway's own names
        lines = api.metrics()
        assert (sample(lines, "parkguide_outbox_auth_failures_total") or 0) >= 2
        assert sample(lines, "parkguide_outbox_written_total") == 0
        errors = [ln for ln in lines if ln.startswith("parkguide_outbox_last_error_info{")]
        assert len(errors) == 1 and "HTTP 401" in errors[0] and errors[0].endswith(" 1")
        assert 'parkguide_outbox_failing_since_timestamp_seconds{reason="auth"}' in "\n".join(lines)
        assert any(ln.startswith('parkguide_alerts_open{severity="critical"} ') for ln in lines)
        assert (
            float(
                next(
                    ln
                    for ln in lines
                    if ln.startswith('parkguide_alerts_open{severity="critical"}')
                ).split()[1]
            )
            >= 1
        )

        # the same names as the gateway's own /metrics (``parkguide gateway --http``)
        in_process = create_app(gw.gateway, settings(), db_path=str(db))
        with TestClient(in_process) as c:
            r = c.get("/metrics", headers=api.h)
            assert r.status_code == 200, r.text
            gateway_lines = r.text.splitlines()
        assert (
            families(lines)
            == families(gateway_lines)
            == WRITER_FAMILIES - {"parkguide_outbox_last_success_timestamp_seconds"}
            | {"parkguide_outbox_depth"}
        )

        # the server takes the writes again: the backlog drains, the alert clears
        accept.set()
        wait_for(lambda: not api.alerts("influx_failing"), "the alert to clear")
        row = status_row(db)
        assert row is not None and row["failing"] is None and row["error"] is None
        assert row["written"] > 0 and row["last_ok_at"] is not None
        assert "HTTP 401" in row["last_error"]  # the latest error is kept, with its time
        lines = wait_for(
            lambda: (
                (m := api.metrics())
                and (sample(m, "parkguide_outbox_written_total") or 0) > 0
                and m
            ),
            "the accepted writes in /metrics",
        )
        assert not any(ln.startswith("parkguide_outbox_last_error_info") for ln in lines)
        assert (sample(lines, "parkguide_outbox_auth_failures_total") or 0) >= 2
        assert sample(lines, "parkguide_outbox_last_success_timestamp_seconds") is not None
        assert "parkguide_outbox_failing_since_timestamp_seconds" not in "\n".join(lines)
        assert server.accepted_lines()


def test_a_gateway_without_influxdb_raises_nothing_and_shows_no_writer_metrics(tmp_path, mosquitto):
    with shipped(tmp_path, mosquitto, None) as (gw, api):
        wait_for(lambda: gw.journal.last_event_id() > 0, "the snapshot to be journalled")
        time.sleep(1.0)  # several alert checks
        assert status_row(gw.journal.path) is None
        assert api.alerts("influx_failing") == []
        lines = api.metrics()
        assert families(lines) == {"parkguide_outbox_depth", "parkguide_outbox_dropped_total"}
        assert not any(ln.startswith("parkguide_outbox_last_error_info") for ln in lines)


def test_writes_failing_for_another_reason_warn_after_a_while(
    tmp_path, mosquitto, fault_injector, monkeypatch
):
    """InfluxDB answering 503: not an alert at once (a restart of the server is not one), a
    warning once it lasts (60 s; here 1 s), cleared when a write goes through."""
    monkeypatch.setattr(status_module, "FAILING_AFTER_S", 1.0)
    accept = threading.Event()

    def policy(request: Request, index: int) -> Answer:
        return Answer(204) if accept.is_set() else Answer(503, body='{"message":"overloaded"}')

    server = fault_injector(policy)
    influx = {"url": server.url, "org": "community", "bucket": "parkguide", "token": TOKEN}
    with shipped(tmp_path, mosquitto, {**influx, **FAST}) as (gw, api):
        wait_for(
            lambda: (r := status_row(gw.journal.path)) and r["failing"] == "server",
            "the status row to say the server fails",
        )
        alerts = wait_for(lambda: api.alerts("influx_failing"), "the influx_failing warning")
        assert [(a["id"], a["severity"]) for a in alerts] == [("influx_failing:write", "warning")]
        assert "HTTP 503" in alerts[0]["details"]["error"]
        assert "503" in alerts[0]["message"]["en"] and "503" in alerts[0]["message"]["zh"]
        lines = api.metrics()
        assert (sample(lines, "parkguide_outbox_retries_total") or 0) >= 1
        assert sample(lines, "parkguide_outbox_auth_failures_total") == 0
        accept.set()
        wait_for(lambda: not api.alerts("influx_failing"), "the warning to clear")


def test_the_status_is_saved_when_it_changes_at_most_every_interval(tmp_path, fault_injector):
    """Off the report-to-sign path and cheap: the writer's thread saves the row at most every
    ``status_interval_s`` however fast it retries, and when nothing changes only at its
    heartbeat (which tells a running writer from a row a stopped gateway left behind)."""
    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    outbox.ensure_schema(journal.conn)
    journal.conn.execute("CREATE TABLE saves (at REAL)")
    journal.conn.execute(
        "CREATE TRIGGER count_saves AFTER INSERT ON meta WHEN new.key = 'outbox_status' "
        "BEGIN INSERT INTO saves VALUES (julianday('now')); END"
    )
    with journal.transaction() as conn:
        outbox.append_space_state(conn, "xinyuan", "A", "A-001", "occupied", time.time())
    server = fault_injector(lambda r, i: Answer(503, body="{}"))
    writer = InfluxWriter(
        str(path),
        server.url,
        "community",
        "parkguide",
        TOKEN,
        flush_interval_s=0.05,
        initial_backoff_s=0.01,
        max_backoff_s=0.02,
        status_interval_s=0.5,
        status_heartbeat_s=60.0,
    )
    writer.start()
    try:
        time.sleep(2.2)
        retries = writer.stats()["retries"]
        saves = journal.conn.execute("SELECT count(*) FROM saves").fetchone()[0]
        assert retries >= 20  # it kept trying ...
        assert 2 <= saves <= 6  # ... and saved its status about every 0.5 s, no more
    finally:
        writer.stop()
    row = outbox.load_status(journal.conn)
    assert row is not None and row["retries"] == writer.stats()["retries"]  # the last, at stop

    # nothing changes (an empty outbox): saved again only at the heartbeat
    journal.conn.execute("DELETE FROM outbox")
    journal.conn.execute("DELETE FROM saves")
    idle = InfluxWriter(
        str(path),
        server.url,
        "community",
        "parkguide",
        TOKEN,
        flush_interval_s=0.05,
        status_interval_s=0.1,
        status_heartbeat_s=0.6,
    )
    idle.start()
    try:
        time.sleep(1.5)
    finally:
        idle.stop()
    saves = journal.conn.execute("SELECT count(*) FROM saves").fetchone()[0]
    assert 1 <= saves <= 3
    journal.close()


def status_text(**fields: Any) -> str:
    base = {"url": "http://influx:8086", "bucket": "parkguide", "updated": time.time()}
    return json.dumps({**base, **fields})


def test_the_alert_from_a_status():
    now = time.time()
    ok = OutboxStatus.parse(status_text(written=10, last_ok_at=now))
    assert ok is not None and ok.alert(now) is None
    refused = OutboxStatus.parse(
        status_text(failing="auth", failing_since=now - 1, error="HTTP 401 Unauthorized")
    )
    assert refused is not None
    alert = refused.alert(now)
    assert alert is not None and alert.id == "influx_failing:token"
    assert alert.severity == "critical" and alert.since == now - 1
    down = OutboxStatus.parse(status_text(failing="unreachable", failing_since=now - 30))
    assert down is not None and down.alert(now) is None  # not yet a minute
    late = down.alert(now + 31)
    assert late is not None and late.id == "influx_failing:write" and late.severity == "warning"
    zh, en = late.message(72)
    assert "http://influx:8086" in en and "http://influx:8086" in zh
    # not a status: nothing made up from it
    assert OutboxStatus.parse("[1, 2]") is None
    assert OutboxStatus.parse("not json") is None
    assert OutboxStatus.parse(json.dumps({"failing": "auth"})) is None  # no time


def test_a_status_no_writer_keeps_saving_is_not_shown(tmp_path):
    """A row a stopped gateway (or one since started without --influx-url) left behind."""
    from api.journal import JournalReader

    path = tmp_path / "journal.sqlite"
    journal = Journal(path)
    reader = OutboxStatusReader(JournalReader(str(path)), refresh_s=0.0)
    assert reader.poll() is None  # no row
    old = {"failing": "auth", "failing_since": time.time() - 900, "error": "HTTP 401"}
    outbox.save_status(journal.conn, {"url": "u", "bucket": "b", **old, "updated": time.time()})
    assert reader.poll() is not None
    outbox.save_status(
        journal.conn, {"url": "u", "bucket": "b", **old, "updated": time.time() - 600}
    )
    assert reader.poll() is None
    journal.close()


def test_the_api_reads_the_key_the_writer_saves():
    assert status_module.STATUS_KEY == outbox.STATUS_KEY
