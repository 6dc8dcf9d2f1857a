"""Edge agents on a box whose wall clock NTP steps after they started (``edge.clocks``).

A Raspberry Pi without a real-time clock boots with its clock ten minutes behind, the
agents start, then NTP steps the clock forward. Stamped by the lagging clock, the new
run's observations are older than what the gateway knows from the agent's previous run:
it refuses them (``older_than_known``; a camera's reports, whose run it has not taken
yet, as ``stale_boot``) and the spaces stay ``unknown``. After the step the agents'
reports must carry ``since`` and ``ts`` on the corrected clock, at once (a snapshot),
so that the real ``gateway.ingest.ReportGate``, holding the previous run's
observations, takes every space again.

In process, the agents' wall and monotonic clocks are injected (``gateway_support.Clocks``:
time passing moves both, a step only the wall clock): the serial agent's real loop
(``SerialAgent.run``) on a bus that answers at once, the camera agent's frame logic with a
classifier that says what the test wants. End to end: the bus simulator on a pty, the
serial agent in process with a lagging wall clock, a real mosquitto, the real gateway.
"""

from __future__ import annotations

import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import EXAMPLE_SITE, free_port, parkguide_cmd
from gateway_support import Clocks, running_gateway

from edge.camera.quality import QualitySettings
from edge.camera.smoothing import SmoothingSettings
from edge.camera_agent import AgentSettings, CameraAgent
from edge.debounce import DebounceSettings
from edge.modbus_master import MasterCounters, ModbusMaster
from edge.publisher import ReportPublisher
from edge.serial_agent import SerialAgent
from gateway.ingest import AcceptedReport, Rejection, ReportGate
from parkguide.supervisor import stop_process
from parking import registers as reg
from parking.broker import BrokerConfig
from parking.payloads import OccupancyReport
from parking.site import load_site

SITE = load_site(EXAMPLE_SITE)
BUS = SITE.bus("bus-b1")  # 4 nodes x 30 detectors
BUS_SPACES = SITE.spaces_of_source(BUS.id)
CAMERA = SITE.camera("cam-c")  # 40 spaces
T = 1_800_000_000.0
"""true time when the new run starts"""
BEHIND = 600.0
"""how far behind the box's clock starts"""


class Gateway:
    """The gateway's verdicts on one agent's reports: the real ReportGate, knowing the
    agent's previous run (its boot, and every space of the source observed at
    ``previous_since``), and the since of each space's last accepted observation, kept
    as ``gateway.state.LiveState.observe`` keeps it."""

    def __init__(self, agent: str, source: str, previous_since: float):
        self.gate = ReportGate(SITE)
        self.gate.restore(agent, "0123456789ab", 41)
        self.obs_since = np.zeros(len(SITE.spaces), dtype=np.float64)
        self.obs_since[self.gate.source_spaces(source)] = previous_since

    def take(self, report: OccupancyReport, now: float) -> AcceptedReport | Rejection:
        payload = report.model_dump_json().encode()
        acc = self.gate.accept(report.agent, payload, self.obs_since, now=now)
        if isinstance(acc, AcceptedReport):
            self.obs_since[acc.spaces] = acc.since
            self.gate.commit(acc)
        return acc


@contextlib.contextmanager
def offline_publisher(
    tmp_path: Path, agent: str, source: str, wall: Callable[[], float]
) -> Iterator[tuple[ReportPublisher, list[OccupancyReport]]]:
    """The real publisher (its reports stamped by ``wall``), no broker to reach; yields it
    and the reports it made, in order."""
    pub = ReportPublisher(
        BrokerConfig("127.0.0.1", free_port()),
        SITE.id,
        agent,
        source,
        spool_dir=tmp_path / f"spool-{agent}",
        clock=wall,
    )
    made: list[OccupancyReport] = []
    report = pub.report

    def recording(kind, spaces):
        made.append(report(kind, spaces))
        return made[-1]

    pub.report = recording  # type: ignore[method-assign]
    pub.start()
    try:
        yield pub, made
    finally:
        pub.stop(flush_timeout_s=0.1)


