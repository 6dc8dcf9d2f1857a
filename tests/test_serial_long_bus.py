"""A long bus: many nodes lost at once (a cable cut after node 1), end to end.

The real bus simulator on a pty, the agent as a process, a real mosquitto; the site file
is the example one with bus-g cut into 20 nodes of 8 detectors (the last one 30 of 32), and
its ``ttl_s`` short so that the test does not take minutes.
"""

from __future__ import annotations

import time
from pathlib import Path

import yaml
from conftest import EXAMPLE_SITE
from edge_support import Recorder
from test_serial_agent import (
    BusSimulator,
    latest_state,
    poll_until,
    processes,  # noqa: F401 (the fixture)
    start_agent,
    wait_state,
)

from edge.modbus_master import ModbusMaster
from edge.serial_agent import SerialAgent
from parking import topics
from parking.site import load_site
from parking.states import SpaceState

LONG_BUS = "bus-g"
TTL_S = 4.5  # a snapshot every 1.5 s; a cycle over 1.5 s is warned about


class TimedRecorder(Recorder):
    """A Recorder that also keeps when each message arrived (monotonic)."""

    def __init__(self, *args, **kw) -> None:
        self.arrived: list[tuple[float, str]] = []
        super().__init__(*args, **kw)

    def _on_message(self, client, userdata, msg) -> None:
        with self.cond:
            self.arrived.append((time.monotonic(), msg.topic))
        super()._on_message(client, userdata, msg)


def long_bus_site(tmp_path: Path) -> Path:
    """The example site with bus-g as 20 nodes: A and B rows 8 bays a node, then zone D."""
    doc = yaml.safe_load(EXAMPLE_SITE.read_text())
    nodes = [
        {"address": i + 1, "spaces": [f"A-{8 * i + 1:03d}..A-{8 * i + 8:03d}"]} for i in range(10)
    ]
    nodes += [
        {"address": 11 + i, "spaces": [f"B-{8 * i + 1:03d}..B-{8 * i + 8:03d}"]} for i in range(9)
    ]
    nodes.append({"address": 20, "detectors": 32, "spaces": ["D-001..D-030"]})
    (bus,) = [b for b in doc["buses"] if b["id"] == LONG_BUS]
    bus.update(nodes=nodes, ttl_s=TTL_S)
    path = tmp_path / "site.yaml"
    path.write_text(yaml.safe_dump(doc, allow_unicode=True))
    return path


def test_a_cut_cable_makes_the_lost_bays_unknown_within_a_cycle_and_never_stale_past_ttl(
    mosquitto,
    tmp_path,
    subprocess_env,
    processes,  # noqa: F811 (the fixture)
) -> None:
    """Seen with 31 of 32 nodes lost: a node went down only after three failed polls (three
    cycles), each failed poll cost three timeouts, so the lost bays stayed `free` for 22-34 s
    and the snapshots, sent only between cycles, came 22-30 s apart: past the bus's ttl_s,
    the gateway would have turned node 1's healthy bays unknown too."""
    site_path = long_bus_site(tmp_path)
    site = load_site(site_path)
    bus = site.bus(LONG_BUS)
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env, site=site_path, bus=LONG_BUS)
    processes.append(sim)
    agent_id = f"serial-{LONG_BUS}"
    rec = TimedRecorder(mosquitto.port, f"{topics.site_prefix(site.id)}/edge/{agent_id}/#")
    processes.append(rec)
    spool = tmp_path / "spool"
    agent = start_agent(
        mosquitto.port, link, spool, subprocess_env, "--health-interval", "2",
        site=site_path, bus=LONG_BUS,
    )  # fmt: skip
    processes.append(agent)
    healthy = [s for s in bus.nodes[0].spaces if s]
    lost = [s for n in bus.nodes[1:] for s in n.spaces if s]
    for space in healthy + lost:
        wait_state(rec, space, "free", 20)

    cut = time.monotonic()
    for node in bus.nodes[1:]:
        sim.send(f"fault node {node.address} dead")
    rec.wait_for(lambda _m: all(latest_state(rec, s) == "unknown" for s in lost), 30)
    took = time.monotonic() - cut
    # the node timeout (1.5 s) and a cycle (~2.5 s: two nodes with retries, the rest once)
    assert took < 6.0, f"the lost bays took {took:.1f} s to turn unknown"
    time.sleep(3 * TTL_S)  # the bus as it stays: node 1 alone answering
    with rec.cond:
        reports = [t for t, topic in rec.arrived if topic.endswith("/occupancy") and t >= cut]
    gaps = [b - a for a, b in zip(reports, reports[1:], strict=False)]
    assert max(gaps) < TTL_S / 2, f"reports {max(gaps):.1f} s apart, the bus's ttl_s {TTL_S}"
    assert all(latest_state(rec, s) == "free" for s in healthy)
    rec.wait_for(lambda _m: rec.json_on("/health")[-1]["counters"]["cycle_ms"] > 1500, 10)
    log = (tmp_path / "agent.log").read_text()
    assert log.count("more than a third of the bus's ttl_s") == 1, log
    # the lost nodes are said together (31 lines, one a node, before), those asked without
    # retries too, with where the bus looks cut
    said = [line for line in log.splitlines() if "stopped answering" in line]
    assert 1 <= len(said) <= 2, said
    named = [a for line in said for a in named_addresses(line)]
    assert sorted(named) == [n.address for n in bus.nodes[1:]], said
    first = bus.nodes[0].address
    assert f"no node listed after node {first} answers: the cable cut past node {first}" in said[-1]


