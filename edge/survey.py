"""``parkguide site bus-survey``: read every node of one RS-485 bus against the site file.

For commissioning and diagnosis on site, with the bus's agent stopped: which nodes answer,
whether each is the node the site file says (model, detector count), its counters and
settings, and which detectors need attention (a fault status, a low battery, a reading
close to the threshold). ``--scan`` probes the addresses the site file does not list (a
node whose address switches are set wrong answers there); ``--watch`` prints each bay's
change as it happens (a walk test). Judging is pure (``judge_node``, ``judge_stranger``);
``survey_node``, ``scan`` and ``watch`` talk to the port.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field

import serial

from edge.debounce import DebounceSettings
from edge.modbus_master import (
    DEFAULT_RETRIES,
    DEFAULT_TURNAROUND_S,
    ModbusError,
    ModbusExceptionResponse,
    ModbusMaster,
    ModbusTimeout,
)
from edge.serial_agent import address_ranges, foreign_node_problem
from parking import modbus_rtu as rtu
from parking import registers as reg
from parking.signals import stop_event_on_signals
from parking.site import Bus, NodeController, SiteError, load_site

log = logging.getLogger(__name__)

MARGINAL_SHARE = 0.25
"""A raw reading within this share of the threshold (either side) may read the wrong way
with a little drift, temperature or a higher car: the detector's placement or the node's
threshold wants a look."""
MAX_SAFE_LAG_MS = 1000
"""The node's debounce plus the agent's: keep it at or under a second (docs/modbus.md)."""
WATCH_PERIOD_S = 0.2
LATE_QUIET_S = 0.3
"""After a request timed out, the line must stay quiet this long (or three turnarounds)
before the next: whatever comes meanwhile is a late answer, dropped and counted."""

PROBLEM = "problem"
NOTE = "note"

NO_ANSWER = "does not answer"
_NO_ANSWER_WHY = (
    " (no power, A/B wires swapped, no termination, another baud rate or parity, or its"
    " address switches are not set to {address}{scan})"
)
_NOISE = "noise on the line? check the termination at both ends, the shield's earthing and stubs"


@dataclass
class NodeReading:
    """What one address answered (``None``: not read, or no answer to that read)."""

    address: int
    info: list[int] | None = None
    settings: list[int] | None = None  # HR_THRESHOLD, HR_DEBOUNCE_MS
    status: list[int] | None = None
    raw: list[int] | None = None
    battery: list[int] | None = None
    bits: list[bool] | None = None
    error: str | None = None
    """why the node could not be read at all"""
    refused: list[str] = field(default_factory=list)
    """reads it refused (a Modbus exception) or gave no valid answer to"""
    late_bytes: int = 0
    """bytes that came after a request had timed out: answers later than the turnaround"""
    damaged: int = 0
    """answers that arrived damaged (bad CRC, cut short) or bytes framing nothing"""


@dataclass(frozen=True)
class Finding:
    severity: str  # PROBLEM: the bus is not right yet; NOTE: worth knowing
    address: int
    text: str
    detector: int | None = None
    space: str | None = None


# --- judging (pure) ----------------------------------------------------------------------


def judge_node(
    node: NodeController,
    r: NodeReading,
    agent_debounce_ms: float = 500.0,
    *,
    turnaround_ms: float = DEFAULT_TURNAROUND_S * 1000,
    scanned: bool = False,
) -> list[Finding]:
    """What a technician should know about one node of the site file, from its reading
    (``scanned``: the other addresses were probed, so a silent node is not told to)."""
    a = node.address
    if r.late_bytes:
        # its answers to one request were taken for the next: none of it can be trusted
        return [
            Finding(
                PROBLEM,
                a,
                f"node {a} answers later than the turnaround ({turnaround_ms:g} ms): its"
                f" readings are not trusted; run again with --turnaround-ms"
                f" {max(300, 3 * turnaround_ms):g}",
            )
        ]
    if r.error is not None:
        if r.damaged:
            return [
                Finding(
                    PROBLEM,
                    a,
                    f"node {a} gives no valid answer: {r.damaged} answer(s) arrived damaged"
                    f" ({_NOISE})",
                )
            ]
        why = _NO_ANSWER_WHY.format(address=a, scan="" if scanned else ": try --scan")
        return [Finding(PROBLEM, a, f"node {a} {r.error}{why}")]
    out = [Finding(PROBLEM, a, f"node {a} {what}") for what in r.refused]
    if r.damaged:
        out.append(
            Finding(NOTE, a, f"{r.damaged} answer(s) from node {a} arrived damaged: {_NOISE}")
        )
    if r.info is not None:
        foreign = foreign_node_problem(node, r.info)
        if foreign:
            return [*out, Finding(PROBLEM, a, foreign)]
        crc, frames = r.info[reg.IR_CRC_ERRORS], r.info[reg.IR_BUS_ERRORS]
        if crc or frames:
            out.append(
                Finding(
                    NOTE,
                    a,
                    f"node {a} has counted {crc} frame(s) with a bad CRC and {frames} other"
                    f" framing error(s) since power-up: {_NOISE}",
                )
            )
    if r.settings is not None:
        threshold, debounce = r.settings
        if threshold != reg.DEFAULT_THRESHOLD:
            out.append(
                Finding(
                    NOTE,
                    a,
                    f"node {a}'s threshold is {threshold} (default {reg.DEFAULT_THRESHOLD})",
                )
            )
        if debounce + agent_debounce_ms > MAX_SAFE_LAG_MS:
            out.append(
                Finding(
                    PROBLEM,
                    a,
                    f"node {a}'s debounce {debounce} ms plus the agent's"
                    f" {agent_debounce_ms:g} ms is over {MAX_SAFE_LAG_MS} ms: changes reach"
                    " the signs late",
                )
            )
    threshold = r.settings[0] if r.settings else reg.DEFAULT_THRESHOLD
    for i in range(node.detectors):
        space = node.spaces[i] if i < len(node.spaces) else None
        out.extend(_judge_detector(a, i, space, r, threshold))
    return out


def _judge_detector(
    a: int, i: int, space: str | None, r: NodeReading, threshold: int
) -> list[Finding]:
    where = f"{space or 'spare channel'} (node {a} detector {i})"
    status = _at(r.status, i)
    if status is not None and status != reg.DetectorStatus.OK:
        return [Finding(PROBLEM, a, f"{where}: status {_status_label(status)}", i, space)]
    out = []
    battery = _at(r.battery, i)
    if battery is not None and battery != reg.BATTERY_WIRED:
        if battery > 100:
            out.append(Finding(NOTE, a, f"{where}: battery register reads {battery}", i, space))
        elif battery <= reg.BATTERY_LOW_PERCENT:
            out.append(Finding(PROBLEM, a, f"{where}: battery {battery} %: replace it", i, space))
    raw = _at(r.raw, i)
    if space is not None and raw is not None and abs(raw - threshold) <= MARGINAL_SHARE * threshold:
        out.append(
            Finding(
                NOTE,
                a,
                f"{where}: raw reading {raw} is within {MARGINAL_SHARE:.0%} of the threshold"
                f" {threshold}: it may read the wrong way (check the detector's placement,"
                " or the threshold)",
                i,
                space,
            )
        )
    return out


def judge_stranger(bus: Bus, r: NodeReading, silent: Iterable[int]) -> Finding:
    """A device answering at an address the site file does not list for the bus."""
    a = r.address
    if r.info is None or r.info[reg.IR_MODEL] != reg.MODEL_CODE:
        what = "a device that is not a parkguide node controller"
        if r.info is not None:
            what += f" (model 0x{r.info[reg.IR_MODEL]:04x})"
        return Finding(PROBLEM, a, f"{what} answers at address {a}, not in the site file")
    count = r.info[reg.IR_DETECTOR_COUNT]
    text = (
        f"a node controller with {count} detectors answers at address {a}, which the site"
        f" file does not list for bus {bus.id}"
    )
    likely = [n.address for n in bus.nodes if n.address in set(silent) and n.detectors == count]
    if likely:
        text += f": node {' or '.join(map(str, likely))} with its address switches set wrong?"
    return Finding(PROBLEM, a, text)


def bay_changes(
    node: NodeController, before: list[bool] | None, after: list[bool]
) -> list[tuple[int, str | None, bool]]:
    """(detector, space, occupied) for every bit that differs (all of them on a first read)."""
    return [
        (i, node.spaces[i] if i < len(node.spaces) else None, bit)
        for i, bit in enumerate(after)
        if before is None or i >= len(before) or before[i] != bit
    ]


def _at(values: list[int] | None, i: int) -> int | None:
    return values[i] if values is not None and i < len(values) else None


def _status_label(code: int) -> str:
    try:
        return reg.DetectorStatus(code).label
    except ValueError:
        return f"code {code}"


# --- the port ----------------------------------------------------------------------------


def drop_late_answers(master: ModbusMaster) -> int:
    """After a request timed out: drop what comes until the line is quiet (a late answer
    would be taken for the next request's); the bytes dropped."""
    return master.drain(quiet_s=max(LATE_QUIET_S, 3 * master.timing.turnaround_s))


def survey_node(master: ModbusMaster, node: NodeController) -> NodeReading:
    """Read everything a node has to say: info, settings, statuses, raw, batteries, bits."""
    r = NodeReading(node.address)
    c = master.counters
    damaged_before = c.crc_errors + c.truncated + c.garbage_bytes

    def read(call: Callable[[], list]) -> list:
        timeouts = c.timeouts
        try:
            return call()
        finally:
            if c.timeouts > timeouts:
                # a request went unanswered in time: a late answer would be taken for the
                # next one (RTU frames carry no transaction id), so wait for a quiet line
                r.late_bytes += drop_late_answers(master)

    def tally() -> None:
        r.damaged = c.crc_errors + c.truncated + c.garbage_bytes - damaged_before - r.late_bytes

    try:
        r.info = read(
            lambda: master.read_input_registers(node.address, reg.IR_MODEL, reg.NODE_INFO_COUNT)
        )
    except ModbusTimeout:
        r.error = NO_ANSWER
        tally()
        return r
    except ModbusExceptionResponse as exc:
        r.refused.append(f"refuses a read of its info registers ({exc})")
    # read no further than the node says it has (a foreign node's map may be shorter)
    count = node.detectors
    if r.info is not None:
        count = min(count, r.info[reg.IR_DETECTOR_COUNT]) or node.detectors
    reads: list[tuple[str, str, Callable[[], list]]] = [
        ("settings", "settings", lambda: _holding(master, node.address)),
        (
            "status",
            "detector statuses",
            lambda: master.read_input_registers(node.address, reg.IR_DETECTOR_STATUS, count),
        ),
        (
            "raw",
            "raw readings",
            lambda: master.read_input_registers(node.address, reg.IR_DETECTOR_RAW, count),
        ),
        (
            "battery",
            "batteries",
            lambda: master.read_input_registers(node.address, reg.IR_DETECTOR_BATTERY, count),
        ),
        (
            "bits",
            "occupied bits",
            lambda: master.read_discrete_inputs(node.address, reg.OCCUPIED_BITS, count),
        ),
    ]
    for attr, what, call in reads:
        try:
            setattr(r, attr, read(call))
        except ModbusExceptionResponse as exc:
            r.refused.append(f"refuses a read of its {what} ({exc})")
        except ModbusTimeout:
            r.refused.append(f"gives no valid answer to a read of its {what}")
    tally()
    return r


def _holding(master: ModbusMaster, address: int) -> list[int]:
    request = rtu.Request(address, rtu.READ_HOLDING_REGISTERS, reg.HR_THRESHOLD, 2)
    return list(master.execute(request).registers)


def scan(
    master: ModbusMaster, skip: set[int], stop: threading.Event | None = None
) -> tuple[list[NodeReading], int]:
    """Probe every address 1..247 not in ``skip`` once for node info: those that answer, and
    the last address probed (short of 247 when ``stop`` cut it short)."""
    found = []
    last = 0
    for address in range(1, rtu.MAX_SLAVE_ADDRESS + 1):
        if stop is not None and stop.is_set():
            break
        last = address
        if address in skip:
            continue
        r = NodeReading(address)
        try:
            r.info = master.read_input_registers(
                address, reg.IR_MODEL, reg.NODE_INFO_COUNT, retries=0
            )
        except ModbusExceptionResponse as exc:
            r.refused.append(str(exc))
        except ModbusTimeout:
            continue
        found.append(r)
    return found, last


def cut_tail(bus: Bus, silent: set[int]) -> list[int]:
    """The nodes listed after the last one answering, when there are two or more and none
    of them answers (a cut cable, a trunk without power: one finding, not one each)."""
    order = [n.address for n in bus.nodes]
    answering = [i for i, a in enumerate(order) if a not in silent]
    if not answering or len(order) - answering[-1] - 1 < 2:
        return []
    return order[answering[-1] + 1 :]


def cut_finding(bus: Bus, tail: list[int]) -> Finding:
    order = [n.address for n in bus.nodes]
    last = order[order.index(tail[0]) - 1]
    return Finding(
        PROBLEM,
        tail[0],
        f"nodes {address_ranges(tail)} do not answer, and no node listed after node {last}"
        f" does: the cable cut past node {last}, or a trunk without power? (or their"
        " addresses: --scan)",
    )


def watch(
    master: ModbusMaster,
    bus: Bus,
    stop: threading.Event,
    seconds: float,
    say: Callable[[str], None],
) -> int:
    """Print every bay change (and every node that stops or starts answering) until ``stop``
    or ``seconds`` (0: no end); returns the number of bay changes seen."""
    last: dict[int, list[bool] | None] = {n.address: None for n in bus.nodes}
    silent: set[int] = set()
    changes = 0
    end = time.monotonic() + seconds if seconds > 0 else float("inf")
    while not stop.is_set() and time.monotonic() < end:
        for node in bus.nodes:
            try:
                bits = master.read_discrete_inputs(node.address, reg.OCCUPIED_BITS, node.detectors)
            except ModbusError as exc:
                if isinstance(exc, ModbusTimeout):  # a late answer must not pass for the next
                    drop_late_answers(master)
                if node.address not in silent:
                    silent.add(node.address)
                    say(f"{_clock()}  node {node.address} stopped answering ({exc})")
                continue
            if node.address in silent:
                silent.discard(node.address)
                say(f"{_clock()}  node {node.address} answers again")
            first = last[node.address] is None
            for i, space, occupied in bay_changes(node, last[node.address], bits):
                if space is None:
                    continue
                if not first:
                    changes += 1
                    state = "occupied" if occupied else "free"
                    say(f"{_clock()}  {space}  {state}  (node {node.address} detector {i})")
            last[node.address] = bits
        stop.wait(WATCH_PERIOD_S)
    return changes


def _clock() -> str:
    return time.strftime("%H:%M:%S")


# --- the command -------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--site", required=True, help="site file (YAML)")
    parser.add_argument("--bus", required=True, help="id of the RS-485 bus in the site file")
    parser.add_argument(
        "--port",
        required=True,
        help="serial device of the bus (stop the bus's agent first: the port is exclusive)",
    )
    parser.add_argument(
        "--scan",
        action="store_true",
        help="also probe every address 1..247 the site file does not list for the bus (a node"
        " whose address switches are set wrong answers there; about 25 s)",
    )
    parser.add_argument(
        "--watch",
        type=float,
        default=None,
        metavar="S",
        help="then print every bay change for S seconds (0: until Ctrl-C): a walk test",
    )
    parser.add_argument(
        "--debounce-ms",
        type=float,
        default=DebounceSettings().hold_s * 1000,
        help="the agent's --debounce-ms, to check the node's debounce against (default 500)",
    )
    parser.add_argument("--retries", type=int, default=DEFAULT_RETRIES, help="retries per request")
    parser.add_argument(
        "--turnaround-ms",
        type=float,
        default=DEFAULT_TURNAROUND_S * 1000,
        help="how long a node may take to start answering (default 100)",
    )
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def node_summary(node: NodeController, r: NodeReading) -> dict:
    """One node's reading as the JSON output (and the table) show it."""
    out: dict = {
        "address": node.address,
        "answers": r.error is None,
        "site_detectors": node.detectors,
    }
    if r.info is not None:
        info = r.info
        out |= {
            "model": f"0x{info[reg.IR_MODEL]:04x}",
            "firmware": f"{info[reg.IR_FIRMWARE] >> 8}.{info[reg.IR_FIRMWARE] & 0xFF}",
            "detectors": info[reg.IR_DETECTOR_COUNT],
            "uptime_s": info[reg.IR_UPTIME_HI] << 16 | info[reg.IR_UPTIME_LO],
            "crc_errors": info[reg.IR_CRC_ERRORS],
            "bus_errors": info[reg.IR_BUS_ERRORS],
        }
    if r.settings is not None:
        out |= {"threshold": r.settings[0], "debounce_ms": r.settings[1]}
    if r.bits is not None:
        out["occupied"] = [
            s for i, s in enumerate(node.spaces) if s is not None and i < len(r.bits) and r.bits[i]
        ]
    return out


def _uptime(seconds: int) -> str:
    days, rest = divmod(seconds, 86400)
    return f"{days}d {rest // 3600:02d}h" if days else f"{rest // 3600}h {rest % 3600 // 60:02d}m"


def _table(bus: Bus, port: str, nodes: list[dict]) -> list[str]:
    lines = [
        f"bus {bus.id} on {port} at {bus.baud} baud 8{bus.parity}1:"
        f" {len(bus.nodes)} node(s) in the site file",
        f"{'node':>4}  {'answers':7}  {'model':6}  {'fw':4}  {'detectors':9}  {'uptime':8}"
        f"  {'crc/frame errors':16}  {'threshold':9}  {'debounce':8}  occupied",
    ]
    for n in nodes:
        if not n["answers"]:
            lines.append(f"{n['address']:>4}  {'no':7}")
            continue
        count = f"{n.get('detectors', '?')}/{n['site_detectors']}"
        errors = f"{n['crc_errors']}/{n['bus_errors']}" if "crc_errors" in n else "?"
        lines.append(
            f"{n['address']:>4}  {'yes':7}  {n.get('model', '?'):6}  {n.get('firmware', '?'):4}"
            f"  {count:9}  {_uptime(n['uptime_s']) if 'uptime_s' in n else '?':8}"
            f"  {errors:16}  {n.get('threshold', '?')!s:9}"
            f"  {str(n['debounce_ms']) + ' ms' if 'debounce_ms' in n else '?':8}"
            f"  {len(n['occupied']) if 'occupied' in n else '?'}"
        )
    return lines


def _open(args: argparse.Namespace, bus: Bus) -> ModbusMaster | str:
    """The bus's port opened, or why it cannot be."""
    master = ModbusMaster(
        args.port,
        bus.baud,
        bus.parity,
        retries=args.retries,
        turnaround_s=args.turnaround_ms / 1000,
    )
    try:
        master.open()
    except (serial.SerialException, OSError) as exc:
        text = str(exc)
        if "lock" in text.lower():
            return (
                "in use by another process: stop the bus's agent first"
                f" (systemctl stop parkguide-serial@{bus.id})"
            )
        if "Inappropriate ioctl" in text:
            return f"not a serial device ({text})"
        return text
    return master


def _survey(
    args: argparse.Namespace, bus: Bus, master: ModbusMaster, stop: threading.Event
) -> dict:
    """Read and judge every node (and, with --scan, the other addresses)."""
    readings = {n.address: survey_node(master, n) for n in bus.nodes}
    silent = {a for a, r in readings.items() if r.error is not None and not r.late_bytes}
    tail = cut_tail(bus, silent)
    findings = [
        f
        for n in bus.nodes
        if n.address not in tail
        for f in judge_node(
            n,
            readings[n.address],
            args.debounce_ms,
            turnaround_ms=args.turnaround_ms,
            scanned=args.scan,
        )
    ]
    if tail:
        findings.append(cut_finding(bus, tail))
    out: dict = {"readings": readings, "findings": findings, "strangers": None}
    if args.scan:
        print(
            f"scanning the {rtu.MAX_SLAVE_ADDRESS - len(bus.nodes)} other addresses ...",
            file=sys.stderr,
        )
        strangers, last = scan(master, {n.address for n in bus.nodes}, stop)
        findings += [judge_stranger(bus, r, silent) for r in strangers]
        out["strangers"] = strangers
        out["scanned_to"] = last
    return out


def main(args: argparse.Namespace) -> int:
    try:
        site = load_site(args.site)
        bus = site.bus(args.bus)
    except SiteError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyError as exc:
        print(f"error: {exc.args[0]}", file=sys.stderr)
        return 2
    if args.retries < 0 or args.turnaround_ms < 0 or args.debounce_ms < 0:
        print(
            "error: --retries, --turnaround-ms and --debounce-ms must not be negative",
            file=sys.stderr,
        )
        return 2
    if args.watch is not None and args.watch < 0:
        print("error: --watch S must be 0 (until Ctrl-C) or more", file=sys.stderr)
        return 2
    master = _open(args, bus)
    if isinstance(master, str):
        print(f"error: --port {args.port}: {master}", file=sys.stderr)
        return 2
    stop = stop_event_on_signals(log)

    def say(line: str) -> None:  # with --json, stdout has only the JSON object
        print(line, file=sys.stderr if args.json else sys.stdout, flush=True)

    try:
        result = _survey(args, bus, master, stop)
        problems = _report(args, bus, master, result)
        if stop.is_set():
            return 130
        if args.watch is not None:
            say(f"watching bus {bus.id}: every bay change is printed (Ctrl-C to end)")
            say(f"{watch(master, bus, stop, args.watch, say)} bay change(s) seen")
    except serial.SerialException as exc:
        print(
            f"error: --port {args.port}: the port failed ({exc}): adapter unplugged?",
            file=sys.stderr,
        )
        return 2
    finally:
        master.close()
    return 1 if problems else 0


def _report(args: argparse.Namespace, bus: Bus, master: ModbusMaster, result: dict) -> int:
    """Print the survey (a table and findings, or one JSON object); the problem count."""
    readings, findings, strangers = result["readings"], result["findings"], result["strangers"]
    nodes = [node_summary(n, readings[n.address]) for n in bus.nodes]
    scanned_to = result.get("scanned_to")
    cut_short = scanned_to is not None and scanned_to < rtu.MAX_SLAVE_ADDRESS
    problems = sum(1 for f in findings if f.severity == PROBLEM)
    answering = sum(1 for n in nodes if n["answers"])
    if args.json:
        doc = {
            "bus": bus.id,
            "port": args.port,
            "nodes": nodes,
            "answering": answering,
            "strangers": None
            if strangers is None
            else [{"address": r.address, "info": r.info, "refused": r.refused} for r in strangers],
            "scan_complete": None if strangers is None else not cut_short,
            "scanned_to": scanned_to,
            "findings": [asdict(f) for f in findings],
            "problems": problems,
            "master": master.counters.as_dict(),
        }
        print(json.dumps(doc), flush=True)
        return problems
    for line in _table(bus, args.port, nodes):
        print(line)
    for f in findings:
        print(f"{f.severity}: {f.text}")
    c = master.counters
    print(
        f"the master: {c.requests} requests, {c.timeouts} timed out, {c.crc_errors} bad CRC,"
        f" {c.truncated} cut short, {c.garbage_bytes} stray bytes"
    )
    hint = "" if strangers is not None else "; --scan looks for nodes at other addresses"
    if cut_short:
        hint = (
            f"; the scan was interrupted after address {scanned_to}:"
            f" {scanned_to + 1}..{rtu.MAX_SLAVE_ADDRESS} not probed"
        )
    print(
        f"{answering} of {len(nodes)} node(s) answer; {problems} problem(s),"
        f" {len(findings) - problems} note(s){hint}",
        flush=True,
    )
    return problems
