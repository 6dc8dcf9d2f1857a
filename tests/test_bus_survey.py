"""``parkguide site bus-survey`` (edge/survey.py) against the bus simulator on a real pty:
what a technician commissioning a bus sees, and the managers' low-battery alert."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import time
from pathlib import Path

import test_serial_agent
from conftest import EXAMPLE_SITE, parkguide_cmd
from test_serial_agent import (
    AGENT,
    SITE,
    BusSimulator,
    health_round,
    in_process_agent,
    poll_until,
)

from edge.modbus_master import ModbusMaster
from edge.survey import NOTE, PROBLEM, NodeReading, judge_node, judge_stranger
from parking import registers as reg
from parking.site import NodeController
from parking.states import SpaceState

BUS = "bus-b1"  # 4 nodes x 30 detectors
processes = test_serial_agent.processes  # the fixture: everything a test starts, stopped


def survey(link: Path, env: dict[str, str], *extra: str, site: Path = EXAMPLE_SITE, timeout=60):
    return subprocess.run(
        parkguide_cmd(
            "site", "bus-survey", "--site", str(site), "--bus", BUS, "--port", str(link), *extra
        ),
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
    )


def survey_process(link: Path, env: dict[str, str], *extra: str) -> subprocess.Popen:
    """The survey running (a walk test, a scan to interrupt), its output in pipes."""
    return subprocess.Popen(
        parkguide_cmd(
            "site",
            "bus-survey",
            "--site",
            str(EXAMPLE_SITE),
            "--bus",
            BUS,
            "--port",
            str(link),
            *extra,
        ),  # fmt: skip
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_a_healthy_bus_reads_as_the_site_file_says(tmp_path, subprocess_env, processes) -> None:
    link = tmp_path / "bus.tty"
    processes.append(BusSimulator(link, subprocess_env))
    done = survey(link, subprocess_env, "--json")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["problems"] == 0 and out["answering"] == 4
    assert [n["address"] for n in out["nodes"]] == [1, 2, 3, 4]
    for node in out["nodes"]:
        assert node["answers"] and node["detectors"] == node["site_detectors"] == 30
        assert node["model"] == "0x4750" and node["firmware"] == "1.4"
        assert node["threshold"] == reg.DEFAULT_THRESHOLD and node["occupied"] == []
    text = survey(link, subprocess_env)
    assert text.returncode == 0
    assert "4 of 4 node(s) answer; 0 problem(s)" in text.stdout


def test_faults_are_named_with_their_bay_and_the_exit_status_says_so(
    tmp_path, subprocess_env, processes
) -> None:
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    sim.send("fault node 3 dead")
    sim.send("fault B1-E-005 dead")
    sim.send("battery B1-E-010 12")
    sim.send("battery B1-E-011 21")
    sim.send("set B1-E-031 occupied")
    time.sleep(0.5)  # the node's debounce
    done = survey(link, subprocess_env, "--json", "--retries", "0")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    problems = {(f["address"], f["space"]): f["text"] for f in out["findings"]}
    assert set(problems) == {(3, None), (1, "B1-E-005"), (1, "B1-E-010")}, problems
    assert "does not answer" in problems[3, None] and "--scan" in problems[3, None]
    assert "status dead" in problems[1, "B1-E-005"]
    assert "battery 12 %" in problems[1, "B1-E-010"]
    nodes = {n["address"]: n for n in out["nodes"]}
    assert not nodes[3]["answers"] and out["answering"] == 3
    assert nodes[2]["occupied"] == ["B1-E-031"]
    text = survey(link, subprocess_env, "--retries", "0")
    assert text.returncode == 1
    assert "problem: node 3 does not answer" in text.stdout
    assert "3 of 4 node(s) answer; 3 problem(s)" in text.stdout


def test_scan_finds_a_node_whose_address_is_set_wrong(tmp_path, subprocess_env, processes) -> None:
    """Node 3's address switches set to 13: the site file's node 3 is silent, and --scan
    finds a node with its detector count at 13."""
    wrong = tmp_path / "wrong.yaml"
    text = EXAMPLE_SITE.read_text()
    assert text.count("{address: 3, spaces: [B1-F-001..B1-F-030]}") == 1
    wrong.write_text(text.replace("{address: 3, spaces: [B1-F", "{address: 13, spaces: [B1-F"))
    link = tmp_path / "bus.tty"
    processes.append(BusSimulator(link, subprocess_env, site=wrong))
    done = survey(link, subprocess_env, "--json", "--scan", "--turnaround-ms", "20")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    assert [s["address"] for s in out["strangers"]] == [13]
    (stranger,) = [f for f in out["findings"] if f["address"] == 13]
    assert "30 detectors answers at address 13" in stranger["text"]
    assert "node 3 with its address switches set wrong?" in stranger["text"]


def test_watch_prints_each_bay_change_for_a_walk_test(tmp_path, subprocess_env, processes) -> None:
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    proc = survey_process(link, subprocess_env, "--watch", "6")
    processes.append(proc)
    deadline = time.monotonic() + 20
    lines = []
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        lines.append(line)
        if line.startswith("watching"):
            break
    sim.send("set B1-F-030 occupied")
    time.sleep(1.5)
    sim.send("set B1-F-030 free")
    out, err = proc.communicate(timeout=30)
    lines += out.splitlines()
    changes = [line for line in lines if "B1-F-030" in line]
    assert len(changes) == 2, (lines, err)
    assert changes[0].split()[1:] == ["B1-F-030", "occupied", "(node", "3", "detector", "29)"]
    assert changes[1].split()[2] == "free"
    assert lines[-1] == "2 bay change(s) seen"


def test_a_late_node_is_named_and_its_readings_not_trusted(
    tmp_path, subprocess_env, processes
) -> None:
    """A node answering 300 ms late with the default 100 ms turnaround: its answers to one
    read were taken for the next (status answers as raw readings, as batteries: "battery 0 %:
    replace it" for every bay). The line is drained after a timeout and the node named."""
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    sim.send("fault node 3 slow 300")
    done = survey(link, subprocess_env, "--json")
    assert done.returncode == 1, done.stderr
    out = json.loads(done.stdout)
    (late,) = out["findings"]
    assert late["address"] == 3 and "answers later than the turnaround (100 ms)" in late["text"]
    assert "--turnaround-ms 300" in late["text"]
    assert out["answering"] == 4  # the nodes after it are read right
    clean = survey(link, subprocess_env, "--json", "--turnaround-ms", "400")
    assert clean.returncode == 0, clean.stdout
    assert json.loads(clean.stdout)["problems"] == 0


def test_damaged_answers_are_noise_not_silence(tmp_path, subprocess_env, processes) -> None:
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    sim.send("fault node 2 crc 1")
    done = survey(link, subprocess_env, "--json")
    assert done.returncode == 1
    (noise,) = json.loads(done.stdout)["findings"]
    assert noise["address"] == 2 and "gives no valid answer" in noise["text"]
    assert "arrived damaged" in noise["text"] and "termination" in noise["text"]
    text = survey(link, subprocess_env)
    assert "bad CRC" in text.stdout.splitlines()[-2]  # the master's own counters


def test_a_cut_bus_is_one_finding_naming_where(tmp_path, subprocess_env, processes) -> None:
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    for address in (2, 3, 4):
        sim.send(f"fault node {address} dead")
    done = survey(link, subprocess_env, "--json", "--retries", "0")
    (cut,) = json.loads(done.stdout)["findings"]
    assert cut["text"].startswith("nodes 2-4 do not answer, and no node listed after node 1")
    assert "the cable cut past node 1" in cut["text"]


def test_an_interrupted_scan_says_so(tmp_path, subprocess_env, processes) -> None:
    link = tmp_path / "bus.tty"
    processes.append(BusSimulator(link, subprocess_env))
    proc = survey_process(link, subprocess_env, "--scan", "--json")
    processes.append(proc)
    assert "scanning" in proc.stderr.readline()
    time.sleep(2)
    proc.send_signal(signal.SIGINT)
    out, _err = proc.communicate(timeout=20)
    assert proc.returncode == 130
    doc = json.loads(out)
    assert doc["scan_complete"] is False and 4 < doc["scanned_to"] < 247


def test_a_port_lost_during_the_walk_test_is_an_error_not_a_traceback(
    tmp_path, subprocess_env, processes
) -> None:
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    proc = survey_process(link, subprocess_env, "--watch", "0")
    processes.append(proc)
    while not proc.stdout.readline().startswith("watching"):
        pass
    sim.close()  # the adapter unplugged: the pty's far end goes away
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 2, err
    assert "the port failed" in err and "Traceback" not in err


def test_the_agent_says_nodes_lost_together_in_one_line(
    tmp_path, subprocess_env, processes, caplog
) -> None:
    """Nodes 3 and 4 of bus-b1 lost at once cross into `down` in different cycles (the
    first silent one is retried): said in one line, the cut past node 2 (it had named the
    first of them as the last one answering, and said it in a second line)."""
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    agent, master = in_process_agent(link)
    processes.append(master)
    poll_until(
        agent, lambda: all(c.state is not SpaceState.UNKNOWN for c in agent.tracker.snapshot())
    )
    sim.send("fault node 3 dead")
    sim.send("fault node 4 dead")
    with caplog.at_level(logging.INFO, logger="edge.serial_agent"):
        poll_until(agent, lambda: agent.tracker.node_down(3) and agent.tracker.node_down(4))
        for _ in range(4):
            agent.poll_cycle()
        said = [r.getMessage() for r in caplog.records if "stopped answering" in r.getMessage()]
        assert said == [
            "bus bus-b1: nodes 3-4 (2 of 4) stopped answering; their spaces are unknown; no node"
            " listed after node 2 answers: the cable cut past node 2, or a trunk without power?"
        ]
        sim.send("clear all")
        poll_until(
            agent, lambda: agent.tracker.node_answering(3) and agent.tracker.node_answering(4)
        )
        back = [r.getMessage() for r in caplog.records if "answer again" in r.getMessage()]
        assert back == ["bus bus-b1: nodes 3-4 answer again"]


def test_a_port_held_by_the_agent_is_refused_clearly(tmp_path, subprocess_env, processes) -> None:
    link = tmp_path / "bus.tty"
    processes.append(BusSimulator(link, subprocess_env))
    holder = ModbusMaster(str(link), 9600, "E")
    holder.open()
    processes.append(holder)
    done = survey(link, subprocess_env)
    assert done.returncode == 2
    assert "stop the bus's agent first (systemctl stop parkguide-serial@bus-b1)" in done.stderr
    assert done.stdout == ""


NODE = NodeController(5, 4, ("X-1", "X-2", "X-3", None))


def reading(**kw) -> NodeReading:
    info = [reg.MODEL_CODE, reg.FIRMWARE_VERSION, 4, 0, 60, 0, 0, 9]
    values = {
        "info": info,
        "settings": [reg.DEFAULT_THRESHOLD, reg.DEFAULT_NODE_DEBOUNCE_MS],
        "status": [0, 0, 0, 0],
        "raw": [40, 900, 60, 50],
        "battery": [90, reg.BATTERY_WIRED, 80, 70],
        "bits": [False, True, False, False],
    }
    return NodeReading(5, **(values | kw))


def test_judging_a_node_reading() -> None:
    assert judge_node(NODE, reading()) == []
    # a reading near the threshold is a note; on a spare channel nothing
    (marginal,) = judge_node(NODE, reading(raw=[40, 900, 330, 420]))
    assert marginal.severity == NOTE and marginal.space == "X-3" and "330" in marginal.text
    # batteries: at the limit a problem, just above nothing, wired nothing, nonsense a note
    low = judge_node(NODE, reading(battery=[20, 21, reg.BATTERY_WIRED, 300]))
    assert [(f.severity, f.detector) for f in low] == [(PROBLEM, 0), (NOTE, 3)]
    # a faulty detector is named by its status, not by its battery
    (stuck,) = judge_node(NODE, reading(status=[1, 0, 0, 0], battery=[5, 90, 90, 90]))
    assert "status stuck" in stuck.text
    slow = judge_node(NODE, reading(settings=[500, 600]))
    assert [f.severity for f in slow] == [NOTE, PROBLEM]
    assert "threshold is 500" in slow[0].text and "1000 ms" in slow[1].text
    assert judge_node(NODE, reading(settings=[400, 600]), agent_debounce_ms=400) == []
    noisy = judge_node(NODE, reading(info=[reg.MODEL_CODE, 0x104, 4, 0, 60, 12, 1, 9]))
    assert noisy[0].severity == NOTE and "12 frame(s) with a bad CRC" in noisy[0].text
    # another bus's node (8 detectors) on this address: that, and nothing about its bays
    (foreign,) = judge_node(NODE, reading(info=[reg.MODEL_CODE, 0x104, 8, 0, 1, 0, 0, 1]))
    assert foreign.severity == PROBLEM and "8 detectors" in foreign.text
    (silent,) = judge_node(NODE, NodeReading(5, error="does not answer"))
    assert silent.text.startswith("node 5 does not answer (no power") and "--scan" in silent.text
    (scanned,) = judge_node(NODE, NodeReading(5, error="does not answer"), scanned=True)
    assert "switches are not set to 5)" in scanned.text and "--scan" not in scanned.text
    (noisy,) = judge_node(NODE, NodeReading(5, error="does not answer", damaged=3))
    assert "3 answer(s) arrived damaged" in noisy.text
    (late,) = judge_node(NODE, reading(late_bytes=9, battery=[0, 0, 0, 0]), turnaround_ms=50)
    assert "later than the turnaround (50 ms)" in late.text and "--turnaround-ms 300" in late.text


def test_judging_a_stranger_on_the_bus() -> None:
    bus = SITE.bus(BUS)
    other = NodeReading(99, info=[0x1234, 0, 0, 0, 0, 0, 0, 0])
    assert "not a parkguide node controller (model 0x1234)" in judge_stranger(bus, other, []).text
    refused = NodeReading(99, refused=["exception 1"])
    assert "not a parkguide node controller answers" in judge_stranger(bus, refused, []).text
    ours = NodeReading(40, info=[reg.MODEL_CODE, 0x104, 30, 0, 1, 0, 0, 1])
    assert "switches" not in judge_stranger(bus, ours, []).text
    assert "node 2 or 4 with its address" in judge_stranger(bus, ours, [2, 4]).text


def test_a_low_battery_reaches_the_managers_alerts(tmp_path, subprocess_env, processes) -> None:
    """A wireless detector's battery at 12 %: the agent's health carries it and the managers
    get a warning naming the bay, before the detector dies and the bay turns unknown."""
    from api.alerts import derive_alerts
    from gateway.readside import AgentStatus

    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    processes.append(sim)
    sim.send("battery B1-E-010 12")
    sim.send("battery B1-E-011 wired")
    agent, master = in_process_agent(link)
    processes.append(master)
    poll_until(
        agent, lambda: all(c.state is not SpaceState.UNKNOWN for c in agent.tracker.snapshot())
    )
    for _ in range(2 * 6):  # batteries are read along every few rounds
        health_round(agent)
        health = agent.health_report()
        batteries = {d.space: d.battery for n in health.nodes for d in n.detectors}
        if batteries["B1-E-010"] is not None:
            break
    assert batteries["B1-E-010"] == 12 and batteries["B1-E-011"] is None
    now = time.time()
    alerts = derive_alerts([], [AgentStatus(AGENT, True, now, health)], now, 72 * 3600)
    (low,) = [a for a in alerts if a.kind == "battery_low"]
    assert low.id == "battery_low:bus-b1/1/9" and low.details["space"] == "B1-E-010"
    assert low.severity == "warning" and "replace it" in low.message(72)[1]
    sim.send("battery B1-E-010 100")
    for _ in range(2 * 6):
        health_round(agent)
        health = agent.health_report()
        if {d.space: d.battery for n in health.nodes for d in n.detectors}["B1-E-010"] == 100:
            break
    now = time.time()
    alerts = derive_alerts([], [AgentStatus(AGENT, True, now, health)], now, 72 * 3600)
    assert not [a for a in alerts if a.kind == "battery_low"]


def test_a_battery_alert_ends_only_once_the_battery_is_replaced() -> None:
    """A cell reads a few percent higher warm than cold: at 20 % by night and 21 % by day, the
    alert ended each morning and began again each night, its acknowledgement ("battery
    ordered") lost each time. Once open, it stays open until the battery reads 30 %."""
    from api.alerts import BATTERY_REPLACED_PERCENT, derive_alerts
    from gateway.readside import AgentStatus
    from parking.payloads import DetectorHealth, HealthReport, NodeHealth

    def alerts(battery: int, open_ids: set[str], status: str = "ok") -> list[str]:
        detector = DetectorHealth(index=9, space="B1-E-010", status=status, battery=battery)
        node = NodeHealth(address=1, status="ok", detectors=[detector])
        health = HealthReport(agent=AGENT, source=BUS, ts=time.time(), nodes=[node])
        now = time.time()
        found = derive_alerts(
            [], [AgentStatus(AGENT, True, now, health)], now, 72 * 3600, open_ids=open_ids
        )
        return [a.id for a in found]

    aid = "battery_low:bus-b1/1/9"
    assert alerts(20, set()) == [aid]
    assert alerts(21, set()) == []  # not low enough to begin
    assert alerts(21, {aid}) == [aid]  # nor high enough to end
    assert alerts(BATTERY_REPLACED_PERCENT - 1, {aid}) == [aid]
    assert alerts(BATTERY_REPLACED_PERCENT, {aid}) == []
    # a dying detector flapping a while: both, the battery episode (and its acknowledgement)
    # kept through the flapping
    flapping = "detector_flapping:bus-b1/1/9"
    assert alerts(18, {aid}, "flapping") == [flapping, aid]
    assert alerts(24, {aid, flapping}) == [aid]
