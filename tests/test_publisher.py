"""ReportPublisher against a real mosquitto: availability, order, durability, refusal."""

from __future__ import annotations

import json
import logging
import subprocess
import time
from pathlib import Path

import pytest
from conftest import MosquittoBroker
from edge_support import KEEP_USER, Recorder, assert_in_order, dedupe_reports, persistent_broker

from edge.publisher import ReportPublisher, SpoolBusy
from parking import topics
from parking.broker import BrokerConfig
from parking.payloads import HealthReport, NodeHealth, OccupancyReport, SpaceObservation

SITE, AGENT, SOURCE = "t-site", "serial-t", "bus-t"


def obs(space: str, state: str, since: float = 1.7e9) -> SpaceObservation:
    return SpaceObservation(space=space, state=state, since=since)


def make(broker_port: int, spool: Path, **kw) -> ReportPublisher:
    return ReportPublisher(
        BrokerConfig.from_url(f"mqtt://127.0.0.1:{broker_port}"),
        SITE,
        AGENT,
        SOURCE,
        spool_dir=spool,
        **kw,
    )


@pytest.fixture
def recorder_factory():
    made: list[Recorder] = []

    def factory(port: int, **kw) -> Recorder:
        r = Recorder(port, f"{topics.site_prefix(SITE)}/#", **kw)
        made.append(r)
        return r

    yield factory
    for r in made:
        r.close()


def test_online_snapshot_delta_health_and_offline(mosquitto, tmp_path, recorder_factory) -> None:
    rec = recorder_factory(mosquitto.port)
    pub = make(mosquitto.port, tmp_path)
    pub.start()
    try:
        rec.wait_for(lambda m: "online" in [p.decode() for t, p, _ in m], 10)
        assert pub.connected
        assert pub.snapshot_due()  # every (re)connect asks for a snapshot
        pub.report("snapshot", [obs("S-1", "free"), obs("S-2", "unknown")])
        assert not pub.snapshot_due()
        pub.report("delta", [obs("S-1", "occupied")])
        pub.publish_health(
            HealthReport(
                agent=AGENT, source=SOURCE, ts=1.7e9, nodes=[NodeHealth(address=1, status="ok")]
            )
        )
        rec.wait_for(lambda m: len([t for t, _, _ in m if t.endswith("/occupancy")]) >= 2, 10)
        rec.wait_for(lambda m: any(t.endswith("/health") for t, _, _ in m), 10)
        reports = [OccupancyReport.model_validate(r) for r in rec.json_on("/occupancy")]
        assert [(r.kind, r.seq, r.boot) for r in reports] == [
            ("snapshot", 0, pub.boot),
            ("delta", 1, pub.boot),
        ]
        assert [s.space for s in reports[0].spaces] == ["S-1", "S-2"]
        assert reports[1].spaces[0].state == "occupied"
        assert all(r.agent == AGENT and r.source == SOURCE for r in reports)
        # numbered like the reports: the gateway orders health by them, not by its ts
        health = HealthReport.model_validate(rec.json_on("/health")[-1])
        assert (health.boot, health.seq) == (pub.boot, 1)
        assert pub.wait_until_drained(5)
    finally:
        pub.stop()
    rec.wait_for(lambda m: rec.texts_on("/availability")[-1:] == ["offline"], 10)
    # both availability and health are retained: a late subscriber sees them at once
    late = recorder_factory(mosquitto.port)
    msgs = late.wait_for(lambda m: len(m) >= 2, 10)
    retained = {t.rsplit("/", 1)[1]: p for t, p, r in msgs if r}
    assert retained["availability"] == b"offline"
    assert json.loads(retained["health"])["nodes"][0]["address"] == 1


def spool_inserts(pub: ReportPublisher) -> int:
    """Rows ever written to the spool (AUTOINCREMENT keeps the highest id used)."""
    import sqlite3

    with sqlite3.connect(pub.spool_path) as db:
        row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'outbox'").fetchone()
    return 0 if row is None else int(row[0])


