"""The serial edge agent end to end: the real bus simulator on a pty, a real mosquitto."""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import sqlite3
import subprocess
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import EXAMPLE_SITE, parkguide_cmd
from edge_support import Recorder, assert_in_order, dedupe_reports, persistent_broker

from edge.debounce import DebounceSettings
from edge.modbus_master import ModbusMaster, ModbusTimeout
from edge.serial_agent import SerialAgent
from parkguide.supervisor import stop_process
from parking import modbus_rtu as rtu
from parking import registers as reg
from parking import topics
from parking.site import load_site
from parking.states import SpaceState

BUS = "bus-b1"  # 4 nodes x 30 detectors in the example site
SITE = load_site(EXAMPLE_SITE)
BUS_SPACES = SITE.spaces_of_source(BUS)
AGENT = f"serial-{BUS}"
WATCHED = "B1-E-001"  # node 1, detector 0


class BusSimulator:
    """``parkguide sim bus`` in a subprocess, driven through its stdin console."""

    def __init__(
        self,
        link: Path,
        env: dict[str, str],
        *extra: str,
        site: Path = EXAMPLE_SITE,
        bus: str = BUS,
    ):
        self.link = link
        self.proc = subprocess.Popen(
            parkguide_cmd(
                "sim",
                "bus",
                "--site",
                str(site),
                "--bus",
                bus,
                "--link",
                str(link),
                "--scenario",
                "none",
                "--initial-occupancy",
                "0",
                *extra,
            ),  # fmt: skip
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        line = self._line(20)
        assert "linked at" in line, line

    def _line(self, timeout: float) -> str:
        result: list[str] = []
        t = threading.Thread(target=lambda: result.append(self.proc.stdout.readline()))
        t.start()
        t.join(timeout)
        if not result:
            raise TimeoutError("the simulator said nothing")
        return result[0].strip()

    def send(self, command: str) -> str:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self._line(10)
        assert answer.startswith("ok"), f"{command!r} -> {answer!r}"
        return answer

    def close(self) -> None:
        stop_process(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()


@pytest.fixture
def processes() -> Iterator[list]:
    """Everything a test starts, stopped even when it fails."""
    started: list = []
    yield started
    for p in reversed(started):
        if isinstance(p, subprocess.Popen):
            if p.poll() is None:
                p.kill()
                p.wait()
        else:
            p.close()


def start_agent(
    broker_port: int,
    link: Path,
    spool: Path,
    env: dict[str, str],
    *extra: str,
    site: Path = EXAMPLE_SITE,
    bus: str = BUS,
) -> subprocess.Popen:
    return subprocess.Popen(
        parkguide_cmd(
            "edge",
            "serial",
            "--site",
            str(site),
            "--bus",
            bus,
            "--port",
            str(link),
            "--broker",
            f"mqtt://127.0.0.1:{broker_port}",
            "--spool-dir",
            str(spool),
            "--health-interval",
            "0.5",
            *extra,
        ),  # fmt: skip
        stdout=subprocess.DEVNULL,
        stderr=open(spool.parent / "agent.log", "ab"),  # noqa: SIM115 (kept for a failure's story)
        env=env,
    )


def states_of(reports: list[dict], space: str, kind: str | None = "delta") -> list[str]:
    return [
        s["state"]
        for r in reports
        if kind is None or r["kind"] == kind
        for s in r["spaces"]
        if s["space"] == space
    ]


def latest_state(rec: Recorder, space: str) -> str | None:
    states = states_of(rec.json_on("/occupancy"), space, kind=None)
    return states[-1] if states else None


def wait_state(rec: Recorder, space: str, state: str, timeout: float) -> None:
    rec.wait_for(lambda _m: latest_state(rec, space) == state, timeout)


def test_changes_faults_and_outages_reach_the_broker(
    mosquitto, tmp_path, subprocess_env, processes
) -> None:
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    rec = Recorder(mosquitto.port, f"{topics.site_prefix(SITE.id)}/edge/{AGENT}/#")
    processes.append(rec)
    agent = start_agent(mosquitto.port, link, tmp_path / "spool", subprocess_env)
    processes.append(agent)

    # a snapshot on connect lists every space of the bus, and only those
    rec.wait_for(lambda _m: any(r["kind"] == "snapshot" for r in rec.json_on("/occupancy")), 20)
    snap = next(r for r in rec.json_on("/occupancy") if r["kind"] == "snapshot")
    assert [s["space"] for s in snap["spaces"]] == BUS_SPACES
    assert snap["source"] == BUS and snap["agent"] == AGENT
    assert rec.texts_on("/availability")[0] == "online"
    for space in BUS_SPACES:
        wait_state(rec, space, "free", 10)

    # a car arrives: the delta arrives
    sim.send(f"set {WATCHED} occupied")
    wait_state(rec, WATCHED, "occupied", 5)
    sim.send(f"set {WATCHED} free")
    wait_state(rec, WATCHED, "free", 5)

    # a dead detector: its space is unknown, the others are not
    sim.send("fault B1-E-002 dead")
    wait_state(rec, "B1-E-002", "unknown", 10)
    sim.send("clear B1-E-002")
    wait_state(rec, "B1-E-002", "free", 10)

    # a dead node: all its spaces unknown; back when it answers again
    node2 = [s for s in BUS_SPACES if SITE.bindings[s].node == 2]
    sim.send("fault node 2 dead")
    for space in node2:
        wait_state(rec, space, "unknown", 10)
    assert latest_state(rec, WATCHED) == "free"
    sim.send("clear node 2")
    for space in node2:
        wait_state(rec, space, "free", 10)

    # health is published, retained, with the detector statuses
    health = rec.json_on("/health")[-1]
    assert {n["address"] for n in health["nodes"]} == {n.address for n in SITE.bus(BUS).nodes}

    # an occupied bay whose detector dies: unknown, never "free" on the way (a dead
    # detector reads 0; its fault is read before that 0 would be published)
    sim.send(f"set {WATCHED} occupied")
    wait_state(rec, WATCHED, "occupied", 5)
    sim.send(f"fault {WATCHED} dead")
    wait_state(rec, WATCHED, "unknown", 10)
    sim.send(f"clear {WATCHED}")
    wait_state(rec, WATCHED, "occupied", 10)  # the car is still there, and it is said
    sim.send(f"set {WATCHED} free")
    wait_state(rec, WATCHED, "free", 5)

    # the serial port disappears (simulator gone): unknown, then back when it returns;
    # the retained health says the bus is blind meanwhile, not "ok" from before
    sim.close()
    for space in BUS_SPACES[:3]:
        wait_state(rec, space, "unknown", 10)
    rec.wait_for(lambda _m: rec.json_on("/health")[-1]["status"] == "blind", 10)
    assert rec.json_on("/health")[-1]["counters"]["port_up"] == 0  # why: the port, not the nodes
    sim2 = BusSimulator(link, subprocess_env)
    processes.append(sim2)
    for space in BUS_SPACES[:3]:
        wait_state(rec, space, "free", 20)

    # killed without a goodbye: the broker publishes the last will
    agent.send_signal(signal.SIGKILL)
    agent.wait(10)
    rec.wait_for(lambda _m: rec.texts_on("/availability")[-1] == "offline", 10)

    # every report from this run, in order, nothing twice
    reports = rec.json_on("/occupancy")
    assert_in_order(dedupe_reports(reports))
    assert states_of(reports, WATCHED) == [
        "free", "occupied", "free", "occupied", "unknown", "occupied", "free", "unknown", "free"
    ]  # fmt: skip


def test_an_adapter_missing_at_start_is_waited_for_and_the_bus_said_blind(
    mosquitto, tmp_path, subprocess_env, processes
) -> None:
    """A box restarted with its USB-RS-485 adapter unplugged: the agent exited 2, was
    restarted by systemd every few seconds, and the dashboard said the agent was offline,
    not that its port was lost. It now runs, says the bus is blind, and reads it once the
    adapter is there."""
    link = tmp_path / "bus.tty"  # not there yet
    rec = Recorder(mosquitto.port, f"{topics.site_prefix(SITE.id)}/edge/{AGENT}/#")
    processes.append(rec)
    env = {**subprocess_env, "INVOCATION_ID": "0123456789abcdef"}  # as under systemd
    agent = start_agent(mosquitto.port, link, tmp_path / "spool", env)
    processes.append(agent)
    rec.wait_for(lambda _m: rec.texts_on("/availability")[-1:] == ["online"], 20)
    rec.wait_for(lambda _m: rec.json_on("/health")[-1:] != [], 10)
    health = rec.json_on("/health")[-1]
    assert health["status"] == "blind" and health["counters"]["port_up"] == 0
    assert agent.poll() is None
    log = (tmp_path / "agent.log").read_text()
    assert f"serial port {link} does not exist (yet): waiting for it" in log
    sim = BusSimulator(link, subprocess_env)  # the adapter is plugged in
    processes.append(sim)
    for space in BUS_SPACES[:3]:
        wait_state(rec, space, "free", 20)


def test_a_second_agent_for_the_bus_is_refused(mosquitto, tmp_path, subprocess_env, processes):
    """Run by hand beside the service (another spool folder): it used to run on, publish
    the bus as unknown and take the first agent's session over, again and again."""
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    rec = Recorder(mosquitto.port, f"{topics.site_prefix(SITE.id)}/edge/{AGENT}/#")
    processes.append(rec)
    first = start_agent(mosquitto.port, link, tmp_path / "spool-a", subprocess_env)
    processes.append(first)
    rec.wait_for(lambda _m: any(r["kind"] == "snapshot" for r in rec.json_on("/occupancy")), 20)
    (tmp_path / "b").mkdir()
    second = start_agent(mosquitto.port, link, tmp_path / "b" / "spool", subprocess_env)
    processes.append(second)
    assert second.wait(30) == 2
    assert "in use by another process" in (tmp_path / "b" / "agent.log").read_text()
    assert first.poll() is None


def test_no_false_transitions_under_crc_noise_over_10000_polls(
    tmp_path, subprocess_env, processes
) -> None:
    """The agent's poller, in-process, through the real simulator on a real pty."""
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env, "--initial-occupancy", "0.5")
    processes.append(sim)
    bus = SITE.bus(BUS)
    master = ModbusMaster(str(link), bus.baud, bus.parity)
    master.open()
    processes.append(master)
    agent = SerialAgent(SITE.id, bus, AGENT, master, None, DebounceSettings())
    # settle: every space takes its reading
    deadline = time.monotonic() + 10
    while any(c.state.label == "unknown" for c in agent.tracker.snapshot()):
        agent.poll_cycle()
        assert time.monotonic() < deadline
    before = {c.space: c.state for c in agent.tracker.snapshot()}
    for node in bus.nodes:
        sim.send(f"fault node {node.address} crc 0.1")
    polls, changes = 0, []
    while polls < 10_000:
        changes += agent.poll_cycle()
        polls += len(bus.nodes)
    assert changes == []
    assert {c.space: c.state for c in agent.tracker.snapshot()} == before
    assert master.counters.crc_errors > 100  # the noise was real and was caught
    assert master.counters.retries > 100


def in_process_agent(link: Path, bus=None) -> tuple[SerialAgent, ModbusMaster]:
    """The agent's poller on the simulator's pty, a node down after 3 failed polls, a health
    round whenever asked."""
    bus = bus or SITE.bus(BUS)
    master = ModbusMaster(str(link), bus.baud, bus.parity)
    master.open()
    settings = DebounceSettings(node_timeout_s=0.0)
    return SerialAgent(SITE.id, bus, AGENT, master, None, settings, health_interval_s=0.0), master


def poll_until(agent: SerialAgent, done, timeout: float = 15) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, "the bus did not get there in time"
        agent.poll_cycle()


def health_round(agent: SerialAgent) -> None:
    """One whole health round: statuses, and the raw readings, batteries and node info read
    along (one a cycle)."""
    while not agent.health_step()[1] or agent.slow_reads_pending:
        pass


def test_a_dead_nodes_detectors_are_unknown_with_no_raw_reading(
    tmp_path, subprocess_env, processes
) -> None:
    """Health must not show a dead node's detectors as `ok` with readings from before it
    died; nor the agent's last health, as it stops, any raw reading at all."""
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    agent, master = in_process_agent(link)
    processes.append(master)
    poll_until(
        agent, lambda: all(c.state is not SpaceState.UNKNOWN for c in agent.tracker.snapshot())
    )
    health_round(agent)
    (node2,) = [n for n in agent.health_report().nodes if n.address == 2]
    assert all(d.status == "ok" and d.raw is not None for d in node2.detectors)
    sim.send("fault node 2 dead")
    poll_until(agent, lambda: agent.tracker.node_down(2))
    nodes = {n.address: n for n in agent.health_report().nodes}
    assert nodes[2].status == "dead"
    assert all(d.status == "unknown" and d.raw is None for d in nodes[2].detectors)
    assert all(d.status == "ok" and d.raw is not None for d in nodes[1].detectors)
    last = agent.offline_health()
    assert last.status == "offline"
    assert all(d.status == "unknown" and d.raw is None for n in last.nodes for d in n.detectors)


def node_info(detectors: int, address: int = 1) -> bytes:
    """A node controller's answer to a read of its info registers (IR_MODEL..)."""
    info = [reg.MODEL_CODE, reg.FIRMWARE_VERSION, detectors, 0, 100, 0, 0, 5]
    return rtu.encode_registers_response(address, rtu.READ_INPUT_REGISTERS, info)


def test_a_node_answering_an_exception_is_in_error_not_dead(processes, caplog) -> None:
    """A node that says it has the site file's detectors, but answers the poll of its bits
    with exception 02. Its spaces are unknown, but it is not reported dead: its health
    carries the code, and the alert points at the site file, not at the node's wiring."""
    from api.alerts import derive_alerts
    from gateway.readside import AgentStatus
    from parking.site import Bus, NodeController

    refused = rtu.encode_exception(1, rtu.READ_DISCRETE_INPUTS, rtu.ILLEGAL_DATA_ADDRESS)
    refused_registers = rtu.encode_exception(1, rtu.READ_INPUT_REGISTERS, 2)
    # its info as the port opens, five polls refused, a health round: its statuses refused,
    # and the first slow read along (raw readings)
    line = ScriptedLine([node_info(8), *[refused] * 5, *[refused_registers] * 2])
    processes.append(line)
    master = ModbusMaster(line.path, 115200, "N", retries=2, turnaround_s=0.05)
    master.open()
    processes.append(master)
    spaces = tuple(f"B1-E-{i:03d}" for i in range(1, 9))
    bus = Bus(BUS, 115200, "N", 15.0, (NodeController(1, 8, spaces),))
    settings = DebounceSettings(node_timeout_s=0.0)
    agent = SerialAgent(SITE.id, bus, AGENT, master, None, settings, health_interval_s=0.0)
    for _ in range(5):  # a dead node would be down after one
        agent.poll_cycle()
    assert agent.health_step()[1]  # a round of statuses
    assert not agent.tracker.node_down(1)
    assert all(agent.tracker.state(s)[0] is SpaceState.UNKNOWN for s in spaces)
    health = agent.health_report()
    (node1,) = health.nodes
    assert node1.status == "error" and node1.errors["exception"] == 2
    assert all(d.status == "unknown" and d.raw is None for d in node1.detectors)
    assert health.status == "degraded"
    assert "exception 2" in caplog.text and "8 detectors" in caplog.text
    now = time.time()
    (alert,) = derive_alerts([], [AgentStatus(AGENT, True, now, health)], now, 72 * 3600)
    assert alert.id == "node_error:bus-b1/1"
    assert alert.message(72)[1] == (
        "node controller bus-b1/1 answers exception 2 (illegal data address): "
        "check the site file's detectors against the node"
    )


def test_another_bus_on_the_port_is_not_published_as_this_ones(
    mosquitto, tmp_path, subprocess_env, processes
) -> None:
    """USB adapters swapped (or /dev/ttyUSB names renumbered after a reboot): the agent of
    bus-g on bus-b1's line. Node 3 of bus-b1 answers a read of 16 bits, and its bits were
    published as bus-g's node 3 with health ok. Each node's info is read as the port opens:
    one whose detector count is not the site file's is in error, its spaces unknown, with
    one warning naming both causes; the right bus plugged in, the spaces come back."""
    from api.alerts import derive_alerts
    from gateway.readside import AgentStatus
    from parking.payloads import HealthReport

    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)  # bus-b1: 4 nodes x 30 detectors
    processes.append(sim)
    bus_g = SITE.bus("bus-g")
    agent_id = "serial-bus-g"
    rec = Recorder(mosquitto.port, f"{topics.site_prefix(SITE.id)}/edge/{agent_id}/#")
    processes.append(rec)
    agent = start_agent(mosquitto.port, link, tmp_path / "spool", subprocess_env, bus="bus-g")
    processes.append(agent)

    def node_health() -> dict[int, dict]:
        health = rec.json_on("/health")
        return {n["address"]: n for n in health[-1]["nodes"]} if health else {}

    expected = ["error"] * 4 + ["dead"] * 3
    rec.wait_for(lambda _m: [node_health().get(a, {}).get("status") for a in range(1, 8)]
                 == expected, 60)  # fmt: skip
    nodes = node_health()
    assert all(nodes[a]["errors"]["detector_count"] == 30 for a in range(1, 5))
    reports = rec.json_on("/occupancy")
    assert {s["state"] for r in reports for s in r["spaces"]} == {"unknown"}
    log = (tmp_path / "agent.log").read_text()
    warning = (
        "node 3 says it has 30 detectors, the site file gives it 16: the wrong bus on this "
        "port (adapters swapped? use /dev/serial/by-id names), or set `detectors: 30` in the "
        "site file if it has spare channels; its spaces are unknown"
    )
    assert log.count(warning) == 1, log
    assert "node 1 says it has 30 detectors, the site file gives it 32" in log
    report = HealthReport.model_validate(rec.json_on("/health")[-1])
    now = time.time()
    alerts = derive_alerts([], [AgentStatus(agent_id, True, now, report)], now, 72 * 3600)
    (node3,) = [a for a in alerts if a.id == "node_error:bus-g/3"]
    assert (
        "says it has 30 detectors, not the site file's: another bus on this port"
        in (node3.message(72)[1])
    )

    # the right adapter on the port: the port comes back with bus-g's nodes, which say so
    sim.close()
    sim_g = BusSimulator(link, subprocess_env, bus="bus-g")
    processes.append(sim_g)
    for space in (s for n in bus_g.nodes for s in n.spaces if s):
        wait_state(rec, space, "free", 30)
    assert "now says it is the node the site file describes" in (tmp_path / "agent.log").read_text()


