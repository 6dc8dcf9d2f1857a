"""``parkguide sim drivers``: simulated drivers arriving, reading signs and parking.

``--compare`` runs the same day(s) of arrivals with guidance and without and
prints one JSON line of what guidance buys (``firmware_sim.study``). ``--live``
drives the running system: the simulated cars announce themselves at the
gates over MQTT, follow the gateway's assignment, and as they park and leave
print ``set SPACE occupied|free`` lines on stdout, which ``parkguide demo``
hands to the simulator that owns each space's sensor (so the detector or the
camera then sees the car).
"""

from __future__ import annotations

import argparse
import heapq
import json
import logging
import math
import queue
import random
import secrets
import signal
import sys
import threading
import time

from firmware_sim.traffic import DAY_S, plan_day
from parking import topics
from parking.broker import BrokerConfig
from parking.payloads import Arrival, Assignment
from parking.site import EXAMPLE_SITE, SiteError, load_site

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", default=str(EXAMPLE_SITE), help="site file")
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--compare", action="store_true", help="guided vs unguided, one JSON line")
    mode.add_argument("--live", action="store_true", help="drive the running system over MQTT")
    parser.add_argument("--days", type=int, default=1, help="days to simulate (--compare)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--start", default="07:00", help="simulated time of day to start (HH:MM)")
    parser.add_argument(
        "--speed", type=float, default=60.0, help="simulated seconds per real second (--live)"
    )
    parser.add_argument("--broker", help="mqtt://HOST:PORT (--live)")
    parser.add_argument("--username", help="MQTT username (or PARKGUIDE_MQTT_USERNAME)")
    parser.add_argument("--password", help="MQTT password (or PARKGUIDE_MQTT_PASSWORD)")


def _minute(text: str) -> int:
    h, _, m = text.partition(":")
    value = int(h) * 60 + int(m)
    if not 0 <= value < 1440:
        raise ValueError(text)
    return value


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
        start = _minute(args.start)
    except SiteError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2
    except ValueError:
        print(f"--start {args.start!r}: expected HH:MM", file=sys.stderr)
        return 2
    if args.days < 1:
        print("--days must be at least 1", file=sys.stderr)
        return 2
    if args.compare:
        from firmware_sim.study import compare

        days = [plan_day(site, args.seed * 1000 + d, start) for d in range(args.days)]
        print(json.dumps(compare(site, days, start, args.seed), ensure_ascii=False), flush=True)
        return 0
    if not args.broker:
        print("--live needs --broker mqtt://HOST:PORT", file=sys.stderr)
        return 2
    if not (args.speed > 0 and math.isfinite(args.speed)):
        print(f"--speed {args.speed}: must be a positive number", file=sys.stderr)
        return 2
    try:
        broker = BrokerConfig.from_url(args.broker, args.username, args.password)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return LiveDrivers(site, broker, start, args.speed, args.seed).run()


