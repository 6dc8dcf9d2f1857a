"""kill -9 and restart of the gateway at a large site: time to its first sign.

Prints one JSON line::

    {"bench": "restart", "spaces": 20000, "displays": 108, "runs": 4,
     "first_sign_s": ..., "first_sign_all_s": [...],
     "baseline_no_stamp_s": ..., "baseline_no_stamp_all_s": [...],
     "first_sign_pending_s": ..., "first_sign_pending_all_s": [...],
     "baseline_pending_no_cache_s": ..., "baseline_pending_no_cache_all_s": [...]}

Setup: a synthetic site written by ``big_site`` (the shape of a large community: 4 levels
of 10 zones of 500 spaces, an aisle lane graph with ramps, 8 gates, one RS-485 bus per zone,
108 signs), a real mosquitto on a free port and ``parkguide gateway`` as a subprocess on a
temporary journal. Every bus reports a snapshot, so the journal has signs, agents heard
recently and nothing pending; then the gateway is killed with SIGKILL and started again.

``first_sign_s`` (median) is the wall time from just before the restart's exec to the first
live (not retained) ``displays/+/content`` message a subscriber receives: the journal's
signs, republished before the site file is parsed because its stamp (``JOURNAL.site-ok``,
gateway.site_stamp) says these bytes passed before. ``baseline_no_stamp_s`` is the same
restart, interleaved in the same run, with the stamp deleted first: the site file is
parsed and validated before anything is published, as without the stamp.

``first_sign_pending_s`` is a restart after a kill while changes wait in the journal (a
burst of one-space deltas, a pause, a last few deltas and the kill as soon as the first of
those is journaled; the bench checks that the journal's signs are behind, as
``journal.stored_signs`` judges them): there are no current
signs to republish, and the first sign is the full start's, with the compiled site read
from its cache (``JOURNAL.site-cache``). ``baseline_pending_no_cache_s`` is the same
restart with the cache deleted first (the stamp kept): the site file is parsed, as before
the cache. The four kinds are interleaved in the same run, so the machine's load shows in
all alike. Takes about two minutes.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402

from gateway.journal import stored_signs  # noqa: E402
from gateway.site_stamp import cache_path, stamp_path  # noqa: E402
from parkguide.ports import free_port, wait_port  # noqa: E402
from parkguide.supervisor import stop_on_sigterm  # noqa: E402
from parking import topics  # noqa: E402
from parking.site import load_site  # noqa: E402

RUNS = 4  # of each kind, interleaved
KINDS = ("stamp", "no_stamp", "pending", "pending_no_cache")
BURST = 100  # one-space deltas before a kill with changes pending
BURST_GAP_S = 0.005
TAIL_AFTER_S = 0.5  # the checkpoint has taken the burst in
TAIL = 5  # deltas sent together last: pending at the kill
NAMES = {  # key in the JSON line -> kind of restart
    "first_sign": "stamp",
    "baseline_no_stamp": "no_stamp",
    "first_sign_pending": "pending",
    "baseline_pending_no_cache": "pending_no_cache",
}
LEVELS = ("G", "B1", "B2", "B3")
ZONES_PER_LEVEL, ROWS_PER_ZONE, ROW_LEN = 10, 5, 100
AISLES = ZONES_PER_LEVEL * ROWS_PER_ZONE // 2
GATES = 8
SITE_ID = "bigpark"


def _name(text: str) -> dict[str, str]:
    return {"zh": text, "en": text}


def _line(zones: list[str], arrow: str = "right") -> dict[str, Any]:
    return {"label": _name(zones[0]), "arrow": arrow, "zones": zones, "vehicle_class": "resident"}


def big_site() -> dict[str, Any]:
    """A site file's data: 20,000 spaces on 4 levels, lanes, 8 gates, 40 buses, 108 signs."""
    site: dict[str, Any] = {
        "site": {"id": SITE_ID, "name": _name("Big Park"), "timezone": "Asia/Shanghai"},
        "levels": [
            {"id": lv, "name": _name(lv), "kind": "surface" if lv == "G" else "basement"}
            for lv in LEVELS
        ],
        "zones": [],
        "kinds": ["resident", "visitor", "accessible"],
        "vehicle_classes": [
            {"id": "resident", "name": _name("Resident"), "kinds": ["resident", "accessible"]},
            {"id": "visitor", "name": _name("Visitor"), "kinds": ["visitor"]},
        ],
        "spaces": [],
        "lanes": {"nodes": [], "edges": []},
        "entrances": [],
        "buses": [],
        "display_settings": {"fallback_unknown_fraction": 0.5, "expires_s": 60},
        "displays": [],
    }
    lanes = site["lanes"]
    for li, lv in enumerate(LEVELS):
        spine = [f"{lv}-S{j:02d}" for j in range(AISLES)]
        for j in range(AISLES):
            y = 20 * j + 10
            lanes["nodes"].append({"id": spine[j], "level": lv, "at": [-10, y]})
            aisle = [f"{lv}-A{j:02d}-{k}" for k in range(3)]
            for k, x in enumerate((0, 125, 250)):
                lanes["nodes"].append({"id": aisle[k], "level": lv, "at": [x, y]})
            lanes["edges"].append([spine[j], *aisle])
        lanes["edges"].append(spine)
        if li:
            ramp = {"from": f"{LEVELS[li - 1]}-S{AISLES - 1:02d}", "to": f"{lv}-S00"}
            lanes["edges"].append({**ramp, "length": 60})
        for z in range(ZONES_PER_LEVEL):
            zone = f"{lv}-{z + 1:02d}"
            site["zones"].append({"id": zone, "level": lv, "name": _name(zone)})
            nodes = []
            for r in range(ROWS_PER_ZONE):
                row = z * ROWS_PER_ZONE + r
                j, y0 = row // 2, 20 * (row // 2) + 10 + (3 if row % 2 == 0 else -8)
                first = r * ROW_LEN + 1
                ids = f"{zone}-{first:04d}..{zone}-{first + ROW_LEN - 1:04d}"
                site["spaces"].append(
                    {
                        "ids": ids,
                        "zone": zone,
                        "kinds": ["accessible" if r == 0 else "resident"],
                        "access": [f"{lv}-A{j:02d}-{k}" for k in range(3)],
                        "layout": {"origin": [0, y0], "step": [2.5, 0]},
                    }
                )
                for half in (0, 1):  # a node controller serves at most 64 detectors
                    a = first + half * ROW_LEN // 2
                    b = a + ROW_LEN // 2 - 1
                    nodes.append(
                        {"address": 2 * r + half + 1, "spaces": [f"{zone}-{a:04d}..{zone}-{b:04d}"]}
                    )
            site["buses"].append(
                {"id": f"bus-{zone}", "baud": 38400, "parity": "E", "ttl_s": 30, "nodes": nodes}
            )
        for j in range(AISLES):
            zone = f"{lv}-{j * 2 // ROWS_PER_ZONE + 1:02d}"
            site["displays"].append(
                {
                    "id": f"sign-{lv}-{j:02d}",
                    "name": _name(f"{lv}-{j}"),
                    "level": lv,
                    "at": [-8, 20 * j + 12],
                    "lines": [
                        _line([zone]),
                        _line([f"{lv}-{z:02d}" for z in range(1, 11)], "down"),
                    ],
                }
            )
    for e in range(GATES):
        node = f"GATE{e}"
        lanes["nodes"].append({"id": node, "level": "G", "at": [-30, 60 * e + 10]})
        lanes["edges"].append([node, f"G-S{e * 3:02d}"])
        site["entrances"].append({"id": f"gate{e}", "name": _name(f"Gate {e}"), "node": node})
        site["displays"].append(
            {
                "id": f"sign-gate{e}",
                "name": _name(f"Gate {e}"),
                "level": "G",
                "at": [-28, 60 * e + 10],
                "entrance": f"gate{e}",
                "lines": [_line([f"{lv}-{z:02d}" for z in range(1, 11)], "down") for lv in LEVELS],
            }
        )
    return site