def spooled_states(spool: Path, space: str = WATCHED) -> list[str]:
    """States of ``space`` in the delta reports an agent has on disk, not yet acknowledged."""
    files = list(spool.glob("*.sqlite3"))
    if not files:
        return []
    db = sqlite3.connect(f"file:{files[0]}?mode=ro", uri=True, timeout=5)
    try:
        rows = db.execute("SELECT payload FROM outbox ORDER BY id").fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()
    return states_of([json.loads(p) for (p,) in rows], space)


def wait_spooled(spool: Path, expected: list[str], timeout: float = 20) -> None:
    """Wait until the agent has queued these transitions on disk (the broker is down)."""
    deadline = time.monotonic() + timeout
    while spooled_states(spool)[-len(expected) :] != expected:
        assert time.monotonic() < deadline, f"spooled {spooled_states(spool)}, want {expected}"
        time.sleep(0.05)


def test_broker_outage_every_transition_once_in_order(tmp_path, subprocess_env, processes) -> None:
    broker = persistent_broker(tmp_path)
    broker.start()
    processes.append(type("B", (), {"close": lambda self: broker.stop()})())
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    rec = Recorder(
        broker.port,
        f"{topics.site_prefix(SITE.id)}/edge/{AGENT}/#",
        persistent_id="t-agent-outage",
    )
    processes.append(rec)
    spool = tmp_path / "spool"
    agent = start_agent(broker.port, link, spool, subprocess_env, "--debounce-ms", "100")
    processes.append(agent)
    wait_state(rec, WATCHED, "free", 20)
    toggled: list[str] = []

    def toggle() -> str:
        state = "occupied" if len(toggled) % 2 == 0 else "free"
        sim.send(f"set {WATCHED} {state}")
        toggled.append(state)
        return state

    for _ in range(2):
        wait_state(rec, WATCHED, toggle(), 10)
    broker.stop()
    queued: list[str] = []
    for _ in range(4):
        queued.append(toggle())
        wait_spooled(spool, queued)
    broker.start()
    rec.wait_for(lambda _m: states_of(rec.json_on("/occupancy"), WATCHED)[-1:] == toggled[-1:] and sum(r["kind"] == "snapshot" for r in rec.json_on("/occupancy")) >= 2, 30)  # fmt: skip
    for _ in range(2):
        wait_state(rec, WATCHED, toggle(), 10)
    reports = dedupe_reports(rec.json_on("/occupancy"))
    assert_in_order(reports)
    assert len({r["boot"] for r in reports}) == 1
    assert states_of(reports, WATCHED) == ["free", *toggled]
    # a clean stop says goodbye itself (no last will needed)
    agent.send_signal(signal.SIGTERM)
    assert agent.wait(15) == 0
    rec.wait_for(lambda _m: rec.texts_on("/availability")[-1:] == ["offline"], 5)
    last = rec.json_on("/health")[-1]
    assert last["status"] == "offline"
    # no node or detector left saying "ok" in the retained health of a stopped agent
    assert last["nodes"] and all(n["status"] == "unknown" for n in last["nodes"])
    assert all(d["status"] == "unknown" for n in last["nodes"] for d in n["detectors"])
    assert all(d["raw"] is None for n in last["nodes"] for d in n["detectors"])