# -- the serial agent: its real loop, on a bus that answers at once ----------------------


class InstantBus:
    """What ``SerialAgent.run`` needs of a ModbusMaster: every node answers at once with
    the bits in ``bits`` and statuses ok; each request takes 10 ms of the fake clocks.
    ``run_for`` runs the agent's loop for that long of them."""

    def __init__(self, clocks: Clocks, bits: dict[int, list[bool]]):
        self.clocks = clocks
        self.bits = bits
        self.counters = MasterCounters()
        self.is_open = True
        self.port_name = "instant"
        self._stop = threading.Event()
        self._until = 0.0

    def open(self) -> None:
        self.is_open = True

    def close(self) -> None:
        self.is_open = False

    def _request(self) -> None:
        self.clocks.advance(0.01)
        if self.clocks.mono >= self._until:
            self._stop.set()

    def read_discrete_inputs(self, address: int, start: int, count: int, **kw) -> list[bool]:
        self._request()
        return self.bits[address][:count]

    def read_input_registers(self, address: int, start: int, count: int, **kw) -> list[int]:
        self._request()
        if start == reg.IR_MODEL:  # node info: the node the site file describes
            info = [reg.MODEL_CODE, reg.FIRMWARE_VERSION, BUS.node(address).detectors]
            return (info + [0] * count)[:count]
        return [0] * count

    def run_for(self, agent: SerialAgent, seconds: float) -> None:
        self._stop.clear()
        self._until = self.clocks.mono + seconds
        agent.run(self._stop)


def bus_bits(seed: int) -> dict[int, list[bool]]:
    rng = np.random.default_rng(seed)
    return {n.address: [bool(b) for b in rng.random(n.detectors) < 0.5] for n in BUS.nodes}


def serial_agent(clocks: Clocks, pub: ReportPublisher, bits) -> tuple[SerialAgent, InstantBus]:
    line = InstantBus(clocks, bits)
    agent = SerialAgent(
        SITE.id,
        BUS,
        BUS.agent,
        line,  # type: ignore[arg-type]
        pub,
        DebounceSettings(),
        clock=lambda: clocks.mono,
        wall=lambda: clocks.wall,
    )
    return agent, line


def first_reading_times(reports: list[OccupancyReport]) -> dict[str, float]:
    """Each space's since in the first report that says it is occupied or free."""
    out: dict[str, float] = {}
    for r in reports:
        for o in r.spaces:
            if o.state != "unknown":
                out.setdefault(o.space, o.since)
    return out


