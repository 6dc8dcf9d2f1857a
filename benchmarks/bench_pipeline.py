"""Edge report -> gateway -> sign content, against a trivial relay, through one real mosquitto.

Prints one JSON line::

    {"bench": "pipeline", "results": [{"rate": 1000, "p50_ms": ..., "p99_ms": ...,
      "relay_p50_ms": ..., "relay_p99_ms": ..., "reports": ..., "lost": ..., "cpu_pct": ...,
      "relay_cpu_pct": ...}, {"rate": 10000, ...}],
     "max_rate_p99_under_100ms": ..., "steps": [{"rate": ..., "p50_ms": ..., "p99_ms": ...}, ...]}

Setup: one mosquitto on a free port (``set_tcp_nodelay true``, inflight and queue limits
raised; the same broker and settings for the relay and the gateway: without it Nagle's
algorithm on the broker's sockets adds ~20 ms to any client that gets several messages
back to back, as the gateway does); the gateway (``parkguide gateway`` on the example
site, a fresh temporary journal: every report is committed before anything derived
from it is published) and the relay (a paho client that subscribes and republishes
the same bytes, nothing else) each run as their own process; the load generator and
the receiving subscriber run in this process and share one clock.

Load: an edge agent for bus ``bus-g`` (zones A, B, D) publishes delta reports at a fixed
report rate, each carrying ``batch`` space changes (10 per report at 1,000 changes/s,
50 at 5,000-10,000, 100 above): exactly one change flips a resident space of zone A
(a free space taken, or an occupied one freed, so zone A's count ramps down from 78 to
20 and back up by one per report), the others flip zone B and D spaces round-robin. So
every report changes the first line of sign ``gate-north`` ("A区 Zone A": resident free
spaces in zone A) by exactly one.

Marker: the count on that line. Report k is matched to the first ``gate-north`` content
whose count equals the count report k leads to, in order; a content equal to the
previous count (an expiry refresh) is skipped. When reports queue up, the gateway
journals and publishes them as one batch, so the sign may skip counts: a report whose
count was skipped is visible with the later content that includes it, and its latency
is measured to that content. A report is lost when it is not in the gateway's journal once
the phase has drained (the journal is the record: at high rates a count repeats within one
batch, so the signs cannot tell a skipped report from a lost one). The latency is from just
before the report is published to
the arrival of the sign content. The relay gets the same report sequence on its own
input topic and is matched by its ``seq``. The first 10% of each phase is warm-up and
not counted.

Headline rates (1,000 and 10,000 changes/s) run ``ROUNDS`` rounds of a relay phase then a
gateway phase, ``PHASE_S`` each, and pool each side's latencies: the two are measured
interleaved, under the same background load of this shared machine, and a p99 rests on
~1,000 reports per side at 1,000 changes/s instead of a few hundred (with 360, the p99
is the fourth-worst report, and one scheduling hiccup of either process decides the
ratio). Warm-up (the first 10 % of every phase) is dropped per phase.

``max_rate_p99_under_100ms``: rates are stepped up (1,000, 2,000, 5,000, 10,000,
20,000, 40,000, 80,000 changes/s) until the gateway's p99 reaches 100 ms or a report
is lost; the highest rate below is reported. Finishes well within 4 minutes.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import numpy as np
import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from parkguide.ports import free_port, wait_port  # noqa: E402
from parkguide.supervisor import die_with_parent, stop_on_sigterm, stop_process  # noqa: E402
from parking import topics  # noqa: E402
from parking.site import EXAMPLE_SITE, load_site  # noqa: E402

T = TypeVar("T")

PHASE_S = 4.0
ROUNDS = 3  # interleaved relay/gateway rounds per headline rate
WARMUP = 0.1
DRAIN_S = 10.0  # after a phase, how long the last report may take before the rest count lost
MAX_LATENCY_MS = 100.0
HEADLINE_RATES = (1000, 10000)
STEP_RATES = (1000, 2000, 5000, 10000, 20000, 40000, 80000)
RELAY_IN, RELAY_OUT = "bench/relay/in", "bench/relay/out"
AGENT, SOURCE, BOOT = "serial-bus-g", "bus-g", "bench-boot"  # bus-g's agent (site file)

RELAY_SOURCE = """
import sys
import paho.mqtt.client as mqtt
port, tin, tout = int(sys.argv[1]), sys.argv[2], sys.argv[3]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-relay")
c.max_inflight_messages_set(10000)
def on_connect(client, userdata, flags, rc, props):
    client.subscribe(tin, 1)
def on_subscribe(client, userdata, mid, rcs, props):
    print("ready", flush=True)