def test_agent_killed_and_restarted_while_broker_down_loses_nothing(
    tmp_path, subprocess_env, processes
) -> None:
    broker = persistent_broker(tmp_path)
    broker.start()
    processes.append(type("B", (), {"close": lambda self: broker.stop()})())
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    rec = Recorder(
        broker.port,
        f"{topics.site_prefix(SITE.id)}/edge/{AGENT}/occupancy",
        persistent_id="t-agent-kill",
    )
    processes.append(rec)
    spool = tmp_path / "spool"
    extra = ("--debounce-ms", "100")
    first = start_agent(broker.port, link, spool, subprocess_env, *extra)
    processes.append(first)
    wait_state(rec, WATCHED, "free", 20)
    broker.stop()
    sim.send(f"set {WATCHED} occupied")
    wait_spooled(spool, ["occupied"])
    sim.send(f"set {WATCHED} free")
    wait_spooled(spool, ["occupied", "free"])
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    sim.send(f"set {WATCHED} occupied")
    second = start_agent(broker.port, link, spool, subprocess_env, *extra)
    processes.append(second)
    # the new agent's first reading, queued behind the old run's reports
    wait_spooled(spool, ["occupied", "free", "occupied"])
    sim.send(f"set {WATCHED} free")
    wait_spooled(spool, ["occupied", "free", "occupied", "free"])
    broker.start()
    rec.wait_for(lambda _m: len({r["boot"] for r in rec.json_on("/occupancy")}) == 2 and any(r["kind"] == "snapshot" for r in rec.json_on("/occupancy")[1:]), 30)  # fmt: skip
    rec.wait_for(lambda _m: latest_state(rec, WATCHED) == "free" and len(states_of(rec.json_on("/occupancy"), WATCHED)) >= 5, 20)  # fmt: skip
    reports = dedupe_reports(rec.json_on("/occupancy"))
    assert_in_order(reports)
    boots = list(dict.fromkeys(r["boot"] for r in reports))
    assert len(boots) == 2
    old = [r for r in reports if r["boot"] == boots[0]]
    new = [r for r in reports if r["boot"] == boots[1]]
    assert states_of(old, WATCHED) == ["free", "occupied", "free"]
    # the new run's first reading (taken while the broker was down), then the change
    assert states_of(new, WATCHED) == ["occupied", "free"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bus", "bus-nowhere", "--port", "{tty}"], "no bus"),
        (["--bus", BUS, "--port", "/dev/no-such-tty"], "does not exist (--wait-for-port"),
        (["--bus", BUS], "--port"),
        (["--bus", BUS, "--port", "{tty}", "--debounce-ms", "-5"], "must not be negative"),
        # the gateway forgets a bus's readings ttl_s (15 s) after its last snapshot
        (["--bus", BUS, "--port", "{tty}", "--snapshot-interval", "60"], "at most 7.5 s"),
        (["--bus", BUS, "--port", "{tty}", "--snapshot-interval", "nan"], "must be positive"),
        (["--bus", BUS, "--port", "{tty}", "--password-env", "PG_NOT_SET_ANYWHERE"], "not set"),
        (["--bus", BUS, "--port", "{tty}"], "not a serial device"),  # a plain file
    ],
)
def test_bad_command_line_is_refused_with_exit_2(
    args: list[str], message: str, tmp_path, subprocess_env
) -> None:
    tty = tmp_path / "tty"
    tty.write_text("")  # exists; never opened because the input is refused first
    argv = [a.replace("{tty}", str(tty)) for a in args]
    # not as under systemd (INVOCATION_ID), where a missing port is waited for
    env = {
        k: v for k, v in subprocess_env.items() if k not in ("PG_NOT_SET_ANYWHERE", "INVOCATION_ID")
    }
    out = subprocess.run(
        parkguide_cmd(
            "edge",
            "serial",
            "--site",
            str(EXAMPLE_SITE),
            "--broker",
            "mqtt://127.0.0.1:1",
            "--spool-dir",
            str(tmp_path / "spool"),
            *argv,
        ),  # fmt: skip
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert out.returncode == 2, out.stderr
    assert message in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "spool").exists() or not os.listdir(tmp_path / "spool")