def test_serial_agent_reports_on_the_corrected_clock_after_ntp_steps_it_forward(
    tmp_path, caplog
) -> None:
    """The reviewer's serial case: the gateway takes the new run (its ts is within a
    minute of the previous run's newest observation) but refuses every observation as
    older than known, and kept refusing them after the step: zones stayed unknown."""
    clocks = Clocks(T - BEHIND)  # the monotonic clock reads 0 at T
    gateway = Gateway(BUS.agent, BUS.id, previous_since=T - 570)
    bits = bus_bits(1)
    with offline_publisher(tmp_path, BUS.agent, BUS.id, lambda: clocks.wall) as (pub, made):
        agent, line = serial_agent(clocks, pub, bits)
        line.run_for(agent, 3.0)  # every detector's reading holds: deltas
        pub.report("snapshot", agent.observations(agent.tracker.snapshot()))  # as on connect
        behind = list(made)
        assert {o.state for o in behind[-1].spaces} == {"occupied", "free"}
        for r in behind:  # stamped by the lagging clock: every observation refused, so
            # the new run does not replace the previous one yet (nothing of it is taken)
            acc = gateway.take(r, now=T + clocks.mono)
            assert isinstance(acc, Rejection), acc
            assert acc.reason in {"older_than_known", "stale_boot"}
        assert gateway.obs_since[gateway.gate.source_spaces(BUS.id)].max() == T - 570

        line.run_for(agent, 30.0)
        made.clear()
        caplog.set_level(logging.WARNING, logger="edge.clocks")
        clocks.step(BEHIND)  # NTP synchronised
        stepped_at = clocks.mono
        line.run_for(agent, 0.5)
        at_once = [r for r in made if r.kind == "snapshot"]
        # the next snapshot: that one, else the periodic one (while connected)
        every_space = agent.observations(agent.tracker.snapshot())
        snap = at_once[0] if at_once else pub.report("snapshot", every_space)

    assert T + stepped_at < snap.ts < T + clocks.mono + 0.1  # on the corrected clock
    true_first = first_reading_times(behind)
    # every since moved by the step: when the reading really began, on the corrected clock
    assert {o.space: o.since for o in snap.spaces} == pytest.approx(
        {s: t + BEHIND for s, t in true_first.items()}, abs=1e-3
    )
    assert all(T <= o.since <= T + 3.0 for o in snap.spaces)
    acc = gateway.take(snap, now=T + clocks.mono)
    assert isinstance(acc, AcceptedReport) and acc.rejected == ()
    assert len(acc.spaces) == len(BUS_SPACES) and (acc.states != 0).all()  # none unknown
    assert at_once, "a snapshot goes out at once after the step"
    assert snap.ts < T + stepped_at + 0.1
    assert "stepped forward by 600.0 s" in caplog.text


def test_serial_agent_times_hold_still_without_a_step_and_follow_a_change_after_it(
    tmp_path,
) -> None:
    """No step: every snapshot repeats each space's since to the bit (the gateway's
    journal rewrites rows whose since moved). A change after a forward step carries the
    clock as it now reads."""
    clocks = Clocks(T - BEHIND)
    bits = bus_bits(2)
    with offline_publisher(tmp_path, BUS.agent, BUS.id, lambda: clocks.wall) as (pub, made):
        agent, line = serial_agent(clocks, pub, bits)
        line.run_for(agent, 3.0)
        first = agent.observations(agent.tracker.snapshot())
        line.run_for(agent, 20.0)
        assert agent.observations(agent.tracker.snapshot()) == first
        clocks.step(BEHIND)
        line.run_for(agent, 1.0)
        bits[1][0] = not bits[1][0]  # a car comes or goes at node 1, detector 0
        changed_at = clocks.mono
        made.clear()
        line.run_for(agent, 2.0)
    (delta,) = [r for r in made if r.kind == "delta"]
    (obs,) = delta.spaces
    assert obs.space == BUS.node(1).spaces[0]
    assert abs(obs.since - (T + changed_at)) < 0.1  # the reading that held, true time
    assert abs(delta.ts - (obs.since + 0.5)) < 0.1  # settled after the debounce