def test_periodic_snapshots_are_never_written_to_the_spool(
    mosquitto, tmp_path, recorder_factory
) -> None:
    """An edge box's SD card: a quiet bus spooled (two synced writes) every snapshot it
    sent, ~40 MB an hour for nothing the next snapshot does not say again. Snapshots go
    from memory; deltas, the changes, are still on disk before they go."""
    rec = recorder_factory(mosquitto.port)
    pub = make(mosquitto.port, tmp_path)
    pub.start()
    try:
        rec.wait_for(lambda m: "online" in rec.texts_on("/availability"), 10)
        for _ in range(20):
            pub.report("snapshot", [obs("S-1", "free"), obs("S-2", "occupied")])
            assert pub.wait_until_drained(10)
        assert spool_inserts(pub) == 0 and pub.spool_ok
        assert pub.spool_health() == {"spool_full": 0, "unspooled": 0, "unspooled_dropped": 0}
        pub.report("delta", [obs("S-1", "occupied", 1.7e9 + 1)])
        assert spool_inserts(pub) == 1  # on disk before it goes
        assert pub.wait_until_drained(10)
        rec.wait_for(lambda m: len(rec.json_on("/occupancy")) >= 21, 10)
        got = dedupe_reports(rec.json_on("/occupancy"))
        assert [r["seq"] for r in got] == list(range(21)) and got[-1]["kind"] == "delta"
    finally:
        pub.stop()


def spooled(pub: ReportPublisher) -> list[tuple[int, str]]:
    """(seq, kind) of the reports in the spool now, in its order."""
    import sqlite3

    with sqlite3.connect(pub.spool_path) as db:
        rows = db.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    return [(json.loads(p)["seq"], json.loads(p)["kind"]) for (p,) in rows]


def test_a_delta_after_a_snapshot_in_flight_is_on_disk_with_it_in_order(
    mosquitto, tmp_path, recorder_factory
) -> None:
    """A link that stalls (the broker acknowledges nothing) while a snapshot is in flight
    from memory: the delta made then waited in memory behind it, and a kill -9 lost it.
    Both are now in the spool, in seq order, before report() returns; the snapshot is not
    sent twice when the broker takes them."""
    import signal

    rec = recorder_factory(mosquitto.port)
    pub = make(mosquitto.port, tmp_path)
    pub.start()
    try:
        rec.wait_for(lambda m: "online" in rec.texts_on("/availability"), 10)
        pub.report("snapshot", [obs("S-1", "free")])
        assert pub.wait_until_drained(10) and spooled(pub) == []
        mosquitto.proc.send_signal(signal.SIGSTOP)  # stalled: nothing is acknowledged
        try:
            pub.report("snapshot", [obs("S-1", "free")])
            time.sleep(0.3)  # sent, unacknowledged
            pub.report("delta", [obs("S-1", "occupied", 1.7e9 + 1)])
            assert spooled(pub) == [(1, "snapshot"), (2, "delta")]
        finally:
            mosquitto.proc.send_signal(signal.SIGCONT)
        assert pub.wait_until_drained(15) and spooled(pub) == []
        rec.wait_for(lambda m: len(rec.json_on("/occupancy")) >= 3, 10)
        time.sleep(0.5)
        assert [r["seq"] for r in rec.json_on("/occupancy")] == [0, 1, 2]  # each once
    finally:
        pub.stop()


def test_a_stopped_agents_last_snapshot_is_dropped_but_one_before_a_delta_is_kept(
    tmp_path,
) -> None:
    """With the broker away, a snapshot followed by a delta go to disk together (no seq
    gap for the gateway to take for a loss); a snapshot that is the newest report when the
    agent stops is dropped (its next run sends its own)."""
    broker = MosquittoBroker(tmp_path)  # never started: the broker is away
    pub = make(broker.port, tmp_path / "spool")
    pub.start()
    pub.report("snapshot", [obs("S-1", "free")])
    pub.report("delta", [obs("S-1", "occupied", 1.7e9 + 1)])
    pub.report("snapshot", [obs("S-1", "occupied", 1.7e9 + 1)])
    assert spooled(pub) == [(0, "snapshot"), (1, "delta")]
    pub.stop(flush_timeout_s=0.2)
    again = make(broker.port, tmp_path / "spool")
    assert spooled(again) == [(0, "snapshot"), (1, "delta")]


def test_broker_outage_loses_nothing_and_keeps_order(tmp_path, recorder_factory) -> None:
    broker = persistent_broker(tmp_path)
    broker.start()
    pub = make(broker.port, tmp_path / "spool", max_inflight=5)
    try:
        rec = recorder_factory(broker.port, persistent_id="t-outage-recorder")
        pub.start()
        rec.wait_for(lambda m: "online" in rec.texts_on("/availability"), 10)
        states = ["occupied", "free"] * 60
        for i, state in enumerate(states):
            pub.report("delta", [obs("S-1", state, 1.7e9 + i)])
            if i == 30:
                broker.stop()
            if i == 80:
                assert not pub.connected
                assert pub.pending > 0  # queued on disk meanwhile
                broker.start()
        assert pub.wait_until_drained(30), f"{pub.pending} reports still spooled"
        rec.wait_for(lambda m: len(dedupe_reports(rec.json_on("/occupancy"))) >= len(states), 20)
        got = dedupe_reports(rec.json_on("/occupancy"))
        deltas = [r for r in got if r["kind"] == "delta"]
        assert_in_order(got)
        assert [r["spaces"][0]["state"] for r in deltas] == states
        assert pub.stats["connects"] >= 2 and pub.stats["disconnects"] >= 1
    finally:
        pub.stop()
        broker.stop()