class ScriptedLine:
    """The far end of a real pty, answering each request with the next scripted bytes.

    For the byte-level cases the simulator does not produce on demand (another
    slave's frame, a frame cut short); the master under test reads a real tty.
    """

    def __init__(self, answers: list[bytes], echo: bool = False):
        self.answers = list(answers)
        self.echo = echo  # an RS-485 adapter without echo suppression
        self.requests: list[bytes] = []
        self.fd, slave = os.openpty()
        self.path = os.ttyname(slave)
        tty.setraw(slave)
        self._slave = slave
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        buf = b""
        while not self._stop.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.05)
            if not ready:
                continue
            try:
                buf += os.read(self.fd, 256)
            except OSError:
                return
            while len(buf) >= 8:
                self.requests.append(buf[:8])
                if self.echo:
                    os.write(self.fd, buf[:8])
                    time.sleep(0.01)  # the node's turnaround
                buf = buf[8:]
                if self.answers:
                    os.write(self.fd, self.answers.pop(0))

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        os.close(self.fd)
        os.close(self._slave)


GOOD = rtu.encode_bits_response(1, rtu.READ_DISCRETE_INPUTS, [True, False, True] + [False] * 5)


def damaged(frame: bytes) -> bytes:
    return frame[:-1] + bytes([frame[-1] ^ 0x40])