def test_serial_agent_keeps_reported_times_when_the_clock_steps_back(tmp_path, caplog) -> None:
    """A clock that ran ahead (within the gateway's five minutes) and is stepped back: the
    times the gateway took stay as they were (moved back, it would refuse them as older
    than it knows); a change after the step carries the clock as it now reads, but never
    a time before its space's previous state: it was refused as older than known, and the
    space went unknown at its TTL and stayed so until it changed again."""
    ahead = 120.0
    clocks = Clocks(T + ahead)
    gateway = Gateway(BUS.agent, BUS.id, previous_since=T - 3600)
    bits = bus_bits(3)
    with offline_publisher(tmp_path, BUS.agent, BUS.id, lambda: clocks.wall) as (pub, made):
        agent, line = serial_agent(clocks, pub, bits)
        line.run_for(agent, 3.0)
        pub.report("snapshot", agent.observations(agent.tracker.snapshot()))
        for r in made:
            acc = gateway.take(r, now=T + clocks.mono)
            assert isinstance(acc, AcceptedReport) and acc.rejected == ()
        before = {o.space: o.since for o in made[-1].spaces}
        caplog.set_level(logging.WARNING, logger="edge.clocks")
        clocks.step(-ahead)
        line.run_for(agent, 1.0)
        bits[2][3] = not bits[2][3]
        changed_at = clocks.mono
        line.run_for(agent, 2.0)
        made.clear()
        pub.report("snapshot", agent.observations(agent.tracker.snapshot()))
    after = {o.space: o.since for o in made[-1].spaces}
    moved = BUS.node(2).spaces[3]
    # by the corrected clock it began before its previous state: stamped as that
    assert T + changed_at < before[moved] and after.pop(moved) == before[moved]
    assert after == {s: t for s, t in before.items() if s != moved}
    acc = gateway.take(made[-1], now=T + clocks.mono)
    assert isinstance(acc, AcceptedReport)
    assert acc.rejected == () and len(acc.stale) == 0  # every space taken, none refused
    assert "stepped back by 120.0 s" in caplog.text


def test_serial_agent_never_moves_a_since_past_the_clock_when_it_steps_back_then_forward(
    tmp_path,
) -> None:
    """A clock two minutes ahead, stepped back, then forward again (a flaky NTP source):
    the back step leaves the reported times as they were (the gateway took them), and the
    forward step must not add itself to them as well: they would be two minutes in the
    future, and every true change after them refused as older than known."""
    ahead = 120.0
    clocks = Clocks(T + ahead)
    bits = bus_bits(5)
    with offline_publisher(tmp_path, BUS.agent, BUS.id, lambda: clocks.wall) as (pub, made):
        agent, line = serial_agent(clocks, pub, bits)
        line.run_for(agent, 3.0)
        pub.report("snapshot", agent.observations(agent.tracker.snapshot()))
        before = {o.space: o.since for o in made[-1].spaces}
        clocks.step(-ahead)
        line.run_for(agent, 1.0)
        clocks.step(ahead)
        line.run_for(agent, 1.0)
        made.clear()
        snap = pub.report("snapshot", agent.observations(agent.tracker.snapshot()))
    assert max(o.since for o in snap.spaces) <= snap.ts
    # each began where it did, on the clock as it reads again
    assert {o.space: o.since for o in snap.spaces} == pytest.approx(before, abs=1e-3)


# -- the camera agent: its frame logic, with a classifier that says what it is told -------


class SaysWhatItIsTold:
    """A FrameClassifier whose decisions and confidences the test sets."""

    def __init__(self, occupied: np.ndarray, confidence: float = 0.9):
        self.occupied = occupied
        self.confidence = np.full(len(occupied), confidence)

    def plan(self, polygons):
        return None

    def patches(self, frame_bgr, plan):
        # textured, as real bays are: none of them looks covered
        rng = np.random.default_rng(0)
        return rng.integers(40, 200, (len(self.occupied), 32, 32, 3), dtype=np.uint8)

    def decide(self, patches):
        return self.occupied.copy(), self.confidence.copy()


class NoReader:
    reconnects = 0
    behind_s = 0.0
    fell_behind = 0


def camera_agent(clocks: Clocks, pub: ReportPublisher, classifier) -> CameraAgent:
    return CameraAgent(
        CAMERA,
        classifier,
        pub,
        settings=AgentSettings(fps_limit=0),
        smoothing=SmoothingSettings(hold_s=2.0, uncertain_s=30.0),
        quality=QualitySettings(frozen_s=5.0),
        wall=lambda: clocks.wall,
        clock=lambda: clocks.mono,
    )


FRAMES = np.random.default_rng(0)
SCENE = FRAMES.integers(0, 240, (180, 320, 3), dtype=np.uint8)


def frame() -> np.ndarray:
    """A sharp, lit picture of one view that is never the same twice (not frozen, black,
    blurred or moved): a fixed scene with sensor noise."""
    return SCENE + FRAMES.integers(0, 16, SCENE.shape, dtype=np.uint8)