def on_message(client, userdata, msg):
    client.publish(tout, msg.payload, qos=1)
c.on_connect, c.on_subscribe, c.on_message = on_connect, on_subscribe, on_message
c.connect("127.0.0.1", port)
c.loop_forever()
"""


def batch_for(rate: int) -> int:
    return 10 if rate <= 1000 else 20 if rate <= 2000 else 50 if rate <= 10000 else 100


class EdgeModel:
    """The bench's own copy of bus-g's states, so it knows what every report will do."""

    def __init__(self, site):
        ids = site.spaces_of_source(SOURCE)
        resident_a = [
            s for s in ids if site.space(s).zone == "A" and "resident" in site.space(s).kinds
        ]
        self.zone_a = resident_a
        self.others = [s for s in ids if site.space(s).zone != "A"]
        self.all = ids
        self.state = {s: "free" for s in ids}
        self.a_free = len(resident_a)
        self.top = len(resident_a)
        self.low = 20
        self.down = True
        self.cursor = 0
        self.seq = 0

    def snapshot(self) -> bytes:
        self.seq += 1
        now = time.time()
        return json.dumps(
            {
                "agent": AGENT,
                "source": SOURCE,
                "boot": BOOT,
                "seq": self.seq,
                "ts": now,
                "kind": "snapshot",
                "spaces": [{"space": s, "state": self.state[s], "since": now} for s in self.all],
            }
        ).encode()

    def next_report(self, batch: int) -> tuple[bytes, int, int]:
        """(payload, seq, zone A resident free count after it)."""
        if self.down and self.a_free <= self.low:
            self.down = False
        elif not self.down and self.a_free >= self.top:
            self.down = True
        want = "free" if self.down else "occupied"
        a_space = next(s for s in self.zone_a if self.state[s] == want)
        changes = {a_space: "occupied" if self.down else "free"}
        self.a_free += -1 if self.down else 1
        for _ in range(batch - 1):
            s = self.others[self.cursor % len(self.others)]
            self.cursor += 1
            changes[s] = "occupied" if self.state[s] == "free" else "free"
        self.state.update(changes)
        self.seq += 1
        now = time.time()
        body = json.dumps(
            {
                "agent": AGENT,
                "source": SOURCE,
                "boot": BOOT,
                "seq": self.seq,
                "ts": now,
                "kind": "delta",
                "spaces": [{"space": s, "state": st, "since": now} for s, st in changes.items()],
            }
        ).encode()
        return body, self.seq, self.a_free


class Receiver:
    """Subscriber recording arrival times of sign contents and relayed reports."""

    def __init__(self, port: int, sign_topic: str):
        self.sign_topic = sign_topic
        self.signs: list[tuple[float, int | None]] = []
        self.relayed: list[tuple[float, int]] = []
        self.lock = threading.Lock()
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-receiver")
        self.client.max_inflight_messages_set(10000)
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe(
            [(sign_topic, 1), (RELAY_OUT, 1)]
        )
        self.client.on_subscribe = lambda *a: self.ready.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        if not self.ready.wait(10):
            raise TimeoutError("receiver did not subscribe")

    def _on_message(self, client, userdata, msg) -> None:
        t = time.perf_counter()
        if msg.topic == RELAY_OUT:
            seq = json.loads(msg.payload)["seq"]
            with self.lock:
                self.relayed.append((t, seq))
        else:
            count = json.loads(msg.payload)["lines"][0]["count"]
            with self.lock:
                self.signs.append((t, count))

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def publisher(port: int) -> mqtt.Client:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-edge")
    c.max_inflight_messages_set(10000)
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def paced(client: mqtt.Client, topic: str, model: EdgeModel, rate: int, seconds: float):
    """Publish reports at ``rate`` changes/s for ``seconds``: [(seq, expected count, t_pub)]."""
    batch = batch_for(rate)
    interval = batch / rate
    n = max(1, int(seconds / interval))
    sent = []
    start = time.perf_counter()
    for k in range(n):
        target = start + k * interval
        delay = target - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        body, seq, count = model.next_report(batch)
        t = time.perf_counter()
        client.publish(topic, body, qos=1)
        sent.append((seq, count, t))
    return sent


def match_signs(sent, signs) -> tuple[list[float], int]:
    """Latencies (s) of reports matched to sign contents by the count marker; lost count.

    When reports queue up the gateway journals and publishes them together, so the sign
    may jump over the counts of reports handled in the same batch. A content with count
    c arriving at t reflects the earliest report j >= the next unmatched one that leads
    to c and was published before t (the gateway works in order); reports up to j are
    then visible, each with its latency measured to this content.
    """
    lat = []
    i = 0
    prev = None
    for t, count in signs:
        if i >= len(sent):
            break
        if count == prev:
            continue  # an expiry refresh of the content already matched
        j = i
        while j < len(sent) and sent[j][2] < t and sent[j][1] != count:
            j += 1
        if j < len(sent) and sent[j][2] < t:
            lat.extend(t - sent[k][2] for k in range(i, j + 1))
            prev = count
            i = j + 1
    return lat, len(sent) - i


def match_relay(sent, relayed) -> tuple[list[float], int]:
    by_seq = {seq: t for seq, _, t in sent}
    lat = [t - by_seq[seq] for t, seq in relayed if seq in by_seq]
    return lat, len(sent) - len(lat)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (Linux /proc), or None elsewhere."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """A process's CPU time over the phases measured with it, as a share of their wall time."""

    def __init__(self, pid: int):
        self.pid, self.cpu, self.wall = pid, 0.0, 0.0
        self.measured = False  # /proc answered (Linux)

    def measure(self, phase: Callable[[], T]) -> T:
        c0, t0 = cpu_seconds(self.pid), time.monotonic()
        result = phase()
        c1 = cpu_seconds(self.pid)
        self.wall += time.monotonic() - t0
        if c0 is not None and c1 is not None:
            self.cpu += c1 - c0
            self.measured = True
        return result

    def percent(self) -> float | None:
        return round(100 * self.cpu / self.wall, 1) if self.measured and self.wall else None


