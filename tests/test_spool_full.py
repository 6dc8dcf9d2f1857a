"""An edge agent whose spool disk is full: it runs on, its reports still reach the broker,
its health says ``degraded``, and spooling resumes once there is room again.

The full disk is real: a 1 MiB tmpfs (the tests run as root), filled with a file. Where
no tmpfs can be mounted, the in-process publisher test caps the spool's SQLite file
instead (``PRAGMA max_page_count``: the same "database or disk is full"), and the agent
tests are skipped.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from camera_support import AGENT as CAMERA_AGENT
from camera_support import SITE_ID as CAMERA_SITE
from camera_support import (
    Proc,
    latest_health,
    occupancy_reports,
    parse_status,
    start_agent,
    start_sim,
)
from conftest import free_port
from edge_support import Recorder, assert_in_order, dedupe_reports, persistent_broker
from test_serial_agent import AGENT as SERIAL_AGENT
from test_serial_agent import SITE, WATCHED, BusSimulator, wait_state
from test_serial_agent import start_agent as start_serial_agent

from edge.publisher import ReportPublisher
from parking import topics
from parking.broker import BrokerConfig
from parking.payloads import SpaceObservation

P_SITE, P_AGENT, P_SOURCE = "t-site", "serial-t", "bus-t"
SPOOL_ERROR = "report spool"  # in the publisher's error line


class SmallDisk:
    """A 1 MiB tmpfs at ``path``, filled up and freed on demand."""

    def __init__(self, path: Path):
        self.path = path
        self.filler = path / "filler"
        path.mkdir(parents=True, exist_ok=True)
        out = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(path)],
            capture_output=True,
            text=True,
        )
        self.mounted = out.returncode == 0
        self.why = out.stderr.strip()

    def fill(self, publisher: ReportPublisher | None = None) -> None:
        """No byte left; without a tmpfs, no page left in ``publisher``'s spool file."""
        if not self.mounted:
            assert publisher is not None, "a full disk needs a tmpfs here"
            with publisher._lock:  # its connection: not while the publisher uses it
                db = publisher._spool._conn()  # type: ignore[union-attr]
                pages = db.execute("PRAGMA page_count").fetchone()[0]
                db.execute(f"PRAGMA max_page_count = {pages}")
                # no room left in the outbox's own page either: rows below every real id
                # (the publisher reads ids above those it sent), deleted again by free()
                row = 0
                for size in (4096, 256, 16, 1):
                    with contextlib.suppress(sqlite3.OperationalError):
                        while True:
                            row -= 1
                            db.execute(
                                "INSERT INTO outbox VALUES (?, 'filler', zeroblob(?), 0)",
                                (row, size),
                            )
            return
        fd = os.open(self.filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
        try:
            for size in (1 << 16, 4096, 1):
                try:
                    while os.write(fd, b"\0" * size):
                        pass
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
        finally:
            os.close(fd)

    def free(self, publisher: ReportPublisher | None = None) -> None:
        if not self.mounted:
            assert publisher is not None
            with publisher._lock:
                db = publisher._spool._conn()  # type: ignore[union-attr]
                db.execute("DELETE FROM outbox WHERE id < 0")
                db.execute("PRAGMA max_page_count = 1073741823")
            return
        self.filler.unlink()

    def unmount(self) -> None:
        if self.mounted:
            # lazy: a process killed by the test may still hold the spool open a moment
            subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[SmallDisk]:
    disk = SmallDisk(tmp_path / "small")
    try:
        yield disk
    finally:
        disk.unmount()


def need_tmpfs(disk: SmallDisk) -> None:
    if not disk.mounted:
        pytest.skip(f"no tmpfs can be mounted here ({disk.why}): an agent's disk cannot fill")


def as_the_gateway_takes_them(reports: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The reports a gateway accepts, in arrival order. It drops one whose seq is not above
    the last it took of that boot as a repeat: that must be a true repeat (QoS 1), never
    another report (a later seq sent before it would make it look like one)."""
    last: dict[str, int] = {}
    taken: dict[tuple[str, int], dict[str, Any]] = {}
    out = []
    for r in reports:
        key = (r["boot"], r["seq"])
        if r["seq"] <= last.get(r["boot"], -1):
            assert taken.get(key) == r, f"seq {r['seq']} arrived after {last[r['boot']]}"
            continue
        last[r["boot"]] = r["seq"]
        taken[key] = r
        out.append(r)
    return out


def spool_errors(records: list[logging.LogRecord]) -> list[str]:
    return [
        r.getMessage()
        for r in records
        if r.levelno >= logging.ERROR and SPOOL_ERROR in r.getMessage()
    ]


def rows_on_disk(spool_dir: Path) -> int:
    (path,) = spool_dir.glob("*.sqlite3")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])
    finally:
        db.close()


def wait_until(condition, timeout: float = 10, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what} not met in {timeout} s"
        time.sleep(0.05)


def test_publisher_on_a_full_disk_sends_from_memory_and_spools_again(
    small_disk: SmallDisk, tmp_path: Path, caplog
) -> None:
    caplog.set_level(logging.INFO, logger="edge.publisher")
    broker = persistent_broker(tmp_path)
    broker.start()
    rec = Recorder(broker.port, f"{topics.site_prefix(P_SITE)}/#", persistent_id="t-full-rec")
    pub = ReportPublisher(
        BrokerConfig.from_url(broker.url),
        P_SITE,
        P_AGENT,
        P_SOURCE,
        spool_dir=small_disk.path,
        max_unspooled=5,
    )
    pub.start()
    sent: list[str] = []  # the state of each report, in seq order

    def report(state: str) -> None:
        pub.report("delta", [SpaceObservation(space="S-1", state=state, since=1.7e9)])
        sent.append(state)

    try:
        rec.wait_for(lambda _m: "online" in rec.texts_on("/availability"), 10)
        report("free")
        assert pub.wait_until_drained(10) and pub.spool_ok

        small_disk.fill(pub)
        for i in range(20):  # the disk is full: the first that needs a new page fails
            report("occupied" if i % 2 == 0 else "free")
            if not pub.spool_ok:
                break
        assert not pub.spool_ok
        for i in range(10):  # at the pace of changes, not a burst beyond the bound
            report("occupied" if i % 2 == 0 else "free")
            wait_until(lambda: pub.spool_health()["unspooled"] == 0, what="sent from memory")
        health = pub.spool_health()
        assert health["spool_full"] == 1 and health["unspooled_dropped"] == 0
        # the broker is up: every one arrives, in order, none dropped as a false repeat
        rec.wait_for(lambda _m: len(dedupe_reports(rec.json_on("/occupancy"))) == len(sent), 10)
        got = as_the_gateway_takes_them(rec.json_on("/occupancy"))
        assert_in_order(got)
        assert [r["spaces"][0]["state"] for r in got] == sent

        # the broker goes: the reports wait in memory, the oldest dropped beyond the bound
        broker.stop()
        wait_until(lambda: not pub.connected, what="disconnected")
        before = len(sent)
        for i in range(8):
            report("occupied" if i % 2 == 0 else "free")
        health = pub.spool_health()
        assert health == {"spool_full": 1, "unspooled": 5, "unspooled_dropped": 3}
        assert pub.pending >= 5
        errors = spool_errors(caplog.records)
        assert len(errors) == 1, errors  # one line, not one per report
        assert str(small_disk.path) in errors[0]
        assert "database or disk is full" in errors[0]

        # room again: the next report goes to disk, with those kept in memory before it
        small_disk.free(pub)
        report("free")
        assert pub.spool_ok
        assert pub.spool_health() == {"spool_full": 0, "unspooled": 0, "unspooled_dropped": 3}
        assert "takes reports again" in caplog.text
        assert rows_on_disk(small_disk.path) == 6
        assert len(spool_errors(caplog.records)) == 1

        broker.start()
        assert pub.wait_until_drained(20), f"{pub.pending} still pending"
        rec.wait_for(lambda _m: len(dedupe_reports(rec.json_on("/occupancy"))) == len(sent) - 3, 20)
        got = as_the_gateway_takes_them(rec.json_on("/occupancy"))
        dropped = set(range(before, before + 3))  # a gap the gateway counts
        assert [r["seq"] for r in got] == [i for i in range(len(sent)) if i not in dropped]
        assert [r["spaces"][0]["state"] for r in got] == [
            s for i, s in enumerate(sent) if i not in dropped
        ]
    finally:
        pub.stop()
        rec.close()
        broker.stop()


def test_publisher_started_on_a_full_disk_runs_and_drains_the_old_spool_later(
    small_disk: SmallDisk, mosquitto, caplog
) -> None:
    """A restart on a full disk (e.g. a reboot): SQLite cannot even open the spool."""
    need_tmpfs(small_disk)
    caplog.set_level(logging.INFO, logger="edge.publisher")
    rec = Recorder(mosquitto.port, f"{topics.site_prefix(P_SITE)}/#")
    broker = BrokerConfig.from_url(mosquitto.url)
    mosquitto.stop()
    first = ReportPublisher(broker, P_SITE, P_AGENT, P_SOURCE, spool_dir=small_disk.path)
    first.start()
    for state in ("occupied", "free"):
        first.report("delta", [SpaceObservation(space="S-1", state=state, since=1.7e9)])
    first.stop(flush_timeout_s=0.2)  # the broker is down: they stay on disk
    small_disk.fill()
    rec.subscribed.clear()
    mosquitto.start()
    assert rec.subscribed.wait(10)  # the recorder is back before anything is sent
    second = ReportPublisher(broker, P_SITE, P_AGENT, P_SOURCE, spool_dir=small_disk.path)
    second.start()  # no exception
    try:
        assert not second.spool_ok
        wait_until(lambda: second.connected, what="connected")
        second.report("snapshot", [SpaceObservation(space="S-1", state="unknown", since=1.7e9)])
        rec.wait_for(
            lambda _m: any(r["boot"] == second.boot for r in rec.json_on("/occupancy")), 10
        )
        assert second.spool_health()["spool_full"] == 1
        assert len(spool_errors(caplog.records)) == 1
        wait_until(lambda: second.spool_health()["unspooled"] == 0, what="memory acknowledged")
        small_disk.free()
        second.report("delta", [SpaceObservation(space="S-1", state="free", since=1.7e9)])
        assert second.spool_ok
        assert second.wait_until_drained(10)
        got = rec.wait_for(lambda _m: len(rec.json_on("/occupancy")) >= 4, 10)
        assert got
        by_boot = {b: [r["seq"] for r in rec.json_on("/occupancy") if r["boot"] == b]
                   for b in (first.boot, second.boot)}  # fmt: skip
        assert by_boot == {first.boot: [0, 1], second.boot: [0, 1]}
    finally:
        second.stop()
        rec.close()


def agent_log_lines(log: Path, level: str, text: str) -> list[str]:
    return [line for line in log.read_text().splitlines() if f" {level} " in line and text in line]


def test_serial_agent_on_a_full_disk_keeps_reporting_and_says_degraded(
    small_disk: SmallDisk, mosquitto, tmp_path: Path, subprocess_env
) -> None:
    need_tmpfs(small_disk)
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    rec = Recorder(mosquitto.port, f"{topics.site_prefix(SITE.id)}/edge/{SERIAL_AGENT}/#")
    agent = start_serial_agent(
        mosquitto.port, link, small_disk.path, subprocess_env, "--debounce-ms", "100"
    )
    log = tmp_path / "agent.log"

    def health() -> dict[str, Any]:
        h = rec.json_on("/health")
        return h[-1] if h else {}

    try:
        wait_state(rec, WATCHED, "free", 20)
        rec.wait_for(lambda _m: health().get("status") == "ok", 10)
        small_disk.fill()
        for state in ("occupied", "free", "occupied"):
            sim.send(f"set {WATCHED} {state}")
            wait_state(rec, WATCHED, state, 10)  # straight from memory
        rec.wait_for(lambda _m: health().get("counters", {}).get("spool_full") == 1, 10)
        assert health()["status"] == "degraded"
        assert agent.poll() is None
        assert len(agent_log_lines(log, "ERROR", SPOOL_ERROR)) == 1
        assert str(small_disk.path) in agent_log_lines(log, "ERROR", SPOOL_ERROR)[0]

        small_disk.free()
        sim.send(f"set {WATCHED} free")
        wait_state(rec, WATCHED, "free", 10)
        rec.wait_for(lambda _m: health().get("counters", {}).get("spool_full") == 0, 10)
        assert health()["status"] == "ok"
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(15) == 0
        text = log.read_text()
        assert "Traceback" not in text
        assert len(agent_log_lines(log, "INFO", "takes reports again")) == 1
        reports = as_the_gateway_takes_them(rec.json_on("/occupancy"))
        assert_in_order(reports)
        deltas = [s["state"] for r in reports if r["kind"] == "delta" for s in r["spaces"]
                  if s["space"] == WATCHED]  # fmt: skip
        assert deltas[-4:] == ["occupied", "free", "occupied", "free"]
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
        rec.close()
        sim.close()


def test_camera_agent_on_a_full_disk_keeps_reporting_and_says_degraded(
    mosquitto, tmp_path: Path
) -> None:
    disk = SmallDisk(tmp_path / "spool")  # where the camera helper puts the agent's spool
    procs: list[Proc] = []
    rec: Recorder | None = None
    try:
        need_tmpfs(disk)
        rec = Recorder(mosquitto.port, f"parkguide/v1/{CAMERA_SITE}/edge/{CAMERA_AGENT}/#")
        port = free_port()
        sim_flags = ("--scenario", "none", "--seed", "5", "--start", "11:00")
        procs.append(start_sim(port, tmp_path / "sim.log", *sim_flags))
        agent = start_agent(
            mosquitto.url, port, tmp_path, "--fps-limit", "4", "--hold-s", "1",
            "--health-interval-s", "1", "--snapshot-interval-s", "1",
        )  # fmt: skip
        procs.append(agent)
        rec.wait_for(lambda _m: len(occupancy_reports(rec)) >= 1, 60)
        sim = procs[0]
        truth = parse_status(sim.ask("status"))
        free_space = next(sp for sp, occupied in truth.items() if not occupied)
        disk.fill()
        # periodic snapshots are never spooled (an SD card's writes): a car arriving is
        # the delta the full disk refuses
        assert sim.ask(f"set {free_space} occupied").startswith("ok")
        rec.wait_for(
            lambda _m: (latest_health(rec) or {}).get("counters", {}).get("spool_full") == 1, 30
        )
        seen = len(occupancy_reports(rec))
        # snapshots every second: they go on arriving from memory
        rec.wait_for(lambda _m: len(occupancy_reports(rec)) >= seen + 3, 20)
        assert latest_health(rec)["status"] == "degraded"  # type: ignore[index]
        assert agent.proc.poll() is None
        assert len(agent_log_lines(agent.log_path, "ERROR", SPOOL_ERROR)) == 1
        disk.free()
        assert sim.ask(f"set {free_space} free").startswith("ok")  # the next delta is spooled
        rec.wait_for(
            lambda _m: (latest_health(rec) or {}).get("counters", {}).get("spool_full") == 0, 30
        )
        assert agent.terminate(15) == 0
        text = agent.log_path.read_text()
        assert "Traceback" not in text and "frame processing failed" not in text
        assert len(agent_log_lines(agent.log_path, "INFO", "takes reports again")) == 1
        assert_in_order(as_the_gateway_takes_them(occupancy_reports(rec)))
    finally:
        for p in procs:
            p.close()
        if rec is not None:
            rec.close()
        disk.unmount()