@pytest.mark.parametrize(
    ("answers", "counter"),
    [
        ([b"\xff\x00\x13" + GOOD], "garbage_bytes"),
        ([rtu.encode_bits_response(2, rtu.READ_DISCRETE_INPUTS, [True] * 8) + GOOD], "garbage_bytes"),
        ([damaged(GOOD), GOOD], "crc_errors"),
        ([GOOD[:4], GOOD], "truncated"),
        ([b"", GOOD], "timeouts"),
    ],
    ids=["garbage-in-front", "wrong-slave-first", "bad-crc-then-retry", "truncated-then-retry", "silence-then-retry"],
)  # fmt: skip
def test_master_drops_bad_frames_and_counts_them(
    answers: list[bytes], counter: str, processes
) -> None:
    line = ScriptedLine(answers)
    processes.append(line)
    master = ModbusMaster(line.path, 115200, "N", retries=2, turnaround_s=0.05)
    master.open()
    processes.append(master)
    bits = master.read_discrete_inputs(1, 0, 8)
    assert bits == [True, False, True, False, False, False, False, False]
    assert getattr(master.counters, counter) > 0
    assert master.counters.answers == 1
    assert len(line.requests) == len(answers)
    if counter == "crc_errors":  # a whole answer with a bad CRC is not a truncated one
        assert master.counters.truncated == 0