def frames(agent: CameraAgent, clocks: Clocks, seconds: float, every: float = 0.25) -> None:
    """Frames for ``seconds`` of the fake clocks, each processed and published as ``run``
    does."""
    end = clocks.mono + seconds
    while clocks.mono < end - 1e-9:
        clocks.advance(every)
        changes = agent.on_frame(frame(), clocks.wall, clocks.mono)
        changes += agent.smoother.tick(clocks.wall)
        agent.publish(changes, NoReader(), clocks.mono)  # type: ignore[arg-type]


def test_camera_agent_reports_on_the_corrected_clock_after_ntp_steps_it_forward(
    tmp_path, caplog
) -> None:
    """The reviewer's camera case: the new run's reports are refused as a stale boot
    while the clock lags; after the step the spaces stayed unknown (38-39 of 40)."""
    clocks = Clocks(T - BEHIND)
    gateway = Gateway(CAMERA.agent, CAMERA.id, previous_since=T - 30)
    truth = np.random.default_rng(4).random(len(CAMERA.polygons)) < 0.5
    with offline_publisher(tmp_path, CAMERA.agent, CAMERA.id, lambda: clocks.wall) as (
        pub,
        made,
    ):
        agent = camera_agent(clocks, pub, SaysWhatItIsTold(truth))
        frames(agent, clocks, 3.0)
        pub.report("snapshot", agent.observations(range(len(CAMERA.polygons))))  # on connect
        assert {o.state for o in made[-1].spaces} == {"occupied", "free"}
        for r in made:
            acc = gateway.take(r, now=T + clocks.mono)
            assert isinstance(acc, Rejection) and acc.reason == "stale_boot"
        frames(agent, clocks, 20.0)
        made.clear()
        caplog.set_level(logging.WARNING, logger="edge.clocks")
        clocks.step(BEHIND)
        frames(agent, clocks, 0.25)
        at_once = [r.kind for r in made]
        # the next snapshot: that one, else the periodic one (while connected)
        every_space = agent.observations(range(len(CAMERA.polygons)))
        snap = made[0] if made else pub.report("snapshot", every_space)

    assert snap.ts == T + clocks.mono
    # the decisions began with the first frame, 0.25 s after the start: true time
    assert {o.since for o in snap.spaces} == {T + 0.25}
    acc = gateway.take(snap, now=T + clocks.mono)
    assert isinstance(acc, AcceptedReport) and acc.rejected == ()
    assert len(acc.spaces) == len(CAMERA.polygons) and (acc.states != 0).all()
    assert at_once == ["snapshot"]  # at once (nothing changed otherwise)
    assert "stepped forward by 600.0 s" in caplog.text


def test_a_step_neither_settles_a_camera_decision_nor_expires_a_space(tmp_path) -> None:
    """The smoothing's timers keep wall times: they move with a step, either way. Forward,
    a decision that has held 0.5 s does not count as held for 600 s, and a space unsure
    for 20 s does not count as unsure for 620 (``uncertain_s`` 30). Back, a decision does
    not have to wait ten more minutes to count."""
    clocks = Clocks(T - BEHIND)
    truth = np.zeros(len(CAMERA.polygons), dtype=bool)
    told = SaysWhatItIsTold(truth)
    with offline_publisher(tmp_path, CAMERA.agent, CAMERA.id, lambda: clocks.wall) as (pub, _):
        agent = camera_agent(clocks, pub, told)
        frames(agent, clocks, 3.0)
        assert (agent.smoother.state == 1).all()  # free
        told.confidence[1] = 0.3  # space 1: the classifier is unsure from now on
        frames(agent, clocks, 20.0)
        told.occupied[0] = True  # space 0: a car arrives
        frames(agent, clocks, 0.5)
        clocks.step(BEHIND)
        clocks.advance(0.25)
        changes = agent.on_frame(frame(), clocks.wall, clocks.mono)
        assert changes == [] and (agent.smoother.state == 1).all()
        frames(agent, clocks, 1.5)  # the car's decision has held 2 s: it counts
        assert agent.smoother.state[0] == 2 and agent.smoother.state[1] == 1
        assert agent.smoother.since[0] == T + 23.25  # its first frame, true time

        told.occupied[0] = False  # the car leaves
        left = clocks.mono + 0.25
        frames(agent, clocks, 0.5)
        clocks.step(-BEHIND)
        frames(agent, clocks, 2.0)
        assert agent.smoother.state[0] == 1  # held 2 s of real time: it counts
        # by the clock as it now reads (the car's since, ten minutes ahead of it, was
        # brought back to the step's moment: the leaving is stamped no earlier)
        assert abs(agent.smoother.since[0] - (T - BEHIND + left)) < 1.0
        assert agent.smoother.state[1] == 1