class FirstSign:
    """A subscriber noting when the first live sign content (or message on ``pattern``)
    arrives after ``arm``."""

    def __init__(self, port: int, pattern: str = topics.display_content(SITE_ID, "+")):
        self._event = threading.Event()
        self._armed = False
        self.at = 0.0
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-restart-{pattern.split('/')[-2]}"
        )
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(pattern, 1)
        self.client.loop_start()

    def _on_message(self, client, userdata, msg) -> None:
        if self._armed and not msg.retain and not self._event.is_set():
            self.at = time.time()
            self._event.set()

    def arm(self) -> None:
        self._event.clear()
        self._armed = True

    def wait(self, timeout: float) -> bool:
        return self._event.wait(timeout)

    def stop(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def report_snapshots(port: int, site: Any, seq: int) -> dict[str, str]:
    """One snapshot from every bus's agent, each space in the same state every time (the
    journal's state does not move between restarts; its agents are heard just now); the
    states sent."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-restart-edge")
    client.connect("127.0.0.1", port)
    client.loop_start()
    rnd = random.Random(1)
    states: dict[str, str] = {}
    sent = []
    for bus in site.buses:
        now = time.time()
        body = {
            "agent": bus.agent,
            "source": bus.id,
            "boot": "bench",
            "seq": seq,
            "ts": now,
            "kind": "snapshot",
            "spaces": [
                {
                    "space": s,
                    "state": states.setdefault(s, rnd.choice(("free", "occupied"))),
                    "since": now,
                }
                for s in site.spaces_of_source(bus.id)
            ],
        }
        topic = topics.edge_occupancy(SITE_ID, bus.agent)
        sent.append(client.publish(topic, json.dumps(body).encode(), qos=1))
    for info in sent:
        info.wait_for_publish(10)
    client.loop_stop()
    client.disconnect()
    return states


def report_changes(
    port: int,
    site: Any,
    seq0: int,
    states: dict[str, str],
    zones: FirstSign,
    then: Callable[[], object],
) -> None:
    """A busy site's changes: a burst of one-space deltas (each a space of the snapshot
    ``states`` turned over, each agent's seq from ``seq0``), a pause in which the gateway's
    checkpoint takes them all in, and a last few deltas; ``then()`` as soon as the first of
    those is journaled (its zone's counts are out), before the checkpoint can take it in
    (it gathers changes for 0.1 s first): a kill then leaves it pending."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="bench-restart-deltas")
    client.connect("127.0.0.1", port)
    client.loop_start()
    spaces = random.Random(seq0).sample(sorted(states), BURST + TAIL)
    seqs: dict[str, int] = {}

    def delta(space: str) -> mqtt.MQTTMessageInfo:
        bus = site.bindings[space].source
        agent = site.bus(bus).agent
        seqs[agent] = seq = seqs.get(agent, seq0) + 1
        now = time.time()
        state = "free" if states[space] == "occupied" else "occupied"
        body = {
            "agent": agent,
            "source": bus,
            "boot": "bench",
            "seq": seq,
            "ts": now,
            "kind": "delta",
            "spaces": [{"space": space, "state": state, "since": now}],
        }
        topic = topics.edge_occupancy(SITE_ID, agent)
        return client.publish(topic, json.dumps(body).encode(), qos=1)

    for space in spaces[:BURST]:
        delta(space).wait_for_publish(10)
        time.sleep(BURST_GAP_S)
    time.sleep(TAIL_AFTER_S)
    zones.arm()
    for info in [delta(space) for space in spaces[BURST:]]:
        info.wait_for_publish(10)
    if not zones.wait(10):
        raise RuntimeError("the last deltas changed no zone's counts")
    then()
    client.loop_stop()
    client.disconnect()


def main() -> int:
    stop_on_sigterm()
    tmp = Path(tempfile.mkdtemp(prefix="bench-restart-"))
    site_path, db = tmp / "big.yaml", tmp / "journal.db"
    site_path.write_text(
        yaml.safe_dump(big_site(), allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    site = load_site(site_path)
    port = free_port()
    conf = tmp / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen(
        [mosquitto, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    env = dict(os.environ, PARKGUIDE_LOG_LEVEL="WARNING", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "parkguide", "gateway", "--site", str(site_path)]
    cmd += ["--broker", f"mqtt://127.0.0.1:{port}", "--db", str(db)]
    log = (tmp / "gateway.log").open("ab")
    gateway: subprocess.Popen | None = None
    watch = zones = None
    timings: dict[str, list[float]] = {kind: [] for kind in KINDS}
    runs = ["first"] + [kind for _ in range(RUNS) for kind in KINDS]
    try:
        wait_port(port)
        watch = FirstSign(port)
        zones = FirstSign(port, topics.zone(SITE_ID, "+"))
        for run, kind in enumerate(runs):
            if kind == "no_stamp":
                stamp_path(db).unlink(missing_ok=True)
                cache_path(db).unlink(missing_ok=True)
            elif kind == "pending_no_cache":
                cache_path(db).unlink(missing_ok=True)
            watch.arm()
            t0 = time.time()
            gateway = subprocess.Popen(cmd, env=env, stdout=log, stderr=log, cwd=ROOT)
            if not watch.wait(60):
                raise RuntimeError(f"no sign within 60 s; see {tmp / 'gateway.log'}")
            if run:
                timings[kind].append(watch.at - t0)
            time.sleep(4.0)  # the full start is done (and the site's cache written)
            states = report_snapshots(port, site, seq=1000 * (run + 1))
            time.sleep(2.0)  # journaled and checkpointed: nothing pending at the kill
            following = runs[run + 1] if run + 1 < len(runs) else ""
            kill = partial(gateway.send_signal, signal.SIGKILL)
            if following.startswith("pending"):
                report_changes(port, site, 1000 * (run + 1), states, zones, then=kill)
            kill()
            gateway.wait(10)
            behind = not stored_signs(db)
            if following and behind != following.startswith("pending"):
                raise RuntimeError(
                    f"before a {following} restart the journal's signs are "
                    f"{'behind' if behind else 'current'}"
                )
        print(
            json.dumps(
                {
                    "bench": "restart",
                    "spaces": len(site.spaces),
                    "displays": len(site.displays),
                    "runs": RUNS,
                    **{
                        key: value
                        for name, kind in NAMES.items()
                        for key, value in (
                            (f"{name}_s", round(statistics.median(timings[kind]), 3)),
                            (f"{name}_all_s", [round(t, 3) for t in timings[kind]]),
                        )
                    },
                }
            )
        )
        return 0
    finally:
        if gateway is not None and gateway.poll() is None:
            gateway.kill()
            gateway.wait(10)
        for subscriber in (watch, zones):
            if subscriber is not None:
                subscriber.stop()
        broker.terminate()
        broker.wait(10)
        log.close()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