def agent_on_scripted_line(processes, answers: list[bytes], **agent_kw):  # noqa: ANN201
    """A serial agent for one 8-detector node (address 1, bits last read all free) whose
    line answers with ``answers`` in turn; returns the agent and its bus."""
    from edge.serial_agent import SerialAgent
    from parking.site import Bus, NodeController

    line = ScriptedLine(answers)
    processes.append(line)
    master = ModbusMaster(line.path, 115200, "N", retries=2, turnaround_s=0.05)
    master.open()
    processes.append(master)
    bus = Bus(
        "bus-t", 115200, "N", 15.0, (NodeController(1, 8, tuple(f"S-{i}" for i in range(8))),)
    )
    agent = SerialAgent("site", bus, "serial-bus-t", master, None, **agent_kw)
    agent.readings[1].status = [0] * 8
    return agent, bus


def test_node_health_carries_its_own_crc_errors_and_timeouts_and_says_slow(processes) -> None:
    """The contract's per-node `errors: {crc, timeouts}`, counted for the node they
    happened on; a node that needed a retry after a timeout since the last report is
    `slow`, and stays so until it has gone RELIABLE_AGAIN_S without a bad report."""
    from edge.serial_agent import RELIABLE_AGAIN_S

    later = [0.0]  # seconds the agent's clock is moved on
    agent, bus = agent_on_scripted_line(
        processes,
        [node_info(8), b"", GOOD, damaged(GOOD), GOOD, GOOD],
        clock=lambda: time.monotonic() + later[0],
    )
    agent.poll_node(bus.nodes[0])  # silence, then an answer
    agent.poll_node(bus.nodes[0])  # a bad CRC, then an answer
    (node,) = agent.health_report().nodes
    assert node.errors["timeouts"] == 1 and node.errors["crc"] == 1
    assert node.status == "slow"
    agent.poll_node(bus.nodes[0])
    (node,) = agent.health_report().nodes
    assert node.status == "slow" and node.errors["timeouts"] == 1  # one episode
    later[0] += RELIABLE_AGAIN_S + 1  # a minute on, with no bad poll since
    (node,) = agent.health_report().nodes
    assert node.status == "ok" and node.errors["timeouts"] == 1


