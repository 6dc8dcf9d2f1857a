"""Serial edge agent: poll cycle against the Modbus RTU wire limit, and change-to-MQTT latency.

Prints one JSON line::

    {"bench": "serial", "results": [
        {"baud": 9600, "cycle_ms": ..., "wire_limit_ms": ..., "cycle_ratio": ..., "target_ratio": 1.2,
         "change_to_mqtt_p50_ms": ..., "change_to_mqtt_p99_ms": ...,
         "change_to_mqtt_nodebounce_p50_ms": ..., "change_to_mqtt_nodebounce_p99_ms": ...,
         "changes": N, "nodes": 8, "detectors": 32},
        {"baud": 115200, ...}],
     "note": "..."}

A bus of 8 node controllers x 32 detectors (a temporary site file), served by
the real simulator (``parkguide sim bus --wire-timing``) on a pty.

* ``cycle_ms``: median time of the agent's poll cycle (``SerialAgent.poll_cycle``:
  function 02 for all 8 nodes' occupied bits), run in this process against the
  simulator. ``wire_limit_ms``: the same 8 transactions on a real line, nothing
  else: request 8 bytes + answer 5+4 bytes, 11 bits a character (8E1), and the
  3.5-character silence Modbus RTU requires before each frame (fixed at 1.75 ms
  above 19200 baud). Targets: cycle_ms <= 1.2 x wire_limit_ms at 9600 baud,
  <= 1.5 x at 115200.
* ``change_to_mqtt_*``: from writing ``set SPACE ...`` to the simulator's stdin
  until the agent's delta for that space reaches a subscriber on a real
  mosquitto (the agent runs as ``parkguide edge serial``). It includes the
  node's debounce (300 ms) and the agent's (500 ms) by design; the
  ``nodebounce`` keys repeat it with both set to 0 (the node's through its
  holding register, the agent's with ``--debounce-ms 0``).

It starts its own mosquitto on a free port and stops everything it started.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from edge.modbus_master import ModbusMaster  # noqa: E402
from edge.serial_agent import SerialAgent  # noqa: E402
from parkguide.ports import free_port, wait_port  # noqa: E402
from parkguide.supervisor import die_with_parent, stop_on_sigterm, stop_process  # noqa: E402
from parking import modbus_rtu as rtu  # noqa: E402
from parking import registers as reg  # noqa: E402
from parking import topics  # noqa: E402
from parking.site import load_site  # noqa: E402

log = logging.getLogger("bench_serial")

NODES, DETECTORS = 8, 32
BAUDS = (9600, 115200)
TARGETS = {9600: 1.2, 115200: 1.5}
CYCLES = {9600: 25, 115200: 150}
CHANGES = 20
CHANGES_NODEBOUNCE = 20


def site_yaml() -> str:
    """One site, one bus per baud rate, 8 nodes x 32 detectors each."""
    buses, spaces = [], []
    for baud in BAUDS:
        nodes = "\n".join(
            f"      - {{address: {n}, spaces: [S{baud}-{n}-01..S{baud}-{n}-{DETECTORS}]}}"
            for n in range(1, NODES + 1)
        )
        buses.append(f"  - id: bus-{baud}\n    baud: {baud}\n    parity: E\n    nodes:\n{nodes}")
        for n in range(1, NODES + 1):
            spaces.append(
                f"  - {{ids: S{baud}-{n}-01..S{baud}-{n}-{DETECTORS}, zone: Z, kinds: [resident],"
                f" access: [L0], layout: {{origin: [0, {n * 10}], step: [2.5, 0]}}}}"
            )
    return f"""site: {{id: bench, name: {{zh: 基准, en: Bench}}}}
levels: [{{id: G, name: {{zh: 地面, en: Ground}}}}]
zones: [{{id: Z, level: G, name: {{zh: Z区, en: Zone Z}}}}]
kinds: [resident]
vehicle_classes: [{{id: resident, name: {{zh: 住户, en: Resident}}, kinds: [resident]}}]
spaces:
{chr(10).join(spaces)}
lanes:
  nodes: [{{id: L0, level: G, at: [0, 0]}}, {{id: L1, level: G, at: [100, 0]}}]
  edges: [[L0, L1]]