def warm(lat: list[float]) -> list[float]:
    """A phase's latencies without its warm-up."""
    return lat[int(len(lat) * WARMUP) :] or lat


def stats(lat: list[float]) -> tuple[float | None, float | None]:
    """p50, p99 in ms of latencies already without warm-up."""
    if not lat:
        return None, None
    arr = np.array(lat) * 1000
    return round(float(np.percentile(arr, 50)), 3), round(float(np.percentile(arr, 99)), 3)


def wait_until(done, timeout: float) -> None:
    """Wait until ``done()`` (the last report is through) or the timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done():
        time.sleep(0.05)


def run_relay_phase(pub, recv, rate: int, model: EdgeModel):
    with recv.lock:
        recv.relayed.clear()
    sent = paced(pub, RELAY_IN, model, rate, PHASE_S)

    last_seq = sent[-1][0]

    def done():
        with recv.lock:
            return any(seq == last_seq for _, seq in recv.relayed[-5:])

    wait_until(done, DRAIN_S)
    with recv.lock:
        relayed = list(recv.relayed)
    return match_relay(sent, relayed)


def journaled_seqs(journal: Path, first: int) -> set[int]:
    """Seq numbers from ``first`` on of the bench agent's reports the gateway has committed:
    its journal's packed rows not yet expanded, and the expanded events."""
    with contextlib.closing(sqlite3.connect(f"{journal.as_uri()}?mode=ro", uri=True)) as db:
        rows = db.execute(
            "SELECT seq FROM pending_changes WHERE agent = ? AND seq >= ?"
            " UNION SELECT seq FROM events WHERE agent = ? AND seq >= ?",
            (AGENT, first, AGENT, first),
        ).fetchall()
    return {r[0] for r in rows}


def run_gateway_phase(pub, recv, rate: int, model: EdgeModel, site_id: str, journal: Path):
    """(latencies of the reports the signs show, reports lost, reports sent). Lost: not in
    the journal once the phase has drained (the journal is the record: a sign may skip a
    report's count when it is published in one batch with later ones, and at high rates
    a count repeats within a batch, so the signs cannot tell a skipped report from a lost
    one)."""
    with recv.lock:
        recv.signs.clear()
    sent = paced(pub, topics.edge_occupancy(site_id, AGENT), model, rate, PHASE_S)

    last_count = sent[-1][1]

    def done():
        with recv.lock:
            return bool(recv.signs) and recv.signs[-1][1] == last_count

    wait_until(done, DRAIN_S)
    wait_until(lambda: sent[-1][0] in journaled_seqs(journal, sent[-1][0]), DRAIN_S)
    with recv.lock:
        signs = list(recv.signs)
    lat, _ = match_signs(sent, signs)
    journaled = journaled_seqs(journal, sent[0][0])
    return lat, sum(1 for seq, _, _ in sent if seq not in journaled), len(sent)


