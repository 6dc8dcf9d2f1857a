"""``parkguide sim drivers``: simulated drivers arriving, reading signs and parking.

``--compare`` runs the same day(s) of arrivals with guidance and without and
prints one JSON line of what guidance buys (``firmware_sim.study``). ``--live``
drives the running system: the simulated cars announce themselves at the
gates over MQTT, follow the gateway's assignment, and as they park and leave
print ``set SPACE occupied|free`` lines on stdout, which ``parkguide demo``
hands to the simulator that owns each space's sensor (so the detector or the
camera then sees the car). A share of the drivers given a space turn back at
the barrier (``--turn-back``): their gate cancels the arrival a little later
(``entrances/{e}/cancel``), and the gateway's answers are counted.
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
from parking.broker import BrokerConfig, add_credential_arguments, broker_from_args
from parking.payloads import Arrival, ArrivalCancel, ArrivalRefusal, Assignment
from parking.site import EXAMPLE_SITE, SiteError, load_site

log = logging.getLogger(__name__)

DEFAULT_TURN_BACK = 0.03
"""Share of the drivers given a space who turn back at the gate (a few in a hundred)."""
TURN_BACK_S = 20.0
"""Simulated seconds from the assignment to the gate's cancel: the driver reverses out."""
ANSWER_WAIT_S = 5.0
"""Real seconds a gate waits for the gateway's answer before it gives up on it."""


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
    parser.add_argument(
        "--turn-back",
        type=float,
        default=DEFAULT_TURN_BACK,
        help="share of the drivers given a space who turn back at the gate, whose gate then"
        f" cancels the arrival (--live; 0 to 1, default {DEFAULT_TURN_BACK:g})",
    )
    add_credential_arguments(parser)


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
    if not 0 <= args.turn_back <= 1:  # NaN too
        print(f"--turn-back {args.turn_back}: must be from 0 to 1", file=sys.stderr)
        return 2
    try:
        broker = broker_from_args(args.broker, args)
    except ValueError as exc:
        print(str(exc), file=sys.stderr)
        return 2
    return LiveDrivers(site, broker, start, args.speed, args.seed, args.turn_back).run()


class BrokerLink:
    """How one paho client's connection to the broker is going, told to people.

    Applies the broker's credentials and TLS as the gateway does; logs a failure to
    connect, a refusal or a lost connection at once, then at most once every ``every_s``
    while it lasts, and says when the connection is back; keeps ``state``, a few words
    for a status line. The owner calls ``connected(reason_code)`` from its on_connect.
    """

    def __init__(
        self,
        client,
        broker: BrokerConfig,
        who: str,
        logger: logging.Logger | None = None,
        every_s: float = 60.0,
        clock=time.monotonic,
    ):
        broker.apply(client)
        self.broker = broker
        self.url, self.who, self.every_s, self.clock = broker.url, who, every_s, clock
        self.log = logger or log
        self.state = "connecting"
        self.up = False
        self.failures = 0  # since the last successful connection
        self._last_logged: float | None = None
        self._refused = False
        self._closing = False
        self._lock = threading.Lock()
        client.on_connect_fail = self._on_connect_fail
        client.on_disconnect = self._on_disconnect

    def connected(self, reason_code) -> bool:
        """From on_connect: True if the broker accepted the connection."""
        if reason_code.is_failure:
            self._refused = True
            self._fail("refused the connection", str(reason_code))
            return False
        with self._lock:
            if self.failures:
                self.log.info("%s: connected to the broker %s", self.who, self.url)
            self.failures, self._last_logged, self.up, self.state = 0, None, True, "connected"
        return True

    def closing(self) -> None:
        """Before a deliberate disconnect: nothing to report about it."""
        self._closing = True

    def _on_connect_fail(self, client, userdata) -> None:
        exc = sys.exc_info()[1]  # paho calls this while handling the connect's OSError
        self._fail("cannot reach it", self.broker.why_unreachable(exc))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        was_up, self.up = self.up, False
        if self._closing:
            self.state = "disconnected"
        elif self._refused:
            self._refused = False  # the refusal was said already
        elif was_up:
            self._fail("lost the connection", str(reason_code))
        else:  # e.g. plain MQTT to a TLS port: closed before any CONNACK
            self._fail(self.broker.why_closed_early(reason_code), str(reason_code))

    def _fail(self, what: str, why: str) -> None:
        with self._lock:
            self.failures += 1
            self.state = f"{what} ({why}); retrying"
            now = self.clock()
            if self._last_logged is not None and now - self._last_logged < self.every_s:
                return
            self._last_logged = now
            attempts = f" ({self.failures} attempts so far)" if self.failures > 1 else ""
            self.log.warning(
                "%s: broker %s: %s (%s); retrying%s", self.who, self.url, what, why, attempts
            )


