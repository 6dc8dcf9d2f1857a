"""``parkguide edge serial``: poll one RS-485 bus of node controllers, publish occupancy.

Each cycle reads every node's occupied bits (function 02, discrete inputs
``0..N-1``); the health registers (function 04) are read a few requests per
cycle: detector statuses in rounds every ``--health-interval`` seconds, as many
a cycle as it takes to spread the round evenly over ``HEALTH_ROUND_SHARE`` of
the interval, however long the bus; raw readings, batteries and node info (slow to change)
one request a cycle, every ``FULL_HEALTH_EVERY`` rounds, so they cost the
occupancy poll little.
``edge.debounce.BusTracker`` turns polls, failures and statuses into space
states; ``edge.publisher.ReportPublisher`` spools and publishes them: a
``delta`` as changes settle, a ``snapshot`` on every (re)connect and
periodically, retained health after every health round (every interval).

Bad frames never become transitions: the master drops anything that fails
the CRC or does not answer the request, and a reading must hold through the
debounce before it counts. A node that stops answering turns its spaces
``unknown``; so does a node that answers the poll with a Modbus exception
(health: the code in its ``errors``), and a detector whose status is a fault.
Every node's info is read as the port opens, before its bits count, and again
in health rounds: one that says it is not the site file's node (another model
or detector count: another bus on this port) has its spaces ``unknown`` too.
A node that answers, but unreliably (CRC errors, timeouts, polls with no valid
answer: ``UNRELIABLE_SHARE`` of its polls or more since the last health report, and
at least ``UNRELIABLE_MIN_BAD``),
is ``slow`` in health, and stays so until it has gone ``RELIABLE_AGAIN_S`` without such a
report, with a warning in the log at most once a minute. A round in which every answering
node of the bus had bad polls (a bus-wide hiccup: the machine or the adapter) makes no node
``slow``, unless the round before was bus-wide too.

A spool the publisher cannot write (a full disk) does not stop the agent: its reports
go out from memory, and its health says ``degraded`` with ``counters.spool_full`` 1,
published at once rather than at the end of the health round.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import re
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import serial

from edge.clocks import ClockWatch, moved_forward
from edge.debounce import BusTracker, DebounceSettings, SpaceChange
from edge.modbus_master import (
    DEFAULT_RETRIES,
    DEFAULT_TURNAROUND_S,
    ModbusError,
    ModbusExceptionResponse,
    ModbusMaster,
)
from edge.publisher import (
    ReportPublisher,
    SpoolBusy,
    choose_agent_id,
    default_spool_dir,
)
from parking import modbus_rtu as rtu
from parking import registers as reg
from parking.broker import BrokerConfig, add_credential_arguments, backoff_delay, broker_from_args
from parking.payloads import (
    FUTURE_TOLERANCE_S,
    DetectorHealth,
    HealthReport,
    NodeHealth,
    SpaceObservation,
    went_offline,
)
from parking.signals import stop_event_on_signals
from parking.site import Bus, NodeController, SiteError, load_site

log = logging.getLogger(__name__)

DEFAULT_HEALTH_INTERVAL_S = 5.0
FULL_HEALTH_EVERY = 6
"""raw readings, batteries and node info are read every this many health rounds"""
HEALTH_ROUND_SHARE = 0.8
"""a round of detector statuses is spread to end within this share of ``--health-interval``
(a stuck detector reads as a bit, only its status tells: on a long bus one status read a
cycle made a round take 30 s and more)"""
PORT_BACKOFF_BASE_S = 0.2
PORT_BACKOFF_CAP_S = 5.0
_WARN_EVERY_S = 60.0
UNRELIABLE_SHARE = 0.05
"""a node is ``slow`` when at least this share of its polls (health reads included) since the
last health report went wrong, and at least ``UNRELIABLE_MIN_BAD`` of them: a CRC error, a
timeout, a retry, or no valid answer at all. A sound RS-485 line loses next to nothing; a share
this size is wiring, termination or noise (at 9600 baud a node is polled some 20-35 times in a
5 s health round: two bad polls in one are about it)"""
UNRELIABLE_MIN_BAD = 2
"""one stray error (a contactor switching nearby) does not make a node ``slow``"""
RELIABLE_AGAIN_S = _WARN_EVERY_S
"""an unreliable node stays ``slow`` in health until it has gone this long without a report that
finds its polls unreliable; then it is ``ok`` again, and logged as reliable again"""
CUT_AFTER_SILENT_NODES = 2
"""after this many nodes in a row got no answer in one cycle (a cut cable, a dead trunk), the
nodes after them in that cycle are asked once, not with the retries: each retry of a silent node
costs a first-byte timeout, and on a long bus they made a cycle of seconds"""
SAY_DOWN_WAIT_CYCLES = 3
"""How many cycles the log line for nodes that stopped answering waits for other nodes failing
on their way down, so that nodes lost together (a cut cable) are said in one line."""
SLOW_CYCLE_SHARE_OF_TTL = 1 / 3
"""a poll cycle longer than this share of the bus's ``ttl_s`` is warned about: a space is
reported once a cycle at best, and the gateway turns one silent for ``ttl_s`` unknown"""
_AGENT_RE = re.compile(r"[A-Za-z0-9_.:-]{1,64}")  # parking.payloads.Identifier

NODE_ERROR_STATUS = "error"
"""health status of a node that answers its poll with a Modbus exception (the code is in its
``errors``): there, but refusing; or that says it is not the site file's node (its detector
count, as it says, in ``errors.detector_count``)"""

HealthKind = str  # "status" | "raw" | "battery" | "info"
_T = TypeVar("_T")


_WRONG_BUS = "the wrong bus on this port (adapters swapped? use /dev/serial/by-id names)"


def foreign_node_problem(node: NodeController, info: list[int]) -> str | None:
    """Why a node's info (``IR_MODEL``..) says it is not the site file's node, or None."""
    model, count = info[reg.IR_MODEL], info[reg.IR_DETECTOR_COUNT]
    if model != reg.MODEL_CODE:
        return (
            f"node {node.address} says model 0x{model:04x}, not a parkguide node controller "
            f"(0x{reg.MODEL_CODE:04x}): {_WRONG_BUS}"
        )
    if count == node.detectors:
        return None
    fix = (
        f"set `detectors: {count}` in the site file if it has spare channels"
        if count > node.detectors
        else f"the site file gives it too many (`detectors: {count}`, at most {count} spaces)"
    )
    return (
        f"node {node.address} says it has {count} detectors, the site file gives it "
        f"{node.detectors}: {_WRONG_BUS}, or {fix}"
    )


def address_ranges(addresses: Iterable[int]) -> str:
    """``[2, 3, 4, 7]`` -> ``"2-4, 7"``."""
    runs: list[list[int]] = []
    for a in sorted(addresses):
        if runs and a == runs[-1][1] + 1:
            runs[-1][1] = a
        else:
            runs.append([a, a])
    return ", ".join(f"{lo}-{hi}" if hi > lo else f"{lo}" for lo, hi in runs)


def status_reads_due(total: int, done: int, elapsed_s: float, span_s: float, cycle_s: float) -> int:
    """How many of a health round's ``total`` status reads (``done`` made) to make this cycle,
    for the round to be spread evenly over ``span_s`` (``elapsed_s`` gone, a cycle taking
    ``cycle_s``) and end by it: evenly, so that health goes out once an interval, not in
    bursts."""
    if span_s <= 0:
        return total - done
    share = min(1.0, (elapsed_s + cycle_s) / span_s)
    return max(0, math.ceil(total * share) - done)


@dataclass
class PollTally:
    """Polls of one node (any request to it: occupied bits or health registers)."""

    polls: int = 0
    bad: int = 0
    """polls that did not go right at once: a CRC error, a timeout, a retry, or no answer"""
    failed: int = 0
    """polls with no valid answer even after the retries"""
    crc: int = 0
    timeouts: int = 0
    stray: int = 0
    """polls that met bytes that were no answer to them: a cut-off answer, line noise, or
    another node's answer arriving late (a slow node's shows on the polls after its own)"""

    def add(self, other: PollTally) -> None:
        self.polls += other.polls
        self.bad += other.bad
        self.failed += other.failed
        self.crc += other.crc
        self.timeouts += other.timeouts
        self.stray += other.stray

    @property
    def unreliable(self) -> bool:
        return self.bad >= max(UNRELIABLE_MIN_BAD, UNRELIABLE_SHARE * self.polls)


@dataclass
class Reliability:
    """How well one node answers, health report by health report (status ``slow``)."""

    interval_start: float
    interval: PollTally = field(default_factory=PollTally)
    """polls since the last health report, once answered (see ``pending``)"""
    pending: PollTally = field(default_factory=PollTally)
    """polls that failed since the node last answered: counted once it answers again, and
    dropped when it turns out dead (a node that dies is ``dead``, not first ``slow``)"""
    unreliable: bool = False
    """a warning was logged and the node has not been reliable for RELIABLE_AGAIN_S since"""
    warned_at: float = -1e18
    last_slow: float = -1e18
    """when a report last found it unreliable (or could not tell: down, no port)"""
    since_warning: PollTally = field(default_factory=PollTally)

    def note(
        self, answered: bool, crc: int, timeouts: int, retried: bool, stray: bool = False
    ) -> None:
        t = self.pending
        t.polls += 1
        t.bad += not answered or retried or crc > 0 or timeouts > 0
        t.failed += not answered
        t.crc += crc
        t.timeouts += timeouts
        t.stray += stray
        if answered:
            self.interval.add(t)
            self.pending = PollTally()

    def take(self, now: float) -> tuple[PollTally, float]:
        """The polls since the last report and the seconds they span; starts a new interval."""
        tally, seconds = self.interval, now - self.interval_start
        self.interval, self.interval_start = PollTally(), now
        return tally, seconds


@dataclass
class NodeReadings:
    """What the last health round read from one node (None: not read yet)."""

    info: list[int] | None = None
    status: list[int] | None = None
    raw: list[int] | None = None
    battery: list[int] | None = None
    failures: int = 0
    """polls of this node that got no valid answer, since the agent started"""
    crc: int = 0
    """answers from this node (or meant as its) with a bad CRC, since the agent started"""
    timeouts: int = 0
    """requests to this node that timed out (retried or not), since the agent started"""
    exceptions: int = 0
    """polls this node answered with a Modbus exception, since the agent started"""
    reliability: Reliability = field(default_factory=lambda: Reliability(time.monotonic()))


@dataclass
class SerialAgent:
    """One bus: a Modbus master, a space tracker and a publisher, driven by ``run``."""

    site_id: str
    bus: Bus
    agent_id: str
    master: ModbusMaster
    publisher: ReportPublisher | None
    settings: DebounceSettings = field(default_factory=DebounceSettings)
    health_interval_s: float = DEFAULT_HEALTH_INTERVAL_S
    min_cycle_s: float = 0.0
    clock: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        # per space: (monotonic since, wall since) of the change last reported
        self._wall_since: dict[str, tuple[float, float]] = {}
        self._clock_watch = ClockWatch(self.wall, self.clock, f"agent {self.agent_id}")
        self.tracker = BusTracker(self.bus, self.settings, start=self.clock())
        start = self.clock()
        self.readings = {
            n.address: NodeReadings(reliability=Reliability(start)) for n in self.bus.nodes
        }
        self._said_down: set[int] = set()  # nodes logged as no longer answering
        # nodes that went down or came back during this cycle, said in one line at its end
        # (a cut cable loses dozens at once: one line for them, not one each)
        self._went_down: dict[int, str] = {}
        self._down_waited = 0  # cycles the line for them waited for others failing
        self._came_back: list[int] = []
        # nodes whose info was not read since the port opened: their bits are not trusted
        # before they say they are the site file's (a port may now be another bus's)
        self._unchecked = {n.address for n in self.bus.nodes}
        self._status_queue: deque[int] = deque()  # nodes whose statuses this round still reads
        self._status_total = 0  # nodes whose statuses this round reads
        self._slow_queue: deque[tuple[int, HealthKind]] = deque()  # raw, battery, info
        self._health_round_started = -1e18
        self._health_round_open = False
        self._health_rounds = 0
        self._health_step_at: float | None = None  # when health_step last ran: a cycle ago
        # when a bus-wide round was last let off as a hiccup (monotonic by self.clock)
        self._hiccup_at = -1e18
        self._port_attempt = 0
        self._last_port_warning = -1e18
        self._port_said_lost = False  # a warning said the port is lost: say when it is back
        self._port_health_at = -1e18
        self._spool_ok = True  # as the last health said
        self.cycles = 0
        self.cycle_s = 0.0  # how long the last poll cycle took
        self._slow_cycle_warned_at = -1e18

    # --- polling ----------------------------------------------------------------

    def _request(self, address: int, call: Callable[[], _T]) -> _T:
        """One master call for node ``address``; its CRC errors and timeouts are the node's,
        and it counts in the node's reliability (unless the port failed: not the node's)."""
        c = self.master.counters
        crc, timeouts, retries, garbage = c.crc_errors, c.timeouts, c.retries, c.garbage_bytes
        answered: bool | None = None
        try:
            result = call()
            answered = True
            return result
        except ModbusExceptionResponse:
            answered = True  # refused, but answered: its own warning covers it
            raise
        except ModbusError:
            answered = False
            raise
        finally:
            r = self.readings[address]
            r.crc += c.crc_errors - crc
            r.timeouts += c.timeouts - timeouts
            if answered is not None:
                r.reliability.note(
                    answered,
                    c.crc_errors - crc,
                    c.timeouts - timeouts,
                    c.retries > retries,
                    c.garbage_bytes > garbage,
                )

    def poll_node(self, node: NodeController, cut: bool = False) -> list[SpaceChange]:
        """Read one node's occupied bits; raises serial.SerialException if the port fails.
        ``cut``: the nodes before it in this cycle were silent (see CUT_AFTER_SILENT_NODES)."""
        # a node already known to be down gets one try a cycle, not the retries
        was_down = self.tracker.node_down(node.address)
        retries = 0 if cut or was_down else None
        if node.address in self._unchecked or self.tracker.node_foreign(node.address):
            # another bus's nodes answer the same addresses (USB adapters swapped, ttyUSB
            # names renumbered): a node must say it is the site file's before its bits
            # count, and one that did not is asked again every cycle, until rewired
            try:
                info = self._request(
                    node.address,
                    lambda: self.master.read_input_registers(
                        node.address, reg.IR_MODEL, reg.NODE_INFO_COUNT, retries=retries
                    ),
                )
            except ModbusExceptionResponse as exc:
                return self._poll_refused(node, exc.code)
            except ModbusError as exc:
                return self._poll_failed(node, exc, was_down)
            self._unchecked.discard(node.address)
            if self._is_foreign(node, info):
                return self.tracker.foreign_node(node.address, self.clock())
        try:
            bits = self._request(
                node.address,
                lambda: self.master.read_discrete_inputs(
                    node.address, reg.OCCUPIED_BITS, node.detectors, retries=retries
                ),
            )
        except ModbusExceptionResponse as exc:
            return self._poll_refused(node, exc.code)
        except ModbusError as exc:
            return self._poll_failed(node, exc, was_down)
        # only after a warning about this node: one that went down with the whole bus (the
        # port lost, logged once for the bus) comes back with it, told by "port ... is back"
        if node.address in self._said_down or self.tracker.node_exception(node.address) is not None:
            self._said_down.discard(node.address)
            self._came_back.append(node.address)
        now = self.clock()
        changes: list[SpaceChange] = []
        if self.tracker.would_settle(node.address, bits, now):
            # statuses are read in health rounds, seconds apart; a detector that died reads
            # 0: its fault must be known before that 0 is published as a free space
            changes += self._read_status(node)
        return changes + self.tracker.poll_ok(node.address, bits, self.clock())

    def _poll_failed(
        self, node: NodeController, exc: ModbusError, was_down: bool
    ) -> list[SpaceChange]:
        """A poll of the node got no valid answer; ``was_down``: it was down before it."""
        self.readings[node.address].failures += 1
        log.debug("poll: %s", exc)
        # a silence after the cut counts as all the attempts it was spared: they would
        # have timed out too (and a node down needs no counting)
        attempts = 1 + self.master.retries
        changes = self.tracker.poll_failed(node.address, self.clock(), attempts)
        if not self.tracker.node_down(node.address):
            return changes
        # it is dead, not unreliable: the polls it failed on its way there tell nothing
        # of the line (its health says ``dead``)
        self.readings[node.address].reliability.pending = PollTally()
        if was_down:
            return changes
        self._said_down.add(node.address)
        self._went_down[node.address] = str(exc)
        return changes

    def _say_nodes_changed(self) -> None:
        """Log the nodes that stopped answering, or answer again, in this cycle: one line
        each way, naming where the bus looks cut when every node after one is silent. Nodes
        lost together cross the line into ``down`` a cycle or two apart (the first silent one
        is retried, the rest not): while others are failing on their way down, the line waits
        for them, up to ``SAY_DOWN_WAIT_CYCLES``."""
        order = [n.address for n in self.bus.nodes]
        failing = [
            a for a in order if not self.tracker.node_down(a) and not self.tracker.node_answering(a)
        ]
        if self._went_down and failing and self._down_waited < SAY_DOWN_WAIT_CYCLES:
            self._down_waited += 1
        else:
            self._say_went_down(order)
            self._went_down.clear()
            self._down_waited = 0
        if len(self._came_back) == 1:
            log.info("bus %s: node %d answers again", self.bus.id, self._came_back[0])
        elif self._came_back:
            log.info("bus %s: nodes %s answer again", self.bus.id, address_ranges(self._came_back))
        self._came_back.clear()

    def _say_went_down(self, order: list[int]) -> None:
        """The line for the nodes that went down (``_say_nodes_changed``)."""
        if len(self._went_down) == 1:
            ((address, why),) = self._went_down.items()
            log.warning(
                "bus %s: node %d stopped answering (%s); its spaces are unknown",
                self.bus.id,
                address,
                why,
            )
        elif self._went_down:
            answering = [i for i, a in enumerate(order) if self.tracker.node_answering(a)]
            last = answering[-1] if answering else None
            tail = ""
            if last is not None and last + 1 < len(order):
                # the site file lists nodes in cable order as a rule: past the last one
                # answering, none does
                tail = (
                    f"; no node listed after node {order[last]} answers: the cable cut"
                    f" past node {order[last]}, or a trunk without power?"
                )
            log.warning(
                "bus %s: nodes %s (%d of %d) stopped answering; their spaces are unknown%s",
                self.bus.id,
                address_ranges(self._went_down),
                len(self._went_down),
                len(order),
                tail,
            )

    def _is_foreign(self, node: NodeController, info: list[int]) -> bool:
        """Keep the node's info; True when it says it is not the node the site file describes.
        Said once as it starts (both causes: the wrong bus, or the site file) and once as it
        ends."""
        self.readings[node.address].info = info
        problem = foreign_node_problem(node, info)
        was = self.tracker.node_foreign(node.address)
        if problem and not was:
            log.warning("bus %s: %s; its spaces are unknown", self.bus.id, problem)
        elif was and not problem:
            log.info(
                "bus %s: node %d now says it is the node the site file describes",
                self.bus.id,
                node.address,
            )
        return problem is not None

    def _poll_refused(self, node: NodeController, code: int) -> list[SpaceChange]:
        """The node answered its poll with exception ``code``: it is on the bus and answers,
        so it is not dead, but its spaces are unknown (a wrong detector count in the site
        file is the usual cause: the read asks for bits the node does not have)."""
        self.readings[node.address].exceptions += 1
        if self.tracker.node_exception(node.address) != code:
            hint = (
                f": does it have the {node.detectors} detectors the site file gives it?"
                if code == rtu.ILLEGAL_DATA_ADDRESS
                else ""
            )
            log.warning(
                "bus %s: node %d answers the poll of its occupied bits with exception %d%s; "
                "its spaces are unknown",
                self.bus.id,
                node.address,
                code,
                hint,
            )
        return self.tracker.poll_refused(node.address, code, self.clock())

    def _read_status(self, node: NodeController) -> list[SpaceChange]:
        """Read and apply one node's detector statuses now (nothing if it does not answer)."""
        try:
            values = self._request(
                node.address,
                lambda: self.master.read_input_registers(
                    node.address, reg.IR_DETECTOR_STATUS, node.detectors, retries=1
                ),
            )
        except ModbusError as exc:
            log.debug("status before a change: %s", exc)
            return []
        self._note_status(node, values)
        return self.tracker.detector_status(node.address, values, self.clock())

    def _note_status(self, node: NodeController, values: list[int]) -> None:
        """Log detector status changes and keep the reading for health."""
        address = node.address
        before = self.readings[address].status or [reg.DetectorStatus.OK] * len(values)
        for i, (old, new) in enumerate(zip(before, values, strict=False)):
            if old != new:
                log.info(
                    "bus %s: node %d detector %d (%s): status %s -> %s",
                    self.bus.id,
                    address,
                    i,
                    node.spaces[i] if i < len(node.spaces) else None,
                    _status_label(old),
                    _status_label(new),
                )
        self.readings[address].status = values

    def poll_cycle(
        self, after_node: Callable[[list[SpaceChange]], None] | None = None
    ) -> list[SpaceChange]:
        """Read every node's occupied bits once; ``after_node`` gets each node's changes (maybe
        none) at once: a change is not held back for the rest of the cycle, nor a snapshot
        that falls due (a cycle with nodes lost takes seconds)."""
        started = self.clock()
        changes: list[SpaceChange] = []
        silent_in_a_row = 0
        for node in self.bus.nodes:
            failures = self.readings[node.address].failures
            node_changes = self.poll_node(node, cut=silent_in_a_row >= CUT_AFTER_SILENT_NODES)
            silent = self.readings[node.address].failures > failures
            silent_in_a_row = silent_in_a_row + 1 if silent else 0
            if after_node is not None:
                after_node(node_changes)
            changes += node_changes
        self._say_nodes_changed()
        self.cycles += 1
        self.cycle_s = self.clock() - started
        self._warn_if_slow_cycle()
        return changes

    def _warn_if_slow_cycle(self) -> None:
        """Say (at most once a minute) that the cycle is too long for the bus's ``ttl_s``."""
        limit = self.bus.ttl_s * SLOW_CYCLE_SHARE_OF_TTL
        now = self.clock()
        if self.cycle_s <= limit or now - self._slow_cycle_warned_at < _WARN_EVERY_S:
            return
        self._slow_cycle_warned_at = now
        silent = sum(self.tracker.node_down(n.address) for n in self.bus.nodes)
        log.warning(
            "bus %s: a poll cycle took %.1f s, more than a third of the bus's ttl_s (%g s); "
            "%d of %d nodes are not answering (each costs a first-byte timeout: "
            "--turnaround-ms); the gateway may turn spaces unknown between reports",
            self.bus.id,
            self.cycle_s,
            self.bus.ttl_s,
            silent,
            len(self.bus.nodes),
        )

    def health_step(self) -> tuple[list[SpaceChange], bool]:
        """This cycle's health reads: the detector statuses due (spread over the round), and
        at most one slow read (raw, battery, info); returns (changes, True when a round of
        statuses just finished: health is due)."""
        now = self.clock()
        cycle_s = 0.0 if self._health_step_at is None else now - self._health_step_at
        self._health_step_at = now
        if not self._health_round_open:
            if now - self._health_round_started < self.health_interval_s:
                return self._health_read_slow(), False
            self._start_health_round(now)
        reads = status_reads_due(
            self._status_total,
            self._status_total - len(self._status_queue),
            now - self._health_round_started,
            HEALTH_ROUND_SHARE * self.health_interval_s,
            cycle_s,
        )
        changes: list[SpaceChange] = []
        for _ in range(reads):
            address = self._status_queue.popleft()
            # one that did not answer its last poll would only cost timeouts (31 nodes of a
            # cut cable, one by one on their way down: seconds without a snapshot)
            if not self.tracker.node_answering(address):
                continue
            answers = self.master.counters.answers
            changes += self._health_read(address, "status")
            if self.master.counters.answers == answers:
                # no answer: perhaps one of many nodes lost at once (a cut cable), each read
                # costing timeouts; the next poll cycle tells, the round's rest waits for it
                break
        done = not self._status_queue
        self._health_round_open = not done
        return changes + self._health_read_slow(), done

    def _start_health_round(self, now: float) -> None:
        # on a grid of intervals, not from whenever the cycle came round: health once an
        # interval, not an interval and a cycle
        interval = self.health_interval_s
        late = (now - self._health_round_started) % interval if interval > 0 else 0.0
        self._health_round_started = now - late
        self._health_round_open = True
        up = [n.address for n in self.bus.nodes if self.tracker.node_answering(n.address)]
        # statuses every round: a faulted detector must turn unknown soon; raw readings,
        # batteries and node info change slowly and cost wire time (at 9600 baud one
        # 32-register read is a third of a poll cycle), so only every few rounds
        self._status_queue.extend(up)
        self._status_total = len(up)
        if self._health_rounds % FULL_HEALTH_EVERY == 0 and not self._slow_queue:
            for kind in ("raw", "battery", "info"):
                self._slow_queue.extend((a, kind) for a in up)
        self._health_rounds += 1

    @property
    def slow_reads_pending(self) -> int:
        """Raw readings, batteries and node info still to read (one a cycle)."""
        return len(self._slow_queue)

    def _health_read_slow(self) -> list[SpaceChange]:
        while self._slow_queue:
            address, kind = self._slow_queue.popleft()
            if self.tracker.node_answering(address):
                return self._health_read(address, kind)
        return []

    def _health_read(self, address: int, kind: HealthKind) -> list[SpaceChange]:
        """One health request to a node; changes of its spaces it brings."""
        node = self.bus.node(address)
        start, count = {
            "status": (reg.IR_DETECTOR_STATUS, node.detectors),
            "raw": (reg.IR_DETECTOR_RAW, node.detectors),
            "battery": (reg.IR_DETECTOR_BATTERY, node.detectors),
            "info": (reg.IR_MODEL, reg.NODE_INFO_COUNT),
        }[kind]
        try:
            values = self._request(
                address, lambda: self.master.read_input_registers(address, start, count, retries=1)
            )
        except ModbusExceptionResponse as exc:
            # a node refusing its poll refuses these too: its warning was given once
            refusing = self.tracker.node_exception(address) is not None
            log.log(logging.DEBUG if refusing else logging.INFO, "health: %s", exc)
            return []
        except ModbusError as exc:
            log.debug("health: %s", exc)
            return []
        if kind == "status":
            self._note_status(node, values)
            return self.tracker.detector_status(address, values, self.clock())
        if kind == "info" and self._is_foreign(node, values):
            return self.tracker.foreign_node(address, self.clock())
        setattr(self.readings[address], kind, values)
        return []

    # --- reports ----------------------------------------------------------------

    def observations(self, changes: list[SpaceChange]) -> list[SpaceObservation]:
        """SpaceChange (monotonic since) -> wire observations (UNIX since).

        A change's wall time is the monotonic ``since`` by the wall clock's offset, and
        every later report (deltas, snapshots) carries the same while the clock is not
        stepped: the gateway never sees it move. A step moves it (``follow_clock``).
        """
        self.follow_clock()
        out = []
        for c in changes:
            known = self._wall_since.get(c.space)
            if known is None or known[0] != c.since:
                wall = max(0.0, self._clock_watch.to_wall(c.since))
                if known is not None:
                    # a clock stepped back: never before the time the previous state was
                    # reported with (the gateway refuses an older one as older than known)
                    wall = max(wall, known[1])
                known = self._wall_since[c.space] = (c.since, wall)
            out.append(SpaceObservation(space=c.space, state=c.state.label, since=known[1]))
        return out

    def follow_clock(self) -> float:
        """Look for a step of the wall clock (``edge.clocks``); returns it (0.0: none).

        Forward (a box that started behind, then NTP synchronised): the wall ``since`` of
        every change moves with the step, so that the gateway does not refuse them as
        older than what it knew from the agent's previous run, but never past its
        monotonic start on the clock as it now reads (``edge.clocks.moved_forward``).
        Backward (a clock that ran
        ahead): a ``since`` beyond the gateway's future tolerance of the clock now is
        brought back to it (the gateway refused it: left, a brief step forward and back
        would keep every space refused as ``from_the_future``); a nearer one stays (the
        gateway took it; moved back, it would be older than known), and a new change is
        stamped no earlier than its space's previous state. Either way a snapshot is
        asked for, so that every space carries its corrected time at once.
        Reports already spooled keep theirs.
        """
        step = self._clock_watch.check()
        if step > 0:
            # bounded by its monotonic start on the clock as it now reads (never past the
            # present): one a backward step left ahead of the clock lands where it began
            to_wall = self._clock_watch.to_wall
            self._wall_since = {
                s: (m, moved_forward(w, step, to_wall(m))) for s, (m, w) in self._wall_since.items()
            }
        elif step < 0:
            now = self._clock_watch.last_wall
            # a since the gateway may have taken (within its tolerance) stays: moved back, it
            # would be older than what it knows; one beyond could not have been: to now
            limit = now + FUTURE_TOLERANCE_S
            self._wall_since = {
                s: (m, w if w <= limit else now) for s, (m, w) in self._wall_since.items()
            }
        if step and self.publisher is not None:
            self.publisher.request_snapshot()
        return step

    def _judge_round(self) -> dict[int, bool]:
        """Each node's ``slow`` for this health report (see ``_judge_reliability``). A round in
        which every answering node of the bus (two or more) had bad polls is a bus-wide
        hiccup (the machine's scheduling or the adapter, not one node's wiring): it makes no
        node unreliable, unless another bus-wide round was let off within RELIABLE_AGAIN_S
        (a whole bus that keeps failing, such as a missing termination, or fails again and
        again, is judged from its second bus-wide round on)."""
        now = self.clock()
        taken = {n.address: self.readings[n.address].reliability.take(now) for n in self.bus.nodes}
        observed = {a: not self.tracker.node_down(a) and self.master.is_open for a in taken}
        answering = [t for a, (t, _) in taken.items() if observed[a] and t.polls]
        bus_wide = len(answering) >= 2 and all(t.bad for t in answering)
        # let off only when rare: a bus-wide fault that comes back (a pump's contactor on a
        # schedule, a loose trunk connector) is judged, even if no two rounds run together
        hiccup = bus_wide and now >= self._hiccup_at + RELIABLE_AGAIN_S
        if hiccup:
            self._hiccup_at = now
        if hiccup:
            log.debug(
                "bus %s: every answering node had bad polls in this health round: a bus-wide "
                "hiccup, no node judged unreliable for it",
                self.bus.id,
            )
        return {
            a: self._judge_reliability(a, tally, seconds, observed[a], now, hiccup)
            for a, (tally, seconds) in taken.items()
        }

    def _judge_reliability(
        self,
        address: int,
        tally: PollTally,
        seconds: float,
        observed: bool,
        now: float,
        hiccup: bool = False,
    ) -> bool:
        """True while node ``address`` is unreliable (its status is then ``slow``): from the
        first health report that finds its polls since the previous one unreliable until it
        has gone RELIABLE_AGAIN_S without such a report, so that an intermittent fault is one
        episode, not ``slow``/``ok`` report by report. Logs a warning when that starts and at
        most once a minute while it lasts, and when the node is reliable again.
        ``observed`` False: the node is down or the port lost, its polls say nothing.
        ``hiccup``: a bus-wide hiccup round (see ``_judge_round``), which judges no node."""
        rel = self.readings[address].reliability
        if not observed:
            if rel.unreliable:  # reliable again only after answering well for a while
                rel.last_slow = now
            return False
        slow = tally.unreliable and not hiccup
        if slow:
            rel.last_slow = now
            if not rel.unreliable or now - rel.warned_at >= _WARN_EVERY_S:
                told, span = tally, seconds
                if rel.unreliable:  # a repeat: everything since the last warning
                    rel.since_warning.add(tally)
                    told, span = rel.since_warning, now - rel.warned_at
                log.warning(
                    "bus %s: node %d: %d of %d polls failed or needed a retry in the last "
                    "%.0f s (CRC errors %d, timeouts %d, stray bytes %d, no valid answer %d):"
                    " check the wiring and termination%s",
                    self.bus.id,
                    address,
                    told.bad,
                    told.polls,
                    span,
                    told.crc,
                    told.timeouts,
                    told.stray,
                    told.failed,
                    "; stray bytes may also be the late answers of a slow node polled before"
                    " it (a node with timeouts of its own)"
                    if told.stray
                    else "",
                )
                rel.unreliable, rel.warned_at, rel.since_warning = True, now, PollTally()
                return True
        elif rel.unreliable and now - rel.last_slow >= RELIABLE_AGAIN_S:
            rel.unreliable = False
            log.info(
                "bus %s: node %d answers reliably again (under %d %% of its polls failed "
                "for %.0f s)",
                self.bus.id,
                address,
                round(UNRELIABLE_SHARE * 100),
                now - rel.last_slow,
            )
        if rel.unreliable:
            rel.since_warning.add(tally)
        else:
            rel.since_warning = PollTally()
        return rel.unreliable

    def health_report(self) -> HealthReport:
        nodes = []
        faults = 0
        down = 0
        refusing = 0
        # answers, but unreliably: timeouts, CRC errors, polls with no valid answer
        unreliable = self._judge_round()
        for n in self.bus.nodes:
            r = self.readings[n.address]
            is_down = self.tracker.node_down(n.address)
            exception = None if is_down else self.tracker.node_exception(n.address)
            # answers, but is not the site file's node (another bus's, on this port)
            foreign = not is_down and self.tracker.node_foreign(n.address)
            down += is_down
            refusing += exception is not None or foreign
            # a node that gives no bits (or cannot be asked: no port) vouches for none of
            # its detectors: what was read from them before must not read as live
            mute = is_down or exception is not None or foreign or not self.master.is_open
            detectors = []
            for i, sid in enumerate(n.spaces):
                status = None if mute else self.tracker.detector_fault(n.address, i)
                faults += status is not None and status != reg.DetectorStatus.OK
                battery = r.battery[i] if r.battery else None
                detectors.append(
                    DetectorHealth(
                        index=i,
                        space=sid,
                        status=status.label if status is not None else "unknown",
                        raw=r.raw[i] if r.raw and not mute else None,
                        battery=None if battery is None or battery > 100 else battery,
                    )
                )
            info = r.info
            # the wire contract's per-node errors, then the agent's and the node's own
            errors = {
                "crc": r.crc,
                "timeouts": r.timeouts,
                "failed_polls": r.failures,
                "exceptions": r.exceptions,
            }
            if exception is not None:
                errors["exception"] = exception  # the code its last poll was answered with
            if foreign and info:
                errors["detector_count"] = info[reg.IR_DETECTOR_COUNT]  # as the node says
            if is_down:
                node_status = "dead"
            elif exception is not None or foreign:
                node_status = NODE_ERROR_STATUS
            elif r.status is None:
                node_status = "unknown"
            else:
                node_status = "slow" if unreliable[n.address] else "ok"
            if info:
                errors |= {
                    "node_crc_errors": info[reg.IR_CRC_ERRORS],
                    "node_bus_errors": info[reg.IR_BUS_ERRORS],
                }
            nodes.append(
                NodeHealth(
                    address=n.address,
                    status=node_status,
                    model=info[reg.IR_MODEL] if info else None,
                    firmware=(
                        f"{info[reg.IR_FIRMWARE] >> 8}.{info[reg.IR_FIRMWARE] & 0xFF}"
                        if info
                        else None
                    ),
                    uptime_s=(info[reg.IR_UPTIME_HI] << 16 | info[reg.IR_UPTIME_LO])
                    if info
                    else None,
                    errors=errors,
                    detectors=detectors,
                )
            )
        # reports only in memory (a full disk) are lost if the agent stops: not "ok" either
        spool_failing = self.publisher is not None and not self.publisher.spool_ok
        status = (
            "blind"
            if down == len(self.bus.nodes)
            else ("degraded" if down or refusing or faults or spool_failing else "ok")
        )
        # 0 while the serial port is lost (adapter unplugged): the bus is blind for that
        # reason, not because every node died (as the camera agent's ``stream_up``)
        counters = self.master.counters.as_dict() | {
            "cycles": self.cycles,
            "cycle_ms": round(self.cycle_s * 1000),
            "port_up": int(self.master.is_open),
        }
        if self.publisher is not None:
            counters |= {f"mqtt_{k}": v for k, v in self.publisher.stats.items()}
            counters |= self.publisher.spool_health()
        return HealthReport(
            agent=self.agent_id,
            source=self.bus.id,
            ts=self.wall(),
            status=status,
            counters=counters,
            nodes=nodes,
        )

    def offline_health(self) -> HealthReport:
        """The last health, as the agent stops: ``went_offline``, and no raw reading left
        either (nothing in the retained message reads as live)."""
        report = went_offline(self.health_report())
        nodes = [
            n.model_copy(
                update={"detectors": [d.model_copy(update={"raw": None}) for d in n.detectors]}
            )
            for n in report.nodes
        ]
        return report.model_copy(update={"nodes": nodes})

    def _publish(self, changes: list[SpaceChange]) -> None:
        pub = self.publisher
        if pub is None:
            return
        if changes:
            pub.report("delta", self.observations(changes))
        if pub.snapshot_due():
            pub.report("snapshot", self.observations(self.tracker.snapshot()))

    # --- the loop ---------------------------------------------------------------

    def _port_down(self, exc: Exception) -> list[SpaceChange]:
        """The port failed or is gone: every node is unreachable until it is back."""
        self.master.close()
        now = self.clock()
        if now - self._last_port_warning >= _WARN_EVERY_S:
            self._last_port_warning = now
            self._port_said_lost = True
            log.warning("serial port %s: %s; reopening with backoff", self.master.port_name, exc)
        changes: list[SpaceChange] = []
        for n in self.bus.nodes:
            self.readings[n.address].failures += 1
            # failures of the port, not of the nodes: no node turns ``slow`` for them
            self.readings[n.address].reliability.pending = PollTally()
            changes += self.tracker.poll_failed(n.address, now)
        return changes

    def _health_while_port_down(self) -> None:
        """No health round can run without the port: say so every health interval (the
        retained health must not keep saying ``ok`` from before)."""
        now = self.clock()
        if self.publisher is None or now - self._port_health_at < self.health_interval_s:
            return
        self._port_health_at = now
        for n in self.bus.nodes:  # nothing is known of any detector now
            self.readings[n.address].status = None
        self.publisher.publish_health(self.health_report().model_copy(update={"status": "blind"}))

    def _spool_changed(self) -> bool:
        """True once when the publisher's spool fails or works again: its health says so
        now, not at the end of a round (``--health-interval`` may be long)."""
        ok = self.publisher is None or self.publisher.spool_ok
        changed, self._spool_ok = ok != self._spool_ok, ok
        return changed

    def _after_node(self, changes: list[SpaceChange]) -> None:
        """Publish ``changes``, a snapshot that is due, and the health of a spool that failed
        or works again: after every node, not once a cycle (a cycle may take seconds).
        Nodes not answered for longer than the bus's TTL (the agent was stalled) turn
        their spaces unknown first, so a snapshot due now does not tell their old bits."""
        self._publish(changes + self.tracker.expire(self.clock()))
        if self._spool_changed() and self.publisher is not None:
            self.publisher.publish_health(self.health_report())

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set."""
        while not stop.is_set():
            started = self.clock()
            self.follow_clock()  # a step is seen (and logged) when it happens
            if not self.master.is_open:
                try:
                    self.master.open()
                    if self._port_said_lost:
                        # the one line for the bus: its nodes do not each say "answers again"
                        log.info("serial port %s is back", self.master.port_name)
                        self._port_said_lost = False
                    self._port_attempt = 0
                    # what answers on the port now may be another bus (adapters swapped)
                    self._unchecked = {n.address for n in self.bus.nodes}
                except (serial.SerialException, OSError) as exc:
                    self._publish(self._port_down(exc))
                    self._health_while_port_down()
                    delay = backoff_delay(
                        self._port_attempt, base=PORT_BACKOFF_BASE_S, cap=PORT_BACKOFF_CAP_S
                    )
                    self._port_attempt += 1
                    stop.wait(delay)
                    continue
            try:
                self.poll_cycle(after_node=self._after_node)
                changes, round_done = self.health_step()
            except (serial.SerialException, OSError) as exc:
                changes, round_done = self._port_down(exc), False
            self._after_node(changes)
            if round_done and self.publisher is not None:
                self.publisher.publish_health(self.health_report())
            idle = self.min_cycle_s - (self.clock() - started)
            if idle > 0:
                stop.wait(idle)


# --- command line ---------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--bus", required=True, help="id of the RS-485 bus in the site file")
    parser.add_argument(
        "--port",
        required=True,
        help="serial device of the bus, e.g. /dev/serial/by-id/usb-FTDI_..._A10K1XYZ-if00-port0"
        " (a by-id name stays with its adapter; /dev/ttyUSB0 may become another adapter's"
        " after a reboot or a replug) or a pty link; one not there yet is waited for",
    )
    parser.add_argument("--broker", required=True, help="mqtt://HOST:PORT (or mqtts://)")
    parser.add_argument(
        "--wait-for-port",
        action="store_true",
        help="a --port that does not exist yet is waited for, the bus said blind meanwhile"
        " (the default under systemd; by hand a missing port is an error)",
    )
    parser.add_argument(
        "--agent",
        help="agent id in MQTT topics (default: the bus's agent in the site file, serial-<bus>)",
    )
    add_credential_arguments(parser)
    parser.add_argument(
        "--spool-dir",
        type=Path,
        help=f"where unsent reports wait on disk (default: {default_spool_dir()})",
    )
    parser.add_argument(
        "--debounce-ms",
        type=int,
        default=500,
        help="a detector must hold a new reading this long before it counts (default 500; "
        "the node's own debounce adds 300)",
    )
    parser.add_argument(
        "--node-timeout-ms",
        type=int,
        default=1500,
        help="a node silent this long (and for --node-failures requests, retries included) "
        "turns its spaces unknown",
    )
    parser.add_argument("--node-failures", type=int, default=3, help="see --node-timeout-ms")
    parser.add_argument(
        "--health-interval",
        type=float,
        default=DEFAULT_HEALTH_INTERVAL_S,
        metavar="S",
        help="seconds between health rounds (detector status, raw, battery, node info)",
    )
    parser.add_argument(
        "--snapshot-interval",
        type=float,
        default=None,
        metavar="S",
        help="seconds between periodic snapshots (one is also sent on every connect); "
        "default: a third of the bus's ttl_s in the site file, so the gateway never "
        "takes a quiet bus for a silent one",
    )
    parser.add_argument(
        "--retries", type=int, default=DEFAULT_RETRIES, help="retries per Modbus request"
    )
    parser.add_argument(
        "--turnaround-ms",
        type=float,
        default=DEFAULT_TURNAROUND_S * 1000,
        help="how long a node may take to start answering (default 100)",
    )
    parser.add_argument(
        "--min-cycle-ms",
        type=float,
        default=0.0,
        help="lower bound of a poll cycle; 0 polls as fast as the line allows (default)",
    )


def _status_label(code: int) -> str:
    try:
        return reg.DetectorStatus(code).label
    except ValueError:
        return f"code {code}"


class UsageError(ValueError):
    """Bad command-line input: exit code 2."""


def _broker_config(args: argparse.Namespace) -> BrokerConfig:
    try:
        return broker_from_args(args.broker, args)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _check(args: argparse.Namespace) -> tuple[str, Bus, BrokerConfig, DebounceSettings]:
    try:
        site = load_site(args.site)
    except SiteError as exc:
        raise UsageError(str(exc)) from None
    try:
        bus = site.bus(args.bus)
    except KeyError as exc:
        raise UsageError(str(exc.args[0])) from None
    if args.agent is not None and not _AGENT_RE.fullmatch(args.agent):
        raise UsageError(f"--agent {args.agent!r}: 1-64 letters, digits, '_', '.', ':' or '-'")
    for name in ("debounce_ms", "node_timeout_ms", "retries", "turnaround_ms", "min_cycle_ms"):
        if getattr(args, name) < 0:
            raise UsageError(f"--{name.replace('_', '-')} must not be negative")
    if args.node_failures < 1:
        raise UsageError("--node-failures must be at least 1")
    if args.snapshot_interval is None:
        args.snapshot_interval = site.snapshot_interval(bus.id)
    for name in ("health_interval", "snapshot_interval"):
        if not 0 < getattr(args, name) < math.inf:  # NaN too: no snapshot would ever be due
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    problem = site.snapshot_interval_problem(bus.id, args.snapshot_interval)
    if problem:
        raise UsageError(f"--snapshot-interval: {problem}")
    settings = DebounceSettings(
        hold_s=args.debounce_ms / 1000,
        node_timeout_s=args.node_timeout_ms / 1000,
        node_max_failures=args.node_failures,
    )
    return site.id, bus, _broker_config(args), settings


def _port_problem(master: ModbusMaster) -> str | None:
    """Open the port once at start: one held by another process (a second agent for the
    bus: it would publish the bus as unknown and take over the first one's MQTT session)
    or a path that is no serial device is refused. A port not there yet is not a problem:
    the agent waits for it (an adapter plugged in later)."""
    try:
        master.open()
    except (serial.SerialException, OSError) as exc:
        text = str(exc)
        if "lock" in text.lower():
            return "in use by another process (another agent for this bus?)"
        if "Inappropriate ioctl" in text or (
            os.path.exists(master.port_name)
            and not os.path.realpath(master.port_name).startswith("/dev/")
        ):
            return f"not a serial device ({text})"
        return None
    finally:
        master.close()
    return None


def main(args: argparse.Namespace) -> int:
    try:
        site_id, bus, broker, settings = _check(args)
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    agent_id = choose_agent_id(args.agent, bus.id, bus.agent)
    master = ModbusMaster(
        args.port,
        bus.baud,
        bus.parity,
        retries=args.retries,
        turnaround_s=args.turnaround_ms / 1000,
    )
    problem = _port_problem(master)
    if problem:
        print(f"error: --port {args.port}: {problem}", file=sys.stderr)
        return 2
    if not os.path.exists(args.port):
        if not (args.wait_for_port or os.environ.get("INVOCATION_ID")):
            # by hand: a typo, most likely; and a second agent with the service's login
            # would take the bus over from it
            print(
                f"error: --port {args.port}: does not exist (--wait-for-port to wait for"
                " the adapter)",
                file=sys.stderr,
            )
            return 2
        # the service (systemd sets INVOCATION_ID) on a box restarted with its adapter
        # unplugged or dead: it runs, says the bus is blind (health, the managers' alert)
        # and reads it once the port appears, rather than exit and be restarted every few
        # seconds, offline
        log.warning(
            "serial port %s does not exist (yet): waiting for it (adapter unplugged? a"
            " /dev/serial/by-id/ name keeps pointing at the same adapter across reboots)",
            args.port,
        )
    try:
        publisher = ReportPublisher(
            broker,
            site_id,
            agent_id,
            bus.id,
            spool_dir=args.spool_dir,
            snapshot_interval_s=args.snapshot_interval,
        )
    except ValueError as exc:
        print(f"error: --agent: {exc}", file=sys.stderr)
        return 2
    try:
        publisher.start()
    except (SpoolBusy, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    agent = SerialAgent(
        site_id,
        bus,
        agent_id,
        master,
        publisher,
        settings,
        health_interval_s=args.health_interval,
        min_cycle_s=args.min_cycle_ms / 1000,
    )
    stop = stop_event_on_signals(log)
    log.info(
        "agent %s: bus %s (%d nodes, %d spaces) on %s at %d baud %s, broker %s, spool %s",
        agent_id,
        bus.id,
        len(bus.nodes),
        sum(1 for _ in agent.tracker.spaces),
        args.port,
        bus.baud,
        bus.parity,
        broker.url,
        publisher.spool_path,
    )
    try:
        agent.run(stop)
    finally:
        master.close()
        publisher.publish_health(agent.offline_health())
        publisher.stop()
    return 0
