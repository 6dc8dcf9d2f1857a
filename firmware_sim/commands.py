"""The simulators' console language: one command per line, parsed into typed commands.

Shared by the bus simulator (``parkguide sim bus``) and the camera simulator,
so a technician types the same words to both. Parsing is pure and checks the
syntax only; whether a space or node exists is for the simulator applying
the command to say.

Accepted lines (blank lines and ``#`` comments are ignored)::

    set SPACE occupied|free
    fault SPACE stuck|flap|dead
    fault node ADDR dead|slow MS|crc RATE
    battery SPACE PCT|wired
    clear SPACE | clear node ADDR | clear all
    status [SPACE]
    help
"""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from enum import Enum

from parking import modbus_rtu as rtu
from parking import registers as reg

MAX_SLOW_MS = 60_000
MAX_ADDRESS = rtu.MAX_SLAVE_ADDRESS

HELP = (
    "commands: set SPACE occupied|free; fault SPACE stuck|flap|dead; "
    "fault node ADDR dead|slow MS|crc RATE; battery SPACE PCT|wired; clear SPACE|node ADDR|all;"
    " status [SPACE]; help"
)


class CommandError(ValueError):
    """A line that is not a command; the message says why, for the console."""


class DetectorFault(Enum):
    STUCK = "stuck"  # the bit freezes at its current value
    FLAP = "flap"  # the bit toggles every 200-400 ms
    DEAD = "dead"  # no reading at all


class NodeFault(Enum):
    DEAD = "dead"  # the node answers nothing
    SLOW = "slow"  # answers after ``value`` milliseconds
    CRC = "crc"  # a ``value`` fraction of answers arrive damaged


@dataclass(frozen=True)
class SetSpace:
    space: str
    occupied: bool


@dataclass(frozen=True)
class FaultSpace:
    space: str
    fault: DetectorFault


@dataclass(frozen=True)
class FaultNode:
    address: int
    fault: NodeFault
    value: float = 0.0
    """milliseconds for SLOW, a fraction 0..1 for CRC, unused for DEAD"""


@dataclass(frozen=True)
class SetBattery:
    space: str
    percent: int
    """0..100, or ``registers.BATTERY_WIRED`` for a wired detector"""


@dataclass(frozen=True)
class ClearSpace:
    space: str


@dataclass(frozen=True)
class ClearNode:
    address: int


@dataclass(frozen=True)
class ClearAll:
    pass


@dataclass(frozen=True)
class Status:
    space: str | None = None


@dataclass(frozen=True)
class Help:
    pass


Command = (
    SetSpace
    | FaultSpace
    | FaultNode
    | SetBattery
    | ClearSpace
    | ClearNode
    | ClearAll
    | Status
    | Help
)


def _address(word: str) -> int:
    try:
        address = int(word)
    except ValueError:
        raise CommandError(
            f"node address must be a number 1..{MAX_ADDRESS}, not {word!r}"
        ) from None
    if not 1 <= address <= MAX_ADDRESS:
        raise CommandError(f"node address must be 1..{MAX_ADDRESS}, not {address}")
    return address


def _node_fault(words: list[str]) -> FaultNode:
    # words: ["node", ADDR, KIND, (VALUE)]
    if len(words) < 3:
        raise CommandError("usage: fault node ADDR dead|slow MS|crc RATE")
    address = _address(words[1])
    kind = words[2].lower()
    if kind == "dead":
        if len(words) != 3:
            raise CommandError("usage: fault node ADDR dead")
        return FaultNode(address, NodeFault.DEAD)
    if kind == "slow":
        if len(words) != 4:
            raise CommandError("usage: fault node ADDR slow MS")
        try:
            ms = int(words[3])
        except ValueError:
            raise CommandError(f"slow MS must be whole milliseconds, not {words[3]!r}") from None
        if not 0 <= ms <= MAX_SLOW_MS:
            raise CommandError(f"slow MS must be 0..{MAX_SLOW_MS}, not {ms}")
        return FaultNode(address, NodeFault.SLOW, float(ms))
    if kind == "crc":
        if len(words) != 4:
            raise CommandError("usage: fault node ADDR crc RATE")
        try:
            rate = float(words[3])
        except ValueError:
            raise CommandError(f"crc RATE must be a fraction 0..1, not {words[3]!r}") from None
        if not 0.0 <= rate <= 1.0:  # also refuses nan
            raise CommandError(f"crc RATE must be a fraction 0..1, not {words[3]}")
        return FaultNode(address, NodeFault.CRC, rate)
    raise CommandError(f"unknown node fault {words[2]!r} (dead, slow MS, crc RATE)")


def parse_command(line: str) -> Command | None:
    """Parse one console line; None for a blank line or comment; CommandError if malformed."""
    words = line.split("#", 1)[0].split()
    if not words:
        return None
    verb, rest = words[0].lower(), words[1:]
    if verb == "set":
        if len(rest) != 2:
            raise CommandError("usage: set SPACE occupied|free")
        state = rest[1].lower()
        if state not in ("occupied", "free"):
            raise CommandError(f"set: state must be occupied or free, not {rest[1]!r}")
        return SetSpace(rest[0], state == "occupied")
    if verb == "fault":
        if not rest:
            raise CommandError("usage: fault SPACE stuck|flap|dead, or fault node ADDR ...")
        if rest[0].lower() == "node":
            return _node_fault(rest)
        if len(rest) != 2:
            raise CommandError("usage: fault SPACE stuck|flap|dead")
        try:
            fault = DetectorFault(rest[1].lower())
        except ValueError:
            raise CommandError(f"unknown detector fault {rest[1]!r} (stuck, flap, dead)") from None
        return FaultSpace(rest[0], fault)
    if verb == "battery":
        if len(rest) != 2:
            raise CommandError("usage: battery SPACE PCT|wired")
        if rest[1].lower() == "wired":
            return SetBattery(rest[0], reg.BATTERY_WIRED)
        try:
            percent = int(rest[1])
        except ValueError:
            raise CommandError(f"battery PCT must be a whole percentage, not {rest[1]!r}") from None
        if not 0 <= percent <= 100:
            raise CommandError(f"battery PCT must be 0..100, not {percent}")
        return SetBattery(rest[0], percent)
    if verb == "clear":
        if not rest:
            raise CommandError("usage: clear SPACE|node ADDR|all")
        if rest[0].lower() == "all" and len(rest) == 1:
            return ClearAll()
        if rest[0].lower() == "node":
            if len(rest) != 2:
                raise CommandError("usage: clear node ADDR")
            return ClearNode(_address(rest[1]))
        if len(rest) != 1:
            raise CommandError("usage: clear SPACE|node ADDR|all")
        return ClearSpace(rest[0])
    if verb == "status":
        if len(rest) > 1:
            raise CommandError("usage: status [SPACE]")
        return Status(rest[0] if rest else None)
    if verb == "help":
        return Help()
    raise CommandError(f"unknown command {words[0]!r}; {HELP}")


class Answers:
    """Console answers on stdout. A simulator run as a service has no console, and a
    closed stdout must not stop it: answers then go to the log only."""

    def __init__(self) -> None:
        self.open = True

    def say(self, line: str) -> None:
        if not self.open:
            return
        try:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()
        except (BrokenPipeError, OSError, ValueError) as exc:
            self.open = False
            logging.getLogger(__name__).warning(
                "stdout is gone (%s); answers go to the log only from now on", exc
            )