def main() -> int:
    stop_on_sigterm()  # a harness's timeout still stops the children and cleans up
    site = load_site(EXAMPLE_SITE)
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    tmp = Path(tempfile.mkdtemp(prefix="bench-pipeline-"))
    journal = tmp / "journal.db"
    port = free_port()
    conf = tmp / "mosquitto.conf"
    # the same generous limits for the relay and the gateway
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
        "max_inflight_messages 10000\nmax_queued_messages 100000\nset_tcp_nodelay true\n"
    )
    procs: list[subprocess.Popen] = []
    env = dict(os.environ, PARKGUIDE_LOG_LEVEL="WARNING")
    clients: list = []
    gw_log = None
    try:
        procs.append(
            subprocess.Popen(
                [mosquitto, "-c", str(conf)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                preexec_fn=die_with_parent,
            )
        )
        wait_port(port)
        relay = subprocess.Popen(
            [sys.executable, "-c", RELAY_SOURCE, str(port), RELAY_IN, RELAY_OUT],
            stdout=subprocess.PIPE,
            env=env,
            preexec_fn=die_with_parent,
        )
        procs.append(relay)
        gw_log = (tmp / "gateway.log").open("wb")
        gateway = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "parkguide",
                "gateway",
                "--site",
                str(EXAMPLE_SITE),
                "--broker",
                f"mqtt://127.0.0.1:{port}",
                "--db",
                str(journal),
            ],
            stdout=gw_log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=ROOT,
            preexec_fn=die_with_parent,
        )
        procs.append(gateway)
        if relay.stdout.readline().strip() != b"ready":
            raise RuntimeError("relay did not start")
        sign_topic = topics.display_content(site.id, "gate-north")
        recv = Receiver(port, sign_topic)
        clients.append(recv)
        pub = publisher(port)
        clients.append(pub)
        model = EdgeModel(site)  # what the gateway has been told
        relay_model = EdgeModel(site)  # the same kind of reports, for the relay
        # the gateway is ready when the initial snapshot shows on the sign
        deadline = time.monotonic() + 60
        while True:
            pub.publish(topics.edge_occupancy(site.id, AGENT), model.snapshot(), qos=1)
            time.sleep(0.5)
            with recv.lock:
                if any(c == model.a_free for _, c in recv.signs):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the gateway did not come up; see {tmp / 'gateway.log'}")
        results = []
        steps = {}
        for rate in HEADLINE_RATES:
            r_lat, g_lat, r_lost, g_lost, g_reports = [], [], 0, 0, 0
            relay_cpu, gateway_cpu = CpuMeter(relay.pid), CpuMeter(gateway.pid)
            for _ in range(ROUNDS):
                lat, lost = relay_cpu.measure(
                    lambda: run_relay_phase(pub, recv, rate, relay_model)  # noqa: B023
                )
                r_lat, r_lost = r_lat + warm(lat), r_lost + lost
                lat, lost, n = gateway_cpu.measure(
                    lambda: run_gateway_phase(pub, recv, rate, model, site.id, journal)  # noqa: B023
                )
                g_lat, g_lost = g_lat + warm(lat), g_lost + lost
                g_reports += n
            p50, p99 = stats(g_lat)
            rp50, rp99 = stats(r_lat)
            results.append(
                {
                    "rate": rate,
                    "p50_ms": p50,
                    "p99_ms": p99,
                    "relay_p50_ms": rp50,
                    "relay_p99_ms": rp99,
                    "reports": g_reports,
                    "lost": g_lost,
                    "relay_lost": r_lost,
                    "p99_ratio": round(p99 / rp99, 2) if p99 and rp99 else None,
                    # CPU time over the phases' wall time, in % of one core
                    "cpu_pct": gateway_cpu.percent(),
                    "relay_cpu_pct": relay_cpu.percent(),
                }
            )
            steps[rate] = (p50, p99, g_lost)
        max_rate = 0
        for rate in STEP_RATES:
            if rate not in steps:
                g_lat, g_lost, _ = run_gateway_phase(pub, recv, rate, model, site.id, journal)
                p50, p99 = stats(warm(g_lat))
                steps[rate] = (p50, p99, g_lost)
            p50, p99, lost = steps[rate]
            if p99 is None or p99 >= MAX_LATENCY_MS or lost:
                break
            max_rate = rate
        out = {
            "bench": "pipeline",
            "results": results,
            "max_rate_p99_under_100ms": max_rate,
            "steps": [
                {"rate": r, "p50_ms": v[0], "p99_ms": v[1], "lost": v[2]}
                for r, v in sorted(steps.items())
            ],
        }
        print(json.dumps(out), flush=True)
        return 0
    finally:
        for c in clients:
            try:
                (c.stop if isinstance(c, Receiver) else c.disconnect)()
                if not isinstance(c, Receiver):
                    c.loop_stop()
            except Exception:  # best effort at exit; the processes are stopped below anyway
                pass
        for p in reversed(procs):
            stop_process(p)
        if gw_log is not None:
            gw_log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