def named_addresses(line: str) -> list[int]:
    """The node addresses a "nodes 2-9, 12 (...) stopped answering" line names."""
    words = line.split("nodes ", 1)[1].split(" (", 1)[0]
    out: list[int] = []
    for part in words.split(", "):
        lo, _, hi = part.partition("-")
        out += range(int(lo), int(hi or lo) + 1)
    return out


def test_a_stuck_detector_on_a_long_bus_is_unknown_within_the_health_interval(
    mosquitto,
    tmp_path,
    subprocess_env,
    processes,  # noqa: F811 (the fixture)
) -> None:
    """A stuck detector keeps its bit: only its status tells. With one status read a cycle, a
    round of statuses on a long bus took far longer than --health-interval (32 nodes: ~33 s;
    a stuck detector stayed `free` 30-125 s) and health was published as seldom. Statuses
    are now read as many a cycle as the round needs to end within the interval."""
    interval = 2.0
    site_path = long_bus_site(tmp_path)
    site = load_site(site_path)
    bus = site.bus(LONG_BUS)
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env, "--wire-timing", site=site_path, bus=LONG_BUS)
    processes.append(sim)
    agent_id = f"serial-{LONG_BUS}"
    rec = TimedRecorder(mosquitto.port, f"{topics.site_prefix(site.id)}/edge/{agent_id}/#")
    processes.append(rec)
    agent = start_agent(
        mosquitto.port, link, tmp_path / "spool", subprocess_env,
        "--health-interval", str(interval), site=site_path, bus=LONG_BUS,
    )  # fmt: skip
    processes.append(agent)
    for space in (s for n in bus.nodes for s in n.spaces if s):
        wait_state(rec, space, "free", 30)

    stuck = bus.nodes[-2].spaces[0]  # its status comes late in a round
    start = time.monotonic()
    sim.send(f"fault {stuck} stuck")
    wait_state(rec, stuck, "unknown", 60)
    took = time.monotonic() - start
    assert took < 2 * interval + 1, f"a stuck detector took {took:.1f} s to turn unknown"
    time.sleep(4 * interval)
    with rec.cond:
        health = [t for t, topic in rec.arrived if topic.endswith("/health") and t >= start]
    gaps = [b - a for a, b in zip(health, health[1:], strict=False)]
    assert gaps and max(gaps) < 2 * interval, f"health {gaps} s apart, interval {interval} s"


def test_health_reads_do_not_stall_a_cut_bus(tmp_path, subprocess_env, processes) -> None:  # noqa: F811 (the fixture)
    """The nodes of a cut cable not yet polled since the cut still count as answering: a
    round's status reads went to each with its retry (at --turnaround-ms 300, 4-5 s without
    a poll or a snapshot). A read with no answer ends the cycle's health reads."""
    site_path = long_bus_site(tmp_path)
    bus = load_site(site_path).bus(LONG_BUS)
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env, site=site_path, bus=LONG_BUS)
    processes.append(sim)
    master = ModbusMaster(str(link), bus.baud, bus.parity)
    master.open()
    processes.append(master)
    agent = SerialAgent("site", bus, "serial-bus-g", master, None, health_interval_s=0.0)
    poll_until(
        agent, lambda: all(c.state is not SpaceState.UNKNOWN for c in agent.tracker.snapshot())
    )
    for node in bus.nodes[1:]:
        sim.send(f"fault node {node.address} dead")
    start = time.monotonic()
    agent.health_step()  # every status of the round due at once (an interval of 0)
    took = time.monotonic() - start
    # one read and its retry, not 19 of them (some 4.4 s)
    assert took < 2 * 2 * master.timing.first_byte_timeout_s(8), f"health reads took {took:.1f} s"