def test_a_node_retried_for_stray_bytes_says_so(processes, caplog) -> None:
    """A late answer of a slow node lands in the next node's poll, cut off or whole: that
    node is retried and warned about. The warning counted only CRC errors and timeouts
    ("3 of 9 polls failed or needed a retry (CRC errors 0, timeouts 0, no valid answer 0)"),
    sending the technician to the wiring of a healthy node with no reason shown."""
    stray = rtu.encode_bits_response(2, rtu.READ_DISCRETE_INPUTS, [True] * 8)
    agent, bus = agent_on_scripted_line(processes, [node_info(8), GOOD[:4], GOOD, stray[:5], GOOD])
    agent.poll_node(bus.nodes[0])
    agent.poll_node(bus.nodes[0])
    with caplog.at_level("WARNING", logger="edge.serial_agent"):
        (node,) = agent.health_report().nodes
    assert node.status == "slow"
    (warning,) = [r.getMessage() for r in caplog.records if "polls failed" in r.getMessage()]
    assert "(CRC errors 0, timeouts 0, stray bytes 2, no valid answer 0)" in warning, warning
    assert "late answers of a slow node" in warning


def test_an_adapter_echoing_the_requests_is_read_through(processes, caplog) -> None:
    """An RS-485 adapter without echo suppression reads each request back before the
    answer: the echo (8 bytes, more than a short answer) was taken for a damaged answer,
    every node read dead and the log blamed the wiring. The echo is dropped, counted and
    said once."""
    line = ScriptedLine([GOOD, GOOD], echo=True)
    processes.append(line)
    master = ModbusMaster(line.path, 115200, "N", retries=2, turnaround_s=0.05)
    master.open()
    processes.append(master)
    with caplog.at_level("WARNING", logger="edge.modbus_master"):
        for _ in range(2):
            assert master.read_discrete_inputs(1, 0, 8)[:3] == [True, False, True]
    c = master.counters
    assert (c.echoes, c.answers, c.retries, c.crc_errors, c.garbage_bytes) == (2, 2, 0, 0, 0)
    assert sum("echoes the requests it sends" in r.getMessage() for r in caplog.records) == 1


def test_master_gives_up_after_retries_on_noise_only(processes) -> None:
    line = ScriptedLine([damaged(GOOD)] * 3)
    processes.append(line)
    master = ModbusMaster(line.path, 115200, "N", retries=2, turnaround_s=0.05)
    master.open()
    processes.append(master)
    with pytest.raises(ModbusTimeout):
        master.read_discrete_inputs(1, 0, 8)
    assert master.counters.crc_errors == 3 and master.counters.retries == 2