def test_camera_agent_never_moves_a_since_past_the_clock_when_it_steps_back_then_forward(
    tmp_path,
) -> None:
    """The camera's smoothing, as the serial agent: a clock two minutes ahead, stepped
    back (its spaces' since stay), then forward: no since ends up later than the clock."""
    ahead = 120.0
    clocks = Clocks(T + ahead)
    truth = np.random.default_rng(6).random(len(CAMERA.polygons)) < 0.5
    with offline_publisher(tmp_path, CAMERA.agent, CAMERA.id, lambda: clocks.wall) as (pub, _):
        agent = camera_agent(clocks, pub, SaysWhatItIsTold(truth))
        frames(agent, clocks, 3.0)
        before = agent.smoother.since.copy()
        clocks.step(-ahead)
        frames(agent, clocks, 1.0)
        assert (agent.smoother.since == before).all()
        clocks.step(ahead)
        frames(agent, clocks, 0.25)
        since = agent.smoother.since.copy()
    assert since.max() <= clocks.wall
    assert (since >= before).all()  # never moved back: the gateway took them


# -- end to end: bus simulator on a pty, the agent in process, mosquitto, the gateway ---


class BusSimulator:
    """``parkguide sim bus`` for bus-b1 in a subprocess, its pty linked at ``link``."""

    def __init__(self, link: Path, env: dict[str, str]):
        self.proc = subprocess.Popen(
            parkguide_cmd(
                "sim",
                "bus",
                "--site",
                str(EXAMPLE_SITE),
                "--bus",
                BUS.id,
                "--link",
                str(link),
                "--scenario",
                "none",
                "--initial-occupancy",
                "0.5",
            ),  # fmt: skip
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            env=env,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert "linked at" in line, line

    def close(self) -> None:
        stop_process(self.proc)
        for f in (self.proc.stdin, self.proc.stdout):
            with contextlib.suppress(OSError):
                f.close()  # type: ignore[union-attr]


class RunningAgent:
    """The serial agent in a thread of this process, its wall clock ``behind[0]`` s behind."""

    def __init__(self, link: Path, broker_url: str, spool: Path, behind: list[float]):
        def wall() -> float:
            return time.time() - behind[0]

        self.master = ModbusMaster(str(link), BUS.baud, BUS.parity)
        self.publisher = ReportPublisher(
            BrokerConfig.from_url(broker_url), SITE.id, BUS.agent, BUS.id, spool_dir=spool,
            clock=wall,
        )  # fmt: skip
        self.publisher.start()
        self.agent = SerialAgent(
            SITE.id, BUS, BUS.agent, self.master, self.publisher, wall=wall,
            health_interval_s=1.0,
        )  # fmt: skip
        self.stop_event = threading.Event()
        self.thread = threading.Thread(target=self.agent.run, args=(self.stop_event,))
        self.thread.start()

    def stop(self) -> None:
        self.stop_event.set()
        self.thread.join(10)
        self.master.close()
        self.publisher.stop(flush_timeout_s=2.0)  # "offline": the gateway unknowns its spaces


def wait_until(what: str, done: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, f"not in {timeout} s: {what}"
        time.sleep(0.1)


def test_end_to_end_the_gateway_takes_the_bus_again_once_ntp_steps_the_clock(
    mosquitto, tmp_path, subprocess_env, caplog
) -> None:
    """The previous run with a true clock; the agent restarted with its clock ten minutes
    behind: the gateway refuses its reports and the bus stays unknown; NTP steps the
    clock: the bus is back at the gateway within a second or two, no restart needed."""
    caplog.set_level(logging.WARNING, logger="edge.clocks")
    link = tmp_path / "bus.tty"
    sim = BusSimulator(link, subprocess_env)
    agents: list[RunningAgent] = []
    try:
        with running_gateway(EXAMPLE_SITE, mosquitto.url, tmp_path / "j.db") as service:
            gw = service.gateway

            def bus_states() -> set[str]:
                return {s.state for s in gw.spaces() if s.source == BUS.id}

            agents.append(RunningAgent(link, mosquitto.url, tmp_path / "spool", [0.0]))
            wait_until("the bus is known", lambda: bus_states() == {"free", "occupied"}, 20)
            agents.pop().stop()
            wait_until("the bus is unknown", lambda: bus_states() == {"unknown"}, 10)

            behind = [BEHIND]
            agents.append(RunningAgent(link, mosquitto.url, tmp_path / "spool", behind))
            wait_until(
                "the lagging run's reports are refused",
                lambda: gw.rejections.counts.get("stale_boot", 0) > 0,
                20,
            )
            time.sleep(1.0)
            assert bus_states() == {"unknown"}
            behind[0] = 0.0  # NTP steps the clock forward
            stepped = time.monotonic()
            wait_until("the bus is back", lambda: bus_states() == {"free", "occupied"}, 10)
            assert time.monotonic() - stepped < 5.0  # not a snapshot interval later
            assert "stepped forward by 600.0 s" in caplog.text
            agents.pop().stop()
    finally:
        for a in agents:
            a.stop()
        sim.close()


def test_after_a_stall_no_pre_stall_reading_is_told_as_fresh(tmp_path) -> None:
    """SIGSTOP for two minutes (a paused VM, a swap storm), the cars changing meanwhile:
    the snapshot due at the resume went out after the first node of the resumed cycle,
    every node's pre-stall bits in it stamped fresh (55 occupied on the signs for a second
    where there were 51). Now a reading older than the bus's TTL is forgotten: unknown
    until a new one holds, then the truth."""
    clocks = Clocks(T)
    bits = bus_bits(11)
    with offline_publisher(tmp_path, BUS.agent, BUS.id, lambda: clocks.wall) as (pub, made):
        agent, line = serial_agent(clocks, pub, bits)
        line.run_for(agent, 3.0)
        made.clear()
        clocks.advance(120.0)  # stopped: nothing polled, nothing sent
        for address in bits:  # every car left or came meanwhile
            bits[address] = [not b for b in bits[address]]
        pub.request_snapshot()  # as the broker reconnect after a stall asks
        line.run_for(agent, 0.05)  # the resumed cycle
        truth = {
            space: "occupied" if bit else "free"
            for n in BUS.nodes
            for space, bit in zip(n.spaces, bits[n.address], strict=False)
            if space is not None
        }
        told: dict[str, str] = {}
        for report in made:
            told.update({o.space: o.state for o in report.spaces})
        assert any(r.kind == "snapshot" for r in made)
        lies = [s for s, st in told.items() if st != "unknown" and st != truth[s]]
        assert not lies, f"{len(lies)} spaces told as before the stall: {lies[:5]}"
        line.run_for(agent, 2.0)  # the new readings hold
        for report in made:
            told.update({o.space: o.state for o in report.spaces})
        assert told == truth