def test_restart_drains_the_old_spool_first_with_its_own_boot(
    mosquitto, tmp_path, recorder_factory
) -> None:
    rec = recorder_factory(mosquitto.port)
    spool = tmp_path / "spool"
    mosquitto.stop()
    first = make(mosquitto.port, spool)
    first.start()
    for i in range(5):
        first.report("delta", [obs(f"S-{i}", "occupied")])
    first.stop(flush_timeout_s=0.2)  # the broker is down: they stay on disk
    mosquitto.start()
    rec.client.reconnect()
    rec.subscribed.clear()
    assert rec.subscribed.wait(10)
    second = make(mosquitto.port, spool)
    assert second.boot != first.boot
    second.start()
    try:
        rec.wait_for(lambda m: "online" in rec.texts_on("/availability"), 10)
        while second.snapshot_due():
            second.report("snapshot", [obs("S-0", "free")])
        second.report("delta", [obs("S-9", "free")])
        got = rec.wait_for(lambda m: len(rec.json_on("/occupancy")) >= 7, 10)
        assert got
        reports = dedupe_reports(rec.json_on("/occupancy"))
        assert_in_order(reports)
        assert [(r["boot"], r["seq"], r["kind"]) for r in reports] == [
            *[(first.boot, i, "delta") for i in range(5)],
            (second.boot, 0, "snapshot"),
            (second.boot, 1, "delta"),
        ]
    finally:
        second.stop()


def test_two_publishers_cannot_share_one_spool(mosquitto, tmp_path) -> None:
    a = make(mosquitto.port, tmp_path)
    a.start()
    try:
        b = make(mosquitto.port, tmp_path)
        with pytest.raises(SpoolBusy):
            b.start()
    finally:
        a.stop()


def test_two_publishers_with_one_id_on_two_spools_say_they_take_each_other_over(
    mosquitto, tmp_path, caplog
) -> None:
    """Not refused (their spools differ): with MQTT 3.1.1 the broker just closes the older
    connection, so each keeps taking the other's session over. Said as that, in an error,
    not as an outage of the broker."""
    caplog.set_level(logging.WARNING, logger="edge.publisher")
    a = make(mosquitto.port, tmp_path / "service-spool")
    b = make(mosquitto.port, tmp_path / "technician-spool")
    a.start()
    b.start()
    try:
        deadline = time.monotonic() + 30
        while not any(r.levelno == logging.ERROR for r in caplog.records):
            assert time.monotonic() < deadline, "no error about the takeover"
            time.sleep(0.1)
    finally:
        a.stop(flush_timeout_s=0.2)
        b.stop(flush_timeout_s=0.2)
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert f"same client id (agent {AGENT}) keeps taking over this session" in errors[0]
    assert f"second agent with id {AGENT} running" in errors[0]
    assert len(errors) <= 2  # one per publisher, not one per takeover


def test_broker_restarts_are_outages_not_a_takeover(tmp_path, caplog) -> None:
    """A broker restarted three times within 30 s, the agent finding it away each time, is
    an outage: the agent says it lost the broker, and blames no second agent (a takeover
    never refuses the connection)."""
    caplog.set_level(logging.WARNING, logger="edge.publisher")
    broker = MosquittoBroker(tmp_path)
    broker.start()
    pub = make(broker.port, tmp_path / "spool")
    pub.start()
    try:
        for restarts in (1, 2, 3):
            wait_until(lambda: pub.connected)
            broker.stop()
            wait_until(lambda n=restarts: pub.stats["disconnects"] == n)
            wait_until(lambda n=restarts: pub.stats["connection_failures"] >= n)  # found away
            broker.start()
        wait_until(lambda: pub.connected)
    finally:
        pub.stop(flush_timeout_s=0.2)
        broker.stop()
    assert not [r for r in caplog.records if r.levelno == logging.ERROR]
    lost = [r for r in caplog.records if "lost the MQTT broker" in r.getMessage()]
    assert len(lost) == 3