class LiveDrivers:
    """The world's ground truth for the demo: which car is in which bay."""

    def __init__(
        self,
        site,
        broker: BrokerConfig,
        start_minute: int,
        speed: float,
        seed: int,
        turn_back: float = DEFAULT_TURN_BACK,
    ):
        import paho.mqtt.client as mqtt

        self.site, self.start_minute, self.speed, self.seed = site, start_minute, speed, seed
        self.rng = random.Random(seed)
        # its own stream: the share turning back leaves the rest of the day as it was
        self.turn_back, self.turn_rng = turn_back, random.Random(f"turn-back-{seed}")
        self.occupied: dict[str, int] = {}  # space -> visit
        self.parked: dict[int, str] = {}  # visit -> space
        self.targets: dict[int, str] = {}  # visit -> assigned space
        self.sim_now = 0.0
        self.assignments: queue.Queue[Assignment] = queue.Queue()
        self.refusals: queue.Queue[ArrivalRefusal] = queue.Queue()  # of cancels only
        self.cancels: dict[str, float] = {}  # request id -> real time its cancel was sent
        self.stop = threading.Event()
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2, client_id=f"sim-drivers-{secrets.token_hex(3)}"
        )
        self.link = BrokerLink(self.client, broker, "drivers")
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.connect_async(broker.host, broker.port)
        self.stats = {
            "arrivals": 0,
            "assigned": 0,
            "no_space": 0,
            "parked": 0,
            "left": 0,
            "turned_back": 0,  # given a space, drove off at the gate: its gate cancels soon
            "cancelled": 0,  # the gateway released the hold
            "cancel_refused": 0,  # the gateway said why not (reasons in the log)
            "cancel_unanswered": 0,
        }

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if not self.link.connected(reason_code):
            return
        client.subscribe(
            [
                (topics.assignments_all(self.site.id), topics.QOS_ASSIGNMENT),
                (topics.refusals_all(self.site.id), topics.QOS_REFUSAL),
            ]
        )

    def _on_message(self, client, userdata, msg) -> None:
        # only this site's assignments: a broker may hand over other topics too (amqtt, the
        # demo's, replays on connect the retained messages of other clients' subscriptions)
        parsed = topics.parse(msg.topic)
        if parsed is None or parsed.site != self.site.id:
            return
        try:
            if parsed.kind == "entrances/assignment":
                self.assignments.put(Assignment.model_validate_json(msg.payload))
            elif parsed.kind == "entrances/refusal":
                refusal = ArrivalRefusal.model_validate_json(msg.payload)
                if refusal.cancel:  # a refused arrival waits out its answer, as before
                    self.refusals.put(refusal)
        except ValueError as exc:
            log.warning("ignoring a malformed %s: %s", parsed.kind, str(exc)[:200])

    def say(self, space: str, occupied: bool) -> None:
        # one write, newline included: with PYTHONUNBUFFERED (as the demo runs it) print()
        # writes the text and its newline apart, and a log line from the MQTT thread, in
        # the same file, could land between them and spoil both
        sys.stdout.write(f"set {space} {'occupied' if occupied else 'free'}\n")
        sys.stdout.flush()

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
            self._await_cancel_answers()
        finally:
            self.link.closing()
            self.client.loop_stop()
            self.client.disconnect()
            log.info("drivers stopped: %s", json.dumps(self.stats))
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
            elif kind == "turn_back":
                self._cancel(f"d{day}-{vid}", v.gate)
            elif kind == "depart":
                space = self.parked.pop(vid, None)
                if space:
                    self.occupied.pop(space, None)
                    self.stats["left"] += 1
                    self.say(space, False)

    def _await_cancel_answers(self, timeout_s: float = 2.0) -> None:
        """At the stop: the answers to the cancels still out, so the counts are whole."""
        deadline = time.monotonic() + timeout_s
        while True:
            self._answers()  # cars' answers: the run is over, only cancels' count
            self._drain_refusals()
            if not self.cancels or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        self.stats["cancel_unanswered"] += len(self.cancels)
        self.cancels.clear()

    def _cancel_answered(self, request_id: str | None, refusal: ArrivalRefusal | None) -> None:
        if self.cancels.pop(request_id or "", None) is None:
            return  # not ours, or answered already (a QoS 1 duplicate)
        if refusal is None:
            self.stats["cancelled"] += 1
        else:
            self.stats["cancel_refused"] += 1
            log.info("the cancel of %s was refused: %s (%s)", request_id, refusal.reason,
                     refusal.detail)  # fmt: skip

    def _drain_refusals(self) -> None:
        while True:
            try:
                r = self.refusals.get_nowait()
            except queue.Empty:
                return
            self._cancel_answered(r.request_id, r)

    def _cancel(self, request_id: str, gate: str) -> None:
        """The gate takes the arrival back: its car reversed out of the barrier."""
        self.cancels[request_id] = time.monotonic()
        cancel = ArrivalCancel(request_id=request_id, ts=time.time())
        self.client.publish(
            topics.arrival_cancel(self.site.id, gate),
            cancel.model_dump_json(exclude_none=True),
            qos=topics.QOS_CANCEL,
            retain=topics.RETAIN_CANCEL,
        )

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

    def _answers(self) -> list[Assignment]:
        """The gateway's answers received so far to cars (a cancel's answer is counted here)."""
        out: list[Assignment] = []
        while True:
            try:
                a = self.assignments.get_nowait()
            except queue.Empty:
                return out
            if a.cancelled:
                self._cancel_answered(a.request_id, None)
            else:
                out.append(a)

    def _drain_assignments(self, pending: dict, events: list, t_start: float) -> None:
        for a in self._answers():
            entry = pending.pop(a.request_id or "", None)
            if entry is None:
                continue
            vid, _ = entry
            if a.space is None:
                self.stats["no_space"] += 1
                continue
            self.stats["assigned"] += 1
            t_now = (time.monotonic() - t_start) * self.speed
            if self.turn_rng.random() < self.turn_back:
                self.stats["turned_back"] += 1
                heapq.heappush(events, (t_now + TURN_BACK_S, vid, "turn_back", vid))
                continue
            self.targets[vid] = a.space
            drive_s = 30 + 15 * len(a.route)  # about the drive from the gate, in simulated seconds
            heapq.heappush(events, (t_now + drive_s, vid, "park", vid))
        self._drain_refusals()
        # arrivals that got no answer in time park on their own
        now = time.monotonic()
        for rid, (vid, asked) in list(pending.items()):
            if now - asked > ANSWER_WAIT_S:
                del pending[rid]
                heapq.heappush(events, ((now - t_start) * self.speed, vid, "park", vid))
        for rid, sent in list(self.cancels.items()):
            if now - sent > ANSWER_WAIT_S:
                del self.cancels[rid]
                self.stats["cancel_unanswered"] += 1