class LiveDrivers:
    """The world's ground truth for the demo: which car is in which bay."""

    def __init__(self, site, broker: BrokerConfig, start_minute: int, speed: float, seed: int):
        import paho.mqtt.client as mqtt

        self.site, self.start_minute, self.speed, self.seed = site, start_minute, speed, seed
        self.rng = random.Random(seed)
        self.occupied: dict[str, int] = {}  # space -> visit
        self.parked: dict[int, str] = {}  # visit -> space
        self.targets: dict[int, str] = {}  # visit -> assigned space
        self.sim_now = 0.0
        self.assignments: queue.Queue[Assignment] = queue.Queue()
        self.stop = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-drivers-{secrets.token_hex(3)}"
        )
        if broker.username:
            self.client.username_pw_set(broker.username, broker.password)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port)
        self.stats = {"arrivals": 0, "assigned": 0, "no_space": 0, "parked": 0, "left": 0}

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("broker refused the connection: %s", reason_code)
            return
        client.subscribe(f"{topics.site_prefix(self.site.id)}/entrances/+/assignment", qos=1)

    def _on_message(self, client, userdata, msg) -> None:
        try:
            self.assignments.put(Assignment.model_validate_json(msg.payload))
        except ValueError as exc:
            log.warning("ignoring a malformed assignment: %s", str(exc)[:200])

    def say(self, space: str, occupied: bool) -> None:
        print(f"set {space} {'occupied' if occupied else 'free'}", flush=True)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, lambda *_: self.stop.set())
        signal.signal(signal.SIGINT, lambda *_: self.stop.set())
        self.client.loop_start()
        t0 = time.monotonic()
        day = 0
        try:
            while not self.stop.is_set():
                self._run_day(day, t0 + day * DAY_S / self.speed)
                day += 1
        finally:
            self.client.loop_stop()
            self.client.disconnect()
            log.info("drivers stopped: %s", self.stats)
        return 0

    def _run_day(self, day: int, t_start: float) -> None:
        visits = plan_day(self.site, self.seed * 1000 + day, self.start_minute)
        events: list[tuple[float, int, str, int]] = []
        # every morning starts from the plan's overnight cars in their bays (the
        # plan is per day; cars still out from yesterday are folded into it)
        self.occupied.clear()
        self.parked.clear()
        self.targets.clear()
        free = [s.id for s in self.site.spaces if s.id in self.site.bindings]
        self.rng.shuffle(free)
        spaces_by_zone: dict[str, list[str]] = {}
        for sid in free:
            spaces_by_zone.setdefault(self.site.space(sid).zone, []).append(sid)
        for v in visits:
            if v.arrive_s is None:
                pool = spaces_by_zone.get(v.home_zone or "") or next(
                    (lst for lst in spaces_by_zone.values() if lst), None
                )
                if pool:
                    sid = pool.pop()
                    self.occupied[sid], self.parked[v.id] = v.id, sid
        for s in self.site.spaces:
            if s.id in self.site.bindings:
                self.say(s.id, s.id in self.occupied)
        for v in visits:
            if v.arrive_s is not None:
                heapq.heappush(events, (v.arrive_s, v.id, "arrive", v.id))
            elif v.depart_s is not None and v.id in self.parked:
                heapq.heappush(events, (v.depart_s, v.id, "depart", v.id))
        pending: dict[str, tuple[int, float]] = {}  # request id -> (visit, real time asked)
        by_id = {v.id: v for v in visits}
        while events and not self.stop.is_set():
            t_sim, _, kind, vid = events[0]
            wait = t_start + t_sim / self.speed - time.monotonic()
            self._drain_assignments(pending, events, t_start)
            if wait > 0:
                self.stop.wait(min(wait, 0.1))
                continue
            heapq.heappop(events)
            self.sim_now = t_sim
            v = by_id[vid]
            if kind == "arrive":
                self.stats["arrivals"] += 1
                rid = f"d{day}-{vid}"
                pending[rid] = (vid, time.monotonic())
                arrival = Arrival(
                    **{"class": v.vehicle_class, "request_id": rid, "ts": time.time()}
                )
                self.client.publish(
                    topics.arrival(self.site.id, v.gate),
                    arrival.model_dump_json(by_alias=True, exclude_none=True),
                    qos=1,
                )
            elif kind == "park":
                space = self._take(vid, by_id)
                if space:
                    self.stats["parked"] += 1
                    if v.depart_s is not None:
                        heapq.heappush(events, (max(v.depart_s, t_sim + 60), vid, "depart", vid))
            elif kind == "depart":
                space = self.parked.pop(vid, None)
                if space:
                    self.occupied.pop(space, None)
                    self.stats["left"] += 1
                    self.say(space, False)

    def _take(self, vid: int, by_id: dict) -> str | None:
        space = self.targets.pop(vid, None)
        if space is None or space in self.occupied:
            # assigned bay taken, or no assignment came: park in any free bay of the right kind
            v = by_id[vid]
            minute = int(self.start_minute + self.sim_now // 60) % 1440
            free = [
                s
                for s in self.site.spaces
                if s.id in self.site.bindings
                and s.id not in self.occupied
                and self.site.eligible(s, v.vehicle_class, minute)
            ]
            if not free:
                return None
            space = self.rng.choice(free).id
        self.occupied[space], self.parked[vid] = vid, space
        self.say(space, True)
        return space

    def _drain_assignments(self, pending: dict, events: list, t_start: float) -> None:
        while True:
            try:
                a = self.assignments.get_nowait()
            except queue.Empty:
                break
            entry = pending.pop(a.request_id or "", None)
            if entry is None:
                continue
            vid, _ = entry
            if a.space is None:
                self.stats["no_space"] += 1
                continue
            self.stats["assigned"] += 1
            self.targets[vid] = a.space
            t_now = (time.monotonic() - t_start) * self.speed
            drive_s = 30 + 15 * len(a.route)  # about the drive from the gate, in simulated seconds
            heapq.heappush(events, (t_now + drive_s, vid, "park", vid))
        # arrivals that got no answer within 5 s real time park on their own
        now = time.monotonic()
        for rid, (vid, asked) in list(pending.items()):
            if now - asked > 5:
                del pending[rid]
                heapq.heappush(events, ((now - t_start) * self.speed, vid, "park", vid))