def wait_until(condition, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline
        time.sleep(0.02)


def test_refused_credentials_are_never_connected(tmp_path, caplog) -> None:
    pwfile = tmp_path / "passwd"
    pwfile.write_text("")
    subprocess.run(["mosquitto_passwd", "-b", str(pwfile), "agent", "right-secret"], check=True)
    pwfile.chmod(0o644)
    broker = MosquittoBroker(
        tmp_path, extra_conf=f"{KEEP_USER}allow_anonymous false\npassword_file {pwfile}\n"
    )
    broker.start()
    try:
        check_refusal_then_acceptance(broker, tmp_path, caplog)
    finally:
        broker.stop()


def check_refusal_then_acceptance(broker: MosquittoBroker, tmp_path: Path, caplog) -> None:
    caplog.set_level(logging.ERROR, logger="edge.publisher")
    wrong = ReportPublisher(
        BrokerConfig.from_url(broker.url, "agent", "wrong"), SITE, AGENT, SOURCE, spool_dir=tmp_path
    )
    wrong.start()
    try:
        wrong.report("delta", [obs("S-1", "free")])
        deadline = time.monotonic() + 10
        while wrong.stats["refused"] == 0 and time.monotonic() < deadline:
            assert not wrong.connected
            time.sleep(0.02)
        assert wrong.stats["refused"] >= 1
        assert not wrong.connected
        assert wrong.pending == 1  # kept for when the credentials are fixed
        assert any("refused the connection" in r.getMessage() for r in caplog.records)
        assert any("check the login" in r.getMessage() for r in caplog.records)
    finally:
        wrong.stop(flush_timeout_s=0.2)
    right = ReportPublisher(
        BrokerConfig.from_url(broker.url, "agent", "right-secret"),
        SITE,
        AGENT,
        SOURCE,
        spool_dir=tmp_path,
    )
    right.start()
    try:
        assert right.wait_until_drained(10)
        assert right.connected and right.stats["refused"] == 0
    finally:
        right.stop()


def test_the_health_of_a_huge_bus_still_crosses_the_wire(mosquitto, tmp_path, recorder_factory):
    """4,096 detectors make a health report over the 256 KiB cap the gateway enforces:
    published with only the detectors that are not ok, and how many were left out."""
    from parking.payloads import MAX_PAYLOAD_BYTES, DetectorHealth

    nodes = [
        NodeHealth(
            address=a,
            status="ok",
            detectors=[
                DetectorHealth(
                    index=i,
                    space=f"B1-E-{64 * a + i:05d}",
                    status="flapping" if (a, i) == (7, 3) else "ok",
                    raw=12345,
                    battery=97,
                )
                for i in range(64)
            ],
        )
        for a in range(1, 65)
    ]
    report = HealthReport(agent=AGENT, source=SOURCE, ts=1.7e9, nodes=nodes)
    assert len(report.model_dump_json()) > MAX_PAYLOAD_BYTES
    rec = recorder_factory(mosquitto.port)
    pub = make(mosquitto.port, tmp_path)
    pub.start()
    try:
        pub.publish_health(report)
        msgs = rec.wait_for(lambda m: any(t.endswith("/health") for t, _, _ in m), 10)
    finally:
        pub.stop()
    body = next(p for t, p, _ in msgs if t.endswith("/health"))
    assert len(body) <= MAX_PAYLOAD_BYTES
    got = HealthReport.model_validate_json(body)
    assert len(got.nodes) == 64
    assert [(n.address, d.index) for n in got.nodes for d in n.detectors] == [(7, 3)]
    assert got.counters["detectors_ok_omitted"] == 64 * 64 - 1


def test_the_spool_is_private_to_the_agents_user(mosquitto, tmp_path) -> None:
    """Outside systemd (umask 0022) a spool folder the agent makes is 0700, its database,
    -wal, -shm and lock files 0600: no other local user reads the reports or flocks the
    lock to keep the agent from starting. A folder the operator made keeps its mode."""
    import os
    import stat

    def mode(path: Path) -> int:
        return stat.S_IMODE(path.stat().st_mode)

    old = os.umask(0o022)
    try:
        spool = tmp_path / "state" / "parkguide"
        pub = make(mosquitto.port, spool)
        pub.start()
        try:
            pub.report("delta", [obs("S-1", "free")])
            assert pub.wait_until_drained(10)
            files = {p.name: mode(p) for p in spool.iterdir()}
        finally:
            pub.stop()
        assert mode(spool) == 0o700
        name = f"{SITE}.{AGENT}.sqlite3"
        for suffix in ("", "-wal", "-shm", ".lock"):
            assert files[name + suffix] == 0o600, files
        operators = tmp_path / "operators"
        operators.mkdir(mode=0o750)
        pub = make(mosquitto.port, operators)
        pub.start()
        pub.stop()
        assert mode(operators) == 0o750
    finally:
        os.umask(old)
