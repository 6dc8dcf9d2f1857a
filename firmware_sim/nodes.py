"""Simulated node controllers: the register model of parking.registers, faults, no I/O.

``SimulatedBus.receive(data, now)`` takes bytes as they come off the line and
returns the answers the nodes would put on it; ``SimulatedBus.apply(command,
now)`` carries out a console command. Time is passed in (monotonic seconds),
so everything here is deterministic for a seed and testable as byte tables.

Each detector sees a "physical" vehicle presence (set by the scenario or a
``set`` command). Its raw reading is the vehicle's magnetic signature or the
empty bay's baseline, plus noise; the node compares the noise-free level with
the threshold register and lets the result through only once it has held for
the debounce register's milliseconds, as the node firmware would.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field

from firmware_sim.commands import (
    HELP,
    ClearAll,
    ClearNode,
    ClearSpace,
    Command,
    CommandError,
    DetectorFault,
    FaultNode,
    FaultSpace,
    Help,
    NodeFault,
    SetBattery,
    SetSpace,
    Status,
)
from parking import modbus_rtu as rtu
from parking import registers as reg
from parking.site import Bus

log = logging.getLogger(__name__)

FLAP_PERIOD_S = (0.2, 0.4)
MAX_DEBOUNCE_MS = 10_000
# A free bay reads the earth's field disturbed a little; a car, far more (magnetometer counts).
BASELINE_RANGE = (30, 120)
SIGNATURE_RANGE = (700, 1600)
NOISE_FRACTION = 0.04
NOISE_COUNTS = 8

_COLOURS = frozenset(int(c) for c in reg.IndicatorColour)
_FAULT_STATUS = {
    DetectorFault.STUCK: reg.DetectorStatus.STUCK,
    DetectorFault.FLAP: reg.DetectorStatus.FLAPPING,
    DetectorFault.DEAD: reg.DetectorStatus.DEAD,
}


@dataclass(frozen=True)
class Answer:
    """What a node puts on the line for one request, and when it may."""

    address: int
    frame: bytes
    """bytes to send (possibly damaged or preceded by garbage under a crc fault)"""
    request_len: int
    delay_s: float = 0.0
    """extra turnaround the node takes (the ``slow`` fault)"""


@dataclass
class Detector:
    space: str | None
    baseline: int
    signature: int
    battery: int
    present: bool = False  # a vehicle is physically on the bay
    debounced: bool = False  # the firmware's debounced bit, fault or not
    pending_since: float | None = None  # when the level last changed, not yet debounced
    fault: DetectorFault | None = None
    frozen: bool = False  # the stuck or flapping bit
    next_flip: float = 0.0


@dataclass
class SimulatedNode:
    """One node controller: its detectors, its registers, its faults."""

    address: int
    detectors: list[Detector]
    boot: float
    rng: random.Random
    threshold: int = reg.DEFAULT_THRESHOLD
    debounce_ms: int = reg.DEFAULT_NODE_DEBOUNCE_MS
    indicators: list[int] = field(default_factory=list)
    crc_errors: int = 0
    bus_errors: int = 0
    requests: int = 0
    dead: bool = False
    slow_ms: float = 0.0
    crc_rate: float = 0.0

    def __post_init__(self) -> None:
        if not self.indicators:
            self.indicators = [int(reg.IndicatorColour.OFF)] * len(self.detectors)

    # --- detector behaviour --------------------------------------------------

    def level(self, d: Detector) -> bool:
        """Whether the noise-free reading is above the threshold right now."""
        return (d.signature if d.present else d.baseline) > self.threshold

    def set_present(self, i: int, present: bool, now: float) -> None:
        self.update(now)
        d = self.detectors[i]
        d.present = present
        self._relevel(d, now)

    def _relevel(self, d: Detector, now: float) -> None:
        if self.level(d) == d.debounced:
            d.pending_since = None
        elif d.pending_since is None:
            d.pending_since = now

    def update(self, now: float) -> None:
        """Bring debounce and flapping up to ``now``."""
        debounce_s = self.debounce_ms / 1000.0
        for d in self.detectors:
            if d.pending_since is not None and now - d.pending_since >= debounce_s - 1e-9:
                d.debounced = self.level(d)
                d.pending_since = None
            if d.fault is DetectorFault.FLAP:
                if now - d.next_flip > 10.0:  # a long quiet spell: resume flapping from now
                    d.next_flip = now
                while d.next_flip <= now:
                    d.frozen = not d.frozen
                    d.next_flip += self.rng.uniform(*FLAP_PERIOD_S)

    def bit(self, d: Detector) -> bool:
        if d.fault is DetectorFault.DEAD:
            return False
        if d.fault in (DetectorFault.STUCK, DetectorFault.FLAP):
            return d.frozen
        return d.debounced

    def status(self, d: Detector) -> reg.DetectorStatus:
        return _FAULT_STATUS[d.fault] if d.fault else reg.DetectorStatus.OK

    def raw(self, d: Detector) -> int:
        if d.fault is DetectorFault.DEAD:
            return 0
        level = d.signature if d.present else d.baseline
        noisy = level * (1.0 + self.rng.gauss(0.0, NOISE_FRACTION)) + self.rng.gauss(
            0.0, NOISE_COUNTS
        )
        return max(0, min(0xFFFF, round(noisy)))

    def set_fault(self, i: int, fault: DetectorFault | None, now: float) -> None:
        self.update(now)
        d = self.detectors[i]
        d.frozen = self.bit(d) if fault is not DetectorFault.DEAD else False
        d.fault = fault
        if fault is DetectorFault.FLAP:
            d.next_flip = now + self.rng.uniform(*FLAP_PERIOD_S)

    # --- registers -------------------------------------------------------------

    def input_register(self, address: int, now: float) -> int | None:
        """Value of one input register, None where the map has none."""
        n = len(self.detectors)
        uptime = max(0, int(now - self.boot)) & 0xFFFFFFFF
        info = {
            reg.IR_MODEL: reg.MODEL_CODE,
            reg.IR_FIRMWARE: reg.FIRMWARE_VERSION,
            reg.IR_DETECTOR_COUNT: n,
            reg.IR_UPTIME_HI: uptime >> 16,
            reg.IR_UPTIME_LO: uptime & 0xFFFF,
            reg.IR_CRC_ERRORS: self.crc_errors & 0xFFFF,
            reg.IR_BUS_ERRORS: self.bus_errors & 0xFFFF,
            reg.IR_REQUESTS: self.requests & 0xFFFF,
        }
        if address in info:
            return info[address]
        for base, value in (
            (reg.IR_DETECTOR_STATUS, lambda d: int(self.status(d))),
            (reg.IR_DETECTOR_RAW, self.raw),
            (reg.IR_DETECTOR_BATTERY, lambda d: d.battery),
        ):
            if base <= address < base + n:
                return value(self.detectors[address - base])
        return None

    def holding_register(self, address: int) -> int | None:
        if address == reg.HR_THRESHOLD:
            return self.threshold
        if address == reg.HR_DEBOUNCE_MS:
            return self.debounce_ms
        if reg.HR_INDICATOR <= address < reg.HR_INDICATOR + len(self.detectors):
            return self.indicators[address - reg.HR_INDICATOR]
        return None

    def _check_holding(self, address: int, value: int) -> int | None:
        """Exception code a write of ``value`` at ``address`` gets, None if it is fine."""
        if self.holding_register(address) is None:
            return rtu.ILLEGAL_DATA_ADDRESS
        if address == reg.HR_DEBOUNCE_MS and value > MAX_DEBOUNCE_MS:
            return rtu.ILLEGAL_DATA_VALUE
        if address >= reg.HR_INDICATOR and value not in _COLOURS:
            return rtu.ILLEGAL_DATA_VALUE
        return None

    def _write_holding(self, address: int, value: int, now: float) -> None:
        if address == reg.HR_THRESHOLD:
            self.threshold = value
            for d in self.detectors:  # the comparison changed: debounce from now
                self._relevel(d, now)
        elif address == reg.HR_DEBOUNCE_MS:
            self.debounce_ms = value
        else:
            self.indicators[address - reg.HR_INDICATOR] = value

    # --- requests --------------------------------------------------------------

    def serve(self, req: rtu.Request, now: float) -> bytes:
        """The answer frame to a request addressed to this node (or broadcast)."""
        self.update(now)
        self.requests += 1
        a, f = self.address, req.function
        if f == rtu.READ_DISCRETE_INPUTS:
            if not 1 <= req.count <= rtu.MAX_READ_BITS:
                return rtu.encode_exception(a, f, rtu.ILLEGAL_DATA_VALUE)
            if req.start + req.count > len(self.detectors):
                return rtu.encode_exception(a, f, rtu.ILLEGAL_DATA_ADDRESS)
            bits = [self.bit(d) for d in self.detectors[req.start : req.start + req.count]]
            return rtu.encode_bits_response(a, f, bits)
        if f in (rtu.READ_INPUT_REGISTERS, rtu.READ_HOLDING_REGISTERS):
            if not 1 <= req.count <= rtu.MAX_READ_REGISTERS:
                return rtu.encode_exception(a, f, rtu.ILLEGAL_DATA_VALUE)
            values: list[int] = []
            for address in range(req.start, req.start + req.count):
                v = (
                    self.input_register(address, now)
                    if f == rtu.READ_INPUT_REGISTERS
                    else self.holding_register(address)
                )
                if v is None:
                    return rtu.encode_exception(a, f, rtu.ILLEGAL_DATA_ADDRESS)
                values.append(v)
            return rtu.encode_registers_response(a, f, values)
        if f in (rtu.WRITE_SINGLE_REGISTER, rtu.WRITE_MULTIPLE_REGISTERS):
            if not 1 <= len(req.values) <= 123:
                return rtu.encode_exception(a, f, rtu.ILLEGAL_DATA_VALUE)
            # all or nothing: check every register before writing any
            for k, value in enumerate(req.values):
                code = self._check_holding(req.start + k, value)
                if code is not None:
                    return rtu.encode_exception(a, f, code)
            for k, value in enumerate(req.values):
                self._write_holding(req.start + k, value, now)
            return rtu.encode_write_response(req)
        return rtu.encode_exception(a, f, rtu.ILLEGAL_FUNCTION)

    def damage(self, frame: bytes) -> bytes:
        """An answer as line noise leaves it: one bit flipped, sometimes garbage in front."""
        out = bytearray(frame)
        i = self.rng.randrange(len(out))
        out[i] ^= 1 << self.rng.randrange(8)
        if self.rng.random() < 0.3:
            out[:0] = bytes(self.rng.randrange(256) for _ in range(self.rng.randint(1, 3)))
        return bytes(out)

    def describe(self) -> str:
        faults = []
        if self.dead:
            faults.append("dead")
        if self.slow_ms:
            faults.append(f"slow {self.slow_ms:g}ms")
        if self.crc_rate:
            faults.append(f"crc {self.crc_rate:g}")
        bad = sum(1 for d in self.detectors if d.fault)
        return (
            f"node {self.address}: {'dead' if self.dead else 'online'}"
            f" faults={','.join(faults) or '-'} detectors={len(self.detectors)}"
            f" faulty_detectors={bad} occupied={sum(self.bit(d) for d in self.detectors)}"
            f" requests={self.requests} crc_errors={self.crc_errors} bus_errors={self.bus_errors}"
            f" threshold={self.threshold} debounce_ms={self.debounce_ms}"
        )


class SimulatedBus:
    """Every node controller bound to one bus of the site, behind one request decoder."""

    def __init__(self, bus: Bus, now: float, seed: int = 0):
        self.bus_id = bus.id
        self.rng = random.Random(seed)
        self.nodes: dict[int, SimulatedNode] = {}
        self.where: dict[str, tuple[int, int]] = {}  # space -> (node address, detector index)
        for nc in bus.nodes:
            node_rng = random.Random(self.rng.getrandbits(64))
            detectors = []
            for i, space in enumerate(nc.spaces):
                detectors.append(
                    Detector(
                        space,
                        baseline=node_rng.randint(*BASELINE_RANGE),
                        signature=node_rng.randint(*SIGNATURE_RANGE),
                        battery=node_rng.randint(60, 100),
                    )
                )
                if space is not None:
                    self.where[space] = (nc.address, i)
            self.nodes[nc.address] = SimulatedNode(nc.address, detectors, now, node_rng)
        self.decoder = rtu.RequestDecoder()

    # --- the line ---------------------------------------------------------------

    def receive(self, data: bytes, now: float) -> list[Answer]:
        """Bytes heard on the line -> answers to put on it (none for others' frames)."""
        head = bytes(self.decoder.buf[:1]) or data[:1]
        crc_before = self.decoder.stats.crc_errors
        frames = self.decoder.feed(data)
        bad = self.decoder.stats.crc_errors - crc_before
        if bad:
            # the damaged frame's own address byte says whose it was meant to be
            node = self.nodes.get(head[0]) if head else None
            if node is not None and not node.dead:
                node.crc_errors += bad
            log.debug("bad CRC on the line (%d), addressed to %s", bad, head.hex())
        answers = []
        for frame, req in frames:
            answer = self._serve(frame, req, now)
            if answer is not None:
                answers.append(answer)
        return answers

    def _serve(self, frame: bytes, req: rtu.Request | None, now: float) -> Answer | None:
        address, function = frame[0], frame[1]
        if address == 0:  # broadcast: writes apply everywhere, nobody answers
            if req is not None and function in (
                rtu.WRITE_SINGLE_REGISTER,
                rtu.WRITE_MULTIPLE_REGISTERS,
            ):
                for each in self.nodes.values():
                    if not each.dead:
                        each.serve(req, now)
            return None
        node = self.nodes.get(address)
        if node is None or node.dead:
            return None  # nobody there: the master times out, as on a real bus
        if req is None:
            if function in (rtu.WRITE_MULTIPLE_REGISTERS, rtu.WRITE_MULTIPLE_COILS):
                node.bus_errors += 1  # framed by length and CRC, but the body disagrees
                out = rtu.encode_exception(address, function, rtu.ILLEGAL_DATA_VALUE)
            else:
                out = rtu.encode_exception(address, function, rtu.ILLEGAL_FUNCTION)
            node.requests += 1
        else:
            out = node.serve(req, now)
        if node.crc_rate and node.rng.random() < node.crc_rate:
            out = node.damage(out)
        return Answer(address, out, len(frame), node.slow_ms / 1000.0)

    # --- the console ------------------------------------------------------------

    def locate(self, space: str) -> tuple[SimulatedNode, int]:
        try:
            address, i = self.where[space]
        except KeyError:
            raise CommandError(f"space {space!r} is not on bus {self.bus_id}") from None
        return self.nodes[address], i

    def node(self, address: int) -> SimulatedNode:
        try:
            return self.nodes[address]
        except KeyError:
            raise CommandError(
                f"no node {address} on bus {self.bus_id} (nodes: {sorted(self.nodes)})"
            ) from None

    def set_present(self, space: str, present: bool, now: float) -> None:
        node, i = self.locate(space)
        node.set_present(i, present, now)

    def settle(self, presence: dict[str, bool]) -> None:
        """Start-up state: vehicles already in place and debounced, as after a long quiet spell."""
        for space, present in presence.items():
            node, i = self.locate(space)
            d = node.detectors[i]
            d.present = present
            d.debounced = node.level(d)
            d.pending_since = None

    def apply(self, command: Command, now: float) -> str:
        """Carry out a console command; the answer line; CommandError changes nothing."""
        if isinstance(command, SetSpace):
            self.set_present(command.space, command.occupied, now)
            return f"ok {command.space} {'occupied' if command.occupied else 'free'}"
        if isinstance(command, FaultSpace):
            node, i = self.locate(command.space)
            node.set_fault(i, command.fault, now)
            return f"ok {command.space} fault {command.fault.value}"
        if isinstance(command, FaultNode):
            node = self.node(command.address)
            if command.fault is NodeFault.DEAD:
                node.dead = True
                return f"ok node {node.address} dead"
            if command.fault is NodeFault.SLOW:
                node.slow_ms = command.value
                return f"ok node {node.address} slow {command.value:g}ms"
            node.crc_rate = command.value
            return f"ok node {node.address} crc {command.value:g}"
        if isinstance(command, SetBattery):
            node, i = self.locate(command.space)
            node.detectors[i].battery = command.percent
            shown = "wired" if command.percent == reg.BATTERY_WIRED else f"{command.percent}%"
            return f"ok {command.space} battery {shown}"
        if isinstance(command, ClearSpace):
            node, i = self.locate(command.space)
            node.set_fault(i, None, now)
            return f"ok {command.space} cleared"
        if isinstance(command, ClearNode):
            self._clear_node(self.node(command.address), now)
            return f"ok node {command.address} cleared"
        if isinstance(command, ClearAll):
            for node in self.nodes.values():
                self._clear_node(node, now)
            return f"ok all faults on bus {self.bus_id} cleared"
        if isinstance(command, Status):
            return self.status(command.space, now)
        if isinstance(command, Help):
            return f"ok {HELP}"
        raise CommandError(f"command {command!r} does not apply to a bus")

    def _clear_node(self, node: SimulatedNode, now: float) -> None:
        node.dead, node.slow_ms, node.crc_rate = False, 0.0, 0.0
        for i in range(len(node.detectors)):
            node.set_fault(i, None, now)

    def status(self, space: str | None, now: float) -> str:
        if space is not None:
            node, i = self.locate(space)
            node.update(now)
            d = node.detectors[i]
            return (
                f"ok {space} node={node.address} detector={i} bit={int(node.bit(d))}"
                f" vehicle={'yes' if d.present else 'no'} raw={node.raw(d)}"
                f" status={node.status(d).label} battery={d.battery}"
            )
        for node in self.nodes.values():
            node.update(now)
        stats = self.decoder.stats
        return (
            f"ok bus {self.bus_id}: frames={stats.frames} crc_errors={stats.crc_errors}"
            f" garbage_bytes={stats.garbage_bytes} | "
            + " | ".join(n.describe() for n in self.nodes.values())
        )