entrances: [{{id: gate, name: {{zh: 门, en: Gate}}, node: L0}}]
buses:
{chr(10).join(buses)}
"""


def wire_limit_ms(baud: int, nodes: int = NODES, detectors: int = DETECTORS) -> float:
    """The poll cycle on a real line: frames back to back with the required silences."""
    request = 8
    answer = 5 + (detectors + 7) // 8
    per_node = rtu.wire_time_s(request + answer, baud) + 2 * rtu.silent_interval_s(baud)
    return 1000 * nodes * per_node


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


class Simulator:
    def __init__(self, site: Path, bus: str, link: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parkguide",
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
                "--wire-timing",
            ],  # fmt: skip
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
            preexec_fn=die_with_parent,
        )
        line = self.proc.stdout.readline()
        if "linked at" not in line:
            raise RuntimeError(f"simulator did not start: {line!r}")

    def send(self, command: str) -> float:
        """Write a console command; returns the monotonic time it was written."""
        t = time.monotonic()
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        answer = self.proc.stdout.readline()
        if not answer.startswith("ok"):
            raise RuntimeError(f"{command!r} -> {answer!r}")
        return t

    def close(self) -> None:
        stop_process(self.proc)


class DeltaWatcher:
    """Subscriber that notes when each (space, state) first arrives in a delta."""

    def __init__(self, port: int, topic: str):
        self.arrived: dict[tuple[str, str], float] = {}
        self.snapshot = threading.Event()
        self.cond = threading.Condition()
        self.topic = topic
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self.client.on_connect = lambda c, *_a: c.subscribe(self.topic, qos=1)
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        now = time.monotonic()
        try:
            report = json.loads(msg.payload)
        except ValueError:
            return
        with self.cond:
            if report["kind"] == "snapshot":
                self.snapshot.set()
            for s in report["spaces"]:
                self.arrived[(s["space"], s["state"])] = now
            self.cond.notify_all()

    def wait(self, space: str, state: str, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        with self.cond:
            while (space, state) not in self.arrived:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no delta {space} -> {state} in {timeout}s")
                self.cond.wait(left)
            return self.arrived.pop((space, state))

    def forget(self) -> None:
        with self.cond:
            self.arrived.clear()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def measure_cycle(site, bus_id: str, link: Path) -> float:
    bus = site.bus(bus_id)
    master = ModbusMaster(str(link), bus.baud, bus.parity)
    master.open()
    try:
        agent = SerialAgent(site.id, bus, "bench", master, None)
        for _ in range(3):  # warm up
            agent.poll_cycle()
        times = []
        for _ in range(CYCLES[bus.baud]):
            t = time.perf_counter()
            agent.poll_cycle()
            times.append(time.perf_counter() - t)
        if master.counters.timeouts or master.counters.crc_errors:
            log.warning("cycle at %d baud: %s", bus.baud, master.counters)
        return 1000 * statistics.median(times)
    finally:
        master.close()


def set_node_debounce(site, bus_id: str, link: Path, ms: int) -> None:
    bus = site.bus(bus_id)
    master = ModbusMaster(str(link), bus.baud, bus.parity)
    master.open()
    try:
        for node in bus.nodes:
            master.execute(
                rtu.Request(node.address, rtu.WRITE_SINGLE_REGISTER, reg.HR_DEBOUNCE_MS, 1, (ms,))
            )
    finally:
        master.close()


def measure_latency(
    site_file: Path,
    site,
    bus_id: str,
    link: Path,
    sim: Simulator,
    broker_port: int,
    spool: Path,
    env: dict[str, str],
    changes: int,
    debounce_ms: int | None,
) -> list[float]:
    agent_id = f"bench-{bus_id}-{debounce_ms}"
    watcher = DeltaWatcher(broker_port, topics.edge_occupancy(site.id, agent_id))
    argv = [
        sys.executable, "-m", "parkguide", "edge", "serial", "--site", str(site_file),
        "--bus", bus_id, "--port", str(link), "--broker", f"mqtt://127.0.0.1:{broker_port}",
        "--agent", agent_id, "--spool-dir", str(spool),
    ]  # fmt: skip
    if debounce_ms is not None:
        argv += ["--debounce-ms", str(debounce_ms)]
    agent = subprocess.Popen(
        argv,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
        preexec_fn=die_with_parent,
    )
    try:
        spaces = site.spaces_of_source(bus_id)
        if not watcher.snapshot.wait(30):
            raise TimeoutError("no snapshot from the agent")
        watcher.wait(spaces[-1], "free", 15)  # every space has settled from unknown
        latencies = []
        for i in range(changes):
            space = spaces[(i * 37) % len(spaces)]
            for state in ("occupied", "free"):
                t0 = sim.send(f"set {space} {state}")
                latencies.append(1000 * (watcher.wait(space, state, 10) - t0))
        return latencies
    finally:
        agent.terminate()
        try:
            agent.wait(15)
        except subprocess.TimeoutExpired:
            agent.kill()
            agent.wait()
        watcher.close()


def main() -> int:
    stop_on_sigterm()  # a harness's timeout still stops the children and cleans up
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    tmp = Path(tempfile.mkdtemp(prefix="bench-serial-"))
    env = dict(os.environ, PYTHONUNBUFFERED="1", PARKGUIDE_LOG_LEVEL="WARNING")
    started: list = []
    try:
        site_file = tmp / "site.yaml"
        site_file.write_text(site_yaml())
        site = load_site(site_file)
        port = free_port()
        conf = tmp / "mosquitto.conf"
        conf.write_text(f"listener {port} 127.0.0.1\npersistence false\nallow_anonymous true\n")
        broker = subprocess.Popen(
            [mosquitto, "-c", str(conf)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
        started.append(broker)
        wait_port(port)
        results = []
        for baud in BAUDS:
            bus_id = f"bus-{baud}"
            link = tmp / f"{bus_id}.tty"
            sim = Simulator(site_file, bus_id, link, env)
            started.append(sim)
            cycle = measure_cycle(site, bus_id, link)
            limit = wire_limit_ms(baud)
            lat = measure_latency(
                site_file, site, bus_id, link, sim, port, tmp / "spool", env, CHANGES, None
            )
            set_node_debounce(site, bus_id, link, 0)
            lat0 = measure_latency(
                site_file, site, bus_id, link, sim, port, tmp / "spool", env, CHANGES_NODEBOUNCE, 0
            )
            sim.close()
            results.append(
                {
                    "baud": baud,
                    "cycle_ms": round(cycle, 2),
                    "wire_limit_ms": round(limit, 2),
                    "cycle_ratio": round(cycle / limit, 3),
                    "target_ratio": TARGETS[baud],
                    "change_to_mqtt_p50_ms": round(percentile(lat, 50), 1),
                    "change_to_mqtt_p99_ms": round(percentile(lat, 99), 1),
                    "change_to_mqtt_nodebounce_p50_ms": round(percentile(lat0, 50), 1),
                    "change_to_mqtt_nodebounce_p99_ms": round(percentile(lat0, 99), 1),
                    "changes": len(lat),
                    "nodes": NODES,
                    "detectors": DETECTORS,
                }
            )
        print(
            json.dumps(
                {
                    "bench": "serial",
                    "results": results,
                    "note": (
                        "change_to_mqtt includes the node's 300 ms and the agent's 500 ms "
                        "debounce by design; the nodebounce keys set both to 0. cycle_ms is the "
                        "median of SerialAgent.poll_cycle (8 nodes' occupied bits, function 02) "
                        "against the simulator with --wire-timing; wire_limit_ms counts 11-bit "
                        "characters and a 3.5-character silence (1.75 ms above 19200 baud) "
                        "before every request and answer."
                    ),
                }
            )
        )
        return 0
    finally:
        for p in reversed(started):
            if isinstance(p, subprocess.Popen):
                p.terminate()
                try:
                    p.wait(5)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            else:
                p.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
